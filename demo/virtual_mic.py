"""A virtual microphone: what is played into a PulseAudio null sink is what the node records.

:class:`VirtualMicrophone` is a private :class:`demo.pulse.PulseAudioDaemon` whose null sink
``virtmic`` doubles as the default *source* (``virtmic.monitor``).  Whatever is played into the
sink with ``paplay`` (:meth:`VirtualMicrophone.play`) is what a ``sounddevice`` input stream on
the ALSA ``pulse`` device records, in any process whose environment holds
:attr:`VirtualMicrophone.env` (see :mod:`demo.pulse` for reaching the daemon, in a child
process or in this one).

Contents
--------
:class:`VirtualMicrophone`
    The microphone, as a context manager: null sink, default source, low-latency keeper,
    playback, and a crash (:meth:`VirtualMicrophone.kill`) for device-loss tests.
:func:`missing_audio_tools`
    What is missing for the microphone side, for ``pytest.skip`` messages.
:func:`xcorr_peak`
    Peak normalised cross-correlation, to find played audio in a capture.

Pitfalls (found by experiment on Debian bookworm, PulseAudio 16.1)
------------------------------------------------------------------
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
* **Leading silence.**  The null sink always runs, so a capture stream
  records silence until ``paplay`` has started (typically 20-100 ms after
  the ``paplay`` process is launched); align by cross-correlation, not by
  index.
"""

from __future__ import annotations

import ctypes.util
import glob
import importlib.util
import os
import subprocess
import threading
from typing import Sequence

import numpy as np

from demo.process import tail, terminate, which
from demo.pulse import PulseAudioDaemon

__all__ = ["VirtualMicrophone", "missing_audio_tools", "xcorr_peak"]

#: Programs the microphone runs, and the Debian package of each.
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
        if which(tool) is None and package not in missing:
            missing.append(package)
    if not _alsa_pulse_plugin_present():
        missing.append("libasound2-plugins")
    if ctypes.util.find_library("portaudio") is None:
        missing.append("libportaudio2")
    return missing


def missing_audio_tools() -> list[str]:
    """List what is missing for the virtual-microphone side of the harness.

    Returns
    -------
    list of str
        One human-readable entry per missing item (PulseAudio programs, the ALSA pulse
        plugin, PortAudio, and the pip packages sounddevice and soundfile), naming its
        Debian or pip package, e.g. ``"pactl (Debian package pulseaudio-utils)"``; empty
        when everything is there.
    """
    missing: list[str] = []
    for tool, package in _PULSE_TOOLS.items():
        if which(tool) is None:
            missing.append(f"{tool} (Debian package {package})")
    if not _alsa_pulse_plugin_present():
        missing.append("ALSA pulse plugin (Debian package libasound2-plugins)")
    if ctypes.util.find_library("portaudio") is None:
        missing.append("PortAudio (Debian package libportaudio2)")
    for module, package in (("sounddevice", "sounddevice"), ("soundfile", "soundfile")):
        if importlib.util.find_spec(module) is None:
            missing.append(f"{module} (pip package {package})")
    return missing


class VirtualMicrophone(PulseAudioDaemon):
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
    docstrings (this one and :mod:`demo.pulse`) for the reasons behind each step.

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
        sink_args = (f"module-null-sink sink_name={self.sink_name} rate={self.rate} "
                     f"channels={self.channels} format=float32le "
                     f"sink_properties=device.description=HarkVirtualMicrophone")
        super().__init__(modules=[sink_args], startup_timeout=startup_timeout)
        self._keeper: subprocess.Popen | None = None
        self._keeper_thread: threading.Thread | None = None
        self._keeper_bytes = 0
        self._keeper_first = threading.Event()
        self._players: list[subprocess.Popen] = []

    # ------------------------------------------------------------------
    # life cycle
    # ------------------------------------------------------------------
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
        super().start()
        try:
            self.pactl("set-default-sink", self.sink_name)
            self.pactl("set-default-source", self.source_name)
            self._start_keeper()
        except BaseException:
            self.stop()
            raise
        return self

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
                               f"{tail(self.log_path)}")

    def _stop_keeper(self) -> None:
        terminate(self._keeper, timeout=2.0, group=True)
        self._keeper = None
        if self._keeper_thread is not None:
            self._keeper_thread.join(timeout=2.0)
            self._keeper_thread = None

    def kill(self) -> None:
        """Kill the daemon with SIGKILL, as a crash would, for device-loss tests.

        Players and the keeper go too (they lose their server anyway).  Unlike
        :meth:`stop` this keeps what :meth:`apply_env` exported, so clients in
        this process keep pointing at the same socket, and :meth:`start`
        brings the daemon back on it.  Safe to call when already stopped.
        """
        self.stop_playback()
        super().kill()
        self._stop_keeper()

    def stop(self) -> None:
        """Stop players, the keeper and the daemon; remove nothing else.

        Runs ``pulseaudio --kill`` with the private environment, then
        SIGTERM/SIGKILL on the daemon process if it is still there, so no
        process is left behind.  Also undoes :meth:`apply_env`.  Safe to call
        repeatedly.
        """
        self.stop_playback()
        self._stop_keeper()
        super().stop()

    # ------------------------------------------------------------------
    # playback
    # ------------------------------------------------------------------
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
            terminate(proc, group=True)
            raise
        if proc.returncode != 0:
            raise RuntimeError(f"paplay failed ({proc.returncode}): "
                               f"{err.decode(errors='replace').strip()}")
        return None

    def stop_playback(self) -> None:
        """Kill every player started by :meth:`play` that is still running."""
        for proc in self._players:
            terminate(proc, timeout=2.0, group=True)
        self._players = []

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        where = self.socket_path if self.workdir else "-"
        return f"<VirtualMicrophone {self.sink_name} {self.rate} Hz at {where} {state}>"


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
