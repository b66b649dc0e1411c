"""Decision threshold estimation from the anomaly scores of normal data only.

A semi-supervised anomalous sound detection (ASD) system only has normal
training recordings, so its decision threshold has to be estimated from the
anomaly scores of normal samples. Every estimator here picks a threshold
that cuts off the most extreme normal scores (by default about the top
10 %). The hope is that this threshold also separates normal from anomalous
recordings. :class:`FalsePositiveRate` (``"fpr"``) states the share it cuts
off (5 % by default) and adds a margin for how few scores it was fitted on.

The methods and their default hyperparameters follow

* K. Wilkinghoff, PhD thesis, Section 2.11 "Decision threshold estimation"
  (Eqs. 30-34) and Section 4.2 (90th percentiles, ``beta_SD = 1.28``,
  ``beta_MAD = 2``, ``beta_IQR = 0.5``, ``nu_SVM = 0.1``, two stages for
  MST), and
* K. Wilkinghoff and A. Cornaggia-Urrigshardt, "On choosing decision
  thresholds for anomalous sound detection in machine condition
  monitoring", ICA 2022 (Sections 3.1-3.9; the ``-x2`` two-stage variants).
  This paper is the source of Section 4.2 of the thesis.

Units
-----
Anomaly scores are dimensionless. The embedding backend here uses cosine
distances in ``[0, 2]``. The estimators make no assumption about the range,
and they accept negative scores such as negative log-likelihoods. A
threshold is in the same units as the scores it was fitted on.

Conventions (scikit-learn style)
--------------------------------
* Hyperparameters are set in ``__init__``, stored unchanged and checked in
  :meth:`ThresholdEstimator.fit`.
* ``fit(normal_scores)`` returns ``self``. Fitted attributes end in an
  underscore: ``threshold_``, ``n_samples_fit_`` and estimator-specific ones.
* ``predict(scores)`` returns a boolean array, ``True`` meaning *anomalous*
  (``score > threshold_``, strictly).
* ``get_params`` / ``set_params`` work as in scikit-learn, including nested
  ``estimator__<param>`` names for :class:`MultiStage`.

Example
-------
>>> import numpy as np
>>> est = make_threshold_estimator("mst-iqr").fit(np.linspace(0.1, 0.5, 101))
>>> bool(est.predict([0.9])[0])
True
"""

from __future__ import annotations

import inspect
import math
from typing import Any, Callable, ClassVar

import numpy as np

__all__ = [
    "NotFittedError",
    "ThresholdEstimator",
    "GammaPercentile",
    "HistogramPercentile",
    "StandardDeviation",
    "MedianAbsoluteDeviation",
    "InterquartileRange",
    "OneClassSVMThreshold",
    "GeneralizedESD",
    "CleverSD",
    "FalsePositiveRate",
    "MultiStage",
    "ESTIMATORS",
    "NON_ITERATIVE_METHODS",
    "THRESHOLD_METHODS",
    "make_threshold_estimator",
]


class NotFittedError(RuntimeError):
    """Raised when ``predict`` is called on an estimator that has not been fitted.

    It plays the part of :class:`sklearn.exceptions.NotFittedError`, but it
    subclasses :class:`RuntimeError` (not ``ValueError``) so that it cannot be
    confused with the input-validation errors of ``fit``.
    """


# --------------------------------------------------------------------------
# input validation helpers
# --------------------------------------------------------------------------


def _as_float_array(values: Any, name: str) -> np.ndarray:
    if np.iscomplexobj(values):
        raise ValueError(f"{name} must be real-valued, got complex values.")
    try:
        arr = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(
            f"{name} must be a 1-D array-like of real numbers; could not convert "
            f"to float ({exc})."
        ) from exc
    return arr


def _check_normal_scores(normal_scores: Any) -> np.ndarray:
    """Validate the training scores: 1-D, finite, at least 2 values."""
    arr = _as_float_array(normal_scores, "normal_scores")
    if arr.ndim != 1:
        raise ValueError(
            f"normal_scores must be a 1-D array of anomaly scores, got an array "
            f"with shape {arr.shape}."
        )
    if arr.size < 2:
        raise ValueError(
            f"normal_scores must contain at least 2 values, got {arr.size}."
        )
    if not np.all(np.isfinite(arr)):
        n_bad = int(np.count_nonzero(~np.isfinite(arr)))
        raise ValueError(
            f"normal_scores must be finite; found {n_bad} NaN or infinite value(s)."
        )
    return arr


def _check_scores(scores: Any) -> np.ndarray:
    """Validate the scores to classify: scalar or 1-D, no NaN (inf is allowed)."""
    arr = _as_float_array(scores, "scores")
    if arr.ndim > 1:
        raise ValueError(
            f"scores must be a scalar or a 1-D array, got an array with shape "
            f"{arr.shape}."
        )
    if np.any(np.isnan(arr)):
        raise ValueError(
            "scores contains NaN; a NaN score can be classified neither as "
            "normal nor as anomalous."
        )
    return arr


def _check_real(name: str, value: Any, *, low: float | None = None,
                high: float | None = None, low_open: bool = False,
                high_open: bool = False) -> float:
    """Check that a hyperparameter is a finite real number within an interval."""
    interval = (
        ("(" if low_open or low is None else "[")
        + ("-inf" if low is None else f"{low:g}") + ", "
        + ("inf" if high is None else f"{high:g}")
        + (")" if high_open or high is None else "]")
    )
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ValueError(f"{name} must be a real number in {interval}, got {value!r}.")
    v = float(value)
    ok = math.isfinite(v)
    if ok and low is not None:
        ok = v > low if low_open else v >= low
    if ok and high is not None:
        ok = v < high if high_open else v <= high
    if not ok:
        raise ValueError(f"{name} must be in {interval}, got {value!r}.")
    return v


def _count_leading_true(pred: Callable[[np.ndarray], np.ndarray], n_max: int) -> int:
    """How many of ``pred(0), pred(1), ...`` up to ``n_max`` are True before the first False.

    ``pred`` is evaluated in growing vectorised blocks, so an early stop is
    cheap and a long run costs O(n) in total.
    """
    start, size = 0, 64
    while start < n_max:
        ks = np.arange(start, min(n_max, start + size))
        ok = np.asarray(pred(ks), dtype=bool)
        if not ok.all():
            return start + int(np.argmin(ok))
        start += ks.size
        size *= 2
    return n_max


