"""End to end: real clips -> virtual microphone -> node -> real mosquitto -> events.

No mocks: a private mosquitto, a private PulseAudio null-sink microphone, the node and
the calibration tool as subprocesses, exactly as an installer would run them.
"""
from __future__ import annotations

import json
import signal
import time

import pytest
import yaml

from demo.broker import MosquittoBroker, free_port
from demo.collector import MqttCollector
from demo.tools import require_tools
from demo.virtual_mic import VirtualMicrophone
from nodeproc import ANOMALY, CAL_CLIPS, NORMAL, ROOT, NodeProcess, _ts, node_config, run_node

pytestmark = [pytest.mark.e2e]

EVENT_FIELDS = {"schema", "node", "site", "ts", "seq", "anomaly_score", "threshold", "decision",
                "anomalous", "window", "model_id", "calibration_id"}


@pytest.fixture(scope="module", autouse=True)
def _tools():
    missing = require_tools()
    if missing:
        pytest.fail("end-to-end tests need: " + ", ".join(missing) + " (make setup installs them)")


def test_microphone_to_mqtt(tmp_path, calibration_file, embedder):
    """Real normal then anomalous fan sound through the virtual mic; check every event."""
    with MosquittoBroker() as broker, VirtualMicrophone() as vm, \
            MqttCollector(broker.host, broker.port, "hark/#") as col:
        cfg = node_config(tmp_path, broker.port, calibration_file, hop_seconds=1.0)
        node = NodeProcess(cfg, vm.env)
        try:
            node.wait_log("running", 60)
            col.wait_for(lambda m: m.topic == "hark/default/test-node/status"
                         and m.payload == b"online", timeout=30)
            t0 = time.time()
            vm.play(NORMAL[:1] + ANOMALY[:1], wait=True)
            t_end = time.time()
            time.sleep(1.0)
        finally:
            rc = node.stop()
        assert rc == 0, node.log()[-3000:]
        col.wait_for(lambda m: m.topic.endswith("/status") and m.payload == b"offline", timeout=10)

        # A subscriber that arrives later still learns status and state (retained).
        with MqttCollector(broker.host, broker.port, "hark/default/test-node/+") as late:
            retained = late.wait_for(lambda m: m.retain, count=2, timeout=10)
        kinds = {m.topic.rsplit("/", 1)[1]: m for m in retained}
        assert kinds["status"].payload == b"offline"
        state = json.loads(kinds["state"].payload)
        assert state["models"]["asd"]["sha256"] == embedder.sha256

    events = [m.json() for m in col.messages("hark/default/test-node/event/anomaly")]
    assert len(events) >= 5, col.summary()
    cal_id = events[0]["calibration_id"]
    for ev in events:
        assert EVENT_FIELDS <= set(ev), ev
        assert ev["schema"] == 1 and ev["node"] == "test-node"
        assert ev["model_id"] == embedder.model_id
        assert ev["calibration_id"] == cal_id
        assert ev["anomalous"] == (ev["anomaly_score"] > ev["threshold"])
        assert ev["decision"] == ("anomalous" if ev["anomalous"] else "normal")
        assert _ts(ev["window"]["end"]) - _ts(ev["window"]["start"]) == pytest.approx(10, abs=0.01)
        assert ev["anomaly_score"] > 0.0  # exp(mean z) of the default views (edge.backend)
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    heartbeats = [m.json() for m in col.messages("hark/default/test-node/heartbeat")]
    assert heartbeats and heartbeats[-1]["level_dbfs"] > -60  # it heard the fan

    # Windows entirely inside one phase: anomalous sound scores higher than normal sound.
    t_switch = t0 + 10.0
    normal = [e for e in events if _ts(e["window"]["end"]) <= t_switch + 0.5]
    anomal = [e for e in events if _ts(e["window"]["start"]) >= t_switch - 0.5
              and _ts(e["window"]["end"]) <= t_end + 0.5]
    assert normal and anomal, [(e["window"], e["anomaly_score"]) for e in events]
    mean = lambda evs: sum(e["anomaly_score"] for e in evs) / len(evs)  # noqa: E731
    print(f"normal windows {len(normal)} mean {mean(normal):.5f}; "
          f"anomalous windows {len(anomal)} mean {mean(anomal):.5f}")
    assert mean(anomal) > mean(normal)
    assert any(e["anomalous"] for e in anomal)


def test_last_will_on_sigkill(tmp_path, calibration_file):
    """A node that dies without a goodbye is reported offline by the broker (Last Will)."""
    with MosquittoBroker() as broker, VirtualMicrophone() as vm, \
            MqttCollector(broker.host, broker.port, "hark/#") as col:
        node = NodeProcess(node_config(tmp_path, broker.port, calibration_file), vm.env)
        try:
            col.wait_for(lambda m: m.topic.endswith("/status") and m.payload == b"online",
                         timeout=60)
        finally:
            node.stop(signal.SIGKILL)
        msg = col.wait_for(lambda m: m.topic.endswith("/status") and m.payload == b"offline",
                           timeout=10)
        assert msg[0].topic == "hark/default/test-node/status"


