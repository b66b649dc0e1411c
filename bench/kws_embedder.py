"""Measurement 4: real-time factor of the int8 TACos keyword embedder on one core, alone and as
the node's whole keyword-spotting path.

:func:`measure_kws_embedder` feeds the demo keyword stream in 0.1 s blocks through
:meth:`edge.model.KwsEmbedder.stream` (at the configured ``kws.segment_hop`` and at hop 1), through
the streaming frontend alone and through :class:`edge.kws_listener.KeywordListener` (embedding plus
:class:`edge.kws.KeywordSpotter`, the demo keywords enrolled), interleaved round by round; the
listener's detections are counted against the stream's truth
(:func:`bench.kws_demo.keyword_match_counts`).
"""
from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from bench.common import DEFAULT_MODEL, log, pin_to_one_cpu
from bench.kws_demo import (KWS_MATCH_COLLAR_S, enroll_demo_keywords, keyword_match_counts,
                            load_kws_truth)
from edge.audio import load_audio
from edge.kws_frontend import KwsFrontendParams, KwsStreamFrontend
from edge.kws_listener import KeywordListener
from edge.model import load_bundle
from edge.speech_embedding import WINDOW_FRAMES
from firmware_config.defaults import default_config_doc, write_config_doc
from firmware_config.schema import load_config

__all__ = ["measure_kws_embedder"]


def _write_kws_config(path: Path, kws_model: Path, keywords: Path) -> None:
    """The default config with absolute model paths, one interpreter thread and the
    keywords file in ``keywords`` (anomaly detection is not used by the KWS path)."""
    doc = default_config_doc(
        node={"id": "bench"}, spool={"path": str(path.with_name("spool.sqlite"))},
        asd={"model": str(DEFAULT_MODEL.resolve()),
             "calibration": str(Path(keywords).with_name("asd_calibration.npz"))},
        kws={"enabled": True, "model": str(Path(kws_model).resolve()),
             "keywords": str(keywords), "num_threads": 1},
        logging={"level": "WARNING"})
    write_config_doc(path, doc)


def measure_kws_embedder(kws_model: Path, stream: Path, truth: Path,
                         shots: dict[str, Sequence[Path]], repeats: int = 5, warmup: int = 1,
                         block_seconds: float = 0.1, extra_hops: Sequence[int] = (1,),
                         cpu: int | None = None) -> dict[str, Any]:
    """Real-time factor of the int8 TACos embedder and of the node's whole KWS path.

    The keywords of ``shots`` are first enrolled with ``python -m calibration enroll``
    (:func:`bench.kws_demo.enroll_demo_keywords`) into a temporary copy of the default
    config (at its ``kws.segment_hop``). Then, with the process pinned to one CPU (previous
    affinity restored) and one interpreter thread, the real speech ``stream`` is fed in
    ``block_seconds`` blocks:

    * through :meth:`edge.model.KwsEmbedder.stream` (``push`` per block, then ``flush``:
      streaming log-Mel, int8 segment embeddings and their per-frame averaging), at the
      configured segment hop and at every hop of ``extra_hops``;
    * through the streaming frontend alone (:class:`edge.kws_frontend.KwsStreamFrontend`);
    * through :class:`edge.kws_listener.KeywordListener` built from that config, as the node does
      (embedding plus :class:`edge.kws.KeywordSpotter` with the enrolled keywords), its
      detections checked against ``truth``.

    Objects are built outside the timed region; after ``warmup`` untimed rounds (Numba
    compilation of the log-mel frontend's filter, interpreter warm-up) the measurements run
    interleaved, one of each per round, for ``repeats`` rounds (load changes on a shared machine hit them alike);
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
    truth_events = load_kws_truth(truth)
    with tempfile.TemporaryDirectory(prefix="hark-bench-kws-") as tmp:
        tmp = Path(tmp)
        cfg_path = tmp / "kws.yaml"
        _write_kws_config(cfg_path, kws_model, tmp / "kws_keywords.npz")
        cfg = load_config(cfg_path)
        hop = int(cfg.kws.segment_hop or load_bundle(kws_model, task="kws").segment_hop)
        log(f"KWS embedder: enrolling {', '.join(shots)} at segment_hop {hop}")
        enrollment = enroll_demo_keywords(cfg_path, shots)  # before pinning: not inherited

        cpu, pinned, old_affinity = pin_to_one_cpu(cpu)
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
                dets, pushed = [], 0
                for b in blocks:
                    pushed += len(b)
                    dets += [(d, pushed / sr) for d in lst.push(b)]
                return dets + [(d, len(y) / sr) for d in lst.flush()]

            # name -> (make: builds the object, untimed; run: feeds the whole stream)
            tasks = {("hop", h): (emb.stream, run_embed) for h, emb in embedders.items()}
            if isinstance(params, KwsFrontendParams):  # speech_embedding: mel inside the model
                tasks["frontend"] = (lambda: KwsStreamFrontend(params), run_frontend)
            tasks["node"] = (make_listener, run_listener)
            log(f"KWS embedder: segment_hop {', '.join(map(str, embedders))}, frontend alone "
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
                "representation": embedders[hop].metadata.get("representation", "tacos"),
                "segment_frames": getattr(params, "segment_frames", WINDOW_FRAMES),
                "warmup_runs": warmup,
                "timed_runs": repeats, "interleaved": True, "enrollment": enrollment,
                "embedder": []}
            for h, emb in embedders.items():
                t = summary(("hop", h))
                frames = int(last[("hop", h)])
                segments = (len(emb.segment_starts(frames)) if hasattr(emb, "segment_starts")
                             else frames)  # speech_embedding: one window per frame
                t.update(segment_hop=h, configured=h == hop, frames=frames, segments=segments,
                         ms_per_segment=t["median_s"] / segments * 1e3,
                         ms_per_segment_cpu=t["cpu_median_s"] / segments * 1e3)
                res["embedder"].append(t)
                res["frames"] = frames
            if "frontend" in tasks:
                res["frontend"] = summary("frontend")
            node = summary("node")
            found = [{"keyword": d.keyword, "onset_s": round(float(d.onset_s), 3),
                      "offset_s": round(float(d.offset_s), 3), "cost": round(float(d.cost), 4),
                      "decided_s": round(t, 3)} for d, t in last["node"]]
            # decision latency: audio pushed when the listener returned the detection, minus
            # the end of the true keyword it overlaps (the node reads 0.1 s blocks)
            latency = [f["decided_s"] - t["offset_s"] for f in found for t in truth_events
                       if f["keyword"] == t["keyword"] and f["onset_s"] < t["offset_s"]
                       and f["offset_s"] > t["onset_s"]]
            node.update(segment_hop=hop, keywords=sorted(shots), detections=found,
                        match=keyword_match_counts(found, truth_events),
                        match_collar_s=KWS_MATCH_COLLAR_S,
                        decision_latency_s=[round(v, 3) for v in latency],
                        decision_latency_median_s=round(float(np.median(latency)), 3)
                        if latency else None)
            res["node_path"] = node
        finally:
            if pinned:
                os.sched_setaffinity(0, old_affinity)
    return res
