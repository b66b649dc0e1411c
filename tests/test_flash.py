"""``python -m firmware_config flash``: render, hash and deliver a node config.

Real targets only: local folders and files, a private ``sshd`` on a loopback port (keys made
in the test) and a private mosquitto; the command runs as a subprocess, as an installer
runs it.
"""
from __future__ import annotations

import hashlib
import json
import os
import pwd
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

from demo.broker import MosquittoBroker, free_port
from demo.collector import MqttCollector, mqtt_publish
from firmware_config.flash import config_hash, render
from firmware_config.schema import load_config, parse_config_text

ROOT = Path(__file__).resolve().parent.parent
SSHD = shutil.which("sshd") or "/usr/sbin/sshd"

SITE_CONFIG = """\
# an installer's site file: only what differs from the defaults
node:
  id: press-3
  site: plant-a
mqtt:
  host: broker.plant-a.example
asd:
  hop_seconds: 1
  threshold: {method: mst-iqr, params: {beta: 0.5}}
audio:
  files: [clips/a.flac]
"""


def write_config(tmp: Path, text: str = SITE_CONFIG, name: str = "site.yaml", **node) -> Path:
    doc = yaml.safe_load(text)
    doc["node"].update(node)
    path = tmp / name
    path.write_text(text if not node else yaml.safe_dump(doc, sort_keys=False))
    return path


def run_cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "firmware_config", "flash", *map(str, args)],
                          cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def printed_sha256(stdout: str) -> str:
    return next(line.split()[1] for line in stdout.splitlines() if line.startswith("sha256 "))


# -- render ---------------------------------------------------------------------------------
def test_render_is_canonical_deterministic_and_idempotent(tmp_path):
    src = write_config(tmp_path)
    cfg = load_config(src)
    rendered = render(cfg, str(src))
    assert rendered == render(load_config(src), "elsewhere/site.yaml")     # no timestamp, no dir
    assert rendered.startswith(b"# hark node config, rendered by python -m firmware_config "
                               b"flash from site.yaml;")
    again = parse_config_text(rendered, "rendered", tmp_path)               # validates
    assert render(again, "site.yaml") == rendered                            # idempotent
    assert again.model_dump() == cfg.model_dump()
    doc = yaml.safe_load(rendered)
    assert doc["mqtt"]["port"] == 1883 and doc["mqtt"]["prefix"] == "hark"   # defaults filled in
    assert doc["asd"]["window_seconds"] == 10.0 and doc["asd"]["hop_seconds"] == 1.0
    assert doc["kws"]["segment_hop"] is None and doc["logging"]["level"] == "INFO"
    assert doc["asd"]["threshold"]["params"] == {"beta": 0.5}
    assert doc["spool"]["path"] == "../var/spool.sqlite"                    # relative, as written
    assert doc["audio"]["files"] == ["clips/a.flac"]
    assert list(doc)[:3] == ["schema", "node", "mqtt"]                       # schema order
    # The hash the node reports once it runs this file.
    assert config_hash(rendered) == hashlib.sha256(rendered).hexdigest() == again.sha256
    shipped = load_config(ROOT / "firmware_config" / "default.yaml")
    assert render(parse_config_text(render(shipped, "default.yaml")), "default.yaml") == \
        render(shipped, "default.yaml")


def test_invalid_config_exits_2_naming_the_field_and_writes_nothing(tmp_path):
    src = write_config(tmp_path, SITE_CONFIG.replace("hop_seconds: 1", "hop_seconds: -1"))
    empty = tmp_path / "sd"
    empty.mkdir()
    old = tmp_path / "node.yaml"
    old.write_bytes(b"# the node's current config\n")
    for target in (empty, old):
        r = run_cli(src, "--to", target)
        assert r.returncode == 2, r.stderr
        assert "asd.hop_seconds" in r.stderr and "greater than 0" in r.stderr
        assert "delivered" not in r.stdout
    assert list(empty.iterdir()) == []
    assert old.read_bytes() == b"# the node's current config\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["node.yaml", "sd", "site.yaml"]


# -- local folder / file -------------------------------------------------------------------
def test_dir_and_file_targets(tmp_path):
    src = write_config(tmp_path)
    sd = tmp_path / "sdcard"
    sd.mkdir()
    r = run_cli(src, "--to", sd)
    assert r.returncode == 0, r.stderr
    written = (sd / "node.yaml").read_bytes()
    assert written == render(load_config(src), str(src))
    assert printed_sha256(r.stdout) == hashlib.sha256(written).hexdigest()
    assert f"rendered {len(written)} bytes" in r.stdout
    assert f"verified {sd / 'node.yaml'}" in r.stdout
    assert load_config(sd / "node.yaml").sha256 == printed_sha256(r.stdout)

    (tmp_path / "etc").mkdir()
    target = tmp_path / "etc" / "hark.yml"
    target.write_text("old: config\n")
    r = run_cli(src, "--to", target, "--json")
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout)
    assert summary == {"source": str(src), "target": str(target), "sha256": config_hash(written),
                       "bytes": len(written), "verified": True}
    assert target.read_bytes() == written
    assert [p.name for p in target.parent.iterdir()] == ["hark.yml"]        # no temporary left
    assert "validated" in r.stderr                                          # progress on stderr


