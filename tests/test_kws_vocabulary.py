"""The synthetic vocabulary: words and phrases spoken by espeak-ng, flite and festival, with a
manifest."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from edge.audio import AudioFileError
from trainer.kws_tts import dictionary_words, synthesize, tts_voices
from trainer.kws_vocabulary import build_vocabulary, read_vocabulary

pytestmark = pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng not installed")


def test_vocabulary_is_reproducible_and_described_clip_by_clip(vocabulary, tmp_path):
    manifest, clips = read_vocabulary(vocabulary)
    assert len(clips) == 36 and len({c.text for c, _ in clips}) == 12
    assert manifest["seed"] == 5 and "espeak-ng" in manifest["engines"]
    for c, audio in clips:
        assert c.engine in manifest["engines"] and c.voice and c.text
        assert 130 <= c.rate_wpm <= 200 and audio.dtype == np.float32
        assert abs(len(audio) / 16000 - c.seconds) < 0.01 and np.abs(audio).max() > 0.05
    # three voices per text, all different
    for text in {c.text for c, _ in clips}:
        assert len({(c.engine, c.voice) for c, _ in clips if c.text == text}) == 3
    again = tmp_path / "again"
    build_vocabulary(again, n_texts=12, voices_per_text=3, seed=5)
    assert json.loads((again / "manifest.json").read_text())["clips"] == \
        json.loads((vocabulary / "manifest.json").read_text())["clips"]


def test_a_subset_is_chosen_by_seed_and_only_it_is_decoded(vocabulary, tmp_path):
    """``seed`` shuffles the clips as ``random.Random(seed).shuffle`` does, ``limit`` keeps a
    prefix, and only the kept clips are decoded: a damaged clip outside the subset does not
    stop the read (the whole set does)."""
    import random

    _, every = read_vocabulary(vocabulary)
    order = [c for c, _ in every]
    random.Random(7).shuffle(order)
    _, some = read_vocabulary(vocabulary, seed=7, limit=5)
    assert [c for c, _ in some] == order[:5]
    _, shuffled = read_vocabulary(vocabulary, seed=7)
    assert [c for c, _ in shuffled] == order
    damaged = tmp_path / "damaged"
    shutil.copytree(vocabulary, damaged)
    (damaged / order[-1].file).write_bytes(b"not audio")
    assert len(read_vocabulary(damaged, seed=7, limit=5)[1]) == 5
    with pytest.raises(AudioFileError, match=order[-1].file):
        read_vocabulary(damaged)


def test_vocabulary_never_speaks_a_dev_keyword_or_its_words():
    words = dictionary_words(("alexa", "computer", "smart_mirror", "view_glass"))
    assert len(words) > 20000
    for bad in ("computer", "computers", "smart", "smartest", "mirror", "view", "review", "glass"):
        assert bad not in words
    assert "window" in words


def test_a_missing_clip_is_named(vocabulary, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(vocabulary, broken)
    first = json.loads((broken / "manifest.json").read_text())["clips"][0]["file"]
    (broken / first).unlink()
    with pytest.raises(FileNotFoundError, match=first):
        read_vocabulary(broken)
    with pytest.raises(FileNotFoundError, match="build-vocabulary"):
        read_vocabulary(tmp_path / "nothing")




@pytest.mark.skipif(shutil.which("text2wave") is None, reason="festival not installed")
def test_festival_voices_follow_rate_and_pitch(tmp_path):
    """festival's two diphone voices are offered, and espeak-ng's rate and pitch controls
    reach them: half the words per minute about doubles the duration, and pitch 10 vs 90
    moves the median F0 (pYIN) by tens of Hz (measured: 86 vs 165 Hz)."""
    import librosa

    assert {("festival", "kal_diphone"), ("festival", "ked_diphone")} <= set(tts_voices())
    slow = synthesize("festival", "ked_diphone", 120, 50, "window frame", cache_dir=tmp_path)
    fast = synthesize("festival", "ked_diphone", 240, 50, "window frame", cache_dir=tmp_path)
    assert slow.audio.dtype == np.float32 and np.abs(slow.audio).max() > 0.05
    assert 1.5 < len(slow.audio) / len(fast.audio) < 2.5

    def median_f0(pitch):
        y = synthesize("festival", "kal_diphone", 175, pitch, "a long low window",
                       cache_dir=tmp_path).audio
        f0, _, _ = librosa.pyin(y, fmin=50, fmax=300, sr=16000)
        return float(np.nanmedian(f0))
    assert median_f0(90) - median_f0(10) > 40
    with pytest.raises(FileNotFoundError, match="'rab_diphone'"):
        synthesize("festival", "rab_diphone", 175, 50, "window", cache_dir=tmp_path)
