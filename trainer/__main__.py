"""Trainer command line: ``python -m trainer train-asd --config trainer/configs/asd_default.yaml``."""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep TensorFlow's C++ chatter out of the way

import numpy as np

ROOT = Path(__file__).resolve().parent.parent


def cmd_train_asd(args) -> int:
    from edge.model import AsdEmbedder
    from trainer.export import convert_float, convert_int8, cosine_similarity_rows, write_bundle
    from trainer.train import TrainingSet, load_train_config, train_asd

    cfg = load_train_config(args.config)
    for key in ("epochs", "steps_per_epoch", "batch_size", "name"):
        if getattr(args, key) is not None:
            setattr(cfg, key, getattr(args, key))
    data = TrainingSet.from_config(cfg, ROOT, progress=not args.quiet)
    print(f"training on {len(data)} normal clips, {len(data.classes)} classes "
          f"(machine x section x attributes)", file=sys.stderr)
    model, history = train_asd(cfg, data, progress=not args.quiet)

    rng = np.random.default_rng(cfg.seed + 1)
    n_rep = min(cfg.representative_samples, 4 * len(data))
    idx = rng.integers(0, len(data), n_rep)
    spec, dft = data.features(idx, rng)
    tflite = convert_int8(model, ({"spectrogram": s, "spectrum": d} for s, d in zip(spec, dft)))
    float_bytes = len(convert_float(model))
    meta = {
        "task": "asd",
        "frontend": dataclasses.asdict(data.frontend),
        "embedding_dim": int(model.output.shape[-1]),
        "inputs": ["spectrogram", "spectrum"],
        "classes": data.classes,
        "training_data_sha256": data.data_hash(),
        "training_clips": len(data),
        "training_config": {k: v for k, v in dataclasses.asdict(cfg).items() if k != "sources"},
        "training_sources": [dataclasses.asdict(s) for s in cfg.sources],
        "loss": "subcluster_adacos",
        "final_loss": history[-1] if history else None,
        "float_tflite_size_bytes": float_bytes,
    }
    path = write_bundle(args.out, cfg.name, tflite, meta)

    # Check the int8 model against the float one on the training clips' first 10 s.
    emb = AsdEmbedder(path)
    spec, dft = data.features()
    ref = model.predict([spec, dft], verbose=0)
    q = np.stack([emb.embed_features(s, d) for s, d in zip(spec, dft)])
    cos = cosine_similarity_rows(ref, q)
    meta_path = path.with_suffix(".json")
    meta = json.loads(meta_path.read_text())
    meta["int8_vs_float_cosine"] = {"min": float(cos.min()), "mean": float(cos.mean())}
    from edge.fileio import atomic_write_json
    atomic_write_json(meta_path, meta)
    if args.keras_out:
        Path(args.keras_out).parent.mkdir(parents=True, exist_ok=True)
        model.save(args.keras_out)
    print(json.dumps({"model": str(path), "model_id": meta["model_id"],
                      "int8_bytes": len(tflite), "float_bytes": float_bytes,
                      "int8_vs_float_cosine": meta["int8_vs_float_cosine"],
                      "final_loss": meta["final_loss"]}, indent=2))
    return 0


