"""Keyword-spotting systems under evaluation, and how one system is scored.

**Systems** (:class:`System`, :data:`SYSTEMS`): a name, a frame period and a feature function
``features(y) -> (n_frames, D)``; templates and streams of every system go through the same
:class:`edge.kws.KeywordSpotter` (sub-sequence DTW on 1 - cosine similarity, thesis 6.3.6).
``tacos``: frame embeddings of a KWS model bundle (``embed_wave``); ``mfcc``: the thesis's
classical baseline (6.3.7) with MFCCs instead of HFCCs, 40 ms windows, 10 ms hop, cepstral mean
normalisation per sequence, the variant (number of coefficients, c0, deltas) chosen by best
validation F1 among :data:`MFCC_VARIANTS`; ``tacos-deployment``: a TACos embedder trained on
the enrollment shots themselves. A system is added with :func:`register_system`.

**Scoring** (:func:`evaluate_system`): one global threshold is tuned for best F1 on the val
streams (:func:`sweep`); test F1, P, R and per-keyword F1 are reported at that threshold
(:mod:`trainer.kws_metrics`); DTW real-time factor = seconds spent in the spotter (frames pushed
in blocks of ~0.25 s, as on a node) / stream seconds; feature real-time factor = seconds of
``features`` / stream seconds (both on the test streams, one process).

Contents
--------
System, EvalSetup, SYSTEMS, register_system
    The system interface and registry.
mfcc_features, make_mfcc_system, make_tacos_system, make_tacos_deployment_system
    The registered systems.
run_spotter, sweep
    One threshold over a stream; scores over a range of global thresholds.
SystemResult, evaluate_system
    Everything reported for one system.
KwsEvalRun
    Everything one evaluation run produced (what the report is written from).
"""
from __future__ import annotations

import math
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
from tqdm import tqdm

from edge.kws import KeywordSpotter, Template
from edge.model import ModelError, load_bundle
from trainer.kws_data import load_background
from trainer.kws_metrics import Counts, SweepPoint, best_f1_point, count_events, miss_rate_at_fa
from trainer.kws_streams import SAMPLE_RATE, EvalConfig, Shot, Stream, stream_hours
from trainer.kws_train import train_per_deployment

__all__ = [
    "MFCC_VARIANTS", "System", "EvalSetup", "SYSTEMS", "register_system",
    "mfcc_features", "make_mfcc_system", "make_tacos_system", "make_tacos_deployment_system",
    "run_spotter", "sweep", "SystemResult", "evaluate_system", "KwsEvalRun",
]

#: Frames per spotter call when timing the DTW (about 0.25 s of audio, a node's block).
RTF_BLOCK_SECONDS = 0.25


@dataclass
class System:
    """A feature extractor evaluated through the common sub-sequence DTW spotter.

    Attributes
    ----------
    name : str
    frame_seconds : float
        Seconds between feature frames; frame ``j`` is centred at ``j * frame_seconds``.
    features : callable
        ``features(y: float32 (n_samples,) 16 kHz) -> (n_frames, D) float32``; applied alike
        to shots and streams.
    description : str
    info : dict
        Anything worth reporting (model id, chosen variant, ...).
    """

    name: str
    frame_seconds: float
    features: Callable[[np.ndarray], np.ndarray]
    description: str = ""
    info: dict[str, Any] = field(default_factory=dict)


@dataclass
class EvalSetup:
    """What a system factory may use: settings, data, shots and the val streams."""

    cfg: EvalConfig
    data_dir: Path
    model_path: Path | None
    shots: dict[str, list[Shot]]
    val_streams: list[Stream]
    progress: bool = False


SystemFactory = Callable[[EvalSetup], System]
SYSTEMS: dict[str, SystemFactory] = {}


def register_system(name: str, factory: SystemFactory) -> None:
    """Make ``--systems NAME`` available (e.g. a per-deployment model trained on the shots)."""
    SYSTEMS[name] = factory


