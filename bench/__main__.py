"""``python -m bench [--out reports] [--clips N]``: latency, real-time factor, node memory,
model sizes, keyword-spotting embedder real-time factor, DTW speed and MQTT load (50 nodes,
one broker), written to ``reports/bench.md`` and ``reports/bench.json``.

Measurements, each checked against its target:

1. **int8 ASD embedding latency on one core.** The process is pinned to one CPU
   (:func:`os.sched_setaffinity`) and the interpreter runs with ``num_threads=1``. The
   frontend (:func:`edge.frontend.asd_features`) and the inference
   (:meth:`edge.model.AsdEmbedder.embed_features`) are timed separately over a few
   warm-up runs and ``--clips`` timed runs across the demo clips. The real-time factor is
   the median total time divided by the clip length (target ``<= 0.02``).
2. **Resident memory of the running node, anomaly detection and keyword spotting both
   active** (both models loaded). A private mosquitto broker is started, the node is
   calibrated on the demo calibration clips (``python -m calibration record``), the demo
   keywords are enrolled into the config's ``kws.keywords`` as an installer would
   (``python -m calibration enroll --config CFG --keyword stop --from
   demo/clips/kws/stop_shot_*.flac``, then ``computer``), and ``python -m edge run`` replays the
   demo keyword stream (``demo/clips/kws/stream.flac``) followed by the demo machine test
   clips at real-time speed while its ``VmRSS`` is sampled every 0.5 s from
   ``/proc/<pid>/status``; ``VmHWM`` (the kernel's peak) is read as well (target
   ``<= 250 MB``). The node log gives the windows scored and the keyword events published.
   ``/proc/<pid>/maps`` tells whether the node ever loaded TensorFlow (it must not).
3. **Model sizes.** The int8 ``.tflite`` file against the float32 size recorded at export
   time (``float_tflite_size_bytes`` in the bundle metadata; target: int8 at most a third).
4. **int8 TACos embedder real-time factor on one core** (:func:`measure_kws_embedder`;
   ``--skip-kws``, ``--kws-only``). The process is pinned to one CPU as for 1., the
   interpreter runs with ``num_threads=1``. The demo keyword stream (21.7 s of real speech)
   is fed in 0.1 s blocks through :meth:`edge.model.KwsEmbedder.stream` (``push``, then
   ``flush``): streaming log-Mel frontend, int8 segment embeddings and their per-frame
   averaging, timed together after a warm-up round, median of ``--kws-repeats`` rounds in
   which all the KWS embedder measurements run interleaved. Real-time factor =
   compute seconds / audio seconds, at the configured ``kws.segment_hop`` of
   ``firmware_config/default.yaml`` (target ``<= 0.1``) and at hop 1 (the thesis), with ms
   per segment. The whole node-side path (:class:`edge.node.KeywordListener`: embedding
   plus :class:`edge.kws.KeywordSpotter`, the demo keywords enrolled with ``python -m
   calibration enroll``) is timed the same way, and its detections are checked against the
   stream's truth (``stream.json``).
5. **Keyword-spotting DTW backend on one core** (:func:`measure_kws_dtw`; ``--skip-kws``,
   ``--kws-only``). Synthetic but full size: 20 keywords x 5 shots of 30-60 frames, D = 128
   random unit vectors, a 60 s stream of 16 ms frames (3750) with one noisy copy of a shot
   of every keyword inserted. (a) :class:`edge.kws.KeywordSpotter` fed 4 frames per push,
   cost columns, DTW, runs and post-processing included: seconds of audio per second of
   compute (target ``>= 500x``); (b) the bare :meth:`edge.dtw.StreamingSubsequenceDTW.update`
   (one frame per call) and ``update_many`` on precomputed cost columns; (c) the batch
   :func:`edge.dtw.subsequence_dtw` against ``librosa.sequence.dtw(subseq=True,
   step_sizes_sigma=[[1, 1], [1, 2], [2, 1]], backtrack=False)`` on the same 100 cost
   matrices (M x 3750), after a warm-up, median of repeats, with a check that the
   accumulated costs are identical (``np.array_equal``; target: ours at least as fast).
6. **MQTT load: simulated nodes -> one mosquitto on loopback**
   (:func:`bench.mqtt_load.run_mqtt_load`; ``--load-nodes``, ``--load-seconds``,
   ``--load-rate``, ``--load-saturation-seconds``, ``--load-processes``, ``--skip-load``,
   ``--load-only``).
   ``--load-nodes`` (50) simulated nodes, each with the node's real delivery path (its own
   on-disk :class:`edge.spool.Spool` and :class:`edge.mqtt.MqttPublisher`: QoS 1, one event
   in flight, deleted after the PUBACK) and payloads built by ``Node.anomaly_event``, by
   default five per worker process (``--load-processes``), publish to a private mosquitto (with
   ``max_queued_messages 100000``, so that the broker does not drop messages to a
   subscriber that falls behind) while a subscriber records every ``event/#`` message.
   (a) Paced: ``--load-rate`` (10) events/s per node, 20x a real node, for
   ``--load-seconds`` (60); (b) saturation: for ``--load-saturation-seconds`` (10; 0
   skips it) every node as fast as its delivery path goes (20 events kept spooled). Target,
   for both: zero loss (every node's ``seq`` 1..last received, none out of order);
   reported: throughput, end-to-end latency (payload ``ts`` to arrival) p50/p95/p99,
   duplicates, the largest spool depth and the CPU of broker, publishers and subscriber.
7. **Machine information**: CPU model, Python, ai-edge-litert, NumPy and Numba versions, date.

Only the demo clips shipped in ``demo/clips`` (and ``demo/clips/kws``) and the shipped
models are used, so the benchmark runs from a fresh clone. Everything the measurements
write (configs, spools, calibrations, broker files) goes to temporary folders. Missed
targets are reported as FAIL but do not change the exit status; the exit status is 2 when a
model or the clips are missing and 1 when a measurement could not be taken (the report is
still written).

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
DEFAULT_KWS_MODEL = ROOT / "models" / "kws_default.tflite"
DEFAULT_CONFIG = ROOT / "firmware_config" / "default.yaml"
CLIPS_DIR = ROOT / "demo" / "clips"
KWS_CLIPS_DIR = CLIPS_DIR / "kws"
KWS_DEMO_KEYWORDS = ("stop", "computer")  # enrolled in this order, as the demo does
KWS_MATCH_COLLAR_S = 0.25  # onset and offset tolerance when checking detections

RTF_TARGET = 0.02
RSS_TARGET_MB = 250.0
SIZE_RATIO_TARGET = 1.0 / 3.0
KWS_XRT_TARGET = 500.0  # seconds of audio per second of compute
KWS_BATCH_RATIO_TARGET = 1.0  # librosa time / ours
KWS_RTF_TARGET = 0.1  # TACos embedder at the configured segment hop, compute s / audio s
LOAD_LOST_TARGET = 0  # MQTT load: events lost or out of order
MB = 1e6

__all__ = ["machine_info", "measure_latency", "measure_node_memory", "model_sizes",
           "kws_demo_clips", "enroll_demo_keywords", "measure_kws_embedder",
           "match_keyword_events", "measure_kws_dtw", "build_rows", "render_markdown", "main"]


class BenchError(RuntimeError):
    """A prerequisite is missing (model, clips); the message says how to get it."""


def _pin_to_one_cpu(cpu: int | None):
    """Pin this process to one CPU (default: the lowest allowed one).

    Returns ``(cpu, pinned, previous affinity)``; restore with
    ``os.sched_setaffinity(0, previous)`` when ``pinned``.
    """
    pinned = hasattr(os, "sched_setaffinity")
    old_affinity = os.sched_getaffinity(0) if pinned else None
    if pinned:
        cpu = min(old_affinity) if cpu is None else cpu
        os.sched_setaffinity(0, {cpu})
    return cpu, pinned, old_affinity


def _log(msg: str) -> None:
    print(f"bench: {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------
# inputs
# --------------------------------------------------------------------------------------


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
        how = ("it ships with the repository as models/kws_default.{tflite,json}; rebuild it "
               "with `python -m trainer train-kws`, or pass --kws-model")
        redo = "`python -m trainer train-kws`"
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


def kws_demo_clips(clips_dir: Path = KWS_CLIPS_DIR) -> dict[str, Any]:
    """The keyword-spotting demo clips.

    Parameters
    ----------
    clips_dir : Path
        Folder with ``stream.flac``, its truth ``stream.json`` and ``<keyword>_shot_*.flac``.

    Returns
    -------
    dict
        ``stream`` (Path), ``truth`` (Path of ``stream.json``) and ``shots`` (keyword ->
        sorted shot paths, for the keywords of :data:`KWS_DEMO_KEYWORDS` in that order).

    Raises
    ------
    BenchError
        If the stream, its truth or a keyword's shots are missing.
    """
    stream, truth = clips_dir / "stream.flac", clips_dir / "stream.json"
    shots = {kw: sorted(clips_dir.glob(f"{kw}_shot_*.flac")) for kw in KWS_DEMO_KEYWORDS}
    missing = [p.name for p in (stream, truth) if not p.is_file()]
    missing += [f"{kw}_shot_*.flac" for kw, paths in shots.items() if not paths]
    if missing:
        raise BenchError(f"keyword-spotting demo clips missing in {clips_dir}: "
                         f"{', '.join(missing)} (they ship with the repository: is the "
                         "checkout complete?)")
    return {"stream": stream, "truth": truth, "shots": shots}


def _rel(path: Path) -> str:
    """``path`` relative to the repository root when it lies inside (as typed by hand)."""
    try:
        return str(Path(path).resolve().relative_to(ROOT))
    except ValueError:
        return str(path)


def enroll_demo_keywords(config: Path, shots: dict[str, Sequence[Path]],
                         env: dict[str, str] | None = None) -> dict[str, Any]:
    """Enroll keywords into ``config``'s ``kws.keywords`` with the installer's command.

    Runs ``python -m calibration enroll --config CONFIG --keyword KW --from SHOTS...`` once
    per keyword, in the order of ``shots``, from the repository root.

    Parameters
    ----------
    config : Path
        Node config YAML (its ``kws.model`` and ``kws.keywords`` are used).
    shots : dict of str -> sequence of Path
        Shot recordings per keyword.
    env : dict, optional
        Environment of the commands.

    Returns
    -------
    dict
        ``keywords_file``, ``enrollment_id``, ``thresholds`` and ``threshold_sources`` per
        keyword (from the last command's JSON output), ``shots`` per keyword, ``commands``
        and ``seconds`` (wall-clock time of all commands).

    Raises
    ------
    RuntimeError
        A command failed; the message quotes its output.
    """
    t0 = time.monotonic()
    out: dict[str, Any] = {}
    commands = []
    for kw, paths in shots.items():
        cmd = [sys.executable, "-m", "calibration", "enroll", "--config", str(config),
               "--keyword", kw, "--from", *map(_rel, paths)]
        commands.append(" ".join(["python", *cmd[1:]]))
        r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
        if r.returncode != 0:
            raise RuntimeError(f"calibration enroll --keyword {kw} failed (exit {r.returncode}):"
                               f"\n{(r.stdout + r.stderr)[-1500:]}")
        try:
            out = json.loads(r.stdout[r.stdout.index("{"):])
        except ValueError as exc:
            raise RuntimeError(f"calibration enroll --keyword {kw}: unreadable output ({exc}):"
                               f"\n{r.stdout[-1500:]}") from exc
    enrolled = out.get("enrolled", {})
    return {"keywords_file": out.get("keywords"), "enrollment_id": out.get("enrollment_id"),
            "model_id": out.get("model_id"),
            "thresholds": {k: v.get("threshold") for k, v in enrolled.items()},
            "threshold_sources": {k: v.get("threshold_source") for k, v in enrolled.items()},
            "shots": {k: len(v) for k, v in shots.items()}, "commands": commands,
            "seconds": round(time.monotonic() - t0, 2)}


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

    cpu, pinned, old_affinity = _pin_to_one_cpu(cpu)
    try:
        embedder = load_bundle(model, num_threads=1)
        fe = embedder.frontend
        waves = [load_audio(p, fe.sample_rate) for p in clips]
        t_fe, t_inf, t_tot = [], [], []
        for i in range(warmup + runs):
            y = waves[i % len(waves)]
            t0 = time.perf_counter()
            feats = asd_features(y, fe)
            t1 = time.perf_counter()
            emb = embedder.embed_features(feats)
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
                       replay: Sequence[Path], kws_model: Path = DEFAULT_KWS_MODEL) -> Path:
    """The default config with the bench's broker, models, artifacts and replay; both
    listeners enabled. Returns the keywords file it points to (``kws.keywords``), next to
    the calibration."""
    import yaml

    keywords = Path(calibration).with_name("kws_keywords.npz")
    doc = yaml.safe_load(DEFAULT_CONFIG.read_text())
    doc["node"]["id"] = "bench"
    doc["spool"]["path"] = str(path.with_name("spool.sqlite"))
    if broker is not None:
        doc["mqtt"].update(host=broker.host, port=int(broker.port))
    doc["asd"].update(enabled=True, model=str(model.resolve()), calibration=str(calibration))
    doc["kws"].update(enabled=True, model=str(Path(kws_model).resolve()), keywords=str(keywords))
    doc["audio"].update(files=[str(p.resolve()) for p in replay], realtime=True)
    doc["logging"]["level"] = "INFO"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
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


def _tail(path: Path, n: int = 1500) -> str:
    try:
        return path.read_text(errors="replace")[-n:]
    except OSError:
        return ""


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
        config's ``kws.keywords`` before the node starts (:func:`enroll_demo_keywords`).
        Without it the keyword listener has no keywords and stays idle.

    Returns
    -------
    dict
        ``peak_rss_mb`` (largest sampled VmRSS), ``vmhwm_mb`` (VmHWM at the last sample
        before stopping), ``samples``, ``windows_scored``, ``kws_active`` (the node's log
        says the keyword listener runs), ``keyword_events`` (keyword, onset, offset in
        stream seconds, from the log), ``enrollment``, ``tensorflow_loaded`` with
        ``tensorflow_files``, ``tflite_runtime_files``, ``calibration_seconds``,
        ``exit`` (how the node was stopped and its exit status).

    Raises
    ------
    RuntimeError
        If mosquitto is missing, calibration or enrollment fails or the node exits with an
        error; the message quotes the log.
    """
    from demo.harness import MosquittoBroker

    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with tempfile.TemporaryDirectory(prefix="hark-bench-") as tmp, MosquittoBroker() as broker:
        tmp = Path(tmp)
        cfg = tmp / "node.yaml"
        cal = tmp / "asd_calibration.npz"
        _write_node_config(cfg, broker, model, cal, replay_clips, kws_model)
        enrollment = None
        if kws_shots:
            _log(f"enrolling keywords {', '.join(kws_shots)} (python -m calibration enroll)")
            enrollment = enroll_demo_keywords(cfg, kws_shots, env)

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
        kws_active = bool(re.search(r": keyword model \S+, keywords ", log_text))
        events = [{"keyword": k, "onset_s": float(a), "offset_s": float(b)} for k, a, b in
                  re.findall(r"\bkeyword '([^']*)' ([\d.]+)-([\d.]+) s cost ", log_text)]
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
        "exit": {"status": rc, "stopped_by": how, "exited_early": exited_early},
    }


