"""Anomalous-sound-detection metrics: DCASE section metrics, official score, F1, F1-EV.

Pure NumPy / SciPy / scikit-learn (no TensorFlow), so nodes and report tools can import it.

Conventions used throughout
---------------------------
* ``anomaly_score``: higher means more anomalous.
* ``y_true``: ``1`` = anomalous clip, ``0`` = normal clip (bool is accepted).
* ``domain``: ``"source"`` or ``"target"`` per clip.
* Decision rule: a clip is predicted anomalous when ``score > threshold`` (strictly). This is the
  thesis' set of predicted anomalies ``A_pred = {x : score(x) > theta}`` (Wilkinghoff, thesis,
  Sec. 2.10.1, eqs. (13)-(18), text file ``/work/shared/papers/001_bc66ac417165e5b3.txt``
  lines 622-628), the rule of ``calibration.thresholds`` and ``edge.node``, and of the
  reference F1-EV implementation (``github.com/wilkinghoff/f1-ev``, ``pred > threshold``).
* Undefined metrics are ``None`` (never NaN) so that results serialise to clean JSON.

Sources
-------
* DCASE 2023 Task 2 evaluator, ``nttcslab/dcase2023_task2_evaluator``,
  ``dcase2023_task2_evaluator.py``: per-domain AUC, pAUC, precision/recall/F1, official score.
* K. Wilkinghoff, PhD thesis, Sec. 4.3 "F1-EV score": Definition 4.1 (eqs. (48)-(49)) and
  Definition 4.2 (eqs. (50)-(53)); text file lines ~1285-1338. The journal/workshop version
  ("F1-EV Score: Measuring the Likelihood of Estimating a Good Decision Threshold ...") is in
  the same file, Secs. 2.2-2.3, lines ~4227-4275.
"""
from __future__ import annotations

import math
import sys
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
from scipy import stats
from sklearn import metrics

__all__ = [
    "DOMAINS",
    "bounded_f1_ev",
    "dcase_section_metrics",
    "empirical_optimal_threshold",
    "f1_ev",
    "official_score",
    "official_score_of_sections",
    "precision_recall_f1",
    "roc_curve_points",
]

#: The two domain names of a DCASE (2022-2024) Task 2 section.
DOMAINS: tuple[str, str] = ("source", "target")

_EPS = sys.float_info.epsilon  # the DCASE evaluator's zero-division guard


# --------------------------------------------------------------------------- validation helpers


def _labels(y_true: Any, name: str = "y_true") -> np.ndarray:
    y = np.asarray(y_true)
    if y.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {y.shape}")
    if y.dtype == bool:
        return y.astype(np.int8)
    if y.size and not np.isin(y, (0, 1)).all():
        bad = np.unique(y[~np.isin(y, (0, 1))])[:5]
        raise ValueError(
            f"{name} must contain only 0 (normal) and 1 (anomaly), found {bad.tolist()}")
    return y.astype(np.int8)


def _scores(anomaly_score: Any, n: int, name: str = "anomaly_score") -> np.ndarray:
    s = np.asarray(anomaly_score, dtype=np.float64)
    if s.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {s.shape}")
    if s.shape[0] != n:
        raise ValueError(f"{name} has {s.shape[0]} entries but y_true has {n}")
    if not np.isfinite(s).all():
        raise ValueError(f"{name} must be finite (found NaN or inf)")
    return s


def _labels_scores(y_true: Any, anomaly_score: Any) -> tuple[np.ndarray, np.ndarray]:
    y = _labels(y_true)
    return y, _scores(anomaly_score, y.shape[0])


