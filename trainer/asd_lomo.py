"""``python -m trainer evaluate-asd --protocol leave-one-machine-out``: anomaly detection on a
machine type the embedder has never heard, the product's question.

A node is installed on some machine, records a few minutes of normal operation
(calibration: :func:`calibration.calibrate.fit_calibration`) and from then on flags windows
whose score exceeds its own threshold. The machine is rarely one of the types the embedder
was trained on. This protocol measures exactly that, with the baselines a first-shot system
has to beat side by side (SPEC "ASD embedder", first-shot generalisation).

Protocol
--------
1. Every audio file below ``DATA`` is labelled with a **machine type**
   (:func:`~trainer.asd_lomo_data.list_typed_clips`): the names of the DCASE 2020-2023 and
   MIMII sources are normalised, so fan from MIMII, DCASE 2020 and DCASE 2023 is one type
   (:data:`~trainer.asd_lomo_data.MACHINE_TYPES`, :data:`~trainer.asd_lomo_data.FOLDER_ALIASES`).
2. For every held-out type ``T`` (:func:`~trainer.asd_lomo_data.lomo_split`):

   * **training**: every normal clip of every other type; no clip of ``T``;
   * **calibration**: a few normal clips of ``T``, stratified over its recordings (data set
     folder x section): at most ``n_source`` (30) source-domain and ``n_target`` (5)
     target-domain clips, and at most half of each domain's normal clips, so at least half
     stay for testing; at least ``min_calibration`` (2) clips, the node's minimum (two
     non-overlapping windows);
   * **test**: the remaining normal clips of ``T`` and all its anomalous clips.

3. Systems, each calibrated on the same calibration clips and tested on the same test clips:

   * **ours (int8)**: the embedder trained on the training clips with the recipe of ``--config``
     (``--epochs``/``--steps-per-epoch`` override it), exported to full-integer int8 and run
     as the node runs it (:class:`edge.model.AsdEmbedder`); calibrated as the node calibrates
     (windows of ``asd.window_seconds`` every ``asd.hop_seconds``, k-means memory + every
     window, held-out window scores, the node config's ``asd.threshold`` estimator); a test
     clip's score is the maximum over its windows, so "score > threshold" is "the node flags
     at least one window of the clip";
   * **DCASE 2023 AE baseline** (:mod:`trainer.ae_baseline`) trained on the calibration clips
     only; its threshold is fit on its scores of those clips (in-sample, as the DCASE baseline
     fits its gamma threshold);
   * **STFT statistics** (:mod:`trainer.asd_baselines`): no learning; threshold on
     leave-one-clip-out scores of the calibration clips.

4. Metrics per held-out type (:func:`~trainer.asd_lomo_report.type_metrics`,
   :mod:`trainer.asd_metrics`): AUC source and target (normal clips of the domain + all
   anomalies; only for a domain with at least ``min_test_normal`` normal test clips,
   otherwise one or two clips would decide it), pAUC (max_fpr 0.1), AUC over all test clips,
   the type's official score (harmonic mean of its AUCs and pAUC); at the node's decision
   threshold: false-positive rate on the test normals per domain and recall on the anomalies
   (:func:`~trainer.asd_lomo_report.rates_at_threshold`). 95 % confidence intervals from a
   paired, stratified bootstrap over clips (:func:`~trainer.asd_lomo_report.bootstrap_metrics`).
   Overall: the official score over the types in the summary (at least ``min_test_normal``
   normal and one anomalous test clip), i.e. the harmonic mean of their AUCs and pAUCs, with
   a bootstrap interval from the same resamples.
5. ``report.json``, ``report.md``, ROC curves and score histograms per type go to ``--out``
   (default ``reports/asd_lomo/``).

Labels and split: :mod:`trainer.asd_lomo_data`; metrics and report:
:mod:`trainer.asd_lomo_report`; this module: the systems and the command line.

Entry points: :func:`add_cli_arguments`, :func:`run_cli`.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import re
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from calibration.calibrate import collect_windows, fit_calibration
from calibration.plots import plot_score_histogram
from calibration.thresholds import make_threshold_estimator
from edge.audio import load_audio
from edge.frontend import asd_features
from edge.model import AsdEmbedder
from edge.pipeline import Windower
from edge.views import BRANCH_VIEWS, LEVEL_VIEW, representation, view_names, window_views
from firmware_config.defaults import DEFAULT_CONFIG
from firmware_config.fileio import atomic_write_bytes, atomic_write_json
from firmware_config.schema import load_config
from trainer.ae_baseline import AeBaselineParams, AutoencoderBaseline
from trainer.asd_adapt import DEFAULT_SITE_SSL, site_recipe, site_training_items, ssl_list
from trainer.asd_baselines import StftStatsBaseline
from trainer.asd_lomo_data import LomoSplit, list_typed_clips, lomo_split
from trainer.asd_lomo_report import (
    OURS_EMBEDDING_ONLY,
    OURS_EVERY_EMBEDDER_VIEW,
    OURS_MEAN_OVER_VIEWS,
    OURS_WITHOUT_LEVEL,
    bootstrap_ci,
    bootstrap_metrics,
    lomo_markdown,
    rates_at_threshold,
    seeds_markdown,
    seeds_summary,
    type_metrics,
)
from trainer.asd_metrics import official_score, official_score_of_sections
from trainer.data import CLASS_LABELS
from trainer.embedding_spread import embedding_spread
from trainer.asd_plots import plot_roc_curves

log = logging.getLogger(__name__)

__all__ = ["SYSTEMS", "add_cli_arguments", "run_cli"]

ROOT = Path(__file__).resolve().parent.parent

#: System key -> name in the report.
SYSTEMS: dict[str, str] = {"ours": "ours (int8)",
                           "adapted": "ours, site-adapted (int8)",
                           "ae": "DCASE 2023 AE baseline (calibration clips)",
                           "stft": "STFT mean/std + cosine (no learning)"}
#: The float Keras model the int8 bundle was converted from, scored like the node scores.
OURS_FLOAT = "ours (float)"


class _FloatEmbedder:
    """The float Keras model behind the int8 bundle ``emb``, with the bundle's interface
    (``embed``, ``embed_features``, ``embed_branch``, ``frontend``, ``metadata``,
    ``embedding_dim``, ``n_members``, ``model_id``, ``sha256``), so that it is calibrated and
    scored exactly as the node scores the bundle."""

    def __init__(self, model, emb: AsdEmbedder):
        self.model = model
        self.frontend, self.metadata = emb.frontend, emb.metadata
        self.embedding_dim, self.n_members = emb.embedding_dim, emb.n_members
        self.model_id, self.sha256 = f"{emb.model_id}-float", emb.sha256

    def embed_features(self, features: dict[str, np.ndarray]) -> np.ndarray:
        from trainer.train import float_embeddings

        return float_embeddings(self.model, {n: v[None] for n, v in features.items()},
                                self.n_members)[0]

    def embed(self, waveform: np.ndarray) -> np.ndarray:
        return self.embed_features(asd_features(waveform, self.frontend))

    def embed_branch(self, features: dict[str, np.ndarray], name: str) -> np.ndarray:
        """The branch's slice of the whole float output (the bundle runs the branch alone;
        the backend normalises each view, so the two score alike). Only ``features[name]``
        is read, as by the bundle: the other branches get zeros, which the slice does not
        depend on (the branches meet only in the final concatenation)."""
        inputs = list(self.metadata["inputs"])
        width = self.embedding_dim // len(inputs)
        b = inputs.index(name)
        full = {n: features[n] if n == name
                else np.zeros(self.frontend.input_shapes[n], np.float32) for n in inputs}
        return self.embed_features(full)[b * width:(b + 1) * width]


# --------------------------------------------------------------------------- systems


def _windows(wave: np.ndarray, window: int, hop: int) -> list[np.ndarray]:
    """The node's windows of one recording (a shorter one is zero-padded to one window)."""
    if len(wave) < window:
        wave = np.pad(wave, (0, window - len(wave)))
    return [w for _, w in Windower(window, hop).push(wave)]


