"""On-site calibration commands.

* ``python -m calibration record --config node.yaml --minutes 10`` (or ``--from FILES``):
  learn normal machine operation (anomaly detection);
* ``python -m calibration enroll --config node.yaml --keyword stop --shots 5`` (or
  ``--from FILES``): enroll a keyword from a few spoken shots;
* ``python -m calibration background --config node.yaml --minutes 60`` (or ``--from
  FILES``): record the site's ordinary sound (no keyword said) so that every keyword's
  threshold is fitted on it (:func:`calibration.keyword_thresholds.tail_fit_threshold`);
  enrolled keywords are updated at once, later enrollments use it too.
"""
from __future__ import annotations

import argparse
import io
import json
import logging
import sys
from pathlib import Path

import numpy as np
import soundfile as sf

from calibration.calibrate import collect_windows, fit_calibration
from calibration.enroll import ShotError, enroll_keyword, update_thresholds
from calibration.generic_negatives import load_generic_negatives
from calibration.keyword_thresholds import SITE_FIT_MIN_HOURS
from calibration.plots import plot_score_histogram
from edge.audio import FileSource, MicrophoneSource, load_audio
from edge.keywords import EnrolledKeywords
from edge.model import ModelError, load_bundle
from firmware_config.errors import HarkError
from firmware_config.fileio import atomic_write_bytes
from firmware_config.schema import load_config_or_exit


def _mic_stream(cfg, seconds: float, what: str = "normal operation"):
    src = MicrophoneSource.from_config(cfg.audio, min_ring_seconds=5.0).start()
    print(f"recording {seconds:g} s of {what} from {src.device_name!r}",
          file=sys.stderr, flush=True)
    need = int(seconds * cfg.audio.sample_rate)
    got = 0
    try:
        for block in src.blocks():
            block = block[: need - got]
            got += len(block)
            yield block
            if got >= need:
                break
    finally:
        src.close()
        if src.overflows or src.ring.overruns:
            print(f"warning: {src.overflows} input overflow(s), {src.ring.overruns} samples "
                  "lost while recording", file=sys.stderr)


# Below this much normal operation a calibration is accepted with a warning: its threshold
# rests on few held-out scores and its memory misses normal variation (5 clips flagged 4 of
# 10 later normal clips). With the ``fpr`` threshold the estimator says how many
# independent windows its false-positive rate needs (``min_independent``, 45 at 5 % / 0.9).
MIN_CALIBRATION_MINUTES = 10.0
MIN_CALIBRATION_WINDOWS = 60  # what 10 min of separate 10 s clips give


def _too_little(cal, n_windows: int, seconds: float) -> str | None:
    """The warning for a calibration on too little normal operation, or None.

    Parameters
    ----------
    cal : edge.backend.Calibration
        Its ``extra`` holds ``n_independent`` (and for ``fpr`` ``min_independent`` and
        ``target_fpr``) from :func:`calibration.calibrate.fit_calibration`.
    n_windows : int
        Windows learned.
    seconds : float
        Audio recorded or read.
    """
    extra = cal.extra
    if "min_independent" in extra:
        need, have = int(extra["min_independent"]), int(extra["n_independent"])
        if have >= need:
            return None
        return (f"warning: calibrated on {have} independent (non-overlapping) windows "
                f"({seconds / 60:.1f} min of audio); estimating a "
                f"{100 * extra['target_fpr']:g} % false-positive rate with "
                f"{100 * extra['confidence']:g} % confidence needs at least {need} "
                f"({need * cal.window_seconds / 60:.1f} min): the threshold rests on the fitted "
                "score distribution and has a wide margin, so expect fewer detections; "
                "record longer")
    if n_windows >= MIN_CALIBRATION_WINDOWS and seconds >= 60 * MIN_CALIBRATION_MINUTES:
        return None
    return (f"warning: calibrated on {n_windows} windows ({seconds / 60:.1f} min of audio), "
            f"fewer than {MIN_CALIBRATION_WINDOWS} windows ({MIN_CALIBRATION_MINUTES:g} min): "
            "expect more false alarms (normal sound flagged anomalous); record at least "
            f"{MIN_CALIBRATION_MINUTES:g} minutes of normal operation")


def _expected_fpr(cal) -> str | None:
    """One line on the false-positive rate the threshold should give, or None."""
    extra = cal.extra
    if "target_fpr" not in extra:
        return None
    return (f"expected false-positive rate on normal windows: at most "
            f"{100 * extra['target_fpr']:g} % with {100 * extra['confidence']:g} % confidence "
            f"(fitted distribution: {100 * extra['fitted_fpr']:.2g} %), if normal operation "
            "sounds like this recording")


