"""Tests for calibration.thresholds (decision threshold estimation, thesis Sec. 2.11)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from calibration.thresholds import (
    ESTIMATORS,
    NON_ITERATIVE_METHODS,
    THRESHOLD_METHODS,
    CleverSD,
    FalsePositiveRate,
    GammaPercentile,
    GeneralizedESD,
    HistogramPercentile,
    InterquartileRange,
    MedianAbsoluteDeviation,
    MultiStage,
    NotFittedError,
    OneClassSVMThreshold,
    StandardDeviation,
    ThresholdEstimator,
    make_threshold_estimator,
)

MU, SIGMA, N = 0.3, 0.05, 20_000


@pytest.fixture(scope="module")
def normal_scores() -> np.ndarray:
    return np.random.default_rng(20240501).normal(MU, SIGMA, N)


@pytest.fixture(scope="module")
def contaminated_scores() -> np.ndarray:
    """2000 N(0.3, 0.05) scores plus 5 huge outliers."""
    rng = np.random.default_rng(7)
    bulk = rng.normal(MU, SIGMA, 2000)
    return np.concatenate([bulk, [1.5, 1.6, 1.7, 1.8, 1.9]])


# --------------------------------------------------------------------------- naive references


def naive_gesd(x, alpha=0.05):
    """Literal loop over thesis Eqs. (33)-(34); returns (threshold, n_removed)."""
    s = sorted(float(v) for v in x)
    removed = []
    while len(s) >= 3:
        arr = np.asarray(s)
        sd = arr.std(ddof=1)
        if sd == 0:
            break
        g = abs(arr[-1] - arr.mean()) / sd
        m = len(arr)
        t = stats.t.ppf(1 - alpha / (2 * m), m - 2)
        crit = (m - 1) / np.sqrt(m) * np.sqrt(t**2 / (m - 2 + t**2))
        if g > crit:
            removed.append(s.pop())
        else:
            break
    return (removed[-1] if removed else max(x)), len(removed)


def naive_cleversd(x, beta=2.0):
    s = sorted(float(v) for v in x)
    removed = []
    while len(s) >= 2:
        arr = np.asarray(s)
        if arr[-1] > arr.mean() + beta * arr.std():
            removed.append(s.pop())
        else:
            break
    if removed:
        return removed[-1], len(removed)
    return float(np.mean(x) + beta * np.std(x)), 0


# --------------------------------------------------------------------------- analytic values


def test_hp_is_numpy_percentile(normal_scores):
    est = HistogramPercentile().fit(normal_scores)
    assert est.threshold_ == pytest.approx(np.percentile(normal_scores, 90), abs=0, rel=1e-15)
    assert HistogramPercentile(percentile=75).fit(normal_scores).threshold_ == pytest.approx(
        np.percentile(normal_scores, 75), rel=1e-15
    )
    assert est.n_samples_fit_ == N


def test_sd_eq30_and_matches_90th_percentile(normal_scores):
    est = StandardDeviation().fit(normal_scores)
    assert est.threshold_ == pytest.approx(
        normal_scores.mean() + 1.28 * normal_scores.std(), rel=1e-12
    )
    # beta = 1.28 ~ 90th percentile of a normal distribution (thesis Sec. 2.11).
    assert est.threshold_ == pytest.approx(np.percentile(normal_scores, 90), rel=0.01)
    assert est.threshold_ == pytest.approx(stats.norm.ppf(0.9, MU, SIGMA), rel=0.01)
    assert est.mean_ == pytest.approx(MU, abs=0.002)
    assert est.std_ == pytest.approx(SIGMA, rel=0.02)


def test_iqr_eq31_analytic(normal_scores):
    est = InterquartileRange().fit(normal_scores)
    assert est.get_params() == {"beta": 0.5}
    q1, q3 = np.percentile(normal_scores, [25, 75])
    assert est.threshold_ == pytest.approx(q3 + 0.5 * (q3 - q1), rel=1e-12)
    analytic = MU + SIGMA * (0.6745 + 0.5 * 1.349)  # 0.36745
    # Sampling sd of Q3 at n=20000 is ~0.0005; the tolerance is about 5 sd.
    assert est.threshold_ == pytest.approx(analytic, abs=0.0025)
    # Classic boxplot beta = 1.5 is further out.
    assert InterquartileRange(beta=1.5).fit(normal_scores).threshold_ == pytest.approx(
        MU + SIGMA * (0.6745 + 1.5 * 1.349), abs=0.004
    )


def test_mad_eq32_analytic(normal_scores):
    est = MedianAbsoluteDeviation().fit(normal_scores)
    med = np.median(normal_scores)
    mad = np.median(np.abs(normal_scores - med))
    assert est.threshold_ == pytest.approx(med + 1.4826 * 2 * mad, rel=1e-12)
    # 1.4826 * 0.6745 * sigma = sigma, so threshold ~ mu + 2 sigma = 0.4.
    assert est.threshold_ == pytest.approx(MU + 2 * SIGMA, abs=0.003)
    assert est.mad_ == pytest.approx(0.6745 * SIGMA, rel=0.03)


def test_gdp_on_gamma_scores_matches_true_ppf():
    rng = np.random.default_rng(3)
    a, scale = 2.0, 0.1
    scores = rng.gamma(a, scale, N)
    true = stats.gamma.ppf(0.9, a, scale=scale)
    est = GammaPercentile().fit(scores)
    assert est.threshold_ == pytest.approx(true, rel=0.02)
    assert est.shape_ == pytest.approx(a, rel=0.05)
    assert abs(est.loc_) < 1e-5
    # Free 3-parameter fit (DCASE baseline style) also lands close.
    free = GammaPercentile(floc=None).fit(scores)
    assert free.threshold_ == pytest.approx(true, rel=0.03)
    # A fixed loc is honoured, and a loc that is not below the scores is rejected.
    assert GammaPercentile(floc=0.0).fit(scores).loc_ == 0.0
    with pytest.raises(ValueError, match="floc"):
        GammaPercentile(floc=float(scores.min())).fit(scores)


def test_gdp_handles_zero_and_negative_scores():
    rng = np.random.default_rng(4)
    scores = np.concatenate([[0.0, 0.0], rng.gamma(2.0, 0.1, 2000)])
    est = GammaPercentile().fit(scores)
    assert np.isfinite(est.threshold_)
    assert est.loc_ < 0.0
    assert np.mean(scores <= est.threshold_) == pytest.approx(0.9, abs=0.02)
    shifted = scores - 5.0  # all negative
    est2 = GammaPercentile().fit(shifted)
    assert np.isfinite(est2.threshold_)
    assert est2.loc_ < shifted.min()
    assert np.mean(shifted <= est2.threshold_) == pytest.approx(0.9, abs=0.03)


# --------------------------------------------------------------------------- OCSVM


@pytest.mark.parametrize(
    "scores",
    [
        np.random.default_rng(11).normal(MU, SIGMA, 3000),
        np.random.default_rng(12).gamma(2.0, 0.1, 3000),
        -np.random.default_rng(13).gamma(2.0, 0.1, 3000) - 5.0,  # negative log-likelihood-like
    ],
    ids=["normal", "gamma", "negative"],
)
def test_ocsvm_linear_is_about_90th_percentile(scores):
    est = OneClassSVMThreshold().fit(scores)
    assert est.get_params() == {"nu": 0.1, "kernel": "linear", "gamma": "scale", "tol": 1e-4}
    frac = np.mean(scores <= est.threshold_)
    assert frac == pytest.approx(0.90, abs=0.005)
    spread = scores.std()
    assert abs(est.threshold_ - np.percentile(scores, 90)) < 0.02 * spread
    # The fitted hyperplane really is the boundary: the decision function changes
    # sign at the threshold in the transformed space.
    eps = 1e-4 * spread
    v = (est.center_ - np.array([est.threshold_ - eps, est.threshold_ + eps])) / est.scale_ + 1
    f = est.svm_.decision_function(v[:, None])
    assert f[0] > 0 > f[1]


def test_ocsvm_rbf_upper_edge_and_nu():
    scores = np.random.default_rng(14).normal(MU, SIGMA, 3000)
    est = OneClassSVMThreshold(kernel="rbf").fit(scores)
    frac = np.mean(scores <= est.threshold_)
    # nu is split between both tails for the RBF kernel: upper edge ~95-97.5 %.
    assert 0.93 <= frac <= 0.985
    z = (np.array([est.threshold_ - 1e-3, est.threshold_ + 1e-3]) - est.center_) / est.scale_
    f = est.svm_.decision_function(z[:, None])
    assert f[0] >= 0 > f[1]
    # Larger nu -> more training scores flagged -> lower threshold.
    est_big = OneClassSVMThreshold(kernel="rbf", nu=0.3).fit(scores)
    assert est_big.threshold_ < est.threshold_
    smooth = OneClassSVMThreshold(kernel="rbf", gamma=0.1).fit(scores)
    assert np.mean(scores <= smooth.threshold_) == pytest.approx(0.95, abs=0.01)


# --------------------------------------------------------------------------- iterative


def test_gesd_removes_injected_outliers(contaminated_scores):
    est = GeneralizedESD().fit(contaminated_scores)
    bulk = contaminated_scores[:-5]
    assert est.n_removed_ == 5
    # The threshold is the last removed score, i.e. the smallest outlier.
    assert est.threshold_ == 1.5
    assert est.threshold_ > np.percentile(bulk, 99)
    assert not est.predict(bulk).any()
    assert est.predict([1.51, 1.9, 10.0]).all()
    assert naive_gesd(contaminated_scores) == (est.threshold_, est.n_removed_)


def test_gesd_no_removal_uses_max(normal_scores):
    x = normal_scores[:1000]
    est = GeneralizedESD().fit(x)
    assert est.n_removed_ == 0
    assert est.threshold_ == x.max()
    # A stricter alpha never removes more.
    est_lenient = GeneralizedESD(alpha=0.5).fit(x)
    assert est_lenient.n_removed_ >= est.n_removed_


def test_cleversd_removes_injected_outliers(contaminated_scores):
    est = CleverSD().fit(contaminated_scores)
    bulk = contaminated_scores[:-5]
    assert est.get_params() == {"beta": 2.0}
    assert est.n_removed_ > 5
    assert est.threshold_ < 1.5
    assert est.predict([1.5, 1.6, 1.7, 1.8, 1.9]).all()
    # beta = 2 stops near the 95th percentile of the bulk.
    assert 0.93 <= np.mean(bulk <= est.threshold_) <= 0.98
    assert naive_cleversd(contaminated_scores) == (est.threshold_, est.n_removed_)


def test_cleversd_with_beta_128_collapses_below_median(normal_scores):
    # Documented behaviour: cleverSD with the SD default of 1.28 keeps removing
    # until well below the median (fixed point of the truncated normal ~ -0.45 sigma).
    x = normal_scores[:5000]
    est = CleverSD(beta=1.28).fit(x)
    assert 0.25 <= np.mean(x <= est.threshold_) <= 0.5


def test_cleversd_fallback_is_sd_threshold():
    est = CleverSD().fit([0.0, 1.0])
    assert est.n_removed_ == 0
    assert est.threshold_ == pytest.approx(0.5 + 2.0 * 0.5)


@pytest.mark.parametrize("seed", range(12))
def test_vectorised_iterations_match_naive_loops(seed):
    rng = np.random.default_rng(100 + seed)
    n = int(rng.integers(3, 120))
    kind = seed % 4
    if kind == 0:
        x = rng.normal(0, 1, n)
    elif kind == 1:
        x = rng.standard_t(2, n)  # heavy tails: many removals
    elif kind == 2:
        x = np.round(rng.gamma(1.0, 1.0, n), 1)  # ties
    else:
        x = np.concatenate([rng.normal(10, 0.1, n), rng.uniform(11, 20, max(1, n // 10))])
    for alpha in (0.05, 0.3):
        est = GeneralizedESD(alpha=alpha).fit(x)
        assert (est.threshold_, est.n_removed_) == naive_gesd(x, alpha)
    # (beta = 1 is avoided: with 2 scores left, max == mean + 1 * std exactly,
    # a mathematical tie that rounding breaks either way.)
    for beta in (1.5, 2.0, 3.0):
        est = CleverSD(beta=beta).fit(x)
        ref_thr, ref_k = naive_cleversd(x, beta)
        assert est.n_removed_ == ref_k
        assert est.threshold_ == pytest.approx(ref_thr, rel=1e-12, abs=1e-12)


# --------------------------------------------------------------------------- multi-stage


def test_mst_iqr_is_below_single_stage_on_contaminated(contaminated_scores):
    single = InterquartileRange().fit(contaminated_scores)
    mst = make_threshold_estimator("mst-iqr").fit(contaminated_scores)
    assert isinstance(mst, MultiStage)
    assert mst.method == "mst-iqr"
    assert len(mst.stage_thresholds_) == 2 == mst.n_stages_
    assert mst.stage_thresholds_[0] == single.threshold_
    assert mst.threshold_ == mst.stage_thresholds_[1]
    assert mst.threshold_ < single.threshold_
    # Stage 2 really is IQR on the scores kept by stage 1.
    kept = contaminated_scores[contaminated_scores <= single.threshold_]
    assert mst.threshold_ == pytest.approx(InterquartileRange().fit(kept).threshold_, rel=1e-12)
    # The template passed in is not fitted or modified.
    assert not hasattr(mst.estimator, "threshold_")


@pytest.mark.parametrize("name", NON_ITERATIVE_METHODS)
def test_mst_never_raises_threshold(name, contaminated_scores):
    x = contaminated_scores[::2] if name == "ocsvm" else contaminated_scores
    single = make_threshold_estimator(name).fit(x)
    mst = make_threshold_estimator(f"mst-{name}").fit(x)
    assert mst.threshold_ <= single.threshold_ + 1e-12


def test_mst_stops_early_when_nothing_is_removed():
    x = np.array([1.0, 1.0, 1.0, 1.0, 2.0])
    mst = MultiStage(InterquartileRange(), n_stages=5).fit(x)
    assert mst.stage_thresholds_ == [1.0, 1.0]
    assert mst.n_stages_ == 2
    one = MultiStage(InterquartileRange(), n_stages=1).fit(x)
    assert one.stage_thresholds_ == [1.0]


def test_mst_rejects_iterative_and_bad_stages():
    with pytest.raises(ValueError, match="non-iterative"):
        MultiStage(GeneralizedESD()).fit([1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="non-iterative"):
        MultiStage(MultiStage(StandardDeviation())).fit([1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="n_stages"):
        MultiStage(StandardDeviation(), n_stages=0).fit([1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="estimator"):
        MultiStage("sd").fit([1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="non-iterative"):  # refitting would leave its target
        MultiStage(FalsePositiveRate()).fit([1.0, 2.0, 3.0])


# --------------------------------------------------------------------------- fpr


def _lognormal_fpr(threshold: float, mu: float = -3.0, sigma: float = 0.6) -> float:
    """True share of LogNormal(mu, sigma) above ``threshold``."""
    from statistics import NormalDist
    return 1.0 - NormalDist(mu, sigma).cdf(np.log(threshold))


@pytest.mark.parametrize("n", [8, 20, 60])
def test_fpr_keeps_its_target_with_the_stated_confidence(n):
    # 400 calibrations of n log-normal normal scores (cosine distances of this size):
    # the true false-positive rate is at most 5 % in about 90 % of them; the plain
    # fitted quantile (confidence 0.5) only in about half.
    rng = np.random.default_rng(n)
    kept, plain_kept = [], []
    for _ in range(400):
        x = rng.lognormal(-3.0, 0.6, n)
        kept.append(_lognormal_fpr(FalsePositiveRate().fit(x).threshold_) <= 0.05)
        plain = FalsePositiveRate(confidence=0.5).fit(x).threshold_
        plain_kept.append(_lognormal_fpr(plain) <= 0.05)
    assert 0.85 <= np.mean(kept) <= 0.95
    assert 0.35 <= np.mean(plain_kept) <= 0.65


def test_fpr_margin_shrinks_with_more_independent_scores():
    x = np.random.default_rng(0).lognormal(-3.0, 0.6, 300)
    factors = [FalsePositiveRate().fit(x, n_independent=n).tolerance_factor_
               for n in (3, 20, 60, 300)]
    assert factors == sorted(factors, reverse=True)
    assert factors[0] > 4.5 and 1.645 < factors[-1] < 1.8
    few = FalsePositiveRate().fit(x, n_independent=20)
    assert few.threshold_ > FalsePositiveRate().fit(x).threshold_
    assert few.fitted_fpr_ < 0.05 and few.min_independent_ == 45
    assert few.empirical_fpr_ == np.mean(x > few.threshold_)


def test_fpr_rejects_bad_parameters_and_n_independent():
    x = [0.1, 0.2, 0.3, 0.25]
    for bad in ({"target_fpr": 0.0}, {"target_fpr": 0.5}, {"confidence": 1.0},
                {"confidence": 0.4}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            FalsePositiveRate(**bad).fit(x)
    for n in (1, 5, 2.5, True):
        with pytest.raises(ValueError, match="n_independent"):
            FalsePositiveRate().fit(x, n_independent=n)
    with pytest.raises(ValueError, match="too few"):
        FalsePositiveRate(confidence=0.99).fit(x, n_independent=2)
    assert FalsePositiveRate().fit([0.2, 0.2, 0.2]).threshold_ == 0.2


def test_fpr_is_scale_equivariant_and_takes_negative_scores():
    x = np.random.default_rng(21).gamma(2.0, 0.1, 800)
    t = FalsePositiveRate().fit(x).threshold_
    assert FalsePositiveRate().fit(7.5 * x).threshold_ == pytest.approx(7.5 * t, rel=1e-9)
    shifted = FalsePositiveRate().fit(x - 0.05)  # negative scores: support starts at the minimum
    assert shifted.loc_ == pytest.approx(x.min() - 0.05)
    assert 0.0 < np.mean(x - 0.05 > shifted.threshold_) <= 0.05


# --------------------------------------------------------------------------- factory / registry


def test_registry_contents():
    assert set(ESTIMATORS) == {"gdp", "hp", "sd", "mad", "iqr", "ocsvm", "gesd", "cleversd",
                               "fpr"}
    assert set(NON_ITERATIVE_METHODS) == {"gdp", "hp", "sd", "mad", "iqr", "ocsvm"}
    expected = set(ESTIMATORS) | {f"mst-{n}" for n in ("gdp", "hp", "sd", "mad", "iqr", "ocsvm")}
    assert set(THRESHOLD_METHODS) == expected
    assert len(THRESHOLD_METHODS) == len(expected) == 15
    for name, cls in ESTIMATORS.items():
        assert cls.method == name


@pytest.mark.parametrize("method", THRESHOLD_METHODS)
def test_factory_round_trip(method, contaminated_scores):
    x = contaminated_scores[:600]
    est = make_threshold_estimator(method)
    assert isinstance(est, ThresholdEstimator)
    assert est.method == method
    assert not hasattr(est, "threshold_")
    if method.startswith("mst-"):
        base = method[4:]
        assert isinstance(est, MultiStage)
        assert isinstance(est.estimator, ESTIMATORS[base])
        assert est.n_stages == 2
        again = make_threshold_estimator(method, stages=est.n_stages, **est.estimator.get_params())
        direct = MultiStage(ESTIMATORS[base](), n_stages=2)
    else:
        assert type(est) is ESTIMATORS[method]
        again = make_threshold_estimator(method, **est.get_params())
        direct = ESTIMATORS[method]()
    assert repr(again) == repr(est) == repr(direct)
    t1 = est.fit(x).threshold_
    assert isinstance(t1, float) and np.isfinite(t1)
    assert again.fit(x).threshold_ == t1 == direct.fit(x).threshold_
    assert est.n_samples_fit_ == x.size
    pred = est.predict(x)
    assert pred.dtype == bool and pred.shape == x.shape
    np.testing.assert_array_equal(pred, x > t1)
    # Every method flags the injected outliers region (>> bulk) and not the bulk median.
    assert est.predict([5.0, float(np.median(x))]).tolist() == [True, False]


def test_factory_params_and_errors():
    est = make_threshold_estimator("SD", beta=2.0)
    assert isinstance(est, StandardDeviation) and est.beta == 2.0
    mst = make_threshold_estimator(" mst-IQR ", stages=3, beta=1.0)
    assert mst.n_stages == 3 and mst.estimator.beta == 1.0
    assert repr(mst) == "MultiStage(estimator=InterquartileRange(beta=1.0), n_stages=3)"
    with pytest.raises(ValueError) as info:
        make_threshold_estimator("median")
    msg = str(info.value)
    for name in THRESHOLD_METHODS:
        assert name in msg
    with pytest.raises(ValueError, match="Valid methods"):
        make_threshold_estimator("mst-gesd")
    with pytest.raises(ValueError, match="Valid methods"):
        make_threshold_estimator(None)
    with pytest.raises(ValueError, match="Invalid parameter"):
        make_threshold_estimator("hp", beta=1.0)
    with pytest.raises(ValueError, match="stages"):
        make_threshold_estimator("sd", stages=2)


# --------------------------------------------------------------------------- params


def test_get_set_params_nested():
    mst = MultiStage(MedianAbsoluteDeviation(), n_stages=2)
    params = mst.get_params()
    assert params["estimator__beta"] == 2.0
    assert params["estimator__delta"] == 1.4826
    assert params["n_stages"] == 2
    assert set(mst.get_params(deep=False)) == {"estimator", "n_stages"}
    assert mst.set_params(estimator__beta=3.0, n_stages=4) is mst
    assert mst.estimator.beta == 3.0 and mst.n_stages == 4
    with pytest.raises(ValueError, match="Invalid parameter"):
        StandardDeviation().set_params(alpha=1)


@pytest.mark.parametrize(
    "est",
    [
        GammaPercentile(percentile=100),
        GammaPercentile(floc="zero"),
        HistogramPercentile(percentile=0),
        HistogramPercentile(percentile="90"),
        StandardDeviation(beta=-1.0),
        StandardDeviation(ddof=2),
        MedianAbsoluteDeviation(delta=0.0),
        InterquartileRange(beta=float("nan")),
        OneClassSVMThreshold(nu=0.0),
        OneClassSVMThreshold(kernel="poly"),
        OneClassSVMThreshold(gamma=-1.0),
        GeneralizedESD(alpha=1.0),
        CleverSD(beta=True),
    ],
    ids=repr,
)
def test_invalid_hyperparameters_raise_on_fit(est):
    with pytest.raises(ValueError):
        est.fit([0.1, 0.2, 0.3])
    assert not hasattr(est, "threshold_")


# --------------------------------------------------------------------------- input validation


BAD_INPUTS = {
    "empty": [],
    "one_value": [0.3],
    "nan": [0.1, float("nan"), 0.3],
    "inf": [0.1, float("inf"), 0.3],
    "two_d": [[0.1, 0.2], [0.3, 0.4]],
    "column": np.ones((5, 1)),
    "scalar": 0.3,
    "strings": ["a", "b"],
    "complex": np.array([1 + 1j, 2 + 0j]),
}


@pytest.mark.parametrize("method", ["gdp", "hp", "sd", "mad", "iqr", "ocsvm", "gesd", "cleversd", "mst-sd"])
@pytest.mark.parametrize("bad", list(BAD_INPUTS), ids=list(BAD_INPUTS))
def test_bad_normal_scores_raise_value_error(method, bad):
    est = make_threshold_estimator(method)
    with pytest.raises(ValueError, match="normal_scores"):
        est.fit(BAD_INPUTS[bad])
    assert not hasattr(est, "threshold_")


def test_predict_before_fit_raises():
    for method in THRESHOLD_METHODS:
        est = make_threshold_estimator(method)
        with pytest.raises(NotFittedError, match="not fitted"):
            est.predict([0.1, 0.2])
        with pytest.raises(RuntimeError):
            est.predict([0.1, 0.2])


def test_predict_semantics():
    est = HistogramPercentile(percentile=50).fit([0.0, 1.0, 2.0])
    assert est.threshold_ == 1.0
    np.testing.assert_array_equal(
        est.predict([0.5, 1.0, 1.0 + 1e-12, np.inf, -np.inf]), [False, False, True, True, False]
    )
    scalar = est.predict(1.5)
    assert scalar.shape == () and bool(scalar) is True
    assert est.predict([]).shape == (0,)
    with pytest.raises(ValueError, match="NaN"):
        est.predict([0.5, np.nan])
    with pytest.raises(ValueError, match="1-D"):
        est.predict([[0.5]])


def test_accepts_lists_tuples_and_ints():
    a = StandardDeviation().fit([1, 2, 3, 4]).threshold_
    b = StandardDeviation().fit((1.0, 2.0, 3.0, 4.0)).threshold_
    c = StandardDeviation().fit(np.array([1, 2, 3, 4], dtype=np.float32)).threshold_
    assert a == b == pytest.approx(c)
    assert StandardDeviation().fit([1.0, 2.0]).n_samples_fit_ == 2


@pytest.mark.parametrize("method", THRESHOLD_METHODS)
def test_constant_scores_give_that_constant(method):
    est = make_threshold_estimator(method).fit(np.full(50, 0.25))
    assert est.threshold_ == pytest.approx(0.25, abs=1e-12)
    assert est.predict([0.25, 0.2500001]).tolist() == [False, True]


@pytest.mark.parametrize("method", [m for m in THRESHOLD_METHODS if m not in ("gdp", "mst-gdp", "fpr")])
def test_location_scale_equivariance(method):
    # Everything except GDP and FPR (whose supports are anchored at 0) is affine-equivariant.
    x = np.random.default_rng(21).gamma(2.0, 0.1, 800)
    a, b = 7.5, -3.0
    t = make_threshold_estimator(method).fit(x).threshold_
    t2 = make_threshold_estimator(method).fit(a * x + b).threshold_
    tol = 1e-3 * x.std() * a if "ocsvm" in method else 1e-9
    assert t2 == pytest.approx(a * t + b, abs=tol)
