"""``python -m trainer evaluate-asd --protocol leave-one-machine-out``: anomaly detection on a
machine type the embedder has never heard, the product's question.

A node is installed on some machine, records a few minutes of normal operation
(calibration: :func:`calibration.calibrate.fit_calibration`) and from then on flags windows
whose score exceeds its own threshold. The machine is rarely one of the types the embedder
was trained on. This protocol measures exactly that, with the baselines a first-shot system
has to beat side by side (SPEC "ASD embedder", first-shot generalisation).

Protocol
--------
1. Every audio file below ``DATA`` is labelled with a **machine type** (:func:`list_typed_clips`):
   the names of the DCASE 2020-2023 and MIMII sources are normalised, so fan from MIMII, DCASE
   2020 and DCASE 2023 is one type (:data:`MACHINE_TYPES`, :data:`FOLDER_ALIASES`).
2. For every held-out type ``T`` (:func:`lomo_split`):

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

4. Metrics per held-out type (:func:`type_metrics`, :mod:`trainer.asd_metrics`): AUC source and
   target (normal clips of the domain + all anomalies; only for a domain with at least
   ``min_test_normal`` normal test clips, otherwise one or two clips would decide it), pAUC
   (max_fpr 0.1), AUC over all test clips, the type's official score (harmonic mean of its
   AUCs and pAUC); at the node's decision threshold: false-positive rate on the test normals
   per domain and recall on the anomalies (:func:`rates_at_threshold`). 95 % confidence
   intervals from a paired, stratified bootstrap over clips (:func:`bootstrap_metrics`).
   Overall: the official score over the types in the summary (at least ``min_test_normal``
   normal and one anomalous test clip), i.e. the harmonic mean of their AUCs and pAUCs, with
   a bootstrap interval from the same resamples.
5. ``report.json``, ``report.md``, ROC curves and score histograms per type go to ``--out``
   (default ``reports/asd_lomo/``).

Entry points: :func:`list_typed_clips`, :func:`lomo_split`, :func:`type_metrics`,
:func:`rates_at_threshold`, :func:`bootstrap_metrics`, :func:`add_cli_arguments`,
:func:`run_cli`.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import re
import sys
import time
from collections import defaultdict
from dataclasses import dataclass
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
from edge.views import window_views
from firmware_config.defaults import DEFAULT_CONFIG
from firmware_config.fileio import atomic_write_bytes, atomic_write_json
from firmware_config.schema import load_config
from trainer.ae_baseline import AeBaselineParams, AutoencoderBaseline
from trainer.asd_adapt import DEFAULT_SITE_SSL, site_recipe, site_training_items, ssl_list
from trainer.asd_baselines import StftStatsBaseline
from trainer.asd_metrics import dcase_section_metrics, official_score, official_score_of_sections
from trainer.asd_plots import plot_roc_curves, plot_section_lines
from trainer.data import AUDIO_SUFFIXES, ClipLabel, parse_dcase_name

log = logging.getLogger(__name__)

__all__ = ["MACHINE_TYPES", "FOLDER_ALIASES", "TypedClip", "machine_type_of", "list_typed_clips",
           "LomoSplit", "lomo_split", "type_metrics", "rates_at_threshold", "bootstrap_metrics",
           "SYSTEMS", "add_cli_arguments", "run_cli"]

ROOT = Path(__file__).resolve().parent.parent

#: The machine types of DCASE 2020-2023 Task 2 and MIMII, spelled as DCASE spells them.
MACHINE_TYPES: tuple[str, ...] = ("ToyCar", "ToyConveyor", "ToyTrain", "bearing", "fan",
                                  "gearbox", "pump", "slider", "valve")

#: Folders whose name carries no type: ``dcase2020_id00`` holds a file byte-identical to a
#: DCASE 2020 slider id_00 clip (shared data README), so it is slider.
FOLDER_ALIASES: dict[str, str] = {"dcase2020_id00": "slider"}

#: System key -> name in the report.
SYSTEMS: dict[str, str] = {"ours": "ours (int8)",
                           "adapted": "ours, site-adapted (int8)",
                           "ae": "DCASE 2023 AE baseline (calibration clips)",
                           "stft": "STFT mean/std + cosine (no learning)"}
#: Our embedder scored by its embedding alone, reported beside the node's configured views
#: (``asd.views``) when those are more than the embedding.
OURS_EMBEDDING_ONLY = "ours (int8), embedding view only"
#: The float Keras model the int8 bundle was converted from, scored like the node scores.
OURS_FLOAT = "ours (float)"


class _FloatEmbedder:
    """The float Keras model behind the int8 bundle ``emb``, with the bundle's interface
    (``embed``, ``frontend``, ``metadata``, ``embedding_dim``, ``n_members``, ``model_id``,
    ``sha256``), so that it is calibrated and scored exactly as the node scores the bundle."""

    def __init__(self, model, emb: AsdEmbedder):
        self.model = model
        self.frontend, self.metadata = emb.frontend, emb.metadata
        self.embedding_dim, self.n_members = emb.embedding_dim, emb.n_members
        self.model_id, self.sha256 = f"{emb.model_id}-float", emb.sha256

    def embed(self, waveform: np.ndarray) -> np.ndarray:
        from trainer.train import float_embeddings

        feats = asd_features(waveform, self.frontend)
        return float_embeddings(self.model, {n: v[None] for n, v in feats.items()},
                                self.n_members)[0]

_TYPE_BY_LOWER = {t.lower(): t for t in MACHINE_TYPES}
_DCASE2020_STEM = re.compile(r"^(normal|anomaly)_id_\d+_\d+$")


# --------------------------------------------------------------------------- labelling


@dataclass(frozen=True)
class TypedClip:
    """One labelled recording with its normalised machine type.

    Attributes
    ----------
    path : Path
    label : ClipLabel
        ``label.machine`` is the normalised type (one of :data:`MACHINE_TYPES`).
    dataset : str
        The first folder below the data folder (which recording campaign it came from).
    """

    path: Path
    label: ClipLabel
    dataset: str

    @property
    def machine(self) -> str:
        """The normalised machine type."""
        return self.label.machine

    @property
    def unit(self) -> str:
        """``<dataset>/section_<ss>``: one recorded machine (the calibration is stratified
        over these)."""
        return f"{self.dataset}/section_{self.label.section}"


def machine_type_of(names: Sequence[str]) -> str | None:
    """The machine type named by the first of ``names`` that names one.

    A name names a type when it is one (case-insensitive), is in :data:`FOLDER_ALIASES`, or
    one of its ``_``/``-``-separated tokens is one (``mimii_fan_id00`` -> ``fan``).

    Parameters
    ----------
    names : sequence of str
        Candidates in order of preference, e.g. the machine of a DCASE name, then the
        folders from the file upwards.

    Returns
    -------
    str or None
        One of :data:`MACHINE_TYPES`.
    """
    for name in names:
        if name.lower() in _TYPE_BY_LOWER:
            return _TYPE_BY_LOWER[name.lower()]
        if name in FOLDER_ALIASES:
            return FOLDER_ALIASES[name]
        for token in re.split(r"[_\-\s]+", name):
            if token.lower() in _TYPE_BY_LOWER:
                return _TYPE_BY_LOWER[token.lower()]
    return None


def _parse(path: Path) -> ClipLabel | None:
    """Labels from a DCASE 2022+ name, the official dev layout, or a DCASE 2020 / MIMII
    name or folder (machine left as ``"?"`` where the name does not carry it)."""
    try:
        return parse_dcase_name(path)
    except ValueError:
        pass
    if path.stem.startswith("section_") and path.parent.name in ("train", "test"):
        try:
            return parse_dcase_name(path.with_name(
                f"{path.parent.parent.name}_{path.parent.name}_{path.name}"))
        except ValueError:
            pass
    if _DCASE2020_STEM.match(path.stem) or \
            path.parent.name.lower() in ("normal", "abnormal", "anomaly"):
        return parse_dcase_name(path, machine_hint="?")
    return None


def list_typed_clips(data_dir: str | Path) -> tuple[list[TypedClip], list[Path]]:
    """Label every audio file below ``data_dir`` with its normalised machine type.

    The type is taken from the DCASE name when it carries one, else from the nearest folder
    that names one (:func:`machine_type_of`).

    Parameters
    ----------
    data_dir : str or Path

    Returns
    -------
    clips : list of TypedClip, sorted by path
    skipped : list of Path
        Audio files whose labels or machine type could not be read.

    Raises
    ------
    FileNotFoundError
        If ``data_dir`` does not exist or holds no labelled audio file.
    """
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise FileNotFoundError(f"evaluation data folder not found: {data_dir}")
    clips: list[TypedClip] = []
    skipped: list[Path] = []
    for f in sorted(data_dir.rglob("*")):
        if f.suffix.lower() not in AUDIO_SUFFIXES or not f.is_file():
            continue
        lab = _parse(f)
        folders = f.relative_to(data_dir).parts[:-1]
        mtype = machine_type_of([lab.machine, *reversed(folders)]) if lab else None
        if lab is None or mtype is None:
            skipped.append(f)
            continue
        clips.append(TypedClip(f, dataclasses.replace(lab, machine=mtype),
                               folders[0] if folders else ""))
    if not clips:
        raise FileNotFoundError(
            f"no audio with a known machine type under {data_dir}: expected DCASE names or "
            f"folders naming one of {', '.join(MACHINE_TYPES)}")
    return clips, skipped


# --------------------------------------------------------------------------- split


@dataclass
class LomoSplit:
    """The clips of one fold: training without the held-out type, calibration and test of it.

    Attributes
    ----------
    held_out : str
    train : list of TypedClip
        Normal clips of every other type.
    calibration : list of TypedClip
        Normal clips of ``held_out``.
    test : list of TypedClip
        The other normal and all anomalous clips of ``held_out``.
    """

    held_out: str
    train: list[TypedClip]
    calibration: list[TypedClip]
    test: list[TypedClip]

    def counts(self) -> dict[str, Any]:
        """Clip counts: training clips and types, calibration and test clips per domain."""
        def per_domain(clips):
            return {d: sum(c.label.domain == d for c in clips) for d in ("source", "target")}

        normal = [c for c in self.test if not c.label.is_anomaly]
        return {"train_clips": len(self.train),
                "train_types": sorted({c.machine for c in self.train}),
                "calibration": per_domain(self.calibration),
                "test_normal": per_domain(normal),
                "test_anomalous": len(self.test) - len(normal)}


def _stratified(pool: list[TypedClip], k: int, rng: np.random.Generator) -> list[TypedClip]:
    """``k`` clips of ``pool`` spread over its units in proportion to their sizes."""
    groups: dict[str, list[TypedClip]] = defaultdict(list)
    for c in pool:
        groups[c.unit].append(c)
    keyed = []
    for g, (unit, items) in enumerate(sorted(groups.items())):
        order = rng.permutation(len(items))
        offset = rng.uniform()  # breaks ties between units at random, reproducibly
        keyed += [((r + 0.5) / len(items), offset, g, items[i]) for r, i in enumerate(order)]
    keyed.sort(key=lambda t: t[:3])
    return [t[3] for t in keyed[:k]]


def lomo_split(clips: Sequence[TypedClip], held_out: str, *, n_source: int = 30,
               n_target: int = 5, min_calibration: int = 2, seed: int = 0) -> LomoSplit:
    """Training, calibration and test clips of the fold that holds out one machine type.

    Parameters
    ----------
    clips : sequence of TypedClip
    held_out : str
        The machine type never heard in training.
    n_source, n_target : int, keyword-only
        Most calibration clips per domain ("a few minutes" of normal operation).
    min_calibration : int, keyword-only
        Fewest calibration clips; the node needs two non-overlapping windows.
    seed : int, keyword-only
        Seed of the (stratified) choice of calibration clips.

    Returns
    -------
    LomoSplit
        Each domain gives ``min(cap, n_normal_of_domain // 2)`` calibration clips, spread over
        the type's units; when that is fewer than ``min_calibration``, more are taken (from
        the larger domain) as long as one normal test clip remains.

    Raises
    ------
    ValueError
        If ``held_out`` has no clip, or too few normal clips for ``min_calibration``
        calibration clips and one normal test clip.
    """
    own = [c for c in clips if c.machine == held_out]
    if not own:
        raise ValueError(f"no clip of machine type {held_out!r}")
    rng = np.random.default_rng(seed)
    normals = [c for c in own if not c.label.is_anomaly]
    pools = {d: [c for c in normals if c.label.domain == d] for d in ("source", "target")}
    chosen: list[TypedClip] = []
    for dom, cap in (("source", n_source), ("target", n_target)):
        chosen += _stratified(pools[dom], min(cap, len(pools[dom]) // 2), rng)
    if len(chosen) < min_calibration:
        if len(normals) < min_calibration + 1:
            raise ValueError(f"machine type {held_out!r} has {len(normals)} normal clip(s): "
                             f"need {min_calibration} for calibration and one for testing")
        for dom in sorted(pools, key=lambda d: -len(pools[d])):
            rest = [c for c in pools[dom] if c not in chosen]
            room = len(normals) - len(chosen) - 1
            chosen += _stratified(rest, max(0, min(min_calibration - len(chosen), room)), rng)
    cal = set(chosen)
    train = [c for c in clips if c.machine != held_out and not c.label.is_anomaly]
    return LomoSplit(held_out, train, sorted(cal, key=lambda c: str(c.path)),
                     [c for c in own if c not in cal])


# --------------------------------------------------------------------------- metrics


def type_metrics(y_true: np.ndarray, domains: np.ndarray, scores: np.ndarray, *,
                 min_test_normal: int = 3, max_fpr: float = 0.1) -> dict[str, Any]:
    """Threshold-free metrics of one system on one held-out type.

    Parameters
    ----------
    y_true : np.ndarray, shape (n,), int (1 = anomaly)
    domains : np.ndarray, shape (n,), str
    scores : np.ndarray, shape (n,), float
    min_test_normal : int, keyword-only
        A domain's AUC needs at least this many normal test clips of the domain (else
        ``None``): with one normal clip it is the rank of one recording.
    max_fpr : float, keyword-only

    Returns
    -------
    dict
        :func:`trainer.asd_metrics.dcase_section_metrics` keys plus ``official``: the harmonic
        mean of the defined AUC source, AUC target and pAUC.
    """
    m: dict[str, Any] = dcase_section_metrics(y_true, scores, domains, max_fpr=max_fpr)
    for dom in ("source", "target"):
        if m[f"n_normal_{dom}"] < min_test_normal:
            m[f"auc_{dom}"] = None
    m["official"] = official_score([m["auc_source"], m["auc_target"], m["pauc"]])
    return m


def rates_at_threshold(y_true: np.ndarray, domains: np.ndarray, scores: np.ndarray,
                       threshold: float | None) -> dict[str, float | None]:
    """False-positive rate on the normal clips (per domain) and recall on the anomalies.

    The decision rule is the node's: anomalous when ``score > threshold``.

    Returns
    -------
    dict
        ``fpr_source``, ``fpr_target``, ``fpr`` (all normals), ``recall``; ``None`` where there
        is no clip of that kind or no threshold.
    """
    y = np.asarray(y_true).astype(bool)
    d = np.asarray(domains).astype(str)
    s = np.asarray(scores, np.float64)
    out: dict[str, float | None] = {}

    def rate(mask):
        return None if threshold is None or not mask.any() else float(np.mean(s[mask] > threshold))

    out["fpr_source"] = rate(~y & (d == "source"))
    out["fpr_target"] = rate(~y & (d == "target"))
    out["fpr"] = rate(~y)
    out["recall"] = rate(y)
    return out


_BOOT_KEYS = ("auc_source", "auc_target", "pauc", "auc_all", "official")


def bootstrap_metrics(y_true: np.ndarray, domains: np.ndarray, scores: dict[str, np.ndarray],
                      *, n_boot: int = 300, seed: int = 0, min_test_normal: int = 3,
                      max_fpr: float = 0.1) -> dict[str, dict[str, np.ndarray]]:
    """Paired, stratified bootstrap of :func:`type_metrics` over clips.

    Every resample draws, with replacement, as many clips from each stratum (normal source,
    normal target, anomalous) as it holds, and the same resample is scored for every system
    (paired). A metric undefined on the original clips stays undefined.

    Parameters
    ----------
    y_true : np.ndarray, shape (n,), int
    domains : np.ndarray, shape (n,), str
    scores : dict of str -> np.ndarray, each shape (n,)
        System name -> anomaly scores of the same clips.
    n_boot : int, keyword-only
        Resamples (0: none).

    Returns
    -------
    dict of str -> dict of str -> np.ndarray, shape (n_boot,), float
        System -> metric (``auc_source``, ``auc_target``, ``pauc``, ``auc_all``,
        ``official``) -> replicate values (NaN where undefined).
    """
    y = np.asarray(y_true).astype(int)
    d = np.asarray(domains).astype(str)
    strata = [np.flatnonzero(m) for m in ((y == 0) & (d == "source"), (y == 0) & (d == "target"),
                                          y == 1) if m.any()]
    rng = np.random.default_rng(seed)
    out = {name: {k: np.full(n_boot, np.nan) for k in _BOOT_KEYS} for name in scores}
    base = {name: type_metrics(y, d, s, min_test_normal=min_test_normal, max_fpr=max_fpr)
            for name, s in scores.items()}
    for b in range(n_boot):
        idx = np.concatenate([rng.choice(ix, len(ix)) for ix in strata])
        for name, s in scores.items():
            m = type_metrics(y[idx], d[idx], np.asarray(s)[idx], min_test_normal=0,
                             max_fpr=max_fpr)
            for k in ("auc_source", "auc_target", "pauc", "auc_all"):
                if base[name][k] is not None and m[k] is not None:
                    out[name][k][b] = m[k]
            kept = [out[name][k][b] for k in ("auc_source", "auc_target", "pauc")
                    if base[name][k] is not None and np.isfinite(out[name][k][b])]
            v = official_score(kept)
            out[name]["official"][b] = np.nan if v is None else v
    return out


def _ci(values: np.ndarray) -> list[float] | None:
    v = np.asarray(values, float)
    v = v[np.isfinite(v)]
    return None if not len(v) else [float(np.percentile(v, 2.5)), float(np.percentile(v, 97.5))]


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
    data = TrainingSet(items, cfg.frontend, progress)
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
    runs = [(own, emb, tuple(a.views))]
    if not adapted:
        if tuple(a.views) != ("embedding",):
            runs.append((OURS_EMBEDDING_ONLY, emb, ("embedding",)))
        runs.append((OURS_FLOAT, _FloatEmbedder(model, emb), tuple(a.views)))
    for name, embedder, views in runs:
        windows = collect_windows(([waves[c.path]] for c in split.calibration), embedder,
                                  a.window_seconds, a.hop_seconds, views=views)
        cal = fit_calibration(windows, embedder, n_clusters, a.threshold.method,
                              dict(a.threshold.params), a.window_seconds, a.hop_seconds,
                              cfg.seed)
        test = np.array([max(float(cal.score_views(window_views(embedder, w,
                                                                cal.view_names))[0])
                             for w in _windows(waves[c.path], win, hop))
                         for c in split.test], np.float32)
        out[name] = {
            "test": test, "threshold": float(cal.decision_threshold),
            "calibration_scores": cal.normal_scores,
            "meta": {"model": str(path), "train_seconds": train_s, "export_seconds": export_s,
                     "views": list(cal.view_names),
                     "classes": len(data.classes), "final_loss": meta.get("final_loss"),
                     "int8_vs_float_cosine": meta.get("int8_vs_float_cosine"),
                     "calibration_windows": len(windows), "memory_rows": len(cal.memory),
                     "calibration_id": cal.calibration_id}}
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


# --------------------------------------------------------------------------- report


def _pct(v) -> str:
    return "n/a" if v is None else f"{100 * v:.1f}"


def _with_ci(r: dict[str, Any], key: str) -> str:
    ci = r["ci"].get(key)
    if r.get(key) is None:
        return "n/a"
    return _pct(r[key]) + (f" [{_pct(ci[0])}, {_pct(ci[1])}]" if ci else "")


def _markdown(rep: dict[str, Any]) -> str:
    names = list(rep["systems"])
    summary_types = [t for t, u in rep["types"].items() if u.get("in_summary")]
    lines = [
        "# Leave-one-machine-type-out evaluation", "",
        f"Data: `{rep['data']}`; produced by `python -m trainer evaluate-asd --protocol "
        f"leave-one-machine-out` in {rep['runtime_seconds'] / 60:.1f} min. For every machine "
        "type, our embedder is trained without any clip of it (all other types' normal clips; "
        f"recipe `{rep['recipe']['config']}`, {rep['recipe']['epochs']} epochs x "
        f"{rep['recipe']['steps_per_epoch']} steps, batch {rep['recipe']['batch_size']}), "
        "exported to int8 and calibrated on a few normal clips of the held-out type as the node "
        f"calibrates (windows of {rep['node']['window_seconds']:g} s every "
        f"{rep['node']['hop_seconds']:g} s, {rep['node']['n_clusters']} k-means clusters + every "
        f"window, threshold `{rep['node']['threshold_method']}` "
        f"{json.dumps(rep['node']['threshold_params'])} on held-out window scores; views "
        f"{', '.join(rep['node'].get('views', ['embedding']))}, each against its own memory and "
        "standardised on its held-out log distances, averaged, as `edge.views` describes; "
        f"`{OURS_EMBEDDING_ONLY}`: the same model scored by its embedding alone); a "
        "clip's score is its highest window score. The DCASE 2023 autoencoder baseline is "
        "trained on the same calibration clips only (threshold on its in-sample scores); the "
        "STFT baseline (per-bin mean and std of the log-magnitude STFT, Hann 1024, hop 512, "
        "nearest calibration clip by cosine) learns nothing (threshold on leave-one-out "
        "calibration scores). All systems are tested on the same clips: the type's other "
        "normal clips and all its anomalous ones.", "",
        f"AUC per domain: normal test clips of the domain + all anomalies, reported only for a "
        f"domain with at least {rep['min_test_normal']} normal test clips; pAUC: max_fpr 0.1; "
        "official: harmonic mean of the defined AUCs and pAUC; FPR (normal test clips, source/"
        "target) and recall at the node's own decision threshold (score > threshold). "
        f"[x, y]: 95 % bootstrap interval ({rep['n_bootstrap']} paired resamples of clips, "
        "stratified by class and domain). Values in percent. The summary covers the types with "
        f"at least {rep['min_test_normal']} normal and one anomalous test clip: "
        f"{', '.join(summary_types) or 'none'}.", "",
        "## Summary", "",
        "| system | official score [95% CI] | h-mean AUC source | h-mean pAUC | mean FPR at "
        "threshold | mean recall at threshold | training time |",
        "|---|---|---|---|---|---|---|"]
    for n in names:
        s = rep["systems"][n]
        ci = s["official_score_ci"]
        lines.append(
            f"| {n} | **{_pct(s['official_score'])}**"
            + (f" [{_pct(ci[0])}, {_pct(ci[1])}]" if ci else "")
            + f" | {_pct(s['hmean_auc_source'])} | {_pct(s['hmean_pauc'])} | "
            f"{_pct(s['mean_fpr'])} | {_pct(s['mean_recall'])} | {s['train_seconds']:.0f} s |")
    lines += ["", "## Per held-out machine type", "",
              "| held-out type | in summary | training clips | calibration clips (src/tgt) | "
              "test normal (src/tgt) / anomalous | system | AUC source | AUC target | pAUC | "
              "official | FPR at threshold (src/tgt) | recall at threshold |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for t, u in rep["types"].items():
        if "error" in u:
            lines.append(f"| {t} | no | | | | {u['error']} | | | | | | |")
            continue
        k = u["counts"]
        for n, r in u["systems"].items():
            lines.append(
                f"| {t} | {'yes' if u['in_summary'] else 'no'} | {k['train_clips']} | "
                f"{k['calibration']['source']}/{k['calibration']['target']} | "
                f"{k['test_normal']['source']}/{k['test_normal']['target']} / "
                f"{k['test_anomalous']} | {n} | {_with_ci(r, 'auc_source')} | "
                f"{_with_ci(r, 'auc_target')} | {_with_ci(r, 'pauc')} | {_pct(r['official'])} | "
                f"{_pct(r['fpr_source'])}/{_pct(r['fpr_target'])} | {_pct(r['recall'])} |")
    lines += plot_section_lines(rep["types"], rep.get("skipped_files"), "without a machine type")
    return "\n".join(lines) + "\n"


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
    g.add_argument("--bootstrap", type=int, default=300,
                   help="bootstrap resamples for the confidence intervals (default: %(default)s)")
    g.add_argument("--node-config", dest="node_config", default=str(DEFAULT_CONFIG),
                   help="node config whose asd section (windows, clusters, threshold) the "
                        "calibration uses (default: %(default)s)")


def run_cli(args) -> int:
    """Run the leave-one-machine-type-out evaluation; returns the exit status."""
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
            "domains": doms.tolist(), "systems": {}, "plots": []}
        boots[t] = bootstrap_metrics(y, doms, {n: r["test"] for n, r in results.items()},
                                     n_boot=args.bootstrap, seed=args.seed,
                                     min_test_normal=min_test_normal)
        for name, r in results.items():
            m = type_metrics(y, doms, r["test"], min_test_normal=min_test_normal)
            m["ci"] = {k: _ci(v) for k, v in boots[t][name].items()}
            m.update(rates_at_threshold(y, doms, r["test"], r["threshold"]))
            m.update(decision_threshold=r["threshold"], threshold_method=method,
                     test_scores=[float(v) for v in r["test"]],
                     calibration_scores=[float(v) for v in r["calibration_scores"]],
                     meta=r["meta"])
            entry["systems"][name] = m
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
            "official_score_ci": _ci(np.array([np.nan if v is None else v for v in reps])),
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
                                                    "ensemble_size", "loss")} if cfg else
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
    atomic_write_bytes(out_dir / "report.md", _markdown(report).encode())
    print(json.dumps({"report": str(out_dir / "report.md"),
                      "official_score": {n: s["official_score"] for n, s in summary.items()},
                      "runtime_seconds": round(report["runtime_seconds"])}, indent=2))
    return 0
