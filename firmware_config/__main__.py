"""``python -m firmware_config validate FILE`` / ``show FILE`` / ``flash FILE --to TARGET``."""
from __future__ import annotations

import argparse
import json
import sys

from firmware_config.flash import TARGET_FORMS, FlashError, flash
from firmware_config.schema import ConfigError, load_config

FLASH_EPILOG = """\
targets (--to):
{forms}

examples:
  python -m firmware_config flash site.yaml --to /media/$USER/SDCARD/hark
  python -m firmware_config flash site.yaml --to /media/$USER/SDCARD/hark --mkdir
  python -m firmware_config flash site.yaml --to ssh://pi@press-3.local/etc/hark/
  python -m firmware_config flash site.yaml --to ssh://pi@10.0.0.7:2222/etc/hark/node.yaml \\
      --identity ~/.ssh/hark_ed25519 --ssh-option StrictHostKeyChecking=accept-new
  python -m firmware_config flash site.yaml --to mqtts://broker.example:8883/press-3 \\
      --username operator --password-file ~/.hark-operator --ca-file ca.crt --wait 60

The rendered file (every default filled in) is what the node runs; its sha256 is the
config_sha256 the node reports in its retained state topic. Relative paths resolve
against the folder of the node's config file: for folder and ssh:// targets, each file the
node reads that is not there is reported as a warning (stderr). Over MQTT, node.site and
mqtt.prefix must be the node's own (they cannot change over MQTT).
exit status: 0 flashed (and verified where possible), 1 delivery failed or the node
rejected / did not apply the config in time, 2 invalid config, target or options."""


def _flash_parser(sub) -> None:
    f = sub.add_parser(
        "flash", help="validate, render and deliver a config to a node (folder, ssh, mqtt)",
        description="Validate FILE, render it with every default filled in, print its sha256 "
        "and deliver exactly those bytes to TARGET.",
        epilog=FLASH_EPILOG.format(forms=TARGET_FORMS),
        formatter_class=argparse.RawDescriptionHelpFormatter)
    f.add_argument("file", help="node config (YAML) to flash")
    f.add_argument("--to", required=True, metavar="TARGET", dest="target",
                   help="folder or .yaml file, ssh://... or mqtt[s]://... (see below)")
    f.add_argument("--mkdir", action="store_true",
                   help="folder and file targets: create the folder if it does not exist")
    f.add_argument("--json", action="store_true",
                   help='print {"source", "target", "sha256", "bytes", "verified"} on stdout '
                   "(progress goes to stderr)")
    s = f.add_argument_group("ssh:// targets")
    s.add_argument("--identity", metavar="FILE", help="private key file (ssh -i)")
    s.add_argument("--ssh-option", action="append", default=[], metavar="KEY=VALUE",
                   dest="ssh_options", help="ssh/scp -o option, repeatable "
                   "(BatchMode=yes is always set)")
    m = f.add_argument_group("mqtt:// and mqtts:// targets")
    m.add_argument("--username", help="your broker user name")
    m.add_argument("--password-file", metavar="FILE",
                   help="file whose first line is your broker password (never printed)")
    m.add_argument("--ca-file", metavar="FILE", help="CA certificate, PEM (default: system CAs)")
    m.add_argument("--cert-file", metavar="FILE", help="client certificate, PEM")
    m.add_argument("--key-file", metavar="FILE", help="client certificate's private key, PEM")
    m.add_argument("--wait", type=float, default=0.0, metavar="SECONDS",
                   help="wait this long for the node to report the new config_sha256 in its "
                   "state (exit 1 if it rejects the config or does not apply it in time); "
                   "default 0: do not wait")


def _flash(args) -> int:
    out = sys.stderr if args.json else sys.stdout
    try:
        result = flash(args.file, args.target, mkdir=args.mkdir, identity=args.identity,
                       ssh_options=args.ssh_options, username=args.username,
                       password_file=args.password_file, ca_file=args.ca_file,
                       cert_file=args.cert_file, key_file=args.key_file, wait=args.wait,
                       progress=lambda line: print(line, file=out, flush=True),
                       warn=lambda line: print(f"warning: {line}", file=sys.stderr, flush=True))
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except FlashError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_status
    if args.json:
        print(json.dumps(result.as_dict()))
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m firmware_config",
                                description="Validate, inspect and flash node configuration files.")
    sub = p.add_subparsers(dest="cmd", required=True)
    v = sub.add_parser("validate", help="check a config file; exit 2 naming each bad field")
    v.add_argument("file")
    s = sub.add_parser("show", help="print the config with every default filled in (JSON)")
    s.add_argument("file")
    _flash_parser(sub)
    args = p.parse_args(argv)
    if args.cmd == "flash":
        return _flash(args)
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
