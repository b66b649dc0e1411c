"""The dependency graph, enforced: data flows one way and the node never needs TensorFlow.

* ``firmware_config/`` (config, its errors, file I/O) is the leaf: it imports nothing else of
  the project;
* ``edge/`` (what runs on the node) never imports ``trainer/``, ``bench/`` or ``demo/``, and
  imports ``calibration/`` only in ``edge/learning.py`` (the node's auto-calibration);
* ``calibration/`` (runs on the node too) never imports ``trainer/``, ``bench/`` or ``demo/``;
* project-internal imports sit at the top of each file, so the graph is visible; the only
  lazy ones are of the trainer modules that load TensorFlow;
* starting the node's commands imports neither TensorFlow nor Keras.
"""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("edge", "calibration", "firmware_config", "trainer", "bench", "demo")
# Trainer modules that import TensorFlow/Keras when imported: they may be imported lazily,
# as TensorFlow itself is, so that `--help` and the evaluations without training start fast.
TF_MODULES = {"trainer.losses", "trainer.model", "trainer.train", "trainer.kws_train",
              "trainer.export"}


def _imports(path: Path):
    """``(module, lineno, top_level)`` for every project-internal import in ``path``."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    in_function = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            in_function.update(id(n) for n in ast.walk(node) if n is not node)
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        else:
            continue
        for name in names:
            if name.split(".")[0] in PACKAGES:
                yield name, node.lineno, id(node) not in in_function


def _edges(package: str):
    for path in sorted((ROOT / package).rglob("*.py")):
        for module, lineno, top in _imports(path):
            yield path.relative_to(ROOT).as_posix(), lineno, module, top


def test_firmware_config_is_a_leaf():
    bad = [f"{p}:{n} imports {m}" for p, n, m, _ in _edges("firmware_config")
           if m.split(".")[0] != "firmware_config"]
    assert not bad, bad


@pytest.mark.parametrize("package", ["edge", "calibration"])
def test_node_packages_never_import_the_workstation_side(package):
    bad = [f"{p}:{n} imports {m}" for p, n, m, _ in _edges(package)
           if m.split(".")[0] in ("trainer", "bench", "demo")]
    assert not bad, bad


def test_edge_imports_calibration_only_for_auto_calibration():
    bad = [f"{p}:{n} imports {m}" for p, n, m, _ in _edges("edge")
           if m.split(".")[0] == "calibration" and p != "edge/learning.py"]
    assert not bad, bad


def test_project_imports_are_at_the_top_of_files():
    lazy = [f"{p}:{n} imports {m} inside a function"
            for package in PACKAGES for p, n, m, top in _edges(package)
            if not top and m not in TF_MODULES]
    assert not lazy, lazy


def test_lazy_trainer_modules_really_need_tensorflow():
    """The exception above is only for modules that use TensorFlow or Keras (directly or
    through another such module)."""
    for module in sorted(TF_MODULES):
        path = ROOT / (module.replace(".", "/") + ".py")
        tree = ast.parse(path.read_text(encoding="utf-8"))
        used = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import)
                for a in n.names}
        used |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
        assert used & ({"tensorflow", "keras"} | TF_MODULES - {module}), module


def test_node_commands_never_import_tensorflow():
    code = ("import sys\n"
            "import edge.__main__, edge.node, calibration.__main__, firmware_config.__main__\n"
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in "
            "('tensorflow', 'keras', 'trainer', 'bench', 'demo'))\n"
            "print(','.join(bad))")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "", r.stdout
