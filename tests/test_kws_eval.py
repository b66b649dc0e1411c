"""``python -m trainer evaluate-kws``: metrics by hand, streams from real recordings, a tiny run."""
from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest

from trainer import kws_eval as ke
from trainer.kws_data import split_of

ROOT = Path(__file__).resolve().parent.parent


# --------------------------------------------------------------------------- metrics


def test_match_events_collars_by_hand():
    refs = [("stop", 1.0, 1.6),   # 0.6 s: offset collar max(0.2, 0.3) = 0.3
            ("yes", 3.0, 3.4)]    # 0.4 s: offset collar max(0.2, 0.2) = 0.2
    dets = [("stop", 1.25, 1.6),  # onset off by 0.25 > 0.2: no
            ("stop", 1.15, 1.85),  # onset 0.15, offset 0.25 <= 0.3: match
            ("yes", 1.0, 1.6),    # right place, wrong keyword: false alarm
            ("yes", 3.1, 3.65),   # offset off by 0.25 > 0.2: no
            ("yes", 3.2, 3.6)]    # onset exactly 0.2 and offset exactly 0.2: match (<=)
    rm, dm = ke.match_events(refs, dets, collar=0.2, offset_fraction=0.5)
    assert rm.tolist() == [1, 4]
    assert dm.tolist() == [-1, 0, -1, -1, 1]
    overall, per = ke.count_events([refs], [dets])
    assert (overall.n_ref, overall.n_sys, overall.n_tp) == (2, 5, 2)
    assert overall.precision == pytest.approx(0.4)
    assert overall.recall == pytest.approx(1.0)
    assert overall.f1 == pytest.approx(2 * 0.4 * 1.0 / 1.4)  # 0.5714
    assert (per["stop"].n_ref, per["stop"].n_sys, per["stop"].n_tp) == (1, 2, 1)
    assert (per["yes"].n_ref, per["yes"].n_sys, per["yes"].n_tp) == (1, 3, 1)
    assert per["yes"].f1 == pytest.approx(2 * (1 / 3) * 1 / (1 / 3 + 1))  # 0.5
    # a larger collar lets the 0.25 s onset error through; nothing is matched twice
    rm, dm = ke.match_events(refs, dets, collar=0.3)
    assert (rm >= 0).sum() == 2 and (dm >= 0).sum() == 2


def test_offset_collar_grows_with_reference_length():
    ref = [("alexa", 10.0, 12.0)]  # 2 s: offset collar max(0.2, 1.0) = 1.0
    assert ke.match_events(ref, [("alexa", 10.1, 11.05)])[0].tolist() == [0]   # 0.95 <= 1
    assert ke.match_events(ref, [("alexa", 10.1, 10.9)])[0].tolist() == [-1]   # 1.1 > 1
    assert ke.match_events(ref, [("alexa", 10.1, 10.9)], offset_fraction=0.6)[0].tolist() == [0]


def test_optimal_matching_beats_greedy_first_fit():
    # A (1.0-2.0, offset collar 0.5) accepts d1 and d2; B (1.3-1.5, offset collar 0.2)
    # accepts only d1. First fit gives d1 (earliest onset) to A and leaves B unmatched; a
    # maximum matching pairs A-d2 and B-d1.
    refs = [("go", 1.0, 2.0), ("go", 1.3, 1.5)]
    dets = [("go", 1.15, 1.55), ("go", 1.2, 1.9)]
    rm, _ = ke.match_events(refs, dets, matching="greedy")
    assert rm.tolist() == [0, -1]
    rm, dm = ke.match_events(refs, dets, matching="optimal")
    assert rm.tolist() == [1, 0] and dm.tolist() == [1, 0]
    with pytest.raises(ValueError):
        ke.match_events(refs, dets, matching="best")


