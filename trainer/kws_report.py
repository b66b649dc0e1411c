"""The keyword-spotting evaluation report: ``report.json``, ``report.md`` and the plots.

Written from a :class:`trainer.kws_systems.KwsEvalRun` by :func:`write_report`, atomically
(:mod:`firmware_config.fileio`): ``report.json`` (settings, enrollment, stream summaries, test ground
truth, every system's scores, sweeps and detections; non-finite floats become ``null``),
``report.md`` (the same, for people), ``trace_<system>.png`` (DTW cost traces of one test stream
with threshold, detections and ground truth) and ``det.png`` (miss rate vs false alarms per hour
on the test streams).

Contents
--------
write_report
    Write every file of the report into a folder.
"""
from __future__ import annotations

import io
import math
import os
import platform
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from firmware_config.fileio import atomic_write, atomic_write_bytes, atomic_write_json
from trainer.kws_streams import NOISE_RANGES, SPEECH_LEVEL_DBFS, EvalConfig, Stream, stream_hours
from trainer.kws_systems import KwsEvalRun, SystemResult

__all__ = ["write_report"]


def _pct(x: float) -> str:
    return f"{100 * x:.1f}"


def _report_dict(run: KwsEvalRun) -> dict[str, Any]:
    cfg: EvalConfig = run.cfg
    root = run.data_dir
    val, test = run.val_streams, run.test_streams
    shots = run.shots
    return _finite({
        "schema": 1,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "settings": {
            **cfg.to_dict(), "data_dir": str(root), "noise_ranges": NOISE_RANGES,
            "speech_level_dbfs": SPEECH_LEVEL_DBFS,
            "snr_definition": "10 log10(P_speech / P_noise), mean squared samples of the speech-only "
                              "and noise-only tracks over the union of all placed utterances",
            "metric": "event-based micro-averaged F1/P/R (sed_eval convention), onset collar "
                      f"{cfg.collar} s, offset collar max({cfg.collar} s, {cfg.offset_fraction} x "
                      f"reference duration), {cfg.matching} matching",
            "val_hours": stream_hours(val), "test_hours": stream_hours(test),
            "fa_resolution_per_hour": 1.0 / stream_hours(test) if test else None,
            "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(),
                        "python": platform.python_version()},
        },
        "enrollment": {kw: {"speakers": sorted({s.speaker for s in ss}),
                            "shots": [s.to_dict(root) for s in ss]} for kw, ss in shots.items()},
        "streams": {"val": [s.summary() for s in val], "test": [s.summary() for s in test]},
        "stream_speakers": {"val": len({p.speaker for s in val for p in s.placed}),
                            "test": len({p.speaker for s in test for p in s.placed})},
        "ground_truth_test": [[{"keyword": e.keyword, "onset_s": e.onset_s, "offset_s": e.offset_s}
                               for e in s.events] for s in test],
        "systems": [r.to_dict() for r in run.results],
        "node_thresholds": run.node_thresholds,
        "runtime_s": run.seconds,
    })


def _finite(x):
    """JSON-safe copy: non-finite floats become None (strict JSON has no NaN/Infinity)."""
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_finite(v) for v in x]
    if isinstance(x, (float, np.floating)):
        return float(x) if math.isfinite(x) else None
    if isinstance(x, np.integer):
        return int(x)
    return x


