"""Secure MQTT: the shipped broker example (``firmware_config/deploy/``) against a real
mosquitto, and a real node connecting to it with TLS and a password.

Certificates are made here with the ``openssl`` CLI and password entries with
``mosquitto_passwd``.  The broker runs the shipped ``mosquitto.conf`` with ``/etc/mosquitto/``
replaced by a temporary folder (and the harness's own listener port and log), next to a
verbatim copy of ``hark.acl``: the example is what is tested.

mosquitto 2.0.11 grants every SUBSCRIBE and applies the ``read`` rules when it delivers each
message, and it acknowledges (PUBACK) and silently drops a ``write`` it denies (MQTT 3.1.1 has
no way to say no).  So a denied message is checked by publishing it *before* a permitted marker
on the same connection and asserting that only the marker arrives: the broker keeps the order,
so a leaked message would have arrived first.
"""
from __future__ import annotations

import contextlib
import queue
import re
import shutil
import subprocess
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from demo.broker import MosquittoBroker
from demo.collector import MqttCollector
from demo.tools import require_tools
from nodeproc import ANOMALY, NodeProcess, node_config, update_config

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "firmware_config" / "deploy"
HOST = "127.0.0.1"
PASSWORDS = {"operator": "op-Secret-7d1c", "press-3": "p3-Secret-52ab", "press-4": "p4-Secret-e90f"}
NODE = "hark/plant-a/press-3"
OTHER = "hark/plant-a/press-4"


@pytest.fixture(scope="module", autouse=True)
def _tools():
    missing = require_tools(audio=False)
    missing += [f"{tool} (Debian package {pkg})" for tool, pkg in
                (("openssl", "openssl"), ("mosquitto_passwd", "mosquitto"))
                if shutil.which(tool) is None]
    if missing:
        pytest.fail("security tests need: " + ", ".join(missing) + " (make setup installs them)")


# --------------------------------------------------------------------------------------------
# certificates, passwords and the broker built from the shipped example
# --------------------------------------------------------------------------------------------

def _run(*cmd: str, cwd: Path) -> None:
    """Run a CLI tool in ``cwd``; fail the test with its stderr if it fails."""
    r = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, f"{' '.join(cmd)} failed ({r.returncode}):\n{r.stderr}"


def _new_key(name: str, cn: str) -> list[str]:
    """``openssl req`` arguments for a new P-256 key ``<name>.key`` and subject ``CN=cn``."""
    return ["openssl", "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
            "-nodes", "-keyout", f"{name}.key", "-subj", f"/CN={cn}"]


