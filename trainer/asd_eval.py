"""``python -m trainer evaluate-asd DATA``: our ASD system vs the DCASE 2023 autoencoder
baseline, measured the way the DCASE community measures it.

Protocol
--------
1. Every audio file below ``DATA`` is labelled from its name and folders
   (:func:`list_eval_clips`): machine type, section, domain (source/target), normal or
   anomalous, and train or test split. A *unit* is one machine type x section, the level
   at which DCASE reports its metrics.
2. **Ours** is trained on all units' normal training clips at once (classes machine type
   x section x attributes, thesis Section 5.3.1) with the recipe of ``--config``, exported
   to full-integer int8, and scored in float (Keras) and int8 (TFLite, as on the node). The
   backend of every unit is the thesis' (Section 5.3.1): k-means centers of its source
   training embeddings plus every target training embedding; the anomaly score is the
   minimum cosine distance to them (summed over ensemble members).
3. **The autoencoder baseline** (:mod:`trainer.ae_baseline`) is trained per machine type
   on the same training clips; its anomaly score is the mean reconstruction MSE.
4. Metrics per unit (:mod:`trainer.asd_metrics`): AUC source and target (normal clips of
   the domain plus all anomalies, as the DCASE 2023 evaluator), pAUC (max_fpr 0.1, both
   domains), the DCASE official score (harmonic mean over all units' AUCs and pAUCs),
   precision/recall/F1 at the decision threshold of every threshold estimator of
   :mod:`calibration.thresholds` fit on the unit's *normal training* scores (held out:
   each training clip is scored against a backend built without it, 5-fold; the
   autoencoder's training clips are scored by the trained model itself, as the DCASE
   baseline fits its threshold), F1-EV and bounded F1-EV (thesis Definitions 4.1 and 4.2). Summaries (the
   official score among them) cover the units with at least ``--min-test-normal`` normal
   and one anomalous test clip; with fewer, an AUC is 0 or 1 by chance (one normal
   against one anomaly) and a single 0 would zero the harmonic mean. Every DCASE
   section (100-200 test clips) qualifies; the excluded units are still reported.
5. The report (``report.json``, ``report.md``, ROC curves and score histograms per unit)
   goes to ``--out``.

This is ``--protocol seen`` (the default): every machine type is in the training data. The
product's question, a machine type the embedder never heard, is ``--protocol
leave-one-machine-out`` (:mod:`trainer.asd_lomo`).
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
from typing import Any

import numpy as np

from calibration.calibrate import kmeans_centers
from calibration.plots import plot_score_histogram
from calibration.thresholds import THRESHOLD_METHODS, make_threshold_estimator
from edge.audio import load_audio
from edge.backend import min_cosine_distance
from edge.frontend import asd_features
from edge.model import AsdEmbedder
from firmware_config.fileio import atomic_write_bytes, atomic_write_json
from trainer.ae_baseline import AeBaselineParams, AutoencoderBaseline
from trainer.asd_metrics import (
    bounded_f1_ev,
    dcase_section_metrics,
    f1_ev,
    official_score,
    official_score_of_sections,
    precision_recall_f1,
)
from trainer import asd_lomo
from trainer.asd_plots import plot_roc_curves, plot_section_lines
from trainer.data import AUDIO_SUFFIXES, ClipLabel, parse_dcase_name
from trainer.kws_data import default_data_dir

log = logging.getLogger(__name__)

__all__ = ["EvalClip", "list_eval_clips", "unit_backend_scores", "evaluate_scores",
           "add_cli_arguments", "run_cli"]

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class EvalClip:
    """One labelled recording of the evaluation.

    Attributes
    ----------
    path : Path
    label : ClipLabel
        Machine type, section, domain, anomaly flag, attributes.
    split : {"train", "test"}
    """

    path: Path
    label: ClipLabel
    split: str

    @property
    def unit(self) -> str:
        """``<machine>_section_<ss>``: the level DCASE reports metrics at."""
        return f"{self.label.machine}_section_{self.label.section}"


def _split_of(path: Path) -> str | None:
    name = path.name
    for split in ("train", "test"):
        if f"_{split}_" in name or name.startswith(f"{split}_") or path.parent.name == split:
            return split
    return None


def _label_of(path: Path) -> ClipLabel | None:
    """Labels from a DCASE-style name; ``None`` when the file follows no known layout."""
    try:
        return parse_dcase_name(path)
    except ValueError:
        pass
    # Official DCASE 2022+ layout: <machine>/<train|test>/section_00_source_train_normal_...
    if path.stem.startswith("section_") and path.parent.name in ("train", "test"):
        try:
            lab = parse_dcase_name(path.with_name(
                f"{path.parent.parent.name}_{path.parent.name}_{path.name}"))
            return lab
        except ValueError:
            pass
    # DCASE 2020 (<machine>/<train|test>/normal_id_00_... or <machine>/normal_id_00_...) and
    # MIMII (<machine id>/<normal|abnormal>/).
    if re.match(r"^(normal|anomaly)_id_\d+_\d+$", path.stem):
        folder = path.parent.parent if path.parent.name.lower() in ("train", "test") \
            else path.parent
        return parse_dcase_name(path, machine_hint=folder.name)
    if path.parent.name.lower() in ("normal", "abnormal", "anomaly"):
        return parse_dcase_name(path, machine_hint=path.parent.parent.name)
    return None


def list_eval_clips(data_dir: str | Path, train_fraction: float = 0.5,
                    holdout_fraction: float = 0.2) -> tuple[list[EvalClip], list[Path]]:
    """Label every audio file below ``data_dir`` and assign it to train or test.

    Split rules, in order:

    1. the name (``_train_`` / ``_test_``) or the parent folder (``train/`` / ``test/``)
       says it (DCASE 2020-2024 layouts);
    2. otherwise (MIMII's ``normal/`` and ``abnormal/``): anomalies are test clips, and the
       first ``train_fraction`` of a unit's normal clips (sorted by name) are training
       clips, the rest test clips;
    3. a unit left without normal test clips (e.g. a DCASE 2020 folder that holds only
       training clips and a few anomalies) moves the last ``holdout_fraction`` of its
       normal training clips (at least one) to the test split.

    Anomalous clips are never used for training.

    Parameters
    ----------
    data_dir : str or Path
    train_fraction, holdout_fraction : float in (0, 1)

    Returns
    -------
    clips : list of EvalClip, sorted by path
    skipped : list of Path
        Audio files whose labels could not be read from their names or folders.

    Raises
    ------
    FileNotFoundError
        If ``data_dir`` does not exist or holds no labelled audio file.
    """
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise FileNotFoundError(f"evaluation data folder not found: {data_dir}")
    labelled: list[tuple[Path, ClipLabel, str | None]] = []
    skipped: list[Path] = []
    for f in sorted(data_dir.rglob("*")):
        if f.suffix.lower() not in AUDIO_SUFFIXES or not f.is_file():
            continue
        lab = _label_of(f)
        if lab is None:
            skipped.append(f)
        else:
            labelled.append((f, lab, _split_of(f)))
    if not labelled:
        raise FileNotFoundError(
            f"no labelled audio under {data_dir}: expected DCASE names "
            "(<machine>_<split>_section_<ss>_<domain>_<split>_<normal|anomaly>_<nnnn>_<attrs>.wav"
            ", <machine>/<train|test>/section_..., <machine>/<train|test>/normal_id_00_...) or "
            "MIMII folders (<machine>/normal/, <machine>/abnormal/)")
    by_unit: dict[str, list[list]] = defaultdict(list)
    for f, lab, split in labelled:
        by_unit[f"{lab.machine}_section_{lab.section}"].append([f, lab, split])
    clips: list[EvalClip] = []
    for unit, items in by_unit.items():
        unknown_normal = [it for it in items if it[2] is None and not it[1].is_anomaly]
        n_train = int(round(train_fraction * len(unknown_normal)))
        for i, it in enumerate(unknown_normal):
            it[2] = "train" if i < n_train else "test"
        for it in items:
            if it[2] is None or it[1].is_anomaly:
                it[2] = "test"
        if not any(it[2] == "test" and not it[1].is_anomaly for it in items):
            train_normal = [it for it in items if it[2] == "train"]
            n_hold = max(1, int(round(holdout_fraction * len(train_normal))))
            if len(train_normal) > n_hold:
                for it in train_normal[-n_hold:]:
                    it[2] = "test"
        clips += [EvalClip(f, lab, split) for f, lab, split in items]
    return sorted(clips, key=lambda c: str(c.path)), skipped


# --------------------------------------------------------------------------- scoring


def _backend_memory(emb: np.ndarray, domains: np.ndarray, n_clusters: int, n_members: int,
                    seed: int) -> np.ndarray:
    """Thesis Section 5.3.1: k-means centers of the source embeddings + all target ones."""
    parts = []
    src = emb[domains == "source"]
    if len(src):
        parts.append(kmeans_centers(src, n_clusters, seed, n_members))
    parts.append(emb[domains == "target"])
    return np.concatenate(parts)


def unit_backend_scores(train_emb: np.ndarray, train_domains: np.ndarray,
                        test_emb: np.ndarray, n_clusters: int = 16, n_members: int = 1,
                        seed: int = 0, n_folds: int = 5) -> tuple[np.ndarray, np.ndarray]:
    """Anomaly scores of one unit's test clips, and held-out scores of its training clips.

    Parameters
    ----------
    train_emb : np.ndarray, shape (n_train, D), float32
        Embeddings of the unit's normal training clips.
    train_domains : np.ndarray, shape (n_train,), str
        ``"source"`` or ``"target"``.
    test_emb : np.ndarray, shape (n_test, D), float32
    n_clusters : int
        k-means clusters for the source domain (16 in the thesis, at most one per clip).
    n_members : int
        Ensemble members (scores summed).
    n_folds : int
        Folds of the held-out training scores.

    Returns
    -------
    test_scores : np.ndarray, shape (n_test,), float32
    train_scores : np.ndarray, shape (n_train,), float32
        Every training clip scored against a backend built without it: the clips are
        split into ``min(n_folds, n_train)`` interleaved folds, and each fold is scored
        against the backend of the others (leave-one-out for five clips or fewer), so
        the threshold estimators see scores of unseen normal clips. Empty if there is
        only one training clip.
    """
    memory = _backend_memory(train_emb, train_domains, n_clusters, n_members, seed)
    test_scores = min_cosine_distance(test_emb, memory, n_members)
    n = len(train_emb)
    if n < 2:
        return test_scores, np.zeros(0, np.float32)
    train_scores = np.zeros(n, np.float32)
    fold = np.arange(n) % min(n_folds, n)
    for k in np.unique(fold):
        keep = fold != k
        mem = _backend_memory(train_emb[keep], train_domains[keep], n_clusters, n_members, seed)
        train_scores[~keep] = min_cosine_distance(train_emb[~keep], mem, n_members)
    return test_scores, train_scores


def evaluate_scores(y_true: np.ndarray, domains: np.ndarray, test_scores: np.ndarray,
                    train_scores: np.ndarray, max_fpr: float = 0.1) -> dict[str, Any]:
    """All metrics of one system on one unit.

    Parameters
    ----------
    y_true : np.ndarray, shape (n_test,), int (1 = anomaly)
    domains : np.ndarray, shape (n_test,), str
    test_scores : np.ndarray, shape (n_test,), float
    train_scores : np.ndarray, shape (n_train,), float
        Normal scores the threshold estimators are fit on.

    Returns
    -------
    dict
        ``dcase_section_metrics`` keys plus ``f1_ev``, ``bounded_f1_ev`` and ``thresholds``:
        estimator name -> {decision_threshold, precision, recall, f1} (or {error}).
    """
    out: dict[str, Any] = dcase_section_metrics(y_true, test_scores, domains, max_fpr=max_fpr)
    has_both = bool(y_true.any() and (~y_true.astype(bool)).any())
    out["f1_ev"] = float(f1_ev(y_true, test_scores)) if has_both else None
    out["bounded_f1_ev"] = float(bounded_f1_ev(y_true, test_scores)) if has_both else None
    thr: dict[str, Any] = {}
    for method in THRESHOLD_METHODS:
        try:
            est = make_threshold_estimator(method).fit(train_scores)
        except Exception as exc:  # too few scores for this estimator, degenerate fit, ...
            thr[method] = {"error": f"{type(exc).__name__}: {exc}"}
            continue
        entry = {"decision_threshold": float(est.threshold_)}
        if y_true.any():
            p, r, f = precision_recall_f1(y_true, test_scores, est.threshold_)
            entry.update(precision=float(p), recall=float(r), f1=float(f))
        thr[method] = entry
    out["thresholds"] = thr
    return out


# --------------------------------------------------------------------------- systems


def _load_waves(clips: list[EvalClip], sample_rate: int, progress: bool) -> list[np.ndarray]:
    from tqdm import tqdm

    return [load_audio(c.path, sample_rate) for c in
            tqdm(clips, desc="loading clips", unit="clip", disable=not progress)]


def _run_ours(cfg, train: list[EvalClip], test: list[EvalClip], out_dir: Path,
              progress: bool) -> dict[str, dict[str, np.ndarray]]:
    """Train our embedder on the training clips, export int8; embeddings of every clip
    in float and int8, keyed ``"float"`` / ``"int8"`` -> {"train": (n, D), "test": (m, D)}."""
    from trainer.train import (
        TrainingSet,
        export_asd_bundle,
        float_embeddings,
        train_asd,
    )

    data = TrainingSet.for_recipe([(c.path, c.label) for c in train], cfg, progress)
    frontend = data.frontend
    print(f"ours: {len(data)} training clips, {len(data.classes)} classes, loss {cfg.loss}, "
          f"SSL {cfg.ssl or 'off'}, ensemble of {cfg.ensemble_size}", file=sys.stderr)
    t0 = time.monotonic()
    model, history = train_asd(cfg, data, progress)
    train_seconds = time.monotonic() - t0
    path = export_asd_bundle(model, data, cfg, out_dir / "models", history,
                             extra={"evaluation": "trainer evaluate-asd"})
    model.save(path.with_suffix(".keras"))  # the float model that was evaluated
    emb_int8 = AsdEmbedder(path)
    test_waves = _load_waves(test, frontend.sample_rate, progress)
    result: dict[str, dict[str, np.ndarray]] = {"float": {}, "int8": {}}
    from tqdm import tqdm

    for split, waves in (("train", data.waveforms), ("test", test_waves)):
        feats = [asd_features(w, frontend) for w in waves]
        stacked = {n: np.stack([f[n] for f in feats]) for n in feats[0]}
        result["float"][split] = float_embeddings(model, stacked, cfg.ensemble_size)
        result["int8"][split] = np.stack([emb_int8.embed_features(f) for f in
                                          tqdm(feats, desc=f"int8 embeddings ({split})",
                                               disable=not progress)])
    result["_meta"] = {"model": str(path), "train_seconds": train_seconds,
                       "n_members": cfg.ensemble_size, "int8_bytes": emb_int8.metadata["size_bytes"],
                       "float_bytes": emb_int8.metadata["float_tflite_size_bytes"]}
    return result


def _run_ae(train: list[EvalClip], test: list[EvalClip], args, progress: bool
            ) -> dict[str, Any]:
    """One autoencoder per machine type; returns per-clip scores and timing."""
    params = AeBaselineParams(epochs=args.ae_epochs, seed=args.seed)
    train_scores = np.zeros(len(train), np.float32)
    test_scores = np.zeros(len(test), np.float32)
    t0 = time.monotonic()
    for machine in sorted({c.label.machine for c in train}):
        tr = [i for i, c in enumerate(train) if c.label.machine == machine]
        te = [i for i, c in enumerate(test) if c.label.machine == machine]
        print(f"autoencoder baseline: {machine}, {len(tr)} training clips", file=sys.stderr)
        tr_w = _load_waves([train[i] for i in tr], params.sample_rate, False)
        ae = AutoencoderBaseline(params).fit(tr_w, progress=progress)
        train_scores[tr] = ae.score_samples(tr_w)
        if te:
            test_scores[te] = ae.score_samples(_load_waves([test[i] for i in te],
                                                           params.sample_rate, False))
    return {"train": train_scores, "test": test_scores,
            "_meta": {"train_seconds": time.monotonic() - t0,
                      "params": dataclasses.asdict(params)}}


# --------------------------------------------------------------------------- report


def _fmt(v, pct=True) -> str:
    if v is None:
        return "n/a"
    return f"{100 * v:.1f}" if pct else f"{v:.4g}"


def _summary(units: dict[str, dict[str, Any]], system: str) -> dict[str, Any]:
    """Official score and mean F1 per estimator over the units in the summary."""
    res = [u["systems"][system] for u in units.values()
           if system in u["systems"] and u["in_summary"]]
    f1 = {}
    for m in THRESHOLD_METHODS:
        vals = [r["thresholds"][m]["f1"] for r in res if "f1" in r["thresholds"].get(m, {})]
        f1[m] = float(np.mean(vals)) if vals else None

    def mean_of(key):
        vals = [r[key] for r in res if r.get(key) is not None]
        return float(np.mean(vals)) if vals else None

    def hmean_of(key):  # harmonic mean skipping undefined values, as the official score
        return official_score(r.get(key) for r in res)

    return {"official_score": official_score_of_sections(res),
            "hmean_auc_source": hmean_of("auc_source"), "hmean_auc_target": hmean_of("auc_target"),
            "hmean_pauc": hmean_of("pauc"), "mean_f1_ev": mean_of("f1_ev"),
            "mean_bounded_f1_ev": mean_of("bounded_f1_ev"), "mean_f1": f1}


def _markdown(report: dict[str, Any]) -> str:
    systems = report["systems"]
    lines = ["# Anomalous sound detection evaluation", "",
             f"Data: `{report['data']}` ({report['n_train']} normal training clips, "
             f"{report['n_test']} test clips, {len(report['units'])} machine type x section "
             "units). Produced by `python -m trainer evaluate-asd`.", "",
             "Metrics as the DCASE 2023 Task 2 evaluator: AUC per domain (normal clips of the "
             "domain + all anomalies), pAUC with max_fpr 0.1 over both domains (sklearn, "
             "McClish-standardised), official score = harmonic mean of all AUCs and pAUCs; "
             "'n/a': the unit has no clip of that kind. Summary rows cover the units marked "
             f"'yes' (at least {report['min_test_normal']} normal and one anomalous test clip). "
             "F1 at each threshold estimator's "
             "decision threshold fit on held-out normal training scores; F1-EV and bounded "
             "F1-EV (beta 0.2): thesis Definitions 4.1 and 4.2. All values in percent.", "",
             "## Summary", "",
             "| system | official score | h-mean AUC source | h-mean AUC target | h-mean pAUC "
             "| mean F1-EV | mean bounded F1-EV | train time |",
             "|---|---|---|---|---|---|---|---|"]
    for name, s in systems.items():
        sm = s["summary"]
        lines.append(f"| {name} | **{_fmt(sm['official_score'])}** | {_fmt(sm['hmean_auc_source'])}"
                     f" | {_fmt(sm['hmean_auc_target'])} | {_fmt(sm['hmean_pauc'])} | "
                     f"{_fmt(sm['mean_f1_ev'])} | {_fmt(sm['mean_bounded_f1_ev'])} | "
                     f"{s.get('train_seconds', 0):.0f} s |")
    lines += ["", "## Per unit", "",
              "| unit | in summary | test normal (source/target) / anomalous | system | "
              "AUC source | AUC target | pAUC | AUC all | F1-EV | bounded F1-EV |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for unit, u in report["units"].items():
        for name, r in u["systems"].items():
            lines.append(f"| {unit} | {'yes' if u['in_summary'] else 'no'} | "
                         f"{r['n_normal_source']}/{r['n_normal_target']} / "
                         f"{r['n_anomaly']} | {name} | {_fmt(r['auc_source'])} | "
                         f"{_fmt(r['auc_target'])} | {_fmt(r['pauc'])} | {_fmt(r['auc_all'])} | "
                         f"{_fmt(r['f1_ev'])} | {_fmt(r['bounded_f1_ev'])} |")
    lines += ["", "## F1 at each threshold estimator (mean over the summary's units)", "",
              "| estimator | " + " | ".join(systems) + " |",
              "|---|" + "---|" * len(systems)]
    for m in THRESHOLD_METHODS:
        lines.append(f"| {m} | " + " | ".join(_fmt(s["summary"]["mean_f1"][m])
                                              for s in systems.values()) + " |")
    if report.get("int8_vs_float"):
        d = report["int8_vs_float"]
        lines += ["", "## int8 vs float", "",
                  f"Largest per-unit AUC difference |int8 - float| (source, target, all): "
                  f"{100 * d['max_abs_auc_difference']:.2f} points (target: at most 1); pAUC: "
                  f"{100 * d['max_abs_pauc_difference']:.2f} points; "
                  f"official score {_fmt(d['official_float'])} float vs "
                  f"{_fmt(d['official_int8'])} int8; embedding cosine int8 vs float on the test "
                  f"clips: mean {d['cosine_mean']:.4f}, min {d['cosine_min']:.4f}."]
    lines += plot_section_lines(report["units"], report.get("skipped_files"),
                                "without readable labels")
    return "\n".join(lines) + "\n"


def add_cli_arguments(p) -> None:
    """Options of ``python -m trainer evaluate-asd`` (both protocols)."""
    p.add_argument("data", nargs="?", default=str(Path(default_data_dir()) / "asd"),
                   help="folder of DCASE/MIMII-style recordings (default: %(default)s)")
    p.add_argument("--protocol", choices=("seen", "leave-one-machine-out"), default="seen",
                   help="seen: train on every unit's training clips, test on its test clips "
                        "(DCASE); leave-one-machine-out: for every machine type, train without "
                        "it, calibrate on a few of its normal clips as the node does, test on "
                        "the rest (trainer.asd_lomo) (default: %(default)s)")
    p.add_argument("--config", default=str(ROOT / "trainer/configs/asd_default.yaml"),
                   help="training recipe of our system; its sources are replaced by the "
                        "training split of DATA (default: %(default)s)")
    p.add_argument("--systems",
                   help="comma-separated: ours (float and int8), ae (DCASE 2023 autoencoder "
                        "baseline); leave-one-machine-out also stft (STFT statistics + cosine) "
                        "and adapted (ours with site adaptation on the calibration clips, "
                        "trainer adapt-asd) (default: ours,ae; leave-one-machine-out: "
                        "ours,ae,stft)")
    p.add_argument("--epochs", type=int, help="override the recipe's epochs")
    p.add_argument("--steps-per-epoch", dest="steps_per_epoch", type=int)
    p.add_argument("--batch-size", dest="batch_size", type=int)
    p.add_argument("--ensemble-size", dest="ensemble_size", type=int)
    p.add_argument("--ae-epochs", dest="ae_epochs", type=int, default=100,
                   help="autoencoder epochs (DCASE baseline: 100)")
    p.add_argument("--backend-clusters", dest="backend_clusters", type=int,
                   help="k-means clusters of the source domain per unit (default: 16; "
                        "leave-one-machine-out: the node config's asd.n_clusters)")
    p.add_argument("--train-fraction", dest="train_fraction", type=float, default=0.5,
                   help="share of a unit's normal clips used for training when the data do "
                        "not say (MIMII folders) (default: 0.5)")
    p.add_argument("--min-test-normal", dest="min_test_normal", type=int,
                   help="units with fewer normal test clips (or no anomalous one) are "
                        "reported but left out of the summary and the official score "
                        "(default: 5; leave-one-machine-out: 3, also the fewest normal test "
                        "clips of a domain for its AUC)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", help="report folder (default: reports/asd_eval; "
                                 "leave-one-machine-out: reports/asd_lomo)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    asd_lomo.add_cli_arguments(p)


def run_cli(args) -> int:
    """Run the evaluation of ``args.protocol``; returns the exit status."""
    if getattr(args, "protocol", "seen") == "leave-one-machine-out":
        return asd_lomo.run_cli(args)
    from trainer.export import cosine_similarity_rows
    from trainer.train import load_train_config

    args.systems = args.systems or "ours,ae"
    args.out = args.out or str(ROOT / "reports" / "asd_eval")
    args.min_test_normal = 5 if args.min_test_normal is None else args.min_test_normal
    args.backend_clusters = 16 if args.backend_clusters is None else args.backend_clusters
    systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    unknown = set(systems) - {"ours", "ae"}
    if unknown or not systems:
        raise ValueError(f"--systems: unknown {sorted(unknown)}; choose from ours, ae")
    progress = not args.quiet
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    clips, skipped = list_eval_clips(args.data, train_fraction=args.train_fraction)
    if skipped:
        log.warning("%d audio file(s) without readable labels skipped, e.g. %s", len(skipped),
                    skipped[0])
    train = [c for c in clips if c.split == "train"]
    test = [c for c in clips if c.split == "test"]
    if not train or not test:
        raise ValueError(f"{args.data}: need training and test clips, found {len(train)} "
                         f"and {len(test)}")
    print(f"{len(train)} training clips, {len(test)} test clips "
          f"({sum(c.label.is_anomaly for c in test)} anomalous) in "
          f"{len({c.unit for c in clips})} units", file=sys.stderr)

    scores: dict[str, dict[str, np.ndarray]] = {}
    meta: dict[str, Any] = {}
    source_of: dict[str, str] = {}  # system name -> key of meta
    cos = None
    index = {unit: (np.array([i for i, c in enumerate(train) if c.unit == unit], int),
                    np.array([i for i, c in enumerate(test) if c.unit == unit], int))
             for unit in sorted({c.unit for c in clips})}
    if "ours" in systems:
        cfg = load_train_config(args.config)
        cfg.seed = args.seed
        cfg.name = "asd_eval"
        for key in ("epochs", "steps_per_epoch", "batch_size", "ensemble_size"):
            if getattr(args, key) is not None:
                setattr(cfg, key, getattr(args, key))
        emb = _run_ours(cfg, train, test, out_dir, progress)
        meta["ours"] = emb.pop("_meta")
        cos = cosine_similarity_rows(emb["float"]["test"], emb["int8"]["test"])
        for kind in ("float", "int8"):
            name = f"ours ({kind})"
            source_of[name] = "ours"
            # NaN: no held-out score (a unit with a single training clip)
            scores[name] = {"train": np.full(len(train), np.nan, np.float32),
                            "test": np.zeros(len(test), np.float32)}
            for unit, (tr, te) in index.items():
                if len(tr) == 0 or len(te) == 0:
                    continue
                doms = np.array([train[i].label.domain for i in tr])
                t_s, tr_s = unit_backend_scores(emb[kind]["train"][tr], doms, emb[kind]["test"][te],
                                                args.backend_clusters, meta["ours"]["n_members"],
                                                args.seed)
                scores[name]["test"][te] = t_s
                if len(tr_s):
                    scores[name]["train"][tr] = tr_s
    if "ae" in systems:
        ae = _run_ae(train, test, args, progress)
        meta["ae"] = ae.pop("_meta")
        scores["DCASE 2023 AE baseline"] = ae
        source_of["DCASE 2023 AE baseline"] = "ae"

    units: dict[str, dict[str, Any]] = {}
    for unit, (tr, te) in index.items():
        if not len(tr) or not len(te):
            log.warning("unit %s skipped: %d training and %d test clips", unit, len(tr), len(te))
            continue
        y = np.array([int(test[i].label.is_anomaly) for i in te])
        doms = np.array([test[i].label.domain for i in te])
        n_normal = int((y == 0).sum())
        entry: dict[str, Any] = {"n_train": len(tr), "test_files": [test[i].path.name for i in te],
                                 "in_summary": bool(n_normal >= args.min_test_normal and y.any()),
                                 "systems": {}, "plots": []}
        for name, s in scores.items():
            tr_scores = s["train"][tr]
            r = evaluate_scores(y, doms, s["test"][te], tr_scores[np.isfinite(tr_scores)])
            r["test_scores"] = [float(v) for v in s["test"][te]]
            entry["systems"][name] = r
        safe = re.sub(r"[^A-Za-z0-9_.-]", "_", unit)
        if y.any() and (~y.astype(bool)).any():
            curves = {f"{n} (AUC {100 * r['auc_all']:.1f})": (y, np.asarray(r["test_scores"]))
                      for n, r in entry["systems"].items()}
            entry["plots"].append(str(plot_roc_curves(out_dir / f"roc_{safe}.png", curves,
                                                      f"ROC, {unit}")))
        for name, r in entry["systems"].items():
            sc = np.asarray(r["test_scores"])
            thr = {m: v["decision_threshold"] for m, v in r["thresholds"].items()
                   if "decision_threshold" in v}
            tag = re.sub(r"[^A-Za-z0-9]+", "_", name).strip("_")
            entry["plots"].append(str(plot_score_histogram(
                out_dir / f"hist_{safe}_{tag}.png", sc[y == 0], sc[y == 1], thr,
                f"{name}: {unit}")))
        units[unit] = entry

    report: dict[str, Any] = {
        "data": str(args.data), "n_train": len(train), "n_test": len(test),
        "min_test_normal": args.min_test_normal,
        "split": {c.path.name: c.split for c in clips},
        "skipped_files": [str(p) for p in skipped], "units": units, "systems": {}}
    for name in scores:
        key = source_of[name]
        report["systems"][name] = {"summary": _summary(units, name),
                                   "train_seconds": meta[key]["train_seconds"],
                                   **({"model": meta[key].get("model"),
                                       "int8_bytes": meta[key].get("int8_bytes"),
                                       "float_bytes": meta[key].get("float_bytes")}
                                      if key == "ours" else {"params": meta[key]["params"]})}
    if cos is not None:
        diffs: dict[str, list[float]] = {"auc": [], "pauc": []}
        for u in (u for u in units.values() if u["in_summary"]):
            f, q = u["systems"]["ours (float)"], u["systems"]["ours (int8)"]
            for k in ("auc_source", "auc_target", "pauc", "auc_all"):
                if f[k] is not None and q[k] is not None:
                    diffs["pauc" if k == "pauc" else "auc"].append(abs(f[k] - q[k]))
        report["int8_vs_float"] = {
            "max_abs_auc_difference": float(max(diffs["auc"], default=0.0)),
            "max_abs_pauc_difference": float(max(diffs["pauc"], default=0.0)),
            "official_float": report["systems"]["ours (float)"]["summary"]["official_score"],
            "official_int8": report["systems"]["ours (int8)"]["summary"]["official_score"],
            "cosine_mean": float(cos.mean()), "cosine_min": float(cos.min())}
    atomic_write_json(out_dir / "report.json", report)
    atomic_write_bytes(out_dir / "report.md", _markdown(report).encode())
    summary = {n: s["summary"]["official_score"] for n, s in report["systems"].items()}
    print(json.dumps({"report": str(out_dir / "report.md"), "official_score": summary,
                      "int8_vs_float": report.get("int8_vs_float")}, indent=2))
    return 0
