"""The anomaly-detection (ASD) feature frontend and the signal helpers both frontends share,
used by the trainer and the node alike.

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
  frequency band; raw as in Table 14, or ``log(1 + |X|)``-compressed (the shipped recipe).

On int8: the raw DFT magnitude spans orders of magnitude, and a full-integer model
quantizes its input to 256 levels over the range seen in the representative data, so
small bins become zero. Measured on real clips (default recipe, seeds 0 and 1): the DFT
branch's int8-vs-float embedding cosine was 0.97 and 0.87 (min) with the raw input and
0.999 with ``log1p``. On machine types the embedder never heard (leave-one-machine-type-out,
three draws) ``log1p`` keeps the int8 model within 2 AUC points of the float one and scores
official 70.7 against 61.2 with the raw input, whose int8 conversion cost pump 32-42 AUC
points on two draws (README, "On a machine type the embedder never heard"), so the shipped
recipe (``trainer/configs/asd_default.yaml``) sets ``spectrum_compression="log1p"``. The
raw input of the paper stays this dataclass's default; it does better on a machine the model
was trained on whose anomalies are louder (MIMII fan id_00: AUC 0.958 vs 0.55 with
``log1p``). ``spectrum_step`` instead puts the raw spectrum on the 256-level
grid the int8 model sees (97 % of a fan clip's bins fall on its lowest two steps), so the
float model trained on it and the int8 model on the node get the same values.

:func:`stacked_logmel` is the DCASE autoencoder baseline's input (consecutive log-mel frames
concatenated), shared by that baseline (:mod:`trainer.ae_baseline`) and the node's PCA
residual view (:mod:`edge.views`).

The keyword frontend (log-Mel frames and segments) is :mod:`edge.kws_frontend`; it shares
:func:`frame_signal`, :func:`as_mono` and :func:`mel_filterbank` from here.
"""
from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

__all__ = [
    "AsdFrontendParams",
    "fix_length",
    "frame_signal",
    "magnitude_spectrogram",
    "centred_magnitude",
    "temporal_mean_normalisation",
    "magnitude_spectrum",
    "asd_features",
    "spectrum_step_for",
    "mel_filterbank",
    "stacked_logmel",
    "logmel_frames",
    "as_mono",
    "params_from_dict",
]


def params_from_dict(cls, d: dict[str, Any], what: str):
    """Frontend parameters from bundle metadata; every field must be present (no silent
    defaults, so a model is never fed features it was not trained on).

    Parameters
    ----------
    cls : dataclass type
        :class:`AsdFrontendParams` or :class:`edge.kws_frontend.KwsFrontendParams`.
    d : dict
        The metadata's ``frontend`` mapping.
    what : str
        Which frontend, for the error message ("ASD", "KWS").

    Raises
    ------
    ValueError
        Unknown or missing fields, named.
    """
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
        return params_from_dict(cls, d, "ASD")


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


