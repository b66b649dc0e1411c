"""The one node configuration schema, validated before anything runs.

Unknown keys, wrong types and out-of-range values are rejected with the dotted path of
the field (``asd.hop_seconds: ...``). Relative paths in the file are resolved against the
folder of the config file.

The defaults here are the only ones: ``firmware_config/default.yaml`` spells out the same
values with comments (a test keeps the two equal) and the README's configuration table
lists them. The default paths (``../models/...``, ``../var/...``) assume a config one folder
below the project, like ``etc/node.yaml`` or ``firmware_config/default.yaml``; a config
kept anywhere else names its paths.
"""
from __future__ import annotations

import hashlib
import io
from pathlib import Path
from typing import Any, Literal, Optional, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from firmware_config.errors import HarkError

__all__ = ["ConfigError", "NodeConfig", "THRESHOLD_METHODS", "check_threshold_method",
           "load_config", "load_config_or_exit", "parse_config", "parse_config_text",
           "format_errors"]

_NAME = r"^[A-Za-z0-9_-]{1,64}$"


class ConfigError(HarkError, ValueError):
    """An invalid or unreadable node configuration; ``errors`` lists ``(path, message)``."""

    def __init__(self, source: str, errors: list[tuple[str, str]]):
        self.source = source
        self.errors = errors
        lines = "\n".join(f"  {p}: {m}" for p, m in errors)
        super().__init__(f"invalid configuration {source}:\n{lines}")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class NodeSection(_Section):
    id: str = Field("node-01", pattern=_NAME, description="node id, part of every topic")
    site: str = Field("default", pattern=_NAME, description="site name, part of every topic")


class TlsSection(_Section):
    enabled: bool = Field(False, description="connect with TLS (port 8883 by convention)")
    ca_file: Optional[str] = Field(None, min_length=1,
                                   description="CA certificate (PEM); null: the system's CAs")
    cert_file: Optional[str] = Field(None, min_length=1,
                                     description="client certificate (PEM), optional")
    key_file: Optional[str] = Field(None, min_length=1,
                                    description="client certificate's private key (PEM)")

    @model_validator(mode="after")
    def _pair(self):
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file go together")
        if not self.enabled and (self.ca_file or self.cert_file):
            raise ValueError("ca_file/cert_file are set but enabled is false")
        return self


class MqttSection(_Section):
    host: str = Field("localhost", min_length=1)
    port: int = Field(1883, ge=1, le=65535)
    prefix: str = Field("hark", pattern=r"^[A-Za-z0-9_-]{1,64}(/[A-Za-z0-9_-]{1,64})*$")
    client_id: Optional[str] = Field(None, pattern=r"^[A-Za-z0-9_.-]{1,128}$")
    keepalive: int = Field(30, ge=5, le=3600, description="seconds")
    qos: Literal[1, 2] = Field(1, description="QoS of events: 1 (at least once) or 2; a spooled "
                               "event is deleted only after the broker acknowledged it")
    heartbeat_seconds: float = Field(30.0, gt=0, le=3600)
    reconnect_min_seconds: float = Field(1.0, gt=0, le=60)
    reconnect_max_seconds: float = Field(60.0, gt=0, le=3600)
    username: Optional[str] = Field(None, min_length=1, max_length=256,
                                    description="broker user name (the ACL example uses the node id)")
    password_file: Optional[str] = Field(
        None, min_length=1, description="file holding the broker password (first line); the "
        "password itself is never in the config and never logged")
    tls: TlsSection = Field(default_factory=TlsSection)
    anonymous_commands: bool = Field(
        False, description="accept commands and configs over a connection without a username "
        "(then anyone who can publish on that broker can send them)")

    @model_validator(mode="after")
    def _backoff(self):
        if self.reconnect_max_seconds < self.reconnect_min_seconds:
            raise ValueError("reconnect_max_seconds must be >= reconnect_min_seconds")
        if self.password_file is not None and self.username is None:
            raise ValueError("password_file needs a username")
        return self