def _threshold(method: str, params: dict, normal_scores: np.ndarray) -> float | None:
    try:
        return float(make_threshold_estimator(method, **params).fit(normal_scores).threshold_)
    except (ValueError, RuntimeError) as exc:
        log.warning("threshold %s not fitted: %s", method, exc)
        return None


def _run_ours(cfg, split: LomoSplit, waves: dict[Path, np.ndarray], node, n_clusters: int,
              out_dir: Path, progress: bool, adapted: bool = False,
              adapt_ssl: Sequence[str] = DEFAULT_SITE_SSL) -> dict[str, dict[str, Any]]:
    """Train without the held-out type, export int8, calibrate and score as the node does.

    Returns one result per view set: the node's ``asd.views`` (:data:`SYSTEMS` ``"ours"``),
    when they are more than the embedding the embedding alone (:data:`OURS_EMBEDDING_ONLY`),
    when they hold the level statistics the others alone (:data:`OURS_WITHOUT_LEVEL`), when
    they span several representations the node's views averaged directly instead of per
    representation (:data:`OURS_MEAN_OVER_VIEWS`, the fusion before 2026-11-30; only when
    a representation has several views), when they keep a single branch of the embedder the
    embedding and every branch in its place (:data:`OURS_EVERY_EMBEDDER_VIEW`, the views
    before 2026-12-02),
    and the float model before int8 conversion with the node's views (:data:`OURS_FLOAT`),
    all from the same trained model. ``adapted``: site
    adaptation (:mod:`trainer.asd_adapt`): the calibration clips join the training data,
    each its own class, with the SSL head ``adapt_ssl``; the node's views only
    (:data:`SYSTEMS` ``"adapted"``).
    """
    from trainer.train import TrainingSet, export_asd_bundle, train_asd

    items = [(c.path, c.label) for c in split.train]
    if adapted:
        cfg = site_recipe(cfg, f"lomo_{split.held_out}_adapted", adapt_ssl)
        items += site_training_items([c.path for c in split.calibration],
                                     [c.label.domain for c in split.calibration])
    else:
        cfg = dataclasses.replace(cfg, name=f"lomo_{split.held_out}")
    data = TrainingSet.for_recipe(items, cfg, progress)
    t0 = time.monotonic()
    model, history = train_asd(cfg, data, progress)
    train_s = time.monotonic() - t0
    path = export_asd_bundle(model, data, cfg, out_dir / "models", history,
                             extra={"evaluation": "trainer evaluate-asd --protocol "
                                    "leave-one-machine-out", "held_out_type": split.held_out})
    export_s = time.monotonic() - t0 - train_s
    emb = AsdEmbedder(path)
    a = node.asd
    sr = emb.frontend.sample_rate
    win, hop = int(round(a.window_seconds * sr)), int(round(a.hop_seconds * sr))
    meta = json.loads(path.with_suffix(".json").read_text())
    out: dict[str, dict[str, Any]] = {}
    # The node's configured views; when they are more than the embedding, the embedding
    # alone beside them; and the float model behind the int8 bundle (node's views).
    own = SYSTEMS["adapted"] if adapted else SYSTEMS["ours"]
    fusion = "representations"  # the node's (edge.backend.VIEW_FUSIONS)
    runs = [(own, emb, tuple(a.views), fusion)]
    if not adapted:
        if tuple(a.views) != ("embedding",):
            runs.append((OURS_EMBEDDING_ONLY, emb, ("embedding",), fusion))
        if LEVEL_VIEW in a.views and len(a.views) > 1:
            runs.append((OURS_WITHOUT_LEVEL, emb, tuple(v for v in a.views if v != LEVEL_VIEW),
                         fusion))
        reps = [representation(v) for v in view_names(emb, a.views)]
        if 1 < len(set(reps)) < len(reps):  # the fusions differ
            runs.append((OURS_MEAN_OVER_VIEWS, emb, tuple(a.views), "views"))
        if any(v in BRANCH_VIEWS for v in a.views):
            runs.append((OURS_EVERY_EMBEDDER_VIEW, emb,
                         ("embedding", "branches",
                          *(v for v in a.views if v not in (*BRANCH_VIEWS, "embedding"))),
                         fusion))
        runs.append((OURS_FLOAT, _FloatEmbedder(model, emb), tuple(a.views), fusion))
    spreads: dict[int, dict | None] = {}  # per embedder: the runs of one bundle share it
    for name, embedder, views, view_fusion in runs:
        windows = collect_windows(([waves[c.path]] for c in split.calibration), embedder,
                                  a.window_seconds, a.hop_seconds, views=views)
        cal = fit_calibration(windows, embedder, n_clusters, a.threshold.method,
                              dict(a.threshold.params), a.window_seconds, a.hop_seconds,
                              cfg.seed, view_fusion)
        test = np.array([max(float(cal.score_views(window_views(embedder, w,
                                                                cal.view_names))[0])
                             for w in _windows(waves[c.path], win, hop))
                         for c in split.test], np.float32)
        if id(embedder) not in spreads:
            normals = [c for c in split.calibration + split.test if not c.label.is_anomaly]
            spreads[id(embedder)] = (
                embedding_spread(np.stack([embedder.embed(waves[c.path]) for c in normals]),
                                 [c.label.class_key(CLASS_LABELS) for c in normals])
                if len(normals) >= 2 else None)
        spread = spreads[id(embedder)]
        out[name] = {
            "test": test, "threshold": float(cal.decision_threshold),
            "calibration_scores": cal.normal_scores,
            "meta": {"model": str(path), "train_seconds": train_s, "export_seconds": export_s,
                     "views": list(cal.view_names), "view_fusion": cal.view_fusion,
                     "classes": len(data.classes), "final_loss": meta.get("final_loss"),
                     "int8_vs_float_cosine": meta.get("int8_vs_float_cosine"),
                     "calibration_windows": len(windows), "memory_rows": len(cal.memory),
                     "calibration_id": cal.calibration_id,
                     "embedding_spread": spread}}
    return out


