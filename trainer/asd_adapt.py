"""Site adaptation: retrain the anomaly embedder with one site's normal recordings in it.

A node calibrates on a machine its embedder may never have heard (README, "On a machine type
the embedder never heard"). On a workstation, ``python -m trainer adapt-asd --from <folder>``
takes that machine's normal recordings (the files given to ``calibration record --from``, or
any folder of them) and trains the embedder again on the recipe's data *plus* these
recordings, so that the representation learns what varies on this machine:

* every recording is a class of its own (recording sessions as classes; a long recording
  still gives a different random 10 s crop at every step), named ``site_section_<nnn>``;
* the self-supervised head of thesis Section 5.7 is on by default: StatEx (Definition 5.5)
  and FeatEx (Definition 5.6) simulated anomalies as extra classes.

The node cannot fine-tune: only the int8 model ships, so the recipe is retrained from the
start with the site's recordings added. The command writes the int8 bundle and a
calibration of the same recordings (the node's ``asd`` config: views, windows, threshold),
ready to flash with the bundle. Its gain is measured in the leave-one-machine-type-out
protocol (``trainer evaluate-asd --protocol leave-one-machine-out --systems adapted``),
adapting on the calibration clips only, never on test clips.

Entry points: :func:`site_training_items`, :func:`site_recipe`, :func:`run_cli`.
"""
from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path
from typing import Sequence

from calibration.calibrate import collect_windows, fit_calibration
from edge.audio import FileSource
from edge.model import AsdEmbedder
from firmware_config.schema import load_config
from trainer.data import AUDIO_SUFFIXES, ClipLabel

__all__ = ["SITE_MACHINE", "DEFAULT_SITE_SSL", "site_training_items", "site_recipe", "ssl_list",
           "add_cli_arguments", "run_cli"]

#: Machine name of a site's recordings in the training classes.
SITE_MACHINE = "site"
#: Self-supervised augmentations used when adapting (thesis Section 5.7.2).
DEFAULT_SITE_SSL = ("statex", "featex")


def site_recordings(paths: Sequence[str | Path]) -> list[Path]:
    """Audio files named directly or found (recursively) in named folders, sorted.

    Raises
    ------
    FileNotFoundError
        A path does not exist, or no ``.wav`` / ``.flac`` file was found.
    """
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            out += sorted(f for f in p.rglob("*") if f.suffix.lower() in AUDIO_SUFFIXES)
        elif p.is_file():
            out.append(p)
        else:
            raise FileNotFoundError(f"--from {p}: no such file or folder")
    if not out:
        raise FileNotFoundError(f"--from {', '.join(map(str, paths))}: no audio files "
                                f"({', '.join('*' + s for s in AUDIO_SUFFIXES)})")
    return sorted(set(out))


def site_training_items(paths: Sequence[Path],
                        domains: Sequence[str] | None = None) -> list[tuple[Path, ClipLabel]]:
    """One training class per site recording.

    Parameters
    ----------
    paths : sequence of Path
        The site's normal recordings.
    domains : sequence of str, optional
        Each recording's domain (``"source"`` / ``"target"``), when known.

    Returns
    -------
    list of (Path, ClipLabel)
        ``ClipLabel(SITE_MACHINE, "<nnn>", domain, False)``: class ``site_section_<nnn>``.
    """
    domains = list(domains) if domains is not None else ["source"] * len(paths)
    return [(Path(p), ClipLabel(SITE_MACHINE, f"{i:03d}", d, False))
            for i, (p, d) in enumerate(zip(paths, domains))]


def site_recipe(cfg, name: str, ssl: Sequence[str] = DEFAULT_SITE_SSL):
    """The training recipe for a site: ``cfg`` renamed, with the SSL head ``ssl``.

    Parameters
    ----------
    cfg : trainer.train.TrainConfig
    name : str
        Bundle name (the files are ``<name>.tflite`` and ``<name>.json``).
    ssl : sequence of {"statex", "featex"}

    Returns
    -------
    trainer.train.TrainConfig
        A copy; ``mixup_probability`` is reset to the recipe default for the SSL setting.
    """
    return dataclasses.replace(cfg, name=name, ssl=list(ssl),
                               mixup_probability=cfg.mixup_probability if not ssl else None)


