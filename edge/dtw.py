"""Sub-sequence dynamic time warping (DTW) for few-shot keyword spotting.

Thesis section 6.3.6 "DTW backend" (``../shared/papers/001_bc66ac417165e5b3.txt``, line
2176ff): the cost matrix between an enrolled keyword shot (the *template*, ``M`` frames) and
the stream (``N`` frames) holds pairwise cosine distances; costs are accumulated with the
step sizes (1, 1), (1, 2) and (2, 1); for every stream position the warping path ending
there is found and its accumulated cost normalised by the path length gives the matching
cost; a detection is where it falls below a threshold (see :mod:`edge.kws`).

Recursion, with ``i`` the template index and ``j`` the stream index::

    D[0, j] = C[0, j]                                         (free start anywhere)
    D[i, j] = C[i, j] + min(D[i-1, j-1], D[i-1, j-2], D[i-2, j-1])      i >= 1

with out-of-range predecessors ``+inf``. The minimum is taken as ``librosa`` does it
(``librosa.sequence.__dtw_calc_accu_cost``): the candidates ``D[pred] + C[i, j]`` are
compared with a strict ``<`` in the step order (1, 1), (1, 2), (2, 1), starting from
``+inf``. Hence ``accumulated_cost`` equals
``librosa.sequence.dtw(C=C, subseq=True, step_sizes_sigma=[[1, 1], [1, 2], [2, 1]],
backtrack=False)`` bit for bit (float64), and the step chosen in every cell is librosa's
(librosa evaluates its three default steps first, with infinite weights so that they never
win: its step index is ours + 3).
Alongside ``D`` every cell carries the stream index where its best path starts and the path
length in cells (1 on row 0, +1 per step), so the matching cost needs no backtracking:
``D[M-1, j] / length[M-1, j]``. A path over ``M`` template rows spans between
``ceil(M / 2)`` and ``2 M - 1`` stream frames.

Two entry points:

* :func:`subsequence_dtw` - the whole matrix at once, row by row: no step stays in its row
  (every step advances the template index), so a row depends on the two rows above only and
  is computed in one vectorised NumPy pass along the stream;
* :class:`StreamingSubsequenceDTW` - the node's path: ``K`` templates stacked, one new column
  per stream frame, only the last two columns kept; likewise no step stays in its column, so
  a column is one vectorised pass over all stacked rows. Results equal the batch ones exactly.

Both relax a cell with :func:`_relax`, the one place that holds librosa's tie-breaking.

Cost helpers: :func:`cosine_cost_matrix` (float64, exact enough to compare with SciPy) and
:func:`cosine_cost_columns` (the node's: one column of the stacked cost matrix per frame,
float32 dot products computed frame by frame, so a frame's costs do not depend on how the
stream was chunked).

Plain NumPy: a node imports neither Numba (its LLVM is about 100 MB of resident memory) nor
SciPy for keyword spotting. At the node's frame rates (12.5 to 62.5 frames per second) a
column costs tens of microseconds, a real-time factor well under 0.01 (``make bench``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

__all__ = ["SubsequenceDtwResult", "cosine_cost_matrix", "cosine_cost_columns",
           "subsequence_dtw", "StreamingSubsequenceDTW", "STEP_SIZES"]

#: The DTW step sizes as (template step, stream step), in tie-breaking order.
STEP_SIZES = np.array([[1, 1], [1, 2], [2, 1]], dtype=np.int64)


# --------------------------------------------------------------------------------------
# validation helpers
# --------------------------------------------------------------------------------------


def _check_cost_values(C: np.ndarray, what: str) -> None:
    """Raise ValueError for NaN, -inf or negative entries (``+inf`` is allowed)."""
    if C.size and not bool(np.all(C >= 0.0)):  # False for NaN too
        if np.isnan(C).any():
            raise ValueError(f"{what} contains NaN")
        raise ValueError(f"{what} contains negative values (min {np.nanmin(C)!r}); "
                         "DTW costs must be >= 0 (use cosine_cost_matrix, which clips)")


def _as_cost_matrix(C) -> np.ndarray:
    C = np.asarray(C)
    if C.ndim != 2:
        raise ValueError(f"cost matrix must be 2-D (template frames, stream frames), got "
                         f"shape {C.shape}")
    if C.shape[0] == 0 or C.shape[1] == 0:
        raise ValueError(f"cost matrix must not be empty, got shape {C.shape}")
    if not (np.issubdtype(C.dtype, np.floating) or np.issubdtype(C.dtype, np.integer)):
        raise ValueError(f"cost matrix must be real-valued, got dtype {C.dtype}")
    C = np.ascontiguousarray(C, dtype=np.float64)
    _check_cost_values(C, "cost matrix")
    return C


# --------------------------------------------------------------------------------------
# cost matrices
# --------------------------------------------------------------------------------------


def _unit_rows(x: np.ndarray, dtype) -> np.ndarray:
    x = np.asarray(x, dtype=dtype)
    norm = np.sqrt(np.einsum("ij,ij->i", x, x))
    # zero rows stay zero: their cosine similarity to anything is 0, their cost 1
    return x / np.where(norm > 0.0, norm, 1.0)[:, None]


def cosine_cost_matrix(template: np.ndarray, stream: np.ndarray) -> np.ndarray:
    """Pairwise cosine distances between template frames and stream frames.

    Parameters
    ----------
    template : np.ndarray [shape=(M, D)]
        Embeddings of the keyword shot, one row per frame (any real dtype).
    stream : np.ndarray [shape=(N, D)]
        Embeddings of the stream.

    Returns
    -------
    C : np.ndarray [shape=(M, N), dtype=float64]
        ``1 - cos(template[i], stream[j])`` clipped to ``[0, 2]``; rows are L2-normalised
        inside. A zero row (no direction) has similarity 0 to everything, i.e. cost 1, never
        NaN. Equals ``scipy.spatial.distance.cdist(template, stream, "cosine")`` up to
        rounding (thesis 6.3.6: "pairwise cosine distances").

    Raises
    ------
    ValueError
        If an input is not 2-D, is empty, the feature dimensions differ, or a value is not
        finite.
    """
    a = np.asarray(template)
    b = np.asarray(stream)
    for name, x in (("template", a), ("stream", b)):
        if x.ndim != 2 or x.shape[0] == 0 or x.shape[1] == 0:
            raise ValueError(f"{name} must be a non-empty 2-D array (frames, D), got shape "
                             f"{x.shape}")
        if not np.all(np.isfinite(x)):
            raise ValueError(f"{name} contains NaN or infinite values")
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"feature dimensions differ: template D={a.shape[1]}, stream "
                         f"D={b.shape[1]}")
    C = 1.0 - _unit_rows(a, np.float64) @ _unit_rows(b, np.float64).T
    return np.clip(C, 0.0, 2.0, out=C)


def cosine_cost_columns(frames_unit: np.ndarray, templates_unit: np.ndarray) -> np.ndarray:
    """Cost columns of the stacked cosine cost matrix for a few new stream frames.

    The streaming counterpart of :func:`cosine_cost_matrix`: row ``t`` of the result is the
    cost column of stream frame ``t`` against every stacked template row, ready for
    :meth:`StreamingSubsequenceDTW.update_many`. The float32 dot products are computed one
    frame at a time (a matrix-vector product of the same shapes for every frame), so a
    frame's costs are bit-identical however the stream is cut into chunks (a matrix-matrix
    product is not: BLAS rounds differently depending on the shapes involved).

    Parameters
    ----------
    frames_unit : np.ndarray [shape=(n, D), dtype=float32]
        New stream frames, rows already L2-normalised (zero rows allowed).
    templates_unit : np.ndarray [shape=(R, D), dtype=float32]
        All template frames stacked, rows L2-normalised.

    Returns
    -------
    np.ndarray [shape=(n, R), dtype=float64]
        ``1 - frames_unit @ templates_unit.T`` (float32 products) clipped to ``[0, 2]``.

    Raises
    ------
    ValueError
        If the arrays are not 2-D, ``R`` is 0 or the feature dimensions differ.
    """
    f = np.asarray(frames_unit, dtype=np.float32)
    q = np.ascontiguousarray(templates_unit, dtype=np.float32)
    if f.ndim != 2 or q.ndim != 2 or f.shape[1] != q.shape[1] or q.shape[0] == 0:
        raise ValueError(f"need frames (n, D) and templates (R >= 1, D), got {f.shape} and "
                         f"{q.shape}")
    sims = np.empty((f.shape[0], q.shape[0]), np.float32)
    for t in range(f.shape[0]):
        np.matmul(q, f[t], out=sims[t])
    # cosine distance; rounding can push a unit-vector dot product a hair past +-1
    out = 1.0 - sims.astype(np.float64)
    return np.clip(out, 0.0, 2.0, out=out)


# --------------------------------------------------------------------------------------
# batch sub-sequence DTW
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SubsequenceDtwResult:
    """Result of :func:`subsequence_dtw` for one template against one stream.

    Attributes
    ----------
    accumulated_cost : np.ndarray [shape=(M, N), dtype=float64]
        ``D``; ``+inf`` where no path can reach the cell.
    start : np.ndarray [shape=(M, N), dtype=int64]
        Stream index (column) where the best path into the cell starts; -1 if unreachable.
    length : np.ndarray [shape=(M, N), dtype=int64]
        Number of cells on that path (1 on row 0); 0 if unreachable.
    """

    accumulated_cost: np.ndarray
    start: np.ndarray
    length: np.ndarray

    @property
    def matching_cost(self) -> np.ndarray:
        """Path-length normalised cost of the best path ending at each stream frame.

        Returns
        -------
        np.ndarray [shape=(N,), dtype=float64]
            ``D[M-1, j] / length[M-1, j]``; ``+inf`` where no path ends at ``j``.
        """
        d = self.accumulated_cost[-1]
        n = self.length[-1]
        out = np.full(d.shape, np.inf)
        ok = n > 0
        np.divide(d, n, out=out, where=ok)
        return out


def _relax(cost, a, b, c):
    """Relax cells from their three predecessors, vectorised over the cells.

    ``a``, ``b``, ``c`` are the predecessors' ``(D, start, length)`` arrays for the steps
    (1, 1), (1, 2), (2, 1), aligned with ``cost``. As librosa does it: candidate
    ``D + cost``, strict ``<``, in step order, starting from ``+inf``. Returns the cells'
    ``(D, start, length)``: start -1 and length 0 where no path reaches.
    """
    best = a[0] + cost
    start = a[1]
    length = a[2]
    for d, s, n in (b, c):
        v = d + cost
        take = v < best
        best = np.where(take, v, best)
        start = np.where(take, s, start)
        length = np.where(take, n, length)
    reach = best < np.inf
    return best, np.where(reach, start, -1), np.where(reach, length + 1, 0)


def subsequence_dtw(C) -> SubsequenceDtwResult:
    """Sub-sequence DTW of a template against a stream, from their cost matrix.

    Step sizes (1, 1), (1, 2), (2, 1) in (template, stream) index, free start and end in
    the stream (thesis 6.3.6). The matrices are filled row by row, each row in one
    vectorised pass (:func:`_relax`).

    Parameters
    ----------
    C : array_like [shape=(M, N)]
        Local costs, template frames along axis 0, stream frames along axis 1, e.g. from
        :func:`cosine_cost_matrix`. Converted to float64. ``+inf`` marks a forbidden cell.

    Returns
    -------
    SubsequenceDtwResult
        ``accumulated_cost`` (M, N) float64, identical to
        ``librosa.sequence.dtw(C=C, subseq=True, step_sizes_sigma=[[1, 1], [1, 2], [2, 1]],
        backtrack=False)``; ``start`` and ``length`` (M, N) int64 of the best path into each
        cell; ``matching_cost`` (N,) = last row of ``D`` / path length (``inf`` where no
        path ends).

    Raises
    ------
    ValueError
        If ``C`` is not 2-D, is empty, or holds NaN, ``-inf`` or negative values.

    Examples
    --------
    >>> C = cosine_cost_matrix(template, stream)           # doctest: +SKIP
    >>> r = subsequence_dtw(C)                             # doctest: +SKIP
    >>> j = int(np.argmin(r.matching_cost)); r.start[-1, j], j   # path span (onset, end)
    """
    C = _as_cost_matrix(C)
    M, N = C.shape
    # One leading row and two leading columns of padding (+inf, start -1, length 0) stand
    # for the predecessors outside the matrix; cell (i, j) lives at [i + 1, j + 2].
    D = np.full((M + 1, N + 2), np.inf)
    S = np.full((M + 1, N + 2), -1, np.int64)
    L = np.zeros((M + 1, N + 2), np.int64)
    reach = C[0] < np.inf  # row 0: a path starts at every reachable cell
    D[1, 2:] = C[0]
    S[1, 2:] = np.where(reach, np.arange(N), -1)
    L[1, 2:] = reach
    for i in range(2, M + 1):
        D[i, 2:], S[i, 2:], L[i, 2:] = _relax(
            C[i - 1],
            (D[i - 1, 1:-1], S[i - 1, 1:-1], L[i - 1, 1:-1]),  # (i-1, j-1): step (1, 1)
            (D[i - 1, :-2], S[i - 1, :-2], L[i - 1, :-2]),  # (i-1, j-2): step (1, 2)
            (D[i - 2, 1:-1], S[i - 2, 1:-1], L[i - 2, 1:-1]))  # (i-2, j-1): step (2, 1)
    D, S, L = (np.ascontiguousarray(x[1:, 2:]) for x in (D, S, L))
    return SubsequenceDtwResult(D, S, L)


# --------------------------------------------------------------------------------------
# streaming sub-sequence DTW
# --------------------------------------------------------------------------------------


class StreamingSubsequenceDTW:
    """Sub-sequence DTW of ``K`` templates against a stream, one stream frame at a time.

    The templates are stacked along one axis (``R = sum(template_lengths)`` rows); every
    frame adds one column of the accumulated cost (and path start and length) over all of
    them in one vectorised pass, keeping only the last two columns: memory ``O(R)``, work
    ``O(R)`` per frame, never a recomputation of the matrix (SPEC, "KWS embedder";
    thesis 6.3.6). The results equal :func:`subsequence_dtw` on the full cost matrices,
    bit for bit.

    Parameters
    ----------
    template_lengths : sequence of int
        Frames ``M_k >= 1`` of each template, in stacking order.

    Attributes
    ----------
    template_lengths : np.ndarray [shape=(K,), dtype=int64]
    offsets : np.ndarray [shape=(K + 1,), dtype=int64]
        Row offsets of the templates in a stacked cost column.
    n_rows : int
        ``R``, the length of a cost column.
    frames_seen : int
        Stream frames processed since construction or :meth:`reset`.

    Raises
    ------
    ValueError
        If ``template_lengths`` is empty or holds a length < 1.
    """

    def __init__(self, template_lengths: Sequence[int]):
        lengths = np.asarray(template_lengths)
        if lengths.ndim != 1 or lengths.size == 0:
            raise ValueError("need at least one template length")
        if not np.issubdtype(lengths.dtype, np.integer) or np.any(lengths < 1):
            raise ValueError(f"template lengths must be integers >= 1, got {template_lengths!r}")
        self.template_lengths = lengths.astype(np.int64)
        self.offsets = np.concatenate([[0], np.cumsum(self.template_lengths)]).astype(np.int64)
        self.n_rows = int(self.offsets[-1])
        # Every row r takes its predecessors from rows r - 1 and r - 2 of the previous
        # columns (views, shifted by two leading +inf slots); a template's first row takes
        # none (a path starts there) and its second row has no (2, 1) step: both are fixed
        # up after the vectorised pass.
        self._first = self.offsets[:-1]
        self._second = self.offsets[:-1][self.template_lengths > 1] + 1
        self._ends = self.offsets[1:] - 1
        # the last three columns (column j in slot j % 3), rows at 2 .. R + 1
        R = self.n_rows
        self._D = np.empty((3, R + 2), np.float64)
        self._S = np.empty((3, R + 2), np.int64)
        self._L = np.empty((3, R + 2), np.int64)
        self.reset()

    @property
    def n_templates(self) -> int:
        """``K``."""
        return int(self.template_lengths.size)

    def reset(self) -> None:
        """Forget the stream: the next frame is frame 0 again."""
        self._D.fill(np.inf)
        self._S.fill(-1)
        self._L.fill(0)
        self.frames_seen = 0

    def _check(self, costs: np.ndarray) -> np.ndarray:
        costs = np.ascontiguousarray(costs, dtype=np.float64)
        ok = costs >= 0.0  # False for NaN too; +inf is allowed
        if not ok.all():
            bad = int(np.argmin(ok.ravel()))
            v = costs.flat[bad]
            raise ValueError(f"cost column value {v!r} at flat index {bad} is "
                             f"{'NaN' if np.isnan(v) else 'negative'}; costs must be >= 0")
        return costs

    def update(self, cost_column: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Add one stream frame.

        Parameters
        ----------
        cost_column : np.ndarray [shape=(R,), dtype=float64]
            Local costs of the new frame against every template row, templates stacked in
            order (``+inf`` allowed as "forbidden").

        Returns
        -------
        matching_cost : np.ndarray [shape=(K,), dtype=float64]
            Path-length normalised cost of each template's best path ending at this frame;
            ``+inf`` where none (a template of ``M`` frames needs ``ceil(M/2)`` frames).
        start_frame : np.ndarray [shape=(K,), dtype=int64]
            Absolute stream frame index where that path starts (-1 where none).

        Raises
        ------
        ValueError
            If the column has the wrong shape or holds NaN or negative values; the state is
            unchanged then.
        """
        col = np.asarray(cost_column)
        if col.shape != (self.n_rows,):
            raise ValueError(f"cost column must have shape ({self.n_rows},), got {col.shape}")
        cost, start = self.update_many(col[None, :])
        return cost[0], start[0]

    def update_many(self, cost_columns: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Add ``n`` stream frames (same results as ``n`` updates).

        Parameters
        ----------
        cost_columns : np.ndarray [shape=(n, R), dtype=float64]
            One cost column per new frame, oldest first.

        Returns
        -------
        matching_cost : np.ndarray [shape=(n, K), dtype=float64]
        start_frame : np.ndarray [shape=(n, K), dtype=int64]
            As in :meth:`update`, one row per frame.

        Raises
        ------
        ValueError
            If the shape is wrong or a value is NaN or negative (nothing is consumed then).
        """
        costs = np.asarray(cost_columns)
        if costs.ndim != 2 or costs.shape[1] != self.n_rows:
            raise ValueError(f"cost columns must have shape (n, {self.n_rows}), got "
                             f"{costs.shape}")
        return self._update_unchecked(self._check(costs))

    def _update_unchecked(self, costs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        # costs: C-contiguous float64 (n, R), already known to hold no NaN/negative value
        n = costs.shape[0]
        out_cost = np.empty((n, self.n_templates), np.float64)
        out_start = np.empty((n, self.n_templates), np.int64)
        R = self.n_rows
        first, second, ends = self._first, self._second, self._ends
        for t in range(n):
            j = self.frames_seen
            cur, p1, p2 = j % 3, (j + 2) % 3, (j + 1) % 3  # slots of columns j, j-1, j-2
            D1, S1, L1 = self._D[p1], self._S[p1], self._L[p1]
            D2, S2, L2 = self._D[p2], self._S[p2], self._L[p2]
            c = costs[t]
            up2 = D1[:R].copy()  # row r - 2 of column j - 1: not for a second row
            up2[second] = np.inf
            d, s, length = _relax(c, (D1[1:R + 1], S1[1:R + 1], L1[1:R + 1]),
                                  (D2[1:R + 1], S2[1:R + 1], L2[1:R + 1]),
                                  (up2, S1[:R], L1[:R]))
            reach = c[first] < np.inf  # a template's first row: a path starts here
            d[first] = c[first]
            s[first] = np.where(reach, j, -1)
            length[first] = reach
            self._D[cur, 2:] = d
            self._S[cur, 2:] = s
            self._L[cur, 2:] = length
            n_end = length[ends]
            out_cost[t] = np.divide(d[ends], n_end, out=np.full(len(ends), np.inf),
                                    where=n_end > 0)
            out_start[t] = s[ends]
            self.frames_seen = j + 1
        return out_cost, out_start
