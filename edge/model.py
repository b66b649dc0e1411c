"""Loading and running int8 TFLite embedders: the one way to load a model.

A *model bundle* is ``NAME.tflite`` plus ``NAME.json`` metadata next to it::

    {"schema": 1, "task": "asd", "model_id": "...", "tflite_sha256": "...",
     "frontend": {...AsdFrontendParams...}, "embedding_dim": 256,
     "inputs": ["spectrogram", "spectrum"], "classes": [...],
     "training_data_sha256": "...", "created": "...", ...}

A KWS bundle with ``"representation": "speech_embedding"`` is Google's pretrained speech
embedding (:mod:`edge.speech_embedding`); the others are the project's own TACos and ASD
embedders. Interpreters come from :mod:`edge.tflite`.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from edge import speech_embedding
from edge.backend import Calibration, normalize_members
from edge.tflite import (ModelError, branch_model, dequantize, load_interpreter_class,
                         make_interpreter, quantize, read_model_bytes)
from edge.frontend import AsdFrontendParams, asd_features
from edge.kws_frontend import (KwsFrontendParams, KwsStreamFrontend, kws_logmel, kws_segments,
                               segment_starts)
from edge.views import prepare_views
from firmware_config.fileio import sha256_file

__all__ = ["ModelError", "BUNDLE_SCHEMA", "load_interpreter_class", "AsdEmbedder", "KwsEmbedder",
           "KwsStreamEmbedder", "load_bundle", "load_asd"]

BUNDLE_SCHEMA = 1

#: Where the models shipped with the project are (``models/`` at the project root).
SHIPPED_MODELS = Path(__file__).resolve().parent.parent / "models"


def _read_bundle(tflite_path: Path) -> tuple[dict[str, Any], bytes]:
    """A bundle's metadata and its model's bytes, read once and checked against the
    metadata's ``tflite_sha256``, so that an interpreter made from them runs exactly what was
    checked: a file replaced between a check and a second read would otherwise run unchecked.

    Raises
    ------
    ModelError
        A missing or unreadable file, invalid or incomplete metadata (:func:`_read_metadata`),
        or bytes whose SHA-256 is not the metadata's.
    """
    meta = _read_metadata(tflite_path)
    content, digest = read_model_bytes(tflite_path)
    if digest != meta["tflite_sha256"]:
        raise ModelError(f"model {tflite_path} does not match its metadata: sha256 {digest[:12]}… "
                         f"!= {meta['tflite_sha256'][:12]}… (corrupt or replaced file)")
    return meta, content


def _read_metadata(tflite_path: Path) -> dict[str, Any]:
    """A bundle's metadata, its model file present, not yet read (:func:`_read_bundle`).

    Raises
    ------
    ModelError
        A missing model or metadata file, invalid JSON, a missing field or another schema.
    """
    meta_path = tflite_path.with_suffix(".json")
    if tflite_path.is_dir():
        raise ModelError(f"{tflite_path} is a folder, not a model file (name the .tflite "
                         "file of a bundle)")
    if not tflite_path.is_file():
        raise ModelError(f"model file not found: {tflite_path} ({_missing_model_hint(tflite_path)})")
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
    return meta


def _missing_model_hint(path: Path) -> str:
    """What to do about a missing model file: where the shipped one is, if it is one."""
    shipped = SHIPPED_MODELS / path.name
    if shipped.is_file():
        return (f"the shipped models are in {SHIPPED_MODELS}/; set the model path to "
                f"{shipped}, or relative to the config's folder")
    return (f"point the model path at a bundle, a .tflite with its .json next to it (the "
            f"shipped ones are in {SHIPPED_MODELS}/)")


def _a(task: str) -> str:
    """``'asd'`` -> ``"an 'asd'"``, ``'kws'`` -> ``"a 'kws'"`` (for "expected an 'asd' model")."""
    return f"{'an' if str(task)[:1].lower() in tuple('aeiou') else 'a'} {task!r}"


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
        meta, content = _read_bundle(path)
        if meta["task"] != "asd":
            raise ModelError(f"{path} is {_a(meta['task'])} model, expected an 'asd' model")
        self.path = path
        self.metadata = meta
        self.model_id = meta["model_id"]
        self.sha256 = meta["tflite_sha256"]
        try:
            self.frontend = AsdFrontendParams.from_dict(meta["frontend"])
        except (TypeError, ValueError) as exc:
            raise ModelError(f"model metadata {path.with_suffix('.json')}: {exc}") from exc
        self.embedding_dim = int(meta["embedding_dim"])
        self.n_members = int(meta.get("ensemble_members", 1))
        if self.n_members < 1 or self.embedding_dim % self.n_members:
            raise ModelError(f"model metadata {path.with_suffix('.json')}: embedding_dim "
                             f"{self.embedding_dim} is not divisible into "
                             f"{self.n_members} ensemble members")
        expected = self.frontend.input_shapes
        if list(meta["inputs"]) != list(expected):
            raise ModelError(f"model metadata {path.with_suffix('.json')}: inputs "
                             f"{meta['inputs']} do not match its frontend's {list(expected)}")
        self.num_threads = num_threads
        self._content = content   # what was checked and loaded; branches are cut from it
        self._interp = make_interpreter(path, num_threads, content=content)
        inputs = {d["name"]: d for d in self._interp.get_input_details()}
        self._inputs = {}
        for name, shape in expected.items():
            # TFLite names inputs like "serving_default_spectrogram:0"; match the suffix
            # exactly so that "spectrogram" does not also match "spectrogram_256".
            match = [d for n, d in inputs.items()
                     if n.split(":")[0] == name or n.split(":")[0].endswith("_" + name)]
            if len(match) != 1:
                raise ModelError(f"{path}: no unique input tensor named like {name!r} "
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
        self._branches: dict[str, Any] = {}   # input name -> that branch's own interpreter

    def embed_features(self, features: dict[str, np.ndarray]) -> np.ndarray:
        """Embed one clip's features.

        Parameters
        ----------
        features : dict of str -> np.ndarray, float32
            One clip's inputs from :func:`edge.frontend.asd_features` (unbatched).

        Returns
        -------
        np.ndarray, shape (embedding_dim,), float32
            Unit L2 norm; for an ensemble of ``n_members`` sub-models every member's
            slice is normalised on its own first (see :func:`normalize_members`).
        """
        for name, d in self._inputs.items():
            self._interp.set_tensor(d["index"], quantize(features[name][None], d))
        self._interp.invoke()
        out = dequantize(self._interp.get_tensor(self._output["index"])[0], self._output)
        return normalize_members(out, self.n_members)

    def embed_branch(self, features: dict[str, np.ndarray], name: str) -> np.ndarray:
        """One branch's embedding, running that branch alone.

        The branch is cut out of the model once, at the first call
        (:func:`edge.tflite.branch_model`): same weights, same int8 values as the branch's
        slice of :meth:`embed_features`'s output before its normalisation, at about a fifth
        of the time for the spectrum branch of the default embedder.

        Parameters
        ----------
        features : dict of str -> np.ndarray, float32
            One clip's inputs (:func:`edge.frontend.asd_features`); only ``features[name]``
            is read.
        name : str
            The branch's input, one of ``metadata["inputs"]`` (``"spectrum"``,
            ``"spectrogram"``).

        Returns
        -------
        np.ndarray, shape (embedding_dim // n_branches,), float32
            Not normalised (the backend normalises each view).

        Raises
        ------
        ModelError
            An ensemble, a model with one branch or without ``name``, or a graph whose
            branches cannot be told apart. The branch is cut from the bytes loaded, whatever
            the file holds now.
        """
        runner = self.prepare_branch(name)
        d = runner.get_input_details()[0]
        runner.set_tensor(d["index"], quantize(features[name][None], d))
        runner.invoke()
        out = runner.get_output_details()[0]
        return dequantize(runner.get_tensor(out["index"])[0], out)

    def prepare_branch(self, name: str):
        """Cut the branch ``name`` out of the model now, if it is not yet (see
        :meth:`embed_branch`, which raises what this raises), and return its interpreter.
        The node does it when it loads its model and calibration, so that a model it cannot
        be cut from is refused then, not at the first window."""
        runner = self._branches.get(name)
        if runner is None:
            runner = self._branches[name] = self._branch_interpreter(name)
        return runner

    def _branch_interpreter(self, name: str):
        inputs = list(self.metadata["inputs"])
        if self.n_members != 1 or len(inputs) < 2 or name not in inputs:
            raise ModelError(f"model {self.model_id} (inputs {inputs}, {self.n_members} "
                             f"ensemble members) has no branch {name!r} to run alone")
        interp = make_interpreter(self.path, self.num_threads, content=branch_model(
            self._content, inputs.index(name), len(inputs), str(self.path)))
        shape = tuple(interp.get_input_details()[0]["shape"][1:])
        width = int(interp.get_output_details()[0]["shape"][-1])
        if shape != self.frontend.input_shapes[name] or width * len(inputs) != self.embedding_dim:
            raise ModelError(f"{self.path}: the branch cut for {name!r} reads shape {shape} "
                             f"and gives {width} dimensions; expected "
                             f"{self.frontend.input_shapes[name]} and "
                             f"{self.embedding_dim // len(inputs)}")
        return interp

    def embed(self, waveform: np.ndarray) -> np.ndarray:
        """Embed one clip of 16 kHz mono audio (padded/cut to the model's clip length).

        Returns
        -------
        np.ndarray, shape (embedding_dim,), float32, see :meth:`embed_features`
        """
        return self.embed_features(asd_features(waveform, self.frontend))


class KwsEmbedder:
    """An int8 (or float) TFLite TACos embedder with its frontend (thesis 6.3.4).

    The model maps one log-Mel segment (``T`` x ``n_mels``) to ``T`` embeddings. For a
    recording or a stream, segments start every ``segment_hop`` frames (the thesis uses one
    frame, 16 ms; the node's default is set in its config), with half a segment of silence
    padded at both ends, and every frame's embedding is the mean of the (L2-normalised)
    embeddings that all segments covering it give it (thesis Figure 28), L2-normalised again.

    Parameters
    ----------
    tflite_path : str or Path
        ``.tflite`` with its ``.json`` metadata (``task: "kws"``).
    num_threads : int
    segment_hop : int, optional
        Frames between segment starts; default: the bundle's ``segment_hop`` metadata.

    Attributes
    ----------
    metadata : dict
    frontend : KwsFrontendParams
    model_id, sha256 : str
    embedding_dim : int
    frame_seconds : float
        Seconds per embedding frame (0.016).
    confirm_frames : None
        The spotter's default (:data:`edge.kws.CONFIRM_SECONDS`: 8 frames of 16 ms).
    max_wait_frames : None
        No limit on how long the spotter waits for a run's minimum.
    shot_fusion : int
        1: every shot decides alone (:class:`edge.kws.KeywordSpotter`).
    onset_weighting : (float, int, float)
        ``(1.0, 0, 0.0)``: every template frame counts alike (:func:`edge.kws.onset_frame_weights`).

    Raises
    ------
    ModelError
        Missing/corrupt files, wrong task, or tensor shapes that disagree with the metadata.
    """

    confirm_frames = None
    max_wait_frames = None
    shot_fusion = 1
    onset_weighting = (1.0, 0, 0.0)

    def __init__(self, tflite_path: str | Path, num_threads: int = 1, segment_hop: int | None = None):
        path = Path(tflite_path)
        meta, content = _read_bundle(path)
        if meta["task"] != "kws":
            raise ModelError(f"{path} is {_a(meta['task'])} model, expected a 'kws' model")
        self.path, self.metadata = path, meta
        self.model_id, self.sha256 = meta["model_id"], meta["tflite_sha256"]
        try:
            self.frontend = KwsFrontendParams.from_dict(meta["frontend"])
        except (TypeError, ValueError) as exc:
            raise ModelError(f"model metadata {path.with_suffix('.json')}: {exc}") from exc
        self.embedding_dim = int(meta["embedding_dim"])
        self.segment_hop = int(segment_hop or meta.get("segment_hop", 1))
        if not 1 <= self.segment_hop <= self.frontend.segment_frames:
            raise ModelError(f"segment_hop must be 1..{self.frontend.segment_frames} frames, "
                             f"got {self.segment_hop}")
        self.frame_seconds = self.frontend.frame_seconds
        self.num_threads = num_threads
        self._interp = make_interpreter(path, num_threads, content=content)
        self._input = self._interp.get_input_details()[0]
        self._output = self._interp.get_output_details()[0]
        T, F = self.frontend.segment_frames, self.frontend.n_mels
        if tuple(self._input["shape"][1:]) != (T, F):
            raise ModelError(f"{path}: input has shape {tuple(self._input['shape'][1:])}, the "
                             f"metadata's frontend gives {(T, F)}")
        if tuple(self._output["shape"][1:]) != (T, self.embedding_dim):
            raise ModelError(f"{path}: output has shape {tuple(self._output['shape'][1:])}, "
                             f"expected {(T, self.embedding_dim)}")

    def embed_segments(self, segments: np.ndarray) -> np.ndarray:
        """Embed normalised segments (from :func:`edge.kws_frontend.kws_segments`).

        Parameters
        ----------
        segments : np.ndarray, shape (n, T, n_mels), float32

        Returns
        -------
        np.ndarray, shape (n, T, embedding_dim), float32, not normalised
        """
        out = np.empty((len(segments), self.frontend.segment_frames, self.embedding_dim), np.float32)
        for i, seg in enumerate(segments):
            self._interp.set_tensor(self._input["index"], quantize(seg[None], self._input))
            self._interp.invoke()
            out[i] = dequantize(self._interp.get_tensor(self._output["index"])[0], self._output)
        return out

    def segment_starts(self, n_frames: int) -> np.ndarray:
        """First frames of the segments covering ``n_frames`` frames (from ``-pad``)."""
        return segment_starts(n_frames, self.segment_hop, self.frontend)

    def embed_logmel(self, logmel: np.ndarray) -> np.ndarray:
        """Frame embeddings of a whole recording's log-Mel frames (thesis Figure 28).

        Parameters
        ----------
        logmel : np.ndarray, shape (n_frames, n_mels), float32

        Returns
        -------
        np.ndarray, shape (n_frames, embedding_dim), float32, rows L2-normalised
        """
        stream = KwsStreamEmbedder(self)
        out = [stream.push_logmel(logmel), stream.flush()]
        return np.concatenate(out)

    def embed_wave(self, y: np.ndarray) -> np.ndarray:
        """Frame embeddings of a 16 kHz mono recording, one per 16 ms frame.

        Returns
        -------
        np.ndarray, shape (1 + len(y) // hop_length, embedding_dim), float32, L2-normalised
        """
        return self.embed_logmel(kws_logmel(y, self.frontend))

    def stream(self) -> "KwsStreamEmbedder":
        """A streaming embedder fed with audio blocks (see :class:`KwsStreamEmbedder`)."""
        return KwsStreamEmbedder(self)


class KwsStreamEmbedder:
    """Streaming TACos embeddings: audio (or log-Mel frames) in, final frame embeddings out.

    Frame ``j``'s embedding is final once every segment covering it has been embedded,
    i.e. after frame ``j + T - 1`` has arrived (plus the STFT's 32 ms lookahead): about
    0.29 s latency. :meth:`push` followed by :meth:`flush` gives exactly
    :meth:`KwsEmbedder.embed_logmel` of the whole stream, however it is chunked.

    Parameters
    ----------
    embedder : KwsEmbedder
    """

    def __init__(self, embedder: KwsEmbedder):
        self.embedder = embedder
        p = embedder.frontend
        self._frontend = KwsStreamFrontend(p)
        self._T, self._pad, self._hop = p.segment_frames, p.pad_frames, embedder.segment_hop
        self._logmel = np.zeros((0, p.n_mels), np.float32)  # frames from self._base on
        self._base = 0                   # absolute index of self._logmel[0]
        self._next_start = -self._pad    # next segment's first frame
        self._sum = np.zeros((0, embedder.embedding_dim), np.float32)  # from self._done on
        self._count = np.zeros(0, np.float32)
        self._done = 0                   # frames already emitted
        self.frames_seen = 0

    def push(self, block: np.ndarray) -> np.ndarray:
        """Add audio samples (16 kHz mono float); returns final frame embeddings (k, D)."""
        return self.push_logmel(self._frontend.push(block))

    def push_logmel(self, frames: np.ndarray) -> np.ndarray:
        """Add log-Mel frames; returns final frame embeddings, shape (k, D), float32."""
        self._logmel = np.concatenate([self._logmel, frames.astype(np.float32)])
        self.frames_seen += len(frames)
        starts = []
        while self._next_start + self._T <= self.frames_seen:
            starts.append(self._next_start)
            self._next_start += self._hop
        self._embed(starts)
        # frames before the next segment's start get no more contributions
        return self._emit(min(self._next_start, self.frames_seen))

    def flush(self) -> np.ndarray:
        """End of stream: the remaining segments (right edge padded with silence)."""
        if self._frontend.samples_seen:
            tail = self._frontend.flush()
            self._logmel = np.concatenate([self._logmel, tail])
            self.frames_seen += len(tail)
        n = self.frames_seen
        last = int(self.embedder.segment_starts(n)[-1])
        starts = list(range(self._next_start, last + 1, self._hop))
        self._next_start = last + self._hop
        self._embed(starts)
        return self._emit(n)

    def _embed(self, starts) -> None:
        if not starts:
            return
        p = self.embedder.frontend
        starts = np.asarray(starts)
        rel = starts - self._base
        segs = kws_segments(self._logmel, rel, p)
        emb = self.embedder.embed_segments(segs)
        emb /= np.maximum(np.linalg.norm(emb, axis=-1, keepdims=True), 1e-12)
        need = int(starts.max()) + self._T - self._done
        if need > len(self._sum):
            grow = need - len(self._sum)
            self._sum = np.concatenate([self._sum, np.zeros((grow, self._sum.shape[1]), np.float32)])
            self._count = np.concatenate([self._count, np.zeros(grow, np.float32)])
        for s, e in zip(starts, emb):
            lo = max(int(s), self._done)
            off = lo - int(s)
            self._sum[lo - self._done: int(s) + self._T - self._done] += e[off:]
            self._count[lo - self._done: int(s) + self._T - self._done] += 1

    def _emit(self, upto: int) -> np.ndarray:
        k = max(0, upto - self._done)
        if k == 0:
            return np.zeros((0, self.embedder.embedding_dim), np.float32)
        out = self._sum[:k] / np.maximum(self._count[:k, None], 1)
        out /= np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)
        self._sum, self._count = self._sum[k:], self._count[k:]
        self._done += k
        # keep only the log-Mel frames future segments still need
        keep_from = max(self._next_start, 0) - self._base
        if keep_from > 0:
            self._logmel = self._logmel[keep_from:]
            self._base += keep_from
        return out.astype(np.float32)


def load_bundle(tflite_path: str | Path, task: str | None = None, num_threads: int = 1, *,
                running=None, **kwargs):
    """Load a model bundle: an :class:`AsdEmbedder`, a :class:`KwsEmbedder` or a
    :class:`edge.speech_embedding.SpeechEmbedder` (KWS metadata with
    ``representation: "speech_embedding"``).

    Parameters
    ----------
    tflite_path : str or Path
    task : {"asd", "kws"}, optional
        Expected task; default: whatever the metadata says.
    num_threads : int
    running : AsdEmbedder, KwsEmbedder or SpeechEmbedder, optional
        An embedder already in use: returned as it is when it was loaded from a file with
        the same SHA-256 as ``tflite_path`` and with the same ``num_threads`` and
        ``kwargs``, so applying a config does not load an unchanged model twice.
    **kwargs
        Passed to the embedder (``segment_hop`` for KWS).

    Raises
    ------
    ModelError
        Missing or corrupt bundle, or a bundle for another task.
    """
    path = Path(tflite_path)
    wanted = {k: v for k, v in dict(kwargs, num_threads=num_threads).items() if v is not None}
    if running is not None and path.is_file() and \
            all(getattr(running, k) == v for k, v in wanted.items()) \
            and sha256_file(path) == running.sha256:
        return running
    meta = _read_metadata(path)  # which embedder; each reads and checks the model itself
    meta_task = meta["task"]
    if task is not None and meta_task != task:
        raise ModelError(f"{path} is {_a(meta_task)} model, expected {_a(task)} model")
    if meta_task == "asd":
        return AsdEmbedder(path, num_threads=num_threads)
    if meta_task == "kws" and meta.get("representation") == speech_embedding.REPRESENTATION:
        meta, content = _read_bundle(path)
        return speech_embedding.SpeechEmbedder(path, meta, num_threads=num_threads,
                                               content=content, **kwargs)
    if meta_task == "kws":
        return KwsEmbedder(path, num_threads=num_threads, **kwargs)
    raise ModelError(f"{path}: unknown model task {meta_task!r}")


def load_asd(cfg, running=None):
    """The anomaly embedder and calibration of a node config, checked against each other.

    Parameters
    ----------
    cfg : firmware_config.schema.NodeConfig
        Uses ``asd.model``, ``asd.calibration``, ``asd.num_threads``,
        ``asd.window_seconds``, ``asd.auto_calibration_seconds`` and ``audio.sample_rate``.
    running : AsdEmbedder, optional
        The embedder in use; kept if ``asd.model`` is still the same model (config apply).

    Returns
    -------
    embedder : AsdEmbedder
    calibration : edge.backend.Calibration or None
        None when there is none yet and the node may learn one
        (``asd.auto_calibration_seconds > 0``).

    Raises
    ------
    ModelError
        Missing or corrupt model (message starts ``asd.model:``), or a model whose clip
        length or sample rate differs from the config's.
    edge.backend.CalibrationError
        A corrupt calibration, or one made for another model; a missing one when
        ``asd.auto_calibration_seconds`` is 0.
    """
    a = cfg.asd
    try:
        embedder = load_bundle(cfg.resolve(a.model), "asd", a.num_threads, running=running)
    except ModelError as exc:
        raise ModelError(f"asd.model: {exc}") from None
    fe = embedder.frontend
    if abs(fe.clip_seconds - a.window_seconds) > 1e-6:
        raise ModelError(f"asd.window_seconds is {a.window_seconds} s but the model "
                         f"{embedder.model_id} takes {fe.clip_seconds} s clips")
    if fe.sample_rate != cfg.audio.sample_rate:
        raise ModelError(f"audio.sample_rate {cfg.audio.sample_rate} Hz differs from the "
                         f"model's {fe.sample_rate} Hz")
    cal_path = cfg.resolve(a.calibration)
    if cal_path.exists() or a.auto_calibration_seconds == 0:
        calibration = Calibration.load(cal_path, embedder.sha256)
        try:  # the branch the views run alone is cut now, not at the first window
            prepare_views(embedder, calibration.view_names)
        except ModelError as exc:
            raise ModelError(f"asd.model: {exc}") from None
        return embedder, calibration
    return embedder, None