class _TrimmedMoments:
    """Mean and variance of the ``m`` smallest scores, for every ``m``, in O(1) each.

    The scores are sorted ascending and centred on their median before the
    prefix sums are taken, which keeps cancellation error small.
    """

    def __init__(self, x: np.ndarray) -> None:
        self.x = np.sort(x)
        self.center = float(np.median(self.x))
        xc = self.x - self.center
        self.xc = xc
        self.s1 = np.cumsum(xc)
        self.s2 = np.cumsum(xc * xc)

    def mean_var(self, m: np.ndarray, ddof: int) -> tuple[np.ndarray, np.ndarray]:
        """Centred mean and variance of ``x[:m]`` (``m`` is an int array, ``m > ddof``)."""
        s1 = self.s1[m - 1]
        s2 = self.s2[m - 1]
        mean = s1 / m
        var = np.maximum((s2 - s1 * s1 / m) / (m - ddof), 0.0)
        return mean, var


# --------------------------------------------------------------------------
# base class
# --------------------------------------------------------------------------


class ThresholdEstimator:
    """Base class of decision threshold estimators (scikit-learn style).

    Subclasses implement ``_estimate_threshold(x)``. It receives the validated
    1-D float64 array of normal scores and returns the threshold.
    ``_validate_params`` may check hyperparameters.

    Attributes
    ----------
    threshold_ : float
        Decision threshold in the units of the anomaly scores (dimensionless,
        e.g. a cosine distance in ``[0, 2]``). A score strictly greater than
        ``threshold_`` is anomalous.
    n_samples_fit_ : int
        Number of normal scores seen by ``fit``.

    Raises
    ------
    ValueError
        From ``fit`` when ``normal_scores`` is not a 1-D array-like of at
        least 2 finite real numbers, or when a hyperparameter is invalid.
        From ``predict`` when ``scores`` is not a scalar or 1-D, or contains
        NaN.
    NotFittedError
        From ``predict`` before ``fit`` has been called. It subclasses
        :class:`RuntimeError`.

    Notes
    -----
    Degenerate input: when all normal scores are equal, every estimator
    returns that common value as the threshold.
    """

    #: Registry name of the method (see :data:`ESTIMATORS`).
    method: ClassVar[str] = ""
    #: Iterative methods (GESD, cleverSD, MST) cannot be wrapped by MultiStage.
    _iterative: ClassVar[bool] = False
    #: Whether MultiStage may wrap the method: non-iterative methods that cut a fixed
    #: share of scores. A method that targets a stated false-positive rate is not
    #: refitted on what it flagged (that would move it off its target).
    _stackable: ClassVar[bool] = True

    # ---------------------------------------------------------------- params
    @classmethod
    def _get_param_names(cls) -> list[str]:
        init = cls.__init__
        if init is object.__init__:
            return []
        sig = inspect.signature(init)
        names = []
        for p in sig.parameters.values():
            if p.name == "self":
                continue
            if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
                raise TypeError(
                    f"{cls.__name__}.__init__ must not take *args/**kwargs "
                    "(scikit-learn estimator convention)."
                )
            names.append(p.name)
        return sorted(names)

    def get_params(self, deep: bool = True) -> dict[str, Any]:
        """Return the hyperparameters as a dict.

        Parameters
        ----------
        deep : bool, default=True
            If True, also return the parameters of nested estimators, as
            ``<component>__<param>``.

        Returns
        -------
        dict
            Parameter names mapped to their values.
        """
        out: dict[str, Any] = {}
        for name in self._get_param_names():
            value = getattr(self, name)
            if deep and isinstance(value, ThresholdEstimator):
                for sub, sub_value in value.get_params(deep=True).items():
                    out[f"{name}__{sub}"] = sub_value
            out[name] = value
        return out

    def set_params(self, **params: Any) -> "ThresholdEstimator":
        """Set hyperparameters, including nested ``<component>__<param>`` ones.

        Returns
        -------
        self

        Raises
        ------
        ValueError
            If a parameter name is not valid for this estimator.
        """
        valid = self._get_param_names()
        nested: dict[str, dict[str, Any]] = {}
        for key, value in params.items():
            name, sep, sub = key.partition("__")
            if name not in valid:
                raise ValueError(
                    f"Invalid parameter {name!r} for estimator {type(self).__name__}. "
                    f"Valid parameters are: {valid}."
                )
            if sep:
                nested.setdefault(name, {})[sub] = value
            else:
                setattr(self, name, value)
        for name, sub_params in nested.items():
            component = getattr(self, name)
            if not isinstance(component, ThresholdEstimator):
                raise ValueError(f"Parameter {name!r} is not a nested estimator.")
            component.set_params(**sub_params)
        return self

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_params(deep=False).items())
        return f"{type(self).__name__}({args})"

    # ------------------------------------------------------------------- fit
    def _validate_params(self) -> None:  # pragma: no cover - overridden
        pass

    def _estimate_threshold(self, x: np.ndarray) -> float:  # pragma: no cover
        raise NotImplementedError

    def fit(self, normal_scores: Any, n_independent: int | None = None) -> "ThresholdEstimator":
        """Estimate the decision threshold from anomaly scores of normal samples.

        Parameters
        ----------
        normal_scores : array-like of shape (n_samples,)
            Finite anomaly scores of normal (non-anomalous) samples, at least 2.
        n_independent : int or None, default=None
            How many of the scores are statistically independent (scores of
            windows that overlap in time are not); between 2 and ``n_samples``.
            None: all of them. Only estimators that quantify their own
            uncertainty (:class:`FalsePositiveRate`) use it; the others ignore it.

        Returns
        -------
        self
            The fitted estimator.

        Raises
        ------
        ValueError
            If ``normal_scores`` is not 1-D, has fewer than 2 values, contains
            NaN/inf or non-numeric values, if a hyperparameter is invalid, or if
            ``n_independent`` is not a whole number in ``[2, n_samples]``.
        """
        self._validate_params()
        x = _check_normal_scores(normal_scores)
        if n_independent is None:
            n_independent = x.size
        if (isinstance(n_independent, bool) or not isinstance(n_independent, (int, np.integer))
                or not 2 <= n_independent <= x.size):
            raise ValueError(f"n_independent must be a whole number in [2, {x.size}] (the "
                             f"number of normal_scores), got {n_independent!r}.")
        self.n_independent_ = int(n_independent)
        threshold = float(self._estimate_threshold(x))
        if not math.isfinite(threshold):  # defensive; should not happen
            raise ValueError(
                f"{type(self).__name__} produced a non-finite threshold ({threshold}) "
                "from normal_scores."
            )
        self.threshold_ = threshold
        self.n_samples_fit_ = int(x.size)
        return self

    def _check_is_fitted(self) -> None:
        if not hasattr(self, "threshold_"):
            raise NotFittedError(
                f"This {type(self).__name__} instance is not fitted yet. Call "
                "'fit' with normal_scores before using this estimator."
            )

    def predict(self, scores: Any) -> np.ndarray:
        """Classify anomaly scores. ``True`` means anomalous (``score > threshold_``).

        Parameters
        ----------
        scores : float or array-like of shape (n_samples,)
            Anomaly scores to classify. ``+inf`` counts as anomalous and
            ``-inf`` as normal. NaN is rejected.

        Returns
        -------
        numpy.ndarray of bool
            Same shape as ``scores``.

        Raises
        ------
        NotFittedError
            If the estimator has not been fitted.
        ValueError
            If ``scores`` is not a scalar or 1-D, or contains NaN.
        """
        self._check_is_fitted()
        arr = _check_scores(scores)
        return np.asarray(arr > self.threshold_, dtype=bool)


