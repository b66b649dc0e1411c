"""What every bench measurement shares: paths, the shipped inputs, CPU pinning, logging and the
machine description.

* :data:`ROOT`, :data:`DEFAULT_MODEL`, :data:`DEFAULT_KWS_MODEL`, :data:`CLIPS_DIR`,
  :data:`KWS_CLIPS_DIR`, :data:`MB`: where the shipped models and demo clips are, and the
  size unit of the report (MB = 10**6 bytes, stricter than MiB for the 200 MB target).
* :class:`BenchError`: a prerequisite is missing (model, clips); ``python -m bench`` exits 2.
* :func:`check_model`, :func:`demo_clips`: the inputs, checked before anything is measured.
* :func:`pin_to_one_cpu`: one-core measurements (restore the previous affinity after).
* :func:`log`: progress on stderr.
* :func:`machine_info`: CPU model, versions (every package the node imports, checked against
  ``requirements/constraints.txt``), date and commit, for the report.
"""
from __future__ import annotations

import datetime as dt
import glob
import os
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["ROOT", "DEFAULT_MODEL", "DEFAULT_KWS_MODEL", "CLIPS_DIR", "KWS_CLIPS_DIR", "MB",
           "CONSTRAINTS", "NODE_PACKAGES", "BenchError", "pin_to_one_cpu", "log", "check_model",
           "demo_clips", "node_package_versions", "machine_info"]

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_MODEL = ROOT / "models" / "asd_default.tflite"
DEFAULT_KWS_MODEL = ROOT / "models" / "kws_speech.tflite"
CLIPS_DIR = ROOT / "demo" / "clips"
KWS_CLIPS_DIR = CLIPS_DIR / "kws"
MB = 1e6
CONSTRAINTS = ROOT / "requirements" / "constraints.txt"
# The distributions `python -m edge run` imports (tests/test_node_imports.py checks the node
# imports no others of weight); their versions set the node's memory and speed.
NODE_PACKAGES = ("numpy", "numba", "llvmlite", "ai-edge-litert", "pydantic", "pydantic-core",
                 "PyYAML", "paho-mqtt", "soundfile", "sounddevice", "cffi")


class BenchError(RuntimeError):
    """A prerequisite is missing (model, clips); the message says how to get it."""


def pin_to_one_cpu(cpu: int | None) -> tuple[int | None, bool, set[int] | None]:
    """Pin this process to one CPU (default: the lowest allowed one).

    Parameters
    ----------
    cpu : int, optional
        CPU to pin to; None for the lowest one the process may run on.

    Returns
    -------
    cpu : int or None
        The CPU pinned to (``cpu`` as given where pinning is not available).
    pinned : bool
        Whether the platform has :func:`os.sched_setaffinity` (the process was pinned).
    previous : set of int or None
        The previous affinity; restore it with ``os.sched_setaffinity(0, previous)`` when
        ``pinned``.
    """
    pinned = hasattr(os, "sched_setaffinity")
    old_affinity = os.sched_getaffinity(0) if pinned else None
    if pinned:
        cpu = min(old_affinity) if cpu is None else cpu
        os.sched_setaffinity(0, {cpu})
    return cpu, pinned, old_affinity


def log(msg: str) -> None:
    """Print a progress line ``bench: MSG`` on stderr."""
    print(f"bench: {msg}", file=sys.stderr, flush=True)


def check_model(model: Path, task: str = "asd") -> None:
    """Fail early, with a clear message, when the model bundle is incomplete.

    Parameters
    ----------
    model : Path
        The ``.tflite`` file; its ``.json`` metadata must be next to it.
    task : {"asd", "kws"}
        Which model, for the message that says how to build it.

    Raises
    ------
    BenchError
        If the ``.tflite`` or the ``.json`` file is missing.
    """
    if task == "kws":
        how = ("it ships with the repository as models/kws_speech.{tflite,json} and "
               "kws_speech_mel.tflite; rebuild it with `make export-tflite` (python -m trainer "
               "finetune-speech-embedding), or pass --kws-model")
        redo = "`make export-tflite`"
    else:
        how = ("build it with `make export-tflite` (trains the default embedder and writes "
               "models/asd_default.{tflite,json}), or pass --model")
        redo = "`make export-tflite`"
    if not model.is_file():
        raise BenchError(f"{task} model not found: {model}\n  {how}")
    meta = model.with_suffix(".json")
    if not meta.is_file():
        raise BenchError(f"model metadata not found: {meta} (every .tflite needs its .json; "
                         f"re-export the model with {redo})")


