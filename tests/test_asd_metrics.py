"""Tests for trainer.asd_metrics (DCASE metrics, F1-EV) and trainer.asd_plots.

Hand-computed cases are written out in comments; fractions.Fraction keeps them exact.
"""
from __future__ import annotations

import json
from fractions import Fraction as Fr

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from sklearn.metrics import auc, roc_auc_score

from trainer.asd_metrics import (
    bounded_f1_ev,
    dcase_section_metrics,
    empirical_optimal_threshold,
    f1_ev,
    official_score,
    official_score_of_sections,
    precision_recall_f1,
    roc_curve_points,
)

# --------------------------------------------------------------------------- two hand sections
#
# Section A: 3 source normals, 2 target normals, 1 anomaly per domain.
#   source normals 0.1 0.4 0.6 | target normals 0.3 0.8 | anomalies: source 0.5, target 0.9
SEC_A = dict(
    y=[0, 0, 0, 0, 0, 1, 1],
    s=[0.1, 0.4, 0.6, 0.3, 0.8, 0.5, 0.9],
    d=["source", "source", "source", "target", "target", "source", "target"],
)
# auc_source: source normals {0.1, 0.4, 0.6} against ALL anomalies {0.5, 0.9}:
#   0.1<0.5 y, 0.1<0.9 y, 0.4<0.5 y, 0.4<0.9 y, 0.6<0.5 n, 0.6<0.9 y   -> 5/6
# auc_target: target normals {0.3, 0.8} against {0.5, 0.9}:
#   0.3<0.5 y, 0.3<0.9 y, 0.8<0.5 n, 0.8<0.9 y                          -> 3/4
# auc_all: 5 normals x 2 anomalies: 5 + 3 = 8 of 10                     -> 4/5
# pAUC (max_fpr = 0.1, 5 normals so FPR moves in steps of 0.2): going down the scores,
#   0.9 (anomaly) -> (fpr, tpr) = (0, 0.5); 0.8 (normal) -> (0.2, 0.5).
#   Raw area up to fpr 0.1 (interpolated tpr at 0.1 = 0.5): 0.1 * 0.5 = 0.05.
#   McClish: min_area = 0.1^2 / 2 = 0.005, max_area = 0.1
#   -> 0.5 * (1 + (0.05 - 0.005) / (0.1 - 0.005)) = 0.5 * (1 + 9/19) = 14/19
A_EXPECTED = dict(auc_source=Fr(5, 6), auc_target=Fr(3, 4), auc_all=Fr(4, 5), pauc=Fr(14, 19))

# Section B: same layout, with a tie between the top normal and an anomaly.
#   source normals 0.2 0.65 0.7 | target normals 0.4 0.9 | anomalies: source 0.9, target 0.6
SEC_B = dict(
    y=[0, 0, 0, 0, 0, 1, 1],
    s=[0.2, 0.65, 0.7, 0.4, 0.9, 0.9, 0.6],
    d=["source", "source", "source", "target", "target", "source", "target"],
)
# auc_source: {0.2, 0.65, 0.7} vs {0.9, 0.6}: 0.2 -> 2, 0.65 -> 1 (only 0.9), 0.7 -> 1  -> 4/6 = 2/3
# auc_target: {0.4, 0.9} vs {0.9, 0.6}: 0.4 -> 2, 0.9 vs 0.9 tie -> 1/2, 0.9 vs 0.6 -> 0
#   -> (5/2) / 4 = 5/8
# auc_all: 2 + 1 + 1 + 2 + 1/2 = 13/2 of 10                                              -> 13/20
# pAUC: at score 0.9 one normal and one anomaly enter together: the ROC goes diagonally from
#   (0, 0) to (0.2, 0.5); linear interpolation gives tpr = 0.25 at fpr = 0.1.
#   Raw area = triangle 0.5 * 0.1 * 0.25 = 0.0125
#   -> 0.5 * (1 + (0.0125 - 0.005) / 0.095) = 0.5 * (1 + 3/38) = 41/76
B_EXPECTED = dict(auc_source=Fr(2, 3), auc_target=Fr(5, 8), auc_all=Fr(13, 20), pauc=Fr(41, 76))


def _mcclish(raw_area: float, max_fpr: float) -> float:
    min_area, max_area = max_fpr**2 / 2, max_fpr
    return 0.5 * (1 + (raw_area - min_area) / (max_area - min_area))