class AudioSection(_Section):
    device: Union[int, str, None] = Field(None, description="input device name or index")
    sample_rate: Literal[16000] = 16000
    block_seconds: float = Field(0.1, gt=0, le=1.0)
    ring_seconds: float = Field(60.0, ge=1, le=3600)
    files: list[str] = Field(default_factory=list,
                             description="replay these WAV/FLAC files instead of capturing")
    realtime: bool = Field(False, description="replay files at real-time speed")
    silence_dbfs: float = Field(-70.0, ge=-150, le=0,
                                description="level (dBFS) below which input counts as silent")
    silence_seconds: float = Field(60.0, gt=0, le=86400,
                                   description="silent this long: an audio health event")
    clipping_fraction: float = Field(0.001, gt=0, le=1, description="fraction of samples at "
                                     "full scale (|x| >= 0.999) per second that counts as clipping")
    clipping_seconds: float = Field(5.0, gt=0, le=3600,
                                    description="clipping this long: an audio health event")
    reopen_max_seconds: float = Field(60.0, ge=1, le=3600,
                                      description="longest wait between attempts to reopen a "
                                      "lost input device (backoff from 1 s)")

    @field_validator("device")
    @classmethod
    def _device(cls, v):
        if isinstance(v, int) and v < 0:
            raise ValueError("must be a device name or a non-negative index")
        if isinstance(v, str) and not v.strip():
            raise ValueError("must not be empty (use null for the default input)")
        return v


class SpoolSection(_Section):
    path: str = Field("../var/spool.sqlite", min_length=1,
                      description="SQLite (WAL) file holding every event until the broker acked it")
    max_events: int = Field(100_000, ge=10, le=10_000_000,
                            description="bound on spooled events; beyond it drop_policy applies")
    drop_policy: Literal["oldest", "newest"] = Field(
        "oldest", description="full spool: drop the oldest spooled event, or the new one")


class HomeAssistantSection(_Section):
    enabled: bool = Field(True, description="publish Home Assistant MQTT discovery (retained)")
    discovery_prefix: str = Field("homeassistant", pattern=r"^[A-Za-z0-9_-]{1,64}$")


#: The decision-threshold estimators a config may name (``asd.threshold.method``, and
#: ``threshold_method`` of ``cmd/recalibrate``): :data:`calibration.thresholds.THRESHOLD_METHODS`,
#: spelled out here so the config stays a leaf (a test keeps the two equal).
THRESHOLD_METHODS = ("gdp", "hp", "sd", "mad", "iqr", "ocsvm", "gesd", "cleversd", "fpr",
                     "mst-gdp", "mst-hp", "mst-sd", "mst-mad", "mst-iqr", "mst-ocsvm")


def check_threshold_method(v: str | None) -> str | None:
    """``v`` if it is one of :data:`THRESHOLD_METHODS` (or None); else ``ValueError`` listing them."""
    if v is not None and v not in THRESHOLD_METHODS:
        raise ValueError(f"unknown method {v!r}; choose one of {', '.join(THRESHOLD_METHODS)}")
    return v


#: ``asd.views`` by default (names of :data:`edge.views.VIEWS`, spelled out here so the
#: config stays a leaf); chosen by the leave-one-machine-type-out evaluation (README, "The
#: spectrum branch alone").
DEFAULT_ASD_VIEWS = ("branch_spectrum", "stft_statistics", "level_statistics", "pca_residual")


class ThresholdSection(_Section):
    method: str = Field("fpr", description="decision threshold estimator")
    params: dict[str, Union[float, int]] = Field(default_factory=dict)

    _method = field_validator("method")(check_threshold_method)


