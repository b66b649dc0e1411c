"""On-site calibration: normal recordings -> backend memory + decision threshold.

Thesis Section 5.3.1 (backend) and Sections 2.11 / 4.2 (threshold estimators). The
calibration recordings play the role of the target domain: every normal window embedding
is kept, plus k-means centers of them (SPEC "Backend"). The decision threshold is
estimated from normal scores only. A window's own embedding is in the memory, so its
score would trivially be 0; the scores the threshold is fit on are therefore *held out*:
each window is scored against the memory built from the windows that do not overlap it
in time (overlapping windows share audio and would be near-duplicates).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Iterable

import numpy as np

from calibration.thresholds import make_threshold_estimator
from edge.backend import Calibration, normalize_members
from edge.levels import rms_dbfs
from edge.pipeline import Windower

log = logging.getLogger(__name__)

__all__ = ["CalibrationWindows", "WindowCollector", "collect_windows", "kmeans_centers", "held_out_scores",
           "fit_calibration", "SILENCE_DBFS"]

SILENCE_DBFS = -70.0  # RMS dBFS (edge.levels); quieter windows are not learned as "normal operation"


@dataclass
class CalibrationWindows:
    """Embeddings of the calibration windows and where they came from.

    Attributes
    ----------
    embeddings : np.ndarray, shape (n, D), float32, L2-normalised
    stream : np.ndarray, shape (n,), int
        Index of the recording (stream) each window came from.
    start, end : np.ndarray, shape (n,), int
        Window span in samples within its stream.
    skipped_silent : int
        Windows dropped because their level was below :data:`SILENCE_DBFS`.
    """

    embeddings: np.ndarray
    stream: np.ndarray
    start: np.ndarray
    end: np.ndarray
    skipped_silent: int = 0

    def __len__(self) -> int:
        return len(self.embeddings)


class WindowCollector:
    """Accumulates calibration windows: the one place that decides which windows of normal
    operation are learned (not silent) and how they are embedded.

    Used by :func:`collect_windows` (``python -m calibration record``) and by the node's
    auto-calibration.

    Parameters
    ----------
    embedder : edge.model.AsdEmbedder
    """

    def __init__(self, embedder):
        self.embedder = embedder
        self._embs: list[np.ndarray] = []
        self._spans: list[tuple[int, int, int]] = []
        self.skipped_silent = 0

    def add(self, stream: int, start: int, window: np.ndarray) -> None:
        """Embed one window (``start`` in samples within ``stream``) unless it is silent."""
        if rms_dbfs(window) < SILENCE_DBFS:
            self.skipped_silent += 1
            return
        self._embs.append(self.embedder.embed(window))
        self._spans.append((stream, start, start + len(window)))

    def result(self) -> CalibrationWindows:
        spans = np.array(self._spans, int).reshape(-1, 3)
        embs = np.array(self._embs, np.float32).reshape(-1, self.embedder.embedding_dim)
        return CalibrationWindows(embs, spans[:, 0], spans[:, 1], spans[:, 2],
                                  self.skipped_silent)


def collect_windows(streams: Iterable[Iterable[np.ndarray]], embedder, window_seconds: float,
                    hop_seconds: float, progress=None) -> CalibrationWindows:
    """Embed sliding windows of one or more block streams.

    Parameters
    ----------
    streams : iterable of iterables of np.ndarray
        Each stream yields 16 kHz float32 blocks (a microphone capture, or one file).
    embedder : edge.model.AsdEmbedder
    window_seconds, hop_seconds : float
    progress : callable(n_samples) or None
        Called with the number of samples consumed, for progress bars.

    Raises
    ------
    ValueError
        If ``window_seconds`` differs from the model's clip length.
    """
    sr = embedder.frontend.sample_rate
    if abs(window_seconds - embedder.frontend.clip_seconds) > 1e-6:
        raise ValueError(f"asd.window_seconds is {window_seconds} s but the model "
                         f"{embedder.model_id} takes {embedder.frontend.clip_seconds} s clips")
    collector = WindowCollector(embedder)
    for s, blocks in enumerate(streams):
        win = Windower(int(round(window_seconds * sr)), int(round(hop_seconds * sr)))
        for block in blocks:
            if progress:
                progress(len(block))
            for start, w in win.push(block):
                collector.add(s, start, w)
    return collector.result()


def kmeans_centers(embeddings: np.ndarray, n_clusters: int, seed: int = 0,
                   n_members: int = 1) -> np.ndarray:
    """Normalised k-means centers (scikit-learn), at most one per embedding.

    For an ensemble, the centers are found on the concatenated (member-normalised)
    embeddings and normalised per member (:func:`edge.backend.normalize_members`).

    Returns
    -------
    np.ndarray, shape (min(n_clusters, n), D), float32
    """
    from sklearn.cluster import KMeans

    k = min(n_clusters, len(embeddings))
    km = KMeans(n_clusters=k, n_init=10, random_state=seed).fit(embeddings)
    return normalize_members(km.cluster_centers_, n_members)


def held_out_scores(w: CalibrationWindows, n_members: int = 1) -> np.ndarray:
    """Anomaly score of each window against the windows that do not overlap it.

    Windows that overlap every other window (the middle of a short recording) have no
    held-out partner and get no score.

    Returns
    -------
    np.ndarray, shape (n_scored,), float32, n_scored <= n

    Raises
    ------
    ValueError
        If fewer than two windows can be scored (recording too short).
    """
    overlap = ((w.stream[:, None] == w.stream[None, :])
               & (w.start[:, None] < w.end[None, :]) & (w.start[None, :] < w.end[:, None]))
    scored = ~np.all(overlap, axis=1)
    if scored.sum() < 2:
        raise ValueError("calibration needs at least two non-overlapping windows of normal "
                         "operation: record for longer (at least twice asd.window_seconds)")
    k = n_members  # per member: 1 - cos to the nearest non-overlapping window, summed
    parts = normalize_members(w.embeddings, k).reshape(len(w), k, -1)
    dist = np.zeros(len(w), np.float64)
    for m in range(k):
        sims = parts[:, m] @ parts[:, m].T
        sims[overlap] = -np.inf
        dist += 1.0 - k * sims.max(axis=1)
    return np.clip(dist[scored], 0.0, 2.0 * k).astype(np.float32)


def fit_calibration(w: CalibrationWindows, embedder, n_clusters: int, threshold_method: str,
                    threshold_params: dict | None = None, window_seconds: float = 10.0,
                    hop_seconds: float = 2.0, seed: int = 0) -> Calibration:
    """Build the memory and estimate the decision threshold from normal scores only."""
    if len(w) < 2:
        raise ValueError(f"only {len(w)} usable calibration window(s) "
                         f"({w.skipped_silent} silent ones skipped): record for longer")
    n_members = getattr(embedder, "n_members", 1)
    scores = held_out_scores(w, n_members)
    est = make_threshold_estimator(threshold_method, **(threshold_params or {})).fit(scores)
    centers = kmeans_centers(w.embeddings, n_clusters, seed, n_members)
    memory = np.concatenate([centers, w.embeddings])
    return Calibration(memory=memory, n_centers=len(centers),
                       decision_threshold=float(est.threshold_), threshold_method=threshold_method,
                       normal_scores=scores, model_id=embedder.model_id,
                       model_sha256=embedder.sha256, window_seconds=window_seconds,
                       hop_seconds=hop_seconds, n_members=n_members,
                       extra={"n_windows": len(w), "skipped_silent": w.skipped_silent,
                              "threshold_params": threshold_params or {}})