# --------------------------------------------------------------------------------------
# 4. int8 TACos embedder real-time factor on one core
# --------------------------------------------------------------------------------------


def load_kws_truth(path: Path) -> list[dict[str, Any]]:
    """The keyword events of a demo stream's ``.json`` (keyword, onset, offset in s)."""
    doc = json.loads(Path(path).read_text())
    return [{"keyword": e["keyword"], "onset_s": float(e["onset"]),
             "offset_s": float(e["offset"])} for e in doc["keywords"]]


def match_keyword_events(detections: Sequence[dict[str, Any]],
                         truth: Sequence[dict[str, Any]],
                         collar: float = KWS_MATCH_COLLAR_S) -> dict[str, int]:
    """Pair detections with true events: same keyword, onset and offset within ``collar``.

    Each detection pairs with at most one true event (greedy, in order).

    Returns
    -------
    dict
        ``truth`` (true events), ``found`` (true events with a detection),
        ``detections`` and ``false`` (detections paired with no true event).
    """
    used: set[int] = set()
    found = 0
    for t in truth:
        for i, d in enumerate(detections):
            if (i not in used and d["keyword"] == t["keyword"]
                    and abs(d["onset_s"] - t["onset_s"]) <= collar
                    and abs(d["offset_s"] - t["offset_s"]) <= collar):
                used.add(i)
                found += 1
                break
    return {"truth": len(truth), "found": found, "detections": len(detections),
            "false": len(detections) - len(used)}