class AsdSection(_Section):
    enabled: bool = True
    model: str = Field("../models/asd_default.tflite", min_length=1)
    calibration: str = Field("../var/asd_calibration.npz", min_length=1)
    window_seconds: float = Field(10.0, gt=0, le=60)
    hop_seconds: float = Field(2.0, gt=0, le=60)
    report: Literal["all", "anomalous"] = "all"
    n_clusters: int = Field(16, ge=1, le=256, description="k-means clusters of the memory")
    auto_calibration_seconds: float = Field(
        600.0, ge=0, le=86400,
        description="without a calibration, learn normal operation this long first (0: refuse)")
    num_threads: int = Field(1, ge=1, le=16)
    threshold: ThresholdSection = Field(default_factory=ThresholdSection)
    views: list[Literal["embedding", "branches", "branch_spectrogram", "branch_spectrum",
                        "stft_statistics", "level_statistics", "pca_residual"]] = Field(
        default_factory=lambda: list(DEFAULT_ASD_VIEWS), min_length=1,
        description="views of a window scored at calibration, each against its own memory "
                    "(edge.views); the calibration artifact keeps them")

    @field_validator("views")
    @classmethod
    def _distinct_views(cls, v):
        if len(set(v)) != len(v):
            raise ValueError(f"views {v}: each view at most once")
        single = [b for b in v if b.startswith("branch_")]
        if single and "branches" in v:
            raise ValueError(f"views {v}: 'branches' already holds {', '.join(single)}; name "
                             f"either all branches or single ones")
        return v

    @model_validator(mode="after")
    def _hop(self):
        if self.hop_seconds > self.window_seconds:
            raise ValueError("hop_seconds must not exceed window_seconds")
        if 0 < self.auto_calibration_seconds < 2 * self.window_seconds:
            raise ValueError("auto_calibration_seconds must be 0 or at least twice "
                             "window_seconds")
        return self


class KwsSection(_Section):
    enabled: bool = Field(True, description="spot enrolled keywords (idle until some are enrolled)")
    model: str = Field("../models/kws_speech.tflite", min_length=1)
    keywords: str = Field("../var/kws_keywords.npz", min_length=1,
                          description="enrolled templates and thresholds (calibration enroll)")
    segment_hop: Optional[int] = Field(
        None, ge=1, le=76, description="frontend frames between the embedder's windows "
        "(default: the bundle's own; log-mel TACos: 16 ms frames, 1..16, default 4; "
        "speech_embedding: 10 ms mel frames, 1..76, default 8)")
    false_alarms_per_hour: float = Field(1.0, gt=0, le=3600,
                                         description="per-keyword threshold target at enrollment")
    fallback_threshold: Optional[float] = Field(
        None, gt=0, lt=2, description="global DTW cost threshold when a keyword has too few "
        "negatives to fit its own (default: the model bundle's)")
    min_shot_seconds: float = Field(0.2, gt=0, le=5)
    max_shot_seconds: float = Field(2.0, gt=0, le=10)
    num_threads: int = Field(1, ge=1, le=16)

    @model_validator(mode="after")
    def _shots(self):
        if self.max_shot_seconds <= self.min_shot_seconds:
            raise ValueError("max_shot_seconds must exceed min_shot_seconds")
        return self


class LoggingSection(_Section):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"


class NodeConfig(_Section):
    """A node's configuration (``firmware_config/default.yaml`` shows every key)."""

    schema_version: Literal[1] = Field(1, alias="schema")
    node: NodeSection = Field(default_factory=NodeSection)
    mqtt: MqttSection = Field(default_factory=MqttSection)
    spool: SpoolSection = Field(default_factory=SpoolSection)
    homeassistant: HomeAssistantSection = Field(default_factory=HomeAssistantSection)
    audio: AudioSection = Field(default_factory=AudioSection)
    asd: AsdSection = Field(default_factory=AsdSection)
    kws: KwsSection = Field(default_factory=KwsSection)
    logging: LoggingSection = Field(default_factory=LoggingSection)

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, populate_by_name=True)

    # Set by load_config; not part of the schema.
    _base_dir: Path = Path(".")
    _sha256: str = ""

    @property
    def base_dir(self) -> Path:
        return self._base_dir

    @property
    def sha256(self) -> str:
        """SHA-256 of the config file's bytes (empty for configs built in code)."""
        return self._sha256

    def resolve(self, p: str | Path) -> Path:
        """Resolve a path from the config relative to the config file's folder."""
        p = Path(p).expanduser()
        return p if p.is_absolute() else (self._base_dir / p).resolve()

    @property
    def topic_root(self) -> str:
        return f"{self.mqtt.prefix}/{self.node.site}/{self.node.id}"


