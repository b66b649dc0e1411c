"""Keyword enrollment: shots in, templates and per-keyword decision thresholds out.

An installer says each keyword a few times (``--shots 5``), or passes recordings
(``--from FILES``). Every shot's speech is found with :func:`edge.vad.shot_interval`,
never cutting into the word: the shot is padded with digital silence, and its noise floor is
taken from its ends only when they are quiet (non-speech around the word, as in a microphone
shot); a shot that starts or ends inside the word (a file cut tight around it) is kept
whole. Either way 50 ms of margin stay on both sides, as in the evaluation's utterances. A
shot is rejected with a clear message when it is empty, silent, clipped, too short or too
long; nothing is stored unless every shot passes. Each accepted shot is embedded with the
KWS model *as recorded* (the embedder sees the sound around the word, as it will in a
stream) and the frames of its speech are kept as its own template (:func:`shot_template`;
thesis 6.3.6: DBA averaging was worse), its first frames weighted up where the bundle says so
and the shot holds a pause before the word (:func:`shot_frame_weights`).

Per-keyword decision thresholds, and the per-template cost normalisation they are in,
come from negative audio: :mod:`calibration.keyword_thresholds`.
"""
from __future__ import annotations

import logging

import numpy as np

from calibration.keyword_thresholds import (DEFAULT_FALLBACK_THRESHOLD, keyword_threshold,
                                           negative_frames)
from edge.keywords import EnrolledKeywords, EnrollmentError
from edge.kws import onset_frame_weights
from edge.levels import clipped_fraction, peak_dbfs
from edge.vad import SpeechInterval, shot_interval
from firmware_config.errors import HarkError

log = logging.getLogger(__name__)

__all__ = ["ShotError", "SHOT_SOURCES", "prepare_shot", "locate_shot", "shot_template",
           "shot_frame_weights", "enroll_keyword", "update_thresholds"]

CLIPPED_FRACTION = 0.001
SILENT_DBFS = -45.0


class ShotError(HarkError, ValueError):
    """A keyword shot is unusable (silent, clipped, too short or too long)."""


SHOT_SOURCES = ("microphone", "file")


def prepare_shot(y: np.ndarray, sample_rate: int, *, min_seconds: float, max_seconds: float,
                 name: str = "shot", source: str = "microphone") -> np.ndarray:
    """Check one spoken shot and trim it to its speech, never into the word: ``y`` cut to
    :func:`locate_shot`'s interval (parameters, errors: see there).

    Returns
    -------
    np.ndarray, float32: the trimmed speech.
    """
    iv = locate_shot(y, sample_rate, min_seconds=min_seconds, max_seconds=max_seconds,
                     name=name, source=source)
    return np.asarray(np.asarray(y, np.float32)[iv.slice(sample_rate)], np.float32)


def shot_template(embedder, y: np.ndarray, interval: SpeechInterval) -> np.ndarray:
    """The template of one shot: the frame embeddings of its speech, computed with the
    recording around it.

    The embedder sees the shot as it will see the keyword in a stream, with sound on both
    sides, instead of a trimmed clip padded with digital silence (which a
    speech_embedding window, 0.78 s wide, would mostly see at the ends of a short word).
    Frames whose centres fall in the speech interval (widened by half a frame) are kept.

    Parameters
    ----------
    embedder : edge.model.KwsEmbedder or edge.speech_embedding.SpeechEmbedder
    y : np.ndarray, shape (n_samples,), float32
        The whole recorded shot.
    interval : edge.vad.SpeechInterval
        From :func:`locate_shot`.

    Returns
    -------
    np.ndarray, shape (n_frames, embedding_dim), float32
    """
    frames = embedder.embed_wave(np.asarray(y, np.float32))
    fs = float(embedder.frame_seconds)
    k0 = max(int(np.ceil(interval.start_s / fs - 0.5)), 0)
    k1 = min(int(np.floor(interval.end_s / fs + 0.5)) + 1, len(frames))
    return np.ascontiguousarray(frames[k0:max(k1, k0 + 1)], np.float32)


def shot_frame_weights(embedder, n_frames: int, interval: SpeechInterval) -> np.ndarray | None:
    """The frame weights of one shot's template: the bundle's onset weighting
    (:func:`edge.kws.onset_frame_weights`) when the recording holds a pause before the word.

    The weighting makes a match need the template's first frames, which hear the sound
    before the word. A shot cut tight around its speech (a 1 s Speech Commands clip, a file
    trimmed by hand) has no such sound: its first frames hear the digital silence the
    embedder pads a recording with, which no stream holds, and weighting them up would
    make the keyword harder to find. Such a shot keeps its frames unweighted.

    Parameters
    ----------
    embedder : edge.model.KwsEmbedder or edge.speech_embedding.SpeechEmbedder
        Its ``onset_weighting`` ``(w, k, lead_in_s)``.
    n_frames : int
        The template's length (:func:`shot_template`).
    interval : edge.vad.SpeechInterval
        The shot's speech in its recording (:func:`locate_shot`).

    Returns
    -------
    np.ndarray, shape (n_frames,), float64, or None
        None (every frame alike) when the speech starts less than ``lead_in_s`` seconds
        into the recording or the bundle does not weight.
    """
    onset = tuple(embedder.onset_weighting)
    if interval.start_s < onset[2]:
        return None
    return onset_frame_weights(n_frames, onset)


