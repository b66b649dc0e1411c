"""The TFLite runtime: which interpreter the node uses and how one is made.

``ai-edge-litert`` (the maintained TFLite runtime) first, then ``tflite_runtime``, then
``tensorflow.lite``; the node never imports TensorFlow unless both are missing. Every model
(:mod:`edge.model`, :mod:`edge.speech_embedding`) is opened with :func:`make_interpreter`.

Contents
--------
ModelError, load_interpreter_class, make_interpreter, without_runtime_noise
quantize, dequantize
    Float arrays to and from an int8 tensor with its (scale, zero point).
"""
from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

from firmware_config.errors import HarkError

__all__ = ["ModelError", "load_interpreter_class", "make_interpreter", "without_runtime_noise",
           "quantize", "dequantize"]

#: What the runtime prints on stderr for every interpreter, however well things go.
_RUNTIME_NOISE = ("INFO: Created TensorFlow Lite XNNPACK delegate for CPU.",)


class ModelError(HarkError, RuntimeError):
    """A model bundle is missing, corrupt, or does not match its metadata or the config."""


def load_interpreter_class():
    """Return the TFLite ``Interpreter`` class from the best available runtime."""
    try:
        from ai_edge_litert.interpreter import Interpreter
        return Interpreter
    except ImportError:
        pass
    try:
        from tflite_runtime.interpreter import Interpreter  # type: ignore
        return Interpreter
    except ImportError:
        pass
    try:  # last resort on a workstation; a node has ai-edge-litert and never gets here
        import importlib

        return importlib.import_module("tensorflow").lite.Interpreter
    except ImportError as exc:
        raise ModelError("no TFLite runtime: install ai-edge-litert "
                         "(pip install 'hark[edge]')") from exc


@contextlib.contextmanager
def without_runtime_noise():
    """Hold back what the runtime writes on stderr (file descriptor 2, where its C++ logging
    goes) and pass it on afterwards, less the lines of :data:`_RUNTIME_NOISE`: warnings and
    errors still show. What other threads write meanwhile (a few milliseconds while a model
    loads) is delayed, not lost."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):        # no file descriptor 2 (embedded, closed stderr)
        yield
        return
    with tempfile.TemporaryFile() as held:
        os.dup2(held.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            held.seek(0)
            lines = held.read().decode("utf-8", "replace").splitlines(keepends=True)
            kept = "".join(line for line in lines if line.rstrip() not in _RUNTIME_NOISE)
            if kept:
                sys.stderr.write(kept)
                sys.stderr.flush()


def make_interpreter(path: Path, num_threads: int, input_shape=None):
    """A ready interpreter; ``input_shape`` first resizes its (only) input tensor."""
    Interpreter = load_interpreter_class()
    try:
        with without_runtime_noise():   # the XNNPACK delegate is created in allocate_tensors
            interp = Interpreter(model_path=str(path), num_threads=num_threads)
            if input_shape is not None:
                interp.resize_tensor_input(interp.get_input_details()[0]["index"], input_shape)
            interp.allocate_tensors()
    except Exception as exc:
        raise ModelError(f"cannot load TFLite model {path}: {exc}") from exc
    return interp


def quantize(x: np.ndarray, detail: dict) -> np.ndarray:
    """Float input -> the tensor's dtype with its (scale, zero point)."""
    if detail["dtype"] == np.float32:
        return x.astype(np.float32)
    scale, zero = detail["quantization"]
    info = np.iinfo(detail["dtype"])
    q = np.round(x / scale + zero)
    return np.clip(q, info.min, info.max).astype(detail["dtype"])


def dequantize(out: np.ndarray, detail: dict) -> np.ndarray:
    """A (possibly int8) output tensor as float32."""
    if detail["dtype"] != np.float32:
        scale, zero = detail["quantization"]
        out = (out.astype(np.float32) - zero) * scale
    return out.astype(np.float32)
