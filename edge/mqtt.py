"""MQTT publishing per the contract in SPEC.md.

Topic root ``<prefix>/<site>/<node_id>/``:

* ``status`` (retained): ``online`` / ``offline``; ``offline`` is also the Last Will.
* ``state`` (retained): JSON with model and calibration ids, uptime, audio health.
* ``heartbeat``: JSON levels (dBFS), CPU, queue depth, every ``heartbeat_seconds``.
* ``event/anomaly``: JSON per analysis window (QoS 1).

Events go through an in-memory outbox and are removed only once the broker acknowledged
them (PUBACK for QoS 1), one at a time and in order, so a broker outage delays them but
neither reorders nor drops them. The outbox is bounded (``mqtt.max_queued_events``);
when full, the oldest event is dropped and counted in ``events_dropped`` (reported in
``state`` and ``heartbeat``).
"""
from __future__ import annotations

import collections
import datetime as dt
import json
import logging
import threading
import time
from typing import Any, Callable

import paho.mqtt.client as mqtt

log = logging.getLogger(__name__)

__all__ = ["PAYLOAD_SCHEMA", "utc_now", "MqttPublisher"]

PAYLOAD_SCHEMA = 1


def utc_now() -> str:
    """Current UTC time, ISO-8601 with milliseconds and a ``Z`` suffix."""
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class MqttPublisher:
    """Connection, Last Will, retained status/state and the ordered event outbox.

    Parameters
    ----------
    cfg : firmware_config.schema.NodeConfig
    state_fn : callable returning dict
        Builds the retained ``state`` payload (called on every (re)connect).
    """

    def __init__(self, cfg, state_fn: Callable[[], dict[str, Any]]):
        self.cfg = cfg
        self.root = cfg.topic_root
        self.state_fn = state_fn
        m = cfg.mqtt
        self.qos = m.qos
        cid = m.client_id or f"hark-{cfg.node.site}-{cfg.node.id}"
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=cid,
                                  protocol=mqtt.MQTTv311, clean_session=True)
        self.client.will_set(self.topic("status"), "offline", qos=1, retain=True)
        self.client.reconnect_delay_set(min_delay=max(1, int(m.reconnect_min_seconds)),
                                        max_delay=max(1, int(m.reconnect_max_seconds)))
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_connect_fail = self._on_connect_fail
        self._outbox: collections.deque = collections.deque()
        self._max = m.max_queued_events
        self._cv = threading.Condition()
        self._connected = threading.Event()
        self._stop = threading.Event()
        self._sender = threading.Thread(target=self._send_loop, name="mqtt-outbox", daemon=True)
        self.events_dropped = 0
        self.events_sent = 0
        self._failures = 0

    def topic(self, suffix: str) -> str:
        return f"{self.root}/{suffix}"

    # -- connection ----------------------------------------------------------------------
    def start(self) -> None:
        m = self.cfg.mqtt
        log.info("connecting to mqtt://%s:%d as %s", m.host, m.port, self.root)
        self.client.connect_async(m.host, m.port, keepalive=m.keepalive)
        self.client.loop_start()
        self._sender.start()

    def _on_connect(self, client, userdata, flags, reason_code, properties):
        if reason_code.is_failure:
            log.warning("broker refused the connection: %s", reason_code)
            return
        self._failures = 0
        log.info("connected to broker; %d event(s) queued", len(self._outbox))
        client.publish(self.topic("status"), "online", qos=1, retain=True)
        self.publish_state()
        self._connected.set()
        with self._cv:
            self._cv.notify_all()

    def _on_disconnect(self, client, userdata, flags, reason_code, properties):
        was = self._connected.is_set()
        self._connected.clear()
        if not self._stop.is_set() and was:
            log.warning("lost the broker (%s); retrying with backoff, %d event(s) queued",
                        reason_code, len(self._outbox))

    def _on_connect_fail(self, client, userdata):
        self._failures += 1
        m = self.cfg.mqtt
        delay = min(m.reconnect_max_seconds, m.reconnect_min_seconds * 2 ** (self._failures - 1))
        log.warning("broker mqtt://%s:%d unreachable (attempt %d); retrying in up to %.0f s, "
                    "%d event(s) queued in memory", m.host, m.port, self._failures, delay,
                    len(self._outbox))

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    # -- publishing ----------------------------------------------------------------------
    def publish_state(self) -> None:
        try:
            state = self.state_fn()
        except Exception:  # never let a state bug take the connection down
            log.exception("building the state payload failed")
            return
        self.client.publish(self.topic("state"), json.dumps(state), qos=1, retain=True)

    def publish_heartbeat(self, payload: dict[str, Any]) -> None:
        """Heartbeats are not queued: a stale heartbeat is worthless."""
        if self.connected:
            self.client.publish(self.topic("heartbeat"), json.dumps(payload), qos=0)

    def publish_event(self, kind: str, payload: dict[str, Any]) -> None:
        """Queue an event for ordered, acknowledged delivery on ``event/<kind>``."""
        item = (self.topic(f"event/{kind}"), json.dumps(payload))
        with self._cv:
            if len(self._outbox) >= self._max:
                self._outbox.popleft()
                self.events_dropped += 1
                log.error("event outbox full (%d): dropped the oldest event (%d dropped so far)",
                          self._max, self.events_dropped)
            self._outbox.append(item)
            self._cv.notify_all()

    @property
    def queue_depth(self) -> int:
        return len(self._outbox)

    def _send_loop(self) -> None:
        while True:
            with self._cv:
                self._cv.wait_for(lambda: self._stop.is_set() or
                                  (self._outbox and self._connected.is_set()), timeout=1.0)
                if self._stop.is_set() and (not self._outbox or not self._connected.is_set()):
                    return
                if not self._outbox or not self._connected.is_set():
                    continue
                topic, payload = self._outbox[0]
            info = self.client.publish(topic, payload, qos=self.qos)
            deadline = time.monotonic() + 10.0
            while not info.is_published() and time.monotonic() < deadline:
                if not self._connected.is_set() and not self._stop.is_set():
                    break
                if info.rc == mqtt.MQTT_ERR_SUCCESS:
                    info.wait_for_publish(timeout=0.2)
                else:
                    time.sleep(0.2)
            if info.is_published():
                with self._cv:
                    if self._outbox and self._outbox[0] == (topic, payload):
                        self._outbox.popleft()
                self.events_sent += 1
            else:
                time.sleep(0.2)  # not acknowledged: keep it at the head and retry

    def flush(self, timeout: float) -> bool:
        """Wait until the outbox is empty (True) or ``timeout`` seconds passed (False)."""
        deadline = time.monotonic() + timeout
        while self._outbox and time.monotonic() < deadline:
            time.sleep(0.05)
        return not self._outbox

    def stop(self, flush_timeout: float = 5.0) -> None:
        """Deliver queued events (waiting up to ``flush_timeout`` s, also for a reconnect),
        publish ``offline`` (retained), disconnect."""
        self.flush(flush_timeout)
        self._stop.set()
        with self._cv:
            self._cv.notify_all()
        if self._outbox:
            log.error("stopping with %d undelivered event(s) (broker unreachable)",
                      len(self._outbox))
        if self.connected:
            info = self.client.publish(self.topic("status"), "offline", qos=1, retain=True)
            try:
                info.wait_for_publish(timeout=2.0)
            except Exception:
                pass
        self.client.disconnect()
        self.client.loop_stop()
        self._sender.join(timeout=2.0)
