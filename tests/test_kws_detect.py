"""Keyword detection and post-processing (edge/kws.py, thesis 6.3.6)."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from edge.dtw import cosine_cost_matrix, subsequence_dtw
from edge.kws import (Detection, KeywordSpotter, Template, detect_keywords, fuse_shot_costs,
                      make_templates, matching_costs, onset_frame_weights)
from edge.kws_runs import groups_of_equal_size
from dtw_reference import subsequence_dtw_reference

FS = 0.016  # seconds per frame on the node


def unit(x):
    x = np.asarray(x, np.float64)
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def warp(t, rng):
    """A time-warped copy: a random speaking rate (frames repeated or skipped)."""
    rate = rng.uniform(0.7, 1.4)
    idx = np.floor(np.arange(0, len(t), rate)).astype(int)
    return t[idx]


def push_chunked(spotter, frames, rng, max_chunk=9):
    out, s = [], 0
    while s < len(frames):
        n = int(rng.integers(1, max_chunk + 1))
        out += spotter.push(frames[s:s + n])
        s += n
    return out + spotter.flush()


@pytest.fixture(scope="module")
def scene():
    """400 random unit frames (D=32) with warped, noisy copies of keyword shots inserted."""
    rng = np.random.default_rng(7)
    D = 32
    stream = unit(rng.standard_normal((400, D)))
    # two keywords, three shots each: shots of a keyword are noisy versions of one "word"
    words = {"stop": unit(rng.standard_normal((20, D))), "go": unit(rng.standard_normal((14, D)))}
    templates = []
    for kw, w in words.items():
        for _ in range(3):
            shot = warp(w, rng)
            templates.append(Template(kw, unit(shot + 0.05 * rng.standard_normal(shot.shape))))
    truth = []
    for kw, pos in (("stop", 30), ("go", 95), ("stop", 170), ("go", 240), ("go", 262),
                    ("stop", 330)):
        occ = warp(words[kw], rng)
        occ = unit(occ + 0.05 * rng.standard_normal(occ.shape))
        stream[pos:pos + len(occ)] = occ
        truth.append((kw, pos, pos + len(occ)))
    return stream, templates, truth


THRESHOLDS = {"stop": 0.35, "go": 0.35}


def test_inserted_keywords_are_found_with_onset_and_offset(scene):
    stream, templates, truth = scene
    dets = detect_keywords(stream, templates, THRESHOLDS, FS)
    assert len(dets) == len(truth), [(d.keyword, d.onset_frame, d.offset_frame) for d in dets]
    for d, (kw, on, off) in zip(dets, truth):
        assert d.keyword == kw
        assert abs(d.onset_frame - on) <= 2 and abs(d.offset_frame - off) <= 2, (d, on, off)
        assert d.cost < d.threshold == THRESHOLDS[kw]
        assert d.onset_s == pytest.approx(d.onset_frame * FS)
        assert d.offset_s == pytest.approx(d.offset_frame * FS)
        assert templates[d.template_index].keyword == kw
    # onset order, no overlap
    assert all(a.offset_frame <= b.onset_frame for a, b in zip(dets, dets[1:]))


def test_no_detection_without_keyword(scene):
    stream, templates, _ = scene
    rng = np.random.default_rng(11)
    background = unit(rng.standard_normal(stream.shape))
    assert detect_keywords(background, templates, THRESHOLDS, FS) == []
    # and the background is far from the threshold, not just above it
    sp = KeywordSpotter(templates, THRESHOLDS, FS, record_trace=True)
    sp.push(background)
    sp.flush()
    assert min(np.min(v) for v in sp.trace.values()) > 0.6


def test_chunking_does_not_change_detections(scene):
    stream, templates, _ = scene
    # a loose threshold gives many, overlapping raw detections: the hard case
    for thresholds in (THRESHOLDS, {"stop": 0.8, "go": 0.85}):
        batch = detect_keywords(stream, templates, thresholds, FS)
        assert batch
        for seed in range(4):
            rng = np.random.default_rng(seed)
            sp = KeywordSpotter(templates, thresholds, FS)
            assert push_chunked(sp, stream, rng, max_chunk=[1, 3, 9, 40][seed]) == batch
            assert sp.frames_seen == len(stream)


def test_precomputed_matching_costs_give_the_same_detections(scene):
    """A threshold sweep runs the DTW once (matching_costs) and decides with push_matching."""
    stream, templates, _ = scene
    mc, st = matching_costs(stream, templates)
    assert mc.shape == st.shape == (len(stream), len(templates))
    for decision in ("exact", "confirmed"):
        for thresholds in (THRESHOLDS, {"stop": 0.8, "go": 0.85}):
            direct = KeywordSpotter(templates, thresholds, FS, decision=decision)
            expected = [d for a in range(0, len(stream), 37)
                        for d in direct.push(stream[a:a + 37])] + direct.flush()
            sp = KeywordSpotter(templates, thresholds, FS, decision=decision, record_trace=True)
            got = []
            for a in range(0, len(stream), 37):  # in pieces, as a stream arrives
                got += sp.push_matching(mc[a:a + 37], st[a:a + 37])
            got += sp.flush()
            assert got == expected and expected
            assert [d.decided_frame for d in got] == [d.decided_frame for d in expected]
    sp = KeywordSpotter(templates, THRESHOLDS, FS)
    sp.push(stream[:10])
    with pytest.raises(RuntimeError, match="push"):
        sp.push_matching(mc[10:20], st[10:20])
    sp.reset()
    sp.push_matching(mc[:10], st[:10])
    with pytest.raises(RuntimeError, match="push_matching"):
        sp.push(stream[10:20])
    with pytest.raises(ValueError, match="shape"):
        sp.push_matching(mc[:, :1], st[:, :1])


def test_detections_are_emitted_while_streaming_in_onset_order(scene):
    stream, templates, truth = scene
    sp = KeywordSpotter(templates, THRESHOLDS, FS)
    m_max = max(t.n_frames for t in templates)
    emitted_at = []
    for j in range(0, len(stream), 4):
        for d in sp.push(stream[j:j + 4]):
            emitted_at.append((d, sp.frames_seen))
    rest = sp.flush()
    assert rest == []  # the last keyword ends long before the stream does
    dets = [d for d, _ in emitted_at]
    assert dets == detect_keywords(stream, templates, THRESHOLDS, FS)
    for d, seen in emitted_at:
        # final no later than ~2 M_max frames after the path ended (plus the run's end and
        # the 4-frame blocks), never before the path ended
        assert d.offset_frame <= seen <= d.offset_frame + 2 * m_max + 12


def test_trace_equals_batch_dtw(scene):
    stream, templates, _ = scene
    sp = KeywordSpotter(templates, THRESHOLDS, FS, record_trace=True)
    sp.push(stream[:123])
    sp.push(stream[123:])
    sp.flush()
    trace = sp.trace
    assert set(trace) == {"stop", "go"}
    for kw in trace:
        assert trace[kw].shape == (len(stream),)
        costs = [subsequence_dtw(cosine_cost_matrix(t.features, stream)).matching_cost
                 for t in templates if t.keyword == kw]
        expected = np.min(costs, axis=0)
        assert np.array_equal(np.isinf(trace[kw]), np.isinf(expected))
        fin = np.isfinite(expected)
        np.testing.assert_allclose(trace[kw][fin], expected[fin], atol=1e-5)


# --------------------------------------------------------------------------------------
# post-processing on hand-made streams: one-hot frames, so costs are exactly known
# --------------------------------------------------------------------------------------

D_HOT = 64


def hot(indices):
    """One-hot frames e_i (templates use dims < 40; the background dims >= 40)."""
    return np.eye(D_HOT, dtype=np.float32)[list(indices)]



# --------------------------------------------------------------------------------------
# decision="confirmed" (the node): decided confirm_frames after a run's minimum
# --------------------------------------------------------------------------------------

CONFIRMED = {"decision": "confirmed", "confirm_frames": 8}


def test_confirmed_is_chunking_invariant(scene):
    stream, templates, _ = scene
    for thresholds in (THRESHOLDS, {"stop": 0.8, "go": 0.85}):
        whole = detect_keywords(stream, templates, thresholds, FS, **CONFIRMED)
        assert whole
        for seed in range(4):
            rng = np.random.default_rng(seed)
            sp = KeywordSpotter(templates, thresholds, FS, **CONFIRMED)
            assert push_chunked(sp, stream, rng, max_chunk=[1, 3, 9, 40][seed]) == whole


def test_confirmed_equals_exact_without_overlaps_and_decides_within_the_bound(scene):
    """Separate keywords: the same detections as the exact definition, each decided at most
    confirm_frames after its path's end (exact: up to ~2 M_max frames later)."""
    stream, templates, truth = scene
    exact = detect_keywords(stream, templates, THRESHOLDS, FS)
    sp = KeywordSpotter(templates, THRESHOLDS, FS, **CONFIRMED)
    emitted = []
    for j in range(0, len(stream), 4):
        emitted += [(d, sp.frames_seen) for d in sp.push(stream[j:j + 4])]
    assert sp.flush() == []
    assert [d for d, _ in emitted] == exact and len(exact) == len(truth)
    for d, seen in emitted:
        assert d.offset_frame < d.decided_frame <= d.offset_frame + 8
        assert d.decided_frame <= seen <= d.decided_frame + 3  # blocks of 4 frames
    m_max = max(t.n_frames for t in templates)
    exact_lag = []
    sp = KeywordSpotter(templates, THRESHOLDS, FS)
    for j in range(0, len(stream), 4):
        exact_lag += [sp.frames_seen - d.offset_frame for d in sp.push(stream[j:j + 4])]
    assert max(exact_lag) > 8 and max(exact_lag) <= 2 * m_max + 12


