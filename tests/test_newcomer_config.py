"""What a newcomer and an operator hit first: default paths, a missing shipped model, empty
or broken config files, flashing to a folder or over MQTT, files that are not artifacts, and
the runtime's noise on stderr.

Real files and a real mosquitto; the node's own config handling (:class:`NodeControl`) answers
the flashed configs.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import yaml

from demo.broker import MosquittoBroker
from demo.collector import MqttCollector, mqtt_publish
from edge.backend import Calibration, CalibrationError
from edge.control import NodeControl
from edge.keywords import EnrolledKeywords, EnrollmentError
from edge.kws_listener import KeywordListener
from edge.model import SHIPPED_MODELS, ModelError, load_asd, load_bundle
from edge.tflite import without_runtime_noise
from firmware_config.schema import ConfigError, NodeConfig, load_config, parse_config

ROOT = Path(__file__).resolve().parent.parent
DEFAULT = ROOT / "firmware_config" / "default.yaml"
ASD_MODEL = ROOT / "models" / "asd_default.tflite"
KWS_MODEL = ROOT / "models" / "kws_speech.tflite"
MINIMAL = "node: {id: press-3}\nmqtt: {host: broker.plant-a.example}\n"


def flash_cli(*args, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "firmware_config", "flash", *map(str, args)],
                          cwd=ROOT, capture_output=True, text=True, timeout=timeout)


# -- one set of defaults ----------------------------------------------------------------------
def _readme_table() -> list[tuple[list[str], list[str]]]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("\n## Configuration\n", 1)[1].split("\n## ", 1)[0]
    rows = []
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split(" | ")]
        if len(cells) == 3 and cells[0].startswith("`"):
            rows.append((re.findall(r"`([^`]+)`", cells[0]), re.findall(r"`([^`]+)`", cells[1])))
    return rows


def test_schema_default_yaml_and_readme_table_agree():
    schema = NodeConfig().model_dump(by_alias=True, mode="json")
    shipped = parse_config(yaml.safe_load(DEFAULT.read_text()), "default.yaml")
    assert shipped.model_dump(by_alias=True, mode="json") == schema
    assert schema["asd"]["model"] == "../models/asd_default.tflite"
    checked = set()
    for keys, values in _readme_table():
        if keys == ["mqtt.client_id"]:
            continue                                   # documented as derived: hark-<site>-<id>
        values = values * len(keys) if len(values) == 1 else values
        assert len(values) == len(keys), (keys, values)
        for key, value in zip(keys, values):
            node = schema
            for part in key.split("."):
                node = node[part]
            assert yaml.safe_load(value) == node, f"README table: {key} is {value}, schema {node!r}"
            checked.add(key)
    assert {"asd.model", "asd.calibration", "kws.model", "kws.keywords", "spool.path"} <= checked


def test_minimal_config_one_folder_below_the_project_finds_the_shipped_models(tmp_path):
    project = tmp_path / "project"
    (project / "etc").mkdir(parents=True)
    (project / "models").symlink_to(ROOT / "models")
    (project / "etc" / "node.yaml").write_text(MINIMAL)
    cfg = load_config(project / "etc" / "node.yaml")
    assert cfg.resolve(cfg.asd.model) == ASD_MODEL.resolve()      # through project/models
    embedder, _ = load_asd(cfg)
    assert embedder.model_id and cfg.resolve(cfg.kws.model) == KWS_MODEL.resolve()
    assert cfg.resolve(cfg.spool.path) == (project / "var" / "spool.sqlite").resolve()


def test_missing_shipped_model_points_to_the_shipped_models_and_names_the_key(tmp_path):
    folder = tmp_path / "elsewhere" / "hark"
    folder.mkdir(parents=True)
    (folder / "node.yaml").write_text(MINIMAL)
    cfg = load_config(folder / "node.yaml")
    with pytest.raises(ModelError) as ei:
        load_asd(cfg)
    msg = str(ei.value)
    assert msg.startswith("asd.model: model file not found: "), msg
    assert f"the shipped models are in {SHIPPED_MODELS}/" in msg and "export-tflite" not in msg
    assert str(ASD_MODEL) in msg
    with pytest.raises(ModelError, match=r"^kws\.model: model file not found: .*shipped models"):
        KeywordListener(cfg)
    # A folder given as a model, and the article of the task.
    with pytest.raises(ModelError, match="is a folder, not a model file"):
        load_bundle(ROOT / "models", "asd")
    with pytest.raises(ModelError, match=r"is an 'asd' model, expected a 'kws' model"):
        load_bundle(ASD_MODEL, "kws")
    with pytest.raises(ModelError, match=r"is a 'kws' model, expected an 'asd' model"):
        load_bundle(KWS_MODEL, "asd")


# -- config files -------------------------------------------------------------------------------
def test_empty_config_is_an_error_and_yaml_errors_name_file_and_line(tmp_path):
    for text in ("", "\n  \n", "# only a comment\n"):
        empty = tmp_path / "node.yaml"
        empty.write_text(text)
        with pytest.raises(ConfigError, match="empty: no settings at all"):
            load_config(empty)
    r = subprocess.run([sys.executable, "-m", "firmware_config", "validate", str(empty)],
                       cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 2 and "empty" in r.stderr and "sha256" not in r.stdout
    broken = tmp_path / "broken.yaml"
    broken.write_text("node:\n  id: press-3\n  site: [plant-a\nmqtt: {host: x}\n")
    with pytest.raises(ConfigError) as ei:
        load_config(broken)
    assert f'in "{broken}", line 3' in str(ei.value)
    assert "<unicode string>" not in str(ei.value)


# -- flash to a folder ----------------------------------------------------------------------
def test_flash_to_a_missing_folder_says_how_and_mkdir_creates_it(tmp_path):
    src = tmp_path / "site.yaml"
    src.write_text(MINIMAL)
    sd = tmp_path / "sd" / "hark"
    r = flash_cli(src, "--to", sd)
    assert r.returncode == 2 and "add --mkdir to create the folder" in r.stderr, r.stderr
    assert not sd.exists()
    r = flash_cli(src, "--to", tmp_path / "etc" / "node.yaml")
    assert r.returncode == 2 and "(add --mkdir to create it)" in r.stderr
    r = flash_cli(src, "--to", sd, "--mkdir")
    assert r.returncode == 0, r.stderr
    assert f"created folder {sd}" in r.stdout and load_config(sd / "node.yaml").node.id == "press-3"
    r = flash_cli(src, "--to", "mqtt://localhost/press-3", "--mkdir")
    assert r.returncode == 2 and "--mkdir only applies to folder and file targets" in r.stderr


def test_flash_warns_about_relative_paths_the_node_will_not_find(tmp_path):
    project = tmp_path / "project"
    (project / "etc").mkdir(parents=True)
    (project / "models").symlink_to(ROOT / "models")
    src = project / "etc" / "site.yaml"
    src.write_text(MINIMAL)
    # Next to the source's folder: the same relative paths resolve; no warning.
    r = flash_cli(src, "--to", project / "etc2", "--mkdir")
    assert r.returncode == 0 and "warning" not in r.stderr, r.stderr
    # On an SD card the models are not one folder up: each one is named, with both paths.
    sd = tmp_path / "sdcard" / "hark"
    sd.mkdir(parents=True)
    r = flash_cli(src, "--to", sd)
    assert r.returncode == 0, r.stderr
    warnings = [line for line in r.stderr.splitlines() if line.startswith("warning: ")]
    assert len(warnings) == 2, r.stderr
    assert warnings[0].startswith("warning: asd.model: '../models/asd_default.tflite' is "
                                  "relative to the config's folder")
    assert str(tmp_path / "sdcard" / "models" / "asd_default.tflite") in warnings[0]
    assert f"here it is {ASD_MODEL.resolve()}," in warnings[0]
    assert warnings[1].startswith("warning: kws.model: ")
    # Absolute paths are the installer's business: no warning.
    doc = yaml.safe_load(MINIMAL)
    doc.update(asd={"model": str(ASD_MODEL)}, kws={"model": str(KWS_MODEL)})
    src.write_text(yaml.safe_dump(doc))
    r = flash_cli(src, "--to", sd)
    assert r.returncode == 0 and "warning" not in r.stderr, r.stderr


# -- flash over MQTT --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def broker():
    with MosquittoBroker() as b:
        yield b


def write_site(tmp: Path, node_id: str, name: str = "site.yaml", **mqtt) -> Path:
    doc = {"node": {"id": node_id, "site": "plant-a"}, "mqtt": {"host": "broker", **mqtt}}
    path = tmp / name
    path.write_text(yaml.safe_dump(doc))
    return path


@pytest.mark.parametrize("node_id, home, differs", [
    ("press-31", "hark/plant-b/press-31", "node.site 'plant-b'"),
    ("press-32", "factory/a/plant-a/press-32", "mqtt.prefix 'factory/a'"),
])
def test_flash_refuses_a_site_or_prefix_the_node_does_not_listen_on(tmp_path, broker, node_id,
                                                                     home, differs):
    mqtt_publish(broker.host, broker.port, f"{home}/status", "online", retain=True)
    src = write_site(tmp_path, node_id)
    with MqttCollector(broker.host, broker.port, f"+/+/{node_id}/config") as col:
        r = flash_cli(src, "--to", f"mqtt://{broker.host}:{broker.port}/{node_id}")
        time.sleep(0.3)
        assert not col.messages()                                   # nothing published
    assert r.returncode == 2, r.stderr
    assert f"node {node_id} is at {home} ({differs})" in r.stderr, r.stderr
    assert f"the config is for hark/plant-a/{node_id}" in r.stderr
    assert "cannot change over MQTT" in r.stderr and "Nothing was published" in r.stderr
    # Where the node does live, the same config goes through.
    mqtt_publish(broker.host, broker.port, f"hark/plant-a/{node_id}/status", "online",
                 retain=True)
    r = flash_cli(src, "--to", f"mqtt://{broker.host}:{broker.port}/{node_id}")
    assert r.returncode == 0, r.stderr


class ControlOnBroker:
    """The node's real config handling (:class:`NodeControl`) on a broker: it receives
    ``<root>/config`` and ``<root>/cmd/#`` and its replies go to ``<root>/reply``."""

    def __init__(self, broker, cfg_text: str, tmp: Path, config_file: bool = True):
        import paho.mqtt.client as mqtt

        path = tmp / "running.yaml"
        path.write_text(cfg_text)
        cfg = load_config(path)
        root = cfg.topic_root
        self.client = mqtt.Client(callback_api_version=mqtt.CallbackAPIVersion.VERSION2,
                                  client_id=f"control-{cfg.node.id}", protocol=mqtt.MQTTv311)
        publisher = SimpleNamespace(reply=lambda p: self.client.publish(
            f"{root}/reply", json.dumps(p), qos=1))
        self.control = NodeControl(SimpleNamespace(cfg=cfg, publisher=publisher),
                                   path if config_file else None)
        subscribed = threading.Event()
        self.client.on_connect = lambda c, u, f, rc, p: c.subscribe(
            [(f"{root}/config", 1), (f"{root}/cmd/#", 1)])
        self.client.on_subscribe = lambda c, u, mid, rcs, p: subscribed.set()
        self.client.on_message = lambda c, u, m: self.control.on_message(m.topic, m.payload,
                                                                          m.retain)
        self.stop_event = threading.Event()
        self.thread = threading.Thread(target=self.control.run, args=(self.stop_event,),
                                       daemon=True)
        self.thread.start()
        self.client.connect(broker.host, broker.port)
        self.client.loop_start()
        assert subscribed.wait(10)

    def stop(self) -> None:
        self.stop_event.set()
        self.client.disconnect()
        self.client.loop_stop()
        self.thread.join(5)


