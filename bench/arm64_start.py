"""Start-up on arm64: the node's first and second start in the emulated arm64 root.

A node restarted after a power cut must be back quickly (the default bundles compile nothing:
no Numba on the node). ``make test-arm64`` (``tests/arm64/run.py``) measures, in an arm64
Debian root under ``qemu-aarch64`` (an emulated Cortex-A72, a Raspberry Pi 4's core), the
time from process start to the node's ``window 1 score`` log line at a first and a second
start, and writes them to ``reports/arm64.json``. Emulation is too slow to
repeat that inside ``make bench`` (a cold start takes minutes), so the benchmark reports the
last run's figures with its date, and only where the arm64 root exists.

* :func:`arm64_start_times`: those figures, or None without an arm64 root.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from bench.common import ROOT

__all__ = ["arm64_start_times", "ARM64_REPORT"]

#: Written by ``make test-arm64``.
ARM64_REPORT = ROOT / "reports" / "arm64.json"
#: The default root of ``tests/arm64/run.py`` (``$HARK_ARM64_ROOT`` overrides both).
_DEFAULT_ROOT = "/var/cache/hark/arm64-root"


def arm64_start_times(report: Path = ARM64_REPORT) -> dict[str, Any] | None:
    """First and second start to the first scored window, x86_64 and emulated arm64.

    Returns
    -------
    dict or None
        None when there is no arm64 root (``$HARK_ARM64_ROOT``, default
        ``/var/cache/hark/arm64-root``). Otherwise ``{"missing": True}`` when ``make test-arm64``
        has not written ``report`` yet, else ``date``, ``ok`` (x86_64 and arm64 agreed),
        ``first_start_s`` and ``second_start_s`` (each ``{"x86_64": s, "arm64": s}``) and
        ``emulated_cpu``.
    """
    root = Path(os.environ.get("HARK_ARM64_ROOT", _DEFAULT_ROOT))
    if not (root / "usr" / "bin" / "python3").exists():
        return None
    if not report.exists():
        return {"missing": True}
    r = json.loads(report.read_text())
    return {"date": r["date"], "ok": r["ok"], "emulated_cpu": r.get("emulated_cpu", ""),
            **{k: {"x86_64": r["x86_64"][k], "arm64": r["arm64"][k]}
               for k in ("first_start_s", "second_start_s")}}
