"""discover, interface and Serf 0.10's [mdns] table: validated as `FILE: KEY: reason`,
checked together once merged; the bind address derived from an interface as Serf's
agent derives it (fake interface lookups)."""

from __future__ import annotations

from pathlib import Path

import pytest

from serfd.agent.addresses import bind_from_interface
from serfd.agent.config import Config, ConfigError, config_to_toml, load_config


def load(d: Path, text: str, name: str = "a.toml") -> Config:
    (d / name).write_text(text)
    return load_config(d)


def errors(d: Path, text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load(d, text)
    return info.value.errors


def test_defaults_are_off(tmp_path: Path) -> None:
    cfg = load_config(tmp_path)
    assert (cfg.discover, cfg.interface, cfg.mdns_interface) == (None, None, None)
    assert (cfg.mdns_disable_ipv4, cfg.mdns_disable_ipv6) == (False, False)


def test_all_keys_load_and_round_trip(tmp_path: Path) -> None:
    cfg = load(tmp_path, 'discover = "web"\ninterface = "eth0"\n\n'
                         '[mdns]\ninterface = "br-lan"\ndisable_ipv6 = true\n')
    assert (cfg.discover, cfg.interface, cfg.mdns_interface) == ("web", "eth0", "br-lan")
    assert cfg.mdns_disable_ipv6 and not cfg.mdns_disable_ipv4
    out = tmp_path / "out"
    out.mkdir()
    (out / "c.toml").write_text(config_to_toml(cfg))
    assert load_config(out) == cfg


@pytest.mark.parametrize(("text", "key", "reason"), [
    ('discover = ""', "discover", "must not be empty"),
    ('discover = "a.b"', "discover", "no dots, spaces or control characters"),
    ('discover = "a b"', "discover", "no dots"),
    (f'discover = "{"x" * 58}"', "discover", "too long (58 bytes, max 57"),
    ("discover = true", "discover", "expected a string, got boolean"),
    ('interface = "eth0/1"', "interface", '"eth0/1" is not a network interface name'),
    ('interface = "averyveryverylongname"', "interface", "is not a network interface name"),
    ('[mdns]\ndisable_ipv4 = "no"', "mdns.disable_ipv4", "expected a boolean"),
    ('[mdns]\niface = "eth0"', "mdns.iface", 'unknown key (did you mean "mdns.interface"?)'),
])
def test_bad_values(tmp_path: Path, text: str, key: str, reason: str) -> None:
    (err,) = errors(tmp_path, text + "\n")
    assert err.startswith(f"{tmp_path / 'a.toml'}: {key}: ") and reason in err


def test_serf_010_checks_on_the_merged_values(tmp_path: Path) -> None:
    # Serf: "mDNS interface specified without enabling mDNS discovery"
    (err,) = errors(tmp_path, '[mdns]\ninterface = "eth0"\n')
    assert err == (f"{tmp_path / 'a.toml'}: mdns.interface: set without discover "
                   "(mDNS discovery is off)")
    # discover from another file is enough
    (tmp_path / "b.toml").write_text('discover = "web"\n')
    assert load_config(tmp_path).mdns_interface == "eth0"
    # Serf: "both IPv4 and IPv6 are disabled"; named in the later file
    (tmp_path / "c.toml").write_text("[mdns]\ndisable_ipv4 = true\n")
    (tmp_path / "d.toml").write_text("[mdns]\ndisable_ipv6 = true\n")
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path)
    assert info.value.errors == [(f"{tmp_path / 'd.toml'}: mdns.disable_ipv6: both IPv4 "
                                  "and IPv6 are disabled for mDNS")]


IFACES = {"eth0": ["fe80::1", "10.0.0.5", "10.0.0.6", "2001:db8::5"], "lo9": [],
          "ll": ["fe80::2", "169.254.1.1"]}


def fake_ips(name: str) -> list[str]:
    if name not in IFACES:
        raise OSError(19, "No such device")
    return IFACES[name]


def with_iface(name: str | None, bind: tuple[str, int] = ("0.0.0.0", 7946)) -> Config:
    return Config(interface=name, bind=bind, sources={"interface": "/etc/serfd.d/x.toml"})


def test_bind_from_interface_as_serf() -> None:
    cfg = with_iface("eth0")
    # 0.0.0.0: the first address that is not link-local
    assert bind_from_interface(cfg, cfg.bind, fake_ips) == ("10.0.0.5", 7946)
    # an address: the interface must have it
    assert bind_from_interface(cfg, ("10.0.0.6", 7000), fake_ips) == ("10.0.0.6", 7000)
    # no interface: bind as configured
    assert bind_from_interface(with_iface(None), ("0.0.0.0", 1), fake_ips) == ("0.0.0.0", 1)


@pytest.mark.parametrize(("name", "bind", "reason"), [
    ("eth9", "0.0.0.0", 'interface: "eth9": No such device'),
    ("lo9", "0.0.0.0", 'interface: "lo9" has no addresses'),
    ("ll", "0.0.0.0", 'interface: no usable address on "ll"'),
    ("eth0", "10.0.0.7", 'interface: "eth0" has no address 10.0.0.7 (bind)'),
])
def test_bind_from_interface_refusals(name: str, bind: str, reason: str) -> None:
    cfg = with_iface(name, (bind, 7946))
    with pytest.raises(ConfigError) as info:
        bind_from_interface(cfg, cfg.bind, fake_ips)
    assert info.value.errors == [f"/etc/serfd.d/x.toml: {reason}"]


def test_check_config_shows_or_refuses_the_interface(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from serfd.__main__ import main

    (tmp_path / "a.toml").write_text(f'interface = "lo"\nstate_dir = "{tmp_path}/s"\n')
    assert main(["--check-config", "--config-dir", str(tmp_path)]) == 0
    assert "# interface lo gives bind 127.0.0.1\n" in capsys.readouterr().out
    (tmp_path / "a.toml").write_text('interface = "nope0"\n')
    assert main(["--check-config", "--config-dir", str(tmp_path)]) == 2
    assert capsys.readouterr().err.startswith(f'{tmp_path / "a.toml"}: interface: "nope0": ')
