"""A synthetic training vocabulary: thousands of words and short phrases from offline TTS.

Real keyword recordings run out at a few dozen words; the representation has to learn to tell
*words* apart, not these words. :func:`build_vocabulary` draws ``n_texts`` texts from Debian's
``wamerican`` word list (single words, and two-word phrases with probability
``phrase_fraction``, as "smart mirror" is one), never containing a dev keyword or any word of
one (:data:`trainer.kws_wakeword.WAKEWORD_KEYWORDS`, also inside longer words), and speaks
each in ``voices_per_text`` different voices of the installed engines
(:func:`trainer.kws_tts.tts_voices`: espeak-ng's English voices and variants, flite's and
festival's voices; a quarter of the draws go to flite's five voices and 15 % to festival's two
when they are installed, so that their natural voices are not drowned by espeak-ng's 63) at a
random speaking rate (130-200 words per minute) and pitch. Every draw follows from
``seed``, so the same command builds the same set; a clip already on disk is not made again
(an interrupted build resumes).

On disk (``out_dir``)::

    clips/<sha>.flac      16 kHz mono, as the engine spoke it (no noise, no reverberation)
    manifest.json         seed, engines, exclusions, and one entry per clip: file, engine,
                          voice, rate_wpm, pitch, text, seconds

Noise and room reverberation are added when training reads the clips
(:mod:`trainer.kws_head`, drawn per epoch), so one set serves every augmentation recipe.

Contents
--------
VocabularyClip, build_vocabulary, read_vocabulary
"""
from __future__ import annotations

import hashlib
import json
import random
import subprocess
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import soundfile as sf
from tqdm import tqdm

from edge.audio import load_audio
from firmware_config.fileio import atomic_write, atomic_write_json
from trainer.kws_tts import SAMPLE_RATE, dictionary_words, synthesize, tts_voices
from trainer.kws_wakeword import WAKEWORD_KEYWORDS

__all__ = ["VocabularyClip", "build_vocabulary", "read_vocabulary"]

MANIFEST = "manifest.json"
#: Share of voice draws that go to each of these engines (when installed); espeak-ng gets the
#: rest.
ENGINE_SHARES = {"flite": 0.25, "festival": 0.15}


@dataclass(frozen=True)
class VocabularyClip:
    """One synthetic clip of the vocabulary (an entry of ``manifest.json``).

    Attributes
    ----------
    file : str
        Path relative to the vocabulary folder (``clips/<sha>.flac``).
    engine, voice, text : str
    rate_wpm, pitch : int
        See :func:`trainer.kws_tts.synthesize`.
    seconds : float
    """

    file: str
    engine: str
    voice: str
    rate_wpm: int
    pitch: int
    text: str
    seconds: float


def _engine_versions(engines: set[str]) -> dict[str, str]:
    out = {}
    for engine, args in (("espeak-ng", ["espeak-ng", "--version"]), ("flite", ["flite", "--version"]),
                         ("festival", ["festival", "--version"])):
        if engine in engines:
            try:
                lines = subprocess.run(args, capture_output=True, text=True,
                                       timeout=10).stdout.strip().splitlines()
                out[engine] = next((ln.strip() for ln in lines if "version" in ln.lower()
                                    or "espeak" in ln.lower()), lines[0].strip())
            except (OSError, IndexError, subprocess.SubprocessError):
                out[engine] = "unknown"
    return out


