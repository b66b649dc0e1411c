"""The node's data plane: capture -> frontends -> int8 embedders -> anomaly score / keyword DTW
-> MQTT.

Two listeners share one audio stream: anomaly detection on overlapping windows (asd) and
keyword spotting on a frame stream (kws, :class:`edge.kws_listener.KeywordListener`: streaming TACos
embeddings and streaming sub-sequence DTW, thesis 6.3). Audio health (device lost, silence,
clipping) is reported as ``event/health``. Without a calibration the node first learns one
from the stream (the same windows it will score), and ``cmd/recalibrate`` learns a new one
while scoring goes on.

Around it: :class:`edge.control.NodeControl` (commands and configs over MQTT; it swaps new
parts in between two audio blocks, under :attr:`Node.lock`), :mod:`edge.payloads` (the JSON
messages) and :class:`edge.mqtt.MqttPublisher` (connection and spooled delivery).
"""
from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from edge import payloads
from edge.audio import open_source
from edge.control import NodeControl, with_replay
from edge.discovery import discovery_messages
from edge.health import AudioHealth
from edge.kws_listener import KeywordListener
from edge.learning import StreamLearning
from edge.levels import peak_dbfs, rms_dbfs
from edge.model import load_asd
from edge.mqtt import MqttPublisher
from edge.pipeline import Windower
from edge.spool import Spool
from edge.views import window_views

log = logging.getLogger(__name__)

__all__ = ["Node"]


