"""Synthetic speech from offline TTS engines (espeak-ng, flite, festival), reproducibly.

Negative audio for keyword evaluation needs hours of speech that contains no keyword; real
recordings run out. :func:`synthetic_sentences` speaks random sentences of dictionary words
(Debian's ``wamerican`` list, ``/usr/share/dict/american-english``) with espeak-ng (GPL-3; run
as a separate program, never imported), varying the voice, speaking rate and pitch. Every
clip is described in a manifest (engine, voice, rate, pitch, text), derived from a seed, and
cached on disk by the hash of its description, so a second run reads the same audio.
:func:`synthesize` speaks one text with one engine: espeak-ng (GPL-3), flite (BSD-like
licence, Debian's ``flite`` package, voices kal, kal16, awb, rms and slt) or festival (its
``text2wave``; X11-style licence; the diphone voices of Debian's ``festvox-kallpc16k`` and
``festvox-kdlpc16k``, two American English male speakers). All run as separate programs.

Words containing any of the ``exclude`` strings (the keywords under evaluation, e.g.
"computer" also excludes "computers") are never spoken.

Contents
--------
ESPEAK_VOICES, FLITE_VOICES, FESTIVAL_VOICES
    The voices (and espeak-ng variants) drawn from.
TtsClip, synthetic_sentences
    Random sentences as 16 kHz float32 clips with their manifest entries.
random_phrases, speak, synthesize, tts_voices
    Random short phrases (synthetic keywords), one text in several voices (its shots), one
    text in one voice of one engine, and every installed engine's voices.
"""
from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from calibration.generic_negatives import keyword_words
from edge.audio import load_audio

__all__ = ["ESPEAK_VOICES", "FLITE_VOICES", "FESTIVAL_VOICES", "WORD_LIST", "TtsClip",
           "synthetic_sentences", "random_phrases", "speak", "synthesize", "tts_voices", "dictionary_words"]

#: espeak-ng voices (English accents) and voice variants (``+m1`` ... ``+f4``) drawn from.
ESPEAK_VOICES = ("en-us", "en-gb", "en-gb-scotland", "en-gb-x-rp", "en-029", "en-gb-x-gbclan",
                 "en-gb-x-gbcwmd")
_VARIANTS = ("", "+m1", "+m2", "+m3", "+m4", "+f1", "+f2", "+f3", "+f4")
#: flite's built-in voices (Debian ``flite`` 2.2); slt is the female one.
FLITE_VOICES = ("kal", "kal16", "awb", "rms", "slt")
#: festival's diphone voices from Debian's festvox-kallpc16k and festvox-kdlpc16k (16 kHz).
FESTIVAL_VOICES = ("kal_diphone", "ked_diphone")
#: Debian's ``wamerican`` word list.
WORD_LIST = Path("/usr/share/dict/american-english")
SAMPLE_RATE = 16000


@dataclass(frozen=True)
class TtsClip:
    """One synthetic sentence.

    Attributes
    ----------
    engine, voice, text : str
    rate_wpm, pitch : int
        espeak-ng's ``-s`` (words per minute) and ``-p`` (0-99); flite and festival map both
        (:func:`synthesize`).
    audio : np.ndarray, shape (n,), float32
        16 kHz mono, as the engine produced it (espeak-ng resampled from 22.05 kHz).
    """

    engine: str
    voice: str
    rate_wpm: int
    pitch: int
    text: str
    audio: np.ndarray = field(repr=False, compare=False)

    def manifest(self) -> dict:
        """The clip's description without the audio (JSON-serialisable)."""
        d = asdict(self)
        d.pop("audio")
        d["seconds"] = round(len(self.audio) / SAMPLE_RATE, 3)
        return d


def dictionary_words(exclude: Sequence[str]) -> list[str]:
    """Lower-case ASCII words of 2-10 letters from :data:`WORD_LIST`, none containing a word of
    ``exclude`` (keywords; ``"smart_mirror"`` excludes "smart" and "mirror").

    Raises
    ------
    FileNotFoundError
        The word list is not installed.
    """
    if not WORD_LIST.is_file():
        raise FileNotFoundError(f"word list {WORD_LIST} not found: install Debian's wamerican "
                                "(`apt-get install wamerican`)")
    bad = [b for e in exclude for b in keyword_words(e)]  # neither "smart" nor "mirror"
    out = []
    for w in WORD_LIST.read_text(encoding="utf-8", errors="ignore").split():
        if w.isascii() and w.isalpha() and w.islower() and 2 <= len(w) <= 10 \
                and not any(b in w for b in bad):
            out.append(w)
    return out


