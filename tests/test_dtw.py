"""Sub-sequence DTW kernels (edge/dtw.py) against a plain reference (tests/dtw_reference.py),
librosa and SciPy."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from dtw_reference import subsequence_dtw_reference
from edge.dtw import (STEP_SIZES, StreamingSubsequenceDTW, cosine_cost_columns,
                      cosine_cost_matrix, subsequence_dtw)

librosa = pytest.importorskip("librosa")
from scipy.spatial.distance import cdist  # noqa: E402

SIGMA = np.array([[1, 1], [1, 2], [2, 1]])


def librosa_dtw(C):
    """librosa's accumulated cost and step matrix (its step index per cell)."""
    return librosa.sequence.dtw(C=C, subseq=True, step_sizes_sigma=SIGMA, backtrack=False,
                                return_steps=True)


def backtrack(steps, i, j):
    """Follow librosa's steps from (i, j) to row 0: (start column, path length).

    With custom ``step_sizes_sigma`` librosa prepends its three default steps (with
    infinite weights, so never taken): our steps are its indices 3, 4, 5.
    """
    n = 1
    while i > 0:
        di, dj = SIGMA[steps[i, j] - 3]
        i, j = i - di, j - dj
        n += 1
    return j, n


# cost values: small integers (many exact ties, to exercise the tie-breaking), arbitrary
# non-negative floats, zeros, and now and then +inf (a forbidden cell)
cost_values = st.one_of(st.integers(0, 3).map(float),
                        st.floats(0.0, 10.0, allow_nan=False, allow_infinity=False),
                        st.just(0.0), st.just(np.inf))
shapes = st.one_of(st.tuples(st.integers(1, 12), st.integers(1, 25)),
                   st.tuples(st.sampled_from([1, 2]), st.integers(1, 10)),
                   st.tuples(st.integers(1, 10), st.sampled_from([1, 2])),
                   st.tuples(st.integers(8, 14), st.integers(1, 8)))  # M > N
cost_matrices = shapes.flatmap(lambda s: arrays(np.float64, s, elements=cost_values))


@settings(max_examples=300, deadline=None)
@given(C=cost_matrices)
def test_batch_equals_reference_and_librosa(C):
    r = subsequence_dtw(C)
    ref = subsequence_dtw_reference(C)
    M, N = C.shape
    assert r.accumulated_cost.shape == r.start.shape == r.length.shape == (M, N)
    assert r.accumulated_cost.dtype == np.float64
    assert r.start.dtype == r.length.dtype == np.int64
    assert np.array_equal(r.accumulated_cost, ref.accumulated_cost)
    assert np.array_equal(r.start, ref.start)
    assert np.array_equal(r.length, ref.length)
    assert np.array_equal(r.matching_cost, ref.matching_cost)

    D_lib, steps = librosa_dtw(C)
    finite = np.isfinite(D_lib)
    assert np.array_equal(np.isfinite(r.accumulated_cost), finite)
    assert np.array_equal(r.accumulated_cost[finite], D_lib[finite])  # bit for bit
    assert np.all(np.isposinf(r.accumulated_cost[~finite]))
    # unreachable cells carry no path
    assert np.all(r.start[~finite] == -1) and np.all(r.length[~finite] == 0)
    # start and length are those of librosa's own warping path (same tie-breaking)
    for i in range(M):
        for j in np.flatnonzero(finite[i]):
            assert (r.start[i, j], r.length[i, j]) == backtrack(steps, i, j)
    # matching cost: last row normalised by the path length, inf where no path ends
    last = np.isfinite(D_lib[-1])
    np.testing.assert_array_equal(r.matching_cost[last], D_lib[-1, last] / r.length[-1, last])
    assert np.all(np.isposinf(r.matching_cost[~last]))


def test_librosa_equality_on_large_random_matrix():
    rng = np.random.default_rng(0)
    C = cosine_cost_matrix(rng.standard_normal((45, 16)), rng.standard_normal((700, 16)))
    r = subsequence_dtw(C)
    D_lib, _ = librosa_dtw(C)
    assert np.array_equal(r.accumulated_cost, D_lib)


