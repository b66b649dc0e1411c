"""Training the ASD embedder with sub-cluster AdaCos and mixup (thesis Section 5.3.1)."""
from __future__ import annotations

import fnmatch
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from edge.audio import load_audio
from edge.frontend import AsdFrontendParams, asd_features
from trainer.data import ClipLabel, list_clips, training_data_hash

log = logging.getLogger(__name__)

__all__ = ["TrainConfig", "load_train_config", "TrainingSet", "train_asd"]


@dataclass
class DataSource:
    path: str
    machine: str | None = None
    split: str | None = None
    files: str | None = None  # fnmatch pattern on the file name


@dataclass
class TrainConfig:
    """Training configuration (``trainer/configs/asd_default.yaml``).

    ``data_root`` defaults to ``$HARK_DATA`` or ``../shared/data`` next to the project.
    """

    sources: list[DataSource]
    data_root: str | None = None
    name: str = "asd_default"
    epochs: int = 30
    steps_per_epoch: int | None = None
    batch_size: int = 32
    learning_rate: float = 1e-3
    n_centers: int = 16
    mixup_probability: float = 1.0
    seed: int = 0
    representative_samples: int = 64
    frontend: dict[str, Any] = field(default_factory=dict)
    model: dict[str, Any] = field(default_factory=dict)

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
    return TrainConfig(**raw)


class TrainingSet:
    """Normal training clips held in memory, with class indices.

    Attributes
    ----------
    waveforms : list of np.ndarray, each (n_samples_i,), float32
    labels : list of ClipLabel
    classes : list of str
        Sorted class names (machine x section x attributes).
    y : np.ndarray, shape (n_clips,), int
    paths : list of Path
    """

    def __init__(self, items: list[tuple[Path, ClipLabel]], frontend: AsdFrontendParams,
                 progress: bool = True):
        from tqdm import tqdm

        self.paths = [p for p, _ in items]
        self.labels = [lab for _, lab in items]
        self.classes = sorted({lab.class_name for lab in self.labels})
        index = {c: i for i, c in enumerate(self.classes)}
        self.y = np.array([index[lab.class_name] for lab in self.labels])
        self.frontend = frontend
        self.waveforms = [load_audio(p, frontend.sample_rate)
                          for p in tqdm(self.paths, desc="loading clips", disable=not progress)]

    @classmethod
    def from_config(cls, cfg: TrainConfig, base: Path, progress: bool = True) -> "TrainingSet":
        root = cfg.resolved_data_root(base)
        items: list[tuple[Path, ClipLabel]] = []
        for s in cfg.sources:
            found = list_clips(root / s.path, machine_hint=s.machine, split=s.split)
            if s.files:
                found = [(p, lab) for p, lab in found if fnmatch.fnmatch(p.name, s.files)]
            if not found:
                raise FileNotFoundError(f"source {s.path!r} (files={s.files!r}) matched no clip")
            items += found
        fe = AsdFrontendParams(**cfg.frontend)
        return cls(items, fe, progress)

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
        (spectrogram, spectrum) : float32 arrays, shapes (B, T, F) and (B, S)
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
        spec, dft = asd_features(wav, self.frontend)
        return (spec, dft), lab

    def features(self, indices=None, rng: np.random.Generator | None = None):
        """Unmixed features of the first 10 s (or a random crop when ``rng`` is given)."""
        indices = range(len(self)) if indices is None else indices
        wav = np.stack([np.pad(self.waveforms[i][: self.frontend.clip_samples],
                               (0, max(0, self.frontend.clip_samples - len(self.waveforms[i]))))
                        if rng is None else self.crop(i, rng) for i in indices])
        return asd_features(wav.astype(np.float32), self.frontend)


def train_asd(cfg: TrainConfig, data: TrainingSet, progress: bool = True):
    """Train the embedder; returns the float Keras model.

    The thesis trains for ten epochs over ~1000 clips per section with batch size 64
    and Adam; with the few clips available here an "epoch" is ``steps_per_epoch``
    batches of random crops (default: enough batches to draw every clip once).
    """
    import tensorflow as tf
    from tqdm import tqdm

    from trainer.losses import SubClusterAdaCos, random_unit_centers
    from trainer.model import AsdModelParams, build_asd_embedder

    tf.keras.utils.set_random_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    mp = AsdModelParams(**{k: tuple(v) if isinstance(v, list) else v
                           for k, v in cfg.model.items()})
    model = build_asd_embedder(data.frontend, mp)
    dim = model.output.shape[-1]
    n_cls = len(data.classes)
    loss_fn = SubClusterAdaCos(random_unit_centers(n_cls, cfg.n_centers, dim, cfg.seed),
                               n_cls, cfg.n_centers)
    opt = tf.keras.optimizers.Adam(cfg.learning_rate)

    @tf.function(reduce_retracing=True)
    def step(spec, dft, lab):
        with tf.GradientTape() as tape:
            emb = model([spec, dft], training=True)
            loss = tf.reduce_mean(loss_fn(lab, emb))
        grads = tape.gradient(loss, model.trainable_variables)
        opt.apply_gradients(zip(grads, model.trainable_variables))
        return loss

    steps = cfg.steps_per_epoch or max(1, int(np.ceil(len(data) / cfg.batch_size)))
    total = cfg.epochs * steps
    bar = tqdm(total=total, desc="training", unit="step", disable=not progress)
    history = []
    for epoch in range(cfg.epochs):
        losses = []
        for _ in range(steps):
            (spec, dft), lab = data.batch(cfg.batch_size, rng, cfg.mixup_probability)
            losses.append(float(step(spec, dft, lab)))
            bar.update(1)
            bar.set_postfix(epoch=epoch + 1, loss=f"{np.mean(losses):.3f}",
                            scale=f"{float(loss_fn.scale.numpy()):.1f}")
        history.append(float(np.mean(losses)))
        log.info("epoch %d/%d loss %.4f", epoch + 1, cfg.epochs, history[-1])
    bar.close()
    return model, history