def _report_md(rep: dict[str, Any]) -> str:
    st = rep["settings"]
    L = ["# Few-shot keyword spotting: evaluation", "",
         f"Created {rep['created']}; `python -m trainer evaluate-kws`, {rep['runtime_s']:.0f} s.", ""]
    L += ["| system | threshold (val) | val F1 | test F1 | test P | test R | "
          f"miss @ {st['fa_per_hour']:g} FA/h | DTW RTF | feature RTF |",
          "|---|---|---|---|---|---|---|---|---|"]
    for s in rep["systems"]:
        m = s["miss_rate_at_fa"]
        thr = "n/a" if m["threshold"] is None else f"{m['threshold']:.3f}"
        L.append(f"| {s['name']} | {s['threshold']:.4f} | {_pct(s['val']['f1'])} | "
                 f"**{_pct(s['test']['f1'])}** | {_pct(s['test']['precision'])} | "
                 f"{_pct(s['test']['recall'])} | {_pct(m['miss_rate'])} % (thr {thr}) | "
                 f"{s['dtw_rtf']:.2e} ({1 / max(s['dtw_rtf'], 1e-12):.0f}x) | "
                 f"{s['feature_rtf']:.2e} |")
    by_name = {s["name"]: s for s in rep["systems"]}
    if "tacos" in by_name and "mfcc" in by_name:
        gap = 100 * (by_name["tacos"]["test"]["f1"] - by_name["mfcc"]["test"]["f1"])
        L += ["", f"TACos minus MFCC-DTW test F1: **{gap:+.1f} points** (target: at least +10 "
              "with 5 shots)."]
    L += ["", "F1, precision, recall, miss rate in %. RTF = processing seconds / stream seconds "
          "(lower is faster; `Nx` = N times faster than real time), one process, "
          f"{st['machine']['cpu_count']} CPUs visible; wall-clock timings of this run (noisy on a "
          "shared machine; `make bench` is the benchmark).", ""]
    nt = rep.get("node_thresholds")
    if nt:
        L += [f"## The node's own thresholds (enrollment, target {nt['fa_per_hour_target']:g} FA/h)",
              "", "Per-keyword thresholds set the way `python -m calibration enroll` sets them "
              "(gamma fit of DTW costs on the shipped negatives and the other keywords' shots), "
              "then TACos on the test streams:", "",
              "| keyword | threshold | source |", "|---|---|---|"]
        for kw, thr in nt["thresholds"].items():
            L.append(f"| {kw} | {thr:.4f} | {nt['sources'][kw]} |")
        L += ["", f"Test F1 {_pct(nt['test']['f1'])} %, precision {_pct(nt['test']['precision'])} %, "
              f"recall {_pct(nt['test']['recall'])} %, measured false alarms "
              f"{nt['fa_per_hour']:.1f} per hour.", ""]
    seen = {s["name"]: set(s["info"]["keywords_in_training_vocabulary"]) for s in rep["systems"]
            if "keywords_in_training_vocabulary" in s["info"]}
    L += ["## Per-keyword test F1 (%)", "",
          "| keyword | " + " | ".join(s["name"] for s in rep["systems"]) + " | test refs |"
          + "".join(f" in {n} training words |" for n in seen),
          "|---|" + "---|" * (len(rep["systems"]) + 1 + len(seen))]
    for kw in st["keywords"]:
        row = [_pct(s["test_per_keyword"].get(kw, {"f1": 0.0})["f1"]) for s in rep["systems"]]
        nref = rep["systems"][0]["test_per_keyword"].get(kw, {}).get("n_ref", 0) if rep["systems"] else 0
        L.append(f"| {kw} | " + " | ".join(row) + f" | {nref} |"
                 + "".join(f" {'yes' if kw in v else 'no (unseen)'} |" for v in seen.values()))
    L += ["", "## Systems", ""]
    for s in rep["systems"]:
        L.append(f"* **{s['name']}**: {s['description']}; {s['n_templates']} templates, "
                 f"{s['mean_template_frames']:.0f} frames each on average, "
                 f"frame period {1000 * s['frame_seconds']:.0f} ms.")
        if "variants_val" in s["info"]:
            L += ["", "  MFCC variant chosen by val F1 (each with its own val-tuned threshold):", "",
                  "  | variant | n_mfcc | c0 | deltas | val F1 |", "  |---|---|---|---|---|"]
            for v in s["info"]["variants_val"]:
                mark = " (chosen)" if v["variant"] == s["info"]["variant"] else ""
                L.append(f"  | {v['variant']}{mark} | {v['n_mfcc']} | {v['c0']} | {v['deltas']} | "
                         f"{_pct(v['val_f1'])} |")
            L.append("")
    L += ["", "## Settings", "",
          f"* keywords: {', '.join(st['keywords'])}; {st['shots']} shots each",
          f"* streams: val {60 * st['val_hours']:.1f} min, test {60 * st['test_hours']:.1f} min "
          f"({len(rep['streams']['val'])} + {len(rep['streams']['test'])} streams of "
          f"{rep['streams']['test'][0]['duration_s'] if rep['streams']['test'] else 0:.0f} s); "
          f"SNR {st['snr_db']} dB ({st['snr_definition']}); "
          f"gaps {st['gap_seconds'][0]}-{st['gap_seconds'][1]} s; keyword fraction "
          f"{st['keyword_fraction']}; seed {st['seed']}",
          f"* metric: {st['metric']}",
          f"* miss rate at {st['fa_per_hour']:g} FA/h: lowest miss rate over a global-threshold sweep "
          f"on the test streams with FA/h <= target; FA/h resolution {st['fa_resolution_per_hour']:.2f}"
          " per hour (one false alarm in the test streams)",
          f"* noise: noise/*.flac, val uses {st['noise_ranges']['val']}, test "
          f"{st['noise_ranges']['test']} of each file (fractions of its length)", ""]
    n_kw_val = sum(s["keywords"] for s in rep["streams"]["val"])
    n_kw_test = sum(s["keywords"] for s in rep["streams"]["test"])
    n_spk = [rep["stream_speakers"][k] for k in ("val", "test")]
    L += [f"* keyword occurrences: val {n_kw_val}, test {n_kw_test}; other words: val "
          f"{sum(s['other_words'] for s in rep['streams']['val'])}, test "
          f"{sum(s['other_words'] for s in rep['streams']['test'])}; distinct speakers (a wake-word "
          "file counts as its own speaker): "
          f"val {n_spk[0]}, test {n_spk[1]}; placements of an already used recording (pool "
          f"exhausted): val {sum(s['repeated_recordings'] for s in rep['streams']['val'])}, test "
          f"{sum(s['repeated_recordings'] for s in rep['streams']['test'])}", "", "## Enrollment", ""]
    for kw, e in rep["enrollment"].items():
        L.append(f"* {kw}: {len(e['shots'])} shots from {len(e['speakers'])} speaker(s) "
                 f"({', '.join(e['speakers'][:5])}{', ...' if len(e['speakers']) > 5 else ''})")
    L += ["", "Plots: `trace_<system>.png` (DTW cost traces of test stream "
          f"{rep['streams']['test'][0]['name'] if rep['streams']['test'] else '-'} with the "
          "threshold, detections and ground truth), `det.png` (miss rate vs FA/h on test).", "",
          "Data: Speech Commands v0.02 (P. Warden, CC BY 4.0), Picovoice wake-word benchmark "
          "(Apache 2.0), Speech Commands background noise (CC BY 4.0).", ""]
    return "\n".join(L)


