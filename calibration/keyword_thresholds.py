"""Keyword decision thresholds from negative audio, and the cost normalisation they use.

Enrollment (:func:`calibration.enroll.enroll_keyword`) runs each keyword's templates over
negative audio: the shipped set in ``calibration/negatives/`` (its words once more mixed with
its noise at 10 dB SNR), the site's background recording (``python -m calibration
background``) and ``--negatives`` files, and the other keywords' shots.

Per-template cost normalisation (bundles whose metadata asks for it with
``"cost_normalisation": "template-znorm"``, the default speech_embedding bundle): every
template runs alone over the negative audio below, and the mean and standard deviation of its
costs at its false-alarm candidates normalise its matching cost (:func:`template_cost_norms`,
:class:`edge.kws.Template`): z-normalisation per query, as in query-by-example spoken term
detection. A shot that matches much ordinary speech (said fast, or in noise) then no longer
sets the keyword's false-alarm rate alone, and one threshold table serves keywords whose raw
costs differ. On the wake-word evaluation (2.2 h of negatives, unseen speakers, 10 dB SNR)
it brought the miss rate at 1 false alarm per hour from 56 % to about 23 % for "view glass"
and from 41 % to about 31 % for "computer". Thresholds are then z-scores (negative). A bundle
with ``shot_fusion`` > 1 averages each template's normalised cost with the keyword's best
other shots (:func:`edge.kws.fuse_shot_costs`); every event cost here is fused the same way,
so thresholds are set on what the spotter compares.

Decision thresholds, in this order: fitted on the site's background when it lasts at least
:data:`SITE_FIT_MIN_HOURS` (``"site-fit"``); else fitted the same way on the bundle's generic
negative hour, asking it for the rate times the factor the bundle measured for it
(``"generic-fit"``, :mod:`calibration.generic_negatives`); else the bundle's
table, and so on below. The table (thesis 6.3.6 tunes one global threshold on validation
data): a KWS bundle calibrated with ``python -m trainer calibrate-kws-thresholds`` carries,
per false-alarm rate, the threshold that gave that rate on hours of negative audio for the median
of its calibration keywords; enrollment takes the one for ``kws.false_alarms_per_hour``
(:func:`calibrated_threshold`, source ``"calibrated"``). Measured on the evaluation's two
hours of negatives (``python -m trainer evaluate-kws``), the threshold for a rate is close
for short calibration words but not for wake words (1 FA/h: about -2.2 for "smart mirror",
-3.1 for "alexa"; hence the generic fit), and statistics of minutes of negatives do not
predict the rest
(``trainer/kws_thresholds.py``). A bundle without that table falls back to the earlier
per-keyword estimate: the enrolled templates run over *negative* audio (the shipped set in
``calibration/negatives/``, its words once more mixed with its noise at 10 dB SNR, recordings
passed with ``--negatives``, and the other keywords' shots); every local minimum of the
keyword's matching-cost trace, at least one template length apart, is a potential false
alarm, and a gamma distribution fitted to these costs (SciPy) gives the threshold whose
expected number of false alarms per hour is the configured rate,
``P(cost < threshold) = rate / (negative events per hour)`` (source ``"fa-rate"``; on the
evaluation it gave 0 to 18 false alarms per hour for a target of 1). With fewer than
:data:`MIN_NEGATIVE_EVENTS` events, or when the fit fails, the keyword gets the global
fallback threshold (config ``kws.fallback_threshold``, else the model bundle's
``decision_threshold``).
"""
from __future__ import annotations

import functools
import logging
from pathlib import Path

import numpy as np

from calibration.generic_negatives import load_generic_negatives
from edge.audio import load_audio
from edge.kws import fuse_shot_costs, make_templates, matching_costs

log = logging.getLogger(__name__)