def test_confirmed_first_decided_keeps_its_interval():
    """The documented difference: where raw detections overlap, the one decided first
    keeps its interval (exact: the one with the lower cost)."""
    stream = hand_stream(60, [(10, range(0, 20))])
    a = Template("a", noisy(hot(range(0, 10)), 0.3))   # noisy, path ends first
    b = Template("b", hot(range(5, 20)))                # exact, path ends later
    exact = detect_keywords(stream, [a, b], {"a": 0.3, "b": 0.3}, FS)
    confirmed = detect_keywords(stream, [a, b], {"a": 0.3, "b": 0.3}, FS, **CONFIRMED)
    assert [(d.keyword, d.onset_frame, d.offset_frame) for d in exact] == \
        [("a", 10, 15), ("b", 15, 30)]
    assert [(d.keyword, d.onset_frame, d.offset_frame) for d in confirmed] == \
        [("a", 10, 20), ("b", 20, 30)]
    assert confirmed[0].decided_frame < confirmed[1].decided_frame



def test_max_wait_decides_a_falling_run_early_and_once():
    """A run whose cost keeps falling (an onset-weighted word's path running into the quiet
    after it): with max_wait_frames its best so far is decided that many frames after the
    run began, once, in any chunking; without, only when the cost stops falling."""
    t = Template("w", hot(range(0, 10)))
    cost = np.full((24, 1), 0.9)
    cost[12:19, 0] = [0.5, 0.45, 0.4, 0.35, 0.3, 0.25, 0.2]  # the run: frames 12-18
    start = np.maximum(np.arange(24) - 9, 0)[:, None]  # paths over 10 frames

    def decide(max_wait, chunk):
        sp = KeywordSpotter([t], {"w": 0.6}, FS, decision="confirmed", confirm_frames=1,
                            max_wait_frames=max_wait)
        out = []
        for j in range(0, len(cost), chunk):
            out += [(d, sp.frames_seen) for d in sp.push_matching(cost[j:j + chunk],
                                                                   start[j:j + chunk])]
        return out + [(d, sp.frames_seen) for d in sp.flush()]

    late = decide(None, 1)  # decided when the run closes at frame 19
    assert [(d.onset_frame, d.offset_frame, d.decided_frame, d.cost) for d, _ in late] == \
        [(9, 19, 20, 0.2)]
    early = decide(2, 1)  # decided with frame 14, at the best so far; the rest is dropped
    assert [(d.onset_frame, d.offset_frame, d.decided_frame, d.cost) for d, _ in early] == \
        [(5, 15, 15, 0.4)]
    assert early[0][1] == 15  # reported as soon as frame 14 was pushed
    for chunk in (2, 3, 5, 24):
        assert [d for d, _ in decide(2, chunk)] == [d for d, _ in early]
    # 0: decided on the run's first frame; a path that then moves on by half a template
    # is another detection (the module docstring's "usually dropped by step 4")
    assert [(d.offset_frame, d.cost) for d, _ in decide(0, 1)] == [(13, 0.5), (18, 0.25)]
    with pytest.raises(ValueError, match="max_wait_frames"):
        KeywordSpotter([t], {"w": 0.6}, FS, decision="confirmed", max_wait_frames=-1)