def _raw_partial_auc(y, s, max_fpr):
    """Independent raw pAUC: walk the ROC by hand (ties as diagonal segments)."""
    y, s = np.asarray(y), np.asarray(s, dtype=float)
    n_pos, n_neg = int(y.sum()), int((1 - y).sum())
    pts = [(0.0, 0.0)]
    for v in sorted(set(s.tolist()), reverse=True):
        fp = int(np.sum((s >= v) & (y == 0))) / n_neg
        tp = int(np.sum((s >= v) & (y == 1))) / n_pos
        pts.append((fp, tp))
    area = 0.0
    for (x0, y0), (x1, y1) in zip(pts, pts[1:]):
        if x0 >= max_fpr:
            break
        if x1 > max_fpr:  # interpolate at max_fpr
            y1 = y0 + (y1 - y0) * (max_fpr - x0) / (x1 - x0)
            x1 = max_fpr
        area += (x1 - x0) * (y0 + y1) / 2
    return area


@pytest.mark.parametrize("sec, exp", [(SEC_A, A_EXPECTED), (SEC_B, B_EXPECTED)])
def test_section_metrics_by_hand(sec, exp):
    m = dcase_section_metrics(sec["y"], sec["s"], sec["d"], max_fpr=0.1)
    for key, frac in exp.items():
        assert m[key] == pytest.approx(float(frac), abs=1e-12), key
    assert (m["n_normal_source"], m["n_normal_target"], m["n_anomaly"]) == (3, 2, 2)
    # pAUC equals sklearn's and the independent McClish computation
    assert m["pauc"] == pytest.approx(roc_auc_score(sec["y"], sec["s"], max_fpr=0.1), abs=1e-12)
    raw = _raw_partial_auc(sec["y"], sec["s"], 0.1)
    assert m["pauc"] == pytest.approx(_mcclish(raw, 0.1), abs=1e-12)
    assert all(type(m[k]) is float for k in exp) and json.dumps(m)


def test_raw_partial_auc_helper_is_not_trivial():
    # guard against the helper agreeing by accident: raw areas of the two hand cases
    assert _raw_partial_auc(SEC_A["y"], SEC_A["s"], 0.1) == pytest.approx(0.05)
    assert _raw_partial_auc(SEC_B["y"], SEC_B["s"], 0.1) == pytest.approx(0.0125)


def test_domain_auc_uses_all_anomalies_not_only_same_domain():
    # Section A with the target anomaly removed from the source-AUC would give 2/3 (only 0.5 vs
    # {0.1, 0.4, 0.6}); the DCASE definition keeps it, so 5/6.
    m = dcase_section_metrics(SEC_A["y"], SEC_A["s"], SEC_A["d"])
    assert m["auc_source"] == pytest.approx(5 / 6)
    assert m["auc_source"] != pytest.approx(2 / 3)


def test_official_score_two_sections_by_hand():
    # harmonic mean of the 6 values: 6 / (6/5 + 4/3 + 19/14 + 3/2 + 8/5 + 76/41)
    vals = [A_EXPECTED[k] for k in ("auc_source", "auc_target", "pauc")] + [
        B_EXPECTED[k] for k in ("auc_source", "auc_target", "pauc")
    ]
    expected = 6 / sum(1 / v for v in vals)
    assert expected == 6 / (Fr(6, 5) + Fr(4, 3) + Fr(19, 14) + Fr(3, 2) + Fr(8, 5) + Fr(76, 41))
    sections = [dcase_section_metrics(sec["y"], sec["s"], sec["d"]) for sec in (SEC_A, SEC_B)]
    assert official_score_of_sections(sections) == pytest.approx(float(expected), abs=1e-12)
    # one section alone: 3 / (1/a + 1/b + 1/c)
    a = A_EXPECTED
    single = 3 / (1 / a["auc_source"] + 1 / a["auc_target"] + 1 / a["pauc"])
    assert official_score_of_sections(sections[:1]) == pytest.approx(float(single), abs=1e-12)
    # auc_all is not part of the official score
    assert official_score_of_sections(sections) != pytest.approx(
        official_score([s[k] for s in sections
                        for k in ("auc_source", "auc_target", "pauc", "auc_all")])
    )