def cmd_record(args) -> int:
    from tqdm import tqdm

    cfg = load_config_or_exit(args.config)
    try:
        embedder = load_bundle(cfg.resolve(cfg.asd.model), task="asd", num_threads=cfg.asd.num_threads)
    except ModelError as exc:
        print(f"error: asd.model: {exc}", file=sys.stderr)
        return 1
    sr = cfg.audio.sample_rate
    try:
        if args.files:
            sources = [FileSource([f], sr, cfg.audio.block_seconds) for f in args.files]
            total = sum(s.duration_seconds for s in sources)
            total_samples = sum(round(s.duration_seconds * sr) for s in sources)
            streams = [s.blocks() for s in sources]
        else:
            total = args.seconds if args.seconds is not None else args.minutes * 60.0
            if total < 2 * cfg.asd.window_seconds:
                print(f"error: record at least {2 * cfg.asd.window_seconds:g} s "
                      "(two analysis windows)", file=sys.stderr)
                return 2
            total_samples = int(total * sr)  # what _mic_stream delivers
            streams = None
        # Counted in samples (exact integers), shown in seconds: float seconds summed block
        # by block overshoot the total (a TqdmWarning and a negative remaining time).
        bar = tqdm(total=total_samples, unit="s", unit_scale=1.0 / sr, desc="calibrating",
                   disable=args.quiet, bar_format="{l_bar}{bar}| {n:.0f}/{total:.0f} s [{elapsed}<{remaining}]")
        if streams is None:
            streams = [_mic_stream(cfg, total)]
        windows = collect_windows(streams, embedder, cfg.asd.window_seconds, cfg.asd.hop_seconds,
                                  progress=bar.update, views=cfg.asd.views)
        bar.close()
        cal = fit_calibration(windows, embedder, cfg.asd.n_clusters, cfg.asd.threshold.method,
                              dict(cfg.asd.threshold.params), cfg.asd.window_seconds,
                              cfg.asd.hop_seconds)
    except (HarkError, ValueError) as exc:  # audio files or device; too few windows
        print(f"error: {exc}", file=sys.stderr)
        return 1
    for line in (_expected_fpr(cal), _too_little(cal, len(windows), total)):
        if line:
            print(line, file=sys.stderr)
    out = Path(args.out) if args.out else cfg.resolve(cfg.asd.calibration)
    cal.save(out)
    plot = Path(args.plot) if args.plot else out.with_suffix(".png")
    scores = np.asarray(cal.normal_scores)
    above = int((scores > cal.decision_threshold).sum())
    target = cal.extra.get("target_fpr")
    label = (f"decision_threshold ({cal.threshold_method}, target {100 * target:g} %)"
             if target is not None else f"decision_threshold ({cal.threshold_method})")
    plot_score_histogram(plot, scores, [], {label: cal.decision_threshold},
                         f"{cfg.topic_root}: calibration {cal.calibration_id}\n{above} of "
                         f"{len(scores)} calibration windows above the threshold "
                         f"({100 * above / len(scores):.1f} %"
                         + (f"; target {100 * target:g} %)" if target is not None else ")"),
                         density=False, normal_label="calibration (normal, held out)")
    print(json.dumps({"calibration": str(out), "calibration_id": cal.calibration_id,
                      "decision_threshold": round(cal.decision_threshold, 6),
                      "threshold_method": cal.threshold_method, "windows": len(windows),
                      "independent_windows": cal.extra["n_independent"],
                      "target_fpr": target,
                      "fitted_fpr": (round(cal.extra["fitted_fpr"], 6)
                                     if "fitted_fpr" in cal.extra else None),
                      "skipped_silent": windows.skipped_silent,
                      "above_threshold": above, "memory_size": len(cal.memory),
                      "histogram": str(plot)}, indent=2))
    return 0


def _record_shots(cfg, keyword: str, shots: int, seconds: float):
    """Prompt for and record ``shots`` utterances from the configured input."""
    src = MicrophoneSource.from_config(cfg.audio, min_ring_seconds=5.0).start()
    need = int(seconds * cfg.audio.sample_rate)
    out = []
    try:
        blocks = src.blocks()
        for i in range(shots):
            print(f"say {keyword!r} now ({i + 1}/{shots}, {seconds:g} s) ...", file=sys.stderr,
                  flush=True)
            got = []
            n = 0
            for block in blocks:
                got.append(block)
                n += len(block)
                if n >= need:
                    break
            out.append(np.concatenate(got)[:need] if got else np.zeros(0, np.float32))
    finally:
        src.close()
    return out