# --------------------------------------------------------------------------
# non-iterative estimators
# --------------------------------------------------------------------------


class GammaPercentile(ThresholdEstimator):
    """Gamma distribution percentile (GDP).

    Fits a gamma distribution to the normal anomaly scores by maximum
    likelihood (:func:`scipy.stats.gamma.fit`). The threshold is the
    ``percentile``-th percentile of the fitted distribution, i.e. the inverse
    CDF at ``percentile / 100``. The DCASE baseline systems use this
    approach.

    Parameters
    ----------
    percentile : float, default=90.0
        Percentile in ``(0, 100)`` of the fitted gamma distribution.
    floc : "auto", float or None, default="auto"
        How the gamma distribution's location is handled.

        * ``"auto"``: the location is fixed at
          ``min(0, min(normal_scores)) - eps``, with
          ``eps = 1e-6 * (max - min)`` of the scores. For non-negative scores,
          such as cosine distances, this is the usual two-parameter gamma
          anchored at 0. Zero scores stay strictly inside the support, and
          negative scores (e.g. negative log-likelihoods) are handled by
          shifting the support to just below the smallest score. Fitting with
          a fixed location is fast and numerically stable.
        * ``None``: all three parameters (shape, loc, scale) are free, as in
          ``scipy.stats.gamma.fit(scores)`` in the DCASE baseline. This is
          slower and less stable.
        * a float: the location is fixed at this value. It must be smaller
          than every normal score.

    Attributes
    ----------
    threshold_ : float
        Decision threshold, in the units of the (dimensionless) scores.
    n_samples_fit_ : int
        Number of normal scores used.
    shape_, loc_, scale_ : float
        Fitted gamma parameters (``a``, ``loc`` and ``scale`` in SciPy's
        notation).

    Raises
    ------
    ValueError
        On invalid ``normal_scores`` or hyperparameters, or when a fixed
        ``floc`` is not below all scores.

    References
    ----------
    K. Wilkinghoff, PhD thesis, Section 2.11, "Gamma distribution percentile
    (GDP)" (no equation number), with the 90th percentile of Section 4.2.
    Wilkinghoff & Cornaggia-Urrigshardt, ICA 2022, Section 3.1.
    """

    method = "gdp"

    def __init__(self, percentile: float = 90.0, floc: Any = "auto") -> None:
        self.percentile = percentile
        self.floc = floc

    def _validate_params(self) -> None:
        _check_real("percentile", self.percentile, low=0.0, high=100.0,
                    low_open=True, high_open=True)
        if not (self.floc is None or (isinstance(self.floc, str) and self.floc == "auto")):
            _check_real("floc", self.floc)

    def _estimate_threshold(self, x: np.ndarray) -> float:
        from scipy import stats

        lo, hi = float(x.min()), float(x.max())
        if hi == lo:
            self.shape_, self.loc_, self.scale_ = math.nan, lo, 0.0
            return lo
        if self.floc is None:
            shape, loc, scale = stats.gamma.fit(x)
        else:
            if isinstance(self.floc, str):
                loc0 = min(0.0, lo) - 1e-6 * (hi - lo)
            else:
                loc0 = float(self.floc)
                if not loc0 < lo:
                    raise ValueError(
                        f"floc={self.floc!r} must be smaller than min(normal_scores)={lo!r} "
                        "(the gamma distribution has support (loc, inf))."
                    )
            shape, loc, scale = stats.gamma.fit(x, floc=loc0)
        self.shape_, self.loc_, self.scale_ = float(shape), float(loc), float(scale)
        return float(stats.gamma.ppf(float(self.percentile) / 100.0, shape, loc=loc, scale=scale))


class HistogramPercentile(ThresholdEstimator):
    """Histogram percentile (HP): the empirical percentile of the normal scores.

    The threshold is ``numpy.percentile(normal_scores, percentile)``, with
    linear interpolation between order statistics. No distribution is fitted.

    Parameters
    ----------
    percentile : float, default=90.0
        Percentile in ``(0, 100)``.

    Attributes
    ----------
    threshold_ : float
        Decision threshold, in the units of the (dimensionless) scores.
    n_samples_fit_ : int
        Number of normal scores used.

    Raises
    ------
    ValueError
        On invalid ``normal_scores`` or ``percentile``.

    References
    ----------
    K. Wilkinghoff, PhD thesis, Section 2.11, "Histogram percentile (HP)" (no
    equation number), with the 90th percentile of Section 4.2.
    Wilkinghoff & Cornaggia-Urrigshardt, ICA 2022, Section 3.2.
    """

    method = "hp"

    def __init__(self, percentile: float = 90.0) -> None:
        self.percentile = percentile

    def _validate_params(self) -> None:
        _check_real("percentile", self.percentile, low=0.0, high=100.0,
                    low_open=True, high_open=True)

    def _estimate_threshold(self, x: np.ndarray) -> float:
        return float(np.percentile(x, float(self.percentile)))


