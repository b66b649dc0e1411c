"""Training the TACos keyword embedder (thesis Section 6.3, Table 30, Definitions 6.3-6.4).

Two modes share everything below:

* **generic**: many words by many speakers (``../shared/data/kws``, training speakers only),
  so that a node can enroll new keywords without retraining;
  ``python -m trainer train-kws`` / ``make export-tflite``;
* **per-deployment** (the thesis' setting): the enrolled shots themselves plus background;
  :func:`train_per_deployment`.

A training *sample* is one spoken word (trimmed with :func:`edge.vad.speech_interval`),
cut into segments of ``T`` frames every ``segment_hop_train`` frames (the thesis: 0.25 s
segments overlapping by a fifth), with half a segment of silence padded at both ends.
Keyword classes are the words, a time-reversed copy of every word (line 2174: reversed
segments, uniform position target) and "no speech" (real background recordings, uniform
position target). Batches draw words uniformly over classes (random oversampling), add
noise from the background recordings at a random SNR (log-Mel power domain; not in the
thesis, whose data are clean, but the node's are not), SpecAugment masks, and mixup with a
uniform coefficient.

With a ``teacher`` (issue 13's role (b), a recipe option: ``trainer/configs/kws_distilled.yaml``)
the embedder also learns to match a speech_embedding bundle (:mod:`edge.speech_embedding`,
Lin et al. 2020): a segment's embedding sequence, averaged over its ``T`` frames and mapped by
a trainable linear projection to 96 dimensions, is pulled towards the teacher's standardised
frame of the *clean* word nearest the segment's centre (cosine distance, the DTW's metric;
:func:`teacher_frame_index`). The projection is used in training only; the exported bundle is
the same log-Mel embedder as without a teacher.
"""
from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edge.audio import load_audio
from edge.kws_frontend import KwsFrontendParams, kws_logmel, kws_segments, segment_starts
from edge.model import KwsEmbedder
from edge.vad import speech_interval
from firmware_config.fileio import atomic_write_json

log = logging.getLogger(__name__)

__all__ = ["KwsTrainConfig", "load_kws_train_config", "KwsTrainingSet", "train_kws",
           "export_kws_bundle", "train_per_deployment", "teacher_frame_index", "NO_SPEECH"]

NO_SPEECH = "_no_speech_"


@dataclass
class KwsTrainConfig:
    """Training recipe (YAML keys of the same names; see ``trainer/configs/kws_default.yaml``).

    Attributes
    ----------
    name : str
        Bundle name (``models/<name>.tflite``).
    exclude_words : list of str
        Words never trained on (held out to measure enrolling unseen keywords).
    steps, batch_size, learning_rate : int, int, float
        Adam steps (learning rate decayed to a tenth with a cosine schedule); samples
        (words + no-speech) per batch before reversal.
    n_centers : int
        Centers per (keyword, position), 16.
    segment_hop_train : int
        Frames between training segments (12 ~ 0.2 s, the thesis' overlap of a fifth).
    segment_hop : int
        Default frames between segments at inference, stored in the bundle (1 = thesis).
    max_word_seconds : float
        Longer trimmed words are cut.
    reversed_segments : bool
        Add time-reversed copies as extra classes.
    no_speech_fraction : float
        Share of a batch drawn from background recordings.
    mixup_probability : float
        Probability that a batch is mixed up (uniform coefficient).
    noise_probability : float
        Probability that a word gets background noise at an SNR uniform in ``snr_db``.
    snr_db : list of float
        ``[low, high]``.
    freq_mask, time_mask : int
        SpecAugment: widest mel-band and frame mask (one of each per segment).
    representative_segments : int
        Segments used to calibrate int8 ranges.
    seed : int
    """

    name: str = "kws_default"
    exclude_words: list = field(default_factory=lambda: ["alexa", "computer"])
    steps: int = 600
    batch_size: int = 16
    learning_rate: float = 1e-3
    n_centers: int = 16
    segment_hop_train: int = 12
    segment_hop: int = 4
    max_word_seconds: float = 1.5
    reversed_segments: bool = True
    no_speech_fraction: float = 0.125
    mixup_probability: float = 0.5
    noise_probability: float = 0.5
    snr_db: list = field(default_factory=lambda: [0.0, 20.0])
    freq_mask: int = 8
    time_mask: int = 3
    representative_segments: int = 400
    seed: int = 0
    model: dict = field(default_factory=dict)
    teacher: str = ""
    teacher_weight: float = 1.0


