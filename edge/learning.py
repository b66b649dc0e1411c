"""A calibration learned from the node's live stream (first start, or ``cmd/recalibrate``).

The node feeds the windows it would score (:class:`edge.pipeline.Windower`) to a
:class:`StreamLearning` job; once ``seconds`` of normal operation are in, the job fits a
calibration exactly as ``python -m calibration record`` does
(:func:`calibration.calibrate.fit_calibration`: the nearest-neighbour memory of every view,
held-out normal scores, the decision threshold), writes it atomically and says so. This is
the one place where ``edge/`` imports ``calibration/``.
"""
from __future__ import annotations

import logging
from typing import Callable

import numpy as np

from calibration.calibrate import WindowCollector, fit_calibration
from edge.backend import Calibration

log = logging.getLogger(__name__)

__all__ = ["StreamLearning"]


class StreamLearning:
    """One calibration being learned from the stream.

    Parameters
    ----------
    embedder : edge.model.AsdEmbedder
        The anomaly model the calibration is made for.
    seconds : float
        Seconds of normal operation to learn (window starts to the last window's end).
    method : str
        Threshold method (:mod:`calibration.thresholds`); the config's
        ``asd.threshold.params`` apply when it is the configured method.
    request_id : str, optional
        The ``cmd/recalibrate`` request to answer.
    requested : bool
        A command asked for it: :meth:`finish` and :meth:`report_unfinished` answer it
        through ``reply``.
    views : sequence of str
        The views to memorise (``asd.views``, :mod:`edge.views`).
    reply : callable, optional
        ``reply(command, status, message, request_id, **extra)``
        (:meth:`edge.control.NodeControl.reply`).

    Attributes
    ----------
    first_start : int or None
        Stream sample of the first window learned (None after a gap in the audio).
    learned_s : float
        Seconds of audio learned so far.
    """

    def __init__(self, embedder, seconds: float, method: str, request_id=None,
                 requested: bool = False, views=("embedding",),
                 reply: Callable[..., None] | None = None):
        self.collector = WindowCollector(embedder, views)
        self.embedder = embedder
        self.seconds = seconds
        self.method = method
        self.request_id = request_id
        self.requested = requested
        self.reply = reply
        self.first_start: int | None = None
        self.learned_s = 0.0

    def add(self, start: int, window: np.ndarray, sample_rate: int, asd) -> bool:
        """Collect one normal window, shape (n_samples,) float32, starting at stream sample
        ``start`` (``asd``: the config's section); True once ``seconds`` are in."""
        if self.first_start is None:
            self.first_start = start
        self.collector.add(0, start, window)
        self.learned_s = (start - self.first_start) / sample_rate + asd.window_seconds
        return self.learned_s >= self.seconds

    def fit(self, asd) -> Calibration:
        """The calibration of the windows collected (``asd``: the config's section).

        Raises
        ------
        ValueError
            Too few usable windows.
        """
        params = dict(asd.threshold.params) if self.method == asd.threshold.method else {}
        return fit_calibration(self.collector.result(), self.embedder, asd.n_clusters,
                               self.method, params, asd.window_seconds, asd.hop_seconds)

    def finish(self, cfg) -> Calibration | None:
        """Fit, save to ``asd.calibration`` of ``cfg`` (atomically) and say so: log it and,
        when requested, answer ``done`` or ``failed``.

        Returns
        -------
        Calibration or None
            None when fitting or saving failed (logged; nothing half-written).
        """
        a = cfg.asd
        try:
            cal = self.fit(a)
            path = cfg.resolve(a.calibration)
            cal.save(path)
        except (ValueError, OSError) as exc:
            log.error("calibration from the stream failed (%s)%s", exc,
                      "" if self.requested else f"; learning for another {self.seconds:g} s")
            self._answer("failed", f"calibration failed: {exc}")
            return None
        n = cal.extra["n_windows"]
        log.info("calibrated on %d windows: %s, decision_threshold %.5f (%s), saved to %s",
                 n, cal.calibration_id, cal.decision_threshold, cal.threshold_method, path)
        self._answer("done", f"calibrated on {n} windows", calibration_id=cal.calibration_id,
                     decision_threshold=cal.decision_threshold,
                     threshold_method=cal.threshold_method)
        return cal

    def unfinished(self, finished: bool) -> str:
        """What to say when the stream ended (``finished``: a replay ran out) before it did."""
        what = "recalibration" if self.requested else "calibration"
        why = "the replay ended" if finished else "the node stopped"
        msg = (f"{what} did not finish: {why} after {self.learned_s:g} s of normal operation "
               f"learned of the {self.seconds:g} s needed; nothing was saved")
        if not self.requested:
            msg += (" and no window was scored; replay or run at least "
                    f"{self.seconds:g} s of normal operation (asd.auto_calibration_seconds), "
                    "or calibrate with `python -m calibration record`")
        return msg

    def report_unfinished(self, finished: bool) -> None:
        """Say clearly that it did not finish (log; a requested one is answered ``failed``)."""
        msg = self.unfinished(finished)
        log.warning("%s", msg)
        self._answer("failed", msg)

    def cancel(self, why: str) -> None:
        """Abandon it (a requested one is answered ``failed``: ``cancelled: why``)."""
        self._answer("failed", f"cancelled: {why}")

    def _answer(self, status: str, message: str, **extra) -> None:
        if self.requested and self.reply is not None:
            self.reply("recalibrate", status, message, self.request_id, **extra)