def build_vocabulary(out_dir: str | Path, *, n_texts: int = 3000, voices_per_text: int = 4,
                     phrase_fraction: float = 0.25, seed: int = 0,
                     exclude: Sequence[str] = WAKEWORD_KEYWORDS,
                     progress: bool = False) -> Path:
    """Build (or complete) a synthetic vocabulary in ``out_dir``; see the module docstring.

    Parameters
    ----------
    out_dir : str or Path
    n_texts : int
        Distinct texts (words or two-word phrases).
    voices_per_text : int
        Different voices per text (``n_texts * voices_per_text`` clips).
    phrase_fraction : float
        Share of two-word phrases, 0..1.
    seed : int
        Texts, voices, rates and pitches follow from it.
    exclude : sequence of str
        Keywords never spoken, nor any of their words (``"smart_mirror"``: "smart",
        "mirror"), also inside longer words.
    progress : bool

    Returns
    -------
    Path
        ``out_dir/manifest.json`` (written atomically, last).

    Raises
    ------
    FileNotFoundError
        espeak-ng or the word list is not installed (the message says how to install them).
    ValueError
        ``n_texts`` or ``voices_per_text`` below 1, ``phrase_fraction`` outside 0..1, or more
        voices per text than installed voices.
    """
    if n_texts < 1 or voices_per_text < 1:
        raise ValueError(f"n_texts and voices_per_text must be at least 1, got {n_texts} and "
                         f"{voices_per_text}")
    if not 0.0 <= phrase_fraction <= 1.0:
        raise ValueError(f"phrase_fraction must be in 0..1, got {phrase_fraction}")
    voices = tts_voices()
    if voices_per_text > len(voices):
        raise ValueError(f"voices_per_text {voices_per_text} exceeds the {len(voices)} installed "
                         "voices")
    out = Path(out_dir)
    (out / "clips").mkdir(parents=True, exist_ok=True)
    words = dictionary_words(exclude)
    rng = np.random.default_rng([seed, 5150])
    texts: list[str] = []
    seen: set[str] = set()
    while len(texts) < n_texts:
        k = 2 if rng.random() < phrase_fraction else 1
        text = " ".join(words[int(i)] for i in rng.integers(len(words), size=k))
        if text not in seen:
            seen.add(text)
            texts.append(text)
    p = _voice_probabilities(voices)
    clips: list[VocabularyClip] = []
    cache = out / ".tts-cache"
    for text in tqdm(texts, desc="synthetic vocabulary", unit="text", disable=not progress):
        for vi in rng.choice(len(voices), size=voices_per_text, replace=False, p=p):
            engine, voice = voices[int(vi)]
            rate, pitch = int(rng.integers(130, 201)), int(rng.integers(20, 80))
            desc = [engine, voice, rate, pitch, text]
            name = "clips/" + hashlib.sha256(json.dumps(desc).encode()).hexdigest()[:20] + ".flac"
            path = out / name
            if path.is_file():
                seconds = sf.info(str(path)).duration
            else:
                y = synthesize(engine, voice, rate, pitch, text, cache_dir=cache).audio
                atomic_write(path, lambda f, y=y: sf.write(f, y, SAMPLE_RATE, format="FLAC",
                                                           subtype="PCM_16"))
                seconds = len(y) / SAMPLE_RATE
            clips.append(VocabularyClip(name, engine, voice, rate, pitch, text,
                                        round(float(seconds), 3)))
    for f in cache.glob("*.wav"):  # the engines' raw output; the FLAC files are the set
        f.unlink()
    manifest = {"seed": seed, "n_texts": n_texts, "voices_per_text": voices_per_text,
                "phrase_fraction": phrase_fraction, "exclude": list(exclude),
                "word_list": "Debian wamerican (/usr/share/dict/american-english)",
                "engines": _engine_versions({e for e, _ in voices}),
                "clips": [asdict(c) for c in clips]}
    return atomic_write_json(out / MANIFEST, manifest)


def _voice_probabilities(voices: list[tuple[str, str]]) -> np.ndarray:
    """Draw probability of each ``(engine, voice)``: :data:`ENGINE_SHARES` split evenly over
    that engine's voices, the rest evenly over the other voices (espeak-ng's)."""
    count = {e: sum(v == e for v, _ in voices) for e in ENGINE_SHARES}
    rest = 1.0 - sum(share for e, share in ENGINE_SHARES.items() if count[e])
    n_rest = sum(e not in ENGINE_SHARES for e, _ in voices)
    p = np.array([ENGINE_SHARES[e] / count[e] if e in ENGINE_SHARES else rest / n_rest
                  for e, _ in voices])
    return p / p.sum()


def read_vocabulary(out_dir: str | Path, *, seed: int | None = None, limit: int | None = None
                    ) -> tuple[dict, list[tuple[VocabularyClip, np.ndarray]]]:
    """The manifest and the clips' audio: every clip, or a random subset decoded alone.

    Parameters
    ----------
    out_dir : str or Path
        A folder :func:`build_vocabulary` made.
    seed : int, optional, keyword-only
        Shuffle the clips in the order ``random.Random(seed).shuffle`` gives (manifest order
        without).
    limit : int, optional, keyword-only
        Keep the first ``limit`` clips (after shuffling) and decode only those: a recipe that
        trains on 6000 of 12 000 clips holds half the audio in memory.

    Returns
    -------
    manifest : dict
        ``manifest.json`` without its ``clips``.
    clips : list of (VocabularyClip, np.ndarray)
        Audio 16 kHz mono float32, shape (n_samples,).

    Raises
    ------
    FileNotFoundError
        No ``manifest.json`` (the message gives the command that builds one), or a clip it
        names is missing.
    ValueError
        A manifest entry with missing or unknown fields.
    """
    path = Path(out_dir) / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: build the vocabulary with `python -m trainer "
                                f"build-vocabulary --out {out_dir}`")
    manifest = json.loads(path.read_text())
    clips = []
    for i, entry in enumerate(manifest.pop("clips", [])):
        try:
            clip = VocabularyClip(**entry)
        except TypeError as exc:
            raise ValueError(f"{path}: clips[{i}]: {exc}") from None
        if not (Path(out_dir) / clip.file).is_file():
            raise FileNotFoundError(f"{path}: clips[{i}] names {Path(out_dir) / clip.file}, "
                                    "which is missing")
        clips.append(clip)
    if seed is not None:
        random.Random(seed).shuffle(clips)
    return manifest, [(c, load_audio(Path(out_dir) / c.file, SAMPLE_RATE))
                      for c in clips[:limit]]
