"""Score histograms with decision thresholds: the one plotter of anomaly-score distributions.

``python -m calibration record`` draws the held-out normal scores of a calibration with its
decision threshold; ``python -m trainer evaluate-asd`` draws normal and anomalous test scores
with every estimator's threshold. Both call :func:`plot_score_histogram`. The node itself
never plots (matplotlib is imported only when a plot is drawn).

Uses matplotlib's object-oriented API (:class:`matplotlib.figure.Figure` rendered by the Agg
canvas) and never :mod:`matplotlib.pyplot`: no backend is selected or switched in the calling
process (safe in notebooks, threads and headless nodes) and no figure is left registered in
pyplot's global figure manager. PNGs are written atomically with
:func:`firmware_config.fileio.atomic_write_bytes` (temporary file in the same folder, fsync, ``os.replace``).
"""
from __future__ import annotations

import io
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from firmware_config.fileio import atomic_write_bytes

__all__ = ["new_figure", "save_png", "plot_score_histogram"]

_DPI = 120


def new_figure(width: float, height: float):
    """A matplotlib Figure of ``width`` x ``height`` inches on its own Agg canvas (no pyplot)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=_DPI)
    FigureCanvasAgg(fig)
    return fig


def save_png(fig: Any, path: str | Path) -> Path:
    """Render ``fig`` to PNG, write it atomically to ``path`` (folder created) and release it."""
    buf = io.BytesIO()
    try:
        fig.savefig(buf, format="png", bbox_inches="tight")
    finally:
        fig.clf()  # release artists; the Figure is not registered anywhere else
    return atomic_write_bytes(Path(path), buf.getvalue())


def _finite_1d(a: Any, name: str) -> np.ndarray:
    arr = np.asarray(a, dtype=np.float64).ravel()
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} must be finite (found NaN or inf)")
    return arr


def plot_score_histogram(
    path: str | Path,
    normal_scores: Any,
    anomaly_scores: Any,
    thresholds: Mapping[str, float],
    title: str,
    *,
    density: bool = True,
    normal_label: str = "normal",
) -> Path:
    """Overlaid histograms of normal and anomalous test scores with decision thresholds.

    Parameters
    ----------
    path : str or Path
        Output PNG file; its folder is created if missing. Written atomically.
    normal_scores : array-like of shape (n_normal,), float
        Anomaly scores of the normal test clips. Must be finite; may be empty.
    anomaly_scores : array-like of shape (n_anomalous,), float
        Anomaly scores of the anomalous test clips. Must be finite; may be empty (but not
        both).
    thresholds : mapping of str to float
        Estimator name to decision threshold; one vertical line each, coloured from a colour
        map and listed in a legend outside the axes (readable with ~14 entries). A threshold
        far outside the score range (more than one score range beyond it) is not drawn to scale
        but marked at the axis edge and labelled "off-scale"; a non-finite one (a failed
        estimator) is only listed in the legend.
    title : str
        Figure title.
    density : bool, default=True, keyword-only
        Normalise each histogram to unit area (normal and anomalous sets usually differ in
        size); ``False`` plots counts.
    normal_label : str, default="normal", keyword-only
        Legend name of the normal scores (e.g. "calibration (normal, held out)").

    Returns
    -------
    Path
        ``path``.

    Raises
    ------
    ValueError
        If there is no score at all or a score is not finite.
    """
    normal = _finite_1d(normal_scores, "normal_scores")
    anomalous = _finite_1d(anomaly_scores, "anomaly_scores")
    both = np.concatenate([normal, anomalous])
    if both.size == 0:
        raise ValueError("plot_score_histogram needs at least one score")
    lo, hi = float(both.min()), float(both.max())
    if hi > lo:
        span = hi - lo
        edges = np.histogram_bin_edges(both, bins="auto")
        if edges.size < 31:  # "auto" gives a handful of bins for tens of clips
            edges = np.linspace(lo, hi, 31)
    else:  # all scores equal: one bin around the value
        span = max(abs(lo), 1.0) * 0.1
        edges = np.array([lo - 0.5 * span, hi + 0.5 * span])
    if edges.size > 81:
        edges = np.linspace(edges[0], edges[-1], 81)

    import matplotlib as mpl
    from matplotlib.lines import Line2D

    fig = new_figure(10.0, 5.0)
    ax = fig.subplots()
    if normal.size:
        ax.hist(normal, bins=edges, density=density, alpha=0.55, color="tab:blue",
                label=f"{normal_label} (n={normal.size})")
    if anomalous.size:
        ax.hist(anomalous, bins=edges, density=density, alpha=0.55, color="tab:red",
                label=f"anomalous (n={anomalous.size})")

    view_lo, view_hi = lo - span, hi + span  # thresholds within this window are drawn to scale
    def _order(kv: tuple[str, float]) -> tuple[int, float]:  # by value, non-finite last
        v = float(kv[1])
        return (0, v) if math.isfinite(v) else (1, 0.0)

    items = sorted(thresholds.items(), key=_order)
    n = max(len(items), 1)
    cmap = mpl.colormaps["tab20"] if n <= 20 else mpl.colormaps["turbo"]
    styles = ("-", "--", "-.", ":")
    xmin, xmax = edges[0], edges[-1]
    for t_value in (float(v) for _, v in items):
        if math.isfinite(t_value) and view_lo <= t_value <= view_hi:
            xmin, xmax = min(xmin, t_value), max(xmax, t_value)
    pad = 0.03 * (xmax - xmin)
    xmin, xmax = xmin - pad, xmax + pad

    extra_handles = []
    for i, (name, value) in enumerate(items):
        color = cmap(i if n <= 20 else i / max(n - 1, 1))
        ls = styles[i % len(styles)]
        v = float(value)
        if not math.isfinite(v):
            extra_handles.append(
                Line2D([], [], color=color, ls=ls, label=f"{name} = {v} (not drawn)"))
        elif view_lo <= v <= view_hi:
            ax.axvline(v, color=color, ls=ls, lw=1.3, label=f"{name} = {v:.4g}")
        else:
            edge_x = xmax - 0.5 * pad if v > view_hi else xmin + 0.5 * pad  # just inside
            ax.plot([edge_x], [0.97], transform=ax.get_xaxis_transform(), ls="none",
                    marker=">" if v > view_hi else "<", color=color, ms=8, clip_on=False,
                    label=f"{name} = {v:.4g} (off-scale)")
    ax.set_xlim(xmin, xmax)
    ax.set_xlabel("anomaly score")
    ax.set_ylabel("density" if density else "count")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    handles, _ = ax.get_legend_handles_labels()
    ax.legend(handles=handles + extra_handles, loc="upper left", bbox_to_anchor=(1.01, 1.0),
              fontsize="x-small", frameon=False)
    return save_png(fig, path)
