"""`python -m trainer evaluate-asd --protocol leave-one-machine-out`: machine-type labels
across the sources, the fold split (no clip of the held-out type in training; calibration
and test disjoint), the STFT-statistics baseline on real clips, the metrics, and a tiny
end-to-end run."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from calibration.thresholds import NotFittedError
from edge.audio import load_audio
from edge.views import stft_statistics
from trainer.asd_baselines import StftStatsBaseline
from trainer.asd_lomo_data import MACHINE_TYPES, list_typed_clips, lomo_split, machine_type_of
from trainer.asd_lomo_report import bootstrap_metrics, rates_at_threshold, type_metrics

ROOT = Path(__file__).resolve().parent.parent

# Per held-out type on the shared data: calibration (source, target), normal test clips
# (source, target), anomalous test clips. Caps 30 source / 5 target, at most half of each
# domain's normal clips, at least two.
EXPECTED = {
    "fan": ((19, 0), (20, 1), 37),
    "slider": ((30, 0), (58, 1), 9),
    "pump": ((5, 0), (5, 0), 19),
    "ToyCar": ((3, 0), (4, 0), 3),
    "ToyConveyor": ((2, 0), (1, 0), 3),
    "ToyTrain": ((2, 0), (0, 1), 1),
    "bearing": ((2, 0), (1, 0), 1),
    "gearbox": ((2, 0), (1, 0), 1),
    "valve": ((2, 0), (0, 1), 1),
}


@pytest.fixture(scope="module")
def typed(data_dir):
    clips, skipped = list_typed_clips(data_dir / "asd")
    return clips, skipped


def test_machine_types_are_normalised_across_sources(typed):
    clips, skipped = typed
    assert skipped == []
    assert {c.machine for c in clips} == set(MACHINE_TYPES)
    sources = {}
    for c in clips:
        sources.setdefault(c.machine, set()).add(c.dataset)
    # fan: MIMII, DCASE 2020 samples and DCASE 2023 are one type; slider likewise
    # (dcase2020_id00 is slider by the data README).
    assert sources["fan"] == {"mimii_fan_id00", "mimii_dcase2020_samples", "dcase2023_dev_samples"}
    assert sources["slider"] == {"dcase2020_id00", "mimii_dcase2020_samples",
                                 "dcase2023_dev_samples"}
    assert machine_type_of(["?", "normal", "mimii_fan_id00"]) == "fan"
    assert machine_type_of(["toycar"]) == "ToyCar"
    assert machine_type_of(["?", "train", "dcase2020_id00"]) == "slider"
    assert machine_type_of(["?", "misc"]) is None


@pytest.mark.parametrize("held_out", sorted(EXPECTED))
def test_split_never_trains_on_the_held_out_type(typed, held_out):
    clips, _ = typed
    split = lomo_split(clips, held_out)
    own = {c.path for c in clips if c.machine == held_out}
    train = {c.path for c in split.train}
    cal = {c.path for c in split.calibration}
    test = {c.path for c in split.test}
    # No clip of the held-out type in training, by label and by file.
    assert not train & own
    assert all(c.machine != held_out for c in split.train)
    # Training: exactly the other types' normal clips.
    assert train == {c.path for c in clips if c.machine != held_out and not c.label.is_anomaly}
    # Calibration and test are disjoint and together all clips of the type.
    assert not cal & test and cal | test == own
    assert not any(c.label.is_anomaly for c in split.calibration)
    assert {c.path for c in split.test if c.label.is_anomaly} == \
        {c.path for c in clips if c.machine == held_out and c.label.is_anomaly}
    k = split.counts()
    (cs, ct), (ns, nt), na = EXPECTED[held_out]
    assert k["calibration"] == {"source": cs, "target": ct}
    assert k["test_normal"] == {"source": ns, "target": nt}
    assert k["test_anomalous"] == na
    assert k["train_clips"] == len(train) and held_out not in k["train_types"]
    assert len(k["train_types"]) == len(MACHINE_TYPES) - 1


def test_calibration_is_stratified_and_reproducible(typed):
    clips, _ = typed
    a, b = lomo_split(clips, "fan", seed=0), lomo_split(clips, "fan", seed=0)
    assert [c.path for c in a.calibration] == [c.path for c in b.calibration]
    c = lomo_split(clips, "fan", seed=1)
    assert {x.path for x in c.calibration} != {x.path for x in a.calibration}
    # 19 of 39 source normals, spread over the five recorded fans in proportion.
    units = {}
    for x in a.calibration:
        units[x.unit] = units.get(x.unit, 0) + 1
    assert units["mimii_fan_id00/section_00"] == 10
    assert len(units) >= 4
    small = lomo_split(clips, "fan", n_source=4)
    assert small.counts()["calibration"]["source"] == 4


def test_split_rejects_types_without_enough_clips(typed):
    clips, _ = typed
    with pytest.raises(ValueError, match="no clip"):
        lomo_split(clips, "compressor")
    few = [c for c in clips if c.machine != "ToyConveyor" or c.label.is_anomaly
           or c.path.name.endswith("00000000.flac")]
    with pytest.raises(ValueError, match="1 normal clip"):
        lomo_split(few, "ToyConveyor")


def test_stft_statistics_shapes_and_norm(mimii):
    y = load_audio(mimii["normal"][0])
    v = stft_statistics(y)
    assert v.shape == (1026,) and v.dtype == np.float32
    assert np.isfinite(v).all() and np.linalg.norm(v) == pytest.approx(1.0, abs=1e-5)
    assert stft_statistics(y, n_fft=512, hop_length=256).shape == (514,)
    with pytest.raises(ValueError, match="at least n_fft"):
        stft_statistics(y[:100])
    with pytest.raises(NotFittedError):
        StftStatsBaseline().score_samples([y])
    with pytest.raises(ValueError, match="positive integer"):
        StftStatsBaseline(n_fft=0).fit([y])


def test_stft_baseline_scores_real_anomalies_higher(mimii):
    """Calibrated on six normal MIMII fan clips, four other normal clips score lower on
    average than four anomalous ones."""
    base = StftStatsBaseline().fit([load_audio(p) for p in mimii["normal"][:6]])
    assert base.memory_.shape == (6, 1026)
    assert base.held_out_scores_.shape == (6,) and (base.held_out_scores_ > 0).all()
    normal = base.score_samples([load_audio(p) for p in mimii["normal"][6:10]])
    anomalous = base.score_samples([load_audio(p) for p in mimii["abnormal"][:4]])
    assert normal.shape == anomalous.shape == (4,)
    assert np.isfinite(normal).all() and np.isfinite(anomalous).all()
    assert normal.mean() < anomalous.mean()
    # A calibration clip scores 0 against a memory that holds it.
    assert base.score_samples([load_audio(mimii["normal"][0])])[0] == pytest.approx(0, abs=1e-6)


def test_type_metrics_and_rates():
    y = np.array([0, 0, 0, 0, 1, 1, 1])
    d = np.array(["source", "source", "source", "target", "source", "target", "target"])
    s = np.array([0.1, 0.2, 0.5, 0.3, 0.6, 0.4, 0.15])
    m = type_metrics(y, d, s, min_test_normal=3)
    assert m["auc_target"] is None  # one target normal: not reported
    assert m["auc_source"] == pytest.approx(6 / 9)  # 3 source normals x 3 anomalies
    assert m["official"] == pytest.approx(2 / (1 / m["auc_source"] + 1 / m["pauc"]))
    assert type_metrics(y, d, s, min_test_normal=1)["auc_target"] == pytest.approx(2 / 3)
    r = rates_at_threshold(y, d, s, 0.35)
    assert r == {"fpr_source": pytest.approx(1 / 3), "fpr_target": 0.0,
                 "fpr": pytest.approx(1 / 4), "recall": pytest.approx(2 / 3)}
    assert rates_at_threshold(y, d, s, None)["recall"] is None
    # Normal clips of units without calibration clips are counted apart, in both domains.
    known = np.array([True, False, True, False, True, True, False])
    r = rates_at_threshold(y, d, s, 0.15, known)
    assert (r["false_positives_calibrated_units"], r["normals_calibrated_units"]) == (1, 2)
    assert (r["false_positives_other_units"], r["normals_other_units"]) == (2, 2)
    assert r["fpr"] == pytest.approx(3 / 4)
    assert rates_at_threshold(y, d, s, None, known)["false_positives_other_units"] is None


def test_bootstrap_is_paired_and_brackets_the_estimate():
    rng = np.random.default_rng(0)
    y = np.array([0] * 30 + [1] * 10)
    d = np.array(["source"] * 40)
    s = np.where(y == 1, rng.normal(1, 1, 40), rng.normal(0, 1, 40))
    b = bootstrap_metrics(y, d, {"a": s, "b": s.copy()}, n_boot=100, seed=0)
    assert np.array_equal(b["a"]["auc_source"], b["b"]["auc_source"])  # same resamples
    assert np.isnan(b["a"]["auc_target"]).all()  # undefined on the data: stays undefined
    lo, hi = np.percentile(b["a"]["auc_source"], [2.5, 97.5])
    assert lo < type_metrics(y, d, s)["auc_source"] < hi


def _link(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    os.symlink(src, dst)


def _two_types(data_dir: Path, tmp_path: Path) -> Path:
    """A data folder of two machine types: 8 normal + 4 anomalous MIMII fan clips, 6 normal +
    4 anomalous DCASE 2020 pump clips (links to the shared data)."""
    asd = data_dir / "asd"
    root = tmp_path / "asd"
    for sub, n in (("normal", 8), ("abnormal", 4)):
        for f in sorted((asd / "mimii_fan_id00" / sub).glob("*.wav"))[:n]:
            _link(f, root / "mimii_fan_id00" / sub / f.name)
    pump = asd / "mimii_dcase2020_samples" / "pump"
    for pattern, n in (("normal_*", 6), ("anomaly_*", 4)):
        for f in sorted(pump.glob(pattern))[:n]:
            _link(f, root / "mimii_dcase2020_samples" / "pump" / f.name)
    return root


def test_lomo_seeds_summarise_each_draw(data_dir, tmp_path):
    """``--seeds 0,1``: one full evaluation per seed (the seed reaches the calibration split)
    and a summary whose per-seed values are those of the seeds' reports."""
    root = _two_types(data_dir, tmp_path)
    out = tmp_path / "report"
    r = subprocess.run([sys.executable, "-m", "trainer", "evaluate-asd", str(root),
                        "--protocol", "leave-one-machine-out", "--systems", "stft",
                        "--bootstrap", "20", "--min-test-normal", "2", "--seeds", "0,1",
                        "--out", str(out), "--quiet"], cwd=ROOT, capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    reps = {s: json.loads((out / f"seed_{s}" / "report.json").read_text()) for s in (0, 1)}
    assert (reps[0]["types"]["fan"]["calibration_files"]
            != reps[1]["types"]["fan"]["calibration_files"])
    summary = json.loads((out / "seeds.json").read_text())
    assert summary["seeds"] == [0, 1]
    name = "STFT mean/std + cosine (no learning)"
    official = summary["systems"][name]["official_score"]
    assert official["per_seed"] == [reps[s]["systems"][name]["official_score"] for s in (0, 1)]
    assert official["mean"] == pytest.approx(np.mean(official["per_seed"]))
    fan = summary["types"]["fan"][name]
    assert fan["auc_source"]["per_seed"] == [reps[s]["types"]["fan"]["systems"][name]
                                             ["auc_source"] for s in (0, 1)]
    assert fan["normal_clips"] == sum(reps[s]["types"]["fan"]["counts"]["test_normal"]["source"]
                                      for s in (0, 1))
    assert fan["anomalies"] == 8 and 0 <= fan["found"] <= 8
    # Each normal test clip counts once, as of a calibrated unit or of another one, by the
    # recorded machine its file names; the summary adds the draws' counts.
    unit = {str(c.path): c.unit for c in list_typed_clips(root)[0]}
    for t in ("fan", "pump"):
        for s in (0, 1):
            u = reps[s]["types"][t]
            calibrated = {unit[f] for f in u["calibration_files"]}
            assert u["test_calibrated_unit"] == [unit[f] in calibrated for f in u["test_files"]]
            m = u["systems"][name]
            assert (m["normals_calibrated_units"] + m["normals_other_units"]
                    == u["y_true"].count(0))
        for key in ("false_positives_calibrated_units", "normals_calibrated_units",
                    "normals_other_units"):
            assert summary["types"][t][name][key] == sum(
                reps[s]["types"][t]["systems"][name][key] for s in (0, 1))
    assert "calibrated units / of other units" in (out / "seeds.md").read_text()
    assert "over several draws" in (out / "seeds.md").read_text()


@pytest.mark.slow
def test_lomo_cli_end_to_end(data_dir, tmp_path):
    """Two machine types (fan from MIMII, pump from the DCASE 2020 samples), a tiny model."""
    pytest.importorskip("tensorflow")
    root = _two_types(data_dir, tmp_path)
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(
        "sources: [{path: unused}]\nepochs: 1\nsteps_per_epoch: 2\nbatch_size: 4\n"
        "n_centers: 4\nmodel: {embedding_dim: 32, resnet_widths: [8, 8, 8, 8], "
        "spectrum_filters: 16, spectrum_dense_layers: 1}\nrepresentative_samples: 8\n")
    out = tmp_path / "report"
    r = subprocess.run([sys.executable, "-m", "trainer", "evaluate-asd", str(root),
                        "--protocol", "leave-one-machine-out", "--config", str(recipe),
                        "--ae-epochs", "2", "--bootstrap", "20", "--min-test-normal", "2",
                        "--systems", "ours,adapted,ae,stft",
                        "--out", str(out), "--quiet"], cwd=ROOT, capture_output=True,
                       text=True, timeout=1200)
    assert r.returncode == 0, r.stderr[-3000:]
    rep = json.loads((out / "report.json").read_text())
    assert rep["protocol"] == "leave-one-machine-out"
    assert set(rep["types"]) == {"fan", "pump"}
    # the node's default views and, from the same model, the embedding alone, the views
    # without the level statistics and with the embedding and every branch in place of the
    # spectrum branch; not the views averaged directly, which with one view per
    # representation is the node's score again; two baselines
    assert set(rep["systems"]) == {"ours (int8)", "ours (int8), embedding view only",
                                   "ours (int8), views without level_statistics",
                                   "ours (int8), embedding and every branch", "ours (float)",
                                   "ours, site-adapted (int8)",
                                   "DCASE 2023 AE baseline (calibration clips)",
                                   "STFT mean/std + cosine (no learning)"}
    assert rep["node"]["views"] == ["branch_spectrum", "stft_statistics", "level_statistics",
                                    "pca_residual"]
    fan, pump = rep["types"]["fan"], rep["types"]["pump"]
    assert fan["counts"]["train_types"] == ["pump"] and fan["counts"]["train_clips"] == 6
    assert pump["counts"]["train_types"] == ["fan"] and pump["counts"]["train_clips"] == 8
    assert fan["counts"]["calibration"]["source"] == 4
    assert fan["counts"]["test_normal"]["source"] == 4 and fan["counts"]["test_anomalous"] == 4
    assert pump["counts"]["calibration"]["source"] == 3
    assert not set(fan["calibration_files"]) & set(fan["test_files"])
    for t in ("fan", "pump"):
        assert rep["types"][t]["in_summary"]
        for name, m in rep["types"][t]["systems"].items():
            assert len(m["test_scores"]) == len(rep["types"][t]["test_files"])
            assert m["decision_threshold"] is not None and 0 <= m["recall"] <= 1, name
            assert m["threshold_method"] == "fpr"
            assert m["ci"]["auc_all"] is not None
        for p in rep["types"][t]["plots"]:
            assert Path(p).stat().st_size > 1000
        meta = json.loads((out / "models" / f"lomo_{t}.json").read_text())
        assert meta["held_out_type"] == t
        assert not any(cls.startswith(t) for cls in meta["classes"])
    for s in rep["systems"].values():
        assert s["official_score"] is not None and 0 < s["official_score"] <= 1
        assert s["types"] == ["fan", "pump"]
    for t in ("fan", "pump"):
        ours = rep["types"][t]["systems"]
        assert ours["ours (int8)"]["meta"]["views"] == ["branch_spectrum", "stft_statistics",
                                                        "level_statistics", "pca_residual"]
        assert ours["ours (int8), embedding view only"]["meta"]["views"] == ["embedding"]
        assert ours["ours (int8), views without level_statistics"]["meta"]["views"] == [
            "branch_spectrum", "stft_statistics", "pca_residual"]
        assert ours["ours (int8)"]["meta"]["view_fusion"] == "representations"
        every = ours["ours (int8), embedding and every branch"]
        assert every["meta"]["view_fusion"] == "representations"
        assert every["meta"]["views"] == ["embedding", "branch_spectrogram", "branch_spectrum",
                                          "stft_statistics", "level_statistics", "pca_residual"]
        assert every["test_scores"] != ours["ours (int8)"]["test_scores"]
        # the embedding-spread check: the held-out type's normal clips, and the training
        # clips in the bundle's training report
        counts = rep["types"][t]["counts"]
        spread = ours["ours (int8)"]["meta"]["embedding_spread"]
        assert spread["n"] == (counts["calibration"]["source"] + counts["calibration"]["target"]
                               + counts["test_normal"]["source"]
                               + counts["test_normal"]["target"])
        assert 0 <= spread["chance_agreement"] <= 1 and 0 <= spread["nn_label_agreement"] <= 1
        assert -1 <= spread["cosine"]["min"] <= spread["cosine"]["max"] <= 1 + 1e-6
        bundle = json.loads((out / "models" / f"lomo_{t}.json").read_text())
        assert bundle["embedding_spread"]["n"] == counts["train_clips"]
        assert ours["ours (float)"]["meta"]["views"] == ours["ours (int8)"]["meta"]["views"]
        # the float model is not the int8 one: its scores differ, a little
        f32, i8 = (np.array(ours[k]["test_scores"]) for k in ("ours (float)", "ours (int8)"))
        assert not np.array_equal(f32, i8) and np.corrcoef(f32, i8)[0, 1] > 0.5
        assert (ours["ours (int8)"]["meta"]["model"]
                == ours["ours (int8), embedding view only"]["meta"]["model"])
        # site adaptation: the fold's calibration clips (never its test clips) are classes
        adapted = json.loads((out / "models" / f"lomo_{t}_adapted.json").read_text())
        n_cal = sum(rep["types"][t]["counts"]["calibration"].values())
        assert [c for c in adapted["classes"] if c.startswith("site_")] == [
            f"site_section_{i:03d}" for i in range(n_cal)]
        assert adapted["training_config"]["ssl"] == ["statex", "featex"]
    md = (out / "report.md").read_text()
    assert "Leave-one-machine-type-out" in md and "ours (int8)" in md and "recall" in md
    assert "## Embedding spread on the held-out type" in md
    assert "## int8 minus float" in md
    for t in ("fan", "pump"):
        d = rep["types"][t]["int8_minus_float"]["auc_all"]
        sys_ = rep["types"][t]["systems"]
        assert d["delta"] == pytest.approx(sys_["ours (int8)"]["auc_all"]
                                           - sys_["ours (float)"]["auc_all"])
        assert d["ci"][0] <= d["ci"][1]
