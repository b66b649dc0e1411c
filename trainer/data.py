"""Training data: DCASE-layout folders with labels parsed from the file names.

DCASE 2020-2024 Task 2 names look like
``<machine>_<split>_section_<ss>_<domain>_<split>_<normal|anomaly>_<nnnn>_<attributes>.wav``
(2022+) or ``<normal|anomaly>_id_<nn>_<nnnnnnnn>.wav`` (2020). The auxiliary
classification task uses machine type x section x attribute combinations as classes
(thesis Section 5.3.1); a dataset without attributes falls back to machine type (or the
folder name when even that is not recorded). A recipe may add the source dataset to the
class (:data:`CLASS_LABELS`, :meth:`ClipLabel.class_key`), and pseudo-attributes where the
attributes are missing (:mod:`trainer.pseudo_labels`).
"""
from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path


__all__ = ["ClipLabel", "CLASS_LABELS", "DEFAULT_CLASS_LABELS", "check_class_labels",
           "parse_dcase_name", "list_clips", "training_data_hash"]

AUDIO_SUFFIXES = (".wav", ".flac")

#: The labels a training class may be made of, in the order they are joined.
CLASS_LABELS = ("machine", "section", "attributes", "dataset")
#: The thesis' classes (Section 5.3.1): machine type x section x attributes.
DEFAULT_CLASS_LABELS = ("machine", "section", "attributes")

_DCASE2022 = re.compile(
    r"^(?P<machine>[A-Za-z0-9-]+)_(?:train|test)_section_(?P<section>\d+)_"
    r"(?P<domain>source|target)_(?:train|test)_(?P<condition>normal|anomaly)_"
    r"(?P<index>\d+)(?:_(?P<attributes>.+))?$")
_DCASE2020 = re.compile(r"^(?P<condition>normal|anomaly)_id_(?P<section>\d+)_(?P<index>\d+)$")


def check_class_labels(labels) -> None:
    """Raise ``ValueError`` unless ``labels`` include ``"machine"`` and come from
    :data:`CLASS_LABELS`."""
    if set(labels) - set(CLASS_LABELS) or "machine" not in labels:
        raise ValueError(f"class_labels must include 'machine' and come from {CLASS_LABELS}, "
                         f"got {list(labels)}")


@dataclass(frozen=True)
class ClipLabel:
    """Labels of one recording.

    Attributes
    ----------
    machine : str
        Machine type (or a name given by the folder for data that does not record it).
    section : str
        DCASE section / machine id, e.g. ``"00"``.
    domain : str
        ``"source"`` or ``"target"`` (``"source"`` when unknown).
    is_anomaly : bool
    attributes : str
        Attribute string, e.g. ``"vel_9_loc_A"``; empty when absent.
    dataset : str
        The recording campaign (source folder) the clip came from; empty when unknown.
    """

    machine: str
    section: str
    domain: str
    is_anomaly: bool
    attributes: str = ""
    dataset: str = ""

    @property
    def class_name(self) -> str:
        """Auxiliary-task class: machine x section x attributes."""
        return self.class_key(DEFAULT_CLASS_LABELS)

    def class_key(self, labels=DEFAULT_CLASS_LABELS) -> str:
        """The auxiliary-task class made of ``labels`` (a subset of :data:`CLASS_LABELS`,
        joined in that order; empty attributes and datasets are left out).

        Raises
        ------
        ValueError
            If ``labels`` names an unknown label or lacks ``"machine"``.
        """
        check_class_labels(labels)
        parts = [self.machine]
        if "section" in labels:
            parts.append(f"section_{self.section}")
        if "attributes" in labels and self.attributes:
            parts.append(self.attributes)
        if "dataset" in labels and self.dataset:
            parts.append(f"from_{self.dataset}")
        return "_".join(parts)


def parse_dcase_name(path: str | Path, machine_hint: str | None = None) -> ClipLabel:
    """Parse the labels of a DCASE-style file name.

    Parameters
    ----------
    path : str or Path
    machine_hint : str, optional
        Machine type to use for names that do not carry one (DCASE 2020 style, MIMII).

    Returns
    -------
    ClipLabel

    Raises
    ------
    ValueError
        If the name follows no known convention and no ``machine_hint`` is given.
    """
    p = Path(path)
    m = _DCASE2022.match(p.stem)
    if m:
        return ClipLabel(m["machine"], m["section"], m["domain"], m["condition"] == "anomaly",
                         m["attributes"] or "")
    m = _DCASE2020.match(p.stem)
    if m and machine_hint:
        return ClipLabel(machine_hint, m["section"], "source", m["condition"] == "anomaly")
    if machine_hint:
        parent = p.parent.name.lower()
        return ClipLabel(machine_hint, "00", "source", parent in ("abnormal", "anomaly"))
    raise ValueError(f"cannot parse labels from file name {p.name!r}; expected the DCASE "
                     "pattern <machine>_<split>_section_<ss>_<domain>_<split>_<normal|anomaly>_"
                     "<nnnn>_<attributes>.wav, or give the machine type for the folder")


def list_clips(folder: str | Path, machine_hint: str | None = None, split: str | None = None,
               include_anomalies: bool = False) -> list[tuple[Path, ClipLabel]]:
    """Audio files below ``folder`` with their labels, sorted by path.

    Parameters
    ----------
    folder : str or Path
    machine_hint : str, optional
        See :func:`parse_dcase_name`.
    split : {"train", "test"}, optional
        Keep only files whose name (DCASE 2022+) or parent folder says so.
    include_anomalies : bool
        Training uses normal clips only (semi-supervised ASD).

    Raises
    ------
    FileNotFoundError
        If ``folder`` does not exist or holds no audio file.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"training data folder not found: {folder}")
    out = []
    for f in sorted(folder.rglob("*")):
        if f.suffix.lower() not in AUDIO_SUFFIXES:
            continue
        if split is not None and f"_{split}_" not in f.name and f.parent.name != split:
            continue
        lab = parse_dcase_name(f, machine_hint)
        if lab.is_anomaly and not include_anomalies:
            continue
        out.append((f, lab))
    if not out:
        raise FileNotFoundError(f"no audio files (*.wav, *.flac) found under {folder}")
    return out


def training_data_hash(paths) -> str:
    """SHA-256 over the sorted file names and contents of the training files."""
    h = hashlib.sha256()
    for p in sorted(Path(p) for p in paths):
        h.update(p.name.encode())
        h.update(p.read_bytes())
    return h.hexdigest()
