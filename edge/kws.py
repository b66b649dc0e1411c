"""Few-shot keyword spotting: streaming detection and post-processing.

Thesis section 6.3.6 "DTW backend" (``../shared/papers/001_bc66ac417165e5b3.txt``, line
2176ff) and SPEC "KWS embedder": every enrolled shot of a keyword is its own template (no
DBA averaging); the cosine-distance cost between the templates and the stream, scaled by each
template frame's weight where the templates have weights (:func:`onset_frame_weights`), is
accumulated by sub-sequence DTW with the step sizes (1, 1), (1, 2), (2, 1)
(:mod:`edge.dtw`); the cost of the best warping path ending at a stream frame, normalised by
its length, is the matching cost; a keyword is detected where it falls below the keyword's
threshold, with onset and offset at the start and end of the warping path; overlapping
detections are shortened so that they do not overlap, and detections shorter than half the
duration of their shot are removed.

Post-processing, exactly (``W`` keywords, ``K`` templates):

0. With ``shot_fusion`` ``S > 1`` (a bundle's choice), each template's normalised matching
   cost is first replaced by its mean with the ``S - 1`` lowest costs of the keyword's other
   templates over this frame and the one before (:func:`fuse_shot_costs`), its path start
   unchanged: a word counts as the keyword when several shots match it, not one.
1. Per keyword and frame the *candidate* is the keyword's template with the lowest matching
   cost (ties: the template given first), with its path start and cost.
2. A *run* is a maximal stretch of consecutive frames where the candidate cost is below
   the keyword's threshold (strictly). It ends at the first frame whose cost is not below
   the threshold, or at :meth:`KeywordSpotter.flush`. Each run yields one raw detection at
   its frame of minimum cost (the first one on ties): onset = that path's start frame,
   offset = that frame + 1 (exclusive).
3. Overlaps, across keywords and within one: raw detections are taken in order of
   increasing cost (ties: onset, offset, keyword order, template order); each keeps what is
   left of its interval after removing the intervals already kept; if that leaves several
   pieces, the longest one (the earliest on ties).
4. A detection shorter than half its template (``2 * frames < M``) is dropped; a dropped
   detection shortens nothing.
5. When a detection is decided (``decision``):

   * ``"exact"`` (the definition above, :func:`detect_keywords`' default): detections are
     emitted once nothing still to come can change them. Overlapping raw detections form
     connected groups; a group is resolved (steps 3-4) and emitted, in onset order, when
     every member ends at or before the earliest frame where a future raw detection could
     start: ``min(next frame - (2 M_max - 2), onset of the best path of every open run)``, a
     path over ``M`` template frames spanning at most ``2 M - 1`` stream frames. The latency
     of a detection is about ``2 M_max`` frames (1-2 s for 0.5-1 s shots) after its run
     closes.
   * ``"confirmed"`` (the node): a run's minimum is *confirmed* once ``confirm_frames``
     further frames brought no lower cost, or when the run closes, whichever comes first;
     it is then a raw detection, decided at once: steps 3-4 run against the detections
     already decided (not against later ones), raw detections decided at the same frame in
     order of increasing cost. With ``max_wait_frames``, a run's best so far is also
     decided once that many frames passed since the run's first frame, confirmed or not.
     If the run later reaches a lower cost and that is confirmed too (or the wait has
     passed), it is another raw detection (usually dropped by step 4, since its path
     overlaps the first). Latency: at most ``confirm_frames`` frames after the path's last
     frame, and at most ``max_wait_frames`` after the run's first (every pushed frame is
     processed at once).

     How far it may differ from ``"exact"``: a raw detection that overlaps no other raw
     detection of either mode is reported identically (same interval, cost, shot); where
     raw detections overlap, the one decided first keeps its interval (``"exact"``: the one
     with the lower cost), and a run whose cost keeps falling for more than
     ``confirm_frames`` frames (or past ``max_wait_frames``) is decided at an earlier,
     higher minimum. Tested in ``tests/test_kws_detect.py``.

   In both modes, pushing a stream in any chunking and then flushing gives the same
   detections as :func:`detect_keywords` on the whole of it.

Frame ``j`` starts at ``j * frame_seconds`` (one embedding every 16 ms on the node, i.e.
``frame_seconds = 0.016``).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from edge.dtw import StreamingSubsequenceDTW, cosine_cost_columns
from edge.keywords import (EnrolledKeywords, check_frame_weights, check_onset_weighting,
                           check_shot_fusion)
from edge.kws_runs import (RawDetection, RunTracker, groups_of_equal_size, overlap_groups,
                            resolve_overlaps)

__all__ = ["CONFIRM_SECONDS", "FUSION_WINDOW_FRAMES", "Template", "Detection", "KeywordSpotter",
           "onset_frame_weights", "make_templates", "enrolled_templates", "fuse_shot_costs",
           "matching_costs", "detect_keywords"]

#: How long a run's minimum must stand before ``decision="confirmed"`` decides it (seconds).
CONFIRM_SECONDS = 0.128
#: Frames before the current one in which :func:`fuse_shot_costs` looks for the other shots'
#: best paths (their paths over the same word may end a frame apart).
FUSION_WINDOW_FRAMES = 1


@dataclass(frozen=True, eq=False)
class Template:
    """One enrolled shot of a keyword; each shot is its own DTW template.

    Parameters
    ----------
    keyword : str
        Name of the keyword (non-empty).
    features : np.ndarray [shape=(M, D)]
        Frame embeddings of the shot (``M >= 1`` frames, ``D`` dims), stored as float32.
    cost_mean, cost_std : float
        Per-template cost normalisation: the spotter compares
        ``(matching cost - cost_mean) / cost_std`` with the keyword's threshold (default 0
        and 1: the raw cost). Enrollment sets them from the template's matching costs at its
        false-alarm candidates on negative audio (z-normalisation per query, as in
        query-by-example spoken term detection), so that a shot that matches everything
        does not set the keyword's false-alarm rate alone
        (:func:`calibration.keyword_thresholds.template_cost_norms`).
    frame_weights : np.ndarray [shape=(M,)], optional
        Weight of each template frame in the DTW's local cost (the frame's cosine distance
        to a stream frame is multiplied by it), stored as float64; None (default): every
        frame counts once. :func:`onset_frame_weights` makes the bundle's.

    Raises
    ------
    ValueError
        If the keyword is empty, the features are not a non-empty 2-D finite array, the
        normalisation is not finite with ``cost_std > 0``, or the frame weights are not
        ``M`` finite positive numbers.

    Notes
    -----
    Compared and hashed by identity (``eq=False``): ``==`` on a NumPy array field would
    not give a bool.
    """

    keyword: str
    features: np.ndarray
    cost_mean: float = 0.0
    cost_std: float = 1.0
    frame_weights: np.ndarray | None = None

    def __post_init__(self):
        if not isinstance(self.keyword, str) or not self.keyword:
            raise ValueError(f"template keyword must be a non-empty string, got "
                             f"{self.keyword!r}")
        f = np.asarray(self.features)
        if f.ndim != 2 or f.shape[0] == 0 or f.shape[1] == 0:
            raise ValueError(f"template {self.keyword!r}: features must be a non-empty 2-D "
                             f"array (frames, D), got shape {f.shape}")
        f = np.ascontiguousarray(f, dtype=np.float32)
        if not np.all(np.isfinite(f)):
            raise ValueError(f"template {self.keyword!r}: features contain NaN or inf")
        object.__setattr__(self, "features", f)
        mean, std = float(self.cost_mean), float(self.cost_std)
        if not (np.isfinite(mean) and np.isfinite(std) and std > 0):
            raise ValueError(f"template {self.keyword!r}: cost_mean must be finite and cost_std "
                             f"finite and > 0, got {self.cost_mean!r} and {self.cost_std!r}")
        object.__setattr__(self, "cost_mean", mean)
        object.__setattr__(self, "cost_std", std)
        if self.frame_weights is not None:
            try:
                w = check_frame_weights(self.frame_weights, f.shape[0])
            except ValueError as exc:
                raise ValueError(f"template {self.keyword!r}: {exc}") from None
            object.__setattr__(self, "frame_weights", w)

    @property
    def n_frames(self) -> int:
        """``M``, the template length in frames."""
        return int(self.features.shape[0])


@dataclass(frozen=True)
class Detection:
    """A detected keyword.

    Attributes
    ----------
    keyword : str
    onset_s, offset_s : float
        Start and end in seconds from the first frame of the stream
        (``onset_frame * frame_seconds``, ``offset_frame * frame_seconds``).
    cost : float
        Path-length normalised DTW cost of the detection (the event's score; lower is a
        better match).
    threshold : float
        The keyword's decision threshold (``cost < threshold``).
    onset_frame : int
        First frame of the (possibly shortened) warping path.
    offset_frame : int
        One past its last frame (exclusive).
    template_index : int
        Index, in the spotter's template sequence, of the shot that matched.
    decided_frame : int
        Frames pushed when the detection became final (its decision latency is
        ``decided_frame - offset_frame`` frames after the path's end, before the frontend's
        own delay); not part of equality.
    """

    keyword: str
    onset_s: float
    offset_s: float
    cost: float
    threshold: float
    onset_frame: int
    offset_frame: int
    template_index: int
    decided_frame: int = field(default=-1, compare=False)

    @property
    def duration_s(self) -> float:
        """``offset_s - onset_s``."""
        return self.offset_s - self.onset_s

    @property
    def n_frames(self) -> int:
        """``offset_frame - onset_frame``."""
        return self.offset_frame - self.onset_frame

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-serialisable dict of all fields plus ``duration_s``."""
        return {"keyword": self.keyword, "onset_s": float(self.onset_s),
                "offset_s": float(self.offset_s), "duration_s": float(self.duration_s),
                "cost": float(self.cost), "threshold": float(self.threshold),
                "onset_frame": int(self.onset_frame), "offset_frame": int(self.offset_frame),
                "template_index": int(self.template_index)}