@pytest.mark.parametrize("anonymous_commands, config_file, message", [
    (False, True, "accepted only over an authenticated broker connection"),
    (True, False, "this node was started without a config file"),
])
def test_flash_wait_reports_the_nodes_rejection(tmp_path, broker, anonymous_commands,
                                                config_file, message):
    node_id = f"press-r{int(anonymous_commands)}{int(config_file)}"
    running = (f"node: {{id: {node_id}, site: plant-a}}\n"
               f"mqtt: {{host: broker, anonymous_commands: {str(anonymous_commands).lower()}}}\n")
    node = ControlOnBroker(broker, running, tmp_path, config_file)
    src = write_site(tmp_path, node_id, anonymous_commands=anonymous_commands)
    t0 = time.monotonic()
    try:
        r = flash_cli(src, "--to", f"mqtt://{broker.host}:{broker.port}/{node_id}", "--wait", "20")
    finally:
        node.stop()
    assert r.returncode == 1, r.stdout + r.stderr
    assert f"node hark/plant-a/{node_id} did not apply the config (rejected): " in r.stderr
    assert message in r.stderr and "offline?" not in r.stderr
    assert time.monotonic() - t0 < 15                          # answered, not timed out


def test_every_answer_to_a_flashed_config_carries_its_hash(tmp_path):
    """Each path of NodeControl that answers a flashed config: anonymous connection, full
    queue, no config file, invalid config, another node's config, an internal error."""
    path = tmp_path / "running.yaml"
    path.write_text("node: {id: press-3, site: plant-a}\nmqtt: {host: broker}\n")
    cfg = load_config(path)
    replies: list[dict] = []
    node = SimpleNamespace(cfg=cfg, publisher=SimpleNamespace(reply=replies.append))
    topic = f"{cfg.topic_root}/config"

    def answer(control, raw: bytes, via=None) -> dict:
        replies.clear()
        (via or (lambda: control.config_message(raw)))()
        assert len(replies) == 1, replies
        assert replies[0]["config_sha256"] == hashlib.sha256(raw).hexdigest(), replies[0]
        return replies[0]

    raw = b"node: {id: press-3, site: plant-a}\nmqtt: {host: other}\n"
    control = NodeControl(node, path)
    assert "authenticated" in answer(control, raw, lambda: control.on_message(topic, raw, True))[
        "message"]
    node.cfg = cfg.model_copy(update={"mqtt": cfg.mqtt.model_copy(update={
        "anonymous_commands": True})})
    for _ in range(64):
        control.on_message(topic, b"x: 1\n", True)              # fills the queue
    assert "too many" in answer(control, raw, lambda: control.on_message(topic, raw, True))[
        "message"]
    assert "without a config file" in answer(NodeControl(node, None), raw)["message"]
    bad = b"node: {id: press-3, site: plant-a}\nmqtt: {port: 0}\n"
    assert "mqtt.port" in answer(control, bad)["message"]
    other = b"node: {id: press-3, site: plant-b}\n"
    assert "cannot change over MQTT" in answer(control, other)["message"]
    failing = NodeControl(node, path)
    failing.config_message = lambda raw: 1 / 0
    failing._queue.put(("config", "config", raw, True))
    stop = threading.Event()

    def run_once():
        t = threading.Thread(target=failing.run, args=(stop,))
        t.start()
        deadline = time.monotonic() + 5
        while not replies and time.monotonic() < deadline:
            time.sleep(0.01)
        stop.set()
        t.join(5)

    assert "internal error" in answer(failing, raw, run_once)["message"]


