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

* :func:`subsequence_dtw` - the whole matrix at once (one Numba kernel, row by row: every
  row depends on the two rows above only, so the inner loop runs along contiguous memory);
* :class:`StreamingSubsequenceDTW` - the node's path: ``K`` templates stacked, one new column
  per stream frame, only the last two columns kept; results equal the batch ones exactly.

Cost helpers: :func:`cosine_cost_matrix` (float64, exact enough to compare with SciPy) and
:func:`cosine_cost_columns` (the streaming kernel: one column of the stacked cost matrix per
frame, float32 dot products in a fixed order, so a frame's costs do not depend on how the
stream was chunked).

Nothing here imports TensorFlow; Numba kernels are compiled on first use and cached
(``cache=True``) next to this file.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from edge.jit import numba

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


@numba.njit(cache=True, boundscheck=False, fastmath={"reassoc", "contract", "nsz", "arcp"})
def _cost_columns_kernel(frames, templates, out):  # pragma: no cover - compiled
    # frames: (n, D) float32 unit rows, n a multiple of 4; templates: (R, D) float32 unit
    # rows; out: (n, R) float64. A 4 x 4 block (four frames against four template rows)
    # per pass over D: every loaded value feeds four multiply-adds, and each template row
    # is read once per four frames. The 16 dot products are reductions of one and the same
    # vectorised loop whatever n and R are (a short last block repeats row R-1), so a
    # frame's result never depends on its neighbours or on how the stream was chunked.
    n, D = frames.shape
    R = templates.shape[0]
    last = R - 1
    for f in range(0, n, 4):
        g0 = frames[f]
        g1 = frames[f + 1]
        g2 = frames[f + 2]
        g3 = frames[f + 3]
        for r in range(0, R, 4):
            ra = r
            rb = min(r + 1, last)
            rc = min(r + 2, last)
            rd = min(r + 3, last)
            qa = templates[ra]
            qb = templates[rb]
            qc = templates[rc]
            qd = templates[rd]
            a0 = a1 = a2 = a3 = np.float32(0.0)
            b0 = b1 = b2 = b3 = np.float32(0.0)
            c0 = c1 = c2 = c3 = np.float32(0.0)
            e0 = e1 = e2 = e3 = np.float32(0.0)
            for d in range(D):
                x0 = g0[d]
                x1 = g1[d]
                x2 = g2[d]
                x3 = g3[d]
                y = qa[d]
                a0 += y * x0
                a1 += y * x1
                a2 += y * x2
                a3 += y * x3
                y = qb[d]
                b0 += y * x0
                b1 += y * x1
                b2 += y * x2
                b3 += y * x3
                y = qc[d]
                c0 += y * x0
                c1 += y * x1
                c2 += y * x2
                c3 += y * x3
                y = qd[d]
                e0 += y * x0
                e1 += y * x1
                e2 += y * x2
                e3 += y * x3
            _put4(out, f, ra, a0, a1, a2, a3)
            _put4(out, f, rb, b0, b1, b2, b3)
            _put4(out, f, rc, c0, c1, c2, c3)
            _put4(out, f, rd, e0, e1, e2, e3)


@numba.njit(cache=True, inline="always")
def _put4(out, f, r, s0, s1, s2, s3):  # pragma: no cover - compiled
    # cosine distance from a float32 similarity, clipped to [0, 2] (rounding can push a
    # unit-vector dot product a hair past +-1)
    out[f, r] = min(max(1.0 - np.float64(s0), 0.0), 2.0)
    out[f + 1, r] = min(max(1.0 - np.float64(s1), 0.0), 2.0)
    out[f + 2, r] = min(max(1.0 - np.float64(s2), 0.0), 2.0)
    out[f + 3, r] = min(max(1.0 - np.float64(s3), 0.0), 2.0)