def _make_ca(name: str, d: Path) -> None:
    """A self-signed CA ``d/<name>.crt`` + ``.key``."""
    _run(*_new_key(name, f"hark test {name}"), "-x509", "-days", "2",
         "-out", f"{name}.crt", "-addext", "basicConstraints=critical,CA:TRUE",
         "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=d)


def _make_leaf(name: str, cn: str, ca: str, d: Path, extensions: str) -> None:
    """``d/<name>.crt`` + ``.key`` signed by the CA ``d/<ca>``, with X.509 ``extensions``."""
    _run(*_new_key(name, cn), "-new", "-out", f"{name}.csr", cwd=d)
    (d / f"{name}.ext").write_text(extensions + "\nbasicConstraints=CA:FALSE\n"
                                   "subjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid\n")
    _run("openssl", "x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.crt",
         "-CAkey", f"{ca}.key", "-set_serial", str(time.time_ns()), "-days", "2",
         "-extfile", f"{name}.ext", "-out", f"{name}.crt", cwd=d)


@pytest.fixture(scope="module")
def etc(tmp_path_factory) -> Path:
    """A stand-in for ``/etc/mosquitto``: certs/, passwd and a verbatim hark.acl.

    ``certs/`` holds ``ca``, ``server`` (127.0.0.1 and localhost), ``client`` (signed by
    ``ca``) and ``rogue-client`` (signed by another CA, ``rogue-ca``), each ``.crt`` + ``.key``.
    """
    etc = tmp_path_factory.mktemp("etc-mosquitto")
    certs = etc / "certs"
    certs.mkdir()
    _make_ca("ca", certs)
    _make_ca("rogue-ca", certs)
    _make_leaf("server", "localhost", "ca", certs, "subjectAltName=IP:127.0.0.1,DNS:localhost\n"
               "keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth")
    for name, ca in (("client", "ca"), ("rogue-client", "rogue-ca")):
        _make_leaf(name, f"hark test {name}", ca, certs,
                   "keyUsage=critical,digitalSignature\nextendedKeyUsage=clientAuth")
    for i, (user, password) in enumerate(PASSWORDS.items()):
        _run("mosquitto_passwd", *(["-c"] if i == 0 else []), "-b", "passwd", user, password,
             cwd=etc)
    shutil.copyfile(DEPLOY / "hark.acl", etc / "hark.acl")
    return etc


def example_broker_config(etc: Path, require_certificate: bool = False) -> list[str]:
    """The shipped ``mosquitto.conf`` as ``MosquittoBroker(listener_config=...)`` lines.

    Comments go; ``/etc/mosquitto/`` becomes ``etc``; the ``listener`` (the harness listens
    on its own port on 127.0.0.1), ``log_dest``, ``pid_file`` and ``persistence_location``
    (the broker's work folder) lines are left to the harness; ``require_certificate true``
    is appended on request (it is commented out in the example).
    """
    lines = []
    listeners = []
    for raw in (DEPLOY / "mosquitto.conf").read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        key = line.split()[0]
        if key == "listener":
            listeners.append(line)
        elif key not in ("log_dest", "pid_file", "persistence_location"):
            lines.append(line.replace("/etc/mosquitto/", f"{etc}/"))
    assert listeners == ["listener 8883"], f"expected one TLS listener on 8883: {listeners}"
    assert not [ln for ln in lines if re.search(r"\s/(etc|var|run)/", ln)], lines
    return lines + (["require_certificate true"] if require_certificate else [])


@pytest.fixture(scope="module")
def broker(etc):
    """The example broker: TLS, passwords, the ACL (client certificates optional).

    It logs at debug level too, which is where mosquitto reports a ``Denied PUBLISH``.
    """
    with MosquittoBroker(listener_config=example_broker_config(etc),
                         extra_config=["log_type debug"]) as b:
        yield b


@pytest.fixture(scope="module")
def mtls_broker(etc):
    """The example broker with ``require_certificate true`` (mutual TLS), debug log."""
    with MosquittoBroker(listener_config=example_broker_config(etc, True),
                         extra_config=["log_type debug"]) as b:
        yield b


# --------------------------------------------------------------------------------------------
# paho clients
# --------------------------------------------------------------------------------------------

def _client(etc: Path, user: str, password: str | None = None, tls: bool = True,
            cert: str | None = None, ca: str = "ca") -> mqtt.Client:
    """A paho client for ``user`` (its password from PASSWORDS unless given); with ``tls``
    trusting ``certs/<ca>.crt`` and, with ``cert``, presenting ``certs/<cert>.crt``/``.key``."""
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv311,
                         client_id=f"{user}-{time.monotonic_ns():x}")
    client.username_pw_set(user, PASSWORDS.get(user, "") if password is None else password)
    if tls:
        certs = etc / "certs"
        client.tls_set(ca_certs=str(certs / f"{ca}.crt"),
                       certfile=str(certs / f"{cert}.crt") if cert else None,
                       keyfile=str(certs / f"{cert}.key") if cert else None)
    return client


def try_connect(client: mqtt.Client, port: int, timeout: float = 5.0) -> str:
    """Connect once and say how it went.

    Returns
    -------
    str
        ``"Success"``, the broker's CONNACK refusal (e.g. ``"Not authorized"``), or the
        transport failure (``"SSLError: ..."``, ``"lost before CONNACK: ..."``).
    """
    outcome: queue.Queue[str] = queue.Queue()
    client.on_connect = lambda c, u, f, rc, p: outcome.put(str(rc))
    client.on_disconnect = lambda c, u, f, rc, p: outcome.put(f"lost before CONNACK: {rc}")
    try:
        client.connect(HOST, port, keepalive=10)
    except OSError as exc:  # ssl.SSLError is an OSError
        return f"{type(exc).__name__}: {exc}"
    client.loop_start()
    try:
        return outcome.get(timeout=timeout)
    except queue.Empty:
        return "no CONNACK"
    finally:
        client.disconnect()
        client.loop_stop()


