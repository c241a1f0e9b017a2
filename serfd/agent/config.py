"""serfd configuration: TOML drop-ins merged into one frozen, validated `Config`.

Theory of operation
-------------------
`load_config(dir)` reads every `*.toml` file directly in `dir`, in lexical order of
file name (so `50-deploy.toml` is read before the shipped `serfd.toml`, which keeps
all of its keys commented out). Each file is parsed and each of its keys is checked
on its own: a value must have the right TOML type and a valid value *in the file that
sets it*, even when a later file overrides it, so a broken drop-in never hides behind
another. Valid values are then merged: later files override earlier ones key by key;
tables (`[gossip]`, `[rpc]`, `[tags]`) merge key by key; a list (`join`) is replaced as a whole.
Checks that need the merged result (the encoded size of all tags, a `[gossip]`
probe_timeout against the probe_interval in effect) run last.

Every problem is collected and reported at once in `ConfigError.errors`, one line each:

* `FILE:LINE: reason`        TOML syntax error
* `FILE: KEY: reason`        bad value, wrong type or unknown key (KEY dotted: `rpc.tcp`)
* `DIR: reason`              the directory itself is missing or unreadable

`config_to_toml(cfg)` renders the effective configuration back to TOML, durations as
Go strings, and the timings `[gossip]` leaves to the profile as comments; loading that
output gives an equal `Config` (`--check-config`).
"""

from __future__ import annotations

import ipaddress
import json
import re
import socket
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any

from serfd.base.duration import format_duration, parse_duration
from serfd.memberlist import profiles as ml_profiles
from serfd.wire.serf_messages import encode_tags

__all__ = [
    "DEFAULT_CONFIG_DIR",
    "DEFAULT_PORT",
    "KNOWN_KEYS",
    "META_MAX_SIZE",
    "TIMING_KEYS",
    "Config",
    "ConfigError",
    "check_setting",
    "config_to_toml",
    "derived_paths",
    "derived_paths_comment",
    "handlers_directory",
    "is_host_name",
    "load_config",
    "snapshot_file",
]

DEFAULT_CONFIG_DIR = Path("/etc/serfd.d")
DEFAULT_PORT = 7946  # Serf's DefaultBindPort
META_MAX_SIZE = 512  # memberlist MetaMaxSize: encoded tags must fit in node meta
NODE_NAME_MAX = 128  # Serf's node name length limit
UNIX_PATH_MAX = 107  # sun_path is 108 bytes including the terminating NUL
DEFAULT_TAGS_FILE = Path("tags")  # relative: <state_dir>/tags

PROFILES = ("lan", "wan", "local")
# The [gossip] keys that override the profile's timings: memberlist Config fields, named
# as in serfd.memberlist.profiles.Profile (Config field: "gossip_" + key).
TIMING_KEYS = (
    "probe_interval",
    "probe_timeout",
    "suspicion_mult",
    "suspicion_max_timeout_mult",
    "gossip_interval",
    "gossip_nodes",
    "gossip_to_the_dead_time",
    "push_pull_interval",
    "retransmit_mult",
    "indirect_checks",
    "awareness_max_multiplier",
    "tcp_timeout",
)
LOG_LEVELS = ("trace", "debug", "info", "warn", "error")
# The facilities Serf accepts for syslog_facility (go-syslog's facilityPriority, which
# upper-cases the name first).
SYSLOG_FACILITIES = ("KERN", "USER", "MAIL", "DAEMON", "AUTH", "SYSLOG", "LPR", "NEWS",
                     "UUCP", "CRON", "AUTHPRIV", "FTP", "LOCAL0", "LOCAL1", "LOCAL2",
                     "LOCAL3", "LOCAL4", "LOCAL5", "LOCAL6", "LOCAL7")


class ConfigError(Exception):
    """The configuration is invalid; `errors` holds one message line per problem."""

    def __init__(self, errors: list[str]) -> None:
        super().__init__("\n".join(errors))
        self.errors = errors


def _empty_map() -> Mapping[str, str]:
    return MappingProxyType({})


