"""MQTT load: N simulated nodes publish events to one private mosquitto on loopback.

Every simulated node is the node's real delivery path: its own
:class:`edge.spool.Spool` (SQLite WAL, ``synchronous=FULL``, one file per node) and its
own :class:`edge.mqtt.MqttPublisher` (paho network thread plus the sender thread that
publishes the oldest spooled event with QoS 1, waits for the PUBACK and only then deletes
it). The payloads are built by :func:`edge.payloads.anomaly_event`, as the node's, so they have
exactly the fields of a real ``event/anomaly``; ``seq`` is added by the spool. One
producer thread per node (the node's audio thread) calls
:meth:`~edge.mqtt.MqttPublisher.publish_event`:

* **paced** (``rate_hz`` set): at a fixed rate on an absolute schedule, the nodes' phases
  spread evenly over the period (real nodes do not publish in step). A real node
  publishes one anomaly event per hop (2 s) plus rare keyword events, so the default
  10 events/s per node is 20 real nodes' worth each.
* **saturation** (``rate_hz=None``): as fast as the node can deliver. The producer keeps
  :data:`SATURATION_BACKLOG` events spooled (tops the spool up every 10 ms), so the
  sender never waits for work and the spool stays bounded; the throughput in the window
  is what the delivery path sustains on this machine, and the latency includes the wait
  in that backlog.

The nodes are spread over ``processes`` worker processes (``multiprocessing``, spawn),
by default :data:`NODES_PER_PROCESS` per process: a real node has its interpreter to
itself, while simulated nodes share one, three threads each (producer, sender, paho
network loop). On 2 CPUs, 50 nodes saturated at 730-990 events/s in 2 processes (25
nodes per interpreter lock) but at 1300-1550 events/s in 10 processes, for the same
publisher CPU time (about 150 %): with 25 nodes per process the interpreter lock, not the
work, is the limit. After the window every node flushes its spool (``flush``), then stops (``stop``:
``offline`` status, disconnect).

A subscriber in this process (a plain paho client, QoS 1, clean session) records every
message on ``<prefix>/+/+/event/#`` with its arrival time and decodes them afterwards, so
that it does not become the bottleneck. The broker would otherwise drop messages to a
subscriber that falls behind: mosquitto queues at most ``max_queued_messages`` (default
1000) QoS 1 messages per client beyond the ``max_inflight_messages`` in flight, then drops
them (logging "Outgoing messages are being dropped for client ..."). The private broker
therefore runs with :data:`BROKER_CONFIG` (``max_queued_messages 100000``: a consumer may
fall 100000 events behind, 200 s of the default paced load, some 40 MB of broker memory),
which is also the deployment advice for a broker whose consumers must not lose events.
Any such line in the broker log is reported (``broker_drop_log``).

Loss is checked per node against the spool's ``last_seq``: every ``seq`` from 1 to it must
have arrived (the spool hands them out without gaps unless its bound dropped events).
CPU time is read with psutil (``/proc/<pid>/stat``) for mosquitto, the worker processes and this
process (the subscriber), and from ``/proc/stat`` for the whole machine (which includes
anything else running on it), over the measurement window: from the start of publishing to
the last arrival. 100 % is one core.
"""
from __future__ import annotations

import datetime as dt
import json
import logging
import math
import multiprocessing as mp
import os
import random
import tempfile
import threading
import time
import traceback
from pathlib import Path
from typing import Any

import numpy as np
import paho.mqtt.client as mqtt
import psutil

from demo.broker import MosquittoBroker
from edge.mqtt import MqttPublisher
from edge import payloads
from edge.spool import Spool
from firmware_config.defaults import default_config_doc
from firmware_config.schema import parse_config

__all__ = ["DEFAULT_RATE_HZ", "BROKER_CONFIG", "NODES_PER_PROCESS", "SATURATION_BACKLOG",
           "run_mqtt_load"]

DEFAULT_RATE_HZ = 10.0  # events/s per node: 20x a real node (one anomaly event per 2 s hop)
BROKER_CONFIG = ("max_queued_messages 100000",)  # see the module docstring
NODES_PER_PROCESS = 5  # default spread: see the module docstring
SATURATION_BACKLOG = 20  # events kept spooled per node in the saturation mode
_SATURATION_POLL_S = 0.01  # top-up period: 20 events last longer at up to 2000 events/s
_DEPTH_SAMPLE_S = 0.05
_CONNECT_TIMEOUT_S = 20.0
_START_DELAY_S = 0.5  # from "all connected" to the first event, for every worker to be ready


