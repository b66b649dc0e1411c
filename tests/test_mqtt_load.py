"""The MQTT load benchmark, tiny: simulated nodes (the real Spool + MqttPublisher, in spawned
worker processes) publish to a real private mosquitto; every event must arrive, in order."""
from __future__ import annotations

import json

import pytest

from bench.common import machine_info
from bench.mqtt_load import _analyse, run_mqtt_load
from bench.report import build_rows, render_markdown
from demo.tools import require_tools

LATENCY_KEYS = {"p50", "p95", "p99", "max", "mean"}
CPU_KEYS = {"broker", "publishers", "publishers_per_process", "subscriber", "machine_busy",
            "machine_iowait"}


@pytest.fixture(scope="module", autouse=True)
def _tools():
    missing = require_tools(audio=False)
    if missing:
        pytest.fail("the MQTT load test needs: " + ", ".join(missing) + " (make setup installs "
                    "them)")


@pytest.fixture(scope="module")
def paced():
    return run_mqtt_load(n_nodes=3, seconds=3.0, rate_hz=10.0, processes=2)


def test_paced_load_delivers_every_event_in_order(paced):
    r = paced
    assert (r["mode"], r["nodes"], r["processes"], r["rate_hz"]) == ("paced", 3, 2, 10.0)
    assert r["published"] == r["published_target"] == 3 * 30  # absolute schedule: exact
    assert r["lost"] == 0 and r["lost_per_node"] == {} and r["out_of_order"] == 0, r
    assert r["zero_loss"] and r["delivered"] == r["published"] and r["unexpected"] == 0
    assert r["spool_dropped"] == 0 and r["spool_left"] == 0
    assert 0 <= r["spool_depth_max"] <= r["spool_depth_total_max"]  # sampled: may miss a 1
    assert 0.5 * 30 <= r["throughput_eps"] <= 30.0  # the last events may land after the window
    lat = r["latency_ms"]
    assert set(lat) == LATENCY_KEYS and 0 <= lat["p50"] <= lat["p95"] <= lat["p99"] <= lat["max"]
    assert lat["p50"] < 1000, lat
    assert set(r["cpu_percent"]) == CPU_KEYS
    assert len(r["cpu_percent"]["publishers_per_process"]) == 2
    assert r["cpu_percent"]["publishers"] > 0 and r["broker_drop_log"] == []
    assert 200 < r["payload_bytes_mean"] < 1000
    json.dumps(r)  # goes into bench.json as it is


def test_report_rows(paced):
    results = {"machine": machine_info(), "load_only": True, "mqtt_load": paced,
               "mqtt_load_saturation_skipped": True, "errors": {}}
    rows = build_rows(results)
    assert [r["status"] for r in rows if r["target"]] == ["PASS", "SKIPPED"], rows
    md = render_markdown(results, rows)
    assert "MQTT load, paced: 3 nodes (2 processes), 10 events/s per node" in md
    assert "max_queued_messages" in md


def test_saturation_load_is_lossless():
    r = run_mqtt_load(n_nodes=2, seconds=2.0, rate_hz=None, processes=1)
    assert r["mode"] == "saturation" and r["published_target"] is None
    assert r["zero_loss"] and r["delivered"] == r["published"] > 60, r  # > 30/s: unpaced
    assert r["spool_depth_max"] <= r["saturation_backlog"]


def test_analysis_finds_gaps_duplicates_and_reordering():
    def msg(t, node, seq):
        return t, json.dumps({"node": node, "seq": seq, "ts": "2025-01-01T00:00:00.000Z"}).encode()

    t0 = 1735689600.0  # the ts above
    arrivals = [msg(t0 + 0.001, "a", 1), msg(t0 + 0.002, "a", 3), msg(t0 + 0.003, "a", 2),
                msg(t0 + 0.004, "a", 3), msg(t0 + 0.005, "b", 1), msg(t0 + 5.0, "b", 2)]
    r = _analyse(arrivals, {"a": 4, "b": 2}, t0, t0 + 1.0)
    assert (r["delivered"], r["lost"], r["lost_per_node"]) == (5, 1, {"a": 1})  # a/4 missing
    assert (r["duplicates"], r["out_of_order"]) == (1, 1)  # a/3 twice; a/2 after a/3
    assert r["throughput_eps"] == 4.0 and r["drain_s"] == pytest.approx(4.0)
    assert r["latency_ms"]["max"] == pytest.approx(5000.0)