class StandardDeviation(ThresholdEstimator):
    """Standard deviation (SD) rule, thesis Eq. (30).

    ``threshold = mean(scores) + beta * std(scores)``. Only the upper
    threshold is used. ``beta = 1.28`` corresponds to the 90th percentile of
    a normal distribution.

    Parameters
    ----------
    beta : float, default=1.28
        Non-negative multiplier of the standard deviation (``beta_SD``).
    ddof : int, default=0
        Delta degrees of freedom of the standard deviation. 0 is NumPy's
        population standard deviation.

    Attributes
    ----------
    threshold_ : float
        Decision threshold, in the units of the (dimensionless) scores.
    n_samples_fit_ : int
        Number of normal scores used.
    mean_, std_ : float
        Mean and standard deviation of the normal scores.

    Raises
    ------
    ValueError
        On invalid ``normal_scores``, ``beta < 0`` or an invalid ``ddof``.

    References
    ----------
    K. Wilkinghoff, PhD thesis, Section 2.11, Eq. (30); ``beta_SD = 1.28`` as
    in Section 4.2. Wilkinghoff & Cornaggia-Urrigshardt, ICA 2022, Sec. 3.3.
    """

    method = "sd"

    def __init__(self, beta: float = 1.28, ddof: int = 0) -> None:
        self.beta = beta
        self.ddof = ddof

    def _validate_params(self) -> None:
        _check_real("beta", self.beta, low=0.0)
        if isinstance(self.ddof, bool) or not isinstance(self.ddof, (int, np.integer)) or self.ddof not in (0, 1):
            raise ValueError(f"ddof must be 0 or 1, got {self.ddof!r}.")

    def _estimate_threshold(self, x: np.ndarray) -> float:
        self.mean_ = float(np.mean(x))
        self.std_ = float(np.std(x, ddof=int(self.ddof)))
        return self.mean_ + float(self.beta) * self.std_


class MedianAbsoluteDeviation(ThresholdEstimator):
    """Median absolute deviation (MAD) rule, thesis Eq. (32).

    ``threshold = median(s) + delta * beta * median(|s - median(s)|)``.
    With ``delta = 1.4826``, ``delta * MAD`` estimates the standard deviation
    of normally distributed scores, and it is robust to outliers. (The thesis
    calls the method "mean absolute deviation", but Eq. (32) uses the
    median.)

    Parameters
    ----------
    beta : float, default=2.0
        Non-negative multiplier (``beta_MAD``).
    delta : float, default=1.4826
        Positive consistency constant (``delta_MAD``).

    Attributes
    ----------
    threshold_ : float
        Decision threshold, in the units of the (dimensionless) scores.
    n_samples_fit_ : int
        Number of normal scores used.
    median_ : float
        Median of the normal scores.
    mad_ : float
        Raw (unscaled) median absolute deviation from ``median_``.

    Raises
    ------
    ValueError
        On invalid ``normal_scores``, ``beta < 0`` or ``delta <= 0``.

    References
    ----------
    K. Wilkinghoff, PhD thesis, Section 2.11, Eq. (32); ``beta_MAD = 2`` as in
    Section 4.2. Wilkinghoff & Cornaggia-Urrigshardt, ICA 2022, Sec. 3.4.
    """

    method = "mad"

    def __init__(self, beta: float = 2.0, delta: float = 1.4826) -> None:
        self.beta = beta
        self.delta = delta

    def _validate_params(self) -> None:
        _check_real("beta", self.beta, low=0.0)
        _check_real("delta", self.delta, low=0.0, low_open=True)

    def _estimate_threshold(self, x: np.ndarray) -> float:
        self.median_ = float(np.median(x))
        self.mad_ = float(np.median(np.abs(x - self.median_)))
        return self.median_ + float(self.delta) * float(self.beta) * self.mad_


class InterquartileRange(ThresholdEstimator):
    """Interquartile range (IQR, "boxplot") rule, thesis Eq. (31).

    ``threshold = Q3 + beta * (Q3 - Q1)``. The quartiles are computed with
    :func:`numpy.percentile` (linear interpolation). The usual boxplot value
    is ``beta = 1.5``. The default of 0.5 follows Section 4.2 of the thesis
    and the ICA 2022 paper, where it performed significantly better.

    Parameters
    ----------
    beta : float, default=0.5
        Non-negative multiplier of the interquartile range (``beta_IQR``).

    Attributes
    ----------
    threshold_ : float
        Decision threshold, in the units of the (dimensionless) scores.
    n_samples_fit_ : int
        Number of normal scores used.
    q1_, q3_ : float
        First and third quartiles of the normal scores.

    Raises
    ------
    ValueError
        On invalid ``normal_scores`` or ``beta < 0``.

    References
    ----------
    K. Wilkinghoff, PhD thesis, Section 2.11, Eq. (31); ``beta_IQR = 0.5`` as
    in Section 4.2. Wilkinghoff & Cornaggia-Urrigshardt, ICA 2022, Sec. 3.5.
    """

    method = "iqr"

    def __init__(self, beta: float = 0.5) -> None:
        self.beta = beta

    def _validate_params(self) -> None:
        _check_real("beta", self.beta, low=0.0)

    def _estimate_threshold(self, x: np.ndarray) -> float:
        q1, q3 = np.percentile(x, [25.0, 75.0])
        self.q1_, self.q3_ = float(q1), float(q3)
        return self.q3_ + float(self.beta) * (self.q3_ - self.q1_)