@pytest.mark.parametrize("target, extra, expected", [
    ("ftp://host/press-3", [], "mqtt://host[:port]/NODE_ID"),
    ("{tmp}/no-such-mount", [], "is not an existing folder"),
    ("{tmp}/no-such-dir/node.yaml", [], "does not exist"),
    ("{tmp}/site.yaml", [], "is the source file"),
    ("ssh://-oProxyCommand=touch%20x/etc/hark/", [], "expected ssh://"),
    ("ssh://pi@node/etc/hark;reboot/", [], "remote path must be absolute"),
    ("ssh://pi@node/etc/hark/", ["--ssh-option", "BatchMode"], "expected KEY=VALUE"),
    ("mqtt://localhost/press-3", ["--identity", "id_ed25519"], "only apply to ssh://"),
    ("{tmp}", ["--wait", "5"], "only apply to mqtt://"),
    ("mqtt://localhost/press-3", ["--ca-file", "ca.crt"], "need an mqtts:// target"),
    ("mqtt://localhost/press-3", ["--password-file", "pw"], "needs --username"),
])
def test_bad_target_or_option_exits_2(tmp_path, target, extra, expected):
    src = write_config(tmp_path)
    r = run_cli(src, "--to", target.format(tmp=tmp_path), *extra)
    assert r.returncode == 2, r.stderr
    assert expected in r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["site.yaml"]


# -- ssh against a real sshd ---------------------------------------------------------------
@pytest.fixture(scope="module")
def sshd(tmp_path_factory):
    """A private sshd on a loopback port that accepts one client key made here."""
    if not os.path.isfile(SSHD):
        pytest.skip("sshd not installed (Debian package openssh-server; make setup installs it)")
    tmp = tmp_path_factory.mktemp("sshd")
    for key in ("host_key", "client_key"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp / key)],
                       check=True)
    shutil.copy(tmp / "client_key.pub", tmp / "authorized_keys")
    (tmp / "sshd_config").write_text(f"""\
ListenAddress 127.0.0.1
HostKey {tmp}/host_key
AuthorizedKeysFile {tmp}/authorized_keys
StrictModes no
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
PidFile {tmp}/sshd.pid
Subsystem sftp internal-sftp
""")                                       # scp (OpenSSH >= 9) transfers over SFTP
    try:
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)     # privilege separation dir
    except PermissionError:
        pass                                                   # not root: sshd runs without
    port = free_port()
    log = open(tmp / "sshd.log", "wb")
    proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(tmp / "sshd_config"), "-p", str(port)],
                            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 10
        while b"Server listening" not in (tmp / "sshd.log").read_bytes():
            assert proc.poll() is None and time.monotonic() < deadline, \
                f"sshd did not start: {(tmp / 'sshd.log').read_text()}"
            time.sleep(0.05)
        remote = tmp / "remote"
        remote.mkdir()
        yield {"port": port, "tmp": tmp, "remote": remote,
               "user": pwd.getpwuid(os.getuid()).pw_name,
               "args": ["--identity", tmp / "client_key",
                        "--ssh-option", "StrictHostKeyChecking=no",
                        "--ssh-option", f"UserKnownHostsFile={tmp}/known_hosts"]}
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        log.close()
    assert proc.returncode is not None


def test_ssh_target_real_sshd(tmp_path, sshd):
    src = write_config(tmp_path)
    rendered = render(load_config(src), str(src))
    url = f"ssh://{sshd['user']}@127.0.0.1:{sshd['port']}{sshd['remote']}/"
    r = run_cli(src, "--to", url, *sshd["args"])
    assert r.returncode == 0, r.stderr
    assert (sshd["remote"] / "node.yaml").read_bytes() == rendered
    assert printed_sha256(r.stdout) == config_hash(rendered)
    assert f"verified {url}node.yaml (remote sha256sum matches)" in r.stdout
    # Relative paths resolve next to the remote file; what is not there is a warning.
    remote = sshd["remote"]
    assert (f"warning: audio.files[0]: 'clips/a.flac' will be {remote / 'clips' / 'a.flac'} "
            "on the target, which does not exist") in r.stderr, r.stderr
    assert "warning: asd.model: '../models/asd_default.tflite' " in r.stderr
    assert str(remote.parent / "models" / "asd_default.tflite") in r.stderr

    other = write_config(tmp_path, name="other.yaml", id="press-4")      # replace a named file
    r = run_cli(other, "--to", f"{url}hark.yaml", "--json", *sshd["args"])
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout)
    assert summary["verified"] is True and summary["target"] == f"{url}hark.yaml"
    assert (sshd["remote"] / "hark.yaml").read_bytes() == render(load_config(other), str(other))
    assert sorted(p.name for p in sshd["remote"].iterdir()) == ["hark.yaml", "node.yaml"]