def hand_stream(n, pieces, seed=0):
    """Background frames orthogonal to every template, with one-hot pieces inserted."""
    rng = np.random.default_rng(seed)
    s = np.zeros((n, D_HOT), np.float32)
    s[:, 40:] = rng.standard_normal((n, D_HOT - 40))
    s = unit(s)
    for start, idx in pieces:
        s[start:start + len(idx)] = hot(idx)
    return s


def noisy(frames, eps, seed=1):
    """Same frames with a small component outside the one-hot dims: cost ~ eps^2 / 2."""
    rng = np.random.default_rng(seed)
    f = frames.copy()
    f[:, 40:] += eps * rng.standard_normal((len(f), D_HOT - 40)) / np.sqrt(D_HOT - 40)
    return unit(f)


def spot(templates, thresholds, stream):
    batch = detect_keywords(stream, templates, thresholds, FS)
    sp = KeywordSpotter(templates, thresholds, FS)
    assert push_chunked(sp, stream, np.random.default_rng(3), 5) == batch
    return [(d.keyword, d.onset_frame, d.offset_frame) for d in batch], batch


def test_overlap_lower_cost_keeps_interval_other_is_shortened():
    # "a" (exact, cost 0) at [10, 20); "b" (noisy, cost > 0) at [15, 30): overlap [15, 20)
    stream = hand_stream(60, [(10, range(0, 20))])
    a = Template("a", hot(range(0, 10)))
    b = Template("b", noisy(hot(range(5, 20)), 0.3))
    got, dets = spot([a, b], {"a": 0.3, "b": 0.3}, stream)
    assert got == [("a", 10, 20), ("b", 20, 30)]
    assert dets[0].cost == pytest.approx(0.0, abs=1e-6) and dets[1].cost > 1e-3
    # swap the costs: now "b" keeps [15, 30) and "a" is cut to [10, 15) = 5 frames,
    # exactly half of its 10-frame template: kept ("shorter than half" drops)
    a2 = Template("a", noisy(hot(range(0, 10)), 0.3))
    b2 = Template("b", hot(range(5, 20)))
    got, _ = spot([a2, b2], {"a": 0.3, "b": 0.3}, stream)
    assert got == [("a", 10, 15), ("b", 15, 30)]


