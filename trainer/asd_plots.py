"""Figures for ASD evaluation reports: ROC curves with the pAUC region (score histograms:
:func:`calibration.plots.plot_score_histogram`).

Figures are drawn and saved as :mod:`calibration.plots` does (matplotlib's object-oriented API,
no pyplot; atomic PNG writes).
"""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any


from calibration.plots import new_figure, save_png
from trainer.asd_metrics import roc_curve_points

__all__ = ["plot_roc_curves", "plot_section_lines"]


def plot_roc_curves(
    path: str | Path,
    curves: Mapping[str, tuple[Any, Any]],
    title: str,
    max_fpr: float = 0.1,
) -> Path:
    """Draw ROC curves with the chance diagonal and the pAUC region, save as PNG.

    Parameters
    ----------
    path : str or Path
        Output PNG file; its folder is created if missing. Written atomically.
    curves : mapping of str to (y_true, anomaly_score)
        Legend label (e.g. ``"ours int8 (AUC 0.95)"``) to the arrays of one system:
        ``y_true`` of shape (n_clips,), int {0, 1}, and ``anomaly_score`` of shape (n_clips,),
        float. Each must contain both classes.
    title : str
        Figure title.
    max_fpr : float, default=0.1
        The pAUC range ``FPR <= max_fpr`` is shaded; a second panel zooms into it.

    Returns
    -------
    Path
        ``path``.

    Raises
    ------
    ValueError
        If ``curves`` is empty, ``max_fpr`` is not in (0, 1], or a curve's arrays are malformed
        or lack one class (see :func:`trainer.asd_metrics.roc_curve_points`).
    """
    if not curves:
        raise ValueError("plot_roc_curves needs at least one curve")
    if not (0.0 < float(max_fpr) <= 1.0):
        raise ValueError(f"max_fpr must be in (0, 1], got {max_fpr}")
    max_fpr = float(max_fpr)
    points = {label: roc_curve_points(y, s) for label, (y, s) in curves.items()}

    fig = new_figure(11.0, 5.0)
    ax_full, ax_zoom = fig.subplots(1, 2)
    import matplotlib as mpl

    colors = mpl.colormaps["tab10"].colors
    for ax, xmax in ((ax_full, 1.0), (ax_zoom, max_fpr)):
        ax.axvspan(0.0, max_fpr, color="0.85", alpha=0.6, lw=0,
                   label=f"pAUC region (FPR \u2264 {max_fpr:g})")
        ax.plot([0.0, 1.0], [0.0, 1.0], ls="--", color="0.5", lw=1, label="chance")
        for i, (label, (fpr, tpr)) in enumerate(points.items()):
            ax.plot(fpr, tpr, color=colors[i % len(colors)], lw=1.6,
                    ls=("-", "--", "-.", ":")[(i // len(colors)) % 4], label=label)
        ax.set_xlim(0.0, xmax)
        ax.set_ylim(0.0, 1.01)
        ax.set_xlabel("false positive rate")
        ax.set_ylabel("true positive rate")
        ax.grid(True, alpha=0.3)
    ax_full.axvline(max_fpr, color="0.4", lw=0.8, ls=":")
    ax_full.set_aspect("equal")
    ax_full.set_title("ROC")
    ax_zoom.set_title(f"zoom: FPR \u2208 [0, {max_fpr:g}] (pAUC range)")
    ax_full.legend(loc="lower right", fontsize="small")
    fig.suptitle(title)
    return save_png(fig, path)


def plot_section_lines(groups: Mapping[str, Mapping[str, Any]], skipped: list | None,
                       skipped_what: str) -> list[str]:
    """The ``## Plots`` part of an ASD report in Markdown: a link per plot of each group
    (``group["plots"]``, paths next to the report), then how many audio files were skipped
    and why (``skipped_what``, e.g. "without a machine type")."""
    lines = ["", "## Plots", ""]
    for name, g in groups.items():
        for p in g.get("plots", []):
            lines.append(f"- {name}: [{Path(p).name}]({Path(p).name})")
    if skipped:
        lines += ["", f"{len(skipped)} audio file(s) {skipped_what} were skipped (see "
                  "report.json)."]
    return lines