def test_broker_unreachable_events_kept_until_it_comes(tmp_path, calibration_file):
    """Broker down at start: the node keeps running, logs its retries, and delivers every
    event in order once the broker is up."""
    port = free_port()
    cfg = node_config(tmp_path, port, calibration_file)
    node = NodeProcess(cfg, args=["--replay", *map(str, NORMAL + ANOMALY)])
    try:
        node.wait_log("unreachable", 30)
        node.wait_log("window 16", 60)  # all 16 windows scored while the broker is down
        assert node.proc.poll() is None
        with MosquittoBroker(port=port) as broker, \
                MqttCollector(broker.host, broker.port, "hark/#") as col:
            col.wait_for(topic_filter="hark/+/+/event/anomaly", count=16, timeout=30)
            assert node.proc.wait(timeout=30) == 0
        events = [m.json() for m in col.messages("hark/+/+/event/anomaly")]
        assert [e["seq"] for e in events] == list(range(1, 17))
        assert "retrying" in node.log()
    finally:
        node.stop()


def test_bad_model_calibration_audio_and_device(tmp_path, calibration_file):
    # Missing model.
    cfg = node_config(tmp_path, 1883, calibration_file)
    doc = yaml.safe_load(cfg.read_text())
    doc["asd"]["model"] = str(tmp_path / "nope.tflite")
    (tmp_path / "a.yaml").write_text(yaml.safe_dump(doc))
    r = run_node(tmp_path / "a.yaml")
    assert r.returncode == 1 and "model file not found" in r.stderr, r.stderr

    # A model that does not match its metadata (corrupted byte).
    bad = bytearray((ROOT / "models" / "asd_default.tflite").read_bytes())
    bad[len(bad) // 2] ^= 0xFF
    (tmp_path / "m.tflite").write_bytes(bytes(bad))
    (tmp_path / "m.json").write_text((ROOT / "models" / "asd_default.json").read_text())
    doc["asd"]["model"] = str(tmp_path / "m.tflite")
    (tmp_path / "b.yaml").write_text(yaml.safe_dump(doc))
    r = run_node(tmp_path / "b.yaml")
    assert r.returncode == 1 and "does not match its metadata" in r.stderr, r.stderr

    # A window length the model was not trained for.
    r = run_node(node_config(tmp_path, 1884, calibration_file, window_seconds=5.0, hop_seconds=1.0))
    assert r.returncode == 1 and "asd.window_seconds" in r.stderr, r.stderr

    # No calibration yet and auto-calibration off: says how to make one.
    r = run_node(node_config(tmp_path, 1885, tmp_path / "missing.npz", auto_calibration_seconds=0))
    assert r.returncode == 1 and "python -m calibration record" in r.stderr, r.stderr

    # Unreadable audio file: named in the error.
    junk = tmp_path / "junk.wav"
    junk.write_text("this is not audio")
    r = run_node(node_config(tmp_path, 1886, calibration_file), "--replay", str(junk))
    assert r.returncode == 1 and "junk.wav" in r.stderr, r.stderr

    # No such input device: the field, the value and how to list the inputs.
    doc = yaml.safe_load(node_config(tmp_path, 1887, calibration_file).read_text())
    doc["audio"]["device"] = "no-such-microphone"
    (tmp_path / "d.yaml").write_text(yaml.safe_dump(doc))
    r = run_node(tmp_path / "d.yaml")
    assert r.returncode == 1 and "audio.device" in r.stderr, r.stderr
    assert "'no-such-microphone'" in r.stderr and "python -m sounddevice" in r.stderr, r.stderr


def test_node_calibrates_itself_on_first_start(tmp_path, embedder):
    """No calibration: the node learns the first 60 s (real normal fan sound), writes the
    artifact, then scores what follows (normal, then anomalous)."""
    from edge.backend import Calibration

    cal = tmp_path / "auto.npz"
    with MosquittoBroker() as broker, MqttCollector(broker.host, broker.port, "hark/#") as col:
        cfg = node_config(tmp_path, broker.port, cal, auto_calibration_seconds=60.0)
        node = NodeProcess(cfg, args=["--replay", *map(str, CAL_CLIPS + NORMAL + ANOMALY)])
        assert node.proc.wait(timeout=120) == 0, node.log()[-3000:]
        node.stop()
    assert "learning normal operation for the first 60 s" in node.log()
    saved = Calibration.load(cal, embedder.sha256)
    assert saved.extra["n_windows"] == 26  # windows starting at 0, 2, ..., 50 s
    events = [m.json() for m in col.messages("hark/+/+/event/anomaly")]
    assert len(events) == 20  # windows starting at 52, 54, ..., 90 s (the stream is 100 s)
    assert {e["calibration_id"] for e in events} == {saved.calibration_id}
    states = [m.json() for m in col.messages("hark/+/+/state")]
    assert states[0]["status"] == "calibrating" and states[-2]["status"] == "online"
    assert states[-1]["status"] == "offline"  # the last state, after the replay ended
    first, last = events[:3], events[-3:]  # 52-66 s: normal audio; 88-100 s: anomalous
    mean = lambda evs: sum(e["anomaly_score"] for e in evs) / len(evs)  # noqa: E731
    assert mean(last) > mean(first)
