"""Fuzzing (hypothesis) of what reaches a node from outside: command payloads and config
documents. Nothing may raise anything but the documented error, and every rejection must
say what was wrong."""
from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge.commands import COMMANDS, Command, CommandError, parse_command
from firmware_config.defaults import default_config_doc
from firmware_config.schema import ConfigError, NodeConfig, parse_config_text

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DOC = default_config_doc()

json_scalars = (st.none() | st.booleans() | st.integers(-10**12, 10**12)
                | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=40))
json_values = st.recursive(json_scalars, lambda kids: st.lists(kids, max_size=4)
                           | st.dictionaries(st.text(max_size=12), kids, max_size=4),
                           max_leaves=12)
arg_keys = st.sampled_from(["schema", "request_id", "seconds", "threshold_method", "extra"])
arg_values = st.sampled_from([1, 2, 0, -5, 60, 1e9, "mst-iqr", "gdp", "nope", "", "r-1", None,
                              True, [], {}]) | json_values


def _payloads():
    objects = st.dictionaries(arg_keys | st.text(max_size=10), arg_values, max_size=5)
    as_json = objects.map(lambda d: json.dumps(d).encode())
    other_json = json_values.map(lambda v: json.dumps(v).encode())
    return as_json | other_json | st.binary(max_size=200) | st.text(max_size=200).map(str.encode)


names = st.sampled_from(sorted(COMMANDS) + ["", "unknown", "reload/now", "RELOAD", "#"]) \
    | st.text(max_size=20)


@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(name=names, payload=_payloads())
def test_command_payloads(name, payload):
    try:
        cmd = parse_command(name, payload)
    except CommandError as exc:
        assert str(exc).strip(), (name, payload)
        assert exc.command == name
        return
    assert isinstance(cmd, Command) and cmd.name in COMMANDS
    doc = json.loads(payload)
    assert isinstance(doc, dict) and set(doc) <= {"schema", "request_id", "seconds",
                                                  "threshold_method"}
    if "seconds" in cmd.args:
        assert math.isfinite(cmd.args["seconds"]) and 0 < cmd.args["seconds"] <= 86400


def test_command_examples():
    assert parse_command("reload", b"{}") == Command("reload", None, {})
    cmd = parse_command("recalibrate", b'{"schema": 1, "request_id": "op-1", "seconds": 120}')
    assert cmd == Command("recalibrate", "op-1", {"seconds": 120.0})
    for name, payload, words in [
            ("frobnicate", b"{}", "unknown command 'frobnicate'"),
            ("reload", b"{oops", "not JSON"),
            ("reload", b"", "send {} for a command without arguments"),
            ("reload", b"\xff\xfe", "not UTF-8"),
            ("reload", b"[1, 2]", "must be a JSON object"),
            ("reload", b'{"force": true}', "force: unknown key"),
            ("recalibrate", b'{"seconds": "ten"}', "seconds"),
            ("recalibrate", b'{"seconds": true}', "seconds"),
            ("recalibrate", b'{"threshold_method": "magic"}', "unknown method 'magic'"),
            ("reload", b" " * 70000, "larger than"),
            ("reload", b'{"schema": 2}', "schema")]:
        with pytest.raises(CommandError, match=None) as info:
            parse_command(name, payload)
        assert words in str(info.value), (name, payload, str(info.value))
    # A rejected command still echoes its request id when it had a readable one.
    for name in ("recalibrate", "nope"):
        with pytest.raises(CommandError) as info:
            parse_command(name, b'{"request_id": "op-7", "seconds": -1}')
        assert info.value.request_id == "op-7"


# -- config documents --------------------------------------------------------------------
SECTIONS = sorted(k for k, v in DEFAULT_DOC.items() if isinstance(v, dict))


