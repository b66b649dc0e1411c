"""A KWS bundle's generic negatives: the file, its checks, and the thresholds enrollment fits on
it (calibration.generic_negatives, calibration.keyword_thresholds, trainer.kws_negatives)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from calibration.enroll import enroll_keyword
from calibration.generic_negatives import (EXCLUSION_MARGIN_S, WINDOW_SECONDS,
                                           load_generic_negatives, normalisation_sha256,
                                           write_generic_negatives)
from calibration.keyword_thresholds import (SITE_FIT_MIN_HOURS, calibrated_threshold,
                                            event_costs, tail_fit_threshold)
from edge.audio import load_audio
from edge.kws import make_templates, matching_costs
from edge.model import ModelError, load_bundle
from trainer.kws_streams import enrollment_shots

ROOT = Path(__file__).resolve().parent.parent
BUNDLE = ROOT / "models" / "kws_speech.tflite"


def _bundle_copy(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for f in BUNDLE.parent.glob("kws_speech*"):
        shutil.copy(f, folder / f.name)
    return folder / BUNDLE.name


def _with_negatives(folder: Path, frames, fs, utterances) -> Path:
    """A copy of the shipped bundle whose generic negatives are ``frames``."""
    model = _bundle_copy(folder)
    meta = json.loads(model.with_suffix(".json").read_text())
    sha = write_generic_negatives(folder / "neg.npz", frames, fs, utterances)
    meta["generic_negatives"] = {"file": "neg.npz", "sha256": sha,
                                 "tflite_sha256": meta["tflite_sha256"],
                                 "normalisation_sha256": normalisation_sha256(meta)}
    model.with_suffix(".json").write_text(json.dumps(meta))
    return model


def _shots(data_dir, word, n=3):
    return [load_audio(s.path) for s in enrollment_shots(data_dir, (word,), n, 0)[word]]


def test_the_file_round_trips_and_cuts_out_the_keyword(tmp_path):
    rng = np.random.default_rng(0)
    fs = 0.08
    frames = [rng.normal(size=(200, 96)).astype(np.float32),
              rng.normal(size=(100, 96)).astype(np.float32)]
    utts = [(0, "left", 4.0, 4.5), (0, "stopping the car", 10.0, 11.0), (1, "the hi fi", 2.0, 3.0)]
    g = load_generic_negatives(load_bundle(_with_negatives(tmp_path, frames, fs, utts), "kws"))
    assert [len(f) for f in g.frames] == [200, 100] and g.frame_seconds == fs
    assert g.utterances == utts
    for got, want in zip(g.frames, frames):  # unit rows, int8: cosine within 1e-3
        cos = np.sum(got * want, 1) / np.linalg.norm(got, axis=1) / np.linalg.norm(want, axis=1)
        assert cos.min() > 0.999
    assert g.hours == pytest.approx(300 * fs / 3600)

    pieces, hours = g.without("stop")  # inside "stopping": stream 0 is split around it
    a = int(np.floor((10.0 - EXCLUSION_MARGIN_S - WINDOW_SECONDS) / fs))
    b = int(np.ceil((11.0 + EXCLUSION_MARGIN_S) / fs))
    assert [len(p) for p in pieces] == [a, 200 - b, 100]
    np.testing.assert_array_equal(pieces[1], g.frames[0][b:])
    assert hours == pytest.approx((300 - (b - a)) * fs / 3600)
    # a short word counts only whole: "hi" is cut from "the hi fi" (frames 9..43 of stream 1)
    assert [len(p) for p in g.without("hi")[0]] == [200, 9, 56]
    assert sum(map(len, g.without("top")[0])) == 300  # not inside "stopping"
    assert sum(map(len, g.without("this")[0])) == 300
    assert len(g.without("view_glass")[0]) == 2  # words of a keyword name, none in the texts


def test_a_bundle_with_broken_generic_negatives_is_refused(tmp_path):
    frames = [np.ones((10, 96), np.float32)]
    model = _with_negatives(tmp_path, frames, 0.08, [])
    (tmp_path / "neg.npz").write_bytes(b"x" + (tmp_path / "neg.npz").read_bytes()[1:])
    with pytest.raises(ModelError, match="neg.npz: sha256 .* does not match"):
        load_generic_negatives(load_bundle(model, "kws"))
    (tmp_path / "neg.npz").unlink()
    with pytest.raises(ModelError, match="neg.npz are missing .*build-kws-negatives"):
        load_generic_negatives(load_bundle(model, "kws"))
    meta = json.loads(model.with_suffix(".json").read_text())
    good = meta["generic_negatives"]
    for entry, what in [({"file": "neg.npz"}, "must name file, sha256"),
                        ({**good, "tflite_sha256": "0" * 64}, "embedded with another model")] + \
            [({**good, "rate_factor": f}, r"rate_factor must be a positive number, got")
             for f in (0, -1.0, float("nan"), "2", True, None)]:
        model.with_suffix(".json").write_text(json.dumps({**meta, "generic_negatives": entry}))
        with pytest.raises(ModelError, match=what):
            load_generic_negatives(load_bundle(model, "kws"))
    with pytest.raises(ValueError, match="streams 0..0"):
        write_generic_negatives(tmp_path / "x.npz", frames, 0.08, [(1, "a", 0.0, 1.0)])
    assert not (tmp_path / "x.npz").exists()


def test_enrollment_fits_each_keyword_on_the_shipped_generic_hour(data_dir):
    """The shipped bundle: thresholds fitted on its hour without the keyword (the same tail
    fit as on a site recording), one per keyword, not the table's one value."""
    bundle = load_bundle(BUNDLE, "kws")
    g = load_generic_negatives(bundle)
    assert g is not None and g.hours >= 0.9
    # measured by calibrate-kws-thresholds on val-split audio (trainer.kws_thresholds)
    assert g.rate_factor == bundle.metadata["generic_negatives"]["rate_factor"] > 1.0
    table = calibrated_threshold(bundle.metadata["threshold_calibration"], 1.0)
    got = {}
    for kw in ("computer", "alexa"):
        e = enroll_keyword(bundle, kw, _shots(data_dir, kw), shot_source="file")
        assert e.details[kw]["threshold_source"] == "generic-fit"
        frames, hours = g.without(kw)
        q = make_templates(kw, e.templates[kw], frame_weights=e.frame_weights.get(kw))
        costs = np.concatenate([event_costs(matching_costs(f, q)[0], e.templates[kw],
                                            e.cost_norms[kw], bundle.shot_fusion)
                                for f in frames])
        assert e.thresholds[kw] == pytest.approx(tail_fit_threshold(costs, hours,
                                                                    g.rate_factor))
        assert e.details[kw]["negative_seconds"] == pytest.approx(3600 * hours, rel=1e-3)
        got[kw] = e.thresholds[kw]
    # each keyword its own value (2026-12-01: computer -2.61, alexa -2.26; the table -2.80)
    assert abs(got["computer"] - got["alexa"]) > 0.2
    assert max(abs(t - table) for t in got.values()) > 0.3