def _write_kws_config(path: Path, kws_model: Path, keywords: Path) -> None:
    """The default config with absolute model paths, one interpreter thread and the
    keywords file in ``keywords`` (anomaly detection is not used by the KWS path)."""
    import yaml

    doc = yaml.safe_load(DEFAULT_CONFIG.read_text())
    doc["node"]["id"] = "bench"
    doc["spool"]["path"] = str(path.with_name("spool.sqlite"))
    doc["asd"].update(model=str(DEFAULT_MODEL.resolve()),
                      calibration=str(Path(keywords).with_name("asd_calibration.npz")))
    doc["kws"].update(enabled=True, model=str(Path(kws_model).resolve()), keywords=str(keywords),
                      num_threads=1)
    doc["logging"]["level"] = "WARNING"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))


def measure_kws_embedder(kws_model: Path, stream: Path, truth: Path,
                         shots: dict[str, Sequence[Path]], repeats: int = 5, warmup: int = 1,
                         block_seconds: float = 0.1, extra_hops: Sequence[int] = (1,),
                         cpu: int | None = None) -> dict[str, Any]:
    """Real-time factor of the int8 TACos embedder and of the node's whole KWS path.

    The keywords of ``shots`` are first enrolled with ``python -m calibration enroll`` into
    a temporary copy of the default config (at its ``kws.segment_hop``). Then, with the
    process pinned to one CPU (previous affinity restored) and one interpreter thread, the
    real speech ``stream`` is fed in ``block_seconds`` blocks:

    * through :meth:`edge.model.KwsEmbedder.stream` (``push`` per block, then ``flush``:
      streaming log-Mel, int8 segment embeddings and their per-frame averaging), at the
      configured segment hop and at every hop of ``extra_hops``;
    * through the streaming frontend alone (:class:`edge.frontend.KwsStreamFrontend`);
    * through :class:`edge.node.KeywordListener` built from that config, as the node does
      (embedding plus :class:`edge.kws.KeywordSpotter` with the enrolled keywords), its
      detections checked against ``truth``.

    Objects are built outside the timed region; after ``warmup`` untimed rounds (Numba
    compilation or cache load, interpreter warm-up) the measurements run interleaved, one of
    each per round, for ``repeats`` rounds (load changes on a shared machine hit them alike);
    each is the median of its runs.

    Parameters
    ----------
    kws_model : Path
        The int8 TACos ``.tflite`` file.
    stream : Path
        Real speech recording with keywords.
    truth : Path
        Its ``.json`` with the keyword events.
    shots : dict of str -> sequence of Path
        Keyword -> shot recordings to enroll.
    repeats, warmup : int
    block_seconds : float
        Audio pushed per call (the node's ``audio.block_seconds``).
    extra_hops : sequence of int
        Segment hops measured besides the configured one (1 = the thesis).
    cpu : int, optional
        CPU to pin to; default the lowest allowed one.

    Returns
    -------
    dict
        ``configured_hop``; ``embedder`` (one entry per hop: ``segment_hop``, ``segments``,
        ``median_s``, ``rtf``, ``rtf_cpu`` (by thread CPU time), ``ms_per_segment``, runs);
        ``frontend`` (same timing keys); ``node_path`` (same, plus ``detections`` and
        ``match`` against the truth); ``enrollment``; and the set-up (``cpu``, ``pinned``,
        ``audio_seconds``, ``frames``, ...).
    """
    from edge.audio import load_audio
    from edge.frontend import KwsStreamFrontend
    from edge.model import load_bundle
    from edge.node import KeywordListener
    from firmware_config.schema import load_config

    truth_events = load_kws_truth(truth)
    with tempfile.TemporaryDirectory(prefix="hark-bench-kws-") as tmp:
        tmp = Path(tmp)
        cfg_path = tmp / "kws.yaml"
        _write_kws_config(cfg_path, kws_model, tmp / "kws_keywords.npz")
        cfg = load_config(cfg_path)
        hop = int(cfg.kws.segment_hop)
        _log(f"KWS embedder: enrolling {', '.join(shots)} at segment_hop {hop}")
        enrollment = enroll_demo_keywords(cfg_path, shots)  # before pinning: not inherited

        cpu, pinned, old_affinity = _pin_to_one_cpu(cpu)
        try:
            embedders = {h: load_bundle(kws_model, task="kws", num_threads=1, segment_hop=h)
                         for h in dict.fromkeys([hop, *extra_hops])}
            params = embedders[hop].frontend
            sr = params.sample_rate
            if cfg.audio.sample_rate != sr:
                raise RuntimeError(f"audio.sample_rate {cfg.audio.sample_rate} != the model's "
                                   f"{sr}")
            y = load_audio(stream, sr)
            audio_s = len(y) / sr
            bs = int(round(block_seconds * sr))
            blocks = [y[i:i + bs] for i in range(0, len(y), bs)]

            def run_embed(s):
                n = 0
                for b in blocks:
                    n += len(s.push(b))
                e = s.flush()
                if not np.all(np.isfinite(e)):
                    raise RuntimeError("non-finite frame embedding")
                return n + len(e)

            def run_frontend(fe):
                n = sum(len(fe.push(b)) for b in blocks)
                return n + len(fe.flush())

            listener = KeywordListener(cfg)  # as the node builds it, once
            if not listener.active:
                raise RuntimeError(f"no keywords enrolled at {cfg.kws.keywords}")

            def make_listener():
                # a fresh stream on the same (warm) interpreter and spotter, as after the
                # node's start-up
                listener.stream = listener.embedder.stream()
                listener.spotter.reset()
                return listener

            def run_listener(lst):
                dets = []
                for b in blocks:
                    dets += lst.push(b)
                return dets + lst.flush()

            # name -> (make: builds the object, untimed; run: feeds the whole stream)
            tasks = {("hop", h): (emb.stream, run_embed) for h, emb in embedders.items()}
            tasks["frontend"] = (lambda: KwsStreamFrontend(params), run_frontend)
            tasks["node"] = (make_listener, run_listener)
            _log(f"KWS embedder: segment_hop {', '.join(map(str, embedders))}, frontend alone "
                 f"and the node path (KeywordListener), {warmup} warm-up + {repeats} timed "
                 f"runs each, interleaved, over {audio_s:.1f} s of speech")
            wall = {k: [] for k in tasks}
            cpu_t = {k: [] for k in tasks}
            last: dict[Any, Any] = {}
            # round robin: on a shared machine, load changes hit every measurement alike
            for i in range(warmup + repeats):
                for key, (make, run) in tasks.items():
                    obj = make()
                    c0 = time.thread_time()
                    t0 = time.perf_counter()
                    last[key] = run(obj)
                    t1 = time.perf_counter()
                    c1 = time.thread_time()
                    if i >= warmup:
                        wall[key].append(t1 - t0)
                        cpu_t[key].append(c1 - c0)

            def summary(key):
                med, med_cpu = float(np.median(wall[key])), float(np.median(cpu_t[key]))
                return {"median_s": med, "cpu_median_s": med_cpu,
                        "runs_s": [round(t, 5) for t in wall[key]], "rtf": med / audio_s,
                        "rtf_best": min(wall[key]) / audio_s, "rtf_cpu": med_cpu / audio_s}

            res: dict[str, Any] = {
                "cpu": cpu, "pinned": pinned, "num_threads": 1, "configured_hop": hop,
                "model_id": embedders[hop].model_id, "stream": stream.name,
                "audio_seconds": round(audio_s, 3), "block_seconds": block_seconds,
                "frame_seconds": embedders[hop].frame_seconds,
                "segment_frames": params.segment_frames, "warmup_runs": warmup,
                "timed_runs": repeats, "interleaved": True, "enrollment": enrollment,
                "embedder": []}
            for h, emb in embedders.items():
                t = summary(("hop", h))
                frames = int(last[("hop", h)])
                segments = len(emb.segment_starts(frames))
                t.update(segment_hop=h, configured=h == hop, frames=frames, segments=segments,
                         ms_per_segment=t["median_s"] / segments * 1e3,
                         ms_per_segment_cpu=t["cpu_median_s"] / segments * 1e3)
                res["embedder"].append(t)
                res["frames"] = frames
            res["frontend"] = summary("frontend")
            node = summary("node")
            found = [{"keyword": d.keyword, "onset_s": round(float(d.onset_s), 3),
                      "offset_s": round(float(d.offset_s), 3), "cost": round(float(d.cost), 4)}
                     for d in last["node"]]
            node.update(segment_hop=hop, keywords=sorted(shots), detections=found,
                        match=match_keyword_events(found, truth_events),
                        match_collar_s=KWS_MATCH_COLLAR_S)
            res["node_path"] = node
        finally:
            if pinned:
                os.sched_setaffinity(0, old_affinity)
    return res