@st.composite
def config_docs(draw):
    """The default config with a few keys replaced, removed or added anywhere in it."""
    doc = copy.deepcopy(DEFAULT_DOC)
    for _ in range(draw(st.integers(1, 4))):
        section = draw(st.sampled_from(SECTIONS + ["schema", "bogus"]))
        op = draw(st.sampled_from(["set", "delete", "replace_section"]))
        if section not in doc or not isinstance(doc.get(section), dict) or op == "replace_section":
            doc[section] = draw(json_values)
            continue
        keys = sorted(doc[section]) + ["unknown_key"]
        key = draw(st.sampled_from(keys))
        if op == "delete":
            doc[section].pop(key, None)
        else:
            doc[section][key] = draw(json_values | st.sampled_from(
                [0, -1, 1, 65536, 1e9, "", "x" * 300, "../x", "a/b", "#", None, True]))
    return doc


def _check(raw: bytes) -> None:
    try:
        cfg = parse_config_text(raw, "fuzz")
    except ConfigError as exc:
        assert exc.errors, raw[:200]
        for path, message in exc.errors:
            assert path.strip() and message.strip(), exc.errors
        assert "fuzz" in str(exc)
        return
    assert isinstance(cfg, NodeConfig)
    # A valid config survives a round trip through its own dump.
    again = parse_config_text(yaml.safe_dump(cfg.model_dump(by_alias=True, mode="json")).encode())
    assert again == cfg


@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(doc=config_docs(), as_json=st.booleans())
def test_config_documents(doc, as_json):
    raw = json.dumps(doc) if as_json else yaml.safe_dump(doc, allow_unicode=True)
    _check(raw.encode())


@settings(max_examples=300, deadline=None)
@given(raw=st.binary(max_size=300) | st.text(max_size=300).map(str.encode))
def test_config_garbage(raw):
    _check(raw)


def test_config_examples():
    with pytest.raises(ConfigError) as info:
        parse_config_text(b"mqtt: {port: 99999}\nspool: {drop_policy: sometimes}\n", "site.yaml")
    paths = dict(info.value.errors)
    assert "less than or equal to 65535" in paths["mqtt.port"]
    assert "'oldest' or 'newest'" in paths["spool.drop_policy"]
    for raw, words in [(b"\xff", "not UTF-8"), (b"a: [", "not valid YAML"),
                       (b"- 1\n- 2\n", "expected a mapping"),
                       (b"mqtt: {password_file: pw.txt}", "password_file needs a username"),
                       (b"mqtt: {tls: {cert_file: c.pem, enabled: true}}", "go together")]:
        with pytest.raises(ConfigError) as info:
            parse_config_text(raw, "site.yaml")
        assert words in str(info.value), str(info.value)


# -- the node's command handler ----------------------------------------------------------
@pytest.fixture(scope="module")
def node(tmp_path_factory, calibration_file):
    """A real node (models, calibration, spool) that is not started; its replies are
    collected instead of published. Without a config file, ``reload`` is always refused,
    so every case is answered at once."""
    from edge.audio import FileSource
    from edge.node import Node
    from firmware_config.schema import load_config
    from nodeproc import NORMAL, node_config

    cfg = load_config(node_config(tmp_path_factory.mktemp("fuzz"), 1883, calibration_file))
    n = Node(cfg, source=FileSource(NORMAL[:1]))
    replies: list[dict] = []
    n.publisher.reply = replies.append
    yield n, replies
    n.spool.close()


@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(name=names, payload=_payloads(), retained=st.booleans())
def test_node_answers_every_command(node, name, payload, retained):
    n, replies = node
    k = len(replies)
    n.control.command(name, payload, retained)
    assert len(replies) == k + 1, replies[k:]
    r = replies[-1]
    assert r["command"] == name and r["node"] == n.cfg.node.id
    assert r["status"] in ("accepted", "rejected") and r["message"].strip(), r
    if r["status"] == "accepted":
        assert name == "recalibrate" and not retained and n.learning is not None
        n.learning = None  # so that the next valid recalibrate is accepted too
    json.dumps(r)  # publishable
