"""Keyword thresholds fitted on the site's own background sound.

``calibration.keyword_thresholds.tail_fit_threshold`` (peaks over a threshold on the lower tail
of negative event costs) and ``python -m calibration background``, which records (here: reads)
the site's ordinary sound and refits every enrolled keyword's threshold on it.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from calibration.keyword_thresholds import SITE_FIT_MIN_HOURS, tail_fit_threshold
from demo.tools import require_tools
from demo.virtual_mic import VirtualMicrophone
from edge.audio import load_audio
from edge.keywords import EnrolledKeywords
from firmware_config.defaults import default_config_doc, write_config_doc

ROOT = Path(__file__).resolve().parent.parent
SR = 16000

# Negative events with a known lower tail: EVENTS_PER_HOUR events, a share TAIL_SHARE of them
# below 0 with exponential excess of scale BETA, the rest spread over [0, 3].
EVENTS_PER_HOUR, TAIL_SHARE, BETA = 2000.0, 0.05, 0.3


def _events(hours: float, rng: np.random.Generator) -> np.ndarray:
    n = rng.poisson(EVENTS_PER_HOUR * hours)
    tail = rng.random(n) < TAIL_SHARE
    return np.where(tail, -rng.exponential(BETA, n), rng.uniform(0.0, 3.0, n))


def _true_rate(threshold: float) -> float:
    """Expected events per hour below ``threshold`` (< 0)."""
    return EVENTS_PER_HOUR * TAIL_SHARE * np.exp(threshold / BETA)


@pytest.mark.parametrize("rate", [1.0, 0.1])
def test_tail_fit_keeps_its_false_alarm_rate_from_an_hour(rate):
    """An hour of events (at most one false alarm allowed at the answer): over 200 such
    recordings the threshold's true rate has a median within 0.75x-1.33x of the target and
    lies within 0.3x-3x of it for most of them (93 % at 1 per hour, 80 % at 0.1: 40 tail
    events leave a sampling spread)."""
    ratios = np.array([_true_rate(tail_fit_threshold(_events(1.0, np.random.default_rng(s)),
                                                     1.0, rate)) / rate for s in range(200)])
    assert 0.75 <= np.median(ratios) <= 1.33, np.median(ratios)
    assert np.mean((ratios >= 0.3) & (ratios <= 3.0)) >= (0.9 if rate == 1.0 else 0.75), ratios


def test_tail_fit_is_empirical_when_the_audio_shows_the_rate_itself():
    costs = _events(50.0, np.random.default_rng(7))
    thr = tail_fit_threshold(costs, 50.0, 1.0)  # 50 false alarms allowed >= 40 in the tail
    assert np.sum(costs < thr) == 50


def test_tail_fit_needs_enough_events():
    assert tail_fit_threshold(np.arange(40.0), 1.0, 1.0) is None  # n_tail + 1 needed
    assert tail_fit_threshold(np.arange(50.0), 0.0, 1.0) is None
    assert tail_fit_threshold(np.arange(50.0), 1.0, 0.0) is None
    assert tail_fit_threshold(np.r_[np.arange(41.0), np.nan, np.inf], 1.0, 1.0) is not None


def _site_recording(data_dir: Path, path: Path) -> float:
    """About 17 minutes of a site's sound: a running fan and words that are no keyword;
    returns its minutes."""
    fan = sorted((data_dir / "asd").rglob("*.wav"))[:60]
    words = sorted((data_dir / "kws" / "speech_commands_test" / "_unknown_").glob("*.flac"))
    audio = np.concatenate([load_audio(p, SR) for p in fan] + [load_audio(p, SR) for p in words])
    sf.write(path, audio, SR, format="FLAC")
    return len(audio) / SR / 60.0


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "calibration", *args], check=False, cwd=ROOT,
                          capture_output=True, text=True, timeout=600)


def test_background_command_refits_enrolled_keywords_and_later_enrollments(tmp_path, data_dir):
    """Enroll a keyword (fitted on the bundle's generic negatives), record the site background:
    the keywords file now has a threshold fitted on it, and a keyword enrolled afterwards too."""
    keywords = tmp_path / "keywords.npz"
    doc = default_config_doc(node={"id": "kws-node"}, asd={"enabled": False},
                             kws={"keywords": str(keywords)},
                             spool={"path": str(tmp_path / "spool.sqlite")})
    cfg = str(write_config_doc(tmp_path / "node.yaml", doc))
    wake = data_dir / "kws" / "wakeword"
    shots = [str(p) for p in sorted((wake / "computer").glob("*.flac"))[:3]]
    r = _run("enroll", "--config", cfg, "--keyword", "computer", "--from", *shots)
    assert r.returncode == 0, r.stderr
    before = EnrolledKeywords.load(keywords)
    assert before.details["computer"]["threshold_source"] == "generic-fit"
    assert f"python -m calibration background --config {cfg} --minutes 60" in r.stderr

    site = tmp_path / "site.flac"
    minutes = _site_recording(data_dir, site)
    assert minutes >= 60 * SITE_FIT_MIN_HOURS
    r = _run("background", "--config", cfg, "--from", str(site))
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    kept = Path(out["background"])
    assert kept == tmp_path / "keywords_background.flac" and kept.is_file()
    assert out["minutes"] == pytest.approx(minutes, abs=0.01)
    after = EnrolledKeywords.load(keywords)
    assert after.details["computer"]["threshold_source"] == "site-fit"
    assert after.details["computer"]["negative_seconds"] == pytest.approx(60 * minutes, rel=0.01)
    assert after.thresholds["computer"] != before.thresholds["computer"]
    assert out["keywords"]["computer"]["threshold"] == round(after.thresholds["computer"], 4)
    assert after.cost_norms["computer"] == before.cost_norms["computer"]  # same units

    shots = [str(p) for p in sorted((wake / "alexa").glob("*.flac"))[:3]]
    r = _run("enroll", "--config", cfg, "--keyword", "alexa", "--from", *shots)
    assert r.returncode == 0, r.stderr
    assert "thresholds fitted on the site background" in r.stderr
    assert "calibration background" not in r.stderr  # no advice to record what it has
    both = EnrolledKeywords.load(keywords)
    assert {k: d["threshold_source"] for k, d in both.details.items()} == \
        {"alexa": "site-fit", "computer": "site-fit"}


def test_background_shorter_than_the_fit_needs_warns_and_keeps_the_generic_fit(tmp_path, data_dir):
    keywords = tmp_path / "keywords.npz"
    doc = default_config_doc(node={"id": "kws-node"}, asd={"enabled": False},
                             kws={"keywords": str(keywords)},
                             spool={"path": str(tmp_path / "spool.sqlite")})
    cfg = str(write_config_doc(tmp_path / "node.yaml", doc))
    shots = [str(p) for p in sorted((data_dir / "kws" / "wakeword" / "computer")
                                    .glob("*.flac"))[:3]]
    assert _run("enroll", "--config", cfg, "--keyword", "computer", "--from", *shots) \
        .returncode == 0
    short = tmp_path / "short.flac"
    sf.write(short, load_audio(sorted((data_dir / "asd").rglob("*.wav"))[0], SR), SR)
    r = _run("background", "--config", cfg, "--from", str(short))
    assert r.returncode == 0, r.stderr
    assert "min of background; thresholds are fitted on it from 15 min on" in r.stderr
    assert EnrolledKeywords.load(keywords).details["computer"]["threshold_source"] == \
        "generic-fit"


@pytest.mark.e2e
def test_background_records_the_site_from_the_virtual_microphone(tmp_path):
    """``background --minutes`` records through the configured input (a real PulseAudio
    virtual microphone here): the kept file holds that much audio of what was played."""
    missing = require_tools(mqtt=False, audio=True)
    if missing:
        pytest.skip("missing: " + ", ".join(missing))
    speech = ROOT / "demo" / "clips" / "kws" / "stream.flac"  # 24 s of spoken words
    with VirtualMicrophone() as vm:
        doc = default_config_doc(node={"id": "kws-node"}, asd={"enabled": False},
                                 audio={"device": vm.device_name},
                                 kws={"keywords": str(tmp_path / "keywords.npz")},
                                 spool={"path": str(tmp_path / "spool.sqlite")})
        cfg = write_config_doc(tmp_path / "node.yaml", doc)
        proc = subprocess.Popen([sys.executable, "-m", "calibration", "background", "--config",
                                 str(cfg), "--minutes", "0.2"], cwd=ROOT,
                                env={**os.environ, **vm.env, "PYTHONUNBUFFERED": "1"},
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        first = ""
        while "recording 12 s of the site's ordinary sound" not in first:
            line = proc.stderr.readline()
            assert line, "background ended before recording: " + first
            first += line
        vm.play([speech], wait=True)
        out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, first + err
    assert "thresholds are fitted on it from 15 min on" in err
    kept = Path(json.loads(out)["background"])
    assert kept == tmp_path / "keywords_background.flac"
    audio, sr = sf.read(kept, dtype="float32")
    assert sr == SR and len(audio) == 12 * SR
    assert np.sqrt(np.mean(audio[SR:] ** 2)) > 1e-3  # the words, not digital silence