# -- artifacts -----------------------------------------------------------------------------
@pytest.mark.parametrize("load, kind, error", [
    (Calibration.load, "calibration", CalibrationError),
    (EnrolledKeywords.load, "keywords", EnrollmentError),
])
def test_a_text_file_or_folder_is_not_an_artifact(tmp_path, load, kind, error):
    text = tmp_path / "notes.npz"
    text.write_text("asd:\n  model: x\n")
    with pytest.raises(error) as ei:
        load(text)
    assert str(ei.value).startswith(f"{text} is not a {kind} artifact ("), ei.value
    assert "pickle" not in str(ei.value) and "unsafe" not in str(ei.value)
    npy = tmp_path / "array.npy"
    np.save(npy, np.zeros(3))
    with pytest.raises(error, match=f"is not a {kind} artifact"):
        load(npy)
    with pytest.raises(error, match=f"{re.escape(str(tmp_path))} is a folder, not a {kind} "
                                    "artifact"):
        load(tmp_path)


# -- quiet runtime ----------------------------------------------------------------------------
def test_loading_a_model_prints_no_runtime_info_but_real_errors_pass(capfd):
    code = (f"from edge.model import load_bundle; load_bundle({str(ASD_MODEL)!r}, 'asd'); "
            f"load_bundle({str(KWS_MODEL)!r}, 'kws')")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0 and r.stderr == "", r.stderr
    with without_runtime_noise():
        os.write(2, b"INFO: Created TensorFlow Lite XNNPACK delegate for CPU.\n")
        os.write(2, b"ERROR: a real problem\n")
    err = capfd.readouterr().err
    assert err == "ERROR: a real problem\n"