def load_kws_train_config(path: str | Path) -> KwsTrainConfig:
    """Read a YAML recipe; unknown keys are an error naming the key and the file."""
    from trainer.train import read_recipe

    return KwsTrainConfig(**read_recipe(path, KwsTrainConfig))


def _add_noise_db(speech_db: np.ndarray, noise_db: np.ndarray, snr_db: float) -> np.ndarray:
    """Mix two log-Mel (dB) arrays of equal shape in the power domain at ``snr_db``."""
    s, n = 10 ** (speech_db / 10), 10 ** (noise_db / 10)
    gain = s.mean() / max(n.mean(), 1e-12) / 10 ** (snr_db / 10)
    return (10 * np.log10(s + gain * n + 1e-10)).astype(np.float32)


def teacher_frame_index(starts, n_teacher_frames: int,
                        params: KwsFrontendParams = KwsFrontendParams(),
                        teacher_frame_seconds: float = 0.08) -> np.ndarray:
    """The teacher frame nearest each segment's centre.

    Log-Mel frame ``j`` is centred at ``j * params.frame_seconds`` (centred STFT), so a
    segment starting at frame ``s`` is centred at ``(s + (T - 1) / 2) * frame_seconds``;
    teacher frame ``k`` is centred at ``k * teacher_frame_seconds``. Centres before the
    first or after the last teacher frame take that frame.

    Parameters
    ----------
    starts : array-like of int, shape (n_segments,)
        First log-Mel frame of each segment (may be negative; :func:`segment_starts`).
    n_teacher_frames : int
        Teacher frames of the word (at least 1).
    params : KwsFrontendParams
    teacher_frame_seconds : float
        Seconds between teacher frames (0.08 for speech_embedding).

    Returns
    -------
    np.ndarray, shape (n_segments,), int64, in ``[0, n_teacher_frames)``

    Raises
    ------
    ValueError
        ``n_teacher_frames`` below 1.
    """
    if n_teacher_frames < 1:
        raise ValueError("the teacher gave no frame for this word")
    centre = (np.asarray(starts, np.float64) + (params.segment_frames - 1) / 2) \
        * params.frame_seconds
    k = np.rint(centre / teacher_frame_seconds).astype(np.int64)
    return np.clip(k, 0, n_teacher_frames - 1)


