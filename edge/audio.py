"""Audio input: reading files and capturing from a microphone.

Both sources deliver 16 kHz mono float32 blocks in [-1, 1] to the same downstream code,
so replaying a recording exercises exactly the path a live microphone does.
"""
from __future__ import annotations

import logging
import queue
import threading
import time
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from edge.health import HealthEvent
from firmware_config.errors import HarkError

log = logging.getLogger(__name__)

__all__ = ["AudioFileError", "NoInputDeviceError", "load_audio", "RingBuffer",
           "MicrophoneSource", "FileSource", "open_source"]


class AudioFileError(HarkError, ValueError):
    """An audio file is missing, unreadable or not audio; the message names the file."""


class NoInputDeviceError(HarkError, RuntimeError):
    """No usable input device; the message names ``audio.device``, what it was set to and
    what to check."""


def load_audio(path: str | Path, sample_rate: int = 16000) -> np.ndarray:
    """Read a WAV/FLAC/OGG file as mono float32 at ``sample_rate``.

    Multi-channel files are averaged to mono; other sampling rates are resampled with a
    polyphase filter (:func:`scipy.signal.resample_poly`).

    Parameters
    ----------
    path : str or Path
    sample_rate : int
        Target rate in Hz.

    Returns
    -------
    np.ndarray, shape (n_samples,), float32, values in [-1, 1]

    Raises
    ------
    AudioFileError
        If the file does not exist or cannot be decoded (the message names the file).
    """
    import soundfile as sf

    path = Path(path)
    if not path.is_file():
        raise AudioFileError(f"audio file not found: {path}")
    try:
        y, sr = sf.read(str(path), dtype="float32", always_2d=True)
    except Exception as exc:  # soundfile raises LibsndfileError/RuntimeError variants
        raise AudioFileError(f"cannot read audio file {path}: {exc}") from exc
    y = y.mean(axis=1)
    if sr != sample_rate:
        from math import gcd

        from scipy.signal import resample_poly

        g = gcd(sr, sample_rate)
        y = resample_poly(y, sample_rate // g, sr // g).astype(np.float32)
    return y


class RingBuffer:
    """Fixed-capacity single-producer/single-consumer sample FIFO.

    The audio callback writes, the processing thread reads. When the reader falls more
    than ``capacity`` samples behind, the oldest samples are overwritten and counted in
    :attr:`overruns` (samples lost).

    Parameters
    ----------
    capacity : int
        In samples.
    """

    def __init__(self, capacity: int):
        self._buf = np.zeros(capacity, dtype=np.float32)
        self._cap = capacity
        self._write = 0  # total samples ever written
        self._read = 0  # total samples ever read
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self.overruns = 0

    def write(self, x: np.ndarray) -> None:
        x = np.asarray(x, dtype=np.float32).ravel()
        with self._cond:
            n = len(x)
            if n > self._cap:
                x = x[-self._cap:]
                self.overruns += n - self._cap
                self._write += n - self._cap
                n = self._cap
            start = self._write % self._cap
            first = min(n, self._cap - start)
            self._buf[start:start + first] = x[:first]
            self._buf[: n - first] = x[first:]
            self._write += n
            behind = self._write - self._read
            if behind > self._cap:
                self.overruns += behind - self._cap
                self._read = self._write - self._cap
            self._cond.notify_all()

    def read(self, n: int, timeout: float | None = None) -> np.ndarray | None:
        """Block until ``n`` samples are available and return them (or None on timeout)."""
        with self._cond:
            if not self._cond.wait_for(lambda: self._write - self._read >= n, timeout):
                return None
            start = self._read % self._cap
            idx = (start + np.arange(n)) % self._cap
            out = self._buf[idx].copy()
            self._read += n
            return out

    @property
    def available(self) -> int:
        with self._lock:
            return self._write - self._read


# How to see what PortAudio offers: true on a node installed with only the `edge` extra.
_LIST_INPUTS = "list the inputs with `python -m sounddevice`"


def _resolve_device(device: str | int | None, sample_rate: int):
    """``(index, name)`` of the input device that ``audio.device`` (``device``) names.

    Raises
    ------
    NoInputDeviceError
        Naming ``audio.device``, its value and the inputs there are (if any).
    """
    import sounddevice as sd

    configured = f"audio.device is {device!r}" if device is not None else \
        "audio.device is null (the default input)"
    try:
        devices = sd.query_devices()
    except Exception as exc:
        raise NoInputDeviceError(f"{configured}, but the audio devices cannot be listed "
                                 f"({exc}); is libportaudio2 installed?") from exc
    inputs = [(i, d) for i, d in enumerate(devices) if d["max_input_channels"] > 0]
    if not inputs:
        raise NoInputDeviceError(
            f"{configured}, but there is no audio input device at all. Connect a "
            "microphone (the node's user needs the `audio` group), "
            f"{_LIST_INPUTS}, and set audio.device to its name or index")
    if device is None:
        try:
            idx = sd.default.device[0]
            if idx is not None and idx >= 0 and devices[idx]["max_input_channels"] > 0:
                return idx, devices[idx]["name"]
        except Exception:
            pass
        return inputs[0][0], inputs[0][1]["name"]
    if isinstance(device, int) or (isinstance(device, str) and device.isdigit()):
        idx = int(device)
        for i, d in inputs:
            if i == idx:
                return i, d["name"]
        raise NoInputDeviceError(f"audio.device: input device index {idx} does not exist; "
                                 f"inputs are {[(i, d['name']) for i, d in inputs]} "
                                 f"({_LIST_INPUTS})")
    exact = [(i, d) for i, d in inputs if d["name"] == device]
    partial = [(i, d) for i, d in inputs if device.lower() in d["name"].lower()]
    match = exact or partial
    if not match:
        raise NoInputDeviceError(f"audio.device: no input device matches {device!r}; "
                                 f"inputs are {[d['name'] for _, d in inputs]} "
                                 f"({_LIST_INPUTS})")
    return match[0][0], match[0][1]["name"]


class MicrophoneSource:
    """Capture 16 kHz mono float32 audio with PortAudio (sounddevice) into a ring buffer.

    After :meth:`start` a watchdog thread owns the stream. When the device is lost (the
    stream stops: PortAudio's callback thread ends on an ALSA error, which is what
    happens when a USB microphone is unplugged or the PulseAudio server behind the ALSA
    ``pulse`` device dies; or no callback arrives for ``stall_seconds``) it puts a
    ``device`` :class:`~edge.health.HealthEvent` (active) on :attr:`faults`, closes the
    stream and tries to reopen the device, re-resolved by name on a freshly initialised
    PortAudio, after 1, 2, 4 ... s (capped at ``reopen_max_seconds``); on success it
    puts the ``device`` event that ends the fault. Meanwhile :meth:`blocks` keeps
    yielding empty blocks, so the consumer's loop keeps running.

    Parameters
    ----------
    device : str, int or None
        Input device name (exact or substring) or index; None for the default input.
    sample_rate : int
        In Hz.
    block_seconds : float
        Callback block length in seconds.
    ring_seconds : float
        Ring buffer capacity in seconds.
    reopen_max_seconds : float
        Longest wait between two attempts to reopen a lost device, in seconds.

    Attributes
    ----------
    device_name : str
    overflows : int
        Number of callbacks that reported a PortAudio input overflow.
    faults : queue.SimpleQueue of HealthEvent
        ``device`` events (lost / reopened), put by the watchdog thread; the consumer
        drains it.
    stall_seconds : float
        No callback for this long counts as a lost device: max(5 s, 10 blocks).
    finite : bool
        False: a microphone never runs out.

    Notes
    -----
    Use one instance per process: reopening re-initialises PortAudio (its device list
    is built only at initialisation), which would also close any other open stream, and
    ``sounddevice`` silences stderr (file descriptor 2) for the few tens of milliseconds
    that takes.
    """

    finite = False

    def __init__(self, device=None, sample_rate: int = 16000, block_seconds: float = 0.1,
                 ring_seconds: float = 60.0, reopen_max_seconds: float = 60.0):
        self.sample_rate = sample_rate
        self.blocksize = int(round(block_seconds * sample_rate))
        self.ring = RingBuffer(int(ring_seconds * sample_rate))
        self.overflows = 0
        self.reopen_max_seconds = float(reopen_max_seconds)
        self.stall_seconds = max(5.0, 10 * block_seconds)
        self.faults: queue.SimpleQueue[HealthEvent] = queue.SimpleQueue()
        self._device = device
        self._stream = None
        self.device_name = None
        self._last_callback = 0.0  # time.monotonic() of the latest callback
        self._finished = threading.Event()  # set by PortAudio when the stream stops
        self._closing = threading.Event()
        self._watchdog: threading.Thread | None = None

    @classmethod
    def from_config(cls, audio, *, min_ring_seconds: float = 0.0) -> "MicrophoneSource":
        """The microphone an ``audio`` config section describes (not started).

        Parameters
        ----------
        audio : firmware_config.schema.AudioSection
            Uses ``device``, ``sample_rate``, ``block_seconds``, ``ring_seconds`` and
            ``reopen_max_seconds``.
        min_ring_seconds : float
            Ring buffer of at least this many seconds (a recording command that reads
            slower than real time now and then).
        """
        return cls(audio.device, audio.sample_rate, audio.block_seconds,
                   max(audio.ring_seconds, min_ring_seconds), audio.reopen_max_seconds)

    def _callback(self, indata, frames, time_info, status):
        self._last_callback = time.monotonic()
        if status and status.input_overflow:
            self.overflows += 1
        self.ring.write(indata[:, 0])

    def _open(self) -> None:
        """Resolve the device and start a stream on it.

        Raises
        ------
        NoInputDeviceError
            If no matching input device exists or the stream cannot be opened.
        """
        import sounddevice as sd

        idx, name = _resolve_device(self._device, self.sample_rate)
        self._finished.clear()
        self._last_callback = time.monotonic()
        stream = None
        try:
            stream = sd.InputStream(device=idx, channels=1, samplerate=self.sample_rate,
                                    dtype="float32", blocksize=self.blocksize,
                                    callback=self._callback,
                                    finished_callback=self._finished.set)
            stream.start()
        except Exception as exc:
            if stream is not None:
                stream.close(ignore_errors=True)
            raise NoInputDeviceError(f"cannot open input device {name!r} at "
                                     f"{self.sample_rate} Hz mono: {exc}") from exc
        self._stream = stream
        self.device_name = name

    def start(self) -> "MicrophoneSource":
        """Open the device and start capturing (and the watchdog thread).

        Returns
        -------
        MicrophoneSource
            ``self``.

        Raises
        ------
        NoInputDeviceError
            If no matching input device exists or the stream cannot be opened: a device
            that is missing at start is a configuration error, not a fault to ride out.
        """
        self._open()
        log.info("capturing from %r at %d Hz", self.device_name, self.sample_rate)
        self._closing.clear()
        self._watchdog = threading.Thread(target=self._watch, name="audio-watchdog",
                                          daemon=True)
        self._watchdog.start()
        return self

    def _lost(self) -> str | None:
        """Why the open stream counts as lost, or None while it delivers audio."""
        try:
            stopped = self._finished.is_set() or not self._stream.active
        except Exception as exc:  # sd.PortAudioError from a broken stream
            return f"PortAudio error: {exc}"
        if stopped:
            return "the input stream stopped (PortAudio reported an error)"
        silent = time.monotonic() - self._last_callback
        if silent > self.stall_seconds:
            return f"no audio from it for {silent:.1f} s"
        return None

    def _watch(self) -> None:
        """Watchdog thread: detect a lost device and reopen it; closes the stream at exit."""
        try:
            while not self._closing.is_set():
                self._finished.wait(0.25)
                reason = None if self._closing.is_set() else self._lost()
                if reason is not None:
                    self._reopen(reason)
        finally:
            self._close_stream()

    def _close_stream(self) -> None:
        stream, self._stream = self._stream, None
        if stream is not None:
            try:
                stream.close(ignore_errors=True)
            except Exception as exc:  # a dead backend may fail even to close
                log.debug("closing the input stream: %s", exc)

    def _reopen(self, reason: str) -> None:
        """Close the lost stream and retry opening it with backoff until success or close()."""
        import sounddevice as sd

        name, lost_at = self.device_name, time.monotonic()
        delay = min(1.0, self.reopen_max_seconds)
        log.error("input device %r lost: %s; reopening with backoff", name, reason)
        self.faults.put(HealthEvent(
            "device", True, f"input device {name!r} lost: {reason}; reopening with backoff",
            {"device": name, "attempt": 0, "retry_in_s": delay}))
        # May block while a frozen backend times out; only this thread waits for it.
        self._close_stream()
        attempt = 0
        while not self._closing.wait(delay):
            attempt += 1
            try:
                # PortAudio lists devices once, at initialisation: re-initialise it (no
                # stream of ours is open now) so a device that came back is found.
                if sd._initialized:
                    sd._terminate()
                sd._initialize()
                self._open()
            except Exception as exc:  # NoInputDeviceError, sd.PortAudioError
                delay = min(2 * delay, self.reopen_max_seconds)
                log.warning("input device %r: reopen attempt %d failed (%s); next attempt in "
                            "%g s", name, attempt, exc, delay)
                continue
            down = round(time.monotonic() - lost_at, 1)
            log.info("input device %r reopened after %d attempt(s), %g s without audio",
                     self.device_name, attempt, down)
            self.faults.put(HealthEvent(
                "device", False,
                f"input device {self.device_name!r} reopened after {attempt} attempt(s)",
                {"device": self.device_name, "attempt": attempt, "down_s": down}))
            return

    def blocks(self, stop: threading.Event | None = None) -> Iterator[np.ndarray]:
        """Yield captured blocks until ``stop`` is set.

        Parameters
        ----------
        stop : threading.Event, optional
            Checked at least every 0.5 s.

        Yields
        ------
        np.ndarray, shape (blocksize,) or (0,), float32
            A block of audio, or an empty array when no audio arrived for 0.5 s (device
            lost or stalled), so that the consumer's loop keeps running; skip those.
        """
        while stop is None or not stop.is_set():
            b = self.ring.read(self.blocksize, timeout=0.5)
            yield np.zeros(0, np.float32) if b is None else b

    def close(self, timeout: float = 5.0) -> None:
        """Stop the watchdog and close the stream.

        Parameters
        ----------
        timeout : float
            Seconds to wait for the watchdog; a backend that hangs (a frozen PulseAudio
            server) is then left to the daemon thread, which closes the stream when it can.
        """
        self._closing.set()
        if self._watchdog is not None:
            self._watchdog.join(timeout)
            if self._watchdog.is_alive():
                log.warning("input device %r did not close within %g s; leaving it behind",
                            self.device_name, timeout)
            self._watchdog = None
        else:
            self._close_stream()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.close()


class FileSource:
    """Replay WAV/FLAC files as if they were captured, block by block.

    Parameters
    ----------
    paths : sequence of str or Path
        Played one after another.
    sample_rate : int
    block_seconds : float
    realtime : bool
        If True, sleep so that blocks arrive at the rate a microphone would deliver them.

    Attributes
    ----------
    faults : queue.SimpleQueue of HealthEvent
        Always empty (a file is never lost); there so that both sources look alike.
    finite : bool
        True: the replay ends.
    duration_seconds : float
        Total length of all files.

    Raises
    ------
    AudioFileError
        On the first unreadable file (checked up front, before anything is yielded).
    """

    finite = True

    def __init__(self, paths: Sequence[str | Path], sample_rate: int = 16000,
                 block_seconds: float = 0.1, realtime: bool = False):
        self.sample_rate = sample_rate
        self.blocksize = int(round(block_seconds * sample_rate))
        self.realtime = realtime
        self.paths = [Path(p) for p in paths]
        self._signals = [load_audio(p, sample_rate) for p in self.paths]
        self.overflows = 0
        self.faults: queue.SimpleQueue[HealthEvent] = queue.SimpleQueue()  # always empty
        self.device_name = "file:" + ",".join(p.name for p in self.paths)
        self.duration_seconds = sum(len(y) for y in self._signals) / sample_rate

    def start(self) -> "FileSource":
        return self

    def blocks(self, stop: threading.Event | None = None) -> Iterator[np.ndarray]:
        t0 = time.monotonic()
        sent = 0
        y = np.concatenate(self._signals) if self._signals else np.zeros(0, np.float32)
        for i in range(0, len(y), self.blocksize):
            if stop is not None and stop.is_set():
                return
            if self.realtime:
                delay = t0 + sent / self.sample_rate - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
            b = y[i:i + self.blocksize]
            sent += len(b)
            yield b

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def open_source(cfg, *, start: bool = False) -> MicrophoneSource | FileSource:
    """The audio source a node config asks for: its ``audio.files`` replayed, else the microphone.

    Parameters
    ----------
    cfg : firmware_config.schema.NodeConfig
        ``audio`` section; file paths are resolved against the config's folder.
    start : bool
        Start the source (open the device) before returning it.

    Raises
    ------
    AudioFileError
        An unreadable file in ``audio.files``.
    NoInputDeviceError
        With ``start``: the configured input device cannot be opened.
    """
    au = cfg.audio
    if au.files:
        src = FileSource([cfg.resolve(f) for f in au.files], au.sample_rate, au.block_seconds,
                         au.realtime)
    else:
        src = MicrophoneSource.from_config(au)
    return src.start() if start else src
