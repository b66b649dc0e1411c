"""Loading and running int8 TFLite embedders: the one way to load a model.

A *model bundle* is ``NAME.tflite`` plus ``NAME.json`` metadata next to it::

    {"schema": 1, "task": "asd", "model_id": "...", "tflite_sha256": "...",
     "frontend": {...AsdFrontendParams...}, "embedding_dim": 256,
     "inputs": ["spectrogram", "spectrum"], "classes": [...],
     "training_data_sha256": "...", "created": "...", ...}

The interpreter comes from ``ai-edge-litert`` (the maintained TFLite runtime), falling back
to ``tflite_runtime`` and then ``tensorflow.lite``; the node never imports TensorFlow
unless both are missing.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from edge.fileio import sha256_file
from edge.frontend import AsdFrontendParams, asd_features

__all__ = ["ModelError", "BUNDLE_SCHEMA", "load_interpreter_class", "AsdEmbedder", "load_bundle"]

BUNDLE_SCHEMA = 1


class ModelError(RuntimeError):
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


def _read_metadata(tflite_path: Path) -> dict[str, Any]:
    meta_path = tflite_path.with_suffix(".json")
    if not tflite_path.is_file():
        raise ModelError(f"model file not found: {tflite_path} (run `make export-tflite` "
                         "to build it, or point asd.model at a bundle)")
    if not meta_path.is_file():
        raise ModelError(f"model metadata not found: {meta_path} (every .tflite needs its .json)")
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ModelError(f"model metadata {meta_path} is not valid JSON: {exc}") from exc
    for key in ("schema", "task", "model_id", "tflite_sha256", "frontend", "embedding_dim",
                "inputs"):
        if key not in meta:
            raise ModelError(f"model metadata {meta_path} lacks the field {key!r}")
    if meta["schema"] != BUNDLE_SCHEMA:
        raise ModelError(f"model metadata {meta_path}: schema {meta['schema']} is not "
                         f"supported (expected {BUNDLE_SCHEMA})")
    digest = sha256_file(tflite_path)
    if digest != meta["tflite_sha256"]:
        raise ModelError(f"model {tflite_path} does not match its metadata: sha256 {digest[:12]}… "
                         f"!= {meta['tflite_sha256'][:12]}… (corrupt or replaced file)")
    return meta


class AsdEmbedder:
    """An int8 (or float) TFLite ASD embedder with its frontend.

    Parameters
    ----------
    tflite_path : str or Path
        Path of the ``.tflite`` file; the metadata is the ``.json`` next to it.
    num_threads : int
        TFLite interpreter threads (1 on a node that also captures audio).

    Attributes
    ----------
    metadata : dict
    frontend : AsdFrontendParams
    model_id : str
    sha256 : str
    embedding_dim : int

    Raises
    ------
    ModelError
        If a file is missing, the checksum or the tensor shapes disagree with the metadata.
    """

    def __init__(self, tflite_path: str | Path, num_threads: int = 1):
        path = Path(tflite_path)
        meta = _read_metadata(path)
        if meta["task"] != "asd":
            raise ModelError(f"{path} is a {meta['task']!r} model, expected an 'asd' model")
        self.path = path
        self.metadata = meta
        self.model_id = meta["model_id"]
        self.sha256 = meta["tflite_sha256"]
        try:
            self.frontend = AsdFrontendParams.from_dict(meta["frontend"])
        except (TypeError, ValueError) as exc:
            raise ModelError(f"model metadata {path.with_suffix('.json')}: {exc}") from exc
        self.embedding_dim = int(meta["embedding_dim"])
        Interpreter = load_interpreter_class()
        try:
            self._interp = Interpreter(model_path=str(path), num_threads=num_threads)
            self._interp.allocate_tensors()
        except Exception as exc:
            raise ModelError(f"cannot load TFLite model {path}: {exc}") from exc
        inputs = {d["name"]: d for d in self._interp.get_input_details()}
        self._inputs = {}
        expected = {"spectrogram": (self.frontend.n_frames, self.frontend.n_bins),
                    "spectrum": (self.frontend.spectrum_bins,)}
        for name, shape in expected.items():
            match = [d for n, d in inputs.items() if name in n]
            if not match:
                raise ModelError(f"{path}: no input tensor named like {name!r} "
                                 f"(inputs: {sorted(inputs)})")
            d = match[0]
            if tuple(d["shape"][1:]) != shape:
                raise ModelError(f"{path}: input {name!r} has shape {tuple(d['shape'][1:])} but "
                                 f"the metadata's frontend gives {shape}")
            self._inputs[name] = d
        self._output = self._interp.get_output_details()[0]
        if int(self._output["shape"][-1]) != self.embedding_dim:
            raise ModelError(f"{path}: output has {self._output['shape'][-1]} dimensions, "
                             f"metadata says {self.embedding_dim}")

    @staticmethod
    def _quantize(x: np.ndarray, detail: dict) -> np.ndarray:
        if detail["dtype"] == np.float32:
            return x.astype(np.float32)
        scale, zero = detail["quantization"]
        info = np.iinfo(detail["dtype"])
        q = np.round(x / scale + zero)
        return np.clip(q, info.min, info.max).astype(detail["dtype"])

    def embed_features(self, spectrogram: np.ndarray, spectrum: np.ndarray) -> np.ndarray:
        """Embed one clip's features.

        Parameters
        ----------
        spectrogram : np.ndarray, shape (n_frames, n_bins), float32
        spectrum : np.ndarray, shape (spectrum_bins,), float32

        Returns
        -------
        np.ndarray, shape (embedding_dim,), float32, L2-normalised
        """
        for name, x in (("spectrogram", spectrogram), ("spectrum", spectrum)):
            d = self._inputs[name]
            self._interp.set_tensor(d["index"], self._quantize(x[None], d))
        self._interp.invoke()
        out = self._interp.get_tensor(self._output["index"])[0]
        if self._output["dtype"] != np.float32:
            scale, zero = self._output["quantization"]
            out = (out.astype(np.float32) - zero) * scale
        out = out.astype(np.float32)
        return out / max(float(np.linalg.norm(out)), 1e-12)

    def embed(self, waveform: np.ndarray) -> np.ndarray:
        """Embed one clip of 16 kHz mono audio (padded/cut to the model's clip length).

        Returns
        -------
        np.ndarray, shape (embedding_dim,), float32, L2-normalised
        """
        spec, dft = asd_features(waveform, self.frontend)
        return self.embed_features(spec, dft)


def load_bundle(tflite_path: str | Path, task: str = "asd", num_threads: int = 1):
    """Load a model bundle for ``task`` (only ``"asd"`` so far)."""
    if task != "asd":
        raise ModelError(f"unknown model task {task!r}")
    return AsdEmbedder(tflite_path, num_threads=num_threads)
