"""Fleets past one broker: the shipped bridge (``firmware_config/deploy/mosquitto-bridge.conf``)
between two real mosquitto brokers on loopback.

A node (its real :class:`~edge.spool.Spool` and :class:`~edge.mqtt.MqttPublisher`) publishes
to the site broker, which runs the shipped bridge section; the central broker's consumers
must get every event, in order, while the bridge link is cut (a WAN outage, played by a TCP
relay between the brokers that drops its connections) and restored; none may be lost when the
central broker itself restarts; and two MQTT v5 consumers in one shared-subscription group must
split the events between them, none lost, none twice.
"""
from __future__ import annotations

import json
import re
import socket
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from demo.broker import MosquittoBroker
from demo.tools import require_tools
from edge import payloads
from edge.mqtt import MqttPublisher
from edge.spool import Spool
from firmware_config.defaults import default_config_doc
from firmware_config.schema import parse_config

ROOT = Path(__file__).resolve().parent.parent
BRIDGE_CONF = ROOT / "firmware_config" / "deploy" / "mosquitto-bridge.conf"
SITE = "plant-a"  # the site the shipped example bridges
EVENTS = f"hark/{SITE}/+/event/#"
# Left out on loopback: the central test broker is plain MQTT without accounts.
NOT_ON_LOOPBACK = ("remote_username", "remote_password", "bridge_cafile", "bridge_tls_version")


@pytest.fixture(scope="module", autouse=True)
def _tools():
    missing = require_tools(audio=False)
    if missing:
        pytest.fail("the bridge tests need: " + ", ".join(missing) + " (make setup installs them)")


def bridge_config(central: MosquittoBroker, via: "WanLink | None" = None) -> list[str]:
    """The shipped bridge section as ``extra_config`` lines of the site broker.

    Comments go; ``address`` becomes the central test broker (or the relay ``via`` in front
    of it); its TLS and account lines go; ``restart_timeout`` becomes ``1 2`` (the test's
    outage lasts seconds, not minutes).
    """
    lines = []
    for raw in BRIDGE_CONF.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        key = line.split()[0]
        if key == "address":
            host, port = (via.host, via.port) if via else (central.host, central.port)
            line = f"address {host}:{port}"
        elif key == "restart_timeout":
            line = "restart_timeout 1 2"
        elif key in NOT_ON_LOOPBACK:
            continue
        lines.append(line)
    assert lines[0].startswith("connection "), lines
    return lines


class WanLink:
    """A TCP relay between the site broker's bridge and the central broker: the WAN.

    :meth:`cut` drops every relayed connection and refuses new ones (they are accepted and
    closed at once, as a dead uplink behind a router looks); :meth:`restore` lets them through
    again. Neither broker is restarted, so the central broker's consumers stay connected.
    """

    def __init__(self, central: MosquittoBroker):
        self.target = (central.host, central.port)
        self.server = socket.create_server(("127.0.0.1", 0))
        self.host, self.port = self.server.getsockname()[:2]
        self.up = True
        self.lock = threading.Lock()
        self.sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.server.accept()
            except OSError:
                return  # closed
            with self.lock:
                if not self.up:
                    client.close()
                    continue
                upstream = socket.create_connection(self.target)
                self.sockets += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        for sock in (src, dst):
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def cut(self) -> None:
        with self.lock:
            self.up = False
            for sock in self.sockets:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                sock.close()
            self.sockets.clear()

    def restore(self) -> None:
        with self.lock:
            self.up = True

    def close(self) -> None:
        self.cut()
        self.server.close()


