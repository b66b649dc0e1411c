"""Machine-type labels and the fold split of the leave-one-machine-type-out evaluation
(:mod:`trainer.asd_lomo`).

Every audio file below the data folder is labelled with a normalised **machine type**
(:func:`list_typed_clips`): the names of the DCASE 2020-2023 and MIMII sources are normalised,
so fan from MIMII, DCASE 2020 and DCASE 2023 is one type (:data:`MACHINE_TYPES`,
:data:`FOLDER_ALIASES`). :func:`lomo_split` gives the clips of the fold that holds out one
type: training clips of every other type, calibration and test clips of the held-out one.

Pure NumPy (no TensorFlow).

Entry points: :func:`machine_type_of`, :func:`list_typed_clips`, :func:`lomo_split`.
"""
from __future__ import annotations

import dataclasses
import re
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from trainer.data import AUDIO_SUFFIXES, ClipLabel, parse_dcase_name

__all__ = ["MACHINE_TYPES", "FOLDER_ALIASES", "TypedClip", "machine_type_of", "list_typed_clips",
           "LomoSplit", "lomo_split"]

#: The machine types of DCASE 2020-2023 Task 2 and MIMII, spelled as DCASE spells them.
MACHINE_TYPES: tuple[str, ...] = ("ToyCar", "ToyConveyor", "ToyTrain", "bearing", "fan",
                                  "gearbox", "pump", "slider", "valve")

#: Folders whose name carries no type: ``dcase2020_id00`` holds a file byte-identical to a
#: DCASE 2020 slider id_00 clip (shared data README), so it is slider.
FOLDER_ALIASES: dict[str, str] = {"dcase2020_id00": "slider"}

_TYPE_BY_LOWER = {t.lower(): t for t in MACHINE_TYPES}
_DCASE2020_STEM = re.compile(r"^(normal|anomaly)_id_\d+_\d+$")


# --------------------------------------------------------------------------- labelling


@dataclass(frozen=True)
class TypedClip:
    """One labelled recording with its normalised machine type.

    Attributes
    ----------
    path : Path
    label : ClipLabel
        ``label.machine`` is the normalised type (one of :data:`MACHINE_TYPES`).
    dataset : str
        The first folder below the data folder (which recording campaign it came from).
    """

    path: Path
    label: ClipLabel
    dataset: str

    @property
    def machine(self) -> str:
        """The normalised machine type."""
        return self.label.machine

    @property
    def unit(self) -> str:
        """``<dataset>/section_<ss>``: one recorded machine (the calibration is stratified
        over these)."""
        return f"{self.dataset}/section_{self.label.section}"


def machine_type_of(names: Sequence[str]) -> str | None:
    """The machine type named by the first of ``names`` that names one.

    A name names a type when it is one (case-insensitive), is in :data:`FOLDER_ALIASES`, or
    one of its ``_``/``-``-separated tokens is one (``mimii_fan_id00`` -> ``fan``).

    Parameters
    ----------
    names : sequence of str
        Candidates in order of preference, e.g. the machine of a DCASE name, then the
        folders from the file upwards.

    Returns
    -------
    str or None
        One of :data:`MACHINE_TYPES`.
    """
    for name in names:
        if name.lower() in _TYPE_BY_LOWER:
            return _TYPE_BY_LOWER[name.lower()]
        if name in FOLDER_ALIASES:
            return FOLDER_ALIASES[name]
        for token in re.split(r"[_\-\s]+", name):
            if token.lower() in _TYPE_BY_LOWER:
                return _TYPE_BY_LOWER[token.lower()]
    return None


def _parse(path: Path) -> ClipLabel | None:
    """Labels from a DCASE 2022+ name, the official dev layout, or a DCASE 2020 / MIMII
    name or folder (machine left as ``"?"`` where the name does not carry it)."""
    try:
        return parse_dcase_name(path)
    except ValueError:
        pass
    if path.stem.startswith("section_") and path.parent.name in ("train", "test"):
        try:
            return parse_dcase_name(path.with_name(
                f"{path.parent.parent.name}_{path.parent.name}_{path.name}"))
        except ValueError:
            pass
    if _DCASE2020_STEM.match(path.stem) or \
            path.parent.name.lower() in ("normal", "abnormal", "anomaly"):
        return parse_dcase_name(path, machine_hint="?")
    return None