def test_undefined_metrics_are_none_and_skipped():
    # no target normal clip: auc_target undefined, the rest defined
    m = dcase_section_metrics([0, 0, 1, 1], [0.1, 0.2, 0.3, 0.9], ["source"] * 3 + ["target"])
    assert m["auc_target"] is None and m["n_normal_target"] == 0
    assert m["auc_source"] == 1.0 and m["pauc"] == 1.0 and m["auc_all"] == 1.0
    # no anomaly: every metric undefined
    m0 = dcase_section_metrics([0, 0, 0], [0.1, 0.2, 0.3], ["source", "target", "source"])
    assert [m0[k] for k in ("auc_source", "auc_target", "pauc", "auc_all")] == [None] * 4
    assert "NaN" not in json.dumps(m0)
    # no normal at all
    m1 = dcase_section_metrics([1, 1], [0.1, 0.2], ["source", "target"])
    assert [m1[k] for k in ("auc_source", "auc_target", "pauc", "auc_all")] == [None] * 4
    # the official score skips None
    assert official_score_of_sections([m, m0]) == pytest.approx(1.0)
    assert official_score([None, 0.5, None, 1.0]) == pytest.approx(2 / 3)
    assert official_score([None, None]) is None and official_score([]) is None
    assert official_score_of_sections([m0, m1]) is None


def test_zero_auc_gives_zero_official_score():
    # perfectly inverted source domain: auc_source = 0 -> harmonic mean 0
    m = dcase_section_metrics([0, 0, 1], [0.9, 0.1, 0.5], ["source", "target", "source"])
    assert m["auc_source"] == 0.0 and m["auc_target"] == 1.0
    assert official_score_of_sections([m]) == 0.0
    assert official_score([0.0, 0.9, 0.8]) == 0.0


def test_section_metrics_input_errors():
    with pytest.raises(ValueError, match="domain"):
        dcase_section_metrics([0, 1], [0.1, 0.2], ["source", "Target"])
    with pytest.raises(ValueError):
        dcase_section_metrics([0, 2], [0.1, 0.2], ["source", "target"])
    with pytest.raises(ValueError):
        dcase_section_metrics([0, 1], [0.1, float("nan")], ["source", "target"])
    with pytest.raises(ValueError):
        dcase_section_metrics([0, 1], [0.1], ["source", "target"])
    with pytest.raises(ValueError):
        dcase_section_metrics([0, 1], [0.1, 0.2], ["source", "target"], max_fpr=0.0)
    with pytest.raises(ValueError):
        official_score([0.5, float("nan")])


# --------------------------------------------------------------------------- precision, recall, F1


def test_precision_recall_f1_strict_rule_at_ties():
    y = [0, 0, 1, 1, 0, 1]
    s = [0.1, 0.5, 0.5, 0.8, 0.9, 0.3]
    # threshold 0.5, rule score > 0.5: predicted = {0.8 (anomaly), 0.9 (normal)}; both 0.5 clips
    # (one normal, one anomaly) are predicted normal.
    # TP = 1, FP = 1, FN = 2 -> precision 1/2, recall 1/3, F1 = 2 * (1/6) / (5/6) = 2/5
    p, r, f = precision_recall_f1(y, s, 0.5)
    assert (p, r, f) == pytest.approx((1 / 2, 1 / 3, 2 / 5))
    # ">=" would give TP 2, FP 2: recall 2/3, F1 4/7 - make sure we are not doing that
    assert r != pytest.approx(2 / 3)


def test_precision_recall_f1_zero_division_is_zero():
    y = [0, 1, 1]
    s = [0.1, 0.2, 0.3]
    assert precision_recall_f1(y, s, 1.0) == (0.0, 0.0, 0.0)  # nothing predicted
    assert precision_recall_f1([0, 0], [0.1, 0.9], 0.5) == (0.0, 0.0, 0.0)  # no anomaly
    p, r, f = precision_recall_f1(y, s, -1.0)  # everything predicted
    assert (p, r, f) == pytest.approx((2 / 3, 1.0, 0.8))


# --------------------------------------------------------------------------- F1-EV

