"""`python -m trainer adapt-asd`: a site's real recordings join the training data as classes
of their own, and the command leaves an int8 bundle with a calibration of those recordings
that the node accepts."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from edge.backend import Calibration
from edge.model import load_bundle
from trainer.asd_adapt import site_recipe, site_recordings, site_training_items, ssl_list

ROOT = Path(__file__).resolve().parent.parent


def test_site_recordings_and_classes(tmp_path, mimii):
    files = mimii["normal"][:3]
    for f in files:
        (tmp_path / f.name).symlink_to(f)
    (tmp_path / "notes.txt").write_text("not audio")
    found = site_recordings([tmp_path])
    assert [f.name for f in found] == [f.name for f in files]
    items = site_training_items(found)
    assert [lab.class_name for _, lab in items] == ["site_section_000", "site_section_001",
                                                    "site_section_002"]
    assert not any(lab.is_anomaly for _, lab in items)
    with pytest.raises(FileNotFoundError, match="no such file"):
        site_recordings([tmp_path / "missing"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no audio files"):
        site_recordings([tmp_path / "empty"])


def test_site_recipe_and_ssl_option():
    from trainer.train import TrainConfig

    base = TrainConfig(sources=[], mixup_probability=1.0)
    assert ssl_list("none") == [] and ssl_list(" statex , featex") == ["statex", "featex"]
    with_ssl = site_recipe(base, "press3")
    assert (with_ssl.name, with_ssl.ssl, with_ssl.effective_mixup_probability) == (
        "press3", ["statex", "featex"], 0.5)  # thesis 5.7.2: mixup 0.5 with SSL
    plain = site_recipe(base, "press3", ssl_list("none"))
    assert plain.ssl == [] and plain.effective_mixup_probability == 1.0
    assert base.name != "press3" and base.ssl == []  # the recipe itself is not changed


def test_adapt_cli_writes_a_bundle_and_its_calibration(tmp_path, data_dir, mimii):
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(
        f"data_root: {data_dir}\n"
        "sources: [{path: asd/mimii_dcase2020_samples/pump, machine: pump, "
        "files: 'normal_*'}]\n"
        "epochs: 1\nsteps_per_epoch: 2\nbatch_size: 4\nn_centers: 4\n"
        "model: {embedding_dim: 32, resnet_widths: [8, 8, 8, 8], spectrum_filters: 16, "
        "spectrum_dense_layers: 1}\nrepresentative_samples: 8\n")
    site = mimii["normal"][:3]
    out = tmp_path / "site"
    r = subprocess.run([sys.executable, "-m", "trainer", "adapt-asd", "--from", *map(str, site),
                        "--config", str(recipe), "--name", "press3", "--out", str(out),
                        "--quiet"], cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    info = json.loads(r.stdout)
    emb = load_bundle(info["model"])
    meta = json.loads(Path(info["model"]).with_suffix(".json").read_text())
    # every site recording is a class; the SSL head is on (StatEx and FeatEx)
    assert {f"site_section_{i:03d}" for i in range(3)} <= set(meta["classes"])
    assert any(c.startswith("pump") for c in meta["classes"])
    assert meta["training_config"]["ssl"] == ["statex", "featex"]
    assert meta["site_recordings"] == [str(f) for f in site]
    cal = Calibration.load(info["calibration"], emb.sha256)  # made for this very model
    assert cal.calibration_id == info["calibration_id"] and info["windows"] == 3
    assert cal.view_names == ("branch_spectrum", "stft_statistics", "level_statistics",
                              "pca_residual")  # the node's default views
    assert sorted(p.name for p in out.iterdir()) == ["press3.json", "press3.tflite",
                                                     "press3_calibration.npz"]
