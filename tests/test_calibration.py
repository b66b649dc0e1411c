"""Calibration on real normal clips, then scoring real normal and anomalous clips."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from calibration.calibrate import collect_windows, fit_calibration, held_out_scores
from edge.audio import FileSource, load_audio
from edge.backend import Calibration, CalibrationError
from firmware_config.defaults import default_config_doc, write_config_doc

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def site_calibration(embedder, site_fan):
    w = collect_windows([FileSource([f]).blocks() for f in site_fan["calibration"]],
                        embedder, 10.0, 2.0)
    return fit_calibration(w, embedder, 16, "mst-iqr", {}, 10.0, 2.0)


def test_anomalous_fan_scores_higher_than_normal(embedder, site_fan, site_calibration):
    """A fan the model never heard (fan id_02, the demo's calibration clips): its 4 other
    normal clips vs its 10 anomalous clips, which are not louder than normal."""
    cal = site_calibration
    normal = [float(cal.anomaly_score(embedder.embed(load_audio(f)))[0])
              for f in site_fan["normal"]]
    abnormal = [float(cal.anomaly_score(embedder.embed(load_audio(f)))[0])
                for f in site_fan["abnormal"]]
    auc = roc_auc_score([0] * len(normal) + [1] * len(abnormal), normal + abnormal)
    tpr = np.mean(np.array(abnormal) > cal.decision_threshold)
    fpr = np.mean(np.array(normal) > cal.decision_threshold)
    print(f"\nfan id_02: normal mean {np.mean(normal):.5f} (n={len(normal)}), anomalous "
          f"mean {np.mean(abnormal):.5f} (n={len(abnormal)}), AUC {auc:.3f}; threshold "
          f"{cal.decision_threshold:.5f}: TPR {tpr:.2f} FPR {fpr:.2f}")
    assert np.mean(abnormal) > np.mean(normal)
    assert auc >= 0.7  # 1.00 with the shipped model; the bound leaves room for retraining


ALL_VIEWS = ("embedding", "branches", "stft_statistics")  # the nearest-neighbour views
#: Every view, the embedder's through the embedding and both branches (the default until
#: 2026-12-02).
EVERY_VIEW = ("embedding", "branches", "stft_statistics", "level_statistics", "pca_residual")


def test_views_each_normalised_on_held_out_calibration_scores(tmp_path, embedder, site_fan):
    """The nearest-neighbour views on real clips of a fan the model never heard: every view is
    standardised on its own held-out distances, the combined score separates anomalies, and
    the artifact keeps each view's memory."""
    from edge.views import window_views

    files = site_fan["calibration"]
    w = collect_windows([FileSource([f]).blocks() for f in files], embedder, 10.0, 2.0,
                        views=ALL_VIEWS)
    assert w.names == ("embedding", "branch_spectrogram", "branch_spectrum", "stft_statistics")
    assert w.views["stft_statistics"].shape == (6, 1026)
    assert w.views["branch_spectrum"].shape == (6, 128)
    np.testing.assert_array_equal(w.views["branch_spectrum"], w.embeddings[:, 128:])
    cal = fit_calibration(w, embedder, 16, "fpr", {}, 10.0, 2.0)
    assert list(cal.view_names) == list(w.names)
    # Each view's held-out log distances have mean 0 and std 1 after its normalisation
    # (what the node applies to new windows) ...
    logs = {}
    for v in w.names:
        logs[v] = np.log(held_out_scores(w, 1, None if v == "embedding" else w.views[v]) + 1e-6)
        z = (logs[v] - cal.view_norms[v]["log_mean"]) / cal.view_norms[v]["log_std"]
        assert abs(z.mean()) < 1e-5 and z.std() == pytest.approx(1.0, rel=1e-6)
    # ... while the threshold's held-out scores standardise each window (one per clip, so
    # none overlap) on the other five alone; the embedding and its branches are one
    # representation, averaged before the STFT statistics join.
    def loo(v, i):
        rest = np.delete(logs[v], i)
        return (logs[v][i] - rest.mean()) / max(rest.std(), 0.1)
    expected = [np.exp((np.mean([loo(v, i) for v in w.names[:3]]) + loo(w.names[3], i)) / 2)
                for i in range(6)]
    np.testing.assert_allclose(cal.normal_scores, expected, rtol=1e-5)
    in_sample = [np.mean([(logs[v][i] - logs[v].mean()) / logs[v].std() for v in w.names[:3]])
                 + (logs[w.names[3]][i] - logs[w.names[3]].mean()) / logs[w.names[3]].std()
                 for i in range(6)]
    assert np.std(np.log(cal.normal_scores)) > np.std(np.divide(in_sample, 2))  # wider
    back = Calibration.load(cal.save(tmp_path / "views.npz"), embedder.sha256)
    assert back.view_norms == cal.view_norms and set(back.views) == set(w.names) - {"embedding"}

    def score(f):
        return float(back.score_views(window_views(embedder, load_audio(f)[:160000],
                                                   back.view_names))[0])
    normal = [score(f) for f in site_fan["normal"]]
    abnormal = [score(f) for f in site_fan["abnormal"]]
    auc = roc_auc_score([0] * len(normal) + [1] * len(abnormal), normal + abnormal)
    print(f"\nfan id_02, nearest-neighbour views: AUC {auc:.3f}")
    assert auc >= 0.7
    with pytest.raises(ValueError, match="score_views"):
        back.anomaly_score(w.embeddings)
    with pytest.raises(ValueError, match="missing"):
        back.score_views({"embedding": w.embeddings})


def test_pca_residual_view_is_the_principal_subspace_of_held_out_windows(tmp_path, embedder,
                                                                         site_fan):
    """The PCA residual view on a real fan: its subspace is scikit-learn's PCA of the
    calibration's log-mel blocks, a window's held-out residual is measured against the
    subspace of the windows that do not overlap it, and the artifact scores it."""
    from sklearn.decomposition import PCA

    from calibration.calibrate import _held_out_pca, view_normalisation
    from edge.views import LOGMEL_DIM, fit_pca, logmel_blocks, pca_residual, window_views

    y = np.concatenate([load_audio(f) for f in site_fan["calibration"][:3]])  # 30 s
    blocks = logmel_blocks(y[:160000])
    assert blocks.shape == (62, LOGMEL_DIM)
    model = fit_pca(blocks, 8)
    ref = PCA(8, svd_solver="full").fit(blocks.astype(np.float64))
    np.testing.assert_allclose(model[0], ref.mean_, rtol=1e-5, atol=1e-3)
    ours_res = pca_residual(blocks.reshape(-1), model)
    sk_res = np.mean((blocks - ref.inverse_transform(ref.transform(blocks))) ** 2)
    assert ours_res[0] == pytest.approx(sk_res, rel=1e-4)
    # One continuous stream: windows at 0, 2, ..., 20 s; the window at 0 s overlaps those
    # up to 8 s, so its held-out subspace is the one of the windows at 10 s and later.
    w = collect_windows([[y]], embedder, 10.0, 2.0, views=("embedding", "pca_residual"))
    assert len(w) == 11 and w.views["pca_residual"].shape == (11, 62 * LOGMEL_DIM)
    held = _held_out_pca(w.views["pca_residual"], (w.start[:, None] < w.end[None, :])
                         & (w.start[None, :] < w.end[:, None]))
    rest = w.views["pca_residual"][5:].reshape(-1, LOGMEL_DIM)
    explicit = pca_residual(w.views["pca_residual"][0], fit_pca(rest, 8))[0]
    assert held[0] == pytest.approx(explicit, rel=1e-4)
    assert held[0] > pca_residual(w.views["pca_residual"][0], fit_pca(
        w.views["pca_residual"].reshape(-1, LOGMEL_DIM), 8))[0]  # held out costs something
    norms, _ = view_normalisation(w)
    assert set(norms) == {"embedding", "pca_residual"}
    cal = fit_calibration(w, embedder, 16, "mst-iqr", {}, 10.0, 2.0)
    assert cal.views["pca_residual"].shape == (9, LOGMEL_DIM)
    path = cal.save(tmp_path / "pca.npz")
    assert Calibration.load(path).views["pca_residual"].shape == (9, LOGMEL_DIM)
    with np.load(path) as z:
        arrays = {k: z[k] for k in z.files}
    arrays["view_pca_residual"] = arrays["view_pca_residual"][:, :100]  # a damaged subspace
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(CalibrationError, match="pca_residual subspace has shape"):
        Calibration.load(tmp_path / "bad.npz")
    normal = [float(cal.score_views(window_views(embedder, load_audio(f)[:160000],
                                                 cal.view_names))[0]) for f in site_fan["normal"]]
    abnormal = [float(cal.score_views(window_views(embedder, load_audio(f)[:160000],
                                                   cal.view_names))[0])
                for f in site_fan["abnormal"]]
    auc = roc_auc_score([0] * len(normal) + [1] * len(abnormal), normal + abnormal)
    print(f"\nfan id_02, embedding + PCA residual views: AUC {auc:.3f}")
    assert auc >= 0.7


def test_views_combine_per_representation_and_old_artifacts_keep_their_fusion(tmp_path, embedder,
                                                                            site_fan):
    """The embedder's three views (embedding and two branches) count once beside the STFT
    statistics, the level statistics and the PCA residual: the score is exp of the mean over
    representations of each representation's mean z. An artifact made before the fusion
    existed is read as the plain mean over views it was thresholded with."""
    from edge.backend import LOG_DISTANCE_FLOOR, LOG_STD_FLOOR, _min_distance_to_normalised
    from edge.views import LEVEL_VIEW, PCA_VIEW, pca_residual, representation, window_views

    w = collect_windows([FileSource([f]).blocks() for f in site_fan["calibration"]], embedder,
                        10.0, 2.0, views=EVERY_VIEW)
    cal = fit_calibration(w, embedder, 16, "mst-iqr", {}, 10.0, 2.0)
    assert cal.view_fusion == "representations"
    assert [representation(v) for v in cal.view_names] == [
        "embedder", "embedder", "embedder", "stft_statistics", "level_statistics", "pca_residual"]
    y = load_audio(site_fan["abnormal"][0])[:160000]
    vec = window_views(embedder, y, cal.view_names)
    z = {}
    for v, n in cal.view_norms.items():
        if v == PCA_VIEW:
            d = pca_residual(vec[v], cal.views[v])[0]
        elif v == LEVEL_VIEW:  # dB: the nearest calibration window's levels
            d = np.min(np.linalg.norm(cal.views[v] - vec[v], axis=1))
        else:
            d = _min_distance_to_normalised(vec[v], cal.memory if v == "embedding" else
                                            cal.views[v], int(n["members"]))[0]
        z[v] = (np.log(d + LOG_DISTANCE_FLOOR) - n["log_mean"]) / max(n["log_std"], LOG_STD_FLOOR)
    per_rep = np.mean([np.mean([z["embedding"], z["branch_spectrogram"], z["branch_spectrum"]]),
                       z["stft_statistics"], z["level_statistics"], z["pca_residual"]])
    score = float(cal.score_views(vec)[0])
    assert score == pytest.approx(np.exp(per_rep), rel=1e-4)
    assert score != pytest.approx(np.exp(np.mean(list(z.values()))), rel=1e-2)
    # An artifact without view_fusion (made before it existed) scores the mean over views.
    path = cal.save(tmp_path / "cal.npz")
    with np.load(path) as f:
        arrays = {k: f[k] for k in f.files}
    meta = json.loads(bytes(arrays["meta"]).decode())
    del meta["view_fusion"]
    arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), np.uint8)
    np.savez(tmp_path / "old.npz", **arrays)
    old = Calibration.load(tmp_path / "old.npz")
    assert old.view_fusion == "views" and old.calibration_id == cal.calibration_id
    assert float(old.score_views(vec)[0]) == pytest.approx(np.exp(np.mean(list(z.values()))),
                                                          rel=1e-4)
    meta["view_fusion"] = "max"
    arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), np.uint8)
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(CalibrationError, match="unknown view_fusion 'max'"):
        Calibration.load(tmp_path / "bad.npz")


