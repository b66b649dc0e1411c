"""The bench report: the results table with each measurement checked against its target, and the
Markdown page around it.

* Targets: :data:`RTF_TARGET`, :data:`RSS_TARGET_MB`, :data:`SIZE_RATIO_TARGET`,
  :data:`KWS_RTF_TARGET`, :data:`KWS_XRT_TARGET`, :data:`LOAD_LOST_TARGET`. The batch DTW
  is compared with librosa for identical costs; its speed is information only (it is the
  reference the streaming DTW is tested against, on no node or trainer path).
* :func:`build_rows`: one ``{metric, value, target, status}`` row per measurement.
* :func:`render_markdown`: results table, machine table, notes and errors.

Both read the ``results`` dict that ``python -m bench`` writes to ``bench.json``; neither
measures anything.
"""
from __future__ import annotations

import os
from typing import Any

from bench.common import MB
from bench.kws_demo import KWS_MATCH_COLLAR_S

__all__ = ["RTF_TARGET", "ASD_NODE_RTF_TARGET", "RSS_TARGET_MB", "SIZE_RATIO_TARGET", "KWS_XRT_TARGET", "KWS_LATENCY_TARGET_S",
           "KWS_NODE_RTF_TARGET", "KWS_RTF_TARGET", "LOAD_LOST_TARGET", "build_rows",
           "render_markdown"]

RTF_TARGET = 0.02
ASD_NODE_RTF_TARGET = 0.01  # the node's anomaly path per window over the hop, all views on
RSS_TARGET_MB = 200.0  # issue target: 150 MB
SIZE_RATIO_TARGET = 1.0 / 3.0
KWS_XRT_TARGET = 500.0  # seconds of audio per second of compute
KWS_LATENCY_TARGET_S = 0.5  # keyword end -> decision, median
KWS_RTF_TARGET = 0.1  # TACos embedder at the configured segment hop, compute s / audio s
KWS_NODE_RTF_TARGET = 0.02  # the node's whole keyword path, pretrained frontend included
LOAD_LOST_TARGET = 0  # MQTT load: events lost or out of order


