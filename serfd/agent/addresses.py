"""Host names in ``bind`` and ``advertise``, resolved once at start, as Serf does.

Theory of operation
-------------------
The configuration keeps what the operator wrote (an IP literal or a host name; see
``serfd.agent.config``), so a reload compares names, not whatever they resolve to
today. :func:`resolve_gossip_addresses` turns both keys into IPs the way Serf's agent
does (``net.ResolveTCPAddr``: the first IPv4 address of the name, else its first
address). ``Agent.start`` calls it before anything is built (off the loop, and only
when a name is configured), and ``serfd --check-config`` calls it too, so the check
and the start agree. A name that does not resolve is reported as ``FILE: KEY:
reason``: ``--check-config`` exits 2, a start exits 1 (under systemd the unit is
restarted, for a resolver that is not up yet). The node keeps the addresses it
started with until it is restarted. ``statsd_addr`` and ``statsite_addr`` are resolved
the same way (:func:`resolve_sink_addresses`), at the same moments.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable

from serfd.agent.config import Config, ConfigError, is_host_name

__all__ = [
    "Lookup",
    "bind_from_interface",
    "has_host_names",
    "interface_ips",
    "resolve_gossip_addresses",
    "resolve_host",
    "resolve_sink_addresses",
    "sink_host_names",
]

# host -> getaddrinfo's answers ((family, type, proto, canonname, sockaddr), ...)
Lookup = Callable[[str], list[tuple[object, object, object, object, tuple[object, ...]]]]


def _getaddrinfo(host: str) -> list[tuple[object, object, object, object, tuple[object, ...]]]:
    return list(socket.getaddrinfo(host, None, type=socket.SOCK_STREAM))


def has_host_names(cfg: Config) -> bool:
    """Whether ``bind`` or ``advertise`` names a host (a DNS lookup is needed)."""
    return any(addr is not None and is_host_name(addr[0]) for addr in (cfg.bind, cfg.advertise))


def resolve_host(host: str, lookup: Lookup | None = None) -> str:
    """An IP stays itself; a name becomes its first IPv4 address, else its first address
    (Go's ResolveTCPAddr). OSError (with the resolver's reason) when it has none."""
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        pass
    ips: list[str] = []
    for family, _, _, _, sockaddr in (lookup or _getaddrinfo)(host):
        if family in (socket.AF_INET, socket.AF_INET6):
            ips.append(str(sockaddr[0]).split("%", 1)[0])  # no IPv6 zone
    if not ips:
        raise OSError(f"no IP address for {host}")
    v4 = [ip for ip in ips if ipaddress.ip_address(ip).version == 4]
    return (v4 or ips)[0]


def resolve_gossip_addresses(
    cfg: Config, lookup: Lookup | None = None,
) -> tuple[tuple[str, int], tuple[str, int] | None]:
    """(bind, advertise) with host names resolved; ConfigError with one ``FILE: KEY:
    reason`` line per key that cannot be used."""
    errors: list[str] = []
    out: dict[str, tuple[str, int] | None] = {"bind": cfg.bind, "advertise": cfg.advertise}
    for key, addr in list(out.items()):
        if addr is None or not is_host_name(addr[0]):
            continue
        where = cfg.sources.get(key, "serfd")
        try:
            ip = resolve_host(addr[0], lookup)
        except (OSError, UnicodeError) as e:
            reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
            errors.append(f'{where}: {key}: cannot resolve host name "{addr[0]}": {reason}')
            continue
        if key == "advertise" and ipaddress.ip_address(ip).is_unspecified:
            errors.append(f'{where}: {key}: "{addr[0]}" resolves to the unspecified address '
                          f"{ip}, which cannot be advertised")
            continue
        out[key] = (ip, addr[1])
    if errors:
        raise ConfigError(errors)
    bind = out["bind"]
    assert bind is not None
    return bind, out["advertise"]


SINK_KEYS = ("statsd_addr", "statsite_addr")


def sink_host_names(cfg: Config) -> bool:
    """Whether ``statsd_addr`` or ``statsite_addr`` names a host."""
    return any((addr := getattr(cfg, key)) is not None and is_host_name(addr[0])
               for key in SINK_KEYS)


def resolve_sink_addresses(
    cfg: Config, lookup: Lookup | None = None,
) -> dict[str, tuple[str, int] | None]:
    """``statsd_addr`` and ``statsite_addr`` (None: unset) with host names resolved as
    :func:`resolve_host` does; ConfigError with one ``FILE: KEY: reason`` line each."""
    errors: list[str] = []
    out: dict[str, tuple[str, int] | None] = {}
    for key in SINK_KEYS:
        addr: tuple[str, int] | None = getattr(cfg, key)
        out[key] = addr
        if addr is None or not is_host_name(addr[0]):
            continue
        try:
            ip = resolve_host(addr[0], lookup)
        except (OSError, UnicodeError) as e:
            reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
            errors.append(f'{cfg.sources.get(key, "serfd")}: {key}: cannot resolve host name '
                          f'"{addr[0]}": {reason}')
            continue
        if ipaddress.ip_address(ip).is_unspecified:
            errors.append(f'{cfg.sources.get(key, "serfd")}: {key}: "{addr[0]}" resolves to '
                          "the unspecified address, which cannot be sent to")
            continue
        out[key] = (ip, addr[1])
    if errors:
        raise ConfigError(errors)
    return out


def interface_ips(name: str) -> list[str]:
    """The addresses of a network interface, IPv4 first (as Go's Interface.Addrs lists
    them); OSError when there is no such interface."""
    socket.if_nametoindex(name)  # OSError: no such device
    import ifaddr  # only with `interface` or discover

    for adapter in ifaddr.get_adapters():
        if adapter.name == name:
            v4 = [str(ip.ip) for ip in adapter.ips if isinstance(ip.ip, str)]
            v6 = [str(ip.ip[0]) for ip in adapter.ips if isinstance(ip.ip, tuple)]
            return v4 + v6
    return []


def bind_from_interface(cfg: Config, bind: tuple[str, int],
                        ips: Callable[[str], list[str]] = interface_ips) -> tuple[str, int]:
    """Serf's ``interface``: with bind on 0.0.0.0, the interface's first address that is
    not link-local; otherwise the interface must have the bind address. ConfigError
    (``FILE: interface: reason``) when neither works."""
    name = cfg.interface
    if name is None:
        return bind
    where = cfg.sources.get("interface", "serfd")
    try:
        addrs = ips(name)
    except OSError as e:
        raise ConfigError([f'{where}: interface: "{name}": {e.strerror or e}']) from None
    if not addrs:
        raise ConfigError([f'{where}: interface: "{name}" has no addresses'])
    host, port = bind
    if host == "0.0.0.0":
        for ip in addrs:
            if not ipaddress.ip_address(ip).is_link_local:
                return ip, port
        raise ConfigError([f'{where}: interface: no usable address on "{name}"'])
    if host not in addrs:
        raise ConfigError([f'{where}: interface: "{name}" has no address {host} (bind)'])
    return bind