@dataclass(frozen=True, slots=True)
class Config:
    """The effective serfd configuration; the defaults are serfd's defaults."""

    node_name: str = field(default_factory=socket.gethostname)
    bind: tuple[str, int] = ("0.0.0.0", DEFAULT_PORT)
    advertise: tuple[str, int] | None = None
    profile: str = "lan"
    join: tuple[str, ...] = ()
    retry_interval: float = 30.0
    retry_max_attempts: int = 0  # 0 = retry forever
    log_level: str = "info"
    # Serf's syslog tee: records also go to /dev/log with this facility (logsetup).
    enable_syslog: bool = False
    syslog_facility: str = "LOCAL0"  # Serf's default
    leave_on_terminate: bool = True
    # mDNS discovery (Serf's discover, serfd.agent.discovery): advertise this node as
    # _serf_NAME._tcp.local. and join the others; None: off.
    discover: str | None = None
    # Serf's interface: the bind address comes from it (its first address when bind is
    # 0.0.0.0), and mDNS uses it unless mdns.interface says another (Serf 0.10).
    interface: str | None = None
    mdns_interface: str | None = None
    mdns_disable_ipv4: bool = False
    mdns_disable_ipv6: bool = False
    # Serf's agent options: the configured joins (start, retry, reload) replay the
    # cluster's recent user events; SIGINT stops without leaving (peers see failed).
    replay_on_join: bool = False
    skip_leave_on_interrupt: bool = False
    enable_compression: bool = True
    broadcast_timeout: float = 5.0
    reconnect_interval: float = 30.0
    reconnect_timeout: float = 24 * 3600.0
    tombstone_timeout: float = 24 * 3600.0
    protocol: int = 5  # Serf delegate protocol version, 2..5
    state_dir: Path = Path("/var/lib/serfd")
    snapshot_path: Path | None = None  # None: <state_dir>/snapshot
    rejoin_after_leave: bool = False
    # Serf's DisableCoordinates: no Vivaldi coordinate in our acks, none learnt from peers'.
    disable_coordinates: bool = False
    encrypt_key: str | None = None  # base64 AES key (16/24/32 bytes)
    keyring_file: Path | None = None  # None: <state_dir>/keyring when encrypt_key is set
    # Runtime tag changes (serfctl tags) kept across restarts; None: not kept. A relative
    # path is under state_dir (only the default is: TOML wants absolute paths).
    tags_file: Path | None = DEFAULT_TAGS_FILE
    gossip_verify_incoming: bool = True
    gossip_verify_outgoing: bool = True
    # [gossip]: serfd's additions to memberlist's gossip (wire-compatible).
    gossip_confirm_suspicions: bool = True
    gossip_verified_suspicions: bool = True
    gossip_eager: bool = True
    gossip_join_follow_up: bool = True
    # [gossip] timings, each overriding the profile's value (None: the profile's); the
    # memberlist timings in effect are `timings`.
    gossip_probe_interval: float | None = None
    gossip_probe_timeout: float | None = None
    gossip_suspicion_mult: int | None = None
    gossip_suspicion_max_timeout_mult: int | None = None
    gossip_gossip_interval: float | None = None
    gossip_gossip_nodes: int | None = None
    gossip_gossip_to_the_dead_time: float | None = None
    gossip_push_pull_interval: float | None = None
    gossip_retransmit_mult: int | None = None
    gossip_indirect_checks: int | None = None
    gossip_awareness_max_multiplier: int | None = None
    gossip_tcp_timeout: float | None = None
    tags: Mapping[str, str] = field(default_factory=_empty_map)
    rpc_socket: Path = Path("/run/serfd/serfd.sock")
    rpc_socket_mode: int = 0o660
    rpc_tcp: tuple[str, int] | None = None
    rpc_auth_key: str | None = None
    rpc_socket_group: str | None = None  # group name or numeric gid of the Unix socket
    # Events and handlers. handlers: filter list -> command (str: /bin/sh -c; tuple: exec).
    handlers_dir: Path | None = None  # None: <config dir>/handlers
    handlers: Mapping[str, str | tuple[str, ...]] = field(default_factory=_empty_map)
    handler_max_concurrent: int = 16
    handler_timeout: float = 60.0
    user_event_size_limit: int = 512  # Serf's agent default; at most 9216 (Serf's hard limit)
    query_size_limit: int = 1024  # Serf's QuerySizeLimit
    query_response_size_limit: int = 1024  # Serf's QueryResponseSizeLimit
    # Telemetry (serfd.agent.telemetry): Serf's statsd_addr / statsite_addr (host names
    # resolved at start, as bind), and [telemetry]: the Prometheus endpoint, host names.
    statsd_addr: tuple[str, int] | None = None
    statsite_addr: tuple[str, int] | None = None
    telemetry_prometheus_bind: tuple[str, int] | None = None
    telemetry_disable_hostname: bool = False
    # Dotted TOML key ("rpc.tcp", "tags.role") -> file that set it; keys left at their
    # default are absent. Not part of equality: the same settings from other files
    # are the same configuration.
    sources: Mapping[str, str] = field(default_factory=_empty_map, compare=False)

    def __post_init__(self) -> None:
        if self.tags_file is not None and not self.tags_file.is_absolute():
            object.__setattr__(self, "tags_file", self.state_dir / self.tags_file)

    @property
    def timings(self) -> ml_profiles.Profile:
        """memberlist's timings in effect: the profile's, with the [gossip] overrides."""
        base = ml_profiles.get_profile(self.profile)
        overrides = {key: value for key in TIMING_KEYS
                     if (value := getattr(self, f"gossip_{key}")) is not None}
        return replace(base, **overrides) if overrides else base


# --- value parsers: TOML value -> Config value, or ValueError(reason) ----------------

_TOML_TYPE_NAMES: dict[type, str] = {
    str: "string",
    int: "integer",
    float: "float",
    bool: "boolean",
    list: "array",
    dict: "table",
}


def _q(text: str) -> str:
    """Double-quoted like a TOML basic string, for messages."""
    return json.dumps(text, ensure_ascii=False)


def _type_name(value: object) -> str:
    return _TOML_TYPE_NAMES.get(type(value), type(value).__name__)


def _want(value: object, kind: type, what: str) -> None:
    # bool is an int subclass in Python, but not in TOML.
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ValueError(f"expected {what}, got {_type_name(value)}")


