"""Reusable end-to-end helpers: a private MQTT broker, a virtual microphone
and an MQTT message collector.

These helpers are shared by the demo script and by the pytest end-to-end
tests.  They start *real* processes (``mosquitto``, ``pulseaudio``,
``pacat``, ``paplay``) in private temporary directories, so several test
sessions can run side by side on one machine without seeing each other.

Overview
--------
:func:`free_port`
    A free TCP port on 127.0.0.1.
:class:`MosquittoBroker`
    A throw-away ``mosquitto`` on 127.0.0.1 (anonymous, no persistence), which
    can be stopped and restarted on the same port for fault tests.
:class:`VirtualMicrophone`
    A private PulseAudio daemon whose null sink ``virtmic`` doubles as the
    default *source* (``virtmic.monitor``).  Whatever is played into the sink
    with ``paplay`` is what a ``sounddevice`` input stream on the ALSA
    ``pulse`` device records.
:class:`MqttCollector`
    A paho-mqtt 2.x subscriber that records every message it sees.
:func:`mqtt_publish`
    Publish one message and wait for the broker's acknowledgement.
:func:`xcorr_peak`
    Peak normalised cross-correlation, to find played audio in a capture.
:func:`require_tools`
    The list of missing tools / packages, for ``pytest.skip`` messages.

Capturing from the virtual microphone in another process
--------------------------------------------------------
A child process (for instance the node under test) reaches *this* daemon
through the ALSA ``pulse`` plugin when its environment contains the
variables in :attr:`VirtualMicrophone.env`::

    PULSE_SERVER=unix:<tmp>/run/pulse/native
    PULSE_RUNTIME_PATH=<tmp>/run/pulse
    PULSE_COOKIE=<tmp>/config/pulse/cookie

``PULSE_SERVER`` is the one that matters; the other two keep libpulse from
looking at (or creating files under) ``$HOME``.  Pass
``env={**os.environ, **vm.env}`` to :class:`subprocess.Popen` and open the
input stream with ``device=vm.device_name`` (``"pulse"``).  In the *same*
Python process call :meth:`VirtualMicrophone.apply_env` *before*
``import sounddevice``; if it was already imported, ``apply_env``
re-initialises PortAudio, because PortAudio lists the ALSA ``pulse`` device
only if a PulseAudio server was reachable when it initialised (otherwise:
``ValueError: No input device matching 'pulse'``).

Pitfalls (found by experiment on Debian bookworm, PulseAudio 16.1)
------------------------------------------------------------------
* **Root.**  ``pulseaudio`` runs as root in per-user mode (no ``--system``);
  it only logs "This program is not intended to be run as root".
  ``--system`` is *not* wanted: it ignores ``XDG_RUNTIME_DIR`` and uses the
  machine-wide ``/var/run/pulse``.
* **Private daemon.**  The daemon is kept in the foreground as our own child
  (no ``-D``): daemonising re-parents it, and without a real init in a
  container the exited intermediate process lingers as a ``<defunct>``
  zombie that ``pgrep`` still reports.  ``XDG_RUNTIME_DIR``,
  ``PULSE_RUNTIME_PATH``, ``PULSE_STATE_PATH`` and ``XDG_CONFIG_HOME`` all
  point into a temporary directory, so nothing is written to
  ``~/.config/pulse`` and another session's daemon is never contacted.
* **Two-second start-up gap.**  ``module-null-sink`` renders in blocks of up
  to 2 s while no stream asks for low latency.  A capture stream opened on
  its monitor then receives *nothing* for up to 2 s (the data is dropped,
  not delayed), and ``paplay`` takes about 2 s longer than the file.  The
  class therefore keeps a low-latency ``pacat --record`` "keeper" attached
  to ``virtmic.monitor`` for its whole life and waits for the first bytes
  from it before returning from :meth:`VirtualMicrophone.start`; afterwards
  a new capture stream gets data within ~20 ms.
* **Sample rate.**  The null sink is created at 16 kHz mono float32 (the
  node's capture format), so a 16 kHz file played with ``paplay`` and
  captured at 16 kHz is never resampled and comes back bit-for-bit close
  (normalised cross-correlation ~1.0).  Files at other rates are resampled
  by PulseAudio; that works but costs correlation.
* **$HOME side effects.**  Any libpulse client (including ``import
  sounddevice``, whose PortAudio probes the ALSA ``pulse`` device) started
  *without* ``PULSE_SERVER``/``PULSE_RUNTIME_PATH``/``XDG_RUNTIME_DIR`` creates
  ``~/.config/pulse/<machine-id>-runtime`` and ``/tmp/pulse-XXXX``; with
  :attr:`VirtualMicrophone.env` applied nothing is written outside the
  temporary directory.
* **Leading silence.**  The null sink always runs, so a capture stream
  records silence until ``paplay`` has started (typically 20-100 ms after
  the ``paplay`` process is launched); align by cross-correlation, not by
  index.
"""

