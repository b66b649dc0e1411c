"""A no-learning first-shot baseline: STFT magnitude statistics with nearest-neighbour cosine.

The question of the leave-one-machine-type-out evaluation (:mod:`trainer.asd_lomo`) is how
well a node does on a machine type its embedder never heard. The floor any learned embedder
has to clear there is a representation that learned nothing at all; this module is that
floor (SPEC "ASD embedder", first-shot generalisation).

Features (:func:`edge.views.stft_statistics`, the node's ``stft_statistics`` view)
    Log-magnitude STFT of the whole clip, ``20 log10(max(|X[t, f]|, floor))`` with a periodic
    Hann window of ``n_fft`` samples (1024), hop ``hop_length`` (512), frames not centred
    (:func:`edge.frontend.magnitude_spectrogram`); for each frequency bin the mean and the
    standard deviation over time, concatenated (``2 * (n_fft // 2 + 1)`` = 1026 values) and
    L2-normalised.

Score (:class:`StftStatsBaseline`)
    Minimum cosine distance of a clip's vector to the vectors of the normal calibration
    clips (:func:`edge.backend.min_cosine_distance`, the node's backend without k-means);
    higher = more anomalous. The held-out scores a threshold is fit on are leave-one-clip-out
    scores of the calibration clips (each against the others), as the node's calibration
    holds out every window's own audio.

Entry point: :class:`StftStatsBaseline`.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from calibration.thresholds import NotFittedError
from edge.backend import min_cosine_distance
from edge.views import stft_statistics

__all__ = ["StftStatsBaseline"]


class StftStatsBaseline:
    """STFT-statistics vectors with a nearest-neighbour cosine backend (no training).

    Parameters
    ----------
    n_fft, hop_length : int
        See :func:`stft_statistics`.

    Attributes
    ----------
    memory_ : np.ndarray, shape (n_calibration, 2 * (n_fft // 2 + 1)), float32
        Vectors of the normal calibration clips (set by :meth:`fit`).
    held_out_scores_ : np.ndarray, shape (n_calibration,), float32
        Each calibration clip's score against the other calibration clips; empty with a
        single calibration clip.

    Examples
    --------
    >>> base = StftStatsBaseline().fit(normal_waveforms)    # doctest: +SKIP
    >>> scores = base.score_samples(test_waveforms)          # doctest: +SKIP
    """

    def __init__(self, n_fft: int = 1024, hop_length: int = 512):
        self.n_fft = n_fft
        self.hop_length = hop_length

    def transform(self, waveforms: Sequence[np.ndarray]) -> np.ndarray:
        """The vectors of several clips.

        Returns
        -------
        np.ndarray, shape (n_clips, 2 * (n_fft // 2 + 1)), float32
        """
        if isinstance(waveforms, np.ndarray) and waveforms.ndim == 1:
            raise ValueError("waveforms must be a list of waveforms, got one 1-D array")
        vecs = [stft_statistics(w, n_fft=self.n_fft, hop_length=self.hop_length)
                for w in waveforms]
        if not vecs:
            raise ValueError("waveforms is empty: need at least one waveform")
        return np.stack(vecs)

    def fit(self, waveforms: Sequence[np.ndarray]) -> "StftStatsBaseline":
        """Keep the vectors of normal calibration clips as the memory.

        Parameters
        ----------
        waveforms : sequence of np.ndarray, each shape (n_samples,), float
            Normal clips of the machine, mono, 16 kHz.

        Returns
        -------
        self

        Raises
        ------
        ValueError
            If ``n_fft`` or ``hop_length`` is not a positive integer, ``waveforms`` is empty,
            or a clip is invalid (see :func:`stft_statistics`).
        """
        for name in ("n_fft", "hop_length"):
            v = getattr(self, name)
            if not isinstance(v, (int, np.integer)) or v < 1:
                raise ValueError(f"{name} must be a positive integer, got {v!r}")
        mem = self.transform(waveforms)
        held = np.zeros(len(mem) if len(mem) > 1 else 0, np.float32)
        for i in range(len(held)):
            held[i] = min_cosine_distance(mem[i], np.delete(mem, i, axis=0))
        self.memory_ = mem
        self.held_out_scores_ = held
        return self

    def score_samples(self, waveforms: Sequence[np.ndarray]) -> np.ndarray:
        """Anomaly score of each clip: minimum cosine distance to the calibration vectors.

        Returns
        -------
        np.ndarray, shape (n_clips,), float32, in [0, 2]; higher = more anomalous.

        Raises
        ------
        NotFittedError
            (a :class:`RuntimeError`) If :meth:`fit` has not been called.
        """
        if not hasattr(self, "memory_"):
            raise NotFittedError("this StftStatsBaseline is not fitted yet: call fit() first")
        return min_cosine_distance(self.transform(waveforms), self.memory_)