def _string(value: object) -> str:
    _want(value, str, "a string")
    assert isinstance(value, str)
    return value


def _nonempty_string(value: object) -> str:
    s = _string(value)
    if not s:
        raise ValueError("must not be empty")
    return s


def _boolean(value: object) -> bool:
    _want(value, bool, "a boolean (true or false)")
    assert isinstance(value, bool)
    return value


def _integer(lo: int, hi: int | None) -> Callable[[object], int]:
    def parse(value: object) -> int:
        _want(value, int, "an integer")
        assert isinstance(value, int)
        if value < lo or (hi is not None and value > hi):
            bound = f"between {lo} and {hi}" if hi is not None else f"at least {lo}"
            raise ValueError(f"{value} is out of range: must be {bound}")
        return value

    return parse


def _choice(options: tuple[str, ...]) -> Callable[[object], str]:
    def parse(value: object) -> str:
        s = _string(value)
        if s not in options:
            raise ValueError(f"{_q(s)} is not one of {', '.join(options)}")
        return s

    return parse


def _duration(
    minimum: float, min_text: str, maximum: float | None = None, max_text: str = ""
) -> Callable[[object], float]:
    def parse(value: object) -> float:
        _want(value, str, 'a duration string such as "30s"')
        assert isinstance(value, str)
        seconds = parse_duration(value)
        if seconds < minimum:
            raise ValueError(f"{_q(value)} is below the minimum of {min_text}")
        if maximum is not None and seconds > maximum:
            raise ValueError(f"{_q(value)} is above the maximum of {max_text}")
        return seconds

    return parse


DISCOVER_MAX = 57  # "_serf_" + NAME must fit in one 63-byte DNS label


def _discover(value: object) -> str:
    s = _nonempty_string(value)
    if len(s.encode()) > DISCOVER_MAX:
        raise ValueError(f"too long ({len(s.encode())} bytes, max {DISCOVER_MAX}: "
                         f"_serf_NAME is one DNS label)")
    if any(c == "." or not c.isprintable() or c.isspace() for c in s):
        raise ValueError(f"{_q(s)}: no dots, spaces or control characters (it is part of "
                         "a DNS label)")
    return s


def _interface(value: object) -> str:
    s = _nonempty_string(value)
    if len(s.encode()) > 15 or any(c in "/:" or c.isspace() for c in s) or s in (".", ".."):
        raise ValueError(f"{_q(s)} is not a network interface name")
    return s  # its existence is checked at start (serfd.agent.addresses)


def _syslog_facility(value: object) -> str:
    s = _nonempty_string(value)
    if s.upper() not in SYSLOG_FACILITIES:
        raise ValueError(f"{_q(s)} is not a syslog facility: one of "
                         f"{', '.join(SYSLOG_FACILITIES)}")
    return s.upper()


def _node_name(value: object) -> str:
    s = _nonempty_string(value)
    if len(s) > NODE_NAME_MAX:
        raise ValueError(f"too long ({len(s)} characters, max {NODE_NAME_MAX})")
    return s


def _split_host_port(text: str) -> tuple[str, str | None]:
    """'h:p' / 'h' / '[v6]:p' / '[v6]' -> (host, port text or None)."""
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise ValueError(f"{_q(text)}: missing ']' after an IPv6 address")
        host, rest = text[1:end], text[end + 1 :]
        if rest == "":
            return host, None
        if not rest.startswith(":"):
            raise ValueError(f"{_q(text)}: expected ':port' after ']'")
        return host, rest[1:]
    if text.count(":") > 1:
        # Bare IPv6 is ambiguous ("::1:7946"); like Go's SplitHostPort, want brackets.
        raise ValueError(
            f'{_q(text)}: write an IPv6 address in brackets, as "[addr]" or "[addr]:port"'
        )
    host, sep, port = text.partition(":")
    return host, (port if sep else None)


def _port(text: str, whole: str, lo: int) -> int:
    if not text.isdigit() or not text.isascii():
        raise ValueError(f"{_q(whole)}: port {_q(text)} is not a number")
    port = int(text)
    if not lo <= port <= 65535:
        raise ValueError(f"{_q(whole)}: port {port} is out of range {lo}..65535")
    return port


def _ip_literal(host: str, whole: str) -> str:
    if host == "":
        raise ValueError(f"{_q(whole)}: missing host")
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        raise ValueError(
            f"{_q(whole)}: {_q(host)} is not an IP address literal "
            "(host names are not allowed here)"
        ) from None


# RFC 1123 host names: dot-separated labels of letters, digits, "-" (not at either end)
# and, as DNS allows in practice, "_"; at most 253 characters, an optional final dot.
_LABEL = r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?"
_HOST_NAME = re.compile(rf"(?=.{{1,253}}\.?$){_LABEL}(?:\.{_LABEL})*\.?")


def is_host_name(host: str) -> bool:
    """A syntactically valid DNS host name, and not an IP address lookalike: a name whose
    last label is all digits ("300.1.2.3") is a bad IP address, not a name."""
    if _HOST_NAME.fullmatch(host) is None:
        return False
    return not host.rstrip(".").rsplit(".", 1)[-1].isdigit()


