"""The DCASE 2023 Challenge Task 2 autoencoder baseline, as a comparison system.

Source: K. Dohi, K. Imoto, N. Harada, D. Niizumi, Y. Koizumi, T. Nishida, H. Purohit,
R. Tanabe, T. Endo and Y. Kawaguchi, "Description and Discussion on DCASE 2023 Challenge
Task 2: First-Shot Unsupervised Anomalous Sound Detection for Machine Condition
Monitoring", DCASE 2023 Workshop (arXiv:2305.07828), Section 4 ("AE-based baseline", the
"MSE" scoring mode); the same autoencoder as the DCASE 2020-2022 Task 2 Keras baselines
(``keras_model.py``/``common.py`` of those releases). Written from that description; the
baseline's defaults (``baseline.yaml``): 128 mel bins, 5 frames, frame hop 1, n_fft 1024,
hop 512, power 2, batch 256, 100 epochs, Adam lr 0.001, shuffle, validation split 0.1.

Features (:func:`logmel_vectors`)
    ``librosa.feature.melspectrogram(y, sr=16000, n_fft=1024, hop_length=512, n_mels=128,
    power=2.0)`` with every other argument at its default, i.e. **centred** frames (the
    waveform is zero-padded by ``n_fft // 2`` samples at both ends: ``pad_mode="constant"``,
    librosa >= 0.10's default), periodic Hann window, Slaney mel scale from 0 Hz to
    ``sr / 2`` with Slaney **area normalisation** (each triangle scaled by
    ``2 / (f[m+2] - f[m])``, librosa's ``norm="slaney"``), then
    ``10 * log10(max(mel_power, eps))`` with ``eps = sys.float_info.epsilon`` (the baseline
    writes ``20 / power * log10(...)``). Computed with the project frontend
    (:func:`edge.frontend.stacked_logmel`, which the node's PCA residual view shares), so
    librosa is not a runtime dependency; ``tests/test_ae_baseline.py`` checks equality with
    librosa on a real clip. Five consecutive frames (hop one frame) are concatenated
    **frame-major**: vector ``t`` is ``[logmel[t], logmel[t + 1], ..., logmel[t + 4]]``, 640 values, the
    baseline's layout. Librosa < 0.10 padded with ``pad_mode="reflect"``; that only changes
    the first and last two frames' values.

Model (:func:`build_autoencoder`)
    640 -> 4 x [Dense 128, BatchNorm, ReLU] -> [Dense 8, BatchNorm, ReLU]
    -> 4 x [Dense 128, BatchNorm, ReLU] -> Dense 640 (linear); Keras' BatchNormalization
    defaults (momentum 0.99, epsilon 1e-3) are the baseline's. MSE loss, Adam.

Score
    Mean over a clip's vectors of each vector's mean squared reconstruction error;
    higher = more anomalous. One model per machine type (the caller fits one
    :class:`AutoencoderBaseline` per type). The baseline's decision threshold (90th
    percentile of a gamma distribution fitted to the training scores) is left out: the
    project's threshold estimators (:mod:`calibration.thresholds`) take its place.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from calibration.thresholds import NotFittedError
from edge.frontend import as_mono, stacked_logmel

__all__ = ["AeBaselineParams", "logmel_vectors", "build_autoencoder",
           "AutoencoderBaseline", "NotFittedError"]


@dataclass(frozen=True)
class AeBaselineParams:
    """Parameters of the autoencoder baseline (the DCASE 2023 Task 2 ``baseline.yaml``).

    Parameters
    ----------
    sample_rate : int
        Sampling rate of the waveforms in Hz (16000). Used for the mel filterbank only:
        waveforms are not resampled.
    n_fft : int
        STFT window length in samples (periodic Hann, 1024).
    hop_length : int
        STFT hop in samples (512).
    n_mels : int
        Mel bands from 0 Hz to ``sample_rate / 2`` (128).
    n_frames : int
        Consecutive log-mel frames concatenated into one input vector (5).
    epochs : int
        Training epochs (100).
    batch_size : int
        Vectors per gradient step (256).
    learning_rate : float
        Adam learning rate (0.001).
    validation_split : float
        Fraction of the training vectors held out for the validation loss, in [0, 1): the
        last ones in the order given, as Keras' ``validation_split`` (0.1).
    seed : int
        Seed of :func:`keras.utils.set_random_seed` (weights and shuffling).

    Raises
    ------
    ValueError
        If a size is not positive or ``validation_split`` is outside [0, 1).
    """

    sample_rate: int = 16000
    n_fft: int = 1024
    hop_length: int = 512
    n_mels: int = 128
    n_frames: int = 5
    epochs: int = 100
    batch_size: int = 256
    learning_rate: float = 1e-3
    validation_split: float = 0.1
    seed: int = 0

    def __post_init__(self):
        for name in ("sample_rate", "n_fft", "hop_length", "n_mels", "n_frames", "epochs",
                     "batch_size"):
            value = getattr(self, name)
            if not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if not self.learning_rate > 0:
            raise ValueError(f"learning_rate must be positive, got {self.learning_rate!r}")
        if not 0.0 <= self.validation_split < 1.0:
            raise ValueError(f"validation_split must be in [0, 1), got {self.validation_split!r}")

    @property
    def input_dim(self) -> int:
        """Length of one input vector, ``n_mels * n_frames`` (640)."""
        return self.n_mels * self.n_frames

    @property
    def min_samples(self) -> int:
        """Shortest clip, in samples, that gives at least one vector:
        ``max(n_fft, (n_frames - 1) * hop_length)`` (2048 = 0.128 s by default)."""
        return max(self.n_fft, (self.n_frames - 1) * self.hop_length)

    def n_vectors(self, n_samples: int) -> int:
        """Number of vectors of a clip of ``n_samples`` samples: centred frames
        ``1 + n_samples // hop_length``, minus ``n_frames - 1`` (309 for 10 s)."""
        return 1 + n_samples // self.hop_length - (self.n_frames - 1)


