"""Pseudo-attribute labels by clustering, for training clips whose attributes are missing.

The discriminative embedder learns what its classes tell apart. Where a recording campaign
publishes no attributes (MIMII, DCASE 2020: one class per machine id), every operating
condition of a machine is one class, and the embedding has no reason to keep the conditions
apart. Fujimura et al. (``002_aace9358fd6fb51a.txt``, Section III-B) recover such labels in two
steps:

1. a feature space in which the conditions differ: the paper's "Class" variant, an embedder
   trained on the available labels (``pseudo_labels: embedding``, a first training pass in
   :func:`trainer.train.train_asd`), or the per-clip log-STFT mean and standard deviation
   (``stft_statistics``, :func:`edge.views.stft_statistics`), which learns nothing and needs
   no second training but, on MIMII, follows the factory background as much as the machine;
2. per class without attributes, a Gaussian mixture in a 2-D projection (the paper uses UMAP;
   PCA here, a dependency the project already has), the number of clusters chosen by the
   Bayesian information criterion (BIC), from 1 (no split: harmless) to ``max_clusters``.

Each cluster becomes a pseudo-attribute (``pseudo_<k>``), so the class
``fan_section_00`` becomes ``fan_section_00_pseudo_0``, ``..._pseudo_1``, ...

Entry points: :data:`PSEUDO_LABEL_FEATURES`, :func:`pseudo_attribute_labels`,
:func:`clip_features`.
"""
from __future__ import annotations

from collections import defaultdict
from typing import Sequence

import numpy as np

from edge.views import stft_statistics

__all__ = ["PSEUDO_LABEL_FEATURES", "clip_features", "pseudo_attribute_labels"]

#: Feature spaces a recipe may cluster in (``pseudo_labels``); ``"none"``: no pseudo-labels;
#: ``"embedding"``: a first model trained on the available labels (:func:`trainer.train.train_asd`).
PSEUDO_LABEL_FEATURES = ("none", "stft_statistics", "embedding")


def clip_features(waveforms: Sequence[np.ndarray], features: str = "stft_statistics"
                  ) -> np.ndarray:
    """The feature space the pseudo-labels are clustered in.

    Parameters
    ----------
    waveforms : sequence of np.ndarray, each (n_samples_i,), float32
        Mono clips at the frontend's sample rate (16 kHz), each at least 1024 samples.
    features : {"stft_statistics"}

    Returns
    -------
    np.ndarray, shape (n_clips, 1026), float32
        One :func:`edge.views.stft_statistics` vector per clip (whole clip).

    Raises
    ------
    ValueError
        If ``features`` is not a known feature space.
    """
    if features != "stft_statistics":
        raise ValueError(f"clip features must be 'stft_statistics', got {features!r} (the "
                         "'embedding' space needs a trained model: trainer.train.train_asd)")
    return np.stack([stft_statistics(w) for w in waveforms])


def pseudo_attribute_labels(features: np.ndarray, groups: Sequence[str], *,
                            max_clusters: int = 4, min_cluster_size: int = 4,
                            seed: int = 0) -> list[str]:
    """Cluster each group's clips into pseudo-attributes (Fujimura et al., Section III-B-2).

    Parameters
    ----------
    features : np.ndarray, shape (n_clips, n_features), float
        One feature vector per clip (:func:`clip_features`).
    groups : sequence of str, length n_clips
        The class of each clip; clips are clustered within their class only. An empty
        string marks a clip that keeps its class (it has attributes).
    max_clusters : int, keyword-only
        Most clusters per group.
    min_cluster_size : int, keyword-only
        Fewest clips in a cluster: a clustering with a smaller cluster is not considered,
        and a group of fewer than ``2 * min_cluster_size`` clips is not split.
    seed : int, keyword-only
        Seed of the mixtures' initialisation.

    Returns
    -------
    list of str, length n_clips
        ``"pseudo_<k>"`` for a clip of a group split into two or more clusters (``k``
        numbered by cluster size, largest first), else ``""``.

    Raises
    ------
    ValueError
        If ``features`` and ``groups`` differ in length, or a size is below 1.
    """
    from sklearn.decomposition import PCA
    from sklearn.mixture import GaussianMixture
    from sklearn.preprocessing import StandardScaler

    x = np.asarray(features, np.float64)
    if x.ndim != 2 or len(x) != len(groups):
        raise ValueError(f"features must be (n_clips, n_features) with one row per group "
                         f"entry; got {x.shape} for {len(groups)} groups")
    if max_clusters < 1 or min_cluster_size < 1:
        raise ValueError(f"max_clusters and min_cluster_size must be at least 1, got "
                         f"{max_clusters} and {min_cluster_size}")
    members: dict[str, list[int]] = defaultdict(list)
    for i, g in enumerate(groups):
        if g:
            members[g].append(i)
    out = [""] * len(groups)
    for g, idx in sorted(members.items()):
        n = len(idx)
        k_max = min(max_clusters, n // min_cluster_size)
        if k_max < 2:
            continue
        z = StandardScaler().fit_transform(x[idx])
        z = PCA(n_components=min(2, n - 1), random_state=seed).fit_transform(z)
        best, best_bic = None, np.inf
        for k in range(1, k_max + 1):
            gmm = GaussianMixture(k, covariance_type="full", n_init=3, random_state=seed,
                                  reg_covar=1e-4).fit(z)
            assign = gmm.predict(z)
            sizes = np.bincount(assign, minlength=k)
            bic = gmm.bic(z)
            if sizes.min() >= min_cluster_size and bic < best_bic:
                best, best_bic = assign, bic
        if best is None or len(np.unique(best)) < 2:
            continue
        order = np.argsort(-np.bincount(best), kind="stable")
        rank = {int(c): r for r, c in enumerate(order)}
        for i, c in zip(idx, best):
            out[i] = f"pseudo_{rank[int(c)]}"
    return out