from __future__ import annotations

import contextlib
import ctypes.util
import glob
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable, Iterable, NamedTuple, Sequence

__all__ = [
    "free_port",
    "MosquittoBroker",
    "VirtualMicrophone",
    "MqttMessage",
    "MqttCollector",
    "mqtt_publish",
    "xcorr_peak",
    "require_tools",
    "find_mosquitto",
]


# --------------------------------------------------------------------------
# small utilities
# --------------------------------------------------------------------------


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


def _which(name: str, extra_dirs: Iterable[str] = ("/usr/sbin", "/sbin")) -> str | None:
    """Find an executable on ``PATH`` or, failing that, in ``extra_dirs``."""
    found = shutil.which(name)
    if found:
        return found
    for directory in extra_dirs:
        candidate = os.path.join(directory, name)
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    return None


def find_mosquitto() -> str | None:
    """Return the path of the ``mosquitto`` broker binary, or None.

    Debian installs it as ``/usr/sbin/mosquitto``, which is not on the
    ``PATH`` of every non-root shell, so ``/usr/sbin`` is searched too.
    """
    return _which("mosquitto")


def _tail(path: Path, n_chars: int = 2000) -> str:
    """Return the last ``n_chars`` characters of a text file (or '')."""
    try:
        return path.read_text(errors="replace")[-n_chars:]
    except OSError:
        return ""


def _terminate(proc: subprocess.Popen | None, timeout: float = 5.0, group: bool = False) -> None:
    """Stop a child process: SIGTERM, wait ``timeout`` s, then SIGKILL, reap.

    Parameters
    ----------
    proc : subprocess.Popen or None
        The process; None or an already reaped process is a no-op.
    timeout : float
        Seconds to wait after SIGTERM before SIGKILL.
    group : bool
        Signal the whole process group (the process must have been started
        with ``start_new_session=True``), so that its children go too.
    """
    if proc is None:
        return

    def _send(sig: int) -> None:
        try:
            if group:
                os.killpg(proc.pid, sig)
            else:
                proc.send_signal(sig)
        except (ProcessLookupError, PermissionError):
            pass

    if proc.poll() is None:
        _send(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            _send(signal.SIGKILL)
            proc.wait(timeout=timeout)
    for stream in (proc.stdin, proc.stdout, proc.stderr):
        if stream is not None:
            with contextlib.suppress(OSError):
                stream.close()


# --------------------------------------------------------------------------
# mosquitto
# --------------------------------------------------------------------------


class _TempDirService:
    """Context-manager plumbing for a process that lives in its own temporary directory:
    ``start()`` on enter, ``stop()`` and removal of the directory (``self._tmp``) on exit,
    also when ``start()`` fails half-way."""

    _tmp: "tempfile.TemporaryDirectory | None" = None

    def close(self) -> None:
        """Stop the process and remove its temporary directory."""
        self.stop()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def __enter__(self):
        try:
            return self.start()
        except BaseException:
            self.close()
            raise

    def __exit__(self, *exc) -> None:
        self.close()


class MosquittoBroker(_TempDirService):
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
                    f"on {self.host}:{self.port}; log {self.log_path}:\n{_tail(self.log_path)}")
            if _port_open(self.host, self.port) and self.proc.poll() is None:
                return self
            time.sleep(0.05)
        self._cleanup_proc()
        raise RuntimeError(
            f"mosquitto did not accept connections on {self.host}:{self.port} within "
            f"{self.startup_timeout:.0f} s; log {self.log_path}:\n{_tail(self.log_path)}")

    def _cleanup_proc(self) -> None:
        _terminate(self.proc, timeout=5.0, group=True)
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
        return _tail(self.log_path, 1 << 20) if self.log_path else ""


    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<MosquittoBroker {self.host}:{self.port} {state}>"


# --------------------------------------------------------------------------
# PulseAudio virtual microphone
# --------------------------------------------------------------------------

_PULSE_TOOLS = {
    "pulseaudio": "pulseaudio",
    "pactl": "pulseaudio-utils",
    "paplay": "pulseaudio-utils",
    "pacat": "pulseaudio-utils",
}


def _alsa_pulse_plugin_present() -> bool:
    """True if the ALSA ``pulse`` PCM plugin (libasound2-plugins) is installed."""
    patterns = [
        "/usr/lib/*/alsa-lib/libasound_module_pcm_pulse.so",
        "/usr/lib/alsa-lib/libasound_module_pcm_pulse.so",
        "/usr/lib64/alsa-lib/libasound_module_pcm_pulse.so",
    ]
    return any(glob.glob(p) for p in patterns)


def _missing_audio_packages() -> list[str]:
    """Debian packages whose absence breaks :class:`VirtualMicrophone`."""
    missing: list[str] = []
    for tool, package in _PULSE_TOOLS.items():
        if _which(tool) is None and package not in missing:
            missing.append(package)
    if not _alsa_pulse_plugin_present():
        missing.append("libasound2-plugins")
    if ctypes.util.find_library("portaudio") is None:
        missing.append("libportaudio2")
    return missing


