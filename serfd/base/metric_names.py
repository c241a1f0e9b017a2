"""Every metric serfd reports: name, kind, where it is reported and what it means.

The one list of names (the docs and ``serfctl``-side tools read it from here). Names
without a ``serfd`` first part are Serf's and memberlist's own (serf 0.9.4, memberlist
as Debian ships it), reported from the place Serf reports them, with the same kind and
value; the ``serfd`` ones are ours. Keys are shown as go-metrics flattens them for
statsd (parts joined by dots); every sink also gets the service prefix (``serf-agent``)
and, on gauges, the host name (serfd.base.metrics).

A ``<name>`` part is a user event's or query's name, or a handler's command, cut to
a bounded set (``Metrics.bounded_name``); a ``<reason>`` part is one of the fixed drop
reasons of our code (``serfctl info`` shows the same counts as ``dropped_<reason>``);
a ``<status>`` part one of the words given.

Kinds are go-metrics': ``counter`` (IncrCounter), ``gauge`` (SetGauge), ``sample``
(AddSample) and ``timer`` (MeasureSince: a sample in milliseconds).
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["CATALOGUE", "MetricName", "kind_of"]


@dataclass(frozen=True, slots=True)
class MetricName:
    """One metric: its key (placeholders in angle brackets), kind, where and meaning."""

    name: str
    kind: str  # counter | gauge | sample | timer
    where: str  # the module (and function) that reports it
    meaning: str


CATALOGUE: tuple[MetricName, ...] = (
    # memberlist (serfd.memberlist.swim unless said)
    MetricName("memberlist.msg.alive", "counter", "swim._alive",
               "an alive message applied (newer incarnation), ours refuted included"),
    MetricName("memberlist.msg.suspect", "counter", "swim._suspect",
               "a node newly suspected (not a further confirmation)"),
    MetricName("memberlist.msg.dead", "counter", "swim._dead",
               "a node marked dead or left (our own leave included)"),
    MetricName("memberlist.degraded.probe", "counter", "swim._launch_probe",
               "a probe run with a timeout scaled up by a non-zero health score"),
    MetricName("memberlist.degraded.timeout", "counter", "swim._suspicion_expired",
               "a suspicion expired with fewer confirmations than it wanted"),
    MetricName("memberlist.health.score", "gauge", "swim._apply_awareness",
               "the Lifeguard awareness score, set when it changes"),
    MetricName("memberlist.gossip", "timer", "swim._gossip_round",
               "CPU time of one gossip round (a tick's or an eager one); not in simulations"),
    MetricName("memberlist.probeNode", "timer", "swim._probe_finish",
               "one round-robin probe, from its ping to its outcome"),
    MetricName("memberlist.pushPullNode", "timer", "swim.stream_outcome",
               "one push/pull we started (periodic, join, reconnect), to its outcome"),
    MetricName("memberlist.udp.sent", "counter", "swim._send_raw",
               "bytes of each datagram sent (after compression and encryption)"),
    MetricName("memberlist.udp.received", "counter", "swim.receive_datagram",
               "bytes of each datagram received"),
    MetricName("memberlist.tcp.accept", "counter", "agent.gossip._on_stream",
               "an inbound gossip stream accepted"),
    MetricName("memberlist.tcp.connect", "counter", "agent.gossip._outbound_stream",
               "an outbound push/pull stream connected (join and reconnect included)"),
    MetricName("memberlist.tcp.sent", "counter", "agent.gossip._write_stream",
               "bytes of each stream message sent"),
    # serf (serfd.core.serf unless said)
    MetricName("serf.member.join", "counter", "serf.notify_join", "a member joined"),
    MetricName("serf.member.<status>", "counter", "serf.notify_leave",
               "a member left (<status> left) or failed (<status> failed)"),
    MetricName("serf.member.update", "counter", "serf.notify_update",
               "a member's tags changed"),
    MetricName("serf.member.flap", "counter", "serf.notify_join",
               "a failed member came back within FlapTimeout (60 s)"),
    MetricName("serf.events", "counter", "serf._handle_user_event",
               "a user event seen for the first time"),
    MetricName("serf.events.<name>", "counter", "serf._handle_user_event",
               "the same, by event name"),
    MetricName("serf.queries", "counter", "serf._handle_query",
               "a query seen for the first time"),
    MetricName("serf.queries.<name>", "counter", "serf._handle_query",
               "the same, by query name"),
    MetricName("serf.query_acks", "counter", "serf._handle_query_response",
               "an ack to one of our queries"),
    MetricName("serf.query_responses", "counter", "serf._handle_query_response",
               "a response to one of our queries"),
    MetricName("serf.query_duplicate_acks", "counter", "serf._handle_query_response",
               "a second ack from the same member"),
    MetricName("serf.query_duplicate_responses", "counter", "serf._handle_query_response",
               "a second response from the same member"),
    MetricName("serf.msgs.sent", "sample", "serf.get_broadcasts",
               "length of each Serf message handed to memberlist for gossip"),
    MetricName("serf.msgs.received", "sample", "serf.notify_msg",
               "length of each Serf message received"),
    MetricName("serf.coordinate.rejected", "counter", "serf.notify_ping_complete",
               "a peer's coordinate the Vivaldi update refused (invalid, bad RTT, "
               "other dimensionality)"),
    MetricName("serf.coordinate.zero-rtt", "counter", "serf.notify_ping_complete",
               "a ping round trip measured as zero (raised to 1 ns before the update)"),
    MetricName("serf.coordinate.adjustment-ms", "sample", "serf.notify_ping_complete",
               "how far one update moved our coordinate (estimated distance, in ms)"),
    MetricName("serf.queue.Intent", "sample", "serf._check_queue_depth",
               "intent broadcasts queued, every QueueCheckInterval (30 s, at the first "
               "timer due then)"),
    MetricName("serf.queue.Event", "sample", "serf._check_queue_depth",
               "user event broadcasts queued, every QueueCheckInterval"),
    MetricName("serf.queue.Query", "sample", "serf._check_queue_depth",
               "query broadcasts queued, every QueueCheckInterval"),
    MetricName("serf.snapshot.appendLine", "timer", "agent.snapshot.Snapshotter._append",
               "one append to the snapshot (a batch of lines, by the writer thread)"),
    MetricName("serf.snapshot.compact", "timer", "agent.snapshot.Snapshotter.compact",
               "one compaction (rewrite) of the snapshot"),
    # Serf's agent
    MetricName("agent.ipc.accept", "counter", "agent.rpc_server._accept",
               "an RPC client connection accepted"),
    MetricName("agent.ipc.command", "counter", "agent.rpc_server._request",
               "an RPC command received after the handshake"),
    MetricName("agent.invoke.<name>", "timer", "agent.handlers._exec",
               "one handler run, start to exit, by the handler's command"),
    # serfd's own
    MetricName("serfd.members.<status>", "gauge", "serf._report_members",
               "members by status (<status>: alive, leaving, left, failed), set after an "
               "input that changed a count"),
    MetricName("serfd.handlers.timeout", "counter", "agent.handlers._exec",
               "a handler run killed at handler_timeout"),
    MetricName("serfd.dropped.<reason>", "counter", "base.ratelog.DropCounters",
               "something cut or refused, by reason (handler backlog drops are "
               "handler_backlog_user, handler_backlog_query and handler_member_backlog)"),
)


def kind_of(parts: tuple[str, ...]) -> str | None:
    """The kind of a key as the cores report it (``("serf", "events", "deploy")``, no
    service or host prefix), or None if it is not in the catalogue; a placeholder
    matches any one part."""
    for m in CATALOGUE:
        want = m.name.split(".")
        if len(want) == len(parts) and all(
                w.startswith("<") or w == p for w, p in zip(want, parts, strict=True)):
            return m.kind
    return None