def _positive_int(text: str) -> int:
    """argparse type of ``--shots``: a whole number above zero."""
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive whole number of shots (1, 2, ...), "
                                         f"got {text!r}")
    return n


def _positive_seconds(text: str) -> float:
    """argparse type of ``--shot-seconds``: seconds above zero."""
    try:
        x = float(text)
    except ValueError:
        x = float("nan")
    if not x > 0 or x == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a positive number of seconds, got {text!r}")
    return x


def _kws_model(cfg):
    """The config's KWS bundle, or None after printing why it cannot be loaded."""
    k = cfg.kws
    try:
        return load_bundle(cfg.resolve(k.model), task="kws", num_threads=k.num_threads,
                           segment_hop=k.segment_hop)
    except ModelError as exc:
        print(f"error: kws.model: {exc}", file=sys.stderr)
        return None


def cmd_enroll(args) -> int:
    cfg = load_config_or_exit(args.config)
    k = cfg.kws
    keyword = args.keyword.strip()
    if not keyword or not all(c.isalnum() or c in "-_ " for c in keyword):
        print(f"error: --keyword {args.keyword!r}: use letters, digits, '-', '_' or spaces",
              file=sys.stderr)
        return 2
    embedder = _kws_model(cfg)
    if embedder is None:
        return 1
    out = Path(args.out) if args.out else cfg.resolve(k.keywords)
    sr = cfg.audio.sample_rate
    try:
        existing = EnrolledKeywords.load(out) if out.exists() else None
        if args.files:
            if args.shots and len(args.files) != args.shots:
                print(f"error: --shots {args.shots} but {len(args.files)} files given",
                      file=sys.stderr)
                return 2
            waves = [load_audio(f, sr) for f in args.files]
            names = [Path(f).name for f in args.files]
        else:
            waves = _record_shots(cfg, keyword, args.shots or 5, args.shot_seconds)
            names = [f"shot {i + 1}" for i in range(len(waves))]
        negatives = [load_audio(f, sr) for f in (args.negatives or [])]
        bg_path = background_path(cfg)
        background = [load_audio(bg_path, sr)] if bg_path.exists() else []
        if background:
            print(f"thresholds fitted on the site background {bg_path}", file=sys.stderr)
        enrolled = enroll_keyword(embedder, keyword, waves, existing=existing, negatives=negatives,
                                  background=background,
                                  false_alarms_per_hour=k.false_alarms_per_hour,
                                  fallback_threshold=k.fallback_threshold,
                                  min_seconds=k.min_shot_seconds, max_seconds=k.max_shot_seconds,
                                  shot_names=names,
                                  shot_source="file" if args.files else "microphone")
    except ShotError as exc:
        print(f"error: {exc}\nnothing was stored; enroll {keyword!r} again", file=sys.stderr)
        return 1
    except HarkError as exc:  # keywords file, audio files or device
        print(f"error: {exc}", file=sys.stderr)
        return 1
    enrolled.save(out)
    if enrolled.details[keyword].get("threshold_source") == "generic-fit":
        factor = load_generic_negatives(embedder).rate_factor
        print(f"note: {keyword!r}'s threshold is fitted on the model's generic hour of speech "
              f"and noise (asking it for {factor:g} times the rate, as measured on held-out "
              f"speech and household noise), not on this site's sound, so the false alarms "
              f"per hour here may differ from the rate asked; an hour of the site's ordinary "
              f"sound fits every keyword to this site: python -m calibration background "
              f"--config {args.config} --minutes 60", file=sys.stderr)
    print(json.dumps({"keywords": str(out), "enrollment_id": enrolled.enrollment_id,
                      "model_id": enrolled.model_id,
                      "enrolled": {kw: {"threshold": round(enrolled.thresholds[kw], 4),
                                        **enrolled.details[kw]}
                                   for kw in sorted(enrolled.templates)}}, indent=2))
    return 0


def background_path(cfg) -> Path:
    """Where ``background`` keeps the site's recorded sound: next to ``kws.keywords``,
    ``<its stem>_background.flac``."""
    kw = cfg.resolve(cfg.kws.keywords)
    return kw.with_name(kw.stem + "_background.flac")


