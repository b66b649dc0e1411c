"""Keyword enrollment: shots in, templates and per-keyword decision thresholds out.

An installer says each keyword a few times (``--shots 5``), or passes recordings
(``--from FILES``). Every shot's speech is found with :func:`edge.vad.shot_interval`,
never cutting into the word: the shot is padded with digital silence, and its noise floor is
taken from its ends only when they are quiet (non-speech around the word, as in a microphone
shot); a shot that starts or ends inside the word (a file cut tight around it) is kept
whole. Either way 50 ms of margin stay on both sides, as in the evaluation's utterances. A
shot is rejected with a clear message when it is empty, silent, clipped, too short or too
long; nothing is stored unless every shot passes. Each accepted shot is embedded with the
KWS model *as recorded* (the embedder sees the sound around the word, as it will in a
stream) and the frames of its speech are kept as its own template (:func:`shot_template`;
thesis 6.3.6: DBA averaging was worse).

Per-template cost normalisation (bundles whose metadata asks for it with
``"cost_normalisation": "template-znorm"``, the default speech_embedding bundle): every
template runs alone over the negative audio below, and the mean and standard deviation of its
costs at its false-alarm candidates normalise its matching cost (:func:`template_cost_norms`,
:class:`edge.kws.Template`): z-normalisation per query, as in query-by-example spoken term
detection. A shot that matches much ordinary speech (said fast, or in noise) then no longer
sets the keyword's false-alarm rate alone, and one threshold table serves keywords whose raw
costs differ. On the wake-word evaluation (2.2 h of negatives, unseen speakers, 10 dB SNR)
it brought the miss rate at 1 false alarm per hour from 56 % to about 23 % for "view glass"
and from 41 % to about 31 % for "computer". Thresholds are then z-scores (negative).

Decision thresholds (thesis 6.3.6 tunes one global threshold on validation data). A KWS
bundle calibrated with ``python -m trainer calibrate-kws-thresholds`` carries, per
false-alarm rate, the threshold that gave that rate on hours of negative audio for the median
of its calibration keywords; enrollment takes the one for ``kws.false_alarms_per_hour``
(:func:`calibrated_threshold`, source ``"calibrated"``). Measured on the evaluation's two
hours of negatives (``python -m trainer evaluate-kws``), the threshold for a rate is nearly the
same for every keyword, and statistics of minutes of negatives do not predict the rest
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

from edge.audio import load_audio
from edge.keywords import EnrolledKeywords, EnrollmentError
from edge.kws import Template, matching_costs
from edge.levels import clipped_fraction, peak_dbfs
from edge.vad import SpeechInterval, shot_interval
from firmware_config.errors import HarkError

log = logging.getLogger(__name__)

__all__ = ["ShotError", "prepare_shot", "locate_shot", "shot_template", "TEMPLATE_ZNORM",
           "normalises_costs", "negative_frames", "template_cost_norms", "trace_event_costs",
           "event_costs", "calibrated_threshold", "fa_rate_threshold",
           "enroll_keyword",
           "shipped_negatives", "keyword_threshold", "MIN_NEGATIVE_EVENTS", "DEFAULT_FALLBACK_THRESHOLD"]

MIN_NEGATIVE_EVENTS = 30
DEFAULT_FALLBACK_THRESHOLD = 0.25
CLIPPED_FRACTION = 0.001
SILENT_DBFS = -45.0
NEGATIVES_DIR = Path(__file__).resolve().parent / "negatives"


class ShotError(HarkError, ValueError):
    """A keyword shot is unusable (silent, clipped, too short or too long)."""


SHOT_SOURCES = ("microphone", "file")


def prepare_shot(y: np.ndarray, sample_rate: int, *, min_seconds: float, max_seconds: float,
                 name: str = "shot", source: str = "microphone") -> np.ndarray:
    """Check one spoken shot and trim it to its speech, never into the word: ``y`` cut to
    :func:`locate_shot`'s interval (parameters, errors: see there).

    Returns
    -------
    np.ndarray, float32: the trimmed speech.
    """
    iv = locate_shot(y, sample_rate, min_seconds=min_seconds, max_seconds=max_seconds,
                     name=name, source=source)
    return np.asarray(np.asarray(y, np.float32)[iv.slice(sample_rate)], np.float32)


def shot_template(embedder, y: np.ndarray, interval: SpeechInterval) -> np.ndarray:
    """The template of one shot: the frame embeddings of its speech, computed with the
    recording around it.

    The embedder sees the shot as it will see the keyword in a stream, with sound on both
    sides, instead of a trimmed clip padded with digital silence (which a
    speech_embedding window, 0.78 s wide, would mostly see at the ends of a short word).
    Frames whose centres fall in the speech interval (widened by half a frame) are kept.

    Parameters
    ----------
    embedder : edge.model.KwsEmbedder or edge.speech_embedding.SpeechEmbedder
    y : np.ndarray, shape (n_samples,), float32
        The whole recorded shot.
    interval : edge.vad.SpeechInterval
        From :func:`locate_shot`.

    Returns
    -------
    np.ndarray, shape (n_frames, embedding_dim), float32
    """
    frames = embedder.embed_wave(np.asarray(y, np.float32))
    fs = float(embedder.frame_seconds)
    k0 = max(int(np.ceil(interval.start_s / fs - 0.5)), 0)
    k1 = min(int(np.floor(interval.end_s / fs + 0.5)) + 1, len(frames))
    return np.ascontiguousarray(frames[k0:max(k1, k0 + 1)], np.float32)


def locate_shot(y: np.ndarray, sample_rate: int, *, min_seconds: float, max_seconds: float,
                name: str = "shot", source: str = "microphone") -> SpeechInterval:
    """Check one spoken shot and find its speech, never cutting into the word.

    The speech is found with :func:`edge.vad.shot_interval`: a shot cut tight around the
    word (no non-speech at its ends) is kept whole; silence around the word is trimmed to
    a 50 ms margin.

    Parameters
    ----------
    y : np.ndarray, shape (n_samples,), float32 in [-1, 1]
    sample_rate : int
        Hz.
    min_seconds, max_seconds : float
        Allowed duration of the trimmed speech (with its margins).
    name : str
        How the shot is called in error messages (e.g. the file name).
    source : {"microphone", "file"}
        Where the shot came from; only changes the advice in error messages (a file was not
        recorded after a prompt).

    Returns
    -------
    edge.vad.SpeechInterval
        The speech with its margins, seconds from the start of ``y``.

    Raises
    ------
    ShotError
        Empty (no samples), silent (peak below -45 dBFS or no speech found), clipped (more
        than 0.1 % of the samples at full scale), or speech shorter/longer than allowed.
    ValueError
        If ``source`` is not one of :data:`SHOT_SOURCES`.
    """
    if source not in SHOT_SOURCES:
        raise ValueError(f"source must be one of {SHOT_SOURCES}, got {source!r}")
    from_file = source == "file"
    y = np.asarray(y, np.float32)
    if y.size == 0:
        raise ShotError(f"{name}: the file is empty (0 samples); record the keyword again"
                        if from_file else f"{name}: nothing was recorded (0 samples); check "
                        "that audio.device is the microphone")
    peak, clipped = peak_dbfs(y), clipped_fraction(y)
    if peak < SILENT_DBFS:
        advice = ("record the keyword louder" if from_file else
                  "speak louder or closer to the microphone")
        raise ShotError(f"{name}: silent (peak {peak:.0f} dBFS, need at least "
                        f"{SILENT_DBFS:.0f} dBFS); {advice}")
    if clipped > CLIPPED_FRACTION:
        raise ShotError(f"{name}: clipped ({100 * clipped:.1f} % of samples at full scale); "
                        + ("record it again softer or at a lower input gain" if from_file else
                           "speak softer or lower the input gain"))
    iv = shot_interval(y, sample_rate)
    if iv is None:
        raise ShotError(f"{name}: no speech found; " + (
            "the file should hold the spoken keyword" if from_file else
            "say the keyword clearly after the prompt"))
    if iv.duration_s < min_seconds:
        raise ShotError(f"{name}: speech lasts {iv.duration_s:.2f} s, shorter than "
                        f"kws.min_shot_seconds = {min_seconds} s")
    if iv.duration_s > max_seconds:
        raise ShotError(f"{name}: speech lasts {iv.duration_s:.2f} s, longer than "
                        f"kws.max_shot_seconds = {max_seconds} s; " + (
                            "the file should hold only the keyword" if from_file else
                            "say only the keyword"))
    return iv


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


def trace_event_costs(frames: np.ndarray, templates: list, norms=None) -> np.ndarray:
    """Costs of the spotter's potential events in a stream of frame embeddings.

    :func:`event_costs` of the templates' matching costs over ``frames``.

    Parameters
    ----------
    frames : np.ndarray, shape (n_frames, D), float32
    templates : list of np.ndarray, each (M, D)
    norms : list of [float, float], optional
        Per-template cost normalisation (:func:`template_cost_norms`); costs are then in
        those units.

    Returns
    -------
    np.ndarray, shape (n_events,), float64
        In increasing order.
    """
    mc, _ = matching_costs(frames, [Template("k", t) for t in templates])
    return event_costs(mc, templates, norms)


def event_costs(matching_cost: np.ndarray, templates: list, norms=None) -> np.ndarray:
    """Costs of the spotter's potential events, from its templates' matching costs.

    The keyword's candidate cost (minimum matching cost over its templates, normalised
    first as the spotter does) per frame; its lowest values, taken greedily at least the
    mean template length apart (non-maximum suppression), are the events a threshold would
    turn into detections.

    Parameters
    ----------
    matching_cost : np.ndarray [shape=(n_frames, K), dtype=float64]
        :func:`edge.kws.matching_costs` of the ``K`` templates.
    templates : list of np.ndarray, each (M, D)
    norms : list of [float, float], optional
        Per-template ``[cost_mean, cost_std]``.

    Returns
    -------
    np.ndarray, shape (n_events,), float64
        In increasing order.
    """
    mc = np.asarray(matching_cost, np.float64)
    if norms:
        n = np.asarray(norms, np.float64)
        mc = (mc - n[:, 0]) / n[:, 1]
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


def keyword_threshold(embedder, keyword: str, templates: list, extra_negatives=(), *,
                      false_alarms_per_hour: float = 1.0, fallback: float = DEFAULT_FALLBACK_THRESHOLD):
    """One keyword's decision threshold from negative audio (see the module docstring).

    Parameters
    ----------
    embedder : edge.model.KwsEmbedder
    keyword : str
        Its recordings are left out of the shipped negatives.
    templates : list of np.ndarray, each (M, D)
        The keyword's enrolled shots.
    extra_negatives : list of np.ndarray
        More 16 kHz recordings without the keyword (site recordings, other keywords' shots).
    false_alarms_per_hour, fallback : float

    Returns
    -------
    threshold : float
    source : {"calibrated", "fa-rate", "fallback"}
        ``calibrated``: the model's calibrated threshold for the rate
        (:func:`calibrated_threshold`);
        ``fa-rate``: a gamma fit (:func:`fa_rate_threshold`), for models without a table
        that use raw costs;
        ``fallback``: too few negative events, or no table for normalised costs.
    n_events : int
        Negative events (local minima of the cost trace) the fit saw.
    hours : float
        Duration of the negative audio.
    norms : list of [float, float] or None
        Per-template cost normalisation (:func:`template_cost_norms`) when the bundle
        normalises (:func:`normalises_costs`); the threshold is then in those units.
    """
    sr = embedder.frontend.sample_rate
    negs = shipped_negatives(exclude_word=keyword, sample_rate=sr) + list(extra_negatives)
    frames, hours = negative_frames(embedder, negs)
    norms, costs = None, np.zeros(0)
    if frames is not None:  # one DTW pass over all templates for norms and events
        mc, _ = matching_costs(frames, [Template(keyword, t) for t in templates])
        if normalises_costs(embedder):
            norms = template_cost_norms(mc, templates)
        costs = event_costs(mc, templates, norms)
    table = embedder.metadata.get("threshold_calibration")
    if table:
        thr = calibrated_threshold(table, false_alarms_per_hour)
        if thr is not None:
            return float(thr), "calibrated", int(len(costs)), hours, norms
    thr = None if norms is not None else fa_rate_threshold(costs, hours, false_alarms_per_hour)
    if thr is None:  # a raw-cost threshold: the templates stay unnormalised
        return float(fallback), "fallback", int(len(costs)), hours, None
    return float(thr), "fa-rate", int(len(costs)), hours, norms


def enroll_keyword(embedder, keyword: str, shot_waves, *, existing: EnrolledKeywords | None = None,
                   negatives=(), false_alarms_per_hour: float = 1.0,
                   fallback_threshold: float | None = None, min_seconds: float = 0.2,
                   max_seconds: float = 2.0, shot_names=None,
                   shot_source: str = "microphone") -> EnrolledKeywords:
    """Enroll (or re-enroll) one keyword and recompute every keyword's threshold.

    Parameters
    ----------
    embedder : edge.model.KwsEmbedder
    keyword : str
    shot_waves : list of np.ndarray
        16 kHz recordings, one shot each (trimmed here).
    existing : EnrolledKeywords, optional
        Keywords enrolled before; they must come from the same model.
    negatives : list of np.ndarray
        Extra negative recordings (background, other speech) for the thresholds.
    false_alarms_per_hour, fallback_threshold, min_seconds, max_seconds
        From the node config's ``kws`` section.
    shot_names : list of str, optional
        How the shots are called in error messages (default ``shot 1``, ``shot 2``, ...).
    shot_source : {"microphone", "file"}
        Where the shots came from (see :func:`prepare_shot`).

    Returns
    -------
    EnrolledKeywords (not yet saved).

    Raises
    ------
    ShotError
        A shot is unusable (nothing is changed).
    EnrollmentError
        ``existing`` belongs to another model.
    """
    sr = embedder.frontend.sample_rate
    names = list(shot_names or [f"shot {i + 1}" for i in range(len(shot_waves))])
    if not shot_waves:
        raise ShotError("no shots given")
    waves = [np.asarray(y, np.float32) for y in shot_waves]
    intervals = [locate_shot(y, sr, min_seconds=min_seconds, max_seconds=max_seconds, name=n,
                             source=shot_source)
                 for y, n in zip(waves, names)]
    trimmed = [y[iv.slice(sr)] for y, iv in zip(waves, intervals)]
    if existing is not None and existing.model_id != embedder.model_id:
        raise EnrollmentError(f"the enrolled keywords were embedded with model "
                              f"{existing.model_id}, not {embedder.model_id}; re-enroll them all "
                              "(delete the keywords file)")
    enrolled = EnrolledKeywords(embedder.model_id, embedder.segment_hop)
    if existing is not None:
        enrolled.templates = {k: v for k, v in existing.templates.items() if k != keyword}
        enrolled.details = {k: v for k, v in existing.details.items() if k != keyword}
    enrolled.templates[keyword] = [shot_template(embedder, y, iv)
                                   for y, iv in zip(waves, intervals)]
    enrolled.details[keyword] = {"shots": len(trimmed),
                                 "shot_seconds": [round(len(y) / sr, 3) for y in trimmed],
                                 "_waves": trimmed}
    fallback = fallback_threshold or float(embedder.metadata.get("decision_threshold",
                                                                 DEFAULT_FALLBACK_THRESHOLD))
    for k in sorted(enrolled.templates):
        negs = list(negatives)
        # the other keywords' shots are negatives too (when their audio is at hand)
        for other, d in enrolled.details.items():
            if other != k and "_waves" in d:
                negs += d["_waves"]
        thr, source, n_events, hours, norms = keyword_threshold(
            embedder, k, enrolled.templates[k], negs,
            false_alarms_per_hour=false_alarms_per_hour, fallback=fallback)
        enrolled.thresholds[k] = thr
        if norms is None:
            enrolled.cost_norms.pop(k, None)
        else:
            enrolled.cost_norms[k] = norms
        enrolled.details[k].update(threshold_source=source, negative_events=n_events,
                                   negative_seconds=round(hours * 3600, 1),
                                   false_alarms_per_hour=false_alarms_per_hour)
        log.info("keyword %r: threshold %.4f (%s, %d negative events in %.0f s)", k, thr, source,
                 n_events, hours * 3600)
    for d in enrolled.details.values():
        d.pop("_waves", None)
    return enrolled
