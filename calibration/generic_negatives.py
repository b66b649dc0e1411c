"""A KWS bundle's generic negatives: an hour of speech and noise, embedded, shipped with it.

A keyword's decision threshold for a false-alarm rate such as one per hour is set by the
keyword's few most keyword-like events in hours of ordinary audio. The site's own background
(``python -m calibration background``) shows them best (source ``"site-fit"``), but a node is
enrolled before anyone records an hour of it. The bundle's threshold table is one value for
every keyword (:func:`calibration.keyword_thresholds.calibrated_threshold`), and on the
wake-word evaluation the keywords' own thresholds for 1 false alarm per hour lie far apart
in the normalised units ("smart mirror" about -2.2, "alexa" and "view glass" about -3.1), so
the table finds too few of some keywords and lets others raise several false alarms per hour.

So a speech_embedding bundle ships the frame embeddings of one hour of generic negative audio
(``<bundle>_negatives.npz``, written by ``python -m trainer build-kws-negatives``,
:mod:`trainer.kws_negatives`): other words of Speech Commands' train-split speakers, espeak-ng
sentences and noise alone, mixed with machine recordings, as the evaluation builds its test
negatives from the test split and household noise. Enrollment fits each keyword's
threshold on it with the same lower-tail fit as on a site recording
(:func:`calibration.keyword_thresholds.tail_fit_threshold`, source ``"generic-fit"``). Every
utterance that contains one of the keyword's words is cut out with the frames that hear it
(:meth:`GenericNegatives.without`), so a keyword is never counted against itself. Nothing of
the wake-word recordings (the evaluation's keywords), its speakers or its test recordings is
in it.

One hour of machine noise and train-split speech is not the audio a node will hear, and a
threshold fitted on it does not give the same rate elsewhere: on the wake-word evaluation the
fits for 1 false alarm per hour gave 0.49 per hour. So ``python -m trainer
calibrate-kws-thresholds`` measures, on its hours of val-split negatives and calibration
keywords (none of them an evaluation keyword, speaker or recording), how much more the fit
must ask of this hour to give the target there, and stores that factor in the entry
(``rate_factor``; :func:`trainer.kws_thresholds.generic_rate_factor`). Enrollment asks the
fit for ``rate_factor`` times the configured rate (:attr:`GenericNegatives.rate_factor`).
Rebuilding the hour drops the factor (1 until it is measured again). For the shipped bundle
it is 1.30, and on the evaluation's nine draws the fits then gave 0.72 false alarms per hour
where 1 was asked (README, "The generic fit asks for the rate it was measured to need").

File format (``numpy.savez_compressed``, no pickles): ``frames`` int8 ``(n_frames, D)``, each
frame a unit vector times 127 (the DTW compares frames by cosine, so the length is not
needed); ``lengths`` int64 ``(S,)``, frames per stream; ``frame_seconds`` float64, the frame
step; per utterance placed in a stream, ``utt_stream`` int64, ``utt_text`` str (the word or
sentence, lower case), ``utt_onset_s`` and ``utt_offset_s`` float64. The bundle's metadata
key ``generic_negatives`` names the file with its SHA-256 and the model (``tflite_sha256``)
and standardisation (``normalisation_sha256``) it was embedded with, and optionally the
measured ``rate_factor`` (a positive number).
"""
from __future__ import annotations

import functools
import hashlib
import io
import json
import math
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from edge.model import ModelError
from firmware_config.fileio import atomic_write_bytes, sha256_file

__all__ = ["METADATA_KEY", "EXCLUSION_MARGIN_S", "WINDOW_SECONDS", "GenericNegatives",
           "keyword_words", "normalisation_sha256", "quantise_frames", "write_generic_negatives",
           "load_generic_negatives"]

#: The bundle metadata key that names the file.
METADATA_KEY = "generic_negatives"


def keyword_words(keyword: str) -> list[str]:
    """The lower-case words of a keyword name (``"smart_mirror"`` -> ``["smart", "mirror"]``)."""
    return [w for w in re.split(r"[\s_\-]+", keyword.lower()) if w]


def _word_finder(keyword: str):
    """``text -> bool``: whether a lower-case text holds one of the keyword's words; words of
    four letters or more count inside longer words too ("computers"), shorter ones only whole
    ("hi" not in "this")."""
    pats = [re.escape(w) if len(w) >= 4 else rf"\b{re.escape(w)}\b" for w in keyword_words(keyword)]
    rx = re.compile("|".join(pats)) if pats else None
    return lambda text: bool(rx and rx.search(text))