class KwsTrainingSet:
    """Words as log-Mel frames, background log-Mel, and the batch generator.

    Parameters
    ----------
    words : list of (str, np.ndarray)
        ``(word, logmel)`` with logmel of the trimmed utterance, shape (n_frames, n_mels).
    background : list of np.ndarray
        Log-Mel frames of background recordings (no speech), each (n_frames, n_mels).
    cfg : KwsTrainConfig
    params : KwsFrontendParams
    teacher_frames : list of np.ndarray, optional
        Per word (same order as ``words``) the teacher's standardised frames of the clean
        trimmed word, shape (n_teacher_frames, teacher_dim), float32, one every
        ``teacher_frame_seconds``, frame ``k`` centred ``k * teacher_frame_seconds`` after
        the word's first sample (:meth:`edge.speech_embedding.SpeechEmbedder.embed_wave`).
    teacher_frame_seconds : float
        0.08 for speech_embedding.

    Attributes
    ----------
    teacher_dim : int
        Dimension of the teacher's frames (96), 0 without a teacher.
    vocabulary : list of str
        Word classes, sorted.
    classes : list of str
        Keyword classes of the loss: the words, ``<word>~reversed`` copies, ``_no_speech_``.
    n_positions : int
        ``N_pos`` (Definition 6.3): most segments of any word.
    """

    def __init__(self, words, background, cfg: KwsTrainConfig,
                 params: KwsFrontendParams = KwsFrontendParams(), teacher_frames=None,
                 teacher_frame_seconds: float = 0.08):
        if not words:
            raise ValueError("no training words")
        if teacher_frames is not None and len(teacher_frames) != len(words):
            raise ValueError(f"teacher_frames has {len(teacher_frames)} entries for "
                             f"{len(words)} words")
        if not background:
            raise ValueError("no background recordings for the no-speech class")
        self.cfg, self.params = cfg, params
        self.vocabulary = sorted({w for w, _ in words})
        self.by_word = {w: [m for ww, m in words if ww == w] for w in self.vocabulary}
        self.teacher_by_word = None if teacher_frames is None else {
            w: [t for (ww, _), t in zip(words, teacher_frames) if ww == w]
            for w in self.vocabulary}
        self.teacher_frame_seconds = teacher_frame_seconds
        self.teacher_dim = 0 if teacher_frames is None else int(teacher_frames[0].shape[1])
        self.background = [b for b in background if len(b) >= params.segment_frames]
        if not self.background:
            raise ValueError("background recordings are all shorter than one segment")
        self.classes = list(self.vocabulary)
        if cfg.reversed_segments:
            self.classes += [f"{w}~reversed" for w in self.vocabulary]
        self.classes.append(NO_SPEECH)
        self.n_positions = max(len(segment_starts(len(m), cfg.segment_hop_train, params))
                               for _, m in words)
        self.n_words = sum(len(v) for v in self.by_word.values())

    # -- construction from recordings --------------------------------------------------
    @classmethod
    def from_recordings(cls, utterances, background_waves, cfg: KwsTrainConfig,
                        params: KwsFrontendParams = KwsFrontendParams(), progress: bool = True,
                        teacher=None):
        """Load, trim (voice activity) and featurise recordings.

        Parameters
        ----------
        utterances : list of trainer.kws_data.Utterance
        background_waves : list of np.ndarray
            16 kHz background recordings (see :func:`trainer.kws_data.load_background`).
        teacher : edge.speech_embedding.SpeechEmbedder, optional
            Also embed every clean trimmed word with it (the teacher's targets).
        """
        from tqdm import tqdm

        words, teacher_frames = [], []
        skipped = 0
        for u in tqdm(utterances, desc="words", unit="file", disable=not progress):
            y = load_audio(u.path, params.sample_rate)
            iv = speech_interval(y, params.sample_rate)
            if iv is None:
                skipped += 1
                continue
            y = y[iv.slice(params.sample_rate)][: int(cfg.max_word_seconds * params.sample_rate)]
            words.append((u.word, kws_logmel(y, params)))
            if teacher is not None:
                teacher_frames.append(teacher.embed_wave(y))
        if skipped:
            log.info("skipped %d recordings without speech", skipped)
        background = [kws_logmel(b, params) for b in background_waves]
        if teacher is None:
            return cls(words, background, cfg, params)
        return cls(words, background, cfg, params, teacher_frames, teacher.frame_seconds)

    # -- batches -------------------------------------------------------------------------
    def _background_crop(self, n_frames: int, rng) -> np.ndarray:
        b = self.background[rng.integers(len(self.background))]
        if len(b) <= n_frames:
            return np.resize(b, (n_frames, b.shape[1]))
        s = rng.integers(0, len(b) - n_frames)
        return b[s:s + n_frames]

    def _spec_augment(self, segs: np.ndarray, rng) -> np.ndarray:
        T, F = segs.shape[1:]
        floor = -self.params.top_db
        for s in segs:
            if self.cfg.freq_mask:
                w = rng.integers(0, self.cfg.freq_mask + 1)
                f0 = rng.integers(0, F - w + 1)
                s[:, f0:f0 + w] = floor
            if self.cfg.time_mask:
                w = rng.integers(0, self.cfg.time_mask + 1)
                t0 = rng.integers(0, T - w + 1)
                s[t0:t0 + w, :] = floor
        return segs

    def batch(self, rng, augment: bool = True, teacher: bool = False):
        """One training batch.

        Parameters
        ----------
        rng : np.random.Generator
        augment : bool
            Noise, SpecAugment and mixup.
        teacher : bool
            Also return the teacher's targets (the set must have ``teacher_frames``).

        Returns
        -------
        x : np.ndarray, shape (n_segments, T, n_mels), float32
        y : np.ndarray, shape (n_segments, n_classes + n_positions), float32
            Keyword labels then position labels.
        w : np.ndarray, shape (n_segments,), float32
            ``1 / (N_seg(x) * n_samples)``, so that ``sum(w * loss)`` is eq. 73.
        t : np.ndarray, shape (n_segments, teacher_dim), float32
            Only with ``teacher``: the teacher's frame of the clean word nearest each
            segment's centre (:func:`teacher_frame_index`); mixed up like ``y``.
        has_t : np.ndarray, shape (n_segments,), float32
            Only with ``teacher``: 1 where ``t`` is a target (forward word segments, mixed
            only with such), else 0 (time-reversed and no-speech segments).
        """
        if teacher and self.teacher_by_word is None:
            raise ValueError("this training set has no teacher frames")
        from trainer.losses import relative_position_labels

        cfg, p = self.cfg, self.params
        K, P = len(self.classes), self.n_positions
        uniform = np.full(P, 1.0 / P, np.float32)
        xs, ys, ws, ts, hs = [], [], [], [], []
        n_no = max(1, int(round(cfg.batch_size * cfg.no_speech_fraction)))
        n_samples = 0
        t_dim = self.teacher_dim
        for _ in range(cfg.batch_size - n_no):
            wi = rng.integers(len(self.vocabulary))
            items = self.by_word[self.vocabulary[wi]]
            j = rng.integers(len(items))
            m = items[j]
            if augment and rng.random() < cfg.noise_probability:
                m = _add_noise_db(m, self._background_crop(len(m), rng), rng.uniform(*cfg.snr_db))
            starts = segment_starts(len(m), cfg.segment_hop_train, p)[:P]
            segs = kws_segments(m, starts, p)
            n = len(segs)
            if teacher:
                frames = self.teacher_by_word[self.vocabulary[wi]][j]
                ts.append(frames[teacher_frame_index(starts, len(frames), p,
                                                     self.teacher_frame_seconds)])
                hs.append(np.ones(n, np.float32))
                if cfg.reversed_segments:
                    ts.append(np.zeros((n, t_dim), np.float32))
                    hs.append(np.zeros(n, np.float32))
            lab = np.zeros((n, K + P), np.float32)
            lab[:, wi] = 1.0
            lab[:, K:] = relative_position_labels(n, P)
            xs.append(segs); ys.append(lab); ws.append(np.full(n, 1.0 / n, np.float32))
            n_samples += 1
            if cfg.reversed_segments:
                lab_r = np.zeros((n, K + P), np.float32)
                lab_r[:, len(self.vocabulary) + wi] = 1.0
                lab_r[:, K:] = uniform
                xs.append(segs[:, ::-1].copy()); ys.append(lab_r)
                ws.append(np.full(n, 1.0 / n, np.float32))
                n_samples += 1
        for _ in range(n_no):
            length = int(rng.integers(p.segment_frames, 4 * p.segment_frames))
            m = self._background_crop(length, rng)
            segs = kws_segments(m, segment_starts(len(m), cfg.segment_hop_train, p), p)[:P]
            n = len(segs)
            lab = np.zeros((n, K + P), np.float32)
            lab[:, K - 1] = 1.0
            lab[:, K:] = uniform
            xs.append(segs); ys.append(lab); ws.append(np.full(n, 1.0 / n, np.float32))
            if teacher:
                ts.append(np.zeros((n, t_dim), np.float32))
                hs.append(np.zeros(n, np.float32))
            n_samples += 1
        x, y, w = np.concatenate(xs), np.concatenate(ys), np.concatenate(ws) / n_samples
        t = np.concatenate(ts) if teacher else None
        has_t = np.concatenate(hs) if teacher else None
        if augment:
            x = self._spec_augment(x, rng)
            if rng.random() < cfg.mixup_probability:
                perm = rng.permutation(len(x))
                lam = rng.uniform(0, 1, len(x)).astype(np.float32)
                x = lam[:, None, None] * x + (1 - lam[:, None, None]) * x[perm]
                y = lam[:, None] * y + (1 - lam[:, None]) * y[perm]
                w = lam * w + (1 - lam) * w[perm]
                if teacher:
                    t = lam[:, None] * t + (1 - lam[:, None]) * t[perm]
                    has_t = has_t * has_t[perm]
        if teacher:
            return x.astype(np.float32), y, w.astype(np.float32), t.astype(np.float32), has_t
        return x.astype(np.float32), y, w.astype(np.float32)

    def representative(self, n: int, rng) -> np.ndarray:
        """``n`` un-augmented segments (words, some with noise, and background) for int8."""
        out = []
        while sum(len(o) for o in out) < n:
            x, _, _ = self.batch(rng, augment=False)
            out.append(x)
        x = np.concatenate(out)
        return x[rng.permutation(len(x))[:n]]