# Hand case for F1-EV: normals 0, 1, 3; anomalies 2, 4, 6 (A = 3 anomalies).
F1EV_Y = [0, 0, 0, 1, 1, 1]
F1EV_S = [0.0, 1.0, 3.0, 2.0, 4.0, 6.0]
# sorted thresholds 0, 1, 2, 3, 4, 6; range 6. F1 = 2 TP / (#predicted + A), rule score > theta:
#   theta=0: predicted {1,2,3,4,6} (5), TP 3 -> 6/8 = 3/4 ; width 1
#   theta=1: predicted {2,3,4,6}   (4), TP 3 -> 6/7       ; width 1
#   theta=2: predicted {3,4,6}     (3), TP 2 -> 4/6 = 2/3 ; width 1
#   theta=3: predicted {4,6}       (2), TP 2 -> 4/5       ; width 1
#   theta=4: predicted {6}         (1), TP 1 -> 2/4 = 1/2 ; width 2
# F1-EV = (3/4 + 6/7 + 2/3 + 4/5 + 2 * 1/2) / 6 = (1711/420) / 6 = 1711/2520
F1EV_EXPECTED = Fr(3, 4) + Fr(6, 7) + Fr(2, 3) + Fr(4, 5) + 2 * Fr(1, 2)
F1EV_EXPECTED /= 6


def test_f1_ev_by_hand():
    assert F1EV_EXPECTED == Fr(1711, 2520)
    v = f1_ev(F1EV_Y, F1EV_S)
    assert v == pytest.approx(float(F1EV_EXPECTED), abs=1e-12)
    assert 0.0 <= v <= 1.0
    # order of the clips does not matter
    perm = [5, 2, 0, 4, 1, 3]
    assert f1_ev(np.take(F1EV_Y, perm), np.take(F1EV_S, perm)) == pytest.approx(v, abs=1e-15)


def test_f1_ev_uses_the_same_f1_as_precision_recall_f1():
    # the Riemann-sum terms are the F1 values of precision_recall_f1 at the sorted scores
    theta = np.sort(F1EV_S)
    f1s = [precision_recall_f1(F1EV_Y, F1EV_S, t)[2] for t in theta[:-1]]
    riemann = np.dot(f1s, np.diff(theta)) / (theta[-1] - theta[0])
    assert riemann == pytest.approx(f1_ev(F1EV_Y, F1EV_S), abs=1e-12)


def test_f1_ev_perfect_separation_large_margin():
    rng = np.random.default_rng(0)
    normal = rng.uniform(0.0, 1.0, 50)
    anomalous = rng.uniform(100.0, 101.0, 50)
    y = np.r_[np.zeros(50, int), np.ones(50, int)]
    s = np.r_[normal, anomalous]
    # F1 = 1 exactly for theta in [max normal, min anomalous); elsewhere F1 < 1
    frac_one = (anomalous.min() - normal.max()) / (s.max() - s.min())
    v = f1_ev(y, s)
    # the rest of the range (about 2/101 of it) contributes 0 < F1 < 1
    assert frac_one < v < frac_one + (1 - frac_one)
    assert v == pytest.approx(frac_one, abs=0.02)
    assert v > 0.97


def test_f1_ev_degenerate_cases():
    # all scores equal: the range is a point, F1-EV := F1 there = 0 (nothing is > theta)
    assert f1_ev([0, 1, 1], [0.5, 0.5, 0.5]) == 0.0
    assert f1_ev([1], [3.0]) == 0.0
    # no anomaly: F1 = 0 everywhere
    assert f1_ev([0, 0, 0], [0.1, 0.5, 0.9]) == 0.0
    with pytest.raises(ValueError):
        f1_ev([], [])


def _f1_grid_integral(y, s, lo, hi, n=20_000):
    """Brute-force mean F1 over n uniform midpoints of [lo, hi] (independent of the sum)."""
    grid = lo + (np.arange(n) + 0.5) * (hi - lo) / n
    return float(np.mean([precision_recall_f1(y, s, t)[2] for t in grid]))


def test_f1_ev_is_the_mean_f1_over_uniform_thresholds():
    # Remark after Definition 4.1: expected F1 for a threshold uniform on [theta(1), theta(N)]
    y = [0, 0, 0, 1, 0, 1, 1, 0]
    s = [0.0, 0.7, 1.0, 1.0, 2.5, 3.0, 3.0, 4.0]  # with ties
    assert f1_ev(y, s) == pytest.approx(_f1_grid_integral(y, s, 0.0, 4.0, 4000), abs=2e-3)


