"""TOML drop-in loading, merging, validation messages and --check-config rendering."""

from __future__ import annotations

import re
import shutil
import socket
import tempfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from serfd.agent.config import (
    KNOWN_KEYS,
    TIMING_KEYS,
    Config,
    ConfigError,
    config_to_toml,
    load_config,
)
from serfd.memberlist.profiles import LAN

SAMPLE = Path(__file__).resolve().parent.parent / "etc" / "serfd.d" / "serfd.toml"


def write(d: Path, name: str, text: str) -> Path:
    path = d / name
    path.write_text(text, encoding="utf-8")
    return path


def errors_of(d: Path) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config(d)
    assert str(info.value) == "\n".join(info.value.errors)
    return info.value.errors


# --- defaults and the shipped sample -----------------------------------------------


def test_empty_dir_is_all_defaults(tmp_path: Path) -> None:
    cfg = load_config(tmp_path)
    assert cfg == Config()
    assert cfg.node_name == socket.gethostname()
    assert cfg.bind == ("0.0.0.0", 7946)
    assert cfg.advertise is None
    assert cfg.profile == "lan"
    assert cfg.join == ()
    assert cfg.retry_interval == 30.0
    assert cfg.retry_max_attempts == 0
    assert cfg.log_level == "info"
    assert cfg.leave_on_terminate is True
    assert cfg.skip_leave_on_interrupt is False
    assert cfg.replay_on_join is False
    assert cfg.enable_compression is True
    assert cfg.broadcast_timeout == 5.0
    assert cfg.reconnect_interval == 30.0
    assert cfg.reconnect_timeout == 86400.0
    assert cfg.tombstone_timeout == 86400.0
    assert cfg.protocol == 5
    assert cfg.state_dir == Path("/var/lib/serfd")
    assert dict(cfg.tags) == {}
    assert cfg.rpc_socket == Path("/run/serfd/serfd.sock")
    assert cfg.rpc_socket_mode == 0o660
    assert cfg.rpc_tcp is None
    assert cfg.rpc_auth_key is None
    assert dict(cfg.sources) == {}