class KeywordSpotter:
    """Streaming few-shot keyword spotter (thesis 6.3.6); see the module docstring.

    The templates are L2-normalised once and stacked into one ``(sum M, D)`` float32
    matrix; each new frame costs one column of the stacked cosine cost matrix
    (:func:`edge.dtw.cosine_cost_columns`), one column of the accumulated DTW cost per
    template (:class:`edge.dtw.StreamingSubsequenceDTW`) and a pass of the run tracking, in
    NumPy. Every pushed frame is processed at once.

    Parameters
    ----------
    templates : iterable of Template
        The enrolled shots, at least one; all with the same ``D``.
    thresholds : mapping str -> float
        Decision threshold per keyword (normalised DTW cost; a detection needs
        ``cost < threshold``). Keys for keywords without a template are ignored.
    frame_seconds : float
        Duration of one frame in seconds (hop of the embedding stream).
    record_trace : bool
        Keep the per-frame candidate cost of every keyword (see :attr:`trace`).
    decision : {"exact", "confirmed"}
        When a detection is decided (module docstring, step 5): ``"exact"`` equals the
        whole-stream definition and waits about ``2 M_max`` frames; ``"confirmed"`` (what
        the node runs) decides ``confirm_frames`` after a run's minimum.
    confirm_frames : int, optional
        With ``"confirmed"``: frames without a lower cost that confirm a run's minimum
        (default: whole frames in :data:`CONFIRM_SECONDS`, at least one; 8 at 16 ms per
        frame, 1 at 80 ms).
    shot_fusion : int
        Shots whose normalised costs are averaged (module docstring, step 0;
        :func:`fuse_shot_costs`); 1 (default): every shot decides alone. A bundle's
        thresholds hold for the fusion it was calibrated with (its ``shot_fusion``).
    max_wait_frames : int, optional
        With ``"confirmed"``: decide a run's best so far at the latest this many frames
        after the run's first frame, even if its cost is still falling (module docstring,
        step 5); None (default): no limit. A bundle that weights template onsets sets it
        (``max_wait_frames`` of :class:`edge.speech_embedding.SpeechEmbedder`).

    Raises
    ------
    ValueError
        No template; templates of different ``D``; a keyword without a threshold (the
        message names it); a non-finite threshold; ``frame_seconds <= 0``; an unknown
        ``decision``; ``confirm_frames < 0``; ``max_wait_frames < 0``; ``shot_fusion`` not
        an integer ``>= 1``.

    Examples
    --------
    >>> spotter = KeywordSpotter(templates, {"stop": 0.25}, frame_seconds=0.016)  # doctest: +SKIP
    >>> for block in embedding_blocks:                                          # doctest: +SKIP
    ...     for det in spotter.push(block):
    ...         publish(det.to_dict())
    >>> final = spotter.flush()                                                 # doctest: +SKIP
    """

    def __init__(self, templates: Iterable[Template], thresholds: Mapping[str, float],
                 frame_seconds: float, record_trace: bool = False, *,
                 decision: str = "exact", confirm_frames: int | None = None,
                 shot_fusion: int = 1, max_wait_frames: int | None = None):
        if decision not in ("exact", "confirmed"):
            raise ValueError(f"decision must be 'exact' or 'confirmed', got {decision!r}")
        if confirm_frames is not None and int(confirm_frames) < 0:
            raise ValueError(f"confirm_frames must be >= 0, got {confirm_frames!r}")
        if max_wait_frames is not None and int(max_wait_frames) < 0:
            raise ValueError(f"max_wait_frames must be >= 0, got {max_wait_frames!r}")
        self.max_wait_frames = None if max_wait_frames is None else int(max_wait_frames)
        self.shot_fusion = check_shot_fusion(shot_fusion)
        self.decision = decision
        self.templates: tuple[Template, ...] = tuple(templates)
        if not self.templates:
            raise ValueError("need at least one template")
        for t in self.templates:
            if not isinstance(t, Template):
                raise ValueError(f"templates must be Template objects, got {type(t).__name__}")
        dims = sorted({t.features.shape[1] for t in self.templates})
        if len(dims) != 1:
            raise ValueError(f"all templates must have the same feature dimension, got {dims}")
        self.dim = dims[0]
        frame_seconds = float(frame_seconds)
        if not (np.isfinite(frame_seconds) and frame_seconds > 0):
            raise ValueError(f"frame_seconds must be > 0, got {frame_seconds!r}")
        self.frame_seconds = frame_seconds
        self.confirm_frames = int(max(1, int(CONFIRM_SECONDS / frame_seconds + 1e-9))
                                  if confirm_frames is None else confirm_frames)
        self.keywords: tuple[str, ...] = tuple(dict.fromkeys(t.keyword for t in self.templates))
        thr = []
        for kw in self.keywords:
            if kw not in thresholds:
                raise ValueError(f"no threshold for keyword {kw!r}")
            v = float(thresholds[kw])
            if not np.isfinite(v):
                raise ValueError(f"threshold for keyword {kw!r} must be finite, got {v!r}")
            thr.append(v)
        self.thresholds = dict(zip(self.keywords, thr))
        self._thr = np.asarray(thr, np.float64)
        kw_index = {kw: i for i, kw in enumerate(self.keywords)}
        self._tmpl_kw = np.array([kw_index[t.keyword] for t in self.templates], np.int64)
        self._tmpl_len = np.array([t.n_frames for t in self.templates], np.int64)
        self._cost_mean = np.array([t.cost_mean for t in self.templates])
        self._cost_std = np.array([t.cost_std for t in self.templates])
        self._normalised = bool(np.any(self._cost_mean != 0) or np.any(self._cost_std != 1))
        stacked = np.concatenate([t.features for t in self.templates])
        self._Q = np.ascontiguousarray(_unit_rows(stacked))
        self._W = _stacked_weights(self.templates)
        self._dtw = StreamingSubsequenceDTW(self._tmpl_len)
        #: the longest path spans 2 M_max - 1 frames
        self.max_span_frames = int(2 * self._tmpl_len.max() - 1)
        self.record_trace = bool(record_trace)
        self.reset()

    @classmethod
    def from_enrolled(cls, enrolled: EnrolledKeywords, frame_seconds: float,
                      record_trace: bool = False, **options) -> "KeywordSpotter":
        """A spotter for every shot of every keyword in an enrolled-keywords artifact.

        Parameters
        ----------
        enrolled : edge.keywords.EnrolledKeywords
            Its templates (one per shot, keywords in sorted order) and thresholds.
        frame_seconds : float
            Seconds per embedding frame of the model the templates were embedded with.
        record_trace : bool
        **options
            ``decision``, ``confirm_frames``, ``max_wait_frames``, ``shot_fusion`` (default:
            the one the keywords' thresholds were set for, ``enrolled.shot_fusion``).
        """
        options.setdefault("shot_fusion", enrolled.shot_fusion)
        templates = [t for k in sorted(enrolled.templates) for t in enrolled_templates(enrolled, k)]
        return cls(templates, enrolled.thresholds, frame_seconds, record_trace, **options)

    # ----------------------------------------------------------------------------------

    def reset(self) -> None:
        """Forget the stream (pending detections included); the next frame is frame 0."""
        self._dtw.reset()
        confirmed = self.decision == "confirmed"
        max_wait = self.max_wait_frames if confirmed and self.max_wait_frames is not None else -1
        self._runs = RunTracker(self._tmpl_kw, self._thr,
                                self.confirm_frames if confirmed else -1, max_wait)
        self._pending: list[RawDetection] = []
        self._kept: list[tuple[int, int]] = []  # "confirmed": decided intervals still relevant
        self._trace: list[np.ndarray] = []
        self._fusion_prev = np.zeros((0, len(self.templates)))  # last normalised cost rows
        self._frames_seen = 0
        self._flushed = False

    @property
    def frames_seen(self) -> int:
        """Frames pushed since construction or :meth:`reset`."""
        return self._frames_seen

    @property
    def frames_processed(self) -> int:
        """Frames that went through the DTW (every pushed frame is processed at once)."""
        return self._frames_seen

    @property
    def trace(self) -> dict[str, np.ndarray]:
        """Per-frame candidate cost (minimum matching cost over the keyword's templates,
        normalised and fused as decided).

        Returns
        -------
        dict str -> np.ndarray [shape=(frames_processed,), dtype=float64]
            ``inf`` where no path ends yet. Only with ``record_trace=True``.

        Raises
        ------
        RuntimeError
            If the spotter was built without ``record_trace``.
        """
        if not self.record_trace:
            raise RuntimeError("construct the KeywordSpotter with record_trace=True")
        cand = (np.concatenate(self._trace) if self._trace
                else np.zeros((0, len(self.keywords))))
        return {kw: cand[:, i].copy() for i, kw in enumerate(self.keywords)}

    # ----------------------------------------------------------------------------------

    def push(self, frames: np.ndarray) -> list[Detection]:
        """Feed new frames; returns the detections that became final, in onset order.

        Parameters
        ----------
        frames : np.ndarray [shape=(n, D)] (or (D,) for one frame)
            Frame embeddings of the stream, oldest first; any real dtype (float32 inside).

        Returns
        -------
        list of Detection

        Raises
        ------
        ValueError
            If the shape does not match ``D`` or a value is NaN or infinite (nothing is
            consumed then).
        RuntimeError
            After :meth:`flush`, until :meth:`reset`.
        """
        if self._flushed:
            raise RuntimeError("the stream was flushed; call reset() to start a new one")
        f = np.asarray(frames)
        if f.ndim == 1:
            f = f[None, :]
        if f.ndim != 2 or f.shape[1] != self.dim:
            raise ValueError(f"frames must have shape (n, {self.dim}), got {np.shape(frames)}")
        unit = _unit_rows(f)  # raises on NaN/inf before anything is consumed
        if self._dtw.frames_seen != self._frames_seen:
            raise RuntimeError("this stream was fed with push_matching(); reset() first")
        if len(unit):
            costs = cosine_cost_columns(unit, self._Q)
            if self._W is not None:
                costs *= self._W
            self._decide(*self._dtw._update_unchecked(costs))  # costs >= 0, finite
        return self._finalise(final=False)

    def push_matching(self, matching_cost: np.ndarray,
                      start_frame: np.ndarray) -> list[Detection]:
        """Feed the DTW's output for the next frames instead of the frames themselves.

        What :meth:`push` computes from frames and then decides on: a threshold sweep runs
        a stream's DTW once (:func:`matching_costs`) and decides at every threshold with a
        new spotter, with the same detections as :meth:`push` of the frames.

        Parameters
        ----------
        matching_cost : np.ndarray [shape=(n, K), dtype=float64]
            Path-length normalised cost of every template's best path ending at each new
            frame (``+inf`` where none), templates in this spotter's order.
        start_frame : np.ndarray [shape=(n, K), dtype=int64]
            Stream frame where each of those paths starts.

        Returns
        -------
        list of Detection
            As :meth:`push`: the detections that became final, in onset order.

        Raises
        ------
        ValueError
            If the shapes do not match ``(n, K)`` or a cost is NaN or negative.
        RuntimeError
            After :meth:`flush`, or on a stream already fed with :meth:`push`.
        """
        if self._flushed:
            raise RuntimeError("the stream was flushed; call reset() to start a new one")
        mc = np.asarray(matching_cost, np.float64)
        st = np.asarray(start_frame, np.int64)
        K = len(self.templates)
        if mc.ndim != 2 or mc.shape[1] != K or st.shape != mc.shape:
            raise ValueError(f"matching costs and start frames must both have shape (n, {K}), "
                             f"got {np.shape(matching_cost)} and {np.shape(start_frame)}")
        if not np.all(mc >= 0.0):
            raise ValueError("matching costs must be >= 0 (+inf allowed), got NaN or negative")
        if self._dtw.frames_seen:
            raise RuntimeError("this stream was fed with push(); reset() first")
        if len(mc):
            self._decide(mc, st)
        return self._finalise(final=False)

    def flush(self) -> list[Detection]:
        """End of stream: close open runs, emit everything left.

        This ends the stream: call :meth:`reset` before pushing another one (the trace is
        kept until then).

        Returns
        -------
        list of Detection
            In onset order.
        """
        self._flushed = True
        self._pending.extend(self._runs.close_all(self._frames_seen))
        return self._finalise(final=True)

    # ----------------------------------------------------------------------------------

    def _decide(self, mc: np.ndarray, st: np.ndarray) -> None:
        """Run tracking (steps 1-2) over the next frames' matching costs ``mc`` (n, K) and
        path starts ``st``, normalised per template first (:class:`Template`) and fused
        across shots (step 0)."""
        if self._normalised:
            mc = (mc - self._cost_mean) / self._cost_std
        if self.shot_fusion > 1:
            fused = fuse_shot_costs(mc, self._tmpl_kw, self.shot_fusion, self._fusion_prev,
                                    groups=self._runs.groups)
            self._fusion_prev = np.concatenate([self._fusion_prev, mc])[-FUSION_WINDOW_FRAMES:]
            mc = fused
        cand, raws = self._runs.push(mc, st, self._frames_seen)
        self._frames_seen += len(mc)
        self._pending.extend(raws)
        if self.record_trace:
            self._trace.append(cand)

    def _horizon(self) -> float:
        """Earliest frame where a raw detection still to come could start."""
        h = self._frames_seen - (self.max_span_frames - 1)
        runs = self._runs
        if runs.in_run.any():
            h = min(h, int(runs.best_start[runs.in_run].min()))
        return h

    def _finalise(self, final: bool) -> list[Detection]:
        if self.decision == "confirmed":
            return self._finalise_confirmed()
        if not self._pending:
            return []
        horizon = np.inf if final else self._horizon()
        out: list[Detection] = []
        keep: list[RawDetection] = []
        for g in overlap_groups(self._pending):
            if max(r.offset for r in g) <= horizon:
                order = sorted(g, key=lambda r: (r.cost, r.onset, r.offset, r.keyword, r.template))
                out.extend(self._resolve(order, [], self._frames_seen))
            else:
                keep.extend(g)
        self._pending = keep
        out.sort(key=lambda d: (d.onset_frame, d.offset_frame, self.keywords.index(d.keyword)))
        return out

    def _finalise_confirmed(self) -> list[Detection]:
        """Decide the raw detections confirmed so far, in the order they were confirmed."""
        order = sorted(self._pending, key=lambda r: (r.at, r.cost, r.onset, r.offset,
                                                     r.keyword, r.template))
        self._pending = []
        out = []
        for r in order:
            out.extend(self._resolve([r], self._kept, r.at))
        # a raw detection still to come starts at or after this frame: older intervals
        # can no longer shorten anything
        horizon = self._frames_seen - (self.max_span_frames - 1)
        self._kept = [(a, b) for a, b in self._kept if b > horizon]
        out.sort(key=lambda d: (d.onset_frame, d.offset_frame, self.keywords.index(d.keyword)))
        return out

    def _resolve(self, order: Sequence[RawDetection], kept: list[tuple[int, int]],
                 decided: int) -> list[Detection]:
        """Steps 3 and 4 (:func:`edge.kws_runs.resolve_overlaps`) as detections."""
        out = []
        for r, on, off in resolve_overlaps(order, kept, self._tmpl_len):
            kw = self.keywords[r.keyword]
            out.append(Detection(keyword=kw, onset_s=on * self.frame_seconds,
                                 offset_s=off * self.frame_seconds, cost=r.cost,
                                 threshold=self.thresholds[kw], onset_frame=on,
                                 offset_frame=off, template_index=r.template,
                                 decided_frame=decided))
        return out


