"""Enrollment shots: trimmed to the word, never into it; clear messages for unusable shots.

A shot file may already be cut tight around the word. The evaluation VAD
(:func:`edge.vad.speech_interval`) takes its noise floor from the recording's own quietest
frames, which in a tight shot are the word's weak onset and ending, so it cut a 0.68 s
"off" down to 0.28 s. The tight shots here are real recordings cut exactly at the word
found by that VAD in the untrimmed file (no margin); enrollment must keep at least 90 % of
each, and must still trim the silence of the untrimmed files.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from calibration.enroll import ShotError, prepare_shot
from edge.audio import load_audio
from edge.levels import clipped_fraction
from edge.vad import shot_interval, speech_interval
from firmware_config.defaults import default_config_doc, write_config_doc

ROOT = Path(__file__).resolve().parent.parent
SR = 16000
LIMITS = {"min_seconds": 0.2, "max_seconds": 2.0}  # the config defaults (kws.*_shot_seconds)
WAKEWORDS = ("alexa", "computer", "smart_mirror", "view_glass")
COMMANDS = ("stop", "yes", "left", "off", "go")
PER_WORD = 8


def real_shots(data_dir: Path, word: str, n: int = PER_WORD):
    """``(name, untrimmed, tight)`` for the first ``n`` usable recordings of ``word``.

    Tight = cut exactly at the word that :func:`speech_interval` finds in the untrimmed
    recording, without margin. Usable = neither cut is clipped and the word lasts
    0.25-1.5 s (a longer "word" is a VAD miss on hum, not a word).
    """
    folder = data_dir / "kws" / "wakeword" / word
    if not folder.is_dir():
        folder = data_dir / "kws" / "speech_commands_test" / word
    out = []
    for p in sorted(folder.glob("*.flac")):
        y = load_audio(p, SR)
        iv = speech_interval(y, SR, margin_seconds=0.0)
        if iv is None or not 0.25 <= iv.duration_s <= 1.5:
            continue
        tight = y[iv.slice(SR)]
        if clipped_fraction(y) > 0.001 or clipped_fraction(tight) > 0.001:
            continue
        out.append((p.name, y, tight))
        if len(out) == n:
            return out
    pytest.fail(f"fewer than {n} usable recordings of {word!r} in {folder}")


@pytest.fixture(scope="module")
def shots(data_dir):
    return {w: real_shots(data_dir, w) for w in WAKEWORDS + COMMANDS}


@pytest.fixture(scope="module")
def background() -> np.ndarray:
    """8 s of real, steady background noise (shipped negatives, from Speech Commands)."""
    y = load_audio(ROOT / "calibration" / "negatives" / "noise_3.flac", SR)
    assert len(y) >= 2.5 * SR
    return y


@pytest.mark.parametrize("word", WAKEWORDS + COMMANDS)
def test_tight_real_shots_keep_the_word(shots, word):
    kept = {}
    for name, _, tight in shots[word]:
        out = prepare_shot(tight, SR, name=name, source="file", **LIMITS)
        kept[name] = len(out) / len(tight)
    short = {k: round(v, 2) for k, v in kept.items() if v < 0.9}
    assert not short, f"{word}: tight shots cut into the word (kept fraction): {short}"


@pytest.mark.parametrize("word", WAKEWORDS + COMMANDS[:2])
def test_untrimmed_real_shots_are_still_trimmed(shots, word):
    """The wake-word files hold 0.3-4 s of room noise around the word: trimmed away, word kept."""
    for name, y, tight in shots[word]:
        iv = shot_interval(y, SR)
        ref = speech_interval(y, SR, margin_seconds=0.0)
        out = prepare_shot(y, SR, name=name, source="file", **LIMITS)
        assert len(out) >= 0.9 * len(tight), name
        if word in WAKEWORDS:  # long files: most of it is silence
            assert len(out) <= len(tight) + 0.2 * SR, (name, len(out) / SR, len(tight) / SR)
            assert iv.start_s <= ref.start_s + 0.02 and iv.end_s >= ref.end_s - 0.02, name
    assert np.mean([len(prepare_shot(y, SR, **LIMITS)) / len(y) for _, y, _ in shots[word]]) < 0.8


def test_word_in_noise_or_digital_silence_is_trimmed_to_it(shots, background):
    """A microphone slot (2.5 s of room noise, the word in the middle) and a word between
    runs of digital silence: both trimmed to the word plus the margin, the word kept whole."""
    for name, _, tight in shots["computer"][:4] + shots["off"][:4]:
        n = len(tight)
        noise = background[:int(2.5 * SR)].copy()
        noise *= 10 ** ((-65 - 20 * np.log10(np.sqrt(np.mean(noise ** 2)))) / 20)  # -65 dBFS
        start = (len(noise) - n) // 2
        slot = noise.copy()
        slot[start:start + n] += tight
        for y in (slot, np.concatenate([np.zeros(SR, np.float32), tight,
                                         np.zeros(SR, np.float32)])):
            iv = shot_interval(y, SR)
            s0, s1 = (start, start + n) if len(y) == len(slot) else (SR, SR + n)
            assert iv.start_s * SR <= s0 + 0.02 * SR and iv.end_s * SR >= s1 - 0.02 * SR, name
            assert iv.duration_s <= n / SR + 0.2, (name, iv.duration_s, n / SR)


def test_noise_only_and_clicks_are_no_speech(background):
    noise = background[:2 * SR] * 10 ** (-25 / 20) / np.max(np.abs(background[:2 * SR]))
    click = np.zeros(SR, np.float32)
    click[SR // 2] = 0.5
    for y in (noise, click):
        assert shot_interval(y, SR) is None
        with pytest.raises(ShotError, match="no speech found"):
            prepare_shot(y, SR, **LIMITS)


def test_messages_name_the_source():
    click = np.zeros(SR, np.float32)
    click[SR // 2] = 0.5
    with pytest.raises(ShotError, match="after the prompt"):
        prepare_shot(click, SR, name="shot 1", **LIMITS)
    with pytest.raises(ShotError) as e:
        prepare_shot(click, SR, name="a.wav", source="file", **LIMITS)
    assert "no speech found" in str(e.value) and "prompt" not in str(e.value)
    with pytest.raises(ShotError) as e:
        prepare_shot(np.zeros(0, np.float32), SR, name="a.wav", source="file", **LIMITS)
    assert "a.wav: the file is empty" in str(e.value)
    assert "silent" not in str(e.value) and "-120" not in str(e.value)
    with pytest.raises(ShotError, match="nothing was recorded"):
        prepare_shot(np.zeros(0, np.float32), SR, **LIMITS)
    with pytest.raises(ValueError, match="source"):
        prepare_shot(click, SR, source="mic", **LIMITS)


def _enroll(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    doc = default_config_doc(node={"id": "kws-node"}, asd={"enabled": False},
                             kws={"keywords": str(tmp_path / "keywords.npz")},
                             spool={"path": str(tmp_path / "spool.sqlite")})
    cfg = write_config_doc(tmp_path / "node.yaml", doc)
    return subprocess.run([sys.executable, "-m", "calibration", "enroll", "--config", str(cfg),
                           "--keyword", "stop", *args], check=False, cwd=ROOT,
                          capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("shots", ["-1", "0", "two"])
def test_cli_rejects_a_non_positive_shot_count(tmp_path, shots):
    r = _enroll(tmp_path, "--shots", shots)
    assert r.returncode == 2, r.stderr
    assert "argument --shots" in r.stderr and "positive" in r.stderr and repr(shots) in r.stderr


def test_cli_messages_for_unusable_files(tmp_path, background):
    empty, noise = tmp_path / "empty.wav", tmp_path / "noise.wav"
    sf.write(empty, np.zeros(0, np.float32), SR)
    sf.write(noise, background[:SR] * 0.1 / np.max(np.abs(background[:SR])), SR)
    r = _enroll(tmp_path, "--from", str(empty))
    assert r.returncode == 1, r.stderr
    assert "empty.wav: the file is empty (0 samples)" in r.stderr, r.stderr
    assert "-120" not in r.stderr and "silent" not in r.stderr
    r = _enroll(tmp_path, "--from", str(noise))
    assert r.returncode == 1, r.stderr
    assert "noise.wav: no speech found" in r.stderr and "prompt" not in r.stderr, r.stderr
    assert "nothing was stored" in r.stderr and not (tmp_path / "keywords.npz").exists()
