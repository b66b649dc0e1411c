"""Views of an anomaly-detection window, each scored against its own memory.

One embedding compared as a whole hides what its parts see: on machine types the embedder
never heard, its spectrum branch alone separated pump anomalies better than the whole vector
(pAUC 81 vs 67), and per-bin STFT statistics, which learn nothing, came close to it on slider
(AUC 93 vs 96). So a calibration may keep several views of every window, each with its own
nearest-neighbour memory, and combine their distances after normalising each by its own
held-out calibration distances (GenRep's domain normalisation, ``004_d4225f15e0df5a46.txt``
Section 2.3: Z-scores of each memory bank's distances; here per view, on log distances).
Together they raised the leave-one-machine-type-out official score from 66.3 to 70.7
(README, "On a machine type the embedder never heard").

Views (``asd.views`` of the node config)
    ``embedding``
        The embedder's output (every ensemble member), as the single-view backend scores it.
    ``branches``
        Each branch of the embedder separately (thesis Tables 14 and 15: one view per
        spectrogram resolution and one for the spectrum), named ``branch_<input>``.
    ``stft_statistics``
        Per-bin mean and standard deviation over time of the window's log-magnitude STFT
        (:func:`stft_statistics`): no learning at all.

Entry points: :data:`VIEWS`, :func:`view_names`, :func:`window_views`, :func:`stft_statistics`.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from edge.frontend import as_mono, magnitude_spectrogram

__all__ = ["VIEWS", "EMBEDDING_VIEW", "view_names", "view_members", "window_views",
           "stft_statistics"]

#: The views a config may ask for, in the order they are scored.
VIEWS = ("embedding", "branches", "stft_statistics")
#: The one view a calibration made before views existed has (scored without normalisation).
EMBEDDING_VIEW = "embedding"


def stft_statistics(waveform: np.ndarray, *, n_fft: int = 1024, hop_length: int = 512,
                    floor: float = 1e-5) -> np.ndarray:
    """Per-bin mean and standard deviation over time of the log-magnitude STFT, L2-normalised.

    Parameters
    ----------
    waveform : np.ndarray, shape (n_samples,), float
        Mono waveform in [-1, 1]; at least ``n_fft`` samples.
    n_fft : int, keyword-only
        STFT window length in samples (periodic Hann), 1024.
    hop_length : int, keyword-only
        STFT hop in samples, 512.
    floor : float, keyword-only
        Magnitude floor before the logarithm (-100 dB re 1).

    Returns
    -------
    np.ndarray, shape (2 * (n_fft // 2 + 1),), float32
        ``[mean_t L[t, :], std_t L[t, :]]`` with ``L`` in dB, scaled to unit L2 norm.

    Raises
    ------
    ValueError
        If the waveform is not 1-D, not finite, or shorter than ``n_fft``.
    """
    y = as_mono(waveform, np.float32)
    if len(y) < n_fft:
        raise ValueError(f"the waveform has {len(y)} samples; the STFT statistics need at "
                         f"least n_fft = {n_fft}")
    if not np.all(np.isfinite(y)):
        raise ValueError("the waveform contains NaN or infinite samples")
    mag = magnitude_spectrogram(y, n_fft, hop_length)  # (frames, bins)
    log_mag = 20.0 * np.log10(np.maximum(mag, floor))
    v = np.concatenate([log_mag.mean(axis=0), log_mag.std(axis=0)]).astype(np.float64)
    return (v / max(np.linalg.norm(v), 1e-12)).astype(np.float32)


def _check(views: Sequence[str]) -> tuple[str, ...]:
    views = tuple(views)
    unknown = [v for v in views if v not in VIEWS]
    if unknown or not views or len(set(views)) != len(views):
        raise ValueError(f"views {list(views)}: expected one or more distinct names of "
                         f"{', '.join(VIEWS)}")
    return tuple(v for v in VIEWS if v in views)


def _branch_slices(embedder) -> dict[str, np.ndarray]:
    """Column indices of each branch in the embedding, over all ensemble members."""
    inputs = list(embedder.metadata["inputs"])
    k = embedder.n_members
    member = embedder.embedding_dim // k
    if member % len(inputs):
        raise ValueError(f"model {embedder.model_id}: a member's {member} dimensions do not "
                         f"split into its {len(inputs)} branches")
    width = member // len(inputs)
    # trainer.model.build_embedder concatenates the branches in input order, spectrum last.
    return {f"branch_{name}": np.concatenate([np.arange(m * member + b * width,
                                                        m * member + (b + 1) * width)
                                              for m in range(k)])
            for b, name in enumerate(inputs)}


def view_names(embedder, views: Sequence[str]) -> tuple[str, ...]:
    """The names of the scored views that ``views`` (config names) expand to.

    Parameters
    ----------
    embedder : edge.model.AsdEmbedder
    views : sequence of str
        Names from :data:`VIEWS`.

    Returns
    -------
    tuple of str
        ``"embedding"``, ``"branch_<input>"`` for every branch, ``"stft_statistics"``, in
        that order, as far as asked for.

    Raises
    ------
    ValueError
        An unknown, repeated or missing view name, or a model whose members do not split
        into its branches.
    """
    out: list[str] = []
    for v in _check(views):
        out += list(_branch_slices(embedder)) if v == "branches" else [v]
    return tuple(out)


def view_members(embedder, name: str) -> int:
    """How many ensemble members a view's vector holds (its cosine distances are summed
    over them, :func:`edge.backend.min_cosine_distance`): the model's for the embedding and
    its branches, 1 for the STFT statistics."""
    return 1 if name == "stft_statistics" else embedder.n_members


def window_views(embedder, window: np.ndarray, names: Sequence[str]) -> dict[str, np.ndarray]:
    """The vectors of one window in the named views.

    Parameters
    ----------
    embedder : edge.model.AsdEmbedder
    window : np.ndarray, shape (n_samples,), float32
        One analysis window, 16 kHz mono.
    names : sequence of str
        Scored view names (:func:`view_names`).

    Returns
    -------
    dict of str -> np.ndarray, shape (D_view,), float32
        Not normalised; the backend normalises per member.
    """
    emb = embedder.embed(window)
    out: dict[str, np.ndarray] = {}
    slices = _branch_slices(embedder) if any(n.startswith("branch_") for n in names) else {}
    for name in names:
        if name == EMBEDDING_VIEW:
            out[name] = emb
        elif name in slices:
            out[name] = emb[slices[name]]
        elif name == "stft_statistics":
            fe = embedder.frontend
            out[name] = stft_statistics(window, n_fft=fe.n_fft, hop_length=fe.hop_length)
        else:
            raise ValueError(f"unknown view {name!r} for model {embedder.model_id}")
    return out
