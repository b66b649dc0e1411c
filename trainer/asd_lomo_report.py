"""Per-type metrics and the report of the leave-one-machine-type-out evaluation
(:mod:`trainer.asd_lomo`).

Threshold-free metrics of one system on one held-out type (:func:`type_metrics`: AUC per
domain, pAUC, AUC over all test clips, the type's official score, from
:mod:`trainer.asd_metrics`), the rates at the node's decision threshold
(:func:`rates_at_threshold`), 95 % confidence intervals from a paired, stratified bootstrap
over clips (:func:`bootstrap_metrics`, :func:`bootstrap_ci`) and the markdown report
(:func:`lomo_markdown`).

Pure NumPy / scikit-learn (no TensorFlow).

Entry points: :func:`type_metrics`, :func:`rates_at_threshold`, :func:`bootstrap_metrics`,
:func:`bootstrap_ci`, :func:`lomo_markdown`.
"""
from __future__ import annotations

import json
from typing import Any

import numpy as np

from trainer.asd_metrics import dcase_section_metrics, official_score
from trainer.asd_plots import plot_section_lines

__all__ = ["OURS_EMBEDDING_ONLY", "OURS_WITHOUT_LEVEL", "OURS_MEAN_OVER_VIEWS",
           "OURS_EVERY_EMBEDDER_VIEW", "type_metrics",
           "rates_at_threshold", "bootstrap_metrics", "bootstrap_ci", "lomo_markdown",
           "seeds_summary", "seeds_markdown"]

#: Our embedder scored by its embedding alone, reported beside the node's configured views
#: (``asd.views``) when those are more than the embedding.
OURS_EMBEDDING_ONLY = "ours (int8), embedding view only"
#: The same int8 model with the node's views but the level statistics (when it has them):
#: the view added last, measured against the views before it in the same run.
OURS_WITHOUT_LEVEL = "ours (int8), views without level_statistics"
#: The same int8 model and views, combined by the plain mean over views (the node's fusion
#: before 2026-11-30, ``edge.backend.VIEW_FUSIONS``) instead of over representations.
OURS_MEAN_OVER_VIEWS = "ours (int8), mean over views"
#: The same int8 model with the node's views, but the embedding and every branch in place of
#: the single branch the node keeps (``edge.views.BRANCH_VIEWS``): the default before
#: 2026-12-02, measured against the single branch in the same run.
OURS_EVERY_EMBEDDER_VIEW = "ours (int8), embedding and every branch"


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
                       threshold: float | None, calibrated_unit: np.ndarray | None = None
                       ) -> dict[str, Any]:
    """False-positive rate on the normal clips (per domain) and recall on the anomalies.

    The decision rule is the node's: anomalous when ``score > threshold``.

    Parameters
    ----------
    y_true : np.ndarray, shape (n,), int (1 = anomaly)
    domains : np.ndarray, shape (n,), str
    scores : np.ndarray, shape (n,), float
    threshold : float or None
    calibrated_unit : np.ndarray, shape (n,), bool, optional
        Whether each test clip's recorded machine (:attr:`TypedClip.unit
        <trainer.asd_lomo_data.TypedClip.unit>`) has clips in the calibration. A node is
        calibrated on the machine it listens to; a normal clip of another unit of the same
        type is a machine it never heard, so its false positives are counted apart.

    Returns
    -------
    dict
        ``fpr_source``, ``fpr_target``, ``fpr`` (all normals), ``recall``; ``None`` where there
        is no clip of that kind or no threshold. With ``calibrated_unit`` also the counts
        ``false_positives_calibrated_units`` / ``normals_calibrated_units`` and
        ``false_positives_other_units`` / ``normals_other_units`` (``None`` without a
        threshold).
    """
    y = np.asarray(y_true).astype(bool)
    d = np.asarray(domains).astype(str)
    s = np.asarray(scores, np.float64)
    out: dict[str, Any] = {}

    def rate(mask):
        return None if threshold is None or not mask.any() else float(np.mean(s[mask] > threshold))

    out["fpr_source"] = rate(~y & (d == "source"))
    out["fpr_target"] = rate(~y & (d == "target"))
    out["fpr"] = rate(~y)
    out["recall"] = rate(y)
    if calibrated_unit is not None:
        known = np.asarray(calibrated_unit).astype(bool)
        for name, mask in (("calibrated_units", ~y & known), ("other_units", ~y & ~known)):
            out[f"normals_{name}"] = int(mask.sum())
            out[f"false_positives_{name}"] = (None if threshold is None
                                              else int((s[mask] > threshold).sum()))
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


def bootstrap_ci(values: np.ndarray) -> list[float] | None:
    """The 95 % percentile interval of bootstrap replicates (NaN ignored); ``None`` when
    none is finite."""
    v = np.asarray(values, float)
    v = v[np.isfinite(v)]
    return None if not len(v) else [float(np.percentile(v, 2.5)), float(np.percentile(v, 97.5))]



# --------------------------------------------------------------------------- report


def _pct(v) -> str:
    return "n/a" if v is None else f"{100 * v:.1f}"