def train_kws(cfg: KwsTrainConfig, data: KwsTrainingSet, progress: bool = True):
    """Train the TACos embedder; returns ``(keras model, loss history per 50 steps)``.

    When ``data`` has teacher frames and ``cfg.teacher_weight > 0`` the loss of a batch is
    ``sum(w * L_TACos) + teacher_weight * sum(w h (1 - cos(P mean_T(e), t))) / sum(w h)``
    (``h``: the batch's ``has_t``; ``P``: a linear projection trained alongside and not
    exported); the history then holds the total.
    """
    import tensorflow as tf
    from tqdm import tqdm

    from trainer.losses import TACos
    from trainer.model import KwsModelParams, build_kws_embedder

    tf.keras.utils.set_random_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    mp = KwsModelParams(**{k: tuple(v) if isinstance(v, list) else v for k, v in cfg.model.items()})
    model = build_kws_embedder(data.params, mp)
    loss_fn = TACos(len(data.classes), data.n_positions, cfg.n_centers, mp.embedding_dim, cfg.seed)
    # Adam with a cosine decay of the learning rate to a tenth over the run.
    lr = tf.keras.optimizers.schedules.CosineDecay(cfg.learning_rate, max(cfg.steps, 1), alpha=0.1)
    opt = tf.keras.optimizers.Adam(lr)
    variables = model.trainable_variables + [loss_fn.centers]
    T, F = data.params.segment_frames, data.params.n_mels
    width = len(data.classes) + data.n_positions
    use_teacher = data.teacher_by_word is not None and cfg.teacher_weight > 0
    t_dim = data.teacher_dim if use_teacher else 1
    if use_teacher:
        projection = tf.keras.layers.Dense(t_dim, use_bias=False, name="teacher_projection")
        projection.build((None, mp.embedding_dim))
        variables += projection.trainable_variables

    @tf.function(input_signature=[tf.TensorSpec((None, T, F), tf.float32),
                                  tf.TensorSpec((None, width), tf.float32),
                                  tf.TensorSpec((None,), tf.float32),
                                  tf.TensorSpec((None, t_dim), tf.float32),
                                  tf.TensorSpec((None,), tf.float32)])
    def step(x, y, w, t, has_t):
        with tf.GradientTape() as tape:
            emb = model(x, training=True)
            loss = tf.reduce_sum(w * loss_fn(y, emb))
            if use_teacher:  # cosine distance of the projected segment to the teacher frame
                # keras' cosine_similarity is minus the cosine: 1 + it is the distance
                dist = 1.0 + tf.keras.losses.cosine_similarity(
                    t, projection(tf.reduce_mean(emb, axis=1)))
                wt = w * has_t
                loss += cfg.teacher_weight * tf.reduce_sum(wt * dist) \
                    / tf.maximum(tf.reduce_sum(wt), 1e-9)
        grads = tape.gradient(loss, variables)
        opt.apply_gradients(zip(grads, variables))
        return loss

    history, window = [], []
    bar = tqdm(total=cfg.steps, desc="training TACos" + (" with a teacher" if use_teacher else ""),
               unit="step", disable=not progress)
    for i in range(cfg.steps):
        if use_teacher:
            x, y, w, t, has_t = data.batch(rng, teacher=True)
        else:
            x, y, w = data.batch(rng)
            t, has_t = np.zeros((len(x), 1), np.float32), np.zeros(len(x), np.float32)
        window.append(float(step(x, y, w, t, has_t)))
        bar.update(1)
        bar.set_postfix(loss=f"{np.mean(window):.3f}", scale=f"{float(loss_fn.scale.numpy()):.1f}")
        if len(window) == 50 or i == cfg.steps - 1:
            history.append(float(np.mean(window)))
            log.info("step %d/%d loss %.4f", i + 1, cfg.steps, history[-1])
            window = []
    bar.close()
    return model, history