class Node:
    """The node's transport: its real spool and publisher, on the site broker."""

    def __init__(self, site: MosquittoBroker, tmp: Path):
        doc = default_config_doc(
            node={"id": "press-3", "site": SITE},
            mqtt={"host": site.host, "port": site.port, "heartbeat_seconds": 60,
                  "reconnect_min_seconds": 1, "reconnect_max_seconds": 2},
            homeassistant={"enabled": False}, spool={"path": str(tmp / "spool.sqlite")})
        self.cfg = parse_config(doc, "<bridge test node>", tmp)
        self.spool = Spool(tmp / "spool.sqlite")
        self.publisher = MqttPublisher(self.cfg, self.state, self.spool)
        self.publisher.start()
        assert self.publisher.wait_connected(10), "node never connected to the site broker"

    def state(self) -> dict:
        return {**payloads.base(self.cfg), "status": "online"}

    def publish(self, n: int) -> None:
        now = time.time()
        for _ in range(n):
            self.publisher.publish_event("anomaly", payloads.anomaly_event(
                self.cfg, anomaly_score=0.1, decision_threshold=0.5, anomalous=False,
                t_start=now - 10.0, t_end=now, model_id="m", calibration_id="c"))

    def flushed(self, timeout: float) -> bool:
        """All events acknowledged by the site broker (the spool is empty)."""
        return self.publisher.flush(timeout)

    def close(self) -> None:
        self.publisher.stop(flush_timeout=2.0)
        self.spool.close()


class Consumer:
    """A paho client on the central broker collecting the ``seq`` of every event it gets."""

    def __init__(self, broker: MosquittoBroker, client_id: str, topic: str,
                 protocol=mqtt.MQTTv311, persistent: bool = False):
        kw = ({"clean_session": not persistent} if protocol != mqtt.MQTTv5 else {})
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id,
                                  protocol=protocol, **kw)
        self.topic = topic
        self.seqs: list[int] = []
        self.subscribed = threading.Event()
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = lambda *a: self.subscribed.set()
        self.client.on_message = self._on_message
        self.client.reconnect_delay_set(1, 1)
        props = None
        if protocol == mqtt.MQTTv5:
            from paho.mqtt.packettypes import PacketTypes
            from paho.mqtt.properties import Properties
            props = Properties(PacketTypes.CONNECT)
            props.SessionExpiryInterval = 3600 if persistent else 0
        self.client.connect(broker.host, broker.port, keepalive=10,
                            **({"clean_start": not persistent, "properties": props}
                               if protocol == mqtt.MQTTv5 else {}))
        self.client.loop_start()
        assert self.subscribed.wait(10), f"{client_id} never subscribed to {topic}"

    def _on_connect(self, client, userdata, flags, reason_code, properties):
        client.subscribe(self.topic, qos=1)

    def _on_message(self, client, userdata, msg):
        self.seqs.append(json.loads(msg.payload)["seq"])

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")


def link_up(central: MosquittoBroker) -> None:
    """Wait until the bridge's retained notification on the central broker says ``1``."""
    state = {}
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    client.on_connect = lambda c, *a: c.subscribe("$SYS/broker/connection/+/state", 1)
    client.on_message = lambda c, u, m: state.__setitem__(m.topic, m.payload)
    client.connect(central.host, central.port)
    client.loop_start()
    try:
        wait_for(lambda: b"1" in state.values(), 20,
                 f"the bridge to connect to the central broker\n{central.log_text()[-2000:]}")
    finally:
        client.loop_stop()
        client.disconnect()


def test_shipped_bridge_config_is_a_qos1_persistent_bridge():
    lines = [ln.strip() for ln in BRIDGE_CONF.read_text().splitlines()
             if ln.strip() and not ln.startswith("#")]
    assert "cleansession false" in lines and "try_private true" in lines
    outs = [ln.split() for ln in lines if ln.startswith("topic ") and " out " in ln]
    assert ["topic", f"hark/{SITE}/+/event/#", "out", "1"] in outs, outs
    for _, pattern, _, qos in outs:
        assert qos in ("0", "1"), pattern
    # what comes in is never sent back out (no loop between the brokers)
    ins = [ln.split()[1] for ln in lines if ln.startswith("topic ") and " in " in ln]
    assert ins and all(re.search(r"/(cmd/#|config)$", p) for p in ins), ins


