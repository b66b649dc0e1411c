"""Rebuild the keyword demo clips in ``demo/clips/kws/`` from the shared data.

``python -m demo.build_kws_clips [--data ../shared/data]``. The clips are committed; this
script documents how they were made:

* ``<keyword>_shot_<n>.flac``: 5 shots each of "smart mirror" and "computer" from
  training-split wake-word recordings (which carry no speaker ids: one file each, so five
  speakers per keyword), as recorded (the node's enrollment finds the speech in them);
* ``stream.flac`` + ``stream.json``: 3 x "smart mirror" and 3 x "computer" by test-split
  speakers (never enrolled), 6 Speech Commands words by test-split speakers, with gaps, over
  real background noise at 15 dB SNR; the JSON gives each keyword's exact onset and offset
  (voice-activity trimmed).

Both are wake phrases the default keyword model never heard in training (Picovoice
wake-word benchmark, Apache 2.0; the other words: Speech Commands v0.02, CC BY 4.0). Until
2026-12-01 the demo enrolled "stop" (one Speech Commands speaker) instead of "smart mirror":
at the node's 1 false alarm per hour a one-syllable command word gets a threshold that
finds about one "stop" in five (README, "Thresholds fitted on a generic hour").
"""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np

from demo import KWS_DEMO_KEYWORDS
from edge.audio import load_audio
from edge.vad import speech_interval
from trainer.kws_data import list_words, load_background, speaker_split

OUT = Path(__file__).resolve().parent / "clips" / "kws"


def main(argv=None) -> int:
    import soundfile as sf

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=os.environ.get("HARK_DATA", "../shared/data"))
    args = ap.parse_args(argv)
    rng = np.random.default_rng(3)
    splits = speaker_split(list_words(Path(args.data) / "kws"))
    OUT.mkdir(parents=True, exist_ok=True)
    for kw in KWS_DEMO_KEYWORDS:
        shots = [u for u in splits["train"] if u.word == kw][:5]
        for i, u in enumerate(shots, 1):
            sf.write(OUT / f"{kw}_shot_{i}.flac", load_audio(u.path), 16000, format="FLAC")
    test = splits["test"]
    items = []
    for kw in KWS_DEMO_KEYWORDS:
        pool = [u for u in test if u.word == kw]
        items += [pool[i] for i in rng.permutation(len(pool))[:3]]
    others = [u for u in test if u.word in ("yes", "go", "down", "right", "marvin", "house")]
    items += [others[i] for i in rng.permutation(len(others))[:6]]
    items = [items[i] for i in rng.permutation(len(items))]
    sr = 16000
    parts, truth, t = [np.zeros(sr, np.float32)], [], 1.0
    for u in items:
        y = load_audio(u.path)
        iv = speech_interval(y)
        y = y[iv.slice(sr)]
        if u.word in KWS_DEMO_KEYWORDS:
            truth.append({"keyword": u.word, "onset": round(t, 3), "offset": round(t + len(y) / sr, 3),
                          "speaker": u.speaker})
        gap = rng.uniform(0.8, 1.5)
        parts += [y, np.zeros(int(gap * sr), np.float32)]
        t += len(y) / sr + int(gap * sr) / sr
    speech = np.concatenate(parts)
    noise = np.concatenate(load_background(args.data, "test")[:4])[:len(speech)]
    mask = np.abs(speech) > 0
    gain = np.sqrt(np.mean(speech[mask] ** 2) / np.mean(noise ** 2) / 10 ** (15 / 10))
    stream = (speech + gain * noise).astype(np.float32)
    stream /= max(1.0, float(np.abs(stream).max()) / 0.9)
    sf.write(OUT / "stream.flac", stream, sr, format="FLAC")
    (OUT / "stream.json").write_text(json.dumps({"sample_rate": sr, "snr_db": 15,
                                                 "keywords": truth}, indent=1) + "\n")
    print(f"{len(truth)} keywords in {len(stream) / sr:.1f} s -> {OUT}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
