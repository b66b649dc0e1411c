"""Full-integer int8 TFLite export and model bundles."""
from __future__ import annotations

import datetime as dt
import tempfile
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from firmware_config.fileio import atomic_write_bytes, atomic_write_json, sha256_file
from edge.model import BUNDLE_SCHEMA

__all__ = ["convert_int8", "convert_float", "write_bundle", "cosine_similarity_rows"]


def _converter(model, workdir: str):
    """TFLite converter from a SavedModel export (freezes Keras 3 variables reliably)."""
    import tensorflow as tf

    model.export(workdir, format="tf_saved_model", verbose=False)
    return tf.lite.TFLiteConverter.from_saved_model(workdir)


def convert_float(model) -> bytes:
    """Float32 TFLite flatbuffer of ``model`` (for size comparisons)."""
    with tempfile.TemporaryDirectory() as d:
        return _converter(model, d).convert()


def convert_int8(model, representative: Iterable) -> bytes:
    """Full-integer int8 TFLite flatbuffer with int8 inputs and output.

    Parameters
    ----------
    model : keras.Model
        The embedder (any number of named inputs, one embedding output).
    representative : iterable of dict or tuple
        Unbatched float32 features of real data, used to calibrate activation ranges:
        dicts ``{input_name: array}``, or tuples in the order of ``model.inputs``.

    Returns
    -------
    bytes
        Every operator runs on int8 kernels (``TFLITE_BUILTINS_INT8`` only); conversion
        fails rather than silently falling back to float.
    """
    import tensorflow as tf

    reps = list(representative)
    if not reps:
        raise ValueError("representative dataset is empty")
    names = [t.name.split(":")[0] for t in model.inputs]

    def gen():
        for item in reps:
            if not isinstance(item, dict):
                item = dict(zip(names, item if isinstance(item, (tuple, list)) else (item,)))
            yield {k: np.asarray(v, np.float32)[None] for k, v in item.items()}

    with tempfile.TemporaryDirectory() as d:
        conv = _converter(model, d)
        conv.optimizations = [tf.lite.Optimize.DEFAULT]
        conv.representative_dataset = gen
        conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        conv.inference_input_type = tf.int8
        conv.inference_output_type = tf.int8
        return conv.convert()


def cosine_similarity_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine similarity of two (n, D) arrays."""
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return np.sum(a * b, axis=1)


def write_bundle(out_dir: str | Path, name: str, tflite: bytes, metadata: dict[str, Any]) -> Path:
    """Write ``NAME.tflite`` and ``NAME.json`` atomically; returns the .tflite path.

    ``tflite_sha256``, ``model_id``, ``schema`` and ``created`` are filled in here.
    """
    out_dir = Path(out_dir)
    path = atomic_write_bytes(out_dir / f"{name}.tflite", tflite)
    digest = sha256_file(path)
    meta = dict(metadata)
    meta.update(schema=BUNDLE_SCHEMA, tflite_sha256=digest, model_id=f"{name}-{digest[:12]}",
                created=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                size_bytes=len(tflite))
    atomic_write_json(out_dir / f"{name}.json", meta)
    return path
