"""Measurement 1: latency and real-time factor of the int8 ASD embedder on one core.

:func:`measure_latency` pins the process to one CPU, runs the interpreter with
``num_threads=1`` and times the frontend (:func:`edge.frontend.asd_features`) and the inference
(:meth:`edge.model.AsdEmbedder.embed_features`) separately, after a few warm-up runs, cycling
through the demo clips. Real-time factor = median total time / clip length.

It also times the node's whole anomaly path per window (:func:`edge.views.window_views` and
:meth:`edge.backend.Calibration.score_views`) with the default config's views against a
calibration of :data:`NODE_PATH_MEMORY_WINDOWS` windows (10 minutes at the default 2 s
hop), once with the embedding view alone; its real-time factor is the median time per
window over the hop, since the node scores one window every hop.
"""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from bench.common import pin_to_one_cpu
from calibration.calibrate import collect_windows, fit_calibration
from edge.views import window_views
from firmware_config.schema import AsdSection
from edge.audio import load_audio
from edge.frontend import asd_features
from edge.model import load_bundle

__all__ = ["measure_latency", "NODE_PATH_MEMORY_WINDOWS"]

#: Calibration windows behind the timed anomaly path: 10 min of audio at a 2 s hop.
NODE_PATH_MEMORY_WINDOWS = 300


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
    cpu, pinned, old_affinity = pin_to_one_cpu(cpu)
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
        node_path = _node_path(embedder, waves, runs, warmup)
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
        "node_path": node_path,
        "runs_ms": {"frontend": [round(t * 1e3, 4) for t in t_fe],
                    "inference": [round(t * 1e3, 4) for t in t_inf],
                    "total": [round(t * 1e3, 4) for t in t_tot]},
    }


def _node_path(embedder, waves, runs: int, warmup: int) -> dict[str, Any]:
    """Per-window time of the node's anomaly path, default views and embedding alone."""
    asd = AsdSection()
    fe = embedder.frontend
    n = int(round(asd.window_seconds * fe.sample_rate))
    windows = [np.pad(y, (0, max(0, n - len(y))))[:n] for y in waves]
    out: dict[str, Any] = {"hop_seconds": asd.hop_seconds,
                           "memory_windows": NODE_PATH_MEMORY_WINDOWS}
    for key, views in (("views", tuple(asd.views)), ("embedding_only", ("embedding",))):
        reps = -(-NODE_PATH_MEMORY_WINDOWS // len(windows))
        # Each clip again, rotated in time by a different amount: distinct windows.
        w = collect_windows([[np.roll(x, 1601 * r)] for r in range(reps) for x in windows],
                            embedder, asd.window_seconds, asd.hop_seconds, views=views)
        cal = fit_calibration(w, embedder, asd.n_clusters, "mst-iqr", {},
                              asd.window_seconds, asd.hop_seconds)
        times = []
        for i in range(warmup + runs):
            t0 = time.perf_counter()
            cal.score_views(window_views(embedder, windows[i % len(windows)], cal.view_names))
            if i >= warmup:
                times.append(time.perf_counter() - t0)
        st = _stats_ms(times)
        out[key] = {"views": list(cal.view_names), "memory_rows": len(cal.memory), **st,
                    "rtf": st["median_ms"] / 1e3 / asd.hop_seconds}
    return out
