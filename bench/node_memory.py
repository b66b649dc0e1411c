"""Measurement 2: resident memory of the running node, anomaly detection and keyword spotting
both active.

:func:`measure_node_memory` starts a private mosquitto broker, calibrates the node on the demo
calibration clips (``python -m calibration record``), enrolls the demo keywords
(:func:`bench.kws_demo.enroll_demo_keywords`), runs ``python -m edge run`` on a real-time replay
and samples the node's memory:

* :func:`read_status_kb`: ``VmRSS`` and ``VmHWM`` from ``/proc/<pid>/status``;
* :func:`tensorflow_mappings`: whether the node mapped TensorFlow (it must not) and which TFLite
  runtime files it mapped, from ``/proc/<pid>/maps``; whether it mapped Numba's LLVM
  (``llvmlite``, about 100 MB; the default bundles do not need it).
"""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

from bench.common import DEFAULT_KWS_MODEL, MB, ROOT, log
from bench.kws_demo import enroll_demo_keywords
from demo.broker import MosquittoBroker
from firmware_config.defaults import default_config_doc, write_config_doc

__all__ = ["read_status_kb", "tensorflow_mappings", "measure_node_memory"]


def read_status_kb(pid: int) -> dict[str, int]:
    """``VmRSS`` and ``VmHWM`` of a process in kB (KiB) from ``/proc/<pid>/status``.

    Parameters
    ----------
    pid : int

    Returns
    -------
    dict
        ``{"VmRSS": kb, "VmHWM": kb}``; empty when the process is gone.
    """
    out = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                key, _, rest = line.partition(":")
                if key in ("VmRSS", "VmHWM"):
                    out[key] = int(rest.split()[0])
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return {}
    return out


def tensorflow_mappings(pid: int) -> tuple[set[str], set[str]]:
    """Shared objects of a process that belong to TensorFlow, and the TFLite runtime ones.

    A mapping counts as TensorFlow when its file lies in a ``tensorflow`` package folder or
    is named ``libtensorflow*`` or ``_pywrap_tensorflow*``; ai-edge-litert's own
    ``_pywrap_tensorflow_lite_*`` wrappers (TFLite, not TensorFlow) are excluded.

    Parameters
    ----------
    pid : int

    Returns
    -------
    tensorflow : set of str
        Paths of mapped TensorFlow files (empty: TensorFlow was not loaded).
    runtime : set of str
        Paths of mapped ai-edge-litert files.
    """
    tf, rt = set(), set()
    try:
        with open(f"/proc/{pid}/maps") as f:
            lines = f.readlines()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return tf, rt
    for line in lines:
        parts = line.split(None, 5)
        if len(parts) < 6:
            continue
        path = parts[5].strip()
        name = os.path.basename(path)
        if "/ai_edge_litert/" in path:
            rt.add(path)
        elif ("/site-packages/tensorflow/" in path or "/dist-packages/tensorflow/" in path
              or name.startswith("libtensorflow") or name.startswith("_pywrap_tensorflow")):
            tf.add(path)
    return tf, rt


def _write_node_config(path: Path, broker, model: Path, calibration: Path,
                       replay: Sequence[Path], kws_model: Path = DEFAULT_KWS_MODEL) -> Path:
    """The default config with the bench's broker, models, artifacts and replay; both
    listeners enabled. Returns the keywords file it points to (``kws.keywords``), next to
    the calibration."""
    keywords = Path(calibration).with_name("kws_keywords.npz")
    sections: dict[str, dict[str, Any]] = {}
    if broker is not None:
        sections["mqtt"] = {"host": broker.host, "port": int(broker.port)}
    doc = default_config_doc(
        node={"id": "bench"}, spool={"path": str(path.with_name("spool.sqlite"))},
        asd={"enabled": True, "model": str(model.resolve()), "calibration": str(calibration)},
        kws={"enabled": True, "model": str(Path(kws_model).resolve()),
             "keywords": str(keywords)},
        audio={"files": [str(p.resolve()) for p in replay], "realtime": True},
        logging={"level": "INFO"}, **sections)
    write_config_doc(path, doc)
    return keywords


