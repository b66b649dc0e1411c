"""The durable event spool (:mod:`edge.spool`) on real files and real processes."""
from __future__ import annotations

import json
import logging
import os
import random
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from edge.spool import Spool, SpoolError

ROOT = Path(__file__).resolve().parent.parent
TOPIC = "hark/lab/n1/event/anomaly"


def seqs(spool: Spool) -> list[int]:
    return [e.seq for e in spool.peek(10**6)]


def test_round_trip_in_order(tmp_path):
    payloads = [{"i": i, "score": i / 7, "keyword": "grüezi", "nested": {"a": [1, 2]}} for i in range(5)]
    with Spool(tmp_path / "var" / "spool.sqlite") as s:  # missing folder is created
        returned = [s.append(f"hark/lab/n1/event/{i}", p) for i, p in enumerate(payloads)]
        assert returned == [1, 2, 3, 4, 5]
        assert all("seq" not in p for p in payloads), "the caller's dict must not be mutated"
        events = s.peek(10)
        assert [e.seq for e in events] == returned
        for i, (e, p) in enumerate(zip(events, payloads)):
            assert e.topic == f"hark/lab/n1/event/{i}"
            assert isinstance(e.payload, bytes)
            assert json.loads(e.payload.decode("utf-8")) == {**p, "seq": e.seq}
        assert [e.seq for e in s.peek(2)] == [1, 2] and s.depth == 5  # peek removes nothing
        s.ack(3)
        s.ack(3)  # idempotent
        s.ack(999)
        s.ack(1)
        assert seqs(s) == [2, 4, 5] and s.depth == 3
        assert s.stats() == {"depth": 3, "max_events": 100_000, "dropped": 0, "drop_policy": "oldest",
                             "last_seq": 5, "path": str(tmp_path / "var" / "spool.sqlite")}


def test_seq_persists_and_is_never_reused(tmp_path):
    path = tmp_path / "spool.sqlite"
    with Spool(path) as s:
        assert s.last_seq == 0
        for i in range(3):
            s.append(TOPIC, {"i": i})
    with Spool(path) as s:
        assert s.last_seq == 3 and seqs(s) == [1, 2, 3]
        for e in s.peek(10):
            s.ack(e.seq)
        assert s.depth == 0
    with Spool(path) as s:  # empty spool: the counter still remembers
        assert s.last_seq == 3 and s.depth == 0
        assert s.append(TOPIC, {}) == 4
        assert json.loads(s.peek()[0].payload) == {"seq": 4}


def test_drop_oldest_at_the_bound(tmp_path, caplog):
    path = tmp_path / "spool.sqlite"
    with caplog.at_level(logging.ERROR, logger="edge.spool"), Spool(path, max_events=3) as s:
        assert [s.append(TOPIC, {"i": i}) for i in range(5)] == [1, 2, 3, 4, 5]
        assert seqs(s) == [3, 4, 5] and s.depth == 3 and s.dropped == 2
    drops = [r for r in caplog.records if "drop_policy='oldest'" in r.getMessage()]
    assert len(drops) == 1, "the second drop within a minute must not be logged again"
    assert drops[0].levelname == "ERROR" and "1 dropped in total" in drops[0].getMessage()
    with Spool(path, max_events=3) as s:
        assert s.dropped == 2 and s.last_seq == 5


def test_drop_newest_at_the_bound(tmp_path):
    with Spool(tmp_path / "spool.sqlite", max_events=3, drop_policy="newest") as s:
        assert [s.append(TOPIC, {"i": i}) for i in range(5)] == [1, 2, 3, None, None]
        assert seqs(s) == [1, 2, 3] and s.dropped == 2 and s.last_seq == 5
        assert [json.loads(e.payload)["i"] for e in s.peek(3)] == [0, 1, 2]
        s.ack(1)
        assert s.append(TOPIC, {"i": 5}) == 6  # 4 and 5 are the gap consumers see
        assert seqs(s) == [2, 3, 6] and s.dropped == 2