__all__ = ["MIN_NEGATIVE_EVENTS", "DEFAULT_FALLBACK_THRESHOLD", "SITE_FIT_MIN_HOURS",
           "TAIL_EVENTS", "TEMPLATE_ZNORM", "shipped_negatives", "normalises_costs",
           "negative_frames", "template_cost_norms", "keyword_cost_norms", "trace_event_costs",
           "event_costs",
           "calibrated_threshold", "fa_rate_threshold", "tail_fit_threshold",
           "keyword_threshold"]

MIN_NEGATIVE_EVENTS = 30
DEFAULT_FALLBACK_THRESHOLD = 0.25
#: Hours of site background (``python -m calibration background``) from which a keyword's
#: threshold is fitted on the site's own sound (:func:`tail_fit_threshold`) instead of taken
#: from the model's calibrated table.
SITE_FIT_MIN_HOURS = 0.25
#: Lowest negative events the tail fit uses (:func:`tail_fit_threshold`).
TAIL_EVENTS = 40
NEGATIVES_DIR = Path(__file__).resolve().parent / "negatives"


@functools.lru_cache(maxsize=2)
def _shipped_files(sample_rate: int) -> tuple[tuple[str, np.ndarray], ...]:
    """``(word or "noise", waveform)`` of every file in ``calibration/negatives/``, read once."""
    return tuple((p.name.split("_")[0].lower(), load_audio(p, sample_rate))
                 for p in sorted(NEGATIVES_DIR.glob("*.flac")))


def shipped_negatives(exclude_word: str | None = None, sample_rate: int = 16000,
                      snr_db: float | None = 10.0):
    """The negative recordings shipped in ``calibration/negatives/`` (see its README).

    Files are named ``<word>_<n>.flac`` (speech) or ``noise_<n>.flac``; files of
    ``exclude_word`` are left out. With ``snr_db``, every word is returned a second time
    mixed with a (deterministic) excerpt of the shipped noise at that SNR, because a node
    hears speech in noise and noisy speech matches templates more easily than clean speech.

    Returns
    -------
    list of np.ndarray, float32 at ``sample_rate``
    """
    words, noise = [], []
    for kind, y in _shipped_files(sample_rate):
        if exclude_word and kind == exclude_word.lower():
            continue
        (noise if kind == "noise" else words).append(y)
    out = words + noise
    if snr_db is not None and noise:
        bed = np.concatenate(noise)
        rng = np.random.default_rng(0)
        for w in words:
            n = bed[(s := int(rng.integers(0, max(1, len(bed) - len(w))))):s + len(w)]
            gain = np.sqrt(np.mean(w ** 2) / max(np.mean(n ** 2), 1e-12) / 10 ** (snr_db / 10))
            out.append((w + gain * n).astype(np.float32))
    return out


def _concat_with_gaps(waves, sample_rate: int, gap_seconds: float = 0.5) -> np.ndarray:
    gap = np.zeros(int(gap_seconds * sample_rate), np.float32)
    parts = []
    for w in waves:
        parts += [np.asarray(w, np.float32), gap]
    return np.concatenate(parts) if parts else np.zeros(0, np.float32)


#: Bundle metadata ``cost_normalisation`` value that asks enrollment to normalise every
#: template's matching cost (:func:`template_cost_norms`).
TEMPLATE_ZNORM = "template-znorm"


def normalises_costs(embedder) -> bool:
    """Whether the KWS bundle's thresholds are in per-template normalised units (its
    metadata's ``cost_normalisation`` is :data:`TEMPLATE_ZNORM`)."""
    return embedder.metadata.get("cost_normalisation") == TEMPLATE_ZNORM


def negative_frames(embedder, negative_waves) -> tuple[np.ndarray | None, float]:
    """Frame embeddings of negative recordings joined with 0.5 s of silence, and their hours.

    Parameters
    ----------
    embedder : edge.model.KwsEmbedder
    negative_waves : list of np.ndarray
        16 kHz recordings without the keyword.

    Returns
    -------
    frames : np.ndarray [shape=(n_frames, D), dtype=float32] or None
        None without audio.
    hours : float
    """
    sr = embedder.frontend.sample_rate
    stream = _concat_with_gaps(negative_waves, sr)
    if len(stream) == 0:
        return None, 0.0
    return embedder.embed_wave(stream), len(stream) / sr / 3600.0