# --------------------------------------------------------------------------------------
# the simulated node (runs in a worker process)
# --------------------------------------------------------------------------------------


class _SimulatedNode:
    """The real spool and publisher of one node; payloads by the node's own code
    (:mod:`edge.payloads`)."""

    def __init__(self, doc: dict[str, Any], base_dir: Path):
        self.cfg = parse_config(doc, f"<load node {doc['node']['id']}>", base_dir)
        sp = self.cfg.spool
        self.spool = Spool(self.cfg.resolve(sp.path), sp.max_events, sp.drop_policy)
        # on_message given, so the node subscribes to cmd/# and config as a real one does
        self.publisher = MqttPublisher(self.cfg, self.state, self.spool,
                                       on_message=lambda topic, payload, retained: None)
        self.rng = random.Random(doc["node"]["id"])

    def state(self) -> dict[str, Any]:
        return {**payloads.base(self.cfg), "status": "online"}

    def next_event(self) -> dict[str, Any]:
        now = time.time()
        score = self.rng.random()
        return payloads.anomaly_event(self.cfg, anomaly_score=score, decision_threshold=0.5,
                                      anomalous=score > 0.5, t_start=now - 10.0, t_end=now,
                                      model_id="bench-load-model",
                                      calibration_id="bench-load-calibration")

    def produce(self, start: float, seconds: float, rate_hz: float | None,
                phase: float) -> None:
        """Publish events for ``seconds`` from ``start`` (``time.monotonic``): paced, the
        ``k``-th at ``start + (phase + k) / rate_hz`` (``phase`` in [0, 1) spreads the nodes
        over the period instead of bursting together), or saturating."""
        pub = self.publisher
        if rate_hz is None:
            while time.monotonic() < start + seconds:
                for _ in range(SATURATION_BACKLOG - pub.queue_depth):  # top the backlog up
                    pub.publish_event("anomaly", self.next_event())
                time.sleep(_SATURATION_POLL_S)
            return
        for k in range(_events_per_node(seconds, rate_hz)):
            delay = start + (phase + k) / rate_hz - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            pub.publish_event("anomaly", self.next_event())


def _events_per_node(seconds: float, rate_hz: float) -> int:
    """Paced events per node: one every ``1 / rate_hz`` s within the window."""
    return math.ceil(seconds * rate_hz - 1e-6)


def _worker(conn, docs: list[dict[str, Any]], phases: list[float], base_dir: str,
            seconds: float, rate_hz: float | None, flush_timeout: float) -> None:
    """One worker process: start its nodes, publish for ``seconds`` on the parent's signal,
    flush, stop and send the per-node statistics back over ``conn``."""
    logging.basicConfig(level=logging.WARNING,
                        format=f"mqtt-load worker {os.getpid()}: %(levelname)s %(name)s: "
                               "%(message)s")
    nodes: list[_SimulatedNode] = []
    try:
        nodes = [_SimulatedNode(d, Path(base_dir)) for d in docs]
        for n in nodes:
            n.publisher.start()
        deadline = time.monotonic() + _CONNECT_TIMEOUT_S
        late = [n.cfg.node.id for n in nodes
                if not n.publisher.wait_connected(max(0.0, deadline - time.monotonic()))]
        if late:
            raise RuntimeError(f"nodes {late} not connected within {_CONNECT_TIMEOUT_S:g} s")
        conn.send(("ready", None))
        t_wall = conn.recv()  # the common start, time.time() seconds
        start = time.monotonic() + (t_wall - time.time())
        time.sleep(max(0.0, start - time.monotonic()))
        threads = [threading.Thread(target=n.produce, args=(start, seconds, rate_hz, phase),
                                    name=f"produce-{n.cfg.node.id}")
                   for n, phase in zip(nodes, phases)]
        for t in threads:
            t.start()
        depth_max = depth_total_max = 0
        while any(t.is_alive() for t in threads):
            depths = [n.publisher.queue_depth for n in nodes]
            depth_max, depth_total_max = max(depth_max, *depths), max(depth_total_max,
                                                                      sum(depths))
            time.sleep(_DEPTH_SAMPLE_S)
        for t in threads:
            t.join()
        deadline = time.monotonic() + flush_timeout
        for n in nodes:
            n.publisher.flush(max(0.0, deadline - time.monotonic()))
        stats = {n.cfg.node.id: {"last_seq": n.spool.last_seq, "dropped": n.spool.dropped,
                                 "left": n.spool.depth, "sent": n.publisher.events_sent}
                 for n in nodes}
        conn.send(("done", {"nodes": stats, "depth_max": depth_max,
                            "depth_total_max": depth_total_max}))
    except BaseException:
        conn.send(("error", traceback.format_exc()))
    finally:
        for n in nodes:
            n.publisher.stop(flush_timeout=0)
            n.spool.close()
        conn.close()