# --------------------------------------------------------------------------------------
# 5. keyword-spotting DTW backend on one core
# --------------------------------------------------------------------------------------


def _kws_scene(keywords: int, shots: int, frames: int, dim: int, seed: int):
    """Templates (lengths 30-60), a random unit-vector stream, one noisy shot per keyword
    inserted at known, non-overlapping places; returns (templates, stream, thresholds,
    inserted)."""
    from edge.kws import Template

    rng = np.random.default_rng(seed)

    def unit(x):
        return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)

    templates = [Template(f"kw{k:02d}", unit(rng.standard_normal((int(rng.integers(30, 61)),
                                                                  dim))))
                 for k in range(keywords) for _ in range(shots)]
    stream = unit(rng.standard_normal((frames, dim)))
    slot = frames // keywords
    inserted = []
    for k in range(keywords):
        shot = templates[k * shots].features
        start = k * slot + 10
        if start + len(shot) > frames:
            break
        stream[start:start + len(shot)] = unit(shot + 0.02 * rng.standard_normal(shot.shape))
        inserted.append((f"kw{k:02d}", start, start + len(shot)))
    thresholds = {f"kw{k:02d}": 0.3 for k in range(keywords)}
    return templates, stream, thresholds, inserted


def measure_kws_dtw(keywords: int = 20, shots: int = 5, seconds: float = 60.0,
                    frame_seconds: float = 0.016, dim: int = 128, chunk: int = 4,
                    repeats: int = 5, batch_repeats: int = 3, seed: int = 0,
                    cpu: int | None = None) -> dict[str, Any]:
    """Speed of the keyword-spotting DTW backend on one pinned core.

    The Numba kernels are single-threaded; the process is pinned to one CPU for the
    measurement (previous affinity restored). Every timing is preceded by a warm-up call
    (JIT compilation or cache load) and is the median of ``repeats`` runs.

    Parameters
    ----------
    keywords, shots : int
        Templates = ``keywords * shots``, each 30-60 frames (uniform).
    seconds, frame_seconds : float
        Stream length and frame hop: ``round(seconds / frame_seconds)`` frames.
    dim : int
        Embedding dimension ``D``.
    chunk : int
        Frames per :meth:`edge.kws.KeywordSpotter.push`.
    repeats, batch_repeats : int
        Timed runs of the streaming and of the batch measurements.
    seed : int
    cpu : int, optional
        CPU to pin to; default the lowest allowed one.

    Returns
    -------
    dict
        ``spotter`` (median seconds, ``x_realtime``, ``us_per_frame``, detections found),
        ``cost_columns``, ``update`` and ``update_many`` (same keys), ``batch`` (``ours_s``,
        ``librosa_s``, ``ratio`` = librosa / ours, ``identical``; or ``error`` when librosa
        is not installed) and the set-up.
    """
    from edge.dtw import StreamingSubsequenceDTW, cosine_cost_columns, cosine_cost_matrix, \
        subsequence_dtw
    from edge.kws import KeywordSpotter

    frames = int(round(seconds / frame_seconds))
    audio_s = frames * frame_seconds
    templates, stream, thresholds, inserted = _kws_scene(keywords, shots, frames, dim, seed)
    lengths = [t.n_frames for t in templates]
    q = np.concatenate([t.features for t in templates])  # unit rows already

    cpu_s: dict[int, float] = {}

    def median_of(fn, n):
        """Median wall-clock seconds of n runs after a warm-up, and the runs; the median
        CPU time of the thread is kept aside (``cpu_s``): on a shared machine it excludes
        the time the process was not scheduled."""
        fn()  # warm-up: JIT compilation or cache load, caches
        times, cpu = [], []
        for _ in range(n):
            c0 = time.thread_time()
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
            cpu.append(time.thread_time() - c0)
        cpu_s[id(fn)] = float(np.median(cpu))
        return float(np.median(times)), [round(t, 5) for t in times], cpu_s[id(fn)]

    def speed(sec, runs, cpu):
        return {"median_s": sec, "runs_s": runs, "x_realtime": audio_s / sec,
                "x_realtime_best": audio_s / min(runs), "us_per_frame": sec / frames * 1e6,
                "cpu_median_s": cpu, "x_realtime_cpu": audio_s / cpu}

    cpu, pinned, old_affinity = _pin_to_one_cpu(cpu)
    try:
        found: list = []

        def spot():
            sp = KeywordSpotter(templates, thresholds, frame_seconds)
            out = []
            for s in range(0, frames, chunk):
                out += sp.push(stream[s:s + chunk])
            out += sp.flush()
            found[:] = out

        res: dict[str, Any] = {
            "cpu": cpu, "pinned": pinned, "keywords": keywords, "shots": shots,
            "templates": len(templates), "template_frames_total": int(sum(lengths)),
            "template_frames_min_max": [int(min(lengths)), int(max(lengths))], "dim": dim,
            "frames": frames, "frame_seconds": frame_seconds, "audio_seconds": audio_s,
            "chunk_frames": chunk, "repeats": repeats, "batch_repeats": batch_repeats}
        res["spotter"] = speed(*median_of(spot, repeats))
        hits = sum(any(d.keyword == kw and abs(d.onset_frame - on) <= 2
                       and abs(d.offset_frame - off) <= 2 for d in found)
                   for kw, on, off in inserted)
        res["spotter"].update(detections=len(found), inserted=len(inserted),
                              inserted_found=hits)

        # the spotter's own cost step: cost columns of 4-frame blocks (results dropped as
        # they come, as in the spotter; keeping 3750 columns would time page faults)
        cols = np.concatenate([cosine_cost_columns(stream[s:s + chunk], q)
                               for s in range(0, frames, chunk)])

        def cost_columns():
            for s in range(0, frames, chunk):
                cosine_cost_columns(stream[s:s + chunk], q)

        res["cost_columns"] = speed(*median_of(cost_columns, repeats))

        dtw = StreamingSubsequenceDTW(lengths)

        def per_frame():
            dtw.reset()
            for j in range(frames):
                dtw.update(cols[j])

        def many():
            dtw.reset()
            dtw.update_many(cols)

        res["update"] = speed(*median_of(per_frame, repeats))
        res["update_many"] = speed(*median_of(many, repeats))

        mats = [cosine_cost_matrix(t.features, stream) for t in templates]
        ours: list = []

        def run_ours():
            ours[:] = [subsequence_dtw(C).accumulated_cost for C in mats]

        batch: dict[str, Any] = {"matrices": len(mats), "shape": f"(30..60) x {frames}",
                                 "cells": int(sum(C.size for C in mats))}
        batch["ours_s"], batch["ours_runs_s"], batch["ours_cpu_s"] = median_of(run_ours,
                                                                               batch_repeats)
        try:
            import librosa
        except ImportError as exc:
            batch["error"] = f"librosa not installed ({exc}); pip install '.[dev]'"
        else:
            sigma = np.array([[1, 1], [1, 2], [2, 1]])
            ref: list = []

            def run_librosa():
                ref[:] = [librosa.sequence.dtw(C=C, subseq=True, step_sizes_sigma=sigma,
                                               backtrack=False) for C in mats]

            batch["librosa_s"], batch["librosa_runs_s"], batch["librosa_cpu_s"] = median_of(
                run_librosa, batch_repeats)
            batch["librosa"] = librosa.__version__
            batch["identical"] = all(np.array_equal(a, b) for a, b in zip(ours, ref))
            batch["ratio"] = batch["librosa_s"] / batch["ours_s"]
        batch["ns_per_cell_ours"] = batch["ours_s"] / batch["cells"] * 1e9
        res["batch"] = batch
    finally:
        if pinned:
            os.sched_setaffinity(0, old_affinity)
    return res


