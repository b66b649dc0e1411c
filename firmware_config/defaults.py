"""The shipped default node config as a document to start from, with overrides.

Tests, the demo and the bench all need "the default config, but with this broker, these
models and this spool": :func:`default_config_doc` is the one way to get it, so a key added to
``default.yaml`` reaches every one of them.
"""
from __future__ import annotations

import copy
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml

__all__ = ["DEFAULT_CONFIG", "PATH_KEYS", "default_config_doc", "write_config_doc"]

#: The shipped default config (every key, with comments).
DEFAULT_CONFIG = Path(__file__).resolve().with_name("default.yaml")

#: ``(section, key)`` of every file path in the schema; relative paths are resolved
#: against the config file's folder.
PATH_KEYS = (("spool", "path"), ("asd", "model"), ("asd", "calibration"),
             ("kws", "model"), ("kws", "keywords"))


@lru_cache(maxsize=1)
def _shipped() -> dict[str, Any]:
    return yaml.safe_load(DEFAULT_CONFIG.read_text(encoding="utf-8"))


def default_config_doc(**sections: dict[str, Any]) -> dict[str, Any]:
    """The shipped default config as a dict, its paths absolute, with sections overridden.

    Parameters
    ----------
    **sections : dict
        Per top-level section (``node``, ``mqtt``, ``audio``, ``asd``, ...), the keys to set;
        each is merged into that section with ``dict.update`` (one level deep), so
        ``mqtt={"port": 1884}`` keeps every other ``mqtt`` key.

    Returns
    -------
    dict
        A fresh document (deep copy; the caller may mutate it). The relative paths of
        ``default.yaml`` (:data:`PATH_KEYS`) are made absolute against its folder, so the
        document can be written anywhere; overrides are applied after that, as given.

    Raises
    ------
    KeyError
        A section that ``default.yaml`` does not have (the message names it).
    """
    doc = copy.deepcopy(_shipped())
    for section, key in PATH_KEYS:
        value = doc[section][key]
        if value is not None and not Path(value).is_absolute():
            doc[section][key] = str((DEFAULT_CONFIG.parent / value).resolve())
    for name, values in sections.items():
        if name not in doc or not isinstance(doc[name], dict):
            raise KeyError(f"default.yaml has no section {name!r}")
        doc[name].update(values)
    return doc


def write_config_doc(path: str | Path, doc: dict[str, Any]) -> Path:
    """Write a config document as YAML (keys in document order) and return ``path``."""
    path = Path(path)
    path.write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
    return path
