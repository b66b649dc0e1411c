"""A node on a factory floor: broker outages, SIGKILL, commands, configs flashed over MQTT,
corrupted files and Home Assistant discovery. Real mosquitto, the real node process, real
recordings; nothing mocked.
"""
from __future__ import annotations

import hashlib
import signal
import time

import pytest
import yaml

from demo.broker import MosquittoBroker, free_port
from demo.collector import MqttCollector, mqtt_publish
from demo.tools import require_tools
from demo.virtual_mic import VirtualMicrophone
from nodeproc import ANOMALY, CAL_CLIPS, NORMAL, NodeProcess, _ts, node_config, update_config

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

ROOT_TOPIC = "hark/default/test-node"


@pytest.fixture(scope="module", autouse=True)
def _tools():
    missing = require_tools(audio=False)
    if missing:
        pytest.fail("these tests need: " + ", ".join(missing) + " (make setup installs them)")


def _delivered(col: MqttCollector, kind: str = "anomaly") -> list[dict]:
    return [m.json() for m in col.messages(f"{ROOT_TOPIC}/event/{kind}")]


def _assert_complete_in_order(events: list[dict], expected: list[int]) -> int:
    """Every expected seq arrived, first arrivals in order; returns the duplicate count
    (at-least-once delivery may repeat an event whose acknowledgement was lost)."""
    seqs = [e["seq"] for e in events]
    first = list(dict.fromkeys(seqs))
    assert first == expected, f"delivered {seqs}, expected {expected}"
    return len(seqs) - len(first)


def test_broker_restart_mid_stream_loses_nothing(tmp_path, calibration_file):
    """The broker goes down for ~8 s while the node streams in real time: every window's
    event arrives, in order, those made during the outage after it.

    The broker keeps persistence and the collector a persistent session, as in production:
    an event the broker acknowledged just before it stopped (so the node deleted it from its
    spool) but had not yet passed on reaches the collector after the restart. Without them,
    that event would be lost in the broker, not in the node (it happened once in a fresh
    clone on 2026-12-01: seq 4 of 21 missing)."""
    with MosquittoBroker(listener_config=["allow_anonymous true", "persistence true"]) as broker, \
            MqttCollector(broker.host, broker.port, "hark/#", clean_session=False) as col:
        cfg = update_config(node_config(tmp_path, broker.port, calibration_file, hop_seconds=0.5),
                   audio={"realtime": True})
        node = NodeProcess(cfg, args=["--replay", *map(str, NORMAL)])  # 20 s of real fan
        try:
            col.wait_for(topic_filter=f"{ROOT_TOPIC}/event/anomaly", timeout=60)
            # An anonymous broker connection: commands are refused, saying why.
            r = Operator(broker, col).send("cmd/reload", b"{}")
            assert r["status"] == "rejected" and "authenticated" in r["message"], r
            time.sleep(1.0)
            col.clear_subscribed()
            down = time.time()
            broker.stop()
            time.sleep(8.0)
            broker.start()
            up = time.time()
            assert col.wait_subscribed(20)
            assert node.proc.wait(timeout=90) == 0, node.log()[-3000:]
        finally:
            node.stop()
        time.sleep(0.5)
    events = _delivered(col)
    n = 1 + int((20 - 10) / 0.5)  # windows in 20 s of audio, hop 0.5 s
    dups = _assert_complete_in_order(events, list(range(1, n + 1)))
    during = [e for e in events if down + 0.5 < _ts(e["ts"]) < up - 0.5]
    assert len(during) >= 10, "the outage should have spanned ~16 windows"
    assert "lost the broker" in node.log() and "spooled" in node.log()
    print(f"broker restart: {n} events, {len(during)} made during the 8 s outage, "
          f"{dups} duplicate(s), none lost, order kept")


def test_sigkill_then_restart_delivers_spooled_events(tmp_path, calibration_file):
    """Broker unreachable: the node spools 16 events on disk and is killed with SIGKILL;
    restarted once the broker is back, it delivers them, in order, before its new ones."""
    port = free_port()
    cfg = node_config(tmp_path, port, calibration_file)
    node = NodeProcess(cfg, args=["--replay", *map(str, NORMAL + ANOMALY)])
    try:
        node.wait_log("window 16", 90)  # every window scored and spooled
        time.sleep(0.5)
    finally:
        node.stop(signal.SIGKILL)
    assert node.proc.returncode == -signal.SIGKILL
    with MosquittoBroker(port=port) as broker, \
            MqttCollector(broker.host, broker.port, "hark/#") as col:
        again = NodeProcess(cfg, args=["--replay", str(NORMAL[0])])  # 10 s: one more window
        try:
            assert again.proc.wait(timeout=90) == 0, again.log()[-3000:]
        finally:
            again.stop()
        time.sleep(0.5)
    assert "16 event(s) spooled from before" in again.log()
    events = _delivered(col)
    dups = _assert_complete_in_order(events, list(range(1, 18)))
    assert dups == 0
    assert events[-1]["window"]["seconds"] == 10