def test_a_keyword_in_the_generic_hour_is_not_counted_against_itself(data_dir):
    """"stop" is among the hour's Speech Commands words: cut out, its threshold is higher than
    with its own utterances left in as false alarms."""
    bundle = load_bundle(BUNDLE, "kws")
    g = load_generic_negatives(bundle)
    assert sum("stop" in t for _, t, *_ in g.utterances) > 10
    e = enroll_keyword(bundle, "stop", _shots(data_dir, "stop"), shot_source="file")
    q = make_templates("stop", e.templates["stop"], frame_weights=e.frame_weights.get("stop"))
    uncut = np.concatenate([event_costs(matching_costs(f, q)[0], e.templates["stop"],
                                        e.cost_norms["stop"], bundle.shot_fusion)
                            for f in g.frames])
    assert e.thresholds["stop"] > tail_fit_threshold(uncut, g.hours, 1.0) + 0.3


def test_build_kws_negatives_tiny(tmp_path, data_dir, capsys):
    from trainer.__main__ import main

    model = _bundle_copy(tmp_path)
    rc = main(["build-kws-negatives", "--model", str(model), "--data", str(data_dir),
               "--hours", "0.03", "--seed", "3", "--quiet"])
    assert rc == 0
    captured = capsys.readouterr()
    out = json.loads(captured.out)
    meta = json.loads(model.with_suffix(".json").read_text())
    entry = meta["generic_negatives"]
    # a new hour: the shipped hour's measured factor does not carry over
    assert "rate_factor" not in entry and "calibrate-kws-thresholds" in captured.err
    assert entry["file"] == out["file"] == "kws_speech_negatives.npz"
    assert 0.03 <= entry["hours"] < 0.1 and entry["seed"] == 3  # whole 90 s streams
    assert set(entry["excluded_words"]) >= {"alexa", "computer", "smart_mirror", "view_glass"}
    assert sum(entry["composition"].values()) == entry["streams"]
    g = load_generic_negatives(load_bundle(model, "kws"))
    assert sum(len(f) for f in g.frames) == entry["frames"] and g.rate_factor == 1.0
    texts = [t for _, t, *_ in g.utterances]
    assert texts and not any(w in t for t in texts for w in ("alexa", "computer", "mirror"))
    assert g.hours < SITE_FIT_MIN_HOURS  # too short to fit on: enrollment takes the table
    e = enroll_keyword(load_bundle(model, "kws"), "alexa", _shots(data_dir, "alexa"),
                       shot_source="file")
    assert e.details["alexa"]["threshold_source"] == "calibrated"
