"""The keyword-spotting (TACos) frontend, shared by the trainer and the node.

The KWS frontend (thesis Section 6.3.4, line 2097ff): 16 kHz, high-pass at 50 Hz, log-Mel
spectrogram with 64 bands, Hann window 1024, hop 256 (one frame per 16 ms), segments of
T = 16 frames (0.25 s). The node computes the log-Mel frames of the stream once and
slices segments out of them (:class:`KwsStreamFrontend` gives exactly the frames of
:func:`kws_logmel` on the whole recording), so training and streaming inference share
every step. Peak normalisation (the thesis divides each recording by its maximum) is done
per segment in the log domain, because a stream has no known maximum: each segment's
log-Mel values are shifted so that its loudest bin is at 0 dB, with a floor
(:attr:`KwsFrontendParams.floor_db`) so that near-silence is not amplified to full scale,
and clipped ``top_db`` below. See :func:`kws_segments`.

The pretrained speech_embedding bundle brings its own mel model
(:mod:`edge.speech_embedding`); this frontend serves the log-Mel TACos bundles.
"""
from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass
from typing import Any

import numpy as np

from edge.frontend import as_mono, frame_signal, mel_filterbank, params_from_dict
from edge.jit import load_numba

__all__ = [
    "KwsFrontendParams",
    "highpass_coefficients",
    "highpass",
    "kws_logmel",
    "kws_segments",
    "KwsStreamFrontend",
    "segment_starts",
]


@dataclass(frozen=True)
class KwsFrontendParams:
    """Parameters of the KWS frontend; stored in every KWS model bundle's metadata.

    Parameters
    ----------
    sample_rate : int
        Hz (16000).
    n_fft, hop_length : int
        STFT Hann window and hop in samples (1024, 256: one frame per 16 ms). Frames are
        centred: frame ``j`` is centred on sample ``j * hop_length``.
    n_mels : int
        Mel bands (64), Slaney mel scale, triangles of peak 1, ``fmin`` to ``fmax`` Hz.
    fmin, fmax : float
        Band edges of the mel filterbank in Hz.
    highpass_hz : float
        Cut-off of the 2nd-order Butterworth high-pass applied to the waveform (50 Hz).
    segment_frames : int
        Frames per segment, ``T`` of Table 30 (16 frames = 0.25 s).
    floor_db : float
        Loudest level a segment is normalised from: segments whose loudest bin is below
        this (dB re a full-scale sine) are shifted as if it were this loud (-60).
    top_db : float
        Dynamic range kept below a segment's loudest bin (80 dB).
    """

    sample_rate: int = 16000
    n_fft: int = 1024
    hop_length: int = 256
    n_mels: int = 64
    fmin: float = 0.0
    fmax: float = 8000.0
    highpass_hz: float = 50.0
    segment_frames: int = 16
    floor_db: float = -60.0
    top_db: float = 80.0

    @property
    def frame_seconds(self) -> float:
        """Seconds between frames (0.016)."""
        return self.hop_length / self.sample_rate

    @property
    def pad_frames(self) -> int:
        """Silent frames padded at each end of a recording so that segment centres align
        with every frame (thesis 6.3.4: half a segment): ``segment_frames // 2``."""
        return self.segment_frames // 2

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "KwsFrontendParams":
        """Parameters from bundle metadata; every field must be present."""
        return params_from_dict(cls, d, "KWS")


@functools.lru_cache(maxsize=8)
def highpass_coefficients(params: KwsFrontendParams) -> tuple[np.ndarray, np.ndarray]:
    """The 2nd-order Butterworth high-pass at ``highpass_hz`` as one biquad.

    Bilinear transform with pre-warping (Q = 1/sqrt(2)), the same filter as
    ``scipy.signal.butter(2, highpass_hz, "highpass", fs=sample_rate)`` (tested); written out
    so that the node does not load ``scipy.signal`` (about 70 MB of resident memory).

    Returns
    -------
    b, a : np.ndarray, shape (3,), float64, normalised so that ``a[0] == 1`` (cached: do
        not modify)
    """
    w0 = 2 * np.pi * params.highpass_hz / params.sample_rate
    alpha = np.sin(w0) / (2 * np.sqrt(0.5))
    c = np.cos(w0)
    b = np.array([(1 + c) / 2, -(1 + c), (1 + c) / 2])
    a = np.array([1 + alpha, -2 * c, 1 - alpha])
    return b / a[0], a / a[0]


