"""Several draws of the wake-word evaluation, pooled (``evaluate-kws --seeds 0,1,2``).

One draw of :func:`trainer.kws_wakeword.evaluate_wakeword` enrolls each keyword from the 5
shots of one speaker and tests on about 130 utterances and 2 hours of negatives. Which shots
are drawn moves a keyword's misses a lot: "computer" missed 7 to 32 of about 130 over five
draws of the shipped bundle (README). A draw's seed picks the shots, the speakers, the streams
and the negatives, so several draws are several independent small experiments. This module
adds them up: per keyword and system, the misses at each false-alarm rate in hindsight summed
over the draws (each draw's threshold is its own, as a user's would be), with a 95 % Wilson
interval; the node's false alarms over all the hours with a 95 % Poisson (Garwood) interval;
and the keywords it found. The per-draw counts stay in the table so that the spread between
draws is visible.

Contents
--------
pool_wakeword_reports, write_pooled_report, wilson_interval, poisson_rate_interval
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from scipy.stats import binomtest, chi2

from firmware_config.fileio import atomic_write_bytes, atomic_write_json

__all__ = ["pool_wakeword_reports", "write_pooled_report", "wilson_interval",
           "poisson_rate_interval"]

#: Coverage of the intervals.
CONFIDENCE = 0.95
#: The node's thresholds a report may carry: what enrollment sets without a site recording,
#: the bundle's table (when that is not it), and the site fit.
NODE_THRESHOLDS = ("node_threshold", "node_threshold_table", "node_threshold_site")


def wilson_interval(k: int, n: int) -> tuple[float, float]:
    """Wilson score interval of a proportion (Wilson 1927), at :data:`CONFIDENCE`.

    Parameters
    ----------
    k, n : int
        Events (misses) and trials (keyword utterances).

    Returns
    -------
    (float, float)
        Lower and upper bound in [0, 1]; ``(nan, nan)`` for ``n == 0``.
    """
    if n <= 0:
        return float("nan"), float("nan")
    ci = binomtest(int(k), int(n)).proportion_ci(CONFIDENCE, method="wilson")
    return float(ci.low), float(ci.high)


def poisson_rate_interval(count: int, hours: float) -> tuple[float, float]:
    """Exact (Garwood 1936) interval of a Poisson rate, at :data:`CONFIDENCE`.

    Parameters
    ----------
    count : int
        Events seen (false alarms).
    hours : float
        Audio they were counted in, hours.

    Returns
    -------
    (float, float)
        Lower and upper bound, events per hour (the lower one 0 for no event).

    Raises
    ------
    ValueError
        ``hours`` not positive.
    """
    if not hours > 0:
        raise ValueError(f"hours must be positive, got {hours!r}")
    a = 1.0 - CONFIDENCE
    low = 0.0 if count == 0 else chi2.ppf(a / 2, 2 * count) / 2
    high = chi2.ppf(1 - a / 2, 2 * count + 2) / 2
    return float(low / hours), float(high / hours)


def _add(acc: dict, point: dict | None, draw: int) -> None:
    """Add one draw's threshold outcome (``Point.to_dict()``) to a running sum; outcomes of
    the same draw (several keywords) add up in its ``per_draw`` entry."""
    row = acc["per_draw"].setdefault(draw, [0, 0, 0])
    if point is None:
        acc["missing_draws"] += 1
        return
    acc["misses"] += point["n_ref"] - point["hits"]
    acc["hits"] += point["hits"]
    acc["n_ref"] += point["n_ref"]
    acc["false_alarms"] += point["false_alarms"]
    acc["hours"] += point["hours"]
    row[0] += point["n_ref"] - point["hits"]
    row[1] += point["n_ref"]
    row[2] += point["false_alarms"]


def _finish(acc: dict) -> dict:
    n = acc["n_ref"]
    out = {**acc, "hours": round(acc["hours"], 3),
           "per_draw": [acc["per_draw"][d] for d in sorted(acc["per_draw"])]}
    if n:
        lo, hi = wilson_interval(acc["misses"], n)
        out.update(miss_rate=round(acc["misses"] / n, 4),
                   miss_rate_ci=[round(lo, 4), round(hi, 4)])
    if acc["hours"] > 0:
        lo, hi = poisson_rate_interval(acc["false_alarms"], acc["hours"])
        out.update(fa_per_hour=round(acc["false_alarms"] / acc["hours"], 3),
                   fa_per_hour_ci=[round(lo, 3), round(hi, 3)])
    return out


def _empty() -> dict:
    return {"misses": 0, "hits": 0, "n_ref": 0, "false_alarms": 0, "hours": 0.0,
            "per_draw": {}, "missing_draws": 0}


def pool_wakeword_reports(reports: Sequence[dict[str, Any]],
                          fa_rates: Sequence[float] = (1.0, 0.5)) -> dict[str, Any]:
    """Sum several draws' wake-word reports per keyword and system, and over all keywords.

    Parameters
    ----------
    reports : sequence of dict
        :func:`trainer.kws_wakeword.evaluate_wakeword` reports of the same keywords and
        systems, one per seed.
    fa_rates : sequence of float
        False alarms per hour at which the misses in hindsight are pooled (the reports'
        ``at_<rate>_fa_per_hour`` entries).

    Returns
    -------
    dict
        ``seeds``; ``keywords[keyword][system]`` and ``all[system]``, each with
        ``at_<rate>_fa_per_hour`` and (systems of ours) ``node_threshold`` /
        ``node_threshold_table`` / ``node_threshold_site``: ``misses``, ``hits``, ``n_ref``,
        ``false_alarms``,
        ``hours``, ``miss_rate`` with its Wilson ``miss_rate_ci``, ``fa_per_hour`` with its
        Poisson ``fa_per_hour_ci``, ``per_draw`` (``[misses, n_ref, false_alarms]`` per
        draw, summed over the keywords in ``all``) and ``missing_draws`` (keyword-draws
        where no threshold reached the rate).

    Raises
    ------
    ValueError
        No report, or reports of different keywords or systems.
    """
    if not reports:
        raise ValueError("no wake-word report to pool")
    layout = [{kw: sorted(e["systems"]) for kw, e in r["keywords"].items()} for r in reports]
    if any(x != layout[0] for x in layout):
        raise ValueError("the reports to pool must have the same keywords and systems, got "
                         f"{layout}")
    keys = [f"at_{rate:g}_fa_per_hour" for rate in fa_rates] + list(NODE_THRESHOLDS)
    per_kw: dict[str, dict[str, dict]] = {}
    total: dict[str, dict] = {}
    for draw, rep in enumerate(reports):
        for kw, e in rep["keywords"].items():
            for name, r in e["systems"].items():
                for key in keys:
                    if key in NODE_THRESHOLDS and key not in r:
                        continue
                    for acc in (per_kw.setdefault(kw, {}).setdefault(name, {}),
                                total.setdefault(name, {})):
                        _add(acc.setdefault(key, _empty()), r.get(key), draw)
    return {"seeds": [r["config"]["seed"] for r in reports],
            "config": {k: v for k, v in reports[0]["config"].items() if k != "seed"},
            "negative_hours_per_draw": [r["negative_hours"] for r in reports],
            "keywords": {kw: {name: {k: _finish(v) for k, v in d.items()}
                              for name, d in s.items()} for kw, s in per_kw.items()},
            "all": {name: {k: _finish(v) for k, v in d.items()} for name, d in total.items()}}


def _cell(p: dict | None, what: str) -> str:
    if p is None or not p["n_ref"]:
        return "n/a"
    draws = " / ".join(str(d[0] if what == "misses" else d[2]) for d in p["per_draw"])
    if what == "misses":
        lo, hi = p["miss_rate_ci"]
        gap = f", {p['missing_draws']} draw(s) never that low" if p["missing_draws"] else ""
        return (f"{p['misses']}/{p['n_ref']} ({100 * p['miss_rate']:.1f} %, "
                f"{100 * lo:.1f}-{100 * hi:.1f}; {draws}{gap})")
    lo, hi = p["fa_per_hour_ci"]
    found = 100 * p["hits"] / p["n_ref"]
    return (f"{p['false_alarms']} in {p['hours']:.1f} h ({p['fa_per_hour']:.2f}/h, "
            f"{lo:.2f}-{hi:.2f}; {draws}) / {p['hits']} found ({found:.0f} %)")


def _markdown(pooled: dict[str, Any]) -> str:
    cfg = pooled["config"]
    seeds = ", ".join(str(s) for s in pooled["seeds"])
    lines = ["# Keyword spotting: wake-word evaluation, pooled over draws", "",
             f"Seeds {seeds}: each draw enrolls every keyword from {cfg['shots']} shots of one "
             f"speaker and tests on other speakers at {cfg['snr_db']:g} dB SNR with "
             f"{pooled['negative_hours_per_draw'][0]:.2f} h of negatives; the draws' own "
             "reports are in `seed_<n>/`. Misses: each draw's best threshold in hindsight at "
             "the rate, summed over the draws, with a 95 % Wilson interval and each draw's "
             "count. Node thresholds (what `calibration enroll` sets for "
             f"{cfg['node_fa_per_hour']:g} FA/h without a site recording: fitted on the "
             "bundle's generic negatives, or its table; the bundle's one-value table beside it "
             "where that is not what enrollment set; fitted on the site background): false "
             "alarms over all the draws' audio with a 95 % Poisson interval and each draw's "
             "count, and the keywords found.", "",
             "| keyword | system | misses @ 1 FA/h | misses @ 0.5 FA/h | node: FA / found "
             "| bundle's table: FA / found | site fit: FA / found |",
             "|---|---|---|---|---|---|---|"]
    rows = [(kw, s) for kw, s in pooled["keywords"].items()] + [("all", pooled["all"])]
    for kw, systems in rows:
        for name, r in systems.items():
            lines.append(f"| {kw} | {name} | {_cell(r.get('at_1_fa_per_hour'), 'misses')} | "
                         f"{_cell(r.get('at_0.5_fa_per_hour'), 'misses')} | "
                         f"{_cell(r.get('node_threshold'), 'fa')} | "
                         f"{_cell(r.get('node_threshold_table'), 'fa')} | "
                         f"{_cell(r.get('node_threshold_site'), 'fa')} |")
    lines.append("")
    return "\n".join(lines)


def write_pooled_report(pooled: dict[str, Any], out_dir: str | Path) -> dict[str, Path]:
    """``report.json`` and ``report.md`` of :func:`pool_wakeword_reports` in ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    return {"json": atomic_write_json(out / "report.json", pooled),
            "md": atomic_write_bytes(out / "report.md", _markdown(pooled).encode())}
