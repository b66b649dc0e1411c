"""Atomic file writes: temporary file in the same folder, fsync, rename, fsync the folder.

A reader therefore sees either the old file or the complete new one, never a
half-written file, even across a power cut.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable

__all__ = ["atomic_write", "atomic_write_bytes", "atomic_write_json", "sha256_file"]


def atomic_write(path: str | Path, writer: Callable[[Any], None], mode: str = "wb") -> Path:
    """Write ``path`` atomically; ``writer(fileobj)`` produces the content.

    A replaced file keeps its permission bits; a new one gets ``0o644`` (``mkstemp``
    alone would leave ``0o600``, unreadable for a report server or another user).

    Raises
    ------
    OSError
        If the folder is not writable; the target is left untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        try:
            os.fchmod(fd, path.stat().st_mode & 0o7777 if path.exists() else 0o644)
        except OSError:
            pass
        with os.fdopen(fd, mode) as f:
            writer(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    try:
        dfd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:
        pass
    return path


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    return atomic_write(path, lambda f: f.write(data))


def atomic_write_json(path: str | Path, obj: Any) -> Path:
    text = json.dumps(obj, indent=2, sort_keys=True) + "\n"
    return atomic_write(path, lambda f: f.write(text), mode="w")


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
