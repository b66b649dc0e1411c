"""Fine-tuning speech_embedding into a noise-robust copy of itself (trainer/kws_denoise.py):
the Keras rebuild is the TFLite network, training brings noisy windows of recordings it never
saw towards the clean ones, and the exported bundle is that network with its origin."""
from __future__ import annotations

import json

import numpy as np
import pytest

from edge.audio import load_audio
from edge.model import load_bundle
from edge.speech_embedding import PAD_SAMPLES, WINDOW_FRAMES
from firmware_config.fileio import sha256_file
from trainer.kws_denoise import (
    DenoiseConfig,
    DenoisingSet,
    build_denoising_set,
    export_denoised_bundle,
    finetune,
    speech_embedding_keras,
)

pytest.importorskip("tensorflow")


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory, data_dir):
    from trainer.kws_speech_embedding import export_speech_embedding

    return load_bundle(export_speech_embedding(tmp_path_factory.mktemp("pretrained"),
                                               "pretrained", data_dir))


def _raw(bundle, windows):
    """The bundle's network output before its standardisation, shape (n, 96)."""
    mel = np.concatenate(list(windows))
    starts = range(0, len(mel), WINDOW_FRAMES)
    return bundle.embed_windows(mel, starts) * bundle._scale + bundle._mean


def _windows(bundle, data_dir, word="yes", n=3):
    paths = sorted((data_dir / "kws" / "speech_commands_test" / word).glob("*.flac"))[:n]
    pad = np.zeros(PAD_SAMPLES, np.float32)
    out = []
    for p in paths:
        mel = bundle.mel_frames(np.concatenate([pad, load_audio(p), pad]))
        out += [mel[s:s + WINDOW_FRAMES] for s in range(0, len(mel) - WINDOW_FRAMES + 1, 8)]
    return np.stack(out)


def test_keras_rebuild_is_the_tflite_network(pretrained, data_dir):
    model = speech_embedding_keras(pretrained.path)
    assert model.count_params() > 300_000 and model.output_shape == (None, 96)
    w = _windows(pretrained, data_dir)
    ref = _raw(pretrained, w)
    got = model.predict(w[..., None], verbose=0)
    assert np.abs(got - ref).max() < 1e-4 * np.abs(ref).max()


def test_finetuning_brings_unseen_noisy_speech_towards_the_clean(pretrained, data_dir,
                                                                 tmp_path):
    cfg = DenoiseConfig(name="kws_speech_denoised_test", steps=120, batch_size=32,
                        max_real_words=160, max_synthetic=0, noise_probability=1.0,
                        snr_db=[0.0, 10.0])
    data = build_denoising_set(pretrained, data_dir, None, cfg)
    assert data.counts["recordings"] == {"real": 160, "synthetic": 0}
    n = len(data.clean)
    assert data.noisy.shape == (2 * n, WINDOW_FRAMES, 32) and data.clean.dtype == np.float32
    k = int(0.75 * n)  # windows of the first recordings train, the rest is held out
    train = DenoisingSet(data.clean[:k], np.concatenate([data.noisy[:k], data.noisy[n:n + k]]),
                         data.counts)
    student, history = finetune(cfg, pretrained, train, progress=False)
    assert history["loss"][-1] < history["loss"][0]

    mean, scale = pretrained._mean, pretrained._scale
    teacher = speech_embedding_keras(pretrained.path)
    held = np.arange(k, n)
    target = (teacher.predict(data.clean[held, ..., None], verbose=0) - mean) / scale

    def distance(model, windows):
        e = (model.predict(windows[..., None], verbose=0) - mean) / scale
        return float(np.mean(1 - np.sum(e * target, 1) / np.linalg.norm(e, axis=1)
                             / np.linalg.norm(target, axis=1)))

    before, after = distance(teacher, data.noisy[held]), distance(student, data.noisy[held])
    assert after < before - 0.05, (before, after)  # 0.63 -> 0.46 when written
    assert distance(student, data.clean[held]) < 0.12  # clean speech keeps its frames: 0.085

    path = export_denoised_bundle(student, pretrained, cfg, tmp_path, data_dir, data.counts,
                                  history)
    bundle = load_bundle(path, task="kws")
    meta = json.loads(path.with_suffix(".json").read_text())
    assert meta["origin"]["fine_tuned"]["pretrained_sha256"] == pretrained.sha256
    assert meta["tflite_sha256"] == sha256_file(path) != pretrained.sha256
    assert sha256_file(tmp_path / "kws_speech_denoised_test_mel.tflite") == \
        pretrained.frontend.mel_sha256
    assert "threshold_calibration" not in meta and len(meta["normalisation"]["mean"]) == 96
    w = data.clean[held[:40]]
    ref = student.predict(w[..., None], verbose=0)
    assert np.abs(_raw(bundle, w) - ref).max() < 1e-3 * np.abs(ref).max()


def test_the_recipe_sources_choose_real_or_synthetic_words(pretrained, data_dir, vocabulary):
    cfg = dict(max_real_words=4, max_synthetic=5, augment_passes=1)
    real = build_denoising_set(pretrained, data_dir, vocabulary,
                               DenoiseConfig(sources=["real"], **cfg))
    assert real.counts["recordings"] == {"real": 4, "synthetic": 0}
    synthetic = build_denoising_set(pretrained, data_dir, vocabulary,
                                    DenoiseConfig(sources=["synthetic"], **cfg))
    assert synthetic.counts["recordings"] == {"real": 0, "synthetic": 5}
    both = build_denoising_set(pretrained, data_dir, vocabulary, DenoiseConfig(**cfg))
    assert len(both.clean) == len(real.clean) + len(synthetic.clean)
    with pytest.raises(ValueError, match="vocabulary"):
        build_denoising_set(pretrained, data_dir, None, DenoiseConfig(sources=["synthetic"]))
    with pytest.raises(ValueError, match="sources"):
        DenoiseConfig(sources=["tts"])
