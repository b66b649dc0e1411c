"""The one feature frontend, shared by the trainer and the node.

Feature extraction runs in NumPy so that training and serving can never disagree, and
because FFT/STFT cannot be int8-quantized inside a TFLite graph. The TFLite embedders
therefore take features, not waveforms.

ASD frontend (thesis Section 5.3.1, Tables 14 and 15, ``001_bc66ac417165e5b3.txt``
line 1460ff):

* 16 kHz mono clips, padded or cut to a fixed length (10 s by default);
* (a) magnitude spectrogram, Hann window 1024, hop 512, no mel filterbank, no
  logarithm, with temporal mean normalisation (TMN): each frequency bin's temporal
  mean is subtracted;
* (b) magnitude of the DFT of the whole clip (the "spectrum"), optionally limited to a
  frequency band; raw as in Table 14 by default, or ``log(1 + |X|)``-compressed.

On int8: the raw DFT magnitude spans orders of magnitude, and a full-integer model
quantizes its input to 256 levels over the range seen in the representative data, so
small bins become zero. Measured on real clips (default recipe, seeds 0 and 1): the DFT
branch's int8-vs-float embedding cosine was 0.97 and 0.87 (min) with the raw input and
0.999 with ``log1p``, but ``log1p`` lost the level information that made MIMII fan
anomalies detectable (AUC 0.59 / 0.43 vs 0.975 / 0.63). The paper's raw input stays the
default; ``spectrum_compression="log1p"`` is there for models where int8 fidelity of
that branch matters more. ``spectrum_step`` instead puts the raw spectrum on the 256-level
grid the int8 model sees (97 % of a fan clip's bins fall on its lowest two steps), so the
float model trained on it and the int8 model on the node get the same values.

KWS frontend (thesis Section 6.3.4, line 2097ff): 16 kHz, high-pass at 50 Hz, log-Mel
spectrogram with 64 bands, Hann window 1024, hop 256 (one frame per 16 ms), segments of
T = 16 frames (0.25 s). The node computes the log-Mel frames of the stream once and
slices segments out of them (:class:`KwsStreamFrontend` gives exactly the frames of
:func:`kws_logmel` on the whole recording), so training and streaming inference share
every step. Peak normalisation (the thesis divides each recording by its maximum) is done
per segment in the log domain, because a stream has no known maximum: each segment's
log-Mel values are shifted so that its loudest bin is at 0 dB, with a floor
(:attr:`KwsFrontendParams.floor_db`) so that near-silence is not amplified to full scale,
and clipped ``top_db`` below. See :func:`kws_segments`.
"""
from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass
from typing import Any

import numpy as np

from edge.jit import load_numba

__all__ = [
    "AsdFrontendParams",
    "fix_length",
    "frame_signal",
    "magnitude_spectrogram",
    "temporal_mean_normalisation",
    "magnitude_spectrum",
    "asd_features",
    "spectrum_step_for",
    "KwsFrontendParams",
    "mel_filterbank",
    "highpass_coefficients",
    "highpass",
    "kws_logmel",
    "kws_segments",
    "KwsStreamFrontend",
    "segment_starts",
    "as_mono",
]


def _params_from_dict(cls, d: dict[str, Any], what: str):
    """Frontend parameters from bundle metadata; every field must be present (no silent
    defaults, so a model is never fed features it was not trained on)."""
    known = {f.name for f in dataclasses.fields(cls)}
    unknown, missing = set(d) - known, known - set(d)
    if unknown or missing:
        raise ValueError(f"{what} frontend parameters: unknown {sorted(unknown)}, "
                         f"missing {sorted(missing)}")
    return cls(**d)