def _with_ci(r: dict[str, Any], key: str) -> str:
    ci = r["ci"].get(key)
    if r.get(key) is None:
        return "n/a"
    return _pct(r[key]) + (f" [{_pct(ci[0])}, {_pct(ci[1])}]" if ci else "")


#: Counts :func:`rates_at_threshold` gives with ``calibrated_unit``.
_UNIT_KEYS = ("false_positives_calibrated_units", "normals_calibrated_units",
              "false_positives_other_units", "normals_other_units")


def seeds_summary(runs: dict[int, dict[str, Any]]) -> dict[str, Any]:
    """Summary over several draws of the evaluation (``--seeds``).

    Parameters
    ----------
    runs : dict of int -> dict
        Seed -> ``report.json`` of that seed's evaluation.

    Returns
    -------
    dict
        ``seeds``; ``systems``: name -> ``official_score`` (``per_seed``, ``mean``, ``min``,
        ``max``); ``types``: held-out type -> system -> ``auc_source`` / ``pauc``
        (``per_seed``, ``mean``), ``false_positives`` / ``normal_clips`` (source domain) and
        ``found`` / ``anomalies`` at the threshold, and the false positives on normal clips
        of calibrated and of other units (:func:`rates_at_threshold`; 0 for reports without
        them), summed over the seeds. A value undefined in a seed is ``None`` there and left
        out of the mean.
    """
    def stats(values):
        v = [x for x in values if x is not None]
        return {"per_seed": values, "mean": float(np.mean(v)) if v else None,
                "min": min(v) if v else None, "max": max(v) if v else None}

    seeds = sorted(runs)
    names = list(dict.fromkeys(n for s in seeds for n in runs[s]["systems"]))
    systems = {n: {"official_score": stats([runs[s]["systems"].get(n, {}).get("official_score")
                                            for s in seeds])} for n in names}
    types: dict[str, Any] = {}
    for t in dict.fromkeys(t for s in seeds for t in runs[s]["types"]):
        types[t] = {}
        for n in names:
            per = [runs[s]["types"].get(t, {}).get("systems", {}).get(n) for s in seeds]
            counts = [runs[s]["types"].get(t, {}).get("counts") for s in seeds]
            if not any(per):
                continue
            fp = nn = tp = na = 0
            units = {k: 0 for k in _UNIT_KEYS}
            for m, k in zip(per, counts):
                if not m:
                    continue
                for key in _UNIT_KEYS:
                    units[key] += m.get(key) or 0
                if m["fpr_source"] is not None:
                    fp += round(m["fpr_source"] * k["test_normal"]["source"])
                    nn += k["test_normal"]["source"]
                if m["recall"] is not None:
                    tp += round(m["recall"] * k["test_anomalous"])
                    na += k["test_anomalous"]
            types[t][n] = {k: stats([m.get(k) if m else None for m in per])
                           for k in ("auc_source", "pauc")}
            types[t][n].update(false_positives=fp, normal_clips=nn, found=tp, anomalies=na,
                               **units)
    return {"seeds": seeds, "systems": systems, "types": types}


def _unit_cell(r: dict[str, Any]) -> str:
    """``fp/n calibrated units, fp/n other units`` (both domains); blank without counts."""
    if r.get("false_positives_calibrated_units") is None:
        return ""
    return (f"{r['false_positives_calibrated_units']}/{r['normals_calibrated_units']}, "
            f"{r['false_positives_other_units']}/{r['normals_other_units']}")


def seeds_markdown(summary: dict[str, Any]) -> str:
    """``seeds.md``: the official score and every type's AUC per seed and on average."""
    seeds = summary["seeds"]
    head = " / ".join(str(s) for s in seeds)

    def cell(st):
        vals = " / ".join(_pct(v) for v in st["per_seed"])
        return "n/a" if st["mean"] is None else f"{_pct(st['mean'])} ({vals})"

    lines = ["# Leave-one-machine-type-out evaluation over several draws", "",
             f"Seeds {head}: each draw trains, splits the calibration clips and resamples with "
             "its own seed (reports in `seed_<s>/`). Values in percent: the mean over the "
             "seeds, then each seed.", "", "## Official score", "",
             "| system | official score |", "|---|---|"]
    lines += [f"| {n} | {cell(v['official_score'])} |" for n, v in summary["systems"].items()]
    lines += ["", "## Per held-out machine type", "",
              "| held-out type | system | AUC source | pAUC | false positives (source normal "
              "test clips, all seeds) | false positives on normal test clips of calibrated "
              "units / of other units (both domains) | anomalies found |",
              "|---|---|---|---|---|---|---|"]
    for t, per in summary["types"].items():
        for n, v in per.items():
            lines.append(f"| {t} | {n} | {cell(v['auc_source'])} | {cell(v['pauc'])} | "
                         f"{v['false_positives']}/{v['normal_clips']} | {_unit_cell(v)} | "
                         f"{v['found']}/{v['anomalies']} |")
    return "\n".join(lines) + "\n"


