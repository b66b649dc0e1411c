"""The research-grade ASD embedder: AdaProj, the SSL head (StatEx variant, FeatEx),
multi-resolution inputs and ensembles, checked against the thesis' definitions and
through the int8 export on real clips."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")

from edge.backend import min_cosine_distance, normalize_members  # noqa: E402
from edge.frontend import AsdFrontendParams, asd_features  # noqa: E402
from trainer.losses import AdaProj, random_unit_centers  # noqa: E402
from trainer.train import (TrainConfig, exchange_labels, load_train_config,  # noqa: E402
                           temporal_statex)

ROOT = Path(__file__).resolve().parent.parent


def _adaproj_reference(emb, labels, centers, n_classes, dim_sub, s_prev):
    """Thesis Definitions 5.1/5.2 (eqs. 54-56) with the AdaCos scale (eqs. 38-40), literally:
    P(e) = sum_c <e, c> c; logit_k = s * cos(e, P_k(e))."""
    e = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    sims = np.zeros((len(e), n_classes))
    for i in range(len(e)):
        for k in range(n_classes):
            proj = sum(np.dot(e[i], c) * c for c in centers[k * dim_sub:(k + 1) * dim_sub])
            proj = proj / np.linalg.norm(proj)
            # eq. 55 squared distance between the unit vectors = 2 (1 - cos)
            dist = np.sum((e[i] - proj) ** 2)
            sims[i, k] = 1 - dist / 2
    sim_max = np.max(s_prev * sims)
    b_avg = np.sum(np.exp(s_prev * sims - sim_max)) / len(e)
    ang = np.arccos(np.clip(sims, -1 + 1e-7, 1 - 1e-7))
    s = (sim_max + np.log(b_avg)) / np.cos(min(np.pi / 4, np.median((labels * ang).sum(1))))
    logits = s * sims
    logp = logits - np.log(np.exp(logits).sum(1, keepdims=True))
    return -(labels * logp).sum(1), s, sims


def test_adaproj_matches_definition():
    rng = np.random.default_rng(0)
    n_cls, m, d = 4, 3, 12
    centers = random_unit_centers(n_cls, m, d, seed=5)
    loss = AdaProj(centers, n_cls, m)
    emb = rng.standard_normal((6, d)).astype(np.float32)
    labels = np.eye(n_cls, dtype=np.float32)[rng.integers(0, n_cls, 6)]
    labels[0] = 0.3 * labels[0] + 0.7 * np.eye(n_cls)[(labels[0].argmax() + 1) % n_cls]
    s0 = float(loss.scale.numpy())
    ref, s_ref, sims_ref = _adaproj_reference(emb, labels, centers, n_cls, m, s0)
    np.testing.assert_allclose(loss.cosine_similarities(tf.constant(emb)).numpy(), sims_ref,
                               rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(loss.call(tf.constant(labels), tf.constant(emb)).numpy(), ref,
                               rtol=1e-4)
    assert float(loss.scale.numpy()) == pytest.approx(s_ref, rel=1e-5)


def test_adaproj_whole_subspace_is_optimal_and_dim_checked():
    """Lemma 5.3: any unit vector in span(C_k) has cos(e, P(e)) = 1 (orthonormal basis),
    whereas sub-cluster AdaCos only rewards the centers themselves."""
    q, _ = np.linalg.qr(np.random.default_rng(1).standard_normal((16, 16)))
    centers = q.T[:8].astype(np.float32)  # 2 classes x 4 orthonormal basis vectors
    loss = AdaProj(centers, 2, 4)
    e = (0.3 * centers[0] - 0.8 * centers[2] + 0.5 * centers[3])[None]
    sims = loss.cosine_similarities(tf.constant(e)).numpy()[0]
    assert sims[0] == pytest.approx(1.0, abs=1e-5) and abs(sims[1]) < 1e-5
    with pytest.raises(ValueError, match="subspace_dim"):
        AdaProj(random_unit_centers(2, 16, 16), 2, 16)


def test_trainable_centers_receive_gradients():
    loss = AdaProj(random_unit_centers(3, 4, 8, seed=1), 3, 4, trainable_centers=True)
    emb = tf.constant(np.random.default_rng(2).standard_normal((5, 8)).astype(np.float32))
    lab = tf.constant(np.eye(3, dtype=np.float32)[[0, 1, 2, 0, 1]])
    with tf.GradientTape() as tape:
        value = tf.reduce_mean(loss(lab, emb))
    (g,) = tape.gradient(value, loss.trainable_variables)
    assert g is not None and float(tf.norm(g)) > 0


def test_ssl_labels_follow_equations_60_to_62():
    lab = np.array([[1, 0], [0.25, 0.75], [0, 1]], np.float32)
    partner = np.array([2, 0, 1])
    applied = np.array([True, False, True])
    out = exchange_labels(lab, partner, applied)
    np.testing.assert_allclose(out, [[0, 0, 0.5, 0, 0, 0.5],          # (0, l1/2, l2/2)
                                     [0.25, 0.75, 0, 0, 0, 0],        # (l, 0, 0)
                                     [0, 0, 0, 0.5, 0.125, 0.375]])
    np.testing.assert_allclose(out.sum(1), 1)
    # Sequential StatEx then FeatEx: 9 N classes (thesis Section 5.7.2).
    assert exchange_labels(out, partner, applied).shape == (3, 18)


def test_temporal_statex_exchanges_frame_statistics(data_dir):
    from edge.audio import load_audio

    asd = data_dir / "asd" / "mimii_fan_id00"
    wav = np.stack([load_audio(asd / "normal" / "00000000.wav")[:160000],
                    load_audio(asd / "abnormal" / "00000000.wav")[:160000]])
    p = AsdFrontendParams()
    f = asd_features(wav, p)
    out = temporal_statex(f, np.array([1, 0]), np.array([True, False]), p)
    x = out["spectrogram"][0]
    src = f["spectrogram"][1]
    # Every frame of sample 0 now has sample 1's mean and std over frequency ...
    np.testing.assert_allclose(x.mean(1), src.mean(1), rtol=1e-3, atol=1e-3)
    np.testing.assert_allclose(x.std(1), src.std(1), rtol=1e-2, atol=1e-3)
    # ... keeps its own normalised shape, and the other sample and the spectrum are untouched.
    z0 = (f["spectrogram"][0] - f["spectrogram"][0].mean(1, keepdims=True))
    z0 /= f["spectrogram"][0].std(1, keepdims=True) + 1e-6
    zx = (x - x.mean(1, keepdims=True)) / (x.std(1, keepdims=True) + 1e-6)
    np.testing.assert_allclose(zx, z0, atol=1e-2)
    np.testing.assert_array_equal(out["spectrogram"][1], f["spectrogram"][1])
    np.testing.assert_array_equal(out["spectrum"], f["spectrum"])


def test_ensemble_scores_are_summed_member_scores():
    rng = np.random.default_rng(3)
    a, b = rng.standard_normal((4, 5)), rng.standard_normal((4, 5))
    a_mem, b_mem = rng.standard_normal((7, 5)), rng.standard_normal((7, 5))
    # Members of different raw scale: each slice is normalised on its own.
    both = min_cosine_distance(np.hstack([a, 3 * b]), np.hstack([a_mem, 9 * b_mem]), 2)
    np.testing.assert_allclose(both, min_cosine_distance(a, normalize_members(a_mem))
                               + min_cosine_distance(b, normalize_members(b_mem)), rtol=1e-5)
    x = normalize_members(np.hstack([a, 3 * b]), 2)
    np.testing.assert_allclose(np.linalg.norm(x, axis=1), 1, rtol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(x[:, :5], axis=1), 2 ** -0.5, rtol=1e-6)


def test_recipe_validation(tmp_path):
    p = tmp_path / "r.yaml"
    for body, message in [("loss: arcface", "loss must be one of"),
                          ("ssl: [statex, rotation]", "ssl must list"),
                          ("ssl_probability: 1.5", "ssl_probability"),
                          ("ensemble_size: 0", "ensemble_size")]:
        p.write_text("sources:\n  - path: asd/x\n" + body + "\n")
        with pytest.raises(ValueError, match=message):
            load_train_config(p)
    assert TrainConfig(sources=[]).effective_mixup_probability == 1.0
    assert TrainConfig(sources=[], ssl=["featex"]).effective_mixup_probability == 0.5


@pytest.mark.slow
def test_every_option_trains_and_exports_int8(tmp_path, data_dir):
    """AdaProj + StatEx + FeatEx + multi-resolution + an ensemble of two, a few steps on
    real clips through the CLI: the int8 bundle loads, matches the float model, and its
    scores are the summed member scores."""
    from edge.audio import load_audio
    from edge.model import AsdEmbedder

    recipe = tmp_path / "all.yaml"
    recipe.write_text(
        "name: all_options\n"
        "sources:\n"
        "  - {path: asd/mimii_fan_id00/normal, machine: fan-mimii, files: '0000000[0-3].wav'}\n"
        "  - {path: asd/dcase2023_dev_samples, split: train, files: 'fan_*'}\n"
        "epochs: 1\nsteps_per_epoch: 2\nbatch_size: 4\nloss: adaproj\nn_centers: 8\n"
        "ssl: [statex, featex]\nssl_n_centers: 4\nensemble_size: 2\n"
        "frontend: {extra_n_ffts: [4096], spectrum_step: auto}\nmodel: {embedding_dim: 32, resnet_widths: [8, 8, 8, 8],"
        " spectrum_filters: 16, spectrum_dense_layers: 1}\nrepresentative_samples: 8\n")
    r = subprocess.run([sys.executable, "-m", "trainer", "train-asd", "--config", str(recipe),
                        "--out", str(tmp_path), "--quiet"], cwd=ROOT, capture_output=True,
                       text=True, timeout=900,
                       env={**__import__("os").environ, "HARK_DATA": str(data_dir)})
    assert r.returncode == 0, r.stderr[-3000:]
    emb = AsdEmbedder(tmp_path / "all_options.tflite")
    meta = json.loads((tmp_path / "all_options.json").read_text())
    assert meta["inputs"] == ["spectrogram", "spectrogram_4096", "spectrum"]
    assert meta["ensemble_members"] == emb.n_members == 2
    assert meta["loss"] == "adaproj" and meta["ssl"] == ["statex", "featex"]
    assert meta["frontend"]["spectrum_step"] > 0  # "auto" resolved from the training clips
    assert emb.embedding_dim == 2 * 3 * 32  # 2 members x 3 branches x 32
    assert meta["int8_vs_float_cosine"]["mean"] > 0.9
    x = emb.embed(load_audio(data_dir / "asd/mimii_fan_id00/normal/00000009.wav"))
    np.testing.assert_allclose(np.linalg.norm(x.reshape(2, -1), axis=1), 2 ** -0.5, rtol=1e-4)


def test_calibration_of_an_ensemble_round_trips(tmp_path):
    """The node's calibration keeps the ensemble size and scores by summed members."""
    from types import SimpleNamespace

    from calibration.calibrate import CalibrationWindows, fit_calibration
    from edge.backend import Calibration

    rng = np.random.default_rng(4)
    emb = normalize_members(rng.standard_normal((12, 10)), 2)
    w = CalibrationWindows(emb, np.zeros(12, int), np.arange(12) * 32000,
                           np.arange(12) * 32000 + 32000)
    model = SimpleNamespace(model_id="m", sha256="0" * 64, n_members=2)
    cal = fit_calibration(w, model, n_clusters=4, threshold_method="mst-iqr")
    assert cal.n_members == 2
    loaded = Calibration.load(cal.save(tmp_path / "cal.npz"), "0" * 64)
    assert loaded.n_members == 2 and loaded.calibration_id == cal.calibration_id
    x = rng.standard_normal((3, 10))
    mem = loaded.memory
    expect = (min_cosine_distance(x[:, :5], normalize_members(mem[:, :5]))
              + min_cosine_distance(x[:, 5:], normalize_members(mem[:, 5:])))
    np.testing.assert_allclose(loaded.anomaly_score(x), expect, rtol=1e-5)
    # Held-out scores: each window against the windows that do not overlap it.
    assert cal.normal_scores.shape == (12,) and cal.normal_scores.min() > 0