def _ip_or_host_name(host: str, whole: str) -> str:
    if host == "":
        raise ValueError(f"{_q(whole)}: missing host")
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        pass
    if not is_host_name(host):
        raise ValueError(f"{_q(whole)}: {_q(host)} is neither an IP address nor a host name")
    return host  # resolved at start (serfd.agent.addresses)


def _address(
    *, default_port: int | None, min_port: int, unspecified_ok: bool, names_ok: bool = False,
) -> Callable[[object], tuple[str, int]]:
    def parse(value: object) -> tuple[str, int]:
        text = _nonempty_string(value)
        host_text, port_text = _split_host_port(text)
        if names_ok and ":" not in host_text:
            host = _ip_or_host_name(host_text, text)
        else:
            host = _ip_literal(host_text, text)
        if is_host_name(host):
            pass  # its address is checked once resolved
        elif not unspecified_ok and ipaddress.ip_address(host).is_unspecified:
            raise ValueError(f"{_q(text)}: cannot advertise the unspecified address {host}")
        if port_text is None:
            if default_port is None:
                raise ValueError(f'{_q(text)}: missing port (expected "host:port")')
            return host, default_port
        return host, _port(port_text, text, min_port)

    return parse


class _ItemErrors(ValueError):
    """Several bad items in one array: (key suffix such as "[2]", reason) each."""

    def __init__(self, items: list[tuple[str, str]]) -> None:
        super().__init__("; ".join(f"{k}: {r}" for k, r in items))
        self.items = items


def _join_item(item: object) -> str:
    # Join targets may be DNS names (resolved at join time), so only the shape is checked.
    text = _nonempty_string(item)
    host, port_text = _split_host_port(text)
    if host == "" or any(c.isspace() for c in host):
        raise ValueError(f"{_q(text)}: missing or invalid host")
    if port_text is not None:
        _port(port_text, text, 1)
    return text


def _join(value: object) -> tuple[str, ...]:
    _want(value, list, 'an array of "host[:port]" strings')
    assert isinstance(value, list)
    out: list[str] = []
    bad: list[tuple[str, str]] = []
    for i, item in enumerate(value):
        try:
            out.append(_join_item(item))
        except ValueError as exc:
            bad.append((f"[{i}]", str(exc)))
    if bad:
        raise _ItemErrors(bad)
    return tuple(out)


def _absolute_path(value: object) -> Path:
    s = _nonempty_string(value)
    if "\0" in s:
        raise ValueError("must not contain NUL characters")
    path = Path(s)
    if not path.is_absolute():
        raise ValueError(f"{_q(s)} is not an absolute path")
    return path


def _tags_file(value: object) -> Path | None:
    if value == "":
        return None  # runtime tag changes are kept in memory only
    return _absolute_path(value)


def _socket_path(value: object) -> Path:
    path = _absolute_path(value)
    size = len(str(path).encode("utf-8", "surrogateescape"))
    if size > UNIX_PATH_MAX:
        raise ValueError(f"too long for a Unix socket path ({size} bytes, max {UNIX_PATH_MAX})")
    return path


_OCTAL_MODE = re.compile(r"(?:0o)?([0-7]{3,4})")


def _socket_mode(value: object) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        # ValueError, not TypeError: reported as a config error like the others.
        raise ValueError(
            'expected an octal string such as "0660", got integer '
            "(a TOML integer loses its octal meaning)"
        )
    s = _string(value)
    m = _OCTAL_MODE.fullmatch(s)
    if m is None:
        raise ValueError(f'{_q(s)} is not an octal file mode such as "0660"')
    return int(m.group(1), 8)


def _encrypt_key(value: object) -> str:
    from serfd.wire.keyring import KeyringError, decode_key

    s = _nonempty_string(value)
    try:
        decode_key(s)
    except KeyringError as exc:
        raise ValueError(
            f"invalid encryption key: {exc} (make one with `serfctl keygen`)") from None
    return s


def _group(value: object) -> str:
    # Checked for existence when the socket is created (the group may come with a package).
    s = _nonempty_string(value)
    if any(c.isspace() or c in ":/" for c in s):
        raise ValueError(f"{_q(s)} is not a group name or numeric gid")
    return s


def _format_address(addr: tuple[str, int]) -> str:
    host, port = addr
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _sink_address(value: object) -> tuple[str, int] | None:
    """statsd_addr / statsite_addr: "host:port" (a name resolved at start); "" = off."""
    if value == "":
        return None  # Serf's default: no sink
    return _address(default_port=None, min_port=1, unspecified_ok=False, names_ok=True)(value)


def _identity(value: Any) -> Any:
    return value


@dataclass(frozen=True, slots=True)
class _Key:
    """One scalar config key: its Config field, parser and TOML renderer."""

    field: str
    parse: Callable[[object], Any]
    render: Callable[[Any], Any] = _identity
    unset: Any = None  # how None is rendered; None: the key is left out


def _render_duration(seconds: float) -> str:
    return format_duration(seconds)