def _status(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def build_rows(results: dict[str, Any]) -> list[dict[str, str]]:
    """The report table: one ``{metric, value, target, status}`` row per measurement.

    Status is PASS/FAIL against a target, ``info`` for context, ``ERROR`` for a
    measurement that could not be taken (its message is in ``results["errors"]``),
    ``SKIPPED`` for one left out by an option.

    Parameters
    ----------
    results : dict
        The measurements, as ``python -m bench`` collects them (``latency``, ``memory``,
        ``sizes``, ``kws_embedder``, ``kws``, ``mqtt_load``, ``mqtt_load_saturation``, the
        ``*_skipped`` / ``*_only`` flags and ``errors``).

    Returns
    -------
    list of dict
        ``{"metric", "value", "target", "status"}`` per row, all strings.
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
            npath = lat.get("node_path")
            if npath:
                for key, what, target in (("views", "default views", ASD_NODE_RTF_TARGET),
                                          ("embedding_only", "embedding view only", None)):
                    p = npath[key]
                    value = (f"{p['rtf']:.4f} ({p['median_ms']:.2f} ms per window, "
                             f"{' + '.join(p['views'])}; memory {npath['memory_windows']} "
                             f"windows; one window every {npath['hop_seconds']:g} s)")
                    if target is None:
                        row(f"node anomaly path real-time factor, {what}", value)
                    else:
                        row(f"node anomaly path real-time factor, {what}", value,
                            f"<= {target:g}", _status(p["rtf"] <= target))
        else:
            row("real-time factor (median total / clip length)", "not measured",
                f"<= {RTF_TARGET:g}", "ERROR")

        mem = results.get("memory")
        if mem:
            both = mem.get("kws_active")
            what = ("anomaly detection + keyword spotting active, both models loaded"
                    if both else "anomaly detection only: keyword spotting NOT active")
            row(f"node peak RSS ({what}; VmRSS sampled every {mem['interval_s']:g} s for "
                f"{mem['sampled_seconds']:g} s)",
                f"{mem['peak_rss_mb']:.1f} MB", f"<= {RSS_TARGET_MB:g} MB",
                _status(mem["peak_rss_mb"] <= RSS_TARGET_MB))
            row("node loaded Numba (LLVM)", "yes" if mem.get("numba_loaded") else "no", "no",
                _status(not mem.get("numba_loaded")))
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
            kind = ("speech_embedding (float TFLite, mel + embedding)"
                    if ke.get("representation") == "speech_embedding" else "int8 TACos")
            name = (f"{kind} embedder real-time factor, streaming {ke['audio_seconds']:g} s "
                    f"of speech in {ke['block_seconds']:g} s blocks (frontend + embedding), "
                    f"segment_hop {e['segment_hop']} ({which}; {where})")
            value = (f"{e['rtf']:.4f} ({e['ms_per_segment']:.2f} ms per segment, "
                     f"{e['segments']} segments; by CPU time {e['rtf_cpu']:.4f})")
            if e["configured"]:
                row(name, value, f"<= {KWS_RTF_TARGET:g}", _status(e["rtf"] <= KWS_RTF_TARGET))
            else:
                row(name, value)
        fe = ke.get("frontend")
        if fe:
            row("of which the streaming log-Mel frontend (KwsStreamFrontend, any hop)",
                f"{fe['rtf']:.4f} (by CPU time {fe['rtf_cpu']:.4f})")
        nd = ke["node_path"]
        m = nd["match"]
        row("KWS node path real-time factor (KeywordListener: embedding + KeywordSpotter, "
            + " and ".join(f"{k} x {n}" for k, n in ke["enrollment"]["shots"].items())
            + f" shots enrolled, segment_hop "
            f"{nd['segment_hop']}; {where})",
            f"{nd['rtf']:.4f} (by CPU time {nd['rtf_cpu']:.4f}; {m['found']}/{m['truth']} "
            f"true keywords detected within {nd['match_collar_s']:g} s, {m['false']} false)",
            f"<= {KWS_NODE_RTF_TARGET:g}", _status(nd["rtf"] <= KWS_NODE_RTF_TARGET))
        lat = nd.get("decision_latency_median_s")
        if lat is not None:
            row("KWS decision latency: audio pushed in 0.1 s blocks when the node path returns "
                "a detection, minus the end of the true keyword (median over "
                f"{len(nd['decision_latency_s'])} detections)", f"{lat:.3f} s",
                f"<= {KWS_LATENCY_TARGET_S:g} s", _status(lat <= KWS_LATENCY_TARGET_S))
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
            f"found {sp['inserted_found']}/{sp['inserted']} inserted, {sp['detections']} "
            "detections)", f">= {KWS_XRT_TARGET:g}x", _status(sp["x_realtime"] >= KWS_XRT_TARGET))
        lm = results.get("kws_logmel")
        if lm:
            x = lm["spotter"]
            row(f"KWS streaming DTW as above at the log-mel TACos bundle's "
                f"{lm['frame_seconds'] * 1e3:g} ms frames, D={lm['dim']} "
                f"({lm['template_frames_total']} template frames)",
                f"{x['x_realtime']:.0f}x real time ({x['us_per_frame']:.1f} us/frame; by CPU "
                f"time {x['x_realtime_cpu']:.0f}x; found {x['inserted_found']}/{x['inserted']})")
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
            row(name, f"ours {bt['ours_s']:.3f} s; librosa: {bt['error']}", "", "ERROR")
        else:
            row(name, f"ours {bt['ours_s']:.3f} s ({bt['ns_per_cell_ours']:.2f} ns/cell), "
                f"librosa {bt['librosa']} (Numba) {bt['librosa_s']:.3f} s: ours takes "
                f"{1 / bt['ratio']:.2f}x its time")
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
    _arm64_rows(results.get("arm64_start"), row)
    return rows


def _arm64_rows(a: dict[str, Any] | None, row) -> None:
    """The node's start-up in the emulated arm64 root, from the last ``make test-arm64``
    (:mod:`bench.arm64_start`); nothing without an arm64 root."""
    if a is None:
        return
    name = "node start to first scored window, arm64 under qemu: first / second start"
    if a.get("missing"):
        row(name, "not measured: run `sudo make test-arm64`", "", "SKIPPED")
        return
    f, s = a["first_start_s"], a["second_start_s"]
    row(name, f"{f['arm64']:g} s / {s['arm64']:g} s; "
        f"x86_64 {f['x86_64']:g} / {s['x86_64']:g} s; {a['emulated_cpu']}, `make test-arm64` "
        f"of {a['date']}{'' if a['ok'] else ', which FAILED'}")


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


def _package_rows(packages: dict[str, Any] | None) -> list[str]:
    """Machine-table rows: the node's package versions and whether they are the pinned ones."""
    if not packages:
        return []
    listed = ", ".join(f"{k} {v}" for k, v in packages["versions"].items())
    off = packages["unpinned"]
    pinned = (f"all as pinned in `{packages['constraints']}`" if not off else
              "NOT as pinned in `" + packages["constraints"] + "`: " + ", ".join(
                  f"{k} {d['installed']} (pinned {d['pinned'] or 'nothing'})"
                  for k, d in off.items()))
    return [f"| node packages | {listed} |", f"| versions | {pinned} |"]


def render_markdown(results: dict[str, Any], rows: list[dict[str, str]]) -> str:
    """The Markdown report: results table, machine table, notes and errors.

    Parameters
    ----------
    results : dict
        The measurements (as for :func:`build_rows`) with ``machine``
        (:func:`bench.common.machine_info`).
    rows : list of dict
        The table, from :func:`build_rows`.

    Returns
    -------
    str
        The page, ending with a newline.
    """
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
            *_package_rows(m.get("packages")),
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
            "changes on a shared machine hit them alike), median per measurement. Real-time "
            "factor = compute seconds / audio seconds; ms per segment = compute time / "
            "segments embedded (frontend and averaging included). The "
            f"configured hop is `kws.segment_hop` = {ke['configured_hop']} of "
            "firmware_config/default.yaml. The node path is `edge.kws_listener.KeywordListener` built "
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
            f"unit vectors, D={kws['dim']}, a keyword's shots noisy copies of one random "
            f"sequence; {kws['frames']} stream frames of "
            f"{kws['frame_seconds'] * 1e3:g} ms, the default keyword bundle's, with one noisy "
            "shot per keyword inserted; shots of 0.48-0.96 s; the bundle's shot fusion, "
            f"{kws.get('shot_fusion', 1)}, and its onset weighting, "
            f"{kws.get('onset_weighting', [1.0, 0, 0.0])}), process pinned to one CPU, "
            "NumPy (no Numba on the node); every timing follows "
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
            f"`edge.payloads.anomaly_event` (~{ld['payload_bytes_mean']:.0f} bytes), one producer "
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
