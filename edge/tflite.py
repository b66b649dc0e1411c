"""The TFLite runtime: which interpreter the node uses and how one is made.

``ai-edge-litert`` (the maintained TFLite runtime, in every install of the project) and
nothing else; the node never imports TensorFlow. Every model
(:mod:`edge.model`, :mod:`edge.speech_embedding`) is opened with :func:`make_interpreter`.

Contents
--------
ModelError, load_interpreter_class, read_model_bytes, make_interpreter, without_runtime_noise
quantize, dequantize
    Float arrays to and from an int8 tensor with its (scale, zero point).
branch_model
    One branch of a multi-branch embedder cut out as a model of its own, so that a node
    that scores that branch alone does not run the others.
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

from firmware_config.errors import HarkError

__all__ = ["ModelError", "load_interpreter_class", "read_model_bytes", "make_interpreter",
           "without_runtime_noise",
           "quantize", "dequantize", "branch_model"]

#: What the runtime prints on stderr for every interpreter, however well things go.
_RUNTIME_NOISE = ("INFO: Created TensorFlow Lite XNNPACK delegate for CPU.",)


class ModelError(HarkError, RuntimeError):
    """A model bundle is missing, corrupt, or does not match its metadata or the config."""


def load_interpreter_class():
    """Return ai-edge-litert's TFLite ``Interpreter`` class.

    Raises
    ------
    ModelError
        ai-edge-litert is not installed (the message says how to install it).
    """
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError as exc:
        raise ModelError("no TFLite runtime: install ai-edge-litert "
                         "(pip install 'hark[edge]')") from exc
    return Interpreter


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


def read_model_bytes(path: Path) -> tuple[bytes, str]:
    """A model file's bytes, read once, and their SHA-256 (hex): the caller checks the digest
    against its metadata and makes the interpreter from these bytes
    (:func:`make_interpreter` ``content=``), so that it runs what was checked.

    Raises
    ------
    ModelError
        If the file cannot be read.
    """
    try:
        content = Path(path).read_bytes()
    except OSError as exc:
        raise ModelError(f"cannot read model file {path}: {exc}") from exc
    return content, hashlib.sha256(content).hexdigest()


def make_interpreter(path: Path, num_threads: int, input_shape=None, *,
                     content: bytes | None = None):
    """A ready interpreter; ``input_shape`` first resizes its (only) input tensor.

    ``content``: the flatbuffer itself (:func:`branch_model`), ``path`` then only names it.
    Without it the file is read into memory, not mapped: the runtime maps a ``model_path``
    and reads its weights and shapes from the file for as long as the interpreter lives, so
    overwriting the model in place (``cp new.tflite models/``, an editor) under a running
    node made its next inference fail on garbage, or killed the process with SIGBUS when the
    file had shrunk. A private copy costs the file's size (2.6 MB for the default anomaly
    embedder), which the mapped pages cost too once an inference touched them.

    Raises
    ------
    ModelError
        If the file cannot be read or the runtime rejects the model.
    """
    Interpreter = load_interpreter_class()
    try:
        if content is None:
            content = Path(path).read_bytes()
        with without_runtime_noise():   # the XNNPACK delegate is created in allocate_tensors
            interp = Interpreter(model_content=content, num_threads=num_threads)
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


def _flatbuffer_utils():
    """The runtime's TFLite flatbuffer reader and writer, with its schema."""
    try:
        from ai_edge_litert import schema_py_generated as schema
        from ai_edge_litert.tools import flatbuffer_utils
    except ImportError as exc:
        raise ModelError("cutting a branch out of a model needs ai-edge-litert "
                         "(pip install 'hark[edge]')") from exc
    return flatbuffer_utils, schema


def branch_model(content: bytes, branch: int, n_branches: int, name: str = "model") -> bytes:
    """One branch of a multi-branch embedder as a model of its own.

    The ASD embedder (:func:`trainer.model.build_asd_embedder`) ends in one CONCATENATION
    of its branch embeddings, in input order. This keeps the operators that branch
    ``branch``'s embedding needs, with the input it reads as the only input and that
    embedding as the output. Weights and quantisation are the model's own, so its int8
    output is the model's output slice for that branch, value for value (an int8
    concatenation keeps its inputs' scale and zero point); the other branches are not run.
    The spectrogram branch takes about 80 % of the default embedder's time, so a node that
    scores the spectrum branch alone runs about a fifth of it.

    Parameters
    ----------
    content : bytes
        The ``.tflite`` flatbuffer.
    branch : int
        Position of the branch among the concatenation's inputs (the model's input order).
    n_branches : int
        How many branches the concatenation must have.
    name : str
        The model's name in error messages.

    Returns
    -------
    bytes
        A ``.tflite`` flatbuffer with one input and one output.

    Raises
    ------
    ModelError
        The model's output is not a concatenation of ``n_branches`` tensors, or the branch
        does not read exactly one of the model's inputs.
    """
    fbu, schema = _flatbuffer_utils()
    model = fbu.convert_bytearray_to_object(bytearray(content))
    graph = model.subgraphs[0]
    producer = {int(t): k for k, op in enumerate(graph.operators) for t in op.outputs}
    last = producer.get(int(graph.outputs[0])) if len(graph.outputs) == 1 else None
    codes = [fbu.get_builtin_code_from_operator_code(c) for c in model.operatorCodes]
    if last is None or codes[graph.operators[last].opcodeIndex] != \
            schema.BuiltinOperator.CONCATENATION or \
            len(graph.operators[last].inputs) != n_branches:
        raise ModelError(f"{name}: its output is not the concatenation of {n_branches} branch "
                         "embeddings, so no branch can be run alone")
    target = int(graph.operators[last].inputs[branch])
    keep, todo = set(), [target]
    while todo:                       # every operator the branch's embedding depends on
        k = producer.get(todo.pop())
        if k is not None and k not in keep:
            keep.add(k)
            todo.extend(int(t) for t in graph.operators[k].inputs if t >= 0)
    reads = {int(t) for k in keep for t in graph.operators[k].inputs} & \
        {int(t) for t in graph.inputs}
    if len(reads) != 1:
        raise ModelError(f"{name}: branch {branch} reads {len(reads)} of the model's inputs, "
                         "expected one")
    source = reads.pop()
    graph.operators = [op for k, op in enumerate(graph.operators) if k in keep]
    graph.inputs = np.array([source], np.int32)
    graph.outputs = np.array([target], np.int32)
    for sig in model.signatureDefs or []:
        sig.inputs = [t for t in sig.inputs if t.tensorIndex == source]
        sig.outputs = sig.outputs[:1]
        sig.outputs[0].tensorIndex = target
    return bytes(fbu.convert_object_to_bytearray(model))