def _run_ae(split: LomoSplit, waves: dict[Path, np.ndarray], epochs: int, seed: int,
            method: str, params: dict, progress: bool) -> dict[str, Any]:
    ae = AutoencoderBaseline(AeBaselineParams(epochs=epochs, seed=seed))
    t0 = time.monotonic()
    ae.fit([waves[c.path] for c in split.calibration], progress=progress)
    train_s = time.monotonic() - t0
    cal_scores = ae.score_samples([waves[c.path] for c in split.calibration])
    return {"test": ae.score_samples([waves[c.path] for c in split.test]),
            "threshold": _threshold(method, params, cal_scores), "calibration_scores": cal_scores,
            "meta": {"train_seconds": train_s, "epochs": epochs,
                     "n_vectors_fit": ae.n_vectors_fit_, "final_loss": ae.history_[-1]}}


def _run_stft(split: LomoSplit, waves: dict[Path, np.ndarray], method: str,
              params: dict) -> dict[str, Any]:
    base = StftStatsBaseline().fit([waves[c.path] for c in split.calibration])
    return {"test": base.score_samples([waves[c.path] for c in split.test]),
            "threshold": _threshold(method, params, base.held_out_scores_),
            "calibration_scores": base.held_out_scores_,
            "meta": {"train_seconds": 0.0, "n_fft": base.n_fft, "hop_length": base.hop_length}}