def locate_shot(y: np.ndarray, sample_rate: int, *, min_seconds: float, max_seconds: float,
                name: str = "shot", source: str = "microphone") -> SpeechInterval:
    """Check one spoken shot and find its speech, never cutting into the word.

    The speech is found with :func:`edge.vad.shot_interval`: a shot cut tight around the
    word (no non-speech at its ends) is kept whole; silence around the word is trimmed to
    a 50 ms margin.

    Parameters
    ----------
    y : np.ndarray, shape (n_samples,), float32 in [-1, 1]
    sample_rate : int
        Hz.
    min_seconds, max_seconds : float
        Allowed duration of the trimmed speech (with its margins).
    name : str
        How the shot is called in error messages (e.g. the file name).
    source : {"microphone", "file"}
        Where the shot came from; only changes the advice in error messages (a file was not
        recorded after a prompt).

    Returns
    -------
    edge.vad.SpeechInterval
        The speech with its margins, seconds from the start of ``y``.

    Raises
    ------
    ShotError
        Empty (no samples), silent (peak below -45 dBFS or no speech found), clipped (more
        than 0.1 % of the samples at full scale), or speech shorter/longer than allowed.
    ValueError
        If ``source`` is not one of :data:`SHOT_SOURCES`.
    """
    if source not in SHOT_SOURCES:
        raise ValueError(f"source must be one of {SHOT_SOURCES}, got {source!r}")
    from_file = source == "file"
    y = np.asarray(y, np.float32)
    if y.size == 0:
        raise ShotError(f"{name}: the file is empty (0 samples); record the keyword again"
                        if from_file else f"{name}: nothing was recorded (0 samples); check "
                        "that audio.device is the microphone")
    peak, clipped = peak_dbfs(y), clipped_fraction(y)
    if peak < SILENT_DBFS:
        advice = ("record the keyword louder" if from_file else
                  "speak louder or closer to the microphone")
        raise ShotError(f"{name}: silent (peak {peak:.0f} dBFS, need at least "
                        f"{SILENT_DBFS:.0f} dBFS); {advice}")
    if clipped > CLIPPED_FRACTION:
        raise ShotError(f"{name}: clipped ({100 * clipped:.1f} % of samples at full scale); "
                        + ("record it again softer or at a lower input gain" if from_file else
                           "speak softer or lower the input gain"))
    iv = shot_interval(y, sample_rate)
    if iv is None:
        raise ShotError(f"{name}: no speech found; " + (
            "the file should hold the spoken keyword" if from_file else
            "say the keyword clearly after the prompt"))
    if iv.duration_s < min_seconds:
        raise ShotError(f"{name}: speech lasts {iv.duration_s:.2f} s, shorter than "
                        f"kws.min_shot_seconds = {min_seconds} s")
    if iv.duration_s > max_seconds:
        raise ShotError(f"{name}: speech lasts {iv.duration_s:.2f} s, longer than "
                        f"kws.max_shot_seconds = {max_seconds} s; " + (
                            "the file should hold only the keyword" if from_file else
                            "say only the keyword"))
    return iv


