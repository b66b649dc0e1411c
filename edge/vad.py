"""Energy-based voice activity detection for keyword shots and evaluation utterances.

Enrollment trims each spoken shot to the speech it contains (:func:`shot_interval`), and the
evaluation places trimmed utterances into test streams so that their onsets and offsets are
exact (:func:`speech_interval`). Both find the speech with the same detector and add the same
margin, so a template and the ground truth it is scored against are cut the same way; they
differ only in where the noise floor comes from.

The detector works on the high-passed waveform (the KWS frontend's 50 Hz high-pass):
frame RMS levels in dBFS (:mod:`edge.levels`: RMS 1.0 = 0 dBFS) over 20 ms frames with a 10 ms
hop; a frame is active when it is louder than ``max(noise floor + snr_db, peak - range_db)``;
runs of active frames shorter than ``min_run_seconds`` are ignored (clicks); runs closer than
``max_gap_seconds`` are joined (the stops inside a word), and of the joined segments the one
with the most energy, widened by ``margin_seconds``, is the speech (a breath or a click
further away is not). Frames of digital silence (at most -103 dBFS: zero padding) never count
towards the noise floor.

Functions
---------
speech_interval
    Noise floor = the 10th percentile of the recording's frame levels. Right for an
    utterance with noise around it; in a recording cut tight around a word that percentile
    is the word's own quiet part, which is then cut off.
shot_interval
    For enrollment shots, which may be cut tight: the shot is padded with 0.3 s of digital
    silence on both sides, and the 10th-percentile floor is used only when the shot's first
    and last 0.2 s are at that floor (non-speech around the word). When either end is
    louder (the shot starts or ends inside the word), both ends are digital silence or the
    shot is shorter than 0.8 s, the shot holds no noise to measure and the floor is taken as
    digital silence: every frame within ``range_db`` of the peak is speech, i.e. a tight
    shot is kept whole. On 719 real words (wake words and Speech Commands) cut exactly at
    the :func:`speech_interval` boundaries it keeps at least 90 % of 715 (the evaluation VAD:
    of 222); it trims untrimmed recordings like :func:`speech_interval` except that 32 of the
    719, whose word touches an end of the file or whose ends are not steady noise, are kept
    whole. A weak sound held for 0.1 s or more at both ends of a tight shot (a breath, a
    long fricative) looks like noise and can still be cut.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edge.frontend import as_mono
from edge.kws_frontend import KwsFrontendParams, highpass
from edge.levels import FLOOR_DBFS, frame_rms_dbfs, peak_dbfs

__all__ = ["SpeechInterval", "shot_interval", "speech_interval"]

# Frames at or below this level are digital silence (zero padding), not the noise floor.
_DIGITAL_SILENCE_DBFS = -103.0
_FRAME_SECONDS, _HOP_SECONDS = 0.02, 0.01


@dataclass(frozen=True)
class SpeechInterval:
    """Speech found in a recording.

    Attributes
    ----------
    start_s, end_s : float
        Seconds from the start of the recording.
    peak_dbfs : float
        Peak sample level of the whole recording, dBFS.
    """

    start_s: float
    end_s: float
    peak_dbfs: float

    @property
    def duration_s(self) -> float:
        return self.end_s - self.start_s

    def slice(self, sample_rate: int) -> slice:
        """Sample slice of the interval."""
        return slice(int(round(self.start_s * sample_rate)), int(round(self.end_s * sample_rate)))


def _frame_levels(y: np.ndarray, sample_rate: int) -> tuple[np.ndarray, int, int]:
    """High-passed frame levels (dBFS), frame and hop in samples; ``len(y) >= frame``."""
    frame, hop = int(_FRAME_SECONDS * sample_rate), int(_HOP_SECONDS * sample_rate)
    x = highpass(y, KwsFrontendParams(sample_rate=sample_rate))
    return frame_rms_dbfs(x, frame, hop), frame, hop


def _speech_frames(level: np.ndarray, threshold: float, min_run_seconds: float,
                   max_gap_seconds: float) -> tuple[int, int] | None:
    """First and last frame of the loudest group of active runs, or ``None``."""
    active = level > threshold
    # drop short bursts
    min_run = max(1, int(round(min_run_seconds / _HOP_SECONDS)))
    edges = np.flatnonzero(np.diff(np.concatenate([[0], active.astype(np.int8), [0]])))
    starts, ends = edges[::2], edges[1::2]
    keep = (ends - starts) >= min_run
    if not keep.any():
        return None
    starts, ends = starts[keep], ends[keep]
    max_gap = int(round(max_gap_seconds / _HOP_SECONDS))
    groups = [[starts[0], ends[0]]]
    for a, b in zip(starts[1:], ends[1:]):
        if a - groups[-1][1] <= max_gap:
            groups[-1][1] = b
        else:
            groups.append([a, b])
    power = 10 ** (level / 10)
    first, last = max(groups, key=lambda g: power[g[0]:g[1]].sum())
    return int(first), int(last) - 1


def speech_interval(y: np.ndarray, sample_rate: int = 16000, *, snr_db: float = 12.0,
                    range_db: float = 35.0, silence_dbfs: float = -53.0,
                    min_run_seconds: float = 0.04, max_gap_seconds: float = 0.3,
                    margin_seconds: float = 0.05) -> SpeechInterval | None:
    """Find the speech in a short recording (one word or phrase) with noise around it.

    The noise floor is the 10th percentile of the frame levels (digital silence excluded),
    so at least a tenth of the recording should be non-speech; for a recording that may be
    cut tight around the word use :func:`shot_interval`.

    Parameters
    ----------
    y : np.ndarray, shape (n_samples,), float
        Mono waveform in [-1, 1].
    sample_rate : int
        Hz.
    snr_db : float
        Active frames are at least this many dB above the noise floor.
    range_db : float
        ... and at most this many dB below the loudest frame.
    silence_dbfs : float
        A recording whose loudest 20 ms frame is below this RMS level (dBFS) has no
        speech; -53 dBFS is a sine peaking at -50 dBFS.
    min_run_seconds : float
        Shorter bursts of activity are ignored.
    max_gap_seconds : float
        Bursts separated by less than this belong to the same utterance.
    margin_seconds : float
        Added before and after the active frames (clamped to the recording).

    Returns
    -------
    SpeechInterval or None
        ``None`` when the recording is silent or has no run of activity.

    Raises
    ------
    ValueError
        If ``y`` is not 1-D.
    """
    y = as_mono(y, np.float32)
    if len(y) < int(_FRAME_SECONDS * sample_rate):
        return None
    level, frame, hop = _frame_levels(y, sample_rate)
    if level.max() < silence_dbfs:
        return None
    live = level[level > _DIGITAL_SILENCE_DBFS]  # zero padding is not the noise floor
    floor = np.percentile(live, 10) if len(live) else FLOOR_DBFS
    threshold = max(floor + snr_db, level.max() - range_db)
    found = _speech_frames(level, threshold, min_run_seconds, max_gap_seconds)
    if found is None:
        return None
    first, last = found
    start_s = max(0.0, first * hop / sample_rate - margin_seconds)
    end_s = min(len(y) / sample_rate, (last * hop + frame) / sample_rate + margin_seconds)
    return SpeechInterval(start_s, end_s, peak_dbfs(y))


def shot_interval(y: np.ndarray, sample_rate: int = 16000, *, snr_db: float = 12.0,
                  range_db: float = 35.0, silence_dbfs: float = -53.0,
                  min_run_seconds: float = 0.04, max_gap_seconds: float = 0.3,
                  margin_seconds: float = 0.05, pad_seconds: float = 0.3,
                  edge_seconds: float = 0.2) -> SpeechInterval | None:
    """Find the spoken word in an enrollment shot, which may be cut tight around it.

    The shot is padded with ``pad_seconds`` of digital silence on both sides (so that the
    frames at its very ends are measured too). The noise floor is the 10th percentile of the
    shot's frame levels, as in :func:`speech_interval`, but only when the shot has
    non-speech around the word: the shot lasts at least ``4 * edge_seconds`` and the
    median level of its first and of its last ``edge_seconds`` is less than ``snr_db / 2``
    above that percentile (an end of pure digital silence tells nothing and is skipped).
    Otherwise (a shot that starts or ends inside the word, that has nothing but digital
    silence around it, or that is too short to hold non-speech at both ends and a word) the
    floor is digital silence (-120 dBFS) and every frame within ``range_db`` of the loudest
    one is speech: a tight shot is kept whole. The interval is mapped back to the shot and
    clamped to it.

    Parameters
    ----------
    y : np.ndarray, shape (n_samples,), float
        Mono waveform in [-1, 1].
    sample_rate : int
        Hz.
    snr_db, range_db, silence_dbfs, min_run_seconds, max_gap_seconds, margin_seconds : float
        As in :func:`speech_interval`.
    pad_seconds : float
        Digital silence added before and after the shot.
    edge_seconds : float
        Length of the shot's ends that show whether there is non-speech around the word.

    Returns
    -------
    SpeechInterval or None
        Seconds from the start of the (unpadded) shot; ``None`` when the shot is empty,
        silent or has no run of activity.

    Raises
    ------
    ValueError
        If ``y`` is not 1-D.
    """
    y = as_mono(y, np.float32)
    n = len(y)
    if n == 0:
        return None
    pad = int(round(pad_seconds * sample_rate))
    padded = np.concatenate([np.zeros(pad, np.float32), y, np.zeros(pad, np.float32)])
    if len(padded) < int(_FRAME_SECONDS * sample_rate):
        return None
    level, frame, hop = _frame_levels(padded, sample_rate)
    if level.max() < silence_dbfs:
        return None
    at = np.arange(len(level)) * hop
    inside = np.flatnonzero((at >= pad) & (at + frame <= pad + n))  # frames within the shot
    shot = level[inside]
    live = shot[shot > _DIGITAL_SILENCE_DBFS]
    floor = FLOOR_DBFS
    if len(live):
        p10 = float(np.percentile(live, 10))
        k = max(1, int(round(edge_seconds / _HOP_SECONDS)))
        ends = [e[e > _DIGITAL_SILENCE_DBFS] for e in (shot[:k], shot[-k:])]
        ends = [float(np.median(e)) for e in ends if len(e)]
        # a shot shorter than 4 ends has no room for non-speech at both ends and a word
        if len(shot) >= 4 * k and ends and all(e < p10 + snr_db / 2 for e in ends):
            floor = p10  # quiet ends: non-speech around the word, its level is the floor
    threshold = max(floor + snr_db, level.max() - range_db)
    found = _speech_frames(level, threshold, min_run_seconds, max_gap_seconds)
    if found is None:
        return None
    first, last = found
    start_s = max(0.0, (first * hop - pad) / sample_rate - margin_seconds)
    end_s = min(n / sample_rate, (last * hop + frame - pad) / sample_rate + margin_seconds)
    if end_s <= start_s:
        return None
    return SpeechInterval(start_s, end_s, peak_dbfs(y))
