"""The KWS side of the frontend, the TACos loss and embedder, streaming embeddings, VAD."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edge.frontend import mel_filterbank
from edge.kws_frontend import (KwsFrontendParams, KwsStreamFrontend, highpass, kws_logmel,
                               kws_segments)
from edge.vad import speech_interval

ROOT = Path(__file__).resolve().parent.parent
KWS_MODEL = ROOT / "models" / "kws_default.tflite"


@pytest.fixture(scope="module")
def kws_embedder():
    from edge.model import load_bundle

    assert KWS_MODEL.is_file(), "the default KWS bundle is missing: run `make export-tflite`"
    return load_bundle(KWS_MODEL, task="kws")


@pytest.fixture(scope="module")
def words(data_dir):
    from edge.audio import load_audio

    sc = data_dir / "kws" / "speech_commands_test"
    return {w: [load_audio(p) for p in sorted((sc / w).glob("*.flac"))[:3]] for w in ("stop", "yes")}


def test_mel_filterbank_matches_librosa():
    librosa = pytest.importorskip("librosa")
    ours = mel_filterbank(16000, 1024, 64, 0.0, 8000.0)
    ref = librosa.filters.mel(sr=16000, n_fft=1024, n_mels=64, fmin=0.0, fmax=8000.0,
                              htk=False, norm=None)
    np.testing.assert_allclose(ours, ref, atol=1e-6)
    # built once and shared between callers: nobody may change it in place
    assert mel_filterbank(16000, 1024, 64, 0.0, 8000.0) is ours
    with pytest.raises(ValueError, match="read-only"):
        ours *= 2


def test_logmel_shape_level_and_streaming_equals_batch(words):
    p = KwsFrontendParams()
    sine = np.sin(2 * np.pi * 1000 * np.arange(16000) / 16000).astype(np.float32)
    lm = kws_logmel(sine, p)
    assert lm.shape == (1 + 16000 // 256, 64)
    assert -3.0 < lm.max() < 0.5  # a full-scale sine reads about 0 dB
    y = np.concatenate(words["stop"])
    batch = kws_logmel(y, p)
    rng = np.random.default_rng(0)
    fe, out, i = KwsStreamFrontend(p), [], 0
    while i < len(y):
        n = int(rng.integers(1, 5000))
        out.append(fe.push(y[i:i + n]))
        i += n
    out.append(fe.flush())
    np.testing.assert_allclose(np.concatenate(out), batch, atol=1e-3)
    # The 2nd-order 50 Hz high-pass attenuates a 20 Hz hum by about 16 dB (12 dB/octave).
    hum = np.sin(2 * np.pi * 20 * np.arange(16000) / 16000).astype(np.float32)
    assert kws_logmel(hum, p)[10:].max() < lm.max() - 12


def test_segments_are_peak_normalised():
    p = KwsFrontendParams()
    lm = np.full((40, 64), -30.0, np.float32)
    lm[20, 5] = -10.0
    seg = kws_segments(lm, [-8, 10, 30], p)
    assert seg.shape == (3, 16, 64)
    assert seg[1].max() == 0.0 and seg[1][10, 5] == 0.0 and seg[1].min() == -20.0
    assert seg[0].max() == 0.0 and np.all(seg[0][:8] == -70.0)  # padding: silence (-100 dB)
    quiet = kws_segments(np.full((16, 64), -90.0, np.float32), [0], p)
    assert quiet.max() == pytest.approx(-30.0)  # below the floor: not amplified to 0 dB


def test_vad_finds_the_word(words):
    for y in words["stop"] + words["yes"]:
        iv = speech_interval(y)
        assert iv is not None and 0.1 < iv.duration_s <= 1.0  # some words are cut by the clip end
        inside = np.mean(y[iv.slice(16000)] ** 2)
        outside = np.concatenate([y[:iv.slice(16000).start], y[iv.slice(16000).stop:]])
        if len(outside) > 800:
            assert inside > 10 * np.mean(outside ** 2)
    assert speech_interval(np.zeros(16000, np.float32)) is None
    assert speech_interval(1e-4 * np.random.default_rng(0).standard_normal(16000)) is None


def test_relative_position_labels_definition_6_3():
    pytest.importorskip("tensorflow")
    from trainer.losses import relative_position_labels

    lab = relative_position_labels(3, 7)
    # I_active = [1 + floor((i-1) * 7 / 3), ceil(i * 7 / 3)]: [1, 3], [3, 5], [5, 7]
    np.testing.assert_allclose(lab, np.array([[1, 1, 1, 0, 0, 0, 0], [0, 0, 1, 1, 1, 0, 0],
                                              [0, 0, 0, 0, 1, 1, 1]]) / 3)
    np.testing.assert_allclose(relative_position_labels(7, 7), np.eye(7))
    with pytest.raises(ValueError):
        relative_position_labels(8, 7)


def _tacos_reference(emb, lab_kw, lab_pos, centers, n_kw, n_pos, n_c, s_prev):
    """Definition 6.4 (eqs. 69-72) with the adaptive scale of Definition 3.4, in NumPy."""
    e = emb / np.linalg.norm(emb, axis=-1, keepdims=True)
    c = centers / np.linalg.norm(centers, axis=-1, keepdims=True)
    cos = np.einsum("btd,cd->btc", e, c).reshape(len(e), e.shape[1], n_kw * n_pos, n_c)
    sim = cos.max(axis=3).mean(axis=1)  # eq. 69
    joint = (lab_kw[:, :, None] * lab_pos[:, None, :]).reshape(len(e), -1)
    sim_max = np.max(s_prev * sim)
    b_avg = np.sum(np.exp(s_prev * sim - sim_max)) / len(e)
    ang = np.arccos(np.clip(sim, -1 + 1e-7, 1 - 1e-7))
    s = (sim_max + np.log(b_avg)) / np.cos(min(np.pi / 4, np.median((joint * ang).sum(1))))
    z = np.exp(s * sim).reshape(len(e), n_kw, n_pos)
    p = z / z.sum(axis=(1, 2), keepdims=True)  # eq. 70
    l_kw = -(lab_kw * np.log(p.sum(axis=2))).sum(1)  # eq. 71
    l_pos = -(lab_pos * np.log(p.sum(axis=1))).sum(1)  # eq. 72
    return l_kw + l_pos, s


def test_tacos_loss_matches_definition_6_4():
    tf = pytest.importorskip("tensorflow")
    from trainer.losses import TACos

    rng = np.random.default_rng(0)
    n_kw, n_pos, n_c, d, T = 4, 3, 2, 8, 5
    loss = TACos(n_kw, n_pos, n_c, d, seed=1)
    emb = rng.standard_normal((6, T, d)).astype(np.float32)
    lab_kw = np.eye(n_kw, dtype=np.float32)[rng.integers(0, n_kw, 6)]
    lab_pos = np.eye(n_pos, dtype=np.float32)[rng.integers(0, n_pos, 6)]
    lab_pos[0] = 1.0 / n_pos  # a no-speech / reversed segment: uniform position target
    s0 = float(loss.scale.numpy())
    ours = loss.call(tf.constant(np.concatenate([lab_kw, lab_pos], 1)), tf.constant(emb)).numpy()
    ref, s_ref = _tacos_reference(emb, lab_kw, lab_pos, loss.centers.numpy(), n_kw, n_pos, n_c, s0)
    np.testing.assert_allclose(ours, ref, rtol=1e-4)
    assert float(loss.scale.numpy()) == pytest.approx(s_ref, rel=1e-5)
    # the centers are trainable and get gradients
    with tf.GradientTape() as tape:
        val = tf.reduce_sum(loss(tf.constant(np.concatenate([lab_kw, lab_pos], 1)), tf.constant(emb)))
    assert np.abs(tape.gradient(val, loss.centers).numpy()).sum() > 0


def test_embedder_shapes_table_30():
    pytest.importorskip("tensorflow")
    from trainer.model import build_kws_embedder

    m = build_kws_embedder(KwsFrontendParams())
    assert tuple(m.input.shape[1:]) == (16, 64) and tuple(m.output.shape[1:]) == (16, 128)
    shapes = [tuple(l.output.shape[1:]) for l in m.layers if l.__class__.__name__ == "Dropout"]
    assert shapes == [(16, 64, 16), (16, 32, 32), (16, 16, 64), (16, 8, 128)]


def test_shipped_kws_bundle_streaming_equals_batch(kws_embedder, words):
    meta = kws_embedder.metadata
    assert meta["task"] == "kws" and meta["loss"] == "tacos_loss"
    assert meta["int8_vs_float_cosine"]["mean"] > 0.98
    assert not {"alexa", "computer", "stop", "left"} & set(meta["vocabulary"])
    y = np.concatenate(words["stop"] + words["yes"])
    batch = kws_embedder.embed_wave(y)
    assert batch.shape == (1 + len(y) // 256, 128)
    np.testing.assert_allclose(np.linalg.norm(batch, axis=1), 1.0, atol=1e-5)
    stream, out = kws_embedder.stream(), []
    for i in range(0, len(y), 1234):
        out.append(stream.push(y[i:i + 1234]))
    out.append(stream.flush())
    np.testing.assert_allclose(np.concatenate(out), batch, atol=1e-6)


def test_embeddings_separate_words(kws_embedder, words):
    """Same word by different speakers is closer under DTW than a different word."""
    from edge.dtw import cosine_cost_matrix, subsequence_dtw

    def emb(y):
        iv = speech_interval(y)
        return kws_embedder.embed_wave(y[iv.slice(16000)])

    stop = [emb(y) for y in words["stop"]]
    yes = [emb(y) for y in words["yes"]]
    def cost(a, b):
        return float(np.min(subsequence_dtw(cosine_cost_matrix(a, b)).matching_cost))
    same = [cost(stop[0], stop[1]), cost(stop[0], stop[2]), cost(yes[0], yes[1])]
    diff = [cost(stop[0], yes[0]), cost(stop[1], yes[1]), cost(yes[0], stop[2])]
    assert np.mean(same) < np.mean(diff), (same, diff)


def test_train_kws_cli_tiny_run(tmp_path, data_dir):
    pytest.importorskip("tensorflow")
    r = subprocess.run([sys.executable, "-m", "trainer", "train-kws", "--data", str(data_dir),
                        "--steps", "3", "--max-words", "60", "--out", str(tmp_path),
                        "--name", "tiny", "--quiet"], cwd=ROOT, capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout[r.stdout.index("{"):])
    assert out["int8_bytes"] < out["float_bytes"] / 3
    from edge.model import load_bundle

    e = load_bundle(tmp_path / "tiny.tflite")
    assert e.embed_wave(np.zeros(8000, np.float32)).shape == (32, 128)


def test_vad_ignores_far_clicks_and_zero_padding(words):
    """A word, a breath 0.6 s later, a click, and digital silence (zero padding) at the end:
    the interval is the word's, not first-to-last activity."""
    y = words["stop"][0]
    iv = speech_interval(y)
    word = y[iv.slice(16000)]
    rng = np.random.default_rng(1)
    noise = 0.0005 * rng.standard_normal(int(2.5 * 16000)).astype(np.float32)
    clip = noise.copy()
    clip[8000:8000 + len(word)] += word
    click = 8000 + len(word) + int(0.6 * 16000)
    clip[click:click + 2400] += 0.02 * rng.standard_normal(2400).astype(np.float32)  # breath
    clip[click + 8000:click + 8080] += 0.3 * rng.standard_normal(80).astype(np.float32)  # click
    clip = np.concatenate([clip, np.zeros(16000, np.float32)])
    found = speech_interval(clip)
    assert abs(found.start_s - 0.5) < 0.1
    assert abs(found.end_s - (0.5 + len(word) / 16000)) < 0.1


