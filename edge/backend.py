"""Anomaly scoring backend: cosine distance to a memory of normal embeddings.

Thesis Section 5.3.1 (line 1500ff): embeddings are L2-normalised; the source domain is
represented by k-means centers of normal embeddings, the target domain (here: the
on-site calibration recordings) by every normal embedding; the anomaly score is the
minimum cosine distance over all of them. On-site calibration is domain adaptation by the
backend: the embedder is not retrained on the node.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from firmware_config.fileio import atomic_write_bytes, is_npz_file
from firmware_config.errors import HarkError
from edge.views import LEVEL_VIEW, LOGMEL_DIM, PCA_VIEW, pca_residual, representation, view_metric

__all__ = ["CalibrationError", "normalize_members", "min_cosine_distance", "min_euclidean_distance",
           "euclidean_distances", "view_distance", "normalised_view_score", "fused_view_score",
           "Calibration", "CALIBRATION_SCHEMA", "LOG_DISTANCE_FLOOR", "LOG_STD_FLOOR",
           "VIEW_FUSIONS"]

#: 2: several views (``views``, ``view_norms``); 1 (still read): the embedding view only.
CALIBRATION_SCHEMA = 2
#: Added to distances before their logarithm (a window identical to a memory row).
LOG_DISTANCE_FLOOR = 1e-6
#: Smallest spread of a view's held-out log distances used to normalise it: calibration
#: audio whose windows are all alike (a constant tone) would otherwise turn any change
#: into an astronomically large score.
LOG_STD_FLOOR = 0.1
#: Bound on the mean standardised log distance, so that the score stays finite
#: (``exp(50)`` is about 5e21).
MAX_MEAN_Z = 50.0
#: How the views' standardised log distances combine (:func:`normalised_view_score`):
#: ``"representations"`` averages them within each representation
#: (:func:`edge.views.representation`), then over representations (the default);
#: ``"views"`` over the views, each counting once (every calibration made before 2026-11-30).
VIEW_FUSIONS = ("representations", "views")


class CalibrationError(HarkError, RuntimeError):
    """A calibration artifact is missing, corrupt, or made for another model."""


def normalize_members(x: np.ndarray, n_members: int = 1) -> np.ndarray:
    """L2-normalise each ensemble member's slice of embeddings, then the whole vector.

    Parameters
    ----------
    x : np.ndarray, shape (..., D), float
        ``D`` is split into ``n_members`` equal consecutive slices (one per sub-model).
    n_members : int

    Returns
    -------
    np.ndarray, shape (..., D), float32
        Every slice has norm ``1 / sqrt(n_members)``, the whole vector norm 1. With one
        member this is plain L2 normalisation.
    """
    x = np.asarray(x, np.float32)
    parts = x.reshape(*x.shape[:-1], n_members, -1)
    parts = parts / np.maximum(np.linalg.norm(parts, axis=-1, keepdims=True), 1e-12)
    return (parts / np.sqrt(n_members)).reshape(x.shape).astype(np.float32)


def min_cosine_distance(embeddings: np.ndarray, memory: np.ndarray,
                        n_members: int = 1) -> np.ndarray:
    """Minimum cosine distance of each embedding to a memory (the ``anomaly_score``).

    Thesis Section 5.3.1; for an ensemble the scores of the sub-models are summed
    (thesis Section 5.8, line 1963: "the sum of the anomaly scores belonging to 10
    individually trained versions").

    Parameters
    ----------
    embeddings : np.ndarray, shape (n, D) or (D,)
    memory : np.ndarray, shape (m, D)
    n_members : int
        Ensemble size: ``D`` splits into this many consecutive member slices, each
        compared with the same slice of the memory rows.

    Returns
    -------
    np.ndarray, shape (n,) or scalar, float32, in [0, 2 * n_members]
        ``sum_k (1 - max_j cos(e_k, memory_jk))`` over members ``k``.
    """
    d = _min_distance_to_normalised(embeddings, normalize_members(memory, n_members), n_members)
    return d if np.ndim(embeddings) == 2 else d[0]


def _min_distance_to_normalised(embeddings: np.ndarray, memory: np.ndarray,
                                k: int) -> np.ndarray:
    """:func:`min_cosine_distance` against a memory that :func:`normalize_members` has
    already normalised (a calibration's, once at load), shape (n,) float32: the node scores
    every window without normalising the memory again."""
    e = normalize_members(np.atleast_2d(embeddings), k)
    n, dim = e.shape
    sims = np.einsum("nkd,mkd->knm", e.reshape(n, k, dim // k),
                     memory.reshape(len(memory), k, dim // k))
    d = (1.0 - k * sims.max(axis=2)).sum(axis=0)
    return np.clip(d, 0.0, 2.0 * k).astype(np.float32)


def min_euclidean_distance(vectors: np.ndarray, memory: np.ndarray) -> np.ndarray:
    """Euclidean distance of each vector to its nearest memory row: the score of a view
    whose values are levels in dB (:func:`edge.views.view_metric` ``"euclidean"``).

    Parameters
    ----------
    vectors : np.ndarray, shape (n, D) or (D,), float
    memory : np.ndarray, shape (m, D), float

    Returns
    -------
    np.ndarray, shape (n,), float32, >= 0
        In the vectors' unit (dB for :func:`edge.views.level_statistics`).
    """
    return euclidean_distances(vectors, memory).min(axis=1).astype(np.float32)


#: Bytes of the (rows, m, D) difference array :func:`euclidean_distances` holds at once.
PAIRWISE_CHUNK_BYTES = 8 << 20


def euclidean_distances(vectors: np.ndarray, memory: np.ndarray) -> np.ndarray:
    """Every pairwise Euclidean distance, shape (n, m), float64 (NumPy only: scipy is not
    installed on a node); :func:`min_euclidean_distance` and the calibration's held-out
    distances take their minima.

    The differences are taken a block of rows at a time (at most
    :data:`PAIRWISE_CHUNK_BYTES` of them), so an hour of calibration windows against
    itself needs a few MB, not an (n, n, D) array; every value is the same as in one go.
    """
    x = np.atleast_2d(np.asarray(vectors, np.float64))
    m = np.asarray(memory, np.float64)
    out = np.empty((len(x), len(m)), np.float64)
    rows = max(1, PAIRWISE_CHUNK_BYTES // max(8 * m.size, 1))
    for a in range(0, len(x), rows):
        out[a:a + rows] = np.sqrt(((x[a:a + rows, None, :] - m[None, :, :]) ** 2).sum(axis=2))
    return out


def view_distance(name: str, vectors: np.ndarray, memory: np.ndarray,
                  n_members: int = 1) -> np.ndarray:
    """Distance of windows in one view to that view's memory, by the view's metric
    (:func:`edge.views.view_metric`): the PCA residual, the Euclidean distance, or the
    minimum cosine distance to a member-normalised memory.

    Parameters
    ----------
    name : str
        A scored view name (:func:`edge.views.view_names`).
    vectors : np.ndarray, shape (n, D_v) or (D_v,), float
    memory : np.ndarray
        The calibration's memory of the view (:attr:`Calibration.views`; for the
        embedding :attr:`Calibration.memory`).
    n_members : int

    Returns
    -------
    np.ndarray, shape (n,), float32; NaN where the PCA residual has no sounding block.
    """
    metric = view_metric(name)
    if metric == "subspace":
        return pca_residual(vectors, memory)
    if metric == "euclidean":
        return min_euclidean_distance(vectors, memory)
    return _min_distance_to_normalised(vectors, memory, n_members)


def normalised_view_score(distances: dict[str, np.ndarray],
                          norms: dict[str, dict[str, float]],
                          fusion: str = "representations") -> np.ndarray:
    """Combine the views' distances: ``exp(mean z)``, ``z_v`` the standardised log distance.

    ``z_v = (log(d_v + LOG_DISTANCE_FLOOR) - log_mean_v) / log_std_v`` with the mean and
    standard deviation of view ``v``'s held-out calibration log distances: each view's
    distances in units of its own spread on normal sound (GenRep's domain normalisation,
    ``004_d4225f15e0df5a46.txt`` Section 2.3, Z-score per memory bank; here per view, on
    log distances, since cosine distances of normal windows are skewed). With ``fusion``
    ``"representations"`` the ``z_v`` are averaged within each representation
    (:func:`edge.views.representation`: the embedding and the embedder's branches are one)
    and then over the representations, so that one network seen through three views does
    not outvote the others three to one; with ``"views"`` over the views directly. The mean
    is exponentiated so that the score stays positive, as the threshold estimators expect:
    1 is a typical calibration window, larger is more anomalous.

    Parameters
    ----------
    distances : dict of str -> np.ndarray, shape (n,), float
        Distance of ``n`` windows in every view of ``norms`` (:func:`view_distance`); NaN where a
        view has nothing to score (the PCA residual of a silent window,
        :func:`edge.views.pca_residual`): the mean is then over the other views.
    norms : dict of str -> {"log_mean": float, "log_std": float, ...}
    fusion : {"representations", "views"}
        :data:`VIEW_FUSIONS`.

    Returns
    -------
    np.ndarray, shape (n,), float32, > 0 and finite
        The mean ``z`` is clipped to ``[-MAX_MEAN_Z, MAX_MEAN_Z]``; each ``log_std`` counts
        as at least :data:`LOG_STD_FLOOR`; a window no view scores gets 1 (typical).

    Raises
    ------
    ValueError
        An unknown ``fusion``.
    """
    return fused_view_score({v: (np.log(np.asarray(distances[v], np.float64) + LOG_DISTANCE_FLOOR)
                                 - n["log_mean"]) / max(n["log_std"], LOG_STD_FLOOR)
                             for v, n in norms.items()}, fusion)


def fused_view_score(z: dict[str, np.ndarray], fusion: str = "representations") -> np.ndarray:
    """Combine the views' standardised log distances ``z_v`` into ``exp(mean z)``.

    The combination step of :func:`normalised_view_score`, for callers that standardise
    each window differently (the calibration's leave-one-out held-out scores,
    :func:`calibration.calibrate.view_normalisation`).

    Parameters
    ----------
    z : dict of str -> np.ndarray, shape (n,), float
        Every view's standardised log distance of ``n`` windows; NaN where the view has
        nothing to say about a window.
    fusion : {"representations", "views"}
        :data:`VIEW_FUSIONS`.

    Returns
    -------
    np.ndarray, shape (n,), float32, > 0 and finite
        As :func:`normalised_view_score` returns.

    Raises
    ------
    ValueError
        An unknown ``fusion``.
    """
    if fusion not in VIEW_FUSIONS:
        raise ValueError(f"fusion {fusion!r}: expected one of {', '.join(VIEW_FUSIONS)}")
    rows = np.array([np.asarray(z[v], np.float64) for v in z]).reshape(len(z), -1)
    if fusion == "representations":
        groups: dict[str, list[int]] = {}
        for i, v in enumerate(z):
            groups.setdefault(representation(v), []).append(i)
        rows = np.stack([_nanmean_rows(rows[g]) for g in groups.values()])
    mean_z = np.nan_to_num(_nanmean_rows(rows), nan=0.0)
    return np.exp(np.clip(mean_z, -MAX_MEAN_Z, MAX_MEAN_Z)).astype(np.float32)


def _nanmean_rows(z: np.ndarray) -> np.ndarray:
    """Column means of ``z`` (rows, n) over its non-NaN entries; NaN where all are NaN."""
    scored = ~np.isnan(z)
    count = scored.sum(axis=0)
    return np.divide(np.where(scored, z, 0.0).sum(axis=0), count,
                     out=np.full(z.shape[1], np.nan), where=count > 0)


@dataclass
class Calibration:
    """The on-site calibration: backend memory and decision threshold.

    Attributes
    ----------
    memory : np.ndarray, shape (m, D), float32
        L2-normalised k-means centers followed by every calibration embedding.
    n_members : int
        Ensemble size of the embedder (its ``ensemble_members``); scores are summed over
        the members' embedding slices (:func:`min_cosine_distance`).
    n_centers : int
        How many of the first rows of ``memory`` are k-means centers.
    decision_threshold : float
        A window is anomalous when its ``anomaly_score`` exceeds this.
    threshold_method : str
        Estimator that produced the threshold (e.g. ``"mst-iqr"``).
    normal_scores : np.ndarray, shape (n,), float32
        Held-out anomaly scores of the calibration windows the threshold was fit on.
    model_id, model_sha256 : str
        The embedder the memory was computed with; the node refuses other models.
    window_seconds, hop_seconds : float
    created : str
        UTC ISO-8601.
    calibration_id : str
        Content hash prefix, reported in every event.
    views : dict of str -> np.ndarray, shape (m_v, D_v), float32
        Memories of the views other than the embedding (:mod:`edge.views`): every
        calibration window's vector, member-normalised; for ``pca_residual`` the principal
        subspace of the calibration's log-mel blocks (:func:`edge.views.fit_pca`, mean and
        components); for ``level_statistics`` the vectors as they are (dB). Empty for a
        single-view calibration.
    view_norms : dict of str -> dict
        For a multi-view calibration, every scored view (``"embedding"`` first) with
        ``log_mean`` and ``log_std`` of its held-out log distances and ``members`` (the
        ensemble members its vector holds). Empty: the embedding view alone, scored by its
        raw cosine distance (:meth:`anomaly_score`).
    view_fusion : {"representations", "views"}
        How a multi-view calibration combines its views (:data:`VIEW_FUSIONS`); the
        threshold was fitted on held-out scores combined the same way. An artifact without
        it was made before ``"representations"`` existed and is read as ``"views"``.
    """

    memory: np.ndarray
    n_centers: int
    decision_threshold: float
    threshold_method: str
    normal_scores: np.ndarray
    model_id: str
    model_sha256: str
    window_seconds: float
    hop_seconds: float
    created: str = field(default_factory=lambda: dt.datetime.now(dt.timezone.utc)
                         .isoformat(timespec="seconds"))
    extra: dict[str, Any] = field(default_factory=dict)
    calibration_id: str = ""
    n_members: int = 1
    views: dict[str, np.ndarray] = field(default_factory=dict)
    view_norms: dict[str, dict[str, float]] = field(default_factory=dict)
    view_fusion: str = "representations"

    def __post_init__(self):
        if self.view_fusion not in VIEW_FUSIONS:
            raise ValueError(f"view_fusion {self.view_fusion!r}: expected one of "
                             f"{', '.join(VIEW_FUSIONS)}")
        self.memory = normalize_members(self.memory, self.n_members)
        self.normal_scores = np.asarray(self.normal_scores, np.float32)
        self.views = {v: normalize_members(m, int(self.view_norms[v]["members"]))
                      if view_metric(v) == "cosine" else np.asarray(m, np.float32)
                      for v, m in self.views.items()}
        if not self.calibration_id:
            h = hashlib.sha256(self.memory.tobytes())
            for v in sorted(self.views):
                h.update(self.views[v].tobytes())
            h.update(f"{self.decision_threshold:.9g}{self.model_sha256}{self.created}"
                     f"{json.dumps(self.view_norms, sort_keys=True)}{self.view_fusion}".encode())
            self.calibration_id = "cal-" + h.hexdigest()[:12]

    @property
    def view_names(self) -> tuple[str, ...]:
        """The views this calibration scores (:mod:`edge.views`); ``("embedding",)`` alone
        for a single-view one."""
        return tuple(self.view_norms) if self.view_norms else ("embedding",)

    def score_views(self, vectors: dict[str, np.ndarray]) -> np.ndarray:
        """Anomaly scores of windows given in every view (higher = more anomalous).

        Single-view: the embedding's minimum cosine distance (:meth:`anomaly_score`).
        Several views: each view's distance to its own memory (:func:`view_distance`: the
        minimum cosine distance; for the PCA residual view the distance from the
        calibration's principal subspace, for the level statistics the Euclidean distance
        in dB), combined by :func:`normalised_view_score`.

        Parameters
        ----------
        vectors : dict of str -> np.ndarray, shape (n, D_v) or (D_v,), float
            Every name of :attr:`view_names` (:func:`edge.views.window_views`).

        Returns
        -------
        np.ndarray, shape (n,), float32

        Raises
        ------
        ValueError
            A view of the calibration is missing from ``vectors``.
        """
        missing = [v for v in self.view_names if v not in vectors]
        if missing:
            raise ValueError(f"calibration {self.calibration_id} scores the views "
                             f"{list(self.view_names)}; missing {missing}")
        if not self.view_norms:
            return self.anomaly_score(vectors["embedding"])
        dist = {v: view_distance(v, vectors[v],
                                 self.memory if v == "embedding" else self.views[v],
                                 int(n["members"]))
                for v, n in self.view_norms.items()}
        return normalised_view_score(dist, self.view_norms, self.view_fusion)

    def anomaly_score(self, embeddings: np.ndarray) -> np.ndarray:
        """Anomaly scores of a single-view calibration: the minimum cosine distance to the
        memory (higher = more anomalous).

        Thesis Section 5.3.1 (line 1500ff); ensembles as in :func:`min_cosine_distance`.
        A multi-view calibration scores with :meth:`score_views`.

        Parameters
        ----------
        embeddings : np.ndarray, shape (n, D) or (D,), float

        Returns
        -------
        np.ndarray, shape (n,), float32

        Raises
        ------
        ValueError
            The calibration scores several views.
        """
        if self.view_norms:
            raise ValueError(f"calibration {self.calibration_id} scores the views "
                             f"{list(self.view_names)}: use score_views")
        return _min_distance_to_normalised(embeddings, self.memory, self.n_members)

    def is_anomalous(self, anomaly_score):
        """The decision rule: anomalous when ``anomaly_score > decision_threshold`` (strictly).

        The same rule as :meth:`calibration.thresholds.ThresholdEstimator.predict`, which
        fitted :attr:`decision_threshold` on held-out normal scores.

        Parameters
        ----------
        anomaly_score : float or np.ndarray of float
            From :meth:`anomaly_score`.

        Returns
        -------
        bool or np.ndarray of bool
            Same shape as the input.
        """
        if np.ndim(anomaly_score) == 0:
            return bool(anomaly_score > self.decision_threshold)
        return np.asarray(anomaly_score) > self.decision_threshold

    def _meta(self) -> dict[str, Any]:
        return {"schema": CALIBRATION_SCHEMA, "calibration_id": self.calibration_id,
                "n_centers": self.n_centers, "decision_threshold": self.decision_threshold,
                "threshold_method": self.threshold_method, "model_id": self.model_id,
                "model_sha256": self.model_sha256, "window_seconds": self.window_seconds,
                "hop_seconds": self.hop_seconds, "created": self.created, "extra": self.extra,
                "n_members": self.n_members, "view_norms": self.view_norms,
                "view_fusion": self.view_fusion}

    def save(self, path: str | Path) -> Path:
        """Write the artifact (``.npz``) atomically."""
        buf = io.BytesIO()
        np.savez(buf, memory=self.memory, normal_scores=self.normal_scores,
                 meta=np.frombuffer(json.dumps(self._meta()).encode(), dtype=np.uint8),
                 **{f"view_{v}": m for v, m in self.views.items()})
        return atomic_write_bytes(path, buf.getvalue())

    @classmethod
    def load(cls, path: str | Path, model_sha256: str | None = None) -> "Calibration":
        """Read an artifact; with ``model_sha256``, also check it was made for that model.

        Raises
        ------
        CalibrationError
            Missing, unreadable or inconsistent file, or another model's calibration.
        """
        path = Path(path)
        if path.is_dir():
            raise CalibrationError(f"{path} is a folder, not a calibration artifact "
                                   "(asd.calibration names the .npz file)")
        if not path.is_file():
            raise CalibrationError(
                f"calibration not found: {path}. Record normal operation first: "
                "python -m calibration record --config <node.yaml> --minutes 10")
        try:
            npz = is_npz_file(path)
        except OSError as exc:
            raise CalibrationError(f"cannot read calibration {path}: {exc.strerror or exc}") \
                from None
        if not npz:
            raise CalibrationError(f"{path} is not a calibration artifact (corrupt, or not an "
                                   ".npz archive; `python -m calibration record` writes one)")
        try:
            with np.load(path, allow_pickle=False) as z:
                meta = json.loads(bytes(z["meta"]).decode())
                memory, scores = z["memory"], z["normal_scores"]
                views = {k[len("view_"):]: z[k] for k in z.files if k.startswith("view_")}
        except Exception as exc:
            raise CalibrationError(f"calibration {path} is corrupt or not a calibration "
                                   f"artifact: {exc}") from exc
        if meta.get("schema") not in (1, CALIBRATION_SCHEMA):
            raise CalibrationError(f"calibration {path}: unsupported schema {meta.get('schema')}")
        norms = meta.get("view_norms") or {}
        for m in (memory, *views.values()):
            if m.ndim != 2 or not np.all(np.isfinite(m)) or len(m) == 0:
                raise CalibrationError(f"calibration {path}: memory is empty or not finite")
        pca = views.get(PCA_VIEW)
        if pca is not None and (pca.shape[1] != LOGMEL_DIM or len(pca) < 2):
            raise CalibrationError(f"calibration {path}: its {PCA_VIEW} subspace has shape "
                                   f"{pca.shape}, expected (1 + components, {LOGMEL_DIM})")
        level = views.get(LEVEL_VIEW)
        if level is not None and level.shape[1] != 2:
            raise CalibrationError(f"calibration {path}: its {LEVEL_VIEW} memory has shape "
                                   f"{level.shape}, expected (windows, 2)")
        expect = set(norms) - {"embedding"}
        if set(views) != expect or any(
                not (isinstance(n, dict) and n.get("log_std", 0) > 0 and "log_mean" in n
                     and int(n.get("members", 0)) >= 1) for n in norms.values()):
            raise CalibrationError(f"calibration {path}: its views {sorted(views)} and their "
                                   f"normalisation {sorted(norms)} do not match")
        fusion = meta.get("view_fusion", "views")  # older artifacts: the mean over views
        if fusion not in VIEW_FUSIONS:
            raise CalibrationError(f"calibration {path}: unknown view_fusion {fusion!r} "
                                   f"(expected one of {', '.join(VIEW_FUSIONS)})")
        if model_sha256 is not None and meta["model_sha256"] != model_sha256:
            raise CalibrationError(
                f"calibration {path} was made with model {meta['model_id']}, not the configured "
                "model; recalibrate with `python -m calibration record`")
        kw = {k: meta[k] for k in ("n_centers", "decision_threshold", "threshold_method",
                                   "model_id", "model_sha256", "window_seconds", "hop_seconds",
                                   "created", "extra", "calibration_id")}
        kw["n_members"] = int(meta.get("n_members", 1))
        return cls(memory=memory, normal_scores=scores, views=views, view_norms=norms,
                   view_fusion=fusion, **kw)