def test_single_branch_view_is_the_embedders_only_vote(embedder, site_fan):
    """The node's default views keep the embedder's spectrum branch alone: its vector is that
    branch's slice of the embedding, it is the embedder's one representation beside the
    STFT statistics, level statistics and PCA residual, so a window's score is exp of the
    mean of the four views' z. Naming ``branches`` with a single branch, or a branch the
    model lacks, is refused, in the config and at calibration."""
    from types import SimpleNamespace

    from pydantic import ValidationError

    from edge.backend import normalised_view_score, view_distance
    from edge.views import representation, view_names, window_views
    from firmware_config.schema import DEFAULT_ASD_VIEWS, AsdSection

    assert view_names(embedder, DEFAULT_ASD_VIEWS) == (
        "branch_spectrum", "stft_statistics", "level_statistics", "pca_residual")
    y = load_audio(site_fan["abnormal"][0])[:160000]
    vec = window_views(embedder, y, ("embedding", "branch_spectrum"))
    half = embedder.embedding_dim // 2  # two branches, spectrum last
    np.testing.assert_array_equal(vec["branch_spectrum"], vec["embedding"][half:])
    # Scored alone, the branch runs cut out of the model: the same int8 values, so the same
    # direction as the slice (the backend normalises each view), and not the other branch's.
    alone = window_views(embedder, y, ("branch_spectrum",))["branch_spectrum"]
    assert alone.shape == (half,)
    unit = lambda v: v / np.linalg.norm(v)  # noqa: E731
    np.testing.assert_allclose(unit(alone), unit(vec["branch_spectrum"]), atol=1e-6)
    other = window_views(embedder, y, ("branch_spectrogram",))["branch_spectrogram"]
    np.testing.assert_allclose(unit(other), unit(vec["embedding"][:half]), atol=1e-6)

    w = collect_windows([FileSource([f]).blocks() for f in site_fan["calibration"]], embedder,
                        10.0, 2.0, views=DEFAULT_ASD_VIEWS)
    cal = fit_calibration(w, embedder, 16, "fpr", {}, 10.0, 2.0)
    assert cal.view_names == view_names(embedder, DEFAULT_ASD_VIEWS)
    assert len({representation(v) for v in cal.view_names}) == 4
    vec = window_views(embedder, y, cal.view_names)
    z = {v: (np.log(view_distance(v, vec[v], cal.views[v], int(n["members"]))[0] + 1e-6)
             - n["log_mean"]) / n["log_std"] for v, n in cal.view_norms.items()}
    assert float(cal.score_views(vec)[0]) == pytest.approx(np.exp(np.mean(list(z.values()))),
                                                          rel=1e-4)
    assert float(cal.score_views(vec)[0]) == pytest.approx(float(normalised_view_score(
        {v: view_distance(v, vec[v], cal.views[v], 1) for v in z}, cal.view_norms)[0]), rel=1e-5)

    with pytest.raises(ValueError, match="'branches' already holds branch_spectrum"):
        view_names(embedder, ("branches", "branch_spectrum", "stft_statistics"))
    with pytest.raises(ValidationError, match="'branches' already holds branch_spectrum"):
        AsdSection(views=["branches", "branch_spectrum"])
    one_branch = SimpleNamespace(metadata={"inputs": ["spectrogram"]}, n_members=1,
                                 embedding_dim=64, model_id="spectrogram-only")
    with pytest.raises(ValueError, match="spectrogram-only has the branches branch_spectrogram"):
        view_names(one_branch, ("branch_spectrum",))