#: MFCC baseline variants tried on the val streams: (n_mfcc, with c0, with deltas).
MFCC_VARIANTS: tuple[tuple[int, bool, bool], ...] = (
    (13, True, False), (13, False, False), (13, True, True), (13, False, True),
    (20, False, False), (20, False, True),
)
MFCC_WIN_S, MFCC_HOP_S, MFCC_N_MELS = 0.040, 0.010, 40


def mfcc_features(y: np.ndarray, n_mfcc: int = 13, c0: bool = True, deltas: bool = False,
                  sr: int = SAMPLE_RATE) -> np.ndarray:
    """MFCCs of the classical baseline (thesis 6.3.7 with MFCCs for HFCCs).

    40 ms Hann window, 10 ms hop, centred frames, 40 mel bands (librosa), DCT-II; ``n_mfcc``
    coefficients after dropping c0 unless ``c0``; cepstral mean normalisation over the whole
    sequence; optional deltas (librosa, 9-frame window).

    Returns
    -------
    np.ndarray, shape (n_frames, n_mfcc * (2 if deltas else 1)), float32
    """
    import librosa

    y = np.asarray(y, dtype=np.float32)
    win, hop = int(MFCC_WIN_S * sr), int(MFCC_HOP_S * sr)
    m = librosa.feature.mfcc(y=y, sr=sr, n_mfcc=n_mfcc + (0 if c0 else 1), n_fft=win,
                             win_length=win, hop_length=hop, n_mels=MFCC_N_MELS, center=True)
    if not c0:
        m = m[1:]
    m = m - m.mean(axis=1, keepdims=True)
    if deltas:
        width = min(9, m.shape[1] if m.shape[1] % 2 else m.shape[1] - 1)
        d = librosa.feature.delta(m, width=width) if width >= 3 else np.zeros_like(m)
        m = np.vstack([m, d])
    return np.ascontiguousarray(m.T, dtype=np.float32)


def _mfcc_system(n_mfcc: int, c0: bool, deltas: bool) -> System:
    name = f"mfcc{n_mfcc}{'' if c0 else '-noc0'}{'+d' if deltas else ''}"
    return System(
        "mfcc", MFCC_HOP_S,
        lambda y: mfcc_features(y, n_mfcc, c0, deltas),
        description=(f"MFCC-DTW baseline: {n_mfcc} MFCCs{' incl. c0' if c0 else ' without c0'}"
                     f"{' + deltas' if deltas else ''}, 40 ms window, 10 ms hop, CMN per sequence"),
        info={"variant": name, "n_mfcc": n_mfcc, "c0": c0, "deltas": deltas,
              "window_s": MFCC_WIN_S, "hop_s": MFCC_HOP_S, "n_mels": MFCC_N_MELS})


