"""How far apart an embedder puts recordings: the check for a collapsed embedding space.

A discriminative embedder that has collapsed maps every recording to nearly the same
direction: pairwise cosine similarities all near 1, and a clip's nearest neighbour no more
likely to share its operating condition than a clip drawn at random. Nearest-neighbour
scoring (thesis Section 5.3.2) then has nothing to work with, on the training machines or on
a new one. :func:`embedding_spread` measures both, so that the training report and the
leave-one-machine-type-out report show it.

Entry points: :func:`embedding_spread`.
"""
from __future__ import annotations

from collections import Counter
from typing import Any, Sequence

import numpy as np

__all__ = ["embedding_spread"]


def embedding_spread(embeddings: np.ndarray, labels: Sequence[str]) -> dict[str, Any]:
    """Spread of a set of embeddings and how well their neighbourhoods follow the labels.

    Parameters
    ----------
    embeddings : np.ndarray, shape (n, D), float
        One embedding per recording (rows are L2-normalised here).
    labels : sequence of str, length n
        Each recording's class, e.g. machine x section x attributes (its operating
        condition).

    Returns
    -------
    dict
        ``n``, ``n_labels``;
        ``cosine``: percentiles ``min``, ``p05``, ``median``, ``p95``, ``max`` of the
        ``n (n - 1) / 2`` pairwise cosine similarities (a collapsed space has them all
        near 1);
        ``nn_label_agreement``: fraction of recordings whose nearest other recording
        (largest cosine) has the same label;
        ``chance_agreement``: the same fraction for a neighbour drawn at random,
        ``sum_c n_c (n_c - 1) / (n (n - 1))``. Agreement near chance means the space does
        not separate the labels.

    Raises
    ------
    ValueError
        If fewer than two embeddings are given, or ``labels`` differs in length.
    """
    x = np.asarray(embeddings, np.float64)
    if x.ndim != 2 or len(x) < 2 or len(x) != len(labels):
        raise ValueError(f"need (n >= 2, D) embeddings and one label each; got shape "
                         f"{x.shape} and {len(labels)} labels")
    x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    sim = x @ x.T
    n = len(x)
    pairs = sim[np.triu_indices(n, k=1)]
    q = np.percentile(pairs, [0, 5, 50, 95, 100])
    np.fill_diagonal(sim, -np.inf)
    nearest = np.argmax(sim, axis=1)
    lab = np.asarray(labels, dtype=object)
    agree = float(np.mean(lab[nearest] == lab))
    counts = np.array(list(Counter(labels).values()), np.float64)
    chance = float(np.sum(counts * (counts - 1)) / (n * (n - 1)))
    return {"n": n, "n_labels": len(counts),
            "cosine": dict(zip(("min", "p05", "median", "p95", "max"), map(float, q))),
            "nn_label_agreement": agree, "chance_agreement": chance}
