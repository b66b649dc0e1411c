"""``evaluate-kws --protocol wakeword`` (:mod:`trainer.kws_wakeword`): matching, sweep, a tiny run."""
from __future__ import annotations

import json

import pytest

from trainer.kws_metrics import Event
from trainer.kws_wakeword import Point, _Det, match_overlap, miss_at


def test_overlap_matching_rule():
    refs = [Event("alexa", 1.0, 1.6), Event("alexa", 5.0, 5.8)]
    dets = [_Det(0.9, 1.2, 1.5),     # overlaps the first: hit, latency 1.5 - 1.6
            _Det(1.3, 1.7, 1.9),     # the same utterance again: ignored
            _Det(3.0, 3.5, 3.6),     # nothing there: false alarm
            _Det(5.8, 6.0, 6.1),     # touches the end only (no overlap): false alarm
            _Det(4.0, 5.1, 5.3)]     # overlaps the second: hit before its end
    hits, fa, lat = match_overlap(refs, dets)
    assert (hits, fa) == (2, 2)
    assert sorted(lat) == pytest.approx([-0.5, -0.1])


def test_miss_rate_at_a_false_alarm_rate_is_the_best_point_within_it():
    pts = [Point(0.1, 2, 10, 0, 2.0), Point(0.2, 5, 10, 1, 2.0), Point(0.3, 8, 10, 3, 2.0)]
    assert miss_at(pts, 1.0).threshold == 0.2          # 0.5 FA/h, miss 50 %
    assert miss_at(pts, 0.5).threshold == 0.2
    assert miss_at(pts, 0.1).threshold == 0.1
    assert miss_at([Point(0.3, 8, 10, 3, 2.0)], 1.0) is None
    p = pts[1]
    assert p.miss_rate == 0.5 and p.fa_per_hour == 0.5 and p.f1 == pytest.approx(10 / 16)


@pytest.mark.slow
def test_wakeword_cli_tiny(data_dir, kws_model, tmp_path, capsys):
    """Two bundles of ours and the peer on the same streams and shots; the node's own
    threshold for ours."""
    from trainer.__main__ import main

    out = tmp_path / "ww"
    speech = kws_model.with_name("kws_speech.tflite")
    rc = main(["evaluate-kws", "--data", str(data_dir), "--model", f"{kws_model},{speech}",
               "--keywords", "alexa", "--negative-hours", "0.02", "--positive-minutes", "1",
               "--seed", "3", "--out", str(out), "--quiet"])
    assert rc == 0
    summary = json.loads(capsys.readouterr().out)
    assert set(summary["results"]) == {"alexa / kws_default", "alexa / kws_speech",
                                       "alexa / local-wake"}
    rep = json.loads((out / "report.json").read_text())
    e = rep["keywords"]["alexa"]
    assert e["references"] > 0 and len(e["shots"]) == 5
    ours, peer = e["systems"]["kws_default"], e["systems"]["local-wake"]
    assert e["systems"]["kws_speech"]["model_id"].startswith("kws_speech-")
    for r in (ours, e["systems"]["kws_speech"], peer):
        misses = [p["miss_rate"] for p in sorted(r["det"], key=lambda p: p["threshold"])]
        assert misses[0] >= misses[-1] and misses[-1] < 1.0  # a sweep from strict to loose
    nt = ours["node_threshold"]
    assert nt["n_ref"] == e["references"] and nt["hours"] == pytest.approx(e["hours"], abs=1e-3)
    assert "node_threshold" not in peer
    sp = e["systems"]["kws_speech"]  # fitted on its generic hour, its table's value beside it
    assert sp["node_threshold"]["source"] == "generic-fit"
    assert sp["node_threshold_table"]["source"] == "calibrated"
    assert sp["node_threshold_table"]["threshold"] != sp["node_threshold"]["threshold"]
    assert "node_threshold_table" not in ours  # kws_default: its table is what it set
    assert rep["negative_streams"]["tts"] >= 1 and rep["negative_streams"]["noise"] >= 1
    md = (out / "report.md").read_text()
    assert "| alexa | kws_default |" in md and "| alexa | local-wake |" in md
    assert (out / "det_alexa.png").read_bytes()[:4] == b"\x89PNG"
