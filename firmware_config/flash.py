"""Flash a node configuration: validate, render, hash, deliver, verify.

``python -m firmware_config flash FILE --to TARGET`` validates ``FILE``, renders it to a
canonical YAML document with every default filled in, and delivers exactly those bytes to
one of three targets:

* a local folder (a mounted SD card, the node's config folder: ``<dir>/node.yaml``) or a
  local ``.yaml``/``.yml`` file, written atomically and read back (``mkdir``: the folder is
  created first);
* ``ssh://[user@]host[:port]/absolute/path`` (a folder, or a ``.yaml``/``.yml`` file), copied
  with the system ``scp`` to a temporary name, renamed with ``mv -f`` and checked with the
  remote ``sha256sum``;
* ``mqtt://host[:port]/<node_id>`` (``mqtts://`` for TLS), published retained with QoS 1 on
  ``<prefix>/<site>/<node_id>/config``; optionally waiting until the node reports the new
  ``config_sha256`` in its retained ``state`` (or rejects the config on ``reply``, which
  carries the same ``config_sha256``). Before publishing, the node's retained ``status``
  is looked up: a node that lives under another site or prefix never sees the config (they
  cannot change over MQTT), so that is refused and nothing is published.

The rendered bytes are the node's config file, so their SHA-256 is what the node reports as
``config_sha256`` once it runs with them. Relative paths stay relative and resolve against
the folder of the node's config file: for a folder or ``ssh://`` target, the files that the
node reads (models, calibration, keywords, replayed audio, secrets) are looked up where the
node will look, and each one that is not there is reported as a warning.
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import posixpath
import queue
import re
import secrets
import shlex
import subprocess
import tempfile
from pathlib import Path
from typing import Callable, Optional, Sequence
from urllib.parse import unquote, urlsplit

import yaml

from firmware_config.errors import HarkError
from firmware_config.fileio import (SecretFileError, atomic_write_bytes, read_secret_file,
                                    sha256_file)
from firmware_config.schema import NodeConfig, load_config, parse_config_text

__all__ = ["FlashError", "DeliveryError", "FlashResult", "render", "config_hash", "flash",
           "TARGET_FORMS"]

TARGET_FORMS = """\
  DIR or FILE.yaml                     a local folder (mounted SD card, the node's config
                                       folder; writes DIR/node.yaml) or a .yaml/.yml file
  ssh://[user@]host[:port]/abs/path    a folder (writes node.yaml in it) or a .yaml/.yml file
                                       on the node, via the system ssh and scp
  mqtt://host[:port]/NODE_ID           retained QoS 1 message on <prefix>/<site>/NODE_ID/config
                                       (mqtts:// for TLS)"""

HEADER = ("# hark node config, rendered by python -m firmware_config flash from {name}; "
          "edit the source and flash again\n")
NODE_FILE = "node.yaml"
SSH_TIMEOUT_S = 120.0       # backstop for one ssh/scp call (ConnectTimeout handles dead hosts)
MQTT_TIMEOUT_S = 10.0       # CONNACK, SUBACK and PUBACK each
# Remote paths are passed to scp, whose legacy protocol lets the remote shell interpret them
# and whose SFTP protocol does not: only characters that mean the same to both are accepted.
_SAFE_REMOTE_PATH = re.compile(r"^/[A-Za-z0-9._/+,@=-]*$")
_SSH_USER = re.compile(r"^[A-Za-z0-9._][A-Za-z0-9._-]*$")
_SSH_HOST = re.compile(r"^[A-Za-z0-9.:][A-Za-z0-9.:-]*$")      # never an option ("-o...")
_SSH_OPTION = re.compile(r"^[A-Za-z][A-Za-z0-9]*=\S.*$")


class FlashError(HarkError, ValueError):
    """The target, an option, or the combination of both is wrong; nothing was delivered.

    The command line exits with status 2, as for an invalid config.
    """

    exit_status = 2


class DeliveryError(FlashError):
    """Delivery or verification failed (ssh/scp error, broker unreachable, hash mismatch,
    the node rejected the config or did not apply it in time). Exit status 1."""

    exit_status = 1


@dataclasses.dataclass(frozen=True)
class FlashResult:
    """What was flashed where.

    Attributes
    ----------
    source : str
        The config file that was validated and rendered.
    target : str
        Where the rendered bytes went: a local file, ``ssh://host/path/node.yaml`` or
        ``mqtt://host:port/<topic>``.
    sha256 : str
        SHA-256 (hex) of the rendered bytes; the node's ``config_sha256``.
    bytes : int
        Size of the rendered document in bytes.
    verified : bool
        Files: read back with this hash. MQTT: the node reported this hash in its ``state``
        (only with ``wait``); False when only the broker acknowledged the message.
    """

    source: str
    target: str
    sha256: str
    bytes: int
    verified: bool

    def as_dict(self) -> dict:
        """The JSON summary ``{"source", "target", "sha256", "bytes", "verified"}``."""
        return dataclasses.asdict(self)


def render(cfg: NodeConfig, source_name: str) -> bytes:
    """Render a validated config as the canonical YAML document a node runs with.

    Every default is filled in, keys keep the schema's order, relative paths stay as
    written (the node resolves them against its config file's folder) and there is no
    timestamp: the same config always renders to the same bytes, and rendering the
    rendered document again gives it back unchanged.

    Parameters
    ----------
    cfg : NodeConfig
        The validated configuration.
    source_name : str
        Named in the header comment; only its last path component is used.

    Returns
    -------
    bytes
        UTF-8 YAML: a header comment, then ``cfg.model_dump(by_alias=True, mode="json")``.

    Raises
    ------
    FlashError
        If the rendered document does not validate back to the same config (a schema
        type that does not survive YAML; a bug, not a user error).
    """
    name = "".join(c if c.isprintable() else "?" for c in Path(source_name).name)
    doc = cfg.model_dump(by_alias=True, mode="json")
    rendered = (HEADER.format(name=name) + yaml.safe_dump(doc, sort_keys=False,
                                                          allow_unicode=True)).encode("utf-8")
    again = parse_config_text(rendered, f"rendered {name}").model_dump(by_alias=True, mode="json")
    if again != doc:
        changed = sorted(k for k in doc if doc[k] != again.get(k))
        raise FlashError(f"rendered {name} does not validate back to the same config "
                         f"(sections differ: {', '.join(changed)})")
    return rendered


def config_hash(rendered: bytes) -> str:
    """SHA-256 (hex) of the rendered bytes: the node's ``config_sha256`` once it runs them."""
    return hashlib.sha256(rendered).hexdigest()


def flash(path: str | Path, target: str, *, mkdir: bool = False, identity: Optional[str] = None,
          ssh_options: Sequence[str] = (), username: Optional[str] = None,
          password_file: Optional[str] = None, ca_file: Optional[str] = None,
          cert_file: Optional[str] = None, key_file: Optional[str] = None,
          wait: float = 0.0, progress: Optional[Callable[[str], None]] = None,
          warn: Optional[Callable[[str], None]] = None) -> FlashResult:
    """Validate ``path``, render it and deliver the rendered bytes to ``target``.

    Parameters
    ----------
    path : str or Path
        The node config (YAML) to flash.
    target : str
        A local folder or ``.yaml``/``.yml`` file, ``ssh://[user@]host[:port]/abs/path`` or
        ``mqtt[s]://host[:port]/<node_id>`` (see :data:`TARGET_FORMS`).
    mkdir : bool
        Local targets: create the target folder (and its parents) if it does not exist;
        without it a missing folder is an error that says so.
    identity : str, optional
        ssh targets: private key file (``ssh -i``).
    ssh_options : sequence of str
        ssh targets: ``KEY=VALUE`` options (``ssh -o``); ``BatchMode=yes`` is always set, so
        ssh never waits for a password.
    username : str, optional
        MQTT targets: the installer's broker user name.
    password_file : str, optional
        MQTT targets: file whose first line is the broker password (never printed).
    ca_file, cert_file, key_file : str, optional
        ``mqtts://`` targets: CA certificate (default: the system's CAs), client
        certificate and its key (PEM files).
    wait : float
        MQTT targets: seconds to wait for the node to report the flashed hash in its
        retained ``state`` (0: return once the broker acknowledged the message).
    progress : callable, optional
        Called with one human-readable line per step (validated, rendered, sha256,
        delivered, verified).
    warn : callable, optional
        Called with one line per problem that does not stop the flash: a relative path
        whose file the node will not find where it looks (next to the config it runs).
        Default: ``progress``, prefixed ``warning:``.

    Returns
    -------
    FlashResult

    Raises
    ------
    ConfigError
        ``path`` is missing or invalid (every bad field named); nothing is written.
    FlashError
        The target or an option is wrong (unknown target form, missing folder without
        ``mkdir``, node id in the URL differs from ``node.id``, the node lives under another
        ``node.site`` or ``mqtt.prefix`` than the config's, an option for another kind of
        target); nothing was delivered.
    DeliveryError
        Delivery or verification failed; the message carries ssh's/scp's stderr, the
        broker's reason or the node's reply.
    """
    say = progress or (lambda line: None)
    cfg = load_config(path)
    say(f"validated {path} (node {cfg.topic_root})")
    deliver = _target(target, cfg, Path(path), mkdir=mkdir, identity=identity,
                      ssh_options=ssh_options, username=username, password_file=password_file,
                      ca_file=ca_file, cert_file=cert_file, key_file=key_file, wait=wait,
                      warn=warn or (lambda line: say(f"warning: {line}")))
    rendered = render(cfg, str(path))
    digest = config_hash(rendered)
    say(f"rendered {len(rendered)} bytes")
    say(f"sha256 {digest}")
    where, verified = deliver(rendered, digest, say)
    return FlashResult(str(path), where, digest, len(rendered), verified)


# -- targets ------------------------------------------------------------------------------
Deliver = Callable[[bytes, str, Callable[[str], None]], tuple[str, bool]]


def _target(target: str, cfg: NodeConfig, source: Path, *, mkdir, identity, ssh_options,
            username, password_file, ca_file, cert_file, key_file, wait, warn) -> Deliver:
    """Parse ``target`` and check the options against it; return the delivery function."""
    scheme = target.split("://", 1)[0].lower() if "://" in target else ""
    if scheme and mkdir:
        raise FlashError("--mkdir only applies to folder and file targets")
    ssh_given = [n for n, v in (("--identity", identity), ("--ssh-option", ssh_options)) if v]
    mqtt_given = [n for n, v in (("--username", username), ("--password-file", password_file),
                                 ("--ca-file", ca_file), ("--cert-file", cert_file),
                                 ("--key-file", key_file), ("--wait", wait)) if v]
    if scheme not in ("ssh", "mqtt", "mqtts") and "://" in target:
        raise FlashError(f"unknown target {target!r}; use one of:\n{TARGET_FORMS}")
    if scheme != "ssh" and ssh_given:
        raise FlashError(f"{', '.join(ssh_given)} only apply to ssh:// targets")
    if scheme not in ("mqtt", "mqtts") and mqtt_given:
        raise FlashError(f"{', '.join(mqtt_given)} only apply to mqtt:// and mqtts:// targets")
    if scheme == "ssh":
        return _ssh_target(target, cfg, identity, ssh_options, warn)
    if scheme in ("mqtt", "mqtts"):
        return _mqtt_target(target, cfg, username=username, password_file=password_file,
                            ca_file=ca_file, cert_file=cert_file, key_file=key_file, wait=wait)
    return _file_target(target, cfg, source, mkdir, warn)


# -- relative paths -------------------------------------------------------------------------
def _node_read_paths(cfg: NodeConfig) -> list[tuple[str, str, bool]]:
    """The files a node running ``cfg`` reads, as ``(key, path as written, required)``.

    Required: the models of the enabled parts, replayed audio, the broker password and TLS
    files (the node does not start without them). Optional: the calibration and the
    enrolled keywords (without them the node learns normal operation, or spots nothing).
    The spool is written, not read, and is not listed.
    """
    a, k, m = cfg.asd, cfg.kws, cfg.mqtt
    out: list[tuple[str, str, bool]] = []
    if a.enabled:
        out += [("asd.model", a.model, True), ("asd.calibration", a.calibration, False)]
    if k.enabled:
        out += [("kws.model", k.model, True), ("kws.keywords", k.keywords, False)]
    out += [(f"audio.files[{i}]", f, True) for i, f in enumerate(cfg.audio.files)]
    out += [(f"mqtt.{name}", v, True) for name, v in (
        ("password_file", m.password_file), ("tls.ca_file", m.tls.ca_file),
        ("tls.cert_file", m.tls.cert_file), ("tls.key_file", m.tls.key_file)) if v]
    return out


def _relative(cfg: NodeConfig) -> list[tuple[str, str, bool]]:
    return [(key, value, required) for key, value, required in _node_read_paths(cfg)
            if not Path(value).expanduser().is_absolute()]


def _missing_on_target(key: str, value: str, there: str, here: Path, required: bool) -> str:
    """The warning for a relative path whose file is not where the node will look."""
    if here.exists():
        return (f"{key}: {value!r} is relative to the config's folder: here it is {here}, on "
                f"the target {there}, which does not exist; make it absolute (the path on the "
                f"node) or put the file there")
    what = "the node will not start without it" if required else "the node runs without it"
    return f"{key}: {value!r} will be {there} on the target, which does not exist ({what})"


def _local_path_warnings(cfg: NodeConfig, folder: Path) -> list[str]:
    """Warnings for relative paths that do not resolve to a file next to ``folder``."""
    out = []
    for key, value, required in _relative(cfg):
        there = Path(os.path.normpath(folder.resolve() / Path(value).expanduser()))
        here = cfg.resolve(value)
        if not there.exists() and (required or here.exists()):
            out.append(_missing_on_target(key, value, str(there), here, required))
    return out


def _is_yaml_name(path: str) -> bool:
    return path.lower().endswith((".yaml", ".yml"))


def _file_target(target: str, cfg: NodeConfig, source: Path, mkdir: bool, warn) -> Deliver:
    path = Path(target).expanduser()
    if not _is_yaml_name(target):
        if path.exists() and not path.is_dir():
            raise FlashError(f"target {target!r} is a file but not a .yaml/.yml file; use "
                             f"one of:\n{TARGET_FORMS}")
        if not path.is_dir() and not mkdir:
            raise FlashError(f"target {target!r} is not an existing folder nor a .yaml/.yml "
                             f"file (is the SD card mounted? add --mkdir to create the "
                             f"folder); use one of:\n{TARGET_FORMS}")
        path = path / NODE_FILE
    elif not path.parent.is_dir() and not mkdir:
        raise FlashError(f"target {target!r}: folder {str(path.parent)!r} does not exist "
                         f"(add --mkdir to create it)")
    if path.exists() and path.resolve() == source.resolve():
        raise FlashError(f"target {target!r} is the source file itself; flash to another file")

    def deliver(rendered: bytes, digest: str, say) -> tuple[str, bool]:
        if not path.parent.is_dir():
            try:
                path.parent.mkdir(parents=True)
            except OSError as exc:
                raise DeliveryError(f"cannot create folder {path.parent}: "
                                    f"{exc.strerror or exc}") from None
            say(f"created folder {path.parent}")
        for line in _local_path_warnings(cfg, path.parent):
            warn(line)
        try:
            atomic_write_bytes(path, rendered)
        except OSError as exc:
            raise DeliveryError(f"cannot write {path}: {exc.strerror or exc}") from None
        say(f"delivered to {path}")
        found = sha256_file(path)
        if found != digest:
            raise DeliveryError(f"{path} reads back with sha256 {found}, expected {digest}")
        say(f"verified {path} (sha256 matches)")
        return str(path), True

    return deliver


def _ssh_target(target: str, cfg: NodeConfig, identity, ssh_options, warn) -> Deliver:
    url = urlsplit(target)
    try:
        host, port, user = url.hostname, url.port, url.username
    except ValueError as exc:                              # a port that is not a number
        raise FlashError(f"target {target!r}: {exc}") from None
    path = unquote(url.path)
    if not host or not _SSH_HOST.match(host):
        raise FlashError(f"target {target!r}: expected ssh://[user@]host[:port]/absolute/path")
    if user is not None and not _SSH_USER.match(user):
        raise FlashError(f"target {target!r}: invalid user name {user!r}")
    if not _SAFE_REMOTE_PATH.match(path):
        raise FlashError(f"target {target!r}: the remote path must be absolute and use only "
                         f"letters, digits and . _ / + , @ = - (got {path!r})")
    for opt in ssh_options:
        if not _SSH_OPTION.match(opt):
            raise FlashError(f"--ssh-option {opt!r}: expected KEY=VALUE, e.g. "
                             f"StrictHostKeyChecking=accept-new")
    if identity is not None:
        identity = str(Path(identity).expanduser())
        if not Path(identity).is_file():
            raise FlashError(f"--identity {identity!r}: no such file")
    remote = path if _is_yaml_name(path) else f"{path.rstrip('/')}/{NODE_FILE}"
    folder, name = remote.rsplit("/", 1)
    tmp = f"{folder}/.{name}.{secrets.token_hex(6)}.tmp"
    dest = f"{user}@{host}" if user else host
    scp_host = f"[{host}]" if ":" in host else host              # IPv6 literal
    scp_dest = f"{user}@{scp_host}" if user else scp_host
    where = f"ssh://{dest}{'' if port is None else f':{port}'}{remote}"
    # ssh uses the first value given for an option: BatchMode first, so it cannot be undone.
    opts = ["-o", "BatchMode=yes", *(a for o in ssh_options for a in ("-o", o)),
            "-o", "ConnectTimeout=10", *(["-i", identity] if identity else [])]

    def deliver(rendered: bytes, digest: str, say) -> tuple[str, bool]:
        with tempfile.TemporaryDirectory(prefix="hark-flash-") as local_dir:
            local = Path(local_dir) / NODE_FILE
            local.write_bytes(rendered)
            _run(["scp", *opts, *(["-P", str(port)] if port else []), "--",
                  str(local), f"{scp_dest}:{tmp}"],
                 f"scp to {dest}:{tmp}")
        ssh = ["ssh", *opts, *(["-p", str(port)] if port else []), "--", dest]
        # One remote command line, run by the remote user's shell: every argument quoted.
        install = (f"{shlex.join(['mv', '-f', tmp, remote])} && sync && "
                   f"{shlex.join(['sha256sum', remote])}")
        try:
            out = _run([*ssh, install], f"ssh {dest} mv -f {tmp} {remote}")
        except DeliveryError:
            with contextlib.suppress(OSError, subprocess.SubprocessError):   # best effort
                subprocess.run([*ssh, shlex.join(["rm", "-f", tmp])], capture_output=True,
                               stdin=subprocess.DEVNULL, timeout=SSH_TIMEOUT_S)
            raise
        say(f"delivered to {where}")
        found = out.split()[0] if out.split() else "(no output)"
        if found != digest:
            raise DeliveryError(f"{where}: remote sha256sum reports {found}, expected {digest}")
        say(f"verified {where} (remote sha256sum matches)")
        relative = [(key, value, required, posixpath.normpath(posixpath.join(folder, value)))
                    for key, value, required in _relative(cfg)]
        if relative:       # where the node will look for them: one more call lists the missing
            check = "; ".join(f"[ -e {shlex.quote(there)} ] || echo {i}"
                              for i, (_, _, _, there) in enumerate(relative))
            try:
                missing = {int(i) for i in _run([*ssh, check], f"ssh {dest} test -e").split()}
            except (DeliveryError, ValueError) as exc:
                warn(f"could not check the config's relative paths on {dest}: {exc}")
                missing = set()
            for i, (key, value, required, there) in enumerate(relative):
                if i in missing and (required or cfg.resolve(value).exists()):
                    warn(_missing_on_target(key, value, there, cfg.resolve(value), required))
        return where, True

    return deliver


def _run(argv: list[str], what: str) -> str:
    """Run ssh/scp (argument list, no local shell); return stdout or raise DeliveryError."""
    try:
        res = subprocess.run(argv, capture_output=True, text=True, stdin=subprocess.DEVNULL,
                             timeout=SSH_TIMEOUT_S)
    except FileNotFoundError:
        raise DeliveryError(f"{argv[0]} not found: install openssh-client") from None
    except subprocess.TimeoutExpired:
        raise DeliveryError(f"{what}: no answer within {SSH_TIMEOUT_S:.0f} s") from None
    if res.returncode != 0:
        raise DeliveryError(f"{what} failed (exit status {res.returncode}): "
                            f"{res.stderr.strip() or 'no error output'}")
    return res.stdout


def _mqtt_target(target: str, cfg: NodeConfig, *, username, password_file, ca_file, cert_file,
                 key_file, wait) -> Deliver:
    url = urlsplit(target)
    tls = url.scheme.lower() == "mqtts"
    try:
        host, port = url.hostname, url.port or (8883 if tls else 1883)
    except ValueError as exc:
        raise FlashError(f"target {target!r}: {exc}") from None
    node_id = unquote(url.path).strip("/")
    if not host or not node_id or "/" in node_id:
        raise FlashError(f"target {target!r}: expected {url.scheme}://host[:port]/<node_id>")
    if node_id != cfg.node.id:
        raise FlashError(f"target {target!r} names node {node_id!r} but the config is for "
                         f"node.id {cfg.node.id!r}; refusing to flash another node's config")
    if not tls and (ca_file or cert_file or key_file):
        raise FlashError("--ca-file/--cert-file/--key-file need an mqtts:// target")
    if (cert_file is None) != (key_file is None):
        raise FlashError("--cert-file and --key-file go together")
    if password_file and not username:
        raise FlashError("--password-file needs --username")
    if wait < 0:
        raise FlashError(f"--wait must be >= 0 seconds (got {wait})")
    for option, value in (("--ca-file", ca_file), ("--cert-file", cert_file),
                          ("--key-file", key_file)):
        if value is not None and not Path(value).is_file():
            raise FlashError(f"{option} {value!r}: no such file")
    password = None
    if password_file:
        try:
            password = read_secret_file(Path(password_file), "--password-file")
        except SecretFileError as exc:
            raise FlashError(str(exc)) from None
    root = cfg.topic_root
    topic = f"{root}/config"
    where = f"{url.scheme.lower()}://{host}:{port}/{topic}"
    # Where node <node_id> lives: its retained status, under a prefix of 1 to 3 levels.
    probes = [f"{'+/' * (levels + 1)}{node_id}/status" for levels in (1, 2, 3)]

    def deliver(rendered: bytes, digest: str, say) -> tuple[str, bool]:
        import paho.mqtt.client as mqtt

        client = mqtt.Client(callback_api_version=mqtt.CallbackAPIVersion.VERSION2,
                             client_id=f"hark-flash-{os.getpid()}-{secrets.token_hex(4)}",
                             protocol=mqtt.MQTTv311, clean_session=True)
        if username:
            client.username_pw_set(username, password)
        if tls:
            try:
                client.tls_set(ca_certs=ca_file, certfile=cert_file, keyfile=key_file)
            except (OSError, ValueError) as exc:      # not PEM, key does not match the cert
                raise FlashError(f"cannot use --ca-file/--cert-file/--key-file: {exc}") from None
        acks: queue.Queue = queue.Queue()       # CONNACK / SUBACK reason codes
        outcome: queue.Queue = queue.Queue()    # ("applied" | "rejected", payload)
        homes: set[str] = set()                 # topic roots with node_id's retained status
        client.on_connect = lambda c, u, flags, rc, props: acks.put(rc)
        client.on_subscribe = lambda c, u, mid, rcs, props: acks.put(rcs)

        def on_message(c, u, msg) -> None:
            if msg.topic.endswith(f"/{node_id}/status"):
                if msg.retain:
                    homes.add(msg.topic[:-len("/status")])
                return
            try:
                payload = json.loads(msg.payload)
            except ValueError:
                return
            # Every answer to a flashed config carries its hash (a reply to another config,
            # or the old retained state, does not count).
            if not isinstance(payload, dict) or payload.get("config_sha256") != digest:
                return
            if msg.topic == f"{root}/state":
                outcome.put(("applied", payload))
            elif (msg.topic == f"{root}/reply" and payload.get("command") == "config"
                  and payload.get("status") in ("failed", "rejected")):
                outcome.put(("rejected", payload))

        client.on_message = on_message
        try:
            client.connect(host, port, keepalive=30)
        except OSError as exc:                  # refused, unreachable, DNS, TLS handshake
            raise DeliveryError(f"cannot connect to MQTT broker {host}:{port}: {exc}") from None
        client.loop_start()
        try:
            rc = _ack(acks, f"no CONNACK from MQTT broker {host}:{port}")
            if rc.is_failure:
                raise DeliveryError(f"MQTT broker {host}:{port} refused the connection: {rc}")
            waits = [(f"{root}/state", 1), (f"{root}/reply", 1)] if wait else []
            client.subscribe([(probe, 0) for probe in probes] + waits)
            codes = _ack(acks, f"no SUBACK from {host}:{port}")
            if any(r.is_failure for r in codes[len(probes):]):
                raise DeliveryError(f"MQTT broker {host}:{port} refused the subscription to "
                                    f"{root}/state and {root}/reply (ACL?)")
            # The broker sends retained messages right after a SUBACK: once a second
            # SUBACK is in, every retained status is too.
            client.subscribe(f"{root}/flash-{secrets.token_hex(4)}", 0)
            _ack(acks, f"no SUBACK from {host}:{port}")
            if all(r.is_failure for r in codes[:len(probes)]):
                say(f"could not check where node {node_id} lives (the broker refused to show "
                    f"its status); node.site and mqtt.prefix must be the node's")
            elif homes and root not in homes:
                raise FlashError(_elsewhere(cfg, sorted(homes), topic))
            elif not homes:
                say(f"no node {node_id} has reported its status on this broker yet; it will "
                    f"find the config when it runs as {root}")
            info = client.publish(topic, rendered, qos=1, retain=True)
            info.wait_for_publish(MQTT_TIMEOUT_S)
            if not info.is_published():
                raise DeliveryError(f"MQTT broker {host}:{port} did not acknowledge {topic} "
                                    f"within {MQTT_TIMEOUT_S:.0f} s")
            say(f"delivered to {where} (retained, QoS 1, acknowledged by the broker)")
            if not wait:
                say(f"not verified: node {root} applies it when it receives it "
                    f"(--wait SECONDS waits for its state)")
                return where, False
            say(f"waiting up to {wait:g} s for node {root} to report it in {root}/state")
            try:
                kind, payload = outcome.get(timeout=wait)
            except queue.Empty:
                raise DeliveryError(f"node {root} did not report config_sha256 {digest} in "
                                    f"{root}/state within {wait:g} s (offline?); the config "
                                    f"stays retained on {topic}") from None
            if kind == "rejected":
                detail = payload.get("message") or payload.get("error") or json.dumps(payload)
                raise DeliveryError(f"node {root} did not apply the config "
                                    f"({payload['status']}): {detail}")
            say(f"verified: node {root} runs it (config_sha256 in {root}/state matches)")
            return where, True
        finally:
            client.disconnect()
            client.loop_stop()

    return deliver


def _elsewhere(cfg: NodeConfig, homes: list[str], topic: str) -> str:
    """Why a config for ``cfg.topic_root`` is not published when the node lives at ``homes``."""
    found = []
    for home in homes:
        prefix, site, _ = home.rsplit("/", 2)
        diff = [f"node.site {site!r}" if site != cfg.node.site else "",
                f"mqtt.prefix {prefix!r}" if prefix != cfg.mqtt.prefix else ""]
        found.append(f"{home} ({', '.join(d for d in diff if d)})")
    return (f"node {cfg.node.id} is at {' and '.join(found)}, but the config is for "
            f"{cfg.topic_root} (node.site {cfg.node.site!r}, mqtt.prefix {cfg.mqtt.prefix!r}); "
            f"the node would never see it on {topic}, since node.site and mqtt.prefix cannot "
            f"change over MQTT. Nothing was published: set them to the node's, or flash the "
            f"new ones to the node's folder or over ssh")


def _ack(acks: queue.Queue, timeout_message: str):
    try:
        return acks.get(timeout=MQTT_TIMEOUT_S)
    except queue.Empty:
        raise DeliveryError(f"{timeout_message} within {MQTT_TIMEOUT_S:.0f} s") from None
