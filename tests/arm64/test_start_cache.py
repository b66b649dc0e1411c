"""A node keeps its compiled Numba kernels next to its spool (``edge/__main__.py``).

A node restarted after a power cut must load its kernels, not compile them for minutes (on a
small board; ``make test-arm64`` measures both starts in an emulated arm64 root). Numba fixes a
kernel's cache folder when the kernel is defined, so ``python -m edge`` must set
``NUMBA_CACHE_DIR`` before it imports the node: Numba creates the folder at that moment, which
is what the second test sees.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from edge.__main__ import numba_cache_dir
from firmware_config.defaults import default_config_doc, write_config_doc

ROOT = Path(__file__).resolve().parents[2]


def _config(tmp_path: Path) -> Path:
    doc = default_config_doc(node={"id": "cache-test"}, spool={"path": "state/spool.sqlite"})
    return write_config_doc(tmp_path / "node.yaml", doc)


def test_the_cache_is_next_to_the_spool(tmp_path):
    cfg = _config(tmp_path)
    assert numba_cache_dir(["run", "--config", str(cfg)]) == tmp_path / "state" / "numba-cache"
    assert numba_cache_dir(["run"]) is None
    assert numba_cache_dir(["run", "--config", str(tmp_path / "missing.yaml")]) is None


def test_the_node_sets_the_cache_before_its_kernels_are_defined(tmp_path):
    cfg = _config(tmp_path)
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_CACHE_DIR"}
    r = subprocess.run([sys.executable, "-m", "edge", "run", "--config", str(cfg),
                        "--replay", str(tmp_path / "missing.flac")], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 1, r.stderr  # the missing recording, after the kernels' definition
    cache = tmp_path / "state" / "numba-cache"
    assert cache.is_dir() and any(cache.iterdir()), (
        f"no Numba cache in {cache}: NUMBA_CACHE_DIR was not set before edge.node was "
        f"imported\n{r.stderr[-1000:]}")