def template_cost_norms(matching_cost: np.ndarray, templates: list) -> list[list[float]]:
    """Per-template cost normalisation from negative audio (z-normalisation per query).

    Each template's false-alarm candidates on the negative audio (:func:`event_costs` of its
    own matching-cost column) give the mean and standard deviation its matching cost is
    normalised with (:class:`edge.kws.Template`). In query-by-example spoken term detection
    every query's scores are normalised by their distribution on non-matching audio, so
    that one threshold serves queries that match everything and queries that match little;
    here the five shots of a keyword differ that way too (one shot said fast or in noise
    matches far more speech than the others), and so do keywords.

    Parameters
    ----------
    matching_cost : np.ndarray [shape=(n_frames, K), dtype=float64]
        The templates' matching costs over embedded negative audio
        (:func:`edge.kws.matching_costs`).
    templates : list of np.ndarray, each (M, D)
        The ``K`` templates, in the same order.

    Returns
    -------
    list of [float, float]
        ``[cost_mean, cost_std]`` per template; ``[0.0, 1.0]`` (raw costs) for a template
        with fewer than two candidates, and ``cost_std`` at least 1e-3.
    """
    out = []
    for k, t in enumerate(templates):
        c = event_costs(matching_cost[:, k:k + 1], [t])
        if len(c) < 2:
            out.append([0.0, 1.0])
        else:
            out.append([round(float(np.mean(c)), 6), round(max(float(np.std(c)), 1e-3), 6)])
    return out


def trace_event_costs(frames: np.ndarray, templates: list, norms=None,
                      shot_fusion: int = 1, frame_weights=None) -> np.ndarray:
    """Costs of the spotter's potential events in a stream of frame embeddings.

    :func:`event_costs` of the templates' matching costs over ``frames``.

    Parameters
    ----------
    frames : np.ndarray, shape (n_frames, D), float32
    templates : list of np.ndarray, each (M, D)
    norms : list of [float, float], optional
        Per-template cost normalisation (:func:`template_cost_norms`); costs are then in
        those units.
    shot_fusion : int
        As the spotter fuses the shots' costs (:func:`edge.kws.fuse_shot_costs`).
    frame_weights : list of (np.ndarray, shape (M,), or None), optional
        Per template, as the spotter weights its frames (:class:`edge.kws.Template`).

    Returns
    -------
    np.ndarray, shape (n_events,), float64
        In increasing order.
    """
    mc, _ = matching_costs(frames, make_templates("k", templates, frame_weights=frame_weights))
    return event_costs(mc, templates, norms, shot_fusion)


def event_costs(matching_cost: np.ndarray, templates: list, norms=None,
                shot_fusion: int = 1) -> np.ndarray:
    """Costs of the spotter's potential events, from its templates' matching costs.

    The keyword's candidate cost (minimum matching cost over its templates, normalised and
    fused first as the spotter does) per frame; its lowest values, taken greedily at least the
    mean template length apart (non-maximum suppression), are the events a threshold would
    turn into detections.

    Parameters
    ----------
    matching_cost : np.ndarray [shape=(n_frames, K), dtype=float64]
        :func:`edge.kws.matching_costs` of the ``K`` templates.
    templates : list of np.ndarray, each (M, D)
    norms : list of [float, float], optional
        Per-template ``[cost_mean, cost_std]``.
    shot_fusion : int
        Shots averaged (:func:`edge.kws.fuse_shot_costs`), as the bundle's spotter does.

    Returns
    -------
    np.ndarray, shape (n_events,), float64
        In increasing order.
    """
    mc = np.asarray(matching_cost, np.float64)
    if norms:
        n = np.asarray(norms, np.float64)
        mc = (mc - n[:, 0]) / n[:, 1]
    mc = fuse_shot_costs(mc, np.zeros(mc.shape[1], np.int64), shot_fusion)
    trace = mc.min(axis=1)
    width = max(1, int(np.mean([len(t) for t in templates])))
    costs = []
    order = np.argsort(trace)
    taken = np.zeros(len(trace), bool)
    for j in order:  # greedy non-maximum suppression on the minima
        if not np.isfinite(trace[j]):
            break
        if taken[max(0, j - width):j + width + 1].any():
            continue
        taken[j] = True
        costs.append(trace[j])
    return np.asarray(costs)


