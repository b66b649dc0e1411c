"""``python -m edge run --config node.yaml``: the node, forever."""
from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from pathlib import Path

from edge.node import Node
from firmware_config.errors import HarkError
from firmware_config.schema import load_config_or_exit


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