def test_highpass_equals_scipy_butterworth():
    from scipy.signal import butter, sosfilt

    p = KwsFrontendParams()
    y = np.random.default_rng(0).standard_normal(20000).astype(np.float32)
    ref = sosfilt(butter(2, p.highpass_hz, btype="highpass", fs=p.sample_rate, output="sos"), y)
    np.testing.assert_allclose(highpass(y, p), ref, atol=1e-5)
    state = np.zeros(2)  # blockwise with carried state = whole signal
    blocks = np.concatenate([highpass(y[i:i + 777], p, state) for i in range(0, len(y), 777)])
    np.testing.assert_allclose(blocks, ref, atol=1e-5)


def test_teacher_frame_index_takes_the_frame_nearest_the_segment_centre():
    from trainer.kws_train import teacher_frame_index

    p = KwsFrontendParams()  # 16 ms frames, 16-frame segments: a segment at s is centred
    # at (s + 7.5) * 16 ms; speech_embedding frame k at k * 80 ms
    starts = np.array([-12, 3, 12, 21, 100])
    # centres -72 ms, 168 ms, 312 ms, 456 ms, 1720 ms -> frames -0.9 (clipped to 0), 2.1,
    # 3.9, 5.7 and 21.5 (clipped to the last of 10)
    np.testing.assert_array_equal(teacher_frame_index(starts, 10, p, 0.08), [0, 2, 4, 6, 9])
    with pytest.raises(ValueError, match="no frame"):
        teacher_frame_index(starts, 0, p)


