"""The node's anomaly scoring backend (edge/backend.py) against a brute-force transcription
of its definition, ensembles included; NumPy only, no TensorFlow."""
from __future__ import annotations

import numpy as np
import pytest

from edge.backend import Calibration, CalibrationError, min_cosine_distance, normalize_members

D = 12  # splits into 1, 2, 3, 4 or 6 members


def reference_scores(embeddings, memory, n_members: int) -> np.ndarray:
    """``sum_k (1 - max_j cos(e_k, memory_jk))`` over members ``k``, literally (float64).

    ``e_k`` is the ``k``-th of ``n_members`` equal consecutive slices of an embedding; the
    cosine of two slices is taken on the raw slices, so each member is normalised on its
    own and the scale of one member cannot leak into another.
    """
    e = np.atleast_2d(np.asarray(embeddings, np.float64))
    m = np.asarray(memory, np.float64)
    width = e.shape[1] // n_members
    out = np.zeros(len(e))
    for i in range(len(e)):
        for k in range(n_members):
            a = e[i, k * width:(k + 1) * width]
            best = -np.inf
            for j in range(len(m)):
                b = m[j, k * width:(k + 1) * width]
                best = max(best, a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))
            out[i] += 1.0 - best
    return out


def member_scaled(rng, n: int, n_members: int) -> np.ndarray:
    """Random embeddings whose member slices are unit vectors times very different scales,
    as the raw outputs of separately trained sub-models would be."""
    x = rng.standard_normal((n, n_members, D // n_members))
    x /= np.linalg.norm(x, axis=-1, keepdims=True)
    scales = rng.uniform(0.05, 20.0, (n, n_members, 1))
    return (x * scales).reshape(n, D).astype(np.float32)


@pytest.mark.parametrize("n_members", [1, 2, 3, 4])
def test_normalize_members_definition(n_members):
    rng = np.random.default_rng(n_members)
    x = member_scaled(rng, 6, n_members)
    y = normalize_members(x, n_members)
    assert y.shape == x.shape and y.dtype == np.float32
    width = D // n_members
    for k in range(n_members):
        xs, ys = x[:, k * width:(k + 1) * width], y[:, k * width:(k + 1) * width]
        # every slice keeps its direction and gets norm 1 / sqrt(n_members) ...
        np.testing.assert_allclose(np.linalg.norm(ys, axis=1), n_members ** -0.5, rtol=1e-6)
        np.testing.assert_allclose(ys * np.sqrt(n_members),
                                   xs / np.linalg.norm(xs, axis=1, keepdims=True), atol=1e-6)
    # ... so the whole vector has norm 1
    np.testing.assert_allclose(np.linalg.norm(y, axis=1), 1.0, rtol=1e-6)
    # leading batch axes are kept: (..., D)
    np.testing.assert_array_equal(normalize_members(x.reshape(2, 3, D), n_members),
                                  y.reshape(2, 3, D))
    if n_members == 1:
        np.testing.assert_allclose(y, x / np.linalg.norm(x, axis=1, keepdims=True), atol=1e-7)


@pytest.mark.parametrize("n_members", [1, 2, 3, 6])
def test_min_cosine_distance_matches_brute_force(n_members):
    rng = np.random.default_rng(10 + n_members)
    emb = member_scaled(rng, 9, n_members)
    memory = member_scaled(rng, 7, n_members)
    got = min_cosine_distance(emb, memory, n_members)
    assert got.shape == (9,) and got.dtype == np.float32
    np.testing.assert_allclose(got, reference_scores(emb, memory, n_members), rtol=0, atol=2e-6)
    assert np.all(got >= 0) and np.all(got <= 2 * n_members)
    # already normalised memory (as a Calibration stores it): the same scores
    np.testing.assert_allclose(min_cosine_distance(emb, normalize_members(memory, n_members),
                                                   n_members), got, rtol=0, atol=2e-6)
    # one embedding, 1-D: a scalar
    one = min_cosine_distance(emb[3], memory, n_members)
    assert np.ndim(one) == 0
    assert float(one) == pytest.approx(float(got[3]), abs=1e-6)


def test_ensemble_takes_each_members_own_nearest_memory_row():
    """Per member the minimum over the memory, then the sum over members: not the minimum
    of summed distances (the rows nearest to each member differ here)."""
    rng = np.random.default_rng(7)
    n_members = 3
    emb = member_scaled(rng, 8, n_members)
    memory = member_scaled(rng, 10, n_members)
    width = D // n_members
    e = emb.reshape(8, n_members, width)
    m = memory.reshape(10, n_members, width)
    cos = np.einsum("nkd,mkd->nkm", e / np.linalg.norm(e, axis=-1, keepdims=True),
                    m / np.linalg.norm(m, axis=-1, keepdims=True))
    nearest = cos.argmax(axis=2)  # (n, k)
    assert np.any(nearest != nearest[:, :1]), "test data must exercise different nearest rows"
    per_member_min = (1.0 - cos.max(axis=2)).sum(axis=1)
    min_of_sum = (1.0 - cos).sum(axis=1).min(axis=1)
    assert np.all(per_member_min <= min_of_sum + 1e-12) and \
        np.any(per_member_min < min_of_sum - 1e-3)
    np.testing.assert_allclose(min_cosine_distance(emb, memory, n_members), per_member_min,
                               rtol=0, atol=2e-6)


def test_min_cosine_distance_extremes():
    rng = np.random.default_rng(5)
    n_members = 2
    memory = member_scaled(rng, 4, n_members)
    # a memory row with each member rescaled on its own: distance 0
    twin = memory[2].copy()
    twin[:D // 2] *= 7.0
    twin[D // 2:] *= 0.1
    assert float(min_cosine_distance(twin, memory, n_members)) == pytest.approx(0.0, abs=1e-6)
    # every member anti-parallel to the only memory row: the upper bound 2 * n_members
    d = min_cosine_distance(-memory[:1], memory[:1], n_members)
    np.testing.assert_allclose(d, [2.0 * n_members], rtol=1e-6)


@pytest.mark.parametrize("n_members", [1, 3])
def test_calibration_of_an_ensemble_round_trips(tmp_path, n_members):
    rng = np.random.default_rng(20 + n_members)
    memory = member_scaled(rng, 11, n_members)  # raw: the calibration normalises it
    cal = Calibration(memory=memory, n_centers=4, decision_threshold=0.42,
                      threshold_method="mst-iqr", normal_scores=rng.uniform(0, 1, 11),
                      model_id="m", model_sha256="0" * 64, window_seconds=10.0,
                      hop_seconds=5.0, extra={"site": "test"}, n_members=n_members)
    np.testing.assert_array_equal(cal.memory, normalize_members(memory, n_members))
    loaded = Calibration.load(cal.save(tmp_path / "cal.npz"), "0" * 64)
    assert loaded.n_members == n_members
    assert loaded.calibration_id == cal.calibration_id and loaded.calibration_id
    assert (loaded.n_centers, loaded.decision_threshold, loaded.threshold_method,
            loaded.model_id, loaded.window_seconds, loaded.hop_seconds, loaded.created,
            loaded.extra) == (4, 0.42, "mst-iqr", "m", 10.0, 5.0, cal.created, {"site": "test"})
    # load normalises the stored (already normalised) memory again: equal up to rounding
    np.testing.assert_allclose(loaded.memory, cal.memory, rtol=0, atol=1e-6)
    np.testing.assert_array_equal(loaded.normal_scores, cal.normal_scores)
    x = member_scaled(rng, 5, n_members)
    scores = loaded.anomaly_score(x)
    np.testing.assert_allclose(scores, reference_scores(x, memory, n_members), rtol=0,
                               atol=2e-6)
    np.testing.assert_allclose(scores, cal.anomaly_score(x), rtol=0, atol=1e-6)
    with pytest.raises(CalibrationError, match="made with model m"):
        Calibration.load(tmp_path / "cal.npz", "1" * 64)


def test_view_distance_uses_each_views_metric():
    """The level statistics are compared by Euclidean distance in dB (scipy's cdist, then
    the nearest row), the embedding's views by cosine distance: a window 6 dB quieter than
    every memory row is 6 dB away, though its direction is nearly the same."""
    from scipy.spatial.distance import cdist

    from edge.backend import min_euclidean_distance, view_distance

    rng = np.random.default_rng(3)
    memory = rng.normal([-40.0, 1.0], [3.0, 0.3], (50, 2)).astype(np.float32)
    x = rng.normal([-40.0, 1.0], [5.0, 0.5], (7, 2)).astype(np.float32)
    np.testing.assert_allclose(min_euclidean_distance(x, memory),
                               cdist(x, memory).min(axis=1), rtol=1e-5)
    np.testing.assert_array_equal(view_distance("level_statistics", x, memory),
                                  min_euclidean_distance(x, memory))
    row = memory[:1]
    quieter = row - [6.0, 0.0]
    assert view_distance("level_statistics", quieter, row)[0] == pytest.approx(6.0, rel=1e-5)
    unit = normalize_members(row, 1)
    cos = view_distance("stft_statistics", quieter, unit)[0]
    assert cos == pytest.approx(min_cosine_distance(quieter, row)[0], abs=1e-6) and cos < 0.01


@pytest.mark.parametrize("chunk_bytes", [1, 100, 8 << 20])
def test_pairwise_distances_in_blocks_are_the_whole_computation(monkeypatch, chunk_bytes):
    """An hour of calibration windows against itself is computed a block of rows at a time;
    any block size gives exactly the one-go values, for every row."""
    import edge.backend as backend

    rng = np.random.default_rng(0)
    x, memory = rng.normal(size=(37, 2)) * 10, rng.normal(size=(23, 2)) * 10
    monkeypatch.setattr(backend, "PAIRWISE_CHUNK_BYTES", chunk_bytes)
    want = np.sqrt(((x[:, None, :] - memory[None, :, :]) ** 2).sum(axis=2))
    assert np.array_equal(backend.euclidean_distances(x, memory), want)
    assert backend.euclidean_distances(x[:0], memory).shape == (0, 23)