def test_window_views_share_one_stft_and_keep_each_views_numbers(embedder, site_fan):
    """window_views computes one STFT for the embedder's spectrogram input and for the views
    that read it; every view is still exactly what its own function gives for the window,
    on a 10 s window and on a shorter one that the embedder pads."""
    from edge.views import (level_statistics, logmel_blocks, stft_statistics, view_names,
                            window_views)

    names = view_names(embedder, ("embedding", "branches", "stft_statistics",
                                  "level_statistics", "pca_residual"))
    for n_samples in (160000, 120000):
        y = load_audio(site_fan["abnormal"][1])[:n_samples]
        vec = window_views(embedder, y, names)
        assert set(vec) == set(names)
        np.testing.assert_array_equal(vec["embedding"], embedder.embed(y))
        np.testing.assert_array_equal(vec["stft_statistics"], stft_statistics(y))
        np.testing.assert_array_equal(vec["level_statistics"], level_statistics(y))
        np.testing.assert_array_equal(vec["pca_residual"],
                                      logmel_blocks(y).reshape(-1).astype(np.float16))


def test_node_cuts_its_branch_when_it_loads(tmp_path, default_model, calibration_file,
                                            site_fan):
    """With the default views the node cuts the spectrum branch out of its model when it
    loads model and calibration (edge.model.load_asd), not at the first window: a model
    file replaced afterwards does not stop it scoring, with the score the whole model gives."""
    import os
    import shutil

    from edge.model import load_asd
    from edge.views import window_views
    from firmware_config.schema import load_config

    model = tmp_path / "asd.tflite"
    shutil.copy(default_model, model)
    shutil.copy(default_model.with_suffix(".json"), model.with_suffix(".json"))
    cfg = load_config(write_config_doc(tmp_path / "node.yaml", default_config_doc(
        asd={"model": str(model), "calibration": str(calibration_file)})))
    embedder, cal = load_asd(cfg)
    assert "branch_spectrum" in cal.view_names and "embedding" not in cal.view_names
    (tmp_path / "new.tflite").write_bytes(b"another model, flashed")
    os.replace(tmp_path / "new.tflite", model)   # atomically, as a flash writes it
    y = load_audio(site_fan["abnormal"][0])[:160000]
    score = float(cal.score_views(window_views(embedder, y, cal.view_names))[0])
    with_slice = window_views(embedder, y, ("embedding", *cal.view_names))
    assert score == pytest.approx(float(cal.score_views(with_slice)[0]), rel=1e-5)


