"""Pooling draws of the wake-word evaluation (trainer/kws_draws.py, `evaluate-kws --seeds`):
counts add up per keyword and per draw, the intervals are the textbook ones, and draws of
different keywords or systems are refused."""
from __future__ import annotations

import json

import pytest

from trainer.kws_draws import (pool_wakeword_reports, poisson_rate_interval,
                               wilson_interval)


def _point(misses, n_ref, fa, hours):
    return {"hits": n_ref - misses, "n_ref": n_ref, "false_alarms": fa, "hours": hours,
            "miss_rate": misses / n_ref}


def _report(seed, rows):
    """rows: keyword -> (misses@1, n_ref, node false alarms, hours)."""
    return {"config": {"seed": seed, "shots": 5, "snr_db": 10.0, "node_fa_per_hour": 1.0},
            "negative_hours": 2.0,
            "keywords": {kw: {"systems": {"ours": {
                "at_1_fa_per_hour": _point(m, n, 2, h),
                "at_0.5_fa_per_hour": None if kw == "b" and seed == 1 else _point(m + 1, n, 1, h),
                "node_threshold": _point(m + 5, n, fa, h)}}}
                for kw, (m, n, fa, h) in rows.items()}}


def test_draws_add_up_per_keyword_and_per_draw():
    reps = [_report(0, {"a": (3, 100, 1, 2.2), "b": (10, 120, 4, 2.3)}),
            _report(1, {"a": (7, 110, 0, 2.2), "b": (2, 90, 2, 2.1)})]
    pooled = pool_wakeword_reports(reps)
    assert pooled["seeds"] == [0, 1]
    a = pooled["keywords"]["a"]["ours"]["at_1_fa_per_hour"]
    assert (a["misses"], a["n_ref"], a["per_draw"]) == (10, 210, [[3, 100, 2], [7, 110, 2]])
    assert a["miss_rate"] == pytest.approx(10 / 210, abs=1e-4)
    total = pooled["all"]["ours"]
    assert total["at_1_fa_per_hour"]["per_draw"] == [[13, 220, 4], [9, 200, 4]]
    node = total["node_threshold"]
    assert (node["misses"], node["false_alarms"]) == (42, 7)
    assert node["hours"] == pytest.approx(8.8) and node["fa_per_hour"] == pytest.approx(7 / 8.8,
                                                                                      abs=1e-3)
    half = pooled["keywords"]["b"]["ours"]["at_0.5_fa_per_hour"]
    assert half["missing_draws"] == 1 and half["n_ref"] == 120
    json.dumps(pooled)  # the report is plain JSON


def test_intervals_are_wilson_and_garwood():
    lo, hi = wilson_interval(10, 100)  # Wilson (1927): 0.0552-0.1744
    assert (lo, hi) == (pytest.approx(0.0552, abs=1e-4), pytest.approx(0.1744, abs=1e-4))
    lo, hi = poisson_rate_interval(0, 2.0)  # 0 events: upper 3.689 / hours
    assert lo == 0.0 and hi == pytest.approx(3.689 / 2.0, abs=1e-3)
    lo, hi = poisson_rate_interval(19, 26.4)  # 19 events: 11.44-29.67 (Garwood)
    assert (lo * 26.4, hi * 26.4) == (pytest.approx(11.44, abs=0.01),
                                      pytest.approx(29.67, abs=0.01))


def test_draws_must_match():
    with pytest.raises(ValueError, match="no wake-word report"):
        pool_wakeword_reports([])
    with pytest.raises(ValueError, match="same keywords and systems"):
        pool_wakeword_reports([_report(0, {"a": (1, 10, 0, 1.0)}),
                               _report(1, {"b": (1, 10, 0, 1.0)})])


def test_evaluate_kws_seeds_cli(data_dir, kws_model, tmp_path, capsys):
    """Two tiny draws: one report per draw, and the pooled report sums them."""
    from trainer.__main__ import main

    out = tmp_path / "draws"
    speech = kws_model.with_name("kws_speech.tflite")
    rc = main(["evaluate-kws", "--data", str(data_dir), "--model", str(speech),
               "--systems", "ours", "--keywords", "alexa", "--negative-hours", "0.02",
               "--positive-minutes", "1", "--site-background-minutes", "0",
               "--seeds", "3,4", "--out", str(out), "--quiet"])
    assert rc == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["seeds"] == [3, 4] and "alexa / kws_speech" in summary["results"]
    draws = [json.loads((out / f"seed_{s}" / "report.json").read_text()) for s in (3, 4)]
    assert [d["config"]["seed"] for d in draws] == [3, 4]
    pooled = json.loads((out / "report.json").read_text())
    got = pooled["keywords"]["alexa"]["kws_speech"]["node_threshold"]
    want = [d["keywords"]["alexa"]["systems"]["kws_speech"]["node_threshold"] for d in draws]
    assert got["n_ref"] == sum(w["n_ref"] for w in want) > 0
    assert got["hits"] == sum(w["hits"] for w in want)
    assert got["false_alarms"] == sum(w["false_alarms"] for w in want)
    table = pooled["keywords"]["alexa"]["kws_speech"]["node_threshold_table"]
    assert table["hits"] == sum(d["keywords"]["alexa"]["systems"]["kws_speech"]
                                ["node_threshold_table"]["hits"] for d in draws)
    assert "| alexa | kws_speech |" in (out / "report.md").read_text()
    assert main(["evaluate-kws", "--data", str(data_dir), "--seeds", "3,x",
                 "--out", str(out)]) == 2
    assert "--seeds" in capsys.readouterr().err
    assert main(["evaluate-kws", "--data", str(data_dir), "--protocol", "events",
                 "--seeds", "3,4", "--out", str(out)]) == 2
    assert "--seeds pools draws of the wakeword protocol" in capsys.readouterr().err


def test_a_rate_needs_hours():
    with pytest.raises(ValueError, match="hours"):
        poisson_rate_interval(3, 0.0)
