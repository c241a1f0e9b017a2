"""What a reload may change in a running agent, and what has to wait for a restart.

A reload builds a whole new :class:`~serfd.config.Config` from the drop-ins and
:func:`plan_reload` compares it with the running one, field by field. Fields in
:data:`RESTART_FIELDS` shape sockets or the protocol state built at start (Serf's
reload has the same split: bind, advertise, node name, profile and timings need a
restart). Every other field is *live*: the agent applies the built-in ones (tags,
log level, join list, RPC auth key; the retry and leave settings are read when used)
and passes the rest to its reload hooks (handlers). A field added to Config later is
live unless it is listed here.

The plan's ``applied`` config is what the agent runs from then on: new values for
live fields, the running values for restart-only fields. So ``serfctl info`` and the
next reload compare against what is really in effect, and a restart-only change is
reported again at every reload until the service is restarted.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from serfd.config import _KEYS, Config

__all__ = ["RESTART_FIELDS", "ReloadPlan", "key_name", "plan_reload"]

# Config fields whose new value only takes effect at the next start.
RESTART_FIELDS = frozenset({
    "node_name",
    "bind",
    "advertise",
    "profile",
    "enable_compression",
    "protocol",
    "state_dir",
    "snapshot_path",
    "encrypt_key",
    "keyring_file",
    "gossip_verify_incoming",
    "gossip_verify_outgoing",
    "broadcast_timeout",
    "reconnect_interval",
    "reconnect_timeout",
    "tombstone_timeout",
    "rpc_socket",
    "rpc_socket_mode",
    "rpc_tcp",
    "rpc_socket_group",
})

_FIELD_TO_KEY = {spec.field: dotted for dotted, spec in _KEYS.items()}


def key_name(field: str) -> str:
    """The TOML key an operator writes for a Config field ("rpc_tcp" -> "rpc.tcp")."""
    return _FIELD_TO_KEY.get(field, field)


@dataclass(frozen=True, slots=True)
class ReloadPlan:
    """The outcome of comparing the running config with a freshly loaded one."""

    applied: Config  # run this from now on
    changed: tuple[str, ...]  # TOML keys whose new value is applied now
    restart_needed: tuple[str, ...]  # TOML keys whose new value waits for a restart


def plan_reload(running: Config, new: Config) -> ReloadPlan:
    """Split the differences between running and new into live and restart-only."""
    changed: list[str] = []
    restart: list[str] = []
    keep: dict[str, object] = {}
    for f in dataclasses.fields(Config):
        if f.name == "sources":
            continue
        old_value, new_value = getattr(running, f.name), getattr(new, f.name)
        if old_value == new_value:
            continue
        if f.name in RESTART_FIELDS:
            restart.append(key_name(f.name))
            keep[f.name] = old_value
        else:
            changed.append(key_name(f.name))
    applied = dataclasses.replace(new, **keep) if keep else new  # type: ignore[arg-type]
    return ReloadPlan(applied, tuple(changed), tuple(restart))