class VirtualMicrophone(_TempDirService):
    """A private PulseAudio daemon whose null sink acts as a microphone.

    On :meth:`start` this runs, in a fresh temporary directory::

        pulseaudio --daemonize=no -n --exit-idle-time=-1 \\
            --load="module-null-sink sink_name=virtmic rate=16000 channels=1 ..." \\
            --load="module-native-protocol-unix auth-anonymous=1"
        pactl set-default-sink virtmic
        pactl set-default-source virtmic.monitor
        pacat --record --device=virtmic.monitor --latency-msec=20   # keeper

    after which audio played with :meth:`play` (``paplay --device=virtmic``)
    is what a ``sounddevice`` input stream on :attr:`device_name` records,
    in any process whose environment contains :attr:`env`.  See the module
    docstring for the reasons behind each step.

    Parameters
    ----------
    sink_name : str, default "virtmic"
        Name of the null sink; its monitor ``<sink_name>.monitor`` becomes
        the default source.
    rate : int, default 16000
        Sample rate of the null sink.  Matching the capture rate avoids any
        resampling inside PulseAudio.
    channels : int, default 1
        Channels of the null sink.
    startup_timeout : float, default 10.0
        Seconds to wait for the daemon socket and for the keeper's first data.

    Attributes
    ----------
    env : dict of str to str
        Environment variables a client process needs to reach this daemon
        (``PULSE_SERVER``, ``PULSE_RUNTIME_PATH``, ``PULSE_COOKIE``).
    device_name : str
        The ``sounddevice`` / PortAudio input device to open: ``"pulse"``
        (the ALSA pulse plugin, which records the default source).
    source_name : str
        The PulseAudio source that is recorded (``"virtmic.monitor"``).
    workdir : pathlib.Path
        Temporary directory holding the runtime dir, state and daemon log.
    log_path : pathlib.Path
        The daemon log (``pulseaudio.log``).

    Raises
    ------
    RuntimeError
        If the binaries or the ALSA plugin are missing (message names the
        Debian packages ``pulseaudio``, ``pulseaudio-utils``,
        ``libasound2-plugins``, ``libportaudio2``), or if the daemon fails to
        come up.

    Examples
    --------
    >>> with VirtualMicrophone() as vm:                      # doctest: +SKIP
    ...     node = subprocess.Popen(cmd, env={**os.environ, **vm.env})
    ...     vm.play("fan_abnormal.wav")                     # blocks
    """

    device_name = "pulse"

    def __init__(self, sink_name: str = "virtmic", rate: int = 16000, channels: int = 1,
                 startup_timeout: float = 10.0) -> None:
        missing = _missing_audio_packages()
        if missing:
            raise RuntimeError(
                "virtual microphone needs PulseAudio and the ALSA pulse plugin; missing "
                f"Debian package(s): {', '.join(missing)} "
                f"(apt-get install {' '.join(missing)})")
        self.sink_name = sink_name
        self.source_name = f"{sink_name}.monitor"
        self.rate = int(rate)
        self.channels = int(channels)
        self.startup_timeout = float(startup_timeout)
        self.proc: subprocess.Popen | None = None
        self._keeper: subprocess.Popen | None = None
        self._keeper_thread: threading.Thread | None = None
        self._keeper_bytes = 0
        self._keeper_first = threading.Event()
        self._players: list[subprocess.Popen] = []
        self._tmp: tempfile.TemporaryDirectory | None = None
        self.workdir: Path | None = None
        self.log_path: Path | None = None
        self._saved_env: dict[str, str | None] | None = None

    # ------------------------------------------------------------------
    # environment
    # ------------------------------------------------------------------
    @property
    def _runtime_dir(self) -> Path:
        assert self.workdir is not None
        return self.workdir / "run"

    @property
    def _pulse_runtime(self) -> Path:
        return self._runtime_dir / "pulse"

    @property
    def socket_path(self) -> Path:
        """Path of the daemon's native-protocol UNIX socket."""
        return self._pulse_runtime / "native"

    @property
    def env(self) -> dict[str, str]:
        """Variables a client process needs to talk to this daemon.

        Returns
        -------
        dict of str to str
            ``PULSE_SERVER`` (``unix:<socket>``; the essential one),
            ``PULSE_RUNTIME_PATH`` and ``PULSE_COOKIE`` (keep libpulse out of
            ``$HOME``).  Merge into the child's environment:
            ``env={**os.environ, **vm.env}``.
        """
        if self.workdir is None:
            raise RuntimeError("VirtualMicrophone is not started")
        return {
            "PULSE_SERVER": f"unix:{self.socket_path}",
            "PULSE_RUNTIME_PATH": str(self._pulse_runtime),
            "PULSE_COOKIE": str(self.workdir / "config" / "pulse" / "cookie"),
        }

    def _daemon_env(self) -> dict[str, str]:
        assert self.workdir is not None
        env = {k: v for k, v in os.environ.items()
               if not k.startswith("PULSE_") and k not in ("XDG_RUNTIME_DIR", "XDG_CONFIG_HOME")}
        env.update({
            "XDG_RUNTIME_DIR": str(self._runtime_dir),
            "PULSE_RUNTIME_PATH": str(self._pulse_runtime),
            "PULSE_STATE_PATH": str(self.workdir / "state"),
            "XDG_CONFIG_HOME": str(self.workdir / "config"),
        })
        return env

    def _client_env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PULSE_")}
        env.update(self.env)
        return env

    def apply_env(self, reinit_portaudio: bool = True) -> dict[str, str | None]:
        """Export :attr:`env` into ``os.environ`` of the current process.

        Needed only when *this* Python process captures with ``sounddevice``
        (e.g. an in-process test); child processes should get
        ``env={**os.environ, **vm.env}`` instead.

        PortAudio builds its device list once, in ``Pa_Initialize()``, which
        ``import sounddevice`` calls.  The ALSA ``pulse`` device is listed
        only if a PulseAudio server was reachable *at that moment*; if
        ``sounddevice`` was imported before this call, opening
        ``device="pulse"`` fails with ``ValueError: No input device matching
        'pulse'``.  Therefore, when ``sounddevice`` is already imported and
        ``reinit_portaudio`` is true, PortAudio is terminated and initialised
        again (``sounddevice._terminate()`` / ``_initialize()``), which
        refreshes the device list.  Do not do this while streams are open.

        Parameters
        ----------
        reinit_portaudio : bool, default True
            Re-initialise PortAudio if ``sounddevice`` is already imported.

        Returns
        -------
        dict of str to str or None
            The previous values (None where a variable was unset).  They are
            restored by :meth:`restore_env`, which :meth:`stop` calls.
        """
        previous = {k: os.environ.get(k) for k in self.env}
        if self._saved_env is None:
            self._saved_env = previous
        os.environ.update(self.env)
        sd = sys.modules.get("sounddevice")
        if reinit_portaudio and sd is not None:
            sd._terminate()
            sd._initialize()
        return previous

    def restore_env(self) -> None:
        """Undo :meth:`apply_env`; a no-op if it was never called."""
        if self._saved_env is None:
            return
        for key, value in self._saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        self._saved_env = None

    # ------------------------------------------------------------------
    # life cycle
    # ------------------------------------------------------------------
    @property
    def running(self) -> bool:
        """True while the daemon process is alive."""
        return self.proc is not None and self.proc.poll() is None

    def pactl(self, *args: str, check: bool = True, timeout: float = 10.0) -> str:
        """Run ``pactl ARGS`` against this daemon and return its stdout.

        Parameters
        ----------
        *args : str
            Arguments, e.g. ``"list", "short", "sources"``.
        check : bool, default True
            Raise RuntimeError on a non-zero exit status.
        timeout : float, default 10.0
            Seconds before the command is killed.
        """
        res = subprocess.run(["pactl", *args], env=self._client_env(), capture_output=True,
                             text=True, timeout=timeout)
        if check and res.returncode != 0:
            raise RuntimeError(f"pactl {' '.join(args)} failed ({res.returncode}): "
                               f"{res.stderr.strip()}; daemon log {self.log_path}")
        return res.stdout

    def start(self) -> "VirtualMicrophone":
        """Start the daemon, set the default source and attach the keeper.

        Returns
        -------
        VirtualMicrophone
            ``self``, ready: a capture stream opened now receives data
            within a few tens of milliseconds.

        Raises
        ------
        RuntimeError
            If the daemon exits, its socket does not answer, or the keeper
            gets no data within ``startup_timeout`` seconds.
        """
        if self.running:
            return self
        if self._tmp is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="hark-pulse-")
            self.workdir = Path(self._tmp.name)
            self.log_path = self.workdir / "pulseaudio.log"
        for sub in ("run", "run/pulse", "state", "config/pulse"):
            (self.workdir / sub).mkdir(parents=True, exist_ok=True)
        os.chmod(self._runtime_dir, 0o700)
        os.chmod(self._pulse_runtime, 0o700)

        sink_args = (f"module-null-sink sink_name={self.sink_name} rate={self.rate} "
                     f"channels={self.channels} format=float32le "
                     f"sink_properties=device.description=HarkVirtualMicrophone")
        cmd = [
            "pulseaudio", "--daemonize=no", "-n", "--exit-idle-time=-1",
            "--use-pid-file=yes", "--log-target=stderr", "--log-level=info",
            f"--load={sink_args}",
            "--load=module-native-protocol-unix auth-anonymous=1",
        ]
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                cmd, env=self._daemon_env(), stdin=subprocess.DEVNULL, stdout=log,
                stderr=subprocess.STDOUT, start_new_session=True, cwd=str(self.workdir))
        try:
            self._wait_ready()
            self.pactl("set-default-sink", self.sink_name)
            self.pactl("set-default-source", self.source_name)
            self._start_keeper()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self.proc is None or self.proc.poll() is not None:
                code = None if self.proc is None else self.proc.returncode
                raise RuntimeError(f"pulseaudio exited with code {code} during start-up; "
                                   f"log {self.log_path}:\n{_tail(self.log_path)}")
            if self.socket_path.exists():
                res = subprocess.run(["pactl", "info"], env=self._client_env(),
                                     capture_output=True, text=True, timeout=5)
                if res.returncode == 0:
                    return
            time.sleep(0.05)
        raise RuntimeError(f"pulseaudio did not answer on {self.socket_path} within "
                           f"{self.startup_timeout:.0f} s; log {self.log_path}:\n"
                           f"{_tail(self.log_path)}")

    def _start_keeper(self) -> None:
        """Attach a low-latency recorder so the null sink renders in small blocks."""
        self._keeper_first.clear()
        self._keeper_bytes = 0
        self._keeper = subprocess.Popen(
            ["pacat", "--record", f"--device={self.source_name}", "--latency-msec=20",
             "--format=s16le", f"--rate={self.rate}", f"--channels={self.channels}",
             "--client-name=hark-virtmic-keeper", "--raw"],
            env=self._client_env(), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL, start_new_session=True)

        def drain(stream) -> None:
            while True:
                try:
                    chunk = stream.read1(65536) if hasattr(stream, "read1") else stream.read(4096)
                except (OSError, ValueError):
                    return
                if not chunk:
                    return
                self._keeper_bytes += len(chunk)
                self._keeper_first.set()

        self._keeper_thread = threading.Thread(target=drain, args=(self._keeper.stdout,),
                                               name="virtmic-keeper", daemon=True)
        self._keeper_thread.start()
        # The first bytes arrive once the sink has finished the (up to 2 s)
        # block it was rendering before the keeper asked for low latency.
        if not self._keeper_first.wait(self.startup_timeout):
            raise RuntimeError(f"no audio from {self.source_name} within "
                               f"{self.startup_timeout:.0f} s; log {self.log_path}:\n"
                               f"{_tail(self.log_path)}")

    def play(self, paths: str | os.PathLike | Sequence[str | os.PathLike], wait: bool = True,
             timeout: float | None = None) -> subprocess.Popen | None:
        """Play one or more audio files into the virtual microphone.

        Files are played one after the other with ``paplay
        --device=<sink_name>`` (libsndfile: WAV, FLAC, OGG...).  ``paplay``
        returns when the file has been played out, i.e. after about its
        duration plus a few tens of milliseconds.

        Parameters
        ----------
        paths : path-like or sequence of path-like
            File(s) to play, in order.
        wait : bool, default True
            Block until playback has finished.  If False, return at once.
        timeout : float, optional
            With ``wait=True``: seconds before playback is killed and
            :class:`subprocess.TimeoutExpired` is raised.

        Returns
        -------
        subprocess.Popen or None
            None when ``wait`` is True; otherwise the running player (a
            ``paplay`` for one file, a ``sh`` loop of ``paplay`` for several),
            started in its own process group.  It is killed by :meth:`stop`
            if still running; to cut it short earlier use
            :meth:`stop_playback`.

        Raises
        ------
        FileNotFoundError
            If a file does not exist.
        RuntimeError
            If the daemon is not running, or (``wait=True``) paplay fails.
        """
        if not self.running:
            raise RuntimeError("VirtualMicrophone is not running")
        if isinstance(paths, (str, os.PathLike)):
            paths = [paths]
        files = [os.fspath(p) for p in paths]
        for f in files:
            if not os.path.isfile(f):
                raise FileNotFoundError(f)
        device = f"--device={self.sink_name}"
        if len(files) == 1:
            cmd = ["paplay", device, files[0]]
        else:
            cmd = ["sh", "-c", 'for f in "$@"; do paplay ' + device + ' "$f" || exit $?; done',
                   "hark-play", *files]
        proc = subprocess.Popen(cmd, env=self._client_env(), stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                start_new_session=True)
        self._players = [p for p in self._players if p.poll() is None]
        self._players.append(proc)
        if not wait:
            return proc
        try:
            _, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            _terminate(proc, group=True)
            raise
        if proc.returncode != 0:
            raise RuntimeError(f"paplay failed ({proc.returncode}): "
                               f"{err.decode(errors='replace').strip()}")
        return None

    def stop_playback(self) -> None:
        """Kill every player started by :meth:`play` that is still running."""
        for proc in self._players:
            _terminate(proc, timeout=2.0, group=True)
        self._players = []

    def kill(self) -> None:
        """Kill the daemon with SIGKILL, as a crash would, for device-loss tests.

        Players and the keeper go too (they lose their server anyway).  Unlike
        :meth:`stop` this keeps what :meth:`apply_env` exported, so clients in
        this process keep pointing at the same socket, and :meth:`start`
        brings the daemon back on it.  Safe to call when already stopped.
        """
        self.stop_playback()
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=5)  # reaped, so the stale pid file is seen as stale
            self.proc = None
        _terminate(self._keeper, timeout=2.0, group=True)
        self._keeper = None
        if self._keeper_thread is not None:
            self._keeper_thread.join(timeout=2.0)
            self._keeper_thread = None

    def stop(self) -> None:
        """Stop players, the keeper and the daemon; remove nothing else.

        Runs ``pulseaudio --kill`` with the private environment, then
        SIGTERM/SIGKILL on the daemon process if it is still there, so no
        process is left behind.  Also undoes :meth:`apply_env`.  Safe to call
        repeatedly.
        """
        self.stop_playback()
        _terminate(self._keeper, timeout=2.0, group=True)
        self._keeper = None
        if self._keeper_thread is not None:
            self._keeper_thread.join(timeout=2.0)
            self._keeper_thread = None
        if self.proc is not None:
            if self.proc.poll() is None and self.workdir is not None:
                with contextlib.suppress(OSError, subprocess.SubprocessError):
                    subprocess.run(["pulseaudio", "--kill"], env=self._daemon_env(),
                                   stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL, timeout=5)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.proc.wait(timeout=3)
            _terminate(self.proc, timeout=3.0, group=True)
            self.proc = None
        self.restore_env()


    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        where = self.socket_path if self.workdir else "-"
        return f"<VirtualMicrophone {self.sink_name} {self.rate} Hz at {where} {state}>"


