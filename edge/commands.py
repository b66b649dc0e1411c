"""Commands a node accepts on ``<root>/cmd/<name>``, validated before anything is done.

A command payload is a JSON object (UTF-8, at most :data:`MAX_PAYLOAD_BYTES`)::

    {"schema": 1, "request_id": "op-42", ...arguments}

* ``cmd/recalibrate``: learn normal operation again from the live audio and swap in the new
  calibration when done (the node keeps scoring with the old one meanwhile). Arguments:
  ``seconds`` (default ``asd.auto_calibration_seconds``, at least twice the window) and
  ``threshold_method`` (default ``asd.threshold.method``).
* ``cmd/reload``: re-read the config file, the calibration and the enrolled keywords from
  disk and apply them; anything invalid is rejected and the running setup is kept.

Each command is acknowledged on ``<root>/reply`` (see :func:`edge.payloads.reply`): ``accepted``
then ``done``/``failed`` for work that takes a while, or ``rejected`` with a message that says
what was wrong. ``schema`` and ``request_id`` are optional; unknown keys are rejected. An
empty payload is how MQTT clears a retained message; the node ignores it.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from firmware_config.errors import HarkError
from firmware_config.schema import check_threshold_method, format_errors

__all__ = ["COMMANDS", "MAX_PAYLOAD_BYTES", "Command", "CommandError", "parse_command"]

MAX_PAYLOAD_BYTES = 65536


class CommandError(HarkError, ValueError):
    """A command that is rejected; ``str(exc)`` says why (never empty).

    Attributes
    ----------
    command : str
        The command name as received (may be unknown or empty).
    request_id : str or None
        The ``request_id`` if one could be read, so the rejection can echo it.
    """

    def __init__(self, command: str, message: str, request_id: str | None = None):
        super().__init__(message)
        self.command = command
        self.request_id = request_id


class _Args(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    schema_version: Literal[1] = Field(1, alias="schema")
    request_id: Optional[str] = Field(None, min_length=1, max_length=128)


class RecalibrateArgs(_Args):
    seconds: Optional[float] = Field(None, gt=0, le=86400,
                                     description="how long to learn normal operation")
    threshold_method: Optional[str] = None

    @field_validator("seconds", mode="before")
    @classmethod
    def _number(cls, v):
        if isinstance(v, bool):
            raise ValueError("must be a number of seconds")
        return float(v) if isinstance(v, int) else v

    _method = field_validator("threshold_method")(check_threshold_method)


class ReloadArgs(_Args):
    pass


COMMANDS: dict[str, type[_Args]] = {"recalibrate": RecalibrateArgs, "reload": ReloadArgs}


@dataclass(frozen=True)
class Command:
    """A validated command: ``name`` is a key of :data:`COMMANDS`."""

    name: str
    request_id: Optional[str]
    args: dict[str, Any] = field(default_factory=dict)


def _request_id(payload: bytes) -> str | None:
    """The payload's ``request_id`` if it has a readable one, to echo in a rejection."""
    try:
        doc = json.loads(payload.decode("utf-8")) if len(payload) <= MAX_PAYLOAD_BYTES else None
    except (ValueError, RecursionError):
        return None
    rid = doc.get("request_id") if isinstance(doc, dict) else None
    return rid if isinstance(rid, str) and 0 < len(rid) <= 128 else None


def parse_command(name: str, payload: bytes) -> Command:
    """Validate a command received on ``cmd/<name>``.

    Parameters
    ----------
    name : str
        The topic below ``cmd/`` (``"reload"``; ``"a/b"`` for deeper topics, which are
        unknown commands).
    payload : bytes
        The MQTT payload: a JSON object (``{}`` for no arguments).

    Returns
    -------
    Command

    Raises
    ------
    CommandError
        Unknown command, payload too large, not UTF-8, not a JSON object, or invalid
        arguments (the message names each bad field).
    """
    if name not in COMMANDS:
        raise CommandError(name, f"unknown command {name!r}; known commands: "
                                 f"{', '.join(sorted(COMMANDS))}", _request_id(payload))
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise CommandError(name, f"payload of {len(payload)} bytes is larger than "
                                 f"{MAX_PAYLOAD_BYTES}")
    try:
        doc: Any = json.loads(payload.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise CommandError(name, f"payload is not UTF-8 ({exc.reason} at byte "
                                 f"{exc.start})") from None
    except (ValueError, RecursionError) as exc:
        raise CommandError(name, f"payload is not JSON ({exc}); send {{}} for a command "
                                 "without arguments") from None
    if not isinstance(doc, dict):
        raise CommandError(name, f"payload must be a JSON object, got {type(doc).__name__}")
    try:
        args = COMMANDS[name].model_validate(doc)
    except ValidationError as exc:
        errors = "; ".join(f"{loc}: {msg}" for loc, msg in format_errors(exc))
        raise CommandError(name, f"invalid arguments: {errors}", _request_id(payload)) from None
    data = args.model_dump(exclude={"schema_version", "request_id"}, exclude_none=True)
    return Command(name, args.request_id, data)