# --------------------------------------------------------------------------------------
# 3. model sizes, 7. machine
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
            "numba": _version("numba"),
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

    if not (results.get("kws_only") or results.get("load_only")):
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
            both = mem.get("kws_active")
            what = ("anomaly detection + keyword spotting active, both models loaded"
                    if both else "anomaly detection only: keyword spotting NOT active")
            row(f"node peak RSS ({what}; VmRSS sampled every "
                f"{mem['interval_s']:g} s for {mem['sampled_seconds']:g} s)",
                f"{mem['peak_rss_mb']:.1f} MB", f"<= {RSS_TARGET_MB:g} MB",
                _status(mem["peak_rss_mb"] <= RSS_TARGET_MB))
            row(f"node VmHWM (kernel peak RSS) at the end ({what})",
                f"{mem['vmhwm_mb']:.1f} MB",
                f"<= {RSS_TARGET_MB:g} MB", _status(mem["vmhwm_mb"] <= RSS_TARGET_MB))
            row("node loaded TensorFlow", "yes" if mem["tensorflow_loaded"] else "no", "no",
                _status(not mem["tensorflow_loaded"]))
            row("windows scored by the node while sampled", str(mem["windows_scored"]))
            if "kws_active" in mem:
                row("keyword spotting active in the node (keywords enrolled with `python -m "
                    "calibration enroll`)", "yes" if both else "no", "yes", _status(both))
                m = mem.get("keyword_match")
                row("keyword events published by the node while sampled",
                    str(len(mem["keyword_events"])) + (
                        f" ({m['found']}/{m['truth']} true keywords of {mem['replay_clips'][0]} "
                        f"within {KWS_MATCH_COLLAR_S:g} s, {m['false']} false)" if m else ""))
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
    ke = results.get("kws_embedder")
    if ke:
        where = f"CPU {ke['cpu']}, 1 thread" if ke["pinned"] else "unpinned, 1 thread"
        for e in ke["embedder"]:
            which = "configured" if e["configured"] else (
                "the thesis" if e["segment_hop"] == 1 else "for comparison")
            name = (f"int8 TACos embedder real-time factor, streaming {ke['audio_seconds']:g} s "
                    f"of speech in {ke['block_seconds']:g} s blocks (frontend + embedding), "
                    f"segment_hop {e['segment_hop']} ({which}; {where})")
            value = (f"{e['rtf']:.4f} ({e['ms_per_segment']:.2f} ms per segment, "
                     f"{e['segments']} segments; by CPU time {e['rtf_cpu']:.4f})")
            if e["configured"]:
                row(name, value, f"<= {KWS_RTF_TARGET:g}", _status(e["rtf"] <= KWS_RTF_TARGET))
            else:
                row(name, value)
        fe = ke["frontend"]
        row("of which the streaming log-Mel frontend (KwsStreamFrontend, any hop)",
            f"{fe['rtf']:.4f} (by CPU time {fe['rtf_cpu']:.4f})")
        nd = ke["node_path"]
        m = nd["match"]
        row("KWS node path real-time factor (KeywordListener: embedding + KeywordSpotter, "
            + " and ".join(f"{k} x {n}" for k, n in ke["enrollment"]["shots"].items())
            + f" shots enrolled, segment_hop "
            f"{nd['segment_hop']}; {where})",
            f"{nd['rtf']:.4f} (by CPU time {nd['rtf_cpu']:.4f}; {m['found']}/{m['truth']} "
            f"true keywords detected within {nd['match_collar_s']:g} s, {m['false']} false)")
    elif results.get("kws_skipped"):
        row("int8 TACos embedder real-time factor", "not measured (--skip-kws)",
            f"<= {KWS_RTF_TARGET:g}", "SKIPPED")
    elif not results.get("load_only"):
        row("int8 TACos embedder real-time factor", "not measured", f"<= {KWS_RTF_TARGET:g}",
            "ERROR")
    kws = results.get("kws")
    if kws:
        sp = kws["spotter"]
        where = f"CPU {kws['cpu']}" if kws["pinned"] else "unpinned"
        setup = (f"{kws['keywords']} keywords x {kws['shots']} shots "
                 f"({kws['template_frames_total']} template frames, D={kws['dim']}), "
                 f"{kws['audio_seconds']:g} s stream, "
                 f"{kws['chunk_frames']} frames per push, {where}")
        row(f"KWS streaming DTW, KeywordSpotter incl. cost columns and post-processing: "
            f"{setup}", f"{sp['x_realtime']:.0f}x real time ({sp['us_per_frame']:.1f} us/frame; "
            f"best run {sp['x_realtime_best']:.0f}x; by CPU time {sp['x_realtime_cpu']:.0f}x; "
            f"found {sp['inserted_found']}/"
            f"{sp['inserted']} inserted, {sp['detections']} detections)", f">= {KWS_XRT_TARGET:g}x", _status(sp["x_realtime"] >= KWS_XRT_TARGET))
        for key, name in (("cost_columns", "of which cost columns (cosine_cost_columns, 4-frame "
                                           "blocks)"),
                          ("update", "bare StreamingSubsequenceDTW.update, 1 frame per call, "
                                     "precomputed costs"),
                          ("update_many", "bare StreamingSubsequenceDTW.update_many, whole "
                                          "stream in one call")):
            x = kws[key]
            row(f"KWS {name}", f"{x['x_realtime']:.0f}x real time ({x['us_per_frame']:.1f} "
                f"us/frame; by CPU time {x['x_realtime_cpu']:.0f}x)")
        bt = kws["batch"]
        name = (f"KWS batch subsequence_dtw vs librosa.sequence.dtw, {bt['matrices']} cost "
                f"matrices {bt['shape']}, median of {kws['batch_repeats']}")
        if "error" in bt:
            row(name, f"ours {bt['ours_s']:.3f} s; librosa: {bt['error']}",
                f">= {KWS_BATCH_RATIO_TARGET:g}x", "ERROR")
        else:
            row(name, f"ours {bt['ours_s']:.3f} s ({bt['ns_per_cell_ours']:.2f} ns/cell), "
                f"librosa {bt['librosa']} {bt['librosa_s']:.3f} s: {bt['ratio']:.1f}x faster",
                f">= {KWS_BATCH_RATIO_TARGET:g}x", _status(bt["ratio"] >= KWS_BATCH_RATIO_TARGET))
            row("KWS batch accumulated costs identical to librosa (np.array_equal, all "
                "matrices)", "yes" if bt["identical"] else "no", "yes",
                _status(bt["identical"]))
    elif results.get("kws_skipped"):
        row("KWS streaming DTW x real time", "not measured (--skip-kws)",
            f">= {KWS_XRT_TARGET:g}x", "SKIPPED")
    elif not results.get("load_only"):
        row("KWS streaming DTW x real time", "not measured", f">= {KWS_XRT_TARGET:g}x", "ERROR")
    if not results.get("kws_only"):
        _load_rows(results, row)
    return rows