def calibrated_threshold(calibration: dict, false_alarms_per_hour: float) -> float | None:
    """The model's calibrated threshold for a false-alarm rate (thesis 6.3.6: one global
    threshold tuned on validation data; here on hours of negative audio, per rate).

    Parameters
    ----------
    calibration : dict
        The KWS bundle's ``threshold_calibration``: ``rates`` and ``threshold`` (rate -> the
        median over the calibration keywords of the threshold that gave that many false
        alarms per hour), written by ``python -m trainer calibrate-kws-thresholds``.
    false_alarms_per_hour : float
        The target; interpolated linearly in ``log(rate)``, held constant beyond the ends.

    Returns
    -------
    float or None
        None for a malformed table.
    """
    try:
        rates = np.asarray([float(r) for r in calibration["rates"]])
        thr = np.asarray([float(calibration["threshold"][str(r)]) for r in calibration["rates"]])
    except (KeyError, TypeError, ValueError):
        return None
    if not len(rates) or np.any(rates <= 0) or not np.all(np.isfinite(thr)):
        return None
    order = np.argsort(rates)
    return float(np.interp(np.log(false_alarms_per_hour), np.log(rates[order]), thr[order]))


def fa_rate_threshold(costs: np.ndarray, hours: float, false_alarms_per_hour: float) -> float | None:
    """Threshold whose expected false-alarm rate on negative audio is the target.

    A gamma distribution (``scipy.stats.gamma``, location fixed at 0) is fitted to the
    negative event costs; the threshold is its quantile ``rate / events_per_hour``, and
    never above the lowest observed negative cost when that many false alarms would
    already exceed the target.

    Returns
    -------
    float or None
        ``None`` with fewer than :data:`MIN_NEGATIVE_EVENTS` events or a failed fit.
    """
    from scipy import stats

    costs = np.asarray(costs, np.float64)
    costs = costs[np.isfinite(costs) & (costs > 0)]
    if len(costs) < MIN_NEGATIVE_EVENTS or hours <= 0:
        return None
    q = min(false_alarms_per_hour / (len(costs) / hours), 1.0)
    try:
        a, loc, scale = stats.gamma.fit(costs, floc=0.0)
        thr = float(stats.gamma.ppf(q, a, loc=loc, scale=scale))
    except Exception:  # scipy raises various errors on degenerate data
        return None
    if not np.isfinite(thr) or thr <= 0:
        return None
    allowed = int(np.floor(false_alarms_per_hour * hours))  # false alarms the audio may show
    sorted_costs = np.sort(costs)
    if allowed < len(sorted_costs):
        thr = min(thr, float(sorted_costs[allowed]))
    return thr


