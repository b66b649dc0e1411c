"""Keyword event metrics (:mod:`trainer.kws_metrics`), checked by hand."""
from __future__ import annotations

import pytest

from trainer import kws_metrics as km


# --------------------------------------------------------------------------- metrics


def test_match_events_collars_by_hand():
    refs = [("stop", 1.0, 1.6),   # 0.6 s: offset collar max(0.2, 0.3) = 0.3
            ("yes", 3.0, 3.4)]    # 0.4 s: offset collar max(0.2, 0.2) = 0.2
    dets = [("stop", 1.25, 1.6),  # onset off by 0.25 > 0.2: no
            ("stop", 1.15, 1.85),  # onset 0.15, offset 0.25 <= 0.3: match
            ("yes", 1.0, 1.6),    # right place, wrong keyword: false alarm
            ("yes", 3.1, 3.65),   # offset off by 0.25 > 0.2: no
            ("yes", 3.2, 3.6)]    # onset exactly 0.2 and offset exactly 0.2: match (<=)
    rm, dm = km.match_events(refs, dets, collar=0.2, offset_fraction=0.5)
    assert rm.tolist() == [1, 4]
    assert dm.tolist() == [-1, 0, -1, -1, 1]
    overall, per = km.count_events([refs], [dets])
    assert (overall.n_ref, overall.n_sys, overall.n_tp) == (2, 5, 2)
    assert overall.precision == pytest.approx(0.4)
    assert overall.recall == pytest.approx(1.0)
    assert overall.f1 == pytest.approx(2 * 0.4 * 1.0 / 1.4)  # 0.5714
    assert (per["stop"].n_ref, per["stop"].n_sys, per["stop"].n_tp) == (1, 2, 1)
    assert (per["yes"].n_ref, per["yes"].n_sys, per["yes"].n_tp) == (1, 3, 1)
    assert per["yes"].f1 == pytest.approx(2 * (1 / 3) * 1 / (1 / 3 + 1))  # 0.5
    # a larger collar lets the 0.25 s onset error through; nothing is matched twice
    rm, dm = km.match_events(refs, dets, collar=0.3)
    assert (rm >= 0).sum() == 2 and (dm >= 0).sum() == 2


def test_offset_collar_grows_with_reference_length():
    ref = [("alexa", 10.0, 12.0)]  # 2 s: offset collar max(0.2, 1.0) = 1.0
    assert km.match_events(ref, [("alexa", 10.1, 11.05)])[0].tolist() == [0]   # 0.95 <= 1
    assert km.match_events(ref, [("alexa", 10.1, 10.9)])[0].tolist() == [-1]   # 1.1 > 1
    assert km.match_events(ref, [("alexa", 10.1, 10.9)], offset_fraction=0.6)[0].tolist() == [0]


def test_optimal_matching_beats_greedy_first_fit():
    # A (1.0-2.0, offset collar 0.5) accepts d1 and d2; B (1.3-1.5, offset collar 0.2)
    # accepts only d1. First fit gives d1 (earliest onset) to A and leaves B unmatched; a
    # maximum matching pairs A-d2 and B-d1.
    refs = [("go", 1.0, 2.0), ("go", 1.3, 1.5)]
    dets = [("go", 1.15, 1.55), ("go", 1.2, 1.9)]
    rm, _ = km.match_events(refs, dets, matching="greedy")
    assert rm.tolist() == [0, -1]
    rm, dm = km.match_events(refs, dets, matching="optimal")
    assert rm.tolist() == [1, 0] and dm.tolist() == [1, 0]
    with pytest.raises(ValueError):
        km.match_events(refs, dets, matching="best")


def test_micro_average_over_streams_and_empty_cases():
    s1_ref = [("a", 0.0, 0.5), ("b", 2.0, 2.5)]
    s1_det = [("a", 0.05, 0.5), ("b", 5.0, 5.5)]          # 1 TP, 1 FA, 1 miss
    s2_ref = [("a", 1.0, 1.5)]
    s2_det = [("a", 1.0, 1.5), ("a", 1.0, 1.5)]            # duplicate: 1 TP + 1 FA
    overall, per = km.count_events([s1_ref, s2_ref], [s1_det, s2_det])
    assert (overall.n_ref, overall.n_sys, overall.n_tp) == (3, 4, 2)
    assert (overall.n_fp, overall.n_fn) == (2, 1)
    assert overall.precision == pytest.approx(0.5)
    assert overall.recall == pytest.approx(2 / 3)
    assert overall.f1 == pytest.approx(2 * 0.5 * (2 / 3) / (0.5 + 2 / 3))  # 4/7
    assert (per["a"].n_ref, per["a"].n_sys, per["a"].n_tp) == (2, 3, 2)
    assert (per["b"].n_ref, per["b"].n_sys, per["b"].n_tp) == (1, 1, 0)
    assert per["b"].f1 == 0.0
    # no detections at all: precision 0 by convention, F1 0
    overall, _ = km.count_events([s1_ref], [[]])
    assert (overall.precision, overall.recall, overall.f1) == (0.0, 0.0, 0.0)
    with pytest.raises(ValueError):
        km.count_events([s1_ref], [])


def _pt(th, n_ref, n_sys, n_tp, hours=0.5):
    return km.SweepPoint(th, km.Counts(n_ref, n_sys, n_tp), hours)


def test_miss_rate_at_fa_and_best_f1_by_hand():
    pts = [_pt(0.1, 10, 2, 2),    # FA 0/h,  miss 0.8, F1 2*1*.2/1.2 = 0.333
           _pt(0.2, 10, 5, 5),    # FA 0/h,  miss 0.5, F1 0.667
           _pt(0.3, 10, 8, 7),    # FA 2/h,  miss 0.3, F1 2*.875*.7/1.575 = 0.778
           _pt(0.4, 10, 14, 8)]   # FA 12/h, miss 0.2, F1 2*(8/14)*.8/(8/14+.8) = 0.667
    assert pts[2].fa_per_hour == pytest.approx(2.0)
    assert pts[3].fa_per_hour == pytest.approx(12.0)
    m = km.miss_rate_at_fa(pts, 1.0)
    assert m["miss_rate"] == pytest.approx(0.5) and m["threshold"] == 0.2
    assert m["fa_per_hour"] == 0.0
    m = km.miss_rate_at_fa(pts, 2.0)   # FA/h <= target is inclusive
    assert m["miss_rate"] == pytest.approx(0.3) and m["threshold"] == 0.3
    m = km.miss_rate_at_fa(pts[3:], 1.0)  # nothing qualifies: no detections at all
    assert m["miss_rate"] == 1.0 and m["threshold"] is None
    best = km.best_f1_point(pts)
    assert best.threshold == 0.3
    assert best.counts.f1 == pytest.approx(2 * 0.875 * 0.7 / 1.575)