# Hand case for the bounded F1-EV: normals 1, 1, 3, 3 (mean 2, std 1 with ddof=0);
# anomalies 2.5, 5, 7 (A = 3). Sorted scores 1, 1, 2.5, 3, 3, 5, 7. F1 (rule score > theta):
#   [1, 2.5): predicted 5, TP 3 -> 6/8 = 3/4
#   [2.5, 3): predicted 4, TP 2 -> 4/7
#   [3, 5)  : predicted 2, TP 2 -> 4/5   <- the maximum, optimal set [3, 5)
#   [5, 7)  : predicted 1, TP 1 -> 1/2
# theta_opt = centre of [3, 5) = 4
# theta_min = 2 - 0.2 * 1 = 1.8 ; theta_max = 4 + 0.2 * 1 = 4.2
# scores strictly inside (1.8, 4.2): 2.5, 3, 3 -> k_min = 3, k_max = 5, K_valid = 5 - 3 + 3 = 5
# theta_bounded = (1.8, 2.5, 3, 3, 4.2); widths 0.7, 0.5, 0, 1.2; range 2.4
# sum = (3/4 * 7/10 + 4/7 * 1/2 + 4/5 * 0 + 4/5 * 6/5) / (12/5)
#     = (21/40 + 2/7 + 24/25) / (12/5) = (2479/1400) / (12/5) = 2479/3360
BF_Y = [0, 0, 0, 0, 1, 1, 1]
BF_S = [1.0, 1.0, 3.0, 3.0, 2.5, 5.0, 7.0]
BF_EXPECTED = (Fr(3, 4) * Fr(7, 10) + Fr(4, 7) * Fr(1, 2) + Fr(4, 5) * Fr(6, 5)) / Fr(12, 5)


def test_bounded_f1_ev_by_hand():
    assert BF_EXPECTED == Fr(2479, 3360)
    assert empirical_optimal_threshold(BF_Y, BF_S) == pytest.approx(4.0)
    v = bounded_f1_ev(BF_Y, BF_S, beta=0.2)
    assert v == pytest.approx(float(BF_EXPECTED), abs=1e-12)
    assert bounded_f1_ev(BF_Y, BF_S) == v  # beta defaults to 0.2
    # and it is the mean F1 over uniform thresholds in [1.8, 4.2]
    assert v == pytest.approx(_f1_grid_integral(BF_Y, BF_S, 1.8, 4.2, 2400), abs=2e-3)


def test_bounded_f1_ev_bounds_use_normal_scores_only():
    # Adding a huge anomalous outlier changes mean/std of ALL scores a lot, but not those of the
    # normal scores; the optimal set [3, 5) and thus the bounds stay, only F1 values change
    # (A = 4 now): [1.8, 2.5): 8/(6+4) = 4/5, [2.5, 3): 6/9 = 2/3, [3, 4.2): 6/(3+4) = 6/7.
    y = BF_Y + [1]
    s = BF_S + [1000.0]
    expected = (Fr(4, 5) * Fr(7, 10) + Fr(2, 3) * Fr(1, 2) + Fr(6, 7) * Fr(6, 5)) / Fr(12, 5)
    assert empirical_optimal_threshold(y, s) == pytest.approx(4.0)
    assert bounded_f1_ev(y, s) == pytest.approx(float(expected), abs=1e-12)


def test_empirical_optimal_threshold_is_centre_of_gap():
    # perfect separation: F1 = 1 on [2, 10): centre 6 (not the largest normal score 2)
    assert empirical_optimal_threshold([0, 0, 1, 1], [1.0, 2.0, 10.0, 11.0]) == pytest.approx(6.0)


def test_bounded_f1_ev_degenerate_range():
    # normals 5, 6, 7 (mean 6, std sqrt(2/3)); anomalies 0, 1, 8 (A = 3):
    #   [0,1): pred 5, TP 2 -> 1/2 ; [1,5): pred 4, TP 1 -> 2/7 ; [5,6): pred 3, TP 1 -> 1/3
    #   [6,7): pred 2, TP 1 -> 2/5 ; [7,8): pred 1, TP 1 -> 1/2
    # optimal set [0,1) u [7,8): hull [0, 8), centre 4 -> theta_max = 4 + 0.2*0.816 < theta_min
    # = 6 - 0.2*0.816 = 5.84: degenerate range, result F1(theta_min) = F1 on [5, 6) = 1/3
    y = [0, 0, 0, 1, 1, 1]
    s = [5.0, 6.0, 7.0, 0.0, 1.0, 8.0]
    assert empirical_optimal_threshold(y, s) == pytest.approx(4.0)
    assert bounded_f1_ev(y, s) == pytest.approx(1 / 3)
    # all scores equal: theta_min = theta_max = the value, F1 there = 0
    assert bounded_f1_ev([0, 1], [2.0, 2.0]) == 0.0


