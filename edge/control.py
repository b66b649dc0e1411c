"""The node's control plane: commands and configs over MQTT, answered on ``reply``.

Messages arrive on paho's network thread (:meth:`NodeControl.on_message`), which only checks
that the connection may send commands and queues them; a control thread
(:meth:`NodeControl.run`) handles them one at a time, so a slow command never blocks the
network thread and the audio thread never waits for a command:

* ``cmd/<name>``: parsed and validated by :func:`edge.commands.parse_command`, then
  dispatched by :data:`HANDLERS` (one handler per name in :data:`edge.commands.COMMANDS`);
* ``config``: a config flashed over MQTT (retained), validated and applied like
  ``cmd/reload``.

Applying a config (:meth:`NodeControl.apply`) builds every new part first (models,
calibration, keywords, audio source, broker connection), then writes the file and swaps the
parts into the node between two audio blocks (under the node's lock); any failure rolls back
to the running config and is reported on ``reply``. Every command and config gets exactly one
final reply (``done``, ``rejected`` or ``failed``; ``accepted`` first for long work).
"""
from __future__ import annotations

import hashlib
import logging
import queue
import threading
from typing import TYPE_CHECKING, Callable

from edge import payloads
from edge.audio import AudioFileError, NoInputDeviceError, open_source
from edge.backend import CalibrationError
from edge.commands import COMMANDS, Command, CommandError, parse_command
from firmware_config.fileio import atomic_write_bytes
from edge.health import AudioHealth
from edge.keywords import EnrollmentError
from edge.kws_listener import KeywordListener
from edge.model import ModelError, load_asd
from edge.mqtt import MqttSetupError
from firmware_config.schema import ConfigError, parse_config_text

if TYPE_CHECKING:  # pragma: no cover
    from edge.node import Node

log = logging.getLogger(__name__)

__all__ = ["NodeControl", "HANDLERS", "with_replay"]

# Audio settings that only tune the health monitor: changing them needs no device reopen.
_HEALTH_KEYS = ("silence_dbfs", "silence_seconds", "clipping_fraction", "clipping_seconds")

# The config sections compared to report what a new config changed.
_SECTIONS = ("node", "mqtt", "spool", "homeassistant", "audio", "asd", "kws", "logging")


def _health_settings(audio) -> dict:
    return {k: getattr(audio, k) for k in _HEALTH_KEYS}


def _device_settings(audio) -> dict:
    return {k: v for k, v in audio.model_dump().items() if k not in _HEALTH_KEYS}


def with_replay(cfg, files):
    """``cfg`` with ``audio.files`` replaced by ``files`` (``python -m edge run --replay``);
    ``cfg`` itself when ``files`` is None. The command line's replay applies to every config
    the node runs, so a reloaded file is compared without it."""
    if files is None:
        return cfg
    return cfg.model_copy(update={"audio": cfg.audio.model_copy(update={"files": list(files)})})


def _windowing(cfg) -> tuple:
    """What the analysis windows depend on: a change restarts the stream."""
    return (cfg.asd.enabled, cfg.asd.window_seconds, cfg.asd.hop_seconds, cfg.audio.sample_rate)


def _same_listener(running, new) -> bool:
    """Whether a freshly built keyword listener spots exactly what the running one does (same
    embedder, same enrollment), so the running one, mid-stream, can be kept."""
    if running is None or new is None:
        return running is new
    def enrollment(kw):
        return kw.enrolled.enrollment_id if kw.enrolled is not None else None

    return new.embedder is running.embedder and enrollment(new) == enrollment(running)


def _config_hash(kind: str, payload: bytes) -> dict:
    """``{"config_sha256": ...}`` for a flashed config (every answer to one carries its hash:
    that is how ``flash --wait`` finds it), else ``{}``."""
    return {"config_sha256": hashlib.sha256(payload).hexdigest()} if kind == "config" else {}