def _cached_wav(key: list, command, cache: Path, stdin: str | None = None) -> np.ndarray:
    """Run an engine once per description ``key``: ``command(out_path)`` gives the program's
    arguments that write a WAV file (``stdin``: text to feed it); the file is kept in
    ``cache`` under the key's hash (written atomically) and read back at 16 kHz."""
    path = cache / (hashlib.sha256(json.dumps(key).encode()).hexdigest()[:20] + ".wav")
    if not path.is_file():
        with tempfile.NamedTemporaryFile(suffix=".wav", dir=cache, delete=False) as tmp:
            tmp_path = Path(tmp.name)
        try:
            subprocess.run(command(tmp_path), check=True, capture_output=True, timeout=60,
                           input=stdin.encode() if stdin is not None else None)
            tmp_path.replace(path)
        finally:
            tmp_path.unlink(missing_ok=True)
    return load_audio(path, SAMPLE_RATE)


def _speak(espeak: str, voice: str, rate: int, pitch: int, text: str, cache: Path) -> np.ndarray:
    return _cached_wav([voice, rate, pitch, text],
                       lambda out: [espeak, "-v", voice, "-s", str(rate), "-p", str(pitch),
                                    "-w", str(out), text], cache)


def _espeak() -> str:
    espeak = shutil.which("espeak-ng")
    if espeak is None:
        raise FileNotFoundError("espeak-ng not found: install it (`apt-get install espeak-ng`; "
                                "`make setup` does when run as root)")
    return espeak


def _flite_speak(flite: str, voice: str, rate: int, pitch: int, text: str,
                 cache: Path) -> np.ndarray:
    """flite with espeak-ng's controls mapped: rate (words per minute) to a duration stretch
    ``175 / rate``, pitch (0-99) to a mean F0 of 85-145 Hz (150-230 Hz for slt)."""
    f0 = 150 + 0.8 * pitch if voice == "slt" else 85 + 0.6 * pitch
    return _cached_wav(["flite", voice, rate, pitch, text],
                       lambda out: [flite, "-voice", voice, "--setf",
                                    f"duration_stretch={175 / rate:.3f}", "--setf",
                                    f"int_f0_target_mean={f0:.0f}", "-t", text, "-o", str(out)],
                       cache)


def _festival_speak(text2wave: str, voice: str, rate: int, pitch: int, text: str,
                    cache: Path) -> np.ndarray:
    """festival's ``text2wave`` with espeak-ng's controls mapped: rate (words per minute) to
    ``Duration_Stretch`` ``175 / rate``, pitch (0-99) to the target mean F0 of the voice's
    linear-regression intonation model, 75-174 Hz (``int_lr_params``; std 15 Hz)."""
    intonation = (f"(set! int_lr_params '((target_f0_mean {75 + pitch}) (target_f0_std 15) "
                  "(model_f0_mean 170) (model_f0_std 34)))")
    return _cached_wav(["festival", voice, rate, pitch, text],
                       lambda out: [text2wave, "-eval", f"(voice_{voice})",
                                    "-eval", f"(Parameter.set 'Duration_Stretch {175 / rate:.3f})",
                                    "-eval", intonation, "-F", str(SAMPLE_RATE), "-o", str(out)],
                       cache, stdin=text)


def tts_voices() -> list[tuple[str, str]]:
    """``(engine, voice)`` for every voice of every installed engine: espeak-ng's English
    voices with each variant, flite's voices when flite is installed, and festival's
    :data:`FESTIVAL_VOICES` that are installed.

    Raises
    ------
    FileNotFoundError
        espeak-ng is not installed.
    """
    _espeak()
    out = [("espeak-ng", v + var) for v in ESPEAK_VOICES for var in _VARIANTS]
    if shutil.which("flite"):
        out += [("flite", v) for v in FLITE_VOICES]
    if shutil.which("text2wave"):
        out += [("festival", v) for v in _installed_festival_voices()]
    return out


def _installed_festival_voices() -> list[str]:
    """The :data:`FESTIVAL_VOICES` whose files Debian's festvox packages installed."""
    root = Path("/usr/share/festival/voices/english")
    return [v for v in FESTIVAL_VOICES if (root / v).is_dir()]