def cosine_cost_columns(frames_unit: np.ndarray, templates_unit: np.ndarray) -> np.ndarray:
    """Cost columns of the stacked cosine cost matrix for a few new stream frames.

    The streaming counterpart of :func:`cosine_cost_matrix`: row ``t`` of the result is the
    cost column of stream frame ``t`` against every stacked template row, ready for
    :meth:`StreamingSubsequenceDTW.update_many`. A Numba kernel computes the float32 dot
    products in blocks of four frames by four template rows; the arithmetic for one
    (frame, row) pair is the same whatever the block, so a frame's costs are bit-identical
    however the stream is cut into chunks (BLAS matrix products are not: their rounding
    depends on the shapes involved). Frames are processed four at a time (a call with
    fewer costs as much as one with four), which is also where the speed comes from: each
    template row is read from memory once per four frames.

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
    n = f.shape[0]
    n4 = -(-n // 4) * 4
    if n4 != n or not f.flags.c_contiguous:
        padded = np.zeros((n4, f.shape[1]), np.float32)
        padded[:n] = f
        f = padded
    out = np.empty((n4, q.shape[0]), np.float64)
    if n4:
        _cost_columns_kernel(f, q, out)
    return out[:n]


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


@numba.njit(cache=True, boundscheck=False, inline="always")
def _best3(cc, da, sa, la, db, sb, lb, dc, sc, lc):  # pragma: no cover - compiled
    # Relax one cell from its three predecessors a = (1, 1), b = (1, 2), c = (2, 1), as
    # librosa does: candidate D + cc, strict "<", in step order, starting from +inf.
    # Written with selects, not branches: the winner is data dependent and branches on
    # it would be mispredicted about every other cell.
    va = da + cc
    vb = db + cc
    vc = dc + cc
    best = va
    bs = sa
    bl = la
    take = vb < best
    best = vb if take else best
    bs = sb if take else bs
    bl = lb if take else bl
    take = vc < best
    best = vc if take else best
    bs = sc if take else bs
    bl = lc if take else bl
    reach = best < np.inf
    return best, (bs if reach else -1), (bl + 1 if reach else 0)


@numba.njit(cache=True, boundscheck=False)
def _subseq_dtw_kernel(C, D, S, L):  # pragma: no cover - compiled
    # Row by row: row i needs rows i-1 and i-2 only, so the inner loop runs along
    # contiguous memory and its iterations are independent (LLVM vectorises it). The
    # shifted views make every index the bare loop variable: Numba's negative-index
    # wrap-around on "j - 1" would otherwise keep LLVM from vectorising.
    M, N = C.shape
    inf = np.inf
    for j in range(N):
        x = C[0, j]
        reach = x < inf
        D[0, j] = x
        S[0, j] = j if reach else -1
        L[0, j] = 1 if reach else 0
    for i in range(1, M):
        c = C[i]
        d1 = D[i - 1]
        s1 = S[i - 1]
        l1 = L[i - 1]
        dr = D[i]
        sr = S[i]
        lr = L[i]
        # column 0 has no predecessor
        dr[0] = inf
        sr[0] = -1
        lr[0] = 0
        # row i-2 for the (2, 1) step; on row 1 there is none: +inf candidates
        two = i >= 2
        d2 = D[i - 2] if two else d1
        s2 = S[i - 2] if two else s1
        l2 = L[i - 2] if two else l1
        if N > 1:  # column 1: no (1, 2) step
            dr[1], sr[1], lr[1] = _best3(c[1], d1[0], s1[0], l1[0], inf, -1, -1,
                                         d2[0] if two else inf, s2[0], l2[0])
        # columns 2.. : element k of each view is the cell (i, k + 2) or its predecessor
        c_ = c[2:]
        da, sa, la = d1[1:], s1[1:], l1[1:]  # (i-1, j-1): step (1, 1)
        db, sb, lb = d1, s1, l1  # (i-1, j-2): step (1, 2)
        dc, sc, lc = d2[1:], s2[1:], l2[1:]  # (i-2, j-1): step (2, 1)
        do, so, lo = dr[2:], sr[2:], lr[2:]
        if two:
            for k in range(N - 2):
                do[k], so[k], lo[k] = _best3(c_[k], da[k], sa[k], la[k], db[k], sb[k], lb[k],
                                             dc[k], sc[k], lc[k])
        else:
            for k in range(N - 2):
                do[k], so[k], lo[k] = _best3(c_[k], da[k], sa[k], la[k], db[k], sb[k], lb[k],
                                             inf, -1, -1)


def subsequence_dtw(C) -> SubsequenceDtwResult:
    """Sub-sequence DTW of a template against a stream, from their cost matrix.

    Step sizes (1, 1), (1, 2), (2, 1) in (template, stream) index, free start and end in
    the stream (thesis 6.3.6). One compiled Numba kernel fills the matrices row by row.

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
    D = np.empty((M, N), np.float64)
    S = np.empty((M, N), np.int64)
    L = np.empty((M, N), np.int64)
    _subseq_dtw_kernel(C, D, S, L)
    return SubsequenceDtwResult(D, S, L)