class Operator:
    """Sends commands and configs to the node and reads its replies, one at a time."""

    def __init__(self, broker, col):
        self.broker, self.col = broker, col

    def replies(self) -> list[dict]:
        return [m.json() for m in self.col.messages(f"{ROOT_TOPIC}/reply")]

    def send(self, sub: str, payload: bytes, retain: bool = False, timeout: float = 30) -> dict:
        """Publish on ``<root>/<sub>`` and return the node's next reply."""
        k = len(self.replies())
        mqtt_publish(self.broker.host, self.broker.port, f"{ROOT_TOPIC}/{sub}", payload,
                     retain=retain)
        self.col.wait_for(topic_filter=f"{ROOT_TOPIC}/reply", count=k + 1, timeout=timeout)
        return self.replies()[k]

    def wait_reply(self, timeout: float = 30, **match) -> dict:
        found = self.col.wait_for(lambda m: all(m.json().get(k) == v for k, v in match.items()),
                                  topic_filter=f"{ROOT_TOPIC}/reply", timeout=timeout)
        return found[-1].json()

    def state(self) -> dict:
        return self.col.messages(f"{ROOT_TOPIC}/state")[-1].json()

    def more_events(self, n: int = 2, timeout: float = 15, **match) -> None:
        """Wait for ``n`` more anomaly events (matching ``match``): the node runs on."""
        sel = lambda: [e for e in _delivered(self.col)  # noqa: E731
                       if all(e.get(k) == v for k, v in match.items())]
        k = len(sel())
        self.col.wait_for(lambda m: all(m.json().get(k2) == v for k2, v in match.items()),
                          topic_filter=f"{ROOT_TOPIC}/event/anomaly", count=k + n,
                          timeout=timeout)