def synthesize(engine: str, voice: str, rate: int, pitch: int, text: str, *,
               cache_dir: str | Path | None = None) -> TtsClip:
    """``text`` spoken by one voice of one engine (cached on disk by its description).

    Parameters
    ----------
    engine : {"espeak-ng", "flite", "festival"}
    voice : str
        An espeak-ng voice with optional variant (``"en-gb+f2"``), a flite voice (``"slt"``)
        or a festival voice (``"kal_diphone"``).
    rate : int
        Words per minute (espeak-ng's ``-s``; flite and festival: duration stretch
        ``175 / rate``).
    pitch : int
        0-99 (espeak-ng's ``-p``; flite and festival: the voice's mean F0, see
        :func:`_flite_speak`, :func:`_festival_speak`).
    text : str
    cache_dir : path, optional

    Returns
    -------
    TtsClip
        16 kHz float32 audio.

    Raises
    ------
    FileNotFoundError
        The engine is not installed.
    ValueError
        An unknown engine.
    """
    cache = _cache(cache_dir)
    if engine == "espeak-ng":
        y = _speak(_espeak(), voice, rate, pitch, text, cache)
    elif engine == "flite":
        flite = shutil.which("flite")
        if flite is None:
            raise FileNotFoundError("flite not found: install it (`apt-get install flite`; "
                                    "`make setup` does when run as root)")
        y = _flite_speak(flite, voice, rate, pitch, text, cache)
    elif engine == "festival":
        text2wave = shutil.which("text2wave")
        if text2wave is None or voice not in _installed_festival_voices():
            raise FileNotFoundError(
                f"festival voice {voice!r} not found: install festival and its voices "
                "(`apt-get install festival festvox-kallpc16k festvox-kdlpc16k`; `make setup` "
                "does when run as root)")
        y = _festival_speak(text2wave, voice, rate, pitch, text, cache)
    else:
        raise ValueError(f"engine must be 'espeak-ng', 'flite' or 'festival', got {engine!r}")
    return TtsClip(engine, voice, rate, pitch, text, y)


def _cache(cache_dir: str | Path | None) -> Path:
    cache = Path(cache_dir) if cache_dir else Path(tempfile.gettempdir()) / "hark-tts"
    cache.mkdir(parents=True, exist_ok=True)
    return cache


def random_phrases(n: int, *, n_words: int = 2, seed: int = 0,
                   exclude: Sequence[str] = ()) -> list[str]:
    """``n`` random phrases of ``n_words`` dictionary words (none containing ``exclude``)."""
    words = dictionary_words(exclude)
    rng = np.random.default_rng([seed, 4242])
    return [" ".join(words[int(i)] for i in rng.integers(len(words), size=n_words))
            for _ in range(n)]


def speak(text: str, voices: Sequence[str], *, seed: int = 0,
          cache_dir: str | Path | None = None) -> list[TtsClip]:
    """``text`` spoken once per voice (e.g. ``"en-us+f2"``), rate and pitch drawn from ``seed``.

    Raises
    ------
    FileNotFoundError
        espeak-ng is not installed.
    """
    espeak, cache = _espeak(), _cache(cache_dir)
    rng = np.random.default_rng([seed, 991])
    out = []
    for voice in voices:
        rate, pitch = int(rng.integers(130, 200)), int(rng.integers(25, 75))
        out.append(TtsClip("espeak-ng", voice, rate, pitch, text,
                           _speak(espeak, voice, rate, pitch, text, cache)))
    return out


def synthetic_sentences(seconds: float, *, seed: int = 0, exclude: Sequence[str] = (),
                        cache_dir: str | Path | None = None) -> list[TtsClip]:
    """Random sentences spoken by espeak-ng until ``seconds`` of speech are reached.

    Parameters
    ----------
    seconds : float
        Total duration of the clips (at least), seconds.
    seed : int
        Everything random (words, voice, rate, pitch) follows from it.
    exclude : sequence of str
        Words (or phrases, split into words) never spoken, also inside longer words.
    cache_dir : path, optional
        Where the WAV files are kept between runs (default: a ``hark-tts`` folder in the
        system's temporary folder).

    Returns
    -------
    list of TtsClip

    Raises
    ------
    FileNotFoundError
        espeak-ng or the word list is not installed (the message says how to install them).
    """
    espeak, cache = _espeak(), _cache(cache_dir)
    words = dictionary_words(exclude)
    rng = np.random.default_rng([seed, 7913])
    out: list[TtsClip] = []
    total = 0.0
    while total < seconds:
        n = int(rng.integers(5, 15))
        text = " ".join(words[int(i)] for i in rng.integers(len(words), size=n))
        voice = ESPEAK_VOICES[int(rng.integers(len(ESPEAK_VOICES)))] + \
            _VARIANTS[int(rng.integers(len(_VARIANTS)))]
        rate, pitch = int(rng.integers(130, 200)), int(rng.integers(25, 75))
        y = _speak(espeak, voice, rate, pitch, text, cache)
        out.append(TtsClip("espeak-ng", voice, rate, pitch, text, y))
        total += len(y) / SAMPLE_RATE
    return out