_KEYS: dict[str, _Key] = {
    "node_name": _Key("node_name", _node_name),
    # bind and advertise may name a host: resolved at start (serfd.agent.addresses).
    "bind": _Key(
        "bind",
        _address(default_port=DEFAULT_PORT, min_port=1, unspecified_ok=True, names_ok=True),
        _format_address,
    ),
    # The advertise port defaults to the bind port (see _merge), so parse with a marker.
    "advertise": _Key(
        "advertise",
        _address(default_port=0, min_port=1, unspecified_ok=False, names_ok=True),
        _format_address,
    ),
    "profile": _Key("profile", _choice(PROFILES)),
    "join": _Key("join", _join, list),
    "retry_interval": _Key("retry_interval", _duration(1.0, "1s"), _render_duration),
    "retry_max_attempts": _Key("retry_max_attempts", _integer(0, None)),
    "log_level": _Key("log_level", _choice(LOG_LEVELS)),
    "discover": _Key("discover", _discover),
    "interface": _Key("interface", _interface),
    "mdns.interface": _Key("mdns_interface", _interface),
    "mdns.disable_ipv4": _Key("mdns_disable_ipv4", _boolean),
    "mdns.disable_ipv6": _Key("mdns_disable_ipv6", _boolean),
    "enable_syslog": _Key("enable_syslog", _boolean),
    "syslog_facility": _Key("syslog_facility", _syslog_facility),
    "leave_on_terminate": _Key("leave_on_terminate", _boolean),
    "replay_on_join": _Key("replay_on_join", _boolean),
    "skip_leave_on_interrupt": _Key("skip_leave_on_interrupt", _boolean),
    "enable_compression": _Key("enable_compression", _boolean),
    "broadcast_timeout": _Key("broadcast_timeout", _duration(1e-9, "1ns"), _render_duration),
    "reconnect_interval": _Key("reconnect_interval", _duration(1e-9, "1ns"), _render_duration),
    "reconnect_timeout": _Key("reconnect_timeout", _duration(1e-9, "1ns"), _render_duration),
    "tombstone_timeout": _Key("tombstone_timeout", _duration(1e-9, "1ns"), _render_duration),
    "protocol": _Key("protocol", _integer(2, 5)),
    "state_dir": _Key("state_dir", _absolute_path, str),
    "snapshot_path": _Key("snapshot_path", _absolute_path, str),
    "rejoin_after_leave": _Key("rejoin_after_leave", _boolean),
    "disable_coordinates": _Key("disable_coordinates", _boolean),
    "encrypt_key": _Key("encrypt_key", _encrypt_key),
    "keyring_file": _Key("keyring_file", _absolute_path, str),
    "tags_file": _Key("tags_file", _tags_file, str, unset=""),
    "gossip_verify_incoming": _Key("gossip_verify_incoming", _boolean),
    "gossip_verify_outgoing": _Key("gossip_verify_outgoing", _boolean),
    "gossip.confirm_suspicions": _Key("gossip_confirm_suspicions", _boolean),
    "gossip.verified_suspicions": _Key("gossip_verified_suspicions", _boolean),
    "gossip.eager": _Key("gossip_eager", _boolean),
    "gossip.join_follow_up": _Key("gossip_join_follow_up", _boolean),
    # Timings (None: the profile's). The bounds keep this node sane whatever it is
    # told: no probe or gossip storm, no wait that never ends; probe_timeout <
    # probe_interval is checked once merged (_check_timings).
    "gossip.probe_interval": _Key(
        "gossip_probe_interval", _duration(0.1, "100ms", 60.0, "1m"), _render_duration),
    "gossip.probe_timeout": _Key(
        "gossip_probe_timeout", _duration(0.01, "10ms", 60.0, "1m"), _render_duration),
    "gossip.suspicion_mult": _Key("gossip_suspicion_mult", _integer(1, 32)),
    "gossip.suspicion_max_timeout_mult": _Key(
        "gossip_suspicion_max_timeout_mult", _integer(1, 32)),
    "gossip.gossip_interval": _Key(
        "gossip_gossip_interval", _duration(0.01, "10ms", 5.0, "5s"), _render_duration),
    "gossip.gossip_nodes": _Key("gossip_gossip_nodes", _integer(1, 32)),
    "gossip.gossip_to_the_dead_time": _Key(
        "gossip_gossip_to_the_dead_time", _duration(0.0, "0s", 3600.0, "1h"), _render_duration),
    "gossip.push_pull_interval": _Key(
        "gossip_push_pull_interval", _duration(1.0, "1s", 3600.0, "1h"), _render_duration),
    "gossip.retransmit_mult": _Key("gossip_retransmit_mult", _integer(1, 16)),
    "gossip.indirect_checks": _Key("gossip_indirect_checks", _integer(1, 16)),
    "gossip.awareness_max_multiplier": _Key("gossip_awareness_max_multiplier", _integer(1, 32)),
    "gossip.tcp_timeout": _Key(
        "gossip_tcp_timeout", _duration(0.1, "100ms", 300.0, "5m"), _render_duration),
    "rpc.socket": _Key("rpc_socket", _socket_path, str),
    "rpc.socket_mode": _Key("rpc_socket_mode", _socket_mode, lambda mode: f"{mode:04o}"),
    "rpc.tcp": _Key(
        "rpc_tcp",
        _address(default_port=None, min_port=0, unspecified_ok=True),
        _format_address,
    ),
    "rpc.auth_key": _Key("rpc_auth_key", _nonempty_string),
    "rpc.socket_group": _Key("rpc_socket_group", _group),
    "handlers_dir": _Key("handlers_dir", _absolute_path, str),
    "handler_limits.max_concurrent": _Key("handler_max_concurrent", _integer(1, 4096)),
    "handler_limits.timeout": _Key("handler_timeout", _duration(1e-3, "1ms"), _render_duration),
    "user_event_size_limit": _Key("user_event_size_limit", _integer(1, 9216)),
    "query_size_limit": _Key("query_size_limit", _integer(1, 65535)),
    "query_response_size_limit": _Key("query_response_size_limit", _integer(1, 65535)),
    "statsd_addr": _Key("statsd_addr", _sink_address, _format_address),
    "statsite_addr": _Key("statsite_addr", _sink_address, _format_address),
    "telemetry.prometheus_bind": _Key(
        "telemetry_prometheus_bind",
        _address(default_port=None, min_port=1, unspecified_ok=True),
        _format_address,
    ),
    "telemetry.disable_hostname": _Key("telemetry_disable_hostname", _boolean),
}

