"""The root of the project's own exceptions.

Every error the project raises on purpose (bad config, bad artifact, missing model, audio
device, enrollment, MQTT setup, spool, ...) derives from :class:`HarkError`, so a command-line
tool catches one type, prints ``error: <message>`` and exits with a status instead of a
traceback. Subclasses keep the built-in base that describes them (``ValueError`` for bad
input, ``RuntimeError`` for a state that cannot go on), so ``except ValueError`` still works.

It lives in ``firmware_config`` because that package is the leaf every other one reads
(the config and its errors import nothing from the rest of the project).
"""
from __future__ import annotations

__all__ = ["HarkError"]


class HarkError(Exception):
    """Base class of every error the project raises on purpose; ``str(exc)`` is the message
    for the user (names the field, file or topic and what was expected)."""