@contextlib.contextmanager
def session(etc: Path, port: int, user: str, *subscriptions: str):
    """A connected client for ``user`` that records what it receives on ``subscriptions``.

    Yields
    ------
    (paho.mqtt.client.Client, list of (topic, payload))
    """
    client = _client(etc, user)
    received: list[tuple[str, bytes]] = []
    ready = threading.Event()
    client.on_connect = lambda c, u, f, rc, p: ready.set() if not rc.is_failure else None
    client.on_message = lambda c, u, m: received.append((m.topic, bytes(m.payload)))
    client.on_subscribe = lambda c, u, mid, rcs, p: ready.set()
    client.connect(HOST, port, keepalive=10)
    client.loop_start()
    try:
        assert ready.wait(5), f"{user} could not connect to {HOST}:{port}"
        for topic_filter in subscriptions:
            ready.clear()
            client.subscribe(topic_filter, qos=1)
            assert ready.wait(5), f"no SUBACK for {topic_filter}"
        yield client, received
    finally:
        client.disconnect()
        client.loop_stop()


def publish(client: mqtt.Client, topic: str, payload: str, retain: bool = False) -> None:
    """QoS 1 publish, waiting for the PUBACK (which mosquitto also sends for a denied one)."""
    info = client.publish(topic, payload, qos=1, retain=retain)
    info.wait_for_publish(5)
    assert info.is_published(), f"no PUBACK for {topic}"


def wait_for(received: list, topic: str, timeout: float = 5.0) -> None:
    """Wait until a message on ``topic`` is in ``received`` (from :func:`session`)."""
    deadline = time.monotonic() + timeout
    while not any(t == topic for t, _ in received):
        assert time.monotonic() < deadline, f"{topic} never arrived; got {received}"
        time.sleep(0.02)


# --------------------------------------------------------------------------------------------
# TLS and passwords
# --------------------------------------------------------------------------------------------

def test_tls_and_right_password_connect(etc, broker):
    assert broker.tls and broker.url.startswith("mqtts://")
    assert try_connect(_client(etc, "press-3"), broker.port) == "Success"
    # The server certificate is valid for the name localhost too (hostname checked).
    client = _client(etc, "press-3")
    client.connect("localhost", broker.port)
    client.disconnect()


@pytest.mark.parametrize("user, password", [("press-3", "wrong"), ("press-3", PASSWORDS["press-4"]),
                                            ("nobody", "x")])
def test_wrong_password_or_user_is_refused(etc, broker, user, password):
    assert try_connect(_client(etc, user, password), broker.port) == "Not authorized"


def test_anonymous_is_refused(etc, broker):
    client = _client(etc, "press-3")
    client.username_pw_set(None)
    assert try_connect(client, broker.port) == "Not authorized"


def test_plain_tcp_to_tls_port_fails(etc, broker):
    outcome = try_connect(_client(etc, "press-3", tls=False), broker.port)
    assert outcome.startswith("lost before CONNACK"), outcome


def test_untrusted_server_certificate_is_rejected_by_the_client(etc, broker):
    outcome = try_connect(_client(etc, "press-3", ca="rogue-ca"), broker.port)
    assert "CERTIFICATE_VERIFY_FAILED" in outcome, outcome


def test_require_certificate(etc, mtls_broker):
    """``require_certificate true``: only a certificate from our CA plus the password get in."""
    port = mtls_broker.port
    assert try_connect(_client(etc, "press-3", cert="client"), port) == "Success"
    assert try_connect(_client(etc, "press-3", "wrong", cert="client"), port) == "Not authorized"
    for cert, why in ((None, "peer did not return a certificate"),
                      ("rogue-client", "certificate verify failed")):
        outcome = try_connect(_client(etc, "press-3", cert=cert), port)
        assert outcome.startswith(("SSLError", "lost before CONNACK")), (cert, outcome)
        assert why in mtls_broker.log_text()


