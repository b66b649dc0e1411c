"""The node: capture -> frontends -> int8 embedders -> anomaly score / keyword DTW -> MQTT.

Two listeners share one audio stream: anomaly detection on overlapping windows (asd) and
keyword spotting on a frame stream (kws: streaming TACos embeddings and streaming
sub-sequence DTW, thesis 6.3).
"""
from __future__ import annotations

import datetime as dt
import logging
import os
import threading
import time
from typing import Any

import numpy as np

from edge.backend import Calibration
from edge.model import ModelError, load_bundle
from edge.mqtt import PAYLOAD_SCHEMA, MqttPublisher, utc_now
from edge.pipeline import Windower, level_dbfs

log = logging.getLogger(__name__)

__all__ = ["Node", "KeywordListener"]


def _iso(t: float) -> str:
    return (dt.datetime.fromtimestamp(t, dt.timezone.utc).isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"))


class KeywordListener:
    """Streaming keyword spotting: audio blocks in, keyword detections out.

    Parameters
    ----------
    cfg : firmware_config.schema.NodeConfig
        Uses the ``kws`` section.

    Attributes
    ----------
    embedder : edge.model.KwsEmbedder
    enrolled : calibration.enroll.EnrolledKeywords or None
        ``None`` until keywords are enrolled (the listener is then idle).

    Raises
    ------
    ModelError
        Missing/corrupt model, or keywords enrolled with another model.
    calibration.enroll.EnrollmentError
        A corrupt keywords file.
    """

    def __init__(self, cfg):
        from calibration.enroll import EnrolledKeywords

        k = cfg.kws
        try:
            self.embedder = load_bundle(cfg.resolve(k.model), task="kws",
                                        num_threads=k.num_threads, segment_hop=k.segment_hop)
        except ModelError as exc:
            raise ModelError(f"kws.model: {exc}") from None
        path = cfg.resolve(k.keywords)
        self.enrolled = None
        self.spotter = None
        if not path.exists():
            log.warning("no keywords enrolled at %s: keyword spotting is idle (enroll with "
                        "`python -m calibration enroll --config ... --keyword NAME --shots 5`)",
                        path)
            return
        enrolled = EnrolledKeywords.load(path)
        if enrolled.model_id != self.embedder.model_id:
            raise ModelError(f"keywords in {path} were enrolled with model {enrolled.model_id}, "
                             f"but kws.model is {self.embedder.model_id}; enroll them again")
        from edge.kws import KeywordSpotter

        self.enrolled = enrolled
        self.stream = self.embedder.stream()
        self.spotter = KeywordSpotter(enrolled.spotter_templates(), enrolled.thresholds,
                                      self.embedder.frame_seconds)

    @property
    def active(self) -> bool:
        return self.spotter is not None

    def push(self, block: np.ndarray) -> list:
        """Feed audio; returns final :class:`edge.kws.Detection` objects (stream seconds)."""
        if not self.active:
            return []
        return self.spotter.push(self.stream.push(block))

    def flush(self) -> list:
        """End of a finite stream: the remaining detections."""
        if not self.active:
            return []
        return self.spotter.push(self.stream.flush()) + self.spotter.flush()


class Node:
    """One node's runtime.

    Parameters
    ----------
    cfg : firmware_config.schema.NodeConfig
    source : audio source, optional
        Anything with ``start()``, ``blocks(stop)``, ``close()``, ``device_name``,
        ``overflows``; default: the config's files if any, else the microphone.

    Raises
    ------
    ModelError
        Missing model, or a model that does not match its metadata or the config.
    CalibrationError
        A calibration made for another model, or a missing one when
        ``asd.auto_calibration_seconds`` is 0. With a positive value a node without a
        calibration first learns normal operation for that long (through the same
        windows it will score), writes the artifact atomically and then starts scoring.
    """

    def __init__(self, cfg, source=None):
        self.cfg = cfg
        a = cfg.asd
        self.keywords = KeywordListener(cfg) if cfg.kws.enabled else None
        self.keyword_events = 0
        self.embedder = None
        self.calibration = None
        if a.enabled:
            self._init_asd(cfg)
        if source is None:
            from edge.audio import FileSource, MicrophoneSource

            if cfg.audio.files:
                source = FileSource([cfg.resolve(f) for f in cfg.audio.files],
                                    cfg.audio.sample_rate, cfg.audio.block_seconds,
                                    cfg.audio.realtime)
            else:
                source = MicrophoneSource(cfg.audio.device, cfg.audio.sample_rate,
                                          cfg.audio.block_seconds, cfg.audio.ring_seconds)
        self.source = source
        self.publisher = MqttPublisher(cfg, self.state)
        self.started = time.time()
        self.seq = 0
        self.windows = 0
        self.anomalies = 0
        self._level = -120.0
        self._peak = -120.0
        self._cpu0 = (time.monotonic(), time.process_time())

    def _init_asd(self, cfg) -> None:
        a = cfg.asd
        self.embedder = load_bundle(cfg.resolve(a.model), task="asd", num_threads=a.num_threads)
        fe = self.embedder.frontend
        if abs(fe.clip_seconds - a.window_seconds) > 1e-6:
            raise ModelError(f"asd.window_seconds is {a.window_seconds} s but the model "
                             f"{self.embedder.model_id} takes {fe.clip_seconds} s clips")
        if fe.sample_rate != cfg.audio.sample_rate:
            raise ModelError(f"audio.sample_rate {cfg.audio.sample_rate} Hz differs from the "
                             f"model's {fe.sample_rate} Hz")
        cal_path = cfg.resolve(a.calibration)
        if cal_path.exists() or a.auto_calibration_seconds == 0:
            self.calibration = Calibration.load(cal_path, self.embedder.sha256)
        else:
            self.calibration = None
            log.warning("no calibration at %s: learning normal operation for the first %g s "
                        "(keep the machine running normally)", cal_path,
                        a.auto_calibration_seconds)

    # -- payloads ------------------------------------------------------------------------
    def _base(self) -> dict[str, Any]:
        return {"schema": PAYLOAD_SCHEMA, "node": self.cfg.node.id, "site": self.cfg.node.site,
                "ts": utc_now()}

    def state(self) -> dict[str, Any]:
        cal = self.calibration
        s = self._base()
        models = {}
        if self.embedder is not None:
            models["asd"] = {"model_id": self.embedder.model_id, "sha256": self.embedder.sha256}
        kw = self.keywords
        if kw is not None:
            models["kws"] = {"model_id": kw.embedder.model_id, "sha256": kw.embedder.sha256}
        s.update(
            status="calibrating" if self.embedder is not None and cal is None else "online",
            uptime_s=round(time.time() - self.started, 1),
            config_sha256=self.cfg.sha256,
            models=models,
            keywords=None if kw is None or kw.enrolled is None else {
                "enrollment_id": kw.enrolled.enrollment_id,
                "thresholds": {k: round(v, 4) for k, v in kw.enrolled.thresholds.items()}},
            calibration=None if cal is None else {
                "calibration_id": cal.calibration_id, "decision_threshold": cal.decision_threshold,
                "threshold_method": cal.threshold_method, "created": cal.created},
            audio={"device": getattr(self.source, "device_name", None),
                   "overflows": getattr(self.source, "overflows", 0),
                   "samples_lost": getattr(getattr(self.source, "ring", None), "overruns", 0)},
            events_dropped=self.publisher.events_dropped,
        )
        return s

    def heartbeat(self) -> dict[str, Any]:
        now, cpu = time.monotonic(), time.process_time()
        wall0, cpu0 = self._cpu0
        self._cpu0 = (now, cpu)
        hb = self._base()
        hb.update(uptime_s=round(time.time() - self.started, 1),
                  level_dbfs=round(self._level, 1), peak_dbfs=round(self._peak, 1),
                  cpu_percent=round(100.0 * (cpu - cpu0) / max(now - wall0, 1e-6), 1),
                  queue_depth=self.publisher.queue_depth,
                  events_dropped=self.publisher.events_dropped,
                  windows=self.windows, anomalies=self.anomalies,
                  keyword_events=self.keyword_events,
                  overflows=getattr(self.source, "overflows", 0))
        return hb

    def score_window(self, window: np.ndarray) -> tuple[float, bool]:
        """Anomaly score of one window and the decision ``score > decision_threshold``."""
        emb = self.embedder.embed(window)
        score = float(self.calibration.score_samples(emb[None])[0])
        return score, score > self.calibration.decision_threshold

    def anomaly_event(self, score: float, anomalous: bool, t_start: float, t_end: float) -> dict:
        self.seq += 1
        ev = self._base()
        ev.update(seq=self.seq, anomaly_score=round(score, 6),
                  threshold=round(self.calibration.decision_threshold, 6),
                  decision="anomalous" if anomalous else "normal", anomalous=anomalous,
                  window={"start": _iso(t_start), "end": _iso(t_end),
                          "seconds": self.cfg.asd.window_seconds},
                  model_id=self.embedder.model_id,
                  calibration_id=self.calibration.calibration_id)
        return ev

    def keyword_event(self, det, t0: float) -> dict:
        """Payload of ``event/keyword`` for one detection (times from the stream start t0)."""
        self.seq += 1
        ev = self._base()
        ev.update(seq=self.seq, keyword=det.keyword, onset=_iso(t0 + det.onset_s),
                  offset=_iso(t0 + det.offset_s), onset_s=round(det.onset_s, 3),
                  offset_s=round(det.offset_s, 3), score=round(float(det.cost), 5),
                  threshold=round(float(det.threshold), 5),
                  model_id=self.keywords.embedder.model_id,
                  enrollment_id=self.keywords.enrolled.enrollment_id)
        return ev

    def _publish_keywords(self, detections, t0: float) -> None:
        for det in detections:
            self.keyword_events += 1
            ev = self.keyword_event(det, t0)
            log.info("keyword %r %.2f-%.2f s cost %.4f threshold %.4f", det.keyword, det.onset_s,
                     det.offset_s, det.cost, det.threshold)
            self.publisher.publish_event("keyword", ev)

    # -- on-site auto-calibration ---------------------------------------------------------
    def _learn(self, start: int, window: np.ndarray) -> None:
        """Collect one normal window; fit and save the calibration once enough are in."""
        from calibration.calibrate import WindowCollector, fit_calibration

        a = self.cfg.asd
        if self._learned is None:
            self._learned = WindowCollector(self.embedder)
        self._learned.add(0, start, window)
        learned_s = (start - self._learn_from) / self.cfg.audio.sample_rate + a.window_seconds
        if learned_s < a.auto_calibration_seconds:
            return
        w = self._learned.result()
        self._learned = None
        try:
            cal = fit_calibration(w, self.embedder, a.n_clusters, a.threshold.method,
                                  dict(a.threshold.params), a.window_seconds, a.hop_seconds)
        except ValueError as exc:
            log.error("auto-calibration failed (%s); learning for another %g s", exc,
                      a.auto_calibration_seconds)
            self._learn_from = start + len(window)
            return
        cal.save(self.cfg.resolve(a.calibration))
        self.calibration = cal
        log.info("calibrated on %d windows: %s, decision_threshold %.5f (%s), saved to %s",
                 len(w), cal.calibration_id, cal.decision_threshold, cal.threshold_method,
                 self.cfg.resolve(a.calibration))
        self.publisher.publish_state()

    # -- main loop -----------------------------------------------------------------------
    def run(self, stop: threading.Event | None = None) -> None:
        """Run until ``stop`` is set or the source ends (file replay)."""
        stop = stop or threading.Event()
        cfg = self.cfg
        sr = cfg.audio.sample_rate
        win = Windower(int(round(cfg.asd.window_seconds * sr)), int(round(cfg.asd.hop_seconds * sr)))
        self.publisher.start()
        self.source.start()
        cal = self.calibration
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
        self._learned = None  # a WindowCollector while auto-calibrating
        self._learn_from = 0
        t0 = None
        next_hb = time.monotonic()
        recent = np.zeros(0, np.float32)
        try:
            for block in self.source.blocks(stop):
                if t0 is None:
                    t0 = time.time() - len(block) / sr
                recent = np.concatenate([recent, block])[-sr:]
                self._level = level_dbfs(recent)
                self._peak = 20 * np.log10(max(float(np.abs(recent).max(initial=0.0)), 1e-6))
                if kw is not None:
                    self._publish_keywords(kw.push(block), t0)
                for start, w in (win.push(block) if self.embedder is not None else ()):
                    if self.calibration is None:
                        self._learn(start, w)
                        continue
                    score, anomalous = self.score_window(w)
                    self.windows += 1
                    self.anomalies += int(anomalous)
                    t_start = t0 + start / sr
                    ev = self.anomaly_event(score, anomalous, t_start, t_start + len(w) / sr)
                    log.info("window %d score %.5f threshold %.5f -> %s", self.windows, score,
                             self.calibration.decision_threshold, ev["decision"])
                    if anomalous or cfg.asd.report == "all":
                        self.publisher.publish_event("anomaly", ev)
                if time.monotonic() >= next_hb:
                    self.publisher.publish_heartbeat(self.heartbeat())
                    self.publisher.publish_state()
                    next_hb = time.monotonic() + cfg.mqtt.heartbeat_seconds
            if kw is not None and not stop.is_set() and t0 is not None:
                self._publish_keywords(kw.flush(), t0)
        finally:
            self.source.close()
            # A replay that ran to its end waits longer for the broker than a stopped node.
            finished = getattr(self.source, "finite", False) and not stop.is_set()
            self.publisher.stop(flush_timeout=30.0 if finished else 5.0)
