"""On-site calibration: normal recordings -> backend memory + decision threshold.

Thesis Section 5.3.1 (backend) and Sections 2.11 / 4.2 (threshold estimators). The
calibration recordings play the role of the target domain: every normal window embedding
is kept, plus k-means centers of them (SPEC "Backend"). The decision threshold is
estimated from normal scores only. A window's own embedding is in the memory, so its
score would trivially be 0; the scores the threshold is fit on are therefore *held out*:
each window is scored against the memory built from the windows that do not overlap it
in time (overlapping windows share audio and would be near-duplicates).

With several views (``asd.views``, :mod:`edge.views`) every view is held out the same way;
its held-out log distances normalise it (:func:`view_normalisation`) and the threshold is
fitted on the combined held-out scores, each standardised leave-one-out (by the statistics
of the windows that do not overlap it, as a new window is by all of them), counting only the
non-overlapping windows as independent (:func:`independent_windows`).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Iterable

import numpy as np

from calibration.thresholds import make_threshold_estimator
from edge.backend import (LOG_DISTANCE_FLOOR, LOG_STD_FLOOR, Calibration, euclidean_distances,
                          fused_view_score, normalize_members)
from edge.levels import SILENCE_DBFS, rms_dbfs
from edge.pipeline import Windower
from edge.views import (EMBEDDING_VIEW, LOGMEL_DIM, PCA_COMPONENTS, PCA_VIEW, fit_pca,
                        pca_from_moments, pca_residual, view_members, view_metric, view_names,
                        window_views)

log = logging.getLogger(__name__)

__all__ = ["CalibrationWindows", "WindowCollector", "collect_windows", "kmeans_centers", "held_out_scores",
           "view_normalisation", "independent_windows", "fit_calibration", "SILENCE_DBFS"]


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
    names : tuple of str
        The views the calibration will score (:func:`edge.views.view_names`).
    views : dict of str -> np.ndarray, shape (n, D_v), float32
        The windows' vectors in every view of ``names`` but the embedding (float16 for the
        PCA residual view: 62 x 640 log-mel values per 10 s window, 80 kB).
    members : dict of str -> int
        Ensemble members in each view's vector (:func:`edge.views.view_members`).
    """

    embeddings: np.ndarray
    stream: np.ndarray
    start: np.ndarray
    end: np.ndarray
    skipped_silent: int = 0
    names: tuple[str, ...] = (EMBEDDING_VIEW,)
    views: dict[str, np.ndarray] = field(default_factory=dict)
    members: dict[str, int] = field(default_factory=dict)

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
    views : sequence of str
        Config view names (``asd.views``, :data:`edge.views.VIEWS`); the embedding alone by
        default.

    Raises
    ------
    ValueError
        Unknown view names.
    """

    def __init__(self, embedder, views=(EMBEDDING_VIEW,)):
        self.embedder = embedder
        self.names = view_names(embedder, views)
        self._extra = [v for v in self.names if v != EMBEDDING_VIEW]
        self._embs: list[np.ndarray] = []
        self._vecs: dict[str, list[np.ndarray]] = {v: [] for v in self._extra}
        self._spans: list[tuple[int, int, int]] = []
        self.skipped_silent = 0

    def add(self, stream: int, start: int, window: np.ndarray) -> None:
        """Embed one window (``start`` in samples within ``stream``) unless it is silent."""
        if rms_dbfs(window) < SILENCE_DBFS:
            self.skipped_silent += 1
            return
        vecs = window_views(self.embedder, window, (EMBEDDING_VIEW, *self._extra))
        self._embs.append(vecs[EMBEDDING_VIEW])
        for v in self._extra:
            self._vecs[v].append(vecs[v])
        self._spans.append((stream, start, start + len(window)))

    def result(self) -> CalibrationWindows:
        spans = np.array(self._spans, int).reshape(-1, 3)
        embs = np.array(self._embs, np.float32).reshape(-1, self.embedder.embedding_dim)
        # each view keeps its vectors' dtype (the PCA residual's log-mel blocks: float16)
        views = {v: np.array(x, x[0].dtype if x[0].dtype == np.float16 else np.float32)
                 .reshape(len(x), -1) if x else np.zeros((0, 0), np.float32)
                 for v, x in self._vecs.items()}
        return CalibrationWindows(embs, spans[:, 0], spans[:, 1], spans[:, 2],
                                  self.skipped_silent, self.names, views,
                                  {v: view_members(self.embedder, v) for v in self.names})


def collect_windows(streams: Iterable[Iterable[np.ndarray]], embedder, window_seconds: float,
                    hop_seconds: float, progress=None,
                    views=(EMBEDDING_VIEW,)) -> CalibrationWindows:
    """Embed sliding windows of one or more block streams.

    Parameters
    ----------
    streams : iterable of iterables of np.ndarray
        Each stream yields 16 kHz float32 blocks (a microphone capture, or one file).
    embedder : edge.model.AsdEmbedder
    window_seconds, hop_seconds : float
    progress : callable(n_samples) or None
        Called with the number of samples consumed, for progress bars.
    views : sequence of str
        Config view names (``asd.views``) to collect; the embedding alone by default.

    Raises
    ------
    ValueError
        If ``window_seconds`` differs from the model's clip length, or a view is unknown.
    """
    sr = embedder.frontend.sample_rate
    if abs(window_seconds - embedder.frontend.clip_seconds) > 1e-6:
        raise ValueError(f"asd.window_seconds is {window_seconds} s but the model "
                         f"{embedder.model_id} takes {embedder.frontend.clip_seconds} s clips")
    collector = WindowCollector(embedder, views)
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


def _overlap(w: CalibrationWindows) -> np.ndarray:
    """(n, n) bool: windows of one stream that share audio (each overlaps itself)."""
    return ((w.stream[:, None] == w.stream[None, :])
            & (w.start[:, None] < w.end[None, :]) & (w.start[None, :] < w.end[:, None]))


def held_out_scores(w: CalibrationWindows, n_members: int = 1,
                    vectors: np.ndarray | None = None) -> np.ndarray:
    """Anomaly score of each window against the windows that do not overlap it.

    Windows that overlap every other window (the middle of a short recording) have no
    held-out partner and get no score.

    Parameters
    ----------
    w : CalibrationWindows
    n_members : int
        Ensemble members in each vector (distances summed over them).
    vectors : np.ndarray, shape (n, D_v), optional
        The windows in another view; default ``w.embeddings``.

    Returns
    -------
    np.ndarray, shape (n_scored,), float32, n_scored <= n

    Raises
    ------
    ValueError
        If fewer than two windows can be scored (recording too short).
    """
    return _held_out(w.embeddings if vectors is None else vectors, n_members, _overlap(w))


def _held_out(x: np.ndarray, k: int, overlap: np.ndarray) -> np.ndarray:
    """:func:`held_out_scores` of vectors ``x`` (n, D) given the windows' ``overlap``."""
    scored = ~np.all(overlap, axis=1)
    if scored.sum() < 2:
        raise ValueError("calibration needs at least two non-overlapping windows of normal "
                         "operation: record for longer (at least twice asd.window_seconds)")
    # per member: 1 - cos to the nearest non-overlapping window, summed
    parts = normalize_members(x, k).reshape(len(x), k, -1)
    dist = np.zeros(len(x), np.float64)
    for m in range(k):
        sims = parts[:, m] @ parts[:, m].T
        sims[overlap] = -np.inf
        dist += 1.0 - k * sims.max(axis=1)
    return np.clip(dist[scored], 0.0, 2.0 * k).astype(np.float32)


