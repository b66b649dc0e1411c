"""Child-process plumbing shared by the broker and the virtual microphone.

Both :class:`demo.broker.MosquittoBroker` and :class:`demo.pulse.PulseAudioDaemon` run a real
program as our own child, in its own process group and its own temporary directory, and must
leave nothing behind: this module is the one place that knows how.

Contents
--------
:class:`TempDirService`
    Context-manager base: ``start()`` on enter; ``stop()`` and removal of the temporary
    directory on exit, also when ``start()`` fails half-way.
:func:`terminate`
    SIGTERM, wait, SIGKILL and reap one child (or its whole process group).
:func:`which`
    An executable on ``PATH`` or in ``/usr/sbin``, ``/sbin``.
:func:`tail`
    The end of a log file, for error messages.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path
from typing import Iterable

__all__ = ["TempDirService", "terminate", "which", "tail"]


def which(name: str, extra_dirs: Iterable[str] = ("/usr/sbin", "/sbin")) -> str | None:
    """Find an executable on ``PATH`` or, failing that, in ``extra_dirs``.

    Parameters
    ----------
    name : str
        Program name, e.g. ``"mosquitto"``.
    extra_dirs : iterable of str, default ("/usr/sbin", "/sbin")
        Folders searched after ``PATH`` (Debian puts daemons in ``/usr/sbin``, which is not
        on every non-root ``PATH``).

    Returns
    -------
    str or None
        The executable's path, or None when it is nowhere.
    """
    found = shutil.which(name)
    if found:
        return found
    for directory in extra_dirs:
        candidate = os.path.join(directory, name)
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    return None


def tail(path: Path, n_chars: int = 2000) -> str:
    """Return the last ``n_chars`` characters of a text file ('' if it cannot be read).

    Parameters
    ----------
    path : pathlib.Path
        The file, typically a daemon log.
    n_chars : int, default 2000
        How many characters to keep from the end.

    Returns
    -------
    str
        The tail, decoded with replacement characters where it is not valid text.
    """
    try:
        return path.read_text(errors="replace")[-n_chars:]
    except OSError:
        return ""


def terminate(proc: subprocess.Popen | None, timeout: float = 5.0, group: bool = False) -> None:
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


class TempDirService:
    """Context-manager plumbing for a process that lives in its own temporary directory.

    Subclasses implement ``start()`` (returning ``self``) and ``stop()``, and keep their
    :class:`tempfile.TemporaryDirectory` in ``self._tmp``. Entering the context calls
    ``start()``; leaving it, or a ``start()`` that fails half-way, calls :meth:`close`.
    """

    _tmp: "tempfile.TemporaryDirectory | None" = None

    def start(self):
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

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
