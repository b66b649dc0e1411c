"""Build a KWS bundle's generic negatives (``python -m trainer build-kws-negatives``).

An hour of audio without any particular keyword, embedded with the bundle and stored next to
it (:mod:`calibration.generic_negatives`), so that enrollment fits each keyword's threshold on
it when the site has no background recording yet (source ``"generic-fit"``). It is built as
the wake-word evaluation builds its negatives (:func:`trainer.kws_wakeword.negative_streams`:
other words 40 %, espeak-ng sentences 45 %, noise alone 15 %, at 10 dB SNR), but from the
*train* split: Speech Commands words of train-split speakers, sentences from another seed,
and as noise the machine recordings under ``asd/`` (what a node hears; the evaluation's noise
types are the kitchen, tap, bike and cat recordings of ``noise/``). No wake-word recording is
used (those are the evaluation's keywords), so the evaluation's keywords, speakers,
sentences and noise never appear in it.

Measured on the wake-word evaluation (four keywords and speakers never heard, 10 dB SNR,
seeds 0-8, 79 h of audio; README "Thresholds fitted on a generic hour").
"""
from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from calibration.generic_negatives import (METADATA_KEY, normalisation_sha256,
                                           write_generic_negatives)
from edge.model import load_bundle
from firmware_config.fileio import atomic_write_json
from trainer.kws_streams import kws_folder
from trainer.kws_wakeword import WakewordConfig, negative_streams

__all__ = ["GENERIC_HOURS", "GENERIC_SEED", "build_generic_negatives"]

#: Hours of generic negatives a bundle ships (3.2 MB for the speech_embedding bundle).
GENERIC_HOURS = 1.0
#: Seed of the streams (any; the evaluation's draws use their own seeds and other splits).
GENERIC_SEED = 1000


def _wake_words(data_dir: str | Path) -> list[str]:
    ww = kws_folder(data_dir) / "wakeword"
    return sorted(p.name for p in ww.iterdir() if p.is_dir()) if ww.is_dir() else []


def build_generic_negatives(model_path: str | Path, data_dir: str | Path,
                            hours: float = GENERIC_HOURS, seed: int = GENERIC_SEED,
                            progress: bool = False) -> dict[str, Any]:
    """Embed an hour of generic negatives with a KWS bundle and record it in the bundle.

    Writes ``<bundle>_negatives.npz`` and the metadata entry ``generic_negatives`` (file,
    SHA-256, what it was embedded with, hours, composition, seed), both atomically.

    Parameters
    ----------
    model_path : str or Path
        The bundle's ``.tflite``; its ``.json`` gets the entry.
    data_dir : str or Path
        The shared data folder (``kws/``, ``noise/``).
    hours : float
        Length of the negative audio (> 0).
    seed : int
    progress : bool

    Returns
    -------
    dict
        The metadata entry written.

    Raises
    ------
    ValueError
        ``hours`` is not positive.
    FileNotFoundError
        The data folder lacks ``kws/`` (or espeak-ng is missing, with how to install it).
    """
    if not hours > 0:
        raise ValueError(f"hours must be > 0, got {hours!r}")
    path = Path(model_path)
    bundle = load_bundle(path, task="kws")
    excluded = _wake_words(data_dir)
    cfg = WakewordConfig(keywords=(), seed=seed)
    streams = negative_streams(data_dir, cfg, split="train", hours=hours, exclude=excluded,
                               progress=progress)
    frames, utterances = [], []
    for i, s in enumerate(tqdm(streams, desc="embedding generic negatives",
                               disable=not progress)):
        frames.append(bundle.embed_wave(s.audio))
        utterances += [(i, p.word, p.onset_s, p.offset_s) for p in s.placed]
    out = path.with_name(f"{path.stem}_negatives.npz")
    sha = write_generic_negatives(out, frames, bundle.frame_seconds, utterances)
    entry = {
        "file": out.name, "sha256": sha, "tflite_sha256": bundle.sha256,
        "normalisation_sha256": normalisation_sha256(bundle.metadata),
        "hours": round(sum(s.duration_s for s in streams) / 3600.0, 4),
        "streams": len(streams), "frames": int(sum(len(f) for f in frames)),
        "composition": {k: sum(s.name.startswith(k) for s in streams)
                        for k in ("train", "tts", "noise")},
        "source": "Speech Commands words of train-split speakers (CC BY 4.0), espeak-ng "
                  "sentences, in the first 70 % of every machine recording under asd/ (MIMII "
                  "CC BY-SA 4.0, DCASE CC BY 4.0) at 10 dB SNR; no wake-word recording",
        "excluded_words": excluded, "seed": int(seed), "snr_db": cfg.snr_db,
        "created": dt.datetime.now(dt.timezone.utc).replace(microsecond=0).isoformat(),
    }
    meta_path = path.with_suffix(".json")
    meta = json.loads(meta_path.read_text())
    meta[METADATA_KEY] = entry
    atomic_write_json(meta_path, meta)
    return entry
