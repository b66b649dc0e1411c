"""The systemd unit matches the node's command line and exit statuses."""
from __future__ import annotations

import configparser
import shlex
import subprocess
import sys
from pathlib import Path

import yaml
from firmware_config.defaults import default_config_doc

ROOT = Path(__file__).resolve().parent.parent
UNIT = ROOT / "firmware_config" / "deploy" / "hark-node.service"


def _service() -> configparser.SectionProxy:
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str
    unit.read_string(UNIT.read_text())
    return unit["Service"]


def test_unit_runs_the_node_and_restarts_all_but_a_bad_config(tmp_path):
    svc = _service()
    argv = shlex.split(svc["ExecStart"])
    assert argv[0].startswith(svc["WorkingDirectory"])  # the venv in the install folder
    assert argv[1:5] == ["-m", "edge", "run", "--config"]
    config = Path(argv[5])
    # The node rewrites its config when one is flashed over MQTT: it must be writable.
    assert str(config.parent) in svc["ReadWritePaths"].split()
    assert svc["Restart"] == "always" and svc["KillSignal"] == "SIGTERM"
    no_restart = {int(x) for x in svc["RestartPreventExitStatus"].split()}

    def exit_status(doc) -> int:
        cfg = tmp_path / "node.yaml"
        cfg.write_text(yaml.safe_dump(doc))
        return subprocess.run([sys.executable, *argv[1:5], str(cfg)], cwd=ROOT,
                              capture_output=True, timeout=120).returncode

    # An installer's typo: not restarted in a loop.
    assert exit_status({"mqtt": {"port": 70000}}) in no_restart
    # A missing model (e.g. a half-finished install): restarted until it is there.
    doc = default_config_doc(asd={"model": str(tmp_path / "missing.tflite")},
                             spool={"path": str(tmp_path / "spool.sqlite")})
    status = exit_status(doc)
    assert status != 0 and status not in no_restart