def test_drop_log_is_rate_limited_to_once_a_minute(tmp_path, caplog, monkeypatch):
    clock = [1000.0]
    monkeypatch.setattr("edge.spool.time.monotonic", lambda: clock[0])
    with caplog.at_level(logging.ERROR, logger="edge.spool"), Spool(tmp_path / "s.sqlite", max_events=1) as s:
        s.append(TOPIC, {})  # fills the spool
        for step in (0, 1, 30, 30, 1):  # drops at t = 0, 1, 31, 61, 62 s after the first
            clock[0] += step
            s.append(TOPIC, {})
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 2, messages
    assert "1 dropped in total" in messages[0] and "4 dropped in total" in messages[1]


@pytest.mark.parametrize("policy, kept", [("oldest", [7, 8, 9, 10]), ("newest", [1, 2, 3, 4])])
def test_set_limits_enforces_a_smaller_bound_at_once(tmp_path, policy, kept):
    path = tmp_path / "spool.sqlite"
    with Spool(path, max_events=10) as s:
        for i in range(10):
            s.append(TOPIC, {"i": i})
        s.set_limits(4, policy)
        assert seqs(s) == kept and s.depth == 4 and s.dropped == 6
        assert s.stats()["max_events"] == 4 and s.stats()["drop_policy"] == policy
    with Spool(path, max_events=2, drop_policy=policy) as s:  # reopening with a smaller bound trims too
        assert seqs(s) == (kept[-2:] if policy == "oldest" else kept[:2]) and s.dropped == 8


def test_invalid_arguments_and_closed_spool(tmp_path):
    with pytest.raises(ValueError, match="max_events"):
        Spool(tmp_path / "a.sqlite", max_events=0)
    with pytest.raises(ValueError, match="drop_policy"):
        Spool(tmp_path / "a.sqlite", drop_policy="random")
    assert not (tmp_path / "a.sqlite").exists()
    s = Spool(tmp_path / "a.sqlite")
    with pytest.raises(ValueError, match="wildcards"):
        s.append("hark/+/n1/event", {})
    with pytest.raises(ValueError):
        s.append(TOPIC, {"score": float("nan")})  # not JSON
    assert s.last_seq == 0 and s.depth == 0, "a refused append consumes no seq"
    s.close()
    s.close()
    with pytest.raises(SpoolError, match="closed"):
        s.append(TOPIC, {})


CHILD = """
import sys
from edge.spool import Spool

spool = Spool(sys.argv[1])
i = spool.last_seq
while True:
    seq = spool.append("hark/lab/n1/event/anomaly", {"i": i, "pad": "x" * 300})
    print(seq, flush=True)
    i += 1
"""


def test_sigkill_loses_no_appended_event(tmp_path):
    path = tmp_path / "spool.sqlite"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    printed: list[int] = []
    for _ in range(2):  # crash twice: seq continues after each crash
        proc = subprocess.Popen([sys.executable, "-c", CHILD, str(path)], stdout=subprocess.PIPE,
                                cwd=ROOT, env=env)
        before = len(printed)
        for line in proc.stdout:
            printed.append(int(line))
            if len(printed) - before == 150:
                break
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        assert proc.returncode == -signal.SIGKILL
        printed += [int(x) for x in proc.stdout.read().split(b"\n")[:-1]]  # complete lines only
        proc.stdout.close()
    with Spool(path) as s:
        events = s.peek(10**6)
    stored = [e.seq for e in events]
    assert printed == sorted(set(printed)) and len(printed) >= 300
    assert set(printed) <= set(stored), f"printed but lost: {sorted(set(printed) - set(stored))}"
    # Nothing missing in between; per crash at most one event committed but not printed yet.
    assert stored == list(range(1, len(stored) + 1))
    assert len(stored) - len(printed) <= 2
    for e in events:
        assert json.loads(e.payload) == {"i": e.seq - 1, "pad": "x" * 300, "seq": e.seq}


