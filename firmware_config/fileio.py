"""File I/O every package shares: atomic writes, SHA-256 of a file, a secret file's first line.

Atomic writes go to a temporary file in the same folder, fsync, rename, fsync the folder: a
reader therefore sees either the old file or the complete new one, never a half-written
file, even across a power cut. Configs (flashing), calibrations, enrolled keywords, model
bundles and reports are all written this way.

It lives in ``firmware_config``, the leaf package that imports nothing else of the project,
so that flashing a config and the node's artifacts share one implementation.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable

from firmware_config.errors import HarkError

__all__ = ["atomic_write", "atomic_write_bytes", "atomic_write_json", "sha256_file",
           "is_npz_file", "SecretFileError", "read_secret_file"]


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


def is_npz_file(path: str | Path) -> bool:
    """Whether ``path`` starts like an ``.npz`` archive (a ZIP file, as ``np.savez`` writes).

    Checked before ``np.load``, which takes any other file for pickled data and answers
    with advice to load it unsafely; an artifact loader says instead that the file is not
    its kind of artifact.

    Raises
    ------
    OSError
        If the file cannot be read.
    """
    with open(path, "rb") as f:
        return f.read(4) == b"PK\x03\x04"


class SecretFileError(HarkError, ValueError):
    """A secret file (e.g. ``mqtt.password_file``) that cannot be used; the message names the
    field and the file, never the content."""


def read_secret_file(path: Path, field: str) -> str:
    """The first line of ``path`` (trailing newline stripped): a password kept out of configs.

    Parameters
    ----------
    path : Path
    field : str
        What the file was given as (``"mqtt.password_file"``, ``"--password-file"``), for
        the message.

    Raises
    ------
    SecretFileError
        If the file cannot be read or its first line is empty.
    """
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise SecretFileError(f"{field}: cannot read {path}: "
                              f"{getattr(exc, 'strerror', None) or exc}") from None
    secret = text.splitlines()[0] if text else ""
    if not secret:
        raise SecretFileError(f"{field}: {path} is empty (expected the password on its first line)")
    return secret