def test_missing_dir_is_an_error(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    assert errors_of(missing) == [f"{missing}: config directory does not exist"]


def test_dir_that_is_a_file_is_an_error(tmp_path: Path) -> None:
    f = write(tmp_path, "x", "")
    assert errors_of(f) == [f"{f}: not a directory"]


def test_only_toml_files_directly_in_dir(tmp_path: Path) -> None:
    write(tmp_path, "10-a.toml", 'node_name = "a"\n')
    write(tmp_path, "20-b.toml.bak", 'node_name = "bak"\n')
    write(tmp_path, "README", "not toml at all = = =")
    (tmp_path / "handlers").mkdir()
    write(tmp_path / "handlers", "30-c.toml", 'node_name = "nested"\n')
    (tmp_path / "40-dir.toml").mkdir()
    assert load_config(tmp_path).node_name == "a"


def test_sample_alone_gives_exactly_the_defaults(tmp_path: Path) -> None:
    shutil.copy(SAMPLE, tmp_path / "serfd.toml")
    cfg = load_config(tmp_path)
    assert cfg == Config()
    assert dict(cfg.sources) == {}


def _uncommented_sample() -> tuple[str, list[str]]:
    """The sample with every `# key = value` line uncommented, and those dotted keys."""
    lines, keys, table = [], [], ""
    for line in SAMPLE.read_text(encoding="utf-8").splitlines():
        header = re.fullmatch(r"\[(\w+)\]", line)
        if header:
            table = header.group(1) + "."
        m = re.fullmatch(r"# (\w+) = .*", line)
        if m:
            keys.append(table + m.group(1))
            line = line[2:]
        lines.append(line)
    return "\n".join(lines) + "\n", keys


def test_sample_lists_every_key_commented() -> None:
    _, keys = _uncommented_sample()
    assert len(keys) == len(set(keys))
    expected = {k for k in KNOWN_KEYS if k not in ("tags", "handlers")} | {"tags.role"}
    assert set(keys) == expected
    # and nothing in it is active
    for line in SAMPLE.read_text(encoding="utf-8").splitlines():
        assert not line or line.startswith("#") or line in (
            "[gossip]", "[tags]", "[rpc]", "[handlers]", "[handler_limits]",
            "[telemetry]", "[mdns]"), line


def test_sample_uncommented_values_are_the_defaults(tmp_path: Path) -> None:
    text, _ = _uncommented_sample()
    write(tmp_path, "serfd.toml", text)
    cfg = load_config(tmp_path)
    # Keys without a fixed default show an example value instead.
    examples = {"node_name", "advertise", "rpc_tcp", "rpc_auth_key", "tags", "snapshot_path",
                "encrypt_key", "keyring_file", "rpc_socket_group", "handlers_dir",
                "statsd_addr", "statsite_addr", "telemetry_prometheus_bind",
                "discover", "interface", "mdns_interface"}
    # The [gossip] timings are unset by default (the profile's): they show lan's values.
    timings = {f"gossip_{key}" for key in TIMING_KEYS}
    defaults = Config()
    for name in Config.__dataclass_fields__:
        if name not in examples | timings | {"sources"}:
            assert getattr(cfg, name) == getattr(defaults, name), name
    for key in TIMING_KEYS:
        assert getattr(cfg, f"gossip_{key}") == getattr(LAN, key), key
    assert cfg.timings == defaults.timings == LAN
    assert cfg.advertise == ("10.0.0.5", 7946)
    assert cfg.rpc_tcp == ("127.0.0.1", 7373)


def test_sample_mentions_lexical_order() -> None:
    text = SAMPLE.read_text(encoding="utf-8")
    assert "lexical order" in text
    assert "50-deploy.toml" in text


# --- merging ---------------------------------------------------------------------------


def test_merge_three_files(tmp_path: Path) -> None:
    a = write(
        tmp_path,
        "10-base.toml",
        """
node_name = "base"
bind = "10.0.0.1"
join = ["10.0.0.2", "10.0.0.3:7947"]
log_level = "debug"
[tags]
role = "web"
dc = "east"
[rpc]
socket = "/run/serfd/a.sock"
tcp = "127.0.0.1:7373"
""",
    )
    b = write(
        tmp_path,
        "50-deploy.toml",
        """
join = ["seed.example.com"]
retry_interval = "1m30s"
[tags]
dc = "west"
[rpc]
auth_key = "s3cret"
""",
    )
    c = write(
        tmp_path,
        "90-local.toml",
        """
node_name = "local"
[tags]
rack = "r1"
""",
    )
    cfg = load_config(tmp_path)
    assert cfg.node_name == "local"
    assert cfg.bind == ("10.0.0.1", 7946)
    assert cfg.join == ("seed.example.com",)  # the list is replaced, not appended
    assert cfg.log_level == "debug"
    assert cfg.retry_interval == 90.0
    assert dict(cfg.tags) == {"role": "web", "dc": "west", "rack": "r1"}
    assert cfg.rpc_socket == Path("/run/serfd/a.sock")
    assert cfg.rpc_tcp == ("127.0.0.1", 7373)
    assert cfg.rpc_auth_key == "s3cret"
    assert cfg.rpc_socket_mode == 0o660  # untouched default
    assert dict(cfg.sources) == {
        "node_name": str(c),
        "bind": str(a),
        "join": str(b),
        "log_level": str(a),
        "retry_interval": str(b),
        "tags.role": str(a),
        "tags.dc": str(b),
        "tags.rack": str(c),
        "rpc.socket": str(a),
        "rpc.tcp": str(a),
        "rpc.auth_key": str(b),
    }


def test_lexical_order_not_creation_order(tmp_path: Path) -> None:
    write(tmp_path, "serfd.toml", 'log_level = "warn"\n')
    write(tmp_path, "50-deploy.toml", 'log_level = "debug"\n')
    assert load_config(tmp_path).log_level == "warn"  # serfd.toml sorts last


def test_empty_list_replaces(tmp_path: Path) -> None:
    write(tmp_path, "10.toml", 'join = ["10.0.0.1"]\n')
    write(tmp_path, "20.toml", "join = []\n")
    assert load_config(tmp_path).join == ()


def test_addresses(tmp_path: Path) -> None:
    write(
        tmp_path,
        "a.toml",
        """
bind = "[::1]:17946"
advertise = "[2001:db8::1]"
join = ["[fe80::1]:7946", "[::2]", "host", "host:1"]
[rpc]
tcp = "[::1]:0"
""",
    )
    cfg = load_config(tmp_path)
    assert cfg.bind == ("::1", 17946)
    assert cfg.advertise == ("2001:db8::1", 17946)  # a bare advertise IP takes the bind port
    assert cfg.join == ("[fe80::1]:7946", "[::2]", "host", "host:1")
    assert cfg.rpc_tcp == ("::1", 0)


def test_advertise_port_follows_bind_from_another_file(tmp_path: Path) -> None:
    write(tmp_path, "10.toml", 'advertise = "192.0.2.7"\n')
    write(tmp_path, "20.toml", 'bind = "0.0.0.0:8000"\n')
    assert load_config(tmp_path).advertise == ("192.0.2.7", 8000)


def test_config_is_frozen(tmp_path: Path) -> None:
    write(tmp_path, "a.toml", '[tags]\nrole = "web"\n')
    cfg = load_config(tmp_path)
    with pytest.raises(AttributeError):
        cfg.node_name = "x"  # type: ignore[misc]
    with pytest.raises(TypeError):
        cfg.tags["role"] = "db"  # type: ignore[index]


# --- errors ------------------------------------------------------------------------------


def test_syntax_error_with_line(tmp_path: Path) -> None:
    p = write(tmp_path, "a.toml", 'node_name = "a"\nbind = = "x"\nprotocol = 5\n')
    assert errors_of(tmp_path) == [f"{p}:2: Invalid value"]


def test_syntax_error_at_end_of_document(tmp_path: Path) -> None:
    p = write(tmp_path, "a.toml", 'node_name = "a"\nlog_level = "info"\nlog_level = "debug"\n')
    assert errors_of(tmp_path) == [f"{p}:3: Cannot overwrite a value"]


def test_not_utf8(tmp_path: Path) -> None:
    p = tmp_path / "a.toml"
    p.write_bytes(b'node_name = "a"\nnode_name = "\xff"\n')
    assert errors_of(tmp_path) == [f"{p}:2: not valid UTF-8"]


def test_unknown_keys_with_suggestions(tmp_path: Path) -> None:
    p = write(
        tmp_path,
        "a.toml",
        """
node_nmae = "x"
retry_intervall = "5s"
zzzz = 1
socket = "/x"
[rcp]
tcp = "127.0.0.1:1"
[rpc]
sockt = "/x"
""",
    )
    assert errors_of(tmp_path) == [
        f'{p}: node_nmae: unknown key (did you mean "node_name"?)',
        f'{p}: retry_intervall: unknown key (did you mean "retry_interval"?)',
        f"{p}: zzzz: unknown key",
        f'{p}: socket: unknown key (did you mean "rpc.socket"?)',
        f'{p}: rcp: unknown key (did you mean "rpc"?)',
        f'{p}: rpc.sockt: unknown key (did you mean "rpc.socket"?)',
    ]


def test_wrong_types(tmp_path: Path) -> None:
    p = write(
        tmp_path,
        "a.toml",
        """
node_name = 5
bind = 7946
join = "10.0.0.1"
retry_interval = 30
retry_max_attempts = "3"
leave_on_terminate = "yes"
enable_compression = 1
disable_coordinates = "yes"
protocol = true
state_dir = ["/x"]
rpc = "x"
[tags]
role = 5
env = ["a"]
""",
    )
    assert errors_of(tmp_path) == [
        f"{p}: node_name: expected a string, got integer",
        f"{p}: bind: expected a string, got integer",
        f'{p}: join: expected an array of "host[:port]" strings, got string',
        f'{p}: retry_interval: expected a duration string such as "30s", got integer',
        f"{p}: retry_max_attempts: expected an integer, got string",
        f"{p}: leave_on_terminate: expected a boolean (true or false), got string",
        f"{p}: enable_compression: expected a boolean (true or false), got integer",
        f"{p}: disable_coordinates: expected a boolean (true or false), got string",
        f"{p}: protocol: expected an integer, got boolean",
        f"{p}: state_dir: expected a string, got array",
        f"{p}: rpc: expected a table, got string",
        f"{p}: tags.role: expected a string, got integer",
        f"{p}: tags.env: expected a string, got array",
    ]


def test_bad_values(tmp_path: Path) -> None:
    p = write(
        tmp_path,
        "a.toml",
        f"""
node_name = "{"n" * 129}"
bind = "300.1.2.3:7946"
advertise = "0.0.0.0:7946"
profile = "datacenter"
join = ["10.0.0.1", 7, "[::1]:99999", "", "h:x"]
retry_interval = "500ms"
retry_max_attempts = -1
log_level = "verbose"
broadcast_timeout = "5"
reconnect_interval = "-1s"
reconnect_timeout = "1d"
tombstone_timeout = "0"
protocol = 6
state_dir = "var/lib/serfd"
[rpc]
socket = "/{"s" * 120}"
socket_mode = "0999"
tcp = "127.0.0.1"
auth_key = ""
""",
    )
    assert errors_of(tmp_path) == [
        f"{p}: node_name: too long (129 characters, max 128)",
        f'{p}: bind: "300.1.2.3:7946": "300.1.2.3" is neither an IP address nor a host name',
        f'{p}: advertise: "0.0.0.0:7946": cannot advertise the unspecified address 0.0.0.0',
        f'{p}: profile: "datacenter" is not one of lan, wan, local',
        f"{p}: join[1]: expected a string, got integer",
        f'{p}: join[2]: "[::1]:99999": port 99999 is out of range 1..65535',
        f"{p}: join[3]: must not be empty",
        f'{p}: join[4]: "h:x": port "x" is not a number',
        f'{p}: retry_interval: "500ms" is below the minimum of 1s',
        f"{p}: retry_max_attempts: -1 is out of range: must be at least 0",
        f'{p}: log_level: "verbose" is not one of trace, debug, info, warn, error',
        (
            f'{p}: broadcast_timeout: invalid duration "5": missing unit '
            '(e.g. "5s"; units are ns, us, ms, s, m, h)'
        ),
        f'{p}: reconnect_interval: invalid duration "-1s": negative durations are not allowed',
        (
            f'{p}: reconnect_timeout: invalid duration "1d": unknown unit "d" '
            "(use ns, us, ms, s, m, h)"
        ),
        f'{p}: tombstone_timeout: "0" is below the minimum of 1ns',
        f"{p}: protocol: 6 is out of range: must be between 2 and 5",
        f'{p}: state_dir: "var/lib/serfd" is not an absolute path',
        f"{p}: rpc.socket: too long for a Unix socket path (121 bytes, max 107)",
        f'{p}: rpc.socket_mode: "0999" is not an octal file mode such as "0660"',
        f'{p}: rpc.tcp: "127.0.0.1": missing port (expected "host:port")',
        f"{p}: rpc.auth_key: must not be empty",
    ]


@pytest.mark.parametrize(
    ("key", "value", "reason"),
    [
        ("node_name", '""', "must not be empty"),
        ("bind", '"10.0.0.1:0"', '"10.0.0.1:0": port 0 is out of range 1..65535'),
        ("bind", '"10.0.0.1:70000"', '"10.0.0.1:70000": port 70000 is out of range 1..65535'),
        ("bind", '"::1:7946"', 'write an IPv6 address in brackets, as "[addr]" or "[addr]:port"'),
        ("bind", '"::1"', "write an IPv6 address in brackets"),
        ("bind", '"[::1"', "\"[::1\": missing ']' after an IPv6 address"),
        ("bind", '":7946"', '":7946": missing host'),
        ("advertise", '"[::]:7946"', "cannot advertise the unspecified address ::"),
        ("bind", '"-web.example:7946"', '"-web.example" is neither an IP address nor a host name'),
        ("advertise", '"a..b"', '"a..b" is neither an IP address nor a host name'),
        ("advertise", '"10.0.0.256"', '"10.0.0.256" is neither an IP address nor a host name'),
        ("bind", f'"{"a" * 64}.example"', "is neither an IP address nor a host name"),
        ("advertise", '"10.0.0.1:0"', "port 0 is out of range 1..65535"),
        ("rpc.tcp", '"localhost:7373"', '"localhost" is not an IP address literal'),
        ("rpc.socket_mode", "0o660", "a TOML integer loses its octal meaning"),
        ("rpc.socket", '"serfd.sock"', '"serfd.sock" is not an absolute path'),
    ],
)
def test_bad_value_messages(tmp_path: Path, key: str, value: str, reason: str) -> None:
    table, _, name = key.rpartition(".")
    text = (f"[{table}]\n" if table else "") + f"{name} = {value}\n"
    p = write(tmp_path, "a.toml", text)
    (err,) = errors_of(tmp_path)
    assert err.startswith(f"{p}: {key}: ")
    assert reason in err


def test_tags_too_large_across_files(tmp_path: Path) -> None:
    write(tmp_path, "10.toml", "[tags]\n" + "".join(f'a{i} = "{"x" * 40}"\n' for i in range(6)))
    p2 = write(
        tmp_path, "20.toml", "[tags]\n" + "".join(f'b{i} = "{"y" * 40}"\n' for i in range(6))
    )
    (err,) = errors_of(tmp_path)
    assert re.fullmatch(
        rf"{re.escape(str(p2))}: tags: encoded size is \d+ bytes, over the limit of 512 "
        rf"\(tags from .*10\.toml, .*20\.toml\)",
        err,
    ), err


def test_tags_at_the_limit_are_fine(tmp_path: Path) -> None:
    from serfd.wire.serf_messages import encode_tags

    value = "v" * 100
    tags = {f"k{i}": value for i in range(4)}
    while len(encode_tags(tags)) < 512:
        value += "v"
        tags["k0"] = value
    if len(encode_tags(tags)) > 512:
        tags["k0"] = value[:-1]
    assert len(encode_tags(tags)) == 512
    write(tmp_path, "a.toml", "[tags]\n" + "".join(f'{k} = "{v}"\n' for k, v in tags.items()))
    assert dict(load_config(tmp_path).tags) == tags


def test_bad_value_reported_even_when_overridden(tmp_path: Path) -> None:
    p1 = write(tmp_path, "10.toml", 'bind = "no where"\n')
    write(tmp_path, "20.toml", 'bind = "10.0.0.1"\n')
    (err,) = errors_of(tmp_path)
    assert err.startswith(f"{p1}: bind: ")


def test_collects_errors_across_files_in_order(tmp_path: Path) -> None:
    a = write(tmp_path, "10-a.toml", 'protocol = 1\nlog_levl = "info"\n')
    b = write(tmp_path, "20-b.toml", "this is not toml\n")
    c = write(tmp_path, "30-c.toml", '[rpc]\ntcp = "1.2.3.4"\n[tags]\nx = 1\n')
    write(tmp_path, "40-ok.toml", 'node_name = "fine"\n')
    errs = errors_of(tmp_path)
    assert errs == [
        f"{a}: protocol: 1 is out of range: must be between 2 and 5",
        f'{a}: log_levl: unknown key (did you mean "log_level"?)',
        f"{b}:1: Expected '=' after a key in a key/value pair",
        f'{c}: rpc.tcp: "1.2.3.4": missing port (expected "host:port")',
        f"{c}: tags.x: expected a string, got integer",
    ]


# --- rendering (--check-config) --------------------------------------------------------


def test_render_defaults_round_trip(tmp_path: Path) -> None:
    text = config_to_toml(Config())
    assert 'reconnect_timeout = "24h0m0s"' in text
    assert 'socket_mode = "0660"' in text
    assert "advertise" not in text  # unset keys are omitted (TOML has no null)
    write(tmp_path, "check.toml", text)
    assert load_config(tmp_path) == Config()


def test_render_full_round_trip(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    write(
        src,
        "10.toml",
        """
node_name = "n1"
bind = "[2001:db8::5]:17946"
advertise = "192.0.2.1:27946"
profile = "wan"
join = ["a.example:7946", "[::1]"]
retry_interval = "1m30s"
retry_max_attempts = 3
log_level = "trace"
leave_on_terminate = false
skip_leave_on_interrupt = true
replay_on_join = true
enable_compression = false
broadcast_timeout = "1500ms"
reconnect_interval = "10s"
reconnect_timeout = "72h"
tombstone_timeout = "1h"
protocol = 4
state_dir = "/srv/serfd"
[tags]
role = "web"
"with space" = "é"
[rpc]
socket = "/run/x.sock"
socket_mode = "0600"
tcp = "127.0.0.1:7373"
auth_key = "k\\"ey"
""",
    )
    cfg = load_config(src)
    text = config_to_toml(cfg)
    assert "# merged from: " + str(src / "10.toml") in text
    assert 'bind = "[2001:db8::5]:17946"' in text
    assert 'retry_interval = "1m30s"' in text
    assert 'broadcast_timeout = "1.5s"' in text
    out = tmp_path / "out"
    out.mkdir()
    write(out, "check.toml", text)
    assert load_config(out) == cfg


def test_render_redacts_auth_key() -> None:
    cfg = Config(rpc_auth_key="topsecret")
    assert "topsecret" in config_to_toml(cfg)
    text = config_to_toml(cfg, redact_secrets=True)
    assert "topsecret" not in text
    assert 'auth_key = "<redacted>"' in text


_ip4 = st.ip_addresses(v=4).map(str)
_ip6 = st.ip_addresses(v=6).map(str)
_addr = st.tuples(st.one_of(_ip4, _ip6), st.integers(1, 65535))
_dur = st.integers(1, 10**15).map(lambda ns: ns / 1e9)
_text = st.text(
    st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=20
)



def _ms(lo: int, hi: int) -> st.SearchStrategy[float]:
    return st.integers(lo, hi).map(lambda ms: ms / 1000)


_configs = st.builds(
    Config,
    node_name=_text.filter(lambda s: 0 < len(s) <= 128),
    bind=_addr,
    advertise=st.none() | _addr.filter(lambda a: a[0] not in ("0.0.0.0", "::")),
    profile=st.sampled_from(["lan", "wan", "local"]),
    join=st.lists(st.sampled_from(["a", "10.0.0.1:1", "[::1]:7946", "b.example"])).map(tuple),
    retry_interval=st.integers(10**9, 10**14).map(lambda ns: ns / 1e9),
    retry_max_attempts=st.integers(0, 2**40),
    log_level=st.sampled_from(["trace", "debug", "info", "warn", "error"]),
    leave_on_terminate=st.booleans(),
    skip_leave_on_interrupt=st.booleans(),
    replay_on_join=st.booleans(),
    enable_compression=st.booleans(),
    broadcast_timeout=_dur,
    reconnect_interval=_dur,
    reconnect_timeout=_dur,
    tombstone_timeout=_dur,
    protocol=st.integers(2, 5),
    state_dir=st.sampled_from([Path("/var/lib/serfd"), Path("/tmp/x y"), Path("/é")]),
    tags=st.dictionaries(_text, _text, max_size=5),
    rpc_socket=st.sampled_from([Path("/run/serfd/serfd.sock"), Path("/tmp/s")]),
    rpc_socket_mode=st.integers(0, 0o7777),
    rpc_tcp=st.none() | st.tuples(st.one_of(_ip4, _ip6), st.integers(0, 65535)),
    rpc_auth_key=st.none() | _text.filter(bool),
    snapshot_path=st.none() | st.sampled_from([Path("/var/lib/serfd/snap"), Path("/tmp/s s")]),
    rejoin_after_leave=st.booleans(),
    encrypt_key=st.none() | st.sampled_from(["6hRTJPebtwdfvbZB72SW+nNMkVu1HVCgZLu9MmArzeg="]),
    keyring_file=st.none() | st.just(Path("/var/lib/serfd/keyring")),
    gossip_verify_incoming=st.booleans(),
    gossip_verify_outgoing=st.booleans(),
    gossip_confirm_suspicions=st.booleans(),
    gossip_verified_suspicions=st.booleans(),
    gossip_eager=st.booleans(),
    gossip_join_follow_up=st.booleans(),
    rpc_socket_group=st.none() | st.sampled_from(["serfd", "0", "adm"]),
    gossip_probe_interval=st.none() | _ms(100, 60_000),
    gossip_probe_timeout=st.none() | _ms(10, 60_000),
    gossip_suspicion_mult=st.none() | st.integers(1, 32),
    gossip_gossip_interval=st.none() | _ms(10, 5_000),
    gossip_gossip_to_the_dead_time=st.none() | _ms(0, 3_600_000),
    gossip_tcp_timeout=st.none() | _ms(100, 300_000),
)


@settings(max_examples=100, deadline=None)
@given(_configs)
def test_render_load_round_trip_property(cfg: Config) -> None:
    from types import MappingProxyType

    from serfd.wire.serf_messages import encode_tags

    if len(encode_tags(dict(cfg.tags))) > 512:
        return
    if cfg.rpc_tcp is not None and not cfg.rpc_auth_key:
        import ipaddress

        if not ipaddress.ip_address(cfg.rpc_tcp[0]).is_loopback:
            return  # a config error of its own (tested below)
    if cfg.timings.probe_timeout >= cfg.timings.probe_interval:
        return  # the same (tests/test_config_gossip.py)
    with tempfile.TemporaryDirectory() as d:
        write(Path(d), "check.toml", config_to_toml(cfg))
        loaded = load_config(Path(d))
    assert loaded == cfg
    assert isinstance(loaded.tags, MappingProxyType)


def test_bind_and_advertise_may_name_hosts(tmp_path: Path) -> None:
    """Kept as written (resolved at start, serfd.agent.addresses); the port rules are the
    same as for an IP; the printed config loads back equal."""
    write(tmp_path, "a.toml", 'bind = "gossip.example.org.:7000"\nadvertise = "web-1_a"\n')
    cfg = load_config(tmp_path)
    assert cfg.bind == ("gossip.example.org.", 7000)
    assert cfg.advertise == ("web-1_a", 7000)  # the bind port
    out = tmp_path / "out"
    out.mkdir()
    write(out, "check.toml", config_to_toml(cfg))
    assert load_config(out) == cfg
