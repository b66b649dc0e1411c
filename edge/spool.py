"""The node's durable event spool: every event is on disk before it is sent.

Every event (anomaly, keyword, health) is appended to an SQLite file in WAL mode with
``synchronous=FULL`` before anything is published: a returned :meth:`Spool.append` has
been fsynced, so the event survives a broker outage, ``kill -9`` of the node and a power
cut. The MQTT sender takes the oldest event (:meth:`Spool.peek`), publishes it with QoS 1,
waits for the broker's PUBACK and only then deletes it (:meth:`Spool.ack`).

Why SQLite WAL: it is in the standard library, a commit is atomic and crash-safe (a
half-written append is rolled back on the next open, never seen as a torn record), a
commit in WAL mode is one sequential append plus one fsync (kind to an SD card), and
readers do not block the writer.

Delivery contract: at least once, in ``seq`` order. ``seq`` is handed out by the spool,
is written into the payload, is persisted and never reused (not after a restart, not
after every event was acked or dropped). An event whose PUBACK was lost is published
again, so consumers dedupe by ``(node, seq)``; a gap in ``seq`` is an event dropped by the
bound (``max_events``, ``drop_policy``), counted in ``dropped`` and logged.

A file that is not a valid spool (not SQLite, corrupt, another schema version) is moved
aside to ``<name>.corrupt-<UTC timestamp>`` and a fresh spool is started: the node keeps
running and reports :attr:`Spool.quarantined`; nothing is deleted.
"""
from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import os
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Literal

from firmware_config.errors import HarkError

log = logging.getLogger(__name__)

__all__ = ["SPOOL_SCHEMA", "DROP_POLICIES", "SpoolError", "SpooledEvent", "Spool"]

SPOOL_SCHEMA = 1  # PRAGMA user_version of a spool file
DROP_POLICIES = ("oldest", "newest")
DROP_LOG_INTERVAL_S = 60.0  # after the first drop, at most one ERROR line per minute

_SCHEMA_SQL = """
CREATE TABLE events (seq INTEGER PRIMARY KEY, topic TEXT NOT NULL, payload BLOB NOT NULL);
CREATE TABLE meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
INSERT INTO meta (key, value) VALUES ('last_seq', 0), ('dropped', 0);
"""
_TABLES = {"events", "meta"}
# SQLite result codes meaning "this file is not a (healthy) database": quarantine it.
# Anything else on open (cannot create, read-only, I/O error) is the folder's fault.
_CORRUPT_CODES = {sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB}


class SpoolError(HarkError, RuntimeError):
    """The spool cannot be opened or written; the message names the file and the problem."""


class _NotASpool(Exception):
    """Internal: the existing file is not a valid spool (reason in the message)."""


@dataclass(frozen=True)
class SpooledEvent:
    """One event waiting for the broker's PUBACK.

    Attributes
    ----------
    seq : int
        Sequence number, also in the payload as ``"seq"``.
    topic : str
        Full MQTT topic to publish to.
    payload : bytes
        UTF-8 JSON exactly as it will be published.
    """

    seq: int
    topic: str
    payload: bytes