def test_shortened_below_half_template_is_dropped():
    # "b" (10 frames, noisy) at [14, 24), "a" (exact) at [10, 20): "b" keeps [20, 24),
    # 4 frames < 10 / 2: dropped
    stream = hand_stream(60, [(10, range(0, 20))])
    a = Template("a", hot(range(0, 10)))
    b = Template("b", noisy(hot(range(4, 14)), 0.3))
    got, _ = spot([a, b], {"a": 0.3, "b": 0.3}, stream)
    assert got == [("a", 10, 20)]
    # without "a", "b" is reported in full
    got, _ = spot([b], {"b": 0.3}, stream)
    assert got == [("b", 14, 24)]


def test_split_keeps_the_longer_part():
    # "b" (20 frames, noisy) at [10, 30); "a" (exact) inside it at [16, 20):
    # "b" would be split into [10, 16) and [20, 30): the longer part is kept
    stream = hand_stream(60, [(10, range(0, 20))])
    a = Template("a", hot(range(6, 10)))
    b = Template("b", noisy(hot(range(0, 20)), 0.3))
    got, _ = spot([a, b], {"a": 0.3, "b": 0.3}, stream)
    assert got == [("a", 16, 20), ("b", 20, 30)]


def test_best_shot_wins_and_separate_occurrences_give_separate_detections():
    # two shots of one keyword: the exact one gives the frame's candidate
    shots = [Template("k", noisy(hot(range(0, 12)), 0.4, seed=5)), Template("k", hot(range(0, 12)))]
    stream = hand_stream(80, [(10, range(0, 12)), (40, range(0, 12))])
    got, dets = spot(shots, {"k": 0.3}, stream)
    assert got == [("k", 10, 22), ("k", 40, 52)]
    assert [d.template_index for d in dets] == [1, 1]
    assert [d.cost for d in dets] == [0.0, 0.0]


