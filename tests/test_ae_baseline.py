"""The DCASE 2023 Task 2 autoencoder baseline (trainer/ae_baseline.py) on real MIMII clips."""
from __future__ import annotations

import sys

import numpy as np
import pytest

pytest.importorskip("tensorflow")
librosa = pytest.importorskip("librosa")

from calibration.thresholds import NotFittedError  # noqa: E402
from edge.audio import load_audio  # noqa: E402
from trainer.ae_baseline import (  # noqa: E402
    AeBaselineParams,
    AutoencoderBaseline,
    build_autoencoder,
    logmel_vectors,
)
from edge.frontend import mel_filterbank  # noqa: E402

P = AeBaselineParams()


@pytest.fixture(scope="module")
def fan(mimii):
    """The 20 MIMII fan id00 normal clips (10 s, 16 kHz) and 20 abnormal clips."""
    return {k: [load_audio(p) for p in v] for k, v in mimii.items()}


def _baseline_vectors(y, n_mels=128, n_frames=5, n_fft=1024, hop_length=512, power=2.0):
    """The baseline's ``file_to_vectors`` written out with librosa (DCASE 2023 T2 code)."""
    mel = librosa.feature.melspectrogram(y=y, sr=16000, n_fft=n_fft, hop_length=hop_length,
                                         n_mels=n_mels, power=power)
    log_mel = 20.0 / power * np.log10(np.maximum(mel, sys.float_info.epsilon))
    n_vectors = log_mel.shape[1] - n_frames + 1
    vectors = np.zeros((n_vectors, n_mels * n_frames))
    for t in range(n_frames):
        vectors[:, n_mels * t:n_mels * (t + 1)] = log_mel[:, t:t + n_vectors].T
    return vectors, log_mel.shape[1]


# ------------------------------------------------------------------------ features


def test_filterbank_is_librosa_default():
    """The baseline's filterbank: edge.frontend.mel_filterbank, Slaney scale and area norm,
    0 Hz to Nyquist, as librosa's default."""
    ref = librosa.filters.mel(sr=16000, n_fft=1024, n_mels=128)  # Slaney scale and norm
    ours = mel_filterbank(P.sample_rate, P.n_fft, P.n_mels, 0.0, P.sample_rate / 2.0,
                          norm="slaney")
    assert ours.shape == (128, 513) and ours.dtype == np.float32
    np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-9)


def test_logmel_vectors_match_librosa_on_a_real_clip(data_dir):
    y = load_audio(data_dir / "asd" / "mimii_fan_id00" / "normal" / "00000000.wav")
    assert len(y) == 160000
    ref, n_frames = _baseline_vectors(y)
    ours = logmel_vectors(y)
    assert n_frames == 1 + 160000 // 512 == 313  # centred frames, as librosa's default
    assert ours.shape == (n_frames - 4, 640) == (P.n_vectors(len(y)), P.input_dim)
    assert ours.dtype == np.float32 and np.all(np.isfinite(ours))
    # dB values around -65..-4 dB; 1e-3 dB is ~2e-4 relative in power
    np.testing.assert_allclose(ours, ref, atol=1e-3, rtol=0)
    # the first and last frames depend on the zero padding: check they are matched too
    np.testing.assert_allclose(ours[0, :128], ref[0, :128], atol=1e-3, rtol=0)
    np.testing.assert_allclose(ours[-1, -128:], ref[-1, -128:], atol=1e-3, rtol=0)


