"""The enrolled-keywords artifact: templates and per-keyword thresholds a node spots with.

Written by ``python -m calibration enroll`` (:func:`calibration.enroll.enroll_keyword` builds
it) and read by the node (:class:`edge.kws_listener.KeywordListener`), beside its siblings the ASD
calibration (:class:`edge.backend.Calibration`) and the model bundles (:mod:`edge.model`).
Like them it is checked on load (schema version, consistency) and fails with a message that
names the file.

File format (``.npz``, no pickles): ``meta`` is a JSON string with ``schema``
(:data:`KEYWORDS_SCHEMA`), ``model_id``, ``segment_hop``, ``thresholds``, ``details``,
``index`` (``[keyword, array name]`` per template), ``cost_norms``, ``shot_fusion`` (absent in
files written before it existed: 1), ``onset_weighting`` (absent before it existed:
``[1.0, 0, 0.0]``, none), ``weighted`` (names of the templates with frame weights),
``created`` and ``enrollment_id``; each template is an array ``t<i>`` of shape (M, D),
float32, and its frame weights, where it has them, an array ``w<i>`` of shape (M,), float64.
"""
from __future__ import annotations

import datetime as dt
import io
import json
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from firmware_config.fileio import atomic_write_bytes, is_npz_file
from firmware_config.errors import HarkError

__all__ = ["KEYWORDS_SCHEMA", "NO_ONSET_WEIGHTING", "EnrollmentError", "EnrolledKeywords",
           "check_shot_fusion", "check_onset_weighting", "check_frame_weights"]

KEYWORDS_SCHEMA = 1
#: ``onset_weighting`` that weights every template frame alike (:func:`edge.kws.onset_frame_weights`).
NO_ONSET_WEIGHTING = (1.0, 0, 0.0)


def check_shot_fusion(value) -> int:
    """``value`` as a shot fusion (shots whose costs the spotter averages,
    :func:`edge.kws.fuse_shot_costs`): an integer ``>= 1``.

    Raises
    ------
    ValueError
        A bool, a non-integer or a value below 1 (callers name the file or field).
    """
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"shot_fusion must be an integer >= 1, got {value!r}")
    return int(value)


def check_onset_weighting(value) -> tuple[float, int, float]:
    """``value`` as an onset weighting ``(w, k, lead_in_s)``: the first template frame's
    weight ``w``, a finite number ``>= 1``; the frames ``k`` over which it falls to 1, an
    integer ``>= 0`` (:func:`edge.kws.onset_frame_weights`); and the seconds ``lead_in_s``
    (``>= 0``) a shot's recording must hold before its speech for its template to be
    weighted (:func:`calibration.enroll.shot_frame_weights`).

    Raises
    ------
    ValueError
        Not a triple of that kind (callers name the file or field).
    """
    def number(x):
        return (not isinstance(x, bool) and isinstance(x, (int, float, np.integer, np.floating))
                and bool(np.isfinite(x)))

    ok = isinstance(value, (list, tuple)) and len(value) == 3
    if ok:
        w, k, lead = value
        ok = (number(w) and w >= 1 and not isinstance(k, bool)
              and isinstance(k, (int, np.integer)) and k >= 0 and number(lead) and lead >= 0)
    if not ok:
        raise ValueError(f"onset_weighting must be [w, k, lead_in_s] with a number w >= 1, an "
                         f"integer k >= 0 and seconds lead_in_s >= 0, got {value!r}")
    return float(value[0]), int(value[1]), float(value[2])


def check_frame_weights(value, n_frames: int) -> np.ndarray:
    """``value`` as a template's frame weights (:class:`edge.kws.Template`): ``n_frames``
    finite numbers > 0.

    Returns
    -------
    np.ndarray, shape (n_frames,), float64, C-contiguous

    Raises
    ------
    ValueError
        Another shape, or a value that is not finite and positive (callers name the
        template or file).
    """
    w = np.ascontiguousarray(value, np.float64)
    if w.shape != (n_frames,) or not np.all(np.isfinite(w)) or not np.all(w > 0):
        raise ValueError(f"frame_weights must be {n_frames} finite numbers > 0 (one per "
                         f"frame), got {np.asarray(value).tolist()!r}")
    return w


class EnrollmentError(HarkError, RuntimeError):
    """An enrolled-keywords file that is missing, corrupt or of another model or schema."""