def test_events_cross_the_bridge_in_order_through_a_wan_outage(tmp_path):
    """The WAN drops; events queue on the site broker and cross, in order, once it is back.
    Events published while the bridge reconnects all arrive, but their order is not
    asserted: mosquitto 2.0.11 can send one of them live ahead of the others still queued
    (seen once under load: ..., 40, 43, 41, 42, ...), as with a reconnecting consumer below;
    consumers order by ``seq``."""
    central = MosquittoBroker()
    with central:
        wan = WanLink(central)
        site = MosquittoBroker(extra_config=bridge_config(central, via=wan))
        with site:
            link_up(central)
            recorder = Consumer(central, "recorder", EVENTS)
            node = Node(site, tmp_path)
            try:
                node.publish(20)
                wait_for(lambda: len(recorder.seqs) >= 20, 20, "the first 20 events centrally")

                wan.cut()  # events queue on the site broker; the recorder stays connected
                node.publish(20)
                assert node.flushed(10), "the site broker did not acknowledge the events"
                time.sleep(1.0)
                assert len(recorder.seqs) == 20, recorder.seqs
                wan.restore()
                node.publish(20)  # while the bridge is still reconnecting: behind the queue

                wait_for(lambda: len(set(recorder.seqs)) >= 60, 30,
                         f"all 60 events centrally (got {len(set(recorder.seqs))}); site log:\n"
                         f"{site.log_text()[-2000:]}")
                time.sleep(0.5)
            finally:
                node.close()
                recorder.close()
                wan.close()
    first = list(dict.fromkeys(recorder.seqs))  # at least once: drop duplicates by seq
    assert sorted(first) == list(range(1, 61)), recorder.seqs  # nothing lost
    # before and through the outage, in order, even if a later event overtakes one of them
    assert [q for q in first if q <= 40] == list(range(1, 41)), recorder.seqs


def test_central_broker_restart_loses_no_event(tmp_path):
    """The central broker stops and comes back (same persistence): its consumer, with a
    persistent session, gets every event. Order is not asserted here: mosquitto 2.0.11 may
    hand a consumer that reconnects while events flow a live message before the last ones it
    queued for it (seen once in CI: ..., 40, 43, 41, 42, ...); consumers order by ``seq``."""
    central = MosquittoBroker(listener_config=["allow_anonymous true", "persistence true",
                                               "autosave_interval 1"])
    with central:
        site = MosquittoBroker(extra_config=bridge_config(central))
        with site:
            link_up(central)
            recorder = Consumer(central, "recorder", EVENTS, persistent=True)
            node = Node(site, tmp_path)
            try:
                node.publish(20)
                wait_for(lambda: len(recorder.seqs) >= 20, 20, "the first 20 events centrally")
                time.sleep(1.5)  # the recorder's session is saved (autosave_interval 1)

                central.stop()
                node.publish(20)
                assert node.flushed(10), "the site broker did not acknowledge the events"
                central.start()  # same port, same persistence file
                node.publish(20)
                wait_for(lambda: len(set(recorder.seqs)) >= 60, 30,
                         f"all 60 events centrally (got {len(set(recorder.seqs))}); site log:\n"
                         f"{site.log_text()[-2000:]}")
            finally:
                node.close()
                recorder.close()
    assert sorted(set(recorder.seqs)) == list(range(1, 61)), recorder.seqs


def test_shared_subscription_splits_events_between_consumers(tmp_path):
    central = MosquittoBroker()
    with central:
        site = MosquittoBroker(extra_config=bridge_config(central))
        with site:
            link_up(central)
            share = f"$share/recorders/{EVENTS}"
            a = Consumer(central, "recorder-a", share, protocol=mqtt.MQTTv5)
            b = Consumer(central, "recorder-b", share, protocol=mqtt.MQTTv5)
            node = Node(site, tmp_path)
            try:
                node.publish(40)
                wait_for(lambda: len(a.seqs) + len(b.seqs) >= 40, 20, "40 events centrally")
                time.sleep(0.5)
            finally:
                node.close()
                a.close()
                b.close()
    assert a.seqs and b.seqs, (a.seqs, b.seqs)  # both members got a share
    assert not set(a.seqs) & set(b.seqs), (a.seqs, b.seqs)  # none twice
    assert sorted(a.seqs + b.seqs) == list(range(1, 41))  # none lost
    assert a.seqs == sorted(a.seqs) and b.seqs == sorted(b.seqs)  # each in order