def _save_fig(fig, path: Path) -> None:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    atomic_write_bytes(path, buf.getvalue())


def _plot_trace(res: SystemResult, stream: Stream, keywords: Sequence[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = {kw: plt.get_cmap("tab10")(i % 10) for i, kw in enumerate(keywords)}
    fig, ax = plt.subplots(figsize=(16, 4.5))
    fs = res.system.frame_seconds
    ymax = 1.0
    for kw in keywords:
        v = res.plot_trace.get(kw)
        if v is None:
            continue
        t = np.arange(len(v)) * fs
        ax.plot(t, np.where(np.isfinite(v), v, np.nan), lw=0.8, color=colors[kw], label=kw)
        fin = v[np.isfinite(v)]
        if len(fin):
            ymax = max(ymax, float(np.quantile(fin, 0.99)))
    ax.axhline(res.threshold, color="k", ls="--", lw=1, label=f"threshold {res.threshold:.3f}")
    for e in stream.events:
        ax.axvspan(e.onset_s, e.offset_s, color=colors.get(e.keyword, "grey"), alpha=0.18)
        ax.text(e.onset_s, 0.02, e.keyword, fontsize=7, color=colors.get(e.keyword, "grey"),
                transform=ax.get_xaxis_transform())
    for p in stream.placed:
        if not p.is_keyword:
            ax.axvspan(p.onset_s, p.offset_s, ymin=0, ymax=0.03, color="grey", alpha=0.5)
    for d in res.plot_detections:
        c = colors.get(d.keyword, "k")
        y = float(getattr(d, "cost", res.threshold))
        ax.plot([d.onset_s, d.offset_s], [y, y], color=c, lw=4, solid_capstyle="butt")
        ax.plot([d.offset_s], [y], marker="v", color=c, ms=5)
    ax.set_xlim(0, stream.duration_s)
    ax.set_ylim(0, min(ymax * 1.05, 2.0))
    ax.set_xlabel("time (s)")
    ax.set_ylabel("normalised DTW cost (min over shots)")
    ax.set_title(f"{res.system.name}: test stream {stream.name}; shaded = ground truth keywords, "
                 "grey ticks = other words, bars = detections")
    ax.legend(loc="upper right", ncol=len(keywords) + 1, fontsize=8)
    _save_fig(fig, path)
    plt.close(fig)


def _plot_det(results: Sequence[SystemResult], fa_target: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4.5))
    for r in results:
        pts = sorted(r.test_sweep, key=lambda p: p.threshold)
        ax.plot([p.fa_per_hour for p in pts], [100 * p.miss_rate for p in pts], marker=".",
                label=r.system.name)
    ax.axvline(fa_target, color="k", ls="--", lw=1)
    ax.set_xscale("symlog", linthresh=1.0)
    ax.set_xlim(left=0)
    ax.set_xlabel("false alarms per hour (test)")
    ax.set_ylabel("miss rate (%)")
    ax.set_title(f"global threshold swept on the test streams; dashed: {fa_target:g} FA/h")
    ax.set_ylim(0, 100)
    ax.grid(alpha=0.3)
    ax.legend()
    _save_fig(fig, path)
    plt.close(fig)


def write_report(run: KwsEvalRun, out_dir: str | Path) -> dict[str, Path]:
    """Write ``report.json``, ``report.md``, ``trace_<system>.png`` and ``det.png`` atomically.

    Parameters
    ----------
    run : KwsEvalRun
        What :func:`trainer.kws_eval.evaluate` returned (with ``node_thresholds`` when checked).
    out_dir : path
        Report folder, created if missing.

    Returns
    -------
    dict of str -> Path
        ``"json"``, ``"md"``, ``"trace_<system>"`` per system and ``"det"`` (when any system).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rep = _report_dict(run)
    paths = {"json": out / "report.json", "md": out / "report.md"}
    atomic_write_json(paths["json"], rep)
    md = _report_md(rep)
    atomic_write(paths["md"], lambda f: f.write(md), mode="w")
    test = run.test_streams
    for r in run.results:
        p = out / f"trace_{r.system.name}.png"
        _plot_trace(r, test[r.plot_stream], run.cfg.keywords, p)
        paths[f"trace_{r.system.name}"] = p
    if run.results:
        paths["det"] = out / "det.png"
        _plot_det(run.results, run.cfg.fa_per_hour, paths["det"])
    return paths