def test_ssh_errors_are_clear_and_never_prompt(tmp_path, sshd):
    src = write_config(tmp_path)
    base = f"ssh://{sshd['user']}@127.0.0.1"
    t0 = time.monotonic()
    r = run_cli(src, "--to", f"{base}:{sshd['port']}{sshd['tmp']}/missing/", *sshd["args"])
    assert r.returncode == 1 and "scp" in r.stderr and "No such file or directory" in r.stderr

    closed = free_port()
    r = run_cli(src, "--to", f"{base}:{closed}{sshd['remote']}/", *sshd["args"])
    assert r.returncode == 1 and f"port {closed}: Connection refused" in r.stderr

    # No key: BatchMode=yes makes ssh fail at once instead of asking for a password.
    r = run_cli(src, "--to", f"{base}:{sshd['port']}{sshd['remote']}/",
                *sshd["args"][2:], "--ssh-option", "IdentityFile=/dev/null",
                "--ssh-option", "IdentitiesOnly=yes")
    assert r.returncode == 1 and "Permission denied" in r.stderr
    assert time.monotonic() - t0 < 20
    assert not (sshd["remote"] / "node.yaml").exists() or \
        (sshd["remote"] / "node.yaml").read_bytes().startswith(b"# hark node config")


# -- mqtt against a real mosquitto ---------------------------------------------------------
@pytest.fixture(scope="module")
def broker():
    with MosquittoBroker() as b:
        yield b


class FakeNode:
    """Stands in for the node's config handling: answers every retained ``<root>/config``
    with a retained ``state`` carrying its hash (apply) or a failed ``reply`` (reject)."""

    def __init__(self, broker, root: str, reject: str | None = None):
        import paho.mqtt.client as mqtt

        self.root, self.reject = root, reject
        self.subscribed = threading.Event()
        self.client = mqtt.Client(callback_api_version=mqtt.CallbackAPIVersion.VERSION2,
                                  client_id=f"fake-{root.replace('/', '-')}",
                                  protocol=mqtt.MQTTv311)
        self.client.on_connect = lambda c, u, f, rc, p: c.subscribe(f"{root}/config", qos=1)
        self.client.on_subscribe = lambda c, u, mid, rcs, p: self.subscribed.set()
        self.client.on_message = self._on_config
        self.client.connect(broker.host, broker.port)
        self.client.loop_start()
        assert self.subscribed.wait(10)

    def _on_config(self, client, userdata, msg) -> None:
        digest = hashlib.sha256(msg.payload).hexdigest()
        if self.reject:
            reply = {"command": "config", "config_sha256": digest, "status": "rejected",
                     "message": self.reject}
            client.publish(f"{self.root}/reply", json.dumps(reply), qos=1)
        else:
            client.publish(f"{self.root}/state", json.dumps({"config_sha256": digest}),
                           qos=1, retain=True)

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def test_mqtt_publishes_retained_config(tmp_path, broker):
    src = write_config(tmp_path, id="press-5")
    rendered = render(load_config(src), str(src))
    topic = "hark/plant-a/press-5/config"
    r = run_cli(src, "--to", f"mqtt://{broker.host}:{broker.port}/press-5", "--json")
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout)
    assert summary == {"source": str(src), "target": f"mqtt://{broker.host}:{broker.port}/{topic}",
                       "sha256": config_hash(rendered), "bytes": len(rendered),
                       "verified": False}
    assert "retained, QoS 1, acknowledged by the broker" in r.stderr
    with MqttCollector(broker.host, broker.port, topic) as late:          # subscribes afterwards
        (msg,) = late.wait_for(timeout=5)
    assert msg.payload == rendered and msg.retain


def test_mqtt_node_id_must_match_the_config(tmp_path, broker):
    src = write_config(tmp_path, id="press-6")
    r = run_cli(src, "--to", f"mqtt://{broker.host}:{broker.port}/press-7")
    assert r.returncode == 2
    assert "names node 'press-7' but the config is for node.id 'press-6'" in r.stderr
    with MqttCollector(broker.host, broker.port, "hark/+/+/config") as col:
        time.sleep(0.3)
        assert not [m for m in col.messages() if "press-6" in m.topic or "press-7" in m.topic]