def test_level_view_hears_a_machine_running_quieter(tmp_path, embedder, site_fan):
    """The level statistics on a real fan the model never heard: a window's frame levels
    shift by the gain in dB, digital silence is left out, a window is held out against the
    nearest window it does not overlap, and a normal clip played 6 dB quieter passes the
    node's threshold with the level view and not without it."""
    from calibration.calibrate import _held_out_euclidean, _overlap
    from edge.views import level_statistics, window_views
    from firmware_config.schema import DEFAULT_ASD_VIEWS

    y = load_audio(site_fan["normal"][0])[:160000]
    ref = level_statistics(y)
    assert -60 < ref[0] < -20 and 0 < ref[1] < 5  # a steady fan, mean and spread in dB
    np.testing.assert_allclose(level_statistics(0.5 * y), ref - [20 * np.log10(2), 0], atol=1e-3)
    gap = y.copy()
    gap[:8000] = 0.0  # half a second of digital silence: its frames are left out
    assert abs(level_statistics(gap)[0] - ref[0]) < 0.2
    with pytest.raises(ValueError, match="n_fft"):
        level_statistics(y[:100])

    cal_audio = [load_audio(f) for f in site_fan["calibration"]]
    w = collect_windows([[c] for c in cal_audio], embedder, 10.0, 2.0, views=DEFAULT_ASD_VIEWS)
    lv = w.views["level_statistics"]
    assert lv.shape == (6, 2)
    dist = np.linalg.norm(lv[:, None] - lv[None], axis=2)
    np.fill_diagonal(dist, np.inf)  # six files: a window overlaps only itself
    np.testing.assert_allclose(_held_out_euclidean(lv, _overlap(w)), dist.min(axis=1), rtol=1e-5)

    without = tuple(v for v in DEFAULT_ASD_VIEWS if v != "level_statistics")
    quieter = {}
    for views in (DEFAULT_ASD_VIEWS, without):
        cal = fit_calibration(collect_windows([[c] for c in cal_audio], embedder, 10.0, 2.0,
                                              views=views), embedder, 16, "fpr", {}, 10.0, 2.0)

        def score(x):
            return float(cal.score_views(window_views(embedder, x[:160000], cal.view_names))[0])
        normal = [score(load_audio(f)) for f in site_fan["normal"]]
        quiet = [score(0.5 * load_audio(f)) for f in site_fan["normal"]]
        print(f"\n{len(views)} views: threshold {cal.decision_threshold:.2f}, normal "
              f"{np.round(normal, 2)}, 6 dB quieter {np.round(quiet, 2)}")
        assert max(normal) < cal.decision_threshold
        quieter[views] = min(quiet) > cal.decision_threshold
    assert quieter == {DEFAULT_ASD_VIEWS: True, without: False}
    cal = fit_calibration(w, embedder, 16, "fpr", {}, 10.0, 2.0)
    back = Calibration.load(cal.save(tmp_path / "level.npz"), embedder.sha256)
    np.testing.assert_array_equal(back.views["level_statistics"], lv)
    with np.load(tmp_path / "level.npz") as z:
        arrays = {k: z[k] for k in z.files}
    arrays["view_level_statistics"] = np.zeros((6, 3), np.float32)  # not two levels a window
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(CalibrationError, match="level_statistics memory has shape"):
        Calibration.load(tmp_path / "bad.npz")