def test_exact_copy_is_found_with_zero_cost():
    rng = np.random.default_rng(1)
    stream = rng.standard_normal((60, 8))
    template = stream[20:32]
    r = subsequence_dtw(cosine_cost_matrix(template, stream))
    j = int(np.argmin(r.matching_cost))
    assert j == 31 and r.start[-1, j] == 20 and r.length[-1, j] == 12
    assert r.matching_cost[j] == pytest.approx(0.0, abs=1e-12)


def test_path_lengths_and_spans():
    # a path over M template rows covers ceil(M/2) .. 2M-1 stream frames and has
    # ceil((M-1)/2)+1 .. M cells; no path ends before frame ceil(M/2) - 1
    M = 7
    C = np.ones((M, 40))
    r = subsequence_dtw(C)
    reach = np.isfinite(r.accumulated_cost[-1])
    assert not reach[:3].any() and reach[3:].all()  # ceil(7/2) = 4 frames => j >= 3
    span = np.arange(40)[reach] - r.start[-1][reach] + 1
    assert span.min() >= 4 and span.max() <= 2 * M - 1
    assert np.all(r.length[-1][reach] >= 4) and np.all(r.length[-1][reach] <= M)


def test_validation():
    with pytest.raises(ValueError, match="2-D"):
        subsequence_dtw(np.zeros(5))
    with pytest.raises(ValueError, match="empty"):
        subsequence_dtw(np.zeros((0, 4)))
    with pytest.raises(ValueError, match="NaN"):
        subsequence_dtw(np.array([[0.0, np.nan]]))
    with pytest.raises(ValueError, match="negative"):
        subsequence_dtw(np.array([[0.0, -1e-9]]))
    with pytest.raises(ValueError, match="negative"):
        subsequence_dtw(np.array([[0.0, -np.inf]]))
    with pytest.raises(ValueError):
        subsequence_dtw(np.array([["a"]]))
    # integer and float32 input is accepted (as float64)
    assert np.array_equal(subsequence_dtw(np.ones((2, 3), np.int32)).accumulated_cost,
                          subsequence_dtw(np.ones((2, 3))).accumulated_cost)


# --------------------------------------------------------------------------------------
# cost matrices
# --------------------------------------------------------------------------------------


def test_cosine_cost_matrix_matches_scipy():
    rng = np.random.default_rng(2)
    a = rng.standard_normal((13, 24))
    b = rng.standard_normal((57, 24))
    C = cosine_cost_matrix(a, b)
    assert C.shape == (13, 57) and C.dtype == np.float64
    np.testing.assert_allclose(C, cdist(a, b, metric="cosine"), rtol=0, atol=1e-12)
    # float32 input, scale invariance
    np.testing.assert_allclose(cosine_cost_matrix(a.astype(np.float32), 3.0 * b), C, atol=1e-6)


def test_cosine_cost_matrix_zero_rows_cost_one():
    rng = np.random.default_rng(3)
    a = rng.standard_normal((4, 6))
    b = rng.standard_normal((5, 6))
    a[1] = 0.0
    b[3] = 0.0
    C = cosine_cost_matrix(a, b)
    assert np.all(np.isfinite(C))
    assert np.all(C[1] == 1.0) and np.all(C[:, 3] == 1.0)
    ok = np.ones(C.shape, bool)
    ok[1] = False
    ok[:, 3] = False
    np.testing.assert_allclose(C[ok], cdist(a, b, "cosine")[ok], atol=1e-12)
    # parallel and anti-parallel vectors: exactly inside [0, 2]
    v = rng.standard_normal((1, 6))
    C = cosine_cost_matrix(np.vstack([v, -v]), np.vstack([v * 7, -v]))
    assert C.min() >= 0.0 and C.max() <= 2.0
    np.testing.assert_allclose(C, [[0, 2], [2, 0]], atol=1e-12)


def test_cosine_cost_matrix_validation():
    with pytest.raises(ValueError, match="dimension"):
        cosine_cost_matrix(np.ones((2, 3)), np.ones((2, 4)))
    with pytest.raises(ValueError, match="2-D"):
        cosine_cost_matrix(np.ones(3), np.ones((2, 3)))
    with pytest.raises(ValueError, match="NaN"):
        cosine_cost_matrix(np.full((2, 3), np.nan), np.ones((2, 3)))


