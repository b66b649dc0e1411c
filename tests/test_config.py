"""Node config validation: every kind of bad field is rejected with its dotted path."""
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from firmware_config.schema import ConfigError, load_config, parse_config

ROOT = Path(__file__).resolve().parent.parent
DEFAULT = ROOT / "firmware_config" / "default.yaml"


def _doc():
    return yaml.safe_load(DEFAULT.read_text())


def test_default_config_is_valid_and_resolves_paths():
    cfg = load_config(DEFAULT)
    assert cfg.topic_root == "hark/default/node-01"
    assert cfg.resolve(cfg.asd.model) == (ROOT / "models" / "asd_default.tflite").resolve()
    assert cfg.asd.threshold.method == "fpr"
    assert dict(cfg.asd.threshold.params) == {}  # fpr's own: 5 % with 90 % confidence
    assert len(cfg.sha256) == 64


@pytest.mark.parametrize("path,value,field,message", [
    (("asd", "hop_seconds"), -1, "asd.hop_seconds", "greater than 0"),
    (("asd", "hop_seconds"), 20, "asd", "hop_seconds must not exceed window_seconds"),
    (("mqtt", "port"), 70000, "mqtt.port", "less than or equal to 65535"),
    (("mqtt", "port"), "1883", "mqtt.port", "valid integer"),
    (("mqtt", "qos"), 3, "mqtt.qos", "1 or 2"),
    (("node", "id"), "bad/id", "node.id", "should match pattern"),
    (("asd", "report"), "some", "asd.report", "'all' or 'anomalous'"),
    (("asd", "threshold", "method"), "magic", "asd.threshold.method", "unknown method 'magic'"),
    (("audio", "sample_rate"), 44100, "audio.sample_rate", "16000"),
    (("audio", "device"), -3, "audio.device", "non-negative index"),
    (("asd", "enabled"), "yes", "asd.enabled", "valid boolean"),
    (("mqtt", "reconnect_max_seconds"), 0.5, "mqtt", "reconnect_max_seconds must be >="),
    (("asd", "bogus"), 1, "asd.bogus", "unknown key"),
    (("bogus",), 1, "bogus", "unknown key"),
    (("schema",), 2, "schema", "1"),
])
def test_bad_field_named_in_error(path, value, field, message):
    doc = _doc()
    d = doc
    for k in path[:-1]:
        d = d[k]
    d[path[-1]] = value
    with pytest.raises(ConfigError) as ei:
        parse_config(doc, "test.yaml")
    fields = dict(ei.value.errors)
    assert field in fields, ei.value.errors
    assert message in fields[field], fields[field]
    assert field in str(ei.value)


def test_not_a_mapping_and_not_yaml(tmp_path):
    with pytest.raises(ConfigError, match="expected a mapping"):
        parse_config(["a", "b"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("asd: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.yaml")


def test_validate_cli_exit_codes(tmp_path):
    ok = subprocess.run([sys.executable, "-m", "firmware_config", "validate", str(DEFAULT)],
                        capture_output=True, text=True, cwd=ROOT)
    assert ok.returncode == 0, ok.stderr
    assert "valid" in ok.stdout
    doc = _doc()
    doc["mqtt"]["port"] = 0
    bad = tmp_path / "node.yaml"
    bad.write_text(yaml.safe_dump(doc))
    r = subprocess.run([sys.executable, "-m", "firmware_config", "validate", str(bad)],
                       capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 2
    assert "mqtt.port" in r.stderr


def test_node_and_calibration_exit_2_on_bad_config(tmp_path):
    doc = _doc()
    doc["asd"]["window_seconds"] = "ten"
    bad = tmp_path / "node.yaml"
    bad.write_text(yaml.safe_dump(doc))
    for cmd in (["edge", "run", "--config", str(bad)],
                ["calibration", "record", "--config", str(bad), "--seconds", "30"]):
        r = subprocess.run([sys.executable, "-m", *cmd], capture_output=True, text=True, cwd=ROOT)
        assert r.returncode == 2, (cmd, r.stderr)
        assert "asd.window_seconds" in r.stderr