def test_batch_teacher_targets_follow_the_forward_segments(words):
    """With a teacher, every forward word segment gets the teacher frame of the clean word
    nearest its centre; time-reversed and no-speech segments get none."""
    from edge.model import load_bundle
    from trainer.kws_train import KwsTrainConfig, KwsTrainingSet, teacher_frame_index
    from edge.kws_frontend import segment_starts

    teacher = load_bundle(ROOT / "models" / "kws_speech.tflite", task="kws")
    p = KwsFrontendParams()
    y = words["stop"][0]
    y = y[speech_interval(y).slice(16000)]
    m, frames = kws_logmel(y, p), teacher.embed_wave(y)
    assert frames.shape == (1 + len(y) // 1280, 96)
    background = [kws_logmel(words["yes"][1] * 0.01, p)]
    cfg = KwsTrainConfig(batch_size=4, no_speech_fraction=0.25)
    data = KwsTrainingSet([("stop", m)], background, cfg, p, [frames], teacher.frame_seconds)
    x, yl, w, t, has_t = data.batch(np.random.default_rng(0), augment=False, teacher=True)
    starts = segment_starts(len(m), cfg.segment_hop_train, p)[:data.n_positions]
    n = len(starts)
    want = frames[teacher_frame_index(starts, len(frames), p, 0.08)]
    assert len(x) == len(t) == len(has_t) > 6 * n
    for i in range(3):  # three words, each forward then reversed, then the no-speech rows
        fwd, rev = slice(2 * i * n, (2 * i + 1) * n), slice((2 * i + 1) * n, (2 * i + 2) * n)
        np.testing.assert_array_equal(t[fwd], want)
        assert has_t[fwd].min() == 1 and has_t[rev].max() == 0
    assert has_t[6 * n:].max() == 0
    x2, y2, w2 = data.batch(np.random.default_rng(0), augment=False)  # no teacher: as before
    np.testing.assert_array_equal(x2, x)
    with pytest.raises(ValueError, match="no teacher"):
        KwsTrainingSet([("stop", m)], background, cfg, p).batch(np.random.default_rng(0),
                                                                teacher=True)


def test_train_kws_cli_with_a_teacher(tmp_path, data_dir):
    """Role (b) of issue 13 end to end: the speech_embedding bundle as teacher; the bundle
    records which teacher it learned from."""
    pytest.importorskip("tensorflow")
    r = subprocess.run([sys.executable, "-m", "trainer", "train-kws", "--data", str(data_dir),
                        "--config", str(ROOT / "trainer/configs/kws_distilled.yaml"),
                        "--steps", "2", "--max-words", "30", "--out", str(tmp_path),
                        "--name", "tiny_distilled", "--quiet"], cwd=ROOT, capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "teacher models/kws_speech.tflite" in r.stderr
    meta = json.loads((tmp_path / "tiny_distilled.json").read_text())
    shipped = json.loads((ROOT / "models" / "kws_speech.json").read_text())
    assert meta["teacher"]["sha256"] == shipped["tflite_sha256"]
    assert meta["embedding_dim"] == 128  # the exported model is the log-Mel embedder alone
    r = subprocess.run([sys.executable, "-m", "trainer", "train-kws", "--data", str(data_dir),
                        "--teacher", str(ROOT / "models" / "kws_default.tflite"), "--steps", "1",
                        "--max-words", "5", "--out", str(tmp_path), "--quiet"], cwd=ROOT,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode != 0 and "expected a speech_embedding bundle" in r.stderr