def test_overlap_within_one_keyword():
    # shot 1 = e0..e9 matches [10, 20) exactly; shot 2 = e5..e9 e20..e24 matches [15, 25)
    # exactly. Every other path ends on an orthogonal frame (cost >= 1 / 10), so with a
    # threshold of 0.09 there are two runs (frames 19 and 24) whose paths overlap in
    # [15, 20). Equal costs (0): the earlier onset wins, the other keeps [20, 25), half of
    # its 10 frames: kept.
    stream = hand_stream(60, [(10, range(0, 10)), (20, range(20, 25))])
    shots = [Template("k", hot(range(0, 10))),
             Template("k", hot([5, 6, 7, 8, 9, 20, 21, 22, 23, 24]))]
    got, dets = spot(shots, {"k": 0.09}, stream)
    assert got == [("k", 10, 20), ("k", 20, 25)]
    assert [d.template_index for d in dets] == [0, 1]


# --------------------------------------------------------------------------------------
# API
# --------------------------------------------------------------------------------------


def test_detection_record():
    d = Detection("stop", 1.6, 2.08, 0.12, 0.3, 100, 130, 2)
    assert d.duration_s == pytest.approx(0.48) and d.n_frames == 30
    js = json.loads(json.dumps(d.to_dict()))
    assert js == {"keyword": "stop", "onset_s": 1.6, "offset_s": 2.08,
                  "duration_s": pytest.approx(0.48), "cost": 0.12, "threshold": 0.3,
                  "onset_frame": 100, "offset_frame": 130, "template_index": 2}


def test_errors():
    t = Template("stop", np.ones((5, 8)))
    assert t.features.dtype == np.float32 and t.n_frames == 5
    with pytest.raises(ValueError, match="'go'"):
        KeywordSpotter([t, Template("go", np.ones((4, 8)))], {"stop": 0.3}, FS)
    with pytest.raises(ValueError, match="dimension"):
        KeywordSpotter([t, Template("go", np.ones((4, 9)))], {"stop": 0.3, "go": 0.3}, FS)
    with pytest.raises(ValueError, match="at least one"):
        KeywordSpotter([], {}, FS)
    with pytest.raises(ValueError, match="finite"):
        KeywordSpotter([t], {"stop": float("nan")}, FS)
    with pytest.raises(ValueError, match="frame_seconds"):
        KeywordSpotter([t], {"stop": 0.3}, 0.0)
    with pytest.raises(ValueError):
        Template("", np.ones((5, 8)))
    with pytest.raises(ValueError):
        Template("x", np.ones(5))
    with pytest.raises(ValueError):
        Template("x", np.full((2, 3), np.nan))
    sp = KeywordSpotter([t], {"stop": 0.3, "unused": 0.1}, FS)
    with pytest.raises(ValueError, match=r"\(n, 8\)"):
        sp.push(np.ones((3, 7)))
    with pytest.raises(ValueError, match="NaN"):
        sp.push(np.full((3, 8), np.nan))
    assert sp.frames_seen == 0
    sp.push(np.ones(8))  # one frame as a 1-D array
    assert sp.frames_seen == 1
    with pytest.raises(RuntimeError, match="record_trace"):
        sp.trace
    sp.flush()
    with pytest.raises(RuntimeError, match="reset"):
        sp.push(np.ones((1, 8)))
    sp.reset()
    assert sp.frames_seen == 0 and sp.push(np.ones((2, 8))) == []
    with pytest.raises(ValueError, match="frames must have shape"):
        detect_keywords(np.ones((10, 9)), [t], {"stop": 0.3}, FS)