def test_micro_average_over_streams_and_empty_cases():
    s1_ref = [("a", 0.0, 0.5), ("b", 2.0, 2.5)]
    s1_det = [("a", 0.05, 0.5), ("b", 5.0, 5.5)]          # 1 TP, 1 FA, 1 miss
    s2_ref = [("a", 1.0, 1.5)]
    s2_det = [("a", 1.0, 1.5), ("a", 1.0, 1.5)]            # duplicate: 1 TP + 1 FA
    overall, per = ke.count_events([s1_ref, s2_ref], [s1_det, s2_det])
    assert (overall.n_ref, overall.n_sys, overall.n_tp) == (3, 4, 2)
    assert (overall.n_fp, overall.n_fn) == (2, 1)
    assert overall.precision == pytest.approx(0.5)
    assert overall.recall == pytest.approx(2 / 3)
    assert overall.f1 == pytest.approx(2 * 0.5 * (2 / 3) / (0.5 + 2 / 3))  # 4/7
    assert (per["a"].n_ref, per["a"].n_sys, per["a"].n_tp) == (2, 3, 2)
    assert (per["b"].n_ref, per["b"].n_sys, per["b"].n_tp) == (1, 1, 0)
    assert per["b"].f1 == 0.0
    # no detections at all: precision 0 by convention, F1 0
    overall, _ = ke.count_events([s1_ref], [[]])
    assert (overall.precision, overall.recall, overall.f1) == (0.0, 0.0, 0.0)
    with pytest.raises(ValueError):
        ke.count_events([s1_ref], [])


def _pt(th, n_ref, n_sys, n_tp, hours=0.5):
    return ke.SweepPoint(th, ke.Counts(n_ref, n_sys, n_tp), hours)


def test_miss_rate_at_fa_and_best_f1_by_hand():
    pts = [_pt(0.1, 10, 2, 2),    # FA 0/h,  miss 0.8, F1 2*1*.2/1.2 = 0.333
           _pt(0.2, 10, 5, 5),    # FA 0/h,  miss 0.5, F1 0.667
           _pt(0.3, 10, 8, 7),    # FA 2/h,  miss 0.3, F1 2*.875*.7/1.575 = 0.778
           _pt(0.4, 10, 14, 8)]   # FA 12/h, miss 0.2, F1 2*(8/14)*.8/(8/14+.8) = 0.667
    assert pts[2].fa_per_hour == pytest.approx(2.0)
    assert pts[3].fa_per_hour == pytest.approx(12.0)
    m = ke.miss_rate_at_fa(pts, 1.0)
    assert m["miss_rate"] == pytest.approx(0.5) and m["threshold"] == 0.2
    assert m["fa_per_hour"] == 0.0
    m = ke.miss_rate_at_fa(pts, 2.0)   # FA/h <= target is inclusive
    assert m["miss_rate"] == pytest.approx(0.3) and m["threshold"] == 0.3
    m = ke.miss_rate_at_fa(pts[3:], 1.0)  # nothing qualifies: no detections at all
    assert m["miss_rate"] == 1.0 and m["threshold"] is None
    best = ke.best_f1_point(pts)
    assert best.threshold == 0.3
    assert best.counts.f1 == pytest.approx(2 * 0.875 * 0.7 / 1.575)


# --------------------------------------------------------------------------- data


@pytest.fixture(scope="module")
def small_cfg():
    return ke.EvalConfig(keywords=("alexa", "stop"), shots=3, snr_db=10.0, minutes_per_split=0.5,
                         stream_seconds=15.0, seed=3)


@pytest.fixture(scope="module")
def shots(data_dir, small_cfg):
    return ke.enrollment_shots(data_dir, small_cfg.keywords, small_cfg.shots, small_cfg.seed)