def _load_rows(results: dict[str, Any], row) -> None:
    """Rows of measurement 6 (MQTT load), paced then saturation."""
    target = f"{LOAD_LOST_TARGET} lost, {LOAD_LOST_TARGET} out of order"
    for key, label in (("mqtt_load", "paced"), ("mqtt_load_saturation", "saturation")):
        ld = results.get(key)
        if ld is None:
            skipped = results.get("load_skipped") or results.get(f"{key}_skipped")
            row(f"MQTT load, {label}: events lost / out of order", "not measured", target,
                "SKIPPED" if skipped else "ERROR")
            continue
        rate = (f"{ld['rate_hz']:g} events/s per node" if ld["rate_hz"] else
                f"each as fast as it delivers ({ld['saturation_backlog']} events kept spooled)")
        name = f"MQTT load, {label}"
        row(f"{name}: {ld['nodes']} nodes ({ld['processes']} processes), {rate}, "
            f"{ld['seconds']:g} s, QoS {ld['qos']}, real Spool + MqttPublisher -> one mosquitto "
            "on loopback: events lost / out of order",
            f"{ld['lost']} / {ld['out_of_order']} of {ld['published']} published "
            f"({ld['delivered']} delivered, {ld['duplicates']} duplicates)", target,
            _status(ld["lost"] <= LOAD_LOST_TARGET and ld["out_of_order"] <= LOAD_LOST_TARGET))
        row(f"{name}: throughput (unique events delivered within the window / window)",
            f"{ld['throughput_eps']:.0f} events/s (offered {ld['offered_eps']:.0f}/s; last "
            f"event {ld['drain_s']:.2f} s after the window)")
        lat = ld["latency_ms"]
        row(f"{name}: end-to-end latency p50 / p95 / p99 (payload ts -> subscriber)",
            f"{lat['p50']:.1f} / {lat['p95']:.1f} / {lat['p99']:.1f} ms (max {lat['max']:.0f} ms)"
            if lat else "no event received")
        row(f"{name}: largest spool depth (one node; all nodes of one process)",
            f"{ld['spool_depth_max']}; {ld['spool_depth_total_max']} event(s)")
        c = ld["cpu_percent"]
        row(f"{name}: CPU (100 % = one core)",
            f"broker {c['broker']:.0f} %, publishers {c['publishers']:.0f} %, subscriber "
            f"{c['subscriber']:.0f} %; whole machine {c['machine_busy']:.0f} % busy, "
            f"{c['machine_iowait']:.0f} % waiting for I/O, of {ld['machine_cpus'] * 100} %")