@dataclass
class EnrolledKeywords:
    """Templates and thresholds of the enrolled keywords: what the node's spotter needs.

    Attributes
    ----------
    model_id : str
        The KWS bundle the templates were embedded with (they are useless with another).
    segment_hop : int
        Frames between segments used when embedding the templates.
    templates : dict of str -> list of np.ndarray
        Per keyword, one (M, D) float32 frame-embedding matrix per shot.
    thresholds : dict of str -> float
        Normalised DTW cost below which a match is a detection.
    details : dict of str -> dict
        Per keyword: threshold source (``"fa-rate"`` or ``"fallback"``), negative events,
        negative hours, shot durations.
    cost_norms : dict of str -> list of [float, float]
        Per keyword, per template: ``[cost_mean, cost_std]`` of its matching cost
        (:class:`edge.kws.Template`); thresholds are then in those normalised units. Absent
        for a keyword enrolled with a bundle that does not normalise.
    shot_fusion : int
        Shots whose normalised costs the spotter averages (:func:`edge.kws.fuse_shot_costs`):
        the bundle's value when the thresholds were set, since they hold for it.
    onset_weighting : (float, int, float)
        The bundle's onset weighting at enrollment (:func:`check_onset_weighting`), which
        made ``frame_weights``.
    frame_weights : dict of str -> list of (np.ndarray or None)
        Per keyword, per template: the weight of each of its ``M`` frames in the DTW's local
        cost, shape (M,) float64, or None (every frame alike); the cost norms and thresholds
        were set with them and the spotter uses them (:func:`edge.kws.enrolled_templates`).
        A keyword absent here has no weights.
    """

    model_id: str
    segment_hop: int
    templates: dict = field(default_factory=dict)
    thresholds: dict = field(default_factory=dict)
    details: dict = field(default_factory=dict)
    created: str = ""
    enrollment_id: str = ""
    cost_norms: dict = field(default_factory=dict)
    shot_fusion: int = 1
    onset_weighting: tuple = NO_ONSET_WEIGHTING
    frame_weights: dict = field(default_factory=dict)

    def template_cost_norm(self, keyword: str, index: int) -> tuple[float, float]:
        """``(cost_mean, cost_std)`` of one template; ``(0.0, 1.0)`` (raw costs) without."""
        norms = self.cost_norms.get(keyword)
        return (0.0, 1.0) if not norms else (float(norms[index][0]), float(norms[index][1]))

    def save(self, path: str | Path) -> Path:
        """Write atomically (temporary file, fsync, rename) as ``.npz``; sets ``created`` and
        ``enrollment_id``."""
        self.created = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
        self.enrollment_id = uuid.uuid4().hex[:12]
        arrays = {}
        index, weighted = [], []
        for k in sorted(self.templates):
            weights = self.frame_weights.get(k) or [None] * len(self.templates[k])
            for i, t in enumerate(self.templates[k]):
                name = f"t{len(index)}"
                arrays[name] = np.asarray(t, np.float32)
                if weights[i] is not None:
                    arrays[f"w{len(index)}"] = np.asarray(weights[i], np.float64)
                    weighted.append(name)
                index.append([k, name])
        meta = {"schema": KEYWORDS_SCHEMA, "model_id": self.model_id, "segment_hop": self.segment_hop,
                "thresholds": self.thresholds, "details": self.details, "index": index,
                "cost_norms": self.cost_norms, "shot_fusion": int(self.shot_fusion),
                "onset_weighting": list(check_onset_weighting(self.onset_weighting)),
                "weighted": weighted, "created": self.created, "enrollment_id": self.enrollment_id}
        buf = io.BytesIO()
        np.savez(buf, meta=np.array(json.dumps(meta)), **arrays)
        return atomic_write_bytes(Path(path), buf.getvalue())

    @classmethod
    def load(cls, path: str | Path) -> "EnrolledKeywords":
        """Read a file written by :meth:`save`.

        Raises
        ------
        EnrollmentError
            Missing, unreadable or inconsistent file, or another schema version.
        """
        path = Path(path)
        if path.is_dir():
            raise EnrollmentError(f"{path} is a folder, not a keywords artifact (kws.keywords "
                                  "names the .npz file)")
        if not path.is_file():
            raise EnrollmentError(f"no enrolled keywords at {path} (run `python -m calibration "
                                  "enroll --config ... --keyword NAME --shots 5`)")
        try:
            npz = is_npz_file(path)
        except OSError as exc:
            raise EnrollmentError(f"cannot read enrolled keywords {path}: "
                                  f"{exc.strerror or exc}") from None
        if not npz:
            raise EnrollmentError(f"{path} is not a keywords artifact (not an .npz archive; "
                                  "`python -m calibration enroll` writes one)")
        try:
            with np.load(path, allow_pickle=False) as z:
                meta = json.loads(str(z["meta"]))
                templates: dict = {}
                weights: dict = {}
                weighted = set(meta.get("weighted", []))
                for k, name in meta["index"]:
                    templates.setdefault(k, []).append(z[name].astype(np.float32))
                    weights.setdefault(k, []).append(
                        z["w" + name[1:]].astype(np.float64) if name in weighted else None)
        except Exception as exc:  # zip, json, key errors: all mean "corrupt"
            raise EnrollmentError(f"enrolled keywords file {path} is unreadable: {exc}") from exc
        if meta.get("schema") != KEYWORDS_SCHEMA:
            raise EnrollmentError(f"enrolled keywords file {path}: unsupported schema "
                                  f"{meta.get('schema')!r} (this node reads {KEYWORDS_SCHEMA}); "
                                  "enroll the keywords again")
        missing = set(templates) - set(meta["thresholds"])
        if missing:
            raise EnrollmentError(f"{path}: no threshold for {sorted(missing)}")
        norms = meta.get("cost_norms", {})
        for k, v in norms.items():
            ok = (k in templates and isinstance(v, list) and len(v) == len(templates[k])
                  and all(isinstance(x, list) and len(x) == 2 for x in v))
            if not ok:
                raise EnrollmentError(f"{path}: cost_norms of {k!r} do not match its "
                                      f"{len(templates.get(k, []))} templates; enroll it again")
        try:
            fusion = check_shot_fusion(meta.get("shot_fusion", 1))
            onset = check_onset_weighting(meta.get("onset_weighting", list(NO_ONSET_WEIGHTING)))
        except ValueError as exc:
            raise EnrollmentError(f"{path}: {exc}; enroll the keywords again") from None
        for k, ws in weights.items():
            try:
                ws[:] = [w if w is None else check_frame_weights(w, len(t))
                         for t, w in zip(templates[k], ws)]
            except ValueError as exc:
                raise EnrollmentError(f"{path}: frame weights of {k!r}: {exc}; enroll it "
                                      "again") from None
        weights = {k: ws for k, ws in weights.items() if any(w is not None for w in ws)}
        return cls(meta["model_id"], int(meta["segment_hop"]), templates,
                   {k: float(v) for k, v in meta["thresholds"].items()}, meta.get("details", {}),
                   meta.get("created", ""), meta.get("enrollment_id", ""), norms, fusion, onset,
                   weights)
