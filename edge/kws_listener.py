"""The node's keyword listener: audio blocks in, keyword detections out.

The KWS model bundle (:func:`edge.model.load_bundle`) and the enrolled keywords
(:class:`edge.keywords.EnrolledKeywords`) of a node config wired to the streaming
:class:`edge.kws.KeywordSpotter` (thesis 6.3.6); capture and transport stay outside
(openWakeWord's "audio chunk in, scores out").
"""
from __future__ import annotations

import logging

import numpy as np

from edge.keywords import EnrolledKeywords
from edge.kws import Detection, KeywordSpotter
from edge.model import ModelError, load_bundle

log = logging.getLogger(__name__)

__all__ = ["KeywordListener"]


class KeywordListener:
    """Streaming keyword spotting as the node runs it: audio blocks in, detections out.

    The KWS model bundle and the enrolled keywords of a node config, wired together: each
    :meth:`push` runs the streaming frontend and int8 embedder
    (:meth:`edge.model.KwsEmbedder.stream`, per-frame averaged segment embeddings) and the
    :class:`KeywordSpotter` over them. Capture and transport stay outside (openWakeWord's
    "audio chunk in, scores out").

    Parameters
    ----------
    cfg : firmware_config.schema.NodeConfig
        Uses the ``kws`` section (``model``, ``keywords``, ``num_threads``, ``segment_hop``).
    running : edge.model.KwsEmbedder, optional
        The embedder in use; kept if ``kws.model`` is still the same model (config apply).

    Attributes
    ----------
    embedder : edge.model.KwsEmbedder
    enrolled : edge.keywords.EnrolledKeywords or None
        ``None`` until keywords are enrolled (the listener is then idle).

    Raises
    ------
    ModelError
        Missing/corrupt model, or keywords enrolled with another model.
    edge.keywords.EnrollmentError
        A corrupt keywords file.
    """

    def __init__(self, cfg, running=None):
        k = cfg.kws
        try:
            self.embedder = load_bundle(cfg.resolve(k.model), "kws", k.num_threads,
                                        running=running, segment_hop=k.segment_hop)
        except ModelError as exc:
            raise ModelError(f"kws.model: {exc}") from None
        path = cfg.resolve(k.keywords)
        self.enrolled: EnrolledKeywords | None = None
        self.spotter: KeywordSpotter | None = None
        if not path.exists():
            log.warning("no keywords enrolled at %s: keyword spotting is idle (enroll with "
                        "`python -m calibration enroll --config ... --keyword NAME --shots 5`)",
                        path)
            return
        enrolled = EnrolledKeywords.load(path)
        if enrolled.model_id != self.embedder.model_id:
            raise ModelError(f"keywords in {path} were enrolled with model {enrolled.model_id}, "
                             f"but kws.model is {self.embedder.model_id}; enroll them again")
        if enrolled.shot_fusion != self.embedder.shot_fusion:
            log.warning("keywords in %s were enrolled with shot_fusion %d, the model uses %d: "
                        "spotting as enrolled; enroll them again (or run `python -m calibration "
                        "background`) to use the model's", path, enrolled.shot_fusion,
                        self.embedder.shot_fusion)
        if tuple(enrolled.onset_weighting) != tuple(self.embedder.onset_weighting):
            log.warning("keywords in %s were enrolled with onset_weighting %s, the model uses "
                        "%s: spotting as enrolled; enroll them again (or run `python -m "
                        "calibration background`) to use the model's", path,
                        list(enrolled.onset_weighting), list(self.embedder.onset_weighting))
        self.enrolled = enrolled
        self.stream = self.embedder.stream()
        self.spotter = self._spotter()

    @property
    def active(self) -> bool:
        """True when keywords are enrolled (else :meth:`push` returns nothing)."""
        return self.spotter is not None

    def reset(self) -> None:
        """Forget the stream so far (after a gap in the audio, e.g. a reopened device)."""
        if self.active:
            self.stream = self.embedder.stream()
            self.spotter = self._spotter()

    def _spotter(self) -> KeywordSpotter:
        """A spotter for the enrolled keywords that decides as the node does: once a run's
        minimum is confirmed, after the embedder's ``confirm_frames`` (at the latest its
        ``max_wait_frames`` after the run began), with the shot fusion and onset weighting the
        thresholds were set for (``enrolled.shot_fusion``, ``enrolled.onset_weighting``)."""
        return KeywordSpotter.from_enrolled(self.enrolled, self.embedder.frame_seconds,
                                            decision="confirmed",
                                            confirm_frames=self.embedder.confirm_frames,
                                            max_wait_frames=self.embedder.max_wait_frames)

    def push(self, block: np.ndarray) -> list[Detection]:
        """Feed audio, shape (n_samples,) float32 at the model's rate; returns the detections
        that became final (:class:`Detection`, seconds from the stream start)."""
        if not self.active:
            return []
        return self.spotter.push(self.stream.push(block))

    def flush(self) -> list[Detection]:
        """End of a finite stream: the remaining detections."""
        if not self.active:
            return []
        return self.spotter.push(self.stream.flush()) + self.spotter.flush()