def list_typed_clips(data_dir: str | Path) -> tuple[list[TypedClip], list[Path]]:
    """Label every audio file below ``data_dir`` with its normalised machine type.

    The type is taken from the DCASE name when it carries one, else from the nearest folder
    that names one (:func:`machine_type_of`).

    Parameters
    ----------
    data_dir : str or Path

    Returns
    -------
    clips : list of TypedClip, sorted by path
    skipped : list of Path
        Audio files whose labels or machine type could not be read.

    Raises
    ------
    FileNotFoundError
        If ``data_dir`` does not exist or holds no labelled audio file.
    """
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise FileNotFoundError(f"evaluation data folder not found: {data_dir}")
    clips: list[TypedClip] = []
    skipped: list[Path] = []
    for f in sorted(data_dir.rglob("*")):
        if f.suffix.lower() not in AUDIO_SUFFIXES or not f.is_file():
            continue
        lab = _parse(f)
        folders = f.relative_to(data_dir).parts[:-1]
        mtype = machine_type_of([lab.machine, *reversed(folders)]) if lab else None
        if lab is None or mtype is None:
            skipped.append(f)
            continue
        dataset = folders[0] if folders else ""
        clips.append(TypedClip(f, dataclasses.replace(lab, machine=mtype, dataset=dataset),
                               dataset))
    if not clips:
        raise FileNotFoundError(
            f"no audio with a known machine type under {data_dir}: expected DCASE names or "
            f"folders naming one of {', '.join(MACHINE_TYPES)}")
    return clips, skipped


# --------------------------------------------------------------------------- split


@dataclass
class LomoSplit:
    """The clips of one fold: training without the held-out type, calibration and test of it.

    Attributes
    ----------
    held_out : str
    train : list of TypedClip
        Normal clips of every other type.
    calibration : list of TypedClip
        Normal clips of ``held_out``.
    test : list of TypedClip
        The other normal and all anomalous clips of ``held_out``.
    """

    held_out: str
    train: list[TypedClip]
    calibration: list[TypedClip]
    test: list[TypedClip]

    def counts(self) -> dict[str, Any]:
        """Clip counts: training clips and types, calibration and test clips per domain."""
        def per_domain(clips):
            return {d: sum(c.label.domain == d for c in clips) for d in ("source", "target")}

        normal = [c for c in self.test if not c.label.is_anomaly]
        return {"train_clips": len(self.train),
                "train_types": sorted({c.machine for c in self.train}),
                "calibration": per_domain(self.calibration),
                "test_normal": per_domain(normal),
                "test_anomalous": len(self.test) - len(normal)}


def _stratified(pool: list[TypedClip], k: int, rng: np.random.Generator) -> list[TypedClip]:
    """``k`` clips of ``pool`` spread over its units in proportion to their sizes."""
    groups: dict[str, list[TypedClip]] = defaultdict(list)
    for c in pool:
        groups[c.unit].append(c)
    keyed = []
    for g, (unit, items) in enumerate(sorted(groups.items())):
        order = rng.permutation(len(items))
        offset = rng.uniform()  # breaks ties between units at random, reproducibly
        keyed += [((r + 0.5) / len(items), offset, g, items[i]) for r, i in enumerate(order)]
    keyed.sort(key=lambda t: t[:3])
    return [t[3] for t in keyed[:k]]


def lomo_split(clips: Sequence[TypedClip], held_out: str, *, n_source: int = 30,
               n_target: int = 5, min_calibration: int = 2, seed: int = 0) -> LomoSplit:
    """Training, calibration and test clips of the fold that holds out one machine type.

    Parameters
    ----------
    clips : sequence of TypedClip
    held_out : str
        The machine type never heard in training.
    n_source, n_target : int, keyword-only
        Most calibration clips per domain ("a few minutes" of normal operation).
    min_calibration : int, keyword-only
        Fewest calibration clips; the node needs two non-overlapping windows.
    seed : int, keyword-only
        Seed of the (stratified) choice of calibration clips.

    Returns
    -------
    LomoSplit
        Each domain gives ``min(cap, n_normal_of_domain // 2)`` calibration clips, spread over
        the type's units; when that is fewer than ``min_calibration``, more are taken (from
        the larger domain) as long as one normal test clip remains.

    Raises
    ------
    ValueError
        If ``held_out`` has no clip, or too few normal clips for ``min_calibration``
        calibration clips and one normal test clip.
    """
    own = [c for c in clips if c.machine == held_out]
    if not own:
        raise ValueError(f"no clip of machine type {held_out!r}")
    rng = np.random.default_rng(seed)
    normals = [c for c in own if not c.label.is_anomaly]
    pools = {d: [c for c in normals if c.label.domain == d] for d in ("source", "target")}
    chosen: list[TypedClip] = []
    for dom, cap in (("source", n_source), ("target", n_target)):
        chosen += _stratified(pools[dom], min(cap, len(pools[dom]) // 2), rng)
    if len(chosen) < min_calibration:
        if len(normals) < min_calibration + 1:
            raise ValueError(f"machine type {held_out!r} has {len(normals)} normal clip(s): "
                             f"need {min_calibration} for calibration and one for testing")
        for dom in sorted(pools, key=lambda d: -len(pools[d])):
            rest = [c for c in pools[dom] if c not in chosen]
            room = len(normals) - len(chosen) - 1
            chosen += _stratified(rest, max(0, min(min_calibration - len(chosen), room)), rng)
    cal = set(chosen)
    train = [c for c in clips if c.machine != held_out and not c.label.is_anomaly]
    return LomoSplit(held_out, train, sorted(cal, key=lambda c: str(c.path)),
                     [c for c in own if c not in cal])