class NodeControl:
    """Commands and flashed configs of one :class:`edge.node.Node`.

    Parameters
    ----------
    node : edge.node.Node
        The node whose parts are replaced; its ``lock`` is held while they are swapped.
    config_path : Path or None
        The node's config file: ``cmd/reload`` re-reads it and a flashed config replaces
        it (atomically, the previous one kept as ``<name>.prev``). Without it both are
        rejected.
    """

    def __init__(self, node: "Node", config_path):
        self.node = node
        self.config_path = config_path
        self._queue: queue.Queue = queue.Queue(maxsize=64)
        self._rejected_configs: set[str] = set()

    # -- network thread ------------------------------------------------------------------
    def on_message(self, topic: str, payload: bytes, retained: bool) -> None:
        """paho's callback for ``cmd/#`` and ``config``: queue the work, never raise."""
        if not payload:
            return  # how MQTT clears a retained message: nothing to do
        cfg = self.node.cfg
        root, m = cfg.topic_root, cfg.mqtt
        if topic == f"{root}/config":
            item = ("config", "config", payload, retained)
        elif topic.startswith(f"{root}/cmd/"):
            item = ("cmd", topic[len(root) + 5:], payload, retained)
        else:
            return
        if m.username is None and not m.anonymous_commands:
            request_id = None
            if item[0] == "cmd":  # echo the request_id, as every other rejection does
                try:
                    request_id = parse_command(item[1], payload).request_id
                except CommandError as exc:
                    request_id = exc.request_id
            self.reply(item[1], "rejected", "commands and configs are accepted only over an "
                       "authenticated broker connection (mqtt.username); set "
                       "mqtt.anonymous_commands: true to accept them on this anonymous one",
                       request_id, **_config_hash(item[0], payload))
            return
        try:
            self._queue.put_nowait(item)
        except queue.Full:
            self.reply(item[1], "rejected", "too many commands waiting; try again later",
                       **_config_hash(item[0], payload))

    def reply(self, command: str, status: str, message: str, request_id=None, **extra) -> None:
        """Publish a ``reply`` (:func:`edge.payloads.reply`) and log it."""
        log.log(logging.WARNING if status in ("rejected", "failed") else logging.INFO,
                "%s %s: %s", command, status, message)
        self.node.publisher.reply(payloads.reply(self.node.cfg, command, status, message,
                                                 request_id, **extra))

    # -- control thread ------------------------------------------------------------------
    def run(self, stop: threading.Event) -> None:
        """Handle queued messages until ``stop`` is set; no message can end the loop."""
        while not stop.is_set():
            try:
                kind, name, payload, retained = self._queue.get(timeout=0.5)
            except queue.Empty:
                continue
            try:
                if kind == "config":
                    self.config_message(payload)
                else:
                    self.command(name, payload, retained)
            except Exception as exc:  # the node keeps running whatever a message does
                log.exception("handling %s %r failed", kind, name)
                self.reply(name, "failed", f"internal error: {exc!r}",
                           **_config_hash(kind, payload))

    def command(self, name: str, payload: bytes, retained: bool) -> None:
        """Validate ``cmd/<name>`` and dispatch it by :data:`HANDLERS`."""
        try:
            cmd = parse_command(name, payload)
        except CommandError as exc:
            self.reply(name, "rejected", str(exc), exc.request_id)
            return
        if retained:
            self.reply(name, "rejected", "commands must not be retained (a retained command "
                       "would run again on every reconnect); publish without retain",
                       cmd.request_id)
            return
        HANDLERS[cmd.name](self, cmd)

    def recalibrate(self, cmd: Command) -> None:
        """``cmd/recalibrate``: learn normal operation again from the live stream."""
        node = self.node
        a = node.cfg.asd
        if node.embedder is None:
            self.reply(cmd.name, "rejected", "anomaly detection is disabled (asd.enabled)",
                       cmd.request_id)
            return
        seconds = cmd.args.get("seconds", a.auto_calibration_seconds or 600.0)
        if seconds < 2 * a.window_seconds:
            self.reply(cmd.name, "rejected", f"seconds: must be at least twice "
                       f"asd.window_seconds ({2 * a.window_seconds:g}), got {seconds:g}",
                       cmd.request_id)
            return
        method = cmd.args.get("threshold_method", a.threshold.method)
        job = node.start_learning(seconds, method, cmd.request_id, requested=True)
        if job is not None:
            self.reply(cmd.name, "rejected", f"already learning normal operation "
                       f"({job.seconds:g} s, request {job.request_id})", cmd.request_id)
            return
        self.reply(cmd.name, "accepted", f"learning normal operation for {seconds:g} s, "
                   f"then fitting the {method} decision threshold; scoring continues with "
                   "the current calibration meanwhile", cmd.request_id, seconds=seconds)
        node.publisher.publish_state()

    def reload(self, cmd: Command) -> None:
        """``cmd/reload``: re-read the config file and apply it."""
        if self.config_path is None:
            self.reply(cmd.name, "rejected", "this node was started without a config file",
                       cmd.request_id)
            return
        try:
            raw = self.config_path.read_bytes()
        except OSError as exc:
            self.reply(cmd.name, "rejected", f"cannot read {self.config_path}: "
                       f"{exc.strerror or exc}", cmd.request_id)
            return
        new = self._parse_config(raw, str(self.config_path), cmd.name, cmd.request_id)
        if new is not None:
            self.apply(new, None, cmd.name, cmd.request_id)

    def _parse_config(self, raw: bytes, source: str, command: str, request_id=None, **extra):
        """The validated config in ``raw``, or None after replying ``rejected`` with every
        bad field."""
        try:
            return parse_config_text(raw, source, self.config_path.parent)
        except ConfigError as exc:
            self.reply(command, "rejected", str(exc), request_id,
                       errors=[f"{p}: {m}" for p, m in exc.errors], **extra)
            return None

    def config_message(self, raw: bytes) -> None:
        """A config flashed over MQTT (retained on ``<root>/config``)."""
        cfg = self.node.cfg
        sha = hashlib.sha256(raw).hexdigest()
        if sha == cfg.sha256 or sha in self._rejected_configs:
            return  # already running it, or already refused (a retained redelivery)
        if self.config_path is None:
            self._rejected_configs.add(sha)
            self.reply("config", "rejected", "this node was started without a config file",
                       config_sha256=sha)
            return
        new = self._parse_config(raw, f"MQTT {cfg.topic_root}/config", "config",
                                 config_sha256=sha)
        if new is None:
            self._rejected_configs.add(sha)
            return
        if new.topic_root != cfg.topic_root:
            self._rejected_configs.add(sha)
            self.reply("config", "rejected", f"the config is for {new.topic_root}, this node "
                       f"is {cfg.topic_root}: node.id, node.site and mqtt.prefix cannot "
                       "change over MQTT (flash to the node's folder or over ssh)",
                       config_sha256=sha)
            return
        if not self.apply(new, raw, "config", None):
            self._rejected_configs.add(sha)

    def apply(self, new, raw: bytes | None, command: str, request_id) -> bool:
        """Apply a validated config atomically: build every new part first, then write the
        file (``raw``; None: it is already on disk), reconnect if the broker settings changed
        and swap. Any failure rolls back to the running config and is reported.

        Returns
        -------
        bool
            True when the new config runs.
        """
        node = self.node
        old = node.cfg
        # The command line's --replay still holds: compare and run the new config with it.
        new = with_replay(new, getattr(node, "replay_files", None))
        extra = {"config_sha256": new.sha256}
        changed = [k for k in _SECTIONS if getattr(new, k) != getattr(old, k)]
        source = publisher = None
        try:
            keywords = (KeywordListener(new, node.keywords and node.keywords.embedder)
                        if new.kws.enabled else None)
            if _same_listener(node.keywords, keywords):
                keywords = node.keywords  # mid-stream: keep its frames and pending detections
            embedder, calibration = (load_asd(new, node.embedder) if new.asd.enabled
                                     else (None, None))
            if calibration is None and embedder is node.embedder and \
                    new.resolve(new.asd.calibration) == old.resolve(old.asd.calibration):
                calibration = node.calibration  # file gone but the same model: keep ours
            if {"node", "mqtt"} & set(changed):
                publisher = node.make_publisher(new)
            if "audio" in changed and not node.source.finite and \
                    _device_settings(new.audio) != _device_settings(old.audio):
                node.source.close()  # one device cannot always be opened twice
                try:
                    source = open_source(new, start=True)
                except Exception:
                    node.source.start()
                    raise
        except (ModelError, CalibrationError, EnrollmentError, NoInputDeviceError,
                AudioFileError, MqttSetupError, ValueError, OSError) as exc:
            self.reply(command, "rejected" if command != "config" else "failed",
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
                self._switch_broker(publisher, new, old)
        except (OSError, RuntimeError) as exc:
            if previous is not None:
                atomic_write_bytes(self.config_path, previous)
            if source is not None:
                source.close()
                node.source.start()
            self.reply(command, "failed", f"rolled back to config {old.sha256[:12]}: {exc}",
                       request_id, **extra)
            return False
        with node.lock:
            # Restart the analysis only for a new stream or new windows or keyword listener.
            restart = (source is not None or keywords is not node.keywords
                       or _windowing(new) != _windowing(old))
            if source is not None:
                node.swap_source(source)
            if publisher is not None:
                node.publisher = publisher
            job = node.learning
            if job is not None and embedder is not node.embedder:
                node.learning = None  # learning with another model is moot
                job.cancel("the config changed the anomaly model")
            node.cfg, node.keywords = new, keywords
            node.embedder, node.calibration = embedder, calibration
            if embedder is not None and calibration is None and node.learning is None:
                node.start_learning(new.asd.auto_calibration_seconds or 600.0,
                                    new.asd.threshold.method)
            if _health_settings(new.audio) != _health_settings(old.audio):
                node.health = AudioHealth.from_config(new.audio)
                for kind in ("silence", "clipping"):  # judged afresh by the new thresholds
                    node.faults.pop(kind, None)
            node.spool.set_limits(new.spool.max_events, new.spool.drop_policy)
            logging.getLogger().setLevel(new.logging.level)
            if restart:
                node.reset_stream()
        note = ""
        if new.spool.path != old.spool.path:
            note = "; spool.path takes effect at the next start"
        self.reply(command, "done", f"config {new.sha256[:12]} applied (changed: "
                   f"{', '.join(changed) or 'nothing'}{note})", request_id, **extra)
        node.publisher.publish_discovery()
        node.publisher.publish_state()
        return True

    def _switch_broker(self, publisher, new, old) -> None:
        """Connect ``publisher`` (the new broker settings) in place of the running one; on
        failure reconnect the old settings and raise ``RuntimeError``."""
        node = self.node
        node.publisher.stop(flush_timeout=0, offline=new.topic_root != old.topic_root)
        publisher.start()
        timeout = max(10.0, 3 * new.mqtt.reconnect_min_seconds)
        if not publisher.wait_connected(timeout):
            why = publisher.refused or "no connection"
            publisher.stop(flush_timeout=0, offline=False)
            node.publisher = node.make_publisher(old)
            node.publisher.start()
            node.publisher.wait_connected(timeout)
            raise RuntimeError(f"the new broker settings did not connect within "
                               f"{timeout:g} s ({why})")


#: Command name -> handler; one entry per name in :data:`edge.commands.COMMANDS`.
HANDLERS: dict[str, Callable[[NodeControl, Command], None]] = {
    "recalibrate": NodeControl.recalibrate,
    "reload": NodeControl.reload,
}
assert set(HANDLERS) == set(COMMANDS), "every command needs a handler"