def _held_out_euclidean(x: np.ndarray, overlap: np.ndarray) -> np.ndarray:
    """Euclidean distance (:func:`edge.backend.min_euclidean_distance`) of each window to
    the nearest window that does not overlap it; the windows :func:`_held_out` scores."""
    scored = ~np.all(overlap, axis=1)
    if scored.sum() < 2:
        raise ValueError("calibration needs at least two non-overlapping windows of normal "
                         "operation: record for longer (at least twice asd.window_seconds)")
    d = euclidean_distances(x, x)
    d[overlap] = np.inf
    return d.min(axis=1)[scored].astype(np.float32)


def _held_out_pca(x: np.ndarray, overlap: np.ndarray) -> np.ndarray:
    """PCA residual (:func:`edge.views.pca_residual`) of each window against the subspace
    fitted on the sounding blocks of the windows that do not overlap it; the windows
    :func:`_held_out` scores. NaN for a window without a sounding block, or whose held-out
    windows have fewer than two."""
    scored = ~np.all(overlap, axis=1)
    if scored.sum() < 2:
        raise ValueError("calibration needs at least two non-overlapping windows of normal "
                         "operation: record for longer (at least twice asd.window_seconds)")
    blocks = np.array(x, np.float64).reshape(len(x), -1, LOGMEL_DIM)  # a copy: zeroed below
    sounding = ~np.isnan(blocks).any(axis=2)  # (windows, blocks); silent blocks add nothing
    blocks[~sounding] = 0.0
    per_window = sounding.sum(axis=1)
    total, gram = blocks.sum(axis=(0, 1)), np.einsum("wbi,wbj->ij", blocks, blocks)
    out = []
    for i in np.flatnonzero(scored):
        gone = blocks[overlap[i]].reshape(-1, LOGMEL_DIM)
        n = int(per_window.sum() - per_window[overlap[i]].sum())
        if n < 2:
            out.append(np.nan)
            continue
        model = pca_from_moments(total - gone.sum(axis=0), gram - gone.T @ gone, n,
                                 min(PCA_COMPONENTS, n - 1))
        out.append(pca_residual(x[i], model)[0])
    return np.asarray(out, np.float32)