# --------------------------------------------------------------------------------------
# the measurement (parent process)
# --------------------------------------------------------------------------------------


def _cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` (all its threads)."""
    t = psutil.Process(pid).cpu_times()
    return t.user + t.system


def _machine_cpu_seconds() -> tuple[float, float, float]:
    """(busy, iowait, total) CPU seconds of the whole machine since boot."""
    t = psutil.cpu_times()  # guest time is already inside user/nice: not added again
    total = t.user + t.nice + t.system + t.idle + t.iowait + t.irq + t.softirq + t.steal
    return total - t.idle - t.iowait, t.iowait, total


class _Subscriber:
    """Records ``(arrival time, payload)`` of every event message; decoding comes later."""

    def __init__(self, host: str, port: int, topic_filter: str):
        self.arrivals: list[tuple[float, bytes]] = []
        self._subscribed = threading.Event()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2,
                                  client_id=f"hark-bench-load-{os.getpid()}",
                                  protocol=mqtt.MQTTv311, clean_session=True)
        self.client.on_connect = lambda c, u, f, rc, p: c.subscribe(topic_filter, qos=1)
        self.client.on_subscribe = lambda c, u, mid, rcs, p: self._subscribed.set()
        self.client.on_message = lambda c, u, msg: self.arrivals.append((time.time(),
                                                                         msg.payload))
        self.client.connect(host, port, keepalive=30)
        self.client.loop_start()
        if not self._subscribed.wait(10.0):
            self.close()
            raise TimeoutError(f"no SUBACK for {topic_filter!r} from {host}:{port} in 10 s")

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def _node_docs(n_nodes: int, host: str, port: int, spool_dir: Path) -> list[dict[str, Any]]:
    """The default config per simulated node: ``load-NN``, the broker, its own spool file."""
    return [default_config_doc(node={"id": f"load-{i:02d}"}, mqtt={"host": host, "port": port},
                               spool={"path": str(spool_dir / f"load-{i:02d}.sqlite")},
                               homeassistant={"enabled": False})
            for i in range(n_nodes)]


def _analyse(arrivals: list[tuple[float, bytes]], last_seq: dict[str, int],
             t_start: float, t_end: float) -> dict[str, Any]:
    """Loss, duplicates, order, throughput and latency from the recorded arrivals."""
    seen: dict[str, set[int]] = {n: set() for n in last_seq}
    highest = dict.fromkeys(last_seq, 0)
    duplicates = out_of_order = in_window = 0
    latency, sizes = [], []
    for t, payload in arrivals:
        ev = json.loads(payload)
        node, seq = ev["node"], int(ev["seq"])
        got = seen.setdefault(node, set())
        if seq in got:
            duplicates += 1
            continue
        got.add(seq)
        out_of_order += seq < highest.get(node, 0)
        highest[node] = max(highest.get(node, 0), seq)
        in_window += t <= t_end
        ts = dt.datetime.fromisoformat(ev["ts"].replace("Z", "+00:00")).timestamp()
        latency.append(t - ts)
        sizes.append(len(payload))
    lost = {n: len(set(range(1, last + 1)) - seen[n]) for n, last in last_seq.items()}
    unexpected = sum(len(s) for n, s in seen.items() if n not in last_seq)
    lat_ms = np.asarray(latency) * 1e3
    window = t_end - t_start
    last_arrival = max((t for t, _ in arrivals), default=t_end)
    return {
        "delivered": sum(len(s) for s in seen.values()),
        "lost": sum(lost.values()), "lost_per_node": {n: k for n, k in lost.items() if k},
        "duplicates": duplicates, "out_of_order": out_of_order, "unexpected": unexpected,
        "throughput_eps": in_window / window,
        "delivered_eps_overall": len(latency) / max(last_arrival - t_start, 1e-9),
        "drain_s": max(0.0, last_arrival - t_end),
        "latency_ms": ({f"p{q}": float(np.percentile(lat_ms, q)) for q in (50, 95, 99)}
                       | {"max": float(lat_ms.max()), "mean": float(lat_ms.mean())}
                       if len(lat_ms) else None),
        "payload_bytes_mean": float(np.mean(sizes)) if sizes else None,
    }


def run_mqtt_load(n_nodes: int = 50, seconds: float = 60.0,
                  rate_hz: float | None = DEFAULT_RATE_HZ, processes: int | None = None,
                  flush_timeout: float = 60.0, deliver_timeout: float = 30.0) -> dict[str, Any]:
    """Simulated nodes publish through the real spool and publisher to one private broker.

    See the module docstring for the set-up. Needs ``mosquitto`` (Debian package
    ``mosquitto``) and ``/proc``.

    Parameters
    ----------
    n_nodes : int
        Simulated nodes (``load-00`` ...), >= 1.
    seconds : float
        Publishing window in seconds, > 0.
    rate_hz : float or None
        Events per second per node (paced, absolute schedule); None: saturation mode (each
        node as fast as its delivery path goes, :data:`SATURATION_BACKLOG` events spooled).
    processes : int, optional
        Worker processes the nodes are spread over (round robin); default one per
        :data:`NODES_PER_PROCESS` nodes (at least the number of CPUs, at most ``n_nodes``).
    flush_timeout : float
        Seconds each worker waits after the window for its spools to empty.
    deliver_timeout : float
        Seconds to wait, after the workers stopped, for the subscriber to receive every
        ``seq`` the spools handed out.

    Returns
    -------
    dict
        ``mode`` (``"paced"``/``"saturation"``), the parameters (``nodes``, ``processes``,
        ``seconds``, ``rate_hz``, ``qos``, ``broker_config``, ``saturation_backlog``);
        ``published`` (sum of the spools' ``last_seq``), ``acked`` (PUBACKs the nodes
        received, duplicates included), ``published_target`` (paced:
        ``n_nodes * rate_hz * seconds``, else None), ``offered_eps`` (published / window);
        ``delivered`` (unique ``(node, seq)``), ``lost`` (expected seqs 1..last_seq not
        received) and ``lost_per_node`` (only nodes with losses), ``duplicates``,
        ``out_of_order`` (first arrivals with a lower ``seq`` than one already received from
        the node), ``unexpected`` (events from unknown nodes), ``zero_loss`` (lost == 0 and
        out_of_order == 0); ``spool_dropped`` (dropped by the spools' bound),
        ``spool_left`` (still spooled after the flush); ``throughput_eps`` (unique events
        that arrived within the window / window seconds), ``delivered_eps_overall`` (unique
        events / time from the start to the last arrival), ``drain_s`` (last arrival after
        the window's end); ``latency_ms`` (``p50``, ``p95``, ``p99``, ``max``, ``mean``:
        payload ``ts`` to arrival; ``ts`` has millisecond resolution, so up to 1 ms high);
        ``payload_bytes_mean``; ``spool_depth_max`` (largest single spool, sampled every
        50 ms) and ``spool_depth_total_max`` (largest sum per worker); ``cpu_percent``
        (``broker``, ``publishers`` (all workers), ``publishers_per_process``,
        ``subscriber`` (this process), ``machine_busy`` and ``machine_iowait`` (whole
        machine, of ``machine_cpus`` x 100 %)) and ``measured_s`` (the CPU window: start to last
        arrival); ``broker_drop_log`` (broker log lines about dropped messages).

    Raises
    ------
    ValueError
        If ``n_nodes``, ``seconds``, ``rate_hz`` or ``processes`` is out of range.
    RuntimeError
        If mosquitto is missing or exits, or a worker fails or stalls (the message quotes
        its traceback).
    TimeoutError
        If the subscriber gets no SUBACK.
    """
    if n_nodes < 1 or seconds <= 0 or (rate_hz is not None and rate_hz <= 0):
        raise ValueError(f"n_nodes={n_nodes!r}, seconds={seconds!r}, rate_hz={rate_hz!r}: "
                         "expected n_nodes >= 1, seconds > 0 and rate_hz > 0 or None")
    if processes is not None and processes < 1:
        raise ValueError(f"processes={processes!r}: expected >= 1 or None")
    processes = min(n_nodes, processes or max(os.cpu_count() or 1,
                                              math.ceil(n_nodes / NODES_PER_PROCESS)))
    ctx = mp.get_context("spawn")
    workers: list[tuple[Any, Any]] = []
    with tempfile.TemporaryDirectory(prefix="hark-bench-load-") as tmp, \
            MosquittoBroker(extra_config=BROKER_CONFIG) as broker:
        docs = _node_docs(n_nodes, broker.host, broker.port, Path(tmp))
        prefix = docs[0]["mqtt"]["prefix"]
        sub = _Subscriber(broker.host, broker.port, f"{prefix}/+/+/event/#")
        try:
            for w in range(processes):
                parent, child = ctx.Pipe()
                proc = ctx.Process(target=_worker, name=f"mqtt-load-{w}",
                                   args=(child, docs[w::processes],
                                         [i / n_nodes for i in range(w, n_nodes, processes)],
                                         tmp, seconds, rate_hz, flush_timeout))
                proc.start()
                child.close()
                workers.append((proc, parent))
            for proc, conn in workers:
                _receive(conn, proc, "ready", 60.0 + n_nodes)
            t_start = time.time() + _START_DELAY_S
            cpu0 = _cpu_snapshot(broker.proc.pid, [p.pid for p, _ in workers])
            for _, conn in workers:
                conn.send(t_start)
            t_end = t_start + seconds
            done = [_receive(conn, proc, "done", seconds + flush_timeout + 60.0)
                    for proc, conn in workers]
            last_seq = {n: s["last_seq"] for d in done for n, s in d["nodes"].items()}
            expected = sum(last_seq.values())
            deadline = time.monotonic() + deliver_timeout
            while len(sub.arrivals) < expected and time.monotonic() < deadline:
                time.sleep(0.05)
            t_last = max((t for t, _ in sub.arrivals), default=time.time())
            cpu1 = _cpu_snapshot(broker.proc.pid, [p.pid for p, _ in workers])
        finally:
            sub.close()
            for proc, conn in workers:
                conn.close()  # a worker still waiting for the start gets EOFError and stops
                proc.join(timeout=15.0)
                if proc.is_alive():
                    proc.kill()
                    proc.join()
        drops = [line for line in broker.log_text().splitlines() if "dropped" in line.lower()]
    measured = max(t_last - t_start, 1e-9)

    def pct(a: float, b: float) -> float:
        return 100.0 * (b - a) / measured

    res: dict[str, Any] = {
        "mode": "paced" if rate_hz is not None else "saturation", "nodes": n_nodes,
        "processes": processes, "seconds": seconds, "rate_hz": rate_hz,
        "qos": docs[0]["mqtt"]["qos"], "broker_config": list(BROKER_CONFIG),
        "saturation_backlog": SATURATION_BACKLOG if rate_hz is None else None,
        "published": expected,
        "acked": sum(s["sent"] for d in done for s in d["nodes"].values()),
        "published_target": n_nodes * _events_per_node(seconds, rate_hz) if rate_hz else None,
        "offered_eps": expected / seconds,
        "spool_dropped": sum(s["dropped"] for d in done for s in d["nodes"].values()),
        "spool_left": sum(s["left"] for d in done for s in d["nodes"].values()),
        "spool_depth_max": max(d["depth_max"] for d in done),
        "spool_depth_total_max": max(d["depth_total_max"] for d in done),
    }
    res.update(_analyse(sub.arrivals, last_seq, t_start, t_end))
    res["zero_loss"] = res["lost"] == 0 and res["out_of_order"] == 0
    res["measured_s"] = measured
    cpus = os.cpu_count() or 1
    busy, iowait, total = (b - a for a, b in zip(cpu0["machine"], cpu1["machine"]))
    res["cpu_percent"] = {
        "broker": pct(cpu0["broker"], cpu1["broker"]),
        "publishers": pct(sum(cpu0["workers"]), sum(cpu1["workers"])),
        "publishers_per_process": [pct(a, b) for a, b in zip(cpu0["workers"], cpu1["workers"])],
        "subscriber": pct(cpu0["self"], cpu1["self"]),
        "machine_busy": 100.0 * cpus * busy / max(total, 1e-9),
        "machine_iowait": 100.0 * cpus * iowait / max(total, 1e-9),
    }
    res["machine_cpus"] = cpus
    res["broker_drop_log"] = drops
    return res


def _cpu_snapshot(broker_pid: int, worker_pids: list[int]) -> dict[str, Any]:
    return {"broker": _cpu_seconds(broker_pid), "workers": [_cpu_seconds(p) for p in worker_pids],
            "self": _cpu_seconds(os.getpid()), "machine": _machine_cpu_seconds()}


def _receive(conn, proc, expected: str, timeout: float) -> Any:
    """The worker's next message, which must be ``expected``; its traceback otherwise."""
    if not conn.poll(timeout):
        raise RuntimeError(f"mqtt load worker {proc.name} sent no {expected!r} within "
                           f"{timeout:g} s (alive: {proc.is_alive()}, exit code "
                           f"{proc.exitcode})")
    try:
        kind, body = conn.recv()
    except EOFError:
        raise RuntimeError(f"mqtt load worker {proc.name} exited (code {proc.exitcode}) "
                           f"before sending {expected!r}") from None
    if kind != expected:
        raise RuntimeError(f"mqtt load worker {proc.name} failed:\n{body}")
    return body