def test_commands_reload_and_flashed_configs(tmp_path, calibration_file):
    """A running node takes commands and configs over MQTT: malformed or unknown ones are
    rejected with a message on ``reply`` and the node keeps running; a corrupted
    calibration or config is refused and the previous good one kept; a recalibration swaps
    in a new calibration; a flashed config is applied atomically or rolled back."""
    own_cal = tmp_path / "asd_calibration.npz"  # recalibration writes it: not the shared one
    own_cal.write_bytes(calibration_file.read_bytes())
    with MosquittoBroker() as broker, MqttCollector(broker.host, broker.port, "#") as col:
        cfg = update_config(node_config(tmp_path, broker.port, own_cal, hop_seconds=1.0),
                   audio={"realtime": True}, mqtt={"anonymous_commands": True})
        good_cfg = cfg.read_bytes()
        op = Operator(broker, col)
        mqtt_publish(broker.host, broker.port, f"{ROOT_TOPIC}/cmd/recalibrate",
                     b'{"request_id": "stale", "seconds": 30}', retain=True)
        node = NodeProcess(cfg, args=["--replay", *map(str, CAL_CLIPS + NORMAL)])  # 80 s
        try:
            col.wait_for(topic_filter=f"{ROOT_TOPIC}/event/anomaly", timeout=60)
            cal_id = _delivered(col)[0]["calibration_id"]
            sha0 = op.state()["config_sha256"]
            assert sha0 == hashlib.sha256(good_cfg).hexdigest()

            # Home Assistant discovery, retained, with availability on the status topic.
            disc = col.wait_for(topic_filter="homeassistant/+/test-node/+/config", count=10,
                                timeout=10)
            docs = {"/".join(m.topic.split("/")[1:4:2]): m for m in disc}
            anomaly = docs["binary_sensor/anomaly"].json()
            assert anomaly["availability_topic"] == f"{ROOT_TOPIC}/status"
            assert anomaly["payload_not_available"] == "offline"
            assert anomaly["state_topic"] == f"{ROOT_TOPIC}/event/anomaly"
            assert anomaly["device"]["identifiers"] == ["hark_default_test-node"]
            assert docs["sensor/level"].json()["entity_category"] == "diagnostic"
            assert docs["event/keyword"].payload == b""  # no keywords enrolled: no entity

            # Malformed and unknown commands: rejected with a message, node keeps running.
            for sub, payload, words in [
                    ("cmd/frobnicate", b'{"request_id": "r0"}', "unknown command 'frobnicate'"),
                    ("cmd/reload", b"{not json", "not JSON"),
                    ("cmd/recalibrate", b'{"seconds": "ten"}', "seconds"),
                    ("cmd/recalibrate", b'{"seconds": 5}', "at least twice"),
                    ("cmd/reload/now", b"{}", "unknown command 'reload/now'"),
                    ("cmd/reload", b'{"schema": 1, "force": true}', "force: unknown key"),
                    ("cmd/reload", b"\xff\x00", "not UTF-8")]:
                r = op.send(sub, payload)
                assert r["status"] == "rejected" and words in r["message"], (sub, r)
            assert op.wait_reply(request_id="r0")["status"] == "rejected"
            # The retained command left before the node started was refused, not run.
            r = op.wait_reply(request_id="stale")
            assert r["status"] == "rejected" and "must not be retained" in r["message"], r
            mqtt_publish(broker.host, broker.port, f"{ROOT_TOPIC}/cmd/recalibrate", b"",
                         retain=True)  # cleared; the node ignores the empty message
            op.more_events()

            # A corrupted calibration file: reload refuses it, scoring goes on with ours.
            good_cal = own_cal.read_bytes()
            broken = tmp_path / "broken.npz"
            broken.write_bytes(good_cal[: len(good_cal) // 2])
            update_config(cfg, asd={"calibration": str(broken)})
            r = op.send("cmd/reload", b'{"request_id": "r2"}')
            assert r["status"] == "rejected" and "broken.npz" in r["message"], r
            # A corrupted config file (a typo): refused, the field named.
            cfg.write_bytes(good_cfg.replace(b"hop_seconds: 1.0", b"hop_secnds: 1.0"))
            r = op.send("cmd/reload", b'{"request_id": "r3"}')
            assert r["status"] == "rejected" and "asd.hop_secnds: unknown key" in r["message"], r
            cfg.write_bytes(good_cfg)
            op.more_events()
            assert {e["calibration_id"] for e in _delivered(col)} == {cal_id}
            assert op.state()["config_sha256"] == sha0

            # Recalibrate on 20 s of the live stream; scoring goes on meanwhile.
            r = op.send("cmd/recalibrate", b'{"request_id": "r4", "seconds": 20}')
            assert r["status"] == "accepted" and r["seconds"] == 20, r
            op.more_events(calibration_id=cal_id)
            done = op.wait_reply(request_id="r4", status="done", timeout=40)
            new_id = done["calibration_id"]
            assert new_id != cal_id
            op.more_events(1, calibration_id=new_id)

            # A config flashed over MQTT (retained): applied, written, its hash in state.
            doc = yaml.safe_load(good_cfg)
            doc["mqtt"]["heartbeat_seconds"] = 2
            doc["asd"]["calibration"] = str(tmp_path / "again.npz")
            (tmp_path / "again.npz").write_bytes(good_cal)
            new_raw = yaml.safe_dump(doc).encode()
            new_sha = hashlib.sha256(new_raw).hexdigest()
            r = op.send("config", new_raw, retain=True, timeout=40)
            assert r["status"] == "done" and r["config_sha256"] == new_sha, r
            assert "mqtt" in r["message"] and "asd" in r["message"], r
            col.wait_for(lambda m: m.json()["config_sha256"] == new_sha,
                         topic_filter=f"{ROOT_TOPIC}/state", timeout=10)
            assert cfg.read_bytes() == new_raw
            assert cfg.with_name(cfg.name + ".prev").read_bytes() == good_cfg
            op.more_events(calibration_id=cal_id)  # the flashed config's calibration

            # An invalid flashed config: rejected with the field; file and hash unchanged.
            bad_raw = new_raw.replace(b"qos: 1", b"qos: 7")
            r = op.send("config", bad_raw, retain=True)
            assert r["status"] == "rejected" and "mqtt.qos" in r["message"], r
            assert r["config_sha256"] == hashlib.sha256(bad_raw).hexdigest()
            assert cfg.read_bytes() == new_raw

            # Broker settings that cannot connect: rolled back, still connected and running.
            doc["mqtt"]["port"] = free_port()
            r = op.send("config", yaml.safe_dump(doc).encode(), retain=True, timeout=60)
            assert r["status"] == "failed" and "rolled back" in r["message"], r
            assert cfg.read_bytes() == new_raw
            op.more_events()
            assert op.state()["config_sha256"] == new_sha
            assert node.proc.poll() is None
        finally:
            rc = node.stop()
        assert rc == 0, node.log()[-3000:]
    events = _delivered(col)
    assert _assert_complete_in_order(events, list(range(1, events[-1]["seq"] + 1))) == 0


def _health(col) -> list[tuple[str, bool]]:
    return [(e["kind"], e["active"]) for e in _delivered(col, "health")]


def test_audio_faults_are_health_events(tmp_path, calibration_file):
    """Clipping and sustained silence in a replay, and a microphone lost mid-stream and
    reopened, all reach MQTT as ``event/health``; the node keeps running throughout."""
    import numpy as np
    import soundfile as sf

    loud = np.clip(sf.read(NORMAL[0], dtype="float32")[0] * 60, -1, 1)[: 16000 * 4]
    scene = tmp_path / "clipping_then_silence.wav"
    sf.write(scene, np.concatenate([loud, np.zeros(16000 * 4, np.float32)]), 16000)
    with MosquittoBroker() as broker, MqttCollector(broker.host, broker.port, "hark/#") as col:
        cfg = update_config(node_config(tmp_path, broker.port, calibration_file),
                   audio={"silence_seconds": 2, "clipping_seconds": 2})
        node = NodeProcess(cfg, args=["--replay", str(scene)])
        assert node.proc.wait(timeout=90) == 0, node.log()[-3000:]
        node.stop()
        health = _health(col)  # clipping ends and silence begins in the same second
        assert health[0] == ("clipping", True), health
        assert sorted(health[1:]) == [("clipping", False), ("silence", True)], health
        clip = _delivered(col, "health")[0]
        assert clip["detail"]["clipped_fraction"] > 0.001 and "clipping" in clip["message"]

    with MosquittoBroker() as broker, VirtualMicrophone() as vm, \
            MqttCollector(broker.host, broker.port, "hark/#") as col:
        cfg = update_config(node_config(tmp_path, broker.port, calibration_file),
                   audio={"reopen_max_seconds": 2}, mqtt={"anonymous_commands": True})
        node = NodeProcess(cfg, vm.env)
        try:
            col.wait_for(lambda m: m.payload == b"online", topic_filter=f"{ROOT_TOPIC}/status",
                         timeout=60)
            vm.play(NORMAL[:1], wait=False)
            time.sleep(2)
            vm.kill()
            lost = col.wait_for(lambda m: m.json()["active"], timeout=20,
                                topic_filter=f"{ROOT_TOPIC}/event/health")[0].json()
            assert lost["kind"] == "device" and "lost" in lost["message"], lost
            n = len(col.messages(f"{ROOT_TOPIC}/heartbeat"))
            col.wait_for(topic_filter=f"{ROOT_TOPIC}/heartbeat", count=n + 2, timeout=10)
            assert _state(col)["audio"]["faults"] == ["device"]
            vm.start()
            back = col.wait_for(lambda m: not m.json()["active"], timeout=30,
                                topic_filter=f"{ROOT_TOPIC}/event/health")[0].json()
            assert back["kind"] == "device" and "reopened" in back["message"], back
            vm.play(NORMAL + ANOMALY, wait=False)
            col.wait_for(topic_filter=f"{ROOT_TOPIC}/event/anomaly", timeout=30)

            # A reload that names a microphone that is not there: refused, the node goes on
            # with its device; one that changes the capture block size: the device is reopened.
            op = Operator(broker, col)
            update_config(cfg, audio={"device": "no-such-microphone"})
            r = op.send("cmd/reload", b"{}")
            assert r["status"] == "rejected" and "no-such-microphone" in r["message"], r
            op.more_events(1)
            update_config(cfg, audio={"device": "pulse", "block_seconds": 0.05})
            r = op.send("cmd/reload", b"{}")
            assert r["status"] == "done" and "audio" in r["message"], r
            op.more_events(1, timeout=20)
            assert node.proc.poll() is None
        finally:
            rc = node.stop()
        assert rc == 0, node.log()[-3000:]
    assert "reopen attempt" in node.log()


def _state(col) -> dict:
    return col.messages(f"{ROOT_TOPIC}/state")[-1].json()