def test_moments_of_digital_silence_are_not_scored_as_anomalies(embedder, site_fan):
    """A capture that starts, or drops out, for a fraction of a second gives digital
    silence (-156 dB in every log-mel band): the PCA residual and STFT statistics views
    leave out its frames, so a normal fan window with such a gap scores like the clean one
    and below the anomalous ones. Calibration on a recording with a gap still works."""
    from edge.views import LOGMEL_DIM, fit_pca, logmel_blocks, pca_residual, window_views
    from firmware_config.schema import DEFAULT_ASD_VIEWS

    def gap(y, start, seconds):
        y = y[:160000].copy()
        y[int(start * 16000):int((start + seconds) * 16000)] = 0.0
        return y

    def calibrate(clips):
        w = collect_windows([[y] for y in clips], embedder, 10.0, 2.0, views=DEFAULT_ASD_VIEWS)
        return fit_calibration(w, embedder, 16, "mst-iqr", {}, 10.0, 2.0)

    cal_audio = [load_audio(f) for f in site_fan["calibration"]]
    cal = calibrate(cal_audio)

    def score(y):
        return float(cal.score_views(window_views(embedder, y[:160000], cal.view_names))[0])

    normal = [load_audio(f) for f in site_fan["normal"]]
    clean = np.array([score(y) for y in normal])
    gapped = np.array([[score(gap(y, 0.0, 0.5)), score(gap(y, 6.3, 0.3))] for y in normal])
    abnormal = [score(load_audio(f)) for f in site_fan["abnormal"]]
    print(f"\nnormal clean {np.round(clean, 2)}, with a gap {np.round(gapped.T, 2)}, "
          f"anomalous {np.round(abnormal, 2)}")
    # 1 is a typical normal window; a gap may move a window by half its score or a quarter
    # of that typical one, far from the anomalous windows either way.
    assert (gapped < 1.5 * clean[:, None] + 0.25).all() and gapped.max() < np.median(abnormal)
    # A half-second dropout in a calibration clip changes little of what was learned.
    gapped_cal = calibrate([gap(cal_audio[0], 1.0, 0.5), *cal_audio[1:]])
    assert np.isfinite(gapped_cal.normal_scores).all()
    for v, n in cal.view_norms.items():
        assert abs(gapped_cal.view_norms[v]["log_mean"] - n["log_mean"]) < 0.5 * n["log_std"], v
    # A window of digital silence: scored by the views that can, finite.
    assert np.isfinite(score(np.zeros(160000, np.float32)))
    blocks = logmel_blocks(gap(normal[0], 0.0, 0.5))
    silent = np.isnan(blocks).any(axis=1)
    assert 3 <= silent.sum() <= 4 and np.isnan(blocks[silent]).all() and silent[:3].all()
    np.testing.assert_array_equal(fit_pca(blocks), fit_pca(blocks[~silent]))
    assert np.isnan(pca_residual(np.full(62 * LOGMEL_DIM, np.nan), fit_pca(blocks)))[0]