def test_enrollment_shots_from_train_speakers(data_dir, shots, small_cfg):
    assert set(shots) == {"alexa", "stop"}
    for kw, ss in shots.items():
        assert len(ss) == 3
        for s in ss:
            assert s.keyword == kw and split_of(s.speaker) == "train"
            assert ke.MIN_CLIP_S <= len(s.audio) / ke.SAMPLE_RATE <= ke.MAX_CLIP_S
            assert s.end_s - s.start_s == pytest.approx(len(s.audio) / ke.SAMPLE_RATE, abs=1e-3)
    # Speech Commands has speakers with several takes of "stop": one speaker is preferred;
    # wake-word files have no speaker ids, so those shots come from several files
    assert len({s.speaker for s in shots["stop"]}) == 1
    assert len({s.speaker for s in shots["alexa"]}) == 3
    again = ke.enrollment_shots(data_dir, small_cfg.keywords, small_cfg.shots, small_cfg.seed)
    assert [s.path for s in again["stop"]] == [s.path for s in shots["stop"]]


def test_streams_ground_truth_speakers_snr_determinism(data_dir, small_cfg, shots):
    enrolled = {s.speaker for ss in shots.values() for s in ss}
    streams = ke.build_streams(data_dir, "test", small_cfg, exclude_speakers=enrolled,
                               keep_tracks=True)
    assert len(streams) == 2
    n_kw = 0
    for st in streams:
        assert st.duration_s == pytest.approx(15.0, abs=1e-3)
        np.testing.assert_allclose(st.audio, st.speech + st.noise, atol=1e-6)
        assert np.max(np.abs(st.audio)) <= 1.0
        mask = np.zeros(len(st.audio), bool)
        prev_end = 0.0
        for p in st.placed:
            assert 0.0 < p.onset_s < p.offset_s <= st.duration_s
            assert p.onset_s >= prev_end  # no overlaps, in time order
            prev_end = p.offset_s
            assert split_of(p.speaker) == "test" and p.speaker not in enrolled
            assert p.is_keyword == (p.word in small_cfg.keywords)
            mask[int(round(p.onset_s * 16000)):int(round(p.offset_s * 16000))] = True
        assert not np.any(st.speech[~mask])  # speech only where the ground truth says
        assert [(e.keyword, e.onset_s, e.offset_s) for e in st.events] == \
            [(p.word, p.onset_s, p.offset_s) for p in st.placed if p.is_keyword]
        n_kw += len(st.events)
        assert any(not p.is_keyword for p in st.placed)
        # SNR over the utterance regions, measured on the components
        snr = 10 * np.log10(np.mean(st.speech[mask].astype(np.float64) ** 2)
                            / np.mean(st.noise[mask].astype(np.float64) ** 2))
        assert abs(snr - small_cfg.snr_db) < 0.5
        assert st.snr_db == pytest.approx(snr, abs=1e-6)
        # test noise comes from the test range of the noise files only
        lo, hi = ke.NOISE_RANGES["test"]
        for c in st.noise_chunks:
            n = len(dict(ke._noise_sources(str(data_dir.resolve())))[c["file"]]) / 16000
            assert c["start_s"] >= lo * n - 1e-3 and c["end_s"] <= hi * n + 1e-3
    assert n_kw >= 4
    # the ground truth is where the trimmed recording really is: the placed samples are the
    # trimmed clip, scaled
    st = streams[0]
    e = st.placed[0]
    utt = next(u for u in ke._utterances(str(data_dir.resolve())) if str(u.path) == e.path)
    clip = ke.load_clip(utt)
    a = int(round(e.onset_s * 16000))
    seg = st.speech[a:a + len(clip.audio)]
    assert len(clip.audio) == int(round(e.offset_s * 16000)) - a
    assert np.corrcoef(seg, clip.audio)[0, 1] > 0.9999
    # deterministic given the seed; another seed gives other streams
    again = ke.build_streams(data_dir, "test", small_cfg, exclude_speakers=enrolled)
    assert all(np.array_equal(a.audio, b.audio) and a.events == b.events
               for a, b in zip(streams, again))
    other = ke.build_streams(data_dir, "test", dataclasses.replace(small_cfg, seed=4),
                             exclude_speakers=enrolled)
    assert other[0].placed != streams[0].placed


