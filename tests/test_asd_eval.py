"""`python -m trainer evaluate-asd`: labelling and splitting of real recordings, the
per-unit backend, and a tiny end-to-end run of both systems."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from calibration.thresholds import THRESHOLD_METHODS, make_threshold_estimator
from trainer.asd_eval import evaluate_scores, list_eval_clips, unit_backend_scores
from trainer.asd_metrics import official_score_of_sections

ROOT = Path(__file__).resolve().parent.parent


def _link(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    os.symlink(src, dst)


@pytest.fixture
def layouts(tmp_path, data_dir):
    """The three layouts of the shared data, plus the official DCASE dev layout, built from
    links to real clips."""
    asd = data_dir / "asd"
    root = tmp_path / "asd"
    mimii = sorted((asd / "mimii_fan_id00" / "normal").glob("*.wav"))
    for f in mimii[:8]:
        _link(f, root / "mimii_fan_id00" / "normal" / f.name)
    for f in sorted((asd / "mimii_fan_id00" / "abnormal").glob("*.wav"))[:4]:
        _link(f, root / "mimii_fan_id00" / "abnormal" / f.name)
    for f in sorted((asd / "dcase2020_id00" / "train").glob("*.wav"))[:10]:
        _link(f, root / "dcase2020_id00" / "train" / f.name)
    for f in (asd / "dcase2020_id00" / "test").glob("*.wav"):
        _link(f, root / "dcase2020_id00" / "test" / f.name)
    for f in sorted(asd.glob("dcase2023_dev_samples/bearing_*.wav")):
        _link(f, root / "dcase2023_dev_samples" / f.name)
    # Official dev layout: <machine>/<train|test>/section_00_...wav (no machine in the name).
    for f in sorted(asd.glob("dcase2023_dev_samples/valve_*.wav")):
        split = "train" if "_train_" in f.name else "test"
        _link(f, root / "dev_data" / "valve" / split / f.name.split("_", 2)[2])
    # DCASE 2020 names in one folder per machine type (mimii_dcase2020_samples/<machine>/).
    for f in sorted((asd / "mimii_dcase2020_samples" / "pump").glob("*_id_00_*.flac")):
        _link(f, root / "mimii_dcase2020_samples" / "pump" / f.name)
    (root / "notes.wav").write_bytes(b"")  # no labels: skipped, not fatal
    return root


def test_labels_and_splits(layouts):
    clips, skipped = list_eval_clips(layouts)
    assert [p.name for p in skipped] == ["notes.wav"]
    by = {}
    for c in clips:
        by.setdefault(c.unit, []).append(c)
    assert set(by) == {"mimii_fan_id00_section_00", "dcase2020_id00_section_00",
                       "bearing_section_00", "valve_section_00", "pump_section_00"}
    # machine type from the folder the file is in, section from the machine id
    p = by["pump_section_00"]
    assert {c.label.machine for c in p} == {"pump"} and len(p) == 7
    assert sum(c.split == "test" and not c.label.is_anomaly for c in p) == 2
    # MIMII folders: first half of the normal clips train, the rest and all anomalies test.
    m = by["mimii_fan_id00_section_00"]
    train = sorted(c.path.name for c in m if c.split == "train")
    assert train == sorted(p.name for p in (layouts / "mimii_fan_id00" / "normal").iterdir())[:4]
    assert all(c.split == "test" for c in m if c.label.is_anomaly)
    assert sum(c.split == "test" and not c.label.is_anomaly for c in m) == 4
    # DCASE 2020 folder with no normal test clip: the last 20 % of train become test.
    d = by["dcase2020_id00_section_00"]
    assert sum(c.split == "train" for c in d) == 8
    assert sum(c.split == "test" and not c.label.is_anomaly for c in d) == 2
    assert [c.label.is_anomaly for c in d if c.split == "test"].count(True) == 1
    # DCASE 2023 names carry split and domain; the official layout takes the machine
    # type from the folder.
    b = {c.path.name: (c.split, c.label.domain, c.label.is_anomaly) for c in by["bearing_section_00"]}
    assert b["bearing_test_section_00_target_test_anomaly_0021_vel_8_loc_G.wav"] == \
        ("test", "target", True)
    v = by["valve_section_00"]
    assert {c.split for c in v} == {"train", "test"} and all(c.label.machine == "valve" for c in v)
    assert any(c.label.is_anomaly and c.label.domain == "target" for c in v)
    for c in clips:
        assert not (c.split == "train" and c.label.is_anomaly)


def test_missing_or_empty_data(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        list_eval_clips(tmp_path / "nope")
    (tmp_path / "x.wav").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match="no labelled audio"):
        list_eval_clips(tmp_path)


def test_backend_scores_are_held_out():
    """Training clips are scored against a backend without them: with as many k-means
    clusters as clips, in-sample scores would all be 0."""
    rng = np.random.default_rng(0)
    train = rng.standard_normal((6, 8)).astype(np.float32)
    doms = np.array(["source"] * 4 + ["target"] * 2)
    test = np.vstack([train[:2] + 0.01, rng.standard_normal((2, 8))]).astype(np.float32)
    t, tr = unit_backend_scores(train, doms, test, n_clusters=16)
    assert t[:2].max() < 0.01 < t[2:].min()
    assert tr.shape == (6,) and tr.min() > 0.05


def test_evaluate_scores_thresholds():
    y = np.array([0] * 6 + [1] * 3)
    doms = np.array(["source"] * 3 + ["target"] * 3 + ["source", "target", "target"])
    scores = np.array([.1, .2, .3, .15, .25, .35, .9, .8, .3])
    train = np.random.default_rng(1).normal(0.2, 0.05, 40)
    r = evaluate_scores(y, doms, scores, train)
    assert r["auc_source"] == pytest.approx((3 * 3 - 0.5) / 9)  # .3 ties the normal .3
    assert set(r["thresholds"]) >= {"gdp", "hp", "sd", "mad", "iqr", "ocsvm", "gesd",
                                    "cleversd", "mst-iqr"}
    # evaluate_scores turns an estimator's exception into {"error": ...}; with 40 normal
    # scores every method must fit instead, at the threshold it finds on its own.
    assert set(r["thresholds"]) == set(THRESHOLD_METHODS)
    for m, v in r["thresholds"].items():
        assert "f1" in v or "error" in v, m
        assert "error" not in v, (m, v)
        assert np.isfinite(v["f1"]) and 0 <= v["f1"] <= 1, (m, v)
        assert v["decision_threshold"] == make_threshold_estimator(m).fit(train).threshold_, m
        pred = scores > v["decision_threshold"]
        tp = np.sum(pred & (y == 1))
        assert v["recall"] == pytest.approx(tp / 3)
        assert v["precision"] == pytest.approx(tp / pred.sum())
        assert v["f1"] == pytest.approx(2 * tp / (pred.sum() + 3))
    assert 0 <= r["f1_ev"] <= 1 and 0 <= r["bounded_f1_ev"] <= 1


@pytest.mark.slow
def test_evaluate_asd_cli_end_to_end(layouts, tmp_path):
    # Both systems train Keras models; the subprocess would fail without TensorFlow.
    pytest.importorskip("tensorflow")
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(
        "sources: [{path: unused}]\nepochs: 1\nsteps_per_epoch: 2\nbatch_size: 4\n"
        "loss: adaproj\nn_centers: 8\nssl: [featex]\nssl_n_centers: 4\n"
        "model: {embedding_dim: 32, resnet_widths: [8, 8, 8, 8], spectrum_filters: 16,"
        " spectrum_dense_layers: 1}\nrepresentative_samples: 8\n")
    out = tmp_path / "report"
    r = subprocess.run([sys.executable, "-m", "trainer", "evaluate-asd", str(layouts),
                        "--config", str(recipe), "--ae-epochs", "2", "--min-test-normal", "2",
                        "--out", str(out), "--quiet"], cwd=ROOT, capture_output=True,
                       text=True, timeout=1200)
    assert r.returncode == 0, r.stderr[-3000:]
    rep = json.loads((out / "report.json").read_text())
    assert set(rep["systems"]) == {"ours (float)", "ours (int8)", "DCASE 2023 AE baseline"}
    summary_units = [u for u in rep["units"].values() if u["in_summary"]]
    assert {n for n, u in rep["units"].items() if u["in_summary"]} == \
        {"mimii_fan_id00_section_00", "dcase2020_id00_section_00", "pump_section_00"}
    for name, s in rep["systems"].items():
        # The summary's official score is the harmonic mean over the units' metrics.
        expect = official_score_of_sections([u["systems"][name] for u in summary_units])
        assert s["summary"]["official_score"] == pytest.approx(expect)
        assert 0 < expect <= 1
        assert len(s["summary"]["mean_f1"]) == 15  # every threshold method, fpr included
    mimii = rep["units"]["mimii_fan_id00_section_00"]
    assert len(mimii["systems"]["ours (int8)"]["test_scores"]) == 8
    for p in mimii["plots"]:
        assert Path(p).stat().st_size > 1000
    md = (out / "report.md").read_text()
    assert "official score" in md and "mst-iqr" in md and "int8 vs float" in md
    assert (out / "models" / "asd_eval.tflite").is_file()


def test_cli_rejects_unknown_system(tmp_path):
    r = subprocess.run([sys.executable, "-m", "trainer", "evaluate-asd", str(tmp_path),
                        "--systems", "ours,vae"], cwd=ROOT, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 2 and "vae" in r.stderr
