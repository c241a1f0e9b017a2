"""SWIM membership as memberlist 0.2.2 runs it, as a pure state machine.

Theory of operation
-------------------
``Memberlist`` owns one node's view of the cluster: a record per known node name
(address, meta, protocol versions, incarnation, state), the probe list, the running
suspicions, the ack handlers of outstanding pings, the memberlist broadcast queue and
the Lifeguard awareness score. It owns no socket, clock or thread: bytes and time come
in (``receive_datagram``, ``receive_stream``, ``stream_outcome``, ``handle_timer``, all
with ``now`` in seconds) and bytes come out (``datagrams_to_send``, ``streams_to_open``)
together with the next instant anything is due (``get_timer``). Randomness comes from
the ``random.Random`` passed in, so a run is reproducible from its seed.

Invariants

* ``_map`` and ``_nodes`` hold the same records; ``_nodes`` is the probe order and its
  length is memberlist's node estimate (dead nodes count until reaped).
* Our own record is in both from construction on and is never Suspect or Dead: any
  accusation is refuted with a higher incarnation. After ``leave`` it is Left.
* A node's state only changes in the three transition rules (``_alive``, ``_suspect``,
  ``_dead``, grouped below); the delegate's NotifyJoin/Leave/Update fire there and
  nowhere else, on exactly memberlist's transitions:

  ====================  ===========  ==========================================
  from                  message      to, notification
  ====================  ===========  ==========================================
  unknown/Dead/Left     alive        Alive, NotifyJoin
  Alive/Suspect         alive        Alive, NotifyUpdate if the meta changed
  Alive                 suspect      Suspect (timer starts), none
  Suspect               suspect      (confirmation shortens the timer), none
  Alive/Suspect         dead         Dead, or Left when From == Node; NotifyLeave
  ====================  ===========  ==========================================

  Older incarnations are ignored (alive needs a strictly newer one, suspect/dead an
  equal or newer one); messages about ourselves are refuted instead.
* Every peer-supplied byte goes through a ``try``: garbage bumps ``counters[reason]``
  and is dropped. Exceptions out of this module mean we were misused.

Order of events

* Construction: our alive at incarnation 1 is applied locally (NotifyJoin for self) and
  queued; the probe, gossip and push/pull ticks are armed at a random stagger.
* Probe tick (ProbeInterval): the next live node of the shuffled list is pinged (with a
  suspect in a compound when it is not alive); after ProbeTimeout IndirectChecks peers
  get indirect pings (Nack asked of PMax>=4) and a TCP ping is requested (PMax>=3);
  at ProbeInterval x (awareness+1) the probe ends: no ack means suspect. A tick that
  falls while a probe runs is kept (one, like Go's ticker) and starts the next probe as
  soon as it ends.
* Gossip tick (GossipInterval): GossipNodes random nodes get a packet filled from our
  queue, then from the delegate's (Serf's) broadcasts as user messages. A tick that
  falls while nothing is queued would send nothing: ``get_timer`` does not ask to be
  woken for it, and the first tick after something is queued keeps the ticker's phase.
* Eager rounds (serfd, ``eager_gossip``): a broadcast that is news (queued by us, or
  by the delegate, which says so with ``fresh_broadcast``) makes a gossip round run at
  once, not waiting for the next tick: GossipNodes live nodes get a packet filled
  exactly as a tick fills it, so every transmission counts against the broadcasts'
  retransmit budget and the total traffic is memberlist's; only its timing changes.
  At most one eager round per EAGER_GOSSIP_GAP x GossipInterval, so news arriving in
  several packets shares the next one.
* Push/pull tick (PushPullInterval, scaled up past 32 nodes): full state exchange with
  one random alive node over a stream.
* Acks, nacks, pings and indirect pings are answered inline; outgoing pings, acks,
  indirect pings and nacks piggyback queued broadcasts.
* Catch-up (serfd, ``catch_up``): a ping or indirect ping from a node we do not know as
  live means the sender takes us for a member, and the ack we send it carries our own
  broadcasts (a refutation of our death after a restart, say). We then push/pull with
  it, as a reconnect would; memberlist waits for its next periodic push/pull (up to
  PushPullInterval) and meanwhile the cluster sees us alive while we know nobody.
* Confirmation checks (serfd, ``confirm_suspicions``): a Suspect from the wire that
  turns a member we held alive into a suspect starts a probe of it at once, beside the
  round-robin (``_checks``, at most ``max_confirm_checks``); only its failure adds our
  own suspicion, which by memberlist's rules is a confirmation. Nothing else is sent.
* Verified suspicions (serfd, ``verified_suspicions``): when our own probe or check of a
  suspect failed, our awareness score was 0 when it started, and the k confirmations
  are in, the suspicion ends after SuspicionMult x ProbeInterval + the retransmit
  horizon (RetransmitMult x ceil(log10(N+1)) x GossipInterval), or the horizon alone
  when the suspect's host refused our TCP ping; never later than memberlist's
  deadline (see _verify_suspicion). The dead sent then is memberlist's.
* Join follow-up (serfd, ``join_follow_up``): JOIN_FOLLOW_UP_ROUNDS gossip intervals
  after a join's push/pull merged, one more push/pull (Join=false) with a random live
  member, and another after each one that taught us new members (at most
  JOIN_FOLLOW_UP_MAX). When many nodes join at once, each alive is sent RetransmitMult x
  log10(N+1) times, partly to the few members its senders knew so far, so now and
  then a node hears of all members but one: memberlist leaves that to the periodic
  push/pull (60 s at 100 nodes, more with N), the follow-up repairs it as soon as the
  gossip of the burst is over.
"""

from __future__ import annotations

import heapq
import logging
import math
import random
from collections.abc import Callable
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Any, Protocol

from serfd.base.metrics import NULL_METRICS, Metrics
from serfd.base.ratelog import DropCounters, DropLog
from serfd.memberlist.broadcast import TransmitLimitedQueue, retransmit_limit
from serfd.memberlist.profiles import LAN, Profile, get_profile
from serfd.memberlist.suspicion import (
    Suspicion,
    confirmations_wanted,
    suspicion_timeout,
    verified_suspicion_timeouts,
)
from serfd.wire.codec import DecodeError
from serfd.wire.framing import (
    decode_push_pull,
    decode_user_stream,
    encode_push_pull_bodies,
    encode_user_stream,
)
from serfd.wire.messages import (
    DEFAULT_VSN,
    META_MAX_SIZE,
    Ack,
    Alive,
    Dead,
    ErrResp,
    IndirectPing,
    Message,
    MsgType,
    Nack,
    NodeStateType,
    Ping,
    PushNodeState,
    Suspect,
    UserData,
    bytes_to_ip,
    decode_message,
    ip_to_bytes,
)
from serfd.wire.packet import decode_packet, encode_packet

__all__ = [
    "Addr",
    "Delegate",
    "Memberlist",
    "MemberlistConfig",
    "Node",
    "NodeState",
    "ProtocolError",
    "StreamKind",
    "StreamRequest",
    "push_pull_scale",
]

Addr = tuple[str, int]
NodeState = NodeStateType

log = logging.getLogger("serfd.memberlist")

COMPOUND_HEADER_OVERHEAD = 2  # memberlist compoundHeaderOverhead
EAGER_GOSSIP_GAP = 0.25  # serfd: eager rounds at most every quarter GossipInterval
# serfd: the join follow-up push/pull waits this many GossipIntervals: by then a
# broadcast has reached 99.9 % of 1,000 nodes in Serf's convergence model (2 s on LAN).
JOIN_FOLLOW_UP_ROUNDS = 10
# serfd: a follow-up that taught us new members is followed by another, up to this many
# per join (a burst of 1,000 joins needs 3 or 4; churn cannot make it a periodic one).
JOIN_FOLLOW_UP_MAX = 5
EAGER_MERGE_MAX = 4  # serfd: a merge that brings more news than this runs no eager round
COMPOUND_OVERHEAD = 2  # memberlist compoundOverhead (per part)
USER_MSG_OVERHEAD = 1  # memberlist userMsgOverhead
ENCRYPT_OVERHEAD = 29  # encryptOverhead(vsn 1): version byte + 12 nonce + 16 tag
PUSH_PULL_SCALE_THRESHOLD = 32  # memberlist pushPullScaleThreshold
_UINT32 = 0xFFFF_FFFF
# serfd: how the driver's text for a failed stream ends (Go's, "dial tcp ip:port:
# connect: connection refused", serfd.agent.gossip.describe_stream_error) when the peer's
# host answered the connect with a reset: nothing listens on that port.
REFUSED = "connection refused"

_ALIVE = NodeStateType.ALIVE
_SUSPECT = NodeStateType.SUSPECT
_DEAD = NodeStateType.DEAD
_LEFT = NodeStateType.LEFT


class ProtocolError(Exception):
    """A push/pull was refused: some node's protocol version is outside the cluster's range."""


def push_pull_scale(interval: float, n: int) -> float:
    """memberlist pushPullScale: back off push/pull by ceil(log2 n - log2 32) + 1 past 32 nodes."""
    if n <= PUSH_PULL_SCALE_THRESHOLD:
        return interval
    multiplier = math.ceil(math.log2(n) - math.log2(PUSH_PULL_SCALE_THRESHOLD)) + 1.0
    return multiplier * interval