def _load_limit(ld: dict[str, Any]) -> str:
    """Whether a paced MQTT load run kept up; what limited a saturation run (CPU figures)."""
    if ld["rate_hz"] is not None:
        kept = ld["throughput_eps"] >= 0.99 * ld["offered_eps"]
        return (f"{'kept up' if kept else 'fell behind'} ({ld['throughput_eps']:.0f} of "
                f"{ld['offered_eps']:.0f} events/s delivered within the window, largest spool "
                f"{ld['spool_depth_max']} event(s))")
    c = ld["cpu_percent"]
    parts = {"the simulated nodes' processes": c["publishers"],
             "the broker": c["broker"], "the subscriber": c["subscriber"]}
    top = max(parts, key=parts.get)
    cores = ld["machine_cpus"] * 100
    used = c["machine_busy"] + c["machine_iowait"]
    if used >= 0.85 * cores:
        return (f"the machine's CPUs were {c['machine_busy']:.0f} % busy and "
                f"{c['machine_iowait']:.0f} % waiting for I/O (of {cores} %), most of it "
                f"{top} ({parts[top]:.0f} %): they are the limit on this machine")
    return (f"no CPU limit reached ({c['machine_busy']:.0f} % busy, "
            f"{c['machine_iowait']:.0f} % I/O wait of {cores} %): the per-node stop-and-wait "
            "delivery (one event in flight, an fsynced spool append and delete per event) "
            "sets the pace")


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
            f"| Numba | {m.get('numba', 'unknown')} |",
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
        enr = mem.get("enrollment")
        kw_note = (f"keywords {', '.join(enr['shots'])} enrolled with `python -m calibration "
                   f"enroll --config CFG --keyword KW --from demo/clips/kws/KW_shot_*.flac` "
                   f"({enr['seconds']:g} s; thresholds "
                   + ", ".join(f"{k} {v}" for k, v in enr["thresholds"].items()) + "), "
                   if enr else "no keywords enrolled, ")
        notes.append(f"Node (anomaly detection and keyword spotting both enabled, so the RSS "
                     f"includes both int8 models and their interpreters): calibrated on "
                     f"{len(mem['calibration_clips'])} clips "
                     f"({mem['calibration_seconds']:g} s), {kw_note}then replayed "
                     f"{', '.join(mem['replay_clips'])} in real time against a private "
                     f"mosquitto; stopped by {mem['exit']['stopped_by']}, exit status "
                     f"{mem['exit']['status']}. TFLite runtime mapped: "
                     f"{', '.join(rt) if rt else 'none found'}.")
        if mem["tensorflow_files"]:
            notes.append("TensorFlow files mapped by the node: "
                         + ", ".join(mem["tensorflow_files"]))
    ke = results.get("kws_embedder")
    if ke:
        notes.append(
            f"KWS embedder: {ke['stream']} ({ke['audio_seconds']:g} s of real speech, "
            f"{ke['frames']} frames of {ke['frame_seconds'] * 1e3:g} ms, segments of "
            f"{ke['segment_frames']} frames) pushed in {ke['block_seconds']:g} s blocks through "
            "`KwsEmbedder.stream()` then `flush()`; process pinned to one CPU, interpreter "
            f"`num_threads=1`; {ke['warmup_runs']} warm-up + {ke['timed_runs']} timed rounds, "
            "each round running every KWS embedder measurement once (interleaved, so load "
            "changes on a shared machine hit them alike), median per measurement. Real-time factor = compute seconds / audio seconds; ms per segment = "
            "compute time / segments embedded (frontend and averaging included). The "
            f"configured hop is `kws.segment_hop` = {ke['configured_hop']} of "
            "firmware_config/default.yaml. The node path is `edge.node.KeywordListener` built "
            "from that config with the demo keywords enrolled by `python -m calibration "
            "enroll`. A Raspberry Pi (Cortex-A72/A76) is roughly 5-10x slower per core than "
            "this machine, so multiply these real-time factors by 5-10 for a Pi: the "
            f"<= {KWS_RTF_TARGET:g} target here means at most about "
            f"{5 * KWS_RTF_TARGET:g}-{10 * KWS_RTF_TARGET:g} there, i.e. still real time, "
            "next to the anomaly model and the DTW.")
    kws = results.get("kws")
    if kws:
        notes.append(
            f"KWS DTW: synthetic full-size set-up ({kws['templates']} templates of "
            f"{kws['template_frames_min_max'][0]}-{kws['template_frames_min_max'][1]} frames, "
            f"random unit vectors, D={kws['dim']}; {kws['frames']} stream frames of "
            f"{kws['frame_seconds'] * 1e3:g} ms with one noisy shot per keyword inserted), "
            "process pinned to one CPU, single-threaded Numba kernels; every timing follows "
            f"a warm-up call and is the median of {kws['repeats']} runs (batch: "
            f"{kws['batch_repeats']}). x real time = stream seconds / wall-clock seconds (the "
            "target is checked on it); 'by CPU time' divides by the thread's CPU time "
            "instead, which leaves out time the process waited for the CPU on a shared "
            "machine.")
    ld = results.get("mqtt_load")
    if ld:
        sat = results.get("mqtt_load_saturation")
        notes.append(
            f"MQTT load: {ld['nodes']} simulated nodes in {ld['processes']} worker processes "
            "(spawn), each the node's own delivery path: an SQLite WAL spool (`synchronous="
            "FULL`, one file per node) and an `MqttPublisher` (paho network thread + sender "
            "thread, QoS 1, one event in flight, deleted after the PUBACK), events built by "
            f"`Node.anomaly_event` (~{ld['payload_bytes_mean']:.0f} bytes), one producer "
            "thread per node; a private mosquitto on 127.0.0.1 with "
            f"`{'`, `'.join(ld['broker_config'])}` (mosquitto's default of 1000 queued QoS 1 "
            "messages per client would drop messages to a subscriber that falls behind: set "
            "it on production brokers too) and one paho subscriber (QoS 1) in the bench "
            "process recording `event/#`. Lost = seqs 1..last_seq of a node's spool not "
            "received; latency = arrival minus the payload's `ts` (millisecond resolution); "
            "CPU from `/proc/<pid>/stat` over the start of publishing to the last arrival, "
            "'whole machine' from `/proc/stat` (includes anything else running). Paced, the "
            "nodes' schedules are spread evenly over the period. A real node has an "
            f"interpreter to itself; here ~{ld['nodes'] / ld['processes']:.0f} nodes (3 "
            "threads each) share one, which costs throughput at saturation (see "
            f"`bench/mqtt_load.py`). Paced run: {_load_limit(ld)}."
            + (f" Saturation run: {_load_limit(sat)}." if sat else "")
            + "".join(f" Broker log: {'; '.join(x['broker_drop_log'])}." for x in (ld, sat)
                      if x and x["broker_drop_log"]))
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
    from bench.mqtt_load import DEFAULT_RATE_HZ

    p = argparse.ArgumentParser(prog="python -m bench",
                                description="Measure latency, real-time factor, node memory "
                                            "(anomaly detection and keyword spotting active), "
                                            "model sizes, the TACos embedder real-time factor, "
                                            "the keyword-spotting DTW speed and the MQTT load "
                                            "of many nodes on one broker; write OUT/bench.md "
                                            "and OUT/bench.json.")
    p.add_argument("--out", default="reports", help="report folder (default: reports)")
    p.add_argument("--clips", type=int, default=30,
                   help="timed clip embeddings for the latency (default 30)")
    p.add_argument("--warmup", type=int, default=5, help="untimed warm-up runs (default 5)")
    p.add_argument("--cpu", type=int, help="CPU to pin the latency and KWS runs to (default: "
                                           "the lowest allowed one)")
    p.add_argument("--node-seconds", type=float, default=40.0,
                   help="how long to sample the running node's memory (default 40: the "
                        "21.7 s keyword stream, then machine clips)")
    p.add_argument("--model", default=str(DEFAULT_MODEL), help="int8 .tflite anomaly model "
                                                               "(default: the shipped one)")
    p.add_argument("--kws-model", default=str(DEFAULT_KWS_MODEL),
                   help="int8 .tflite TACos keyword model (default: the shipped one)")
    p.add_argument("--kws-repeats", type=int, default=5,
                   help="timed runs of the TACos embedder over the keyword stream (default 5)")
    p.add_argument("--skip-node", action="store_true",
                   help="skip the node memory measurement (no broker needed)")
    kws = p.add_mutually_exclusive_group()
    kws.add_argument("--skip-kws", action="store_true",
                     help="skip the keyword-spotting measurements (TACos embedder real-time "
                          "factor, DTW speed); the node still runs with keyword spotting")
    kws.add_argument("--kws-only", action="store_true",
                     help="only the keyword-spotting measurements: TACos embedder real-time "
                          "factor and DTW speed (needs no anomaly model and no broker)")
    p.add_argument("--load-nodes", type=int, default=50,
                   help="simulated nodes of the MQTT load measurement (default 50)")
    p.add_argument("--load-seconds", type=float, default=60.0,
                   help="paced MQTT load: publishing window in seconds (default 60)")
    p.add_argument("--load-rate", type=float, default=DEFAULT_RATE_HZ,
                   help="paced MQTT load: events/s per node (default %(default)g, 20x a real "
                        "node's one anomaly event per 2 s hop)")
    p.add_argument("--load-processes", type=int,
                   help="worker processes the simulated nodes are spread over (default: one "
                        "per 5 nodes, at least one per CPU)")
    p.add_argument("--load-saturation-seconds", type=float, default=10.0,
                   help="saturation MQTT load (every node as fast as it delivers): window in "
                        "seconds (default 10; 0 skips it)")
    load = p.add_mutually_exclusive_group()
    load.add_argument("--skip-load", action="store_true",
                      help="skip the MQTT load measurement")
    load.add_argument("--load-only", action="store_true",
                      help="only the MQTT load measurement (needs mosquitto, no model)")
    args = p.parse_args(argv)
    if (args.clips < 1 or args.warmup < 0 or args.node_seconds <= 0
            or args.kws_repeats < 1 or args.load_nodes < 1 or args.load_seconds <= 0
            or args.load_rate <= 0 or args.load_saturation_seconds < 0
            or (args.load_processes is not None and args.load_processes < 1)):
        p.error("--clips, --kws-repeats, --load-nodes and --load-processes must be >= 1, "
                "--warmup and --load-saturation-seconds >= 0, --node-seconds, --load-seconds "
                "and --load-rate > 0")
    if args.load_only and args.kws_only:
        p.error("--load-only and --kws-only exclude each other")

    from edge.fileio import atomic_write_bytes, atomic_write_json

    model = Path(args.model).resolve()
    kws_model = Path(args.kws_model).resolve()
    # the KWS model and clips: for the embedder measurement and for the node's keyword spotting
    need_kws = not args.load_only and (not args.skip_kws
                                       or not (args.kws_only or args.skip_node))
    clips: dict[str, Any] = {}
    try:
        if not (args.kws_only or args.load_only):
            check_model(model)
            clips = demo_clips()
        if need_kws:
            check_model(kws_model, "kws")
            clips["kws"] = kws_demo_clips()
    except BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    results: dict[str, Any] = {"schema": 1, "machine": machine_info(), "model": str(model),
                               "kws_model": str(kws_model),
                               "targets": {"rtf_max": RTF_TARGET, "node_rss_max_mb": RSS_TARGET_MB,
                                           "int8_over_float_max": SIZE_RATIO_TARGET,
                                           "kws_embedder_rtf_max": KWS_RTF_TARGET,
                                           "kws_x_realtime_min": KWS_XRT_TARGET,
                                           "kws_batch_speedup_vs_librosa_min":
                                               KWS_BATCH_RATIO_TARGET,
                                           "mqtt_load_lost_max": LOAD_LOST_TARGET,
                                           "mqtt_load_out_of_order_max": LOAD_LOST_TARGET},
                               "errors": {}}
    t_start = time.monotonic()
    if args.load_only:
        results["load_only"] = True
    elif args.kws_only:
        results["kws_only"] = True
    else:
        _measure_asd(args, model, clips, results)

    if args.skip_kws:
        results["kws_skipped"] = True
    elif not args.load_only:
        _log("KWS embedder: int8 TACos real-time factor on one core")
        k = clips["kws"]
        try:
            results["kws_embedder"] = measure_kws_embedder(
                kws_model, k["stream"], k["truth"], k["shots"], repeats=args.kws_repeats,
                cpu=args.cpu)
        except Exception as exc:
            results["errors"]["kws embedder"] = f"{type(exc).__name__}: {exc}"
        _log("KWS DTW: streaming spotter, bare DTW updates, batch vs librosa (one core)")
        try:
            results["kws"] = measure_kws_dtw(cpu=args.cpu)
        except Exception as exc:
            results["errors"]["kws dtw"] = f"{type(exc).__name__}: {exc}"

    if args.skip_load:
        results["load_skipped"] = True
    elif not args.kws_only:
        _measure_load(args, results)

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