_BIQUAD = None


def _biquad_kernel():
    """Numba kernel (compiled on first use): transposed direct form II, state in ``z``.

    Numba is imported here, not with the module: a node whose keyword bundle has its own
    frontend (:mod:`edge.speech_embedding`) never loads it (its LLVM is about 100 MB).
    """
    global _BIQUAD
    if _BIQUAD is None:
        numba = load_numba()

        @numba.njit(cache=True, nogil=True)
        def biquad(x, b, a, z):
            y = np.empty(x.shape[0], np.float64)
            z1, z2 = z[0], z[1]
            for i in range(x.shape[0]):
                xi = np.float64(x[i])
                yi = b[0] * xi + z1
                z1 = b[1] * xi - a[1] * yi + z2
                z2 = b[2] * xi - a[2] * yi
                y[i] = yi
            z[0], z[1] = z1, z2
            return y

        _BIQUAD = biquad
    return _BIQUAD


def highpass(y: np.ndarray, params: KwsFrontendParams = KwsFrontendParams(),
             state: np.ndarray | None = None) -> np.ndarray:
    """Apply the KWS high-pass (:func:`highpass_coefficients`) to a block of samples.

    Parameters
    ----------
    y : np.ndarray, shape (n_samples,), float
    state : np.ndarray, shape (2,), float64, optional
        Filter state carried between blocks (updated in place); ``None``: start at rest.

    Returns
    -------
    np.ndarray, shape (n_samples,), float32
    """
    b, a = highpass_coefficients(params)
    z = np.zeros(2) if state is None else state
    return _biquad_kernel()(np.ascontiguousarray(y, dtype=np.float32), b, a, z).astype(np.float32)


class _LogMel:
    """Window, filterbank and scaling for :func:`kws_logmel`, built once per params."""

    def __init__(self, params: KwsFrontendParams):
        self.params = params
        self.window = np.hanning(params.n_fft + 1)[:-1].astype(np.float32)
        self.fbank = mel_filterbank(params.sample_rate, params.n_fft, params.n_mels,
                                    params.fmin, params.fmax)
        # A full-scale sine reads 0 dB in its bin: |X| = sum(window) / 2.
        self.scale = (2.0 / self.window.sum()) ** 2

    def frames_to_db(self, frames: np.ndarray) -> np.ndarray:
        power = np.abs(np.fft.rfft(frames * self.window, axis=-1)) ** 2 * self.scale
        mel = power.astype(np.float32) @ self.fbank.T
        return (10.0 * np.log10(np.maximum(mel, 1e-10))).astype(np.float32)


@functools.lru_cache(maxsize=8)
def _logmel(params: KwsFrontendParams) -> _LogMel:
    return _LogMel(params)


def kws_logmel(y: np.ndarray, params: KwsFrontendParams = KwsFrontendParams()) -> np.ndarray:
    """Log-Mel frames of a whole recording (thesis 6.3.4).

    High-pass filter (zero initial state), zero-pad ``n_fft // 2`` samples at both ends
    (centred frames), Hann-windowed power STFT scaled so that a full-scale sine reads
    0 dB, mel filterbank, ``10 log10``.

    Parameters
    ----------
    y : np.ndarray, shape (n_samples,), float
        16 kHz mono waveform in [-1, 1].
    params : KwsFrontendParams

    Returns
    -------
    np.ndarray, shape (1 + n_samples // hop_length, n_mels), float32
        Frame ``j`` is centred on sample ``j * hop_length``; values in dB (>= -100).

    Raises
    ------
    ValueError
        If ``y`` is not 1-D.
    """
    y = highpass(as_mono(y, np.float32), params)
    half = params.n_fft // 2
    padded = np.pad(y, (half, half))
    frames = frame_signal(padded, params.n_fft, params.hop_length)
    return _logmel(params).frames_to_db(frames)


