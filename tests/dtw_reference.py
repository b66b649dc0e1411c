"""A plain Python transcription of sub-sequence DTW (edge/dtw.py), the oracle of the tests.

Slow and deliberately independent of :mod:`edge.dtw`: it spells out the step sizes, the
tie-breaking and the matching cost itself, so a change to the kernels (or to their result
class) cannot change the reference along with them.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["ReferenceDtwResult", "subsequence_dtw_reference"]

#: (template step, stream step) in librosa's tie-breaking order (thesis section 6.3.6).
REFERENCE_STEPS = ((1, 1), (1, 2), (2, 1))


@dataclass(frozen=True)
class ReferenceDtwResult:
    """Same fields as :class:`edge.dtw.SubsequenceDtwResult`, computed here.

    Attributes
    ----------
    accumulated_cost : np.ndarray [shape=(M, N), dtype=float64]
        ``D``; ``+inf`` where no path reaches the cell.
    start : np.ndarray [shape=(M, N), dtype=int64]
        Stream index where the best path into the cell starts; -1 if unreachable.
    length : np.ndarray [shape=(M, N), dtype=int64]
        Cells on that path (1 on row 0); 0 if unreachable.
    matching_cost : np.ndarray [shape=(N,), dtype=float64]
        ``D[M-1, j] / length[M-1, j]``; ``+inf`` where no path ends at ``j``.
    """

    accumulated_cost: np.ndarray
    start: np.ndarray
    length: np.ndarray
    matching_cost: np.ndarray


def subsequence_dtw_reference(C) -> ReferenceDtwResult:
    """Sub-sequence DTW of a cost matrix, following librosa's generic loop literally.

    For every cell, in the order of :data:`REFERENCE_STEPS`, ``D[pred] + C[i, j]`` replaces
    the current value if strictly smaller; the current value starts at ``+inf`` (row 0 at
    ``C[0, j]``: a path may start anywhere). Out-of-range predecessors are skipped.

    Parameters
    ----------
    C : array_like [shape=(M, N)]
        Non-negative costs (``+inf`` allowed); not validated.

    Returns
    -------
    ReferenceDtwResult
    """
    C = np.asarray(C, dtype=np.float64)
    assert C.ndim == 2 and C.size, f"reference DTW needs a non-empty 2-D matrix, got {C.shape}"
    M, N = C.shape
    D = np.full((M, N), np.inf)
    S = np.full((M, N), -1, np.int64)
    L = np.zeros((M, N), np.int64)
    D[0] = C[0]
    reach = C[0] < np.inf
    S[0] = np.where(reach, np.arange(N), -1)
    L[0] = reach
    for i in range(1, M):
        for j in range(N):
            for di, dj in REFERENCE_STEPS:
                pi, pj = i - di, j - dj
                if pi < 0 or pj < 0:
                    continue  # out of range: +inf
                cost = D[pi, pj] + C[i, j]
                if cost < D[i, j]:
                    D[i, j] = cost
                    S[i, j] = S[pi, pj]
                    L[i, j] = L[pi, pj] + 1
    matching = np.full(N, np.inf)
    ends = L[-1] > 0
    matching[ends] = D[-1, ends] / L[-1, ends]
    return ReferenceDtwResult(D, S, L, matching)
