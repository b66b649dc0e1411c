"""Keyword event metrics: the project's one keyword event matcher, counts, threshold sweeps.

Event-based, micro-averaged F1, precision and recall as in sed_eval (Mesaros, Heittola,
Virtanen 2016, "Metrics for polyphonic sound event detection"): a detection matches a reference
of the same keyword when ``|onset difference| <= collar`` and ``|offset difference| <=
max(collar, offset_fraction * reference duration)``; every reference and every detection is
matched at most once, with a maximum bipartite matching (sed_eval's default
``event_matching_type='optimal'``; ``"greedy"`` is sed_eval's older first-fit). Micro-averaging
sums TP, detections and references over all keywords and streams.

**Miss rate at a false-alarm rate**: a global threshold is swept on the test streams; FA/h =
unmatched detections / stream hours; reported is the lowest miss rate (1 - recall) with FA/h <=
the target and the threshold that gives it. The FA/h resolution is 1 / (test stream hours): with
10 minutes of test streams, 1 FA/h means no false alarm at all.

Pure NumPy (SciPy for the optimal matching); no audio, no models, so any tool can import it.

Contents
--------
Event
    A keyword occurrence (ground truth or detection).
match_events
    Match the detections of one stream to its references.
Counts, count_events
    Event counts and micro-averaged scores over streams, overall and per keyword.
SweepPoint, best_f1_point, miss_rate_at_fa
    Scores of one global threshold; picking a threshold from a sweep.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

__all__ = [
    "Event", "match_events", "Counts", "count_events", "SweepPoint", "best_f1_point",
    "miss_rate_at_fa",
]


@dataclass(frozen=True)
class Event:
    """A keyword occurrence (ground truth or detection), seconds from the stream start."""

    keyword: str
    onset_s: float
    offset_s: float

    @property
    def duration_s(self) -> float:
        return self.offset_s - self.onset_s


def _as_event(x) -> Event:
    if isinstance(x, Event):
        return x
    if hasattr(x, "keyword") and hasattr(x, "onset_s") and hasattr(x, "offset_s"):
        return Event(str(x.keyword), float(x.onset_s), float(x.offset_s))
    kw, on, off = x
    return Event(str(kw), float(on), float(off))


def match_events(references, detections, *, collar: float = 0.2, offset_fraction: float = 0.5,
                 matching: str = "optimal") -> tuple[np.ndarray, np.ndarray]:
    """Match detections to references of one stream, sed_eval event-based style.

    A pair qualifies when the keywords are equal, ``|onset_det - onset_ref| <= collar`` and
    ``|offset_det - offset_ref| <= max(collar, offset_fraction * (offset_ref - onset_ref))``.

    Parameters
    ----------
    references, detections : sequences of Event, Detection-like objects or
        (keyword, onset_s, offset_s) tuples
    matching : {"optimal", "greedy"}
        Maximum bipartite matching, or sed_eval's first fit (references in onset order,
        each takes the first unmatched qualifying detection in onset order).

    Returns
    -------
    ref_match : np.ndarray, shape (n_ref,), int
        Index (into ``detections``) of each reference's match, -1 when missed.
    det_match : np.ndarray, shape (n_det,), int
        Index of each detection's reference, -1 for a false alarm.
    """
    refs = [_as_event(r) for r in references]
    dets = [_as_event(d) for d in detections]
    ref_match = np.full(len(refs), -1, np.int64)
    det_match = np.full(len(dets), -1, np.int64)
    eps = 1e-9  # boundaries are inclusive (<=) regardless of float rounding

    def ok(r: Event, d: Event) -> bool:
        return (r.keyword == d.keyword and abs(d.onset_s - r.onset_s) <= collar + eps
                and abs(d.offset_s - r.offset_s) <= max(collar, offset_fraction * r.duration_s) + eps)

    for kw in sorted({r.keyword for r in refs}):
        ri = sorted((i for i, r in enumerate(refs) if r.keyword == kw), key=lambda i: (refs[i].onset_s, i))
        di = sorted((i for i, d in enumerate(dets) if d.keyword == kw), key=lambda i: (dets[i].onset_s, i))
        if not ri or not di:
            continue
        if matching == "greedy":
            for i in ri:
                for j in di:
                    if det_match[j] < 0 and ok(refs[i], dets[j]):
                        ref_match[i], det_match[j] = j, i
                        break
        elif matching == "optimal":
            from scipy.sparse import csr_matrix
            from scipy.sparse.csgraph import maximum_bipartite_matching

            adj = np.array([[ok(refs[i], dets[j]) for j in di] for i in ri], dtype=np.int8)
            if not adj.any():
                continue
            m = maximum_bipartite_matching(csr_matrix(adj), perm_type="column")
            for a, b in enumerate(m):
                if b >= 0:
                    ref_match[ri[a]], det_match[di[b]] = di[b], ri[a]
        else:
            raise ValueError(f"matching must be 'optimal' or 'greedy', got {matching!r}")
    return ref_match, det_match


@dataclass
class Counts:
    """Event counts; micro-averaged scores follow from the sums (sed_eval's formulas)."""

    n_ref: int = 0
    n_sys: int = 0
    n_tp: int = 0

    @property
    def n_fp(self) -> int:
        return self.n_sys - self.n_tp

    @property
    def n_fn(self) -> int:
        return self.n_ref - self.n_tp

    @property
    def precision(self) -> float:
        return self.n_tp / self.n_sys if self.n_sys else 0.0

    @property
    def recall(self) -> float:
        return self.n_tp / self.n_ref if self.n_ref else 0.0

    @property
    def f1(self) -> float:
        p, r = self.precision, self.recall
        return 2 * p * r / (p + r) if p + r > 0 else 0.0

    def __add__(self, other: "Counts") -> "Counts":
        return Counts(self.n_ref + other.n_ref, self.n_sys + other.n_sys, self.n_tp + other.n_tp)

    def to_dict(self) -> dict[str, Any]:
        return {"f1": self.f1, "precision": self.precision, "recall": self.recall,
                "n_ref": self.n_ref, "n_sys": self.n_sys, "n_tp": self.n_tp,
                "n_fp": self.n_fp, "n_fn": self.n_fn}


def count_events(references_per_stream, detections_per_stream, *, collar: float = 0.2,
                 offset_fraction: float = 0.5, matching: str = "optimal"
                 ) -> tuple[Counts, dict[str, Counts]]:
    """Micro-averaged counts over streams, and per keyword.

    Parameters
    ----------
    references_per_stream, detections_per_stream : sequences (one entry per stream) of event
        sequences (see :func:`match_events`)

    Returns
    -------
    overall : Counts
    per_keyword : dict of str -> Counts
        For every keyword among the references or detections.
    """
    overall = Counts()
    per: dict[str, Counts] = {}
    if len(references_per_stream) != len(detections_per_stream):
        raise ValueError("references and detections must have one entry per stream")
    for refs, dets in zip(references_per_stream, detections_per_stream):
        refs = [_as_event(r) for r in refs]
        dets = [_as_event(d) for d in dets]
        rm, dm = match_events(refs, dets, collar=collar, offset_fraction=offset_fraction,
                              matching=matching)
        overall = overall + Counts(len(refs), len(dets), int((dm >= 0).sum()))
        for kw in {e.keyword for e in refs} | {e.keyword for e in dets}:
            c = Counts(sum(r.keyword == kw for r in refs), sum(d.keyword == kw for d in dets),
                       int(sum(d.keyword == kw and m >= 0 for d, m in zip(dets, dm))))
            per[kw] = per.get(kw, Counts()) + c
    return overall, per


@dataclass(frozen=True)
class SweepPoint:
    """Scores of one global threshold on a set of streams."""

    threshold: float
    counts: Counts
    hours: float

    @property
    def fa_per_hour(self) -> float:
        return self.counts.n_fp / self.hours if self.hours > 0 else math.inf

    @property
    def miss_rate(self) -> float:
        return 1.0 - self.counts.recall if self.counts.n_ref else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"threshold": self.threshold, "fa_per_hour": self.fa_per_hour,
                "miss_rate": self.miss_rate, **self.counts.to_dict()}


