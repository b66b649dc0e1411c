"""A head on Google's speech_embedding frames: TACos, a clean-speech teacher, or both.

The pretrained speech_embedding (:mod:`edge.speech_embedding`) gives one 96-dimensional frame
per 80 ms, each covering 0.78 s of audio. This module trains a small per-frame network on the
standardised frames and ships it as a third int8 TFLite file of the bundle, so that the node
runs mel model -> embedding model -> head and the DTW backend works on the head's output.

The head is residual, ``h(x) = x + W2 gelu(W1 x + b1) + b2`` (``hidden`` units; ``hidden = 0``
gives a linear map initialised to the identity), so that training starts from the pretrained
representation and only learns a correction. Two objectives (``objective``):

* ``tacos``: the TACos loss (thesis Definitions 6.3 and 6.4, ``001_bc66ac417165e5b3.txt``
  line 2152, eqs. 67-73; :class:`trainer.losses.TACos`) on word classes. A *segment* is one
  frame (``T = 1`` in eq. 69; a frame already spans 0.78 s) whose centre lies inside the
  word's speech (:func:`edge.vad.shot_interval`); its keyword class is the word or text, its
  relative-position label follows Definition 6.3 with ``N_pos = n_positions`` (a word with
  more frames than positions spreads each frame over the one or two positions its share of
  the word covers). Background frames form the "no speech" class, uniform position target.
* ``teacher``: the pretrained model itself is the teacher. The head sees the frames of a
  recording with noise, reverberation and gain applied and learns to give the frames the
  pretrained model gives for the *clean* recording (cosine distance, the DTW's metric; frames
  of the two are aligned in time), and to leave clean frames as they are.

Training data (``sources``): real words (Speech Commands, train-split speakers, never a dev
keyword) and the synthetic vocabulary of :mod:`trainer.kws_vocabulary` (every text is a
class). Each recording is embedded once clean and ``augment_passes`` times with noise at a
random SNR (``noise``: machine recordings by default, which the keyword evaluation's streams
never use), a synthetic room impulse response (exponentially decaying noise, random RT60)
and a random gain.

Contents
--------
HeadConfig, read_head_config, HeadTrainingSet, build_head_training_set, train_head,
export_head_bundle, room_impulse_response, augment_recording, training_words
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from scipy.signal import fftconvolve
from tqdm import tqdm

from edge.audio import load_audio
from edge.model import load_bundle
from edge.speech_embedding import RAW_DIM, SpeechEmbedder
from edge.vad import shot_interval
from firmware_config.fileio import atomic_write_bytes, atomic_write_json, sha256_file
from trainer.kws_data import list_words, load_background, load_machine_noise, speaker_split
from trainer.kws_speech_embedding import derived_bundle_metadata
from trainer.kws_thresholds import PRETRAINED_REAL_KEYWORDS
from trainer.kws_vocabulary import read_vocabulary
from trainer.kws_wakeword import WAKEWORD_KEYWORDS

log = logging.getLogger(__name__)

__all__ = ["HeadConfig", "HeadTrainingSet", "build_head_training_set", "train_head",
           "export_head_bundle", "read_head_config", "room_impulse_response",
           "augment_recording", "training_words",
           "SOURCES", "OBJECTIVES", "NOISES", "check_sources"]

SAMPLE_RATE = 16000
#: Training sources a recipe may name.
SOURCES = ("real", "synthetic")

#: Training objectives and augmentation noises a recipe may name.
OBJECTIVES = ("tacos", "teacher", "tacos+teacher")
NOISES = ("machines", "background")
NO_SPEECH = "_no_speech_"


def check_sources(sources) -> None:
    """Raise ``ValueError`` unless ``sources`` (a recipe's ``sources`` key) is a non-empty
    subset of :data:`SOURCES`; shared by the head's and the fine-tuning's recipes."""
    if not sources or set(sources) - set(SOURCES):
        raise ValueError(f"sources must be a non-empty subset of {list(SOURCES)}, got {sources}")


@dataclass
class HeadConfig:
    """Recipe of the head (``python -m trainer train-kws-head``).

    Attributes
    ----------
    name : str
        Bundle name (``<out>/<name>.tflite``, ``<name>_head.tflite``, ``<name>_mel.tflite``).
    objective : str
        ``"tacos"`` (the TACos loss on word classes), ``"teacher"`` (the pretrained model's
        frame of the *clean* recording is the target of the head on the augmented one:
        cosine distance, a denoising teacher), or ``"tacos+teacher"`` (their sum, the
        teacher term weighted by ``teacher_weight``).
    noise : str
        Augmentation noise: ``"machines"`` (every recording under ``asd/``, noise types the
        keyword evaluation's streams never use) or ``"background"`` (train-split ``noise/``
        and ``_silence_``, the evaluation's noise types).
    teacher_weight : float
    sources : list of str
        ``"real"`` and/or ``"synthetic"`` (:data:`SOURCES`).
    exclude_words : list of str
        Real words never trained on: the threshold table's calibration words
        (:data:`trainer.kws_thresholds.PRETRAINED_REAL_KEYWORDS`), so that the table measures
        keywords the head never heard.
    hidden : int
        Hidden units of the residual MLP; 0: a linear map (identity at the start).
    n_positions : int
        ``N_pos`` of Definition 6.3.
    n_centers : int
        Centers per (keyword, position); 1-2 suffice with thousands of classes.
    steps, batch_size, learning_rate : int, int, float
        Adam steps (cosine decay to a tenth), recordings per batch.
    augment_passes : int
        Augmented embeddings per recording besides the clean one.
    snr_db, rt60_s : list of float
        ``[low, high]`` of the noise SNR and of the reverberation time.
    noise_probability, reverb_probability : float
    gain_db : float
        Random gain within +-gain_db.
    no_speech_fraction : float
        Background segments per batch, as a share of the recordings.
    max_real_words : int
        At most this many real recordings (0: all).
    representative_frames : int
        Frames for the int8 ranges.
    seed : int
    """

    name: str = "kws_speech_tacos"
    objective: str = "tacos"
    noise: str = "machines"
    teacher_weight: float = 1.0
    sources: list = field(default_factory=lambda: ["real", "synthetic"])
    exclude_words: list = field(default_factory=lambda: list(PRETRAINED_REAL_KEYWORDS))
    hidden: int = 256
    n_positions: int = 8
    n_centers: int = 1
    steps: int = 3000
    batch_size: int = 64
    learning_rate: float = 1e-3
    augment_passes: int = 2
    snr_db: list = field(default_factory=lambda: [0.0, 20.0])
    rt60_s: list = field(default_factory=lambda: [0.15, 0.8])
    noise_probability: float = 0.7
    reverb_probability: float = 0.5
    gain_db: float = 6.0
    no_speech_fraction: float = 0.125
    max_real_words: int = 0
    representative_frames: int = 2000
    seed: int = 0

    def __post_init__(self):
        check_sources(self.sources)
        if self.objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {list(OBJECTIVES)}, got {self.objective!r}")
        if self.noise not in NOISES:
            raise ValueError(f"noise must be one of {list(NOISES)}, got {self.noise!r}")
        if self.n_positions < 1 or self.n_centers < 1 or self.hidden < 0:
            raise ValueError("n_positions and n_centers must be at least 1, hidden at least 0")


def room_impulse_response(rt60_s: float, rng: np.random.Generator,
                          sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """A synthetic room impulse response: a direct path, then Gaussian noise decaying by 60 dB
    in ``rt60_s`` seconds (the statistical model of late reverberation).

    Returns
    -------
    np.ndarray, shape (int(rt60_s * sample_rate),), float32, unit energy
    """
    n = max(int(rt60_s * sample_rate), 2)
    t = np.arange(n) / sample_rate
    h = rng.standard_normal(n) * np.exp(-6.908 * t / rt60_s) * 0.3
    h[0] = 1.0
    return (h / np.sqrt(np.sum(h ** 2))).astype(np.float32)


def augment_recording(y: np.ndarray, iv, background: Sequence[np.ndarray], cfg,
                      rng: np.random.Generator) -> np.ndarray:
    """A recording with reverberation, noise and gain, as the head and the fine-tuning of
    :mod:`trainer.kws_denoise` train on.

    With probability ``cfg.reverb_probability`` the recording is convolved with a
    :func:`room_impulse_response` (RT60 uniform in ``cfg.rt60_s``) and rescaled to the speech's
    RMS; with probability ``cfg.noise_probability`` a random stretch of a random
    ``background`` recording is added at an SNR uniform in ``cfg.snr_db`` (against the RMS of
    the speech interval ``iv``); then a gain uniform in +-``cfg.gain_db`` dB.

    Parameters
    ----------
    y : np.ndarray, shape (n_samples,), float
        16 kHz mono in [-1, 1].
    iv : edge.vad.SpeechInterval
        The speech in ``y`` (seconds from its start).
    background : sequence of np.ndarray
        Noise recordings, 16 kHz mono.
    cfg : HeadConfig or trainer.kws_denoise.DenoiseConfig
        Anything with the fields named above.
    rng : np.random.Generator

    Returns
    -------
    np.ndarray, shape (n_samples,), float32, clipped to [-1, 1]
    """
    y = y.astype(np.float32)
    a = int(iv.start_s * SAMPLE_RATE)
    b = max(int(iv.end_s * SAMPLE_RATE), a + 1)
    rms = float(np.sqrt(np.mean(y[a:b] ** 2))) + 1e-9
    if rng.random() < cfg.reverb_probability:
        h = room_impulse_response(rng.uniform(*cfg.rt60_s), rng)
        y = fftconvolve(y, h)[:len(y)].astype(np.float32)
        y *= rms / (float(np.sqrt(np.mean(y[a:b] ** 2))) + 1e-9)
    if background and rng.random() < cfg.noise_probability:
        bg = background[int(rng.integers(len(background)))]
        s = int(rng.integers(0, max(len(bg) - len(y), 1)))
        n = np.resize(bg[s:s + len(y)], len(y))
        n_rms = float(np.sqrt(np.mean(n ** 2))) + 1e-9
        y = y + n * (rms / n_rms) * 10 ** (-rng.uniform(*cfg.snr_db) / 20)
    y = y * 10 ** (rng.uniform(-cfg.gain_db, cfg.gain_db) / 20)
    return np.clip(y, -1.0, 1.0).astype(np.float32)


@dataclass
class HeadTrainingSet:
    """Word frames with their classes, and background frames.

    Attributes
    ----------
    classes : list of str
        Keyword classes of the loss: words and texts, then ``_no_speech_``.
    words : list of (int, np.ndarray)
        ``(class index, frames)``; frames of shape (n, 96), float32, standardised, the word's
        speech only; several entries per recording (clean and augmented).
    no_speech : np.ndarray, shape (m, 96), float32
    counts : dict
        Recordings per source, texts, frames.
    sources : list of str
        The source of each entry of ``words``.
    clean_of : list of int
        For each entry of ``words``, the entry of the same recording embedded clean (itself
        for a clean one); the frames of both are aligned.
    """

    classes: list
    words: list
    no_speech: np.ndarray
    counts: dict
    sources: list
    clean_of: list

    def subset(self, sources: Sequence[str]) -> "HeadTrainingSet":
        """Only the words of ``sources`` (classes renumbered), e.g. to compare real,
        synthetic and both on one embedding run."""
        keep = [i for i, s in enumerate(self.sources) if s in sources]
        used = sorted({self.words[i][0] for i in keep})
        new = {old: j for j, old in enumerate(used)}
        where = {old: j for j, old in enumerate(keep)}
        words = [(new[self.words[i][0]], self.words[i][1]) for i in keep]
        counts = {**self.counts,
                  "recordings": {s: n for s, n in self.counts["recordings"].items()
                                 if s in sources},
                  "classes": len(used), "segments": int(sum(len(f) for _, f in words))}
        return HeadTrainingSet([self.classes[o] for o in used] + [NO_SPEECH], words,
                               self.no_speech, counts, [self.sources[i] for i in keep],
                               [where[self.clean_of[i]] for i in keep])

    def batch(self, cfg: HeadConfig, rng: np.random.Generator):
        """One batch: ``x`` (n, 1, 96) frames, ``y`` (n, K + P) labels, ``w`` (n,) weights
        (``1 / (N_seg n_samples)``, eq. 73), ``t`` (n, 96) the teacher's frames (the clean
        recording's; background frames are their own)."""
        from trainer.losses import relative_position_labels  # TensorFlow: training only

        K, P = len(self.classes), cfg.n_positions
        xs, ys, ws, ts = [], [], [], []
        for i in rng.integers(len(self.words), size=cfg.batch_size):
            k, f = self.words[int(i)]
            lab = np.zeros((len(f), K + P), np.float32)
            lab[:, k] = 1.0
            lab[:, K:] = relative_position_labels(len(f), P, allow_longer=True)
            xs.append(f); ys.append(lab); ws.append(np.full(len(f), 1.0 / len(f), np.float32))
            ts.append(self.words[self.clean_of[int(i)]][1])
        n_no = max(1, int(round(cfg.batch_size * cfg.no_speech_fraction)))
        for s in rng.integers(0, max(len(self.no_speech) - 5, 1), size=n_no):
            f = self.no_speech[int(s):int(s) + 5]
            lab = np.zeros((len(f), K + P), np.float32)
            lab[:, K - 1] = 1.0
            lab[:, K:] = 1.0 / P
            xs.append(f); ys.append(lab); ws.append(np.full(len(f), 1.0 / len(f), np.float32))
            ts.append(f)
        w = np.concatenate(ws) / (cfg.batch_size + n_no)
        return (np.concatenate(xs)[:, None, :], np.concatenate(ys), w.astype(np.float32),
                np.concatenate(ts))


def _word_frames(embedder: SpeechEmbedder, y: np.ndarray, iv) -> np.ndarray:
    f = embedder.embed_wave(y)
    t = np.arange(len(f)) * embedder.frame_seconds
    sel = (t >= iv.start_s) & (t <= iv.end_s)
    if not sel.any():
        sel[int(np.argmin(np.abs(t - 0.5 * (iv.start_s + iv.end_s))))] = True
    return f[sel]


def training_words(data_dir: str | Path, exclude_words: Sequence[str], seed: int,
                   limit: int = 0) -> list:
    """The keyword training pool: real words a keyword network may train on, shuffled.

    Speech Commands and wake-word recordings of train-split speakers
    (:func:`trainer.kws_data.speaker_split`), without the wake-word dev keywords or any word
    of theirs (``smart_mirror`` also bans ``smart`` and ``mirror``), without
    ``exclude_words`` and without the ``_background_noise_``-style folders.

    Parameters
    ----------
    data_dir : str or Path
        Shared data folder (with ``kws/``).
    exclude_words : sequence of str
        Further words to leave out (the threshold table's calibration words).
    seed : int
        Shuffle seed (:class:`random.Random`).
    limit : int
        Keep the first ``limit`` after shuffling; 0 keeps all.

    Returns
    -------
    list of trainer.kws_data.Utterance
    """
    banned = {k for kw in WAKEWORD_KEYWORDS for k in (kw, *kw.split("_"))} | set(exclude_words)
    utts = [u for u in speaker_split(list_words(Path(data_dir) / "kws"))["train"]
            if u.word not in banned and not u.word.startswith("_")]
    random.Random(seed).shuffle(utts)
    return utts[:limit or None]


def build_head_training_set(embedder: SpeechEmbedder, data_dir: str | Path,
                            vocabulary_dir: str | Path | None, cfg: HeadConfig, *,
                            progress: bool = False) -> HeadTrainingSet:
    """Embed the recipe's sources (module docstring) with the bundle's standardisation.

    Parameters
    ----------
    embedder : SpeechEmbedder
        The base bundle, without a head.
    data_dir : str or Path
        Shared data folder (``kws/`` and ``noise/``).
    vocabulary_dir : str or Path, optional
        A :mod:`trainer.kws_vocabulary` folder; required when ``"synthetic"`` is a source.
    cfg : HeadConfig
    progress : bool

    Raises
    ------
    ValueError
        The embedder is not a speech_embedding bundle or has a head already, or
        ``"synthetic"`` is a source without a vocabulary folder.
    FileNotFoundError
        A missing vocabulary manifest or clip.
    """
    if not isinstance(embedder, SpeechEmbedder):
        raise ValueError(f"{embedder.path}: not a speech_embedding bundle (the head is trained "
                         "on the pretrained model's frames: models/kws_speech.tflite)")
    if embedder.metadata.get("head"):
        raise ValueError(f"{embedder.path}: the base bundle already has a head")
    data_dir = Path(data_dir)
    rng = np.random.default_rng([cfg.seed, 3131])
    recordings: list[tuple[str, str, np.ndarray]] = []  # (source, class, audio)
    if "real" in cfg.sources:
        utts = training_words(data_dir, cfg.exclude_words, cfg.seed, cfg.max_real_words)
        recordings += [("real", u.word, load_audio(u.path, SAMPLE_RATE)) for u in utts]
    if "synthetic" in cfg.sources:
        if vocabulary_dir is None:
            raise ValueError("the recipe's sources include 'synthetic' but no vocabulary folder "
                             "was given (build one with `python -m trainer build-vocabulary`)")
        _, clips = read_vocabulary(vocabulary_dir)
        recordings += [("synthetic", c.text, a) for c, a in clips]
    background = load_machine_noise(data_dir) if cfg.noise == "machines" else \
        load_background(data_dir, "train")
    classes = sorted({c for _, c, _ in recordings})
    index = {c: i for i, c in enumerate(classes)}
    words, sources, clean_of = [], [], []
    skipped = 0
    for source, cls, y in tqdm(recordings, desc="embedding words", unit="rec",
                               disable=not progress):
        iv = shot_interval(y, SAMPLE_RATE)
        if iv is None:
            skipped += 1
            continue
        clean_of += [len(words)] * (1 + cfg.augment_passes)
        words.append((index[cls], _word_frames(embedder, y, iv)))
        for _ in range(cfg.augment_passes):
            noisy = augment_recording(y, iv, background, cfg, rng)
            words.append((index[cls], _word_frames(embedder, noisy, iv)))
        sources += [source] * (1 + cfg.augment_passes)
    if not words:
        raise ValueError("no training words with speech")
    no_speech = np.concatenate([embedder.embed_wave(b)
                                for b in load_background(data_dir, "train")])
    counts = {"recordings": {s: sum(r[0] == s for r in recordings) for s in cfg.sources},
              "skipped_without_speech": skipped, "classes": len(classes),
              "segments": int(sum(len(f) for _, f in words)),
              "no_speech_frames": int(len(no_speech))}
    return HeadTrainingSet(classes + [NO_SPEECH], words, no_speech, counts, sources, clean_of)


def build_head(cfg: HeadConfig):
    """The residual per-frame head (module docstring) as a Keras model, input ``frame``
    (96,) float32, output (96,)."""
    import keras

    x = keras.Input((RAW_DIM,), name="frame")
    if cfg.hidden:
        h = keras.layers.Dense(cfg.hidden, activation="gelu", name="hidden")(x)
        h = keras.layers.Dense(RAW_DIM, kernel_initializer="zeros", name="correction")(h)
        y = keras.layers.Add(name="residual")([x, h])
    else:
        y = keras.layers.Dense(RAW_DIM, kernel_initializer="identity", name="linear")(x)
    return keras.Model(x, y, name="tacos_head")


def train_head(cfg: HeadConfig, data: HeadTrainingSet, progress: bool = True):
    """Train the head with the recipe's objective; returns ``(keras model, loss per 100
    steps)``."""
    import tensorflow as tf

    from trainer.losses import TACos

    tf.keras.utils.set_random_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    model = build_head(cfg)
    loss_fn = TACos(len(data.classes), cfg.n_positions, cfg.n_centers, RAW_DIM, cfg.seed)
    lr = tf.keras.optimizers.schedules.CosineDecay(cfg.learning_rate, max(cfg.steps, 1), alpha=0.1)
    opt = tf.keras.optimizers.Adam(lr)
    variables = model.trainable_variables + [loss_fn.centers]
    width = len(data.classes) + cfg.n_positions

    use_tacos, use_teacher = "tacos" in cfg.objective, "teacher" in cfg.objective
    if not use_tacos:
        variables = model.trainable_variables

    @tf.function(input_signature=[tf.TensorSpec((None, 1, RAW_DIM), tf.float32),
                                  tf.TensorSpec((None, width), tf.float32),
                                  tf.TensorSpec((None,), tf.float32),
                                  tf.TensorSpec((None, RAW_DIM), tf.float32)])
    def step(x, y, w, t):
        with tf.GradientTape() as tape:
            emb = model(tf.reshape(x, (-1, RAW_DIM)), training=True)
            loss = 0.0
            if use_tacos:
                loss += tf.reduce_sum(w * loss_fn(y, tf.reshape(emb, (-1, 1, RAW_DIM))))
            if use_teacher:  # cosine distance to the clean recording's pretrained frame
                dist = 1.0 + tf.keras.losses.cosine_similarity(t, emb)  # keras: minus the cosine
                loss += cfg.teacher_weight * tf.reduce_sum(w * dist)
        opt.apply_gradients(zip(tape.gradient(loss, variables), variables))
        return loss

    history, window = [], []
    bar = tqdm(total=cfg.steps, desc="training the TACos head", unit="step", disable=not progress)
    for i in range(cfg.steps):
        window.append(float(step(*data.batch(cfg, rng))))
        bar.update(1)
        if len(window) == 100 or i == cfg.steps - 1:
            history.append(round(float(np.mean(window)), 4))
            bar.set_postfix(loss=f"{history[-1]:.3f}", scale=f"{float(loss_fn.scale.numpy()):.1f}")
            window = []
    bar.close()
    return model, history


def export_head_bundle(model, base: SpeechEmbedder, data: HeadTrainingSet, cfg: HeadConfig,
                       out_dir: str | Path, history: Sequence[float] = (),
                       vocabulary: dict | None = None) -> Path:
    """Write the bundle ``out_dir/<cfg.name>.{tflite,json}`` with its mel model and head.

    The base bundle's embedding and mel models are copied unchanged (their origin and
    SHA-256 carry over); the head is converted to int8 (activation ranges from
    ``cfg.representative_frames`` training frames) and checked against the float head
    (cosine per frame, ``int8_vs_float_cosine`` in the metadata). The threshold table of the
    base does not carry over: costs change with the head. Without a table the node cannot use
    the per-template cost normalisation (its thresholds are in those units), so run
    ``calibrate-kws-thresholds`` on the new bundle (``train-kws-head`` does).

    Returns
    -------
    Path
        The bundle's ``.tflite``.
    """
    from trainer.export import convert_int8, cosine_similarity_rows

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(cfg.seed + 1)
    frames = np.concatenate([f for _, f in data.words] + [data.no_speech])
    rep = frames[rng.permutation(len(frames))[:cfg.representative_frames]]
    head_bytes = convert_int8(model, ({"frame": r} for r in rep))
    emb_path, mel_path = out / f"{cfg.name}.tflite", out / f"{cfg.name}_mel.tflite"
    head_path = out / f"{cfg.name}_head.tflite"
    if base.path.resolve() != emb_path.resolve():
        atomic_write_bytes(emb_path, base.path.read_bytes())
    meta = derived_bundle_metadata(base, emb_path, mel_path)
    atomic_write_bytes(head_path, head_bytes)
    head_sha = sha256_file(head_path)
    meta["model_id"] = f"{cfg.name}-{head_sha[:12]}"
    meta["head"] = {"model": head_path.name, "sha256": head_sha, "loss": "tacos_loss",
                    "training_config": dataclasses.asdict(cfg), "training_counts": data.counts,
                    "loss_history": list(history),
                    "vocabulary": vocabulary or None}
    meta["origin"]["files"][head_path.name] = {
        "from": "trained here (python -m trainer train-kws-head)", "sha256": head_sha}
    meta["size_bytes"] = sum(p.stat().st_size for p in (emb_path, mel_path, head_path))
    meta["created"] = dt.datetime.now(dt.timezone.utc).replace(microsecond=0).isoformat()
    atomic_write_json(emb_path.with_suffix(".json"), meta)
    check = frames[np.random.default_rng(cfg.seed + 2).permutation(len(frames))[:500]]
    got = load_bundle(emb_path)
    cos = cosine_similarity_rows(model.predict(check, verbose=0), got.apply_head(check))
    meta["head"]["int8_vs_float_cosine"] = {"min": round(float(cos.min()), 4),
                                            "mean": round(float(cos.mean()), 4),
                                            "frames": int(len(cos))}
    atomic_write_json(emb_path.with_suffix(".json"), meta)
    return emb_path


def read_head_config(path: str | Path | None, **overrides: Any) -> HeadConfig:
    """A :class:`HeadConfig` from a YAML recipe (or the defaults), with CLI overrides."""
    from trainer.train import read_recipe

    raw = read_recipe(path, HeadConfig) if path else {}
    raw.update({k: v for k, v in overrides.items() if v is not None})
    return HeadConfig(**raw)

