"""KWS test streams and enrollment shots (:mod:`trainer.kws_streams`) from real recordings."""
from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

from trainer import kws_streams as ks
from trainer.kws_data import split_of


# --------------------------------------------------------------------------- data


@pytest.fixture(scope="module")
def small_cfg():
    return ks.EvalConfig(keywords=("alexa", "stop"), shots=3, snr_db=10.0, minutes_per_split=0.5,
                         stream_seconds=15.0, seed=3)


@pytest.fixture(scope="module")
def shots(data_dir, small_cfg):
    return ks.enrollment_shots(data_dir, small_cfg.keywords, small_cfg.shots, small_cfg.seed)


def test_enrollment_shots_from_train_speakers(data_dir, shots, small_cfg):
    assert set(shots) == {"alexa", "stop"}
    for kw, ss in shots.items():
        assert len(ss) == 3
        for s in ss:
            assert s.keyword == kw and split_of(s.speaker) == "train"
            assert ks.MIN_CLIP_S <= len(s.audio) / ks.SAMPLE_RATE <= ks.MAX_CLIP_S
            assert s.end_s - s.start_s == pytest.approx(len(s.audio) / ks.SAMPLE_RATE, abs=1e-3)
    # Speech Commands has speakers with several takes of "stop": one speaker is preferred;
    # wake-word files have no speaker ids, so those shots come from several files
    assert len({s.speaker for s in shots["stop"]}) == 1
    assert len({s.speaker for s in shots["alexa"]}) == 3
    again = ks.enrollment_shots(data_dir, small_cfg.keywords, small_cfg.shots, small_cfg.seed)
    assert [s.path for s in again["stop"]] == [s.path for s in shots["stop"]]


def test_streams_ground_truth_speakers_snr_determinism(data_dir, small_cfg, shots):
    enrolled = {s.speaker for ss in shots.values() for s in ss}
    streams = ks.build_streams(data_dir, "test", small_cfg, exclude_speakers=enrolled,
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
        lo, hi = ks.NOISE_RANGES["test"]
        for c in st.noise_chunks:
            n = len(dict(ks._noise_sources(str(data_dir.resolve())))[c["file"]]) / 16000
            assert c["start_s"] >= lo * n - 1e-3 and c["end_s"] <= hi * n + 1e-3
    assert n_kw >= 4
    # the ground truth is where the trimmed recording really is: the placed samples are the
    # trimmed clip, scaled
    st = streams[0]
    e = st.placed[0]
    utt = next(u for u in ks._utterances(str(data_dir.resolve())) if str(u.path) == e.path)
    clip = ks.load_clip(utt)
    a = int(round(e.onset_s * 16000))
    seg = st.speech[a:a + len(clip.audio)]
    assert len(clip.audio) == int(round(e.offset_s * 16000)) - a
    assert np.corrcoef(seg, clip.audio)[0, 1] > 0.9999
    # deterministic given the seed; another seed gives other streams
    again = ks.build_streams(data_dir, "test", small_cfg, exclude_speakers=enrolled)
    assert all(np.array_equal(a.audio, b.audio) and a.events == b.events
               for a, b in zip(streams, again))
    other = ks.build_streams(data_dir, "test", dataclasses.replace(small_cfg, seed=4),
                             exclude_speakers=enrolled)
    assert other[0].placed != streams[0].placed


def test_val_streams_use_val_speakers_and_clean_option(data_dir, small_cfg):
    cfg = dataclasses.replace(small_cfg, snr_db=math.inf, minutes_per_split=0.2)
    (st,) = ks.build_streams(data_dir, "val", cfg)
    assert st.placed and all(split_of(p.speaker) == "val" for p in st.placed)
    assert st.noise_chunks == [] and math.isinf(st.snr_db)
    lo, hi = ks.NOISE_RANGES["val"]
    assert hi <= ks.NOISE_RANGES["test"][0] or lo >= ks.NOISE_RANGES["test"][1]
