"""Keyword spotting end to end: enroll from real shots with the CLI, speak a real stream into
the virtual microphone, receive ``event/keyword`` messages from a real mosquitto.

The stream (``demo/clips/kws/stream.flac``) holds 3 x "smart mirror" and 3 x "computer" by
speakers never enrolled, and 6 other words, over real background noise at 15 dB SNR; its
JSON gives the exact onsets and offsets. "smart mirror" and "computer" are wake phrases the
default embedder never heard in training.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import yaml

from demo import KWS_DEMO_KEYWORDS
from demo.broker import MosquittoBroker
from demo.collector import MqttCollector
from demo.tools import require_tools
from demo.virtual_mic import VirtualMicrophone
from nodeproc import NodeProcess, _ts
from firmware_config.defaults import default_config_doc, write_config_doc
from firmware_config.schema import KwsSection

ROOT = Path(__file__).resolve().parent.parent
KWS_CLIPS = ROOT / "demo" / "clips" / "kws"
TRUTH = json.loads((KWS_CLIPS / "stream.json").read_text())["keywords"]
KEYWORD_FIELDS = {"schema", "node", "site", "ts", "seq", "keyword", "onset", "offset", "score",
                  "threshold", "model_id", "enrollment_id"}


# Enrolled for the node's default of 1 false alarm per hour (thresholds fitted on the
# bundle's generic hour): `make demo` found all 6 utterances on 2026-12-01, each scoring at
# least 0.7 below its keyword's threshold.
FALSE_ALARMS_PER_HOUR = KwsSection().false_alarms_per_hour
KEYWORDS = KWS_DEMO_KEYWORDS


def kws_config(tmp: Path, port: int, keywords: Path, device="pulse") -> Path:
    doc = default_config_doc(
        node={"id": "kws-node"}, mqtt={"host": "127.0.0.1", "port": port, "heartbeat_seconds": 1},
        audio={"device": device}, asd={"enabled": False},
        kws={"keywords": str(keywords), "false_alarms_per_hour": FALSE_ALARMS_PER_HOUR},
        spool={"path": str(tmp / f"spool-{port}.sqlite")})
    return write_config_doc(tmp / f"kws-{port}.yaml", doc)


def enroll(cfg: Path, keyword: str, files) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "calibration", "enroll", "--config", str(cfg),
                           "--keyword", keyword, "--from", *map(str, files)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def keywords_file(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("kws")
    kw = tmp / "keywords.npz"
    cfg = kws_config(tmp, 1883, kw)
    for word in KEYWORDS:
        r = enroll(cfg, word, sorted(KWS_CLIPS.glob(f"{word}_shot_*.flac")))
        assert r.returncode == 0, r.stderr
        info = json.loads(r.stdout)["enrolled"]
        assert info[word]["shots"] == 5
        assert -10 < info[word]["threshold"] < 0  # a z-score: the bundle normalises costs
    assert set(json.loads(r.stdout)["enrolled"]) == set(KEYWORDS)
    return kw


@pytest.mark.e2e
def test_keywords_from_microphone_to_mqtt(tmp_path, keywords_file):
    missing = require_tools()
    if missing:
        pytest.fail("end-to-end tests need: " + ", ".join(missing))
    with MosquittoBroker() as broker, VirtualMicrophone() as vm, \
            MqttCollector(broker.host, broker.port, "hark/#") as col:
        node = NodeProcess(kws_config(tmp_path, broker.port, keywords_file), vm.env)
        try:
            node.wait_log("keyword model", 60)
            col.wait_for(lambda m: m.topic.endswith("/status") and m.payload == b"online",
                         timeout=30)
            time.sleep(1.0)
            t_play = time.time()
            vm.play([KWS_CLIPS / "stream.flac"], wait=True)
            time.sleep(1.5)
        finally:
            rc = node.stop()
        assert rc == 0, node.log()[-3000:]
    events = [m.json() for m in col.messages("hark/default/kws-node/event/keyword")]
    assert events, node.log()[-3000:]
    for ev in events:
        assert KEYWORD_FIELDS <= set(ev), ev
        assert ev["score"] < ev["threshold"]
    report = []
    found = 0
    for t in TRUTH:
        cands = [e for e in events if e["keyword"] == t["keyword"]]
        errs = [(abs(_ts(e["onset"]) - t_play - t["onset"]), abs(_ts(e["offset"]) - t_play - t["offset"]))
                for e in cands]
        best = min(errs, key=max, default=None)
        report.append((t["keyword"], t["onset"], best))
        found += best is not None and max(best) <= 0.25
    print("truth vs detections (onset error, offset error):", report)
    print("events:", [(e["keyword"], round(_ts(e["onset"]) - t_play, 2),
                       round(_ts(e["offset"]) - t_play, 2), e["score"]) for e in events])
    # Most keywords spoken by unseen speakers are found with onset and offset within 0.25 s
    # of the truth (5 of 6 in an offline replay); at most two other events.
    assert found >= len(TRUTH) - 2, report
    assert len(events) <= found + 2, events


def test_enroll_rejects_bad_shots(tmp_path):
    kw = tmp_path / "keywords.npz"
    cfg = kws_config(tmp_path, 1883, kw)
    good = sorted(KWS_CLIPS.glob("computer_shot_*.flac"))
    y, sr = sf.read(good[0], dtype="float32")
    silent = tmp_path / "silent.wav"
    sf.write(silent, np.zeros(sr, np.float32), sr)
    clipped = tmp_path / "clipped.wav"
    sf.write(clipped, np.clip(y * 50, -1, 1), sr)
    short = tmp_path / "short.wav"
    z = np.zeros(sr, np.float32)
    z[8000:8000 + 800] = 0.5 * np.sin(np.arange(800) / 3)
    sf.write(short, z, sr)
    for bad, why in ((silent, "silent"), (clipped, "clipped"), (short, "shorter than")):
        r = enroll(cfg, "computer", good[:4] + [bad])
        assert r.returncode == 1, r.stderr
        assert bad.name in r.stderr and why in r.stderr, r.stderr
        assert "nothing was stored" in r.stderr
        assert not kw.exists()
    # An existing enrollment is kept untouched when a new one fails.
    assert enroll(cfg, "computer", good).returncode == 0
    before = kw.read_bytes()
    r = enroll(cfg, "smart_mirror", good[:4] + [silent])
    assert r.returncode == 1 and kw.read_bytes() == before


@pytest.mark.e2e
def test_enroll_from_the_microphone(tmp_path):
    """The installer's path: `enroll --shots 3` prompts and records each shot from the
    (virtual) microphone; real shots are spoken into it, one per recording slot."""
    missing = require_tools()
    if missing:
        pytest.fail("end-to-end tests need: " + ", ".join(missing))
    from edge.vad import speech_interval

    slot = 2.5  # --shot-seconds
    sr = 16000
    words = []
    for p in sorted(KWS_CLIPS.glob("computer_shot_*.flac"))[:3]:
        y, _ = sf.read(p, dtype="float32")
        words.append(y[speech_interval(y).slice(sr)])
    track = np.zeros(int(3 * slot * sr) + sr, np.float32)
    for i, w in enumerate(words):  # each word in the middle of its slot
        start = int((i * slot + 0.8) * sr)
        track[start:start + len(w)] = w
    sf.write(tmp_path / "spoken.wav", track, sr)
    kw = tmp_path / "keywords.npz"
    with VirtualMicrophone() as vm:
        cfg = kws_config(tmp_path, 1883, kw, device=vm.device_name)
        proc = subprocess.Popen([sys.executable, "-m", "calibration", "enroll", "--config",
                                 str(cfg), "--keyword", "computer", "--shots", "3",
                                 "--shot-seconds", str(slot)], cwd=ROOT,
                                env={**os.environ, **vm.env, "PYTHONUNBUFFERED": "1"},
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        first = ""
        while "say 'computer' now (1/3" not in first:
            line = proc.stderr.readline()
            assert line, "enroll ended before prompting"
            first += line
        vm.play([tmp_path / "spoken.wav"], wait=True)
        out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, first + err
    assert "(3/3" in err
    info = json.loads(out)["enrolled"]["computer"]
    assert info["shots"] == 3
    assert all(0.3 < s < 1.0 for s in info["shot_seconds"]), info


def test_node_rejects_bad_keyword_files(tmp_path):
    """A corrupt keywords file or a missing keyword model: exit 1 and a message naming it."""
    bad = tmp_path / "keywords.npz"
    bad.write_bytes(b"PK\x03\x04 not really a zip")
    cfg = kws_config(tmp_path, 1883, bad)
    r = subprocess.run([sys.executable, "-m", "edge", "run", "--config", str(cfg), "--replay",
                        str(KWS_CLIPS / "computer_shot_1.flac")], cwd=ROOT, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 1 and "keywords.npz" in r.stderr and "unreadable" in r.stderr, r.stderr
    doc = yaml.safe_load(cfg.read_text())
    doc["kws"]["model"] = str(tmp_path / "none.tflite")
    cfg.write_text(yaml.safe_dump(doc))
    r = subprocess.run([sys.executable, "-m", "edge", "run", "--config", str(cfg), "--replay",
                        str(KWS_CLIPS / "computer_shot_1.flac")], cwd=ROOT, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 1 and "kws.model" in r.stderr and "none.tflite" in r.stderr, r.stderr