def test_bounded_f1_ev_errors_and_no_anomaly():
    with pytest.raises(ValueError, match="normal"):
        bounded_f1_ev([1, 1], [0.1, 0.2])
    with pytest.raises(ValueError, match="beta"):
        bounded_f1_ev(BF_Y, BF_S, beta=-0.1)
    assert bounded_f1_ev([0, 0, 0], [0.1, 0.4, 0.9]) == 0.0


labels_scores = st.integers(min_value=2, max_value=25).flatmap(
    lambda n: st.tuples(
        st.lists(st.integers(0, 1), min_size=n, max_size=n),
        st.lists(st.integers(-20, 20), min_size=n, max_size=n),  # small ints: many ties
    )
)


@settings(max_examples=60, deadline=None)
@given(
    data=labels_scores,
    a=st.floats(min_value=0.01, max_value=100.0),
    b=st.floats(min_value=-1000.0, max_value=1000.0),
)
def test_f1_ev_invariant_to_monotone_affine_transform(data, a, b):
    y, s = np.asarray(data[0]), np.asarray(data[1], dtype=float)
    s2 = a * s + b
    v = f1_ev(y, s)
    assert 0.0 <= v <= 1.0
    assert f1_ev(y, s2) == pytest.approx(v, abs=1e-9)
    if (y == 0).any():
        # keep away from a vanishing bounded range (theta_max = theta_min), where the metric is
        # discontinuous and an ulp of rounding may decide (documented in bounded_f1_ev)
        normal = s[y == 0]
        theta_min = normal.mean() - 0.2 * normal.std()
        theta_max = empirical_optimal_threshold(y, s) + 0.2 * normal.std()
        assume(abs(theta_max - theta_min) > 1e-6 or normal.min() == normal.max())
        w = bounded_f1_ev(y, s)
        assert 0.0 <= w <= 1.0
        assert bounded_f1_ev(y, s2) == pytest.approx(w, abs=1e-9)


@settings(max_examples=40, deadline=None)
@given(data=labels_scores)
def test_f1_ev_matches_brute_force_integral(data):
    y, s = np.asarray(data[0]), np.asarray(data[1], dtype=float)
    if s.max() == s.min():
        return
    # 10 grid points per unit of integer score range hit every unit interval's inside
    n = int(10 * (s.max() - s.min()))
    assert f1_ev(y, s) == pytest.approx(_f1_grid_integral(y, s, s.min(), s.max(), n), abs=1e-9)


# --------------------------------------------------------------------------- ROC points, plots


def test_roc_curve_points():
    fpr, tpr = roc_curve_points(SEC_B["y"], SEC_B["s"])
    assert fpr[0] == 0.0 and fpr[-1] == 1.0 and tpr[-1] == 1.0
    assert np.all(np.diff(fpr) >= 0) and np.all(np.diff(tpr) >= 0)
    assert auc(fpr, tpr) == pytest.approx(13 / 20)
    with pytest.raises(ValueError):
        roc_curve_points([0, 0], [0.1, 0.2])


def test_plots_write_png_atomically(tmp_path):
    from calibration.plots import plot_score_histogram
    from trainer.asd_plots import plot_roc_curves

    rng = np.random.default_rng(1)
    y = np.r_[np.zeros(40, int), np.ones(20, int)]
    s = np.r_[rng.normal(0, 1, 40), rng.normal(2, 1, 20)]
    out = plot_roc_curves(tmp_path / "sub" / "roc.png",
                          {"a (AUC 0.9)": (y, s), "b": (y, -s)}, "ROC test")
    assert out == tmp_path / "sub" / "roc.png"
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    thresholds = {f"est{i}": float(t) for i, t in enumerate(np.linspace(-1, 3, 14))}
    thresholds["far"] = 1e6
    thresholds["failed"] = float("nan")
    h = plot_score_histogram(tmp_path / "sub" / "hist.png", s[y == 0], s[y == 1], thresholds,
                             "hist")
    assert h.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in (tmp_path / "sub").iterdir()) == ["hist.png", "roc.png"]
    assert h.stat().st_mode & 0o777 == 0o644  # readable by a report server, not mkstemp's 0600
    h.chmod(0o640)  # a replaced file keeps its permissions
    plot_score_histogram(h, s[y == 0], s[y == 1], {}, "again")
    assert h.stat().st_mode & 0o777 == 0o640
    with pytest.raises(ValueError):
        plot_score_histogram(tmp_path / "x.png", [], [], {}, "empty")