def test_retained_config_survives_a_broker_restart(etc):
    """The example turns persistence on: a config flashed over MQTT outlives a restart."""
    with MosquittoBroker(listener_config=example_broker_config(etc)) as b:
        with session(etc, b.port, "operator") as (operator, _):
            publish(operator, f"{NODE}/config", "flashed", retain=True)
        b.restart()
        with session(etc, b.port, "press-3", f"{NODE}/config") as (_, got):
            wait_for(got, f"{NODE}/config")
    assert got == [(f"{NODE}/config", b"flashed")]


# --------------------------------------------------------------------------------------------
# the ACL
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("topic", [
    f"{NODE}/status", f"{NODE}/state", f"{NODE}/heartbeat", f"{NODE}/event/anomaly",
    f"{NODE}/event/keyword", f"{NODE}/event/health", f"{NODE}/reply",
    "hark/plant-b/press-3/event/anomaly",  # another site, same node id: accepted (see hark.acl)
    "homeassistant/binary_sensor/press-3/anomaly/config",
    "homeassistant/event/press-3/keyword/config",
])
def test_node_may_publish_its_own_topics(etc, broker, topic):
    with session(etc, broker.port, "operator", "hark/#", "homeassistant/#") as (_, seen), \
            session(etc, broker.port, "press-3") as (node, _):
        publish(node, topic, "x")
        wait_for(seen, topic)


def test_node_may_not_publish_elsewhere(etc, broker):
    forbidden = [f"{OTHER}/event/anomaly", f"{OTHER}/status", "hark/plant-a/press-30/status",
                 f"{NODE}/cmd/recalibrate", f"{NODE}/config", "other/topic",
                 "homeassistant/binary_sensor/press-4/anomaly/config",
                 "homeassistant/binary_sensor/press-3/anomaly/state", "homeassistant/status"]
    marker = f"{NODE}/event/anomaly"
    with session(etc, broker.port, "operator", "#") as (_, seen), \
            session(etc, broker.port, "press-3") as (node, _):
        publish(node, marker, "first")
        wait_for(seen, marker)  # the operator does receive what press-3 may publish
        for topic in forbidden:
            publish(node, topic, "forged", retain=True)
        publish(node, marker, "last")
        deadline = time.monotonic() + 5
        while [p for _, p in seen].count(b"last") == 0 and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(0.2)
    assert seen == [(marker, b"first"), (marker, b"last")]
    denied = re.findall(r"Denied PUBLISH from press-3-\w+ \(.*?'([^']+)'", broker.log_text())
    assert set(forbidden) <= set(denied), denied


def test_node_receives_only_its_own_commands_and_config(etc):
    # A broker of its own: the retained configs must not reach the node tests below.
    with MosquittoBroker(listener_config=example_broker_config(etc)) as b:
        with session(etc, b.port, "press-3", f"{NODE}/cmd/#", f"{NODE}/config",
                     f"{OTHER}/cmd/#", f"{OTHER}/config", "hark/#") as (_, got), \
                session(etc, b.port, "operator") as (operator, _):
            for topic in (f"{OTHER}/cmd/recalibrate", f"{OTHER}/config",
                          f"{NODE}/cmd/recalibrate", f"{NODE}/config"):
                publish(operator, topic, "{}", retain=topic.endswith("config"))
            wait_for(got, f"{NODE}/config")
            time.sleep(0.2)
        assert sorted({t for t, _ in got}) == [f"{NODE}/cmd/recalibrate", f"{NODE}/config"], got
        # The retained config of press-4 is not handed to press-3 on subscribe either.
        with session(etc, b.port, "press-3", f"{OTHER}/config", f"{NODE}/config") as (_, got):
            wait_for(got, f"{NODE}/config")
            time.sleep(0.2)
    assert [t for t, _ in got] == [f"{NODE}/config"]


# --------------------------------------------------------------------------------------------
# the real node, over TLS with a password
# --------------------------------------------------------------------------------------------

