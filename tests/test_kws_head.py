"""The TACos head on speech_embedding frames: training on real and synthetic words, the int8
head in the bundle, on the node's streaming path."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from edge.model import ModelError, load_bundle
from trainer.kws_head import (
    HeadConfig,
    HeadTrainingSet,
    build_head_training_set,
    export_head_bundle,
    room_impulse_response,
    train_head,
    training_words,
)
from trainer.kws_data import split_of
from trainer.losses import relative_position_labels

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng not installed")


def test_position_labels_follow_definition_6_3_and_extend_it():
    for n in range(1, 9):
        np.testing.assert_allclose(relative_position_labels(n, 8, allow_longer=True),
                                   relative_position_labels(n, 8))
    lab = relative_position_labels(13, 4, allow_longer=True)
    np.testing.assert_allclose(lab.sum(1), 1.0)
    first = [int(np.argmax(r > 0)) for r in lab]
    assert first == sorted(first) and first[0] == 0 and lab[-1, -1] > 0


def test_training_words_hold_no_dev_keyword_excluded_word_or_unseen_speaker(data_dir):
    pool = training_words(data_dir, ["yes", "no"], seed=3)
    words = {u.word for u in pool}
    assert len(pool) > 1000 and len(words) > 10
    assert not words & {"alexa", "computer", "smart_mirror", "view_glass", "smart", "mirror",
                        "view", "glass", "yes", "no"}
    assert not any(w.startswith("_") for w in words)
    assert {split_of(u.speaker) for u in pool} == {"train"}
    again = training_words(data_dir, ["yes", "no"], seed=3, limit=50)
    assert [u.path for u in again] == [u.path for u in pool[:50]]
    assert [u.path for u in training_words(data_dir, ["yes", "no"], seed=4, limit=50)] != \
        [u.path for u in again]


def test_room_impulse_response_decays_by_60_db_in_rt60():
    h = room_impulse_response(0.5, np.random.default_rng(0))
    assert len(h) == 8000 and abs(float(np.sum(h ** 2)) - 1.0) < 1e-4
    e = h[1:] ** 2
    early, late = e[:800].mean(), e[-800:].mean()
    assert 40 < 10 * np.log10(early / late) < 70


@pytest.fixture(scope="module")
def head_bundle(vocabulary, data_dir, tmp_path_factory):
    base = load_bundle(ROOT / "models" / "kws_speech.tflite")
    cfg = HeadConfig(name="kws_speech_tacos_test", steps=150, max_real_words=120,
                     augment_passes=1, batch_size=32)
    data = build_head_training_set(base, data_dir, vocabulary, cfg)
    model, history = train_head(cfg, data, progress=False)
    out = tmp_path_factory.mktemp("head")
    return base, data, history, export_head_bundle(model, base, data, cfg, out, history)


def test_head_training_reads_real_and_synthetic_words(head_bundle):
    _, data, history, _ = head_bundle
    assert data.counts["recordings"] == {"real": 120, "synthetic": 36}
    assert data.classes[-1] == "_no_speech_" and len(data.classes) > 12 + 5
    assert not {"alexa", "computer", "smart", "mirror", "view", "glass"} & set(data.classes)
    assert set(data.subset(["synthetic"]).sources) == {"synthetic"}
    assert len(data.subset(["real"]).classes) < len(data.classes)
    assert history[-1] < history[0]  # the TACos loss goes down


def test_head_bundle_runs_the_int8_head_on_the_node_path(head_bundle, data_dir):
    base, _, _, path = head_bundle
    meta = json.loads(path.with_suffix(".json").read_text())
    assert meta["head"]["int8_vs_float_cosine"]["mean"] > 0.98
    assert "threshold_calibration" not in meta
    assert set(meta["origin"]["files"]) == {path.name, path.stem + "_mel.tflite",
                                            path.stem + "_head.tflite"}
    emb = load_bundle(path)
    y = np.concatenate([np.zeros(4000, np.float32),
                        load_from_kws(data_dir), np.zeros(4000, np.float32)])
    a, b = base.embed_wave(y), emb.embed_wave(y)
    assert a.shape == b.shape == (1 + len(y) // 1280, 96)
    cos = np.sum(a * b, 1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert cos.mean() < 0.999  # the head changed the frames
    np.testing.assert_allclose(emb.apply_head(base.embed_wave(y)), b, atol=1e-5)
    stream = emb.stream()
    chunks = [stream.push(y[i:i + 1600]) for i in range(0, len(y), 1600)] + [stream.flush()]
    np.testing.assert_allclose(np.concatenate(chunks), b, atol=1e-5)


def load_from_kws(data_dir) -> np.ndarray:
    from edge.audio import load_audio

    f = sorted((data_dir / "kws" / "speech_commands_test" / "stop").glob("*.flac"))[0]
    return load_audio(f, 16000)


def test_an_altered_or_missing_head_is_refused(head_bundle, tmp_path):
    _, _, _, path = head_bundle
    for f in path.parent.glob(path.stem + "*"):
        shutil.copy(f, tmp_path / f.name)
    head = tmp_path / (path.stem + "_head.tflite")
    head.write_bytes(head.read_bytes()[:-8] + b"\0" * 8)
    with pytest.raises(ModelError, match="_head.tflite does not match"):
        load_bundle(tmp_path / path.name)
    head.unlink()
    with pytest.raises(ModelError, match="head .*missing"):
        load_bundle(tmp_path / path.name)


def test_the_base_must_be_a_speech_embedding_bundle_without_a_head(head_bundle, kws_model,
                                                                   data_dir, vocabulary):
    cfg = HeadConfig(max_real_words=2)
    with pytest.raises(ValueError, match="not a speech_embedding bundle"):
        build_head_training_set(load_bundle(kws_model), data_dir, vocabulary, cfg)
    with pytest.raises(ValueError, match="already has a head"):
        build_head_training_set(load_bundle(head_bundle[3]), data_dir, vocabulary, cfg)


def test_the_teacher_head_brings_noisy_frames_towards_the_clean_ones(vocabulary, data_dir):
    """The teacher objective: after training, the head's frames of augmented recordings are
    closer (cosine) to the pretrained frames of the clean recordings than the raw ones were,
    on recordings the head never saw; clean frames stay close to themselves."""
    base = load_bundle(ROOT / "models" / "kws_speech.tflite")
    cfg = HeadConfig(objective="teacher", sources=["real"], max_real_words=160, steps=300,
                     augment_passes=2, noise_probability=1.0, snr_db=[0.0, 10.0])
    data = build_head_training_set(base, data_dir, vocabulary, cfg)
    assert data.counts["recordings"] == {"real": 160}
    n_train = 3 * 120  # entries come in (clean, augmented, augmented) per recording
    train = HeadTrainingSet(data.classes, data.words[:n_train], data.no_speech, data.counts,
                            data.sources[:n_train], data.clean_of[:n_train])
    model, history = train_head(cfg, train, progress=False)
    assert history[-1] < history[0]

    def cos(a, b):
        return float(np.mean(np.sum(a * b, 1) / np.linalg.norm(a, axis=1)
                             / np.linalg.norm(b, axis=1)))

    noisy = [i for i in range(n_train, len(data.words)) if data.clean_of[i] != i]
    x = np.concatenate([data.words[i][1] for i in noisy])
    t = np.concatenate([data.words[data.clean_of[i]][1] for i in noisy])
    before, after = cos(x, t), cos(model.predict(x, verbose=0), t)
    assert after > before + 0.02, (before, after)
    clean = np.concatenate([data.words[i][1] for i in range(n_train, len(data.words))
                            if data.clean_of[i] == i])
    assert cos(model.predict(clean, verbose=0), clean) > 0.9