def test_edge_modules_do_not_import_tensorflow():
    code = ("import sys, edge.dtw, edge.kws; "
            "sys.exit(1 if any(m.split('.')[0] == 'tensorflow' for m in sys.modules) else 0)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_per_template_cost_normalisation(scene):
    """Template.cost_mean/cost_std: the spotter compares (cost - mean) / std with the
    threshold; for one template that is the raw detector at threshold mean + std * z, and
    a template made "promiscuous" by its normalisation no longer decides alone."""
    stream, templates, _ = scene
    t = next(x for x in templates if x.keyword == "stop")
    raw = detect_keywords(stream, [t], {"stop": 0.35}, FS)
    norm = Template("stop", t.features, cost_mean=0.2, cost_std=0.05)
    z = detect_keywords(stream, [norm], {"stop": (0.35 - 0.2) / 0.05}, FS)
    assert raw and [(d.onset_frame, d.offset_frame) for d in z] == \
        [(d.onset_frame, d.offset_frame) for d in raw]
    assert [d.cost for d in z] == pytest.approx([(d.cost - 0.2) / 0.05 for d in raw])
    # the "go" templates shifted by 5: (cost - 5) >= -5 never falls below -5.5
    shifted = [Template(x.keyword, x.features, cost_mean=5.0 if x.keyword == "go" else 0.0)
               for x in templates]
    dets = detect_keywords(stream, shifted, {"stop": 0.35, "go": -5.5}, FS)
    assert dets and all(d.keyword == "stop" for d in dets)
    with pytest.raises(ValueError, match="cost_std"):
        Template("stop", t.features, cost_std=0.0)
    with pytest.raises(ValueError, match="cost_mean"):
        Template("stop", t.features, cost_mean=float("nan"))


def _fused_reference(z, kw, shots, previous=None):
    """fuse_shot_costs written out: each template's cost averaged with the shots - 1 lowest
    costs of its keyword's other templates, each over this frame and the one before."""
    before = (previous[-1:] if previous is not None and len(previous)
              else np.full((1, z.shape[1]), np.inf))
    window = np.minimum(z, np.concatenate([before, z])[:-1])
    out = z.copy()
    for j in range(z.shape[1]):
        others = [i for i in range(z.shape[1]) if i != j and kw[i] == kw[j]]
        q = min(shots, len(others) + 1) - 1
        if q:
            out[:, j] = (z[:, j] + np.sort(window[:, others], axis=1)[:, :q].sum(1)) / (q + 1)
    return out


def test_shot_fusion_is_the_mean_with_the_best_other_shots():
    """fuse_shot_costs against its definition, with ties, +inf (no path yet) and streaming
    history; one shot per keyword or shot_fusion 1 leaves the costs alone."""
    rng = np.random.default_rng(3)
    for _ in range(500):
        K, n = int(rng.integers(1, 9)), int(rng.integers(1, 6))
        z = rng.integers(-3, 3, (n, K)).astype(float)
        z[rng.random((n, K)) < 0.2] = np.inf
        kw = rng.integers(0, 3, K)
        shots = int(rng.integers(1, 5))
        prev = None if rng.random() < 0.3 else \
            rng.integers(-3, 3, (int(rng.integers(0, 3)), K)).astype(float)
        assert np.array_equal(fuse_shot_costs(z, kw, shots, prev),
                              _fused_reference(z, kw, shots, prev))
    z = rng.standard_normal((4, 3))
    assert np.array_equal(fuse_shot_costs(z, np.arange(3), 3), z)  # one shot each
    assert np.array_equal(fuse_shot_costs(z, np.zeros(3, int), 1), z)
    with pytest.raises(ValueError, match="shot_fusion"):
        fuse_shot_costs(z, np.zeros(3, int), 0)
    with pytest.raises(ValueError, match="shape"):
        fuse_shot_costs(z, np.zeros(2, int), 2)


def test_shot_fusion_streams_as_the_whole_and_calibration_sees_what_the_spotter_decides(scene):
    """With shot_fusion the spotter's trace is the keyword's minimum of the fused normalised
    costs of the whole stream, whatever the chunking (push or push_matching), and the
    calibration's event costs (what thresholds are set on) are cut from that same trace."""
    from calibration.keyword_thresholds import event_costs

    stream, templates, _ = scene
    norms = [(0.5 + 0.05 * i, 0.1 + 0.01 * i) for i in range(len(templates))]
    normed = [Template(t.keyword, t.features, m, s) for t, (m, s) in zip(templates, norms)]
    mc, st = matching_costs(stream, templates)
    kw = np.array([0 if t.keyword == "stop" else 1 for t in templates])
    z = (mc - np.array(norms)[:, 0]) / np.array(norms)[:, 1]
    fused = fuse_shot_costs(z, kw, 2)
    assert not np.array_equal(fused, z)
    thresholds = {"stop": (0.35 - 0.5) / 0.1, "go": (0.35 - 0.5) / 0.1}
    for options in ({}, CONFIRMED):
        whole = KeywordSpotter(normed, thresholds, FS, record_trace=True, shot_fusion=2,
                               **options)
        expected = whole.push(stream) + whole.flush()
        for name, i in (("stop", 0), ("go", 1)):
            assert np.array_equal(whole.trace[name], fused[:, kw == i].min(axis=1))
        for seed in range(3):
            sp = KeywordSpotter(normed, thresholds, FS, shot_fusion=2, **options)
            assert push_chunked(sp, stream, np.random.default_rng(seed),
                                max_chunk=[1, 4, 40][seed]) == expected
        sp = KeywordSpotter(normed, thresholds, FS, shot_fusion=2, **options)
        got = [d for a in range(0, len(stream), 7) for d in sp.push_matching(mc[a:a + 7],
                                                                             st[a:a + 7])]
        assert got + sp.flush() == expected
    stop = [t.features for t in templates if t.keyword == "stop"]
    stop_norms = [n for n, t in zip(norms, templates) if t.keyword == "stop"]
    events = event_costs(mc[:, kw == 0], stop, stop_norms, shot_fusion=2)
    assert events[0] == whole.trace["stop"].min()
    assert events[0] != event_costs(mc[:, kw == 0], stop, stop_norms)[0]
    with pytest.raises(ValueError, match="shot_fusion"):
        KeywordSpotter(templates, THRESHOLDS, FS, shot_fusion=0)


def test_shot_fusion_outvotes_a_shot_that_matches_alone(scene):
    """A shot that matches a stretch of ordinary audio (a non-keyword word said like it)
    detects it alone; averaged with the keyword's best other shot it no longer does, while
    every spoken keyword is still found."""
    stream, templates, truth = scene
    assert all(not (a < 140 and b > 120) for _, a, b in truth)
    stray = Template("stop", unit(stream[120:140] + 0.05 * np.random.default_rng(2)
                                  .standard_normal((20, stream.shape[1]))))
    shots = templates + [stray]

    def found(dets):
        return {(kw, a) for kw, a, b in truth
                if any(d.keyword == kw and d.onset_frame < b and d.offset_frame > a
                       for d in dets)}

    alone = detect_keywords(stream, shots, THRESHOLDS, FS)
    assert any(d.keyword == "stop" and 118 <= d.onset_frame <= 122 for d in alone)
    fused = detect_keywords(stream, shots, THRESHOLDS, FS, shot_fusion=2)
    assert not any(d.onset_frame < 140 and d.offset_frame > 120 for d in fused), fused
    assert found(fused) == found(alone) == {(kw, a) for kw, a, _ in truth}


def test_templates_are_grouped_by_keyword_and_equal_shot_counts():
    """The vectorised fusion and run tracking see every template once, in its keyword's row,
    in increasing order (the first template wins ties), keywords with as many shots together."""
    groups = groups_of_equal_size(np.array([2, 0, 2, 1, 0, 2, 3, 3]))
    as_lists = [(kws.tolist(), cols.tolist()) for kws, cols in groups]
    assert as_lists == [([1], [[3]]), ([0, 3], [[1, 4], [6, 7]]), ([2], [[0, 2, 5]])]


# --------------------------------------------------------------------------------------
# onset weighting: the templates' first frames count more in the DTW's local cost
# --------------------------------------------------------------------------------------


def test_onset_frame_weights_fall_from_w_to_one_and_keep_the_mean():
    w = onset_frame_weights(10, (3.0, 3, 0.39))
    raw = np.array([3.0, 7 / 3, 5 / 3, 1, 1, 1, 1, 1, 1, 1])
    np.testing.assert_allclose(w, raw / raw.mean())
    assert w.mean() == pytest.approx(1.0) and np.all(np.diff(w) <= 1e-12)
    for none in ((1.0, 3, 0.0), (3.0, 0, 0.0)):
        assert onset_frame_weights(10, none) is None
    assert onset_frame_weights(3, (3.0, 3, 0.0)) is None  # no frame after the onset
    assert onset_frame_weights(4, (3.0, 3, 0.0)) is not None
    for bad in ((0.5, 3, 0.0), (3.0, -1, 0.0), (3.0, 1.5, 0.0), (np.nan, 3, 0.0), (3.0, 3),
                (3.0, 3, -0.1), "3 3 0", (True, 3, 0.0)):
        with pytest.raises(ValueError, match="onset_weighting"):
            onset_frame_weights(10, bad)
    with pytest.raises(ValueError, match="frame_weights"):
        Template("stop", np.ones((4, 3), np.float32), frame_weights=np.ones(3))
    with pytest.raises(ValueError, match="frame_weights"):
        Template("stop", np.ones((4, 3), np.float32), frame_weights=[1, 1, 0, 1])


def test_onset_weighted_templates_are_dtw_on_the_weighted_costs(scene):
    """A weighted template's matching cost is the reference sub-sequence DTW of its cost
    matrix with each template row multiplied by its weight; the spotter streams it as the
    whole (push in any chunking, push_matching of matching_costs) and without weights it is
    the plain DTW."""
    stream, templates, _ = scene
    weighted = []
    for kw in ("stop", "go"):
        feats = [u.features for u in templates if u.keyword == kw]
        weighted += make_templates(kw, feats, frame_weights=[
            onset_frame_weights(len(f), (3.0, 3, 0.0)) for f in feats])
    mc, st = matching_costs(stream, weighted)
    plain, _ = matching_costs(stream, templates)
    for k, t in enumerate(weighted):
        ref = subsequence_dtw_reference(
            t.frame_weights[:, None] * cosine_cost_matrix(t.features, stream)).matching_cost
        assert np.array_equal(np.isinf(mc[:, k]), np.isinf(ref))
        fin = np.isfinite(ref)
        np.testing.assert_allclose(mc[fin, k], ref[fin], atol=1e-5)
        assert not np.allclose(mc[fin, k], plain[fin, k], atol=1e-3)
    whole = KeywordSpotter(weighted, THRESHOLDS, FS, record_trace=True)
    expected = whole.push(stream) + whole.flush()
    assert expected
    for kw in ("stop", "go"):
        cols = [k for k, t in enumerate(weighted) if t.keyword == kw]
        np.testing.assert_array_equal(whole.trace[kw], mc[:, cols].min(axis=1))
    sp = KeywordSpotter(weighted, THRESHOLDS, FS)
    assert push_chunked(sp, stream, np.random.default_rng(3)) == expected
    sp = KeywordSpotter(weighted, THRESHOLDS, FS)
    assert sp.push_matching(mc, st) + sp.flush() == expected