@dataclass(frozen=True, slots=True)
class MemberlistConfig:
    """Everything a Memberlist needs; defaults are memberlist's DefaultLANConfig."""

    name: str
    advertise_addr: str = "127.0.0.1"
    advertise_port: int = 7946  # AdvertisePort
    bind_port: int = 7946  # BindPort: replaces port 0 in alive/indirect ping/push-pull
    tcp_timeout: float = LAN.tcp_timeout
    indirect_checks: int = LAN.indirect_checks
    retransmit_mult: int = LAN.retransmit_mult
    suspicion_mult: int = LAN.suspicion_mult
    suspicion_max_timeout_mult: int = LAN.suspicion_max_timeout_mult
    push_pull_interval: float = LAN.push_pull_interval
    probe_timeout: float = LAN.probe_timeout
    probe_interval: float = LAN.probe_interval
    awareness_max_multiplier: int = LAN.awareness_max_multiplier
    gossip_nodes: int = LAN.gossip_nodes
    gossip_interval: float = LAN.gossip_interval
    gossip_to_the_dead_time: float = LAN.gossip_to_the_dead_time
    disable_tcp_pings: bool = False  # DisableTcpPings
    dead_node_reclaim_time: float = 0.0  # DeadNodeReclaimTime (0 = never)
    enable_compression: bool = True  # EnableCompression
    keyring: Any = None  # serfd.wire.keyring object (encrypt/decrypt), None = no encryption
    gossip_verify_incoming: bool = True  # GossipVerifyIncoming
    gossip_verify_outgoing: bool = True  # GossipVerifyOutgoing
    udp_buffer_size: int = 1400  # UDPBufferSize
    vsn: bytes = DEFAULT_VSN  # [pmin, pmax, pcur, dmin, dmax, dcur]
    # Beyond memberlist: news (a broadcast we queue, or the delegate's fresh_broadcast)
    # makes a gossip round run at once instead of at the next GossipInterval tick (at most
    # one per EAGER_GOSSIP_GAP x GossipInterval), filled and counted against the
    # retransmit budget like a tick's: the same transmissions, sent earlier.
    eager_gossip: bool = False
    # Beyond memberlist: indirect pings we run for peers at once (each holds an ack
    # handler and one or two timers for ProbeTimeout); more are refused and counted.
    max_indirect_pings: int = 1024
    # Beyond memberlist: a node that probes us, or asks us to probe for it, while we do
    # not know it as live gets a push/pull (Join=true, as a reconnect) from us, at most
    # one at a time and one per ProbeInterval. Our ack tells it we are alive; this makes
    # us learn the cluster as fast as it learns of us (see _catch_up).
    catch_up: bool = True
    # Beyond memberlist: when gossip tells us a member we hold alive is suspected, probe
    # it ourselves at once (a regular probe's ping, indirect pings and TCP fallback, apart
    # from the round-robin) and add our own suspicion only if that fails; see
    # _confirm_suspicion. At most max_confirm_checks at a time; more are refused, counted.
    confirm_suspicions: bool = False
    max_confirm_checks: int = 4
    # Beyond memberlist: a suspicion that our own probe or check verified (it failed
    # too, from a healthy node) and that has its k confirmations ends after a shorter
    # floor; see _verify_suspicion. Nothing else changes; the dead is memberlist's.
    verified_suspicions: bool = False
    # Beyond memberlist: after a successful join (a push/pull with Join=true merged),
    # one more push/pull with a random live member JOIN_FOLLOW_UP_ROUNDS gossip
    # intervals later, so that what the join burst's gossip missed is not left to the
    # periodic push/pull (see _join_follow_up).
    join_follow_up: bool = True
    # Where memberlist's metrics go (memberlist.* keys, serfd.base.metrics); none by default.
    metrics: Metrics = NULL_METRICS

    @classmethod
    def from_profile(cls, profile: str | Profile, **overrides: Any) -> MemberlistConfig:
        """A config with the timings of ``profile`` (lan/wan/local), then ``overrides``."""
        p = get_profile(profile) if isinstance(profile, str) else profile
        values: dict[str, Any] = {
            "tcp_timeout": p.tcp_timeout,
            "indirect_checks": p.indirect_checks,
            "retransmit_mult": p.retransmit_mult,
            "suspicion_mult": p.suspicion_mult,
            "suspicion_max_timeout_mult": p.suspicion_max_timeout_mult,
            "push_pull_interval": p.push_pull_interval,
            "probe_timeout": p.probe_timeout,
            "probe_interval": p.probe_interval,
            "awareness_max_multiplier": p.awareness_max_multiplier,
            "gossip_nodes": p.gossip_nodes,
            "gossip_interval": p.gossip_interval,
            "gossip_to_the_dead_time": p.gossip_to_the_dead_time,
        }
        values.update(overrides)
        return cls(**values)


@dataclass(frozen=True, slots=True)
class Node:
    """A snapshot of what we know about one node."""

    name: str
    addr: str
    port: int
    meta: bytes
    state: NodeStateType
    incarnation: int
    vsn: bytes  # [pmin, pmax, pcur, dmin, dmax, dcur]
    state_change: float

    @property
    def address(self) -> Addr:
        return (self.addr, self.port)

    @property
    def pmin(self) -> int:
        return self.vsn[0]

    @property
    def pmax(self) -> int:
        return self.vsn[1]

    @property
    def pcur(self) -> int:
        return self.vsn[2]

    @property
    def dmin(self) -> int:
        return self.vsn[3]

    @property
    def dmax(self) -> int:
        return self.vsn[4]

    @property
    def dcur(self) -> int:
        return self.vsn[5]


class StreamKind(StrEnum):
    """Why memberlist opens a TCP stream (the value shows in the driver's log lines)."""

    PUSH_PULL = "push_pull"  # the periodic state exchange (or memberlist's own catch-up)
    PING = "ping"  # the TCP fallback of a failed UDP probe
    USER = "user"  # a reliable user message (Serf's SendReliable)
    # Push/pulls with Join=true opened for the layer above (``start_join``), which takes
    # their outcome itself: an explicit join, and Serf's reconnect to a failed member.
    JOIN = "join"
    RECONNECT = "reconnect"


@dataclass(frozen=True, slots=True)
class StreamRequest:
    """A TCP exchange for the driver: connect to ``addr``, send ``plain`` (wrapped in
    compression/encryption), read one reply if ``expect_reply``, and hand the outcome to
    ``stream_outcome(token, reply_or_None, now)`` by ``deadline``."""

    token: int
    addr: Addr
    plain: bytes
    expect_reply: bool
    deadline: float
    kind: StreamKind


class Delegate(Protocol):
    """What the layer above (Serf) provides; memberlist's Delegate + EventDelegate + more.

    Optional: ``has_broadcasts() -> bool`` (whether ``get_broadcasts`` may return
    anything; without it every gossip tick runs) and ``notify_ping_complete``.
    """

    def node_meta(self, limit: int) -> bytes: ...

    def notify_msg(self, data: bytes, now: float) -> None: ...

    def get_broadcasts(self, overhead: int, limit: int) -> list[bytes]: ...

    def local_state(self, join: bool) -> bytes: ...

    def merge_remote_state(self, data: bytes, join: bool, now: float) -> None: ...

    def notify_join(self, node: Node, now: float) -> None: ...

    def notify_leave(self, node: Node, now: float) -> None: ...

    def notify_update(self, node: Node, now: float) -> None: ...

    def notify_conflict(self, existing: Node, other: Node) -> None: ...

    def ack_payload(self) -> bytes | None: ...


class _Rec:
    """Our mutable record of one node (memberlist nodeState)."""

    __slots__ = (
        "addr",
        "address",
        "incarnation",
        "meta",
        "name",
        "port",
        "pushed",
        "state",
        "state_change",
        "vsn",
    )

    def __init__(
        self, name: str, addr: bytes, port: int, meta: bytes | None, vsn: bytes, now: float
    ) -> None:
        self.name = name
        self.addr = addr
        self.port = port
        self.address: Addr = (bytes_to_ip(addr), port)
        self.meta = meta
        self.vsn = vsn
        self.incarnation = 0
        self.state = _DEAD  # memberlist inserts as dead so the first alive is a join
        self.state_change = now
        # Our push/pull entry for this node, encoded, with the fields it was made of.
        self.pushed: tuple[tuple[Any, ...], bytes] | None = None

    def set_address(self, addr: bytes, port: int) -> None:
        self.addr = addr
        self.port = port
        self.address = (bytes_to_ip(addr), port)

    def dead_or_left(self) -> bool:
        return self.state == _DEAD or self.state == _LEFT

    def state_body(self) -> bytes:
        """This node's push/pull entry (a ``PushNodeState`` body), re-encoded only when
        one of its fields changed since the last push/pull."""
        key = (self.incarnation, self.state, self.meta, self.addr, self.port, self.vsn)
        pushed = self.pushed
        if pushed is None or pushed[0] != key:
            body = PushNodeState(self.name, self.addr, self.port, self.meta, self.incarnation,
                                 int(self.state), self.vsn).body()
            self.pushed = pushed = (key, body)
        return pushed[1]

    def snapshot(self) -> Node:
        return Node(
            self.name,
            self.address[0],
            self.port,
            self.meta or b"",
            self.state,
            self.incarnation,
            self.vsn,
            self.state_change,
        )


