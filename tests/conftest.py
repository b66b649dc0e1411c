"""Shared fixtures: where the real data is, the shipped model, small real clip subsets."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def data_root() -> Path:
    """``$HARK_DATA`` or ``../shared/data`` next to the project."""
    env = os.environ.get("HARK_DATA")
    return Path(env) if env else (ROOT.parent / "shared" / "data").resolve()


@pytest.fixture(scope="session")
def data_dir() -> Path:
    d = data_root()
    if not (d / "asd").is_dir():
        pytest.fail(f"real test data not found at {d}: set HARK_DATA to the shared data folder")
    return d


@pytest.fixture(scope="session")
def mimii(data_dir) -> dict[str, list[Path]]:
    base = data_dir / "asd" / "mimii_fan_id00"
    return {"normal": sorted((base / "normal").glob("*.wav")),
            "abnormal": sorted((base / "abnormal").glob("*.wav"))}


@pytest.fixture(scope="session")
def site_fan(data_dir) -> dict[str, list[Path]]:
    """A fan the default embedder never heard (MIMII / DCASE 2020 fan id_02, the demo's
    machine): ``calibration`` the demo's 6 calibration clips (normal 03, 06-10), ``normal``
    the other 4 normal clips (11-14), ``abnormal`` all 10 anomalous clips; 10 s each."""
    base = data_dir / "asd" / "mimii_dcase2020_samples" / "fan"
    normal = sorted(base.glob("normal_id_02_*.flac"))
    assert len(normal) == 10, f"expected 10 normal fan id_02 clips in {base}"
    return {"calibration": normal[:6], "normal": normal[6:],
            "abnormal": sorted(base.glob("anomaly_id_02_*.flac"))}


@pytest.fixture(scope="session")
def default_model() -> Path:
    p = ROOT / "models" / "asd_default.tflite"
    assert p.is_file(), "the default model bundle is missing: run `make export-tflite`"
    return p


@pytest.fixture(scope="session")
def kws_model() -> Path:
    p = ROOT / "models" / "kws_default.tflite"
    assert p.is_file(), "the default KWS bundle is missing: run `python -m trainer train-kws`"
    return p


@pytest.fixture(scope="session")
def embedder(default_model):
    from edge.model import load_bundle

    return load_bundle(default_model)


@pytest.fixture(scope="session")
def calibration_file(tmp_path_factory) -> Path:
    """A calibration made once from the real normal demo clips with the CLI (file input)."""
    from nodeproc import CAL_CLIPS, node_config

    tmp = tmp_path_factory.mktemp("cal")
    cal = tmp / "asd_calibration.npz"
    cfg = node_config(tmp, 1883, cal)
    r = subprocess.run([sys.executable, "-m", "calibration", "record", "--config", str(cfg),
                        "--from", *map(str, CAL_CLIPS), "--quiet"],
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["windows"] == len(CAL_CLIPS)
    assert Path(out["histogram"]).stat().st_size > 1000
    return cal


@pytest.fixture(scope="session")
def vocabulary(tmp_path_factory) -> Path:
    """A tiny synthetic vocabulary (12 texts x 3 voices, seed 5; needs espeak-ng)."""
    from trainer.kws_vocabulary import build_vocabulary

    out = tmp_path_factory.mktemp("vocab")
    build_vocabulary(out, n_texts=12, voices_per_text=3, seed=5)
    return out
