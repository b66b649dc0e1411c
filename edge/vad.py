"""Energy-based voice activity detection for keyword shots and evaluation utterances.

Enrollment trims each spoken shot to the speech it contains, and the evaluation places
trimmed utterances into test streams so that their onsets and offsets are exact. Both use
:func:`speech_interval`, so a template and the ground truth it is scored against are cut
the same way.

The detector works on the high-passed waveform (the KWS frontend's 50 Hz high-pass):
frame RMS levels in dBFS (:mod:`edge.levels`: RMS 1.0 = 0 dBFS) over 20 ms frames with a 10 ms hop; a frame is active when it is
louder than ``max(noise floor + snr_db, peak - range_db)``, where the noise floor is the
10th percentile of frame levels (frames of digital silence excluded); runs of active frames shorter than ``min_run_seconds``
are ignored (clicks); runs closer than ``max_gap_seconds`` are joined (the stops inside a
word), and of the joined segments the one with the most energy, widened by
``margin_seconds``, is the speech (a breath or a click further away is not).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edge.frontend import KwsFrontendParams, as_mono, highpass
from edge.levels import frame_rms_dbfs, peak_dbfs

__all__ = ["SpeechInterval", "speech_interval"]

# Frames at or below this level are digital silence (zero padding), not the noise floor.
_DIGITAL_SILENCE_DBFS = -103.0


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


def speech_interval(y: np.ndarray, sample_rate: int = 16000, *, snr_db: float = 12.0,
                    range_db: float = 35.0, silence_dbfs: float = -53.0,
                    min_run_seconds: float = 0.04, max_gap_seconds: float = 0.3,
                    margin_seconds: float = 0.05) -> SpeechInterval | None:
    """Find the speech in a short recording (one word or phrase).

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
    frame, hop = int(0.02 * sample_rate), int(0.01 * sample_rate)
    if len(y) < frame:
        return None
    x = highpass(y, KwsFrontendParams(sample_rate=sample_rate))
    level = frame_rms_dbfs(x, frame, hop)
    if level.max() < silence_dbfs:
        return None
    live = level[level > _DIGITAL_SILENCE_DBFS]  # zero padding is not the noise floor
    floor = np.percentile(live, 10) if len(live) else -120.0
    threshold = max(floor + snr_db, level.max() - range_db)
    active = level > threshold
    # drop short bursts
    min_run = max(1, int(round(min_run_seconds / 0.01)))
    edges = np.flatnonzero(np.diff(np.concatenate([[0], active.astype(np.int8), [0]])))
    starts, ends = edges[::2], edges[1::2]
    keep = (ends - starts) >= min_run
    if not keep.any():
        return None
    starts, ends = starts[keep], ends[keep]
    max_gap = int(round(max_gap_seconds / 0.01))
    groups = [[starts[0], ends[0]]]
    for a, b in zip(starts[1:], ends[1:]):
        if a - groups[-1][1] <= max_gap:
            groups[-1][1] = b
        else:
            groups.append([a, b])
    power = 10 ** (level / 10)
    first, last = max(groups, key=lambda g: power[g[0]:g[1]].sum())
    last -= 1
    start_s = max(0.0, first * hop / sample_rate - margin_seconds)
    end_s = min(len(y) / sample_rate, (last * hop + frame) / sample_rate + margin_seconds)
    return SpeechInterval(start_s, end_s, peak_dbfs(y))
