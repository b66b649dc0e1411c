"""KWS systems (:mod:`trainer.kws_systems`) on real recordings and the shipped model."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from trainer import kws_systems as ksy
from trainer.kws_streams import EvalConfig, enrollment_shots

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def shots(data_dir):
    return enrollment_shots(data_dir, ("alexa", "stop"), 3, 3)


def test_tacos_system_features(kws_model, shots):
    setup = ksy.EvalSetup(EvalConfig(keywords=("alexa", "stop")), ROOT, kws_model, shots, [])
    sysm = ksy.make_tacos_system(setup)
    assert sysm.name == "tacos" and sysm.frame_seconds == pytest.approx(0.016)
    assert sysm.info["keywords_in_training_vocabulary"] == []  # held-out words: unseen
    y = shots["alexa"][0].audio
    f = sysm.features(y)
    assert f.dtype == np.float32 and f.shape[1] == 128
    assert abs(len(f) - len(y) / 256) <= 2
    np.testing.assert_allclose(np.linalg.norm(f, axis=1), 1.0, atol=1e-3)