def make_mfcc_system(setup: EvalSetup) -> System:
    """The MFCC baseline in the variant with the best val F1 (each variant with its own
    val-tuned threshold)."""
    table, best = [], None
    for v in tqdm(MFCC_VARIANTS, desc="mfcc variants (val)", disable=not setup.progress, leave=False):
        sysm = _mfcc_system(*v)
        templates = _templates(sysm, setup.shots)
        feats = [sysm.features(s.audio) for s in setup.val_streams]
        pts = sweep(feats, templates, setup.val_streams, sysm.frame_seconds, setup.cfg,
                    n_thresholds=max(8, setup.cfg.n_thresholds // 2))
        bp = best_f1_point(pts)
        table.append({"variant": sysm.info["variant"], "n_mfcc": v[0], "c0": v[1], "deltas": v[2],
                      "val_f1": bp.counts.f1, "threshold": bp.threshold})
        if best is None or bp.counts.f1 > best[0]:
            best = (bp.counts.f1, v)
    chosen = _mfcc_system(*best[1])
    chosen.info["variants_val"] = table
    chosen.info["selection"] = "best val F1 among MFCC_VARIANTS (own val-tuned threshold each)"
    return chosen


def make_tacos_system(setup: EvalSetup) -> System:
    """Frame embeddings of a TACos KWS bundle (``setup.model_path``) via ``embed_wave``,
    with the bundle's own segment hop (what a node runs)."""
    path = setup.model_path
    if path is None or not Path(path).is_file():
        raise FileNotFoundError(
            f"KWS model not found: {path} (train and export it with `python -m trainer "
            "train-kws`, pass --model PATH, or evaluate only the baseline with --systems mfcc)")
    try:
        bundle = load_bundle(Path(path), task="kws")
    except ModelError as exc:
        raise ValueError(str(exc)) from exc
    meta = dict(getattr(bundle, "metadata", {}) or {})
    vocab = set(meta.get("vocabulary") or [])
    info: dict[str, Any] = {"model": str(path)}
    info.update({k: meta[k] for k in ("model_id", "embedding_dim", "created", "segment_hop", "mode")
                 if k in meta})
    if hasattr(bundle, "segment_hop"):
        info["segment_hop"] = int(bundle.segment_hop)
    if vocab:
        info["keywords_in_training_vocabulary"] = sorted(k for k in setup.cfg.keywords if k in vocab)
    return System("tacos", float(bundle.frame_seconds),
                  lambda y: np.asarray(bundle.embed_wave(np.asarray(y, np.float32)), np.float32),
                  description=f"TACos frame embeddings ({Path(path).name}, int8 TFLite)", info=info)


#: Adam steps of the per-deployment model (thesis mode: trained on the enrolled shots).
DEPLOYMENT_STEPS = 300


def make_tacos_deployment_system(setup: EvalSetup) -> System:
    """The thesis' per-deployment mode: a TACos embedder trained on the enrollment shots
    themselves (plus the training split's background recordings as "no speech"), exported
    to int8 like the generic model (``trainer.kws_train.train_per_deployment``)."""
    shots = {k: [s.audio for s in v] for k, v in setup.shots.items()}
    out = Path(tempfile.mkdtemp(prefix="kws_deployment_"))
    path = train_per_deployment(shots, load_background(setup.data_dir, "train"), out,
                                steps=DEPLOYMENT_STEPS, seed=setup.cfg.seed,
                                progress=setup.progress)
    bundle = load_bundle(path, task="kws")
    info = {"model_id": bundle.model_id, "mode": "per-deployment", "steps": DEPLOYMENT_STEPS,
            "segment_hop": int(bundle.segment_hop),
            "trained_on": f"{sum(len(v) for v in shots.values())} enrollment shots + background"}
    return System("tacos-deployment", float(bundle.frame_seconds),
                  lambda y: np.asarray(bundle.embed_wave(np.asarray(y, np.float32)), np.float32),
                  description="TACos trained on the enrollment shots (per-deployment, int8)",
                  info=info)


register_system("tacos", make_tacos_system)
register_system("mfcc", make_mfcc_system)
register_system("tacos-deployment", make_tacos_deployment_system)


# --------------------------------------------------------------------------- spotting


def _templates(system: System, shots: Mapping[str, Sequence[Shot]]):
    out = []
    for kw, ss in shots.items():
        for s in ss:
            f = np.ascontiguousarray(system.features(s.audio), dtype=np.float32)
            if len(f) < 2:
                raise ValueError(f"{system.name}: shot {s.path} gives only {len(f)} frames")
            out.append(Template(kw, f))
    return out


def run_spotter(features: np.ndarray, templates, threshold: float, frame_seconds: float, *,
                block_frames: int | None = None, record_trace: bool = False):
    """Run a fresh :class:`edge.kws.KeywordSpotter` with one global threshold over a stream.

    Returns
    -------
    detections : list of Detection
    seconds : float
        Time spent in ``push``/``flush``.
    trace : dict of str -> np.ndarray or None
    """
    thresholds = {t.keyword: float(threshold) for t in templates}
    sp = KeywordSpotter(templates, thresholds, frame_seconds, record_trace=record_trace)
    features = np.ascontiguousarray(features, dtype=np.float32)
    dets = []
    t0 = time.perf_counter()
    if block_frames is None:
        dets.extend(sp.push(features))
    else:
        for i in range(0, len(features), block_frames):
            dets.extend(sp.push(features[i:i + block_frames]))
    dets.extend(sp.flush())
    seconds = time.perf_counter() - t0
    trace = None
    if record_trace:
        trace = {k: np.asarray(v, dtype=np.float64) for k, v in sp.trace.items()}
    return dets, seconds, trace


def _point(features, templates, streams, frame_seconds, cfg, threshold) -> SweepPoint:
    dets = [run_spotter(f, templates, threshold, frame_seconds)[0] for f in features]
    c, _ = count_events([s.events for s in streams], dets, collar=cfg.collar,
                        offset_fraction=cfg.offset_fraction, matching=cfg.matching)
    return SweepPoint(float(threshold), c, stream_hours(streams))


def _grid(features, templates, streams, frame_seconds, n: int) -> np.ndarray:
    """Coarse threshold grid from the cost traces: from the lowest cost to the cost at which
    98 % of the references have a low-cost path ending inside them."""
    lows, ev_min = [], []
    for f, s in zip(features, streams):
        _, _, tr = run_spotter(f, templates, -1.0, frame_seconds, record_trace=True)
        fin = [v[np.isfinite(v)] for v in tr.values()]
        lows += [float(v.min()) for v in fin if len(v)]
        for e in s.events:
            v = tr.get(e.keyword)
            if v is None:
                continue
            a = max(0, int(math.floor(e.onset_s / frame_seconds)))
            b = min(len(v), int(math.ceil((e.offset_s + 0.3) / frame_seconds)) + 1)
            w = v[a:b][np.isfinite(v[a:b])]
            if len(w):
                ev_min.append(float(w.min()))
    if not lows:
        return np.array([0.5])
    lo = min(lows)
    hi = float(np.quantile(ev_min, 0.98)) if ev_min else lo + 0.5
    hi = max(hi, lo + 1e-3)
    return np.linspace(lo, hi, n)


def sweep(features, templates, streams, frame_seconds, cfg: EvalConfig, *,
          n_thresholds: int | None = None, refine: int = 6, objective: str = "f1") -> list[SweepPoint]:
    """Scores over a range of global thresholds (coarse grid, then a finer one).

    ``objective="f1"`` refines around the best F1; ``"fa"`` refines where FA/h crosses
    ``cfg.fa_per_hour``. Returns the points sorted by threshold.
    """
    grid = _grid(features, templates, streams, frame_seconds, n_thresholds or cfg.n_thresholds)
    pts = {float(t): _point(features, templates, streams, frame_seconds, cfg, t) for t in grid}
    ordered = sorted(pts.values(), key=lambda p: p.threshold)
    if refine and len(ordered) > 1:
        ths = [p.threshold for p in ordered]
        if objective == "f1":
            i = ordered.index(best_f1_point(ordered))
            lo, hi = ths[max(0, i - 1)], ths[min(len(ths) - 1, i + 1)]
        else:
            ok = [i for i, p in enumerate(ordered) if p.fa_per_hour <= cfg.fa_per_hour]
            i = ok[-1] if ok else 0
            lo, hi = ths[i] if ok else ths[0] - (ths[1] - ths[0]), ths[min(len(ths) - 1, i + 1)]
        for t in np.linspace(lo, hi, refine + 2)[1:-1]:
            if float(t) not in pts:
                pts[float(t)] = _point(features, templates, streams, frame_seconds, cfg, t)
    return sorted(pts.values(), key=lambda p: p.threshold)


@dataclass
class SystemResult:
    """Everything reported for one system."""

    system: System
    threshold: float
    val: Counts
    test: Counts
    test_per_keyword: dict[str, Counts]
    miss: dict[str, Any]
    dtw_rtf: float
    feature_rtf: float
    val_sweep: list[SweepPoint]
    test_sweep: list[SweepPoint]
    n_templates: int
    template_frames: float
    plot_stream: int
    plot_trace: dict[str, np.ndarray] = field(repr=False)
    plot_detections: list = field(repr=False)
    test_detections: list = field(repr=False)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.system.name, "description": self.system.description,
            "info": self.system.info, "frame_seconds": self.system.frame_seconds,
            "threshold": self.threshold, "val": self.val.to_dict(), "test": self.test.to_dict(),
            "test_per_keyword": {k: v.to_dict() for k, v in sorted(self.test_per_keyword.items())},
            "miss_rate_at_fa": self.miss, "dtw_rtf": self.dtw_rtf,
            "feature_rtf": self.feature_rtf,
            "n_templates": self.n_templates, "mean_template_frames": self.template_frames,
            "val_sweep": [p.to_dict() for p in self.val_sweep],
            "test_sweep": [p.to_dict() for p in self.test_sweep],
            "test_detections": [
                [{"keyword": d.keyword, "onset_s": round(float(d.onset_s), 4),
                  "offset_s": round(float(d.offset_s), 4), "cost": float(getattr(d, "cost", float("nan")))}
                 for d in ds] for ds in self.test_detections],
        }


def evaluate_system(system: System, shots: Mapping[str, Sequence[Shot]], val_streams, test_streams,
                    cfg: EvalConfig, *, progress: bool = False, plot_stream: int = 0) -> SystemResult:
    """Tune a global threshold on val, score test at it, miss rate at the FA target, timings."""
    templates = _templates(system, shots)
    val_f = [system.features(s.audio) for s in
             tqdm(val_streams, desc=f"{system.name} features (val)", disable=not progress, leave=False)]
    test_f, feat_s = [], 0.0
    for s in tqdm(test_streams, desc=f"{system.name} features (test)", disable=not progress, leave=False):
        t0 = time.perf_counter()
        test_f.append(system.features(s.audio))
        feat_s += time.perf_counter() - t0
    fs = system.frame_seconds
    if progress:
        print(f"[{system.name}] threshold sweep on val", file=sys.stderr)
    val_sweep = sweep(val_f, templates, val_streams, fs, cfg, objective="f1")
    best = best_f1_point(val_sweep)
    if progress:
        print(f"[{system.name}] val F1 {best.counts.f1:.3f} at threshold {best.threshold:.4f}; "
              "sweep on test", file=sys.stderr)
    test_sweep = sweep(test_f, templates, test_streams, fs, cfg, objective="fa")
    miss = miss_rate_at_fa(test_sweep, cfg.fa_per_hour)
    block = max(1, int(round(RTF_BLOCK_SECONDS / fs)))
    dets, dtw_s = [], 0.0
    for f in test_f:
        d, sec, _ = run_spotter(f, templates, best.threshold, fs, block_frames=block)
        dets.append(d)
        dtw_s += sec
    test, per_kw = count_events([s.events for s in test_streams], dets, collar=cfg.collar,
                                offset_fraction=cfg.offset_fraction, matching=cfg.matching)
    for kw in cfg.keywords:
        per_kw.setdefault(kw, Counts())
    seconds = sum(s.duration_s for s in test_streams)
    plot_stream = min(plot_stream, len(test_streams) - 1)
    pdets, _, trace = run_spotter(test_f[plot_stream], templates, best.threshold, fs, record_trace=True)
    return SystemResult(system, best.threshold, best.counts, test, per_kw, miss, dtw_s / seconds,
                        feat_s / seconds, val_sweep, test_sweep, len(templates),
                        float(np.mean([len(t.features) for t in templates])), plot_stream,
                        trace, pdets, dets)


@dataclass
class KwsEvalRun:
    """Everything one evaluation run produced: the input of the report.

    Attributes
    ----------
    cfg : EvalConfig
        The run's settings.
    data_dir : Path
        The shared data folder (resolved); shot paths are reported relative to it.
    shots : dict of str -> list of Shot
        Enrollment shots per keyword.
    val_streams, test_streams : list of Stream
        The streams thresholds are tuned on, and the streams scored.
    results : list of SystemResult
        One per evaluated system, in the order requested.
    seconds : float
        Wall time of the evaluation (streams, shots, systems), seconds.
    node_thresholds : dict or None
        The node's own per-keyword thresholds scored on the test streams
        (:func:`trainer.kws_eval.node_threshold_check`); ``None`` when not checked.
    """

    cfg: EvalConfig
    data_dir: Path
    shots: dict[str, list[Shot]]
    val_streams: list[Stream]
    test_streams: list[Stream]
    results: list[SystemResult]
    seconds: float
    node_thresholds: dict[str, Any] | None = None
