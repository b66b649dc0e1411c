"""Calibrating the node's keyword thresholds offline: one normalised scale for every keyword.

A node sets each keyword's threshold at enrollment from the shots and a few minutes of shipped
negative audio (:func:`calibration.enroll.keyword_threshold`). Minutes of negatives cannot show
a rate of one false alarm per hour: the threshold is an extrapolation far into the lower tail
of the negative matching costs. A parametric fit (gamma) misses its target by 10x in either
direction, differently for every keyword. Here the extrapolation is learned instead, on hours
of negatives and many keywords, as one table the node applies to every keyword:

1. **Normalisation** (on the node, per keyword): the local minima of the keyword's matching
   cost over the shipped negatives (:func:`calibration.enroll.negative_event_costs`) give a
   centre ``c`` (median) and a lower-tail spread ``s`` (median minus 5th percentile)
   (:func:`calibration.enroll.negative_cost_scale`); a cost ``x`` is read as
   ``z = (x - c) / s``.
2. **Calibration** (here, once per model): for each calibration keyword (real held-out words
   and synthetic two-word phrases spoken by espeak-ng voices, never an evaluation keyword),
   the same ``c`` and ``s``, and on ``hours`` of calibration negatives (the val split: other
   words, synthetic speech, noise; disjoint from the evaluation's test split) the threshold
   that gives each rate of :data:`RATES` false alarms per hour; its ``z``. The table keeps the
   median ``z`` per rate over the keywords (and their spread, for the report).
3. **On the node**, ``threshold = c + z(rate) * s``, ``z`` interpolated in ``log(rate)``
   (:func:`calibration.enroll.calibrated_threshold`). The table lives in the KWS bundle's
   metadata (``threshold_calibration``), so a retrained model is recalibrated with it.

False alarms at a threshold are counted as the keyword spotter's events: local minima of the
candidate-cost trace below the threshold, at least a template length apart
(:func:`calibration.enroll.negative_event_costs` on the calibration audio).

Contents
--------
RATES, calibration_keywords, calibrate_thresholds, write_calibration
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from calibration.enroll import (enroll_keyword, negative_cost_scale, negative_event_costs,
                                shipped_negatives, trace_event_costs)
from edge.audio import load_audio
from edge.model import load_bundle
from firmware_config.fileio import atomic_write_json
from trainer.kws_streams import SAMPLE_RATE, enrollment_shots
from trainer.kws_tts import ESPEAK_VOICES, random_phrases, speak
from trainer.kws_wakeword import WAKEWORD_KEYWORDS, WakewordConfig, negative_streams

__all__ = ["RATES", "REAL_KEYWORDS", "calibration_keywords", "calibrate_thresholds",
           "write_calibration"]

#: False alarms per hour the table covers (a node's target is interpolated in log-rate).
RATES = (0.1, 0.3, 1.0, 3.0, 10.0)
#: Real words held out of the default embedder's training and not evaluation keywords.
REAL_KEYWORDS = ("stop", "left")


def calibration_keywords(data_dir: Path, n_synthetic: int, shots: int = 5,
                         seed: int = 0) -> dict[str, list[np.ndarray]]:
    """Shots of the calibration keywords: :data:`REAL_KEYWORDS` (train-split recordings, whole
    files) and ``n_synthetic`` random two-word phrases, each spoken by ``shots`` espeak-ng
    voices (never containing an evaluation keyword)."""
    out = {kw: [load_audio(sh.path, SAMPLE_RATE) for sh in v]
           for kw, v in enrollment_shots(data_dir, REAL_KEYWORDS, shots, seed).items()}
    for i, text in enumerate(random_phrases(n_synthetic, seed=seed,
                                            exclude=(*WAKEWORD_KEYWORDS, *REAL_KEYWORDS))):
        voices = [ESPEAK_VOICES[(i + j) % len(ESPEAK_VOICES)] for j in range(shots)]
        out[f"tts:{text}"] = [c.audio for c in speak(text, voices, seed=seed + i)]
    return out


def calibrate_thresholds(model_path: str | Path, data_dir: str | Path, *, hours: float = 1.0,
                         n_synthetic: int = 12, seed: int = 0,
                         progress: bool = False) -> dict[str, Any]:
    """The ``threshold_calibration`` table of a KWS bundle (module docstring).

    Parameters
    ----------
    model_path : path
        The int8 KWS bundle.
    data_dir : path
        The shared data folder.
    hours : float
        Calibration negatives (val split).
    n_synthetic : int
        Synthetic calibration keywords besides :data:`REAL_KEYWORDS`.
    seed : int

    Returns
    -------
    dict
        ``method``, ``rates``, ``z`` (median per rate), ``z_spread`` (interquartile range per
        rate), ``keywords`` (per keyword: centre, spread and z per rate), ``negative_hours``.
    """
    data_dir = Path(data_dir).resolve()
    bundle = load_bundle(model_path, task="kws")
    shots = calibration_keywords(data_dir, n_synthetic, seed=seed)
    words = [w for kw in shots for w in kw.removeprefix("tts:").split()]
    cfg = WakewordConfig(seed=seed + 17)
    neg = negative_streams(data_dir, cfg, split="val", hours=hours, exclude=words,
                           progress=progress)
    neg_hours = sum(s.duration_s for s in neg) / 3600.0
    frames = [bundle.embed_wave(s.audio) for s in tqdm(neg, desc="embedding negatives",
                                                       disable=not progress, leave=False)]
    per_kw: dict[str, Any] = {}
    for kw, waves in tqdm(shots.items(), desc="calibrating thresholds", disable=not progress):
        e = enroll_keyword(bundle, kw, waves, shot_source="file")
        templates = e.templates[kw]
        shipped, _ = negative_event_costs(
            bundle, templates, shipped_negatives(exclude_word=kw,
                                                 sample_rate=bundle.frontend.sample_rate))
        centre, spread = negative_cost_scale(shipped)
        costs = np.sort(np.concatenate([trace_event_costs(f, templates, bundle.frame_seconds)
                                        for f in frames]))
        z = {}
        for rate in RATES:
            k = int(math.floor(rate * neg_hours))  # events allowed below the threshold
            thr = float(costs[k]) if k < len(costs) else float(costs[-1])
            z[str(rate)] = round((thr - centre) / spread, 4)
        per_kw[kw] = {"centre": round(centre, 5), "spread": round(spread, 5), "z": z,
                      "shipped_negative_events": int(len(shipped))}
    table = {str(r): [v["z"][str(r)] for v in per_kw.values()] for r in RATES}
    return {"method": "negative-cost normalisation, z per rate (trainer/kws_thresholds.py)",
            "rates": list(RATES),
            "z": {r: round(float(np.median(v)), 4) for r, v in table.items()},
            "z_spread": {r: round(float(np.subtract(*np.quantile(v, [0.75, 0.25]))), 4)
                         for r, v in table.items()},
            "negative_hours": round(neg_hours, 3), "keywords": per_kw, "seed": seed}


def write_calibration(model_path: str | Path, table: dict[str, Any]) -> Path:
    """Store ``table`` as ``threshold_calibration`` in the bundle's JSON (atomically)."""
    meta_path = Path(model_path).with_suffix(".json")
    meta = json.loads(meta_path.read_text())
    meta["threshold_calibration"] = {k: table[k] for k in ("method", "rates", "z", "z_spread",
                                                           "negative_hours", "seed")}
    return atomic_write_json(meta_path, meta)