def _unit(x):
    x = np.asarray(x, np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_cost_columns_match_matrix_and_ignore_chunking():
    rng = np.random.default_rng(4)
    Q = _unit(rng.standard_normal((61, 32)))  # R not a multiple of 4
    F = _unit(rng.standard_normal((23, 32)))
    F[5] = 0.0  # zero frame: cost 1
    whole = cosine_cost_columns(F, Q)
    assert whole.shape == (23, 61) and whole.dtype == np.float64
    np.testing.assert_allclose(whole, cosine_cost_matrix(Q, F).T, atol=2e-6)
    assert np.all(whole[5] == 1.0)
    assert whole.min() >= 0.0 and whole.max() <= 2.0
    # bit-identical whatever the chunking
    for cuts in ([1, 2, 3, 17], [4, 4, 4, 4, 7], [22, 1], [5, 5, 5, 5, 3]):
        parts, s = [], 0
        for c in cuts:
            parts.append(cosine_cost_columns(F[s:s + c], Q))
            s += c
        assert np.array_equal(np.concatenate(parts), whole)


# --------------------------------------------------------------------------------------
# streaming
# --------------------------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_streaming_equals_batch(data):
    K = data.draw(st.integers(1, 5), label="K")
    lengths = data.draw(st.lists(st.integers(1, 9), min_size=K, max_size=K), label="lengths")
    N = data.draw(st.integers(1, 40), label="N")
    seed = data.draw(st.integers(0, 2**32 - 1), label="seed")
    rng = np.random.default_rng(seed)
    # integer-valued costs create ties, which must be broken exactly as in the batch
    mats = [rng.integers(0, 3, (m, N)).astype(np.float64) if rng.random() < 0.5
            else rng.random((m, N)) for m in lengths]
    stacked = np.concatenate(mats).T.copy()  # (N, R): one cost column per frame

    dtw = StreamingSubsequenceDTW(lengths)
    assert dtw.n_rows == sum(lengths) and dtw.n_templates == K
    costs, starts, j = [], [], 0
    while j < N:
        n = data.draw(st.integers(1, 6), label="chunk")
        if n == 1 and data.draw(st.booleans(), label="single"):
            c, s = dtw.update(stacked[j])
            assert c.shape == (K,) and s.shape == (K,) and s.dtype == np.int64
            c, s = c[None], s[None]
        else:
            c, s = dtw.update_many(stacked[j:j + n])
        costs.append(c)
        starts.append(s)
        j += c.shape[0]
        assert dtw.frames_seen == j
    costs = np.concatenate(costs)
    starts = np.concatenate(starts)
    for k, C in enumerate(mats):
        r = subsequence_dtw(C)
        assert np.array_equal(costs[:, k], r.matching_cost)
        assert np.array_equal(starts[:, k], r.start[-1])

    dtw.reset()
    assert dtw.frames_seen == 0
    c, s = dtw.update_many(stacked)
    assert np.array_equal(c, costs) and np.array_equal(s, starts)


def test_streaming_absolute_start_frames_and_validation():
    template = np.eye(6)[:3]
    stream = np.eye(6)[[4, 5, 4, 0, 1, 2, 5, 4]]
    C = cosine_cost_matrix(template, stream)
    dtw = StreamingSubsequenceDTW([3])
    cost, start = dtw.update_many(C.T[:5])
    assert np.all(np.isposinf(cost[:1, 0]))  # 3 rows need at least 2 frames
    c, s = dtw.update(C.T[5])
    assert c[0] == 0.0 and s[0] == 3  # absolute frame index of the path start
    with pytest.raises(ValueError, match="shape"):
        dtw.update(np.zeros(4))
    with pytest.raises(ValueError, match="NaN"):
        dtw.update(np.array([0.0, np.nan, 0.0]))
    with pytest.raises(ValueError, match="negative"):
        dtw.update_many(np.array([[0.0, 0.0, -1.0]]))
    assert dtw.frames_seen == 6  # failed calls consume nothing
    with pytest.raises(ValueError):
        StreamingSubsequenceDTW([])
    with pytest.raises(ValueError):
        StreamingSubsequenceDTW([3, 0])


def test_step_sizes_constant():
    assert STEP_SIZES.tolist() == [[1, 1], [1, 2], [2, 1]]
