"""Measurement 3: model sizes, the int8 ``.tflite`` file against the float32 size recorded at
export time (``float_tflite_size_bytes`` in the bundle metadata): :func:`model_sizes`."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

__all__ = ["model_sizes"]


def model_sizes(model: Path) -> dict[str, Any]:
    """int8 file size against the float32 size recorded in the bundle metadata.

    Parameters
    ----------
    model : Path
        The int8 ``.tflite`` file; its ``.json`` metadata is read from next to it.

    Returns
    -------
    dict
        ``int8_bytes``, ``float_bytes`` (None when the metadata lacks
        ``float_tflite_size_bytes``), ``ratio`` (int8 / float32 or None), ``metadata_size_bytes``,
        ``model_id``.
    """
    meta = json.loads(model.with_suffix(".json").read_text())
    int8 = model.stat().st_size
    flt = meta.get("float_tflite_size_bytes")
    return {"int8_bytes": int8, "float_bytes": flt,
            "ratio": (int8 / flt) if flt else None,
            "metadata_size_bytes": meta.get("size_bytes"), "model_id": meta.get("model_id")}