# --------------------------------------------------------------------------
# MQTT collector
# --------------------------------------------------------------------------


class MqttMessage(NamedTuple):
    """One received MQTT message: a ``(topic, payload, retain)`` tuple."""

    topic: str
    payload: bytes
    retain: bool

    def text(self) -> str:
        """The payload decoded as UTF-8."""
        return self.payload.decode("utf-8")

    def json(self):
        """The payload parsed as JSON."""
        import json

        return json.loads(self.payload)


def _matches(topic_filter: str | None, topic: str) -> bool:
    if topic_filter is None:
        return True
    from paho.mqtt.client import topic_matches_sub

    return topic_matches_sub(topic_filter, topic)


class MqttCollector:
    """Subscribe to a topic filter and record every message, as a context manager.

    Uses a paho-mqtt 2.x client (``CallbackAPIVersion.VERSION2``, MQTT
    3.1.1, clean session) with its network loop in a background thread.  The
    subscription is (re)made in ``on_connect``, so it survives a broker
    restart; :meth:`__enter__` / :meth:`start` returns only after the first
    SUBACK, so anything published afterwards is seen.

    Parameters
    ----------
    host : str
        Broker host.
    port : int
        Broker port.
    topic_filter : str, default "#"
        Filter to subscribe to (QoS 1).
    client_id : str, optional
        MQTT client id; a unique one when omitted.
    timeout : float, default 10.0
        Seconds to wait for CONNACK + SUBACK in :meth:`start`.

    Attributes
    ----------
    connected : bool
        Whether the client is connected right now.
    connect_count : int
        Number of successful connections so far (grows on reconnect).

    Examples
    --------
    >>> with MqttCollector(broker.host, broker.port, "hark/#") as col:   # doctest: +SKIP
    ...     msgs = col.wait_for(lambda m: m.topic.endswith("/event"), timeout=30)
    """

    def __init__(self, host: str, port: int, topic_filter: str = "#",
                 client_id: str | None = None, timeout: float = 10.0) -> None:
        import paho.mqtt.client as mqtt

        self.host = host
        self.port = int(port)
        self.topic_filter = topic_filter
        self.timeout = float(timeout)
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._messages: list[MqttMessage] = []
        self._subscribed = threading.Event()
        self.connected = False
        self.connect_count = 0
        self.client = mqtt.Client(
            callback_api_version=mqtt.CallbackAPIVersion.VERSION2,
            client_id=client_id or f"hark-collector-{os.getpid()}-{id(self):x}",
            protocol=mqtt.MQTTv311, clean_session=True)
        self.client.reconnect_delay_set(min_delay=1, max_delay=2)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_subscribe = self._on_subscribe
        self.client.on_message = self._on_message
        self._started = False

    # paho callbacks (VERSION2 signatures) ---------------------------------
    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            return
        self.connected = True
        self.connect_count += 1
        client.subscribe(self.topic_filter, qos=1)

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        self.connected = False

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties) -> None:
        self._subscribed.set()

    def _on_message(self, client, userdata, msg) -> None:
        item = MqttMessage(msg.topic, bytes(msg.payload), bool(msg.retain))
        with self._cond:
            self._messages.append(item)
            self._cond.notify_all()

    # ------------------------------------------------------------------
    def start(self) -> "MqttCollector":
        """Connect, start the network loop and wait for the subscription.

        Raises
        ------
        TimeoutError
            If CONNACK + SUBACK do not arrive within ``timeout`` seconds.
        """
        if self._started:
            return self
        self._subscribed.clear()
        self.client.connect_async(self.host, self.port, keepalive=10)
        self.client.loop_start()
        self._started = True
        if not self._subscribed.wait(self.timeout):
            self.stop()
            raise TimeoutError(f"MqttCollector: no SUBACK for {self.topic_filter!r} from "
                               f"{self.host}:{self.port} within {self.timeout:.0f} s")
        return self

    def stop(self) -> None:
        """Disconnect and stop the network thread (idempotent)."""
        if not self._started:
            return
        with contextlib.suppress(Exception):
            self.client.disconnect()
        self.client.loop_stop()
        self._started = False
        self.connected = False

    def wait_subscribed(self, timeout: float = 10.0) -> bool:
        """Wait until (re)subscribed after a reconnect; return success.

        Call :meth:`clear_subscribed` before provoking a reconnect (e.g. a
        broker restart) and this afterwards.
        """
        return self._subscribed.wait(timeout)

    def clear_subscribed(self) -> None:
        """Forget that a SUBACK was seen (see :meth:`wait_subscribed`)."""
        self._subscribed.clear()

    def messages(self, topic_filter: str | None = None) -> list[MqttMessage]:
        """Return a snapshot of the messages received so far.

        Parameters
        ----------
        topic_filter : str, optional
            MQTT filter (``+`` and ``#`` wildcards) to select topics; all
            messages when omitted.

        Returns
        -------
        list of MqttMessage
            ``(topic, payload, retain)`` tuples in arrival order.
        """
        with self._lock:
            return [m for m in self._messages if _matches(topic_filter, m.topic)]

    def clear(self) -> None:
        """Forget every message received so far."""
        with self._lock:
            self._messages.clear()

    def wait_for(self, predicate: Callable[[MqttMessage], bool] | None = None,
                 timeout: float = 10.0, count: int = 1,
                 topic_filter: str | None = None) -> list[MqttMessage]:
        """Block until ``count`` received messages satisfy ``predicate``.

        Messages received before the call count too.

        Parameters
        ----------
        predicate : callable, optional
            ``predicate(message) -> bool``; every message matches when
            omitted.  Exceptions raised by it (e.g. a JSON decode error on a
            foreign payload) count as "no match".
        timeout : float, default 10.0
            Seconds to wait.
        count : int, default 1
            Number of matching messages required.
        topic_filter : str, optional
            MQTT filter applied before ``predicate``.

        Returns
        -------
        list of MqttMessage
            All matching messages received so far (at least ``count``).

        Raises
        ------
        TimeoutError
            If fewer than ``count`` messages matched in time; the message
            summarises what was received (count per topic and the last few
            payloads).
        """

        def select() -> list[MqttMessage]:
            out = []
            for m in self._messages:
                if not _matches(topic_filter, m.topic):
                    continue
                try:
                    ok = True if predicate is None else bool(predicate(m))
                except Exception:
                    ok = False
                if ok:
                    out.append(m)
            return out

        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                found = select()
                if len(found) >= count:
                    return found
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._cond.wait(min(remaining, 0.5))
            summary = self._summary_locked()
        raise TimeoutError(
            f"MqttCollector: {len(found)}/{count} matching message(s) after {timeout:.1f} s "
            f"(filter {topic_filter or self.topic_filter!r}); received: {summary}")

    def _summary_locked(self, last: int = 5) -> str:
        if not self._messages:
            return "nothing"
        counts: dict[str, int] = {}
        for m in self._messages:
            counts[m.topic] = counts.get(m.topic, 0) + 1
        per_topic = ", ".join(f"{t} x{n}" for t, n in counts.items())
        tail = "; ".join(f"{m.topic}: {m.payload[:200]!r}" for m in self._messages[-last:])
        return f"{len(self._messages)} message(s) [{per_topic}]; last: {tail}"

    def summary(self) -> str:
        """A one-line description of what was received (for messages)."""
        with self._lock:
            return self._summary_locked()

    def __enter__(self) -> "MqttCollector":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def mqtt_publish(host: str, port: int, topic: str, payload: bytes | str = b"", qos: int = 1,
                 retain: bool = False, timeout: float = 10.0) -> None:
    """Publish one message and wait until the broker has acknowledged it.

    A quiet replacement for ``paho.mqtt.publish.single`` (which logs a
    spurious "Client is not connected" line to stderr in paho 2.2).

    Parameters
    ----------
    host, port : str, int
        Broker address.
    topic : str
        Topic to publish to.
    payload : bytes or str, default b""
        Message body (str is encoded as UTF-8).
    qos : int, default 1
        QoS level.
    retain : bool, default False
        Set the retain flag.
    timeout : float, default 10.0
        Seconds to wait for connection and acknowledgement.

    Raises
    ------
    TimeoutError
        If the broker does not acknowledge in time.
    """
    import paho.mqtt.client as mqtt

    client = mqtt.Client(callback_api_version=mqtt.CallbackAPIVersion.VERSION2,
                         client_id=f"hark-pub-{os.getpid()}-{time.monotonic_ns():x}",
                         protocol=mqtt.MQTTv311)
    connected = threading.Event()
    client.on_connect = lambda c, u, f, rc, p: connected.set() if not rc.is_failure else None
    client.connect(host, int(port), keepalive=10)
    client.loop_start()
    try:
        if not connected.wait(timeout):
            raise TimeoutError(f"mqtt_publish: no CONNACK from {host}:{port} within {timeout} s")
        info = client.publish(topic, payload, qos=qos, retain=retain)
        info.wait_for_publish(timeout)
        if not info.is_published():
            raise TimeoutError(f"mqtt_publish: {topic!r} not acknowledged within {timeout} s")
    finally:
        client.disconnect()
        client.loop_stop()