def test_val_streams_use_val_speakers_and_clean_option(data_dir, small_cfg):
    cfg = dataclasses.replace(small_cfg, snr_db=math.inf, minutes_per_split=0.2)
    (st,) = ke.build_streams(data_dir, "val", cfg)
    assert st.placed and all(split_of(p.speaker) == "val" for p in st.placed)
    assert st.noise_chunks == [] and math.isinf(st.snr_db)
    lo, hi = ke.NOISE_RANGES["val"]
    assert hi <= ke.NOISE_RANGES["test"][0] or lo >= ke.NOISE_RANGES["test"][1]


def test_clear_errors(data_dir, tmp_path):
    with pytest.raises(ValueError, match="available words: .*computer"):
        ke.check_keywords(data_dir, ["alexa", "abracadabra"])
    with pytest.raises(FileNotFoundError, match="data folder"):
        ke.check_keywords(tmp_path / "nowhere", ["alexa"])
    from trainer.__main__ import main

    assert main(["evaluate-kws", "--data", str(data_dir), "--keywords", "alexa,abracadabra",
                 "--systems", "mfcc", "--out", str(tmp_path), "--quiet"]) == 2
    assert main(["evaluate-kws", "--data", str(data_dir), "--model", str(tmp_path / "none.tflite"),
                 "--systems", "tacos", "--out", str(tmp_path), "--quiet"]) == 2
    assert main(["evaluate-kws", "--data", str(tmp_path / "nowhere"), "--systems", "mfcc",
                 "--out", str(tmp_path), "--quiet"]) == 2
    assert not list(tmp_path.glob("report.*"))


# --------------------------------------------------------------------------- end to end


def test_evaluate_kws_cli_mfcc_tiny(data_dir, tmp_path, capsys):
    from trainer.__main__ import main

    out = tmp_path / "report"
    rc = main(["evaluate-kws", "--data", str(data_dir), "--systems", "mfcc",
               "--keywords", "alexa,computer", "--shots", "3", "--snr-db", "20",
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


@pytest.fixture(scope="module")
def kws_model() -> Path:
    p = ROOT / "models" / "kws_default.tflite"
    assert p.is_file(), "the default KWS bundle is missing: run `python -m trainer train-kws`"
    return p


def test_tacos_system_features(kws_model, shots):
    setup = ke.EvalSetup(ke.EvalConfig(keywords=("alexa", "stop")), ROOT, kws_model, shots, [])
    sysm = ke.make_tacos_system(setup)
    assert sysm.name == "tacos" and sysm.frame_seconds == pytest.approx(0.016)
    assert sysm.info["keywords_in_training_vocabulary"] == []  # held-out words: unseen
    y = shots["alexa"][0].audio
    f = sysm.features(y)
    assert f.dtype == np.float32 and f.shape[1] == 128
    assert abs(len(f) - len(y) / 256) <= 2
    np.testing.assert_allclose(np.linalg.norm(f, axis=1), 1.0, atol=1e-3)


def test_evaluate_kws_cli_tacos_and_mfcc_tiny(data_dir, kws_model, tmp_path, capsys):
    from trainer.__main__ import main

    out = tmp_path / "report"
    rc = main(["evaluate-kws", "--data", str(data_dir), "--model", str(kws_model),
               "--systems", "tacos,mfcc", "--keywords", "alexa,computer", "--shots", "3",
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
    assert "TACos minus MFCC-DTW test F1" in (out / "report.md").read_text()
    assert (out / "trace_tacos.png").read_bytes()[:4] == b"\x89PNG"
    # The node's own per-keyword thresholds (enrollment procedure) are scored too.
    nt = rep["node_thresholds"]
    assert set(nt["thresholds"]) == {"alexa", "computer"}
    assert all(0 < t < 2 for t in nt["thresholds"].values())
    assert nt["test"]["n_ref"] == tacos["test"]["n_ref"] and nt["fa_per_hour"] >= 0
