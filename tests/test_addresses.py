"""Host names in bind and advertise (serfd.agent.addresses), with a fake resolver: which
address a name becomes, and the FILE: KEY: reason errors. No DNS."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from serfd.agent.addresses import has_host_names, resolve_gossip_addresses, resolve_host
from serfd.agent.config import Config, ConfigError

V4, V6 = socket.AF_INET, socket.AF_INET6
ANSWERS = {
    "dual.example": [(V6, 1, 6, "", ("2001:db8::1", 0, 0, 0)), (V4, 1, 6, "", ("192.0.2.7", 0)),
                     (V4, 1, 6, "", ("192.0.2.8", 0))],
    "v6.example": [(V6, 1, 6, "", ("fe80::1%eth0", 0, 0, 2)), (V6, 1, 6, "", ("2001:db8::2", 0))],
    "zero.example": [(V4, 1, 6, "", ("0.0.0.0", 0))],
}

asked: list[str] = []


def lookup(host: str) -> list[tuple[object, object, object, object, tuple[object, ...]]]:
    asked.append(host)
    if host not in ANSWERS:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
    return list(ANSWERS[host])


def test_a_name_becomes_its_first_ipv4_address_else_its_first_address() -> None:
    assert resolve_host("dual.example", lookup) == "192.0.2.7"  # as Go's ResolveTCPAddr
    assert resolve_host("v6.example", lookup) == "fe80::1"  # the zone is not an address
    assert resolve_host("10.0.0.1", lookup) == "10.0.0.1"
    with pytest.raises(OSError, match="Name or service not known"):
        resolve_host("nowhere.example", lookup)


def test_ip_literals_need_no_lookup() -> None:
    asked.clear()
    cfg = Config(bind=("10.0.0.1", 7946), advertise=("192.0.2.1", 7000))
    assert not has_host_names(cfg)
    assert resolve_gossip_addresses(cfg, lookup) == (("10.0.0.1", 7946), ("192.0.2.1", 7000))
    assert asked == []


def test_bind_and_advertise_names_are_resolved_keeping_their_ports() -> None:
    cfg = Config(bind=("dual.example", 7001), advertise=("v6.example", 7002))
    assert has_host_names(cfg)
    assert resolve_gossip_addresses(cfg, lookup) == (("192.0.2.7", 7001), ("fe80::1", 7002))
    assert has_host_names(Config(bind=("0.0.0.0", 1), advertise=("dual.example", 1)))


def test_names_that_cannot_be_used_are_file_key_reason_errors() -> None:
    cfg = Config(bind=("nowhere.example", 7946), advertise=("zero.example", 7946),
                 sources={"bind": "/etc/serfd.d/50-a.toml", "advertise": "/etc/serfd.d/60-b.toml"})
    with pytest.raises(ConfigError) as e:
        resolve_gossip_addresses(cfg, lookup)
    assert e.value.errors == [
        ('/etc/serfd.d/50-a.toml: bind: cannot resolve host name "nowhere.example": '
         "Name or service not known"),
        ('/etc/serfd.d/60-b.toml: advertise: "zero.example" resolves to the unspecified '
         "address 0.0.0.0, which cannot be advertised"),
    ]
    # bind may resolve to the unspecified address (listen everywhere).
    assert resolve_gossip_addresses(Config(bind=("zero.example", 1)), lookup)[0] == ("0.0.0.0", 1)


def test_the_config_file_keeps_the_name(tmp_path: Path) -> None:
    from serfd.agent.config import load_config

    (tmp_path / "a.toml").write_text('bind = "dual.example:7001"\n')
    cfg = load_config(tmp_path)
    assert cfg.bind == ("dual.example", 7001)
    assert resolve_gossip_addresses(cfg, lookup)[0] == ("192.0.2.7", 7001)


def test_statsd_and_statsite_names_are_resolved_as_bind() -> None:
    from serfd.agent.addresses import resolve_sink_addresses, sink_host_names

    assert not sink_host_names(Config(statsd_addr=("127.0.0.1", 8125)))
    cfg = Config(statsd_addr=("dual.example", 8125), statsite_addr=("10.0.0.1", 8126))
    assert sink_host_names(cfg)
    assert resolve_sink_addresses(cfg, lookup) == {
        "statsd_addr": ("192.0.2.7", 8125), "statsite_addr": ("10.0.0.1", 8126)}
    bad = Config(statsd_addr=("nowhere.example", 1), statsite_addr=("zero.example", 2),
                 sources={"statsd_addr": "/etc/serfd.d/50-a.toml"})
    with pytest.raises(ConfigError) as e:
        resolve_sink_addresses(bad, lookup)
    assert e.value.errors == [
        ('/etc/serfd.d/50-a.toml: statsd_addr: cannot resolve host name "nowhere.example": '
         "Name or service not known"),
        ('serfd: statsite_addr: "zero.example" resolves to the unspecified address, which '
         "cannot be sent to"),
    ]
