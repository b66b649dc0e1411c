"""Training the ASD embedder (thesis Chapter 5).

Auxiliary classification of machine type x section x attributes (Section 5.3.1) with
sub-cluster AdaCos (Definition 3.4) or AdaProj (Definition 5.2), mixup (Definition 2.9),
and optionally a second, self-supervised classification head with trainable centers
fed by the StatEx variant (Definition 5.5) and FeatEx (Definition 5.6), sequentially
combined as in Section 5.7.2 (Figure 25); ensembles of independently trained members.
""" 
from __future__ import annotations

import dataclasses
import fnmatch
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import yaml

from edge.audio import load_audio
from edge.backend import normalize_members
from edge.frontend import AsdFrontendParams, asd_features, spectrum_step_for
from edge.model import AsdEmbedder
from firmware_config.fileio import atomic_write_json
from trainer.data import (
    DEFAULT_CLASS_LABELS,
    ClipLabel,
    check_class_labels,
    list_clips,
    training_data_hash,
)
from trainer.embedding_spread import embedding_spread
from trainer.pseudo_labels import PSEUDO_LABEL_FEATURES, clip_features, pseudo_attribute_labels

log = logging.getLogger(__name__)

__all__ = ["TrainConfig", "load_train_config", "TrainingSet", "train_asd", "exchange_labels",
           "temporal_statex", "LOSSES", "SSL_METHODS"]


@dataclass
class DataSource:
    path: str
    machine: str | None = None
    split: str | None = None
    files: str | None = None  # fnmatch pattern on the file name


LOSSES = ("subcluster_adacos", "adaproj")
SSL_METHODS = ("statex", "featex")