def export_kws_bundle(model, data: KwsTrainingSet, cfg: KwsTrainConfig, out_dir, extra=None,
                      check_segments: np.ndarray | None = None) -> Path:
    """Convert to int8, write ``<out_dir>/<cfg.name>.{tflite,json}``, check int8 vs float.

    Parameters
    ----------
    check_segments : np.ndarray, shape (n, T, n_mels), optional
        Held-out segments on which the int8 and float frame embeddings are compared
        (cosine); default: fresh segments from the training set.

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
    rep = data.representative(cfg.representative_segments, rng)
    tflite = convert_int8(model, ({"segment": s} for s in rep))
    meta = {
        "task": "kws",
        "frontend": data.params.to_dict(),
        "embedding_dim": int(model.output.shape[-1]),
        "inputs": ["segment"],
        "segment_hop": cfg.segment_hop,
        "vocabulary": data.vocabulary,
        "classes": data.classes,
        "n_positions": data.n_positions,
        "training_words": data.n_words,
        "loss": "tacos_loss",
        "training_config": dataclasses.asdict(cfg),
        "float_tflite_size_bytes": len(convert_float(model)),
    }
    meta.update(extra or {})
    path = write_bundle(out_dir, cfg.name, tflite, meta)
    if check_segments is None:
        check_segments = data.representative(200, np.random.default_rng(cfg.seed + 2))
    emb = KwsEmbedder(path)
    q = emb.embed_segments(check_segments).reshape(-1, meta["embedding_dim"])
    ref = model.predict(check_segments, verbose=0).reshape(-1, meta["embedding_dim"])
    cos = cosine_similarity_rows(ref, q)
    meta = dict(emb.metadata)
    meta["int8_vs_float_cosine"] = {"min": float(cos.min()), "mean": float(cos.mean()),
                                    "frames": int(len(cos))}
    atomic_write_json(path.with_suffix(".json"), meta)
    return path


def train_per_deployment(shots: dict, background_waves, out_dir, *, steps: int = 200,
                         seed: int = 0, name: str = "kws_deployment", progress: bool = True,
                         params: KwsFrontendParams = KwsFrontendParams()) -> Path:
    """The thesis' per-deployment mode: train on the enrolled shots themselves.

    Parameters
    ----------
    shots : dict of str -> list of np.ndarray
        Trimmed 16 kHz waveforms per keyword.
    background_waves : list of np.ndarray
        Background recordings (the "no speech" class and noise augmentation).
    out_dir : path
        Where the bundle is written.

    Returns
    -------
    Path of the int8 ``.tflite``.
    """
    cfg = KwsTrainConfig(name=name, exclude_words=[], steps=steps, seed=seed)
    words = [(k, kws_logmel(y, params)) for k, ys in shots.items() for y in ys]
    background = [kws_logmel(b, params) for b in background_waves]
    data = KwsTrainingSet(words, background, cfg, params)
    model, history = train_kws(cfg, data, progress=progress)
    return export_kws_bundle(model, data, cfg, out_dir, extra={"mode": "per-deployment",
                                                                "final_loss": history[-1]})