def tail_fit_threshold(costs: np.ndarray, hours: float, false_alarms_per_hour: float,
                       n_tail: int = TAIL_EVENTS) -> float | None:
    """Threshold for a false-alarm rate from the lower tail of negative event costs.

    Peaks over a threshold (extreme-value theory, lower tail): below the ``n_tail``-th lowest
    event cost ``u`` the excesses ``u - cost`` are modelled as exponential with scale
    ``beta`` (its maximum-likelihood estimate, the mean excess of the ``n_tail`` lowest
    events). The expected number of events below ``t <= u`` in the audio is then
    ``n_tail * exp(-(u - t) / beta)``; the threshold is the ``t`` where that equals
    ``false_alarms_per_hour * hours``. Only the tail matters for rates of about one false
    alarm per hour, so unlike :func:`fa_rate_threshold` (a gamma fit to every event) the body
    of the distribution cannot pull the estimate. When the audio is long enough to show the
    target count itself (at least ``n_tail`` false alarms allowed), the empirical value
    between the allowed and the next event is used.

    Parameters
    ----------
    costs : np.ndarray, shape (n_events,), float
        Negative event costs (:func:`event_costs`), any order; non-finite values ignored.
    hours : float
        Duration of the negative audio the events come from, in hours.
    false_alarms_per_hour : float
        The target rate.
    n_tail : int
        Events in the fitted tail (at least 2).

    Returns
    -------
    float or None
        None with fewer than ``n_tail + 1`` events, ``hours <= 0`` or a non-positive target.
    """
    c = np.sort(np.asarray(costs, np.float64))
    c = c[np.isfinite(c)]
    target = false_alarms_per_hour * hours  # false alarms allowed in this audio
    if n_tail < 2 or len(c) <= n_tail or hours <= 0 or target <= 0:
        return None
    if target >= n_tail:
        k = min(int(np.floor(target)), len(c) - 1)
        return float(0.5 * (c[k - 1] + c[k]))
    u = c[n_tail]
    beta = max(float(np.mean(u - c[:n_tail])), 1e-9)
    return float(u - beta * np.log(n_tail / target))


def keyword_cost_norms(embedder, keyword: str, templates: list,
                       extra_negatives=(), frame_weights=None) -> list[list[float]] | None:
    """The per-template cost normalisation enrollment computes, whether or not the bundle has
    a threshold table yet (:func:`keyword_threshold` keeps it only with one, since its
    fallback thresholds are raw costs). ``calibrate-kws-thresholds`` needs it to build the
    first table of a new bundle in the units the node will compare.

    Parameters
    ----------
    embedder : edge.model.KwsEmbedder
    keyword : str
        Its recordings are left out of the shipped negatives.
    templates : list of np.ndarray, each (M, D)
    extra_negatives : list of np.ndarray
        More 16 kHz recordings without the keyword.
    frame_weights : list of (np.ndarray, shape (M,), or None), optional
        The templates' frame weights (:class:`edge.kws.Template`).

    Returns
    -------
    list of [float, float], or None
        :func:`template_cost_norms`; None when the bundle does not normalise costs
        (:func:`normalises_costs`) or there is no negative audio.
    """
    if not normalises_costs(embedder):
        return None
    mc, _ = _negative_matching(embedder, keyword, templates, extra_negatives, frame_weights)
    return None if mc is None else template_cost_norms(mc, templates)


def _negative_matching(embedder, keyword: str, templates: list, extra_negatives,
                       frame_weights=None):
    """The templates' matching costs over the shipped negatives (without ``keyword``) and
    ``extra_negatives``, and those hours; ``(None, hours)`` without negative audio."""
    negs = shipped_negatives(exclude_word=keyword, sample_rate=embedder.frontend.sample_rate) + \
        list(extra_negatives)
    frames, hours = negative_frames(embedder, negs)
    if frames is None:
        return None, hours
    return matching_costs(frames, make_templates(keyword, templates,
                                                 frame_weights=frame_weights))[0], hours


