"""Measurement 5: speed of the keyword-spotting DTW backend on one core.

:func:`measure_kws_dtw` builds a synthetic but full-size scene (20 keywords x 5 shots, each
keyword's shots noisy copies of one random sequence of unit vectors, a 60 s stream with one
noisy copy of a shot of every keyword inserted; frame hop, dimension and shot fusion as the
bundle's) and times, after a warm-up, median of repeats:

(a) :class:`edge.kws.KeywordSpotter` fed 4 frames per push (cost columns, DTW, shot fusion,
    runs and post-processing included);
(b) :func:`edge.dtw.cosine_cost_columns` alone, the bare
    :meth:`edge.dtw.StreamingSubsequenceDTW.update` (one frame per call) and ``update_many`` on
    precomputed cost columns;
(c) the batch :func:`edge.dtw.subsequence_dtw` against ``librosa.sequence.dtw(subseq=True,
    step_sizes_sigma=[[1, 1], [1, 2], [2, 1]], backtrack=False)`` on the same cost matrices,
    with a check that the accumulated costs are identical.
"""
from __future__ import annotations

import os
import time
from typing import Any

import numpy as np

from bench.common import pin_to_one_cpu
from edge.dtw import (StreamingSubsequenceDTW, cosine_cost_columns, cosine_cost_matrix,
                      subsequence_dtw)
from edge.kws import KeywordSpotter, Template, onset_frame_weights
from edge.model import load_bundle

__all__ = ["kws_frame_geometry", "measure_kws_dtw"]


def kws_frame_geometry(model) -> dict[str, Any]:
    """Frame hop (``frame_seconds``), embedding dimension (``dim``), ``shot_fusion`` and
    ``onset_weighting`` of a keyword bundle, as the node loads it
    (:func:`edge.model.load_bundle`): the keyword arguments of :func:`measure_kws_dtw` that
    follow from the bundle."""
    embedder = load_bundle(model, "kws", 1)
    return {"frame_seconds": float(embedder.frame_seconds), "dim": int(embedder.embedding_dim),
            "shot_fusion": int(embedder.shot_fusion),
            "onset_weighting": list(embedder.onset_weighting)}


def _kws_scene(keywords: int, shots: int, frames: int, dim: int, lengths: tuple[int, int],
               seed: int, onset_weighting=(1.0, 0, 0.0)):
    """Templates (``lengths`` frames, both included; a keyword's shots are noisy copies of
    one random sequence, so that they match each other as real shots do; every template
    weighted by ``onset_weighting``, as if each shot held a pause before its word), a random
    unit-vector stream, one noisy shot per keyword inserted at known, non-overlapping
    places; returns (templates, stream, thresholds, inserted)."""
    rng = np.random.default_rng(seed)

    def unit(x):
        return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)

    lo, hi = lengths
    templates = []
    for k in range(keywords):
        base = rng.standard_normal((int(rng.integers(lo, hi + 1)), dim))
        templates += [Template(f"kw{k:02d}", unit(base + 0.3 * rng.standard_normal(base.shape)),
                               frame_weights=onset_frame_weights(len(base), onset_weighting))
                      for _ in range(shots)]
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
                    frame_seconds: float = 0.08, dim: int = 96,
                    shot_seconds: tuple[float, float] = (0.48, 0.96), chunk: int = 4,
                    repeats: int = 5, batch_repeats: int = 3, seed: int = 0,
                    cpu: int | None = None, shot_fusion: int = 1,
                    onset_weighting=(1.0, 0, 0.0)) -> dict[str, Any]:
    """Speed of the keyword-spotting DTW backend on one pinned core.

    The process is pinned to one CPU for the measurement (previous affinity restored), BLAS
    limited to one thread by the caller's environment or not; every timing is preceded by a
    warm-up call and is the median of ``repeats`` runs.

    Parameters
    ----------
    keywords, shots : int
        Templates = ``keywords * shots``.
    seconds, frame_seconds : float
        Stream length and frame hop: ``round(seconds / frame_seconds)`` frames.
    dim : int
        Embedding dimension ``D``.
    shot_seconds : (float, float)
        Shortest and longest shot; template lengths are uniform between them, in frames.
    chunk : int
        Frames per :meth:`edge.kws.KeywordSpotter.push`.
    repeats, batch_repeats : int
        Timed runs of the streaming and of the batch measurements (0: no batch
        measurement).
    seed : int
    cpu : int, optional
        CPU to pin to; default the lowest allowed one.
    shot_fusion : int
        The spotter's shot fusion (:func:`edge.kws.fuse_shot_costs`), as the bundle sets it.
    onset_weighting : (float, int, float)
        The templates' frame weighting (:func:`edge.kws.onset_frame_weights`), as the bundle
        sets it.

    Returns
    -------
    dict
        ``spotter`` (median seconds, ``x_realtime``, ``us_per_frame``, detections found),
        ``cost_columns``, ``update`` and ``update_many`` (same keys), ``batch`` (``ours_s``,
        ``librosa_s``, ``ratio`` = librosa / ours, ``identical``; or ``error`` when librosa
        is not installed) and the set-up.
    """
    frames = int(round(seconds / frame_seconds))
    audio_s = frames * frame_seconds
    span = tuple(max(1, int(round(x / frame_seconds))) for x in shot_seconds)
    templates, stream, thresholds, inserted = _kws_scene(keywords, shots, frames, dim, span,
                                                         seed, onset_weighting)
    lengths = [t.n_frames for t in templates]
    q = np.concatenate([t.features for t in templates])  # unit rows already

    cpu_s: dict[int, float] = {}

    def median_of(fn, n):
        """Median wall-clock seconds of n runs after a warm-up, and the runs; the median
        CPU time of the thread is kept aside (``cpu_s``): on a shared machine it excludes
        the time the process was not scheduled."""
        fn()  # warm-up: caches
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

    cpu, pinned, old_affinity = pin_to_one_cpu(cpu)
    try:
        found: list = []

        def spot():
            sp = KeywordSpotter(templates, thresholds, frame_seconds, shot_fusion=shot_fusion)
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
            "chunk_frames": chunk, "repeats": repeats, "batch_repeats": batch_repeats,
            "shot_fusion": shot_fusion, "onset_weighting": list(onset_weighting)}
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

        if batch_repeats:
            mats = [cosine_cost_matrix(t.features, stream) for t in templates]
            ours: list = []

            def run_ours():
                ours[:] = [subsequence_dtw(C).accumulated_cost for C in mats]

            batch: dict[str, Any] = {"matrices": len(mats),
                                     "shape": f"({span[0]}..{span[1]}) x {frames}",
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