def view_normalisation(w: CalibrationWindows, fusion: str = "representations"
                       ) -> tuple[dict[str, dict], np.ndarray]:
    """Each view's held-out log-distance statistics and the combined held-out scores.

    Every view of ``w.names`` is scored as :func:`held_out_scores` scores the embedding
    (the PCA residual view: against the subspace of the windows that do not overlap it; the
    level statistics: by Euclidean distance in dB);
    its log distances give ``log_mean`` and ``log_std`` (GenRep's domain normalisation,
    ``004_d4225f15e0df5a46.txt`` Section 2.3, per view), which the node uses on new windows.

    The held-out scores the threshold is fitted on are standardised *leave-one-out*: each
    window's log distance by the mean and standard deviation of the windows that do not
    overlap it (:func:`_leave_one_out_z`), then combined as
    :func:`edge.backend.normalised_view_score` combines (:func:`edge.backend.fused_view_score`
    with ``fusion``, :data:`edge.backend.VIEW_FUSIONS`). A new window is standardised by
    statistics it took no part in, and so is each held-out one. Standardised on statistics
    that include them, the held-out scores of a short calibration bunch up (each view's
    have mean 0 and standard deviation 1 exactly, and their average over the views spreads
    far less than a new window's), and the threshold flags more new normal windows than its
    target (pump with 5 calibration clips in the leave-one-machine-out evaluation).

    Returns
    -------
    norms : dict of str -> {"log_mean", "log_std", "members"}
    scores : np.ndarray, shape (n_scored,), float32
        The combined held-out score of every scored window, standardised leave-one-out.

    Raises
    ------
    ValueError
        Too few windows (:func:`held_out_scores`), or, for the PCA residual view, no
        window with a block of sound (every frame at least :data:`edge.levels.SILENCE_DBFS`).
    """
    z, norms = {}, {}
    overlap = _overlap(w)  # the same windows in every view
    scored = ~np.all(overlap, axis=1)
    apart = ~overlap[np.ix_(scored, scored)]
    for v in w.names:
        metric = view_metric(v)
        if metric == "subspace":
            d = _held_out_pca(w.views[v], overlap)
        elif metric == "euclidean":
            d = _held_out_euclidean(w.views[v], overlap)
        else:
            d = _held_out(w.embeddings if v == EMBEDDING_VIEW else w.views[v], w.members[v],
                          overlap)
        logs = np.log(d.astype(np.float64) + LOG_DISTANCE_FLOOR)
        known = logs[~np.isnan(logs)]
        if not len(known):
            raise ValueError(f"the {v} view cannot score any calibration window: no block of "
                             f"5 frames above {SILENCE_DBFS:g} dBFS; record the machine running")
        norms[v] = {"log_mean": float(known.mean()), "log_std": max(float(known.std()), 1e-6),
                    "members": int(w.members[v])}
        z[v] = _leave_one_out_z(logs, apart, norms[v])
    return norms, fused_view_score(z, fusion)