class OneClassSVMThreshold(ThresholdEstimator):
    """One-class SVM (OCSVM) threshold.

    Trains :class:`sklearn.svm.OneClassSVM` with ``nu`` on the 1-D normal
    scores. The threshold is the upper edge of the region the OCSVM accepts
    as normal: the largest score at which the decision function is still
    ``>= 0``, above which everything is anomalous.

    ``kernel="linear"`` (default) follows the ICA 2022 paper ("the
    implementation of scikit-learn with a linear kernel"). A linear OCSVM
    separates the data from the origin, and the ``nu`` fraction of points
    closest to the origin become the outliers. The scores are therefore
    mapped to ``v = (max(s) - s) / std(s) + 1``. Then ``v >= 1``, and the
    highest scores are the ones closest to the origin. In 1-D the optimal
    hyperplane sits at the ``nu``-quantile of ``v``, whatever the shift, so
    the threshold is very close to the ``100 * (1 - nu)``-th percentile of
    the scores (the 90th for ``nu = 0.1``), as Section 2.11 of the thesis
    states. Without the mapping, a linear OCSVM on positive scores such as
    cosine distances would flag the *lowest* 10 % instead.

    ``kernel="rbf"`` fits an RBF OCSVM to the standardised scores
    ``z = (s - median(s)) / std(s)``, where ``gamma="scale"`` is 1. Here
    ``nu`` is split between *both* tails, so for ``nu = 0.1`` the upper edge
    lies around the 95th-97th percentile. For larger ``gamma`` the accepted
    region can have holes between the tails. For that reason the threshold
    is the *supremum* of the accepted region, not the first sign change
    above the median. It is found on a 2049-point grid from ``min(z)`` to
    ``max(z) + 5 / sqrt(gamma)`` and refined with Brent's method.

    If the decision function is negative everywhere on the grid, which
    should not happen, the threshold falls back to ``max(normal_scores)``.
    Training costs O(n^2): about 1-2 s for 20 000 scores.

    Parameters
    ----------
    nu : float, default=0.1
        Upper bound on the fraction of training errors, in ``(0, 1]``
        (``nu_SVM``).
    kernel : {"linear", "rbf"}, default="linear"
        Kernel, see above.
    gamma : "scale", "auto" or float, default="scale"
        RBF kernel coefficient on the standardised scores (ignored for
        ``kernel="linear"``).
    tol : float, default=1e-4
        Stopping tolerance of the libsvm solver.

    Attributes
    ----------
    threshold_ : float
        Decision threshold, in the units of the (dimensionless) scores.
    n_samples_fit_ : int
        Number of normal scores used.
    svm_ : sklearn.svm.OneClassSVM
        The fitted OCSVM, which lives in the transformed space.
    center_, scale_ : float
        The affine map into that space: ``v = (center_ - s) / scale_ + 1``
        (linear) or ``z = (s - center_) / scale_`` (rbf).

    Raises
    ------
    ValueError
        On invalid ``normal_scores`` or hyperparameters.

    References
    ----------
    K. Wilkinghoff, PhD thesis, Section 2.11, "OCSVMs" (no equation number);
    ``nu_SVM = 0.1`` as in Section 4.2. Wilkinghoff & Cornaggia-Urrigshardt,
    ICA 2022, Section 3.6. B. Schölkopf et al., "Estimating the support of a
    high-dimensional distribution", Neural Computation, 2001.
    """

    method = "ocsvm"
    _GRID_SIZE: ClassVar[int] = 2049

    def __init__(self, nu: float = 0.1, kernel: str = "linear",
                 gamma: Any = "scale", tol: float = 1e-4) -> None:
        self.nu = nu
        self.kernel = kernel
        self.gamma = gamma
        self.tol = tol

    def _validate_params(self) -> None:
        _check_real("nu", self.nu, low=0.0, high=1.0, low_open=True)
        if self.kernel not in ("linear", "rbf"):
            raise ValueError(f"kernel must be 'linear' or 'rbf', got {self.kernel!r}.")
        if not (isinstance(self.gamma, str) and self.gamma in ("scale", "auto")):
            _check_real("gamma", self.gamma, low=0.0, low_open=True)
        _check_real("tol", self.tol, low=0.0, low_open=True)

    def _estimate_threshold(self, x: np.ndarray) -> float:
        from sklearn.svm import OneClassSVM

        std = float(np.std(x))
        if std == 0.0:
            self.svm_, self.center_, self.scale_ = None, float(x[0]), 0.0
            return float(x[0])
        self.scale_ = std
        if self.kernel == "linear":
            self.center_ = float(x.max())
            v = (self.center_ - x) / std + 1.0
            svm = OneClassSVM(kernel="linear", nu=float(self.nu), tol=float(self.tol))
            svm.fit(v[:, None])
            self.svm_ = svm
            w = float(svm.coef_[0, 0])
            b = float(svm.intercept_[0])  # decision(v) = w * v + b
            if not w > 0.0:
                return float(x.max())
            v_star = -b / w
            # Accepted (normal) side is v >= v_star, i.e. s <= threshold.
            return self.center_ + std * (1.0 - v_star)

        # RBF kernel on standardised scores.
        self.center_ = float(np.median(x))
        z = (x - self.center_) / std
        if self.gamma == "scale":
            gamma_eff = 1.0 / float(np.var(z))  # = 1 after standardisation
        elif self.gamma == "auto":
            gamma_eff = 1.0  # 1 / n_features
        else:
            gamma_eff = float(self.gamma)
        svm = OneClassSVM(kernel="rbf", nu=float(self.nu), gamma=gamma_eff,
                          tol=float(self.tol))
        svm.fit(z[:, None])
        self.svm_ = svm
        z_hi = float(z.max()) + 5.0 / math.sqrt(gamma_eff)
        grid = np.linspace(float(z.min()), z_hi, self._GRID_SIZE)
        f = svm.decision_function(grid[:, None])
        accepted = np.nonzero(f >= 0.0)[0]
        if accepted.size == 0 or accepted[-1] == grid.size - 1:
            return float(x.max())
        i = int(accepted[-1])
        from scipy.optimize import brentq

        def dec(t: float) -> float:
            return float(svm.decision_function(np.array([[t]]))[0])

        if f[i] == 0.0:
            z_star = float(grid[i])
        else:
            z_star = brentq(dec, float(grid[i]), float(grid[i + 1]),
                            xtol=1e-9 * max(1.0, abs(z_hi)))
        return self.center_ + std * z_star


