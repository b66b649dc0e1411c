"""``python -m edge run --config node.yaml``: the node, forever.

The default bundles run without Numba (keyword spotting and DTW are NumPy). A node whose
keyword bundle uses the log-mel frontend (the TACos bundle, ``models/kws_default.tflite``)
compiles that frontend's high-pass filter with Numba at its first audio block, and that
kernel survives restarts: Numba caches it on disk, in ``numba-cache/`` next to the spool
(``spool.path``; ``NUMBA_CACHE_DIR`` set in the environment wins, as in the systemd unit), so
a node restarted after a power cut loads it instead of compiling it again. Numba reads the
folder when it is imported, so it is chosen here, before anything can import it. Numba keys
the cache by the kernel's source file (a hash of its contents), its argument types, the CPU
and Numba's own version: an updated node compiles once, at its first start. A folder that
cannot be written falls back to Numba's default (``__pycache__`` next to the source, else
``~/.cache/numba``).
"""
from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from pathlib import Path

from firmware_config.errors import HarkError
from firmware_config.schema import load_config, load_config_or_exit


def numba_cache_dir(argv) -> Path | None:
    """``numba-cache/`` next to the spool of the config in ``argv``, or None without one.

    A config that does not load gives None: :func:`cmd_run` reports it properly.
    """
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config")
    known, _ = pre.parse_known_args(argv)
    if not known.config:
        return None
    try:
        cfg = load_config(known.config)
    except (HarkError, OSError):
        return None
    return cfg.resolve(cfg.spool.path).parent / "numba-cache"


if __name__ == "__main__" and not os.environ.get("NUMBA_CACHE_DIR"):
    _cache = numba_cache_dir(sys.argv[1:])
    if _cache is not None:
        os.environ["NUMBA_CACHE_DIR"] = str(_cache)

# After NUMBA_CACHE_DIR (see the module docstring).
from edge.node import Node  # noqa: E402


def cmd_run(args) -> int:
    cfg = load_config_or_exit(args.config)
    # Relative to where the command was typed, unlike the config's paths; they replace
    # audio.files of this config and of every config reloaded while the node runs.
    replay = [str(Path(f).resolve()) for f in args.replay] if args.replay else None
    logging.basicConfig(level=getattr(logging, args.log_level or cfg.logging.level),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    try:
        node = Node(cfg, config_path=args.config, replay=replay)
        node.run(stop)
    except HarkError as exc:  # model, calibration, keywords, audio, MQTT setup, spool
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m edge", description="Run a sensor node.")
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="capture, score and publish until stopped (Ctrl-C/SIGTERM)")
    r.add_argument("--config", required=True, help="node config YAML")
    r.add_argument("--replay", nargs="+", metavar="FILE",
                   help="score these recordings instead of the microphone, then exit")
    r.add_argument("--log-level", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    args = p.parse_args(argv)
    return {"run": cmd_run}[args.cmd](args)


if __name__ == "__main__":
    sys.exit(main())