def demo_clips(clips_dir: Path = CLIPS_DIR) -> dict[str, list[Path]]:
    """The demo clips, by role.

    Parameters
    ----------
    clips_dir : Path
        Folder with the shipped ``*.flac`` demo clips.

    Returns
    -------
    dict
        ``all`` (every clip, sorted), ``calibration`` (``*_calibration_normal_*``) and
        ``replay`` (the ``*_test_normal_*`` then the ``*_test_anomaly_*`` clips).

    Raises
    ------
    BenchError
        If a role has no clip.
    """
    def pick(pattern: str) -> list[Path]:
        return sorted(Path(p) for p in glob.glob(str(clips_dir / pattern)))

    clips = {"all": pick("*.flac"), "calibration": pick("*_calibration_normal_*.flac"),
             "replay": pick("*_test_normal_*.flac")[:2] + pick("*_test_anomaly_*.flac")[:2]}
    for role, paths in clips.items():
        if not paths:
            raise BenchError(f"no {role} demo clips in {clips_dir} (they ship with the "
                             "repository: is the checkout complete?)")
    return clips


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


def _pinned_versions(path: Path = CONSTRAINTS) -> dict[str, str]:
    """Lower-case name -> version of the ``name==version`` lines of a constraints file whose
    environment marker (if any) holds here; empty if the file is missing."""
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    pins = {}
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return pins
    for line in lines:
        line = line.split("#", 1)[0].strip()
        if line:
            req = Requirement(line)
            if req.marker is None or req.marker.evaluate():
                pins[canonicalize_name(req.name)] = next(iter(req.specifier)).version
    return pins


def node_package_versions() -> dict[str, Any]:
    """Installed versions of :data:`NODE_PACKAGES` and how they compare with the pins.

    Returns
    -------
    dict
        ``versions`` (distribution -> version, ``"not installed"``), ``constraints`` (the
        file, relative to the project) and ``unpinned`` (distribution -> ``{"installed",
        "pinned"}`` for each one whose installed version is not the pinned one; empty when
        the environment is the pinned one).
    """
    from packaging.utils import canonicalize_name

    pins = _pinned_versions()
    versions = {name: _version(name) for name in NODE_PACKAGES}
    unpinned = {name: {"installed": v, "pinned": pins.get(canonicalize_name(name))}
                for name, v in versions.items() if pins.get(canonicalize_name(name)) != v}
    return {"versions": versions, "constraints": str(CONSTRAINTS.relative_to(ROOT)),
            "unpinned": unpinned}


def machine_info() -> dict[str, Any]:
    """CPU model, core count, Python / ai-edge-litert / NumPy versions, date and git commit.

    Returns
    -------
    dict
        ``cpu_model``, ``cpus``, ``machine``, ``kernel``, ``python``, ``ai_edge_litert``,
        ``numpy``, ``numba``, ``packages`` (:func:`node_package_versions`), ``date`` (UTC,
        ISO 8601) and ``git_commit`` (None outside a git checkout).
    """
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith(("model name", "hardware", "processor\t: arm")):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    commit = None
    try:
        r = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                           capture_output=True, text=True, timeout=5)
        commit = r.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        pass
    return {"cpu_model": cpu, "cpus": os.cpu_count(), "machine": platform.machine(),
            "kernel": platform.release(), "python": platform.python_version(),
            "ai_edge_litert": _version("ai-edge-litert"), "numpy": np.__version__,
            "numba": _version("numba"), "packages": node_package_versions(),
            "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "git_commit": commit}
