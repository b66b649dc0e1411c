"""Calibrating the node's keyword thresholds offline: one threshold per false-alarm rate.

A node sets each keyword's threshold at enrollment. Thesis 6.3.6 tunes one global threshold
on validation data; a node has none, and the few minutes of shipped negative audio cannot show
a rate of one false alarm per hour: a gamma fit to them extrapolates far into the tail and, on
2 hours of negatives, gave 0 to 400 false alarms per hour instead of 1, differently for every
keyword. Measured on hours of negatives, the threshold that gives a rate is nearly the same for
every keyword (1 FA/h: 0.25-0.40 over 26 keywords), and statistics of the shipped negatives
do not predict the rest (residual spread 0.031 with them, 0.035 without; the linear fits learned
on synthetic keywords transfer worse to real ones). So the calibration learns, per rate of
:data:`RATES`, the median over calibration keywords of that threshold, and the node uses it
for every keyword (:func:`calibration.keyword_thresholds.calibrated_threshold`):

* calibration keywords: real held-out words (:data:`REAL_KEYWORDS`) and synthetic two-word
  phrases, each spoken by 5 espeak-ng voices; never an evaluation keyword; for a bundle that
  weights onsets (``onset_weighting``), every shot set in quiet room sound
  (:func:`with_room_sound`), as a microphone enrollment records it, so that enrollment
  weights its onset as it will a node's shots;
* calibration negatives: ``hours`` of the val split (other words, synthetic speech, noise;
  disjoint from the evaluation's test split);
* false alarms at a threshold: the keyword spotter's events, local minima of the
  candidate-cost trace below it at least a template length apart
  (:func:`calibration.keyword_thresholds.trace_event_costs`).

The table lives in the KWS bundle's metadata (``threshold_calibration``), so a retrained model
is recalibrated with it. Per-keyword thresholds stay in the table's report for inspection.

A bundle with a generic negative hour (:mod:`calibration.generic_negatives`) sets each
keyword's threshold by a fit on that hour instead. The same calibration keywords and negatives
measure how that fit transfers (:func:`generic_rate_factor`): for each factor of
:data:`RATE_FACTORS`, every keyword's threshold fitted on the hour for the node's default rate
(1 false alarm per hour) times the factor, and the false alarms per hour those thresholds give
on the val negatives, pooled over the keywords. The largest factor whose pooled rate keeps the
target is stored with the hour (``rate_factor``); enrollment asks the fit for that multiple of
the configured rate.

Contents
--------
RATES, REAL_KEYWORDS, RATE_FACTORS, calibration_keywords, generic_rate_factor,
calibrate_thresholds, write_calibration
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from calibration.enroll import ShotError, enroll_keyword
from calibration.generic_negatives import (METADATA_KEY as GENERIC_KEY,
                                           load_generic_negatives)
from calibration.keyword_thresholds import (keyword_cost_norms, tail_fit_threshold,
                                            trace_event_costs)
from edge.audio import load_audio
from edge.model import load_bundle
from firmware_config.fileio import atomic_write_json
from trainer.kws_data import load_background
from trainer.kws_streams import SAMPLE_RATE, enrollment_shots
from trainer.kws_tts import ESPEAK_VOICES, random_phrases, speak
from trainer.kws_wakeword import WAKEWORD_KEYWORDS, WakewordConfig, negative_streams

__all__ = ["RATES", "REAL_KEYWORDS", "PRETRAINED_REAL_KEYWORDS", "ROOM_SOUND_SECONDS",
           "ROOM_SOUND_DBFS", "RATE_FACTORS", "with_room_sound", "calibration_keywords",
           "generic_rate_factor", "calibrate_thresholds", "write_calibration"]

#: False alarms per hour the table covers (a node's target is interpolated in log-rate).
RATES = (0.1, 0.3, 1.0, 3.0, 10.0)
#: Multiples of the target rate the generic fit is tried with (about 9 % apart, 1/4 to 8).
RATE_FACTORS = tuple(float(round(f, 4)) for f in np.geomspace(0.25, 8.0, 41))
#: The rate the generic fit's transfer is measured at (the node's default).
RATE_FACTOR_TARGET = 1.0
#: Real words held out of the TACos embedder's training and not evaluation keywords.
REAL_KEYWORDS = ("stop", "left")
#: Real calibration words for a pretrained embedder, which heard none of this data: every
#: word with usable train/val/test recordings but the evaluation keywords and the most
#: frequent digits (the negatives keep those). Synthetic phrases are left out for it: spoken
#: by espeak-ng, they find their own voices in the synthetic half of the negatives, and gave
#: a threshold 0.45 normalised units lower (more misses) than the real words.
PRETRAINED_REAL_KEYWORDS = ("stop", "left", "bed", "dog", "forward", "happy", "house", "sheila",
                            "wow", "right", "seven", "down")


#: Room sound put before and after each calibration shot (seconds) and its RMS level (dBFS):
#: the wake-word recordings hold 0.5-1.6 s before the word at a median of -73 dBFS
#: (quartiles -84 and -61); Speech Commands clips, cut to about 1 s, hold 0.2-0.4 s.
ROOM_SOUND_SECONDS, ROOM_SOUND_DBFS = 0.6, -70.0


def with_room_sound(y: np.ndarray, background: np.ndarray, rng: np.random.Generator,
                    seconds: float = ROOM_SOUND_SECONDS,
                    level_dbfs: float = ROOM_SOUND_DBFS) -> np.ndarray:
    """A shot as a microphone records it: ``seconds`` of quiet background before and after.

    Enrollment weights the onset of a template only when the shot holds a pause before the
    word (:func:`calibration.enroll.shot_frame_weights`); the calibration words' clips are
    cut too tight for that, so without this the table would be calibrated on templates the
    node does not spot with.

    Parameters
    ----------
    y : np.ndarray, shape (n,), float32
        The recorded shot, 16 kHz.
    background : np.ndarray, shape (m,), float32
        Background sound to cut from (``m >= 2 * seconds`` at 16 kHz).
    rng : np.random.Generator
        Where in ``background`` each side is cut.
    seconds, level_dbfs : float
        Length of each side and its RMS level.

    Returns
    -------
    np.ndarray, shape (n + 2 * seconds * 16000,), float32
    """
    n = int(round(seconds * SAMPLE_RATE))
    sides = []
    for _ in range(2):
        a = int(rng.integers(0, len(background) - n + 1))
        x = background[a:a + n].astype(np.float64)
        x *= 10 ** (level_dbfs / 20) / max(float(np.sqrt(np.mean(x ** 2))), 1e-12)
        sides.append(x.astype(np.float32))
    return np.concatenate([sides[0], np.asarray(y, np.float32), sides[1]])


def calibration_keywords(data_dir: Path, n_synthetic: int, shots: int = 5, seed: int = 0,
                         real_keywords: tuple[str, ...] = REAL_KEYWORDS,
                         room_sound: bool = False) -> dict[str, list[np.ndarray]]:
    """Shots of the calibration keywords: ``real_keywords`` (train-split recordings, whole
    files) and ``n_synthetic`` random two-word phrases, each spoken by ``shots`` espeak-ng
    voices (never containing an evaluation keyword); with ``room_sound`` each set in
    train-split room sound (:func:`with_room_sound`)."""
    rng = np.random.default_rng(seed)
    room = np.concatenate(load_background(data_dir, "train")) if room_sound else None

    def shot(y):
        return y if room is None else with_room_sound(y, room, rng)

    out = {kw: [shot(load_audio(sh.path, SAMPLE_RATE)) for sh in v]
           for kw, v in enrollment_shots(data_dir, real_keywords, shots, seed).items()}
    for i, text in enumerate(random_phrases(n_synthetic, seed=seed,
                                            exclude=(*WAKEWORD_KEYWORDS, *real_keywords))):
        voices = [ESPEAK_VOICES[(i + j) % len(ESPEAK_VOICES)] for j in range(shots)]
        out[f"tts:{text}"] = [shot(c.audio) for c in speak(text, voices, seed=seed + i)]
    return out


def generic_rate_factor(generic: list[tuple[np.ndarray, float]],
                        negatives: list[tuple[np.ndarray, float]],
                        target: float = RATE_FACTOR_TARGET,
                        factors: tuple[float, ...] = RATE_FACTORS,
                        ) -> tuple[float, dict[str, float]]:
    """How much more the generic fit must ask than ``target`` to give it on other audio.

    For each factor, every keyword's threshold is the lower-tail fit
    (:func:`calibration.keyword_thresholds.tail_fit_threshold`) to its event costs on the
    generic hour for ``target * factor`` false alarms per hour; its false alarms are its
    events on the other negatives below that threshold. The rate pooled over the keywords
    (their false alarms over their hours together) rises with the factor; the answer is the
    largest factor whose pooled rate is at most ``target`` (the smallest factor when none is).

    Parameters
    ----------
    generic : list of (np.ndarray, float)
        Per calibration keyword, its event costs on the generic hour (shape (n_events,),
        normalised units) and that audio's hours.
    negatives : list of (np.ndarray, float)
        Per keyword in the same order, its event costs on the other negatives and their hours.
    target : float
        False alarms per hour (> 0).
    factors : tuple of float
        The factors tried, increasing, each > 0.

    Returns
    -------
    factor : float
    pooled_rates : dict str -> float
        Pooled false alarms per hour on the negatives at each factor (keys ``str(factor)``).

    Raises
    ------
    ValueError
        No keyword, lists of different lengths, a non-positive target or factor, or factors
        not increasing.
    """
    f = np.asarray(factors, np.float64)
    if not generic or len(generic) != len(negatives):
        raise ValueError(f"need event costs of the same keywords on both audios, got "
                         f"{len(generic)} and {len(negatives)} keywords")
    if not target > 0 or not len(f) or np.any(f <= 0) or np.any(np.diff(f) <= 0):
        raise ValueError(f"target and factors must be > 0 and the factors increasing, got "
                         f"{target!r} and {factors!r}")
    hours = sum(h for _, h in negatives)
    rates = {}
    for x in f:
        alarms = 0
        for (g, g_hours), (n, _) in zip(generic, negatives):
            thr = tail_fit_threshold(g, g_hours, target * x)
            alarms += 0 if thr is None else int(np.sum(np.asarray(n) < thr))
        rates[str(float(x))] = alarms / hours
    kept = [float(x) for x in f if rates[str(float(x))] <= target]
    return (max(kept) if kept else float(f[0])), rates


def calibrate_thresholds(model_path: str | Path, data_dir: str | Path, *, hours: float = 1.0,
                         n_synthetic: int = 12, seed: int = 0,
                         real_keywords: tuple[str, ...] = REAL_KEYWORDS,
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
        Synthetic calibration keywords besides the real ones.
    seed : int
    real_keywords : tuple of str
        Real calibration words (train-split shots; never an evaluation keyword). A word
        whose shots enrollment refuses (clipped, say) is left out and listed in
        ``skipped``.

    Returns
    -------
    dict
        ``method``, ``rates``, ``threshold`` (median per rate), ``threshold_iqr``
        (interquartile range per rate), ``keywords`` (per keyword: its threshold per rate
        and the shipped-negative gamma threshold for 1 FA/h, for comparison), ``skipped``
        (keyword -> why), ``negative_hours``, ``seed``; for a bundle with a generic
        negative hour also ``generic_fit``: ``rate_factor`` (:func:`generic_rate_factor`),
        ``pooled_rates``, ``target`` and the hour's ``sha256``.

    Raises
    ------
    ValueError
        An evaluation keyword among ``real_keywords``.
    edge.model.ModelError
        The bundle's generic negatives are broken
        (:func:`calibration.generic_negatives.load_generic_negatives`).
    """
    data_dir = Path(data_dir).resolve()
    bundle = load_bundle(model_path, task="kws")
    bad = sorted(set(real_keywords) & set(WAKEWORD_KEYWORDS))
    if bad:
        raise ValueError(f"evaluation keywords cannot calibrate thresholds: {bad}")
    shots = calibration_keywords(data_dir, n_synthetic, seed=seed, real_keywords=real_keywords,
                                 room_sound=bundle.onset_weighting[0] > 1)
    words = [w for kw in shots for w in kw.removeprefix("tts:").split()]
    cfg = WakewordConfig(seed=seed + 17, stream_seconds=60.0)  # the shipped tables: 60 s streams
    neg = negative_streams(data_dir, cfg, split="val", hours=hours, exclude=words,
                           progress=progress)
    neg_hours = sum(s.duration_s for s in neg) / 3600.0
    frames = [bundle.embed_wave(s.audio) for s in tqdm(neg, desc="embedding negatives",
                                                       disable=not progress, leave=False)]
    generic = load_generic_negatives(bundle)
    transfer: list[tuple[tuple[np.ndarray, float], tuple[np.ndarray, float]]] = []
    per_kw: dict[str, Any] = {}
    skipped: dict[str, str] = {}
    for kw, waves in tqdm(shots.items(), desc="calibrating thresholds", disable=not progress):
        try:
            e = enroll_keyword(bundle, kw, waves, shot_source="file")
        except ShotError as exc:
            skipped[kw] = str(exc)
            continue
        templates = e.templates[kw]
        norms = e.cost_norms.get(kw)  # thresholds in the units the node compares
        weights = e.frame_weights.get(kw)
        if norms is None:  # a new bundle without a table yet: its first table, same units
            norms = keyword_cost_norms(bundle, kw, templates, frame_weights=weights)
        costs = np.sort(np.concatenate([trace_event_costs(f, templates, norms, bundle.shot_fusion,
                                                          weights)
                                        for f in frames]))
        if generic is not None:  # the same keyword's events on the generic hour
            pieces, g_hours = generic.without(kw)
            g = np.concatenate([trace_event_costs(f, templates, norms, bundle.shot_fusion,
                                                  weights) for f in pieces])
            transfer.append(((g, g_hours), (costs, neg_hours)))
        thr = {}
        for rate in RATES:
            k = int(math.floor(rate * neg_hours))  # events allowed below the threshold
            thr[str(rate)] = round(float(costs[min(k, len(costs) - 1)]), 5)
        per_kw[kw] = {"threshold": thr, "gamma_threshold_1_fa_per_hour":
                      round(float(e.thresholds[kw]), 5) if e.details[kw].get(
                          "threshold_source") == "fa-rate" else None}
    table = {str(r): [v["threshold"][str(r)] for v in per_kw.values()] for r in RATES}
    out = {"method": "median over calibration keywords of the threshold giving each rate on "
                     "hours of negatives (trainer/kws_thresholds.py)",
           "rates": list(RATES),
           "threshold": {r: round(float(np.median(v)), 5) for r, v in table.items()},
           "threshold_iqr": {r: round(float(np.subtract(*np.quantile(v, [0.75, 0.25]))), 5)
                             for r, v in table.items()},
           "negative_hours": round(neg_hours, 3), "keywords": per_kw, "skipped": skipped,
           "seed": seed}
    if transfer:
        factor, pooled = generic_rate_factor([g for g, _ in transfer], [n for _, n in transfer])
        out["generic_fit"] = {"rate_factor": factor, "target": RATE_FACTOR_TARGET,
                              "pooled_rates": {k: round(v, 4) for k, v in pooled.items()},
                              "sha256": bundle.metadata[GENERIC_KEY]["sha256"]}
    return out


def write_calibration(model_path: str | Path, table: dict[str, Any]) -> Path:
    """Store ``table`` as ``threshold_calibration`` in the bundle's JSON (atomically), and its
    ``generic_fit`` factor as the generic negatives' ``rate_factor`` when they are still the
    hour it was measured on."""
    meta_path = Path(model_path).with_suffix(".json")
    meta = json.loads(meta_path.read_text())
    fit, entry = table.get("generic_fit"), meta.get(GENERIC_KEY)
    if fit and entry and entry.get("sha256") == fit["sha256"]:
        entry["rate_factor"] = fit["rate_factor"]
        entry["rate_factor_measured"] = {k: fit[k] for k in ("target", "pooled_rates")} | {
            "negative_hours": table["negative_hours"], "keywords": len(table["keywords"])}
    meta["threshold_calibration"] = {k: table[k] for k in ("method", "rates", "threshold",
                                                           "threshold_iqr", "negative_hours",
                                                           "seed")}
    meta["threshold_calibration"]["keywords"] = len(table["keywords"])
    meta["threshold_calibration"]["calibration_keywords"] = sorted(table["keywords"])
    return atomic_write_json(meta_path, meta)