def _stop(proc: subprocess.Popen, timeout: float = 10.0) -> tuple[int | None, str]:
    """SIGINT, wait, then SIGKILL; returns the exit status and how it ended."""
    if proc.poll() is not None:
        return proc.returncode, "exited by itself"
    proc.send_signal(signal.SIGINT)
    try:
        return proc.wait(timeout), "SIGINT"
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait(5), f"SIGKILL (no exit {timeout:g} s after SIGINT)"


def measure_node_memory(model: Path, calibration_clips: Sequence[Path],
                        replay_clips: Sequence[Path], seconds: float = 40.0,
                        interval: float = 0.5, kws_model: Path = DEFAULT_KWS_MODEL,
                        kws_shots: dict[str, Sequence[Path]] | None = None) -> dict[str, Any]:
    """Calibrate, enroll keywords and run a node against a private broker; sample its memory.

    Parameters
    ----------
    model : Path
        The int8 ``.tflite`` anomaly model.
    calibration_clips : sequence of Path
        Normal-operation clips for ``python -m calibration record --from``.
    replay_clips : sequence of Path
        Clips the node replays at real-time speed (``audio.files``, ``audio.realtime``);
        put a keyword stream first for keywords to be matched while memory is sampled.
    seconds : float
        How long to sample after starting the node.
    interval : float
        Sampling period in seconds.
    kws_model : Path
        The int8 ``.tflite`` TACos model (``kws.model``).
    kws_shots : dict of str -> sequence of Path, optional
        Keyword -> shot recordings, enrolled with ``python -m calibration enroll`` into the
        config's ``kws.keywords`` before the node starts
        (:func:`bench.kws_demo.enroll_demo_keywords`). Without it the keyword listener has
        no keywords and stays idle.

    Returns
    -------
    dict
        ``peak_rss_mb`` (largest sampled VmRSS), ``vmhwm_mb`` (VmHWM at the last sample
        before stopping), ``samples``, ``windows_scored``, ``kws_active`` (the node's log
        says the keyword listener runs), ``keyword_events`` (keyword, onset, offset in
        stream seconds, from the log), ``enrollment``, ``tensorflow_loaded`` with
        ``tensorflow_files``, ``tflite_runtime_files``, ``calibration_seconds``,
        ``numba_loaded`` (llvmlite mapped), ``exit`` (how the node was stopped and its exit
        status).

    Raises
    ------
    RuntimeError
        If mosquitto is missing, calibration or enrollment fails or the node exits with an
        error; the message quotes the log.
    """
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with tempfile.TemporaryDirectory(prefix="hark-bench-") as tmp, MosquittoBroker() as broker:
        tmp = Path(tmp)
        cfg = tmp / "node.yaml"
        cal = tmp / "asd_calibration.npz"
        _write_node_config(cfg, broker, model, cal, replay_clips, kws_model)
        enrollment = None
        if kws_shots:
            log(f"enrolling keywords {', '.join(kws_shots)} (python -m calibration enroll)")
            enrollment = enroll_demo_keywords(cfg, kws_shots, env)

        log(f"calibrating on {len(calibration_clips)} clip(s)")
        t0 = time.monotonic()
        r = subprocess.run([sys.executable, "-m", "calibration", "record", "--config", str(cfg),
                            "--from", *map(str, calibration_clips), "--quiet"],
                           cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
        cal_seconds = time.monotonic() - t0
        if r.returncode != 0 or not cal.is_file():
            raise RuntimeError(f"calibration record failed (exit {r.returncode}):\n"
                               f"{(r.stdout + r.stderr)[-1500:]}")

        log(f"running the node for {seconds:g} s (real-time replay of "
            f"{len(replay_clips)} clip(s)) against {broker.url}")
        run = _run_node(cfg, env, tmp / "node.log", seconds, interval)
        samples, log_text, rc, how = run["samples"], run["log"], run["status"], run["stopped_by"]
        windows = len(re.findall(r"\bwindow \d+ score ", log_text))
        kws_active = bool(re.search(r": keyword model \S+, keywords ", log_text))
        events = [{"keyword": k, "onset_s": float(a), "offset_s": float(b)} for k, a, b in
                  re.findall(r"\bkeyword '([^']*)' ([\d.]+)-([\d.]+) s cost ", log_text)]
        tf_files, rt_files, hwm_kb = run["tf_files"], run["rt_files"], run["hwm_kb"]
        exited_early = run["exited_early"]
    peak = max(s["rss_mb"] for s in samples)
    return {
        "peak_rss_mb": peak, "vmhwm_mb": round(hwm_kb * 1024 / MB, 2),
        "sampled_seconds": seconds, "interval_s": interval, "samples": samples,
        "windows_scored": windows, "kws_active": kws_active, "keyword_events": events,
        "enrollment": enrollment, "replay_clips": [p.name for p in replay_clips],
        "calibration_clips": [p.name for p in calibration_clips],
        "calibration_seconds": round(cal_seconds, 2),
        "tensorflow_loaded": bool(tf_files), "tensorflow_files": sorted(tf_files),
        "tflite_runtime_files": sorted(rt_files),
        "numba_loaded": run["numba_loaded"],
        "exit": {"status": rc, "stopped_by": how, "exited_early": exited_early},
    }


def _run_node(cfg: Path, env: dict[str, str], log_path: Path, seconds: float,
              interval: float) -> dict[str, Any]:
    """``python -m edge run --config CFG`` for ``seconds``, its memory sampled every
    ``interval`` s, then stopped (:func:`_stop`); raises RuntimeError if it exits early with
    an error or no sample was taken."""
    samples: list[dict[str, float]] = []
    tf_files: set[str] = set()
    rt_files: set[str] = set()
    hwm_kb = 0
    numba_loaded = False
    with open(log_path, "wb") as log_file:
        proc = subprocess.Popen([sys.executable, "-m", "edge", "run", "--config", str(cfg)],
                                cwd=ROOT, env=env, stdin=subprocess.DEVNULL,
                                stdout=log_file, stderr=subprocess.STDOUT)
        try:
            start = time.monotonic()
            while time.monotonic() - start < seconds and proc.poll() is None:
                st = read_status_kb(proc.pid)
                tf, rt = tensorflow_mappings(proc.pid)
                if st.get("VmRSS") and proc.poll() is None:
                    tf_files |= tf
                    rt_files |= rt
                    numba_loaded = numba_loaded or _maps_llvmlite(proc.pid)
                    hwm_kb = max(hwm_kb, st.get("VmHWM", 0))
                    samples.append({"t_s": round(time.monotonic() - start, 2),
                                    "rss_mb": round(st.get("VmRSS", 0) * 1024 / MB, 2)})
                time.sleep(interval)
            exited_early = proc.poll() is not None
        finally:
            rc, how = _stop(proc)
    log_text = log_path.read_text(errors="replace")
    if exited_early and rc != 0:
        raise RuntimeError(f"the node exited early with status {rc}:\n{log_text[-1500:]}")
    if not samples:
        raise RuntimeError(f"no memory sample taken from the node:\n{log_text[-1500:]}")
    return {"samples": samples, "log": log_text, "status": rc, "stopped_by": how,
            "exited_early": exited_early, "tf_files": tf_files, "rt_files": rt_files,
            "hwm_kb": hwm_kb, "numba_loaded": numba_loaded}


def _maps_llvmlite(pid: int) -> bool:
    """Whether the process mapped Numba's LLVM (a file in an ``llvmlite`` package folder)."""
    try:
        with open(f"/proc/{pid}/maps") as f:
            return "/llvmlite/" in f.read()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return False
