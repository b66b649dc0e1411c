"""Angular margin losses for the ASD embedder (Keras 3 subclassing API)."""
from __future__ import annotations

import math

import numpy as np
import tensorflow as tf
import keras

__all__ = ["random_unit_centers", "SubClusterAdaCos"]


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