def _check_clip(waveform, params: AeBaselineParams, what: str = "waveform") -> np.ndarray:
    try:
        y = as_mono(waveform, np.float32)
    except ValueError as exc:
        raise ValueError(f"{what}: {exc}") from None
    if len(y) < params.min_samples:
        raise ValueError(
            f"{what} has {len(y)} samples; the autoencoder baseline needs at least "
            f"{params.min_samples} (n_fft = {params.n_fft}, and {params.n_frames} frames of "
            f"hop {params.hop_length} for one vector)")
    if not np.all(np.isfinite(y)):
        raise ValueError(f"{what} contains NaN or infinite samples")
    return y


def logmel_vectors(waveform: np.ndarray, params: AeBaselineParams = AeBaselineParams()) -> np.ndarray:
    """The baseline's input vectors of one clip: stacked log-mel frames.

    See the module docstring for what is matched (librosa's centred, zero-padded frames,
    Slaney area-normalised filterbank, ``10 log10(max(mel, eps))``, frame-major stacking).

    Parameters
    ----------
    waveform : np.ndarray, shape (n_samples,), float
        Mono waveform at ``params.sample_rate`` (16 kHz) in [-1, 1].
    params : AeBaselineParams

    Returns
    -------
    np.ndarray, shape (n_vectors, n_mels * n_frames), float32
        ``n_vectors = 1 + n_samples // hop_length - (n_frames - 1)`` (309 x 640 for a 10 s
        clip); values in dB (power, re 1), >= ``10 log10(eps)`` = -156.5 dB. Columns
        ``[k * n_mels, (k + 1) * n_mels)`` are frame ``t + k`` of vector ``t``.

    Raises
    ------
    ValueError
        If the waveform is not 1-D, not finite, or shorter than ``params.min_samples``
        (which is at least ``n_fft``).
    """
    y = _check_clip(waveform, params)
    return stacked_logmel(y, sample_rate=params.sample_rate, n_fft=params.n_fft,
                          hop_length=params.hop_length, n_mels=params.n_mels,
                          n_frames=params.n_frames)


def build_autoencoder(params: AeBaselineParams = AeBaselineParams()):
    """The baseline's dense autoencoder (uncompiled).

    ``input_dim`` -> 4 x [Dense 128, BatchNormalization, ReLU] -> [Dense 8,
    BatchNormalization, ReLU] -> 4 x [Dense 128, BatchNormalization, ReLU] -> Dense
    ``input_dim`` (linear), ``input_dim = n_mels * n_frames`` (640).

    Returns
    -------
    keras.Model
        Input shape (None, input_dim), output shape (None, input_dim), float32;
        269,992 parameters for 640 inputs, of which 2,064 are the non-trainable
        BatchNorm moving means and variances.
    """
    import keras
    from keras import layers

    inp = keras.Input((params.input_dim,), name="logmel_vectors")
    h = inp
    for i, units in enumerate([128] * 4 + [8] + [128] * 4):
        h = layers.Dense(units, name=f"dense_{i}")(h)
        h = layers.BatchNormalization(name=f"bn_{i}")(h)
        h = layers.Activation("relu", name=f"relu_{i}")(h)
    out = layers.Dense(params.input_dim, name="reconstruction")(h)
    return keras.Model(inp, out, name="dcase2023t2_ae_baseline")