def keyword_threshold(embedder, keyword: str, templates: list, extra_negatives=(), *,
                      false_alarms_per_hour: float = 1.0,
                      fallback: float = DEFAULT_FALLBACK_THRESHOLD, background=None,
                      frame_weights=None):
    """One keyword's decision threshold from negative audio (see the module docstring).

    Parameters
    ----------
    embedder : edge.model.KwsEmbedder
    keyword : str
        Its recordings are left out of the shipped negatives.
    templates : list of np.ndarray, each (M, D)
        The keyword's enrolled shots.
    extra_negatives : list of np.ndarray
        More 16 kHz recordings without the keyword (``--negatives`` files, other keywords'
        shots); with the shipped negatives they give the cost normalisation.
    false_alarms_per_hour, fallback : float
    background : tuple of (np.ndarray, float), optional
        The site's background recording as :func:`negative_frames` returns it (frame
        embeddings of shape (n_frames, D), hours). With at least :data:`SITE_FIT_MIN_HOURS`
        of it the threshold is fitted on its event costs (:func:`tail_fit_threshold`).
    frame_weights : list of (np.ndarray, shape (M,), or None), optional
        The templates' frame weights, as the spotter will use them
        (:class:`edge.kws.Template`; enrollment's ``EnrolledKeywords.frame_weights``).

    Returns
    -------
    threshold : float
    source : {"site-fit", "generic-fit", "calibrated", "fa-rate", "fallback"}
        ``site-fit``: the tail fit on the site background (:func:`tail_fit_threshold`);
        ``generic-fit``: the same fit on the bundle's generic negatives with the keyword's
        utterances cut out (:mod:`calibration.generic_negatives`), when at least
        :data:`SITE_FIT_MIN_HOURS` of them remain, for the rate times their measured
        ``rate_factor``;
        ``calibrated``: the model's calibrated threshold for the rate
        (:func:`calibrated_threshold`);
        ``fa-rate``: a gamma fit (:func:`fa_rate_threshold`), for models without a table
        that use raw costs;
        ``fallback``: too few negative events, or no table for normalised costs.
    n_events : int
        Negative events (local minima of the cost trace) the threshold rests on.
    hours : float
        Duration of that negative audio.
    norms : list of [float, float] or None
        Per-template cost normalisation (:func:`template_cost_norms`) when the bundle
        normalises (:func:`normalises_costs`); the threshold is then in those units.

    Raises
    ------
    edge.model.ModelError
        The bundle names generic negatives that are missing or do not belong to it
        (:func:`calibration.generic_negatives.load_generic_negatives`).
    """
    query = make_templates(keyword, templates, frame_weights=frame_weights)
    # one DTW pass over all templates for norms and events
    mc, hours = _negative_matching(embedder, keyword, templates, extra_negatives, frame_weights)
    norms, costs = None, np.zeros(0)
    if mc is not None:
        if normalises_costs(embedder):
            norms = template_cost_norms(mc, templates)
        costs = event_costs(mc, templates, norms, embedder.shot_fusion)
    if background is not None and background[0] is not None and \
            background[1] >= SITE_FIT_MIN_HOURS:
        bg_frames, bg_hours = background
        bg_costs = event_costs(matching_costs(bg_frames, query)[0], templates, norms,
                               embedder.shot_fusion)
        thr = tail_fit_threshold(bg_costs, bg_hours, false_alarms_per_hour)
        if thr is not None:
            return thr, "site-fit", int(len(bg_costs)), bg_hours, norms
    generic = load_generic_negatives(embedder)
    if generic is not None:
        g_frames, g_hours = generic.without(keyword)
        if g_hours >= SITE_FIT_MIN_HOURS:
            g_costs = np.concatenate([event_costs(matching_costs(f, query)[0], templates, norms,
                                                  embedder.shot_fusion) for f in g_frames])
            # the rate times the factor measured for this hour (1 when not measured)
            thr = tail_fit_threshold(g_costs, g_hours, false_alarms_per_hour * generic.rate_factor)
            if thr is not None:
                return thr, "generic-fit", int(len(g_costs)), g_hours, norms
    table = embedder.metadata.get("threshold_calibration")
    if table:
        thr = calibrated_threshold(table, false_alarms_per_hour)
        if thr is not None:
            return float(thr), "calibrated", int(len(costs)), hours, norms
    thr = None if norms is not None else fa_rate_threshold(costs, hours, false_alarms_per_hour)
    if thr is None:  # a raw-cost threshold: the templates stay unnormalised
        return float(fallback), "fallback", int(len(costs)), hours, None
    return float(thr), "fa-rate", int(len(costs)), hours, norms