def _measure_asd(args, model: Path, clips: dict[str, list[Path]],
                 results: dict[str, Any]) -> None:
    """Measurements 1-3 (latency, node memory with both listeners, model sizes) into
    ``results``."""
    _log(f"latency: {args.warmup} warm-up + {args.clips} timed runs on one core")
    try:
        results["latency"] = measure_latency(model, clips["all"], args.clips, args.warmup,
                                             args.cpu)
    except Exception as exc:  # report it, keep measuring the rest
        results["errors"]["latency"] = f"{type(exc).__name__}: {exc}"

    if args.skip_node:
        results["memory_skipped"] = True
    else:
        k = clips["kws"]
        try:
            # the keyword stream first, so that keywords are matched while memory is sampled
            mem = measure_node_memory(model, clips["calibration"],
                                      [k["stream"], *clips["replay"]], args.node_seconds,
                                      kws_model=Path(args.kws_model).resolve(),
                                      kws_shots=k["shots"])
            mem["keyword_match"] = match_keyword_events(mem["keyword_events"],
                                                        load_kws_truth(k["truth"]))
            results["memory"] = mem
        except Exception as exc:
            results["errors"]["node memory"] = f"{type(exc).__name__}: {exc}"

    try:
        results["sizes"] = model_sizes(model)
    except Exception as exc:
        results["errors"]["model sizes"] = f"{type(exc).__name__}: {exc}"


def _measure_load(args, results: dict[str, Any]) -> None:
    """Measurement 6 (MQTT load: paced, then saturation) into ``results``."""
    from bench.mqtt_load import run_mqtt_load

    _log(f"MQTT load: {args.load_nodes} nodes x {args.load_rate:g} events/s for "
         f"{args.load_seconds:g} s -> one mosquitto")
    try:
        results["mqtt_load"] = run_mqtt_load(args.load_nodes, args.load_seconds, args.load_rate,
                                             args.load_processes)
    except Exception as exc:
        results["errors"]["mqtt load"] = f"{type(exc).__name__}: {exc}"
    if not args.load_saturation_seconds:
        results["mqtt_load_saturation_skipped"] = True
        return
    _log(f"MQTT load: saturation, {args.load_nodes} nodes as fast as they deliver for "
         f"{args.load_saturation_seconds:g} s")
    try:
        results["mqtt_load_saturation"] = run_mqtt_load(
            args.load_nodes, args.load_saturation_seconds, None, args.load_processes)
    except Exception as exc:
        results["errors"]["mqtt load saturation"] = f"{type(exc).__name__}: {exc}"


if __name__ == "__main__":
    sys.exit(main())
