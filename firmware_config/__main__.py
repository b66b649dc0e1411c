"""``python -m firmware_config validate FILE`` / ``show FILE``."""
from __future__ import annotations

import argparse
import json
import sys

from firmware_config.schema import ConfigError, load_config


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m firmware_config",
                                description="Validate and inspect node configuration files.")
    sub = p.add_subparsers(dest="cmd", required=True)
    v = sub.add_parser("validate", help="check a config file; exit 2 naming each bad field")
    v.add_argument("file")
    s = sub.add_parser("show", help="print the config with every default filled in (JSON)")
    s.add_argument("file")
    args = p.parse_args(argv)
    try:
        cfg = load_config(args.file)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.cmd == "validate":
        print(f"{args.file}: valid (node {cfg.topic_root}, sha256 {cfg.sha256[:12]})")
    else:
        print(json.dumps(cfg.model_dump(by_alias=True), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
