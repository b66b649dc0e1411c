"""Audio health: input-device faults, sustained silence and clipping as health events.

A node on a factory floor can lose its USB microphone, have a cable pulled (the input
goes silent) or have its gain set too high (the input clips). :class:`AudioHealth` finds
the last two in the sample stream; :class:`edge.audio.MicrophoneSource` reports the
first. Both report :class:`HealthEvent` transitions (a fault began / ended), never one
event per block, so the node can publish each one as an ``event/health`` message.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from edge.levels import CLIP_LEVEL, power_dbfs

__all__ = ["HealthEvent", "AudioHealth"]


@dataclass(frozen=True)
class HealthEvent:
    """One health transition: a fault began (``active``) or ended.

    Parameters
    ----------
    kind : str
        ``"device"`` (input device lost / reopened), ``"silence"`` or ``"clipping"``.
    active : bool
        True: the fault began; False: it ended (recovered).
    message : str
        Human-readable, for logs and dashboards.
    detail : dict
        JSON-serialisable numbers and strings, e.g. ``{"level_dbfs": -93.2,
        "seconds": 60.0}``, ``{"clipped_fraction": 0.02, "seconds": 5.0}`` or
        ``{"device": "pulse", "attempt": 3, "retry_in_s": 4.0}``.
    """

    kind: str
    active: bool
    message: str
    detail: dict = field(default_factory=dict)


class AudioHealth:
    """Silence and clipping detector with hysteresis over a block stream.

    The stream is cut into consecutive one-second frames (counted from the first sample
    pushed, independent of the block size); each frame gives an RMS level in dBFS
    (:mod:`edge.levels`: RMS 1.0 = 0 dBFS, floor -120 dBFS) and the fraction of its samples with
    ``|x| >= 0.999``. Only running sums are kept between blocks (no sample buffer).

    * **Silence** begins once ``ceil(silence_seconds)`` consecutive frames are below
      ``silence_dbfs``. It ends at the first frame at or above
      ``silence_dbfs + HYSTERESIS_DB`` (3 dB), so a noise floor hovering around the
      threshold does not toggle the fault; a frame in between neither ends it nor counts
      as new silence.
    * **Clipping** begins once ``ceil(clipping_seconds)`` consecutive frames each have a
      clipped fraction above ``clipping_fraction``; it ends after the same number of
      consecutive clean frames (fraction at or below the limit), so intermittent
      clipping (a machine's periodic bangs) is one long fault, not one per bang.

    Parameters
    ----------
    sample_rate : int
        In Hz; one frame is ``sample_rate`` samples.
    silence_dbfs : float
        Level in dBFS below which a frame is silent.
    silence_seconds : float
        Silent this long (rounded up to whole seconds) before the fault begins.
    clipping_fraction : float
        Fraction (0-1] of clipped samples in a frame above which the frame clips.
    clipping_seconds : float
        Clipping (and, to end it, clean) this long, rounded up to whole seconds.

    Raises
    ------
    ValueError
        If ``sample_rate``, ``silence_seconds`` or ``clipping_seconds`` is not positive,
        or ``clipping_fraction`` is outside (0, 1].
    """

    HYSTERESIS_DB = 3.0

    def __init__(self, sample_rate: int = 16000, silence_dbfs: float = -70.0,
                 silence_seconds: float = 60.0, clipping_fraction: float = 0.001,
                 clipping_seconds: float = 5.0):
        if sample_rate <= 0 or silence_seconds <= 0 or clipping_seconds <= 0:
            raise ValueError(f"sample_rate ({sample_rate}), silence_seconds ({silence_seconds}) "
                             f"and clipping_seconds ({clipping_seconds}) must be positive")
        if not 0 < clipping_fraction <= 1:
            raise ValueError(f"clipping_fraction must be in (0, 1], got {clipping_fraction}")
        self.sample_rate = int(sample_rate)
        self.silence_dbfs = float(silence_dbfs)
        self.clipping_fraction = float(clipping_fraction)
        self._silence_frames = math.ceil(silence_seconds)
        self._clipping_frames = math.ceil(clipping_seconds)
        # the partial frame: samples, sum of squares, clipped samples
        self._n = 0
        self._sumsq = 0.0
        self._clipped = 0
        self._silent_run = 0  # consecutive silent frames (while active: length of the silence)
        self._clip_run = 0  # consecutive clipping frames
        self._clean_run = 0  # consecutive clean frames
        self._clip_peak = 0.0  # largest clipped fraction of the current clipping fault
        self._active = {"silence": False, "clipping": False}

    @classmethod
    def from_config(cls, audio_cfg) -> "AudioHealth":
        """Build from the ``audio`` section of a node config.

        Parameters
        ----------
        audio_cfg : firmware_config.schema.AudioSection
            Uses ``sample_rate``, ``silence_dbfs``, ``silence_seconds``,
            ``clipping_fraction`` and ``clipping_seconds``.

        Returns
        -------
        AudioHealth
        """
        return cls(audio_cfg.sample_rate, audio_cfg.silence_dbfs, audio_cfg.silence_seconds,
                   audio_cfg.clipping_fraction, audio_cfg.clipping_seconds)

    @property
    def active(self) -> dict[str, bool]:
        """Faults in progress, ``{"silence": bool, "clipping": bool}`` (a copy)."""
        return dict(self._active)

    def push(self, block: np.ndarray) -> list[HealthEvent]:
        """Feed audio; return the transitions it caused.

        Parameters
        ----------
        block : np.ndarray, shape (n,), float32
            Mono samples in [-1, 1], any length (zero-length blocks are a no-op).

        Returns
        -------
        list of HealthEvent
            Faults that began or ended within this block, in stream order; usually empty.
        """
        x = np.asarray(block, dtype=np.float32).reshape(-1)
        if not len(x):
            return []
        sr = self.sample_rate
        # Segments of x split at frame boundaries; all but possibly the last are whole frames
        # (the first one completing the partial frame carried over from earlier blocks).
        starts = np.concatenate(([0], np.arange(sr - self._n, len(x), sr)))
        sumsq = np.add.reduceat(np.square(x, dtype=np.float64), starts)
        clipped = np.add.reduceat(np.abs(x) >= CLIP_LEVEL, starts, dtype=np.int64)
        lengths = np.diff(np.append(starts, len(x)))
        sumsq[0] += self._sumsq
        clipped[0] += self._clipped
        lengths[0] += self._n
        whole = len(starts) if lengths[-1] == sr else len(starts) - 1
        events: list[HealthEvent] = []
        for ms, c in zip((sumsq[:whole] / sr).tolist(), (clipped[:whole] / sr).tolist()):
            events += self._frame(power_dbfs(ms), c)
        if whole == len(starts):  # the block ended on a frame boundary
            self._n, self._sumsq, self._clipped = 0, 0.0, 0
        else:
            self._n, self._sumsq = int(lengths[-1]), float(sumsq[-1])
            self._clipped = int(clipped[-1])
        return events

    def _frame(self, level: float, fraction: float) -> list[HealthEvent]:
        """Update both detectors with one whole second; return its transitions."""
        shown = round(level, 1)
        events = []
        if level < self.silence_dbfs:
            self._silent_run += 1
            if not self._active["silence"] and self._silent_run >= self._silence_frames:
                self._active["silence"] = True
                events.append(HealthEvent(
                    "silence", True,
                    f"input silent: level below {self.silence_dbfs:g} dBFS for "
                    f"{self._silent_run} s (now {shown:g} dBFS); is the microphone connected?",
                    {"level_dbfs": shown, "seconds": float(self._silent_run),
                     "threshold_dbfs": self.silence_dbfs}))
        elif not self._active["silence"]:
            self._silent_run = 0
        elif level >= self.silence_dbfs + self.HYSTERESIS_DB:
            self._active["silence"] = False
            events.append(HealthEvent(
                "silence", False,
                f"input sound again at {shown:g} dBFS after {self._silent_run} s of silence",
                {"level_dbfs": shown, "seconds": float(self._silent_run)}))
            self._silent_run = 0

        if fraction > self.clipping_fraction:
            self._clip_run, self._clean_run = self._clip_run + 1, 0
            self._clip_peak = max(self._clip_peak, fraction)
            if not self._active["clipping"] and self._clip_run >= self._clipping_frames:
                self._active["clipping"] = True
                events.append(HealthEvent(
                    "clipping", True,
                    f"input clipping: more than {100 * self.clipping_fraction:g}% of samples "
                    f"at full scale in each of the last {self._clip_run} s (up to "
                    f"{100 * self._clip_peak:.2f}%); lower the input gain",
                    {"clipped_fraction": round(self._clip_peak, 6),
                     "seconds": float(self._clip_run)}))
        else:
            self._clip_run, self._clean_run = 0, self._clean_run + 1
            if not self._active["clipping"]:
                self._clip_peak = 0.0
            elif self._clean_run >= self._clipping_frames:
                self._active["clipping"] = False
                events.append(HealthEvent(
                    "clipping", False,
                    f"input clipping ended: {self._clean_run} s without clipping",
                    {"clipped_fraction": round(fraction, 6), "seconds": float(self._clean_run)}))
                self._clip_peak = 0.0
        return events