def test_mqtt_wait_applied_rejected_and_timeout(tmp_path, broker):
    url = f"mqtt://{broker.host}:{broker.port}"
    src = write_config(tmp_path, id="press-8")
    node = FakeNode(broker, "hark/plant-a/press-8")
    try:
        r = run_cli(src, "--to", f"{url}/press-8", "--wait", "10")
    finally:
        node.stop()
    assert r.returncode == 0, r.stderr
    assert "verified: node hark/plant-a/press-8 runs it" in r.stdout

    src = write_config(tmp_path, name="bad-for-node.yaml", id="press-9")
    node = FakeNode(broker, "hark/plant-a/press-9", reject="audio.device: no input device 'hw:7'")
    try:
        r = run_cli(src, "--to", f"{url}/press-9", "--wait", "10")
    finally:
        node.stop()
    assert r.returncode == 1
    assert "node hark/plant-a/press-9 did not apply the config (rejected): audio.device: no " \
           "input device 'hw:7'" in r.stderr

    # The old retained state (another hash) does not count; nobody applies the new one.
    mqtt_publish(broker.host, broker.port, "hark/plant-a/press-10/state",
                 json.dumps({"config_sha256": "0" * 64}), retain=True)
    src = write_config(tmp_path, name="offline.yaml", id="press-10")
    t0 = time.monotonic()
    r = run_cli(src, "--to", f"{url}/press-10", "--wait", "1")
    assert r.returncode == 1 and "did not report config_sha256" in r.stderr
    assert time.monotonic() - t0 < 10


def test_mqtt_broker_unreachable(tmp_path):
    src = write_config(tmp_path)
    port = free_port()
    t0 = time.monotonic()
    r = run_cli(src, "--to", f"mqtt://127.0.0.1:{port}/press-3", timeout=30)
    assert r.returncode == 1
    assert f"cannot connect to MQTT broker 127.0.0.1:{port}" in r.stderr
    assert time.monotonic() - t0 < 8


def test_mqtt_password_is_used_and_never_printed(tmp_path):
    secret = "s3cret-Pa55word"
    passwd = tmp_path / "passwd"
    subprocess.run(["mosquitto_passwd", "-b", "-c", str(passwd), "operator", secret], check=True,
                   capture_output=True)
    (tmp_path / "right").write_text(secret + "\n")
    (tmp_path / "wrong").write_text("wrong-" + secret + "\n")
    src = write_config(tmp_path)
    with MosquittoBroker(extra_config=[f"password_file {passwd}"]) as b:
        url = f"mqtt://{b.host}:{b.port}/press-3"
        ok = run_cli(src, "--to", url, "--username", "operator",
                     "--password-file", tmp_path / "right")
        bad = run_cli(src, "--to", url, "--username", "operator",
                      "--password-file", tmp_path / "wrong")
    assert ok.returncode == 0, ok.stderr
    assert bad.returncode == 1 and "refused the connection: Not authorized" in bad.stderr
    for r in (ok, bad):
        assert secret not in r.stdout + r.stderr


def test_mqtts_verifies_the_broker_certificate(tmp_path):
    if shutil.which("openssl") is None:
        pytest.skip("openssl not installed (Debian package openssl; make setup installs it)")

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=tmp_path, check=True, capture_output=True)

    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"]
    openssl("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.crt", "-subj", "/CN=hark-ca",
            "-days", "1")
    openssl("req", *ec, "-keyout", "srv.key", "-out", "srv.csr", "-subj", "/CN=localhost")
    (tmp_path / "san").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    openssl("x509", "-req", "-in", "srv.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
            "-CAcreateserial", "-out", "srv.crt", "-days", "1", "-extfile", "san")
    src = write_config(tmp_path)
    tls_port = free_port()
    with MosquittoBroker(extra_config=[f"listener {tls_port} 127.0.0.1",
                                       f"cafile {tmp_path}/ca.crt",
                                       f"certfile {tmp_path}/srv.crt",
                                       f"keyfile {tmp_path}/srv.key"]) as b:
        url = f"mqtts://127.0.0.1:{tls_port}/press-3"
        ok = run_cli(src, "--to", url, "--ca-file", tmp_path / "ca.crt")
        untrusted = run_cli(src, "--to", url)                   # the system CAs do not know it
        with MqttCollector(b.host, b.port, "hark/plant-a/press-3/config") as col:
            (msg,) = col.wait_for(timeout=5)
    assert ok.returncode == 0, ok.stderr
    assert msg.retain and msg.payload == render(load_config(src), str(src))
    assert untrusted.returncode == 1 and "CERTIFICATE_VERIFY_FAILED" in untrusted.stderr
