"""Keyword-spotting test streams and enrollment shots, built from real recordings.

Everything is built from real recordings (``../shared/data``, see its README):

**Test streams** (:func:`build_streams`). For a split (``"val"`` or ``"test"``, speaker-disjoint
by :func:`trainer.kws_data.speaker_split`) keyword utterances of that split's speakers and other
words of the same speakers (Speech Commands core words that are not enrolled, ``_unknown_``
words, a wake word that is not enrolled) are trimmed with :func:`edge.vad.speech_interval` (the
trimming enrollment uses), brought to the same level (RMS ``SPEECH_LEVEL_DBFS`` over the trimmed
utterance), and placed in random order with random gaps (``gap_seconds``) on a silent track;
keywords make up ``keyword_fraction`` of the items, balanced over the keywords. Ground truth is
exactly where each keyword utterance was placed: ``(keyword, onset_s, offset_s)``. Real
background noise (``noise/*.flac``) is added: the noise track is a cross-faded sequence of
random chunks (4-12 s, at most the split's range) of the noise files, each file scaled to unit
RMS over the time range the split may use: the ranges of :data:`trainer.kws_data.NOISE_SPLITS`
(train: first 70 % of every noise file, val: the next 10 %, test: the last 20 %), so val and
test never hear the same noise samples, nor the background the embedder was trained with.

**SNR** is ``10 log10(P_speech / P_noise)`` where both powers are mean squared sample values over
the union of the utterance regions (every placed word, keywords and others), speech from the
speech-only track and noise from the noise-only track, on the broadband 16 kHz signals. The
noise track is scaled to hit the requested SNR exactly; if the mix would clip, the whole stream
is scaled down (the SNR does not change). ``snr_db=inf`` gives clean streams.

**Enrollment shots** (:func:`enrollment_shots`): ``K`` shots per keyword from ``"train"``
speakers, preferring one speaker with at least ``K`` usable utterances of the word (a speaker
enrolling their own voice); otherwise one utterance from each of several speakers. The wake-word
recordings carry no speaker ids, so every file is its own "speaker" and wake-word shots always
come from several files (the same person may in principle appear in train and test there).

Contents
--------
EvalConfig
    Settings of one evaluation run.
kws_folder, check_noise, Clip, load_clip, available_words, check_keywords
    The data folder's recordings, trimmed utterances; checks with clear errors.
Placed, Stream, build_streams, stream_hours
    Test streams with exact ground truth (:class:`trainer.kws_metrics.Event`).
Shot, enrollment_shots
    Enrollment shots from train-split speakers.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
from tqdm import tqdm

from calibration.enroll import ShotError, locate_shot
from edge.audio import load_audio
from edge.vad import speech_interval
from trainer.kws_data import NOISE_SPLITS, list_words, machine_noise_files, speaker_split
from trainer.kws_metrics import Event

__all__ = [
    "SAMPLE_RATE", "DEFAULT_KEYWORDS", "NOISE_RANGES", "SPEECH_LEVEL_DBFS",
    "EvalConfig", "Clip", "Placed", "Stream", "Shot",
    "kws_folder", "load_clip", "available_words", "check_keywords", "check_noise", "build_streams",
    "mix_noise", "stream_hours",
    "enrollment_shots",
]

SAMPLE_RATE = 16000
#: The words the default embedder is trained without (trainer/configs/kws_default.yaml
#: ``exclude_words``): enrolling them measures keywords the model has never heard.
DEFAULT_KEYWORDS = ("alexa", "computer", "stop", "left")
#: Fraction of every noise file each split may use: the time ranges of
#: :data:`trainer.kws_data.NOISE_SPLITS`, so evaluation noise is disjoint between val and
#: test and from the background the embedder was trained with ("train"). Streams of the
#: train split are built only for a KWS bundle's generic negatives
#: (:mod:`trainer.kws_negatives`), with the machine recordings under ``asd/`` as their noise
#: instead of ``noise/``: none of the evaluation's noise types.
NOISE_RANGES: dict[str, tuple[float, float]] = dict(NOISE_SPLITS)
#: Every placed utterance is scaled to this RMS (dBFS) over its trimmed interval.
SPEECH_LEVEL_DBFS = -20.0
#: Trimmed utterances outside this duration range (s) are not used.
MIN_CLIP_S, MAX_CLIP_S = 0.2, 3.0
NOISE_CHUNK_S = (4.0, 12.0)
CROSSFADE_S = 0.05


# --------------------------------------------------------------------------- config


@dataclass(frozen=True)
class EvalConfig:
    """Settings of one evaluation run (all stored in the report).

    Parameters
    ----------
    keywords : tuple of str
        Enrolled keywords.
    shots : int
        Enrollment shots per keyword.
    snr_db : float
        Speech-to-noise ratio of the streams (module docstring); ``inf``: no noise.
    minutes_per_split : float
        Total stream length of the val and of the test split.
    stream_seconds : float
        Target length of one stream (the split's total is divided into equal streams).
    gap_seconds : (float, float)
        Uniform range of the pauses between utterances.
    keyword_fraction : float
        Probability that a placed utterance is a keyword (0: negative streams, none of the
        keywords).
    collar : float
        Onset collar (and minimum offset collar), seconds.
    offset_fraction : float
        Offset collar as a fraction of the reference duration (sed_eval's
        ``percentage_of_length``).
    fa_per_hour : float
        False-alarm rate at which the miss rate is reported.
    seed : int
        Seed of streams, shots and everything random.
    n_thresholds : int
        Thresholds of the coarse sweep (a finer one follows around the optimum).
    matching : str
        ``"optimal"`` (maximum bipartite matching) or ``"greedy"``.
    """

    keywords: tuple[str, ...] = DEFAULT_KEYWORDS
    shots: int = 5
    snr_db: float = 10.0
    minutes_per_split: float = 8.0
    stream_seconds: float = 90.0
    gap_seconds: tuple[float, float] = (0.3, 1.5)
    keyword_fraction: float = 0.4
    collar: float = 0.2
    offset_fraction: float = 0.5
    fa_per_hour: float = 1.0
    seed: int = 0
    n_thresholds: int = 24
    matching: str = "optimal"

    def __post_init__(self):
        if not self.keywords:
            raise ValueError("no keywords given")
        if len(set(self.keywords)) != len(self.keywords):
            raise ValueError(f"duplicate keywords in {list(self.keywords)}")
        if self.shots < 1:
            raise ValueError(f"shots must be >= 1, got {self.shots}")
        if not self.minutes_per_split > 0 or not self.stream_seconds > 0:
            raise ValueError("minutes_per_split and stream_seconds must be positive")
        lo, hi = self.gap_seconds
        if not 0 <= lo <= hi:
            raise ValueError(f"bad gap range {self.gap_seconds}")
        if not 0 <= self.keyword_fraction <= 1:
            raise ValueError(f"keyword_fraction must be in [0, 1] (0: streams without any "
                             f"keyword, the negatives), got {self.keyword_fraction}")
        if self.collar <= 0 or self.offset_fraction < 0:
            raise ValueError("collar must be positive and offset_fraction non-negative")
        if self.matching not in ("optimal", "greedy"):
            raise ValueError(f"matching must be 'optimal' or 'greedy', got {self.matching!r}")

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["keywords"] = list(self.keywords)
        d["gap_seconds"] = list(self.gap_seconds)
        d["snr_db"] = self.snr_db if math.isfinite(self.snr_db) else "inf"
        return d


# --------------------------------------------------------------------------- data


@dataclass(frozen=True)
class Clip:
    """A trimmed utterance.

    Attributes
    ----------
    word, speaker, path : str
    start_s, end_s : float
        The speech interval inside the source file.
    audio : np.ndarray, shape (n,), float32
        The trimmed samples (source level).
    """

    word: str
    speaker: str
    path: str
    start_s: float
    end_s: float
    audio: np.ndarray = field(repr=False)

    @property
    def duration_s(self) -> float:
        return len(self.audio) / SAMPLE_RATE


def _read_mono(path: str | Path) -> np.ndarray:
    return np.ascontiguousarray(load_audio(path, SAMPLE_RATE), dtype=np.float32)


def load_clip(utt) -> Clip | None:
    """Read one :class:`trainer.kws_data.Utterance` and trim it with ``speech_interval``.

    Returns
    -------
    Clip or None
        ``None`` when no speech is found or the trimmed duration is outside
        ``[MIN_CLIP_S, MAX_CLIP_S]``.
    """
    y = _read_mono(utt.path)
    iv = speech_interval(y, SAMPLE_RATE)
    if iv is None:
        return None
    seg = y[iv.slice(SAMPLE_RATE)]
    if not MIN_CLIP_S <= len(seg) / SAMPLE_RATE <= MAX_CLIP_S:
        return None
    if not np.any(seg):
        return None
    return Clip(utt.word, utt.speaker, str(utt.path), float(iv.start_s), float(iv.end_s),
                np.ascontiguousarray(seg, dtype=np.float32))


def kws_folder(data_dir: str | Path) -> Path:
    """The ``kws/`` folder of the data folder; ``FileNotFoundError`` naming what is missing."""
    d = Path(data_dir)
    if not d.is_dir():
        raise FileNotFoundError(f"data folder not found: {d} (pass --data or set HARK_DATA to "
                                "the shared data folder)")
    k = d / "kws"
    if not k.is_dir():
        raise FileNotFoundError(f"no kws/ folder in the data folder {d} (expected "
                                "kws/speech_commands_test and kws/wakeword, see its README)")
    return k


@lru_cache(maxsize=4)
def _utterances(data_dir: str):
    return tuple(list_words(kws_folder(Path(data_dir))))


def available_words(data_dir: str | Path) -> list[str]:
    """Every word with recordings in the data folder (keywords must be among these)."""
    return sorted({u.word for u in _utterances(str(Path(data_dir).resolve()))})


def check_keywords(data_dir: str | Path, keywords: Sequence[str], shots: int = 1) -> None:
    """Raise ``ValueError`` naming the available words for an unknown keyword, or when a
    keyword lacks enough train-split (enrollment) or val/test-split recordings."""
    words = available_words(data_dir)
    unknown = [k for k in keywords if k not in words]
    if unknown:
        raise ValueError(f"unknown keyword(s) {unknown}; available words: {', '.join(words)}")
    split = speaker_split(_utterances(str(Path(data_dir).resolve())))
    for kw in keywords:
        n = {s: sum(u.word == kw for u in split[s]) for s in split}
        if n["train"] < shots:
            raise ValueError(f"keyword {kw!r} has only {n['train']} train-split recordings, "
                             f"fewer than {shots} shots")
        for s in ("val", "test"):
            if n[s] == 0:
                raise ValueError(f"keyword {kw!r} has no {s}-split recordings")


@lru_cache(maxsize=4)
def _noise_sources(data_dir: str, machines: bool = False) -> tuple[tuple[str, np.ndarray], ...]:
    """``(name, waveform)`` of the noise recordings: ``noise/`` (the val and test splits'),
    or with ``machines`` every machine recording under ``asd/`` (the train split's)."""
    if machines:
        root = Path(data_dir) / "asd"
        return tuple((str(p.relative_to(root)), _read_mono(p))
                     for p in machine_noise_files(data_dir))
    d = Path(data_dir) / "noise"
    files = sorted(p for p in d.glob("*") if p.suffix.lower() in (".flac", ".wav")) if d.is_dir() else []
    if not files:
        raise FileNotFoundError(f"no background recordings in {d} (noise/*.flac)")
    return tuple((p.name, _read_mono(p)) for p in files)


def check_noise(data_dir: str | Path) -> None:
    """Raise ``FileNotFoundError`` when the data folder has no ``noise/*.flac`` (or ``.wav``).

    The recordings are read once and cached for :func:`build_streams`.
    """
    _noise_sources(str(Path(data_dir).resolve()))


def _split_range(n: int, split: str) -> tuple[int, int]:
    lo, hi = NOISE_RANGES[split]
    return int(lo * n), int(hi * n)


def _noise_track(n: int, data_dir: Path, split: str, rng: np.random.Generator):
    """Cross-faded random chunks of the split's part of the noise files, each file at unit RMS
    over that part. Returns (track (n,) float32, chunk list)."""
    sources = _noise_sources(str(data_dir), split == "train")
    xf = int(CROSSFADE_S * SAMPLE_RATE)
    fade_in = np.sin(0.5 * np.pi * (np.arange(xf) + 0.5) / xf).astype(np.float32)
    fade_out = np.cos(0.5 * np.pi * (np.arange(xf) + 0.5) / xf).astype(np.float32)
    pieces, chunks, total = [], [], 0
    while total < n + xf:
        k = int(rng.integers(len(sources)))
        name, y = sources[k]
        a, b = _split_range(len(y), split)
        rms = float(np.sqrt(np.mean(y[a:b].astype(np.float64) ** 2))) or 1.0
        length = min(b - a, int(rng.uniform(*NOISE_CHUNK_S) * SAMPLE_RATE))
        start = int(rng.integers(a, b - length + 1))
        pieces.append(y[start:start + length] / rms)
        chunks.append({"file": name, "start_s": start / SAMPLE_RATE,
                       "end_s": (start + length) / SAMPLE_RATE})
        total += length - xf
    out = pieces[0].copy()
    for p in pieces[1:]:
        out[-xf:] = out[-xf:] * fade_out + p[:xf] * fade_in
        out = np.concatenate([out, p[xf:]])
    return out[:n].astype(np.float32), chunks


@dataclass(frozen=True)
class Placed:
    """An utterance placed in a stream."""

    word: str
    speaker: str
    path: str
    onset_s: float
    offset_s: float
    is_keyword: bool


@dataclass
class Stream:
    """A test stream with exact ground truth.

    Attributes
    ----------
    name, split : str
    audio : np.ndarray, shape (n,), float32
        The mix, 16 kHz.
    reused : int
        Placements of a recording already placed before in this split (the split's pool of
        recordings ran out).
    events : list of Event
        Keyword ground truth, sorted by onset.
    placed : list of Placed
        Every utterance in the stream (keywords and other words).
    noise_chunks : list of dict
        The noise pieces used (file, start_s, end_s).
    snr_db : float
        SNR achieved (module docstring).
    speech, noise : np.ndarray or None
        The two components (``audio == speech + noise``) when built with ``keep_tracks``.
    """

    name: str
    split: str
    audio: np.ndarray = field(repr=False)
    events: list[Event]
    placed: list[Placed]
    noise_chunks: list[dict]
    snr_db: float
    speech: np.ndarray | None = field(default=None, repr=False)
    noise: np.ndarray | None = field(default=None, repr=False)

    reused: int = 0

    @property
    def duration_s(self) -> float:
        return len(self.audio) / SAMPLE_RATE

    def summary(self) -> dict[str, Any]:
        return {"name": self.name, "split": self.split, "duration_s": round(self.duration_s, 3),
                "keywords": len(self.events), "other_words": sum(not p.is_keyword for p in self.placed),
                "speakers": len({p.speaker for p in self.placed}),
                "snr_db": round(self.snr_db, 3) if math.isfinite(self.snr_db) else "inf",
                "repeated_recordings": self.reused, "noise_chunks": self.noise_chunks}


class _Pool:
    """Shuffled utterances consumed in order, reshuffled when exhausted; trims lazily."""

    def __init__(self, utts, rng):
        self.utts, self.rng = list(utts), rng
        self.order: list[int] = []
        self.reuses = 0
        self.draws = 0
        self.bad: set[int] = set()
        self._cache: dict[int, Clip] = {}

    def next(self) -> Clip:
        for _ in range(2 * len(self.utts) + 1):
            if not self.order:
                if self._cache or self.bad:
                    self.reuses += 1
                self.order = [int(i) for i in self.rng.permutation(len(self.utts))]
            i = self.order.pop()
            if i in self.bad:
                continue
            if i not in self._cache:
                clip = load_clip(self.utts[i])
                if clip is None:
                    self.bad.add(i)
                    continue
                self._cache[i] = clip
            self.draws += 1
            return self._cache[i]
        raise ValueError(f"no usable recording among {len(self.utts)} "
                         f"(e.g. {self.utts[0].path if self.utts else '-'})")


def _seed(cfg_seed: int, *parts) -> np.random.Generator:
    ints = [int(cfg_seed)] + [int.from_bytes(str(p).encode(), "little") % (2 ** 32) for p in parts]
    return np.random.default_rng(ints)


def build_streams(data_dir: str | Path, split: str, cfg: EvalConfig, *,
                  exclude_speakers: Iterable[str] = (), keep_tracks: bool = False,
                  progress: bool = False) -> list[Stream]:
    """Test streams of one split (module docstring); deterministic given ``cfg.seed``.

    Parameters
    ----------
    data_dir : path
        The shared data folder (``kws/``, ``noise/``).
    split : {"val", "test", "train"}
        ``train`` only for a bundle's generic negatives (train-split speakers).
    cfg : EvalConfig
        Keywords, SNR, total length, stream length, gaps, keyword fraction, seed.
    exclude_speakers : iterable of str
        Never used in the streams (the enrollment speakers).
    keep_tracks : bool
        Keep the speech-only and noise-only tracks on each stream (for checks).

    Returns
    -------
    list of Stream
        ``ceil(minutes_per_split * 60 / stream_seconds)`` streams of equal length.
    """
    if split not in NOISE_RANGES:
        raise ValueError(f"split must be one of {sorted(NOISE_RANGES)}, got {split!r}")
    data_dir = Path(data_dir).resolve()
    check_keywords(data_dir, cfg.keywords)
    excluded = set(exclude_speakers)
    utts = [u for u in speaker_split(_utterances(str(data_dir)))[split] if u.speaker not in excluded]
    kws = list(cfg.keywords)
    rng = _seed(cfg.seed, "streams", split)
    pools = {kw: _Pool([u for u in utts if u.word == kw], rng) for kw in kws}
    others = [u for u in utts if u.word not in kws]
    if not others:
        raise ValueError(f"no non-keyword words in the {split} split")
    other_pool = _Pool(others, rng)
    total = cfg.minutes_per_split * 60.0
    n_streams = max(1, math.ceil(total / cfg.stream_seconds - 1e-9))
    n = int(round(total / n_streams * SAMPLE_RATE))
    target = 10 ** (SPEECH_LEVEL_DBFS / 20)
    used = {kw: 0 for kw in kws}
    seen_paths: set[str] = set()
    streams = []
    for si in tqdm(range(n_streams), desc=f"{split} streams", disable=not progress, leave=False):
        speech = np.zeros(n, np.float32)
        mask = np.zeros(n, bool)
        placed: list[Placed] = []
        t = float(rng.uniform(*cfg.gap_seconds))
        while True:
            is_kw = bool(rng.random() < cfg.keyword_fraction)
            if is_kw:
                least = min(used.values())
                cands = [k for k in kws if used[k] == least]
                kw = cands[int(rng.integers(len(cands)))]
                clip = pools[kw].next()
            else:
                clip = other_pool.next()
            a = int(round(t * SAMPLE_RATE))
            if a + len(clip.audio) > n - int(cfg.gap_seconds[0] * SAMPLE_RATE):
                break
            if is_kw:
                used[kw] += 1
            x = clip.audio.astype(np.float64)
            gain = target / max(float(np.sqrt(np.mean(x ** 2))), 1e-9)
            speech[a:a + len(x)] = (x * gain).astype(np.float32)
            mask[a:a + len(x)] = True
            placed.append(Placed(clip.word, clip.speaker, clip.path, a / SAMPLE_RATE,
                                 (a + len(x)) / SAMPLE_RATE, is_kw))
            t = (a + len(x)) / SAMPLE_RATE + float(rng.uniform(*cfg.gap_seconds))
        mix, speech, noise, chunks, snr = mix_noise(speech, mask, data_dir, split,
                                                    cfg.snr_db, rng)
        events = [Event(p.word, p.onset_s, p.offset_s) for p in placed if p.is_keyword]
        reused = 0  # placements of a recording already used in this split
        for p in placed:
            reused += p.path in seen_paths
            seen_paths.add(p.path)
        streams.append(Stream(f"{split}{si:02d}", split, mix.astype(np.float32), events, placed,
                              chunks, snr, speech if keep_tracks else None,
                              noise if keep_tracks else None,
                              reused=reused))
    return streams


def mix_noise(speech: np.ndarray, mask: np.ndarray, data_dir: Path, split: str,
              snr_db: float, rng: np.random.Generator):
    """Add the split's real noise to a speech track at ``snr_db`` (module docstring).

    Parameters
    ----------
    speech : np.ndarray, shape (n,), float32
        The speech-only track.
    mask : np.ndarray, shape (n,), bool
        Where speech was placed (the SNR's region); without any, the noise gets the level it
        would have next to speech at ``SPEECH_LEVEL_DBFS``.
    data_dir : Path
    split : {"val", "test", "train"}
        Which part of every noise file may be used; ``train`` mixes the machine recordings
        under ``asd/`` instead of ``noise/``.
    snr_db : float
        ``inf``: no noise.
    rng : np.random.Generator

    Returns
    -------
    mix, speech, noise : np.ndarray, shape (n,), float32
        ``mix == speech + noise``, all scaled down together if the mix would clip.
    chunks : list of dict
        The noise pieces used.
    snr : float
        The SNR achieved (``inf`` without noise or speech).
    """
    n = len(speech)
    target = 10 ** (SPEECH_LEVEL_DBFS / 20)
    if math.isfinite(snr_db):
        noise, chunks = _noise_track(n, data_dir, split, rng)
        p_s = float(np.mean(speech[mask].astype(np.float64) ** 2)) if mask.any() else target ** 2
        p_n = float(np.mean(noise[mask].astype(np.float64) ** 2)) if mask.any() else \
            float(np.mean(noise.astype(np.float64) ** 2))
        noise *= np.float32(np.sqrt(p_s / (max(p_n, 1e-20) * 10 ** (snr_db / 10))))
    else:
        noise, chunks = np.zeros(n, np.float32), []
    mix = speech + noise
    peak = float(np.max(np.abs(mix))) if n else 0.0
    if peak > 0.99:
        g = np.float32(0.99 / peak)
        speech, noise, mix = speech * g, noise * g, mix * g
    if mask.any() and math.isfinite(snr_db):
        snr = 10 * math.log10(np.mean(speech[mask].astype(np.float64) ** 2)
                              / max(np.mean(noise[mask].astype(np.float64) ** 2), 1e-30))
    else:
        snr = math.inf
    return mix, speech, noise, chunks, snr


def stream_hours(streams: Sequence[Stream]) -> float:
    """Total length of ``streams`` in hours (the denominator of every FA/h)."""
    return sum(s.duration_s for s in streams) / 3600.0


@dataclass(frozen=True)
class Shot:
    """An enrollment shot: a trimmed train-split recording of a keyword."""

    keyword: str
    speaker: str
    path: str
    start_s: float
    end_s: float
    audio: np.ndarray = field(repr=False)

    def to_dict(self, root: Path | None = None) -> dict[str, Any]:
        p = Path(self.path)
        if root is not None:
            try:
                p = p.relative_to(root)
            except ValueError:
                pass
        return {"keyword": self.keyword, "speaker": self.speaker, "path": str(p),
                "start_s": round(self.start_s, 4), "end_s": round(self.end_s, 4)}


def _shot_clip(utt) -> Clip | None:
    """:func:`load_clip`, and None too when enrollment would reject the recording."""
    c = load_clip(utt)
    if c is None:
        return None
    try:
        locate_shot(load_audio(utt.path, SAMPLE_RATE), SAMPLE_RATE, min_seconds=0.2,
                    max_seconds=2.0, name=str(utt.path), source="file")
    except ShotError:
        return None
    return c


def enrollment_shots(data_dir: str | Path, keywords: Sequence[str], k: int = 5,
                     seed: int = 0) -> dict[str, list[Shot]]:
    """``k`` trimmed shots per keyword from train-split speakers (module docstring).

    One speaker with at least ``k`` usable recordings of the word is preferred (picked at
    random among those); otherwise the shots come one each from several speakers. A usable
    recording is one enrollment accepts with the node's default limits (0.2-2.0 s of speech,
    not clipped): a user whose shot is rejected says it again.

    Raises
    ------
    ValueError
        Unknown keyword, or fewer than ``k`` usable train recordings.
    """
    data_dir = Path(data_dir).resolve()
    check_keywords(data_dir, keywords, k)
    train = speaker_split(_utterances(str(data_dir)))["train"]
    out: dict[str, list[Shot]] = {}
    for kw in keywords:
        rng = _seed(seed, "shots", kw)
        by_spk: dict[str, list] = {}
        for u in train:
            if u.word == kw:
                by_spk.setdefault(u.speaker, []).append(u)
        spks = sorted(by_spk)
        order = [spks[i] for i in rng.permutation(len(spks))]
        shots: list[Shot] = []
        for spk in [s for s in order if len(by_spk[s]) >= k]:  # one speaker if possible
            clips = []
            for i in rng.permutation(len(by_spk[spk])):
                c = _shot_clip(by_spk[spk][int(i)])
                if c is not None:
                    clips.append(c)
                if len(clips) == k:
                    break
            if len(clips) == k:
                shots = [Shot(kw, c.speaker, c.path, c.start_s, c.end_s, c.audio) for c in clips]
                break
        if not shots:  # several speakers, round robin
            queues = {s: [by_spk[s][int(i)] for i in rng.permutation(len(by_spk[s]))] for s in order}
            while len(shots) < k and any(queues.values()):
                for s in order:
                    if queues[s] and len(shots) < k:
                        c = _shot_clip(queues[s].pop(0))
                        if c is not None:
                            shots.append(Shot(kw, c.speaker, c.path, c.start_s, c.end_s, c.audio))
        if len(shots) < k:
            raise ValueError(f"keyword {kw!r}: only {len(shots)} usable train recordings "
                             f"for {k} shots")
        out[kw] = shots
    return out
