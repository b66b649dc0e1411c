"""The MQTT contract's JSON payloads (SPEC.md, "MQTT contract"), built as plain functions.

Every payload starts with :func:`base`: ``schema`` (:data:`PAYLOAD_SCHEMA`), ``node``,
``site`` and ``ts`` (UTC ISO-8601 with milliseconds and ``Z``). Events get their ``seq`` from
the spool, not here. The node (:class:`edge.node.Node`), its control plane
(:class:`edge.control.NodeControl`) and the MQTT load bench build their messages with these
functions, so the contract has one home.

Payloads
--------
state
    Retained ``state``: models, calibration, keywords, audio health, spool.
heartbeat
    ``heartbeat``: levels (dBFS, :mod:`edge.levels`), CPU, queue depth, counters.
anomaly_event, keyword_event, health_event
    ``event/anomaly``, ``event/keyword``, ``event/health``.
reply
    ``reply``: the answer to a command or a flashed config.
"""
from __future__ import annotations

import datetime as dt
from typing import Any

__all__ = ["PAYLOAD_SCHEMA", "utc_now", "iso_utc", "base", "state", "heartbeat",
           "anomaly_event", "keyword_event", "health_event", "reply"]

PAYLOAD_SCHEMA = 1


def iso_utc(t: float) -> str:
    """A POSIX time (seconds) as UTC ISO-8601 with milliseconds and a ``Z`` suffix."""
    return (dt.datetime.fromtimestamp(t, dt.timezone.utc).isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"))


def utc_now() -> str:
    """Current UTC time, ISO-8601 with milliseconds and a ``Z`` suffix."""
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def base(cfg) -> dict[str, Any]:
    """The fields every payload starts with.

    Parameters
    ----------
    cfg : firmware_config.schema.NodeConfig
        Gives ``node.id`` and ``node.site``.
    """
    return {"schema": PAYLOAD_SCHEMA, "node": cfg.node.id, "site": cfg.node.site, "ts": utc_now()}


def state(cfg, *, uptime_s: float, embedder, calibration, keywords, learning, source,
          faults: dict[str, str], spool, status: str | None = None) -> dict[str, Any]:
    """Payload of the retained ``state`` topic.

    Parameters
    ----------
    cfg : firmware_config.schema.NodeConfig
    uptime_s : float
        Seconds since the node started.
    embedder : edge.model.AsdEmbedder or None
        The anomaly model (None: anomaly detection disabled).
    calibration : edge.backend.Calibration or None
        None while the node learns its first calibration.
    keywords : edge.kws_listener.KeywordListener or None
        None: keyword spotting disabled.
    learning : object or None
        A calibration being learned (``seconds``, ``method``, ``request_id``).
    source : audio source
        ``device_name``, ``overflows`` and ``ring.overruns`` are read if present.
    faults : dict of str -> str
        Active audio faults (kind -> message).
    spool : edge.spool.Spool
    status : str, optional
        Overrides ``status``: ``"offline"`` in the last state a node publishes when it
        stops cleanly (the Last Will covers only the ``status`` topic).

    Returns
    -------
    dict
        ``status`` is ``status`` if given, else ``"calibrating"`` while an anomaly model has
        no calibration yet, else ``"online"``.
    """
    s = base(cfg)
    models = {}
    if embedder is not None:
        models["asd"] = {"model_id": embedder.model_id, "sha256": embedder.sha256}
    if keywords is not None:
        models["kws"] = {"model_id": keywords.embedder.model_id,
                         "sha256": keywords.embedder.sha256}
    enrolled = keywords.enrolled if keywords is not None else None
    s.update(
        status=status or ("calibrating" if embedder is not None and calibration is None
                          else "online"),
        uptime_s=round(uptime_s, 1),
        config_sha256=cfg.sha256,
        models=models,
        keywords=None if enrolled is None else {
            "enrollment_id": enrolled.enrollment_id,
            "thresholds": {k: round(v, 4) for k, v in enrolled.thresholds.items()}},
        calibration=None if calibration is None else {
            "calibration_id": calibration.calibration_id,
            "decision_threshold": calibration.decision_threshold,
            "threshold_method": calibration.threshold_method, "created": calibration.created},
        recalibrating=None if learning is None else {
            "seconds": learning.seconds, "threshold_method": learning.method,
            "request_id": learning.request_id},
        audio={"device": getattr(source, "device_name", None),
               "overflows": getattr(source, "overflows", 0),
               "samples_lost": getattr(getattr(source, "ring", None), "overruns", 0),
               "faults": sorted(faults), "health": dict(faults)},
        spool={**spool.stats(), "quarantined": str(spool.quarantined)
               if spool.quarantined else None},
        events_dropped=spool.dropped,
    )
    return s


def heartbeat(cfg, *, uptime_s: float, level_dbfs: float, peak_dbfs: float,
              cpu_percent: float, queue_depth: int, events_dropped: int, windows: int,
              anomalies: int, keyword_events: int, overflows: int,
              audio_faults: list[str]) -> dict[str, Any]:
    """Payload of ``heartbeat``.

    Parameters
    ----------
    cfg : firmware_config.schema.NodeConfig
    uptime_s : float
        Seconds since the node started.
    level_dbfs, peak_dbfs : float
        RMS and peak level of the last second of audio (:mod:`edge.levels`).
    cpu_percent : float
        The node process's CPU time over wall time since the previous heartbeat, percent.
    queue_depth, events_dropped : int
        Events waiting in the spool; events dropped because it was full.
    windows, anomalies, keyword_events : int
        Counters since the start.
    overflows : int
        Input overflows reported by the audio device.
    audio_faults : list of str
        Active audio fault kinds.
    """
    hb = base(cfg)
    hb.update(uptime_s=round(uptime_s, 1), level_dbfs=round(level_dbfs, 1),
              peak_dbfs=round(peak_dbfs, 1), cpu_percent=round(cpu_percent, 1),
              queue_depth=queue_depth, events_dropped=events_dropped, windows=windows,
              anomalies=anomalies, keyword_events=keyword_events, overflows=overflows,
              audio_faults=sorted(audio_faults))
    return hb


def anomaly_event(cfg, *, anomaly_score: float, decision_threshold: float, anomalous: bool,
                  t_start: float, t_end: float, model_id: str,
                  calibration_id: str) -> dict[str, Any]:
    """Payload of ``event/anomaly`` for one analysis window.

    Parameters
    ----------
    cfg : firmware_config.schema.NodeConfig
        Gives ``asd.window_seconds``.
    anomaly_score, decision_threshold : float
        Min cosine distance to the calibration memory and the threshold it was compared to.
    anomalous : bool
        The decision (:meth:`edge.backend.Calibration.is_anomalous`).
    t_start, t_end : float
        The window's first and last sample, POSIX seconds.
    model_id, calibration_id : str
    """
    ev = base(cfg)
    ev.update(anomaly_score=round(anomaly_score, 6), threshold=round(decision_threshold, 6),
              decision="anomalous" if anomalous else "normal", anomalous=anomalous,
              window={"start": iso_utc(t_start), "end": iso_utc(t_end),
                      "seconds": cfg.asd.window_seconds},
              model_id=model_id, calibration_id=calibration_id)
    return ev


def keyword_event(cfg, det, t0: float, *, model_id: str, enrollment_id: str) -> dict[str, Any]:
    """Payload of ``event/keyword`` for one detection.

    Parameters
    ----------
    cfg : firmware_config.schema.NodeConfig
    det : edge.kws.Detection
        ``keyword``, ``onset_s``/``offset_s`` (stream seconds), ``cost``, ``threshold``.
    t0 : float
        POSIX time of the stream's first sample.
    model_id, enrollment_id : str

    Returns
    -------
    dict
        ``event_type`` repeats the keyword, as Home Assistant's event entity expects.
    """
    ev = base(cfg)
    ev.update(keyword=det.keyword, event_type=det.keyword, onset=iso_utc(t0 + det.onset_s),
              offset=iso_utc(t0 + det.offset_s), onset_s=round(det.onset_s, 3),
              offset_s=round(det.offset_s, 3), score=round(float(det.cost), 5),
              threshold=round(float(det.threshold), 5), model_id=model_id,
              enrollment_id=enrollment_id)
    return ev


def health_event(cfg, h) -> dict[str, Any]:
    """Payload of ``event/health`` for one :class:`edge.health.HealthEvent` transition."""
    ev = base(cfg)
    ev.update(kind=h.kind, active=h.active, message=h.message, detail=h.detail)
    return ev


def reply(cfg, command: str, status: str, message: str, request_id: str | None = None,
          **extra: Any) -> dict[str, Any]:
    """Payload of ``reply``: the answer to ``cmd/<command>`` or to a flashed config.

    Parameters
    ----------
    cfg : firmware_config.schema.NodeConfig
    command : str
        ``"recalibrate"``, ``"reload"``, ``"config"``, or the unknown name received.
    status : {"accepted", "done", "rejected", "failed"}
    message : str
        What happened, for a person.
    request_id : str, optional
        Echoed from the command.
    **extra
        Further fields (``config_sha256``, ``calibration_id``, ``errors``, ...).
    """
    r = base(cfg)
    r.update(command=command, request_id=request_id, status=status, message=message, **extra)
    return r