# --------------------------------------------------------------------------
# signal comparison
# --------------------------------------------------------------------------


def xcorr_peak(captured, reference) -> tuple[float, int]:
    """Peak normalised cross-correlation of ``reference`` inside ``captured``.

    For every lag ``k`` the reference is compared with the equally long
    window ``captured[k:k+len(reference)]``:
    ``sum(w * r) / (||w|| * ||r||)``, i.e. a Pearson-like score in [-1, 1]
    that ignores gain.  Computed with FFTs, so minutes of audio are fine.

    Parameters
    ----------
    captured : array_like, shape (n,)
        The recording (longer than ``reference``), e.g. from the virtual mic.
    reference : array_like, shape (m,)
        The signal that was played, at the same sample rate.

    Returns
    -------
    peak : float
        Largest normalised correlation (by absolute value, sign kept).
    lag : int
        Sample index in ``captured`` where the reference starts at the peak.

    Raises
    ------
    ValueError
        If ``captured`` is shorter than ``reference``.
    """
    import numpy as np

    y = np.asarray(captured, dtype=np.float64).ravel()
    x = np.asarray(reference, dtype=np.float64).ravel()
    n, m = len(y), len(x)
    if n < m:
        raise ValueError(f"captured ({n} samples) is shorter than reference ({m})")
    nfft = 1 << int(np.ceil(np.log2(n + m)))
    corr = np.fft.irfft(np.fft.rfft(y, nfft) * np.conj(np.fft.rfft(x, nfft)), nfft)[: n - m + 1]
    energy = np.concatenate(([0.0], np.cumsum(y * y)))
    win = np.sqrt(np.maximum(energy[m:] - energy[:-m], 0.0))
    denom = win * np.sqrt(np.sum(x * x))
    score = np.where(denom > 1e-12, corr / np.maximum(denom, 1e-12), 0.0)
    k = int(np.argmax(np.abs(score)))
    return float(score[k]), k