def ssl_list(text: str) -> list[str]:
    """``--ssl`` text: ``"statex,featex"`` -> ``["statex", "featex"]``; ``"none"`` -> ``[]``."""
    return [] if text.strip().lower() == "none" else [s.strip() for s in text.split(",")
                                                       if s.strip()]


def add_cli_arguments(p) -> None:
    """The options of ``python -m trainer adapt-asd``."""
    root = Path(__file__).resolve().parent.parent
    p.add_argument("--from", dest="files", nargs="+", required=True, metavar="PATH",
                   help="the site's normal recordings: files and/or folders (searched "
                        "recursively for .wav / .flac)")
    p.add_argument("--config", default=str(root / "trainer/configs/asd_default.yaml"),
                   help="training recipe whose data the site's recordings join "
                        "(default: %(default)s)")
    p.add_argument("--node-config", dest="node_config",
                   default=str(root / "firmware_config/default.yaml"),
                   help="node config whose asd section (views, windows, clusters, threshold) "
                        "the calibration uses (default: %(default)s)")
    p.add_argument("--name", default="asd_site", help="bundle name (default: %(default)s)")
    p.add_argument("--out", default=str(root / "models" / "site"),
                   help="folder for the bundle and its calibration (default: %(default)s)")
    p.add_argument("--ssl", default=",".join(DEFAULT_SITE_SSL),
                   help="self-supervised augmentations, comma-separated, or 'none' "
                        "(default: %(default)s)")
    p.add_argument("--epochs", type=int, help="override the recipe's epochs")
    p.add_argument("--steps-per-epoch", dest="steps_per_epoch", type=int,
                   help="override the recipe's steps per epoch")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def run_cli(args) -> int:
    """Adapt, export the int8 bundle and calibrate it on the same recordings."""
    from trainer.train import TrainingSet, export_asd_bundle, load_train_config, train_asd

    root = Path(__file__).resolve().parent.parent
    node = load_config(args.node_config)
    files = site_recordings(args.files)
    ssl = ssl_list(args.ssl)
    cfg = site_recipe(load_train_config(args.config), args.name, ssl)
    for key in ("epochs", "steps_per_epoch"):
        if getattr(args, key) is not None:
            setattr(cfg, key, getattr(args, key))
    data = TrainingSet.from_config(cfg, root, progress=not args.quiet,
                                   extra_items=site_training_items(files))
    print(f"adapting on {len(files)} site recording(s) + {len(data) - len(files)} recipe "
          f"clips, {len(data.classes)} classes, SSL {cfg.ssl or 'off'}", file=sys.stderr)
    model, history = train_asd(cfg, data, progress=not args.quiet)
    out = Path(args.out)
    path = export_asd_bundle(model, data, cfg, out, history,
                             extra={"site_recordings": [str(f) for f in files]})
    emb = AsdEmbedder(path)
    a = node.asd
    sr = emb.frontend.sample_rate
    windows = collect_windows([FileSource([f], sr).blocks() for f in files], emb,
                              a.window_seconds, a.hop_seconds, views=a.views)
    cal = fit_calibration(windows, emb, a.n_clusters, a.threshold.method,
                          dict(a.threshold.params), a.window_seconds, a.hop_seconds, cfg.seed)
    cal_path = cal.save(out / f"{args.name}_calibration.npz")
    print(json.dumps({"model": str(path), "model_id": emb.model_id,
                      "calibration": str(cal_path), "calibration_id": cal.calibration_id,
                      "decision_threshold": round(cal.decision_threshold, 6),
                      "site_recordings": len(files), "windows": len(windows),
                      "flash": f"asd.model: {path}, asd.calibration: {cal_path}"}, indent=2))
    return 0