# --------------------------------------------------------------------------
# iterative estimators
# --------------------------------------------------------------------------


class GeneralizedESD(ThresholdEstimator):
    """Generalised extreme studentized deviate (GESD): repeated Grubbs tests.

    Runs the Grubbs test on the highest remaining score, removes that score
    while the test rejects it, and stops at the first score the test does
    not reject. With ``m`` scores left, the Grubbs statistic (Eq. 33) is

    ``G = |max(s) - mean(s)| / std(s)``  (sample std, ``ddof=1``)

    and the maximum is removed while (Eq. 34)

    ``G > (m - 1) / sqrt(m) * sqrt(t^2 / (m - 2 + t^2))``,
    with ``t = t_{alpha / (2 m), m - 2}``,

    where ``t`` is the upper ``alpha / (2 m)`` critical value of Student's t
    distribution with ``m - 2`` degrees of freedom. The loop stops once
    ``m < 3`` or the remaining scores are all equal. Following the thesis,
    this is sequential Grubbs with a stop at the first non-rejection. It is
    not Rosner's variant, which tests a fixed maximum number of outliers.

    The threshold is the *last removed* score, i.e. the smallest one removed.
    Because ``predict`` uses a strict ``>``, that training score itself
    counts as normal. **If no score is removed, the threshold is
    ``max(normal_scores)``**: no normal training score is anomalous, and only
    scores above everything seen in training are flagged. The thesis leaves
    this case undefined.

    Parameters
    ----------
    alpha : float, default=0.05
        Significance level in ``(0, 1)`` (``delta_Grubbs``).

    Attributes
    ----------
    threshold_ : float
        Decision threshold, in the units of the (dimensionless) scores.
    n_samples_fit_ : int
        Number of normal scores used.
    n_removed_ : int
        Number of scores removed as outliers.

    Raises
    ------
    ValueError
        On invalid ``normal_scores`` or ``alpha``.

    References
    ----------
    K. Wilkinghoff, PhD thesis, Section 2.11, Eqs. (33) and (34).
    Wilkinghoff & Cornaggia-Urrigshardt, ICA 2022, Section 3.7, Eqs. (1)-(2).
    F. E. Grubbs, "Procedures for detecting outlying observations in
    samples", Technometrics, 1969.
    """

    method = "gesd"
    _iterative = True
    _stackable = False

    def __init__(self, alpha: float = 0.05) -> None:
        self.alpha = alpha

    def _validate_params(self) -> None:
        _check_real("alpha", self.alpha, low=0.0, high=1.0, low_open=True, high_open=True)

    def _estimate_threshold(self, x: np.ndarray) -> float:
        from scipy import stats

        tm = _TrimmedMoments(x)
        n = x.size
        alpha = float(self.alpha)

        def rejects(k: np.ndarray) -> np.ndarray:
            m = n - k  # number of scores still present (>= 3)
            mean, var = tm.mean_var(m, ddof=1)
            top = tm.xc[m - 1]
            std = np.sqrt(var)
            usable = (tm.x[m - 1] > tm.x[0]) & (std > 0.0)
            g = np.where(usable, np.abs(top - mean) / np.where(usable, std, 1.0), 0.0)
            mf = m.astype(np.float64)
            t = stats.t.isf(alpha / (2.0 * mf), mf - 2.0)
            crit = (mf - 1.0) / np.sqrt(mf) * np.sqrt(t * t / (mf - 2.0 + t * t))
            return usable & (g > crit)

        k = _count_leading_true(rejects, max(0, n - 2))
        self.n_removed_ = int(k)
        if k == 0:
            return float(tm.x[-1])
        return float(tm.x[n - k])


class CleverSD(ThresholdEstimator):
    """cleverSD: repeated SD rule that removes one score at a time.

    While the highest remaining score exceeds the SD threshold
    ``mean + beta * std`` (Eq. 30, population std) of the remaining scores,
    that score is removed. The threshold is the *last removed* score. **If
    nothing is removed, it is the SD threshold of all scores**, which is then
    at or above their maximum.

    Default ``beta = 2.0``: the ICA 2022 paper, on which Section 4.2 of the
    thesis is based, runs cleverSD with SD at ``alpha = 2``. With
    ``beta = 1.28`` the procedure does not stop near the upper tail. On
    normally distributed scores the truncated mean + 1.28 truncated std stays
    below the truncation point down to about -0.45 sigma, so cleverSD(1.28)
    ends roughly between the 35th and 55th percentile (measured). With
    ``beta = 2`` it ends near the 95th-97th percentile.

    Parameters
    ----------
    beta : float, default=2.0
        Non-negative multiplier of the standard deviation.

    Attributes
    ----------
    threshold_ : float
        Decision threshold, in the units of the (dimensionless) scores.
    n_samples_fit_ : int
        Number of normal scores used.
    n_removed_ : int
        Number of scores removed.

    Raises
    ------
    ValueError
        On invalid ``normal_scores`` or ``beta < 0``.

    References
    ----------
    K. Wilkinghoff, PhD thesis, Section 2.11, "cleverSD" (built on Eq. 30).
    Wilkinghoff & Cornaggia-Urrigshardt, ICA 2022, Section 3.8.
    """

    method = "cleversd"
    _iterative = True
    _stackable = False

    def __init__(self, beta: float = 2.0) -> None:
        self.beta = beta

    def _validate_params(self) -> None:
        _check_real("beta", self.beta, low=0.0)

    def _estimate_threshold(self, x: np.ndarray) -> float:
        tm = _TrimmedMoments(x)
        n = x.size
        beta = float(self.beta)

        def removes(k: np.ndarray) -> np.ndarray:
            m = n - k  # >= 2
            mean, var = tm.mean_var(m, ddof=0)
            usable = tm.x[m - 1] > tm.x[0]
            return usable & (tm.xc[m - 1] > mean + beta * np.sqrt(var))

        k = _count_leading_true(removes, max(0, n - 1))
        self.n_removed_ = int(k)
        if k == 0:
            return float(np.mean(x) + beta * np.std(x))
        return float(tm.x[n - k])



