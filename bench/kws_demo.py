"""The keyword-spotting demo material of the bench: clips, their truth, enrollment, and checking
detections against the truth.

* :func:`kws_demo_clips`: the demo keyword stream, its truth and the shots of the keywords of
  :data:`KWS_DEMO_KEYWORDS`.
* :func:`load_kws_truth`: the keyword events of a stream's ``.json``.
* :func:`enroll_demo_keywords`: ``python -m calibration enroll``, once per keyword, as an
  installer would.
* :func:`keyword_match_counts`: detections against the truth, counted; the pairing is the
  project's one event matcher, :func:`trainer.kws_metrics.match_events` (greedy, the same
  collar of :data:`KWS_MATCH_COLLAR_S` on onset and offset).
"""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Sequence

from bench.common import KWS_CLIPS_DIR, ROOT, BenchError
from demo import KWS_DEMO_KEYWORDS  # enrolled in this order, as the demo does
from trainer.kws_metrics import match_events

__all__ = ["KWS_DEMO_KEYWORDS", "KWS_MATCH_COLLAR_S", "kws_demo_clips", "load_kws_truth",
           "enroll_demo_keywords", "keyword_match_counts"]

KWS_MATCH_COLLAR_S = 0.25  # onset and offset tolerance when checking detections


def kws_demo_clips(clips_dir: Path = KWS_CLIPS_DIR) -> dict[str, Any]:
    """The keyword-spotting demo clips.

    Parameters
    ----------
    clips_dir : Path
        Folder with ``stream.flac``, its truth ``stream.json`` and ``<keyword>_shot_*.flac``.

    Returns
    -------
    dict
        ``stream`` (Path), ``truth`` (Path of ``stream.json``) and ``shots`` (keyword ->
        sorted shot paths, for the keywords of :data:`KWS_DEMO_KEYWORDS` in that order).

    Raises
    ------
    BenchError
        If the stream, its truth or a keyword's shots are missing.
    """
    stream, truth = clips_dir / "stream.flac", clips_dir / "stream.json"
    shots = {kw: sorted(clips_dir.glob(f"{kw}_shot_*.flac")) for kw in KWS_DEMO_KEYWORDS}
    missing = [p.name for p in (stream, truth) if not p.is_file()]
    missing += [f"{kw}_shot_*.flac" for kw, paths in shots.items() if not paths]
    if missing:
        raise BenchError(f"keyword-spotting demo clips missing in {clips_dir}: "
                         f"{', '.join(missing)} (they ship with the repository: is the "
                         "checkout complete?)")
    return {"stream": stream, "truth": truth, "shots": shots}


def load_kws_truth(path: Path) -> list[dict[str, Any]]:
    """The keyword events of a demo stream's ``.json``.

    Parameters
    ----------
    path : Path
        The stream's truth file (``{"keywords": [{"keyword", "onset", "offset"}, ...]}``).

    Returns
    -------
    list of dict
        ``{"keyword", "onset_s", "offset_s"}`` per event, times in seconds, in file order.
    """
    doc = json.loads(Path(path).read_text())
    return [{"keyword": e["keyword"], "onset_s": float(e["onset"]),
             "offset_s": float(e["offset"])} for e in doc["keywords"]]


def keyword_match_counts(detections: Sequence[dict[str, Any]],
                         truth: Sequence[dict[str, Any]],
                         collar: float = KWS_MATCH_COLLAR_S) -> dict[str, int]:
    """Count detections against true events: same keyword, onset and offset within ``collar``.

    The pairing is :func:`trainer.kws_metrics.match_events` with ``offset_fraction=0.0`` and
    ``matching="greedy"``: each true event, in onset order, takes the first unpaired
    qualifying detection in onset order; each detection pairs with at most one true event.

    Parameters
    ----------
    detections, truth : sequence of dict
        Events with ``keyword``, ``onset_s`` and ``offset_s`` (seconds).
    collar : float
        Tolerance in seconds, on the onset and on the offset alike.

    Returns
    -------
    dict
        ``truth`` (true events), ``found`` (true events with a detection),
        ``detections`` and ``false`` (detections paired with no true event).
    """
    def events(xs):
        return [(x["keyword"], x["onset_s"], x["offset_s"]) for x in xs]

    ref_match, det_match = match_events(events(truth), events(detections), collar=collar,
                                        offset_fraction=0.0, matching="greedy")
    return {"truth": len(truth), "found": int((ref_match >= 0).sum()),
            "detections": len(detections), "false": int((det_match < 0).sum())}


def _rel(path: Path) -> str:
    """``path`` relative to the repository root when it lies inside (as typed by hand)."""
    try:
        return str(Path(path).resolve().relative_to(ROOT))
    except ValueError:
        return str(path)


def enroll_demo_keywords(config: Path, shots: dict[str, Sequence[Path]],
                         env: dict[str, str] | None = None) -> dict[str, Any]:
    """Enroll keywords into ``config``'s ``kws.keywords`` with the installer's command.

    Runs ``python -m calibration enroll --config CONFIG --keyword KW --from SHOTS...`` once
    per keyword, in the order of ``shots``, from the repository root.

    Parameters
    ----------
    config : Path
        Node config YAML (its ``kws.model`` and ``kws.keywords`` are used).
    shots : dict of str -> sequence of Path
        Shot recordings per keyword.
    env : dict, optional
        Environment of the commands.

    Returns
    -------
    dict
        ``keywords_file``, ``enrollment_id``, ``thresholds`` and ``threshold_sources`` per
        keyword (from the last command's JSON output), ``shots`` per keyword, ``commands``
        and ``seconds`` (wall-clock time of all commands).

    Raises
    ------
    RuntimeError
        A command failed; the message quotes its output.
    """
    t0 = time.monotonic()
    out: dict[str, Any] = {}
    commands = []
    for kw, paths in shots.items():
        cmd = [sys.executable, "-m", "calibration", "enroll", "--config", str(config),
               "--keyword", kw, "--from", *map(_rel, paths)]
        commands.append(" ".join(["python", *cmd[1:]]))
        r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
        if r.returncode != 0:
            raise RuntimeError(f"calibration enroll --keyword {kw} failed (exit {r.returncode}):"
                               f"\n{(r.stdout + r.stderr)[-1500:]}")
        try:
            out = json.loads(r.stdout[r.stdout.index("{"):])
        except ValueError as exc:
            raise RuntimeError(f"calibration enroll --keyword {kw}: unreadable output ({exc}):"
                               f"\n{r.stdout[-1500:]}") from exc
    enrolled = out.get("enrolled", {})
    return {"keywords_file": out.get("keywords"), "enrollment_id": out.get("enrollment_id"),
            "model_id": out.get("model_id"),
            "thresholds": {k: v.get("threshold") for k, v in enrolled.items()},
            "threshold_sources": {k: v.get("threshold_source") for k, v in enrolled.items()},
            "shots": {k: len(v) for k, v in shots.items()}, "commands": commands,
            "seconds": round(time.monotonic() - t0, 2)}
