"""A private PulseAudio daemon in a temporary directory, reachable only by whom we tell.

:class:`PulseAudioDaemon` is the server half of :class:`demo.virtual_mic.VirtualMicrophone`:
it starts ``pulseaudio`` as our own child, with its runtime, state and configuration folders
in a fresh temporary directory, and hands out the environment a client needs to reach it
(:attr:`PulseAudioDaemon.env`). What the daemon *is used for* (a null sink as a microphone,
playback into it) is the subclass's business.

Contents
--------
:class:`PulseAudioDaemon`
    Start, kill (as a crash would) and stop the daemon; ``pactl`` against it; export its
    environment into this process for in-process capture.

Reaching the daemon from a client
---------------------------------
A client process (for instance the node under test) reaches *this* daemon when its
environment contains the variables in :attr:`PulseAudioDaemon.env`::

    PULSE_SERVER=unix:<tmp>/run/pulse/native
    PULSE_RUNTIME_PATH=<tmp>/run/pulse
    PULSE_COOKIE=<tmp>/config/pulse/cookie

``PULSE_SERVER`` is the one that matters; the other two keep libpulse from
looking at (or creating files under) ``$HOME``.  Pass
``env={**os.environ, **daemon.env}`` to :class:`subprocess.Popen`.  In the *same*
Python process call :meth:`PulseAudioDaemon.apply_env` *before*
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
* **$HOME side effects.**  Any libpulse client (including ``import
  sounddevice``, whose PortAudio probes the ALSA ``pulse`` device) started
  *without* ``PULSE_SERVER``/``PULSE_RUNTIME_PATH``/``XDG_RUNTIME_DIR`` creates
  ``~/.config/pulse/<machine-id>-runtime`` and ``/tmp/pulse-XXXX``; with
  :attr:`PulseAudioDaemon.env` applied nothing is written outside the
  temporary directory.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Sequence

from demo.process import TempDirService, tail, terminate

__all__ = ["PulseAudioDaemon"]


class PulseAudioDaemon(TempDirService):
    """A private ``pulseaudio`` in the foreground, as a context manager.

    On :meth:`start` this runs, in a fresh temporary directory::

        pulseaudio --daemonize=no -n --exit-idle-time=-1 \\
            --load="<module 1>" ... \\
            --load="module-native-protocol-unix auth-anonymous=1"

    and waits until ``pactl info`` answers on its socket.  See the module docstring for the
    reasons behind each option.

    Parameters
    ----------
    modules : sequence of str, default ()
        ``--load`` arguments (module name and its arguments) loaded before the native
        protocol, e.g. ``["module-null-sink sink_name=virtmic rate=16000"]``.
    startup_timeout : float, default 10.0
        Seconds to wait for the daemon socket to answer.

    Attributes
    ----------
    env : dict of str to str
        Environment variables a client process needs to reach this daemon
        (``PULSE_SERVER``, ``PULSE_RUNTIME_PATH``, ``PULSE_COOKIE``).
    workdir : pathlib.Path
        Temporary directory holding the runtime dir, state and daemon log.
    log_path : pathlib.Path
        The daemon log (``pulseaudio.log``).
    proc : subprocess.Popen or None
        The running daemon, or None while stopped.

    Raises
    ------
    RuntimeError
        If the daemon exits or its socket does not answer within ``startup_timeout``.
    """

    def __init__(self, modules: Sequence[str] = (), startup_timeout: float = 10.0) -> None:
        self.modules = list(modules)
        self.startup_timeout = float(startup_timeout)
        self.proc: subprocess.Popen | None = None
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
            ``env={**os.environ, **daemon.env}``.
        """
        if self.workdir is None:
            raise RuntimeError(f"{type(self).__name__} is not started")
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
        ``env={**os.environ, **daemon.env}`` instead.

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

    def start(self) -> "PulseAudioDaemon":
        """Start the daemon and wait until it answers on its socket.

        Returns
        -------
        PulseAudioDaemon
            ``self``.

        Raises
        ------
        RuntimeError
            If the daemon exits or its socket does not answer within ``startup_timeout``
            seconds; the message quotes the tail of the log.  Whatever was started is
            stopped again (:meth:`stop`).
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

        cmd = [
            "pulseaudio", "--daemonize=no", "-n", "--exit-idle-time=-1",
            "--use-pid-file=yes", "--log-target=stderr", "--log-level=info",
            *(f"--load={module}" for module in self.modules),
            "--load=module-native-protocol-unix auth-anonymous=1",
        ]
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                cmd, env=self._daemon_env(), stdin=subprocess.DEVNULL, stdout=log,
                stderr=subprocess.STDOUT, start_new_session=True, cwd=str(self.workdir))
        try:
            self._wait_ready()
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
                                   f"log {self.log_path}:\n{tail(self.log_path)}")
            if self.socket_path.exists():
                res = subprocess.run(["pactl", "info"], env=self._client_env(),
                                     capture_output=True, text=True, timeout=5)
                if res.returncode == 0:
                    return
            time.sleep(0.05)
        raise RuntimeError(f"pulseaudio did not answer on {self.socket_path} within "
                           f"{self.startup_timeout:.0f} s; log {self.log_path}:\n"
                           f"{tail(self.log_path)}")

    def kill(self) -> None:
        """Kill the daemon with SIGKILL, as a crash would, for device-loss tests.

        Unlike :meth:`stop` this keeps what :meth:`apply_env` exported, so clients in this
        process keep pointing at the same socket, and :meth:`start` brings the daemon back
        on it.  Safe to call when already stopped.
        """
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=5)  # reaped, so the stale pid file is seen as stale
            self.proc = None

    def stop(self) -> None:
        """Stop the daemon; remove nothing else.

        Runs ``pulseaudio --kill`` with the private environment, then
        SIGTERM/SIGKILL on the daemon process if it is still there, so no
        process is left behind.  Also undoes :meth:`apply_env`.  Safe to call
        repeatedly.
        """
        if self.proc is not None:
            if self.proc.poll() is None and self.workdir is not None:
                with contextlib.suppress(OSError, subprocess.SubprocessError):
                    subprocess.run(["pulseaudio", "--kill"], env=self._daemon_env(),
                                   stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL, timeout=5)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.proc.wait(timeout=3)
            terminate(self.proc, timeout=3.0, group=True)
            self.proc = None
        self.restore_env()

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        where = self.socket_path if self.workdir else "-"
        return f"<{type(self).__name__} at {where} {state}>"