class FalsePositiveRate(ThresholdEstimator):
    """A threshold that keeps a stated false-positive rate, with a margin for few scores.

    The other estimators cut off a fixed share of the normal scores (about 10 %) and
    say nothing about how sure that is. This one fits a log-normal distribution to the
    normal scores and returns a one-sided *tolerance bound*: with probability
    ``confidence`` (over the draw of the calibration scores), at most ``target_fpr``
    of new normal scores from the same distribution exceed it. Few scores widen the
    margin: the tolerance factor is 2.18 standard deviations (log scale) for 20
    independent scores at the defaults, 1.76 for 300, and tends to the normal
    quantile 1.645 of a 5 % tail.

    Scores are shifted so that the smallest is non-negative (``loc = min(0,
    min(normal_scores))``) and floored at ``1e-3`` times the shifted median before the
    logarithm, so that a zero score (a duplicate window) does not dominate.

    Parameters
    ----------
    target_fpr : float, default=0.05
        The share of normal windows allowed above the threshold, in ``(0, 0.5)``.
    confidence : float, default=0.9
        Probability that the threshold keeps ``target_fpr``, in ``[0.5, 1)``. 0.5 is
        the plain fitted quantile.

    Attributes
    ----------
    threshold_ : float
        Decision threshold, in the units of the (dimensionless) scores.
    n_samples_fit_, n_independent_ : int
        Scores seen by ``fit``, and how many of them the margin counts as independent
        (``fit``'s ``n_independent``).
    tolerance_factor_ : float
        ``k``: the threshold is ``loc + exp(mu + k * sigma)``.
    mu_, sigma_, loc_ : float
        The log-normal fit (mean and sample standard deviation of the log scores).
    fitted_fpr_ : float
        The fitted distribution's share of normal scores above the threshold (at most
        ``target_fpr``; the rest of the target is the margin).
    empirical_fpr_ : float
        The share of the fitted normal scores above the threshold.
    min_independent_ : int
        Independent scores needed before the largest of them alone bounds the rate
        without any distribution assumed: ``ceil(log(1 - confidence) / log(1 -
        target_fpr))`` (45 at the defaults). Fewer: the threshold rests on the
        log-normal tail, and a calibration should say the recording is short.

    Raises
    ------
    ValueError
        On invalid ``normal_scores`` or hyperparameters.

    Notes
    -----
    The tolerance factor is Natrella's approximation (NIST/SEMATECH e-Handbook of
    Statistical Methods, Section 7.2.6.3, "Tolerance intervals for a normal
    distribution"): with ``z_p`` the normal quantile at ``1 - target_fpr`` and ``z_g``
    at ``confidence``, ``a = 1 - z_g**2 / (2 (n - 1))``, ``b = z_p**2 - z_g**2 / n`` and
    ``k = (z_p + sqrt(z_p**2 - a b)) / a`` for ``n`` independent scores.

    References
    ----------
    This estimator is not in the thesis; it answers the thesis' observation (Section
    2.11, Section 4.2) that percentile-style thresholds fitted on few normal scores
    flag far more normal data than their nominal share, by making the share an
    explicit, bounded target.
    """

    method = "fpr"
    _stackable = False

    def __init__(self, target_fpr: float = 0.05, confidence: float = 0.9) -> None:
        self.target_fpr = target_fpr
        self.confidence = confidence

    def _validate_params(self) -> None:
        _check_real("target_fpr", self.target_fpr, low=0.0, high=0.5, low_open=True,
                    high_open=True)
        _check_real("confidence", self.confidence, low=0.5, high=1.0, high_open=True)

    def _estimate_threshold(self, x: np.ndarray) -> float:
        from statistics import NormalDist

        alpha, gamma, n = float(self.target_fpr), float(self.confidence), self.n_independent_
        self.min_independent_ = int(math.ceil(math.log(1.0 - gamma) / math.log(1.0 - alpha)))
        z_p, z_g = NormalDist().inv_cdf(1.0 - alpha), NormalDist().inv_cdf(gamma)
        a = 1.0 - z_g ** 2 / (2.0 * (n - 1))
        if a <= 0:
            raise ValueError(f"{n} independent normal scores are too few for confidence "
                             f"{gamma:g}; give more scores or a lower confidence.")
        b = z_p ** 2 - z_g ** 2 / n
        self.tolerance_factor_ = (z_p + math.sqrt(max(z_p ** 2 - a * b, 0.0))) / a
        self.loc_ = min(0.0, float(x.min()))
        y = x - self.loc_
        logs = np.log(np.maximum(y, 1e-3 * max(float(np.median(y)), 1e-300)))
        self.mu_, self.sigma_ = float(logs.mean()), float(logs.std(ddof=1))
        if self.sigma_ == 0.0:  # all scores equal (the degenerate case of every estimator)
            self.fitted_fpr_ = self.empirical_fpr_ = 0.0
            return float(x.max())
        threshold = self.loc_ + math.exp(self.mu_ + self.tolerance_factor_ * self.sigma_)
        z = (math.log(threshold - self.loc_) - self.mu_) / self.sigma_
        self.fitted_fpr_ = 1.0 - NormalDist().cdf(z)
        self.empirical_fpr_ = float(np.mean(x > threshold))
        return threshold