def _f1_at(y: np.ndarray, s: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """F1 (thesis eq. (20)) at each threshold with the ``score > threshold`` rule, vectorised.

    ``F1 = 2 TP / (|A_pred| + |anomalies|)``; 0 when there is no anomaly at all (the DCASE
    zero-division convention), so it never divides by zero. Counting with integers keeps equal
    F1 values bit-identical, which :func:`empirical_optimal_threshold` relies on.
    """
    thresholds = np.asarray(thresholds, dtype=np.float64)
    n_pos = int(y.sum())
    if n_pos == 0:
        return np.zeros(thresholds.shape, dtype=np.float64)
    all_sorted = np.sort(s)
    pos_sorted = np.sort(s[y == 1])
    n_pred = s.size - np.searchsorted(all_sorted, thresholds, side="right")  # #{score > t}
    tp = n_pos - np.searchsorted(pos_sorted, thresholds, side="right")       # #{anomaly > t}
    return 2.0 * tp / (n_pred + n_pos)


def _clip01(v: float) -> float:
    return float(min(1.0, max(0.0, v)))


# --------------------------------------------------------------------------- DCASE section metrics


def _auc_or_none(y: np.ndarray, s: np.ndarray, max_fpr: float | None = None) -> float | None:
    if y.size == 0 or y.min() == y.max():  # needs both classes
        return None
    return float(metrics.roc_auc_score(y, s, max_fpr=max_fpr))


def dcase_section_metrics(
    y_true: Any, anomaly_score: Any, domain: Any, max_fpr: float = 0.1
) -> dict[str, float | int | None]:
    """AUC per domain, pAUC and overall AUC of one section, as the DCASE 2023 evaluator.

    Parameters
    ----------
    y_true : array-like of shape (n_clips,), int {0, 1} or bool
        Ground truth of every test clip of the section; 1 = anomalous, 0 = normal.
    anomaly_score : array-like of shape (n_clips,), float
        Anomaly score per clip (higher = more anomalous). Must be finite.
    domain : array-like of shape (n_clips,), str
        ``"source"`` or ``"target"`` per clip.
    max_fpr : float, default=0.1
        Upper end of the false-positive-rate range of the pAUC, in (0, 1]. DCASE uses 0.1.

    Returns
    -------
    dict
        ``auc_source``, ``auc_target`` : float or None
            AUC-ROC over the normal clips *of that domain* plus *all* anomalous clips of the
            section (both domains): ``mask = (domain == d) | (y_true == 1)``,
            ``roc_auc_score(y_true[mask], score[mask])``.
        ``pauc`` : float or None
            ``roc_auc_score(y_true, score, max_fpr=max_fpr)`` over all clips of the section
            (both domains). This is scikit-learn's McClish-standardised partial AUC,
            ``0.5 * (1 + (A - max_fpr**2 / 2) / (max_fpr - max_fpr**2 / 2))`` with ``A`` the raw
            area under the ROC curve up to ``max_fpr`` (linear interpolation at ``max_fpr``);
            0.5 is chance level, 1 is perfect.
        ``auc_all`` : float or None
            Plain AUC-ROC over all clips of the section.
        ``n_normal_source``, ``n_normal_target``, ``n_anomaly`` : int
            Clip counts behind the metrics.

        A metric is ``None`` when it is undefined: no normal clip of that domain, no anomalous
        clip in the section, or no normal clip at all.

    Raises
    ------
    ValueError
        If the arrays differ in length or are not 1-D, ``y_true`` holds values other than 0/1,
        a score is not finite, a domain is neither ``"source"`` nor ``"target"``, or ``max_fpr``
        is not in (0, 1].

    Notes
    -----
    Source: ``nttcslab/dcase2023_task2_evaluator``, ``dcase2023_task2_evaluator.py``,
    function ``output_result``: ``y_pred_all[(y_domain == domain_idx) | (y_true_all != 0)]`` for
    the domain AUCs and ``metrics.roc_auc_score(y_true_all, y_pred_all, max_fpr=MAX_FPR)`` with
    ``MAX_FPR = 0.1`` for the pAUC.
    """
    if not (0.0 < float(max_fpr) <= 1.0):
        raise ValueError(f"max_fpr must be in (0, 1], got {max_fpr}")
    y, s = _labels_scores(y_true, anomaly_score)
    d = np.asarray(domain)
    if d.ndim != 1 or d.shape[0] != y.shape[0]:
        raise ValueError(f"domain must be 1-D with {y.shape[0]} entries, got shape {d.shape}")
    d = d.astype(str)
    unknown = sorted(set(np.unique(d).tolist()) - set(DOMAINS))
    if unknown:
        raise ValueError(f"domain values must be 'source' or 'target', found {unknown[:5]}")

    out: dict[str, float | int | None] = {}
    for name in DOMAINS:
        mask = (d == name) | (y == 1)
        out[f"auc_{name}"] = _auc_or_none(y[mask], s[mask])
    out["pauc"] = _auc_or_none(y, s, max_fpr=float(max_fpr))
    out["auc_all"] = _auc_or_none(y, s)
    out["n_normal_source"] = int(np.sum((d == "source") & (y == 0)))
    out["n_normal_target"] = int(np.sum((d == "target") & (y == 0)))
    out["n_anomaly"] = int(np.sum(y == 1))
    return out


def official_score(values: Iterable[float | None]) -> float | None:
    """DCASE official score: harmonic mean of AUC / pAUC values, skipping ``None``.

    Parameters
    ----------
    values : iterable of float or None
        AUC-ROC and pAUC values in [0, 1]; ``None`` entries (undefined metrics) are skipped.

    Returns
    -------
    float or None
        ``scipy.stats.hmean`` of the remaining values; ``0.0`` if any of them is 0 (the limit of
        the harmonic mean); ``None`` if no value is left.

    Raises
    ------
    ValueError
        If a value is NaN, infinite or negative.

    Notes
    -----
    Source: DCASE 2023 Task 2 evaluator, ``scipy.stats.hmean`` over the AUC (source), AUC
    (target) and pAUC of every machine type / section ("official score").
    """
    kept: list[float] = []
    for v in values:
        if v is None:
            continue
        f = float(v)
        if not math.isfinite(f) or f < 0.0:
            raise ValueError(f"official_score needs finite non-negative values, got {v!r}")
        kept.append(f)
    if not kept:
        return None
    if min(kept) == 0.0:
        return 0.0
    return float(stats.hmean(kept))


def official_score_of_sections(section_metrics: Sequence[Mapping[str, Any]]) -> float | None:
    """Official score over sections: harmonic mean of every section's AUCs and pAUC.

    Parameters
    ----------
    section_metrics : sequence of mapping
        One mapping per section, as returned by :func:`dcase_section_metrics`; its
        ``auc_source``, ``auc_target`` and ``pauc`` entries are used (``None`` is skipped).

    Returns
    -------
    float or None
        :func:`official_score` of the collected values (``3 * n_sections`` of them at most).

    Raises
    ------
    KeyError
        If a mapping lacks one of the three keys.
    ValueError
        As :func:`official_score`.
    """
    values: list[float | None] = []
    for m in section_metrics:
        values.extend((m["auc_source"], m["auc_target"], m["pauc"]))
    return official_score(values)


# --------------------------------------------------------------------------- threshold-dependent


def precision_recall_f1(
    y_true: Any, anomaly_score: Any, decision_threshold: float
) -> tuple[float, float, float]:
    """Precision, recall and F1 of the decision ``score > decision_threshold``.

    Parameters
    ----------
    y_true : array-like of shape (n_clips,), int {0, 1} or bool
        1 = anomalous (positive class), 0 = normal.
    anomaly_score : array-like of shape (n_clips,), float
        Anomaly scores, higher = more anomalous. Must be finite.
    decision_threshold : float
        A clip is predicted anomalous when its score is *strictly* greater than this value (a
        score equal to the threshold is predicted normal), as the thesis' ``A_pred`` (eq. (13)
        ff.) and the ``calibration`` / ``edge`` packages of this project.

    Returns
    -------
    precision : float
        ``TP / max(TP + FP, eps)``.
    recall : float
        ``TP / max(TP + FN, eps)``.
    f1 : float
        ``2 * precision * recall / max(precision + recall, eps)``.

        ``eps = sys.float_info.epsilon``: an empty denominator gives 0, never NaN (DCASE 2023
        evaluator convention).

    Raises
    ------
    ValueError
        On malformed inputs (see :func:`dcase_section_metrics`) or a non-finite threshold.
    """
    y, s = _labels_scores(y_true, anomaly_score)
    thr = float(decision_threshold)
    if math.isnan(thr):
        raise ValueError("decision_threshold must not be NaN")
    pred = s > thr
    tp = int(np.sum(pred & (y == 1)))
    fp = int(np.sum(pred & (y == 0)))
    fn = int(np.sum(~pred & (y == 1)))
    precision = tp / max(tp + fp, _EPS)
    recall = tp / max(tp + fn, _EPS)
    f1 = 2.0 * precision * recall / max(precision + recall, _EPS)
    return float(precision), float(recall), float(f1)


# --------------------------------------------------------------------------- F1-EV


def f1_ev(y_true: Any, anomaly_score: Any) -> float:
    """F1-EV score: expected F1 over uniformly drawn thresholds in [min score, max score].

    Parameters
    ----------
    y_true : array-like of shape (n_clips,), int {0, 1} or bool
        1 = anomalous, 0 = normal.
    anomaly_score : array-like of shape (n_clips,), float
        Anomaly scores of the test clips (higher = more anomalous). Must be finite.

    Returns
    -------
    float
        ``sum_{k=1}^{N-1} F1(theta(k)) * (theta(k+1) - theta(k)) / (theta(N) - theta(1))`` in
        [0, 1], with ``theta(1) <= ... <= theta(N)`` the sorted scores.

    Raises
    ------
    ValueError
        If there is no clip, or on malformed inputs.

    Notes
    -----
    Thesis Definition 4.1, eqs. (48)-(49) (text lines ~1306-1314); journal version Sec. 2.2.

    *Threshold rule.* ``F1(theta)`` predicts ``score > theta`` (strict), the thesis' own
    ``A_pred`` (eqs. (13)-(18)) that eq. (49) refers to. With this rule ``F1`` is right-continuous
    and constant on every ``[theta(k), theta(k+1))``, so the left Riemann sum of eq. (49) is
    *exactly* the integral of the piecewise-constant F1 function, i.e. the expected F1 of a
    threshold drawn uniformly from ``[theta(1), theta(N)]`` (the Remark after Definition 4.1).
    With ``>=`` the value at ``theta(k)`` would count clip ``k`` as anomalous although it is
    normal for every threshold inside ``(theta(k), theta(k+1))``: the sum would weight a value
    taken on a single point. The text around Figure 17 does not state the rule; the reference
    implementation (``wilkinghoff/f1-ev``) also uses ``pred > threshold``. Same rule as
    :func:`precision_recall_f1`; F1 here is eq. (20), ``2 TP / (|A_pred| + |anomalies|)``, which
    equals that function's F1 (also 0 when TP = 0).

    *Ties.* Equal scores give zero-width steps, so duplicates need no special treatment (the
    result equals the one over the distinct scores).

    *Degenerate range.* If all scores are equal (also a single clip), eq. (48) divides by zero;
    F1-EV is then defined as ``F1(theta(1))``, the F1 on the (single-point) range, which with
    the strict rule is 0 (nothing is predicted anomalous): a constant scorer carries no
    information. Without any anomalous clip F1 is 0 everywhere (zero-division convention) and
    F1-EV is 0.
    """
    y, s = _labels_scores(y_true, anomaly_score)
    if s.size == 0:
        raise ValueError("f1_ev needs at least one clip")
    theta = np.sort(s)
    span = theta[-1] - theta[0]
    if not span > 0.0:
        return _clip01(float(_f1_at(y, s, theta[:1])[0]))
    f1 = _f1_at(y, s, theta[:-1])
    widths = np.diff(theta)
    return _clip01(float(np.dot(f1, widths) / span))


def empirical_optimal_threshold(y_true: Any, anomaly_score: Any) -> float:
    """Centre of the set of empirically optimal decision thresholds (``theta_opt``).

    Parameters
    ----------
    y_true : array-like of shape (n_clips,), int {0, 1} or bool
        1 = anomalous, 0 = normal.
    anomaly_score : array-like of shape (n_clips,), float
        Anomaly scores of the test clips. Must be finite.

    Returns
    -------
    float
        ``(inf O + sup O) / 2`` where ``O`` is the set of thresholds ``theta`` in
        ``[min score, max score]`` maximising ``F1(theta)`` (rule ``score > theta``).

    Raises
    ------
    ValueError
        If there is no clip, or on malformed inputs.

    Notes
    -----
    Used for ``theta_opt`` of the bounded F1-EV (thesis Definition 4.2 and text lines ~1318:
    "the center theta_opt of the set of all empirically optimal decision thresholds"; journal
    Sec. 2.3: "the center of the interval of possible thresholds yielding optimal results").

    Let ``u(1) < ... < u(M)`` be the distinct scores. ``F1`` is constant on each
    ``[u(j), u(j+1))``, so ``O`` is a union of such intervals (plus the point ``u(M)`` where F1
    is 0, optimal only if F1 is 0 everywhere). With ``j_lo`` / ``j_hi`` the smallest / largest
    optimal ``j``: ``inf O = u(j_lo)`` and ``sup O = u(j_hi + 1)`` (``u(M)`` if ``j_hi = M``).
    For perfectly separated scores this is the middle of the gap between the largest normal and
    the smallest anomalous score, as in thesis Figure 16 (centre panel). Taking instead the
    midpoint of the optimal *sorted scores* would put it on the largest normal score (the only
    optimal sorted score), the edge of the gap. If the optimal intervals are not contiguous the
    centre of their hull is used (it need not itself be optimal). The reference implementation
    (``wilkinghoff/f1-ev``) uses the *first* optimal sorted score instead of a centre.
    """
    y, s = _labels_scores(y_true, anomaly_score)
    if s.size == 0:
        raise ValueError("empirical_optimal_threshold needs at least one clip")
    u = np.unique(s)
    f1 = _f1_at(y, s, u)
    idx = np.flatnonzero(f1 == f1.max())
    lo = u[idx[0]]
    hi = u[idx[-1] + 1] if idx[-1] + 1 < u.size else u[idx[-1]]
    return float(0.5 * (lo + hi))


def bounded_f1_ev(y_true: Any, anomaly_score: Any, beta: float = 0.2) -> float:
    """Bounded F1-EV: expected F1 over thresholds in [theta_min, theta_max].

    Parameters
    ----------
    y_true : array-like of shape (n_clips,), int {0, 1} or bool
        1 = anomalous, 0 = normal. At least one normal clip is required.
    anomaly_score : array-like of shape (n_clips,), float
        Anomaly scores of the test clips (higher = more anomalous). Must be finite.
    beta : float, default=0.2
        ``beta_{F1-EV}`` (journal: ``alpha``), >= 0; 0.2 as in the thesis experiments
        (Sec. 4.3.2 and 4.3.4).

    Returns
    -------
    float
        Eq. (52) in [0, 1].

    Raises
    ------
    ValueError
        If there is no normal clip, ``beta`` is negative or not finite, or on malformed inputs.

    Notes
    -----
    Thesis Definition 4.2, eqs. (50)-(53) (text lines ~1322-1338); journal version Sec. 2.3
    (lines ~4243-4275).

    *Bounds.* Eq. (50) writes mean and std over the whole ``theta_sorted`` (all test scores),
    but the thesis text right before it (line ~1318: the lower bound "close to the mean of the
    normal test samples"; "these boundaries are based on the anomaly scores belonging to the
    normal test samples") and the journal version (line 4247: "the sample mean mu of the
    anomaly scores belonging to the normal test samples"; line 4258: "sigma denotes the sample
    standard deviation belonging to the normal test samples") use the *normal* test scores only, as does the
    reference implementation. So, with ``mu``, ``sigma`` the mean and standard deviation
    (``ddof=0``, ``numpy.std`` as the reference implementation) of the normal test scores::

        theta_min = mu - beta * sigma
        theta_max = theta_opt + beta * sigma

    with ``theta_opt`` from :func:`empirical_optimal_threshold` (centre of the optimal set).

    *Grid (eq. (51)).* ``k_min`` / ``k_max`` are the first / last sorted score strictly inside
    ``(theta_min, theta_max)``, ``K_valid = k_max - k_min + 3`` and
    ``theta_bounded = (theta_min, theta(k_min), ..., theta(k_max), theta_max)``; with no score
    inside, ``K_valid = 2`` and the grid is ``(theta_min, theta_max)``. The sum (52) with
    spacings (53) uses the strict rule of :func:`f1_ev`, so it is exactly the mean of the
    piecewise-constant F1 over ``[theta_min, theta_max]`` (F1 at ``theta_min`` holds up to the
    first inner score, F1 at ``theta(k_max)`` up to ``theta_max``), and a score equal to a bound
    changes nothing.

    *Degenerate range.* If ``theta_max <= theta_min`` (the optimal threshold lies below
    ``mu - 2 * beta * sigma``, or everything collapses to one value), eq. (53) is undefined or
    negative; the result is then ``F1(theta_min)``, the limit of (52) for a range shrinking to
    ``theta_min`` (and what the reference implementation returns when ``theta_max <
    theta_min``). Without any anomalous clip F1 is 0 everywhere and the result is 0. Note
    that the metric is discontinuous where ``theta_max`` meets ``theta_min`` (a vanishing
    range): there, rounding in ``mu``, ``sigma`` or ``theta_opt`` (e.g. after rescaling the
    scores) can change the result.
    """
    y, s = _labels_scores(y_true, anomaly_score)
    b = float(beta)
    if not math.isfinite(b) or b < 0.0:
        raise ValueError(f"beta must be finite and >= 0, got {beta!r}")
    normal = s[y == 0]
    if normal.size == 0:
        raise ValueError("bounded_f1_ev needs at least one normal clip (theta_min is undefined)")
    if normal.min() == normal.max():  # exact: np.mean of equal values may be off by an ulp
        mu, sigma = float(normal[0]), 0.0
    else:
        mu, sigma = float(np.mean(normal)), float(np.std(normal))
    theta_opt = empirical_optimal_threshold(y, s)
    theta_min = mu - b * sigma
    theta_max = theta_opt + b * sigma
    if not theta_max > theta_min:
        return _clip01(float(_f1_at(y, s, np.array([theta_min]))[0]))
    theta = np.sort(s)
    inner = theta[(theta > theta_min) & (theta < theta_max)]  # theta(k_min..k_max)
    grid = np.concatenate(([theta_min], inner, [theta_max]))  # K_valid = inner.size + 2
    f1 = _f1_at(y, s, grid[:-1])
    return _clip01(float(np.dot(f1, np.diff(grid)) / (theta_max - theta_min)))


# --------------------------------------------------------------------------- ROC


def roc_curve_points(y_true: Any, anomaly_score: Any) -> tuple[np.ndarray, np.ndarray]:
    """ROC curve points (thin wrapper over :func:`sklearn.metrics.roc_curve`).

    Parameters
    ----------
    y_true : array-like of shape (n_clips,), int {0, 1} or bool
        1 = anomalous (positive), 0 = normal.
    anomaly_score : array-like of shape (n_clips,), float
        Anomaly scores, higher = more anomalous. Must be finite.

    Returns
    -------
    fpr : ndarray of shape (n_points,), float64
        Increasing false positive rates, starting at 0 and ending at 1.
    tpr : ndarray of shape (n_points,), float64
        True positive rates at those points. Every point is kept
        (``drop_intermediate=False``), so straight lines between them are the exact ROC curve
        (ties give diagonal segments, as the trapezoidal AUC assumes).

    Raises
    ------
    ValueError
        If ``y_true`` does not contain both classes, or on malformed inputs.
    """
    y, s = _labels_scores(y_true, anomaly_score)
    if y.size == 0 or y.min() == y.max():
        raise ValueError("roc_curve_points needs both normal and anomalous clips")
    fpr, tpr, _ = metrics.roc_curve(y, s, drop_intermediate=False)
    return np.asarray(fpr, dtype=np.float64), np.asarray(tpr, dtype=np.float64)
