"""Audio levels in dBFS: the one reference used by the VAD, health, heartbeat, calibration
and enrollment.

**Reference.** Samples are float in [-1, 1] (full scale = 1.0). An RMS level is
``20 log10(rms)`` dB relative to an RMS of 1.0, i.e. a full-scale *square* wave reads 0 dBFS
and a full-scale *sine* reads -3.01 dBFS (the convention of ``sox stats``' "RMS lev dB"; AES17
would add 3.01 dB to sine-shaped signals). A peak level is ``20 log10(max |x|)``, so a
full-scale sample reads 0 dBFS under either convention. Every level is floored at
:data:`FLOOR_DBFS` (-120 dBFS): digital silence and empty input read -120, never ``-inf``.

So ``audio.silence_dbfs: -70`` in a node config, the health monitor's ``level_dbfs``, the
heartbeat's ``level_dbfs``/``peak_dbfs``, the calibration's silent-window test and the VAD's
frame levels all mean the same number for the same sound.

Functions
---------
rms_dbfs
    RMS level of a signal.
peak_dbfs
    Peak level of a signal.
power_dbfs
    Level of mean-square values (per frame, vectorised).
frame_rms_dbfs
    RMS level of overlapping frames.
clipped_fraction
    Fraction of samples at full scale (``|x| >= CLIP_LEVEL``).
"""
from __future__ import annotations

import numpy as np

__all__ = ["CLIP_LEVEL", "FLOOR_DBFS", "SILENCE_DBFS", "rms_dbfs", "peak_dbfs", "power_dbfs",
           "frame_rms_dbfs", "clipped_fraction"]

CLIP_LEVEL = 0.999
"""A sample counts as clipped when ``|x| >= CLIP_LEVEL`` (full scale is 1.0)."""

FLOOR_DBFS = -120.0
"""Lowest level reported: digital silence, empty input."""

SILENCE_DBFS = -70.0
"""RMS level below which audio holds no machine sound to learn or score: calibration skips
quieter windows, the PCA residual and STFT statistics views quieter frames
(:mod:`edge.views`); the health monitor's default ``audio.silence_dbfs`` is the same number."""

_FLOOR_POWER = 10.0 ** (FLOOR_DBFS / 10.0)  # 1e-12: mean square at the floor


def power_dbfs(mean_square):
    """Level in dBFS of mean-square sample values: ``10 log10(max(ms, 1e-12))``.

    Parameters
    ----------
    mean_square : float or np.ndarray of float
        Mean of ``x ** 2`` over some samples (RMS 1.0 = 0 dBFS).

    Returns
    -------
    float or np.ndarray of float64
        Same shape as the input, >= :data:`FLOOR_DBFS`.
    """
    if np.ndim(mean_square) == 0:
        return float(10.0 * np.log10(max(float(mean_square), _FLOOR_POWER)))
    return 10.0 * np.log10(np.maximum(np.asarray(mean_square, np.float64), _FLOOR_POWER))


def rms_dbfs(x: np.ndarray) -> float:
    """RMS level of ``x`` in dBFS (RMS 1.0 = 0 dBFS; :data:`FLOOR_DBFS` when empty).

    Parameters
    ----------
    x : np.ndarray, shape (n_samples,), float in [-1, 1]
    """
    x = np.asarray(x)
    if not x.size:
        return FLOOR_DBFS
    return power_dbfs(float(np.mean(np.square(x, dtype=np.float64))))


def peak_dbfs(x: np.ndarray) -> float:
    """Peak level of ``x`` in dBFS (``20 log10 max|x|``; :data:`FLOOR_DBFS` when empty or silent).

    Parameters
    ----------
    x : np.ndarray, shape (n_samples,), float in [-1, 1]
    """
    x = np.asarray(x)
    peak = float(np.max(np.abs(x))) if x.size else 0.0
    return power_dbfs(peak * peak)


def frame_rms_dbfs(x: np.ndarray, frame: int, hop: int) -> np.ndarray:
    """RMS level of each frame of ``frame`` samples every ``hop`` samples, in dBFS.

    Parameters
    ----------
    x : np.ndarray, shape (n_samples,), float
    frame, hop : int
        In samples; ``n_samples >= frame``.

    Returns
    -------
    np.ndarray, shape (1 + (n_samples - frame) // hop,), float64

    Raises
    ------
    ValueError
        If ``x`` is shorter than one frame.
    """
    x = np.asarray(x, np.float64)
    if len(x) < frame:
        raise ValueError(f"need at least one frame of {frame} samples, got {len(x)}")
    frames = np.lib.stride_tricks.sliding_window_view(x, frame)[::hop]
    # each frame's sum of squares without a squared copy of every frame: a third of the time
    return power_dbfs(np.einsum("ij,ij->i", frames, frames) / frame)


def clipped_fraction(x: np.ndarray) -> float:
    """Fraction of samples of ``x`` with ``|x| >= CLIP_LEVEL`` (0.0 when empty)."""
    x = np.asarray(x)
    return float(np.mean(np.abs(x) >= CLIP_LEVEL)) if x.size else 0.0