def add_cli_arguments(p) -> None:
    """The options only ``--protocol leave-one-machine-out`` reads (the shared ones, e.g.
    ``--config``, ``--epochs``, ``--steps-per-epoch``, ``--ae-epochs``, ``--systems``,
    ``--min-test-normal``, ``--out``, are :func:`trainer.asd_eval.add_cli_arguments`')."""
    g = p.add_argument_group("leave-one-machine-out protocol")
    g.add_argument("--holdout-types", dest="holdout_types",
                   help="comma-separated machine types to hold out (default: every type in DATA)")
    g.add_argument("--calibration-clips", dest="calibration_clips", type=int, default=30,
                   help="most source-domain calibration clips per type (default: %(default)s)")
    g.add_argument("--calibration-target-clips", dest="calibration_target_clips", type=int,
                   default=5, help="most target-domain calibration clips (default: %(default)s)")
    g.add_argument("--adapt-ssl", dest="adapt_ssl", default=",".join(DEFAULT_SITE_SSL),
                   help="SSL augmentations of the site-adapted system (--systems adapted), "
                        "comma-separated, or 'none' (default: %(default)s)")
    g.add_argument("--seeds",
                   help="comma-separated seeds: one evaluation each (in OUT/seed_<s>/) and a "
                        "summary over them (OUT/seeds.md); one draw of a few test clips "
                        "decides little (default: --seed only)")
    g.add_argument("--bootstrap", type=int, default=300,
                   help="bootstrap resamples for the confidence intervals (default: %(default)s)")
    g.add_argument("--node-config", dest="node_config", default=str(DEFAULT_CONFIG),
                   help="node config whose asd section (windows, clusters, threshold) the "
                        "calibration uses (default: %(default)s)")


