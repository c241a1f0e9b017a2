"""`serfd --import-serf-config`: Serf 0.9.4 JSON options -> a serfd drop-in."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from serfd.__main__ import main
from serfd.agent.config import load_config
from serfd.agent.importserf import (
    EXIT_BAD_INPUT,
    EXIT_OK,
    EXIT_UNMAPPED,
    SERF_KEYS,
    SerfConfigError,
    import_serf_config,
    merge_serf_configs,
    read_serf_config,
)

FIXTURE = Path(__file__).parent / "fixtures" / "serf-config"
SERF_CONFIG_GO = Path(
    "/usr/share/gocode/src/github.com/hashicorp/serf/cmd/serf/command/agent/config.go")


def _load_dropin(tmp_path: Path, text: str):  # type: ignore[no-untyped-def]
    d = tmp_path / "serfd.d"
    d.mkdir()
    (d / "50-imported.toml").write_text(text)
    return load_config(d)


def test_serf_keys_are_serf_094s_config_struct() -> None:
    if not SERF_CONFIG_GO.exists():
        pytest.skip("golang-github-hashicorp-serf-dev is not installed")
    go_keys = set(re.findall(r'mapstructure:"([a-z_]+)"', SERF_CONFIG_GO.read_text()))
    assert set(SERF_KEYS) == go_keys


def test_fixture_sets_every_serf_key_over_two_files() -> None:
    files = sorted(FIXTURE.glob("*.json"))
    assert len(files) == 2
    keys = set().union(*(json.loads(f.read_text()) for f in files))
    assert keys == set(SERF_KEYS)


def test_fixture_imports_to_a_dropin_load_config_accepts(tmp_path: Path) -> None:
    merged, files = read_serf_config([FIXTURE])
    assert [f.name for f in files] == ["10-base.json", "20-site.json"]
    imported = import_serf_config(merged)
    cfg = _load_dropin(tmp_path, imported.toml)
    assert cfg.node_name == "web-1"
    assert cfg.bind == ("10.0.0.5", 7946)
    assert cfg.advertise == ("203.0.113.5", 7946)
    # tags merge key by key (the later file's rack wins); Serf's role is tags.role
    assert dict(cfg.tags) == {"dc": "east", "rack": "r7", "role": "web"}
    # start_join then retry_join, concatenated across files, each address once
    assert cfg.join == ("10.0.0.2", "10.0.0.3:7946", "serf-seed.example.com")
    assert cfg.retry_max_attempts == 5 and cfg.retry_interval == 15.0
    assert cfg.log_level == "debug"  # the later file's DEBUG
    assert cfg.protocol == 4
    assert cfg.rpc_tcp == ("127.0.0.1", 7373) and cfg.rpc_auth_key == "s3cret-rpc-token"
    # serf agent refuses encrypt_key with keyring_file, and tags with tags_file: the
    # fixture has the first of each pair empty (covered below)
    assert cfg.encrypt_key is None
    assert str(cfg.keyring_file) == "/var/lib/serf/keyring.json"
    assert cfg.tags_file == cfg.state_dir / "tags"  # serfd's default
    assert str(cfg.snapshot_path) == "/var/lib/serf/snapshot"
    assert (cfg.leave_on_terminate, cfg.skip_leave_on_interrupt, cfg.rejoin_after_leave) == (
        True, True, True)
    assert cfg.replay_on_join is False and cfg.enable_compression is True
    assert (cfg.reconnect_interval, cfg.reconnect_timeout, cfg.tombstone_timeout,
            cfg.broadcast_timeout) == (60.0, 48 * 3600.0, 12 * 3600.0, 10.0)
    assert (cfg.query_response_size_limit, cfg.query_size_limit,
            cfg.user_event_size_limit) == (2048, 2048, 1024)
    assert cfg.profile == "lan"
    # Serf's agent reads disable_coordinates without applying it; serfd applies it
    assert cfg.disable_coordinates is True
    assert "# note: disable_coordinates: Serf 0.9.4's agent" in imported.toml
    assert cfg.enable_syslog is True and cfg.syslog_facility == "LOCAL3"
    assert cfg.discover == "web-cluster" and cfg.interface == "eth0"
    # both files' handlers, in order; a second script for member-join gets its own route
    routes = list(cfg.handlers.items())
    assert routes == [
        ("member-join,member-leave", "/etc/serf/handlers/lb-update.sh"),
        ("user:deploy", "/usr/local/bin/deploy.sh"),
        ("query:uptime", "uptime"),
        ("member-join", "logger joined"),
    ]


def test_fixture_names_what_it_cannot_map() -> None:
    merged, _ = read_serf_config([FIXTURE])
    imported = import_serf_config(merged)
    assert {key for key, _ in imported.unmapped} == {
        "disable_name_resolution"}
    for key, reason in imported.unmapped:
        assert f"# not imported: {key}: {reason}" in imported.toml


def test_statsd_and_statsite_are_imported_under_serfs_names(tmp_path: Path) -> None:
    merged, _ = read_serf_config([FIXTURE])
    cfg = _load_dropin(tmp_path, import_serf_config(merged).toml)
    assert cfg.statsite_addr == ("127.0.0.1", 8125)
    assert cfg.statsd_addr == ("127.0.0.1", 8126)
    bad = import_serf_config(merge_serf_configs([{"statsd_addr": "nope"}]))
    assert [key for key, _ in bad.unmapped] == ["statsd_addr"]


def test_serf_defaults_that_differ_from_serfds_are_stated(tmp_path: Path) -> None:
    imported = import_serf_config(merge_serf_configs([{"node_name": "a"}]))
    assert imported.unmapped == []
    cfg = _load_dropin(tmp_path, imported.toml)
    assert cfg.leave_on_terminate is False  # Serf's default; serfd's is true
    assert cfg.rpc_tcp == ("127.0.0.1", 7373)  # serf agent always listens for RPC


def test_merge_follows_serfs_mergeconfig() -> None:
    merged = merge_serf_configs([
        {"leave_on_terminate": True, "node_name": "a", "protocol": 4, "tags": {"x": "1"},
         "start_join": ["h1"], "enable_compression": False},
        {"leave_on_terminate": False, "node_name": "", "protocol": 0, "tags": {"y": "2"},
         "start_join": ["h2"], "enable_compression": True},
    ])
    # false, "" and 0 leave the earlier value; tags merge; lists concatenate
    assert merged == {"leave_on_terminate": True, "node_name": "a", "protocol": 4,
                      "tags": {"x": "1", "y": "2"}, "start_join": ["h1", "h2"],
                      "enable_compression": True}


def test_handler_forms(tmp_path: Path) -> None:
    imported = import_serf_config(merge_serf_configs([{"event_handlers": [
        "/usr/bin/all.sh", "=/usr/bin/empty-filter.sh", "member-join=a", "member-join=b",
        "member-join=c", "bogus-event=x"]}]))
    assert [key for key, _ in imported.unmapped] == ["event_handlers[5]"]
    assert "bogus-event" in imported.unmapped[0][1]
    cfg = _load_dropin(tmp_path, imported.toml)
    assert sorted(cfg.handlers.values()) == ["/usr/bin/all.sh", "/usr/bin/empty-filter.sh",
                                             "a", "b", "c"]


def test_values_serfd_refuses_are_named_not_dropped(tmp_path: Path) -> None:
    imported = import_serf_config(merge_serf_configs([{
        "retry_interval": "500ms", "snapshot_path": "relative/snap",
        "rpc_addr": "10.0.0.5:7373"}]))
    reasons = dict(imported.unmapped)
    assert set(reasons) == {"retry_interval", "snapshot_path", "rpc_addr"}
    assert "1s" in reasons["retry_interval"]
    assert "absolute" in reasons["snapshot_path"]
    assert "rpc_auth" in reasons["rpc_addr"]
    _load_dropin(tmp_path, imported.toml)  # what was printed still loads


def test_key_and_tags_files(tmp_path: Path) -> None:
    key = "6hRTJPebtwdfvbZB72SW+nNMkVu1HVCgZLu9MmArzeg="
    imported = import_serf_config(merge_serf_configs([{
        "encrypt_key": key, "tags_file": "/var/lib/serf/tags.json"}]))
    assert imported.unmapped == []
    cfg = _load_dropin(tmp_path, imported.toml)
    assert cfg.encrypt_key == key
    assert str(cfg.tags_file) == "/var/lib/serf/tags.json"


@pytest.mark.parametrize(("docs", "message"), [
    (['{"tags": {"a": "b"}}', '{"tags_file": "/t"}'], "tags_file: serf agent refuses"),
    (['{"role": "web", "tags_file": "/t"}'], "tags_file: serf agent refuses"),
    (['{"encrypt_key": "x"}', '{"keyring_file": "/k"}'], "keyring_file: serf agent refuses"),
])
def test_pairs_serf_refuses_at_start(tmp_path: Path, docs: list[str], message: str) -> None:
    for i, doc in enumerate(docs):
        (tmp_path / f"{i}.json").write_text(doc)
    with pytest.raises(SerfConfigError) as exc:
        read_serf_config([tmp_path])
    assert len(exc.value.errors) == 1
    assert exc.value.errors[0].startswith(f"{tmp_path}: ") and message in exc.value.errors[0]


def test_remote_rpc_with_auth_is_mapped(tmp_path: Path) -> None:
    imported = import_serf_config(merge_serf_configs([{
        "rpc_addr": "10.0.0.5:7373", "rpc_auth": "k"}]))
    assert imported.unmapped == []
    assert _load_dropin(tmp_path, imported.toml).rpc_tcp == ("10.0.0.5", 7373)


@pytest.mark.parametrize(("doc", "message"), [
    ('{"node_name": "a",}', ":1: invalid JSON"),
    ('["node_name"]', "expected a JSON object, got array"),
    ('{"nodename": "a"}', "nodename: not an option of Serf 0.9.4"),
    ('{"protocol": "5"}', "protocol: expected an integer, got string"),
    ('{"tags": {"a": 1}}', "tags: expected an object of strings"),
    ('{"start_join": "h1"}', "start_join: expected an array of strings, got string"),
])
def test_bad_input_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                           doc: str, message: str) -> None:
    path = tmp_path / "serf.json"
    path.write_text(doc)
    with pytest.raises(SerfConfigError):
        read_serf_config([path])
    assert main(["--import-serf-config", str(path)]) == EXIT_BAD_INPUT
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith(f"{path}") and message in err


def test_cli_exit_codes_and_stderr(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--import-serf-config", str(FIXTURE)]) == EXIT_UNMAPPED
    out, err = capsys.readouterr()
    assert "serfd: not imported: disable_name_resolution:" in err
    assert f"# from: {FIXTURE / '10-base.json'}, {FIXTURE / '20-site.json'}\n" in out
    _load_dropin(tmp_path, out)

    one = tmp_path / "one.json"
    one.write_text('{"node_name": "a", "bind": "127.0.0.1"}')
    two = tmp_path / "two.json"
    two.write_text('{"tags": {"k": "v"}}')
    # repeatable, merged in order, as serf agent -config-file X -config-file Y
    assert main(["--import-serf-config", str(one), "--import-serf-config", str(two)]) == EXIT_OK
    out, err = capsys.readouterr()
    assert err == ""
    (tmp_path / "d").mkdir()
    cfg = _load_dropin(tmp_path / "d", out)
    assert cfg.node_name == "a" and dict(cfg.tags) == {"k": "v"}