class Node:
    """One node's runtime: audio in, events out, commands and flashed configs applied live.

    Parameters
    ----------
    cfg : firmware_config.schema.NodeConfig
    source : audio source, optional
        Anything with ``start()``, ``blocks(stop)``, ``close()``, ``faults``, ``finite``,
        ``device_name``, ``overflows``; default: the config's files if any, else the
        microphone (:func:`edge.audio.open_source`).
    config_path : str or Path, optional
        The config file ``cfg`` was read from: ``cmd/reload`` re-reads it and a config
        flashed over MQTT replaces it (:class:`edge.control.NodeControl`). Without it both
        are rejected.
    replay : sequence of str, optional
        Recordings to score instead of the configured input (``python -m edge run
        --replay``): they replace ``audio.files`` of ``cfg`` and of every config reloaded
        or flashed while the node runs, so a reload of the unchanged file changes nothing.

    Notes
    -----
    Times. Window and keyword times are the stream's start time plus the position in the
    stream. For a live input (or a real-time replay) the start is the wall-clock time of
    the first sample, so an event's ``ts`` is never earlier than the end of the window
    it describes. A replay that is not real time is processed faster than it plays, so it
    is stamped as a recording that ended when the replay started: its windows lie in the
    past and ``ts`` (when the event was made) is again never earlier than the window end.

    Attributes
    ----------
    lock : threading.RLock
        Held while an audio block is processed, while parts are swapped and while the
        ``state`` snapshot is built.
    control : edge.control.NodeControl
    learning : edge.learning.StreamLearning or None
        The calibration being learned from the stream, if any.

    Raises
    ------
    ModelError
        Missing model, or a model that does not match its metadata or the config.
    CalibrationError
        A calibration made for another model, or a missing one when
        ``asd.auto_calibration_seconds`` is 0. With a positive value a node without a
        calibration first learns normal operation for that long (through the same
        windows it will score), writes the artifact atomically and then starts scoring.
    edge.spool.SpoolError
        The spool's folder is not writable.
    edge.mqtt.MqttSetupError
        Unreadable ``mqtt.password_file`` or missing TLS files.
    """

    def __init__(self, cfg, source=None, config_path=None, replay=None):
        self.replay_files = [str(f) for f in replay] if replay else None
        cfg = with_replay(cfg, self.replay_files)
        self.cfg = cfg
        self.lock = threading.RLock()
        self.keywords = KeywordListener(cfg) if cfg.kws.enabled else None
        self.keyword_events = 0
        self.embedder, self.calibration = load_asd(cfg) if cfg.asd.enabled else (None, None)
        self.learning: StreamLearning | None = None
        if self.embedder is not None and self.calibration is None:
            log.warning("no calibration at %s: learning normal operation for the first %g s "
                        "(keep the machine running normally)", cfg.resolve(cfg.asd.calibration),
                        cfg.asd.auto_calibration_seconds)
            self.start_learning(cfg.asd.auto_calibration_seconds, cfg.asd.threshold.method)
        self.source = source if source is not None else open_source(cfg)
        s = cfg.spool
        self.spool = Spool(cfg.resolve(s.path), s.max_events, s.drop_policy)
        self.health = AudioHealth.from_config(cfg.audio)
        self.faults: dict[str, str] = {}  # active audio faults: kind -> message
        self.control = NodeControl(self, Path(config_path).resolve() if config_path else None)
        self.publisher = self.make_publisher(cfg)
        self.started = time.time()
        self.windows = 0
        self.anomalies = 0
        self._level = -120.0
        self._peak = -120.0
        self._cpu0 = (time.monotonic(), time.process_time())
        self._stop = threading.Event()
        self._blocks = None
        self._status: str | None = None  # overrides state's status ("offline" at the end)
        self._fed = 0  # samples of the current source processed
        self._origin: float | None = None  # POSIX time of a non-real-time replay's sample 0
        self.reset_stream()

    # -- building blocks (also used by the control plane to apply a new config) ------------
    def make_publisher(self, cfg) -> MqttPublisher:
        """An MQTT publisher for ``cfg`` that sends this node's state and discovery documents
        and hands commands to the control plane."""
        return MqttPublisher(cfg, self.state, self.spool, on_message=self.control.on_message,
                             discovery_fn=lambda: self._discovery(cfg))

    def _discovery(self, cfg) -> list[tuple[str, str]]:
        kw = self.keywords
        keywords = sorted(kw.enrolled.thresholds) if kw is not None and kw.enrolled else []
        embedders = (self.embedder, kw.embedder if kw is not None else None)
        return discovery_messages(cfg, keywords,
                                  ", ".join(e.model_id for e in embedders if e is not None))

    def swap_source(self, source) -> None:
        """Read audio from ``source`` (already started) from the next block on."""
        self.source = source
        self._blocks = source.blocks(self._stop)
        self._anchor(source)

    def _anchor(self, source) -> None:
        """Set how the stream of ``source`` is stamped (see the class notes on times)."""
        self._fed = 0
        self._origin = None
        if source.finite and not getattr(source, "realtime", True):
            self._origin = time.time() - getattr(source, "duration_seconds", 0.0)

    def start_learning(self, seconds: float, method: str, request_id=None,
                       requested: bool = False) -> StreamLearning | None:
        """Begin learning a calibration from the stream for ``seconds``.

        Returns
        -------
        edge.learning.StreamLearning or None
            None when learning began; the job already under way otherwise (nothing is
            started then).
        """
        with self.lock:
            if self.learning is not None:
                return self.learning
            self.learning = StreamLearning(self.embedder, seconds, method, request_id,
                                           requested, self.cfg.asd.views,
                                           self.control.reply if requested else None)
            return None

    def reset_stream(self) -> None:
        """Start the analysis afresh: after a gap in the audio or a config change."""
        sr = self.cfg.audio.sample_rate
        a = self.cfg.asd
        self._win = Windower(int(round(a.window_seconds * sr)), int(round(a.hop_seconds * sr)))
        self._t0 = None  # wall-clock time of the stream's first sample
        self._recent = np.zeros(0, np.float32)
        if self.keywords is not None:
            self.keywords.reset()
        if self.learning is not None:
            self.learning.first_start = None

    # -- payloads ------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        """The retained ``state`` payload; a consistent snapshot (built under :attr:`lock`,
        as paho's network thread calls it while the audio thread runs)."""
        with self.lock:
            return payloads.state(self.cfg, uptime_s=time.time() - self.started,
                                  embedder=self.embedder, calibration=self.calibration,
                                  keywords=self.keywords, learning=self.learning,
                                  source=self.source, faults=self.faults, spool=self.spool,
                                  status=self._status)

    def heartbeat(self) -> dict[str, Any]:
        """The ``heartbeat`` payload; CPU load is measured since the previous heartbeat."""
        now, cpu = time.monotonic(), time.process_time()
        wall0, cpu0 = self._cpu0
        self._cpu0 = (now, cpu)
        return payloads.heartbeat(
            self.cfg, uptime_s=time.time() - self.started, level_dbfs=self._level,
            peak_dbfs=self._peak, cpu_percent=100.0 * (cpu - cpu0) / max(now - wall0, 1e-6),
            queue_depth=self.spool.depth, events_dropped=self.spool.dropped,
            windows=self.windows, anomalies=self.anomalies, keyword_events=self.keyword_events,
            overflows=getattr(self.source, "overflows", 0), audio_faults=list(self.faults))

    # -- scoring -------------------------------------------------------------------------
    def score_window(self, window: np.ndarray) -> tuple[float, bool]:
        """Anomaly score of one window, shape (n_samples,) float32, and its decision
        (:meth:`edge.backend.Calibration.is_anomalous`)."""
        cal = self.calibration
        score = float(cal.score_views(window_views(self.embedder, window, cal.view_names))[0])
        return score, cal.is_anomalous(score)

    def _publish_keywords(self, detections, t0: float) -> None:
        kw = self.keywords
        for det in detections:
            self.keyword_events += 1
            ev = payloads.keyword_event(self.cfg, det, t0, model_id=kw.embedder.model_id,
                                        enrollment_id=kw.enrolled.enrollment_id)
            log.info("keyword %r %.2f-%.2f s cost %.4f threshold %.4f", det.keyword, det.onset_s,
                     det.offset_s, det.cost, det.threshold)
            self.publisher.publish_event("keyword", ev)

    def _health(self, events) -> None:
        """Report audio health transitions (``event/health``) and keep ``state`` current."""
        for h in events:
            if h.active:
                self.faults[h.kind] = h.message
                log.warning("audio fault: %s", h.message)
            else:
                self.faults.pop(h.kind, None)
                log.info("audio recovered: %s", h.message)
            if h.kind == "device":
                self.reset_stream()  # a gap in the audio: windows must not span it
            self.publisher.publish_event("health", payloads.health_event(self.cfg, h))
        if events:
            self.publisher.publish_state()

    # -- calibration learned from the stream -----------------------------------------------
    def _learn(self, start: int, window: np.ndarray) -> None:
        """Collect one normal window; fit, save and swap in the calibration once enough are
        in (the first calibration, or ``cmd/recalibrate``: scoring goes on meanwhile)."""
        job = self.learning
        if not job.add(start, window, self.cfg.audio.sample_rate, self.cfg.asd):
            return
        self.learning = None
        cal = job.finish(self.cfg)
        if cal is None:  # logged and answered; a first calibration tries again
            if not job.requested:
                self.start_learning(job.seconds, job.method)
            return
        self.calibration = cal
        self.publisher.publish_state()

    # -- main loop -----------------------------------------------------------------------
    def run(self, stop: threading.Event | None = None) -> None:
        """Run until ``stop`` is set or the source ends (file replay).

        The input device is opened before the broker connection: a missing microphone
        fails here (``NoInputDeviceError``) before anything is published. A clean stop
        delivers what it can, then publishes a last retained ``state`` with status
        ``offline`` and ``offline`` on ``status``.
        """
        stop = stop or threading.Event()
        self._stop = stop
        halt = threading.Event()  # ends the control thread
        try:
            self.source.start()
        except BaseException:
            self.spool.close()
            raise
        self._anchor(self.source)
        self.publisher.start()
        control = threading.Thread(target=self.control.run, args=(halt,), name="control",
                                   daemon=True)
        control.start()
        self._log_start()
        next_hb = time.monotonic()
        self._blocks = blocks = self.source.blocks(stop)
        try:
            while not stop.is_set():
                block = next(blocks, None)
                if blocks is not self._blocks:  # a config change swapped the audio source
                    blocks = self._blocks
                    continue
                if block is None:
                    break  # a replay ran to its end
                with self.lock:
                    self._process(block)
                    if time.monotonic() >= next_hb:
                        self.publisher.publish_heartbeat(self.heartbeat())
                        self.publisher.publish_state()
                        next_hb = time.monotonic() + self.cfg.mqtt.heartbeat_seconds
            kw = self.keywords
            if kw is not None and not stop.is_set() and self._t0 is not None:
                self._publish_keywords(kw.flush(), self._t0)
        finally:
            self.source.close()
            # A replay that ran to its end waits longer for the broker than a stopped node.
            finished = self.source.finite and not stop.is_set()
            halt.set()
            control.join(timeout=2.0)
            if self.learning is not None:
                self.learning.report_unfinished(finished)
            publisher = self.publisher
            publisher.flush(30.0 if finished else 5.0, abort=stop if finished else None)
            with self.lock:
                self._status = "offline"
            publisher.publish_state()  # the last state: retained, says offline
            publisher.stop(flush_timeout=0)
            self.spool.close()

    def _log_start(self) -> None:
        cfg, cal = self.cfg, self.calibration
        if self.embedder is not None:
            log.info("node %s running: anomaly model %s, calibration %s", cfg.topic_root,
                     self.embedder.model_id, "none yet (learning)" if cal is None else
                     f"{cal.calibration_id}, threshold {cal.decision_threshold:.5f} "
                     f"({cal.threshold_method})")
        kw = self.keywords
        if kw is not None and kw.active:
            log.info("node %s running: keyword model %s, keywords %s", cfg.topic_root,
                     kw.embedder.model_id, ", ".join(f"{k} ({v:.3f})" for k, v in
                                                     sorted(kw.enrolled.thresholds.items())))
        if self.spool.depth:
            log.info("%d event(s) spooled from before; delivering them first", self.spool.depth)

    def _process(self, block: np.ndarray) -> None:
        """One audio block (or an empty tick while no audio arrives) through both listeners."""
        faults = []
        q = getattr(self.source, "faults", None)
        while q is not None and not q.empty():
            faults.append(q.get_nowait())
        self._health(faults)
        if not len(block):
            return
        sr = self.cfg.audio.sample_rate
        if self._t0 is None:  # time of this block's first sample (class notes: times)
            self._t0 = (time.time() - len(block) / sr if self._origin is None
                        else self._origin + self._fed / sr)
        self._fed += len(block)
        t0 = self._t0
        self._recent = np.concatenate([self._recent, block])[-sr:]
        self._level = rms_dbfs(self._recent)
        self._peak = peak_dbfs(self._recent)
        self._health(self.health.push(block))
        kw = self.keywords
        if kw is not None:
            self._publish_keywords(kw.push(block), t0)
        for start, w in (self._win.push(block) if self.embedder is not None else ()):
            first_calibration = self.calibration is None
            if self.learning is not None:
                self._learn(start, w)
            if first_calibration:  # nothing to score against yet
                continue
            score, anomalous = self.score_window(w)
            self.windows += 1
            self.anomalies += int(anomalous)
            t_start = t0 + start / sr
            cal = self.calibration
            ev = payloads.anomaly_event(
                self.cfg, anomaly_score=score, decision_threshold=cal.decision_threshold,
                anomalous=anomalous, t_start=t_start, t_end=t_start + len(w) / sr,
                model_id=self.embedder.model_id, calibration_id=cal.calibration_id)
            log.info("window %d score %.5f threshold %.5f -> %s", self.windows, score,
                     cal.decision_threshold, ev["decision"])
            if anomalous or self.cfg.asd.report == "all":
                self.publisher.publish_event("anomaly", ev)
