"""MQTT from the outside: record what a node publishes, publish to it.

paho-mqtt 2.x clients (``CallbackAPIVersion.VERSION2``, MQTT 3.1.1) for the demo and the tests;
the broker they talk to is usually a :class:`demo.broker.MosquittoBroker`.

Contents
--------
:class:`MqttMessage`
    One received message, a ``(topic, payload, retain)`` tuple.
:class:`MqttCollector`
    A subscriber that records every message it sees and waits for the ones a test expects.
:func:`mqtt_publish`
    Publish one message and wait for the broker's acknowledgement.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
from typing import Callable, NamedTuple

import paho.mqtt.client as mqtt
from paho.mqtt.client import topic_matches_sub

__all__ = ["MqttMessage", "MqttCollector", "mqtt_publish"]


class MqttMessage(NamedTuple):
    """One received MQTT message: a ``(topic, payload, retain)`` tuple."""

    topic: str
    payload: bytes
    retain: bool

    def text(self) -> str:
        """The payload decoded as UTF-8."""
        return self.payload.decode("utf-8")

    def json(self):
        """The payload parsed as JSON."""
        return json.loads(self.payload)


def _matches(topic_filter: str | None, topic: str) -> bool:
    """True if ``topic`` matches the MQTT filter (``+``, ``#``); every topic matches None."""
    if topic_filter is None:
        return True
    return topic_matches_sub(topic_filter, topic)


class MqttCollector:
    """Subscribe to a topic filter and record every message, as a context manager.

    Uses a paho-mqtt 2.x client (``CallbackAPIVersion.VERSION2``, MQTT
    3.1.1, clean session unless asked) with its network loop in a background thread.  The
    subscription is (re)made in ``on_connect``, so it survives a broker
    restart; :meth:`__enter__` / :meth:`start` returns only after the first
    SUBACK, so anything published afterwards is seen.

    Parameters
    ----------
    host : str
        Broker host.
    port : int
        Broker port.
    topic_filter : str, default "#"
        Filter to subscribe to (QoS 1).
    client_id : str, optional
        MQTT client id; a unique one when omitted.
    timeout : float, default 10.0
        Seconds to wait for CONNACK + SUBACK in :meth:`start`.
    clean_session : bool, default True
        False: a persistent session. With a broker that keeps persistence, a message the
        broker acknowledged but had not yet delivered to this collector when it stopped
        arrives after the restart instead of being lost with the broker's memory.

    Attributes
    ----------
    connected : bool
        Whether the client is connected right now.
    connect_count : int
        Number of successful connections so far (grows on reconnect).

    Examples
    --------
    >>> with MqttCollector(broker.host, broker.port, "hark/#") as col:   # doctest: +SKIP
    ...     msgs = col.wait_for(lambda m: m.topic.endswith("/event"), timeout=30)
    """

    def __init__(self, host: str, port: int, topic_filter: str = "#",
                 client_id: str | None = None, timeout: float = 10.0,
                 clean_session: bool = True) -> None:
        self.host = host
        self.port = int(port)
        self.topic_filter = topic_filter
        self.timeout = float(timeout)
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._messages: list[MqttMessage] = []
        self._subscribed = threading.Event()
        self.connected = False
        self.connect_count = 0
        self.client = mqtt.Client(
            callback_api_version=mqtt.CallbackAPIVersion.VERSION2,
            client_id=client_id or f"hark-collector-{os.getpid()}-{id(self):x}",
            protocol=mqtt.MQTTv311, clean_session=clean_session)
        self.client.reconnect_delay_set(min_delay=1, max_delay=2)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_subscribe = self._on_subscribe
        self.client.on_message = self._on_message
        self._started = False

    # paho callbacks (VERSION2 signatures) ---------------------------------
    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            return
        self.connected = True
        self.connect_count += 1
        client.subscribe(self.topic_filter, qos=1)

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        self.connected = False

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties) -> None:
        self._subscribed.set()

    def _on_message(self, client, userdata, msg) -> None:
        item = MqttMessage(msg.topic, bytes(msg.payload), bool(msg.retain))
        with self._cond:
            self._messages.append(item)
            self._cond.notify_all()

    # ------------------------------------------------------------------
    def start(self) -> "MqttCollector":
        """Connect, start the network loop and wait for the subscription.

        Raises
        ------
        TimeoutError
            If CONNACK + SUBACK do not arrive within ``timeout`` seconds.
        """
        if self._started:
            return self
        self._subscribed.clear()
        self.client.connect_async(self.host, self.port, keepalive=10)
        self.client.loop_start()
        self._started = True
        if not self._subscribed.wait(self.timeout):
            self.stop()
            raise TimeoutError(f"MqttCollector: no SUBACK for {self.topic_filter!r} from "
                               f"{self.host}:{self.port} within {self.timeout:.0f} s")
        return self

    def stop(self) -> None:
        """Disconnect and stop the network thread (idempotent)."""
        if not self._started:
            return
        with contextlib.suppress(Exception):
            self.client.disconnect()
        self.client.loop_stop()
        self._started = False
        self.connected = False

    def wait_subscribed(self, timeout: float = 10.0) -> bool:
        """Wait until (re)subscribed after a reconnect; return success.

        Call :meth:`clear_subscribed` before provoking a reconnect (e.g. a
        broker restart) and this afterwards.
        """
        return self._subscribed.wait(timeout)

    def clear_subscribed(self) -> None:
        """Forget that a SUBACK was seen (see :meth:`wait_subscribed`)."""
        self._subscribed.clear()

    def messages(self, topic_filter: str | None = None) -> list[MqttMessage]:
        """Return a snapshot of the messages received so far.

        Parameters
        ----------
        topic_filter : str, optional
            MQTT filter (``+`` and ``#`` wildcards) to select topics; all
            messages when omitted.

        Returns
        -------
        list of MqttMessage
            ``(topic, payload, retain)`` tuples in arrival order.
        """
        with self._lock:
            return [m for m in self._messages if _matches(topic_filter, m.topic)]

    def clear(self) -> None:
        """Forget every message received so far."""
        with self._lock:
            self._messages.clear()

    def wait_for(self, predicate: Callable[[MqttMessage], bool] | None = None,
                 timeout: float = 10.0, count: int = 1,
                 topic_filter: str | None = None) -> list[MqttMessage]:
        """Block until ``count`` received messages satisfy ``predicate``.

        Messages received before the call count too.

        Parameters
        ----------
        predicate : callable, optional
            ``predicate(message) -> bool``; every message matches when
            omitted.  Exceptions raised by it (e.g. a JSON decode error on a
            foreign payload) count as "no match".
        timeout : float, default 10.0
            Seconds to wait.
        count : int, default 1
            Number of matching messages required.
        topic_filter : str, optional
            MQTT filter applied before ``predicate``.

        Returns
        -------
        list of MqttMessage
            All matching messages received so far (at least ``count``).

        Raises
        ------
        TimeoutError
            If fewer than ``count`` messages matched in time; the message
            summarises what was received (count per topic and the last few
            payloads).
        """

        def select() -> list[MqttMessage]:
            out = []
            for m in self._messages:
                if not _matches(topic_filter, m.topic):
                    continue
                try:
                    ok = True if predicate is None else bool(predicate(m))
                except Exception:
                    ok = False
                if ok:
                    out.append(m)
            return out

        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                found = select()
                if len(found) >= count:
                    return found
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._cond.wait(min(remaining, 0.5))
            summary = self._summary_locked()
        raise TimeoutError(
            f"MqttCollector: {len(found)}/{count} matching message(s) after {timeout:.1f} s "
            f"(filter {topic_filter or self.topic_filter!r}); received: {summary}")

    def _summary_locked(self, last: int = 5) -> str:
        if not self._messages:
            return "nothing"
        counts: dict[str, int] = {}
        for m in self._messages:
            counts[m.topic] = counts.get(m.topic, 0) + 1
        per_topic = ", ".join(f"{t} x{n}" for t, n in counts.items())
        tail = "; ".join(f"{m.topic}: {m.payload[:200]!r}" for m in self._messages[-last:])
        return f"{len(self._messages)} message(s) [{per_topic}]; last: {tail}"

    def summary(self) -> str:
        """A one-line description of what was received (for messages)."""
        with self._lock:
            return self._summary_locked()

    def __enter__(self) -> "MqttCollector":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def mqtt_publish(host: str, port: int, topic: str, payload: bytes | str = b"", qos: int = 1,
                 retain: bool = False, timeout: float = 10.0) -> None:
    """Publish one message and wait until the broker has acknowledged it.

    A quiet replacement for ``paho.mqtt.publish.single`` (which logs a
    spurious "Client is not connected" line to stderr in paho 2.2).

    Parameters
    ----------
    host, port : str, int
        Broker address.
    topic : str
        Topic to publish to.
    payload : bytes or str, default b""
        Message body (str is encoded as UTF-8).
    qos : int, default 1
        QoS level.
    retain : bool, default False
        Set the retain flag.
    timeout : float, default 10.0
        Seconds to wait for connection and acknowledgement.

    Raises
    ------
    TimeoutError
        If the broker does not acknowledge in time.
    """
    client = mqtt.Client(callback_api_version=mqtt.CallbackAPIVersion.VERSION2,
                         client_id=f"hark-pub-{os.getpid()}-{time.monotonic_ns():x}",
                         protocol=mqtt.MQTTv311)
    connected = threading.Event()
    client.on_connect = lambda c, u, f, rc, p: connected.set() if not rc.is_failure else None
    client.connect(host, int(port), keepalive=10)
    client.loop_start()
    try:
        if not connected.wait(timeout):
            raise TimeoutError(f"mqtt_publish: no CONNACK from {host}:{port} within {timeout} s")
        info = client.publish(topic, payload, qos=qos, retain=retain)
        info.wait_for_publish(timeout)
        if not info.is_published():
            raise TimeoutError(f"mqtt_publish: {topic!r} not acknowledged within {timeout} s")
    finally:
        client.disconnect()
        client.loop_stop()