def format_errors(exc: ValidationError) -> list[tuple[str, str]]:
    out = []
    for e in exc.errors():
        loc = ".".join(str(x) for x in e["loc"] if not str(x).startswith("function-after"))
        loc = loc.replace("schema_version", "schema") or "(top level)"
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            msg = "unknown key"
        elif "input" in e and e["type"] not in ("missing",) and not isinstance(e["input"], dict):
            msg = f"{msg} (got {e['input']!r})"
        out.append((loc, msg))
    return out


def parse_config(doc: Any, source: str = "<config>", base_dir: Path | None = None,
                 raw: bytes = b"") -> NodeConfig:
    """Validate a parsed YAML/JSON document.

    Raises
    ------
    ConfigError
        Listing every bad field with its dotted path.
    """
    if doc is None:
        doc = {}
    if not isinstance(doc, dict):
        raise ConfigError(source, [("(top level)", f"expected a mapping, got {type(doc).__name__}")])
    try:
        cfg = NodeConfig.model_validate(doc)
    except ValidationError as exc:
        raise ConfigError(source, format_errors(exc)) from None
    object.__setattr__(cfg, "_base_dir", (base_dir or Path.cwd()).resolve())
    object.__setattr__(cfg, "_sha256", hashlib.sha256(raw).hexdigest() if raw else "")
    return cfg


def parse_config_text(raw: bytes, source: str = "<config>",
                      base_dir: Path | None = None) -> NodeConfig:
    """Validate a config document given as YAML (or JSON) bytes.

    Parameters
    ----------
    raw : bytes
        The document, UTF-8; its SHA-256 becomes :attr:`NodeConfig.sha256`.
    source : str
        Names the document in errors (a file name, an MQTT topic).
    base_dir : Path, optional
        Folder that relative paths in the document are resolved against.

    Raises
    ------
    ConfigError
        Empty (no settings at all, only comments or blanks: almost certainly a mistake),
        not UTF-8, not YAML (the message names ``source`` and the line), or invalid (every
        bad field with its dotted path).
    """
    if not isinstance(raw, (bytes, bytearray)):
        raise ConfigError(source, [("(document)", f"expected bytes, got {type(raw).__name__}")])
    try:
        text = bytes(raw).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(source, [("(document)", f"not UTF-8 text: {exc.reason} at byte "
                                                  f"{exc.start}")]) from None
    stream = io.StringIO(text)
    stream.name = source            # PyYAML names the stream in its marks ("line 3, column 7")
    try:
        doc = yaml.safe_load(stream)
    except yaml.YAMLError as exc:
        raise ConfigError(source, [("(document)", "not valid YAML: "
                                    + str(exc).replace("\n", "\n    "))]) from None
    except RecursionError:
        raise ConfigError(source, [("(document)", "not valid YAML: nested too deeply")]) from None
    if doc is None:
        raise ConfigError(source, [("(document)", (
            "empty: no settings at all (an empty file is almost certainly a mistake); a "
            "minimal config is e.g. `node: {id: press-3}` plus `mqtt: {host: ...}`, and "
            "firmware_config/default.yaml shows every key"))])
    return parse_config(doc, source, base_dir, bytes(raw))


def load_config(path: str | Path) -> NodeConfig:
    """Read and validate a node config file.

    Raises
    ------
    ConfigError
        If the file is missing, not YAML, or invalid (the message names the field).
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError(str(path), [("(file)", f"cannot read: {exc.strerror or exc}")]) from None
    return parse_config_text(raw, str(path), path.resolve().parent)


def load_config_or_exit(path: str | Path) -> NodeConfig:
    """For command-line tools: the validated config, or the error on stderr and exit status 2."""
    import sys

    try:
        return load_config(path)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
