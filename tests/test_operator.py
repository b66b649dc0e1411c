"""What a newcomer and an operator hit: anonymous rejections that lose the request_id, a
reload during a replay, a missing microphone, the state left after a stop, replay times,
an auto-calibration that never finished, calibrations on too few clips, and the demo's
summary. Real mosquitto, the real node process and real recordings where a node runs.
"""
from __future__ import annotations

import itertools
import json
import time
import warnings

import pytest

from demo.broker import MosquittoBroker, free_port
from demo.collector import MqttCollector, MqttMessage, mqtt_publish
from demo.tools import require_tools
from nodeproc import ANOMALY, CAL_CLIPS, NORMAL, NodeProcess, _ts, node_config, update_config

ROOT_TOPIC = "hark/default/test-node"
REPLAY = NORMAL + ANOMALY[:1]  # 30 s of real fan sound: windows at 0, 2, ..., 20 s
N_WINDOWS = 11


@pytest.fixture(scope="module")
def node(tmp_path_factory, calibration_file):
    """A real node on an anonymous broker connection, not started; replies are collected."""
    from edge.audio import FileSource
    from edge.node import Node
    from firmware_config.schema import load_config

    cfg = load_config(node_config(tmp_path_factory.mktemp("op"), 1883, calibration_file))
    n = Node(cfg, source=FileSource(NORMAL[:1]))
    replies: list[dict] = []
    n.publisher.reply = replies.append
    yield n, replies
    n.spool.close()


def test_anonymous_rejection_echoes_the_request_id(node):
    """The README's own example on an anonymous connection: rejected, with its request_id."""
    n, replies = node
    assert n.cfg.mqtt.username is None and not n.cfg.mqtt.anonymous_commands
    for name, payload, rid in [
            ("recalibrate", b'{"request_id": "op-1", "seconds": 300}', "op-1"),
            ("reload", b'{"request_id": "op-2", "force": true}', "op-2"),  # invalid too
            ("frobnicate", b'{"request_id": "op-3"}', "op-3"),
            ("reload", b"{not json", None)]:
        k = len(replies)
        n.control.on_message(f"{n.cfg.topic_root}/cmd/{name}", payload, False)
        assert len(replies) == k + 1
        r = replies[-1]
        assert r["status"] == "rejected" and "authenticated" in r["message"], r
        assert r["command"] == name and r["request_id"] == rid, r


def test_no_input_device_names_the_setting(monkeypatch):
    """No input device at all, or none matching: the message names audio.device and its
    value, and does not send a node installed with `.[edge]` to `make demo`."""
    import sounddevice as sd

    from edge.audio import NoInputDeviceError, _resolve_device

    speaker = {"name": "HDMI out", "max_input_channels": 0, "max_output_channels": 2}
    monkeypatch.setattr(sd, "query_devices", lambda *a, **k: [speaker])
    for device, shown in [("USB Audio", "'USB Audio'"), (None, "null"), (3, "3")]:
        with pytest.raises(NoInputDeviceError) as info:
            _resolve_device(device, 16000)
        msg = str(info.value)
        assert "audio.device" in msg and shown in msg and "no audio input device" in msg, msg
        assert "make demo" not in msg and "python -m sounddevice" in msg, msg
    mic = {"name": "pulse", "max_input_channels": 32, "max_output_channels": 32}
    monkeypatch.setattr(sd, "query_devices", lambda *a, **k: [speaker, mic])
    with pytest.raises(NoInputDeviceError) as info:
        _resolve_device("USB Audio", 16000)
    msg = str(info.value)
    assert "audio.device" in msg and "'USB Audio'" in msg and "'pulse'" in msg, msg
    assert "make demo" not in msg, msg


