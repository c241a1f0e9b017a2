"""What a reload may change in a running agent, and what has to wait for a restart.

A reload builds a whole new :class:`~serfd.agent.config.Config` from the drop-ins and
:func:`plan_reload` compares it with the running one, field by field. Only the fields in
:data:`LIVE_FIELDS` are applied at once: the agent applies the built-in ones itself
(``Agent._reload``: tags, log level, join list, RPC auth key), the events reload hook
applies the handler ones (``Agent._reload_events``: ``EventsService.reload`` for routes,
handlers directory, concurrency and timeout, then the core's size limits), and the rest
are read from the running config each time they are used (retries, replay, leave on
SIGTERM or SIGINT).
Every other field needs a restart: :data:`RESTART_FIELDS` lists the ones known to
(sockets, identity, protocol, timings and keys built at start, as in Serf's own reload),
and a field added to Config later is restart-only until it is listed live, so a reload
never claims to apply what nothing applies (tests/test_reload_plan.py fails until a new
field is put in one of the two).

The plan's ``applied`` config is what the agent runs from then on: new values for
live fields, the running values for restart-only fields. So ``serfctl info`` and the
next reload compare against what is really in effect, and a restart-only change is
reported again at every reload until the service is restarted.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from serfd.agent.config import _KEYS, Config

__all__ = [
    "LIVE_FIELDS",
    "RESTART_FIELDS",
    "UNCOMPARED_FIELDS",
    "ReloadPlan",
    "key_name",
    "plan_reload",
]

# Config fields a reload applies to the running agent; any other changed field is
# reported as needing a restart (and keeps its running value).
LIVE_FIELDS = frozenset({
    # Applied by Agent._reload.
    "tags",  # Serf.set_tags: a member-update goes out
    "log_level",  # logsetup.set_level
    "join",  # the new list is joined (replaying as replay_on_join says)
    "rpc_auth_key",  # the RPC server's key for new handshakes
    # Applied by the events reload hook (Agent._reload_events: EventsService.reload, then
    # the core's size limits).
    "handlers",
    "handlers_dir",
    "handler_max_concurrent",
    "handler_timeout",  # also the longest query timeout Serf accepts
    "user_event_size_limit",
    "query_size_limit",
    "query_response_size_limit",
    # Read from the running config where they are used.
    "retry_interval",  # the join retry and reconnect back-off
    "retry_max_attempts",
    "leave_on_terminate",  # at SIGTERM
    "skip_leave_on_interrupt",  # at SIGINT
    "replay_on_join",  # by the configured joins started after the reload
})

# Config fields known to take effect only at the next start (documentation and the
# completeness test; plan_reload treats every field outside LIVE_FIELDS this way).
RESTART_FIELDS = frozenset({
    "node_name",
    "bind",
    "advertise",
    "profile",
    "enable_compression",
    "protocol",
    "state_dir",
    "snapshot_path",
    "rejoin_after_leave",  # the snapshot is read and its writer set up at start
    "disable_coordinates",  # the core is built with or without its Vivaldi client
    "encrypt_key",
    "keyring_file",
    "tags_file",  # the tag service reads it at start and keeps its path
    "gossip_verify_incoming",
    "gossip_verify_outgoing",
    "gossip_confirm_suspicions",  # part of the memberlist config the core is built with
    "gossip_verified_suspicions",  # the same
    "gossip_eager",  # the same
    "gossip_join_follow_up",  # the same
    # [gossip] timings: the memberlist config too (and the Serf queues built from it).
    "gossip_probe_interval",
    "gossip_probe_timeout",
    "gossip_suspicion_mult",
    "gossip_suspicion_max_timeout_mult",
    "gossip_gossip_interval",
    "gossip_gossip_nodes",
    "gossip_gossip_to_the_dead_time",
    "gossip_push_pull_interval",
    "gossip_retransmit_mult",
    "gossip_indirect_checks",
    "gossip_awareness_max_multiplier",
    "gossip_tcp_timeout",
    "broadcast_timeout",
    "reconnect_interval",
    "reconnect_timeout",
    "tombstone_timeout",
    "rpc_socket",
    "rpc_socket_mode",
    "rpc_tcp",
    "rpc_socket_group",
    # Telemetry: the sinks are built at start, as Serf builds its metrics.
    "statsd_addr",
    "statsite_addr",
    "telemetry_prometheus_bind",
    "telemetry_disable_hostname",
    "discover",  # the mDNS responder and its polls are set up at start
    "interface",  # the bind address is derived from it at start
    "mdns_interface",
    "mdns_disable_ipv4",
    "mdns_disable_ipv6",
    "enable_syslog",  # the syslog handler is set up with the logging, at start
    "syslog_facility",
})

# Not configuration: where each value came from (never compared).
UNCOMPARED_FIELDS = frozenset({"sources"})

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
    for f in dataclasses.fields(running):
        if f.name in UNCOMPARED_FIELDS:
            continue
        old_value, new_value = getattr(running, f.name), getattr(new, f.name)
        if old_value == new_value:
            continue
        if f.name in LIVE_FIELDS:
            changed.append(key_name(f.name))
        else:
            restart.append(key_name(f.name))
            keep[f.name] = old_value
    applied = dataclasses.replace(new, **keep) if keep else new  # type: ignore[arg-type]
    return ReloadPlan(applied, tuple(changed), tuple(restart))