def run_cli(args) -> int:
    """Run the leave-one-machine-type-out evaluation; returns the exit status.

    With ``--seeds``, one evaluation per seed (training, calibration split and bootstrap
    all follow the seed) in ``<out>/seed_<s>/``, and a summary over the seeds in
    ``<out>/seeds.json`` and ``seeds.md`` (:func:`~trainer.asd_lomo_report.seeds_markdown`).
    """
    if not getattr(args, "seeds", None):
        return _run_one(args)
    try:
        seeds = [int(v) for v in args.seeds.split(",") if v.strip()]
    except ValueError:
        raise ValueError(f"--seeds: expected comma-separated integers, got {args.seeds!r}")
    if not seeds:
        raise ValueError("--seeds: no seed given")
    out_dir = Path(args.out or ROOT / "reports" / "asd_lomo")
    runs = {}
    for seed in seeds:
        one = argparse.Namespace(**{**vars(args), "seed": seed, "seeds": None,
                                    "out": str(out_dir / f"seed_{seed}")})
        status = _run_one(one)
        if status:
            return status
        runs[seed] = json.loads((out_dir / f"seed_{seed}" / "report.json").read_text())
    summary = seeds_summary(runs)
    atomic_write_json(out_dir / "seeds.json", summary)
    atomic_write_bytes(out_dir / "seeds.md", seeds_markdown(summary).encode())
    print(json.dumps({"report": str(out_dir / "seeds.md"),
                      "official_score_mean": {n: v["official_score"]["mean"]
                                              for n, v in summary["systems"].items()}},
                     indent=2))
    return 0