def test_concurrent_writer_and_acker_see_each_event_once_in_order(tmp_path):
    n = 600
    s = Spool(tmp_path / "spool.sqlite")
    written: list[int] = []
    delivered: list[tuple[int, int]] = []  # (seq, payload i)
    stats_seen: list[dict] = []
    done = threading.Event()

    def writer():
        for i in range(n):
            written.append(s.append(TOPIC, {"i": i}))

    def sender():  # what the MQTT thread does: peek, "publish", ack
        deadline = time.monotonic() + 30
        while len(delivered) < n and time.monotonic() < deadline:
            for e in s.peek(7):
                delivered.append((e.seq, json.loads(e.payload)["i"]))
                s.ack(e.seq)

    def watcher():
        while not done.is_set():
            stats_seen.append(s.stats())

    threads = [threading.Thread(target=f) for f in (writer, sender, watcher)]
    for t in threads:
        t.start()
    threads[0].join()
    threads[1].join()
    done.set()
    threads[2].join()
    assert written == list(range(1, n + 1))
    assert delivered == [(seq, seq - 1) for seq in range(1, n + 1)]
    assert s.depth == 0 and s.peek() == []
    assert all(0 <= st["depth"] <= n for st in stats_seen)
    last = [st["last_seq"] for st in stats_seen]
    assert last == sorted(last)
    s.close()



def _real_spool_truncated(path: Path) -> None:
    with Spool(path) as s:
        for i in range(300):
            s.append(TOPIC, {"i": i, "pad": "x" * 400})
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _real_spool_page_garbled(path: Path) -> None:
    """An SD card returning garbage for one page in the middle of the file."""
    with Spool(path) as s:
        for i in range(300):
            s.append(TOPIC, {"i": i, "pad": "x" * 400})
    with open(path, "r+b") as f:
        f.seek(10 * 4096)
        f.write(random.Random(0).randbytes(4096))


def _random_bytes(path: Path) -> None:
    path.write_bytes(random.Random(1).randbytes(8192))


def _foreign_schema(path: Path) -> None:
    with Spool(path) as s:
        s.append(TOPIC, {})
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA user_version = 99")
    conn.commit()
    conn.close()


@pytest.mark.parametrize("damage, reason", [(_random_bytes, "file is not a database"),
                                            (_real_spool_truncated, "malformed"),
                                            (_real_spool_page_garbled, "malformed"),
                                            (_foreign_schema, "schema version 99")])
def test_invalid_file_is_quarantined_and_a_fresh_spool_works(tmp_path, caplog, damage, reason):
    path = tmp_path / "spool.sqlite"
    damage(path)
    original = path.read_bytes()
    with caplog.at_level(logging.ERROR, logger="edge.spool"), Spool(path) as s:
        assert s.quarantined is not None
        assert s.quarantined.parent == tmp_path and s.quarantined.name.startswith("spool.sqlite.corrupt-")
        assert s.quarantined.read_bytes() == original, "the invalid file must be kept as it was"
        assert s.depth == 0 and s.last_seq == 0
        assert s.append(TOPIC, {"i": 0}) == 1 and seqs(s) == [1]
    line = caplog.records[-1]
    assert line.levelname == "ERROR"
    assert str(path) in line.getMessage() and str(s.quarantined) in line.getMessage()
    assert reason in line.getMessage()
    with Spool(path) as s:  # the fresh spool is a valid spool from now on
        assert s.quarantined is None and seqs(s) == [1]


def test_unwritable_folder_raises_spool_error_naming_it(tmp_path):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a regular file")
    with pytest.raises(SpoolError, match=str(blocker)):
        Spool(blocker / "var" / "spool.sqlite")
    assert blocker.read_text() == "a regular file"


def test_wal_mode_and_schema_version_are_on_disk(tmp_path):
    path = tmp_path / "spool.sqlite"
    with Spool(path) as s:
        s.append(TOPIC, {})
        conn = sqlite3.connect(path)
        try:
            assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
            assert conn.execute("PRAGMA user_version").fetchone()[0] == 1
            assert conn.execute("SELECT seq, topic FROM events").fetchall() == [(1, TOPIC)]
        finally:
            conn.close()