def _leave_one_out_z(logs: np.ndarray, apart: np.ndarray, norm: dict) -> np.ndarray:
    """Each held-out log distance standardised by the mean and (population) standard
    deviation of the other windows that do not overlap it.

    Parameters
    ----------
    logs : np.ndarray, shape (n,), float64
        One view's held-out log distances; NaN where the view scores nothing.
    apart : np.ndarray, shape (n, n), bool
        Which windows share no audio.
    norm : dict
        The view's statistics over all windows: the fallback for a window with fewer than
        two known partners.

    Returns
    -------
    np.ndarray, shape (n,), float64
        NaN where ``logs`` is; the standard deviation counts as at least
        :data:`edge.backend.LOG_STD_FLOOR`, as on the node.
    """
    known = ~np.isnan(logs)
    x = np.where(known, logs - norm["log_mean"], 0.0)  # centred: sums stay well conditioned
    partners = (apart & known[None, :]).astype(np.float64)
    count = partners.sum(axis=1)
    enough = count >= 2
    safe = np.maximum(count, 1.0)
    mean = partners @ x / safe
    std = np.sqrt(np.maximum(partners @ (x * x) / safe - mean * mean, 0.0))
    mean = np.where(enough, mean, 0.0)
    std = np.where(enough, std, norm["log_std"])
    return np.where(known, (x - mean) / np.maximum(std, LOG_STD_FLOOR), np.nan)


def independent_windows(w: CalibrationWindows) -> int:
    """How many calibration windows do not overlap one another: the independent ones.

    Windows every ``hop`` of ``window`` seconds share audio with their neighbours, so
    their held-out scores are not independent draws; the threshold's margin for few
    scores (:class:`calibration.thresholds.FalsePositiveRate`) counts this many.

    Returns
    -------
    int
        Per stream, the windows taken greedily in time order that start at or after the
        previous one's end, summed over the streams; at least 0.
    """
    n = 0
    for s in np.unique(w.stream):
        last_end = -1
        for start, end in sorted(zip(w.start[w.stream == s], w.end[w.stream == s])):
            if start >= last_end:
                n += 1
                last_end = end
    return n


def fit_calibration(w: CalibrationWindows, embedder, n_clusters: int, threshold_method: str,
                    threshold_params: dict | None = None, window_seconds: float = 10.0,
                    hop_seconds: float = 2.0, seed: int = 0,
                    view_fusion: str = "representations") -> Calibration:
    """Build the memory and estimate the decision threshold from normal scores only.

    The threshold estimator is fitted on :func:`held_out_scores` (several views: the
    combined scores of :func:`view_normalisation` with ``view_fusion``,
    :data:`edge.backend.VIEW_FUSIONS`), counting :func:`independent_windows` of
    them as independent. What it reports about its own
    reliability goes into ``Calibration.extra``: ``n_independent``, and for ``fpr``
    ``target_fpr``, ``confidence``, ``fitted_fpr`` and ``min_independent``.

    Raises
    ------
    ValueError
        Fewer than two usable windows, or none that can be held out.
    """
    if len(w) < 2:
        raise ValueError(f"only {len(w)} usable calibration window(s) "
                         f"({w.skipped_silent} silent ones skipped): record for longer")
    n_members = getattr(embedder, "n_members", 1)
    if w.names == (EMBEDDING_VIEW,):
        norms, scores = {}, held_out_scores(w, n_members)
    else:
        norms, scores = view_normalisation(w, view_fusion)
    n_independent = int(np.clip(independent_windows(w), 2, len(scores)))
    est = make_threshold_estimator(threshold_method, **(threshold_params or {}))
    est.fit(scores, n_independent=n_independent)
    extra = {"n_windows": len(w), "skipped_silent": w.skipped_silent,
             "threshold_params": threshold_params or {}, "n_independent": n_independent}
    if hasattr(est, "fitted_fpr_"):
        extra.update(target_fpr=float(est.target_fpr), confidence=float(est.confidence),
                     fitted_fpr=float(est.fitted_fpr_), min_independent=est.min_independent_)
    centers = kmeans_centers(w.embeddings, n_clusters, seed, n_members)
    memory = np.concatenate([centers, w.embeddings])
    return Calibration(memory=memory, n_centers=len(centers),
                       decision_threshold=float(est.threshold_), threshold_method=threshold_method,
                       normal_scores=scores, model_id=embedder.model_id,
                       model_sha256=embedder.sha256, window_seconds=window_seconds,
                       hop_seconds=hop_seconds, n_members=n_members, extra=extra,
                       views=_view_memories(w), view_norms=norms, view_fusion=view_fusion)


def _view_memories(w: CalibrationWindows) -> dict[str, np.ndarray]:
    """What the calibration keeps per view: every window's vector, and for the PCA residual
    view the subspace of all windows' log-mel blocks (:func:`edge.views.fit_pca`)."""
    out = dict(w.views)
    if PCA_VIEW in out:
        out[PCA_VIEW] = fit_pca(out[PCA_VIEW].reshape(-1, LOGMEL_DIM))
    return out