class _AckHandler:
    __slots__ = ("on_ack", "on_nack")

    def __init__(
        self,
        on_ack: Callable[[bytes | None, float], None],
        on_nack: Callable[[], None] | None,
    ) -> None:
        self.on_ack = on_ack
        self.on_nack = on_nack


class _Probe:
    """One probeNode run."""

    __slots__ = (
        "address",
        "check",
        "deadline",
        "done",
        "expected_nacks",
        "healthy",
        "heard",
        "incarnation",
        "indirect",
        "nacks",
        "name",
        "ping",
        "pmax",
        "refused",
        "seq",
        "start",
        "tcp_contacted",
        "tcp_pending",
        "waiting_tcp",
    )

    def __init__(
        self, rec: _Rec, ping: Ping, start: float, deadline: float, check: bool = False
    ) -> None:
        # memberlist probes a copy of the record taken at the start.
        self.check = check  # a confirmation check (serfd), not the round-robin probe
        self.name = rec.name
        self.address = rec.address
        self.incarnation = rec.incarnation
        self.pmax = rec.vsn[1]
        self.ping = ping
        self.seq = ping.seq_no
        self.start = start
        self.deadline = deadline
        self.done = False
        self.indirect = False  # ProbeTimeout passed, indirect pings out
        self.expected_nacks = 0
        self.nacks = 0
        self.tcp_pending = False
        self.tcp_contacted = False
        self.waiting_tcp = False
        self.healthy = False  # our awareness score was 0 when it started
        self.refused = False  # the TCP ping's connect was refused (nothing listens there)
        self.heard = False  # a check: a datagram came from the member while it ran


def _same(a: bytes | None, b: bytes | None) -> bool:
    # Go's bytes.Equal: nil and empty are equal.
    return (a or b"") == (b or b"")