# --------------------------------------------------------------------------------------
# streaming sub-sequence DTW
# --------------------------------------------------------------------------------------


@numba.njit(cache=True, boundscheck=False)
def _first_invalid(x):  # pragma: no cover - compiled
    # flat index of the first NaN or negative value, -1 if none (+inf is allowed)
    for k in range(x.size):
        if not x.flat[k] >= 0.0:
            return k
    return -1


@numba.njit(cache=True, boundscheck=False)
def _stream_kernel(costs, kind, ends, D, S, L, j0, out_cost, out_start):  # pragma: no cover
    # costs: (n, R) cost columns of frames j0 .. j0+n-1, the K templates stacked along R;
    # kind: (R,) 0 on a template's first row, 1 on its second, 2 below; ends: (K,) index
    # of each template's last row. D, S, L: (3, R + 2) state; column j lives in slot j % 3
    # (the other two slots hold columns j-1 and j-2, +inf before the stream starts) at
    # positions 2 .. R+1; positions 0 and 1 are +inf padding so that rows r-1 and r-2
    # exist for every r. out_cost, out_start: (n, K).
    # One loop over all stacked rows, no per-template inner loop: the template
    # boundaries are handled by "kind" with selects, so the loop vectorises.
    n, R = costs.shape
    K = ends.shape[0]
    inf = np.inf
    for t in range(n):
        j = j0 + t
        cur = j % 3
        p1 = (j + 2) % 3  # slot of column j-1
        p2 = (j + 1) % 3  # slot of column j-2
        c = costs[t]
        # element r of each view is row r of the column (or its predecessor row)
        do, so, lo = D[cur, 2:], S[cur, 2:], L[cur, 2:]
        da, sa, la = D[p1, 1:], S[p1, 1:], L[p1, 1:]  # (r-1, j-1): step (1, 1)
        db, sb, lb = D[p2, 1:], S[p2, 1:], L[p2, 1:]  # (r-1, j-2): step (1, 2)
        dc, sc, lc = D[p1], S[p1], L[p1]  # (r-2, j-1): step (2, 1)
        for r in range(R):
            kd = kind[r]
            first = kd == 0
            second = kd == 1
            # first row: a path starts here (as if from a 0-cost cell with length 0)
            va = da[r]
            vsa = sa[r]
            vla = la[r]
            vb = db[r]
            vc = dc[r]
            va = 0.0 if first else va
            vsa = j if first else vsa
            vla = 0 if first else vla
            vb = inf if first else vb
            vc = inf if (first or second) else vc
            do[r], so[r], lo[r] = _best3(c[r], va, vsa, vla, vb, sb[r], lb[r], vc, sc[r], lc[r])
        for k in range(K):
            e = ends[k]
            length = lo[e]
            out_cost[t, k] = do[e] / length if length > 0 else inf
            out_start[t, k] = so[e]


class StreamingSubsequenceDTW:
    """Sub-sequence DTW of ``K`` templates against a stream, one stream frame at a time.

    The templates are stacked along one axis (``R = sum(template_lengths)`` rows); every
    call adds one column of the accumulated cost (and path start and length) per template
    in a single Numba call, keeping only the last two columns: memory ``O(R)``, work
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
        # row kind for the kernel: 0 first row of a template, 1 second row, 2 the others
        self._kind = np.full(self.n_rows, 2, np.int8)
        self._kind[self.offsets[:-1]] = 0
        second = self.offsets[:-1][self.template_lengths > 1] + 1
        self._kind[second] = 1
        self._ends = self.offsets[1:] - 1
        # the last three columns, with two leading +inf rows of padding (see the kernel)
        self._D = np.empty((3, self.n_rows + 2), np.float64)
        self._S = np.empty((3, self.n_rows + 2), np.int64)
        self._L = np.empty((3, self.n_rows + 2), np.int64)
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
        bad = _first_invalid(costs)
        if bad >= 0:
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
        """Add ``n`` stream frames in one Numba call (same results as ``n`` updates).

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
        if n:
            _stream_kernel(costs, self._kind, self._ends, self._D, self._S, self._L,
                           self.frames_seen, out_cost, out_start)
            self.frames_seen += n
        return out_cost, out_start