class AutoencoderBaseline:
    """The DCASE 2023 Task 2 autoencoder baseline as an estimator (scikit-learn conventions).

    Parameters
    ----------
    params : AeBaselineParams

    Attributes
    ----------
    model_ : keras.Model
        The trained autoencoder (set by :meth:`fit`).
    history_ : list of float
        Training loss (MSE, dB^2) at the end of each epoch.
    val_history_ : list of float
        Validation loss per epoch (empty when nothing was held out).
    n_vectors_fit_ : int
        Number of vectors the model was trained on (validation vectors excluded).

    Examples
    --------
    >>> ae = AutoencoderBaseline().fit(normal_waveforms)        # doctest: +SKIP
    >>> scores = ae.score_samples(test_waveforms)                # doctest: +SKIP
    """

    def __init__(self, params: AeBaselineParams = AeBaselineParams()):
        self.params = params

    def _vectors(self, waveforms: Sequence[np.ndarray], what: str) -> list[np.ndarray]:
        if isinstance(waveforms, np.ndarray) and waveforms.ndim == 1:
            raise ValueError(f"{what} must be a list of waveforms, got one 1-D array")
        waveforms = list(waveforms)
        if not waveforms:
            raise ValueError(f"{what} is empty: need at least one waveform")
        return [logmel_vectors(_check_clip(w, self.params, f"{what}[{i}]"), self.params)
                for i, w in enumerate(waveforms)]

    def fit(self, waveforms: Sequence[np.ndarray], progress: bool = True) -> "AutoencoderBaseline":
        """Train a new autoencoder on normal clips of one machine type.

        All vectors are held in memory as one array and trained with ``model.fit``
        (shuffled every epoch); the last ``validation_split`` of them (in the order given)
        are held out for the validation loss, as Keras' ``validation_split`` does.
        Reproducible for a seed as far as Keras/TensorFlow on the CPU are (seeded with
        :func:`keras.utils.set_random_seed`, which also seeds Python's and NumPy's global
        generators).

        Parameters
        ----------
        waveforms : sequence of np.ndarray, each shape (n_samples,), float
            Normal training clips, mono, at ``params.sample_rate``; lengths may differ.
        progress : bool
            Show a tqdm bar over epochs (on stderr) with the current losses.

        Returns
        -------
        self

        Raises
        ------
        ValueError
            If ``waveforms`` is empty, or a clip is not 1-D, not finite or shorter than
            ``params.min_samples`` (the message names the clip's index).
        """
        import keras
        from tqdm.auto import tqdm

        p = self.params
        x = np.concatenate(self._vectors(waveforms, "waveforms"), axis=0)
        n_train = int(np.floor(len(x) * (1.0 - p.validation_split)))
        if n_train in (0, len(x)):  # too few vectors to hold any out (or no split asked)
            n_train = len(x)
        x_train, x_val = x[:n_train], x[n_train:]

        keras.utils.set_random_seed(p.seed)
        model = build_autoencoder(p)
        model.compile(optimizer=keras.optimizers.Adam(learning_rate=p.learning_rate),
                      loss="mean_squared_error")
        bar = tqdm(total=p.epochs, desc="AE baseline", unit="epoch", disable=not progress,
                   leave=False)

        class _Bar(keras.callbacks.Callback):
            def on_epoch_end(self, epoch, logs=None):
                logs = logs or {}
                bar.set_postfix({k: f"{v:.2f}" for k, v in logs.items()
                                 if k in ("loss", "val_loss")}, refresh=False)
                bar.update(1)

        try:
            hist = model.fit(x_train, x_train, batch_size=p.batch_size, epochs=p.epochs,
                             shuffle=True, verbose=0, callbacks=[_Bar()],
                             validation_data=(x_val, x_val) if len(x_val) else None)
        finally:
            bar.close()
        self.model_ = model
        self.history_ = [float(v) for v in hist.history["loss"]]
        self.val_history_ = [float(v) for v in hist.history.get("val_loss", [])]
        self.n_vectors_fit_ = int(len(x_train))
        return self

    def score_samples(self, waveforms: Sequence[np.ndarray]) -> np.ndarray:
        """Anomaly score of each clip: mean over its vectors of the reconstruction MSE.

        Parameters
        ----------
        waveforms : sequence of np.ndarray, each shape (n_samples,), float
            Clips, mono, at ``params.sample_rate``; lengths may differ.

        Returns
        -------
        np.ndarray, shape (n_clips,), float32
            Scores in dB^2 (mean squared log-mel error); higher = more anomalous.

        Raises
        ------
        NotFittedError
            (a :class:`RuntimeError`) If :meth:`fit` has not been called.
        ValueError
            If ``waveforms`` is empty, or a clip is not 1-D, not finite or shorter than
            ``params.min_samples``.
        """
        if not hasattr(self, "model_"):
            raise NotFittedError("this AutoencoderBaseline is not fitted yet: call fit() first")
        vectors = self._vectors(waveforms, "waveforms")
        x = np.concatenate(vectors, axis=0)
        errors = np.empty(len(x), np.float64)
        for start in range(0, len(x), 8192):
            chunk = x[start:start + 8192]
            recon = np.asarray(self.model_(chunk, training=False))
            errors[start:start + len(chunk)] = np.mean(np.square(chunk - recon), axis=1)
        bounds = np.cumsum([0] + [len(v) for v in vectors])
        return np.array([errors[a:b].mean() for a, b in zip(bounds[:-1], bounds[1:])],
                        dtype=np.float32)