def _int8_lines(types: dict[str, Any]) -> list[str]:
    """The int8-minus-float table: the conversion's cost per held-out type, with paired
    bootstrap intervals (the same resamples for both models)."""
    rows = []
    for t, u in types.items():
        d = u.get("int8_minus_float")
        if d:
            cells = []
            for k in ("auc_source", "auc_all", "pauc"):
                v, ci = d[k]["delta"], d[k]["ci"]
                cells.append("n/a" if v is None else f"{100 * v:+.1f}" + (
                    f" [{100 * ci[0]:+.1f}, {100 * ci[1]:+.1f}]" if ci else ""))
            rows.append(f"| {t} | " + " | ".join(cells) + " |")
    if not rows:
        return []
    return ["", "## int8 minus float", "",
            "Our int8 bundle's metrics minus those of the float model it was converted from "
            "(same views, calibration and test clips), in AUC points, with 95 % paired "
            "bootstrap intervals.", "",
            "| held-out type | AUC source | AUC all | pAUC |", "|---|---|---|---|", *rows]


def _spread_lines(types: dict[str, Any]) -> list[str]:
    """The embedding-spread table: how our embedders spread the held-out type's normal clips
    (:func:`trainer.embedding_spread.embedding_spread`)."""
    rows = []
    for t, u in types.items():
        for n, r in u.get("systems", {}).items():
            sp = (r.get("meta") or {}).get("embedding_spread")
            if sp:
                c = sp["cosine"]
                rows.append(f"| {t} | {n} | {sp['n']} | {sp['n_labels']} | {c['p05']:.3f} / "
                            f"{c['median']:.3f} / {c['p95']:.3f} | "
                            f"{100 * sp['nn_label_agreement']:.0f} | "
                            f"{100 * sp['chance_agreement']:.0f} |")
    if not rows:
        return []
    return ["", "## Embedding spread on the held-out type", "",
            "Normal clips of the held-out type (calibration and test), one embedding per clip. "
            "Conditions: dataset x section x attributes. A collapsed space has every pairwise "
            "cosine near 1 and a nearest neighbour that shares the clip's condition no more "
            "often than chance.", "",
            "| held-out type | system | clips | conditions | pairwise cosine p5 / median / p95 | "
            "nearest neighbour, same condition (%) | chance (%) |",
            "|---|---|---|---|---|---|---|", *rows]


def lomo_markdown(rep: dict[str, Any]) -> str:
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
        "standardised on its held-out log distances, averaged within each representation "
        "and then over representations, as `edge.backend.normalised_view_score` describes; "
        f"`{OURS_EMBEDDING_ONLY}`: the same model scored by its embedding alone; "
        f"`{OURS_WITHOUT_LEVEL}`: by the node's views but the level statistics; "
        f"`{OURS_MEAN_OVER_VIEWS}`: by the node's views averaged directly; "
        f"`{OURS_EVERY_EMBEDDER_VIEW}`: by the node's views with the embedding and every "
        "branch in place of its single branch); a "
        "clip's score is its highest window score. The DCASE 2023 autoencoder baseline is "
        "trained on the same calibration clips only (threshold on its in-sample scores); the "
        "STFT baseline (per-bin mean and std of the log-magnitude STFT, Hann 1024, hop 512, "
        "nearest calibration clip by cosine) learns nothing (threshold on leave-one-out "
        "calibration scores). All systems are tested on the same clips: the type's other "
        "normal clips and all its anomalous ones.", "",
        f"AUC per domain: normal test clips of the domain + all anomalies, reported only for a "
        f"domain with at least {rep['min_test_normal']} normal test clips; pAUC: max_fpr 0.1; "
        "official: harmonic mean of the defined AUCs and pAUC; FPR (normal test clips, source/"
        "target) and recall at the node's own decision threshold (score > threshold); false "
        "positives on the normal test clips of recorded machines (units) that have "
        "calibration clips and of those that have none (a node is calibrated on the machine "
        "it listens to). "
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
              "official | FPR at threshold (src/tgt) | false positives: calibrated units, "
              "other units | recall at threshold |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for t, u in rep["types"].items():
        if "error" in u:
            lines.append(f"| {t} | no | | | | {u['error']} | | | | | | | |")
            continue
        k = u["counts"]
        for n, r in u["systems"].items():
            lines.append(
                f"| {t} | {'yes' if u['in_summary'] else 'no'} | {k['train_clips']} | "
                f"{k['calibration']['source']}/{k['calibration']['target']} | "
                f"{k['test_normal']['source']}/{k['test_normal']['target']} / "
                f"{k['test_anomalous']} | {n} | {_with_ci(r, 'auc_source')} | "
                f"{_with_ci(r, 'auc_target')} | {_with_ci(r, 'pauc')} | {_pct(r['official'])} | "
                f"{_pct(r['fpr_source'])}/{_pct(r['fpr_target'])} | {_unit_cell(r)} | "
                f"{_pct(r['recall'])} |")
    lines += _int8_lines(rep["types"])
    lines += _spread_lines(rep["types"])
    lines += plot_section_lines(rep["types"], rep.get("skipped_files"), "without a machine type")
    return "\n".join(lines) + "\n"
