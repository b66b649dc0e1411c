"""The node: capture -> frontends -> int8 embedders -> anomaly score / keyword DTW -> MQTT.

Two listeners share one audio stream: anomaly detection on overlapping windows (asd) and
keyword spotting on a frame stream (kws: streaming TACos embeddings and streaming
sub-sequence DTW, thesis 6.3). Audio health (device lost, silence, clipping) is reported as
``event/health``. A control thread handles commands (``cmd/recalibrate``, ``cmd/reload``) and
configs flashed over MQTT: it builds every new part first and swaps them in between two
audio blocks, or rolls back and says why on ``reply``.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import logging
import queue
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from edge.backend import Calibration
from edge.fileio import atomic_write_bytes
from edge.model import ModelError, load_bundle
from edge.mqtt import PAYLOAD_SCHEMA, MqttPublisher, utc_now
from edge.pipeline import Windower, level_dbfs

log = logging.getLogger(__name__)

__all__ = ["Node", "KeywordListener"]


def _bundle(path, task: str, running=None, **options):
    """The model bundle at ``path``; the ``running`` embedder instead if it was loaded from
    that same file (SHA-256) with the same ``options``, so applying a config does not load
    an unchanged model twice."""
    from edge.fileio import sha256_file

    if running is not None and all(getattr(running, k) == v for k, v in options.items()) \
            and path.is_file() and sha256_file(path) == running.sha256:
        return running
    return load_bundle(path, task=task, **options)


def _iso(t: float) -> str:
    return (dt.datetime.fromtimestamp(t, dt.timezone.utc).isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"))


class KeywordListener:
    """Streaming keyword spotting: audio blocks in, keyword detections out.

    Parameters
    ----------
    cfg : firmware_config.schema.NodeConfig
        Uses the ``kws`` section.
    running : edge.model.KwsEmbedder, optional
        The embedder in use; kept if ``kws.model`` is still the same model (config apply).

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

    def __init__(self, cfg, running=None):
        from calibration.enroll import EnrolledKeywords

        k = cfg.kws
        try:
            self.embedder = _bundle(cfg.resolve(k.model), "kws", running,
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

    def reset(self) -> None:
        """Forget the stream so far (after a gap in the audio, e.g. a reopened device)."""
        if self.active:
            from edge.kws import KeywordSpotter

            self.stream = self.embedder.stream()
            self.spotter = KeywordSpotter(self.enrolled.spotter_templates(),
                                          self.enrolled.thresholds, self.embedder.frame_seconds)

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


class _Learning:
    """A calibration being learned from the live stream (first start or ``cmd/recalibrate``)."""

    def __init__(self, embedder, seconds: float, method: str, request_id=None, requested=False):
        from calibration.calibrate import WindowCollector

        self.collector = WindowCollector(embedder)
        self.seconds = seconds
        self.method = method
        self.request_id = request_id
        self.requested = requested  # a command asked for it (reply when done)
        self.first_start: int | None = None


class Node:
    """One node's runtime: audio in, events out, commands and flashed configs applied live.

    Parameters
    ----------
    cfg : firmware_config.schema.NodeConfig
    source : audio source, optional
        Anything with ``start()``, ``blocks(stop)``, ``close()``, ``faults``, ``finite``,
        ``device_name``, ``overflows``; default: the config's files if any, else the
        microphone.
    config_path : str or Path, optional
        The config file ``cfg`` was read from: ``cmd/reload`` re-reads it and a config
        flashed over MQTT replaces it (atomically, the previous one kept as ``<name>.prev``).
        Without it both are rejected.

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

    def __init__(self, cfg, source=None, config_path=None):
        from edge.health import AudioHealth
        from edge.spool import Spool

        self.cfg = cfg
        self.config_path = Path(config_path).resolve() if config_path else None
        self.keywords = KeywordListener(cfg) if cfg.kws.enabled else None
        self.keyword_events = 0
        self.embedder, self.calibration = self._load_asd(cfg) if cfg.asd.enabled else (None, None)
        self._learning: _Learning | None = None
        if self.embedder is not None and self.calibration is None:
            log.warning("no calibration at %s: learning normal operation for the first %g s "
                        "(keep the machine running normally)", cfg.resolve(cfg.asd.calibration),
                        cfg.asd.auto_calibration_seconds)
            self._learning = _Learning(self.embedder, cfg.asd.auto_calibration_seconds,
                                       cfg.asd.threshold.method)
        self.source = source if source is not None else self._open_source(cfg, start=False)
        s = cfg.spool
        self.spool = Spool(cfg.resolve(s.path), s.max_events, s.drop_policy)
        self.health = AudioHealth.from_config(cfg.audio)
        self.faults: dict[str, str] = {}  # active audio faults: kind -> message
        self._lock = threading.RLock()  # held while a block is processed or parts are swapped
        self._control: queue.Queue = queue.Queue(maxsize=64)
        self._rejected_configs: set[str] = set()
        self.publisher = self._make_publisher(cfg)
        self.started = time.time()
        self.windows = 0
        self.anomalies = 0
        self._level = -120.0
        self._peak = -120.0
        self._cpu0 = (time.monotonic(), time.process_time())
        self._reset_stream()

    # -- building blocks (also used to apply a new config) ---------------------------------
    @staticmethod
    def _load_asd(cfg, running=None):
        """The anomaly embedder and calibration (None if there is none yet and the node may
        learn one); the ``running`` embedder is kept if the model has not changed."""
        a = cfg.asd
        embedder = _bundle(cfg.resolve(a.model), "asd", running, num_threads=a.num_threads)
        fe = embedder.frontend
        if abs(fe.clip_seconds - a.window_seconds) > 1e-6:
            raise ModelError(f"asd.window_seconds is {a.window_seconds} s but the model "
                             f"{embedder.model_id} takes {fe.clip_seconds} s clips")
        if fe.sample_rate != cfg.audio.sample_rate:
            raise ModelError(f"audio.sample_rate {cfg.audio.sample_rate} Hz differs from the "
                             f"model's {fe.sample_rate} Hz")
        cal_path = cfg.resolve(a.calibration)
        if cal_path.exists() or a.auto_calibration_seconds == 0:
            return embedder, Calibration.load(cal_path, embedder.sha256)
        return embedder, None

    @staticmethod
    def _open_source(cfg, start: bool):
        from edge.audio import FileSource, MicrophoneSource

        au = cfg.audio
        if au.files:
            src = FileSource([cfg.resolve(f) for f in au.files], au.sample_rate,
                             au.block_seconds, au.realtime)
        else:
            src = MicrophoneSource(au.device, au.sample_rate, au.block_seconds,
                                   au.ring_seconds, au.reopen_max_seconds)
        return src.start() if start else src

    def _make_publisher(self, cfg) -> MqttPublisher:
        return MqttPublisher(cfg, self.state, self.spool, on_message=self._on_message,
                             discovery_fn=lambda: self._discovery(cfg))

    def _discovery(self, cfg) -> list[tuple[str, str]]:
        from edge.discovery import discovery_messages

        kw = self.keywords
        keywords = sorted(kw.enrolled.thresholds) if kw is not None and kw.enrolled else []
        embedders = (self.embedder, kw.embedder if kw is not None else None)
        return discovery_messages(cfg, keywords,
                                  ", ".join(e.model_id for e in embedders if e is not None))

    def _reset_stream(self) -> None:
        """Start the analysis afresh: after a gap in the audio or a config change."""
        sr = self.cfg.audio.sample_rate
        a = self.cfg.asd
        self._win = Windower(int(round(a.window_seconds * sr)), int(round(a.hop_seconds * sr)))
        self._t0 = None  # wall-clock time of the stream's first sample
        self._recent = np.zeros(0, np.float32)
        if self.keywords is not None:
            self.keywords.reset()
        if self._learning is not None:
            self._learning.first_start = None

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
        learning = self._learning
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
            recalibrating=None if learning is None else {
                "seconds": learning.seconds, "threshold_method": learning.method,
                "request_id": learning.request_id},
            audio={"device": getattr(self.source, "device_name", None),
                   "overflows": getattr(self.source, "overflows", 0),
                   "samples_lost": getattr(getattr(self.source, "ring", None), "overruns", 0),
                   "faults": sorted(self.faults), "health": dict(self.faults)},
            spool={**self.spool.stats(), "quarantined": str(self.spool.quarantined)
                   if self.spool.quarantined else None},
            events_dropped=self.spool.dropped,
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
                  queue_depth=self.spool.depth, events_dropped=self.spool.dropped,
                  windows=self.windows, anomalies=self.anomalies,
                  keyword_events=self.keyword_events,
                  overflows=getattr(self.source, "overflows", 0),
                  audio_faults=sorted(self.faults))
        return hb

    def score_window(self, window: np.ndarray) -> tuple[float, bool]:
        """Anomaly score of one window and the decision ``score > decision_threshold``."""
        emb = self.embedder.embed(window)
        score = float(self.calibration.score_samples(emb[None])[0])
        return score, score > self.calibration.decision_threshold

    def anomaly_event(self, score: float, anomalous: bool, t_start: float, t_end: float) -> dict:
        """Payload of ``event/anomaly`` (``seq`` is added by the spool)."""
        ev = self._base()
        ev.update(anomaly_score=round(score, 6),
                  threshold=round(self.calibration.decision_threshold, 6),
                  decision="anomalous" if anomalous else "normal", anomalous=anomalous,
                  window={"start": _iso(t_start), "end": _iso(t_end),
                          "seconds": self.cfg.asd.window_seconds},
                  model_id=self.embedder.model_id,
                  calibration_id=self.calibration.calibration_id)
        return ev

    def keyword_event(self, det, t0: float) -> dict:
        """Payload of ``event/keyword`` for one detection (times from the stream start t0);
        ``event_type`` is the keyword, as Home Assistant's event entity expects."""
        ev = self._base()
        ev.update(keyword=det.keyword, event_type=det.keyword, onset=_iso(t0 + det.onset_s),
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
                self._reset_stream()  # a gap in the audio: windows must not span it
            ev = self._base()
            ev.update(kind=h.kind, active=h.active, message=h.message, detail=h.detail)
            self.publisher.publish_event("health", ev)
        if events:
            self.publisher.publish_state()

    # -- calibration learned from the stream -----------------------------------------------
    def _learn(self, start: int, window: np.ndarray) -> None:
        """Collect one normal window; fit, save and swap in the calibration once enough are
        in (the first calibration, or ``cmd/recalibrate``: scoring goes on meanwhile)."""
        from calibration.calibrate import fit_calibration

        job = self._learning
        a = self.cfg.asd
        if job.first_start is None:
            job.first_start = start
        job.collector.add(0, start, window)
        learned_s = (start - job.first_start) / self.cfg.audio.sample_rate + a.window_seconds
        if learned_s < job.seconds:
            return
        w = job.collector.result()
        try:
            cal = fit_calibration(w, self.embedder, a.n_clusters, job.method,
                                  dict(a.threshold.params) if job.method == a.threshold.method
                                  else {}, a.window_seconds, a.hop_seconds)
            path = self.cfg.resolve(a.calibration)
            cal.save(path)
        except (ValueError, OSError) as exc:
            log.error("calibration from the stream failed (%s); learning for another %g s",
                      exc, job.seconds)
            if job.requested:
                self._reply("recalibrate", "failed", f"calibration failed: {exc}",
                            job.request_id)
                self._learning = None
            else:
                self._learning = _Learning(self.embedder, job.seconds, job.method)
            return
        self.calibration = cal
        self._learning = None
        log.info("calibrated on %d windows: %s, decision_threshold %.5f (%s), saved to %s",
                 len(w), cal.calibration_id, cal.decision_threshold, cal.threshold_method, path)
        if job.requested:
            self._reply("recalibrate", "done", f"calibrated on {len(w)} windows",
                        job.request_id, calibration_id=cal.calibration_id,
                        decision_threshold=cal.decision_threshold,
                        threshold_method=cal.threshold_method)
        self.publisher.publish_state()

    # -- commands and configs over MQTT (network thread -> control thread) -----------------
    def _on_message(self, topic: str, payload: bytes, retained: bool) -> None:
        if not payload:
            return  # how MQTT clears a retained message: nothing to do
        root, m = self.cfg.topic_root, self.cfg.mqtt
        if topic == f"{root}/config":
            item = ("config", "config", payload, retained)
        elif topic.startswith(f"{root}/cmd/"):
            item = ("cmd", topic[len(root) + 5:], payload, retained)
        else:
            return
        if m.username is None and not m.anonymous_commands:
            self._reply(item[1], "rejected", "commands and configs are accepted only over an "
                        "authenticated broker connection (mqtt.username); set "
                        "mqtt.anonymous_commands: true to accept them on this anonymous one")
            return
        try:
            self._control.put_nowait(item)
        except queue.Full:
            self._reply(item[1], "rejected", "too many commands waiting; try again later")

    def _reply(self, command: str, status: str, message: str, request_id=None, **extra) -> None:
        r = self._base()
        r.update(command=command, request_id=request_id, status=status, message=message, **extra)
        log.log(logging.WARNING if status in ("rejected", "failed") else logging.INFO,
                "%s %s: %s", command, status, message)
        self.publisher.reply(r)

    def _control_loop(self, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                kind, name, payload, retained = self._control.get(timeout=0.5)
            except queue.Empty:
                continue
            try:
                if kind == "config":
                    self._config_message(payload)
                else:
                    self._command(name, payload, retained)
            except Exception as exc:  # the node keeps running whatever a message does
                log.exception("handling %s %r failed", kind, name)
                self._reply(name, "failed", f"internal error: {exc!r}")

    def _command(self, name: str, payload: bytes, retained: bool) -> None:
        from edge.commands import CommandError, parse_command

        try:
            cmd = parse_command(name, payload)
        except CommandError as exc:
            self._reply(name, "rejected", str(exc), exc.request_id)
            return
        if retained:
            self._reply(name, "rejected", "commands must not be retained (a retained command "
                        "would run again on every reconnect); publish without retain",
                        cmd.request_id)
            return
        if cmd.name == "reload":
            self._cmd_reload(cmd)
        else:
            self._cmd_recalibrate(cmd)

    def _cmd_recalibrate(self, cmd) -> None:
        a = self.cfg.asd
        if self.embedder is None:
            self._reply(cmd.name, "rejected", "anomaly detection is disabled (asd.enabled)",
                        cmd.request_id)
            return
        seconds = cmd.args.get("seconds", a.auto_calibration_seconds or 600.0)
        if seconds < 2 * a.window_seconds:
            self._reply(cmd.name, "rejected", f"seconds: must be at least twice "
                        f"asd.window_seconds ({2 * a.window_seconds:g}), got {seconds:g}",
                        cmd.request_id)
            return
        with self._lock:
            job = self._learning
            if job is not None:
                self._reply(cmd.name, "rejected", f"already learning normal operation "
                            f"({job.seconds:g} s, request {job.request_id})", cmd.request_id)
                return
            method = cmd.args.get("threshold_method", a.threshold.method)
            self._learning = _Learning(self.embedder, seconds, method, cmd.request_id, True)
        self._reply(cmd.name, "accepted", f"learning normal operation for {seconds:g} s, "
                    f"then fitting the {method} decision threshold; scoring continues with "
                    "the current calibration meanwhile", cmd.request_id, seconds=seconds)
        self.publisher.publish_state()

    def _parse_config(self, raw: bytes, source: str, command: str, request_id=None, **extra):
        """The validated config in ``raw``, or None after replying ``rejected`` with every
        bad field."""
        from firmware_config.schema import ConfigError, parse_config_text

        try:
            return parse_config_text(raw, source, self.config_path.parent)
        except ConfigError as exc:
            self._reply(command, "rejected", str(exc), request_id,
                        errors=[f"{p}: {m}" for p, m in exc.errors], **extra)
            return None

    def _cmd_reload(self, cmd) -> None:
        if self.config_path is None:
            self._reply(cmd.name, "rejected", "this node was started without a config file",
                        cmd.request_id)
            return
        try:
            raw = self.config_path.read_bytes()
        except OSError as exc:
            self._reply(cmd.name, "rejected", f"cannot read {self.config_path}: "
                        f"{exc.strerror or exc}", cmd.request_id)
            return
        new = self._parse_config(raw, str(self.config_path), cmd.name, cmd.request_id)
        if new is not None:
            self._apply(new, None, cmd.name, cmd.request_id)

    def _config_message(self, raw: bytes) -> None:
        """A config flashed over MQTT (retained on ``<root>/config``)."""
        sha = hashlib.sha256(raw).hexdigest()
        if sha == self.cfg.sha256 or sha in self._rejected_configs:
            return  # already running it, or already refused (a retained redelivery)
        if self.config_path is None:
            self._rejected_configs.add(sha)
            self._reply("config", "rejected", "this node was started without a config file",
                        config_sha256=sha)
            return
        new = self._parse_config(raw, f"MQTT {self.cfg.topic_root}/config", "config",
                                 config_sha256=sha)
        if new is None:
            self._rejected_configs.add(sha)
            return
        if new.topic_root != self.cfg.topic_root:
            self._rejected_configs.add(sha)
            self._reply("config", "rejected", f"the config is for {new.topic_root}, this node "
                        f"is {self.cfg.topic_root}: node.id, node.site and mqtt.prefix cannot "
                        "change over MQTT (flash to the node's folder or over ssh)",
                        config_sha256=sha)
            return
        if not self._apply(new, raw, "config", None):
            self._rejected_configs.add(sha)

    def _apply(self, new, raw: bytes | None, command: str, request_id) -> bool:
        """Apply a validated config atomically: build every new part first, then write the
        file (``raw``; None: it is already on disk), reconnect if the broker settings changed
        and swap. Any failure rolls back to the running config and is reported."""
        from calibration.enroll import EnrollmentError
        from edge.audio import AudioFileError, NoInputDeviceError
        from edge.backend import CalibrationError
        from edge.health import AudioHealth
        from edge.mqtt import MqttSetupError

        old = self.cfg
        extra = {"config_sha256": new.sha256}
        changed = [k for k in ("node", "mqtt", "spool", "homeassistant", "audio", "asd", "kws",
                               "logging") if getattr(new, k) != getattr(old, k)]
        source = publisher = None
        try:
            keywords = (KeywordListener(new, self.keywords and self.keywords.embedder)
                        if new.kws.enabled else None)
            embedder, calibration = (self._load_asd(new, self.embedder) if new.asd.enabled
                                     else (None, None))
            if calibration is None and embedder is self.embedder and \
                    new.resolve(new.asd.calibration) == old.resolve(old.asd.calibration):
                calibration = self.calibration  # file gone but the same model: keep ours
            if {"node", "mqtt"} & set(changed):
                publisher = self._make_publisher(new)
            if "audio" in changed and not self.source.finite and \
                    _device_settings(new.audio) != _device_settings(old.audio):
                self.source.close()  # one device cannot always be opened twice
                try:
                    source = self._open_source(new, start=True)
                except Exception:
                    self.source.start()
                    raise
        except (ModelError, CalibrationError, EnrollmentError, NoInputDeviceError,
                AudioFileError, MqttSetupError, ValueError, OSError) as exc:
            self._reply(command, "rejected" if command != "config" else "failed",
                        f"not applied, still running config {old.sha256[:12]}: {exc}",
                        request_id, **extra)
            return False
        previous = None  # the config file's bytes, once we replaced them
        try:
            if raw is not None:
                current = self.config_path.read_bytes()
                atomic_write_bytes(self.config_path.with_name(self.config_path.name + ".prev"),
                                   current)
                atomic_write_bytes(self.config_path, raw)
                previous = current
            if publisher is not None:
                self.publisher.stop(flush_timeout=0, offline=new.topic_root != old.topic_root)
                publisher.start()
                timeout = max(10.0, 3 * new.mqtt.reconnect_min_seconds)
                if not publisher.wait_connected(timeout):
                    why = publisher.refused or "no connection"
                    publisher.stop(flush_timeout=0, offline=False)
                    self.publisher = self._make_publisher(old)
                    self.publisher.start()
                    self.publisher.wait_connected(timeout)
                    raise RuntimeError(f"the new broker settings did not connect within "
                                       f"{timeout:g} s ({why})")
        except (OSError, RuntimeError) as exc:
            if previous is not None:
                atomic_write_bytes(self.config_path, previous)
            if source is not None:
                source.close()
                self.source.start()
            self._reply(command, "failed", f"rolled back to config {old.sha256[:12]}: {exc}",
                        request_id, **extra)
            return False
        with self._lock:
            if source is not None:
                self.source = source
                self._blocks = source.blocks(self._stop)
            if publisher is not None:
                self.publisher = publisher
            job = self._learning
            if job is not None and embedder is not self.embedder:
                self._learning = None  # learning with another model is moot
                if job.requested:
                    self._reply("recalibrate", "failed", "cancelled: the config changed the "
                                "anomaly model", job.request_id)
            self.cfg, self.keywords = new, keywords
            self.embedder, self.calibration = embedder, calibration
            if embedder is not None and calibration is None and self._learning is None:
                self._learning = _Learning(embedder, new.asd.auto_calibration_seconds or 600.0,
                                           new.asd.threshold.method)
            if _health_settings(new.audio) != _health_settings(old.audio):
                self.health = AudioHealth.from_config(new.audio)
                for kind in ("silence", "clipping"):  # judged afresh by the new thresholds
                    self.faults.pop(kind, None)
            self.spool.set_limits(new.spool.max_events, new.spool.drop_policy)
            logging.getLogger().setLevel(new.logging.level)
            self._reset_stream()
        note = ""
        if new.spool.path != old.spool.path:
            note = "; spool.path takes effect at the next start"
        self._reply(command, "done", f"config {new.sha256[:12]} applied (changed: "
                    f"{', '.join(changed) or 'nothing'}{note})", request_id, **extra)
        self.publisher.publish_discovery()
        self.publisher.publish_state()
        return True

    # -- main loop -----------------------------------------------------------------------
    def run(self, stop: threading.Event | None = None) -> None:
        """Run until ``stop`` is set or the source ends (file replay)."""
        stop = stop or threading.Event()
        self._stop = stop
        halt = threading.Event()  # ends the control thread
        cfg = self.cfg
        self.publisher.start()
        self.source.start()
        control = threading.Thread(target=self._control_loop, args=(halt,), name="control",
                                   daemon=True)
        control.start()
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
        if self.spool.depth:
            log.info("%d event(s) spooled from before; delivering them first", self.spool.depth)
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
                with self._lock:
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
            self.publisher.stop(flush_timeout=30.0 if finished else 5.0,
                                abort=stop if finished else None)
            self.spool.close()

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
        if self._t0 is None:
            self._t0 = time.time() - len(block) / sr
        t0 = self._t0
        self._recent = np.concatenate([self._recent, block])[-sr:]
        self._level = level_dbfs(self._recent)
        self._peak = 20 * np.log10(max(float(np.abs(self._recent).max(initial=0.0)), 1e-6))
        self._health(self.health.push(block))
        kw = self.keywords
        if kw is not None:
            self._publish_keywords(kw.push(block), t0)
        for start, w in (self._win.push(block) if self.embedder is not None else ()):
            first_calibration = self.calibration is None
            if self._learning is not None:
                self._learn(start, w)
            if first_calibration:  # nothing to score against yet
                continue
            score, anomalous = self.score_window(w)
            self.windows += 1
            self.anomalies += int(anomalous)
            t_start = t0 + start / sr
            ev = self.anomaly_event(score, anomalous, t_start, t_start + len(w) / sr)
            log.info("window %d score %.5f threshold %.5f -> %s", self.windows, score,
                     self.calibration.decision_threshold, ev["decision"])
            if anomalous or self.cfg.asd.report == "all":
                self.publisher.publish_event("anomaly", ev)


# Audio settings that only tune the health monitor: changing them needs no device reopen.
_HEALTH_KEYS = ("silence_dbfs", "silence_seconds", "clipping_fraction", "clipping_seconds")


def _health_settings(audio) -> dict:
    return {k: getattr(audio, k) for k in _HEALTH_KEYS}


def _device_settings(audio) -> dict:
    return {k: v for k, v in audio.model_dump().items() if k not in _HEALTH_KEYS}
