"""Keyword thresholds from the model's calibration table (calibration.enroll, trainer.kws_thresholds)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from calibration.enroll import enroll_keyword
from calibration.generic_negatives import load_generic_negatives
from calibration.keyword_thresholds import calibrated_threshold
from edge.audio import load_audio
from edge.model import load_bundle
from trainer.kws_thresholds import RATE_FACTORS, generic_rate_factor, write_calibration

TABLE = {"rates": [0.1, 1.0, 10.0], "threshold": {"0.1": 0.2, "1.0": 0.3, "10.0": 0.4}}


def test_calibrated_threshold_interpolates_in_log_rate():
    assert calibrated_threshold(TABLE, 1.0) == pytest.approx(0.3)
    assert calibrated_threshold(TABLE, np.sqrt(10.0)) == pytest.approx(0.35)
    assert calibrated_threshold(TABLE, 0.01) == pytest.approx(0.2)     # held at the ends
    assert calibrated_threshold(TABLE, 100.0) == pytest.approx(0.4)
    assert calibrated_threshold({"rates": [1.0]}, 1.0) is None           # malformed
    assert calibrated_threshold({"rates": [1.0], "threshold": {"1.0": "x"}}, 1.0) is None
    assert calibrated_threshold({"rates": [0.0], "threshold": {"0.0": 0.3}}, 1.0) is None


def _events(rng, hours, shift=0.0, per_hour=3000):
    """Event costs with an exponential lower tail (scale 0.3), ``per_hour`` per hour."""
    return shift - rng.exponential(0.3, size=int(hours * per_hour)), hours


def test_generic_rate_factor_is_the_largest_ask_that_keeps_the_target():
    """Negatives like the generic hour need no factor; harder ones (lower costs) a smaller
    ask, easier ones a larger; the factor chosen keeps the pooled rate, the next does not."""
    rng = np.random.default_rng(0)
    got = {}
    for shift in (-0.3, 0.0, 0.3):
        generic = [_events(rng, 20.0) for _ in range(3)]
        negatives = [_events(rng, 10.0, shift) for _ in range(3)]
        factor, rates = generic_rate_factor(generic, negatives)
        assert factor in RATE_FACTORS
        r = [rates[str(f)] for f in RATE_FACTORS]
        assert r == sorted(r)  # a larger ask, a looser threshold, more false alarms
        i = RATE_FACTORS.index(factor)
        assert r[i] <= 1.0 < r[i + 1]
        got[shift] = factor
    assert 0.6 < got[0.0] < 1.5  # 0.77: 30 false alarms expected at 1, counted
    assert got[-0.3] < 0.5 and got[0.3] > 2.0
    with pytest.raises(ValueError, match="same keywords"):
        generic_rate_factor([_events(rng, 1.0)], [])
    with pytest.raises(ValueError, match="increasing"):
        generic_rate_factor([_events(rng, 1.0)], [_events(rng, 1.0)], factors=(2.0, 1.0))


def test_enrollment_takes_the_models_table(tmp_path, kws_model, data_dir):
    """A bundle with a table: every keyword gets its rate's threshold, source "calibrated";
    without one, the per-keyword gamma estimate."""
    for suffix in (".tflite", ".json"):
        shutil.copy(kws_model.with_suffix(suffix), tmp_path / f"m{suffix}")
    meta = json.loads((tmp_path / "m.json").read_text())
    meta.pop("threshold_calibration", None)
    (tmp_path / "m.json").write_text(json.dumps(meta))
    shots = [load_audio(p) for p in sorted((data_dir / "kws" / "wakeword" / "alexa")
                                           .glob("*.flac"))[:3]]
    plain = enroll_keyword(load_bundle(tmp_path / "m.tflite", "kws"), "alexa", shots,
                           shot_source="file")
    assert plain.details["alexa"]["threshold_source"] in ("fa-rate", "fallback")
    meta["threshold_calibration"] = TABLE
    (tmp_path / "m.json").write_text(json.dumps(meta))
    bundle = load_bundle(tmp_path / "m.tflite", "kws")
    cal = enroll_keyword(bundle, "alexa", shots, shot_source="file", false_alarms_per_hour=10.0)
    assert cal.details["alexa"]["threshold_source"] == "calibrated"
    assert cal.thresholds["alexa"] == pytest.approx(0.4)


@pytest.mark.slow
def test_calibrate_kws_thresholds_tiny(tmp_path, kws_model, data_dir, capsys):
    from trainer.__main__ import main

    for suffix in (".tflite", ".json"):
        shutil.copy(kws_model.with_suffix(suffix), tmp_path / f"m{suffix}")
    rc = main(["calibrate-kws-thresholds", "--model", str(tmp_path / "m.tflite"),
               "--data", str(data_dir), "--hours", "0.05", "--synthetic-keywords", "1",
               "--quiet"])
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    assert out["keywords"] == 3  # stop, left and one synthetic phrase
    table = json.loads((tmp_path / "m.json").read_text())["threshold_calibration"]
    thr = [table["threshold"][str(r)] for r in table["rates"]]
    assert all(0 < t < 2 for t in thr) and thr == sorted(thr)  # more FA/h, looser threshold
    assert table["negative_hours"] >= 0.05


def test_a_new_bundles_first_table_is_in_the_units_the_node_compares(tmp_path, data_dir,
                                                                      capsys):
    """A normalising bundle without a table (a freshly trained head) gets the same table as
    the same bundle with one: thresholds in per-template normalised units, never raw costs."""
    from trainer.__main__ import main

    src = Path(__file__).resolve().parent.parent / "models"
    tables = []
    for keep in (True, False):
        d = tmp_path / f"keep_{keep}"
        d.mkdir()
        for f in ("kws_speech.tflite", "kws_speech_mel.tflite", "kws_speech_negatives.npz"):
            shutil.copy(src / f, d / f)
        meta = json.loads((src / "kws_speech.json").read_text())
        if not keep:
            meta.pop("threshold_calibration")
        (d / "kws_speech.json").write_text(json.dumps(meta))
        rc = main(["calibrate-kws-thresholds", "--model", str(d / "kws_speech.tflite"),
                   "--data", str(data_dir), "--hours", "0.05", "--synthetic-keywords", "0",
                   "--real-keywords", "stop,left", "--quiet"])
        assert rc == 0
        capsys.readouterr()
        tables.append(json.loads((d / "kws_speech.json").read_text())["threshold_calibration"])
    assert tables[0]["threshold"] == tables[1]["threshold"]
    assert tables[1]["threshold"]["1.0"] < -1.0  # z-normalised, not a raw cosine cost
    # the generic hour's rate factor, measured on the same keywords and negatives
    meta = json.loads((d / "kws_speech.json").read_text())
    entry = meta["generic_negatives"]
    assert entry["rate_factor"] in RATE_FACTORS
    assert entry["rate_factor_measured"]["keywords"] == 2
    assert load_generic_negatives(load_bundle(d / "kws_speech.tflite", "kws")).rate_factor == \
        entry["rate_factor"]
    # measured on another hour than the bundle now has: not written
    entry.pop("rate_factor")
    (d / "kws_speech.json").write_text(json.dumps(meta))
    table = {**tables[1], "keywords": {"stop": {}, "left": {}},
             "generic_fit": {"rate_factor": 4.0, "target": 1.0, "pooled_rates": {},
                             "sha256": "0" * 64}}
    write_calibration(d / "kws_speech.tflite", table)
    assert "rate_factor" not in json.loads((d / "kws_speech.json").read_text())[
        "generic_negatives"]
