"""Config keys of durable state and security: snapshot, encryption, RPC access control."""

from __future__ import annotations

from pathlib import Path

import pytest

from serfd.agent.config import Config, ConfigError, config_to_toml, load_config

KEY = "6hRTJPebtwdfvbZB72SW+nNMkVu1HVCgZLu9MmArzeg="


def write(d: Path, name: str, text: str) -> Path:
    path = d / name
    path.write_text(text, encoding="utf-8")
    return path


def errors_of(d: Path) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config(d)
    return info.value.errors


def test_defaults() -> None:
    cfg = Config()
    assert cfg.snapshot_path is None  # the agent uses <state_dir>/snapshot
    assert cfg.rejoin_after_leave is False
    assert cfg.encrypt_key is None and cfg.keyring_file is None
    assert cfg.gossip_verify_incoming and cfg.gossip_verify_outgoing
    assert cfg.rpc_socket_mode == 0o660 and cfg.rpc_socket_group is None


def test_security_keys_load(tmp_path: Path) -> None:
    write(tmp_path, "50.toml", f'''
snapshot_path = "/srv/serfd/snap"
rejoin_after_leave = true
encrypt_key = "{KEY}"
keyring_file = "/srv/serfd/keyring.json"
gossip_verify_incoming = false
gossip_verify_outgoing = false
[rpc]
tcp = "10.0.0.1:7373"
auth_key = "s3cret"
socket_group = "serfd"
''')
    cfg = load_config(tmp_path)
    assert cfg.snapshot_path == Path("/srv/serfd/snap")
    assert cfg.rejoin_after_leave
    assert cfg.encrypt_key == KEY
    assert cfg.keyring_file == Path("/srv/serfd/keyring.json")
    assert not cfg.gossip_verify_incoming and not cfg.gossip_verify_outgoing
    assert cfg.rpc_socket_group == "serfd"
    text = config_to_toml(cfg, redact_secrets=True)
    assert KEY not in text and "s3cret" not in text
    write(tmp_path, "50.toml", config_to_toml(cfg))
    assert load_config(tmp_path) == cfg


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        ('encrypt_key = "short"', "invalid encryption key"),
        ('encrypt_key = "AAAA"', "key size must be 16, 24 or 32 bytes"),
        ("encrypt_key = 5", "expected a string"),
        ('snapshot_path = "relative/snap"', "not an absolute path"),
        ('keyring_file = ""', "must not be empty"),
        ('rejoin_after_leave = "yes"', "expected a boolean"),
        ('gossip_verify_incoming = 1', "expected a boolean"),
        ('[rpc]\nsocket_group = "a b"', "not a group name"),
    ],
)
def test_bad_values(tmp_path: Path, line: str, reason: str) -> None:
    path = write(tmp_path, "50.toml", line + "\n")
    (err,) = errors_of(tmp_path)
    assert err.startswith(f"{path}: ") and reason in err, err


@pytest.mark.parametrize("addr", ["0.0.0.0:7373", "10.1.2.3:7373", "[::]:7373", "[2001:db8::1]:1"])
def test_non_loopback_rpc_tcp_needs_auth_key(tmp_path: Path, addr: str) -> None:
    path = write(tmp_path, "50.toml", f'[rpc]\ntcp = "{addr}"\n')
    (err,) = errors_of(tmp_path)
    assert err.startswith(f"{path}: rpc.tcp: ")
    assert "rpc.auth_key" in err and "loopback" in err
    # The key may come from another drop-in.
    write(tmp_path, "60-secret.toml", '[rpc]\nauth_key = "k"\n')
    assert load_config(tmp_path).rpc_auth_key == "k"


@pytest.mark.parametrize("addr", ["127.0.0.1:7373", "127.9.9.9:1", "[::1]:7373"])
def test_loopback_rpc_tcp_without_auth_key_is_fine(tmp_path: Path, addr: str) -> None:
    write(tmp_path, "50.toml", f'[rpc]\ntcp = "{addr}"\n')
    assert load_config(tmp_path).rpc_auth_key is None