_TABLES = ("gossip", "rpc", "tags", "handlers", "handler_limits", "telemetry", "mdns")
_FREE_TABLES = ("tags", "handlers")  # tables whose keys are the user's own names

#: Every dotted key serfd knows (tags/handlers hold free-form `tags.NAME` keys besides these).
KNOWN_KEYS: tuple[str, ...] = (*_KEYS, "tags", "handlers")

# What an unknown key may have been meant as: any key, or a table name.
_SUGGESTIONS: list[str] = [*KNOWN_KEYS, "gossip", "rpc", "handler_limits", "telemetry",
                            "mdns"]


def _handler(route: str, value: object) -> str | tuple[str, ...]:
    """A ``[handlers]`` entry: a filter list mapped to a shell command or an argv array.

    An empty string or array removes a route that an earlier file set.
    """
    from serfd.core.filters import parse_filters  # here: events imports the Serf layer

    parse_filters(route)
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        bad = [i for i, v in enumerate(value) if not isinstance(v, str)]
        if bad:
            raise ValueError(f"[{bad[0]}]: expected a string, got {_type_name(value[bad[0]])}")
        if value and not value[0]:
            raise ValueError("the program (first element) must not be empty")
        return tuple(value)
    raise ValueError(
        f"expected a command string or an array of strings, got {_type_name(value)}"
    )


def check_setting(dotted: str, value: object) -> None:
    """ValueError(reason) unless `value` is valid for the TOML key `dotted` in a drop-in
    (``tags.NAME`` and ``handlers.ROUTE`` included), as `load_config` checks it."""
    if dotted.startswith("tags."):
        _parse_tag(value)
    elif dotted.startswith("handlers."):
        _handler(dotted[9:], value)
    elif dotted in _KEYS:
        _KEYS[dotted].parse(value)
    else:
        raise ValueError(_unknown(dotted, _SUGGESTIONS))


# --- loading -------------------------------------------------------------------------

_LINE_RE = re.compile(r"\s*\(at line (\d+), column \d+\)\s*$")
_END_RE = re.compile(r"\s*\(at end of document\)\s*$")


def _syntax_error(path: Path, text: str, exc: tomllib.TOMLDecodeError) -> str:
    msg = str(exc)
    m = _LINE_RE.search(msg)
    if m is not None:
        return f"{path}:{m.group(1)}: {msg[: m.start()]}"
    m = _END_RE.search(msg)
    if m is not None:
        return f"{path}:{max(1, len(text.splitlines()))}: {msg[: m.start()]}"
    return f"{path}: {msg}"


def _unknown(key: str, candidates: list[str]) -> str:
    import difflib  # only for a config with a typo

    close = difflib.get_close_matches(key, candidates, n=1, cutoff=0.6)
    hint = f' (did you mean "{close[0]}"?)' if close else ""
    return f"unknown key{hint}"


def _read_file(path: Path, errors: list[str]) -> dict[str, Any] | None:
    try:
        raw = path.read_bytes()
    except OSError as exc:
        errors.append(f"{path}: cannot read: {exc.strerror or exc}")
        return None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        errors.append(f"{path}:{line}: not valid UTF-8")
        return None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        errors.append(_syntax_error(path, text, exc))
        return None


def _flatten(doc: dict[str, Any]) -> list[tuple[str, object, str | None]]:
    """A parsed file as (dotted key, raw value, structural error or None), in file order."""
    out: list[tuple[str, object, str | None]] = []
    for key, value in doc.items():
        if key in _TABLES:
            if not isinstance(value, dict):
                out.append((key, value, f"expected a table, got {_type_name(value)}"))
                continue
            for sub, subvalue in value.items():
                dotted = f"{key}.{sub}"
                known = key in _FREE_TABLES or dotted in _KEYS
                out.append((dotted, subvalue, None if known else _unknown(dotted, _SUGGESTIONS)))
        elif key in _KEYS:
            out.append((key, value, None))
        else:
            out.append((key, value, _unknown(key, _SUGGESTIONS)))
    return out