def test_vectors_are_frame_major_stacks(data_dir):
    y = load_audio(data_dir / "asd" / "mimii_fan_id00" / "normal" / "00000001.wav")[:16000]
    v = logmel_vectors(y)
    assert v.shape == (1 + 16000 // 512 - 4, 640)
    # vector t + k's frame 0 is vector t's frame k
    for k in range(1, 5):
        np.testing.assert_array_equal(v[k:, :128], v[:-k, 128 * k:128 * (k + 1)])


def test_shortest_clip_gives_one_vector():
    rng = np.random.default_rng(0)
    y = (0.1 * rng.standard_normal(P.min_samples)).astype(np.float32)
    assert P.min_samples == 2048
    v = logmel_vectors(y)
    assert v.shape == (1, 640)
    np.testing.assert_allclose(v, _baseline_vectors(y)[0], atol=1e-3, rtol=0)


@pytest.mark.parametrize("n", [0, 100, 1023, 1024, 2047])
def test_too_short_clip_is_rejected(n):
    with pytest.raises(ValueError, match=f"{n} samples.*at least 2048"):
        logmel_vectors(np.zeros(n, np.float32))


def test_bad_waveforms_are_rejected():
    with pytest.raises(ValueError, match="1-D"):
        logmel_vectors(np.zeros((2, 4096), np.float32))
    y = np.zeros(4096, np.float32)
    y[5] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        logmel_vectors(y)
    ae = AutoencoderBaseline(AeBaselineParams(epochs=1))
    with pytest.raises(ValueError, match="empty"):
        ae.fit([])
    with pytest.raises(ValueError, match="list of waveforms"):
        ae.fit(np.zeros(16000, np.float32))
    with pytest.raises(ValueError, match=r"waveforms\[1\] has 1000 samples"):
        ae.fit([np.zeros(16000, np.float32), np.zeros(1000, np.float32)])
    assert not hasattr(ae, "model_")


@pytest.mark.parametrize("kw", [{"n_mels": 0}, {"epochs": 0}, {"batch_size": -1},
                                {"validation_split": 1.0}, {"validation_split": -0.1},
                                {"learning_rate": 0.0}])
def test_bad_params_are_rejected(kw):
    with pytest.raises(ValueError):
        AeBaselineParams(**kw)


# --------------------------------------------------------------------------- model


def test_architecture():
    model = build_autoencoder(P)
    dense = [layer for layer in model.layers if layer.__class__.__name__ == "Dense"]
    assert [d.units for d in dense] == [128] * 4 + [8] + [128] * 4 + [640]
    assert model.input_shape == (None, 640) and model.output_shape == (None, 640)
    bns = [layer for layer in model.layers if layer.__class__.__name__ == "BatchNormalization"]
    assert len(bns) == 9
    assert all(d.get_config()["activation"] == "linear" for d in dense)
    relus = [layer for layer in model.layers if layer.__class__.__name__ == "Activation"]
    assert [r.get_config()["activation"] for r in relus] == ["relu"] * 9
    # Dense: 640*128+128 + 3*(128*128+128) + 128*8+8 + 8*128+128 + 3*(128*128+128) + 128*640+640
    n_dense = 82048 + 3 * 16512 + 1032 + 1152 + 3 * 16512 + 82560
    n_bn = 4 * (8 * 128 + 8)  # gamma, beta, moving mean, moving variance
    assert model.count_params() == n_dense + n_bn == 269992
    assert sum(int(np.prod(w.shape)) for w in model.non_trainable_weights) == 2 * (8 * 128 + 8)
    # the layer order: Dense -> BatchNorm -> ReLU, nine times, then the linear output
    kinds = [layer.__class__.__name__ for layer in model.layers[1:]]
    assert kinds == ["Dense", "BatchNormalization", "Activation"] * 9 + ["Dense"]


def test_scoring_before_fit_raises():
    with pytest.raises(NotFittedError, match="not fitted"):
        AutoencoderBaseline().score_samples([np.zeros(16000, np.float32)])
    assert issubclass(NotFittedError, RuntimeError)


# ------------------------------------------------------------------------ training

# A short run that converges on 4 clips (~1100 training vectors): the baseline's learning
# rate with batches of 16 instead of 256, so that 10 epochs are ~700 steps (the baseline
# takes ~1200 steps per epoch on a full DCASE machine type). Measured on seeds 0-2: the
# training loss goes from ~1200 to ~11 dB^2, training clips score 10-30, held-out normal
# clips 20-36 on average (see the foreign-sounds test for the anomalies' margins).
TINY = AeBaselineParams(epochs=10, batch_size=16, seed=0)


@pytest.fixture(scope="module")
def trained(fan):
    return AutoencoderBaseline(TINY).fit(fan["normal"][:4], progress=True)


@pytest.mark.slow
def test_training_lowers_the_loss(trained):
    h = trained.history_
    assert len(h) == TINY.epochs and all(np.isfinite(h))
    assert h[-1] < h[0] / 20, h
    assert trained.val_history_ and trained.val_history_[-1] < trained.val_history_[0] / 20
    # 4 clips x 309 vectors, the last 10 % held out for validation
    assert trained.n_vectors_fit_ == int(np.floor(4 * 309 * 0.9))


@pytest.mark.slow
def test_scores_are_mean_vector_mse(trained, fan):
    clips = fan["normal"][:2] + fan["abnormal"][:1]
    scores = trained.score_samples(clips)
    assert scores.shape == (3,) and scores.dtype == np.float32 and np.all(np.isfinite(scores))
    for clip, score in zip(clips, scores):
        x = logmel_vectors(clip)
        recon = trained.model_.predict(x, verbose=0)
        assert score == pytest.approx(np.mean((x - recon) ** 2), rel=1e-4)
    # clips of different lengths score independently of what they are batched with
    short = fan["normal"][5][:48000]
    both = trained.score_samples([short, clips[0]])
    assert both[0] == pytest.approx(float(trained.score_samples([short])[0]), rel=1e-4)
    assert both[1] == pytest.approx(float(scores[0]), rel=1e-4)


@pytest.mark.slow
def test_foreign_sounds_score_far_above_normal_clips(trained, fan):
    """A 3 kHz whine and loud white noise are anomalies for a fan model. Margins measured
    on seeds 0 and 1 (and with float32 vs float64 filterbank rounding, which changes the
    training trajectory): training clips 10-30, tone 13000-15000, noise at 0.3 RMS
    380-1300; white noise at 0.1 RMS came out only 4x above the training clips once."""
    train_scores = trained.score_samples(fan["normal"][:4])
    held_out = trained.score_samples(fan["normal"][4:])
    t = np.arange(160000) / 16000
    tone = (0.3 * np.sin(2 * np.pi * 3000 * t)).astype(np.float32)
    noise = (0.3 * np.random.default_rng(0).standard_normal(160000)).astype(np.float32)
    tone_score, noise_score = trained.score_samples([tone, noise])
    assert tone_score > 100 * train_scores.max(), (tone_score, train_scores)
    assert noise_score > 5 * train_scores.max(), (noise_score, train_scores)
    assert noise_score > 5 * held_out.mean(), (noise_score, held_out.mean())
    # the model learned the fan sound, not just its level: normal fan clips it never saw
    # reconstruct about as well as the training clips (within a factor 4)
    assert held_out.mean() < 4 * train_scores.mean()


@pytest.mark.slow
def test_training_is_reproducible_for_a_seed(fan):
    params = AeBaselineParams(epochs=2, batch_size=64, seed=3)
    a = AutoencoderBaseline(params).fit(fan["normal"][:1], progress=False)
    b = AutoencoderBaseline(params).fit(fan["normal"][:1], progress=False)
    assert a.history_ == b.history_
    clip = [fan["normal"][1]]
    np.testing.assert_array_equal(a.score_samples(clip), b.score_samples(clip))
