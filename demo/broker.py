"""A private, throw-away ``mosquitto`` broker on 127.0.0.1, for the demo and the tests.

The broker is a real ``mosquitto`` process, our own child in its own process group, with its
configuration and log in a temporary directory; several test sessions can run side by side
without seeing each other.

Contents
--------
:func:`free_port`
    A free TCP port on 127.0.0.1.
:func:`find_mosquitto`
    Where the ``mosquitto`` binary is (Debian puts it in ``/usr/sbin``).
:class:`MosquittoBroker`
    The broker, as a context manager (anonymous and without persistence by default), which
    can be stopped and restarted on the same port for fault tests.
:func:`missing_broker_tools`
    What is missing for the broker side, for ``pytest.skip`` messages.
"""

from __future__ import annotations

import importlib.util
import os
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Sequence

from demo.process import TempDirService, tail, terminate, which

__all__ = ["free_port", "find_mosquitto", "MosquittoBroker", "missing_broker_tools"]


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that is free right now.

    Returns
    -------
    int
        A port number chosen by the kernel.  It is released before the
        function returns, so another process could in principle grab it
        before the caller binds it; for test brokers that race is negligible.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _port_open(host: str, port: int, timeout: float = 0.2) -> bool:
    """Return True when a TCP connection to ``host:port`` succeeds."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _port_bindable(host: str, port: int) -> bool:
    """True if ``host:port`` can be bound (with SO_REUSEADDR, as mosquitto does)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True


def find_mosquitto() -> str | None:
    """Return the path of the ``mosquitto`` broker binary, or None.

    Debian installs it as ``/usr/sbin/mosquitto``, which is not on the
    ``PATH`` of every non-root shell, so ``/usr/sbin`` is searched too.
    """
    return which("mosquitto")


def missing_broker_tools() -> list[str]:
    """List what is missing for the broker side of the harness.

    Returns
    -------
    list of str
        One entry per missing item naming its package: ``"mosquitto (Debian package
        mosquitto)"`` and/or ``"paho-mqtt (pip package paho-mqtt>=2.0)"``; empty when both
        are there.
    """
    missing: list[str] = []
    if find_mosquitto() is None:
        missing.append("mosquitto (Debian package mosquitto)")
    if importlib.util.find_spec("paho") is None:
        missing.append("paho-mqtt (pip package paho-mqtt>=2.0)")
    return missing