def test_record_on_few_clips_warns_and_counts_windows_above(tmp_path, monkeypatch, capsys):
    """3 clips: no TqdmWarning and no negative remaining time from the progress bar, the
    expected false-positive rate, a warning that 3 independent windows are too few to
    estimate it, and the plot says how many lie above the threshold and the target."""
    import calibration.__main__ as cli

    drawn = {}
    monkeypatch.setattr(cli, "plot_score_histogram",
                        lambda path, normal, anomalous, thresholds, title, **kw:
                        drawn.update(normal=normal, thresholds=thresholds, title=title))
    cfg = node_config(tmp_path, 1883, tmp_path / "cal.npz",
                      threshold={"method": "fpr", "params": {}})  # the default's estimator
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert cli.main(["record", "--config", str(cfg), "--from",
                         *map(str, CAL_CLIPS[:3])]) == 0
    out, err = capsys.readouterr()
    assert not [w for w in caught if "Tqdm" in type(w.message).__name__], \
        [str(w.message) for w in caught]
    assert "<-" not in err and "30/30 s" in err, err[-500:]
    assert "at most 5 % with 90 % confidence" in err, err[-800:]
    assert "calibrated on 3 independent (non-overlapping) windows (0.5 min of audio)" in err, \
        err[-800:]
    assert "needs at least 45 (7.5 min)" in err and "record longer" in err, err[-800:]
    label, threshold = next(iter(drawn["thresholds"].items()))
    assert label == "decision_threshold (fpr, target 5 %)"
    above = int((drawn["normal"] > threshold).sum())
    assert f"{above} of 3 calibration windows above the threshold" in drawn["title"]
    assert "target 5 %" in drawn["title"]
    report = json.loads(out)
    assert report["above_threshold"] == above and report["independent_windows"] == 3
    assert report["target_fpr"] == 0.05 and 0 < report["fitted_fpr"] < 0.05


def test_demo_summary_explains_speech_windows_and_false_keywords():
    """The demo's summary says that flagged speech windows are expected and which keyword
    event was false and when; unchanged states and discovery documents stay short."""
    from demo.__main__ import MessageLines, Phase, anomaly_summary, keyword_summary
    from edge.payloads import iso_utc

    t0 = 1_700_000_000.0
    phases = [Phase("normal", t0, t0 + 20), Phase("anomalous", t0 + 20, t0 + 40),
              Phase("speech", t0 + 40, t0 + 64)]

    def window(start, anomalous):
        return {"window": {"start": iso_utc(start), "end": iso_utc(start + 10)},
                "anomaly_score": 0.3 if anomalous else 0.1, "anomalous": anomalous}

    events = [window(t0 + s, s >= 20) for s in range(0, 56, 2)]
    lines = anomaly_summary(events, phases)
    speech = next(line for line in lines if "speech sound" in line)
    assert "8 windows" in speech and "8 flagged" in speech and "no fan sound" in speech, lines
    anomalous = next(line for line in lines if "anomalous sound" in line)
    assert "6 flagged" in anomalous and "expected" not in anomalous, lines
    assert "8 windows span two phases" in lines[-1], lines
    normal = next(line for line in lines if "normal sound" in line)
    assert "0 flagged" in normal and "expected" not in normal, lines

    truth = [{"keyword": "stop", "onset": 4.6, "offset": 5.2},
             {"keyword": "computer", "onset": 8.2, "offset": 8.9}]

    def kw(keyword, onset):
        return {"keyword": keyword, "onset": iso_utc(onset), "offset": iso_utc(onset + 0.5),
                "score": 0.2, "threshold": 0.25}

    lines = keyword_summary(truth, [kw("stop", t0 + 44.7), kw("computer", t0 + 52.5),
                                    kw("stop", t0 + 12.0)], phases)
    text = "\n".join(lines)
    assert "missed" in text and "keywords: 1/2 detected, 3 keyword events (2 false)" in text
    assert "false keyword event: 'computer' at 12.50 s into the speech part" in text, text
    assert "false keyword event: 'stop' at 12.00 s into the normal part" in text, text

    ml = MessageLines()
    state = {"ts": "a", "uptime_s": 1.0, "status": "online", "spool": {"depth": 0}}

    def msg(topic, doc):
        return MqttMessage(topic, json.dumps(doc).encode(), True)

    assert ml.line(msg(f"{ROOT_TOPIC}/state", state)) is not None
    assert ml.line(msg(f"{ROOT_TOPIC}/state", {**state, "ts": "b", "uptime_s": 6.0,
                                                "spool": {"depth": 3}})) is None
    assert ml.line(msg(f"{ROOT_TOPIC}/state", {**state, "status": "offline"})) is not None
    assert ml.unchanged_states == 1
    doc = {"name": "Anomaly", "unique_id": "u1", "device": {"identifiers": ["x" * 500]}}
    line = ml.line(msg("homeassistant/binary_sensor/test-node/anomaly/config", doc))
    assert line is not None and "Anomaly" in line and len(line) < 300, line


# -- the node as a process ---------------------------------------------------------------
@pytest.fixture()
def _tools():
    missing = require_tools(audio=False)
    if missing:
        pytest.fail("these tests need: " + ", ".join(missing) + " (make setup installs them)")


def _events(col, kind="anomaly") -> list[dict]:
    return [m.json() for m in col.messages(f"{ROOT_TOPIC}/event/{kind}")]