class Memberlist:
    """One node's SWIM membership (memberlist 0.2.2), sans IO."""

    def __init__(
        self, config: MemberlistConfig, delegate: Delegate, rng: random.Random, now: float
    ) -> None:
        self.config = config
        self.delegate = delegate
        self.rng = rng
        self.name = config.name
        # memberlist's metrics (serfd.base.metric_names); drops also count as serfd.dropped.*
        self._metrics = config.metrics
        self.counters: dict[str, int] = DropCounters(config.metrics)
        self.activity: dict[str, int] = {}  # what we did beyond memberlist (not drops)
        self.drops = DropLog(log, self.counters)
        self._push_pull_start: dict[int, float] = {}  # stream token -> start (pushPullNode)
        self._indirect = 0  # indirect pings served and not yet over (max_indirect_pings)

        self._map: dict[str, _Rec] = {}
        self._nodes: list[_Rec] = []
        self._probe_index = 0
        self._susp: dict[str, Suspicion] = {}
        self._acks: dict[int, _AckHandler] = {}
        self._seq = 0
        self._incarnation = 0
        self._awareness = 0
        self._left = False
        self._leave_done = False
        self._update_done = True
        self._probe: _Probe | None = None
        self._probe_tick_pending = False
        self._tokens = 0
        self._pending_streams: dict[int, tuple[StreamKind, Any]] = {}
        # (when, seq, callback, the probe it serves: dropped unrun once that probe is done)
        self._timers: list[tuple[float, int, Callable[[float], None], _Probe | None]] = []
        self._timer_seq = 0
        self._out_datagrams: list[tuple[bytes, Addr]] = []
        self._out_streams: list[StreamRequest] = []
        self._queue = TransmitLimitedQueue(config.retransmit_mult, self._est_num_nodes)
        self._fresh = 0  # news queued since the last eager round (eager_gossip)
        # Optional delegate hook; without it every gossip tick runs (it may have news).
        self._delegate_has_broadcasts: Callable[[], bool] | None = getattr(
            delegate, "has_broadcasts", None)
        self._clock = now  # the latest time any input told us
        self._last_eager = now - EAGER_GOSSIP_GAP * config.gossip_interval
        self._catch_up_token: int | None = None  # the catch-up push/pull in flight
        self._catch_up_deadline = now  # ... which is given up on after this instant
        self._catch_up_next = now  # no new catch-up before this instant
        self._checks: dict[str, _Probe] = {}  # confirmation checks running, by suspect
        self._follow_up_due = False  # a join follow-up push/pull is scheduled
        self._follow_up_token: int | None = None  # ... or in flight
        self._follow_ups_left = 0  # the follow-ups this join may still run
        self._joins_heard = 0  # nodes that became alive here (NotifyJoin), ever

        use_keyring = config.keyring is not None
        self._keyring_in = config.keyring if use_keyring else None
        self._keyring_out = (
            config.keyring if use_keyring and config.gossip_verify_outgoing else None
        )
        self._encrypt_overhead = ENCRYPT_OVERHEAD if self._keyring_out is not None else 0
        self._self_addr = ip_to_bytes(config.advertise_addr)

        # setAlive: our own alive at incarnation 1, applied like any other (bootstrap).
        meta = self._own_meta()
        self._incarnation = 1
        own = Alive(1, self.name, self._self_addr, config.advertise_port, meta, config.vsn)
        self._alive(own, now, bootstrap=True)
        self._self = self._map[self.name]

        # memberlist staggers each ticker randomly within its interval.
        if config.probe_interval > 0:
            self._at(now + rng.random() * config.probe_interval, self._probe_tick)
        # The gossip ticker is kept apart from the heap: get_timer() leaves it out while
        # nothing is queued, so an idle node does not wake for ticks that send nothing.
        self._gossip_at: float | None = None  # the next gossip tick
        self._gossip_idle = False  # get_timer() found nothing to gossip (and no input since)
        if config.gossip_interval > 0 and config.gossip_nodes > 0:
            self._gossip_at = now + rng.random() * config.gossip_interval
        if config.push_pull_interval > 0:
            stagger = rng.random() * config.push_pull_interval
            first = stagger + push_pull_scale(config.push_pull_interval, self._est_num_nodes())
            self._at(now + first, self._push_pull_tick)

    # ------------------------------------------------------------------ inspection

    def nodes(self) -> list[Node]:
        """Every node we know, reaped ones excepted, in any state."""
        return [r.snapshot() for r in self._nodes]

    def members(self) -> list[Node]:
        """memberlist Members(): the nodes that are not dead or left, ourselves included."""
        return [r.snapshot() for r in self._nodes if not r.dead_or_left()]

    def get_node(self, name: str) -> Node | None:
        """The snapshot of ``name``, or None if unknown."""
        rec = self._map.get(name)
        return rec.snapshot() if rec is not None else None

    def suspicion(self, name: str) -> tuple[int, int] | None:
        """The running suspicion of ``name``: (independent confirmations so far, k wanted),
        or None when there is none."""
        susp = self._susp.get(name)
        return (susp.n, susp.k) if susp is not None else None

    def local_node(self) -> Node:
        """Our own record."""
        return self._self.snapshot()

    def num_alive(self) -> int:
        """memberlist NumMembers(): nodes not dead or left, ourselves included."""
        return sum(1 for r in self._nodes if not r.dead_or_left())

    def health_score(self) -> int:
        """The Lifeguard awareness score, 0 (healthy) .. AwarenessMaxMultiplier-1."""
        return self._awareness

    def num_queued(self) -> int:
        """Broadcasts waiting in memberlist's own queue."""
        return len(self._queue)

    def has_left(self) -> bool:
        return self._left

    def now(self) -> float:
        """The latest time any input gave us (for callbacks that carry no time)."""
        return self._clock

    # ------------------------------------------------------------------ driver interface

    def get_timer(self) -> float | None:
        """The next absolute time something is due (``handle_timer``), or None."""
        timers = self._timers
        while timers and (owner := timers[0][3]) is not None and owner.done:
            heapq.heappop(timers)  # e.g. the ProbeTimeout of a probe acked in time
        due = timers[0][0] if timers else None
        if self._gossip_at is not None:
            if self._has_broadcasts():
                if self._gossip_idle:
                    # Queued by the input just handled: the ticks before it sent nothing,
                    # the next one is the first of the ticker's phase from now on.
                    self._gossip_at = self._next_gossip_tick(self._clock)
                    self._gossip_idle = False
                gossip = max(self._gossip_at, self._clock)
                due = gossip if due is None else min(due, gossip)
            else:
                self._gossip_idle = True  # no wake-up for ticks that would send nothing
        if self._fresh:
            # Never in the past: a driver passes the due time back as `now`.
            eager = max(self._last_eager + EAGER_GOSSIP_GAP * self.config.gossip_interval,
                        self._clock)
            due = eager if due is None else min(due, eager)
        return due

    def handle_timer(self, now: float) -> None:
        """Run everything due at or before ``now``."""
        self._clock = max(self._clock, now)
        timers = self._timers
        while timers and timers[0][0] <= now:
            _, _, fn, owner = heapq.heappop(timers)
            if owner is None or not owner.done:
                fn(now)
        if self._gossip_at is not None and now >= self._gossip_at:
            self._gossip_tick(now)
        self._gossip_idle = False  # until get_timer() finds the queues empty again
        self._maybe_eager(now)

    def datagrams_to_send(self) -> list[tuple[bytes, Addr]]:
        """Drain the datagrams produced so far: (packet, (ip, port))."""
        out = self._out_datagrams
        self._out_datagrams = []
        return out

    def streams_to_open(self) -> list[StreamRequest]:
        """Drain the TCP exchanges requested so far."""
        out = self._out_streams
        self._out_streams = []
        return out

    def receive_datagram(self, data: bytes, addr: Addr, now: float) -> None:
        """Feed one received UDP datagram from ``addr``."""
        self._clock = max(self._clock, now)
        self._metrics.incr(("memberlist", "udp", "received"), len(data))
        if self._checks:
            # A member we are checking that sends us anything is running, only late.
            for check in self._checks.values():
                if check.address == addr:
                    check.heard = True
        try:
            parts = decode_packet(
                data,
                keyring=self._keyring_in,
                verify_incoming=self.config.gossip_verify_incoming,
            )
        except DecodeError:
            self._count("bad_packet")
            return
        for part in parts:
            try:
                msg = decode_message(part)
            except DecodeError:
                self._count(f"bad_message_{part[0] if part else 'empty'}")
                continue
            try:
                self._dispatch(msg, addr, now)
            except DecodeError:
                self._count("bad_field")

    def _dispatch(self, msg: Message | UserData, addr: Addr, now: float) -> None:
        t = msg.TYPE
        if t == MsgType.PING:
            assert isinstance(msg, Ping)
            self._serve_ping(msg, addr, now)
        elif t == MsgType.INDIRECT_PING:
            assert isinstance(msg, IndirectPing)
            self._serve_indirect_ping(msg, addr, now)
        elif t == MsgType.ACK:
            assert isinstance(msg, Ack)
            h = self._acks.pop(msg.seq_no, None)
            if h is not None:
                h.on_ack(msg.payload, now)
        elif t == MsgType.NACK:
            assert isinstance(msg, Nack)
            nh = self._acks.get(msg.seq_no)
            if nh is not None and nh.on_nack is not None:
                nh.on_nack()
        elif t == MsgType.ALIVE:
            assert isinstance(msg, Alive)
            if msg.port == 0:
                msg = replace(msg, port=self.config.bind_port)
            self._alive(msg, now)
        elif t == MsgType.SUSPECT:
            assert isinstance(msg, Suspect)
            self._suspect_heard(msg, now)
        elif t == MsgType.DEAD:
            assert isinstance(msg, Dead)
            self._dead(msg, now)
        elif t == MsgType.USER:
            assert isinstance(msg, UserData)
            self.delegate.notify_msg(msg.data, now)
        else:
            self._count(f"unsupported_type_{t}")

    # ------------------------------------------------------------------ API for Serf/agent

    def update_meta(self, now: float) -> None:
        """memberlist UpdateNode: re-read our meta and broadcast alive at incarnation+1."""
        self._clock = max(self._clock, now)
        meta = self._own_meta()
        self._incarnation = (self._incarnation + 1) & _UINT32
        a = Alive(
            self._incarnation,
            self.name,
            self._self.addr,
            self._self.port,
            meta,
            self.config.vsn,
        )
        self._update_done = False
        self._alive(a, now, bootstrap=True, on_finished=self._mark_update_done)

    def update_broadcast_done(self) -> bool:
        """True once the last update_meta broadcast was fully sent (or nobody listens)."""
        return self._update_done or not self._any_alive()

    def leave(self, now: float) -> None:
        """memberlist Leave: broadcast our own death with From == us (shows as Left)."""
        self._clock = max(self._clock, now)
        if self._left:
            return
        self._left = True
        me = self._self
        self._dead(Dead(me.incarnation, me.name, me.name), now)

    def leave_broadcast_done(self) -> bool:
        """True once the leave broadcast hit its retransmit limit or no other node is alive."""
        return self._leave_done or not self._any_alive()

    def send_user_msg(self, addr: Addr, data: bytes) -> None:
        """memberlist SendToAddress: one UDP user message ``[8]+data``, no piggyback."""
        self._send_raw([bytes((MsgType.USER,)) + data], addr, None)

    def send_user_msg_stream(self, addr: Addr, data: bytes, now: float) -> int:
        """memberlist SendReliable: a user message over TCP; returns the stream token."""
        plain = encode_user_stream(data)
        return self._open_stream(addr, plain, False, now + self.config.tcp_timeout,
                                 StreamKind.USER)

    def start_push_pull(self, addr: Addr, join: bool, now: float) -> int:
        """Ask for a push/pull with ``addr``; the reply comes back through ``stream_outcome``."""
        plain = self.push_pull_payload(join)
        token = self._open_stream(addr, plain, True, now + self.config.tcp_timeout,
                                  StreamKind.PUSH_PULL)
        self._pending_streams[token] = (StreamKind.PUSH_PULL, join)
        if self._metrics.enabled:
            self._push_pull_start[token] = now
        return token

    def start_join(self, addr: Addr, now: float, kind: StreamKind = StreamKind.JOIN) -> int:
        """memberlist Join's push/pull (Join=true) with ``addr``, for the layer above: its
        outcome is not ours (``stream_outcome`` only times it, as pushPullNode); the
        caller merges the reply with ``merge_push_pull``."""
        token = self._open_stream(addr, self.push_pull_payload(True), True,
                                  now + self.config.tcp_timeout, kind)
        if self._metrics.enabled:
            self._push_pull_start[token] = now
        return token

    def push_pull_payload(self, join: bool) -> bytes:
        """Our full state as a plain push/pull message (memberlist sendLocalState)."""
        bodies = [r.state_body() for r in self._nodes]
        return encode_push_pull_bodies(join, bodies, self.delegate.local_state(join))

    def merge_push_pull(self, plain: bytes, join: bool, now: float) -> None:
        """Merge a peer's push/pull; raises DecodeError or ProtocolError if refused."""
        self._clock = max(self._clock, now)
        _header, remote, user_state = decode_push_pull(plain)
        self._merge_remote(remote, user_state, join, now)
        if join:
            self._schedule_follow_up(now, again=False)

    def preload(self, states: list[PushNodeState], now: float) -> None:
        """For simulations that start from a converged cluster: merge these node states
        as if their gossip were over already (nothing is left queued for broadcast, our
        own alive included)."""
        self._clock = max(self._clock, now)
        self._merge_remote(states, b"", False, now)
        self._queue.reset()
        self._fresh = 0

    def _merge_remote(
        self, remote: list[PushNodeState], user_state: bytes, join: bool, now: float
    ) -> None:
        bind_port = self.config.bind_port
        remote = [replace(r, port=bind_port) if r.port == 0 else r for r in remote]
        self._verify_protocol(remote)
        fresh_before = self._fresh
        for r in remote:
            self._merge_one(r, now)
        if self._fresh - fresh_before > EAGER_MERGE_MAX:
            # A bulk merge (a joiner taking in the cluster) is news to us, not to the
            # cluster: no hurry, the next tick carries it (in a join burst, every
            # joiner would otherwise run a round at once, all in the same instant).
            self._fresh = fresh_before
            self.activity["eager_skipped_bulk_merge"] = (
                self.activity.get("eager_skipped_bulk_merge", 0) + 1)
        if user_state:
            self.delegate.merge_remote_state(user_state, join, now)

    def receive_stream(self, plain: bytes, addr: Addr, now: float) -> bytes | None:
        """Serve one inbound stream message; returns the plain reply, if any."""
        self._clock = max(self._clock, now)
        if not plain:
            self._count("stream_empty")
            return None
        t = plain[0]
        try:
            if t == MsgType.PUSH_PULL:
                header, remote, user_state = decode_push_pull(plain)
                # memberlist replies with its own state first, then merges theirs.
                reply = self.push_pull_payload(header.join)
                try:
                    self._merge_remote(remote, user_state, header.join, now)
                except ProtocolError:
                    self._count("push_pull_refused")
                return reply
            if t == MsgType.PING:
                p = Ping.from_body(plain[1:])
                if p.node and p.node != self.name:
                    self._count("ping_wrong_node")
                    return None
                return Ack(p.seq_no, None).encode()
            if t == MsgType.USER:
                data = decode_user_stream(plain)
                if data:
                    self.delegate.notify_msg(data, now)
                return None
        except DecodeError as e:
            self._count("bad_stream")
            return ErrResp(str(e)).encode()
        self._count("bad_stream_type")
        return ErrResp(f"Received invalid msgType ({t})").encode()

    def stream_outcome(self, token: int, plain: bytes | None, now: float,
                       error: str = "") -> None:
        """The outcome of a stream we asked for: the reply, or None on failure/timeout
        (``error``, the driver's text for the failure, is only for the layer above)."""
        self._clock = max(self._clock, now)
        if self._push_pull_start:
            start = self._push_pull_start.pop(token, None)
            if start is not None:
                self._metrics.measure_since(("memberlist", "pushPullNode"), start, now)
        pending = self._pending_streams.pop(token, None)
        if pending is None:
            return
        kind, data = pending
        if token == self._catch_up_token:
            self._catch_up_token = None
        if token == self._follow_up_token:
            self._follow_up_token = None
            heard = self._joins_heard
            self._push_pull_reply(plain, bool(data), now)
            if self._joins_heard > heard:
                # It taught us members the gossip had not: the burst may not be over.
                self._schedule_follow_up(now, again=True)
        elif kind is StreamKind.PUSH_PULL:
            self._push_pull_reply(plain, bool(data), now)
        elif kind is StreamKind.PING:
            self._tcp_ping_reply(data, plain, now, error)

    # ------------------------------------------------------------------ transition rules

    def _alive(
        self,
        a: Alive,
        now: float,
        bootstrap: bool = False,
        on_finished: Callable[[], None] | None = None,
    ) -> None:
        """memberlist aliveNode."""
        if self._left and a.node == self.name:
            return
        vsn = a.vsn or b""
        if len(vsn) >= 3 and (vsn[0] == 0 or vsn[1] == 0 or vsn[0] > vsn[1]):
            self._count("alive_bad_vsn")
            return
        addr = a.addr or b""
        if len(addr) not in (4, 16):
            self._count("alive_bad_addr")
            return
        rec = self._map.get(a.node)
        updates_node = False
        if rec is None:
            rec = _Rec(a.node, addr, a.port, a.meta, _full_vsn(vsn), now)
            self._map[a.node] = rec
            # Appended, then swapped with a random position of the probe list.
            n = len(self._nodes)
            self._nodes.append(rec)
            if n:
                off = self.rng.randrange(n)
                self._nodes[off], self._nodes[n] = self._nodes[n], self._nodes[off]
        elif rec.addr != addr or rec.port != a.port:
            reclaim = self.config.dead_node_reclaim_time
            can_reclaim = reclaim > 0 and now - rec.state_change > reclaim
            if rec.state == _LEFT or (rec.state == _DEAD and can_reclaim):
                updates_node = True
            else:
                self._count("conflict")
                other = Node(
                    a.node,
                    bytes_to_ip(addr),
                    a.port,
                    a.meta or b"",
                    _ALIVE,
                    a.incarnation,
                    _full_vsn(vsn),
                    now,
                )
                self.delegate.notify_conflict(rec.snapshot(), other)
                return

        is_local = a.node == self.name
        if a.incarnation <= rec.incarnation and not is_local and not updates_node:
            return
        if a.incarnation < rec.incarnation and is_local:
            return
        self._susp.pop(a.node, None)
        old_state = rec.state
        old_meta = rec.meta

        if is_local and not bootstrap:
            if a.incarnation == rec.incarnation and _same(a.meta, rec.meta) and vsn == rec.vsn:
                return
            self._refute(rec, a.incarnation)
        else:
            self._enqueue(a.encode(), name=a.node, on_finished=on_finished)
            if len(vsn) >= 6:
                rec.vsn = bytes(vsn[:6])
            rec.incarnation = a.incarnation
            rec.meta = a.meta
            if updates_node or rec.addr != addr or rec.port != a.port:
                rec.set_address(addr, a.port)
            if rec.state != _ALIVE:
                rec.state = _ALIVE
                rec.state_change = now
        self._metrics.incr(("memberlist", "msg", "alive"))

        if old_state in (_DEAD, _LEFT):
            self._joins_heard += 1
            self.delegate.notify_join(rec.snapshot(), now)
        elif not _same(old_meta, rec.meta):
            self.delegate.notify_update(rec.snapshot(), now)

    def _suspect(self, s: Suspect, now: float) -> None:
        """memberlist suspectNode."""
        rec = self._map.get(s.node)
        if rec is None or s.incarnation < rec.incarnation:
            return
        susp = self._susp.get(s.node)
        if susp is not None:
            if susp.confirm(s.from_, now):
                self._enqueue(s.encode(), name=s.node)
                self._arm_suspicion(s.node, susp)
            return
        if rec.state != _ALIVE:
            return
        if rec is self._self:
            self._refute(rec, s.incarnation)
            return
        self._enqueue(s.encode(), name=s.node)
        self._metrics.incr(("memberlist", "msg", "suspect"))
        rec.incarnation = s.incarnation
        rec.state = _SUSPECT
        rec.state_change = now
        cfg = self.config
        n = self._est_num_nodes()
        k = confirmations_wanted(cfg.suspicion_mult, n)
        lo = suspicion_timeout(cfg.suspicion_mult, n, cfg.probe_interval)
        verified: float | None = None
        refused: float | None = None
        if cfg.verified_suspicions:
            verified, refused = verified_suspicion_timeouts(
                cfg.suspicion_mult, n, cfg.probe_interval,
                retransmit_limit(cfg.retransmit_mult, n), cfg.gossip_interval)
        susp = Suspicion(s.from_, k, lo, cfg.suspicion_max_timeout_mult * lo, now,
                         verified, refused)
        self._susp[s.node] = susp
        self._arm_suspicion(s.node, susp)

    def _dead(self, d: Dead, now: float) -> None:
        """memberlist deadNode (also our own leave)."""
        rec = self._map.get(d.node)
        if rec is None or d.incarnation < rec.incarnation:
            return
        self._susp.pop(d.node, None)
        if rec.dead_or_left():
            return
        if rec is self._self:
            if not self._left:
                self._refute(rec, d.incarnation)
                return
            self._enqueue(d.encode(), name=d.node, on_finished=self._mark_leave_done)
        else:
            self._enqueue(d.encode(), name=d.node)
        self._metrics.incr(("memberlist", "msg", "dead"))
        rec.incarnation = d.incarnation
        rec.state = _LEFT if d.node == d.from_ else _DEAD
        rec.state_change = now
        self.delegate.notify_leave(rec.snapshot(), now)

    def _refute(self, me: _Rec, accused: int) -> None:
        """Out-bid an accusation about ourselves with a newer incarnation."""
        inc = (self._incarnation + 1) & _UINT32
        if accused >= inc:
            inc = (accused + 1) & _UINT32
        self._incarnation = inc
        me.incarnation = inc
        self._apply_awareness(1)
        a = Alive(inc, me.name, me.addr, me.port, me.meta, me.vsn)
        # memberlist 0.2.2 names this broadcast after our address string, not our name.
        self._enqueue(a.encode(), name=me.address[0])

    def _merge_one(self, r: PushNodeState, now: float) -> None:
        """memberlist mergeState for one remote entry."""
        if r.state == _ALIVE:
            self._alive(Alive(r.incarnation, r.name, r.addr, r.port, r.meta, r.vsn), now)
        elif r.state == _LEFT:
            self._dead(Dead(r.incarnation, r.name, r.name), now)
        elif r.state == _DEAD or r.state == _SUSPECT:
            # A remote death is only a suspicion here: the node gets to refute it.
            self._suspect(Suspect(r.incarnation, r.name, self.name), now)

    def _verify_protocol(self, remote: list[PushNodeState]) -> None:
        """memberlist verifyProtocol over our alive nodes and the remote alive entries."""
        max_pmin = max_dmin = 0
        min_pmax = min_dmax = 255
        for r in remote:
            v = r.vsn or b""
            if 0 < len(v) < 6:
                raise DecodeError(f"node {r.name!r}: short Vsn")
            if r.state != _ALIVE or not v:
                continue
            max_pmin = max(max_pmin, v[0])
            min_pmax = min(min_pmax, v[1])
            max_dmin = max(max_dmin, v[3])
            min_dmax = min(min_dmax, v[4])
        for n in self._nodes:
            if n.state != _ALIVE:
                continue
            v = n.vsn
            max_pmin = max(max_pmin, v[0])
            min_pmax = min(min_pmax, v[1])
            max_dmin = max(max_dmin, v[3])
            min_dmax = min(min_dmax, v[4])
        checks = [(r.name, (r.vsn or bytes(6))[2], (r.vsn or bytes(6))[5]) for r in remote]
        checks += [(n.name, n.vsn[2], n.vsn[5]) for n in self._nodes]
        for name, pcur, dcur in checks:
            if pcur < max_pmin or pcur > min_pmax:
                raise ProtocolError(
                    f"Node '{name}' protocol version ({pcur}) is incompatible: "
                    f"[{max_pmin}, {min_pmax}]"
                )
            if dcur < max_dmin or dcur > min_dmax:
                raise ProtocolError(
                    f"Node '{name}' delegate protocol version ({dcur}) is incompatible: "
                    f"[{max_dmin}, {min_dmax}]"
                )

    # ------------------------------------------------------------------ suspicion timers

    def _arm_suspicion(self, name: str, susp: Suspicion) -> None:
        when = susp.deadline
        self._at(when, lambda now: self._suspicion_expired(name, susp, when, now))

    def _suspicion_expired(self, name: str, susp: Suspicion, when: float, now: float) -> None:
        if susp.deadline != when:
            return  # a confirmation moved the deadline; a newer timer is armed
        rec = self._map.get(name)
        # Fire only if this is still the same suspicion (memberlist compares StateChange).
        if rec is None or rec.state != _SUSPECT or rec.state_change != susp.start:
            return
        self._count("suspect_timeout")
        if susp.k > 0 and susp.n < susp.k:
            self._metrics.incr(("memberlist", "degraded", "timeout"))
        which = susp.shortened()
        if which is not None:  # verified_suspicions: our floor, not memberlist's
            self._count_activity(f"suspect_timeout_{which}")
        self._dead(Dead(rec.incarnation, rec.name, self.name), now)

    # ------------------------------------------------------------------ confirmation checks

    def _suspect_heard(self, s: Suspect, now: float) -> None:
        """A Suspect from the wire: memberlist's rule, then (``confirm_suspicions``) our
        own check of a member we held alive until this message."""
        rec = self._map.get(s.node)
        was_alive = rec is not None and rec.state == _ALIVE
        self._suspect(s, now)
        if was_alive and self.config.confirm_suspicions:
            self._confirm_suspicion(s, now)

    def _confirm_suspicion(self, s: Suspect, now: float) -> None:
        """Probe a member we just heard is suspected, at once, instead of waiting for our
        round-robin (or someone else's) to reach it.

        Memberlist's Lifeguard shortens a suspicion as independent confirmations arrive,
        and those come only from members whose own probe of the suspect happens to fail;
        the suspicion timeout's floor is unchanged. The check is exactly a probe
        (``_launch_probe``: ping with the suspicion attached so the member can refute,
        indirect pings through IndirectChecks members, the TCP fallback, the awareness
        score's timeouts and updates), run beside the round-robin probe. A failure adds
        our suspicion (a confirmation, by memberlist's rules); an answer adds nothing.
        Bounds: one check per suspect, ``max_confirm_checks`` at once (more are refused
        and counted), none when our confirmation could no longer count here (the
        suspicion wants no more, or our check would outlast its shortest timeout).
        """
        rec = self._map.get(s.node)
        susp = self._susp.get(s.node)
        if (rec is None or rec is self._self or self._left or susp is None
                or rec.state != _SUSPECT or rec.state_change != now or s.from_ == self.name):
            return
        if susp.n >= susp.k:
            return  # no confirmation wanted (tiny cluster) or all of them already in
        probe = self._probe
        if rec.name in self._checks or (probe is not None and probe.name == rec.name):
            return  # a probe of it is already running; its failure accuses it too
        period = self.config.probe_interval * (self._awareness + 1)
        if now + period >= susp.start + susp.min_timeout:
            self._count_activity("confirm_check_skipped_late")
            return
        if len(self._checks) >= self.config.max_confirm_checks:
            self.drops.drop("confirm_check_refused", now,
                            "%d suspicion checks in progress: not checking %.64s",
                            len(self._checks), rec.name)
            return
        self._count_activity("confirm_check")
        self._checks[rec.name] = self._launch_probe(rec, now, check=True)

    def _verify_suspicion(self, probe: _Probe, now: float) -> None:
        """Our own probe or check of a suspect failed (``verified_suspicions``): once the
        k independent confirmations are in, its suspicion ends after a shorter floor
        (``Suspicion.verify``, ``verified_suspicion_timeouts``).

        Memberlist's floor, SuspicionMult x log10(N) x ProbeInterval, pays for the
        suspicion reaching the suspect, its refutation coming back (both by gossip, so
        scaled by log N) and slack for a suspect that is slow to answer. Here the
        suspicion has reached it directly: each confirmation check pings it with the
        suspicion attached, as memberlist's probe of a suspect does. What is left is
        the way back, bounded by the retransmit horizon (how long the refutation is
        gossiped: limit x GossipInterval), and the slack, kept at memberlist's floor of
        a cluster of 10 (SuspicionMult x ProbeInterval). A member that stalls therefore
        still refutes in time if it resumes within ProbeInterval (its first failed
        probe) + SuspicionMult x ProbeInterval of the first ping it missed: 5 s on LAN,
        at any N, and memberlist's own bound where that is shorter.

        A refused TCP ping says more: the suspect's host answered the connect with a
        reset, so nothing listens on its gossip port; a stopped or starved process keeps
        its socket (the kernel accepts the connect), a dead host or a partition gives a
        timeout. Then only the way back is waited for, should the member be restarting.

        Only a probe that started while our awareness score was 0 counts: a node whose
        own probes miss nacks may be the one in trouble and keeps memberlist's rules
        (Lifeguard's argument). k confirmations are still needed: a node cut off alone
        hears none. Refutations cancel a verified suspicion like any other.
        """
        rec = self._map.get(probe.name)
        susp = self._susp.get(probe.name)
        if (rec is None or susp is None or rec.state != _SUSPECT
                or rec.incarnation != probe.incarnation):
            return
        if susp.verify(now, probe.refused):
            self._arm_suspicion(probe.name, susp)

    # ------------------------------------------------------------------ probing

    def _probe_tick(self, now: float) -> None:
        self._at(now + self.config.probe_interval, self._probe_tick)
        if self._probe is not None:
            self._probe_tick_pending = True  # Go's ticker keeps one tick while we are busy
            return
        self._probe_round(now)

    def _probe_round(self, now: float) -> None:
        """memberlist probe(): the next node of the shuffled list that is worth probing."""
        checked = 0
        while True:
            nodes = self._nodes
            if checked >= len(nodes):
                return
            if self._probe_index >= len(nodes):
                self._reset_nodes(now)
                self._probe_index = 0
                checked += 1
                continue
            rec = nodes[self._probe_index]
            self._probe_index += 1
            if rec is self._self or rec.dead_or_left():
                checked += 1
                continue
            self._probe_node(rec, now)
            return

    def _reset_nodes(self, now: float) -> None:
        """Reap nodes dead longer than GossipToTheDeadTime, then reshuffle the probe list."""
        limit = self.config.gossip_to_the_dead_time
        keep: list[_Rec] = []
        for r in self._nodes:
            if r.state == _DEAD and now - r.state_change > limit:
                del self._map[r.name]
            else:
                keep.append(r)
        self.rng.shuffle(keep)
        self._nodes = keep

    def _probe_node(self, rec: _Rec, now: float) -> None:
        self._probe = self._launch_probe(rec, now, check=False)

    def _launch_probe(self, rec: _Rec, now: float, check: bool) -> _Probe:
        """memberlist probeNode: ping now, indirect at ProbeTimeout, conclude at the deadline
        (ProbeInterval x (awareness+1)). The round-robin probe and confirmation checks."""
        cfg = self.config
        period = cfg.probe_interval * (self._awareness + 1)
        ping = Ping(self._next_seq(), rec.name, self._self_addr, cfg.advertise_port, self.name)
        probe = _Probe(rec, ping, now, now + period, check)
        probe.healthy = self._awareness == 0
        if not check and self._awareness > 0:
            self._metrics.incr(("memberlist", "degraded", "probe"))

        def on_ack(payload: bytes | None, t: float) -> None:
            self._probe_acked(probe, payload, t)

        def on_nack() -> None:
            probe.nacks += 1

        self._expect_ack(ping.seq_no, _AckHandler(on_ack, on_nack), now + period)
        if rec.state == _ALIVE:
            self._send_msg(ping.encode(), rec.address)
        else:
            # Tell a suspect node what we think so it can refute.
            sus = Suspect(rec.incarnation, rec.name, self.name)
            self._send_raw([ping.encode(), sus.encode()], rec.address, rec)
        self._at(now + cfg.probe_timeout, lambda t: self._probe_indirect(probe, t), probe)
        self._at(probe.deadline, lambda t: self._probe_deadline(probe, t), probe)
        return probe

    def _probe_acked(self, probe: _Probe, payload: bytes | None, now: float) -> None:
        if probe.done:
            return
        if probe.check:
            self._count_activity("confirm_check_acked")
        elif not probe.indirect:
            hook = getattr(self.delegate, "notify_ping_complete", None)
            rec = self._map.get(probe.name)
            if hook is not None and rec is not None:
                hook(rec.snapshot(), now - probe.start, payload, now)
        self._probe_finish(probe, -1, now)

    def _probe_indirect(self, probe: _Probe, now: float) -> None:
        if probe.done:
            return
        probe.indirect = True
        cfg = self.config
        target = probe.name
        me = self._self
        peers = self._k_random(
            cfg.indirect_checks,
            lambda r: r is me or r.name == target or r.state != _ALIVE,
        )
        addr_raw = ip_to_bytes(probe.address[0])
        for peer in peers:
            nack = peer.vsn[1] >= 4
            if nack:
                probe.expected_nacks += 1
            ind = IndirectPing(
                probe.seq,
                addr_raw,
                probe.address[1],
                target,
                nack,
                self._self_addr,
                cfg.advertise_port,
                self.name,
            )
            self._send_msg(ind.encode(), peer.address)
        if not cfg.disable_tcp_pings and probe.pmax >= 3:
            token = self._open_stream(
                probe.address, probe.ping.encode(), True, probe.deadline, StreamKind.PING
            )
            self._pending_streams[token] = (StreamKind.PING, probe)
            probe.tcp_pending = True

    def _probe_deadline(self, probe: _Probe, now: float) -> None:
        if probe.done:
            return
        if probe.tcp_pending:
            # Go waits for the fallback ping, whose own deadline is this instant; give
            # the driver a short grace to report it, then call it failed.
            probe.waiting_tcp = True
            self._at(now + self.config.probe_timeout, lambda t: self._probe_conclude(probe, t))
            return
        self._probe_conclude(probe, now)

    def _tcp_ping_reply(self, probe: _Probe, plain: bytes | None, now: float,
                        error: str = "") -> None:
        probe.tcp_pending = False
        probe.refused = plain is None and error.endswith(REFUSED)
        if plain:
            try:
                msg = decode_message(plain)
                probe.tcp_contacted = isinstance(msg, Ack) and msg.seq_no == probe.seq
            except DecodeError:
                self._count("bad_stream_ack")
        if probe.waiting_tcp and not probe.done:
            self._probe_conclude(probe, now)

    def _probe_conclude(self, probe: _Probe, now: float) -> None:
        if probe.done:
            return
        if probe.tcp_contacted:
            # Reachable over TCP only: memberlist warns about the network, no suspicion.
            self._count("probe_tcp_only")
            self._probe_finish(probe, -1, now)
            return
        delta = max(0, probe.expected_nacks - probe.nacks) if probe.expected_nacks > 0 else 1
        if probe.check and probe.heard:
            # No ack in time, but the member sent us datagrams while we checked: it is
            # alive and slow (CPU-starved), not gone. Memberlist's own probes may still
            # suspect it; our check adds no confirmation to hurry its death.
            self._count_activity("confirm_check_spared")
            self._probe_finish(probe, 0, now)
            return
        if probe.check:
            self._count_activity("confirm_check_failed")
        else:
            self._count("probe_failed")
        self._probe_finish(probe, delta, now)
        self._suspect(Suspect(probe.incarnation, probe.name, self.name), now)
        if probe.healthy and self.config.verified_suspicions:
            self._verify_suspicion(probe, now)

    def _probe_finish(self, probe: _Probe, awareness_delta: int, now: float) -> None:
        probe.done = True
        self._acks.pop(probe.seq, None)
        if probe.check:
            # A check uses the awareness score's timeouts but leaves the score to the
            # round-robin: when several members fail at once, checks through members
            # not yet known dead would miss nacks and slow every later probe.
            if self._checks.get(probe.name) is probe:
                del self._checks[probe.name]
            return
        self._metrics.measure_since(("memberlist", "probeNode"), probe.start, now)
        self._apply_awareness(awareness_delta)
        if self._probe is probe:
            self._probe = None
            if self._probe_tick_pending:
                self._probe_tick_pending = False
                self._probe_round(now)

    def _serve_ping(self, p: Ping, src: Addr, now: float) -> None:
        if p.node and p.node != self.name:
            self._count("ping_wrong_node")
            return
        ack = Ack(p.seq_no, self.delegate.ack_payload())
        reply_to = self._reply_addr(p.source_addr, p.source_port, src)
        self._send_msg(ack.encode(), reply_to)
        self._catch_up(p.source_node, reply_to, now)

    def _serve_indirect_ping(self, ind: IndirectPing, src: Addr, now: float) -> None:
        cfg = self.config
        if self._indirect >= cfg.max_indirect_pings:
            self.drops.drop("indirect_ping_refused", now,
                            "%d indirect pings in progress: refusing one for %.64s from %s:%d",
                            self._indirect, ind.node, *src)
            return
        target = (bytes_to_ip(ind.target or b""), ind.port or cfg.bind_port)
        requester = self._reply_addr(ind.source_addr, ind.source_port, src)
        self._catch_up(ind.source_node, requester, now)
        seq = self._next_seq()
        acked = [False]

        def on_ack(payload: bytes | None, t: float) -> None:
            acked[0] = True
            self._send_msg(Ack(ind.seq_no, None).encode(), requester)

        def done(t: float) -> None:
            self._indirect -= 1

        self._indirect += 1
        self._expect_ack(seq, _AckHandler(on_ack, None), now + cfg.probe_timeout)
        self._at(now + cfg.probe_timeout, done)
        ping = Ping(seq, ind.node, self._self_addr, cfg.advertise_port, self.name)
        self._send_msg(ping.encode(), target)
        if ind.nack:

            def maybe_nack(t: float) -> None:
                if not acked[0]:
                    self._send_msg(Nack(ind.seq_no).encode(), requester)

            self._at(now + cfg.probe_timeout, maybe_nack)

    def _catch_up(self, sender: str | None, addr: Addr, now: float) -> None:
        """Push/pull with a sender that takes us for a member but that we do not know.

        The case this is for: we restarted with no state and no join, and our old peers
        still gossip our death to us (GossipToTheDeadTime) and finish the probes they had
        started. We refute the death, a ping arrives, and its ack carries our new alive:
        from then on the cluster sees us alive, nobody reconnects to us, and nothing
        would tell us about them until a periodic push/pull (30 s on LAN) picks us.
        The sender is named by the peer, so the cost is bounded: one exchange in flight,
        one per ProbeInterval; what is skipped meanwhile is counted.
        """
        if not self.config.catch_up or not sender or sender == self.name or self._left:
            return
        rec = self._map.get(sender)
        if rec is not None and not rec.dead_or_left():
            return
        busy = self._catch_up_token is not None and now < self._catch_up_deadline
        if busy or now < self._catch_up_next:
            self._count("catch_up_deferred")
            return
        self._catch_up_next = now + self.config.probe_interval
        self._catch_up_deadline = now + self.config.tcp_timeout
        self.activity["catch_up_push_pull"] = self.activity.get("catch_up_push_pull", 0) + 1
        log.info("%s takes us for a member but is not one here: push/pull with %s:%d",
                 sender, addr[0], addr[1])
        self._catch_up_token = self.start_push_pull(addr, True, now)

    def _schedule_follow_up(self, now: float, again: bool) -> None:
        cfg = self.config
        if not again:
            self._follow_ups_left = JOIN_FOLLOW_UP_MAX
        busy = self._follow_up_due or self._follow_up_token is not None
        if not cfg.join_follow_up or busy or cfg.gossip_interval <= 0:
            return
        if self._follow_ups_left <= 0:
            return
        self._follow_ups_left -= 1
        self._follow_up_due = True
        self._at(now + JOIN_FOLLOW_UP_ROUNDS * cfg.gossip_interval, self._join_follow_up)

    def _join_follow_up(self, now: float) -> None:
        """One push/pull with a random live member, some gossip rounds after a join.

        Each alive of a join burst is gossiped a fixed number of times (the retransmit
        limit) to random members its senders know, and early in the burst they know
        few; with N nodes joining together, about N^2 x e^-limit pairs stay unheard of
        (loss adds to it). A push/pull with any member that has heard the burst's gossip
        fills them in. A random member, not the seed, which every joiner has just
        loaded; at most one scheduled or running at a time. When it taught us members
        the gossip had not (a big burst: at 1,000 joins the gossip takes 20 s), another
        follows, at most JOIN_FOLLOW_UP_MAX per join.
        """
        self._follow_up_due = False
        if self._left:
            return
        me = self._self
        peers = self._k_random(1, lambda r: r is me or r.state != _ALIVE)
        if not peers:
            return
        self.activity["join_follow_up_push_pull"] = (
            self.activity.get("join_follow_up_push_pull", 0) + 1)
        self._follow_up_token = self.start_push_pull(peers[0].address, False, now)

    def _expect_ack(self, seq: int, handler: _AckHandler, expires: float) -> None:
        self._acks[seq] = handler

        def expire(now: float) -> None:
            if self._acks.get(seq) is handler:
                del self._acks[seq]

        self._at(expires, expire)

    def _apply_awareness(self, delta: int) -> None:
        old = self._awareness
        score = old + delta
        self._awareness = max(0, min(score, self.config.awareness_max_multiplier - 1))
        if self._awareness != old:
            self._metrics.gauge(("memberlist", "health", "score"), self._awareness)

    # ------------------------------------------------------------------ gossip, push/pull

    def _enqueue(
        self, msg: bytes, name: str | None = None, on_finished: Callable[[], None] | None = None
    ) -> None:
        self._queue.queue(msg, name=name, on_finished=on_finished)
        if self.config.eager_gossip:
            self._fresh += 1

    def delegate_queued(self, now: float) -> None:
        """The delegate queued a broadcast at ``now``: the gossip ticker resumes from
        here (get_timer), not from the last input memberlist itself handled."""
        self._clock = max(self._clock, now)

    def fresh_broadcast(self) -> None:
        """The delegate queued a broadcast that is news (a user event or query heard
        for the first time): with eager_gossip, an eager round carries it (see
        _maybe_eager); without, the next gossip tick does, as in memberlist."""
        if self.config.eager_gossip:
            self._fresh += 1

    def _maybe_eager(self, now: float) -> None:
        """With eager_gossip, run a gossip round as soon as there is news.

        The round is a tick's (GossipNodes live members, each a packet filled from our
        queue and the delegate's, fewest-sent first), so each copy it sends counts
        against the broadcast's retransmit budget: a broadcast is sent as often as
        memberlist would send it, and in as few packets; its first copies simply leave
        as soon as it is queued, not ~GossipInterval/2 later on average, at every hop.
        (Pushing copies on top of the budget, one packet per message, cost 2.2-2.4x
        Serf's bytes and 4x its packets in a burst of user events: issue 13.)
        """
        if not self._fresh:
            return
        # The same expression as in get_timer(), so that being called at that due time
        # always passes (a subtraction here could round the other way and spin).
        if now < self._last_eager + EAGER_GOSSIP_GAP * self.config.gossip_interval:
            return  # get_timer() asks to be called again when the gap has passed
        self._last_eager = now
        self._fresh = 0
        self._count_activity("eager_gossip_round")
        self._timed_gossip(self._eager_round, now)

    def _eager_round(self, now: float) -> None:
        me = self._self
        targets = self._k_random(
            self.config.gossip_nodes, lambda r: r is me or r.state != _ALIVE
        )
        avail = self.config.udp_buffer_size - COMPOUND_HEADER_OVERHEAD - self._encrypt_overhead
        for rec in targets:
            msgs = self._get_broadcasts(COMPOUND_OVERHEAD, avail)
            if not msgs:
                return
            self._send_raw(msgs, rec.address, rec)

    def _timed_gossip(self, round_: Callable[[float], None], now: float) -> None:
        """Run a gossip round, timed as memberlist.gossip (CPU time, so only with the
        front's perf clock: a simulation has none)."""
        metrics = self._metrics
        perf = metrics.perf if metrics.enabled else None
        if perf is None:
            round_(now)
            return
        start = perf()
        round_(now)
        metrics.measure_since(("memberlist", "gossip"), start, perf())

    def _gossip_tick(self, now: float) -> None:
        """The gossip tick due at or before ``now``: a round if anything is queued.

        Ticks that found nothing queued when they fell are skipped: get_timer() did not
        ask to be woken for them, and memberlist's round would have picked its nodes and
        sent them nothing. ``_gossip_idle`` says the ticks up to now were such ticks.
        """
        self._gossip_at = now + self.config.gossip_interval
        if not self._gossip_idle and self._has_broadcasts():
            self._timed_gossip(self._gossip_round, now)

    def _next_gossip_tick(self, t: float) -> float:
        """The first tick at or after ``t`` of the gossip ticker's phase."""
        at = self._gossip_at
        assert at is not None
        if at >= t:
            return at
        iv = self.config.gossip_interval
        nxt = at + math.ceil((t - at) / iv) * iv
        while nxt < t:  # rounding
            nxt += iv
        return nxt

    def _has_broadcasts(self) -> bool:
        """Whether a gossip round would find anything to send (ours or the delegate's)."""
        if len(self._queue):
            return True
        pending = self._delegate_has_broadcasts
        return True if pending is None else bool(pending())

    def _gossip_round(self, now: float) -> None:
        cfg = self.config
        me = self._self
        dead_time = cfg.gossip_to_the_dead_time

        def skip(r: _Rec) -> bool:
            if r is me:
                return True
            if r.state == _ALIVE or r.state == _SUSPECT:
                return False
            if r.state == _DEAD:
                return now - r.state_change > dead_time
            return True

        targets = self._k_random(cfg.gossip_nodes, skip)
        avail = cfg.udp_buffer_size - COMPOUND_HEADER_OVERHEAD - self._encrypt_overhead
        for rec in targets:
            msgs = self._get_broadcasts(COMPOUND_OVERHEAD, avail)
            if not msgs:
                return
            self._send_raw(msgs, rec.address, rec)

    def _push_pull_tick(self, now: float) -> None:
        cfg = self.config
        self._at(
            now + push_pull_scale(cfg.push_pull_interval, self._est_num_nodes()),
            self._push_pull_tick,
        )
        me = self._self
        peers = self._k_random(1, lambda r: r is me or r.state != _ALIVE)
        if peers:
            self.start_push_pull(peers[0].address, False, now)

    def _push_pull_reply(self, plain: bytes | None, join: bool, now: float) -> None:
        if plain is None:
            self._count("push_pull_failed")
            return
        if plain[:1] == bytes((MsgType.ERR,)):
            self._count("push_pull_remote_error")
            return
        if plain[:1] != bytes((MsgType.PUSH_PULL,)):
            self._count("push_pull_bad_reply")
            return
        try:
            self.merge_push_pull(plain, join, now)
        except DecodeError:
            self._count("push_pull_bad_reply")
        except ProtocolError:
            self._count("push_pull_refused")

    # ------------------------------------------------------------------ sending

    def _get_broadcasts(self, overhead: int, limit: int) -> list[bytes]:
        """memberlist getBroadcasts: our queue first, then the delegate's as user messages."""
        out = self._queue.get_broadcasts(overhead, limit)
        used = sum(len(m) + overhead for m in out)
        avail = limit - used
        if avail > overhead + USER_MSG_OVERHEAD:
            user = self.delegate.get_broadcasts(overhead + USER_MSG_OVERHEAD, avail)
            prefix = bytes((MsgType.USER,))
            out.extend(prefix + m for m in user)
        return out

    def _send_msg(self, msg: bytes, addr: Addr) -> None:
        """memberlist sendMsg: one message plus whatever broadcasts fit alongside."""
        avail = (
            self.config.udp_buffer_size
            - len(msg)
            - COMPOUND_HEADER_OVERHEAD
            - self._encrypt_overhead
        )
        parts = [msg]
        parts.extend(self._get_broadcasts(COMPOUND_OVERHEAD, avail))
        self._send_raw(parts, addr, None)

    def _send_raw(self, parts: list[bytes], addr: Addr, rec: _Rec | None) -> None:
        """memberlist rawSendMsgPacket: compress, CRC (peer PMax>=5), encrypt."""
        if rec is None:
            # 0.2.2 looks the node up by IP string in its name-keyed map: usually a miss.
            rec = self._map.get(addr[0])
        crc = rec is not None and rec.vsn[1] >= 5
        data = encode_packet(
            parts,
            compress=self.config.enable_compression,
            crc=crc,
            keyring=self._keyring_out,
        )
        self._metrics.incr(("memberlist", "udp", "sent"), len(data))
        self._out_datagrams.append((data, addr))

    def _open_stream(
        self, addr: Addr, plain: bytes, expect_reply: bool, deadline: float, kind: StreamKind
    ) -> int:
        self._tokens += 1
        token = self._tokens
        self._out_streams.append(StreamRequest(token, addr, plain, expect_reply, deadline, kind))
        return token

    # ------------------------------------------------------------------ helpers

    def _at(self, when: float, fn: Callable[[float], None], probe: _Probe | None = None) -> None:
        """Call ``fn(now)`` at ``when``; with ``probe``, only if that probe is not done
        by then (get_timer() then asks for no wake-up for it)."""
        self._timer_seq += 1
        heapq.heappush(self._timers, (when, self._timer_seq, fn, probe))

    def _count(self, reason: str) -> None:
        self.counters[reason] = self.counters.get(reason, 0) + 1

    def _count_activity(self, what: str) -> None:
        self.activity[what] = self.activity.get(what, 0) + 1

    def _next_seq(self) -> int:
        self._seq = (self._seq + 1) & _UINT32
        return self._seq

    def _est_num_nodes(self) -> int:
        return len(self._nodes)

    def _own_meta(self) -> bytes:
        meta = self.delegate.node_meta(META_MAX_SIZE)
        if len(meta) > META_MAX_SIZE:
            raise ValueError(f"node meta is {len(meta)} bytes, the limit is {META_MAX_SIZE}")
        return meta

    def _any_alive(self) -> bool:
        me = self._self
        return any(r is not me and not r.dead_or_left() for r in self._nodes)

    def _mark_leave_done(self) -> None:
        self._leave_done = True

    def _mark_update_done(self) -> None:
        self._update_done = True

    def _k_random(self, k: int, skip: Callable[[_Rec], bool]) -> list[_Rec]:
        """memberlist kRandomNodes: up to k distinct nodes in 3n random draws."""
        nodes = self._nodes
        n = len(nodes)
        out: list[_Rec] = []
        if n == 0:
            return out
        randrange = self.rng.randrange
        for _ in range(3 * n):
            if len(out) >= k:
                break
            r = nodes[randrange(n)]
            if skip(r) or r in out:
                continue
            out.append(r)
        return out

    @staticmethod
    def _reply_addr(source_addr: bytes | None, source_port: int, src: Addr) -> Addr:
        if source_addr and source_port > 0:
            return (bytes_to_ip(source_addr), source_port)
        return src


def _full_vsn(vsn: bytes) -> bytes:
    """Six version bytes, or zeros when the peer sent fewer (memberlist leaves them 0)."""
    return bytes(vsn[:6]) if len(vsn) >= 6 else bytes(6)
