"""Keyword-spotting data: spoken words with speaker ids, speaker-disjoint splits, background.

Layouts read (``../shared/data/kws`` and ``../shared/data/noise``):

* Speech Commands (``speech_commands_test/<word>/<speaker>_nohash_<n>.flac`` and
  ``_unknown_/<word>_<speaker>_nohash_<n>.flac``); ``_silence_`` is background;
* wake words (``wakeword/<word>/<id>.flac``), speaker unknown: each file counts as its own
  speaker;
* background recordings (``noise/*.flac``).

Splits are by speaker (a hash of the speaker id, so they never change when files are added):
an enrollment speaker never appears in the test streams, and the generic embedder never sees
a validation or test speaker.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge.audio import load_audio
from trainer.data import AUDIO_SUFFIXES

__all__ = ["Utterance", "list_words", "speaker_split", "split_of", "background_files", "load_background", "load_machine_noise", "default_data_dir", "SPLITS", "NOISE_SPLITS"]

SPLITS = {"train": (0, 70), "val": (70, 80), "test": (80, 100)}


@dataclass(frozen=True)
class Utterance:
    """One recording of one spoken word.

    Attributes
    ----------
    path : Path
    word : str
    speaker : str
        Speaker id (Speech Commands hash; the file stem for data without speaker ids).
    """

    path: Path
    word: str
    speaker: str


def default_data_dir() -> str:
    """``$HARK_DATA``, else ``../shared/data`` next to the project."""
    return os.environ.get("HARK_DATA") or str(Path(__file__).resolve().parent.parent.parent
                                              / "shared" / "data")


def _audio_files(folder: Path):
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in AUDIO_SUFFIXES)


def _stem(p: Path) -> str:
    name = p.name
    for suf in AUDIO_SUFFIXES:
        name = name.replace(suf, "")
    return name


def list_words(kws_dir: str | Path) -> list[Utterance]:
    """All word recordings under a KWS data folder.

    Parameters
    ----------
    kws_dir : path
        Folder holding ``speech_commands_test/`` and/or ``wakeword/``.

    Returns
    -------
    list of Utterance, sorted by path.

    Raises
    ------
    FileNotFoundError
        If neither layout is found.
    """
    root = Path(kws_dir)
    out: list[Utterance] = []
    sc = root / "speech_commands_test"
    if sc.is_dir():
        for d in sorted(p for p in sc.iterdir() if p.is_dir() and p.name != "_silence_"):
            for f in _audio_files(d):
                stem = _stem(f)
                if d.name == "_unknown_":
                    word, _, rest = stem.partition("_")
                else:
                    word, rest = d.name, stem
                out.append(Utterance(f, word, rest.split("_nohash_")[0]))
    ww = root / "wakeword"
    if ww.is_dir():
        for d in sorted(p for p in ww.iterdir() if p.is_dir()):
            out.extend(Utterance(f, d.name, f"{d.name}-{_stem(f)}") for f in _audio_files(d))
    if not out:
        raise FileNotFoundError(f"no Speech Commands or wake-word recordings under {root}")
    return out


def split_of(speaker: str) -> str:
    """``"train"``, ``"val"`` or ``"test"`` for a speaker (70/10/20 by a stable hash)."""
    h = int(hashlib.sha1(speaker.encode()).hexdigest()[:8], 16) % 100
    for name, (lo, hi) in SPLITS.items():
        if lo <= h < hi:
            return name
    raise AssertionError(h)


def speaker_split(utterances) -> dict[str, list[Utterance]]:
    """Group utterances into speaker-disjoint ``train``/``val``/``test`` lists."""
    out: dict[str, list[Utterance]] = {k: [] for k in SPLITS}
    for u in utterances:
        out[split_of(u.speaker)].append(u)
    return out


def background_files(data_dir: str | Path) -> list[Path]:
    """Real background recordings (no speech): ``noise/*`` and Speech Commands ``_silence_``.

    Parameters
    ----------
    data_dir : path
        The shared data folder (holding ``noise/`` and ``kws/``).
    """
    root = Path(data_dir)
    files = _audio_files(root / "noise") if (root / "noise").is_dir() else []
    sil = root / "kws" / "speech_commands_test" / "_silence_"
    if sil.is_dir():
        files += _audio_files(sil)
    return files


NOISE_SPLITS = {"train": (0.0, 0.7), "val": (0.7, 0.8), "test": (0.8, 1.0)}


def load_machine_noise(data_dir: str | Path, sample_rate: int = 16000) -> list[np.ndarray]:
    """Every machine recording under ``asd/`` (MIMII, DCASE: fans, pumps, sliders, valves,
    toy cars and conveyors, gearboxes, bearings; normal and anomalous) as noise for keyword
    training: the sound a node hears around speech, and none of the noise types of the
    keyword evaluation's streams (``noise/``).

    Returns
    -------
    list of np.ndarray, float32, mono at ``sample_rate``

    Raises
    ------
    FileNotFoundError
        No ``asd/`` folder or no recording in it.
    """
    return [load_audio(p, sample_rate) for p in machine_noise_files(data_dir)]


def machine_noise_files(data_dir: str | Path) -> list[Path]:
    """The files :func:`load_machine_noise` reads, sorted.

    Raises
    ------
    FileNotFoundError
        No ``asd/`` folder or no recording in it.
    """
    root = Path(data_dir) / "asd"
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES) \
        if root.is_dir() else []
    if not files:
        raise FileNotFoundError(f"no machine recordings under {root}")
    return files


def load_background(data_dir: str | Path, split: str, sample_rate: int = 16000):
    """Background waveforms of one split, disjoint between splits.

    ``noise/*`` recordings are cut in time (train: first 70 %, val: next 10 %, test: last
    20 %); Speech Commands ``_silence_`` clips are assigned by a hash of their name.

    Returns
    -------
    list of np.ndarray, float32, 16 kHz mono

    Raises
    ------
    ValueError
        Unknown split.
    """
    if split not in NOISE_SPLITS:
        raise ValueError(f"split must be one of {sorted(NOISE_SPLITS)}, got {split!r}")
    lo, hi = NOISE_SPLITS[split]
    out = []
    for p in background_files(data_dir):
        y = load_audio(p, sample_rate)
        if p.parent.name == "_silence_":
            if split_of(_stem(p)) == split:
                out.append(y)
        else:
            out.append(y[int(lo * len(y)):int(hi * len(y))])
    return out