class MultiStage(ThresholdEstimator):
    """Multi-stage thresholding (MST, "-x2" in the ICA 2022 paper).

    Applies a non-iterative estimator several times. Stage 1 fits it on all
    normal scores. Each later stage removes *every* score the previous stage
    flagged as anomalous (``score > threshold``) and refits on the rest. The
    threshold is that of the last stage. Two stages usually suffice.

    The loop stops early, and ``stage_thresholds_`` is shorter than
    ``n_stages``, when a stage flags nothing (refitting on the same scores
    would give the same threshold again) or when fewer than 2 scores would
    remain.

    Parameters
    ----------
    estimator : ThresholdEstimator
        Template of a non-iterative estimator (GDP, HP, SD, MAD, IQR or
        OCSVM). It is cloned for every stage and not modified.
    n_stages : int, default=2
        Maximum number of stages, at least 1 (1 is the plain estimator).

    Attributes
    ----------
    threshold_ : float
        Threshold of the last stage run, in the units of the (dimensionless)
        scores.
    n_samples_fit_ : int
        Number of normal scores passed to ``fit``.
    stage_thresholds_ : list of float
        Threshold of every stage run, in order.
    estimators_ : list of ThresholdEstimator
        The fitted estimator of each stage.
    n_stages_ : int
        Number of stages actually run.

    Raises
    ------
    ValueError
        On invalid ``normal_scores``, ``n_stages < 1``, or if ``estimator`` is
        not a non-iterative :class:`ThresholdEstimator`.

    References
    ----------
    K. Wilkinghoff, PhD thesis, Section 2.11, "Multi-stage thresholding (MST)",
    with two iterations as in Section 4.2. Wilkinghoff & Cornaggia-Urrigshardt,
    ICA 2022, Section 3.9.
    """

    _iterative = True
    _stackable = False

    def __init__(self, estimator: ThresholdEstimator, n_stages: int = 2) -> None:
        self.estimator = estimator
        self.n_stages = n_stages

    @property
    def method(self) -> str:  # type: ignore[override]
        base = getattr(self.estimator, "method", "")
        return f"mst-{base}" if base else ""

    def _validate_params(self) -> None:
        if not isinstance(self.estimator, ThresholdEstimator):
            raise ValueError(
                f"estimator must be a ThresholdEstimator, got {self.estimator!r}."
            )
        if not self.estimator._stackable:
            raise ValueError(
                f"MultiStage wraps non-iterative estimators only "
                f"({', '.join(NON_ITERATIVE_METHODS)}); got "
                f"{type(self.estimator).__name__}."
            )
        if (isinstance(self.n_stages, bool) or not isinstance(self.n_stages, (int, np.integer))
                or self.n_stages < 1):
            raise ValueError(f"n_stages must be an integer >= 1, got {self.n_stages!r}.")

    def _estimate_threshold(self, x: np.ndarray) -> float:
        current = x
        self.stage_thresholds_: list[float] = []
        self.estimators_: list[ThresholdEstimator] = []
        for _ in range(int(self.n_stages)):
            est = _clone(self.estimator).fit(current)
            self.estimators_.append(est)
            self.stage_thresholds_.append(est.threshold_)
            keep = current <= est.threshold_
            n_keep = int(np.count_nonzero(keep))
            if n_keep == current.size or n_keep < 2:
                break
            current = current[keep]
        self.n_stages_ = len(self.stage_thresholds_)
        return self.stage_thresholds_[-1]


def _clone(est: ThresholdEstimator) -> ThresholdEstimator:
    """Return an unfitted copy of ``est`` with the same (recursively cloned) parameters."""
    params = {
        k: _clone(v) if isinstance(v, ThresholdEstimator) else v
        for k, v in est.get_params(deep=False).items()
    }
    return type(est)(**params)


# --------------------------------------------------------------------------
# registry and factory
# --------------------------------------------------------------------------

#: Lower-case method name -> estimator class (single-stage methods).
ESTIMATORS: dict[str, type[ThresholdEstimator]] = {
    "gdp": GammaPercentile,
    "hp": HistogramPercentile,
    "sd": StandardDeviation,
    "mad": MedianAbsoluteDeviation,
    "iqr": InterquartileRange,
    "ocsvm": OneClassSVMThreshold,
    "gesd": GeneralizedESD,
    "cleversd": CleverSD,
    "fpr": FalsePositiveRate,
}

#: Methods that MultiStage may wrap.
NON_ITERATIVE_METHODS: tuple[str, ...] = tuple(
    name for name, cls in ESTIMATORS.items() if cls._stackable
)

#: Every method string accepted by :func:`make_threshold_estimator`.
THRESHOLD_METHODS: tuple[str, ...] = tuple(ESTIMATORS) + tuple(
    f"mst-{name}" for name in NON_ITERATIVE_METHODS
)


def make_threshold_estimator(method: str, **params: Any) -> ThresholdEstimator:
    """Build an unfitted threshold estimator from its method name.

    Parameters
    ----------
    method : str
        One of :data:`THRESHOLD_METHODS` (case-insensitive): ``"gdp"``,
        ``"hp"``, ``"sd"``, ``"mad"``, ``"iqr"``, ``"ocsvm"``, ``"gesd"``,
        ``"cleversd"``, ``"fpr"`` (a stated false-positive rate with a
        margin), or ``"mst-<name>"`` for the multi-stage version of a
        non-iterative method (e.g. ``"mst-iqr"``).
    **params
        Hyperparameters of the estimator. For ``"mst-<name>"``, ``stages``
        (default 2) is the number of stages. Every other parameter goes to
        the wrapped estimator.

    Returns
    -------
    ThresholdEstimator
        A new, unfitted estimator.

    Raises
    ------
    ValueError
        If ``method`` is unknown (the message lists the valid names) or a
        parameter is not accepted by the estimator.

    Examples
    --------
    >>> make_threshold_estimator("mst-iqr", stages=3, beta=1.0)
    MultiStage(estimator=InterquartileRange(beta=1.0), n_stages=3)
    """
    if not isinstance(method, str):
        raise ValueError(
            f"method must be a string; got {method!r}. Valid methods are: "
            f"{', '.join(THRESHOLD_METHODS)}."
        )
    key = method.strip().lower()
    if key not in THRESHOLD_METHODS:
        raise ValueError(
            f"Unknown threshold method {method!r}. Valid methods are: "
            f"{', '.join(THRESHOLD_METHODS)}."
        )
    params = dict(params)
    stages = None
    if key.startswith("mst-"):
        stages = params.pop("stages", 2)
        key = key[len("mst-"):]
    cls = ESTIMATORS[key]
    valid = cls._get_param_names()
    unknown = sorted(set(params) - set(valid))
    if unknown:
        if stages is not None:
            valid = valid + ["stages"]
        raise ValueError(
            f"Invalid parameter(s) {unknown} for threshold method {method!r}; "
            f"valid parameters are {valid}."
        )
    est = cls(**params)
    if stages is not None:
        return MultiStage(est, n_stages=stages)
    return est