def segment_starts(n_frames: int, hop: int, params: KwsFrontendParams = KwsFrontendParams()) -> np.ndarray:
    """First frames of the segments covering ``n_frames`` frames with half a segment of
    silence padded at both ends (thesis 6.3.4): ``-pad, -pad + hop, ...`` up to the first
    segment that reaches the padded end.

    Returns
    -------
    np.ndarray, shape (n_segments,), int64 (starts may be negative)
    """
    T, pad = params.segment_frames, params.pad_frames
    k = int(np.ceil(max(n_frames + 2 * pad - T, 0) / hop))
    return -pad + hop * np.arange(k + 1)


def kws_segments(logmel: np.ndarray, starts, params: KwsFrontendParams = KwsFrontendParams()) -> np.ndarray:
    """Cut normalised model inputs out of log-Mel frames.

    Each segment is ``segment_frames`` consecutive frames; frames before 0 or past the
    end read as silence (-100 dB). Per-segment peak normalisation: the segment is
    shifted so that its loudest bin is at 0 dB (or by ``-floor_db`` if it is quieter
    than ``floor_db``) and clipped ``top_db`` below that.

    Parameters
    ----------
    logmel : np.ndarray, shape (n_frames, n_mels), float32
        From :func:`kws_logmel` or :class:`KwsStreamFrontend`.
    starts : array-like of int, shape (n_segments,)
        First frame of each segment (may be negative).

    Returns
    -------
    np.ndarray, shape (n_segments, segment_frames, n_mels), float32, values in [-top_db, 0]
        (or below 0 when the segment is quieter than ``floor_db``).
    """
    T = params.segment_frames
    starts = np.asarray(starts, dtype=np.int64).reshape(-1)
    if len(starts) == 0:
        return np.zeros((0, T, logmel.shape[1]), np.float32)
    lo, hi = min(0, int(starts.min())), max(len(logmel), int(starts.max()) + T)
    padded = np.full((hi - lo, logmel.shape[1]), -100.0, np.float32)
    padded[-lo:-lo + len(logmel)] = logmel
    idx = (starts - lo)[:, None] + np.arange(T)[None, :]
    seg = padded[idx]
    ref = np.maximum(seg.max(axis=(1, 2), keepdims=True), params.floor_db)
    return np.maximum(seg - ref, -params.top_db).astype(np.float32)


class KwsStreamFrontend:
    """Streaming log-Mel: feed audio blocks, get each frame as soon as its window is full.

    The concatenated output of :meth:`push` followed by :meth:`flush` equals
    :func:`kws_logmel` of the concatenated input (the high-pass keeps its state across
    blocks); frames are emitted ``n_fft // 2`` samples (32 ms) after their centre.

    Parameters
    ----------
    params : KwsFrontendParams
    """

    def __init__(self, params: KwsFrontendParams = KwsFrontendParams()):
        self.params = params
        self._zi = np.zeros(2)  # high-pass state
        self._buf = np.zeros(params.n_fft // 2, np.float32)  # left centring pad
        self._lm = _logmel(params)
        self.frames_emitted = 0
        self.samples_seen = 0

    def push(self, block: np.ndarray) -> np.ndarray:
        """Add samples; returns the newly complete frames, shape (k, n_mels), float32."""
        block = np.asarray(block, dtype=np.float32).reshape(-1)
        self.samples_seen += len(block)
        filtered = highpass(block, self.params, self._zi)
        self._buf = np.concatenate([self._buf, filtered])
        return self._drain()

    def flush(self) -> np.ndarray:
        """End of stream: pad the right centring zeros and return the remaining frames."""
        p = self.params
        self._buf = np.concatenate([self._buf, np.zeros(p.n_fft // 2, np.float32)])
        total = 1 + self.samples_seen // p.hop_length
        out = self._drain(limit=total - self.frames_emitted)
        self._buf = self._buf[:0]
        return out

    def _drain(self, limit: int | None = None) -> np.ndarray:
        p = self.params
        if len(self._buf) < p.n_fft:
            return np.zeros((0, p.n_mels), np.float32)
        frames = frame_signal(self._buf, p.n_fft, p.hop_length)
        if limit is not None:
            frames = frames[:max(limit, 0)]
        out = self._lm.frames_to_db(frames) if len(frames) else np.zeros((0, p.n_mels), np.float32)
        self.frames_emitted += len(out)
        self._buf = self._buf[len(out) * p.hop_length:]
        return out
