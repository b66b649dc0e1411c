"""What a running node imports: never Numba, SciPy, scikit-learn, matplotlib, librosa or
TensorFlow.

They are installed on a node (calibration and enrollment use SciPy, scikit-learn and
matplotlib; the log-mel keyword frontend uses Numba), but ``python -m edge run`` with the
default bundles must not load them: Numba's LLVM costs a node about 100 MB of resident memory,
SciPy's linear algebra about 17 MB. The real node runs here with both detectors on a replay
against a real mosquitto, and reports its ``sys.modules`` at the end.
"""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

from bench.kws_demo import enroll_demo_keywords, kws_demo_clips
from demo.broker import MosquittoBroker
from demo.tools import require_tools
from firmware_config.defaults import default_config_doc, write_config_doc
from nodeproc import NORMAL, ROOT

NOT_ON_A_NODE = {"numba", "llvmlite", "scipy", "sklearn", "matplotlib", "librosa",
                 "tensorflow", "keras"}


def _modules_after(code: str, env: dict | None = None) -> dict:
    """Run ``code`` in a fresh interpreter; it must leave its result in ``out`` (a dict);
    ``out["modules"]`` gets the top-level packages imported by then."""
    script = code + textwrap.dedent("""
        import json, sys
        out["modules"] = sorted({m.split(".")[0] for m in sys.modules})
        print("RESULT " + json.dumps(out))
    """)
    r = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True,
                       text=True, timeout=600, env=env)
    lines = [ln for ln in r.stdout.splitlines() if ln.startswith("RESULT ")]
    assert r.returncode == 0 and lines, f"exit {r.returncode}:\n{r.stdout[-2000:]}\n{r.stderr[-3000:]}"
    out = json.loads(lines[-1][len("RESULT "):])
    out["log"] = r.stderr
    return out


def test_importing_the_node_loads_no_heavy_library():
    out = _modules_after("import edge.node, edge.__main__\nout = {}\n")
    assert {"edge", "numpy", "paho"} <= set(out["modules"])  # not vacuous
    assert not NOT_ON_A_NODE & set(out["modules"]), sorted(NOT_ON_A_NODE & set(out["modules"]))


@pytest.mark.slow
def test_a_running_node_with_both_detectors_loads_no_heavy_library(tmp_path, calibration_file):
    missing = require_tools(audio=False)
    if missing:
        pytest.fail("this test needs: " + ", ".join(missing) + " (make setup installs them)")
    kws = kws_demo_clips()
    with MosquittoBroker() as broker:
        cfg = write_config_doc(tmp_path / "node.yaml", default_config_doc(
            node={"id": "imports"}, mqtt={"host": broker.host, "port": broker.port},
            spool={"path": str(tmp_path / "spool.sqlite")},
            asd={"calibration": str(calibration_file)},
            kws={"keywords": str(tmp_path / "keywords.npz")},
            audio={"files": [str(kws["stream"]), str(NORMAL[0])], "realtime": False},
            logging={"level": "INFO"}))
        enroll_demo_keywords(cfg, kws["shots"])  # in its own processes: SciPy is fine there
        out = _modules_after(textwrap.dedent(f"""
            import runpy, sys
            sys.argv = ["edge", "run", "--config", {str(cfg)!r}]
            try:
                runpy.run_module("edge", run_name="__main__", alter_sys=True)
                code = 0
            except SystemExit as exc:
                code = exc.code
            out = {{"exit": code}}
        """))
    log = out["log"]
    assert out["exit"] in (0, None), log[-3000:]
    assert " window 1 score " in log, log[-3000:]          # anomaly detection ran
    assert "keyword '" in log, log[-3000:]                  # keyword spotting ran
    heavy = sorted(NOT_ON_A_NODE & set(out["modules"]))
    assert not heavy, f"the node imported {heavy}"