def _unit_rows(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm, float32; zero rows stay zero (cost 1 to everything).

    The norm is summed in float64, row by row (a frame's result does not depend on the
    other frames of its block).

    Raises
    ------
    ValueError
        If a value is NaN or infinite (also float64 values beyond the float32 range).
    """
    x = np.ascontiguousarray(x, dtype=np.float32)
    x64 = x.astype(np.float64)
    ss = np.sum(x64 * x64, axis=1)
    finite = np.isfinite(ss)
    if not finite.all():
        raise ValueError(f"frame {int(np.argmin(finite))} of the block contains NaN or "
                         "infinite values")
    scale = np.divide(1.0, np.sqrt(ss), out=np.zeros_like(ss), where=ss > 0.0)
    return (x64 * scale[:, None]).astype(np.float32)


def _stacked_weights(templates: Sequence[Template]) -> np.ndarray | None:
    """The templates' frame weights stacked like their frames, shape (sum M,); None when no
    template has weights (the costs are then used as they are)."""
    if all(t.frame_weights is None for t in templates):
        return None
    return np.concatenate([np.ones(t.n_frames) if t.frame_weights is None else t.frame_weights
                           for t in templates])


def onset_frame_weights(n_frames: int, onset_weighting: Sequence[float]) -> np.ndarray | None:
    """Frame weights that make a template's first frames, its word onset, count more.

    A template's first frames are embedding windows centred at the start of the shot's
    speech: they hear the pause before the word and its first sound. Weighting them up in
    the DTW's local cost makes a match need that onset too, not only a stretch of sound that
    resembles the rest of the word: the end of a longer word in running speech (the "-ter"
    of "computer" in "... shorter ...") matches a whole template less well. The weights
    fall linearly from ``w`` on frame 0 to 1 on frame ``k``; all are then divided by their
    mean, so that a path's length-normalised cost stays on the scale of unweighted ones.
    Enrollment weights only shots recorded with a pause before the word
    (:func:`calibration.enroll.shot_frame_weights`).

    This is not from the thesis: its DTW backend (6.3.6) weights every frame alike. On the
    wake-word evaluation (``python -m trainer evaluate-kws``: four wake words and speakers
    never heard, 10 dB SNR) ``w = 3``, ``k = 3`` on the speech_embedding bundle's 80 ms
    frames took the misses at 1 false alarm per hour in hindsight from 236 to 181 of 2632
    keyword utterances on the five draws it was chosen on, and from 236 to 186 of 2142 on
    four draws used for no choice. The shipped bundle still sets none: at the node's
    calibrated threshold one keyword raised up to 42 false alarms per hour and decisions
    came 0.45-0.60 s after the keyword (README, "The word onset counts more").

    Parameters
    ----------
    n_frames : int
        ``M``, the template's length in frames.
    onset_weighting : (float, int, float)
        ``(w, k, lead_in_s)``, a bundle's ``onset_weighting``: the first frame's weight before
        the mean normalisation (``w >= 1``) and the frames over which it falls to 1
        (``k >= 0``); ``lead_in_s`` is enrollment's concern and not used here.

    Returns
    -------
    np.ndarray [shape=(M,), dtype=float64] or None
        None (every frame counts once) when ``w == 1``, ``k == 0`` or ``M <= k``.

    Raises
    ------
    ValueError
        ``onset_weighting`` is not valid (:func:`edge.keywords.check_onset_weighting`).
    """
    w, k, _ = check_onset_weighting(onset_weighting)
    if w == 1.0 or k == 0 or n_frames <= k:
        return None
    weights = np.ones(int(n_frames))
    weights[:k] = w - (w - 1.0) * np.arange(k) / k
    return weights / weights.mean()


def make_templates(keyword: str, features: Sequence[np.ndarray], norms=None,
                   frame_weights=None) -> list[Template]:
    """One keyword's shots as templates.

    Parameters
    ----------
    keyword : str
    features : sequence of np.ndarray [shape=(M, D)]
        One frame-embedding matrix per shot.
    norms : sequence of (float, float), optional
        ``(cost_mean, cost_std)`` per shot (default: raw costs).
    frame_weights : sequence of (np.ndarray [shape=(M,)] or None), optional
        Per shot, as :class:`Template`'s ``frame_weights`` (default: none).

    Returns
    -------
    list of Template

    Raises
    ------
    ValueError
        As :class:`Template`; ``norms`` or ``frame_weights`` of another length than
        ``features``.
    """
    features = list(features)
    for name, v in (("cost norms", norms), ("frame weights", frame_weights)):
        if v is not None and len(v) != len(features):
            raise ValueError(f"{keyword!r}: {len(v)} {name} for {len(features)} templates")
    return [Template(keyword, f, *((0.0, 1.0) if norms is None else norms[i]),
                     None if frame_weights is None else frame_weights[i])
            for i, f in enumerate(features)]


def enrolled_templates(enrolled: EnrolledKeywords, keyword: str) -> list[Template]:
    """One keyword's shots of an enrolled-keywords artifact as templates, with their cost
    normalisation (``enrolled.cost_norms``) and frame weights (``enrolled.frame_weights``)
    where it has them.

    Raises
    ------
    KeyError
        If ``keyword`` is not enrolled.
    """
    feats = enrolled.templates[keyword]
    return make_templates(keyword, feats,
                          [enrolled.template_cost_norm(keyword, i) for i in range(len(feats))],
                          enrolled.frame_weights.get(keyword))


def fuse_shot_costs(costs: np.ndarray, keyword_index: np.ndarray, shot_fusion: int,
                    previous: np.ndarray | None = None, *,
                    groups: list[tuple[np.ndarray, np.ndarray]] | None = None) -> np.ndarray:
    """Each template's matching cost averaged with the best of its keyword's other shots.

    Every enrolled shot is its own template (thesis 6.3.6), and a word is a detection when
    one shot matches it well enough: with five shots, five chances for any word to look
    like the keyword. Query-by-example spoken term detection combines several examples of a
    query instead of letting each decide alone (query combination: Tejedor, Szöke and Fapšo
    2010, "Novel methods for query selection and query combination in query-by-example
    spoken term detection"); this is the simplest such combination, a score average.

    Template ``j``'s fused cost at frame ``t`` is the mean of its own cost and the
    ``shot_fusion - 1`` lowest costs of the *other* templates of its keyword, each taken
    as its minimum over frames ``t - FUSION_WINDOW_FRAMES .. t`` (two
    shots' paths over one word may end a frame apart). The path start stays template
    ``j``'s. Costs are the per-template normalised ones (:class:`Template`), so the shots
    are on one scale. A keyword with fewer shots averages over all it has.

    On the wake-word evaluation (``python -m trainer evaluate-kws``: unseen speakers, 10 dB
    SNR, 2.2 h of audio per keyword; speech_embedding bundle, five shots) fusing two shots
    took the misses at 1 false alarm per hour in hindsight from 264 to 224 of 1584 keyword
    utterances over three draws (three shots: 232); see the README.

    Parameters
    ----------
    costs : np.ndarray [shape=(n, K), dtype=float64]
        Normalised matching costs of the ``K`` templates at ``n`` consecutive frames
        (``+inf`` where no path ends yet).
    keyword_index : np.ndarray [shape=(K,), dtype=int]
        Keyword of each template (templates with equal values belong together).
    shot_fusion : int
        Shots averaged, ``>= 1``; 1 returns ``costs`` unchanged.
    previous : np.ndarray [shape=(p, K)], optional
        Costs of the frames just before these (streaming: the last
        :data:`FUSION_WINDOW_FRAMES` rows of the previous call); none at the start of a
        stream.
    groups : list, optional
        ``edge.kws_runs.groups_of_equal_size(keyword_index)``, when the caller keeps it
        (the spotter computes it once instead of on every push).

    Returns
    -------
    np.ndarray [shape=(n, K), dtype=float64]

    Raises
    ------
    ValueError
        If ``shot_fusion < 1`` or the shapes disagree.
    """
    z = np.asarray(costs, np.float64)
    kw = np.asarray(keyword_index)
    shot_fusion = check_shot_fusion(shot_fusion)
    if z.ndim != 2 or kw.shape != (z.shape[1],):
        raise ValueError(f"costs must have shape (n, K) with K = {kw.shape} keyword indices, "
                         f"got {z.shape}")
    if shot_fusion == 1 or len(z) == 0:
        return z
    prev = np.zeros((0, z.shape[1])) if previous is None else np.asarray(previous, np.float64)
    if prev.ndim != 2 or prev.shape[1] != z.shape[1]:
        raise ValueError(f"previous must have shape (p, {z.shape[1]}), got {prev.shape}")
    n, L = len(z), FUSION_WINDOW_FRAMES
    tail = prev[max(len(prev) - L, 0):]
    padded = np.concatenate([np.full((L - len(tail), z.shape[1]), np.inf), tail, z])
    window = z.copy()  # each template's lowest cost over this frame and the L before
    for lag in range(1, L + 1):
        window = np.minimum(window, padded[L - lag:L - lag + n])
    out = z.copy()
    for _, cols in groups_of_equal_size(kw) if groups is None else groups:  # g shots each
        g = cols.shape[1]
        q = min(int(shot_fusion), g) - 1  # other shots averaged in
        if q < 1:
            continue
        w = window[:, cols]  # (n, keywords, g)
        low = np.sort(w, axis=2)[:, :, :q + 1]
        # the q lowest of the *other* shots: the q + 1 lowest of all without the shot's own
        # value where that is among them, else the q lowest of all (exact with ties and inf)
        mine = w < low[:, :, q:]
        with np.errstate(invalid="ignore"):
            swap = np.where(mine, low[:, :, q:] - np.where(mine, w, 0.0), 0.0)
        out[:, cols] = (z[:, cols] + low[:, :, :q].sum(axis=2, keepdims=True) + swap) / (q + 1)
    return out


def matching_costs(frames: np.ndarray,
                   templates: Sequence[Template]) -> tuple[np.ndarray, np.ndarray]:
    """Every template's matching cost and path start at every frame of a whole stream.

    The DTW half of :meth:`KeywordSpotter.push` (cost columns, weighted by the templates'
    ``frame_weights`` where they have them, then streaming sub-sequence DTW, thesis 6.3.6),
    for :meth:`KeywordSpotter.push_matching`.

    Parameters
    ----------
    frames : np.ndarray [shape=(N, D)]
        Frame embeddings of the stream.
    templates : sequence of Template
        In the order of the spotter that will be fed.

    Returns
    -------
    matching_cost : np.ndarray [shape=(N, K), dtype=float64]
    start_frame : np.ndarray [shape=(N, K), dtype=int64]

    Raises
    ------
    ValueError
        No template, different ``D``, or NaN/inf in the frames.
    """
    templates = list(templates)
    if not templates:
        raise ValueError("need at least one template")
    q = _unit_rows(np.concatenate([t.features for t in templates]))
    f = np.asarray(frames)
    if f.ndim != 2 or f.shape[1] != q.shape[1]:
        raise ValueError(f"frames must have shape (N, {q.shape[1]}), got {f.shape}")
    dtw = StreamingSubsequenceDTW([t.n_frames for t in templates])
    costs = cosine_cost_columns(_unit_rows(f), q)
    w = _stacked_weights(templates)
    if w is not None:
        costs *= w
    return dtw._update_unchecked(costs)


def detect_keywords(frames: np.ndarray, templates: Iterable[Template],
                    thresholds: Mapping[str, float], frame_seconds: float,
                    **options) -> list[Detection]:
    """Detect keywords in a whole stream: :meth:`KeywordSpotter.push` then ``flush``.

    Parameters
    ----------
    frames : np.ndarray [shape=(N, D)]
        Frame embeddings of the stream.
    templates : iterable of Template
    thresholds : mapping str -> float
    frame_seconds : float
    **options
        ``decision`` (default ``"exact"``) and ``confirm_frames``, as :class:`KeywordSpotter`.

    Returns
    -------
    list of Detection
        In onset order; the same as any chunked streaming run over ``frames``.

    Raises
    ------
    ValueError
        As :class:`KeywordSpotter` and :meth:`KeywordSpotter.push`.
    """
    spotter = KeywordSpotter(templates, thresholds, frame_seconds, **options)
    return spotter.push(frames) + spotter.flush()