def centred_magnitude(y: np.ndarray, n_fft: int, hop_length: int,
                      magnitude: np.ndarray | None = None) -> np.ndarray:
    """Magnitude STFT of centred frames: ``y`` zero-padded by ``n_fft // 2`` at both ends.

    Parameters
    ----------
    y : np.ndarray, shape (n_samples,), float32
    n_fft, hop_length : int
        Window and hop in samples.
    magnitude : np.ndarray, float32, optional
        Shape ``(1 + (n_samples - n_fft) // hop_length, n_fft // 2 + 1)``:
        ``magnitude_spectrogram(y, n_fft, hop_length)``, if already computed. Where
        ``hop_length`` divides ``n_fft // 2``, centred frame ``t + (n_fft // 2) / hop_length``
        is frame ``t`` of it, so only the frames that reach into the padding are computed.

    Returns
    -------
    np.ndarray, shape (1 + n_samples // hop_length, n_fft // 2 + 1), float32
        Equal to ``magnitude_spectrogram(np.pad(y, n_fft // 2), n_fft, hop_length)``.

    Raises
    ------
    ValueError
        If ``magnitude`` does not have the shape of ``y``'s spectrogram.
    """
    half = n_fft // 2
    padded = np.pad(y, (half, half))
    if magnitude is None or half % hop_length:
        return magnitude_spectrogram(padded, n_fft, hop_length)
    want = (1 + (len(y) - n_fft) // hop_length, half + 1)
    if magnitude.shape != want:
        raise ValueError(f"magnitude: expected the spectrogram of the {len(y)} samples, shape "
                         f"{want}, got {magnitude.shape}")
    k = half // hop_length                      # centred frames before the first whole one
    after = (k + len(magnitude)) * hop_length   # where the centred frames after it start
    parts = [magnitude_spectrogram(padded[:(k - 1) * hop_length + n_fft], n_fft, hop_length),
             magnitude]
    if len(padded) - after >= n_fft:
        parts.append(magnitude_spectrogram(padded[after:], n_fft, hop_length))
    return np.concatenate(parts)


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


def asd_features(y: np.ndarray, params: AsdFrontendParams = AsdFrontendParams(), *,
                 magnitude: np.ndarray | None = None,
                 inputs: Sequence[str] | None = None) -> dict[str, np.ndarray]:
    """Every ASD model input for one clip or a batch of clips.

    Parameters
    ----------
    y : np.ndarray, shape (n_samples,) or (batch, n_samples), float
        16 kHz mono waveform(s) in [-1, 1]. A 1-D signal is padded or cut to
        ``params.clip_samples``; a 2-D batch must already have that length.
    params : AsdFrontendParams
    magnitude : np.ndarray, shape ([batch,] n_frames, n_bins), float32, keyword-only, optional
        ``magnitude_spectrogram(y, params.n_fft, params.hop_length)`` of the padded or cut
        clip, when the caller has it already (the node's other views use it too); computed
        here otherwise.
    inputs : sequence of str, keyword-only, optional
        Only these inputs (names of :attr:`AsdFrontendParams.input_shapes`; the result keeps
        model input order); default: every one. A node that runs one branch alone computes
        that branch's input only.

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
        If a batch has the wrong clip length, the input is not 1-D/2-D, ``magnitude``
        does not have the main spectrogram's shape, or ``inputs`` names no model input.
    """
    y = np.asarray(y, dtype=np.float32)
    if y.ndim == 1:
        y = fix_length(y, params.clip_samples)
    elif y.ndim != 2 or y.shape[1] != params.clip_samples:
        raise ValueError(
            f"expected shape (n,) or (batch, {params.clip_samples}), got {y.shape}"
        )
    wanted = list(params.input_shapes) if inputs is None else list(inputs)
    unknown = sorted(set(wanted) - set(params.input_shapes))
    if unknown:
        raise ValueError(f"inputs: {unknown} are not inputs of this frontend "
                         f"({list(params.input_shapes)})")
    out = {}
    for name, (n_fft, hop) in params.spectrogram_inputs.items():
        if name not in wanted:
            continue
        if name == "spectrogram" and magnitude is not None:
            want = y.shape[:-1] + params.input_shapes[name]
            if magnitude.shape != want:
                raise ValueError(f"magnitude: expected the clip's spectrogram of shape {want}, "
                                 f"got {magnitude.shape}")
            spec = magnitude
        else:
            spec = magnitude_spectrogram(y, n_fft, hop)
        out[name] = temporal_mean_normalisation(spec)
    if "spectrum" not in wanted:
        return out
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


@functools.lru_cache(maxsize=16)
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
        Read-only: built once per set of arguments and shared (the node's PCA residual view
        asks for it every window).
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
    weights = weights.astype(np.float32)
    weights.flags.writeable = False
    return weights


def stacked_logmel(y: np.ndarray, *, sample_rate: int = 16000, n_fft: int = 1024,
                   hop_length: int = 512, n_mels: int = 128, n_frames: int = 5) -> np.ndarray:
    """Consecutive log-mel frames concatenated: the DCASE autoencoder baseline's input.

    DCASE 2023 Task 2 baseline (Dohi et al. 2023, Section 4; ``baseline.yaml``): librosa's
    default mel spectrogram (centred frames, zero padding of ``n_fft // 2`` at both ends,
    periodic Hann window, Slaney mel scale from 0 Hz to Nyquist with Slaney area
    normalisation, power 2), ``10 log10(max(mel, eps))``, and ``n_frames`` consecutive
    frames concatenated frame-major with a hop of one frame. :mod:`trainer.ae_baseline`
    documents and tests the equality with librosa.

    Parameters
    ----------
    y : np.ndarray, shape (n_samples,), float32
        Mono waveform in [-1, 1], at least ``max(n_fft, (n_frames - 1) * hop_length)``
        samples, finite (the caller checks).
    sample_rate : int, keyword-only
        Hz; only sets the filterbank.
    n_fft, hop_length : int, keyword-only
        STFT window and hop in samples.
    n_mels, n_frames : int, keyword-only
        Mel bands; frames per vector.

    Returns
    -------
    np.ndarray, shape (1 + n_samples // hop_length - (n_frames - 1), n_mels * n_frames), float32
        In dB (power re 1), at least ``10 log10(eps)`` = -156.5 dB; columns
        ``[k * n_mels, (k + 1) * n_mels)`` of vector ``t`` are frame ``t + k``.
    """
    logmel = logmel_frames(y, sample_rate=sample_rate, n_fft=n_fft, hop_length=hop_length,
                           n_mels=n_mels)
    windows = np.lib.stride_tricks.sliding_window_view(logmel, n_frames, axis=0)
    return np.ascontiguousarray(windows.transpose(0, 2, 1)).reshape(len(windows), -1)


def logmel_frames(y: np.ndarray, *, sample_rate: int = 16000, n_fft: int = 1024,
                  hop_length: int = 512, n_mels: int = 128,
                  magnitude: np.ndarray | None = None) -> np.ndarray:
    """The frames :func:`stacked_logmel` stacks (other parameters there).

    Parameters
    ----------
    magnitude : np.ndarray, float32, optional
        Shape ``(1 + (n_samples - n_fft) // hop_length, n_fft // 2 + 1)``:
        ``magnitude_spectrogram(y, n_fft, hop_length)`` (frames not centred), when the
        caller has it already. Where ``hop_length`` divides ``n_fft // 2`` these are the
        centred frames but the first and last few, so only those are computed here.

    Returns
    -------
    np.ndarray, shape (1 + n_samples // hop_length, n_mels), float32
        Centred frames, in dB (power re 1), at least -156.5 dB.
    """
    mag = centred_magnitude(np.asarray(y, np.float32), n_fft, hop_length, magnitude)
    fb = mel_filterbank(sample_rate, n_fft, n_mels, 0.0, sample_rate / 2.0, norm="slaney")
    mel = np.square(mag) @ fb.T  # (frames, n_mels)
    return (10.0 * np.log10(np.maximum(mel, np.finfo(np.float64).eps))).astype(np.float32)