def cmd_train_kws(args) -> int:
    from trainer.kws_data import list_words, load_background, speaker_split
    from trainer.kws_train import KwsTrainingSet, export_kws_bundle, load_kws_train_config, train_kws

    cfg = load_kws_train_config(args.config)
    for key in ("steps", "batch_size", "name", "seed"):
        if getattr(args, key) is not None:
            setattr(cfg, key, getattr(args, key))
    data_dir = Path(args.data)
    if not (data_dir / "kws").is_dir():
        raise FileNotFoundError(f"no kws/ folder in the data folder {data_dir} "
                                "(set --data or $HARK_DATA)")
    splits = speaker_split(list_words(data_dir / "kws"))
    train = [u for u in splits["train"] if u.word not in set(cfg.exclude_words)]
    if args.max_words:
        rng = np.random.default_rng(cfg.seed)
        train = [train[i] for i in sorted(rng.permutation(len(train))[:args.max_words])]
    data = KwsTrainingSet.from_recordings(train, load_background(data_dir, "train"), cfg,
                                          progress=not args.quiet)
    print(f"training on {data.n_words} words ({len(data.vocabulary)} distinct, training "
          f"speakers only; held out: {', '.join(cfg.exclude_words) or 'none'}), "
          f"{len(data.classes)} keyword classes, N_pos = {data.n_positions}", file=sys.stderr)
    model, history = train_kws(cfg, data, progress=not args.quiet)
    path = export_kws_bundle(model, data, cfg, args.out,
                             extra={"mode": "generic", "final_loss": history[-1],
                                    "loss_history": history,
                                    "speaker_split": "sha1(speaker) % 100: train < 70"})
    if args.keras_out:
        Path(args.keras_out).parent.mkdir(parents=True, exist_ok=True)
        model.save(args.keras_out)
    meta = json.loads(path.with_suffix(".json").read_text())
    print(json.dumps({"model": str(path), "model_id": meta["model_id"],
                      "int8_bytes": meta["size_bytes"],
                      "float_bytes": meta["float_tflite_size_bytes"],
                      "int8_vs_float_cosine": meta["int8_vs_float_cosine"],
                      "final_loss": meta["final_loss"]}, indent=2))
    return 0


def cmd_evaluate_kws(args) -> int:
    """Few-shot KWS evaluation (TACos vs MFCC-DTW) on streams from real recordings."""
    from trainer.kws_eval import run_cli

    return run_cli(args)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m trainer",
                                description="Train the embedders and export int8 TFLite bundles.")
    sub = p.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("train-asd", help="train the anomaly embedder and export an int8 bundle")
    t.add_argument("--config", default=str(ROOT / "trainer/configs/asd_default.yaml"),
                   help="training YAML (default: %(default)s)")
    t.add_argument("--out", default=str(ROOT / "models"), help="bundle folder (default: models/)")
    t.add_argument("--name", help="bundle name (overrides the config)")
    t.add_argument("--epochs", type=int, help="override the config's epochs")
    t.add_argument("--steps-per-epoch", dest="steps_per_epoch", type=int)
    t.add_argument("--batch-size", dest="batch_size", type=int)
    t.add_argument("--keras-out", help="also save the float Keras model here (.keras)")
    t.add_argument("--quiet", action="store_true", help="no progress bars")
    k = sub.add_parser("train-kws", help="train the TACos keyword embedder and export an int8 bundle")
    k.add_argument("--config", default=str(ROOT / "trainer/configs/kws_default.yaml"),
                   help="training YAML (default: %(default)s)")
    from trainer.kws_data import default_data_dir
    k.add_argument("--data", default=default_data_dir(),
                   help="shared data folder with kws/ and noise/ (default: $HARK_DATA or %(default)s)")
    k.add_argument("--out", default=str(ROOT / "models"), help="bundle folder (default: models/)")
    k.add_argument("--name", help="bundle name (overrides the config)")
    k.add_argument("--steps", type=int, help="override the config's steps")
    k.add_argument("--batch-size", dest="batch_size", type=int)
    k.add_argument("--seed", type=int)
    k.add_argument("--max-words", dest="max_words", type=int,
                   help="train on a random subset of this many recordings (quick runs)")
    k.add_argument("--keras-out", help="also save the float Keras model here (.keras)")
    k.add_argument("--quiet", action="store_true", help="no progress bars")
    e = sub.add_parser("evaluate-kws", help="evaluate few-shot keyword spotting (TACos vs "
                       "MFCC-DTW) on streams built from real recordings")
    from trainer.kws_eval import add_cli_arguments
    add_cli_arguments(e)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        return {"train-asd": cmd_train_asd, "train-kws": cmd_train_kws,
                "evaluate-kws": cmd_evaluate_kws}[args.cmd](args)
    except (ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
