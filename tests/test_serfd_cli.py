"""`serfd` as a command: broken configs exit 2 before binding anything; --check-config."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import pytest


def run_serfd(config_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "serfd", "--config-dir", str(config_dir), *args],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def base_config(tmp_path: Path) -> str:
    return (
        'node_name = "cli1"\n'
        'bind = "127.0.0.1:1"\n'  # never bound: every case below must fail before that
        f'state_dir = "{tmp_path}/state"\n'
        "[rpc]\n"
        f'socket = "{tmp_path}/serfd.sock"\n'
    )


BROKEN = {
    "bad_toml": ("bind = \n", r"99-broken.toml:1: "),
    "unknown_key": ('bnid = "127.0.0.1:7946"\n', "99-broken.toml: bnid: unknown key"),
    "bad_address": ('bind = "300.1.2.3:7946"\n', "99-broken.toml: bind: "),
    "wrong_type": ("join = \"127.0.0.1\"\n", "99-broken.toml: join: "),
    "bad_duration": ('retry_interval = "5 parsecs"\n', "99-broken.toml: retry_interval: "),
    "bad_rpc_tcp": ('[rpc]\ntcp = "127.0.0.1"\n', "99-broken.toml: rpc.tcp: "),
    "gossip_out_of_range": ("[gossip]\ngossip_nodes = 0\n",
                            "99-broken.toml: gossip.gossip_nodes: "),
    # Valid alone, but not below the lan profile's probe interval (1s).
    "gossip_probe_timeout": ('[gossip]\nprobe_timeout = "1s"\n',
                             "99-broken.toml: gossip.probe_timeout: "),
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_broken_config_exits_2_before_binding(tmp_path: Path, case: str) -> None:
    text, expected = BROKEN[case]
    d = tmp_path / "serfd.d"
    d.mkdir()
    (d / "10-base.toml").write_text(base_config(tmp_path))
    (d / "99-broken.toml").write_text(text)
    r = run_serfd(d)
    assert r.returncode == 2, r.stderr
    assert expected in r.stderr
    assert str(d / "99-broken.toml") in r.stderr
    # Nothing was bound or created: no RPC socket, no log line about listening.
    assert not (tmp_path / "serfd.sock").exists()
    assert "listening" not in r.stderr.lower()


def test_an_unknown_socket_group_exits_2_before_binding(tmp_path: Path) -> None:
    # Valid TOML, but this machine has no such group: a start would fail on every restart,
    # so it is a configuration error (2, which the unit does not restart on), and
    # --check-config, which the package runs before restarting serfd, says so too.
    d = tmp_path / "serfd.d"
    d.mkdir()
    (d / "10-base.toml").write_text(base_config(tmp_path) + 'socket_group = "no-such-group-x"\n')
    for args in ((), ("--check-config",)):
        r = run_serfd(d, *args)
        assert r.returncode == 2, r.stderr
        assert r.stderr == "rpc.socket_group: unknown group 'no-such-group-x'\n"
        assert r.stdout == ""
        assert not (tmp_path / "serfd.sock").exists()
        assert not (tmp_path / "state").exists()


def test_a_broken_keyring_file_exits_2_before_binding(tmp_path: Path) -> None:
    # The keyring file is state the operator must fix (or remove): a restart cannot, so
    # serfd exits 2 like a broken config, and the unit does not restart it in a loop.
    d = tmp_path / "serfd.d"
    d.mkdir()
    keyring = tmp_path / "keyring"
    keyring.write_text("[not a keyring")
    (d / "10-base.toml").write_text(base_config(tmp_path).replace(
        "[rpc]\n", f'keyring_file = "{keyring}"\n[rpc]\n'))
    r = run_serfd(d)
    assert r.returncode == 2, r.stderr
    assert "cannot set up encryption" in r.stderr and str(keyring) in r.stderr
    assert "Traceback" not in r.stderr
    assert not (tmp_path / "serfd.sock").exists()
    assert keyring.read_text() == "[not a keyring"  # left for the operator


def test_several_errors_reported_at_once(tmp_path: Path) -> None:
    d = tmp_path / "serfd.d"
    d.mkdir()
    (d / "10-a.toml").write_text('profile = "fast"\nlog_level = "loud"\n')
    r = run_serfd(d)
    assert r.returncode == 2
    assert "profile" in r.stderr and "log_level" in r.stderr


def test_check_config_prints_merged_toml(tmp_path: Path) -> None:
    d = tmp_path / "serfd.d"
    d.mkdir()
    (d / "10-base.toml").write_text(base_config(tmp_path) + '[tags]\nrole = "web"\n')
    (d / "20-override.toml").write_text('[tags]\ndc = "east"\n')
    r = run_serfd(d, "--check-config")
    assert r.returncode == 0, r.stderr
    merged = tomllib.loads(r.stdout)
    assert merged["node_name"] == "cli1"
    assert merged["tags"] == {"role": "web", "dc": "east"}
    # The printed config is itself a valid drop-in that gives the same result.
    d2 = tmp_path / "again"
    d2.mkdir()
    (d2 / "serfd.toml").write_text(r.stdout)
    r2 = run_serfd(d2, "--check-config")
    assert r2.returncode == 0, r2.stderr
    assert tomllib.loads(r2.stdout) == merged


def test_check_config_shows_gossip_timings(tmp_path: Path) -> None:
    d = tmp_path / "serfd.d"
    d.mkdir()
    (d / "10-base.toml").write_text(base_config(tmp_path))
    (d / "15-wan.toml").write_text('profile = "wan"\n')
    (d / "20-fast.toml").write_text('[gossip]\nprobe_interval = "4s"\ngossip_nodes = 5\n')
    r = run_serfd(d, "--check-config")
    assert r.returncode == 0, r.stderr
    merged = tomllib.loads(r.stdout)
    assert merged["gossip"]["probe_interval"] == "4s"
    assert merged["gossip"]["gossip_nodes"] == 5
    assert "probe_timeout" not in merged["gossip"]  # the profile's, shown as a comment:
    assert '\n# probe_timeout = "3s"\n' in r.stdout


def _paths_block(stdout: str) -> dict[str, str]:
    """The "# Paths in use" comment block of --check-config: what -> path."""
    lines = stdout.splitlines()
    start = lines.index("# Paths in use (defaults resolved):")
    rows = {}
    for line in lines[start + 1:]:
        what, _, path = line.removeprefix("#   ").partition("  ")
        rows[what.strip()] = path.strip()
    return rows


def test_check_config_shows_every_derived_path(tmp_path: Path) -> None:
    d = tmp_path / "serfd.d"
    d.mkdir()
    (d / "10-base.toml").write_text(base_config(tmp_path))
    r = run_serfd(d, "--check-config")
    assert r.returncode == 0, r.stderr
    state = f"{tmp_path}/state"
    assert _paths_block(r.stdout) == {
        "state_dir": state,
        "state lock": f"{state}/serfd.lock",
        "snapshot_path": f"{state}/snapshot",
        "keyring_file": "none (no encryption: neither encrypt_key nor keyring_file is set)",
        "tags_file": f"{state}/tags",
        "handlers_dir": f"{d}/handlers",
        "rpc.socket": f"{tmp_path}/serfd.sock",
    }
    # Set keys are shown as set; encryption puts the keyring under state_dir.
    (d / "20-paths.toml").write_text(
        'encrypt_key = "6hRTJPebtwdfvbZB72SW+nNMkVu1HVCgZLu9MmArzeg="\n'
        'snapshot_path = "/srv/snap"\nhandlers_dir = "/srv/h"\ntags_file = ""\n')
    r = run_serfd(d, "--check-config")
    assert r.returncode == 0, r.stderr
    paths = _paths_block(r.stdout)
    assert paths["keyring_file"] == f"{state}/keyring"
    assert (paths["snapshot_path"], paths["handlers_dir"]) == ("/srv/snap", "/srv/h")
    assert paths["tags_file"] == "none (runtime tag changes are kept in memory only)"
    # Comments only: the output still loads back as the same configuration.
    d2 = tmp_path / "again"
    d2.mkdir()
    (d2 / "serfd.toml").write_text(r.stdout)
    assert tomllib.loads(run_serfd(d2, "--check-config").stdout) == tomllib.loads(r.stdout)


def test_check_config_keeps_host_names_and_shows_what_they_resolve_to(tmp_path: Path) -> None:
    d = tmp_path / "serfd.d"
    d.mkdir()
    (d / "10-base.toml").write_text(base_config(tmp_path))
    (d / "20-names.toml").write_text('bind = "localhost:17946"\nadvertise = "localhost"\n'
                                     'statsd_addr = "localhost:8125"\n')
    r = run_serfd(d, "--check-config")
    assert r.returncode == 0, r.stderr
    merged = tomllib.loads(r.stdout)
    assert (merged["bind"], merged["advertise"]) == ("localhost:17946", "localhost:17946")
    assert "# bind localhost resolves to 127.0.0.1\n" in r.stdout
    assert "# advertise localhost resolves to 127.0.0.1\n" in r.stdout
    assert merged["statsd_addr"] == "localhost:8125"
    assert "# statsd_addr localhost resolves to 127.0.0.1\n" in r.stdout