def normalisation_sha256(metadata: dict[str, Any]) -> str:
    """SHA-256 of the bundle's ``normalisation`` (frames change with it)."""
    return hashlib.sha256(json.dumps(metadata.get("normalisation"), sort_keys=True)
                          .encode()).hexdigest()


def quantise_frames(frames: np.ndarray) -> np.ndarray:
    """Frames as stored: unit rows times 127, rounded to int8.

    Parameters
    ----------
    frames : np.ndarray, shape (n, D), float

    Returns
    -------
    np.ndarray, shape (n, D), int8
    """
    x = np.asarray(frames, np.float64)
    x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    return np.clip(np.round(x * 127.0), -127, 127).astype(np.int8)


#: Seconds around an excluded utterance whose frames are cut too (an embedding window hears
#: 0.78 s of audio from its frame's start).
EXCLUSION_MARGIN_S = 0.5
#: Audio an embedding frame hears (speech_embedding: 76 mel frames of 10 ms; a TACos bundle's
#: frames hear less, so its cuts are wider than needed).
WINDOW_SECONDS = 0.78


@dataclass(frozen=True)
class GenericNegatives:
    """The generic negative audio of a bundle, as enrollment uses it.

    Attributes
    ----------
    frames : list of np.ndarray, each (n_s, D), float32
        Each stream's frames (unit rows); frame ``j`` starts at ``j * frame_seconds``.
    frame_seconds : float
    utterances : list of (int, str, float, float)
        ``(stream, text, onset_s, offset_s)`` of every word or sentence placed in a stream.
    rate_factor : float
        What the threshold fit on this hour asks for, per false alarm per hour the node is
        configured for (module docstring; 1 when not measured).
    """

    frames: list
    frame_seconds: float
    utterances: list
    rate_factor: float = 1.0

    @property
    def hours(self) -> float:
        return sum(len(f) for f in self.frames) * self.frame_seconds / 3600.0

    def without(self, keyword: str) -> tuple[list[np.ndarray], float]:
        """The audio without ``keyword``: the frames of every utterance holding one of its
        words (one of four letters or more also inside a longer word, as
        :func:`trainer.kws_tts.dictionary_words` excludes words), widened by
        :data:`EXCLUSION_MARGIN_S` and by the embedding window (:data:`WINDOW_SECONDS`), are
        cut out; a stream is split where they were.

        Returns
        -------
        pieces : list of np.ndarray, each (n, D), float32
            At least 2 frames each.
        hours : float
            Their duration.
        """
        found = _word_finder(keyword)
        fs = self.frame_seconds
        cut = [np.zeros(len(f), bool) for f in self.frames]
        for stream, text, onset, offset in self.utterances:
            if found(text):
                a = max(0, int(np.floor((onset - EXCLUSION_MARGIN_S - WINDOW_SECONDS) / fs)))
                b = int(np.ceil((offset + EXCLUSION_MARGIN_S) / fs))
                cut[stream][a:b] = True
        pieces = []
        for f, c in zip(self.frames, cut):
            edges = np.flatnonzero(np.diff(np.concatenate([[1], c.astype(np.int8), [1]])))
            pieces += [f[a:b] for a, b in zip(edges[::2], edges[1::2]) if b - a >= 2]
        return pieces, sum(len(p) for p in pieces) * fs / 3600.0


def write_generic_negatives(path: str | Path, frames: Sequence[np.ndarray], frame_seconds: float,
                            utterances: Sequence[tuple[int, str, float, float]]) -> str:
    """Write the file atomically (module docstring) and return its SHA-256.

    Parameters
    ----------
    path : str or Path
    frames : list of np.ndarray, each (n_s, D), float
        Each stream's frame embeddings, as the bundle's ``embed_wave`` gives them.
    frame_seconds : float
        The bundle's frame step.
    utterances : list of (int, str, float, float)
        ``(stream, text, onset_s, offset_s)`` of every word or sentence in the streams.

    Raises
    ------
    ValueError
        No stream, frames of different widths, or an utterance of a stream that is not there.
    """
    if not frames or len({np.asarray(f).shape[1] for f in frames}) != 1:
        raise ValueError("need at least one stream, all of one frame width")
    if any(not 0 <= int(u[0]) < len(frames) for u in utterances):
        raise ValueError(f"utterances must name streams 0..{len(frames) - 1}")
    buf = io.BytesIO()
    np.savez_compressed(buf, frames=quantise_frames(np.concatenate(frames)),
                        lengths=np.asarray([len(f) for f in frames], np.int64),
                        frame_seconds=np.float64(frame_seconds),
                        utt_stream=np.asarray([int(u[0]) for u in utterances], np.int64),
                        utt_text=np.asarray([str(u[1]).lower() for u in utterances], dtype=str),
                        utt_onset_s=np.asarray([float(u[2]) for u in utterances], np.float64),
                        utt_offset_s=np.asarray([float(u[3]) for u in utterances], np.float64))
    atomic_write_bytes(path, buf.getvalue())
    return sha256_file(path)