def best_f1_point(points: Sequence[SweepPoint]) -> SweepPoint:
    """The point of highest F1; ties go to the higher precision, then the lower threshold."""
    if not points:
        raise ValueError("empty sweep")
    return max(points, key=lambda p: (round(p.counts.f1, 12), round(p.counts.precision, 12), -p.threshold))


def miss_rate_at_fa(points: Sequence[SweepPoint], fa_per_hour: float) -> dict[str, Any]:
    """Lowest miss rate among thresholds with FA/h <= ``fa_per_hour``.

    A threshold below every cost (no detections: miss rate 1, no false alarms) is always
    admissible, so the result is 1.0 when no swept threshold meets the target.

    Returns
    -------
    dict with ``miss_rate``, ``threshold`` (None when no swept threshold qualifies),
    ``fa_per_hour`` (achieved), ``target_fa_per_hour``.
    """
    ok = [p for p in points if p.fa_per_hour <= fa_per_hour + 1e-12]
    if not ok:
        return {"miss_rate": 1.0, "threshold": None, "fa_per_hour": 0.0,
                "target_fa_per_hour": fa_per_hour}
    best = min(ok, key=lambda p: (p.miss_rate, p.fa_per_hour, p.threshold))
    return {"miss_rate": best.miss_rate, "threshold": best.threshold,
            "fa_per_hour": best.fa_per_hour, "target_fa_per_hour": fa_per_hour}