class Spool:
    """Bounded, persistent FIFO of events between the pipeline and the MQTT sender.

    Threads: :meth:`append` is called from the audio thread, :meth:`peek`/:meth:`ack`
    from the MQTT sender and :meth:`stats` from anywhere. They share ONE connection
    (``check_same_thread=False``) guarded by a lock: SQLite serialises writers anyway, so
    connections per thread would only add ``SQLITE_BUSY`` retries, and with a single
    connection the in-memory ``depth``/``last_seq``/``dropped`` stay exactly in step
    with the file. The lock is held for one short transaction (one fsync). One
    :class:`Spool` per file: the node owns its spool.

    Parameters
    ----------
    path : str or os.PathLike
        SQLite file; missing parent folders are created.
    max_events : int
        Bound on spooled events (>= 1).
    drop_policy : {"oldest", "newest"}
        When full: drop the oldest spooled event, or refuse the new one.

    Attributes
    ----------
    path : Path
    quarantined : Path or None
        Where an invalid file found at ``path`` was moved to, else None.

    Raises
    ------
    SpoolError
        If the folder or file cannot be created or written.
    ValueError
        If ``max_events`` or ``drop_policy`` is invalid.
    """

    def __init__(self, path: str | os.PathLike, max_events: int = 100_000,
                 drop_policy: Literal["oldest", "newest"] = "oldest"):
        _check_limits(max_events, drop_policy)
        self.path = Path(path)
        self.quarantined: Path | None = None
        self._lock = threading.Lock()
        self._drop_logged_at: float | None = None
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise SpoolError(f"cannot create the spool folder {self.path.parent}: {exc}") from exc
        try:
            self._conn = self._connect()
        except _NotASpool as exc:
            self.quarantined = self._quarantine(str(exc))
            try:
                self._conn = self._connect()
            except _NotASpool as exc2:  # another process recreated it in between?
                raise SpoolError(f"fresh spool {self.path} is invalid: {exc2}") from exc2
        self.set_limits(max_events, drop_policy)  # a file from a larger bound is trimmed now

    # -- opening -----------------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        """Open and check ``self.path`` (a new file gets the schema); reads the counters."""
        try:
            conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        except sqlite3.Error as exc:
            raise SpoolError(f"cannot open spool {self.path}: {exc}") from exc
        if not os.access(self.path, os.W_OK):  # sqlite3 would open it read-only, silently
            conn.close()
            raise SpoolError(f"spool {self.path} is not writable")
        try:
            # Validate before writing anything (journal_mode=WAL rewrites the header).
            problems = [r[0] for r in conn.execute("PRAGMA quick_check")]
            if problems != ["ok"]:
                raise _NotASpool(f"integrity check failed: {'; '.join(problems[:3])}")
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            tables = {r[0] for r in
                      conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            if version == 0 and not tables:
                conn.executescript(
                    f"BEGIN; {_SCHEMA_SQL} PRAGMA user_version = {SPOOL_SCHEMA}; COMMIT;")
                _fsync_dir(self.path.parent)  # the new file's name must survive a power cut too
            elif version != SPOOL_SCHEMA:
                raise _NotASpool(f"schema version {version} with tables {sorted(tables)}, "
                                 f"expected spool schema {SPOOL_SCHEMA}")
            elif tables != _TABLES:
                raise _NotASpool(f"tables {sorted(tables)}, expected {sorted(_TABLES)}")
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if mode != "wal":
                raise SpoolError(f"spool {self.path}: journal_mode is {mode!r}, WAL is required "
                                 "(is the file on a network file system?)")
            conn.execute("PRAGMA synchronous = FULL")
            self._last_seq, self._dropped, self._depth = conn.execute(
                "SELECT (SELECT value FROM meta WHERE key = 'last_seq'),"
                " (SELECT value FROM meta WHERE key = 'dropped'), (SELECT COUNT(*) FROM events)"
            ).fetchone()
        except sqlite3.DatabaseError as exc:
            conn.close()
            if exc.sqlite_errorcode in _CORRUPT_CODES:
                raise _NotASpool(str(exc)) from exc
            raise SpoolError(f"cannot use spool {self.path}: {exc}") from exc
        except BaseException:
            conn.close()
            raise
        return conn

    def _quarantine(self, reason: str) -> Path:
        """Move the invalid file (and its ``-wal``/``-shm``) aside; returns the new path."""
        stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%S.%fZ")
        target = self.path.with_name(f"{self.path.name}.corrupt-{stamp}")
        try:
            # The sidecars keep their suffix, so sqlite3 still pairs them with the moved file;
            # a stale -wal left behind could otherwise be replayed into the fresh spool.
            for suffix in ("-wal", "-shm", ""):
                src = Path(f"{self.path}{suffix}")
                if src.exists():
                    os.replace(src, f"{target}{suffix}")
        except OSError as exc:
            raise SpoolError(f"spool {self.path} is invalid ({reason}) and cannot be moved "
                             f"aside to {target}: {exc}") from exc
        log.error("spool %s is not a valid spool (%s): moved it to %s, starting a fresh spool",
                  self.path, reason, target)
        return target

    # -- the queue ---------------------------------------------------------------------

    def append(self, topic: str, payload: dict) -> int | None:
        """Spool one event durably (fsynced) and return its sequence number.

        Parameters
        ----------
        topic : str
            Full MQTT topic (no ``+``/``#`` wildcards).
        payload : dict
            JSON-serialisable; a copy gets ``"seq"`` set, the caller's dict is untouched.

        Returns
        -------
        int or None
            The event's ``seq``; None when ``drop_policy="newest"`` refused it because the
            spool is full (the ``seq`` is consumed anyway, so consumers see the gap).

        Raises
        ------
        ValueError
            If ``topic`` is not a valid publish topic or the payload is not strict JSON
            (NaN/infinity included).
        TypeError
            If the payload holds something JSON cannot encode.
        SpoolError
            If the spool is closed or the write fails (disk full, I/O error).
        """
        if not isinstance(topic, str) or not topic or "+" in topic or "#" in topic:
            raise ValueError(f"event topic {topic!r}: expected a non-empty MQTT topic "
                             "without wildcards")
        with self._lock:
            with self._transaction():
                seq = self._last_seq + 1
                data = json.dumps({**payload, "seq": seq}, separators=(",", ":"),
                                  ensure_ascii=False, allow_nan=False).encode("utf-8")
                self._conn.execute("UPDATE meta SET value = ? WHERE key = 'last_seq'", (seq,))
                stored = self.drop_policy == "oldest" or self._depth < self.max_events
                if stored:
                    self._conn.execute("INSERT INTO events (seq, topic, payload) VALUES (?, ?, ?)",
                                       (seq, topic, data))
                depth = self._depth + stored
                excess = self._trim(depth, refused=not stored)
            self._last_seq = seq
            self._depth = depth - excess
            self._count_drops(excess + (not stored))
        return seq if stored else None

    def peek(self, limit: int = 1) -> list[SpooledEvent]:
        """The oldest ``limit`` events in ``seq`` order (fewer if fewer wait); nothing is removed.

        Raises
        ------
        ValueError
            If ``limit`` < 1.
        SpoolError
            If the spool is closed or cannot be read.
        """
        if limit < 1:
            raise ValueError(f"peek limit={limit!r}: expected >= 1")
        with self._lock, self._transaction():
            rows = self._conn.execute(
                "SELECT seq, topic, payload FROM events ORDER BY seq LIMIT ?", (limit,)).fetchall()
        return [SpooledEvent(seq, topic, bytes(payload)) for seq, topic, payload in rows]

    def ack(self, seq: int) -> None:
        """Delete event ``seq`` once the broker acknowledged it (PUBACK); absent ``seq`` is fine.

        Raises
        ------
        SpoolError
            If the spool is closed or the write fails.
        """
        with self._lock:
            with self._transaction():
                n = self._conn.execute("DELETE FROM events WHERE seq = ?", (seq,)).rowcount
            self._depth -= n

    @property
    def depth(self) -> int:
        """Events waiting to be delivered."""
        return self._depth

    @property
    def dropped(self) -> int:
        """Events dropped by the bound since the spool file was created (persisted)."""
        return self._dropped

    @property
    def last_seq(self) -> int:
        """The last ``seq`` handed out (persisted; 0 for a new spool)."""
        return self._last_seq

    def stats(self) -> dict:
        """Snapshot for the ``state``/``heartbeat`` payloads.

        Returns
        -------
        dict
            ``depth``, ``max_events``, ``dropped``, ``drop_policy``, ``last_seq`` and
            ``path`` (str).
        """
        with self._lock:
            return {"depth": self._depth, "max_events": self.max_events, "dropped": self._dropped,
                    "drop_policy": self.drop_policy, "last_seq": self._last_seq,
                    "path": str(self.path)}

    def set_limits(self, max_events: int, drop_policy: str) -> None:
        """Apply a new bound and policy now (config reload).

        A bound below the current depth is enforced at once: ``"oldest"`` drops the oldest
        events, ``"newest"`` the newest ones, counted in :attr:`dropped`.

        Raises
        ------
        ValueError
            If ``max_events`` < 1 or ``drop_policy`` is not ``"oldest"``/``"newest"``.
        SpoolError
            If the spool is closed or the write fails.
        """
        _check_limits(max_events, drop_policy)
        with self._lock:
            self.max_events, self.drop_policy = max_events, drop_policy
            with self._transaction():
                excess = self._trim(self._depth)
            self._depth -= excess
            self._count_drops(excess)

    def close(self) -> None:
        """Close the file (checkpoints the WAL); idempotent, later calls raise :class:`SpoolError`."""
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def __enter__(self) -> Spool:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Spool({str(self.path)!r}, depth={self._depth}, last_seq={self._last_seq})"

    # -- internals (called with the lock held) -----------------------------------------

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[None]:
        """``BEGIN IMMEDIATE`` ... ``COMMIT``, ``ROLLBACK`` on any error; sqlite3 errors -> SpoolError."""
        if self._conn is None:
            raise SpoolError(f"spool {self.path} is closed")
        try:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield
                self._conn.execute("COMMIT")
            except BaseException:
                if self._conn.in_transaction:
                    self._conn.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            raise SpoolError(f"spool {self.path}: {exc}") from exc

    def _trim(self, depth: int, refused: bool = False) -> int:
        """In a transaction: delete the events beyond ``max_events`` per the policy.

        ``depth`` is the number of stored events now; the deleted ones and a ``refused``
        new event are added to the persisted ``dropped``. Returns how many were deleted.
        """
        excess = max(0, depth - self.max_events)
        if excess:
            order = "ASC" if self.drop_policy == "oldest" else "DESC"
            self._conn.execute(f"DELETE FROM events WHERE seq IN "
                               f"(SELECT seq FROM events ORDER BY seq {order} LIMIT ?)", (excess,))
        if excess or refused:
            self._conn.execute("UPDATE meta SET value = value + ? WHERE key = 'dropped'",
                               (excess + refused,))
        return excess

    def _count_drops(self, n: int) -> None:
        """After the commit: count ``n`` dropped events and log (rate-limited)."""
        if not n:
            return
        self._dropped += n
        now = time.monotonic()
        if self._drop_logged_at is None or now - self._drop_logged_at >= DROP_LOG_INTERVAL_S:
            self._drop_logged_at = now
            log.error("spool %s full (max_events=%d): drop_policy=%r dropped %d event(s), "
                      "%d dropped in total", self.path, self.max_events, self.drop_policy, n,
                      self._dropped)


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _check_limits(max_events: int, drop_policy: str) -> None:
    if not isinstance(max_events, int) or isinstance(max_events, bool) or max_events < 1:
        raise ValueError(f"spool max_events={max_events!r}: expected an integer >= 1")
    if drop_policy not in DROP_POLICIES:
        raise ValueError(f"spool drop_policy={drop_policy!r}: expected one of {DROP_POLICIES}")
