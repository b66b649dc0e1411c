"""``python -m bench [--out reports] [--clips N]``: latency, real-time factor, node memory
and model sizes, written to ``reports/bench.md`` and ``reports/bench.json``.

Measurements, each checked against its target:

1. **int8 ASD embedding latency on one core.** The process is pinned to one CPU
   (:func:`os.sched_setaffinity`) and the interpreter runs with ``num_threads=1``. The
   frontend (:func:`edge.frontend.asd_features`) and the inference
   (:meth:`edge.model.AsdEmbedder.embed_features`) are timed separately over a few
   warm-up runs and ``--clips`` timed runs across the demo clips. The real-time factor is
   the median total time divided by the clip length (target ``<= 0.02``).
2. **Resident memory of the running node.** A private mosquitto broker is started, the
   node is calibrated on the demo calibration clips (``python -m calibration record``), and
   ``python -m edge run`` replays the demo test clips at real-time speed while its
   ``VmRSS`` is sampled every 0.5 s from ``/proc/<pid>/status``; ``VmHWM`` (the kernel's
   peak) is read as well (target ``<= 250 MB``). ``/proc/<pid>/maps`` tells whether the
   node ever loaded TensorFlow (it must not).
3. **Model sizes.** The int8 ``.tflite`` file against the float32 size recorded at export
   time (``float_tflite_size_bytes`` in the bundle metadata; target: int8 at most a third).
4. **Machine information**: CPU model, Python, ai-edge-litert and NumPy versions, date.

Only the demo clips shipped in ``demo/clips`` are used, so the benchmark runs from a fresh
clone. Missed targets are reported as FAIL but do not change the exit status; the exit
status is 2 when the model or the clips are missing and 1 when a measurement could not be
taken (the report is still written).

Sizes are in MB = 10**6 bytes (stricter than MiB for the 250 MB target).
"""
from __future__ import annotations

import argparse
import datetime as dt
import glob
import json
import os
import platform
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_MODEL = ROOT / "models" / "asd_default.tflite"
DEFAULT_CONFIG = ROOT / "firmware_config" / "default.yaml"
CLIPS_DIR = ROOT / "demo" / "clips"

RTF_TARGET = 0.02
RSS_TARGET_MB = 250.0
SIZE_RATIO_TARGET = 1.0 / 3.0
MB = 1e6

__all__ = ["machine_info", "measure_latency", "measure_node_memory", "model_sizes",
           "build_rows", "render_markdown", "main"]


class BenchError(RuntimeError):
    """A prerequisite is missing (model, clips); the message says how to get it."""


