"""Run tracking and overlap resolution: steps 1-4 of the keyword post-processing.

The definition is in :mod:`edge.kws` (module docstring, "Post-processing, exactly"; thesis
section 6.3.6): per keyword and frame the candidate template (step 1), runs below the
keyword's threshold with one raw detection at each run's minimum (step 2), overlaps removed
in order of precedence (step 3) and detections shorter than half their template dropped
(step 4). :class:`edge.kws.KeywordSpotter` feeds these the DTW's matching costs and decides
when (step 5).

All positions are stream frames; intervals are half-open ``[onset, offset)``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

__all__ = ["RawDetection", "RunTracker", "subtract_interval", "overlap_groups",
           "resolve_overlaps", "groups_of_equal_size"]


def groups_of_equal_size(labels: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    """Columns grouped by label, groups of equal size stacked, for vectorised per-group work.

    Parameters
    ----------
    labels : np.ndarray [shape=(K,), dtype=int]
        Group of each column (a template's keyword).

    Returns
    -------
    list of (np.ndarray [shape=(m,)], np.ndarray [shape=(m, g), dtype=int64])
        One entry per group size ``g``: the ``m`` labels of that size (increasing) and
        their columns, each row in increasing column order.
    """
    values, group = np.unique(np.asarray(labels), return_inverse=True)
    sizes = np.bincount(group)
    order = np.argsort(group, kind="stable")
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    return [(values[sel], order[starts[sel][:, None] + np.arange(g)])
            for g in np.unique(sizes) for sel in [np.flatnonzero(sizes == g)]]


@dataclass(frozen=True)
class RawDetection:
    """A run's detection before overlap resolution (step 2).

    Frames; ``offset`` exclusive; ``keyword`` and ``template`` are indices into the
    spotter's keywords and templates; ``at`` is the frame at which it was decided.
    """

    keyword: int
    onset: int
    offset: int
    cost: float
    template: int
    at: int = 0  # frame at which the raw detection was decided


class RunTracker:
    """Steps 1 and 2 of the module docstring, frame block by frame block.

    Per keyword: whether a run is open, its best (lowest) candidate so far (cost, path
    start, frame, template) and whether that best was already output (``decided``). Frames
    where a keyword's candidate is not below its threshold and no run is open change
    nothing, so only the frames in and just after runs are visited one by one.

    Parameters
    ----------
    tmpl_kw : np.ndarray [shape=(K,), dtype=int64]
        Keyword index of each template.
    thresholds : np.ndarray [shape=(W,), dtype=float64]
    confirm : int
        ``>= 0``: a run's best is output once ``confirm`` frames passed without a lower
        cost ("confirmed" decision); ``-1``: only when the run closes ("exact").
    max_wait : int
        With ``confirm >= 0``: ``>= 0`` also outputs a run's best once ``max_wait`` frames
        passed since the run opened, confirmed or not; ``-1``: no such limit.
    """

    def __init__(self, tmpl_kw: np.ndarray, thresholds: np.ndarray, confirm: int,
                 max_wait: int = -1):
        self.thr = thresholds
        self.confirm = confirm
        self.max_wait = max_wait
        self.groups = groups_of_equal_size(tmpl_kw)
        W = len(thresholds)
        self.in_run = np.zeros(W, bool)
        self.best_cost = np.full(W, np.inf)
        self.best_start = np.zeros(W, np.int64)
        self.best_end = np.zeros(W, np.int64)
        self.best_tmpl = np.zeros(W, np.int64)
        self.opened = np.zeros(W, np.int64)  # first frame of the open run
        self.decided = np.zeros(W, bool)

    def close_all(self, end: int) -> list[RawDetection]:
        """Close every open run (end of stream): the raw detections not yet output."""
        out = [RawDetection(int(w), int(self.best_start[w]), int(self.best_end[w]) + 1,
                    float(self.best_cost[w]), int(self.best_tmpl[w]), end)
               for w in np.flatnonzero(self.in_run & ~self.decided)]
        self.in_run[:] = False
        self.decided[:] = False
        return out

    def push(self, mc: np.ndarray, st: np.ndarray,
             j0: int) -> tuple[np.ndarray, list[RawDetection]]:
        """Track runs over frames ``j0 .. j0 + n - 1``.

        Parameters
        ----------
        mc, st : np.ndarray [shape=(n, K)]
            Matching cost (float64) and path start frame (int64) of every template.
        j0 : int
            Absolute index of the first frame.

        Returns
        -------
        cand : np.ndarray [shape=(n, W), dtype=float64]
            Candidate cost of every keyword and frame (step 1).
        raws : list of RawDetection
            Raw detections output in these frames, in the order of the frame deciding them
            (``at`` is one past it), then keyword.
        """
        n = mc.shape[0]
        cand = np.full((n, len(self.thr)), np.inf)
        picks = np.zeros((n, len(self.thr)), np.int64)
        for kws, cols in self.groups:  # keywords with equally many templates at once
            sub = mc[:, cols]  # (n, keywords, templates)
            a = np.argmin(sub, axis=2)  # lowest cost, the first template on ties
            cand[:, kws] = np.take_along_axis(sub, a[:, :, None], axis=2)[:, :, 0]
            picks[:, kws] = cols[np.arange(len(kws)), a]
        raws: list[tuple[int, int, RawDetection]] = []
        below_all = cand < self.thr
        # frames in a run and the frame that closes one; nothing happens elsewhere
        visit_all = below_all.copy()
        visit_all[1:] |= below_all[:-1]
        visit_all[0] |= self.in_run
        for w in np.flatnonzero(visit_all.any(axis=0)):
            cost, pick, below, visit = cand[:, w], picks[:, w], below_all[:, w], visit_all[:, w]
            for t in np.flatnonzero(visit):
                j = j0 + int(t)
                emit = False
                if below[t]:
                    if not self.in_run[w]:
                        self.opened[w] = j
                    if not self.in_run[w] or cost[t] < self.best_cost[w]:
                        self.in_run[w] = True
                        self.best_cost[w] = cost[t]
                        self.best_start[w] = st[t, pick[t]]
                        self.best_end[w] = j
                        self.best_tmpl[w] = pick[t]
                        self.decided[w] = False
                    emit = (self.confirm >= 0 and not self.decided[w]
                            and (j - self.best_end[w] >= self.confirm
                                 or 0 <= self.max_wait <= j - self.opened[w]))
                elif self.in_run[w]:
                    self.in_run[w] = False
                    emit = not self.decided[w]  # closed before its minimum was confirmed
                if emit:
                    raws.append((j, w, RawDetection(w, int(self.best_start[w]),
                                            int(self.best_end[w]) + 1,
                                            float(self.best_cost[w]),
                                            int(self.best_tmpl[w]), j + 1)))
                self.decided[w] = self.in_run[w] and (self.decided[w] or emit)
        raws.sort(key=lambda x: (x[0], x[1]))
        return cand, [r for _, _, r in raws]


def subtract_interval(pieces: list[tuple[int, int]], a: int, b: int) -> list[tuple[int, int]]:
    """Remove ``[a, b)`` from every half-open interval in ``pieces``."""
    out = []
    for lo, hi in pieces:
        if b <= lo or a >= hi:
            out.append((lo, hi))
            continue
        if lo < a:
            out.append((lo, a))
        if b < hi:
            out.append((b, hi))
    return out


def overlap_groups(raws: Sequence[RawDetection]) -> list[list[RawDetection]]:
    """Connected groups of overlapping intervals (``"exact"`` decision, step 5).

    Sorted by onset, a raw detection joins the current group when it starts before the
    group's end.

    Returns
    -------
    list of list of RawDetection
        In onset order; within a group by (onset, offset, keyword, template).
    """
    groups: list[list[RawDetection]] = []
    end = None
    for r in sorted(raws, key=lambda r: (r.onset, r.offset, r.keyword, r.template)):
        if end is not None and r.onset < end:
            groups[-1].append(r)
            end = max(end, r.offset)
        else:
            groups.append([r])
            end = r.offset
    return groups


def resolve_overlaps(order: Sequence[RawDetection], kept: list[tuple[int, int]],
                     template_frames: np.ndarray) -> list[tuple[RawDetection, int, int]]:
    """Steps 3 and 4: each raw detection of ``order`` (in order of precedence) keeps the
    longest piece of its interval left after removing the intervals already ``kept`` (the
    earliest on ties), unless that piece is shorter than half its template.

    Parameters
    ----------
    order : sequence of RawDetection
    kept : list of (int, int)
        Intervals already decided; the surviving ones are appended in place.
    template_frames : np.ndarray [shape=(K,), dtype=int64]
        Frames ``M`` of every template.

    Returns
    -------
    list of (RawDetection, onset, offset)
        The survivors with their (possibly shortened) intervals, in the order given.
    """
    out = []
    for r in order:
        pieces = [(r.onset, r.offset)]
        for a, b in kept:
            pieces = subtract_interval(pieces, a, b)
        if not pieces:
            continue
        on, off = max(pieces, key=lambda p: (p[1] - p[0], -p[0]))
        if 2 * (off - on) < template_frames[r.template]:
            continue
        kept.append((on, off))
        out.append((r, on, off))
    return out