@dataclass
class TrainConfig:
    """Training configuration (``trainer/configs/asd_default.yaml``).

    ``data_root`` defaults to ``$HARK_DATA`` or ``../shared/data`` next to the project.

    Attributes
    ----------
    loss : {"subcluster_adacos", "adaproj"}
        Loss of the classification task on meta information (non-trainable centers).
    n_centers : int
        Sub-clusters per class (sub-cluster AdaCos; 16 in the thesis) or the subspace
        dimension per class (AdaProj; 32 in Section 5.6.2).
    ssl : list of {"statex", "featex"}
        Self-supervised tasks of the second head, applied in this order (thesis Section
        5.7.2): each triples the number of SSL classes. Empty: no SSL head. Inputs
        changed by StatEx are simulated anomalies, so they are left out of the regular
        (meta-information) loss; FeatEx changes only the SSL head's embedding.
    ssl_probability : float
        Probability of applying each SSL augmentation to a sample (0.5 in the thesis).
    ssl_n_centers : int
        Centers (or subspace dimension) per SSL class; the SSL head uses ``loss`` with
        trainable centers.
    mixup_probability : float or None
        Per-sample mixup probability. ``None``: 1.0 without SSL, 0.5 with SSL (thesis
        Section 5.7.2).
    ensemble_size : int
        Independently trained members (seeds ``seed``, ``seed + 1``, ...); their anomaly
        scores are summed (thesis Section 5.8). Exported as one model.
    class_labels : list of {"machine", "section", "attributes", "dataset"}
        The labels a class is made of (:meth:`trainer.data.ClipLabel.class_key`); the
        thesis uses machine x section x attributes (Section 5.3.1); ``dataset`` adds the
        recording campaign.
    pseudo_labels : {"none", "stft_statistics", "embedding"}
        Feature space in which clips without attributes are clustered into
        pseudo-attributes (:mod:`trainer.pseudo_labels`, Fujimura et al. Section III-B):
        per-clip STFT statistics, or (``"embedding"``, the paper's "Class") the embeddings
        of a first model trained on the available labels, which doubles the training.
    pseudo_max_clusters : int
        Most pseudo-attributes per class.
    """

    sources: list[DataSource]
    data_root: str | None = None
    name: str = "asd_default"
    epochs: int = 30
    steps_per_epoch: int | None = None
    batch_size: int = 32
    learning_rate: float = 1e-3
    n_centers: int = 16
    loss: str = "subcluster_adacos"
    ssl: list[str] = field(default_factory=list)
    ssl_probability: float = 0.5
    ssl_n_centers: int = 16
    mixup_probability: float | None = None
    ensemble_size: int = 1
    seed: int = 0
    representative_samples: int = 64
    frontend: dict[str, Any] = field(default_factory=dict)
    model: dict[str, Any] = field(default_factory=dict)
    class_labels: list[str] = field(default_factory=lambda: list(DEFAULT_CLASS_LABELS))
    pseudo_labels: str = "none"
    pseudo_max_clusters: int = 4

    def __post_init__(self):
        check_class_labels(self.class_labels)
        if self.pseudo_labels not in PSEUDO_LABEL_FEATURES:
            raise ValueError(f"pseudo_labels must be one of {PSEUDO_LABEL_FEATURES}, "
                             f"got {self.pseudo_labels!r}")
        if self.loss not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES}, got {self.loss!r}")
        bad = [m for m in self.ssl if m not in SSL_METHODS]
        if bad or len(set(self.ssl)) != len(self.ssl):
            raise ValueError(f"ssl must list distinct methods out of {SSL_METHODS}, "
                             f"got {self.ssl!r}")
        for name in ("ssl_probability",) + (("mixup_probability",)
                                             if self.mixup_probability is not None else ()):
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:
                raise ValueError(f"{name} must lie in [0, 1], got {v}")
        for name in ("ensemble_size", "n_centers", "ssl_n_centers", "epochs", "batch_size",
                     "pseudo_max_clusters"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")

    @property
    def effective_mixup_probability(self) -> float:
        """1.0 without SSL, 0.5 with (thesis Section 5.7.2), unless set explicitly."""
        if self.mixup_probability is not None:
            return float(self.mixup_probability)
        return 0.5 if self.ssl else 1.0

    def resolved_data_root(self, base: Path) -> Path:
        root = self.data_root or os.environ.get("HARK_DATA")
        if root:
            return Path(root).expanduser()
        return (base / ".." / "shared" / "data").resolve()


def read_recipe(path: str | Path, recipe_class) -> dict[str, Any]:
    """The YAML mapping of a training recipe, checked against ``recipe_class``'s fields.

    Raises
    ------
    ValueError
        Unreadable file, invalid YAML, or unknown keys (named, with the known ones).
    """
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ValueError(f"cannot read training config {path}: {exc}") from exc
    known = set(recipe_class.__dataclass_fields__)
    unknown = set(raw) - known
    if unknown:
        raise ValueError(f"{path}: unknown key(s) {sorted(unknown)}; known: {sorted(known)}")
    return raw


def load_train_config(path: str | Path) -> TrainConfig:
    """Read and check a training YAML file.

    Raises
    ------
    ValueError
        Naming the offending key when the file has unknown or badly typed keys.
    """
    path = Path(path)
    raw = read_recipe(path, TrainConfig)
    if not raw.get("sources"):
        raise ValueError(f"{path}: 'sources' must list at least one data folder")
    srcs = []
    for i, s in enumerate(raw["sources"]):
        bad = set(s) - set(DataSource.__dataclass_fields__)
        if bad or "path" not in s:
            raise ValueError(f"{path}: sources[{i}] needs 'path' and may have machine, split, "
                             f"files; got {sorted(s)}")
        srcs.append(DataSource(**s))
    raw["sources"] = srcs
    try:
        return TrainConfig(**raw)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{path}: {exc}") from exc


def _dataset_name(source_path: str) -> str:
    """The recording campaign of a recipe source: its first folder below ``asd/``
    (``asd/mimii_fan_id00/normal`` -> ``mimii_fan_id00``), as the leave-one-machine-type-out
    evaluation names it (:class:`trainer.asd_lomo_data.TypedClip`)."""
    parts = Path(source_path).parts
    return parts[1] if len(parts) > 1 and parts[0] == "asd" else parts[0]


class TrainingSet:
    """Normal training clips held in memory, with class indices.

    Attributes
    ----------
    waveforms : list of np.ndarray, each (n_samples_i,), float32
    labels : list of ClipLabel
    classes : list of str
        Sorted class names (``class_labels`` of :class:`TrainConfig`, by default machine x
        section x attributes; with pseudo-attributes where the attributes are missing).
    class_names : list of str
        Each clip's class.
    pseudo_attributes : list of str
        Each clip's pseudo-attribute (:mod:`trainer.pseudo_labels`), ``""`` when none.
    y : np.ndarray, shape (n_clips,), int
    paths : list of Path
    """

    def __init__(self, items: list[tuple[Path, ClipLabel]],
                 frontend: AsdFrontendParams | dict[str, Any], progress: bool = True, *,
                 class_labels: Sequence[str] = DEFAULT_CLASS_LABELS,
                 pseudo_labels: str = "none", pseudo_max_clusters: int = 4, seed: int = 0):
        """``frontend`` may be the recipe's ``frontend`` mapping, where ``spectrum_step:
        auto`` is resolved from these clips (:func:`edge.frontend.spectrum_step_for`).
        ``class_labels``, ``pseudo_labels``, ``pseudo_max_clusters``: the classes
        (:class:`TrainConfig`); ``seed`` seeds the pseudo-label clustering."""
        from tqdm import tqdm

        auto = False
        if isinstance(frontend, dict):
            frontend = dict(frontend)
            auto = frontend.get("spectrum_step") == "auto"
            if auto:
                frontend.pop("spectrum_step")
            frontend = AsdFrontendParams(**frontend)

        self.paths = [p for p, _ in items]
        self.labels = [lab for _, lab in items]
        self.frontend = frontend
        self.waveforms = [load_audio(p, frontend.sample_rate)
                          for p in tqdm(self.paths, desc="loading clips", disable=not progress)]
        if auto:
            self.frontend = dataclasses.replace(
                frontend, spectrum_step=spectrum_step_for(self.waveforms, frontend))
        self._base_names = [lab.class_key(class_labels) for lab in self.labels]
        self.assign_pseudo_attributes(None)
        if pseudo_labels not in ("none", "embedding"):  # "embedding": train_asd's first pass
            self.assign_pseudo_attributes(clip_features(self.waveforms, pseudo_labels),
                                          max_clusters=pseudo_max_clusters, seed=seed)

    def assign_pseudo_attributes(self, features: np.ndarray | None, *, max_clusters: int = 4,
                                 seed: int = 0) -> int:
        """Split the classes of clips without attributes by clustering ``features``
        (:func:`trainer.pseudo_labels.pseudo_attribute_labels`, Fujimura et al. Section
        III-B); ``None`` removes the pseudo-attributes. Returns the number of clips given one.

        Parameters
        ----------
        features : np.ndarray, shape (n_clips, n_features), float, or None
            One vector per clip, e.g. :func:`trainer.pseudo_labels.clip_features` or the
            embeddings of a model trained on the available labels.
        """
        groups = ["" if lab.attributes else n for lab, n in zip(self.labels, self._base_names)]
        self.pseudo_attributes = ([""] * len(groups) if features is None else
                                  pseudo_attribute_labels(features, groups,
                                                          max_clusters=max_clusters, seed=seed))
        self.class_names = [f"{n}_{a}" if a else n
                            for n, a in zip(self._base_names, self.pseudo_attributes)]
        self.classes = sorted(set(self.class_names))
        index = {c: i for i, c in enumerate(self.classes)}
        self.y = np.array([index[n] for n in self.class_names])
        return sum(bool(a) for a in self.pseudo_attributes)

    @classmethod
    def for_recipe(cls, items: list[tuple[Path, ClipLabel]], cfg: "TrainConfig",
                   progress: bool = True) -> "TrainingSet":
        """``items`` with the recipe's frontend and classes (``class_labels``,
        ``pseudo_labels``)."""
        return cls(items, cfg.frontend, progress, class_labels=cfg.class_labels,
                   pseudo_labels=cfg.pseudo_labels,
                   pseudo_max_clusters=cfg.pseudo_max_clusters, seed=cfg.seed)

    @classmethod
    def from_config(cls, cfg: TrainConfig, base: Path, progress: bool = True,
                    extra_items: list[tuple[Path, ClipLabel]] = ()) -> "TrainingSet":
        """The recipe's sources (relative to its data root under ``base``), followed by
        ``extra_items`` (a site's recordings, :mod:`trainer.asd_adapt`)."""
        root = cfg.resolved_data_root(base)
        items: list[tuple[Path, ClipLabel]] = []
        for s in cfg.sources:
            dataset = _dataset_name(s.path)
            found = [(p, dataclasses.replace(lab, dataset=dataset)) for p, lab in
                     list_clips(root / s.path, machine_hint=s.machine, split=s.split)]
            if s.files:
                found = [(p, lab) for p, lab in found if fnmatch.fnmatch(p.name, s.files)]
            if not found:
                raise FileNotFoundError(f"source {s.path!r} (files={s.files!r}) matched no clip")
            items += found
        return cls.for_recipe(items + list(extra_items), cfg, progress)

    def __len__(self) -> int:
        return len(self.paths)

    def data_hash(self) -> str:
        return training_data_hash(self.paths)

    def crop(self, i: int, rng: np.random.Generator) -> np.ndarray:
        """A random ``clip_samples`` excerpt of clip ``i`` (zero-padded when shorter)."""
        y = self.waveforms[i]
        n = self.frontend.clip_samples
        if len(y) <= n:
            return np.pad(y, (0, n - len(y)))
        start = rng.integers(0, len(y) - n + 1)
        return y[start:start + n]

    def batch(self, batch_size: int, rng: np.random.Generator, mixup_probability: float):
        """One training batch with random class-balanced oversampling and mixup.

        Mixup (thesis Definition 2.9) with a uniformly drawn coefficient is applied to
        the waveforms, so the mixed features are the features of a mixed sound.

        Returns
        -------
        features : dict of str -> np.ndarray, float32
            :func:`edge.frontend.asd_features` of the batch, each (B, ...).
        labels : np.ndarray, shape (B, n_classes), float32 soft labels
        """
        n_cls = len(self.classes)
        cls = rng.integers(0, n_cls, batch_size)
        idx = np.array([rng.choice(np.flatnonzero(self.y == c)) for c in cls])
        wav = np.stack([self.crop(i, rng) for i in idx])
        lab = np.eye(n_cls, dtype=np.float32)[self.y[idx]]
        if mixup_probability > 0:
            lam = rng.uniform(0, 1, batch_size).astype(np.float32)
            lam[rng.uniform(size=batch_size) >= mixup_probability] = 1.0
            perm = rng.permutation(batch_size)
            wav = lam[:, None] * wav + (1 - lam[:, None]) * wav[perm]
            lab = lam[:, None] * lab + (1 - lam[:, None]) * lab[perm]
        return asd_features(wav, self.frontend), lab

    def features(self, indices=None, rng: np.random.Generator | None = None
                 ) -> dict[str, np.ndarray]:
        """Unmixed features of the first 10 s (or a random crop when ``rng`` is given)."""
        indices = range(len(self)) if indices is None else indices
        wav = np.stack([np.pad(self.waveforms[i][: self.frontend.clip_samples],
                               (0, max(0, self.frontend.clip_samples - len(self.waveforms[i]))))
                        if rng is None else self.crop(i, rng) for i in indices])
        return asd_features(wav.astype(np.float32), self.frontend)


def exchange_labels(labels: np.ndarray, partner: np.ndarray, applied: np.ndarray) -> np.ndarray:
    """SSL labels after an exchange (thesis eqs. 60-62): ``(0, lab/2, lab[partner]/2)``
    where ``applied``, else ``(lab, 0, 0)``.

    Parameters
    ----------
    labels : np.ndarray, shape (B, M), float32
    partner : np.ndarray, shape (B,), int
        Index of the sample each one exchanged with.
    applied : np.ndarray, shape (B,), bool

    Returns
    -------
    np.ndarray, shape (B, 3 * M), float32
    """
    zero = np.zeros_like(labels)
    a = applied[:, None]
    return np.concatenate([np.where(a, zero, labels), np.where(a, 0.5 * labels, zero),
                           np.where(a, 0.5 * labels[partner], zero)], axis=1).astype(np.float32)


def temporal_statex(features: dict[str, np.ndarray], partner: np.ndarray, applied: np.ndarray,
                    frontend: AsdFrontendParams) -> dict[str, np.ndarray]:
    """The StatEx variant on the spectrograms (thesis Definitions 5.4/5.5, eq. 59).

    *Temporal* StatEx: every frame's mean and standard deviation over the frequency
    axis are exchanged, ``x_new = (x1 - mu1) / sigma1 * sigma2 + mu2``; with temporal
    mean normalisation (TMN) frequency StatEx would be void (thesis, after
    Definition 5.5). The whole-clip spectrum is left as ``x1``'s.

    Parameters
    ----------
    features : dict of str -> np.ndarray
        A batch from :func:`edge.frontend.asd_features`; spectrograms (B, T, F).
    partner : np.ndarray, shape (B,), int
    applied : np.ndarray, shape (B,), bool
    frontend : AsdFrontendParams

    Returns
    -------
    dict, the same keys; spectrogram rows where ``applied`` are exchanged.
    """
    out = dict(features)
    for name in frontend.spectrogram_inputs:
        x = features[name]
        mu = x.mean(axis=-1, keepdims=True)
        sd = x.std(axis=-1, keepdims=True) + 1e-6
        new = (x - mu) / sd * sd[partner] + mu[partner]
        out[name] = np.where(applied[:, None, None], new, x).astype(np.float32)
    return out


def _make_loss(kind: str, n_classes: int, n_centers: int, dim: int, seed: int, trainable: bool,
               name: str):
    from trainer.losses import AdaProj, SubClusterAdaCos, random_unit_centers

    centers = random_unit_centers(n_classes, n_centers, dim, seed)
    if kind == "adaproj":
        return AdaProj(centers, n_classes, n_centers, trainable_centers=trainable, name=name)
    return SubClusterAdaCos(centers, n_classes, n_centers, trainable_centers=trainable, name=name)


def _train_member(cfg: TrainConfig, data: TrainingSet, seed: int, steps: int, bar, member: int):
    """Train one embedder; returns (model, per-epoch mean losses)."""
    import tensorflow as tf

    from trainer.model import AsdModelParams, build_asd_embedder

    tf.keras.utils.set_random_seed(seed)
    rng = np.random.default_rng(seed)
    mp = AsdModelParams(**{k: tuple(v) if isinstance(v, list) else v
                           for k, v in cfg.model.items()})
    model = build_asd_embedder(data.frontend, mp)
    names = [t.name.split(":")[0] for t in model.inputs]
    dim = model.output.shape[-1]
    n_cls = len(data.classes)
    loss_fn = _make_loss(cfg.loss, n_cls, cfg.n_centers, dim, seed, False, cfg.loss)
    ssl_fn = None
    if cfg.ssl:
        n_ssl = n_cls * 3 ** len(cfg.ssl)
        ssl_fn = _make_loss(cfg.loss, n_ssl, cfg.ssl_n_centers, dim, seed + 7919, True,
                            f"ssl_{cfg.loss}")
    featex = "featex" in cfg.ssl
    branch_dim = mp.embedding_dim
    opt = tf.keras.optimizers.Adam(cfg.learning_rate)
    variables = model.trainable_variables + (ssl_fn.trainable_variables if ssl_fn else [])

    @tf.function(reduce_retracing=True)
    def step(inputs, lab, weight, ssl_lab, fx_partner, fx_applied):
        with tf.GradientTape() as tape:
            emb = model(inputs, training=True)
            keep = weight > 0  # StatEx'd inputs are not samples of their class
            per = loss_fn(tf.boolean_mask(lab, keep), tf.boolean_mask(emb, keep))
            loss = per
            if ssl_fn is not None:
                if featex:  # Definition 5.6: spectrum-branch embedding of the partner
                    swapped = tf.concat([emb[:, :-branch_dim],
                                         tf.gather(emb[:, -branch_dim:], fx_partner)], axis=1)
                    emb_ssl = tf.where(fx_applied[:, None], swapped, emb)
                else:
                    emb_ssl = emb
                loss = per + ssl_fn(ssl_lab, emb_ssl)
        grads = tape.gradient(loss, variables)
        opt.apply_gradients(zip(grads, variables))
        return loss

    mixup_p = cfg.effective_mixup_probability
    history = []
    B = cfg.batch_size
    for epoch in range(cfg.epochs):
        losses = []
        for _ in range(steps):
            feats, lab = data.batch(B, rng, mixup_p)
            weight = np.ones(B, np.float32)
            ssl_lab = lab
            fx_partner = np.arange(B)
            fx_applied = np.zeros(B, bool)
            for method in cfg.ssl:
                partner = rng.permutation(B)
                applied = rng.uniform(size=B) < cfg.ssl_probability
                if method == "statex":
                    applied[0] = False  # keep at least one sample for the regular task
                    feats = temporal_statex(feats, partner, applied, data.frontend)
                    weight = np.where(applied, 0.0, weight).astype(np.float32)
                else:
                    fx_partner, fx_applied = partner, applied
                ssl_lab = exchange_labels(ssl_lab, partner, applied)
            loss = step({n: feats[n] for n in names}, lab, weight, ssl_lab,
                        fx_partner.astype(np.int32), fx_applied)
            losses.append(float(loss))
            bar.update(1)
            bar.set_postfix(member=member + 1, epoch=epoch + 1, loss=f"{np.mean(losses):.3f}",
                            scale=f"{float(loss_fn.scale.numpy()):.1f}")
        history.append(float(np.mean(losses)))
        log.info("member %d epoch %d/%d loss %.4f", member + 1, epoch + 1, cfg.epochs,
                 history[-1])
    return model, history


def train_asd(cfg: TrainConfig, data: TrainingSet, progress: bool = True):
    """Train the embedder (or the ensemble); returns ``(float Keras model, history)``.

    The thesis trains for ten epochs over ~1000 clips per section with batch size 64
    and Adam; with the few clips available here an "epoch" is ``steps_per_epoch``
    batches of random crops (default: enough batches to draw every clip once).
    ``history`` lists each member's per-epoch mean loss (one list per member).
    """
    from tqdm import tqdm

    from trainer.model import build_ensemble

    steps = cfg.steps_per_epoch or max(1, int(np.ceil(len(data) / cfg.batch_size)))
    if cfg.pseudo_labels == "embedding":
        # Fujimura et al.'s "Class" feature space: a model trained on the available labels
        # embeds the clips, whose classes without attributes are then split by clustering.
        with tqdm(total=cfg.epochs * steps, desc="first model (pseudo-labels)", unit="step",
                  disable=not progress) as first_bar:
            first, _ = _train_member(cfg, data, cfg.seed, steps, first_bar, 0)
        n = data.assign_pseudo_attributes(float_embeddings(first, data.features()),
                                          max_clusters=cfg.pseudo_max_clusters, seed=cfg.seed)
        log.info("pseudo-attributes for %d clips from a first model: %d classes", n,
                 len(data.classes))
        del first
    bar = tqdm(total=cfg.ensemble_size * cfg.epochs * steps, desc="training", unit="step",
               disable=not progress)
    members, histories = [], []
    for i in range(cfg.ensemble_size):
        model, hist = _train_member(cfg, data, cfg.seed + i, steps, bar, i)
        members.append(model)
        histories.append(hist)
    bar.close()
    return build_ensemble(members), histories


def float_embeddings(model, features: dict[str, np.ndarray], n_members: int = 1,
                     batch_size: int = 8) -> np.ndarray:
    """The float Keras model's embeddings, normalised as the node's int8 ones.

    Parameters
    ----------
    model : keras.Model
    features : dict of str -> np.ndarray, each (n, ...)
    n_members : int
        Ensemble members (:func:`edge.backend.normalize_members`).

    Returns
    -------
    np.ndarray, shape (n, D), float32
    """
    names = [t.name.split(":")[0] for t in model.inputs]
    out = model.predict({n: features[n] for n in names}, batch_size=batch_size, verbose=0)
    return normalize_members(out, n_members)


def export_asd_bundle(model, data: TrainingSet, cfg: TrainConfig, out_dir, history=None,
                      extra: dict | None = None) -> Path:
    """Convert to full-integer int8, write ``<out_dir>/<cfg.name>.{tflite,json}`` and record
    the int8-vs-float embedding cosine on the training clips in the metadata, and the
    spread of their int8 embeddings (:func:`trainer.embedding_spread.embedding_spread`,
    ``embedding_spread``: pairwise cosine percentiles, nearest-neighbour class agreement).

    Returns
    -------
    Path of the ``.tflite``.
    """
    from trainer.export import (
        convert_float,
        convert_int8,
        cosine_similarity_rows,
        write_bundle,
    )

    rng = np.random.default_rng(cfg.seed + 1)
    n_rep = min(cfg.representative_samples, 4 * len(data))
    idx = rng.integers(0, len(data), n_rep)
    rep = data.features(idx, rng)
    names = list(rep)
    tflite = convert_int8(model, ({n: rep[n][i] for n in names} for i in range(n_rep)))
    float_bytes = len(convert_float(model))
    meta = {
        "task": "asd",
        "frontend": dataclasses.asdict(data.frontend),
        "embedding_dim": int(model.output.shape[-1]),
        "inputs": list(data.frontend.input_shapes),
        "ensemble_members": cfg.ensemble_size,
        "classes": data.classes,
        "training_data_sha256": data.data_hash(),
        "training_clips": len(data),
        "training_config": {k: v for k, v in dataclasses.asdict(cfg).items() if k != "sources"},
        "training_sources": [dataclasses.asdict(s) for s in cfg.sources],
        "loss": cfg.loss,
        "ssl": list(cfg.ssl),
        "final_loss": float(np.mean([h[-1] for h in history])) if history else None,
        "float_tflite_size_bytes": float_bytes,
    }
    meta.update(extra or {})
    path = write_bundle(out_dir, cfg.name, tflite, meta)
    emb = AsdEmbedder(path)
    feats = data.features()
    ref = float_embeddings(model, feats, cfg.ensemble_size)
    q = np.stack([emb.embed_features({n: feats[n][i] for n in names}) for i in range(len(data))])
    cos = cosine_similarity_rows(ref, q)
    meta = dict(emb.metadata)
    meta["int8_vs_float_cosine"] = {"min": float(cos.min()), "mean": float(cos.mean())}
    if len(data) >= 2:
        meta["embedding_spread"] = embedding_spread(q, data.class_names)
    atomic_write_json(path.with_suffix(".json"), meta)
    return path
