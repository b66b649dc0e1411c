"""The node's MQTT connection, per the contract in SPEC.md.

Topic root ``<prefix>/<site>/<node_id>/``:

* ``status`` (retained): ``online`` / ``offline``; ``offline`` is also the Last Will.
* ``state`` (retained): JSON with model and calibration ids, config hash, uptime, audio health.
* ``heartbeat``: JSON levels (dBFS), CPU, spool depth, every ``heartbeat_seconds`` (QoS 0).
* ``event/anomaly``, ``event/keyword``, ``event/health``: JSON events (QoS ``mqtt.qos``, 1).
* ``reply``: acknowledgements of commands and of flashed configs (QoS 1).
* subscribed: ``cmd/#`` (commands) and ``config`` (a retained config flashed over MQTT).
* Home Assistant MQTT discovery documents (retained) under ``<discovery_prefix>/``.

Every event first goes into the on-disk spool (:class:`edge.spool.Spool`, SQLite WAL). One
sender thread publishes the oldest spooled event, waits for the broker's acknowledgement
(PUBACK for QoS 1) and only then deletes it, one at a time. A broker outage, an
unacknowledged publish or a killed node therefore delays events but neither loses nor
reorders them; an event may be delivered twice (at-least-once), and consumers drop
duplicates by ``(node, seq)``.

Authentication: ``mqtt.username`` and the password from ``mqtt.password_file`` (never in
the config, never logged); TLS with ``mqtt.tls`` (CA file or the system's CAs, optional
client certificate).
"""
from __future__ import annotations

import json
import logging
import ssl
import threading
import time
from typing import Any, Callable

import paho.mqtt.client as mqtt

from edge.spool import SpoolError
from firmware_config.errors import HarkError
from firmware_config.fileio import SecretFileError, read_secret_file

log = logging.getLogger(__name__)

__all__ = ["MqttSetupError", "MqttPublisher"]


class MqttSetupError(HarkError, ValueError):
    """A password file or TLS file that cannot be used; the message names the config field."""


