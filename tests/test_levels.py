"""One dBFS reference everywhere (edge.levels: RMS 1.0 = 0 dBFS, floor -120 dBFS)."""
from __future__ import annotations

import math

import numpy as np
import pytest

from calibration.thresholds import THRESHOLD_METHODS
from edge.health import AudioHealth
from edge.levels import (CLIP_LEVEL, FLOOR_DBFS, clipped_fraction, frame_rms_dbfs, peak_dbfs,
                         power_dbfs, rms_dbfs)
from edge.vad import speech_interval
from firmware_config import schema

SR = 16000


def tone(rms_db: float, seconds: float = 1.0, hz: float = 440.0) -> np.ndarray:
    """A sine whose RMS level is ``rms_db`` dBFS (peak 3.01 dB higher)."""
    t = np.arange(int(seconds * SR)) / SR
    return (math.sqrt(2) * 10 ** (rms_db / 20) * np.sin(2 * np.pi * hz * t)).astype(np.float32)


def test_reference_full_scale_sine_and_square():
    t = np.arange(SR) / SR
    assert rms_dbfs(np.sin(2 * np.pi * 1000 * t)) == pytest.approx(-3.0103, abs=1e-3)
    assert rms_dbfs(np.ones(100)) == pytest.approx(0.0)
    assert peak_dbfs(np.sin(2 * np.pi * 1000 * t)) == pytest.approx(0.0, abs=1e-6)
    assert peak_dbfs(np.full(10, 0.1)) == pytest.approx(-20.0)


def test_floor_instead_of_minus_infinity():
    for f in (rms_dbfs, peak_dbfs):
        assert f(np.zeros(0)) == FLOOR_DBFS and f(np.zeros(10)) == FLOOR_DBFS
    assert power_dbfs(0.0) == FLOOR_DBFS
    np.testing.assert_array_equal(power_dbfs(np.array([0.0, 1.0])), [FLOOR_DBFS, 0.0])


def test_frames_and_clipping():
    x = np.concatenate([tone(-20.0, 0.5), np.zeros(SR // 2, np.float32)])
    lv = frame_rms_dbfs(x, 320, 160)
    assert lv.shape == (1 + (len(x) - 320) // 160,)
    assert lv[0] == pytest.approx(-20.0, abs=0.1) and lv[-1] == FLOOR_DBFS
    with pytest.raises(ValueError, match="320"):
        frame_rms_dbfs(x[:100], 320, 160)
    y = np.zeros(1000, np.float32)
    y[:3] = CLIP_LEVEL
    assert clipped_fraction(y) == pytest.approx(0.003) and clipped_fraction(y[:0]) == 0.0


def test_health_and_vad_read_a_tone_at_the_same_level():
    """A -60 dBFS tone: health reports -60 (not -63 or -57) and the VAD's silence test uses
    the same scale (its -53 dBFS default lies between -54 and -52)."""
    health = AudioHealth(SR, silence_dbfs=-50.0, silence_seconds=1.0)
    began = [e for e in health.push(tone(-60.0, 2.0)) if e.active]
    assert began and began[0].detail["level_dbfs"] == pytest.approx(-60.0, abs=0.1)
    quiet = np.random.default_rng(0).normal(0, 10 ** (-90 / 20), SR // 2).astype(np.float32)
    speech = np.concatenate([quiet, tone(-52.0, 0.5), quiet])
    assert speech_interval(speech, SR) is not None
    assert speech_interval(speech * 10 ** (-2 / 20), SR) is None  # -54 dBFS: silent


def test_config_threshold_methods_are_the_estimators():
    """The config spells the methods out (it is a leaf); they must stay the estimators'."""
    assert schema.THRESHOLD_METHODS == THRESHOLD_METHODS