def _node_config(tmp: Path, etc: Path, port: int, calibration: Path, password: str,
                 realtime: bool = False, client_cert: bool = False) -> Path:
    """A test node config pointed at the example broker as press-3 at plant-a, replaying
    files (at real-time speed with ``realtime``: the node is still busy 20 s later), with
    the client certificate ``certs/client.crt`` if ``client_cert``."""
    (tmp / "mqtt-password").write_text(password + "\n")
    tls = {"enabled": True, "ca_file": str(etc / "certs" / "ca.crt")}
    if client_cert:
        tls.update(cert_file=str(etc / "certs" / "client.crt"),
                   key_file=str(etc / "certs" / "client.key"))
    return update_config(node_config(tmp, port, calibration),
                         node={"id": "press-3", "site": "plant-a"},
                         mqtt={"host": HOST, "reconnect_max_seconds": 1, "username": "press-3",
                               "password_file": str(tmp / "mqtt-password"), "tls": tls},
                         audio={"realtime": realtime})


def _start_node(cfg: Path) -> NodeProcess:
    """``python -m edge run`` replaying the anomalous demo clips."""
    return NodeProcess(cfg, args=["--replay", *map(str, ANOMALY)])


def operator_collector(etc: Path, port: int, client_cert: bool) -> MqttCollector:
    """An :class:`MqttCollector` on ``#`` logged in as the operator over TLS (presenting
    ``certs/client.crt`` if ``client_cert``)."""
    col = MqttCollector(HOST, port, "#")
    col.client.username_pw_set("operator", PASSWORDS["operator"])
    certs = etc / "certs"
    col.client.tls_set(ca_certs=str(certs / "ca.crt"),
                       certfile=str(certs / "client.crt") if client_cert else None,
                       keyfile=str(certs / "client.key") if client_cert else None)
    return col


@pytest.mark.e2e
@pytest.mark.parametrize("mutual_tls", [False, True], ids=["password", "password+certificate"])
def test_node_over_tls_with_password(request, tmp_path, etc, calibration_file, mutual_tls):
    """press-3 connects with TLS + password (+ its certificate where the broker requires
    one), and what it publishes passes the ACL."""
    broker = request.getfixturevalue("mtls_broker" if mutual_tls else "broker")
    cfg = _node_config(tmp_path, etc, broker.port, calibration_file, PASSWORDS["press-3"],
                       client_cert=mutual_tls)
    with operator_collector(etc, broker.port, mutual_tls) as col:
        node = _start_node(cfg)
        try:
            rc = node.proc.wait(timeout=90)
        finally:
            node.stop()
        text = node.log()
        assert rc == 0, text[-3000:]
        col.wait_for(lambda m: m.payload == b"online", topic_filter=f"{NODE}/status")
        col.wait_for(lambda m: m.payload == b"offline", topic_filter=f"{NODE}/status")
        col.wait_for(topic_filter=f"{NODE}/state")
        col.wait_for(topic_filter="homeassistant/+/press-3/+/config")
        events = [m.json() for m in col.messages(f"{NODE}/event/anomaly")]
    assert events and [e["seq"] for e in events] == list(range(1, len(events) + 1)), col.summary()
    assert all(e["node"] == "press-3" for e in events)
    # Only user press-3 may write these topics; the broker log names it too.  And the
    # broker denied nothing the node published: the ACL covers the node's real topics.
    broker_log = broker.log_text()
    assert re.search(r"as hark-plant-a-press-3 \(.*u'press-3'\)", broker_log)
    assert "Denied PUBLISH from hark-plant-a-press-3" not in broker_log
    assert PASSWORDS["press-3"] not in text


@pytest.mark.e2e
def test_node_with_wrong_password_keeps_running_and_says_why(tmp_path, etc, broker,
                                                             calibration_file):
    """Refused: the node logs why and retries, and the password never shows in its log."""
    wrong = "not-the-Password-4711"
    # Real-time replay: stopped mid-replay, the node gives the broker 5 s, not 30 s.
    cfg = _node_config(tmp_path, etc, broker.port, calibration_file, wrong, realtime=True)
    node = _start_node(cfg)
    try:
        node.wait_log("Not authorized", 60)
        time.sleep(1.5)  # a retry later it is still there
        assert node.proc.poll() is None, node.log()
    finally:
        node.stop(timeout=60)
    text = node.log()
    assert wrong not in text, "the password leaked into the node's log"
    assert "refused" in text.lower(), text[-3000:]