class MqttPublisher:
    """Connection, Last Will, retained status/state/discovery, commands and the spooled events.

    Parameters
    ----------
    cfg : firmware_config.schema.NodeConfig
    state_fn : callable returning dict
        Builds the retained ``state`` payload (called on every (re)connect).
    spool : edge.spool.Spool
        Where events wait until acknowledged; shared by successive publishers (a config
        change that reconnects keeps every spooled event).
    on_message : callable(topic: str, payload: bytes, retained: bool), optional
        Called from the network thread for messages on ``cmd/#`` and ``config``; it must
        return quickly (queue the work) and must not raise.
    discovery_fn : callable returning list of (topic, payload str), optional
        Home Assistant discovery documents, published retained on every (re)connect.

    Raises
    ------
    MqttSetupError
        Unreadable password file, missing TLS file (names the config field).
    """

    def __init__(self, cfg, state_fn: Callable[[], dict[str, Any]], spool,
                 on_message: Callable[[str, bytes, bool], None] | None = None,
                 discovery_fn: Callable[[], list[tuple[str, str]]] | None = None):
        self.cfg = cfg
        self.root = cfg.topic_root
        self.state_fn = state_fn
        self.spool = spool
        self.on_message = on_message
        self.discovery_fn = discovery_fn
        m = cfg.mqtt
        self.qos = m.qos
        cid = m.client_id or f"hark-{cfg.node.site}-{cfg.node.id}"
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=cid,
                                  protocol=mqtt.MQTTv311, clean_session=True)
        if m.username is not None:
            password = None
            if m.password_file is not None:
                try:
                    password = read_secret_file(cfg.resolve(m.password_file), "mqtt.password_file")
                except SecretFileError as exc:
                    raise MqttSetupError(str(exc)) from None
            self.client.username_pw_set(m.username, password)
        if m.tls.enabled:
            self._set_tls(cfg)
        self.client.will_set(self.topic("status"), "offline", qos=1, retain=True)
        self.client.reconnect_delay_set(min_delay=max(1, int(m.reconnect_min_seconds)),
                                        max_delay=max(1, int(m.reconnect_max_seconds)))
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_connect_fail = self._on_connect_fail
        self.client.on_message = self._on_message
        self._cv = threading.Condition()
        self._connected = threading.Event()
        self._stop = threading.Event()
        self._sender = threading.Thread(target=self._send_loop, name="mqtt-sender", daemon=True)
        self.events_sent = 0
        self.refused: str | None = None  # the broker's last refusal reason, if any
        self._failures = 0

    def _set_tls(self, cfg) -> None:
        t = cfg.mqtt.tls
        files = {}
        for field in ("ca_file", "cert_file", "key_file"):
            value = getattr(t, field)
            if value is not None:
                path = cfg.resolve(value)
                if not path.is_file():
                    raise MqttSetupError(f"mqtt.tls.{field}: {path} does not exist")
                files[field] = str(path)
        try:
            self.client.tls_set(ca_certs=files.get("ca_file"), certfile=files.get("cert_file"),
                                keyfile=files.get("key_file"), cert_reqs=ssl.CERT_REQUIRED,
                                tls_version=ssl.PROTOCOL_TLS_CLIENT)
        except (ssl.SSLError, OSError, ValueError) as exc:
            raise MqttSetupError(f"mqtt.tls: cannot use the certificate files {files}: {exc}") from None

    def topic(self, suffix: str) -> str:
        return f"{self.root}/{suffix}"

    # -- connection ----------------------------------------------------------------------
    def start(self) -> None:
        m = self.cfg.mqtt
        log.info("connecting to %s://%s:%d as %s%s", "mqtts" if m.tls.enabled else "mqtt",
                 m.host, m.port, self.root,
                 f" (user {m.username})" if m.username is not None else "")
        self.client.connect_async(m.host, m.port, keepalive=m.keepalive)
        self.client.loop_start()
        self._sender.start()

    def _on_connect(self, client, userdata, flags, reason_code, properties):
        if reason_code.is_failure:
            self.refused = str(reason_code)
            log.warning("broker refused the connection: %s (check mqtt.username and "
                        "mqtt.password_file)", reason_code)
            return
        self._failures = 0
        self.refused = None
        log.info("connected to broker; %d event(s) spooled", self.spool.depth)
        client.publish(self.topic("status"), "online", qos=1, retain=True)
        if self.on_message is not None:
            client.subscribe([(self.topic("cmd/#"), 1), (self.topic("config"), 1)])
        self.publish_discovery()
        self.publish_state()
        self._connected.set()
        with self._cv:
            self._cv.notify_all()

    def _on_disconnect(self, client, userdata, flags, reason_code, properties):
        was = self._connected.is_set()
        self._connected.clear()
        if not self._stop.is_set() and was:
            log.warning("lost the broker (%s); retrying with backoff, %d event(s) spooled",
                        reason_code, self.spool.depth)

    def _on_connect_fail(self, client, userdata):
        self._failures += 1
        m = self.cfg.mqtt
        delay = min(m.reconnect_max_seconds, m.reconnect_min_seconds * 2 ** (self._failures - 1))
        log.warning("broker %s:%d unreachable (attempt %d); retrying in up to %.0f s, "
                    "%d event(s) spooled", m.host, m.port, self._failures, delay,
                    self.spool.depth)

    def _on_message(self, client, userdata, msg):
        if self.on_message is None:
            return
        try:
            self.on_message(msg.topic, bytes(msg.payload), bool(msg.retain))
        except Exception:  # one bad message must never take the connection down
            log.exception("handling a message on %s failed", msg.topic)

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def wait_connected(self, timeout: float) -> bool:
        """Block until connected (True) or ``timeout`` seconds passed (False)."""
        return self._connected.wait(timeout)

    # -- publishing ----------------------------------------------------------------------
    def publish_state(self) -> None:
        try:
            state = self.state_fn()
        except Exception:  # never let a state bug take the connection down
            log.exception("building the state payload failed")
            return
        self.client.publish(self.topic("state"), json.dumps(state), qos=1, retain=True)

    def publish_discovery(self) -> None:
        """(Re)publish the Home Assistant discovery documents, retained."""
        if self.discovery_fn is None:
            return
        try:
            docs = self.discovery_fn()
        except Exception:
            log.exception("building the Home Assistant discovery documents failed")
            return
        for topic, payload in docs:
            self.client.publish(topic, payload, qos=1, retain=True)

    def publish_heartbeat(self, payload: dict[str, Any]) -> None:
        """Heartbeats are not spooled: a stale heartbeat is worthless."""
        if self.connected:
            self.client.publish(self.topic("heartbeat"), json.dumps(payload), qos=0)

    def reply(self, payload: dict[str, Any]) -> None:
        """Publish a command acknowledgement on ``reply`` (QoS 1, not spooled: commands only
        arrive over a live connection)."""
        self.client.publish(self.topic("reply"), json.dumps(payload), qos=1)

    def publish_event(self, kind: str, payload: dict[str, Any]) -> int | None:
        """Spool an event for ordered, acknowledged delivery on ``event/<kind>``.

        Returns
        -------
        int or None
            The event's ``seq`` (also set in the published payload), or None when the full
            spool's ``drop_policy`` is ``newest`` and the event was dropped.
        """
        try:
            seq = self.spool.append(self.topic(f"event/{kind}"), payload)
        except (SpoolError, ValueError, TypeError):  # disk full, I/O error: never crash the node
            log.exception("could not spool an event/%s event: it is lost", kind)
            return None
        with self._cv:
            self._cv.notify_all()
        return seq

    @property
    def queue_depth(self) -> int:
        return self.spool.depth

    @property
    def events_dropped(self) -> int:
        return self.spool.dropped

    def _send_loop(self) -> None:
        while not self._stop.is_set():
            with self._cv:
                self._cv.wait_for(lambda: self._stop.is_set() or self._connected.is_set(),
                                  timeout=1.0)
            if self._stop.is_set():
                return
            try:
                head = self.spool.peek(1) if self._connected.is_set() else []
            except Exception:  # an I/O error on the spool: log it and try again
                log.exception("reading the spool failed")
                head = []
            if not head:
                with self._cv:
                    self._cv.wait(timeout=0.5)
                continue
            ev = head[0]
            info = self.client.publish(ev.topic, ev.payload, qos=self.qos)
            deadline = time.monotonic() + 10.0
            while not info.is_published() and time.monotonic() < deadline:
                if not self._connected.is_set() or self._stop.is_set():
                    break
                if info.rc == mqtt.MQTT_ERR_SUCCESS:
                    info.wait_for_publish(timeout=0.2)
                else:
                    time.sleep(0.2)
            if info.is_published():
                try:
                    self.spool.ack(ev.seq)
                except Exception:  # it stays spooled and is sent again (a duplicate)
                    log.exception("removing event %d from the spool failed", ev.seq)
                self.events_sent += 1
            else:
                time.sleep(0.2)  # not acknowledged: it stays at the head and is sent again

    def flush(self, timeout: float, abort: threading.Event | None = None) -> bool:
        """Wait until the spool is empty (True), or ``timeout`` seconds passed or ``abort``
        was set (False)."""
        deadline = time.monotonic() + timeout
        while self.spool.depth and time.monotonic() < deadline:
            if abort is not None and abort.is_set():
                break
            time.sleep(0.05)
        return not self.spool.depth

    def stop(self, flush_timeout: float = 5.0, offline: bool = True,
             abort: threading.Event | None = None) -> None:
        """Deliver spooled events (waiting up to ``flush_timeout`` s, also for a reconnect,
        unless ``abort`` is set), publish ``offline`` (retained) unless ``offline`` is False,
        disconnect.

        Events still spooled stay on disk and go out after the next start.
        """
        if flush_timeout > 0:
            self.flush(flush_timeout, abort)
        self._stop.set()
        with self._cv:
            self._cv.notify_all()
        if self._sender.is_alive():
            self._sender.join(timeout=12.0)
        if self.spool.depth:
            log.warning("stopping with %d event(s) spooled; they are sent after the next start",
                        self.spool.depth)
        if self.connected and offline:
            info = self.client.publish(self.topic("status"), "offline", qos=1, retain=True)
            try:
                info.wait_for_publish(timeout=2.0)
            except Exception:
                pass
        self.client.disconnect()
        self.client.loop_stop()
        self._connected.clear()
