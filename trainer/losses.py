"""Angular margin losses for the ASD embedder (Keras 3 subclassing API)."""
from __future__ import annotations

import math

import numpy as np
import tensorflow as tf
import keras

__all__ = ["random_unit_centers", "SubClusterAdaCos", "AdaProj", "relative_position_labels", "TACos"]


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


def _adaptive_scale(scale: tf.Variable, sims, labels):
    """AdaCos' dynamically adaptive scale, thesis Definition 3.4 eqs. 38-40.

    ``sims`` (B, M) are the cosine similarities the logits are made of and ``labels``
    (B, M) the soft labels spread over them; no gradient flows through the scale. The
    new value is assigned to ``scale`` and returned.
    """
    batch = tf.cast(tf.shape(sims)[0], tf.float32)
    s_prev = scale
    sims_sg = tf.stop_gradient(sims)
    sim_max = tf.reduce_max(s_prev * sims_sg)
    b_avg = tf.reduce_sum(tf.exp(s_prev * sims_sg - sim_max)) / batch
    angles = tf.acos(tf.clip_by_value(sims_sg, -1.0 + 1e-7, 1.0 - 1e-7))
    mixed_angles = tf.reduce_sum(labels * angles, axis=1)  # (B,)
    sorted_angles = tf.sort(mixed_angles)
    n = tf.shape(sorted_angles)[0]
    median = 0.5 * (sorted_angles[(n - 1) // 2] + sorted_angles[n // 2])
    new_scale = (sim_max + tf.math.log(b_avg)) / tf.cos(tf.minimum(math.pi / 4, median))
    scale.assign(new_scale)
    return new_scale


class _CenteredLoss(keras.losses.Loss):
    """Shared set-up of the angular margin losses: class centers (fixed or trainable) and
    the adaptive scale."""

    def __init__(self, centers: np.ndarray, n_classes: int, n_centers: int,
                 trainable_centers: bool, name: str, **kwargs):
        super().__init__(name=name, **kwargs)
        centers = np.asarray(centers, np.float32)
        if centers.shape[0] != n_classes * n_centers:
            raise ValueError(f"centers has {centers.shape[0]} rows, expected "
                             f"n_classes * n_centers = {n_classes * n_centers}")
        self.n_classes = n_classes
        self.n_centers = n_centers
        self.trainable_centers = trainable_centers
        unit = centers / np.linalg.norm(centers, axis=1, keepdims=True)
        self.centers = (tf.Variable(unit, trainable=True, name=f"{name}_centers")
                        if trainable_centers else tf.constant(unit))
        init = math.sqrt(2.0) * math.log(max(n_classes * n_centers - 1, 2))
        self.scale = tf.Variable(init, trainable=False, dtype=tf.float32, name="adacos_scale")

    @property
    def trainable_variables(self) -> list:
        """The centers when they are trainable (add them to the optimiser's variables)."""
        return [self.centers] if self.trainable_centers else []

    def _unit_centers(self):
        return tf.math.l2_normalize(self.centers, axis=-1) if self.trainable_centers \
            else self.centers

    def get_config(self):
        cfg = super().get_config()
        cfg.update(n_classes=self.n_classes, n_centers=self.n_centers,
                   trainable_centers=self.trainable_centers,
                   centers=np.asarray(self.centers).tolist())
        return cfg


class SubClusterAdaCos(_CenteredLoss):
    """Sub-cluster AdaCos loss with a dynamically adaptive scale.

    Implements Definition 3.4 of the thesis (``001_bc66ac417165e5b3.txt`` line 940,
    eqs. 38-42): ``N_centers`` centers per class (non-trainable for the
    classification task on meta information, trainable for the SSL head, thesis Section
    5.7.2), the scale ``s_hat`` updated every step from the batch (eq. 38) using
    ``B_avg`` over *all* centers (eq. 39, mixed-up samples count as anomalous), the
    median of the mixed-up angles summed over each class's centers, and the stability
    term ``sim_max`` (eq. 40). The class probability is the softmax mass of all of the
    class's sub-cluster centers (eq. 42); the loss is the cross-entropy with the
    (mixed-up) soft labels (eq. 41).

    Parameters
    ----------
    centers : np.ndarray, shape (n_classes * n_centers, D)
        Initial centers, grouped by class (see :func:`random_unit_centers`).
    n_classes, n_centers : int
    trainable_centers : bool
        Learn the centers (then pass :attr:`trainable_variables` to the optimiser).

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
                 trainable_centers: bool = False, name: str = "subcluster_adacos", **kwargs):
        super().__init__(centers, n_classes, n_centers, trainable_centers, name, **kwargs)

    def cosine_similarities(self, embeddings):
        """Cosine similarity of each embedding to every center, shape (batch, C * K)."""
        e = tf.math.l2_normalize(tf.cast(embeddings, tf.float32), axis=-1)
        return tf.matmul(e, self._unit_centers(), transpose_b=True)

    def call(self, y_true, y_pred):
        y_true = tf.cast(y_true, tf.float32)
        sims = self.cosine_similarities(y_pred)  # (B, C*K)
        new_scale = _adaptive_scale(self.scale, sims, tf.repeat(y_true, self.n_centers, axis=1))
        # Eqs. 41-42: class probability = softmax mass of the class's sub-clusters.
        logits = new_scale * sims
        log_norm = tf.reduce_logsumexp(logits, axis=1, keepdims=True)
        per_class = tf.reshape(logits, (-1, self.n_classes, self.n_centers))
        log_class_prob = tf.reduce_logsumexp(per_class, axis=2) - log_norm  # (B, C)
        return -tf.reduce_sum(y_true * log_class_prob, axis=1)


class AdaProj(_CenteredLoss):
    """AdaProj loss: angular margin to class-specific linear subspaces.

    Implements Definition 5.2 of the thesis (``001_bc66ac417165e5b3.txt`` line 1747,
    eqs. 54-56): every class ``k`` has ``subspace_dim`` basis vectors ``C_k`` (random and
    almost orthogonal, fixed or trainable); an embedding ``e`` is projected onto their
    span, ``P(e) = sum_c <e, c> c`` (Definition 5.1, eq. 54), and the class logit is the
    cosine similarity between ``e`` and ``P(e)``, both projected onto the unit sphere,
    times the AdaCos scale ``s_hat`` (updated as in Definition 3.4, eqs. 38-40, over the
    classes). By the remark after Definition 5.2, ``||e/|e| - P(e)/|P(e)| ||^2 =
    2 (1 - cos(e, P(e)))``, so softmax over the negative scaled distance (eq. 56) equals
    softmax over ``2 s_hat cos``; the factor 2 is absorbed into the adaptive scale. Any
    embedding inside ``span(C_k)`` is optimal for class ``k`` (Lemma 5.3), a larger
    solution space than sub-cluster AdaCos' points.

    Parameters
    ----------
    centers : np.ndarray, shape (n_classes * subspace_dim, D)
        Basis vectors grouped by class (:func:`random_unit_centers`); ``subspace_dim <
        D`` (the thesis uses 32, Section 5.6.2).
    n_classes, subspace_dim : int
    trainable_centers : bool

    Call arguments
    --------------
    y_true : tensor, shape (batch, n_classes), float32, soft labels
    y_pred : tensor, shape (batch, D), float32, embeddings

    Raises
    ------
    ValueError
        If ``subspace_dim >= D`` (the subspace would be the whole space) or the centers'
        shape does not match.
    """

    def __init__(self, centers: np.ndarray, n_classes: int, subspace_dim: int,
                 trainable_centers: bool = False, name: str = "adaproj", **kwargs):
        centers = np.asarray(centers, np.float32)
        if subspace_dim >= centers.shape[1]:
            raise ValueError(f"AdaProj subspace_dim ({subspace_dim}) must be smaller than the "
                             f"embedding dimension ({centers.shape[1]})")
        super().__init__(centers, n_classes, subspace_dim, trainable_centers, name, **kwargs)

    def cosine_similarities(self, embeddings):
        """cos(e, P_span(C_k)(e)) for every class, shape (batch, n_classes)."""
        e = tf.math.l2_normalize(tf.cast(embeddings, tf.float32), axis=-1)
        c = tf.reshape(self._unit_centers(), (self.n_classes, self.n_centers, -1))  # (N, M, D)
        coef = tf.einsum("bd,nmd->bnm", e, c)
        proj = tf.math.l2_normalize(tf.einsum("bnm,nmd->bnd", coef, c), axis=-1)
        return tf.einsum("bd,bnd->bn", e, proj)

    def call(self, y_true, y_pred):
        y_true = tf.cast(y_true, tf.float32)
        sims = self.cosine_similarities(y_pred)  # (B, N)
        new_scale = _adaptive_scale(self.scale, sims, y_true)
        log_prob = tf.nn.log_softmax(new_scale * sims, axis=1)
        return -tf.reduce_sum(y_true * log_prob, axis=1)


def relative_position_labels(n_seg: int, n_pos: int, *, allow_longer: bool = False) -> np.ndarray:
    """Categorical encoding of relative position (thesis Definition 6.3, eqs. 67-68).

    Segment ``i`` (1-based) of a sample with ``n_seg`` segments is active on positions
    ``1 + floor((i - 1) * n_pos / n_seg) ... ceil(i * n_pos / n_seg)``, each with equal
    probability.

    Parameters
    ----------
    n_seg, n_pos : int
    allow_longer : bool
        Allow ``n_seg > n_pos`` (not in the definition, where ``N_pos`` is the most segments
        of any sample): each segment then covers the one or two positions its share of the
        sample overlaps (:mod:`trainer.kws_head`, whose words may outnumber the positions).

    Returns
    -------
    np.ndarray, shape (n_seg, n_pos), float32, rows sum to 1

    Raises
    ------
    ValueError
        If ``n_seg`` exceeds ``n_pos`` (without ``allow_longer``) or either is below 1.
    """
    if n_seg < 1 or n_pos < 1 or (n_seg > n_pos and not allow_longer):
        raise ValueError(f"need 1 <= n_seg <= n_pos, got n_seg={n_seg}, n_pos={n_pos}")
    lab = np.zeros((n_seg, n_pos), np.float32)
    for i in range(1, n_seg + 1):
        lo = 1 + (i - 1) * n_pos // n_seg
        hi = max(lo, -(-(i * n_pos) // n_seg))  # ceil
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