def enroll_keyword(embedder, keyword: str, shot_waves, *, existing: EnrolledKeywords | None = None,
                   negatives=(), background=(), false_alarms_per_hour: float = 1.0,
                   fallback_threshold: float | None = None, min_seconds: float = 0.2,
                   max_seconds: float = 2.0, shot_names=None,
                   shot_source: str = "microphone") -> EnrolledKeywords:
    """Enroll (or re-enroll) one keyword and recompute every keyword's threshold.

    Parameters
    ----------
    embedder : edge.model.KwsEmbedder
    keyword : str
    shot_waves : list of np.ndarray
        16 kHz recordings, one shot each (trimmed here).
    existing : EnrolledKeywords, optional
        Keywords enrolled before; they must come from the same model.
    negatives : list of np.ndarray
        Extra negative recordings (other speech) for the cost normalisation and thresholds.
    background : list of np.ndarray
        The site's ordinary sound without any keyword (``python -m calibration
        background``); with at least
        :data:`calibration.keyword_thresholds.SITE_FIT_MIN_HOURS` of it every keyword's
        threshold is fitted on it (source ``"site-fit"``).
    false_alarms_per_hour, fallback_threshold, min_seconds, max_seconds
        From the node config's ``kws`` section.
    shot_names : list of str, optional
        How the shots are called in error messages (default ``shot 1``, ``shot 2``, ...).
    shot_source : {"microphone", "file"}
        Where the shots came from (see :func:`prepare_shot`).

    Returns
    -------
    EnrolledKeywords (not yet saved).

    Raises
    ------
    ShotError
        A shot is unusable (nothing is changed).
    EnrollmentError
        ``existing`` belongs to another model.
    """
    sr = embedder.frontend.sample_rate
    names = list(shot_names or [f"shot {i + 1}" for i in range(len(shot_waves))])
    if not shot_waves:
        raise ShotError("no shots given")
    waves = [np.asarray(y, np.float32) for y in shot_waves]
    intervals = [locate_shot(y, sr, min_seconds=min_seconds, max_seconds=max_seconds, name=n,
                             source=shot_source)
                 for y, n in zip(waves, names)]
    trimmed = [y[iv.slice(sr)] for y, iv in zip(waves, intervals)]
    if existing is not None and existing.model_id != embedder.model_id:
        raise EnrollmentError(f"the enrolled keywords were embedded with model "
                              f"{existing.model_id}, not {embedder.model_id}; re-enroll them all "
                              "(delete the keywords file)")
    enrolled = EnrolledKeywords(embedder.model_id, embedder.segment_hop)
    if existing is not None:
        enrolled.templates = {k: v for k, v in existing.templates.items() if k != keyword}
        enrolled.details = {k: v for k, v in existing.details.items() if k != keyword}
        enrolled.frame_weights = {k: v for k, v in existing.frame_weights.items()
                                  if k != keyword}
        enrolled.onset_weighting = existing.onset_weighting
    enrolled.templates[keyword] = [shot_template(embedder, y, iv)
                                   for y, iv in zip(waves, intervals)]
    weights = [shot_frame_weights(embedder, len(t), iv)
               for t, iv in zip(enrolled.templates[keyword], intervals)]
    if any(w is not None for w in weights):
        enrolled.frame_weights[keyword] = weights
    enrolled.onset_weighting = tuple(embedder.onset_weighting)
    enrolled.details[keyword] = {"shots": len(trimmed),
                                 "shot_seconds": [round(len(y) / sr, 3) for y in trimmed],
                                 "_waves": trimmed}
    update_thresholds(embedder, enrolled, negatives=negatives, background=background,
                      false_alarms_per_hour=false_alarms_per_hour,
                      fallback_threshold=fallback_threshold)
    for d in enrolled.details.values():
        d.pop("_waves", None)
    return enrolled


def update_thresholds(embedder, enrolled: EnrolledKeywords, *, negatives=(), background=(),
                      false_alarms_per_hour: float = 1.0,
                      fallback_threshold: float | None = None) -> EnrolledKeywords:
    """Set every enrolled keyword's threshold (and cost normalisation) from negative audio.

    :func:`calibration.keyword_thresholds.keyword_threshold` per keyword; the other keywords'
    shots count as negatives where their audio is at hand (``details[k]["_waves"]``, during
    enrollment). ``python -m calibration background`` calls it after recording the site's
    sound, so that keywords enrolled earlier get thresholds fitted on it.

    Parameters
    ----------
    embedder : edge.model.KwsEmbedder
        The model the keywords were enrolled with.
    enrolled : EnrolledKeywords
        Updated in place (``thresholds``, ``cost_norms``, ``details``, and ``shot_fusion``:
        the embedder's). The templates keep the frame weights they were enrolled with
        (``frame_weights``).
    negatives : list of np.ndarray
        Extra negative recordings, 16 kHz.
    background : list of np.ndarray
        The site's ordinary sound, 16 kHz (see :func:`enroll_keyword`).
    false_alarms_per_hour, fallback_threshold : float
        From the node config's ``kws`` section.

    Returns
    -------
    EnrolledKeywords
        ``enrolled`` (not yet saved).

    Raises
    ------
    EnrollmentError
        ``enrolled`` belongs to another model.
    """
    if enrolled.model_id != embedder.model_id:
        raise EnrollmentError(f"the enrolled keywords were embedded with model "
                              f"{enrolled.model_id}, not {embedder.model_id}; re-enroll them all "
                              "(delete the keywords file)")
    fallback = fallback_threshold or float(embedder.metadata.get("decision_threshold",
                                                                 DEFAULT_FALLBACK_THRESHOLD))
    bg = negative_frames(embedder, list(background)) if len(background) else None
    enrolled.shot_fusion = int(embedder.shot_fusion)  # every threshold below is set for it
    for k in sorted(enrolled.templates):
        negs = list(negatives)
        for other, d in enrolled.details.items():
            if other != k and "_waves" in d:
                negs += d["_waves"]
        thr, source, n_events, hours, norms = keyword_threshold(
            embedder, k, enrolled.templates[k], negs,
            false_alarms_per_hour=false_alarms_per_hour, fallback=fallback, background=bg,
            frame_weights=enrolled.frame_weights.get(k))
        enrolled.thresholds[k] = thr
        if norms is None:
            enrolled.cost_norms.pop(k, None)
        else:
            enrolled.cost_norms[k] = norms
        enrolled.details.setdefault(k, {}).update(
            threshold_source=source, negative_events=n_events,
            negative_seconds=round(hours * 3600, 1), false_alarms_per_hour=false_alarms_per_hour)
        log.info("keyword %r: threshold %.4f (%s, %d negative events in %.0f s)", k, thr, source,
                 n_events, hours * 3600)
    return enrolled