def cmd_background(args) -> int:
    cfg = load_config_or_exit(args.config)
    k = cfg.kws
    sr = cfg.audio.sample_rate
    embedder = _kws_model(cfg)
    if embedder is None:
        return 1
    try:
        if args.files:
            audio = np.concatenate([load_audio(f, sr) for f in args.files])
        else:
            seconds = args.minutes * 60.0
            if not seconds > 0:
                print("error: --minutes must be above 0", file=sys.stderr)
                return 2
            audio = np.concatenate(list(_mic_stream(cfg, seconds, "the site's ordinary "
                                                    "sound (say no keyword)")))
    except HarkError as exc:  # audio files or device
        print(f"error: {exc}", file=sys.stderr)
        return 1
    hours = len(audio) / sr / 3600.0
    if hours < SITE_FIT_MIN_HOURS:
        print(f"warning: {60 * hours:.1f} min of background; thresholds are fitted on it from "
              f"{60 * SITE_FIT_MIN_HOURS:g} min on (until then the model sets them: fitted "
              "on its generic negatives, or its calibrated table)", file=sys.stderr)
    out = Path(args.out) if args.out else background_path(cfg)
    buf = io.BytesIO()
    sf.write(buf, np.asarray(audio, np.float32), sr, format="FLAC")
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out, buf.getvalue())
    result = {"background": str(out), "minutes": round(60 * hours, 2), "keywords": {}}
    kw_path = cfg.resolve(k.keywords)
    if kw_path.exists() and not args.out:
        try:
            enrolled = EnrolledKeywords.load(kw_path)
            before = dict(enrolled.thresholds)
            update_thresholds(embedder, enrolled, background=[audio],
                              false_alarms_per_hour=k.false_alarms_per_hour,
                              fallback_threshold=k.fallback_threshold)
        except HarkError as exc:  # keywords file of another model, corrupt file
            print(f"error: {exc}", file=sys.stderr)
            return 1
        enrolled.save(kw_path)
        result["keywords_file"] = str(kw_path)
        result["keywords"] = {kw: {"threshold_before": round(before[kw], 4),
                                   "threshold": round(enrolled.thresholds[kw], 4),
                                   "source": enrolled.details[kw]["threshold_source"]}
                              for kw in sorted(enrolled.thresholds)}
    print(json.dumps(result, indent=2))
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m calibration",
                                description="Calibrate a node on site from normal operation.")
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("record", help="record normal operation (or use recordings) and write "
                                      "the calibration artifact and a score histogram")
    r.add_argument("--config", required=True, help="node config YAML")
    g = r.add_mutually_exclusive_group()
    g.add_argument("--minutes", type=float, default=10.0,
                   help="minutes to record from the configured input (default 10)")
    g.add_argument("--seconds", type=float, help="seconds to record (instead of --minutes)")
    g.add_argument("--from", dest="files", nargs="+", metavar="FILE",
                   help="use these WAV/FLAC recordings of normal operation instead of recording")
    r.add_argument("--out", help="artifact path (default: the config's asd.calibration)")
    r.add_argument("--plot", help="histogram PNG (default: next to the artifact)")
    r.add_argument("--quiet", action="store_true", help="no progress bar")
    e = sub.add_parser("enroll", help="enroll a keyword from a few spoken shots (microphone or "
                                      "recordings) and set its detection threshold")
    e.add_argument("--config", required=True, help="node config YAML")
    e.add_argument("--keyword", required=True, help="name of the keyword, e.g. stop")
    e.add_argument("--shots", type=_positive_int,
                   help="shots to record (default 5), or the number of --from files")
    e.add_argument("--from", dest="files", nargs="+", metavar="FILE",
                   help="one recording per shot instead of the microphone")
    e.add_argument("--shot-seconds", dest="shot_seconds", type=_positive_seconds, default=2.5,
                   help="recording time per shot from the microphone (default %(default)s)")
    e.add_argument("--negatives", nargs="+", metavar="FILE",
                   help="extra recordings without the keyword (site background, other speech) "
                        "for the threshold")
    e.add_argument("--out", help="keywords file (default: the config's kws.keywords)")
    b = sub.add_parser("background", help="record the site's ordinary sound (no keyword) and "
                                          "fit every keyword's threshold on it")
    b.add_argument("--config", required=True, help="node config YAML")
    g = b.add_mutually_exclusive_group()
    g.add_argument("--minutes", type=float, default=60.0,
                   help="minutes to record from the configured input (default %(default)s; "
                        f"thresholds are fitted from {60 * SITE_FIT_MIN_HOURS:g} min on)")
    g.add_argument("--from", dest="files", nargs="+", metavar="FILE",
                   help="use these recordings of the site's sound instead of recording")
    b.add_argument("--out", help="where to keep the recording (default: next to kws.keywords; "
                                 "with --out the keywords file is left alone)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    return {"record": cmd_record, "enroll": cmd_enroll,
            "background": cmd_background}[args.cmd](args)


if __name__ == "__main__":
    sys.exit(main())
