"""A node keeps its compiled Numba kernel next to its spool (``edge/__main__.py``).

Only a node with the log-mel keyword bundle compiles one (the frontend's high-pass); restarted
after a power cut it must load it, not compile it again. Numba reads its cache folder when it
is imported, so ``python -m edge`` must set ``NUMBA_CACHE_DIR`` before anything imports it;
the default node does not import Numba at all.
"""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
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


def test_the_node_sets_the_cache_before_numba_is_imported(tmp_path):
    cfg = _config(tmp_path)
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_CACHE_DIR"}
    code = textwrap.dedent(f"""
        import runpy, sys
        sys.argv = ["edge", "run", "--config", {str(cfg)!r}, "--replay",
                    {str(tmp_path / "missing.flac")!r}]
        try:
            runpy.run_module("edge", run_name="__main__", alter_sys=True)
        except SystemExit as exc:
            print("EXIT", exc.code)
        print("NUMBA_LOADED", "numba" in sys.modules)
        from numba.core import config
        print("CACHE_DIR", config.CACHE_DIR)
    """)
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True,
                       text=True, timeout=300)
    lines = dict(ln.split(" ", 1) for ln in r.stdout.splitlines() if " " in ln)
    assert lines.get("EXIT") == "1", r.stdout + r.stderr[-2000:]  # the missing recording
    assert lines.get("NUMBA_LOADED") == "False", "the default node imported Numba"
    assert lines.get("CACHE_DIR") == str(tmp_path / "state" / "numba-cache"), (
        f"NUMBA_CACHE_DIR was not set for a later Numba import\n{r.stdout}{r.stderr[-1000:]}")