def test_views_of_a_constant_recording_give_finite_scores(embedder):
    """A calibration on audio whose windows are all alike (a steady tone): every held-out
    distance is the same, yet a different sound scores finitely and higher."""
    from edge.views import window_views

    t = np.arange(16000 * 30) / 16000
    tone = (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    w = collect_windows([[tone]], embedder, 10.0, 2.0, views=(*ALL_VIEWS, "pca_residual"))
    cal = fit_calibration(w, embedder, 1, "fpr", {}, 10.0, 2.0)  # one cluster: all alike
    noise = np.random.default_rng(0).normal(0, 0.3, 160000).astype(np.float32)
    s = cal.score_views(window_views(embedder, noise, cal.view_names))
    assert np.isfinite(s).all() and s[0] > cal.decision_threshold


def test_held_out_scores_exclude_overlapping_windows(embedder, mimii):
    """One 10 s file gives 1 window; two files give 2 windows scored against each other."""
    w = collect_windows([FileSource([f]).blocks() for f in mimii["normal"][6:8]], embedder,
                        10.0, 2.0)
    s = held_out_scores(w)
    d = 1 - float(w.embeddings[0] @ w.embeddings[1])
    np.testing.assert_allclose(s, [d, d], atol=1e-5)
    assert s.min() > 0  # not trivially zero
    # A single continuous stream: windows at 0 s and 2 s share audio, so neither may be
    # used for the other; in 20 s only the windows at 0 s and 10 s are a held-out pair.
    y = np.concatenate([load_audio(f) for f in mimii["normal"][6:8]])
    w2 = collect_windows([[y]], embedder, 10.0, 2.0)
    assert len(w2) == 6
    s2 = held_out_scores(w2)
    pair = 1 - float(w2.embeddings[0] @ w2.embeddings[5])
    np.testing.assert_allclose(s2, [pair, pair], atol=1e-5)
    with pytest.raises(ValueError, match="non-overlapping"):
        held_out_scores(collect_windows([[y[:160000 + 32000]]], embedder, 10.0, 2.0))


def test_artifact_roundtrip_and_model_check(tmp_path, site_calibration, embedder):
    cal = site_calibration
    p = cal.save(tmp_path / "cal.npz")
    assert [f.name for f in tmp_path.iterdir()] == ["cal.npz"]  # no temp files left behind
    back = Calibration.load(p, embedder.sha256)
    assert back.calibration_id == cal.calibration_id
    np.testing.assert_allclose(back.memory, cal.memory, atol=1e-6)
    assert back.decision_threshold == cal.decision_threshold
    assert back.n_centers == min(16, len(cal.normal_scores))
    with pytest.raises(CalibrationError, match="made with model"):
        Calibration.load(p, "0" * 64)
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    with pytest.raises(CalibrationError, match="corrupt"):
        Calibration.load(tmp_path / "bad.npz")


def test_record_cli_bad_input_writes_nothing(tmp_path):
    cfg = tmp_path / "node.yaml"
    write_config_doc(cfg, default_config_doc(asd={"calibration": str(tmp_path / "cal.npz")}))
    junk = tmp_path / "broken.flac"
    junk.write_bytes(b"\x00" * 100)
    r = subprocess.run([sys.executable, "-m", "calibration", "record", "--config", str(cfg),
                        "--from", str(junk), "--quiet"], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 1 and "broken.flac" in r.stderr, r.stderr
    silent = tmp_path / "silence.wav"
    import soundfile as sf
    sf.write(silent, np.zeros(16000 * 25, np.float32), 16000)
    r = subprocess.run([sys.executable, "-m", "calibration", "record", "--config", str(cfg),
                        "--from", str(silent), "--quiet"], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 1 and "silent" in r.stderr, r.stderr
    assert not (tmp_path / "cal.npz").exists()


def test_leave_one_out_standardisation_skips_overlapping_and_silent_windows():
    """Each held-out log distance is standardised on the windows that share no audio with it
    and have a value; a window with fewer than two such partners falls back to the view's
    statistics over all windows."""
    from calibration.calibrate import _leave_one_out_z

    logs = np.array([0.0, 1.0, 3.0, np.nan, -2.0, 0.5])
    apart = ~np.eye(6, dtype=bool)
    apart[0, 1] = apart[1, 0] = False  # windows 0 and 1 overlap
    apart[5, [0, 1, 2]] = apart[[0, 1, 2], 5] = False  # window 5 overlaps all but 3 and 4
    norm = {"log_mean": 0.5, "log_std": 1.5}
    z = _leave_one_out_z(logs, apart, norm)
    assert np.isnan(z[3])
    others = logs[[2, 4]]  # window 0: not itself, not 1 (overlaps), not 3 (silent), not 5
    assert z[0] == pytest.approx((0.0 - others.mean()) / others.std())
    others = logs[[0, 1, 2, 5]]  # window 4 shares audio with no window
    assert z[4] == pytest.approx((-2.0 - others.mean()) / others.std())
    assert z[5] == pytest.approx((0.5 - 0.5) / 1.5)  # one partner (4): the view's statistics
    tight = _leave_one_out_z(np.array([0.0, 0.01, 0.02, 1.0]), ~np.eye(4, dtype=bool),
                             {"log_mean": 0.0, "log_std": 1.0})
    assert tight[3] == pytest.approx((1.0 - 0.01) / 0.1)  # spread floored as on the node
