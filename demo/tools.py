"""What the end-to-end harness needs from the machine, for skip messages and ``make demo``.

The broker side (:func:`demo.broker.missing_broker_tools`) and the microphone side
(:func:`demo.virtual_mic.missing_audio_tools`) each know their own requirements; this module
asks either or both.
"""

from __future__ import annotations

from demo.broker import missing_broker_tools
from demo.virtual_mic import missing_audio_tools

__all__ = ["require_tools"]


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
    missing: list[str] = []
    if mqtt:
        missing += missing_broker_tools()
    if audio:
        missing += missing_audio_tools()
    return missing