@dataclass(frozen=True)
class AsdFrontendParams:
    """Parameters of the ASD frontend; stored in every model bundle's metadata.

    Parameters
    ----------
    sample_rate : int
        Sampling rate in Hz (16000).
    clip_seconds : float
        Length in seconds every clip is padded or cut to (10.0). The node's analysis
        window must have this length.
    n_fft : int
        STFT window length in samples (Hann window, 1024).
    hop_length : int
        STFT hop in samples (512).
    spectrum_fmin, spectrum_fmax : float or None
        Frequency band in Hz kept from the whole-clip DFT magnitude. ``None`` keeps
        everything from 0 Hz up to (excluding) the Nyquist bin, which for a 10 s clip
        gives the 80000 bins of Table 14.
    spectrum_compression : {"log1p", "none"}
        Applied to the DFT magnitude (see the module docstring for why).
    spectrum_step : float or None
        Quantisation step of the spectrum input: ``min(round(|X| / step), 255)``, the
        256-level grid an int8 model sees anyway, so the float model is trained on the
        same values the int8 model gets (see the module docstring). ``None``: raw values.
        A training recipe may say ``auto``: the largest training-clip spectrum value /
        255 (:func:`spectrum_step_for`).
    extra_n_ffts : tuple of int, default=()
        STFT window lengths in samples of additional spectrogram inputs (multi-resolution,
        Fujimura et al. 2025, ``../shared/papers/002_aace9358fd6fb51a.txt`` Section
        III-A1), e.g. ``(256, 4096)``. Each window ``n`` adds the model input
        ``"spectrogram_<n>"``: a TMN-normalised magnitude spectrogram like the main one, but
        with window ``n`` and hop ``n // 2`` (half its own window, not ``hop_length``), of
        shape ``(1 + (clip_samples - n) // (n // 2), n // 2 + 1)``, with its own branch in
        the model. Every ``n`` must lie in ``[16, clip_samples]`` and differ from
        ``n_fft``; values are converted to a tuple of int. Empty: the thesis' single
        spectrogram.
    """

    sample_rate: int = 16000
    clip_seconds: float = 10.0
    n_fft: int = 1024
    hop_length: int = 512
    spectrum_fmin: float | None = None
    spectrum_fmax: float | None = None
    spectrum_compression: str = "none"
    spectrum_step: float | None = None
    extra_n_ffts: tuple[int, ...] = ()

    def __post_init__(self):
        if self.spectrum_compression not in ("log1p", "none"):
            raise ValueError(f"spectrum_compression must be 'log1p' or 'none', "
                             f"got {self.spectrum_compression!r}")
        object.__setattr__(self, "extra_n_ffts", tuple(int(n) for n in self.extra_n_ffts))
        if self.spectrum_step is not None and not (isinstance(self.spectrum_step, (int, float))
                                                   and self.spectrum_step > 0):
            raise ValueError(f"spectrum_step must be a positive number or None, got "
                             f"{self.spectrum_step!r}")
        for n in self.extra_n_ffts:
            if not 16 <= n <= self.clip_samples or n == self.n_fft:
                raise ValueError(f"extra_n_ffts: {n} must lie in [16, clip samples] and differ "
                                 f"from n_fft ({self.n_fft})")

    @property
    def spectrogram_inputs(self) -> dict[str, tuple[int, int]]:
        """Spectrogram input names -> (n_fft, hop_length), the main one first."""
        out = {"spectrogram": (self.n_fft, self.hop_length)}
        for n in self.extra_n_ffts:
            out[f"spectrogram_{n}"] = (n, n // 2)
        return out

    @property
    def input_shapes(self) -> dict[str, tuple[int, ...]]:
        """Every model input's name -> unbatched shape, in model input order."""
        shapes = {name: (1 + (self.clip_samples - n) // hop, n // 2 + 1)
                  for name, (n, hop) in self.spectrogram_inputs.items()}
        shapes["spectrum"] = (self.spectrum_bins,)
        return shapes

    @property
    def clip_samples(self) -> int:
        """Clip length in samples."""
        return int(round(self.clip_seconds * self.sample_rate))

    @property
    def n_frames(self) -> int:
        """Number of STFT frames per clip (no centring/padding: 311 for 10 s)."""
        return 1 + (self.clip_samples - self.n_fft) // self.hop_length

    @property
    def n_bins(self) -> int:
        """Number of STFT frequency bins (``n_fft // 2 + 1``)."""
        return self.n_fft // 2 + 1

    @property
    def spectrum_slice(self) -> slice:
        """Slice of the whole-clip rFFT bins kept as the spectrum feature."""
        n = self.clip_samples
        hz_per_bin = self.sample_rate / n
        lo = 0 if self.spectrum_fmin is None else int(np.ceil(self.spectrum_fmin / hz_per_bin))
        hi = n // 2 if self.spectrum_fmax is None else int(np.floor(self.spectrum_fmax / hz_per_bin))
        hi = min(hi, n // 2)
        if not 0 <= lo < hi:
            raise ValueError(
                f"spectrum band [{self.spectrum_fmin}, {self.spectrum_fmax}] Hz is empty for "
                f"a {self.clip_seconds} s clip at {self.sample_rate} Hz"
            )
        return slice(lo, hi)

    @property
    def spectrum_bins(self) -> int:
        """Length of the spectrum feature."""
        s = self.spectrum_slice
        return s.stop - s.start

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "AsdFrontendParams":
        """Parameters from bundle metadata; every field must be present (no silent defaults,
        so a model is never fed features it was not trained on), except two: a missing
        ``extra_n_ffts`` reads as ``()`` (bundles older than that field had a single
        spectrogram) and a missing ``spectrum_step`` as ``None`` (a raw spectrum)."""
        d = dict(d)
        d.setdefault("extra_n_ffts", ())
        d.setdefault("spectrum_step", None)
        return _params_from_dict(cls, d, "ASD")


def as_mono(y, dtype=None) -> np.ndarray:
    """``y`` as a 1-D array (optionally cast to ``dtype``).

    Raises
    ------
    ValueError
        If ``y`` is not 1-D.
    """
    y = np.asarray(y, dtype=dtype)
    if y.ndim != 1:
        raise ValueError(f"expected a mono 1-D signal, got shape {y.shape}")
    return y


def fix_length(y: np.ndarray, n_samples: int) -> np.ndarray:
    """Pad with zeros or cut a 1-D signal to exactly ``n_samples`` samples.

    Parameters
    ----------
    y : np.ndarray, shape (n,)
        Signal.
    n_samples : int
        Target length in samples.

    Returns
    -------
    np.ndarray, shape (n_samples,), same dtype as ``y``
    """
    y = as_mono(y)
    if len(y) >= n_samples:
        return y[:n_samples]
    return np.pad(y, (0, n_samples - len(y)))


def frame_signal(y: np.ndarray, frame_length: int, hop_length: int) -> np.ndarray:
    """Split a signal into overlapping frames without copying (no centring, no padding).

    Parameters
    ----------
    y : np.ndarray, shape (..., n)
        Signal(s).
    frame_length, hop_length : int
        In samples.

    Returns
    -------
    np.ndarray, shape (..., n_frames, frame_length)
        A read-only strided view; ``n_frames = 1 + (n - frame_length) // hop_length``.

    Raises
    ------
    ValueError
        If the signal is shorter than one frame.
    """
    n = y.shape[-1]
    if n < frame_length:
        raise ValueError(f"signal of {n} samples is shorter than one frame ({frame_length})")
    windows = np.lib.stride_tricks.sliding_window_view(y, frame_length, axis=-1)
    return windows[..., ::hop_length, :]


def magnitude_spectrogram(y: np.ndarray, n_fft: int = 1024, hop_length: int = 512) -> np.ndarray:
    """Magnitude STFT with a periodic Hann window, frames not centred.

    Parameters
    ----------
    y : np.ndarray, shape (..., n_samples), float
        Waveform(s) in [-1, 1].
    n_fft, hop_length : int
        Window and hop in samples.

    Returns
    -------
    np.ndarray, shape (..., n_frames, n_fft // 2 + 1), float32
        ``|X[t, f]|``; frame ``t`` covers samples ``[t * hop, t * hop + n_fft)``.
        Equal to ``abs(scipy.signal.stft(y, window='hann', nperseg=n_fft,
        noverlap=n_fft - hop, boundary=None, padded=False, scaling=...))`` up to the
        scaling (SciPy divides by the window sum) and the axis order.
    """
    window = np.hanning(n_fft + 1)[:-1].astype(np.float32)  # periodic Hann
    frames = frame_signal(np.asarray(y, dtype=np.float32), n_fft, hop_length)
    return np.abs(np.fft.rfft(frames * window, axis=-1)).astype(np.float32)


def temporal_mean_normalisation(spec: np.ndarray) -> np.ndarray:
    """Subtract each frequency bin's temporal mean (TMN, thesis Section 5.3.1).

    Parameters
    ----------
    spec : np.ndarray, shape (..., n_frames, n_bins)

    Returns
    -------
    np.ndarray, same shape and dtype
    """
    return spec - spec.mean(axis=-2, keepdims=True)


def magnitude_spectrum(y: np.ndarray, band: slice | None = None) -> np.ndarray:
    """Magnitude of the DFT of the whole clip (thesis Table 14's input).

    Parameters
    ----------
    y : np.ndarray, shape (..., n_samples)
    band : slice, optional
        rFFT bins to keep (see :attr:`AsdFrontendParams.spectrum_slice`). Default:
        all bins below Nyquist, ``n_samples // 2`` of them.

    Returns
    -------
    np.ndarray, shape (..., n_kept_bins), float32
    """
    y = np.asarray(y, dtype=np.float32)
    if band is None:
        band = slice(0, y.shape[-1] // 2)
    return np.abs(np.fft.rfft(y, axis=-1)[..., band]).astype(np.float32)


def asd_features(y: np.ndarray, params: AsdFrontendParams = AsdFrontendParams()
                 ) -> dict[str, np.ndarray]:
    """Every ASD model input for one clip or a batch of clips.

    Parameters
    ----------
    y : np.ndarray, shape (n_samples,) or (batch, n_samples), float
        16 kHz mono waveform(s) in [-1, 1]. A 1-D signal is padded or cut to
        ``params.clip_samples``; a 2-D batch must already have that length.
    params : AsdFrontendParams

    Returns
    -------
    dict of str -> np.ndarray, float32, keys in model input order
        (:attr:`AsdFrontendParams.input_shapes`):

        * ``"spectrogram"``, shape ([batch,] n_frames, n_bins): TMN-normalised magnitude
          spectrogram (311 x 513 for 10 s);
        * ``"spectrogram_<n>"`` for each of ``params.extra_n_ffts``: the same with window
          ``n`` and hop ``n // 2`` (multi-resolution);
        * ``"spectrum"``, shape ([batch,] spectrum_bins): whole-clip DFT magnitude (80000
          bins for 10 s), ``log1p``-compressed if ``params.spectrum_compression == "log1p"``.

    Raises
    ------
    ValueError
        If a batch has the wrong clip length or the input is not 1-D/2-D.
    """
    y = np.asarray(y, dtype=np.float32)
    if y.ndim == 1:
        y = fix_length(y, params.clip_samples)
    elif y.ndim != 2 or y.shape[1] != params.clip_samples:
        raise ValueError(
            f"expected shape (n,) or (batch, {params.clip_samples}), got {y.shape}"
        )
    out = {name: temporal_mean_normalisation(magnitude_spectrogram(y, n_fft, hop))
           for name, (n_fft, hop) in params.spectrogram_inputs.items()}
    dft = magnitude_spectrum(y, params.spectrum_slice)
    if params.spectrum_compression == "log1p":
        dft = np.log1p(dft, out=dft)
    if params.spectrum_step is not None:
        dft = np.minimum(np.round(dft / np.float32(params.spectrum_step)), 255.0,
                         dtype=np.float32)
    out["spectrum"] = dft
    return out


SPECTRUM_LEVELS = 255


def spectrum_step_for(waveforms, params: AsdFrontendParams) -> float:
    """``spectrum_step: auto``: the largest spectrum value of the clips / 255.

    Parameters
    ----------
    waveforms : iterable of np.ndarray, each (n_samples,)
        Training clips (their first ``clip_seconds``).
    params : AsdFrontendParams
        With ``spectrum_step=None``.

    Returns
    -------
    float
    """
    peak = max(float(asd_features(w, params)["spectrum"].max()) for w in waveforms)
    return max(peak, 1e-12) / SPECTRUM_LEVELS


# --------------------------------------------------------------------------- KWS


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
        return _params_from_dict(cls, d, "KWS")


def _hz_to_mel(f):
    """Slaney mel scale (linear below 1 kHz, logarithmic above), as librosa's default."""
    f = np.asarray(f, dtype=np.float64)
    f_sp, min_log_hz = 200.0 / 3, 1000.0
    logstep = np.log(6.4) / 27.0
    mel = f / f_sp
    return np.where(f >= min_log_hz, min_log_hz / f_sp + np.log(np.maximum(f, 1e-9) / min_log_hz) / logstep, mel)


def _mel_to_hz(m):
    m = np.asarray(m, dtype=np.float64)
    f_sp, min_log_hz = 200.0 / 3, 1000.0
    min_log_mel, logstep = min_log_hz / f_sp, np.log(6.4) / 27.0
    return np.where(m >= min_log_mel, min_log_hz * np.exp(logstep * (m - min_log_mel)), f_sp * m)


def mel_filterbank(sample_rate: int, n_fft: int, n_mels: int, fmin: float, fmax: float,
                   norm: str | None = None) -> np.ndarray:
    """Triangular mel filterbank (Slaney scale).

    Equal to ``librosa.filters.mel(sr=sample_rate, n_fft=n_fft, n_mels=n_mels, fmin=fmin,
    fmax=fmax, htk=False, norm=norm)`` (tested).

    Parameters
    ----------
    norm : {None, "slaney"}
        ``None``: triangles of peak 1 (the KWS frontend); ``"slaney"``: each triangle
        scaled by ``2 / (f[m + 2] - f[m])`` (band edges in Hz) to constant area, librosa's
        default (the DCASE autoencoder baseline).

    Returns
    -------
    np.ndarray, shape (n_mels, n_fft // 2 + 1), float32
    """
    if norm not in (None, "slaney"):
        raise ValueError(f"norm must be None or 'slaney', got {norm!r}")
    fft_freqs = np.linspace(0, sample_rate / 2, n_fft // 2 + 1)
    mel_f = _mel_to_hz(np.linspace(_hz_to_mel(fmin), _hz_to_mel(fmax), n_mels + 2))
    fdiff = np.diff(mel_f)
    ramps = mel_f[:, None] - fft_freqs[None, :]
    lower = -ramps[:-2] / fdiff[:-1, None]
    upper = ramps[2:] / fdiff[1:, None]
    weights = np.maximum(0, np.minimum(lower, upper))
    if norm == "slaney":
        weights *= (2.0 / (mel_f[2:] - mel_f[:-2]))[:, None]
    return weights.astype(np.float32)


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