def _run_one(args) -> int:
    """One leave-one-machine-type-out evaluation at ``args.seed``."""
    t_start = time.monotonic()
    systems = [s.strip() for s in (args.systems or "ours,ae,stft").split(",") if s.strip()]
    unknown = set(systems) - set(SYSTEMS)
    if unknown or not systems:
        raise ValueError(f"--systems: unknown {sorted(unknown)}; choose from "
                         f"{', '.join(SYSTEMS)}")
    min_test_normal = 3 if args.min_test_normal is None else args.min_test_normal
    progress = not args.quiet
    out_dir = Path(args.out or ROOT / "reports" / "asd_lomo")
    out_dir.mkdir(parents=True, exist_ok=True)
    node = load_config(args.node_config)
    method, tparams = node.asd.threshold.method, dict(node.asd.threshold.params)
    n_clusters = node.asd.n_clusters if args.backend_clusters is None else args.backend_clusters
    clips, skipped = list_typed_clips(args.data)
    types = sorted({c.machine for c in clips})
    if args.holdout_types:
        wanted = [t.strip() for t in args.holdout_types.split(",") if t.strip()]
        missing = [t for t in wanted if t not in types]
        if missing:
            raise ValueError(f"--holdout-types: no clip of {missing} in {args.data} "
                             f"(found {', '.join(types)})")
        types = wanted
    cfg = None
    if {"ours", "adapted"} & set(systems):
        from trainer.train import load_train_config

        cfg = load_train_config(args.config)
        cfg.seed = args.seed
        for key in ("epochs", "steps_per_epoch", "batch_size", "ensemble_size"):
            if getattr(args, key) is not None:
                setattr(cfg, key, getattr(args, key))
    print(f"{len(clips)} clips of {len(set(c.machine for c in clips))} machine types; holding "
          f"out {', '.join(types)}; systems {', '.join(systems)}", file=sys.stderr)

    waves: dict[Path, np.ndarray] = {}
    per_type: dict[str, Any] = {}
    boots: dict[str, dict[str, dict[str, np.ndarray]]] = {}
    seconds: dict[str, float] = defaultdict(float)
    for t in types:
        try:
            split = lomo_split(clips, t, n_source=args.calibration_clips,
                               n_target=args.calibration_target_clips, seed=args.seed)
        except ValueError as exc:
            log.warning("%s", exc)
            per_type[t] = {"error": str(exc)}
            continue
        if any(c.machine == t for c in split.train):  # the protocol's one promise
            raise RuntimeError(f"fold {t}: the held-out type leaked into training")
        counts = split.counts()
        print(f"[{t}] training on {counts['train_clips']} clips of "
              f"{', '.join(counts['train_types'])}; calibration {counts['calibration']}, "
              f"test normal {counts['test_normal']}, anomalous {counts['test_anomalous']}",
              file=sys.stderr)
        for c in split.calibration + split.test:
            if c.path not in waves:
                waves[c.path] = load_audio(c.path, 16000)
        y = np.array([int(c.label.is_anomaly) for c in split.test])
        doms = np.array([c.label.domain for c in split.test])
        calibrated = {c.unit for c in split.calibration}
        known = np.array([c.unit in calibrated for c in split.test], bool)
        results: dict[str, dict[str, Any]] = {}
        if "ours" in systems:
            results.update(_run_ours(cfg, split, waves, node, n_clusters, out_dir, progress))
        if "adapted" in systems:
            results.update(_run_ours(cfg, split, waves, node, n_clusters, out_dir, progress,
                                     adapted=True, adapt_ssl=ssl_list(args.adapt_ssl)))
        if "ae" in systems:
            results[SYSTEMS["ae"]] = _run_ae(split, waves, args.ae_epochs, args.seed, method,
                                             tparams, progress)
        if "stft" in systems:
            results[SYSTEMS["stft"]] = _run_stft(split, waves, method, tparams)
        for name, r in results.items():
            seconds[name] += r["meta"]["train_seconds"]
        if {"ours", "adapted", "ae"} & set(systems):
            import tensorflow as tf

            tf.keras.backend.clear_session()
        n_normal = int((y == 0).sum())
        entry: dict[str, Any] = {
            "in_summary": bool(n_normal >= min_test_normal and y.any()), "counts": counts,
            "calibration_files": [str(c.path) for c in split.calibration],
            "test_files": [str(c.path) for c in split.test], "y_true": y.tolist(),
            "test_calibrated_unit": known.tolist(),
            "domains": doms.tolist(), "systems": {}, "plots": []}
        boots[t] = bootstrap_metrics(y, doms, {n: r["test"] for n, r in results.items()},
                                     n_boot=args.bootstrap, seed=args.seed,
                                     min_test_normal=min_test_normal)
        for name, r in results.items():
            m = type_metrics(y, doms, r["test"], min_test_normal=min_test_normal)
            m["ci"] = {k: bootstrap_ci(v) for k, v in boots[t][name].items()}
            m.update(rates_at_threshold(y, doms, r["test"], r["threshold"], known))
            m.update(decision_threshold=r["threshold"], threshold_method=method,
                     test_scores=[float(v) for v in r["test"]],
                     calibration_scores=[float(v) for v in r["calibration_scores"]],
                     meta=r["meta"])
            entry["systems"][name] = m
        own, ref = SYSTEMS["ours"], OURS_FLOAT
        if own in results and ref in results:
            # int8 conversion's cost, paired: the same bootstrap resamples for both models
            entry["int8_minus_float"] = {
                k: {"delta": (None if entry["systems"][own][k] is None
                              or entry["systems"][ref][k] is None
                              else entry["systems"][own][k] - entry["systems"][ref][k]),
                    "ci": bootstrap_ci(boots[t][own][k] - boots[t][ref][k])}
                for k in ("auc_source", "auc_all", "pauc")}
        if y.any() and n_normal:
            curves = {f"{n} (AUC {100 * m['auc_all']:.1f})": (y, np.asarray(m["test_scores"]))
                      for n, m in entry["systems"].items()}
            entry["plots"].append(str(plot_roc_curves(
                out_dir / f"roc_{t}.png", curves, f"ROC, held-out type {t}")))
        for name, m in entry["systems"].items():
            sc = np.asarray(m["test_scores"])
            tag = re.sub(r"[^A-Za-z0-9]+", "_", name.split(" (")[0]).strip("_")
            thr = {method: m["decision_threshold"]} if m["decision_threshold"] is not None else {}
            entry["plots"].append(str(plot_score_histogram(
                out_dir / f"hist_{t}_{tag}.png", sc[y == 0], sc[y == 1], thr,
                f"{name}: held-out type {t}", normal_label="normal (test)")))
        per_type[t] = entry

    in_sum = [t for t, u in per_type.items() if u.get("in_summary")]
    summary: dict[str, Any] = {}
    names = [n for t in in_sum for n in per_type[t]["systems"]]
    for name in dict.fromkeys(names):  # every system reported, in order of appearance
        res = [per_type[t]["systems"][name] for t in in_sum]
        reps = [official_score(
            [boots[t][name][k][b] for t in in_sum for k in ("auc_source", "auc_target", "pauc")
             if np.isfinite(boots[t][name][k][b])]) for b in range(args.bootstrap)]
        summary[name] = {
            "official_score": official_score_of_sections(res),
            "official_score_ci": bootstrap_ci(
                np.array([np.nan if v is None else v for v in reps])),
            "hmean_auc_source": official_score(r["auc_source"] for r in res),
            "hmean_auc_target": official_score(r["auc_target"] for r in res),
            "hmean_pauc": official_score(r["pauc"] for r in res),
            "mean_fpr": (float(np.mean([r["fpr"] for r in res if r["fpr"] is not None]))
                         if any(r["fpr"] is not None for r in res) else None),
            "mean_recall": (float(np.mean([r["recall"] for r in res
                                           if r["recall"] is not None]))
                            if any(r["recall"] is not None for r in res) else None),
            "train_seconds": seconds[name], "types": in_sum}
    report = {
        "protocol": "leave-one-machine-out", "data": str(args.data),
        "runtime_seconds": time.monotonic() - t_start, "n_bootstrap": args.bootstrap,
        "min_test_normal": min_test_normal,
        "recipe": {"config": str(args.config),
                   **({k: getattr(cfg, k) for k in ("epochs", "steps_per_epoch", "batch_size",
                                                    "ensemble_size", "loss", "class_labels",
                                                    "pseudo_labels")} if cfg else
                      {"epochs": None, "steps_per_epoch": None, "batch_size": None})},
        "node": {"config": str(args.node_config), "window_seconds": node.asd.window_seconds,
                 "hop_seconds": node.asd.hop_seconds, "n_clusters": n_clusters,
                 "threshold_method": method, "threshold_params": tparams,
                 "views": list(node.asd.views)},
        "calibration_caps": {"source": args.calibration_clips,
                             "target": args.calibration_target_clips},
        "machine_types": {t: sum(c.machine == t for c in clips) for t in
                          sorted({c.machine for c in clips})},
        "skipped_files": [str(p) for p in skipped], "systems": summary, "types": per_type}
    atomic_write_json(out_dir / "report.json", report)
    atomic_write_bytes(out_dir / "report.md", lomo_markdown(report).encode())
    print(json.dumps({"report": str(out_dir / "report.md"),
                      "official_score": {n: s["official_score"] for n, s in summary.items()},
                      "runtime_seconds": round(report["runtime_seconds"])}, indent=2))
    return 0