# --------------------------------------------------------------------------
# tool check
# --------------------------------------------------------------------------


def require_tools(mqtt: bool = True, audio: bool = True) -> list[str]:
    """List what is missing for the end-to-end harness.

    Parameters
    ----------
    mqtt : bool, default True
        Check the broker side (``mosquitto``, paho-mqtt).
    audio : bool, default True
        Check the virtual microphone side (PulseAudio, ALSA pulse plugin,
        PortAudio, sounddevice, soundfile).

    Returns
    -------
    list of str
        One human-readable entry per missing item, naming the Debian or pip
        package, e.g. ``"mosquitto (Debian package mosquitto)"``; empty when
        everything is there.  Suitable for ``pytest.skip(", ".join(...))``.
    """
    import importlib.util

    missing: list[str] = []
    if mqtt:
        if find_mosquitto() is None:
            missing.append("mosquitto (Debian package mosquitto)")
        if importlib.util.find_spec("paho") is None:
            missing.append("paho-mqtt (pip package paho-mqtt>=2.0)")
    if audio:
        for tool, package in _PULSE_TOOLS.items():
            if _which(tool) is None:
                missing.append(f"{tool} (Debian package {package})")
        if not _alsa_pulse_plugin_present():
            missing.append("ALSA pulse plugin (Debian package libasound2-plugins)")
        if ctypes.util.find_library("portaudio") is None:
            missing.append("PortAudio (Debian package libportaudio2)")
        for module, package in (("sounddevice", "sounddevice"), ("soundfile", "soundfile")):
            if importlib.util.find_spec(module) is None:
                missing.append(f"{module} (pip package {package})")
    return missing
