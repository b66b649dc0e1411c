"""Angular margin losses for the ASD embedder (Keras 3 subclassing API)."""
from __future__ import annotations

import math

import numpy as np
import tensorflow as tf
import keras

__all__ = ["random_unit_centers", "SubClusterAdaCos", "relative_position_labels", "TACos"]


def random_unit_centers(n_classes: int, n_centers: int, dim: int, seed: int = 0) -> np.ndarray:
    """Fixed class centers drawn uniformly on the unit sphere.

    In high dimension they are pairwise (almost) orthogonal with very high probability
    (thesis Section 5.3.1).

    Returns
    -------
    np.ndarray, shape (n_classes * n_centers, dim), float32, rows of unit norm;
        rows ``j * n_centers ... (j + 1) * n_centers - 1`` belong to class ``j``.
    """
    rng = np.random.default_rng(seed)
    c = rng.standard_normal((n_classes * n_centers, dim)).astype(np.float32)
    return c / np.linalg.norm(c, axis=1, keepdims=True)


class SubClusterAdaCos(keras.losses.Loss):
    """Sub-cluster AdaCos loss with fixed centers and a dynamically adaptive scale.

    Implements Definition 3.4 of the thesis (``001_bc66ac417165e5b3.txt`` line 940,
    eqs. 38-42): ``N_centers`` non-trainable centers per class, the scale
    ``s_hat`` updated every step from the batch (eq. 38) using ``B_avg`` over *all*
    centers (eq. 39, mixed-up samples count as anomalous), the median of the
    mixed-up angles summed over each class's centers, and the stability term
    ``sim_max`` (eq. 40). The class probability is the softmax mass of all of the
    class's sub-cluster centers (eq. 42); the loss is the cross-entropy with the
    (mixed-up) soft labels (eq. 41).

    Parameters
    ----------
    centers : np.ndarray, shape (n_classes * n_centers, D)
        Unit-norm centers, grouped by class (see :func:`random_unit_centers`).
    n_classes, n_centers : int

    Call arguments
    --------------
    y_true : tensor, shape (batch, n_classes), float32
        Soft labels (one-hot, or mixup mixtures summing to 1).
    y_pred : tensor, shape (batch, D), float32
        Embeddings (not necessarily normalised).

    Attributes
    ----------
    scale : tf.Variable, scalar
        ``s_hat^{(t)}``; initialised to ``sqrt(2) * log(n_classes * n_centers - 1)``.
    """

    def __init__(self, centers: np.ndarray, n_classes: int, n_centers: int,
                 name: str = "subcluster_adacos", **kwargs):
        super().__init__(name=name, **kwargs)
        centers = np.asarray(centers, np.float32)
        if centers.shape[0] != n_classes * n_centers:
            raise ValueError(f"centers has {centers.shape[0]} rows, expected "
                             f"n_classes * n_centers = {n_classes * n_centers}")
        self.n_classes = n_classes
        self.n_centers = n_centers
        self.centers = tf.constant(centers / np.linalg.norm(centers, axis=1, keepdims=True))
        init = math.sqrt(2.0) * math.log(max(n_classes * n_centers - 1, 2))
        self.scale = tf.Variable(init, trainable=False, dtype=tf.float32, name="adacos_scale")

    def cosine_similarities(self, embeddings):
        """Cosine similarity of each embedding to every center, shape (batch, C * K)."""
        e = tf.math.l2_normalize(tf.cast(embeddings, tf.float32), axis=-1)
        return tf.matmul(e, self.centers, transpose_b=True)

    def call(self, y_true, y_pred):
        y_true = tf.cast(y_true, tf.float32)
        sims = self.cosine_similarities(y_pred)  # (B, C*K)
        batch = tf.cast(tf.shape(sims)[0], tf.float32)
        labels_tiled = tf.repeat(y_true, self.n_centers, axis=1)  # (B, C*K)

        # Adaptive scale, eqs. 38-40 (no gradient flows through it).
        s_prev = self.scale
        sims_sg = tf.stop_gradient(sims)
        sim_max = tf.reduce_max(s_prev * sims_sg)
        b_avg = tf.reduce_sum(tf.exp(s_prev * sims_sg - sim_max)) / batch
        angles = tf.acos(tf.clip_by_value(sims_sg, -1.0 + 1e-7, 1.0 - 1e-7))
        mixed_angles = tf.reduce_sum(labels_tiled * angles, axis=1)  # (B,)
        sorted_angles = tf.sort(mixed_angles)
        n = tf.shape(sorted_angles)[0]
        median = 0.5 * (sorted_angles[(n - 1) // 2] + sorted_angles[n // 2])
        new_scale = (sim_max + tf.math.log(b_avg)) / tf.cos(tf.minimum(math.pi / 4, median))
        self.scale.assign(new_scale)

        # Eqs. 41-42: class probability = softmax mass of the class's sub-clusters.
        logits = new_scale * sims
        log_norm = tf.reduce_logsumexp(logits, axis=1, keepdims=True)
        per_class = tf.reshape(logits, (-1, self.n_classes, self.n_centers))
        log_class_prob = tf.reduce_logsumexp(per_class, axis=2) - log_norm  # (B, C)
        return -tf.reduce_sum(y_true * log_class_prob, axis=1)

    def get_config(self):
        cfg = super().get_config()
        cfg.update(n_classes=self.n_classes, n_centers=self.n_centers,
                   centers=self.centers.numpy().tolist())
        return cfg


def relative_position_labels(n_seg: int, n_pos: int) -> np.ndarray:
    """Categorical encoding of relative position (thesis Definition 6.3, eqs. 67-68).

    Segment ``i`` (1-based) of a sample with ``n_seg`` segments is active on positions
    ``1 + floor((i - 1) * n_pos / n_seg) ... ceil(i * n_pos / n_seg)``, each with equal
    probability.

    Returns
    -------
    np.ndarray, shape (n_seg, n_pos), float32, rows sum to 1

    Raises
    ------
    ValueError
        If ``n_seg`` exceeds ``n_pos`` or either is below 1.
    """
    if not 1 <= n_seg <= n_pos:
        raise ValueError(f"need 1 <= n_seg <= n_pos, got n_seg={n_seg}, n_pos={n_pos}")
    lab = np.zeros((n_seg, n_pos), np.float32)
    for i in range(1, n_seg + 1):
        lo = 1 + (i - 1) * n_pos // n_seg
        hi = -(-(i * n_pos) // n_seg)  # ceil
        lab[i - 1, lo - 1:hi] = 1.0
    return lab / lab.sum(axis=1, keepdims=True)


class TACos(keras.losses.Loss):
    """Temporal AdaCos (TACos) loss for embeddings with a temporal dimension.

    Implements Definition 6.4 of the thesis (``001_bc66ac417165e5b3.txt`` line 2152,
    eqs. 69-73): ``N_centers`` trainable centers per (keyword, relative position); the
    similarity of a segment's embedding sequence to a center set is the mean over its
    ``T`` frames of the maximum cosine similarity to the set's centers (eq. 69); one
    softmax over all (keyword, position) pairs with the dynamically adaptive scale
    ``s_hat`` of sub-cluster AdaCos (eq. 70; scale update as in Definition 3.4, with the
    target angle of a segment being the label-weighted angle over all (keyword,
    position) pairs); the keyword probability sums the softmax over positions, the
    position probability sums it over keywords; the loss is the cross-entropy of both
    with their (soft) labels (eqs. 71-72). Averaging over segments and samples (eq. 73)
    is done by the caller with per-segment weights ``1 / N_seg``.

    Parameters
    ----------
    n_keywords : int
        Keyword classes ``N_kw`` (words, their time-reversed copies, "no speech").
    n_positions : int
        ``N_pos``, the largest number of segments of a training sample (Definition 6.3).
    n_centers : int
        Centers per (keyword, position), 16 in the thesis.
    dim : int
        Embedding dimension ``D`` (128).
    seed : int
        Initial centers are drawn uniformly on the unit sphere with this seed.

    Call arguments
    --------------
    y_true : tensor, shape (batch, n_keywords + n_positions), float32
        Keyword labels then position labels (Definition 6.3; uniform for segments without
        speech and time-reversed segments), each part summing to 1.
    y_pred : tensor, shape (batch, T, D), float32
        Embedding sequences of the segments.

    Returns
    -------
    tensor, shape (batch,): ``L_kw + L_pos`` per segment (positive).

    Attributes
    ----------
    centers : keras Variable, shape (n_keywords * n_positions * n_centers, D), trainable
    scale : tf.Variable, scalar, not trainable; ``s_hat``
    """

    def __init__(self, n_keywords: int, n_positions: int, n_centers: int = 16, dim: int = 128,
                 seed: int = 0, name: str = "tacos_loss", **kwargs):
        super().__init__(name=name, **kwargs)
        self.n_keywords, self.n_positions, self.n_centers, self.dim = (
            n_keywords, n_positions, n_centers, dim)
        n_sets = n_keywords * n_positions
        self.centers = tf.Variable(random_unit_centers(n_sets, n_centers, dim, seed),
                                   trainable=True, name="tacos_centers")
        init = math.sqrt(2.0) * math.log(max(n_sets - 1, 2))
        self.scale = tf.Variable(init, trainable=False, dtype=tf.float32, name="tacos_scale")

    def similarities(self, embeddings):
        """Eq. 69: shape (batch, n_keywords * n_positions)."""
        e = tf.math.l2_normalize(tf.cast(embeddings, tf.float32), axis=-1)  # (B, T, D)
        c = tf.math.l2_normalize(self.centers, axis=-1)
        cos = tf.einsum("btd,cd->btc", e, c)  # (B, T, sets*centers)
        b, t = tf.shape(cos)[0], tf.shape(cos)[1]
        cos = tf.reshape(cos, (b, t, self.n_keywords * self.n_positions, self.n_centers))
        return tf.reduce_mean(tf.reduce_max(cos, axis=3), axis=1)

    def call(self, y_true, y_pred):
        y_true = tf.cast(y_true, tf.float32)
        lab_kw = y_true[:, :self.n_keywords]
        lab_pos = y_true[:, self.n_keywords:]
        sims = self.similarities(y_pred)  # (B, K*P)
        batch = tf.cast(tf.shape(sims)[0], tf.float32)

        joint = tf.reshape(lab_kw[:, :, None] * lab_pos[:, None, :], (-1, self.n_keywords * self.n_positions))
        s_prev = self.scale
        sims_sg = tf.stop_gradient(sims)
        sim_max = tf.reduce_max(s_prev * sims_sg)
        b_avg = tf.reduce_sum(tf.exp(s_prev * sims_sg - sim_max)) / batch
        angles = tf.acos(tf.clip_by_value(sims_sg, -1.0 + 1e-7, 1.0 - 1e-7))
        target_angles = tf.sort(tf.reduce_sum(joint * angles, axis=1))
        n = tf.shape(target_angles)[0]
        median = 0.5 * (target_angles[(n - 1) // 2] + target_angles[n // 2])
        new_scale = (sim_max + tf.math.log(b_avg)) / tf.cos(tf.minimum(math.pi / 4, median))
        self.scale.assign(new_scale)

        logits = tf.reshape(new_scale * sims, (-1, self.n_keywords, self.n_positions))
        log_norm = tf.reduce_logsumexp(logits, axis=[1, 2], keepdims=True)
        log_p = logits - log_norm
        log_p_kw = tf.reduce_logsumexp(log_p, axis=2)   # eq. 71
        log_p_pos = tf.reduce_logsumexp(log_p, axis=1)  # eq. 72
        return -(tf.reduce_sum(lab_kw * log_p_kw, axis=1) + tf.reduce_sum(lab_pos * log_p_pos, axis=1))

    def get_config(self):
        cfg = super().get_config()
        cfg.update(n_keywords=self.n_keywords, n_positions=self.n_positions,
                   n_centers=self.n_centers, dim=self.dim)
        return cfg