@functools.lru_cache(maxsize=2)
def _read(path: str, sha256: str, width: int) -> GenericNegatives:
    p = Path(path)
    if not p.is_file():
        raise ModelError(f"the bundle's generic negatives {p} are missing (rebuild them: "
                         f"python -m trainer build-kws-negatives --model <bundle>.tflite)")
    digest = sha256_file(p)
    if digest != sha256:
        raise ModelError(f"generic negatives {p}: sha256 {digest[:12]}… does not match the "
                         f"bundle's metadata ({sha256[:12]}…)")
    try:
        with np.load(p, allow_pickle=False) as z:
            q, lengths = z["frames"], z["lengths"].astype(np.int64)
            fs = float(z["frame_seconds"])
            utts = list(zip(z["utt_stream"].astype(np.int64).tolist(),
                            [str(t) for t in z["utt_text"]],
                            z["utt_onset_s"].astype(np.float64).tolist(),
                            z["utt_offset_s"].astype(np.float64).tolist(), strict=True))
    except (OSError, KeyError, ValueError) as exc:
        raise ModelError(f"generic negatives {p}: not a negatives file ({exc})") from None
    if q.ndim != 2 or q.shape[1] != width or q.dtype != np.int8 or \
            int(lengths.sum()) != len(q) or np.any(lengths < 1) or not fs > 0 or \
            any(not 0 <= u[0] < len(lengths) for u in utts):
        raise ModelError(f"generic negatives {p}: frames {q.shape} {q.dtype}, "
                         f"{len(lengths)} streams; expected int8 frames of width {width} "
                         "split into streams, a frame step > 0 and utterances of those streams")
    x = q.astype(np.float32) / 127.0
    return GenericNegatives(np.split(x, np.cumsum(lengths)[:-1]), fs, utts)


def load_generic_negatives(embedder) -> GenericNegatives | None:
    """The bundle's generic negatives, or None when its metadata names none.

    Parameters
    ----------
    embedder : edge.speech_embedding.SpeechEmbedder or edge.model.KwsEmbedder
        A loaded KWS bundle (``path``, ``metadata``, ``sha256``, ``embedding_dim``).

    Returns
    -------
    GenericNegatives or None
        Read once per file (cached).

    Raises
    ------
    edge.model.ModelError
        The entry is malformed (or its ``rate_factor`` is not a positive number), the file
        is missing, altered or not a negatives file, or it was embedded with another model or
        standardisation than the bundle's.
    """
    entry = embedder.metadata.get(METADATA_KEY)
    if not entry:
        return None
    meta_path = Path(embedder.path).with_suffix(".json")
    if not isinstance(entry, dict) or not all(isinstance(entry.get(k), str) for k in
                                              ("file", "sha256", "tflite_sha256",
                                               "normalisation_sha256")):
        raise ModelError(f"model metadata {meta_path}: {METADATA_KEY} must name file, sha256, "
                         f"tflite_sha256 and normalisation_sha256, got {entry!r}")
    if entry["tflite_sha256"] != embedder.sha256 or \
            entry["normalisation_sha256"] != normalisation_sha256(embedder.metadata):
        raise ModelError(f"model metadata {meta_path}: its {METADATA_KEY} were embedded with "
                         "another model or standardisation (rebuild them: python -m trainer "
                         f"build-kws-negatives --model {embedder.path})")
    factor = entry.get("rate_factor", 1.0)
    if isinstance(factor, bool) or not isinstance(factor, (int, float)) or \
            not (math.isfinite(factor) and factor > 0):
        raise ModelError(f"model metadata {meta_path}: {METADATA_KEY}.rate_factor must be a "
                         f"positive number, got {factor!r}")
    g = _read(str(Path(embedder.path).parent / entry["file"]), entry["sha256"],
              int(embedder.embedding_dim))
    return replace(g, rate_factor=float(factor))