def _parse_tag(value: object) -> str:
    _want(value, str, "a string")
    assert isinstance(value, str)
    return value


def _check_timings(values: Mapping[str, Any], sources: Mapping[str, str]) -> list[str]:
    """probe_timeout < probe_interval, on the merged values (the profile's where unset):
    a probe's indirect pings and TCP ping run in what is left of its interval."""
    interval = values.get("gossip_probe_interval")
    timeout = values.get("gossip_probe_timeout")
    if interval is None and timeout is None:
        return []
    profile = ml_profiles.get_profile(values.get("profile", Config.__dataclass_fields__[
        "profile"].default))
    pi = profile.probe_interval if interval is None else interval
    pt = profile.probe_timeout if timeout is None else timeout
    if pt < pi:
        return []
    theirs = f"the {profile.name} profile's"
    if timeout is not None:
        whence = theirs if interval is None else f"set in {sources['gossip.probe_interval']}"
        return [(
            f"{sources['gossip.probe_timeout']}: gossip.probe_timeout: "
            f"{_q(format_duration(pt))} must be shorter than probe_interval "
            f"({_q(format_duration(pi))}, {whence})"
        )]
    return [(
        f"{sources['gossip.probe_interval']}: gossip.probe_interval: "
        f"{_q(format_duration(pi))} must be longer than probe_timeout "
        f"({_q(format_duration(pt))}, {theirs}): set gossip.probe_timeout too"
    )]


def _check_mdns(values: Mapping[str, Any], sources: Mapping[str, str]) -> list[str]:
    """Serf 0.10's checks of the mdns block, on the merged values."""
    errors: list[str] = []
    if values.get("mdns_interface") is not None and values.get("discover") is None:
        errors.append(f"{sources['mdns.interface']}: mdns.interface: set without discover "
                      "(mDNS discovery is off)")
    if values.get("mdns_disable_ipv4") and values.get("mdns_disable_ipv6"):
        later = max(("mdns.disable_ipv4", "mdns.disable_ipv6"),
                    key=lambda k: sources[k])
        errors.append(f"{sources[later]}: {later}: both IPv4 and IPv6 are disabled for mDNS")
    return errors


def load_config(config_dir: Path) -> Config:
    """Read `config_dir/*.toml` in lexical order into a validated Config (or ConfigError)."""
    config_dir = Path(config_dir)
    if not config_dir.exists():
        raise ConfigError([f"{config_dir}: config directory does not exist"])
    if not config_dir.is_dir():
        raise ConfigError([f"{config_dir}: not a directory"])
    try:
        files = sorted(
            (p for p in config_dir.iterdir() if p.name.endswith(".toml") and p.is_file()),
            key=lambda p: p.name,
        )
    except OSError as exc:
        raise ConfigError([f"{config_dir}: cannot list: {exc.strerror or exc}"]) from None

    errors: list[str] = []
    values: dict[str, Any] = {}  # Config field -> parsed value
    tags: dict[str, str] = {}
    handlers: dict[str, str | tuple[str, ...]] = {}
    sources: dict[str, str] = {}
    for path in files:
        doc = _read_file(path, errors)
        if doc is None:
            continue
        for dotted, raw, problem in _flatten(doc):
            if problem is not None:
                errors.append(f"{path}: {dotted}: {problem}")
                continue
            try:
                if dotted.startswith("tags."):
                    tags[dotted[5:]] = _parse_tag(raw)
                elif dotted.startswith("handlers."):
                    handlers[dotted[9:]] = _handler(dotted[9:], raw)
                else:
                    spec = _KEYS[dotted]
                    values[spec.field] = spec.parse(raw)
            except _ItemErrors as exc:
                errors.extend(f"{path}: {dotted}{item}: {reason}" for item, reason in exc.items)
                continue
            except ValueError as exc:
                errors.append(f"{path}: {dotted}: {exc}")
                continue
            sources[dotted] = str(path)

    if tags:
        size = len(encode_tags(tags))
        if size > META_MAX_SIZE:
            tag_files = sorted({sources[f"tags.{k}"] for k in tags})
            errors.append(
                f"{tag_files[-1]}: tags: encoded size is {size} bytes, over the limit of "
                f"{META_MAX_SIZE} (tags from {', '.join(tag_files)})"
            )
    tcp = values.get("rpc_tcp")
    if tcp is not None and not ipaddress.ip_address(tcp[0]).is_loopback and not values.get(
        "rpc_auth_key"
    ):
        errors.append(
            f"{sources['rpc.tcp']}: rpc.tcp: {_q(_format_address(tcp))} is not a loopback "
            "address: set rpc.auth_key so remote RPC clients must authenticate"
        )
    errors.extend(_check_timings(values, sources))
    errors.extend(_check_mdns(values, sources))
    if errors:
        raise ConfigError(errors)

    advertise = values.get("advertise")
    if advertise is not None and advertise[1] == 0:
        # "host" alone: advertise the port we bind.
        bind = values.get("bind", Config.__dataclass_fields__["bind"].default)
        values["advertise"] = (advertise[0], bind[1])
    return Config(
        **values,
        tags=MappingProxyType(tags),
        handlers=MappingProxyType({k: v for k, v in handlers.items() if v}),
        sources=MappingProxyType(sources),
    )