def _log(msg: str) -> None:
    print(f"bench: {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------
# inputs
# --------------------------------------------------------------------------------------


def check_model(model: Path) -> None:
    """Fail early, with a clear message, when the model bundle is incomplete.

    Parameters
    ----------
    model : Path
        The ``.tflite`` file; its ``.json`` metadata must be next to it.

    Raises
    ------
    BenchError
        If the ``.tflite`` or the ``.json`` file is missing.
    """
    if not model.is_file():
        raise BenchError(f"model not found: {model}\n"
                         "  build it with `make export-tflite` (trains the default embedder "
                         "and writes models/asd_default.{tflite,json}), or pass --model")
    meta = model.with_suffix(".json")
    if not meta.is_file():
        raise BenchError(f"model metadata not found: {meta} (every .tflite needs its .json; "
                         "re-export the model with `make export-tflite`)")


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


# --------------------------------------------------------------------------------------
# 1. latency on one core
# --------------------------------------------------------------------------------------


def _stats_ms(seconds: Sequence[float]) -> dict[str, float]:
    x = np.asarray(seconds, dtype=np.float64) * 1e3
    return {"median_ms": float(np.median(x)), "p95_ms": float(np.percentile(x, 95)),
            "min_ms": float(x.min()), "max_ms": float(x.max()), "mean_ms": float(x.mean())}


def measure_latency(model: Path, clips: Sequence[Path], runs: int = 30, warmup: int = 5,
                    cpu: int | None = None) -> dict[str, Any]:
    """Time the int8 embedder on one pinned core with a one-thread interpreter.

    The previous CPU affinity is restored before returning, so that processes started
    later (the node) are not pinned.

    Parameters
    ----------
    model : Path
        The int8 ``.tflite`` file.
    clips : sequence of Path
        Audio clips, cycled through for the warm-up and timed runs.
    runs : int
        Timed runs.
    warmup : int
        Untimed runs first.
    cpu : int, optional
        CPU to pin to; default the lowest one the process may run on.

    Returns
    -------
    dict
        ``frontend``, ``inference`` and ``total`` statistics in ms (median, p95, min, max,
        mean), ``rtf`` (median total / clip length), the raw ``runs_ms`` and the set-up
        (``cpu``, ``pinned``, ``num_threads``, ``clip_seconds``, ...).
    """
    from edge.audio import load_audio
    from edge.frontend import asd_features
    from edge.model import load_bundle

    pinned = hasattr(os, "sched_setaffinity")
    old_affinity = os.sched_getaffinity(0) if pinned else None
    if pinned:
        cpu = min(old_affinity) if cpu is None else cpu
        os.sched_setaffinity(0, {cpu})
    try:
        embedder = load_bundle(model, num_threads=1)
        fe = embedder.frontend
        waves = [load_audio(p, fe.sample_rate) for p in clips]
        t_fe, t_inf, t_tot = [], [], []
        for i in range(warmup + runs):
            y = waves[i % len(waves)]
            t0 = time.perf_counter()
            spec, dft = asd_features(y, fe)
            t1 = time.perf_counter()
            emb = embedder.embed_features(spec, dft)
            t2 = time.perf_counter()
            if not np.all(np.isfinite(emb)):
                raise RuntimeError(f"non-finite embedding for {clips[i % len(clips)]}")
            if i >= warmup:
                t_fe.append(t1 - t0)
                t_inf.append(t2 - t1)
                t_tot.append(t2 - t0)
    finally:
        if pinned:
            os.sched_setaffinity(0, old_affinity)
    total = _stats_ms(t_tot)
    return {
        "cpu": cpu, "pinned": pinned, "num_threads": 1, "warmup_runs": warmup, "timed_runs": runs,
        "distinct_clips": len(clips), "clip_seconds": fe.clip_seconds,
        "model_id": embedder.model_id,
        "frontend": _stats_ms(t_fe), "inference": _stats_ms(t_inf), "total": total,
        "rtf": total["median_ms"] / 1e3 / fe.clip_seconds,
        "rtf_p95": total["p95_ms"] / 1e3 / fe.clip_seconds,
        "runs_ms": {"frontend": [round(t * 1e3, 4) for t in t_fe],
                    "inference": [round(t * 1e3, 4) for t in t_inf],
                    "total": [round(t * 1e3, 4) for t in t_tot]},
    }


# --------------------------------------------------------------------------------------
# 2. node memory
# --------------------------------------------------------------------------------------


def read_status_kb(pid: int) -> dict[str, int]:
    """``VmRSS`` and ``VmHWM`` of a process in kB (KiB) from ``/proc/<pid>/status``.

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
        Paths of mapped ai-edge-litert / tflite_runtime files.
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
        if "/ai_edge_litert/" in path or "/tflite_runtime/" in path:
            rt.add(path)
        elif ("/site-packages/tensorflow/" in path or "/dist-packages/tensorflow/" in path
              or name.startswith("libtensorflow") or name.startswith("_pywrap_tensorflow")):
            tf.add(path)
    return tf, rt


def _write_node_config(path: Path, broker, model: Path, calibration: Path,
                       replay: Sequence[Path]) -> None:
    import yaml

    doc = yaml.safe_load(DEFAULT_CONFIG.read_text())
    doc["node"]["id"] = "bench"
    doc["mqtt"].update(host=broker.host, port=int(broker.port))
    doc["asd"].update(model=str(model.resolve()), calibration=str(calibration))
    doc["audio"].update(files=[str(p.resolve()) for p in replay], realtime=True)
    doc["logging"]["level"] = "INFO"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))


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


def _tail(path: Path, n: int = 1500) -> str:
    try:
        return path.read_text(errors="replace")[-n:]
    except OSError:
        return ""


def measure_node_memory(model: Path, calibration_clips: Sequence[Path],
                        replay_clips: Sequence[Path], seconds: float = 20.0,
                        interval: float = 0.5) -> dict[str, Any]:
    """Calibrate and run a node against a private broker and sample its memory.

    Parameters
    ----------
    model : Path
        The int8 ``.tflite`` file.
    calibration_clips : sequence of Path
        Normal-operation clips for ``python -m calibration record --from``.
    replay_clips : sequence of Path
        Clips the node replays at real-time speed (``audio.files``, ``audio.realtime``).
    seconds : float
        How long to sample after starting the node.
    interval : float
        Sampling period in seconds.

    Returns
    -------
    dict
        ``peak_rss_mb`` (largest sampled VmRSS), ``vmhwm_mb`` (VmHWM at the last sample
        before stopping), ``samples``, ``windows_scored``, ``tensorflow_loaded`` with
        ``tensorflow_files``, ``tflite_runtime_files``, ``calibration_seconds``,
        ``exit`` (how the node was stopped and its exit status).

    Raises
    ------
    RuntimeError
        If mosquitto is missing, calibration fails or the node exits with an error; the
        message quotes the log.
    """
    from demo.harness import MosquittoBroker

    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with tempfile.TemporaryDirectory(prefix="hark-bench-") as tmp, MosquittoBroker() as broker:
        tmp = Path(tmp)
        cfg = tmp / "node.yaml"
        cal = tmp / "asd_calibration.npz"
        _write_node_config(cfg, broker, model, cal, replay_clips)

        _log(f"calibrating on {len(calibration_clips)} clip(s)")
        t0 = time.monotonic()
        r = subprocess.run([sys.executable, "-m", "calibration", "record", "--config", str(cfg),
                            "--from", *map(str, calibration_clips), "--quiet"],
                           cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
        cal_seconds = time.monotonic() - t0
        if r.returncode != 0 or not cal.is_file():
            raise RuntimeError(f"calibration record failed (exit {r.returncode}):\n"
                               f"{(r.stdout + r.stderr)[-1500:]}")

        log_path = tmp / "node.log"
        _log(f"running the node for {seconds:g} s (real-time replay of "
             f"{len(replay_clips)} clip(s)) against {broker.url}")
        samples: list[dict[str, float]] = []
        tf_files: set[str] = set()
        rt_files: set[str] = set()
        hwm_kb = 0
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
        windows = len(re.findall(r"\bwindow \d+ score ", log_text))
    peak = max(s["rss_mb"] for s in samples)
    return {
        "peak_rss_mb": peak, "vmhwm_mb": round(hwm_kb * 1024 / MB, 2),
        "sampled_seconds": seconds, "interval_s": interval, "samples": samples,
        "windows_scored": windows, "replay_clips": [p.name for p in replay_clips],
        "calibration_clips": [p.name for p in calibration_clips],
        "calibration_seconds": round(cal_seconds, 2),
        "tensorflow_loaded": bool(tf_files), "tensorflow_files": sorted(tf_files),
        "tflite_runtime_files": sorted(rt_files),
        "exit": {"status": rc, "stopped_by": how, "exited_early": exited_early},
    }


# --------------------------------------------------------------------------------------
# 3. model sizes, 4. machine
# --------------------------------------------------------------------------------------


def model_sizes(model: Path) -> dict[str, Any]:
    """int8 file size against the float32 size recorded in the bundle metadata.

    Returns
    -------
    dict
        ``int8_bytes``, ``float_bytes`` (None when the metadata lacks
        ``float_tflite_size_bytes``), ``ratio`` (int8 / float32 or None), ``metadata_size_bytes``.
    """
    meta = json.loads(model.with_suffix(".json").read_text())
    int8 = model.stat().st_size
    flt = meta.get("float_tflite_size_bytes")
    return {"int8_bytes": int8, "float_bytes": flt,
            "ratio": (int8 / flt) if flt else None,
            "metadata_size_bytes": meta.get("size_bytes"), "model_id": meta.get("model_id")}


def _version(dist: str) -> str:
    from importlib import metadata

    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


def machine_info() -> dict[str, Any]:
    """CPU model, core count, Python / ai-edge-litert / NumPy versions, date and git commit."""
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
            "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "git_commit": commit}


# --------------------------------------------------------------------------------------
# report
# --------------------------------------------------------------------------------------


def _status(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def build_rows(results: dict[str, Any]) -> list[dict[str, str]]:
    """The report table: one ``{metric, value, target, status}`` row per measurement.

    Status is PASS/FAIL against a target, ``info`` for context, ``ERROR`` for a
    measurement that could not be taken (its message is in ``results["errors"]``).
    """
    rows: list[dict[str, str]] = []

    def row(metric, value, target="", status="info"):
        rows.append({"metric": metric, "value": value, "target": target, "status": status})

    lat = results.get("latency")
    if lat:
        where = f"CPU {lat['cpu']}, 1 thread" if lat["pinned"] else "unpinned, 1 thread"
        for key, name in (("frontend", "frontend (asd_features)"),
                          ("inference", "inference (int8 TFLite)"),
                          ("total", "total")):
            s = lat[key]
            row(f"latency per {lat['clip_seconds']:g} s clip, {name}, median / p95 ({where})",
                f"{s['median_ms']:.2f} / {s['p95_ms']:.2f} ms")
        row("real-time factor (median total / clip length)",
            f"{lat['rtf']:.4f} (p95 {lat['rtf_p95']:.4f})", f"<= {RTF_TARGET:g}",
            _status(lat["rtf"] <= RTF_TARGET))
    else:
        row("real-time factor (median total / clip length)", "not measured",
            f"<= {RTF_TARGET:g}", "ERROR")

    mem = results.get("memory")
    if mem:
        row("node peak RSS (VmRSS sampled every "
            f"{mem['interval_s']:g} s for {mem['sampled_seconds']:g} s)",
            f"{mem['peak_rss_mb']:.1f} MB", f"<= {RSS_TARGET_MB:g} MB",
            _status(mem["peak_rss_mb"] <= RSS_TARGET_MB))
        row("node VmHWM (kernel peak RSS) at the end", f"{mem['vmhwm_mb']:.1f} MB",
            f"<= {RSS_TARGET_MB:g} MB", _status(mem["vmhwm_mb"] <= RSS_TARGET_MB))
        row("node loaded TensorFlow", "yes" if mem["tensorflow_loaded"] else "no", "no",
            _status(not mem["tensorflow_loaded"]))
        row("windows scored by the node while sampled", str(mem["windows_scored"]))
    else:
        status = "SKIPPED" if results.get("memory_skipped") else "ERROR"
        row("node peak RSS", "not measured", f"<= {RSS_TARGET_MB:g} MB", status)
        row("node loaded TensorFlow", "not measured", "no", status)

    sz = results.get("sizes")
    if sz:
        row("int8 model file size", f"{sz['int8_bytes'] / MB:.2f} MB")
        if sz["float_bytes"]:
            row("float32 model size (bundle metadata)", f"{sz['float_bytes'] / MB:.2f} MB")
            row("int8 / float32 size ratio", f"{sz['ratio']:.3f}", "<= 0.333",
                _status(sz["ratio"] <= SIZE_RATIO_TARGET))
        else:
            row("int8 / float32 size ratio", "unknown (no float_tflite_size_bytes in the "
                "metadata)", "<= 0.333", "ERROR")
    return rows


def render_markdown(results: dict[str, Any], rows: list[dict[str, str]]) -> str:
    """The Markdown report: results table, machine table, notes and errors."""
    m = results["machine"]
    out = ["# Benchmark", "",
           f"{m['date']} on {m['cpu_model']} ({m['cpus']} CPUs), commit "
           f"{m['git_commit'] or 'unknown'}; `python -m bench`.", "",
           "| metric | value | target | status |", "|---|---|---|---|"]
    for r in rows:
        out.append(f"| {r['metric']} | {r['value']} | {r['target'] or '—'} | {r['status']} |")
    out += ["", "## Machine", "", "| item | value |", "|---|---|",
            f"| CPU model | {m['cpu_model']} |", f"| CPUs | {m['cpus']} ({m['machine']}) |",
            f"| kernel | {m['kernel']} |", f"| Python | {m['python']} |",
            f"| ai-edge-litert | {m['ai_edge_litert']} |", f"| NumPy | {m['numpy']} |",
            f"| date (UTC) | {m['date']} |", ""]
    notes = []
    lat = results.get("latency")
    if lat:
        notes.append(f"Latency: {lat['warmup_runs']} warm-up + {lat['timed_runs']} timed runs "
                     f"over {lat['distinct_clips']} demo clips, process pinned to one CPU, "
                     "interpreter `num_threads=1`; float32 latency is not measured (only the "
                     "int8 model ships).")
    mem = results.get("memory")
    if mem:
        rt = sorted({os.path.basename(p) for p in mem["tflite_runtime_files"]})
        notes.append(f"Node: calibrated on {len(mem['calibration_clips'])} clips "
                     f"({mem['calibration_seconds']:g} s), then replayed "
                     f"{', '.join(mem['replay_clips'])} in real time against a private "
                     f"mosquitto; stopped by {mem['exit']['stopped_by']}, exit status "
                     f"{mem['exit']['status']}. TFLite runtime mapped: "
                     f"{', '.join(rt) if rt else 'none found'}.")
        if mem["tensorflow_files"]:
            notes.append("TensorFlow files mapped by the node: "
                         + ", ".join(mem["tensorflow_files"]))
    notes.append("MB = 10^6 bytes.")
    out += ["## Notes", ""] + [f"- {n}" for n in notes]
    if results.get("errors"):
        out += ["", "## Errors", ""]
        for name, msg in results["errors"].items():
            out += [f"- **{name}**:", "", "```", msg.rstrip(), "```"]
    return "\n".join(out) + "\n"


# --------------------------------------------------------------------------------------
# main
# --------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark and write the report.

    Returns
    -------
    int
        0 when every measurement was taken (PASS or FAIL), 1 when one could not be taken,
        2 when the model or the demo clips are missing.
    """
    p = argparse.ArgumentParser(prog="python -m bench",
                                description="Measure latency, real-time factor, node memory "
                                            "and model sizes; write OUT/bench.md and OUT/bench.json.")
    p.add_argument("--out", default="reports", help="report folder (default: reports)")
    p.add_argument("--clips", type=int, default=30,
                   help="timed clip embeddings for the latency (default 30)")
    p.add_argument("--warmup", type=int, default=5, help="untimed warm-up runs (default 5)")
    p.add_argument("--cpu", type=int, help="CPU to pin the latency runs to (default: the "
                                           "lowest allowed one)")
    p.add_argument("--node-seconds", type=float, default=20.0,
                   help="how long to sample the running node's memory (default 20)")
    p.add_argument("--model", default=str(DEFAULT_MODEL), help="int8 .tflite model "
                                                               "(default: the shipped one)")
    p.add_argument("--skip-node", action="store_true",
                   help="skip the node memory measurement (no broker needed)")
    args = p.parse_args(argv)
    if args.clips < 1 or args.warmup < 0 or args.node_seconds <= 0:
        p.error("--clips must be >= 1, --warmup >= 0, --node-seconds > 0")

    from edge.fileio import atomic_write_bytes, atomic_write_json

    model = Path(args.model).resolve()
    try:
        check_model(model)
        clips = demo_clips()
    except BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    results: dict[str, Any] = {"schema": 1, "machine": machine_info(), "model": str(model),
                               "targets": {"rtf_max": RTF_TARGET, "node_rss_max_mb": RSS_TARGET_MB,
                                           "int8_over_float_max": SIZE_RATIO_TARGET},
                               "errors": {}}
    t_start = time.monotonic()

    _log(f"latency: {args.warmup} warm-up + {args.clips} timed runs on one core")
    try:
        results["latency"] = measure_latency(model, clips["all"], args.clips, args.warmup,
                                             args.cpu)
    except Exception as exc:  # report it, keep measuring the rest
        results["errors"]["latency"] = f"{type(exc).__name__}: {exc}"

    if args.skip_node:
        results["memory_skipped"] = True
    else:
        try:
            results["memory"] = measure_node_memory(model, clips["calibration"], clips["replay"],
                                                    args.node_seconds)
        except Exception as exc:
            results["errors"]["node memory"] = f"{type(exc).__name__}: {exc}"

    try:
        results["sizes"] = model_sizes(model)
    except Exception as exc:
        results["errors"]["model sizes"] = f"{type(exc).__name__}: {exc}"

    results["bench_seconds"] = round(time.monotonic() - t_start, 1)
    rows = build_rows(results)
    results["rows"] = rows
    md = render_markdown(results, rows)
    out = Path(args.out)
    atomic_write_bytes(out / "bench.md", md.encode())
    atomic_write_json(out / "bench.json", results)
    print(md, end="")
    _log(f"wrote {out / 'bench.md'} and {out / 'bench.json'} in {results['bench_seconds']:g} s")
    return 1 if results["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
