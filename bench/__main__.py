"""``python -m bench [--out reports] [--clips N]``: latency, real-time factor, node memory,
model sizes, keyword-spotting embedder real-time factor, DTW speed and MQTT load (50 nodes,
one broker), written to ``reports/bench.md`` and ``reports/bench.json``.

Measurements, each checked against its target (one module each; :func:`main` runs them):

1. **int8 ASD embedding latency on one core** (:mod:`bench.asd_latency`). Process pinned to
   one CPU, interpreter ``num_threads=1``; frontend and inference timed separately over
   ``--warmup`` warm-up and ``--clips`` timed runs across the demo clips. Real-time factor =
   median total time / clip length (target ``<= 0.02``).
2. **Resident memory of the running node, anomaly detection and keyword spotting both
   active** (:mod:`bench.node_memory`; ``--node-seconds``, ``--skip-node``). A private
   mosquitto broker, calibration on the demo calibration clips (``python -m calibration
   record``), the demo keywords enrolled as an installer would (``python -m calibration enroll
   --config CFG --keyword smart_mirror --from demo/clips/kws/smart_mirror_shot_*.flac``,
   then ``computer``), then ``python -m edge run`` replays the demo keyword stream followed by
   the demo machine test clips in real time while ``VmRSS`` is sampled every 0.5 s; ``VmHWM``
   is read as well (target ``<= 200 MB``). ``/proc/<pid>/maps`` tells whether the node ever
   loaded TensorFlow (it must not); the keyword events of its log are counted against the stream's truth.
3. **Model sizes** (:mod:`bench.model_size`). The int8 ``.tflite`` file against the float32
   size recorded at export time (target: int8 at most a third).
4. **Keyword embedder real-time factor on one core** (:mod:`bench.kws_embedder`; the
   speech_embedding bundle by default, or the int8 TACos one with ``--kws-model``;
   ``--kws-repeats``, ``--skip-kws``, ``--kws-only``). The demo keyword stream (21.7 s of
   real speech) fed in 0.1 s blocks through :meth:`edge.model.KwsEmbedder.stream` at the
   configured ``kws.segment_hop`` (target ``<= 0.1``) and at hop 1 (the thesis), through the
   frontend alone and through the node's whole path (:class:`edge.kws_listener.KeywordListener`),
   whose detections are checked against the stream's truth (``stream.json``).
5. **Keyword-spotting DTW backend on one core** (:mod:`bench.kws_dtw`; ``--skip-kws``,
   ``--kws-only``). Synthetic full-size scene at the default keyword bundle's frame hop: the
   streaming spotter (target ``>= 500x`` real time; also at the log-mel bundle's 16 ms frames,
   for information), the bare DTW updates, and the batch DTW against librosa (identical
   accumulated costs; speed for information).
6. **MQTT load: simulated nodes -> one mosquitto on loopback** (:mod:`bench.mqtt_load`;
   ``--load-nodes``, ``--load-seconds``, ``--load-rate``, ``--load-saturation-seconds``,
   ``--load-processes``, ``--skip-load``, ``--load-only``). Paced, then saturation; target,
   for both: zero loss, none out of order.
7. **Start-up on arm64** (:mod:`bench.arm64_start`), only where the arm64 root of ``make
   test-arm64`` exists: the node's first and second start to its first scored window, from
   that target's last run (``reports/arm64.json``).
8. **Machine information** (:func:`bench.common.machine_info`): CPU model, Python,
   ai-edge-litert, NumPy and Numba versions, date.

Shared pieces: :mod:`bench.common` (paths, :class:`~bench.common.BenchError`, CPU pinning,
model and clip checks), :mod:`bench.kws_demo` (keyword demo clips, truth, enrollment, matching)
and :mod:`bench.report` (targets, the table and the Markdown page).

Only the demo clips shipped in ``demo/clips`` (and ``demo/clips/kws``) and the shipped
models are used, so the benchmark runs from a fresh clone. Everything the measurements
write (configs, spools, calibrations, broker files) goes to temporary folders. Missed
targets are reported as FAIL but do not change the exit status; the exit status is 2 when a
model or the clips are missing and 1 when a measurement could not be taken (the report is
still written).

Sizes are in MB = 10**6 bytes (stricter than MiB for the 200 MB target).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any, Sequence

from bench.arm64_start import arm64_start_times
from bench.asd_latency import measure_latency
from bench.common import (DEFAULT_KWS_MODEL, DEFAULT_MODEL, BenchError, check_model, demo_clips,
                          log, machine_info)
from bench.kws_demo import keyword_match_counts, kws_demo_clips, load_kws_truth
from bench.kws_dtw import kws_frame_geometry, measure_kws_dtw
from bench.kws_embedder import measure_kws_embedder
from bench.model_size import model_sizes
from bench.mqtt_load import DEFAULT_RATE_HZ, run_mqtt_load
from bench.node_memory import measure_node_memory
from bench.report import (KWS_RTF_TARGET, KWS_XRT_TARGET,
                          LOAD_LOST_TARGET, RSS_TARGET_MB, RTF_TARGET, SIZE_RATIO_TARGET,
                          build_rows, render_markdown)
from firmware_config.fileio import atomic_write_bytes, atomic_write_json

__all__ = ["main"]


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
                                            "(anomaly detection and keyword spotting active), "
                                            "model sizes, the keyword embedder real-time factor, "
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
                   help="KWS bundle .tflite (default: the shipped models/kws_speech.tflite; models/kws_default.tflite is the TACos one)")
    p.add_argument("--kws-repeats", type=int, default=5,
                   help="timed runs of the keyword embedder over the keyword stream (default 5)")
    p.add_argument("--skip-node", action="store_true",
                   help="skip the node memory measurement (no broker needed)")
    kws = p.add_mutually_exclusive_group()
    kws.add_argument("--skip-kws", action="store_true",
                     help="skip the keyword-spotting measurements (keyword embedder real-time "
                          "factor, DTW speed); the node still runs with keyword spotting")
    kws.add_argument("--kws-only", action="store_true",
                     help="only the keyword-spotting measurements: keyword embedder real-time "
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
        log("KWS embedder: real-time factor on one core")
        k = clips["kws"]
        try:
            results["kws_embedder"] = measure_kws_embedder(
                kws_model, k["stream"], k["truth"], k["shots"], repeats=args.kws_repeats,
                cpu=args.cpu)
        except Exception as exc:
            results["errors"]["kws embedder"] = f"{type(exc).__name__}: {exc}"
        log("KWS DTW: streaming spotter, bare DTW updates, batch vs librosa (one core)")
        try:
            results["kws"] = measure_kws_dtw(**kws_frame_geometry(kws_model), cpu=args.cpu)
            results["kws_logmel"] = measure_kws_dtw(frame_seconds=0.016, dim=128,
                                                    batch_repeats=0, cpu=args.cpu)
        except Exception as exc:
            results["errors"]["kws dtw"] = f"{type(exc).__name__}: {exc}"

    if args.skip_load:
        results["load_skipped"] = True
    elif not args.kws_only:
        _measure_load(args, results)

    arm64 = arm64_start_times()
    if arm64 is not None:
        results["arm64_start"] = arm64
    results["bench_seconds"] = round(time.monotonic() - t_start, 1)
    rows = build_rows(results)
    results["rows"] = rows
    md = render_markdown(results, rows)
    out = Path(args.out)
    atomic_write_bytes(out / "bench.md", md.encode())
    atomic_write_json(out / "bench.json", results)
    print(md, end="")
    log(f"wrote {out / 'bench.md'} and {out / 'bench.json'} in {results['bench_seconds']:g} s")
    return 1 if results["errors"] else 0


def _measure_asd(args, model: Path, clips: dict[str, list[Path]],
                 results: dict[str, Any]) -> None:
    """Measurements 1-3 (latency, node memory with both listeners, model sizes) into
    ``results``."""
    log(f"latency: {args.warmup} warm-up + {args.clips} timed runs on one core")
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
            mem["keyword_match"] = keyword_match_counts(mem["keyword_events"],
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
    log(f"MQTT load: {args.load_nodes} nodes x {args.load_rate:g} events/s for "
        f"{args.load_seconds:g} s -> one mosquitto")
    try:
        results["mqtt_load"] = run_mqtt_load(args.load_nodes, args.load_seconds, args.load_rate,
                                             args.load_processes)
    except Exception as exc:
        results["errors"]["mqtt load"] = f"{type(exc).__name__}: {exc}"
    if not args.load_saturation_seconds:
        results["mqtt_load_saturation_skipped"] = True
        return
    log(f"MQTT load: saturation, {args.load_nodes} nodes as fast as they deliver for "
        f"{args.load_saturation_seconds:g} s")
    try:
        results["mqtt_load_saturation"] = run_mqtt_load(
            args.load_nodes, args.load_saturation_seconds, None, args.load_processes)
    except Exception as exc:
        results["errors"]["mqtt load saturation"] = f"{type(exc).__name__}: {exc}"


if __name__ == "__main__":
    sys.exit(main())