class MosquittoBroker(TempDirService):
    """A private ``mosquitto`` broker on 127.0.0.1, as a context manager.

    The broker listens on ``127.0.0.1:<port>`` only.  By default it accepts
    anonymous clients and keeps no persistence file, so every start is a
    clean slate; ``listener_config`` replaces that with TLS, passwords, an
    ACL or persistence (e.g. lines taken from a production
    ``mosquitto.conf``).  Its configuration and log live in a temporary
    directory that is removed on exit; it is also the broker's working
    directory, so a relative path (like the default ``persistence_location``)
    lands there and survives :meth:`stop` / :meth:`start`.  Started by root,
    the broker stays root (``user root``) instead of dropping to the
    ``mosquitto`` user, so it can read files in the caller's private folders.

    Parameters
    ----------
    port : int, optional
        TCP port; a free one (:func:`free_port`) when omitted.
    startup_timeout : float, default 10.0
        Seconds to wait for the port to accept connections.
    extra_config : sequence of str, optional
        Extra ``mosquitto.conf`` lines (e.g. ``["max_queued_messages 10"]``).
    listener_config : sequence of str, optional
        ``mosquitto.conf`` lines written right after ``listener <port>
        127.0.0.1``, *instead of* the default ``allow_anonymous true`` and
        ``persistence false``: listener options (``cafile``, ``certfile``,
        ``keyfile``, ``require_certificate``, ``tls_version``) and security
        options (``allow_anonymous``, ``password_file``, ``acl_file``) with
        absolute paths.  Must not contain ``listener``, ``port`` or
        ``log_dest`` lines (the broker stays on 127.0.0.1 and logs to
        :attr:`log_path`).

    Attributes
    ----------
    host : str
        Always ``"127.0.0.1"``.
    port : int
        The listening port; it stays the same across :meth:`stop` /
        :meth:`start`.
    tls : bool
        True when ``listener_config`` sets a ``certfile`` (MQTT over TLS).
    workdir : pathlib.Path
        Temporary directory with ``mosquitto.conf`` and ``mosquitto.log``.
    log_path : pathlib.Path
        The broker's combined stdout/stderr log.
    proc : subprocess.Popen or None
        The running broker, or None while stopped.

    Raises
    ------
    RuntimeError
        If ``mosquitto`` is not installed (Debian package ``mosquitto``), or
        if it does not accept connections within ``startup_timeout``.
    ValueError
        If ``listener_config`` has a ``listener``, ``port`` or ``log_dest``
        line.

    Examples
    --------
    >>> with MosquittoBroker() as broker:            # doctest: +SKIP
    ...     print(broker.host, broker.port)
    ...     broker.stop(); broker.start()           # same port again
    >>> tls_broker = MosquittoBroker(listener_config=[  # doctest: +SKIP
    ...     "allow_anonymous false", "password_file /tmp/x/passwd",
    ...     "cafile /tmp/x/ca.crt", "certfile /tmp/x/server.crt",
    ...     "keyfile /tmp/x/server.key"])
    """

    host = "127.0.0.1"

    def __init__(self, port: int | None = None, startup_timeout: float = 10.0,
                 extra_config: Sequence[str] = (),
                 listener_config: Sequence[str] | None = None) -> None:
        if listener_config is not None:
            for line in listener_config:
                if line.split(maxsplit=1)[:1] in (["listener"], ["port"], ["log_dest"]):
                    raise ValueError(f"MosquittoBroker: listener_config must not set "
                                     f"{line.split()[0]!r} (got {line!r}); the harness "
                                     f"owns the listener address and the log")
        binary = find_mosquitto()
        if binary is None:
            raise RuntimeError(
                "mosquitto broker not found on PATH or in /usr/sbin; "
                "install the Debian package 'mosquitto' (apt-get install mosquitto)")
        self.binary = binary
        self.port = int(port) if port else free_port()
        self.startup_timeout = float(startup_timeout)
        self.extra_config = list(extra_config)
        self.listener_config = (["allow_anonymous true", "persistence false"]
                                if listener_config is None else list(listener_config))
        self.tls = any(line.split(maxsplit=1)[:1] == ["certfile"]
                       for line in self.listener_config)
        self.proc: subprocess.Popen | None = None
        self._tmp: tempfile.TemporaryDirectory | None = None
        self.workdir: Path | None = None
        self.log_path: Path | None = None
        self._log_file = None

    # ------------------------------------------------------------------
    @property
    def url(self) -> str:
        """``mqtt://host:port`` (``mqtts://`` with TLS), for logs and CLI arguments."""
        return f"{'mqtts' if self.tls else 'mqtt'}://{self.host}:{self.port}"

    @property
    def running(self) -> bool:
        """True while the broker process is alive."""
        return self.proc is not None and self.proc.poll() is None

    def _write_config(self) -> Path:
        assert self.workdir is not None
        conf = self.workdir / "mosquitto.conf"
        lines = [
            f"listener {self.port} {self.host}",
            *self.listener_config,
            # Started as root, mosquitto would drop to the `mosquitto` user, which cannot
            # read the caller's password, ACL or key files in a private temporary folder.
            *(["user root"] if os.geteuid() == 0 else []),
            "log_dest stderr",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "log_type information",
            "connection_messages true",
            *self.extra_config,
        ]
        conf.write_text("\n".join(lines) + "\n")
        return conf

    def start(self) -> "MosquittoBroker":
        """Start (or restart) the broker on :attr:`port` and wait until ready.

        Returns
        -------
        MosquittoBroker
            ``self``.

        Raises
        ------
        RuntimeError
            If the process exits early or the port does not accept
            connections within ``startup_timeout`` seconds; the message names
            the log file and quotes its tail.
        """
        if self.running:
            return self
        if self._tmp is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="hark-mosquitto-")
            self.workdir = Path(self._tmp.name)
            self.log_path = self.workdir / "mosquitto.log"
        if not _port_bindable(self.host, self.port):
            raise RuntimeError(f"cannot start mosquitto: {self.host}:{self.port} is already in use")
        conf = self._write_config()
        assert self.log_path is not None
        self._log_file = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [self.binary, "-c", str(conf)],
            stdin=subprocess.DEVNULL, stdout=self._log_file, stderr=subprocess.STDOUT,
            start_new_session=True, cwd=str(self.workdir))
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                code = self.proc.returncode
                self._cleanup_proc()
                raise RuntimeError(
                    f"mosquitto exited with code {code} before accepting connections "
                    f"on {self.host}:{self.port}; log {self.log_path}:\n{tail(self.log_path)}")
            if _port_open(self.host, self.port) and self.proc.poll() is None:
                return self
            time.sleep(0.05)
        self._cleanup_proc()
        raise RuntimeError(
            f"mosquitto did not accept connections on {self.host}:{self.port} within "
            f"{self.startup_timeout:.0f} s; log {self.log_path}:\n{tail(self.log_path)}")

    def _cleanup_proc(self) -> None:
        terminate(self.proc, timeout=5.0, group=True)
        self.proc = None
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    def stop(self) -> None:
        """Stop the broker (SIGTERM, wait, SIGKILL); the port is kept.

        Safe to call when already stopped.  After it returns the port no
        longer accepts connections, so clients see the broker as gone.
        """
        self._cleanup_proc()

    def restart(self, downtime: float = 0.0) -> None:
        """Stop, optionally sleep ``downtime`` seconds, and start again."""
        self.stop()
        if downtime > 0:
            time.sleep(downtime)
        self.start()

    def log_text(self) -> str:
        """Return the broker log so far (useful in assertion messages)."""
        return tail(self.log_path, 1 << 20) if self.log_path else ""

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<MosquittoBroker {self.host}:{self.port} {state}>"