# --- rendering -----------------------------------------------------------------------


def config_to_toml(cfg: Config, *, redact_secrets: bool = False) -> str:
    """The effective configuration as TOML (durations as Go strings); loads back equal."""
    top: dict[str, Any] = {}
    gossip: dict[str, Any] = {}
    rpc: dict[str, Any] = {}
    limits: dict[str, Any] = {}
    telemetry: dict[str, Any] = {}
    mdns: dict[str, Any] = {}
    for dotted, spec in _KEYS.items():
        value = getattr(cfg, spec.field)
        if value is None and spec.unset is None:
            continue  # unset optional keys (TOML has no null)
        rendered = spec.unset if value is None else spec.render(value)
        if dotted in ("rpc.auth_key", "encrypt_key") and redact_secrets:
            rendered = "<redacted>"
        if dotted.startswith("gossip."):
            gossip[dotted[7:]] = rendered
        elif dotted.startswith("rpc."):
            rpc[dotted[4:]] = rendered
        elif dotted.startswith("handler_limits."):
            limits[dotted[15:]] = rendered
        elif dotted.startswith("telemetry."):
            telemetry[dotted[10:]] = rendered
        elif dotted.startswith("mdns."):
            mdns[dotted[5:]] = rendered
        else:
            top[dotted] = rendered
    top["gossip"] = gossip
    top["tags"] = dict(cfg.tags)
    top["rpc"] = rpc
    top["handlers"] = {k: v if isinstance(v, str) else list(v) for k, v in cfg.handlers.items()}
    top["handler_limits"] = limits
    top["telemetry"] = telemetry
    top["mdns"] = mdns
    files = sorted(set(cfg.sources.values()))
    header = "# serfd effective configuration\n"
    if files:
        header += "# merged from: " + ", ".join(files) + "\n"
    else:
        header += "# all defaults (no settings in any drop-in)\n"
    import tomli_w  # only for --check-config

    text = tomli_w.dumps(top)
    # The timings [gossip] leaves to the profile, as comments at the end of its table
    # (the values in effect; a comment so that the output loads back equal).
    unset = [key for key in TIMING_KEYS if getattr(cfg, f"gossip_{key}") is None]
    if unset:
        timings = cfg.timings
        lines = [f"# not set, the {cfg.profile} profile's:\n"]
        for key in unset:
            value = _KEYS[f"gossip.{key}"].render(getattr(timings, key))
            lines.append("# " + tomli_w.dumps({key: value}))
        start = text.index("\n[gossip]\n")
        end = text.index("\n\n", start + 1) + 1  # the blank line before the next table
        text = text[:end] + "".join(lines) + text[end:]
    return header + "\n" + text


# --- paths derived from the configuration --------------------------------------------


def snapshot_file(cfg: Config) -> Path:
    """The snapshot: ``snapshot_path``, else ``<state_dir>/snapshot``."""
    return cfg.snapshot_path or cfg.state_dir / "snapshot"


def handlers_directory(cfg: Config, config_dir: Path | None) -> Path:
    """Where bare handler commands are found: ``handlers_dir``, else ``<config dir>/handlers``."""
    if cfg.handlers_dir is not None:
        return cfg.handlers_dir
    return (config_dir if config_dir is not None else DEFAULT_CONFIG_DIR) / "handlers"


def derived_paths(cfg: Config, config_dir: Path | None) -> list[tuple[str, str]]:
    """Every file and directory serfd uses, defaults resolved: (what, path or why none)."""
    from serfd.agent.statelock import LOCK_NAME
    from serfd.wire.keyring import keyring_path

    keyring = keyring_path(cfg.encrypt_key, cfg.keyring_file, cfg.state_dir)
    return [
        ("state_dir", str(cfg.state_dir)),
        ("state lock", str(cfg.state_dir / LOCK_NAME)),
        ("snapshot_path", str(snapshot_file(cfg))),
        ("keyring_file", str(keyring) if keyring is not None
         else "none (no encryption: neither encrypt_key nor keyring_file is set)"),
        ("tags_file", str(cfg.tags_file) if cfg.tags_file is not None
         else "none (runtime tag changes are kept in memory only)"),
        ("handlers_dir", str(handlers_directory(cfg, config_dir))),
        ("rpc.socket", str(cfg.rpc_socket)),
    ]


def derived_paths_comment(cfg: Config, config_dir: Path | None) -> str:
    """:func:`derived_paths` as TOML comments, for ``--check-config`` (loads back as nothing)."""
    rows = derived_paths(cfg, config_dir)
    width = max(len(what) for what, _ in rows)
    lines = [f"#   {what:<{width}}  {path}" for what, path in rows]
    return "\n".join(["# Paths in use (defaults resolved):", *lines]) + "\n"


def _check_tables() -> None:
    # Every Config field except `tags`/`sources` must have exactly one key.
    mapped = {spec.field for spec in _KEYS.values()}
    expected = {f.name for f in fields(Config)} - {"tags", "sources", "handlers"}
    assert mapped == expected, mapped ^ expected


_check_tables()