@pytest.mark.e2e
def test_missing_microphone_fails_before_connecting(tmp_path, calibration_file, _tools):
    """A microphone that is not there: exit 1 before the node goes online, so no retained
    status, state or discovery document claims a node that never ran."""
    from nodeproc import run_node

    with MosquittoBroker() as broker, MqttCollector(broker.host, broker.port, "#") as col:
        cfg = update_config(node_config(tmp_path, broker.port, calibration_file),
                            audio={"device": "no-such-microphone"})
        r = run_node(cfg)
        assert r.returncode == 1 and "'no-such-microphone'" in r.stderr, r.stderr[-2000:]
        time.sleep(0.5)
        assert col.messages() == [], col.summary()
        assert "connecting to" not in r.stderr, r.stderr[-2000:]


@pytest.mark.e2e
def test_replay_times_and_the_last_state(tmp_path, calibration_file, _tools):
    """A replay faster than real time: each window lies before its event's ts, windows
    follow the stream position (hop 2 s), and after the node stopped the retained state
    says offline."""
    with MosquittoBroker() as broker, MqttCollector(broker.host, broker.port, "hark/#") as col:
        cfg = node_config(tmp_path, broker.port, calibration_file)
        started = time.time()
        node = NodeProcess(cfg, args=["--replay", *map(str, REPLAY)])
        assert node.proc.wait(timeout=120) == 0, node.log()[-3000:]
        node.stop()
        finished = time.time()
        events = _events(col)
        assert len(events) == N_WINDOWS, col.summary()
        starts = [_ts(e["window"]["start"]) for e in events]
        for e, start in zip(events, starts):
            end = _ts(e["window"]["end"])
            assert end - start == pytest.approx(10, abs=0.01)
            assert _ts(e["ts"]) >= end - 0.01, (e["ts"], e["window"])
            assert started - 30.01 <= start and end <= finished, e["window"]
        assert [round(b - a, 2) for a, b in itertools.pairwise(starts)] == [2.0] * (N_WINDOWS - 1)
        assert starts[-1] + 10 == pytest.approx(starts[0] + 30, abs=0.01)
        with MqttCollector(broker.host, broker.port, f"{ROOT_TOPIC}/+") as late:
            retained = {m.topic.rsplit("/", 1)[1]: m
                        for m in late.wait_for(lambda m: m.retain, count=2, timeout=10)}
        assert retained["status"].payload == b"offline"
        state = retained["state"].json()
        assert state["status"] == "offline", state


@pytest.mark.e2e
def test_reload_during_a_replay_changes_nothing(tmp_path, calibration_file, _tools):
    """`cmd/reload` of the unchanged config file during `--replay`: `changed: nothing`, and
    the replay's windows go on (all 11, none restarted)."""
    with MosquittoBroker() as broker, MqttCollector(broker.host, broker.port, "hark/#") as col:
        cfg = update_config(node_config(tmp_path, broker.port, calibration_file),
                            audio={"realtime": True}, mqtt={"anonymous_commands": True})
        node = NodeProcess(cfg, args=["--replay", *map(str, REPLAY)])
        try:
            col.wait_for(topic_filter=f"{ROOT_TOPIC}/event/anomaly", timeout=60)
            mqtt_publish(broker.host, broker.port, f"{ROOT_TOPIC}/cmd/reload",
                         b'{"request_id": "same"}')
            r = col.wait_for(topic_filter=f"{ROOT_TOPIC}/reply", timeout=20)[0].json()
            assert r["status"] == "done" and r["request_id"] == "same", r
            assert "changed: nothing" in r["message"], r
            assert node.proc.wait(timeout=90) == 0, node.log()[-3000:]
        finally:
            node.stop()
    events = _events(col)
    assert [e["seq"] for e in events] == list(range(1, N_WINDOWS + 1)), col.summary()


@pytest.mark.e2e
def test_auto_calibration_that_did_not_finish_says_so(tmp_path, _tools):
    """No calibration, 60 s to learn, a 30 s replay: the node says at the end that
    calibration did not finish and how much was learned of how much."""
    cal = tmp_path / "auto.npz"
    cfg = node_config(tmp_path, free_port(), cal, auto_calibration_seconds=60.0)
    node = NodeProcess(cfg, args=["--replay", *map(str, REPLAY)])
    assert node.proc.wait(timeout=120) == 0, node.log()[-3000:]
    node.stop()
    log = node.log()
    assert "calibration did not finish: the replay ended after 30 s of normal operation " \
           "learned of the 60 s needed; nothing was saved" in log, log[-3000:]
    assert not cal.exists()
