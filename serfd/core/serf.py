"""The Serf layer: members, intents, Lamport clocks and events on top of memberlist.

Theory of operation
-------------------
``Serf`` owns a :class:`~serfd.memberlist.swim.Memberlist` and is its delegate. memberlist
decides *whether* a node is reachable; Serf decides what that *means* for a member:

* memberlist ``notify_join`` → the member is ``alive`` (or ``leaving`` when a leave
  intent for it arrived first and is still buffered);
* memberlist ``notify_leave`` → ``leaving`` becomes ``left`` (a graceful leave), ``alive``
  becomes ``failed``;
* memberlist ``notify_update`` → new tags (``member-update``).

Intents are Serf messages stamped with the *member* Lamport clock: a join intent
(sent after a successful join, or to refute a stale leave about ourselves) and a
leave intent (graceful leave, ``force-leave``). An intent is applied only when its
LTime is newer than the member's ``status_ltime``; intents for names we do not know
yet wait in a small buffer for ``recent_intent_timeout``. Accepted intents are
re-gossiped byte for byte.

Push/pull carries Serf's own state (``MessagePushPull``): the three clocks, every
member's status LTime, the left members and the recent user events. Merging it
replays the intents and events it implies, so two clusters converge on one view.

Time is always passed in (``now``, seconds). Everything that takes time in Go
(graceful leave, pruning, reaping, reconnecting) is a phase with a deadline that
``handle_timer`` advances, or a step that the next input advances.

The driver contract
-------------------
``Serf`` is the only object a driver (the agent's ``GossipDriver``, the simulator)
touches; its memberlist is private. Everything is sans-IO: bytes and time in, bytes,
stream requests, one timer and events out. After *any* input or command the driver
drains the outputs, then re-arms its one timer.

Inputs
  * ``receive_datagram(data, addr, now)``: a UDP datagram.
  * ``receive_stream(plain, addr, now) -> bytes | None``: an inbound TCP message
    (unwrapped); the reply to write back, if any.
  * ``stream_outcome(token, reply, now, error="")``: the outcome of a request from
    ``streams_to_open``: the plain reply, or None if it failed, with ``error`` the
    driver's Go-style text (``dial tcp 10.0.0.1:7946: connect: connection refused``).
  * ``handle_timer(now)``: at (or after) ``get_timer()``.

Commands (``now`` last; a refusal raises :class:`SerfError` with Serf's text)
  * ``join(addrs, ignore_old, now, *, intent=True) -> join_id``: JOIN stream requests,
    one per address; ends with ``JoinDone``. Merging the replies (an ``ErrResp`` is
    "remote error: ...") and the join intent are Serf's.
  * ``leave(now)``: ends with ``LeaveDone(error)``, ``state`` LEFT.
  * ``force_leave(node, prune, now) -> op_id | None``: ``ForceLeaveDone(op_id)`` once
    its broadcast went out (None: nobody to tell, nothing to wait for).
  * ``user_event(name, payload, coalesce, now)``.
  * ``query(name, payload, param, now) -> query_id``: ``QueryRecordEvent`` s (ack,
    response, then one done) carry the id.
  * ``respond(incoming_query, payload, now)``, ``set_tags(tags, now)``,
    ``restore_clocks(clock, event_clock, query_clock)``, ``shutdown()``,
    ``set_internal_query_hook(kind, hook)`` (``_serf_<kind>`` queries, e.g. keys).

Outputs
  * ``datagrams_to_send() -> [(packet, addr)]``.
  * ``streams_to_open() -> [StreamRequest]``: token, addr, plain, expect_reply,
    deadline and ``kind`` (``StreamKind``: PUSH_PULL, PING, USER from memberlist;
    JOIN for ``join``; RECONNECT, Serf's own push/pull with a failed member).
  * ``get_timer() -> float | None``: the one absolute instant to call ``handle_timer``.
  * ``next_event() -> SerfEvent | None``: ``MemberEvent``, ``UserEvent``,
    ``IncomingQuery`` (for handlers and RPC streams), and the completions
    ``JoinDone(join_id, num_joined, errors: (JoinError(addr, reason), ...))``,
    ``LeaveDone(error)``, ``ForceLeaveDone(op_id)``,
    ``QueryRecordEvent(query_id, QueryRecord)``, and ``ConflictLost(matching,
    responses)``: we lost a name conflict vote, the core has shut down and the agent must
    stop.

Read-only views: ``members()``, ``local_member()``, ``num_alive()``, ``state``,
``tags``, ``clock``/``event_clock``/``query_clock``, ``stats()`` (Serf's stats section),
``counters_view()`` (drops of Serf and memberlist merged, and memberlist's activity),
``conflict_lost``. The one setting that changes live is set by a command:
``set_limits(...)`` (the size limits and the query timeout cap, on reload).

Bounds
------
Everything kept because of what a peer (or an RPC client) sent has a bound in count
and in time; the numbers are ``SerfConfig`` fields. What a bound cuts is counted in
``counters`` under the reason named here (``serfctl info`` shows ``dropped_<reason>``)
and logged, one line per reason per 10 s (:class:`~serfd.base.ratelog.DropLog`). Serf
itself bounds none of these unless said.

* Queries we answer (``_answering``, keyed by LTime and ID): kept until the query's
  deadline, which is at most ``max_query_timeout`` (300 s) away whatever the peer
  asked (``query_timeout_capped``; Go's time.Duration allows 292 years). 300 s is
  five times the default handler timeout (60 s, after which a handler is killed and
  cannot answer), 15 times Serf's default query timeout for a 100,000-member LAN
  cluster (0.2 s x 16 x ceil(log10(N+1)) = 19.2 s) and 6 times a WAN one (48 s);
  an answer later than that could only come from an RPC client (the agent raises the
  cap to its handler timeout when that is configured longer). At most
  ``max_answering`` (256) at once: a new one evicts the oldest (``answering_full``),
  so a flood of long queries cannot lock newer ones out. The relay factor we honour
  is at most ``max_relay_factor`` (5, the most Consul, Serf's main user, accepts;
  Serf takes up to 255): one answer costs at most 1 + 5 datagrams
  (``query_relay_factor_capped``).
* Queries we ask (``_asking``): at most ``max_asking`` (64) open; one more is an
  error to the client (``asking_full``). A timeout over ``max_query_timeout`` is an
  error too, as an answerer would not wait that long. Each keeps at most
  ``max(max_query_answers, 4 x members)`` acks and as many responses, and at most
  ``max(max_query_answer_bytes, 2 x members x query_response_size_limit)`` bytes of
  names and payloads (``query_answers_cut``): a peer can forge answers from any
  number of names. Serf's channel holds as many undrained answers as it had members
  when the query started and drops the rest; its sets of names are unbounded.
* Dedup rings: a query slot remembers at most ``max_query_ids_per_ltime`` (128) IDs
  for its LTime and drops further queries (``query_ids_per_ltime``); a user-event
  slot at most ``max_events_per_ltime`` (512) events (``user_events_per_ltime``),
  and the whole event ring, which also travels in our push/pull, at most
  ``max_event_buffer_bytes`` (2 MiB, ``event_buffer_full``). A user event over
  Serf's hard 9 KiB limit is dropped (``user_event_too_large``), as is any Serf
  message over ``max_message_size`` (64 KiB, a UDP datagram;
  ``serf_message_too_large``). Old events and queries are dropped as in Serf
  (``event_too_old``, ``query_too_old``), their warning now rate-limited.
* Lamport clocks: Serf has no rule on how far a witnessed LTime may move a clock
  (a cluster merging with an older one legitimately jumps by its whole history), so
  neither do we; a clock saturates at 2^64-1 where Go's wraps (serfd.core.lamport).
* Intents for unknown nodes (``_intents``): reaped after ``recent_intent_timeout``
  (300 s, Serf's RecentIntentTimeout, checked every ``reap_interval``); at most
  ``max_intents`` (8192) and ``max_intent_bytes`` (1 MiB of names): the oldest go
  first (``intents_full``).
* Join streams (``_join_streams``): one per address of a join in progress and per
  reconnect; a driver reports each by its deadline (TCPTimeout), and one it lost is
  failed at the next reap after it (``join_stream_lost``).
* Prunes (``_prunes``): one per member, due BroadcastTimeout + LeavePropagateDelay
  after the first prune-leave (Serf starts a goroutine per message).
* Events for the agent (``_events``): user events and queries at most
  ``max_pending_events`` (4096) undrained (``event_queue_full``); member events are
  bounded by the member count. The agent drains after every input.
* Broadcast queues: each at most ``max_queue_depth`` (4096, Serf's MaxQueueDepth),
  pruned of its most-sent messages down to 7/8 of that as soon as it is over (Serf
  checks every 30 s and prunes to the limit; ``intent_queue_pruned``,
  ``event_queue_pruned``, ``query_queue_pruned``).
* Relays: Serf forwards any relayed message to any address; we forward only a query
  response (the only thing Serf relays) to the member the header names, at the
  address we know for it (``relay_refused``). Nothing is kept.
* Network coordinates (``serfd.core.coordinate``): a peer's ack carries its coordinate;
  one that is not Serf's version (``coordinate_bad_version``), not msgpack of the right
  shape (``coordinate_decode_error``) or refused by the Vivaldi client (other
  dimensionality, NaN or infinite, an RTT outside 0-10 s: ``coordinate_rejected``, and
  Serf's ``serf.coordinate.rejected`` metric) is dropped. The cache of peers' coordinates
  and the client's latency samples hold one entry per member and lose it when the member
  is erased, as Serf's eraseNode does; an ack from a node that is not a member is
  ignored (``coordinate_unknown_node``), so neither outgrows the member list.
* The member list itself is Serf's design: any alive message adds a member, kept
  until reaped (failed: ``reconnect_timeout``; left: ``tombstone_timeout``). Name
  conflicts (an alive for a known name from another address) are counted by
  memberlist (``conflict``); their log lines are rate-limited here.
"""

from __future__ import annotations

import dataclasses
import enum
import logging
import random
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import msgpack

from serfd.base.goregexp import WORK_PER_SECOND, RegexCache
from serfd.base.metrics import NULL_METRICS, Metrics
from serfd.base.ratelog import DropCounters, DropLog
from serfd.core.coordinate import (
    PING_VERSION,
    Client,
    Coordinate,
    CoordinateConfig,
    CoordinateError,
    decode_ack_payload,
    encode_ack_payload,
)
from serfd.core.lamport import MAX_LTIME, LamportClock
from serfd.core.member import Member, MemberStatus
from serfd.core.query import (
    INTERNAL_PREFIX,
    IncomingQuery,
    PendingQuery,
    QueryParam,
    QueryRecord,
    QueryRecordType,
    default_query_timeout,
    encode_filters,
    filters_match,
)
from serfd.memberlist.broadcast import TransmitLimitedQueue
from serfd.memberlist.swim import (
    Addr,
    Memberlist,
    MemberlistConfig,
    Node,
    ProtocolError,
    StreamKind,
    StreamRequest,
)
from serfd.wire.codec import ANY, BYTES, STR, UINT16, DecodeError, Field, obj_to_struct, pack_gossip
from serfd.wire.messages import META_MAX_SIZE, ErrResp, MsgType, bytes_to_ip, ip_to_bytes
from serfd.wire.serf_messages import (
    QUERY_FLAG_ACK,
    QUERY_FLAG_NO_BROADCAST,
    MessageJoin,
    MessageLeave,
    MessagePushPull,
    MessageQuery,
    MessageQueryResponse,
    MessageUserEvent,
    SerfMsgType,
    UserEventRecord,
    UserEvents,
    decode_serf_message,
    decode_tags,
    encode_tags,
)

log = logging.getLogger("serfd.serf")


class SerfState(enum.Enum):
    """The lifecycle of the local Serf instance (serf.go SerfState)."""

    ALIVE = "alive"
    LEAVING = "leaving"
    LEFT = "left"
    SHUTDOWN = "shutdown"


class EventType(enum.StrEnum):
    """Serf's event kinds; the value is Serf's own name for them, as handlers see it in
    ``SERF_EVENT`` and RPC clients in a stream record's ``Event``."""

    MEMBER_JOIN = "member-join"
    MEMBER_LEAVE = "member-leave"
    MEMBER_FAILED = "member-failed"
    MEMBER_UPDATE = "member-update"
    MEMBER_REAP = "member-reap"
    USER = "user"
    QUERY = "query"


MEMBER_EVENT_TYPES = frozenset({EventType.MEMBER_JOIN, EventType.MEMBER_LEAVE,
                                EventType.MEMBER_FAILED, EventType.MEMBER_UPDATE,
                                EventType.MEMBER_REAP})


class LeavePhase(enum.Enum):
    """Where a graceful leave is (Serf's Leave, as steps the timer advances)."""

    NONE = "none"  # not leaving (or done: the state is LEFT)
    INTENT = "intent"  # our leave intent is queued; waiting for it to go out
    MEMBERLIST = "memberlist"  # memberlist broadcasts our dead{From=self}
    PROPAGATE = "propagate"  # LeavePropagateDelay before the state becomes LEFT


class SerfError(Exception):
    """The caller asked for something Serf refuses (the message is Serf's own text)."""


# The longest a query stays open, asked or answered (see "Bounds" above); the agent
# raises it to its handler timeout when that is configured longer.
DEFAULT_MAX_QUERY_TIMEOUT = 300.0


@dataclass(frozen=True, slots=True)
class SerfConfig:
    """Serf library settings (serf/config.go DefaultConfig, with the agent's overrides)."""

    node_name: str
    memberlist: MemberlistConfig
    tags: dict[str, str] = field(default_factory=dict)
    protocol: int = 5  # agent default delegate protocol version
    broadcast_timeout: float = 5.0  # BroadcastTimeout
    leave_propagate_delay: float = 1.0  # LeavePropagateDelay
    reap_interval: float = 15.0  # ReapInterval
    reconnect_interval: float = 30.0  # ReconnectInterval
    reconnect_timeout: float = 24 * 3600.0  # ReconnectTimeout
    tombstone_timeout: float = 24 * 3600.0  # TombstoneTimeout
    recent_intent_timeout: float = 300.0  # RecentIntentTimeout
    flap_timeout: float = 60.0  # FlapTimeout: a failed member back sooner is a flap (metrics)
    queue_check_interval: float = 30.0  # QueueCheckInterval: queue depth samples (metrics)
    event_buffer: int = 512  # EventBuffer
    query_buffer: int = 512  # QueryBuffer
    user_event_size_limit: int = 512  # UserEventSizeLimit (agent default)
    query_size_limit: int = 1024  # QuerySizeLimit
    query_response_size_limit: int = 1024  # QueryResponseSizeLimit
    enable_name_conflict_resolution: bool = True  # EnableNameConflictResolution
    # Bounds on what peers (and RPC clients) make us keep or send; Serf has none of these
    # unless said. What they cut is counted (``counters``) and logged, rate-limited. See
    # "Bounds" in the module docstring for the reasons behind each number.
    max_query_timeout: float = DEFAULT_MAX_QUERY_TIMEOUT  # s: a query open, asked or answered
    max_relay_factor: int = 5  # relayed copies per response we send (Consul's own limit)
    max_answering: int = 256  # queries being answered at once (_answering; oldest evicted)
    max_asking: int = 64  # queries we asked still open (_asking; more is an error)
    max_query_answers: int = 1024  # acks and responses one asked query keeps, at least
    max_query_answer_bytes: int = 1 << 20  # their bytes (names + payloads), at least
    max_query_ids_per_ltime: int = 128  # query IDs one dedup-ring slot remembers
    max_events_per_ltime: int = 512  # user events one dedup-ring slot remembers
    max_event_buffer_bytes: int = 2 << 20  # all events in the ring (also our push/pull)
    max_intents: int = 8192  # buffered intents for nodes we do not know yet
    max_intent_bytes: int = 1 << 20  # their names' bytes (with ENTRY_OVERHEAD each)
    max_pending_events: int = 4096  # user events + queries not yet drained by the agent
    max_queue_depth: int = 4096  # each broadcast queue (Serf MaxQueueDepth)
    max_message_size: int = 64 * 1024  # one Serf message from a peer (a UDP datagram)
    # Where Serf's metrics go (serf.* keys, serfd.base.metrics); none by default.
    metrics: Metrics = NULL_METRICS
    # DisableCoordinates: no Vivaldi coordinate, no ack payload, nothing learnt from acks.
    disable_coordinates: bool = False


@dataclass(frozen=True, slots=True)
class MemberEvent:
    """member-join / member-leave / member-failed / member-update / member-reap."""

    type: EventType  # one of MEMBER_EVENT_TYPES
    members: tuple[Member, ...]


@dataclass(frozen=True, slots=True)
class UserEvent:
    """A user event delivered to this node (handlers arrive with a later issue)."""

    ltime: int
    name: str
    payload: bytes
    coalesce: bool


@dataclass(frozen=True, slots=True)
class JoinError:
    """One address a join could not reach, with why (the driver's or the peer's text)."""

    addr: Addr
    reason: str

    def __str__(self) -> str:
        return f"Failed to join {self.addr[0]}: {self.reason}"


@dataclass(frozen=True, slots=True)
class JoinDone:
    """Every address of :meth:`Serf.join` ``join_id`` has an outcome."""

    join_id: int
    num_joined: int
    errors: tuple[JoinError, ...]  # in the order the addresses were given


@dataclass(frozen=True, slots=True)
class LeaveDone:
    """The graceful leave is over (``state`` is LEFT); ``error`` is why it was cut short."""

    error: str = ""


@dataclass(frozen=True, slots=True)
class ForceLeaveDone:
    """The broadcast of :meth:`Serf.force_leave` ``op_id`` has gone out its last time
    (or was dropped from the queue), as Serf's RemoveFailedNode waits for it."""

    op_id: int


@dataclass(frozen=True, slots=True)
class QueryRecordEvent:
    """One record (ack, response, then exactly one done) of query ``query_id``."""

    query_id: int
    record: QueryRecord


@dataclass(frozen=True, slots=True)
class ConflictLost:
    """Another member holds our name and the cluster's vote went to it: the core has shut
    down (``state`` SHUTDOWN) and the agent must stop, as Serf's agent does."""

    matching: int  # members that vouched for our address
    responses: int  # members that answered the conflict query


# What the agent's handlers and RPC streams see; the others complete a command or end
# the node.
DeliveredEvent = MemberEvent | UserEvent | IncomingQuery
CompletionEvent = JoinDone | LeaveDone | ForceLeaveDone | QueryRecordEvent | ConflictLost
SerfEvent = DeliveredEvent | CompletionEvent


@dataclass(frozen=True, slots=True)
class CoreCounters:
    """What the core counted: drops (Serf's and memberlist's, by reason) and activity
    beyond memberlist that is not a drop (memberlist's ``activity``)."""

    dropped: dict[str, int]
    activity: dict[str, int]

USER_EVENT_SANE_LIMIT = 9 * 1024  # Serf's UserEventSizeLimit constant: the hard maximum
ENTRY_OVERHEAD = 64  # bytes charged per kept entry on top of its strings (byte budgets)


@dataclass(slots=True)
class _Answering:
    """Where and until when this node may answer one incoming query."""

    addr: tuple[str, int]
    source_node: str
    relay_factor: int
    deadline: float
    responded: bool = False


@dataclass(slots=True)
class _MemberState:
    name: str
    addr: str
    port: int
    tags: dict[str, str]
    status: MemberStatus
    status_ltime: int = 0
    leave_time: float = 0.0
    versions: tuple[int, int, int, int, int, int] = (1, 5, 2, 2, 5, 5)

    def snapshot(self) -> Member:
        pmin, pmax, pcur, dmin, dmax, dcur = self.versions
        return Member(
            name=self.name,
            addr=self.addr,
            port=self.port,
            tags=dict(self.tags),
            status=self.status,
            protocol_min=pmin,
            protocol_max=pmax,
            protocol_cur=pcur,
            delegate_min=dmin,
            delegate_max=dmax,
            delegate_cur=dcur,
        )


@dataclass(slots=True)
class _Join:
    """One :meth:`Serf.join` in progress: an outcome slot per address."""

    ignore_old: bool
    intent: bool
    outcomes: list[str | None]  # per address: None = pending, "" = joined, else the error
    addrs: list[Addr]


@dataclass(slots=True)
class _JoinStream:
    """A join push/pull we asked the driver for: whose, which address, or a reconnect."""

    join_id: int | None  # None: a reconnect
    index: int
    deadline: float  # the request's; a driver reports the outcome by then
    name: str = ""  # the reconnect's member


@dataclass(slots=True)
class _Intent:
    type: int  # SerfMsgType.JOIN or LEAVE
    ltime: int
    wall: float


# relayHeader (messages.go): where a relayed message goes.
_RELAY_HEADER = (Field("dest_addr", "DestAddr", ANY), Field("dest_name", "DestName", STR))
_UDP_ADDR = (Field("ip", "IP", BYTES), Field("port", "Port", UINT16))


def _event_cost(name: str, payload: bytes | None) -> int:
    return len(name.encode("utf-8", "surrogateescape")) + len(payload or b"") + ENTRY_OVERHEAD


def _slot_cost(slot: UserEvents | None) -> int:
    return 0 if slot is None else sum(_event_cost(r.name, r.payload) for r in slot.events)


def _intent_cost(name: str) -> int:
    return len(name.encode("utf-8", "surrogateescape")) + ENTRY_OVERHEAD


def _node_addr(node: Node) -> str:
    addr: Any = node.addr
    if isinstance(addr, (bytes, bytearray)):
        return bytes_to_ip(bytes(addr))
    return str(addr)


def _member_obj(m: _MemberState) -> dict[bytes, Any]:
    # serf.Member in the gossip dialect (the _serf_conflict answer), fields sorted.
    pmin, pmax, pcur, dmin, dmax, dcur = m.versions
    try:
        addr: bytes | None = ip_to_bytes(m.addr)
    except ValueError:
        addr = None
    return {
        b"Addr": addr,
        b"DelegateCur": dcur,
        b"DelegateMax": dmax,
        b"DelegateMin": dmin,
        b"Name": m.name.encode("utf-8", "surrogateescape"),
        b"Port": m.port,
        b"ProtocolCur": pcur,
        b"ProtocolMax": pmax,
        b"ProtocolMin": pmin,
        b"Status": int(m.status),
        b"Tags": {k.encode("utf-8", "surrogateescape"): v.encode("utf-8", "surrogateescape")
                  for k, v in m.tags.items()},
    }


def _node_versions(node: Node) -> tuple[int, int, int, int, int, int]:
    vsn = node.vsn or b""
    if len(vsn) >= 6:
        return (vsn[0], vsn[1], vsn[2], vsn[3], vsn[4], vsn[5])
    return (1, 5, 2, 2, 5, 5)


class Serf:
    """Serf membership over a memberlist core (pure: time and randomness passed in)."""

    def __init__(
        self,
        config: SerfConfig,
        rng: random.Random,
        now: float,
        memberlist_factory: Callable[..., Memberlist] = Memberlist,
    ) -> None:
        self.config = config
        self.tags: dict[str, str] = dict(config.tags)
        self.state = SerfState.ALIVE
        self._rng = rng
        self.clock = LamportClock(1)
        self.event_clock = LamportClock(1)
        self.query_clock = LamportClock(1)
        self._members: dict[str, _MemberState] = {}
        self._failed: list[_MemberState] = []
        self._left: list[_MemberState] = []
        self._intents: dict[str, _Intent] = {}
        self._events: deque[SerfEvent] = deque()
        self._pending_user = 0  # user events and queries in _events (max_pending_events)
        self._intent_bytes = 0  # charged for _intents (max_intent_bytes)
        # Commands in progress, each ended by its completion event.
        self._op_seq = 0  # join, force-leave and query ids
        self._joins: dict[int, _Join] = {}
        self._join_streams: dict[int, _JoinStream] = {}  # stream token -> whose
        self._query_ids: dict[PendingQuery, int] = {}  # our public queries' ids
        # Event dedup ring (EventBuffer slots keyed by LTime % size).
        self._event_buffer: list[UserEvents | None] = [None] * config.event_buffer
        self._event_bytes = 0  # what the ring holds, charged as _event_cost
        self._event_min_time = 0
        self._event_join_ignore = False
        self._query_buffer: list[tuple[int, set[int]] | None] = [None] * config.query_buffer
        self._query_min_time = 0
        self._asking: dict[int, PendingQuery] = {}  # our open queries by LTime
        self._answering: dict[tuple[int, int], _Answering] = {}  # (LTime, ID) -> reply info
        self._conflict_query: PendingQuery | None = None
        self._conflict_wanted = False
        self.conflict_lost = False  # we lost a name conflict vote: the agent must stop
        # Serf's metrics (serfd.base.metric_names); drops also count as serfd.dropped.*
        self._metrics = config.metrics
        self.counters: dict[str, int] = DropCounters(config.metrics)
        self.drops = DropLog(log, self.counters)
        # Compiled query tag filters (Go syntax, linear time); refused ones counted here.
        # Peers choose these patterns: their engine work has a budget per second.
        self.regexes = RegexCache(drops=DropLog(log, self.counters, level=logging.INFO),
                                  work_per_second=WORK_PER_SECOND)
        # Name conflicts: memberlist counts them ("conflict"); these only limit the lines.
        self._conflict_log = DropLog(log, {})
        self._self_conflict_log = DropLog(log, {}, level=logging.ERROR)
        # Three broadcast queues as Serf has them; their size estimate is our member count.
        self._intent_q = TransmitLimitedQueue(config.memberlist.retransmit_mult, self._num_nodes)
        self._event_q = TransmitLimitedQueue(config.memberlist.retransmit_mult, self._num_nodes)
        self._query_q = TransmitLimitedQueue(config.memberlist.retransmit_mult, self._num_nodes)
        # Timed work.
        self._next_reap = now + config.reap_interval
        self._next_reconnect = now + config.reconnect_interval
        self._next_queue_check = now + config.queue_check_interval
        self._members_dirty = True  # a status count may have changed (_report_members)
        self._members_reported: tuple[int, ...] = ()
        self._prunes: dict[str, float] = {}  # member name -> when it is erased
        self._leave_phase = LeavePhase.NONE
        self._leave_deadline = 0.0
        self._leave_intent_sent = False
        self._leave_error = ""
        # More internal queries ("install-key" -> answer(q, now)), e.g. serfd.core.keymanager.
        # A hook returning bytes is answered at once; None means it answers later itself.
        self.internal_query_hooks: dict[str, Callable[[IncomingQuery, float], bytes | None]] = {}
        # Network coordinates (Serf's pingDelegate): our Vivaldi client, the coordinates
        # peers' acks carried (ours included), and our ack payload, encoded once per update.
        self._coords: Client | None = None
        self._coord_cache: dict[str, Coordinate] = {}
        self._ack_payload: bytes | None = None
        if not config.disable_coordinates:
            self._coords = Client(CoordinateConfig(), rng)
            self._coord_cache[config.node_name] = self._coords.get_coordinate()
        self._memberlist = memberlist_factory(config.memberlist, self, rng, now)
        self._report_members()

    # ------------------------------------------------------------------ inputs

    def receive_datagram(self, data: bytes, addr: Addr, now: float) -> None:
        """Feed one UDP datagram received from ``addr``."""
        self._memberlist.receive_datagram(data, addr, now)
        self._after_input(now)

    def receive_stream(self, plain: bytes, addr: Addr, now: float) -> bytes | None:
        """Serve one inbound TCP message (decrypted, decompressed); the plain reply, if any."""
        reply = self._memberlist.receive_stream(plain, addr, now)
        self._after_input(now)
        return reply

    def stream_outcome(self, token: int, reply: bytes | None, now: float,
                       error: str = "") -> None:
        """The outcome of a request from :meth:`streams_to_open`: the plain reply, or None
        if the exchange failed, with ``error`` the driver's text for why (Go's, such as
        ``dial tcp 10.0.0.1:7946: connect: connection refused``)."""
        js = self._join_streams.pop(token, None)
        # memberlist times every push/pull it started, joins included (pushPullNode).
        self._memberlist.stream_outcome(token, reply, now, error)
        if js is not None:
            self._join_outcome(js, reply, error, now)
        self._after_input(now)

    def handle_timer(self, now: float) -> None:
        """Run everything due at ``now`` (call it at :meth:`get_timer`)."""
        self._memberlist.handle_timer(now)
        if now >= self._next_reap:
            self._next_reap = now + self.config.reap_interval
            self._reap(now)
        if now >= self._next_reconnect:
            self._next_reconnect = now + self.config.reconnect_interval
            self._reconnect(now)
        if now >= self._next_queue_check:
            # No wake-up of its own: the first timer at or after it (probes every
            # ProbeInterval, the reap every ReapInterval) takes the samples.
            self._next_queue_check = now + self.config.queue_check_interval
            if self._metrics.enabled:
                self._check_queue_depth()
        if self._prunes:
            due = [name for name, t in self._prunes.items() if t <= now]
            for name in due:
                del self._prunes[name]
                m = self._members.get(name)
                if m is not None:
                    self._erase(m)
        self._expire_queries(now)
        if self._conflict_wanted:
            self._run_conflict_resolution(now)
        self._after_input(now)

    def _after_input(self, now: float) -> None:
        # A graceful leave also waits on broadcasts going out (queue progress), which
        # any input may make: advance it here, so no driver ever has to poll for it.
        if self._leave_phase is not LeavePhase.NONE:
            self._advance_leave(now)
        self._report_members()

    def _report_members(self) -> None:
        """serfd.members.<status> gauges, when a count may have changed (one pass over
        the members per input that changed one, only with a sink)."""
        if not self._members_dirty or not self._metrics.enabled:
            return
        self._members_dirty = False
        alive = leaving = left = failed = 0
        for m in self._members.values():
            st = m.status
            if st is MemberStatus.ALIVE:
                alive += 1
            elif st is MemberStatus.FAILED:
                failed += 1
            elif st is MemberStatus.LEFT:
                left += 1
            elif st is MemberStatus.LEAVING:
                leaving += 1
        counts = (alive, leaving, left, failed)
        if counts == self._members_reported:
            return
        self._members_reported = counts
        gauge = self._metrics.gauge
        gauge(("serfd", "members", "alive"), alive)
        gauge(("serfd", "members", "leaving"), leaving)
        gauge(("serfd", "members", "left"), left)
        gauge(("serfd", "members", "failed"), failed)

    def _check_queue_depth(self) -> None:
        """Serf's checkQueueDepth: a sample of each broadcast queue's depth (pruning is
        done as soon as a queue is over its limit, in _enqueue)."""
        sample = self._metrics.sample
        sample(("serf", "queue", "Intent"), len(self._intent_q))
        sample(("serf", "queue", "Event"), len(self._event_q))
        sample(("serf", "queue", "Query"), len(self._query_q))

    # ------------------------------------------------------------------ outputs

    def datagrams_to_send(self) -> list[tuple[bytes, Addr]]:
        """Drain the UDP datagrams to send: (packet, (ip, port))."""
        return self._memberlist.datagrams_to_send()

    def streams_to_open(self) -> list[StreamRequest]:
        """Drain the TCP exchanges to run (push/pulls, fallback pings, reliable user
        messages, joins, reconnects; ``kind`` says which). Each outcome goes back through
        :meth:`stream_outcome` by its ``deadline``."""
        return self._memberlist.streams_to_open()

    def get_timer(self) -> float | None:
        """The next absolute time Serf or memberlist has work to do."""
        times = [self._next_reap, self._next_reconnect]
        ml = self._memberlist.get_timer()
        if ml is not None:
            times.append(ml)
        if self._leave_phase is not LeavePhase.NONE:
            times.append(self._leave_deadline)
        times.extend(self._prunes.values())
        times.extend(pq.deadline for pq in self._asking.values())
        times.extend(a.deadline for a in self._answering.values())
        return min(times)

    def next_event(self) -> SerfEvent | None:
        """The next event (member, user event, incoming query, or a command's
        completion), or None."""
        if not self._events:
            return None
        ev = self._events.popleft()
        if isinstance(ev, UserEvent | IncomingQuery):
            self._pending_user -= 1
        return ev

    def drain_events(self) -> Iterable[SerfEvent]:
        """:meth:`next_event` until there is none."""
        while self._events:
            ev = self.next_event()
            assert ev is not None
            yield ev

    # ------------------------------------------------------------------ read-only views

    def _num_nodes(self) -> int:
        return len(self._members)

    def members(self) -> list[Member]:
        """Every known member, including failed and left ones, as snapshots."""
        return [m.snapshot() for m in self._members.values()]

    def local_member(self) -> Member:
        return self._members[self.config.node_name].snapshot()

    def num_alive(self) -> int:
        """memberlist's NumMembers: nodes not dead or left, ourselves included."""
        return self._memberlist.num_alive()

    def stats(self) -> dict[str, str]:
        """Serf's stats section (serf.go Stats), values as strings; ``coordinate_resets``
        only with coordinates, as Serf."""
        out = {
            "members": str(len(self._members)),
            "failed": str(len(self._failed)),
            "left": str(len(self._left)),
            "health_score": str(self._memberlist.health_score()),
            "member_time": str(self.clock.time()),
            "event_time": str(self.event_clock.time()),
            "query_time": str(self.query_clock.time()),
            "intent_queue": str(len(self._intent_q)),
            "event_queue": str(len(self._event_q)),
            "query_queue": str(len(self._query_q)),
            "encrypted": "false",
        }
        if self._coords is not None:
            out["coordinate_resets"] = str(self._coords.stats.resets)
        return out

    def counters_view(self) -> CoreCounters:
        """Drops counted by Serf and memberlist (one dict, by reason) and memberlist's
        activity counters; copies."""
        dropped = dict(self.counters)
        for k, v in self._memberlist.counters.items():
            dropped[k] = dropped.get(k, 0) + v
        return CoreCounters(dropped, dict(self._memberlist.activity))

    def _count(self, reason: str) -> None:
        self.counters[reason] = self.counters.get(reason, 0) + 1

    def _next_op(self) -> int:
        self._op_seq += 1
        return self._op_seq

    # ------------------------------------------------------------------ commands

    def restore_clocks(self, clock: int, event_clock: int, query_clock: int) -> None:
        """Resume from a snapshot (serf.go Create): witness the saved clocks and ignore
        events and queries up to them, so nothing handled before a restart runs again."""
        self.clock.witness(clock)
        self.event_clock.witness(event_clock)
        self.query_clock.witness(query_clock)
        self._event_min_time = event_clock + 1
        self._query_min_time = query_clock + 1

    def set_internal_query_hook(self, kind: str,
                                hook: Callable[[IncomingQuery, float], bytes | None]) -> None:
        """Answer ``_serf_<kind>`` queries with ``hook(q, now)``: bytes are sent at once,
        None means the hook answers later through :meth:`respond`."""
        self.internal_query_hooks[kind] = hook

    def join(self, addrs: list[Addr], ignore_old: bool, now: float, *,
             intent: bool = True) -> int:
        """Serf.Join: a push/pull (Join=true) with every address, as stream requests.

        Returns the join's id; :class:`JoinDone` with that id comes once every address
        has an outcome. With ``ignore_old`` the user events the pushed states carry are
        not replayed. If any address was joined, our join intent is broadcast (not with
        ``intent=False``: the snapshot rejoin of serf.go's handleRejoin sends none).
        """
        if self.state != SerfState.ALIVE:
            raise SerfError("Serf can't Join after Leave or Shutdown")
        join_id = self._next_op()
        job = _Join(ignore_old, intent, [None] * len(addrs), list(addrs))
        self._joins[join_id] = job
        deadline = now + self.config.memberlist.tcp_timeout
        for i, addr in enumerate(addrs):
            token = self._memberlist.start_join(addr, now, StreamKind.JOIN)
            self._join_streams[token] = _JoinStream(join_id, i, deadline)
        self._maybe_join_done(join_id, now)
        return join_id

    def _join_outcome(self, js: _JoinStream, reply: bytes | None, error: str,
                      now: float) -> None:
        job = self._joins.get(js.join_id) if js.join_id is not None else None
        # Serf's eventJoinIgnore, for exactly this join's merge (joins may overlap).
        self._event_join_ignore = job is not None and job.ignore_old
        try:
            failure = self._merge_join_reply(reply, error, now)
        finally:
            self._event_join_ignore = False
        if js.join_id is None:
            if failure:
                log.debug("reconnect to %s failed: %s", js.name, failure)
            else:
                log.info("reconnected to %s", js.name)
            return
        if job is None:
            return
        job.outcomes[js.index] = failure
        self._maybe_join_done(js.join_id, now)

    def _merge_join_reply(self, reply: bytes | None, error: str, now: float) -> str:
        """Merge a join's push/pull reply; "" if joined, else the reason it was not."""
        if reply is None:
            return error or "no reply"
        if reply[:1] == bytes((MsgType.ERR,)):
            # The peer refused our push/pull (another encryption key, say): its text.
            try:
                text = ErrResp.from_body(reply[1:]).error
            except DecodeError:
                text = "undecodable error response"
            return f"remote error: {text}"
        try:
            self._memberlist.merge_push_pull(reply, True, now)
        except (DecodeError, ProtocolError) as e:
            return str(e) or type(e).__name__
        return ""

    def _maybe_join_done(self, join_id: int, now: float) -> None:
        job = self._joins[join_id]
        if any(o is None for o in job.outcomes):
            return
        del self._joins[join_id]
        joined = sum(1 for o in job.outcomes if o == "")
        errors = tuple(JoinError(addr, o) for addr, o in zip(job.addrs, job.outcomes, strict=True)
                       if o)
        if joined > 0 and job.intent and self.state == SerfState.ALIVE:
            self._broadcast_join(self.clock.time(), now)
        self._events.append(JoinDone(join_id, joined, errors))

    def _broadcast_join(self, ltime: int, now: float) -> None:
        msg = MessageJoin(ltime=ltime, node=self.config.node_name)
        self.clock.witness(ltime)
        self._handle_join_intent(msg, now)
        self._enqueue(self._intent_q, "intent", msg.encode(), now)

    def set_tags(self, tags: dict[str, str], now: float) -> None:
        """Replace our tags and gossip them (memberlist alive with a new incarnation)."""
        if len(encode_tags(tags)) > META_MAX_SIZE:
            raise SerfError(f"Encoded length of tags exceeds limit of {META_MAX_SIZE} bytes")
        self.tags = dict(tags)
        self._memberlist.update_meta(now)

    def set_limits(self, *, user_event_size_limit: int, query_size_limit: int,
                   query_response_size_limit: int, max_query_timeout: float) -> None:
        """Apply the limits a reload may change; they hold for what is sent from now on."""
        self.config = dataclasses.replace(
            self.config, user_event_size_limit=user_event_size_limit,
            query_size_limit=query_size_limit,
            query_response_size_limit=query_response_size_limit,
            max_query_timeout=max_query_timeout)

    def leave(self, now: float) -> None:
        """Start a graceful leave (Serf.Leave); :class:`LeaveDone` comes when it is over
        and ``state`` is LEFT (at once if it already is)."""
        if self.state == SerfState.LEFT:
            self._events.append(LeaveDone())
            return
        if self.state == SerfState.LEAVING:
            raise SerfError("Leave already in progress")
        if self.state == SerfState.SHUTDOWN:
            raise SerfError("Leave called after Shutdown")
        self.state = SerfState.LEAVING
        msg = MessageLeave(ltime=self.clock.time(), node=self.config.node_name)
        self.clock.increment()
        self._handle_leave_intent(msg, now)
        if self._has_alive_members():
            self._leave_intent_sent = False

            def sent() -> None:
                self._leave_intent_sent = True

            self._enqueue(self._intent_q, "intent", msg.encode(), now, on_finished=sent)
            self._leave_phase = LeavePhase.INTENT
            self._leave_deadline = now + self.config.broadcast_timeout
        else:
            self._start_memberlist_leave(now)
        self._advance_leave(now)
        self._report_members()

    def _start_memberlist_leave(self, now: float) -> None:
        self._memberlist.leave(now)
        self._leave_phase = LeavePhase.MEMBERLIST
        self._leave_deadline = now + self.config.broadcast_timeout

    def _advance_leave(self, now: float) -> None:
        phase = self._leave_phase
        if phase is LeavePhase.INTENT:
            if self._leave_intent_sent:
                self._start_memberlist_leave(now)
            elif now >= self._leave_deadline:
                # Serf gives up here with an error; we still tell memberlist so peers
                # see a graceful dead{From=self} rather than a failure.
                self._leave_error = "timeout while waiting for graceful leave"
                self._start_memberlist_leave(now)
        if self._leave_phase is LeavePhase.MEMBERLIST and (
            self._memberlist.leave_broadcast_done() or now >= self._leave_deadline
        ):
            if not self._memberlist.leave_broadcast_done():
                self._leave_error = "timeout waiting for leave broadcast"
            self._leave_phase = LeavePhase.PROPAGATE
            self._leave_deadline = now + self.config.leave_propagate_delay
        if self._leave_phase is LeavePhase.PROPAGATE and now >= self._leave_deadline:
            self._leave_phase = LeavePhase.NONE
            if self.state == SerfState.LEAVING:
                self.state = SerfState.LEFT
            self._events.append(LeaveDone(self._leave_error))

    def force_leave(self, node: str, prune: bool, now: float) -> int | None:
        """Force a member into ``left`` cluster-wide (Serf.RemoveFailedNode). Returns an
        op id if a broadcast was queued: :class:`ForceLeaveDone` with it comes once that
        broadcast has gone out its last time (or was dropped); None if nobody listens."""
        msg = MessageLeave(ltime=self.clock.time(), node=node, prune=prune)
        self.clock.increment()
        self._handle_leave_intent(msg, now)
        self._report_members()
        if not self._has_alive_members():
            return None
        op_id = self._next_op()

        def sent() -> None:
            self._events.append(ForceLeaveDone(op_id))

        self._enqueue(self._intent_q, "intent", msg.encode(), now, on_finished=sent)
        return op_id

    def shutdown(self) -> None:
        """Stop for good (Serf.Shutdown): no more leave, join or query; the queries we
        asked end now (their done records are the last events)."""
        self.state = SerfState.SHUTDOWN
        for pq in list(self._asking.values()):
            self._close_query(pq)

    def _has_alive_members(self) -> bool:
        me = self.config.node_name
        return any(m.status == MemberStatus.ALIVE for n, m in self._members.items() if n != me)

    # ------------------------------------------------------------------ timed work

    def _reap(self, now: float) -> None:
        for lst, timeout in ((self._failed, self.config.reconnect_timeout),
                             (self._left, self.config.tombstone_timeout)):
            for m in [m for m in lst if now - m.leave_time > timeout]:
                lst.remove(m)
                log.info("EventMemberReap: %s", m.name)
                self._erase(m)
        for name in [n for n, i in self._intents.items()
                     if now - i.wall > self.config.recent_intent_timeout]:
            del self._intents[name]
            self._intent_bytes -= _intent_cost(name)
        # A join stream whose outcome never came (a driver that lost it) fails here, so
        # its JoinDone still comes and nothing is kept past the request's deadline.
        for token in [t for t, js in self._join_streams.items() if now > js.deadline]:
            self._count("join_stream_lost")
            self._memberlist.stream_outcome(token, None, now, "i/o timeout")
            self._join_outcome(self._join_streams.pop(token), None, "i/o timeout", now)

    def _reconnect(self, now: float) -> None:
        # serf.go reconnect: maybe one failed member, a memberlist join (no intent).
        if not self._failed or self.state != SerfState.ALIVE:
            return
        alive = len(self._members) - len(self._failed) - len(self._left)
        prob = len(self._failed) / max(1, alive)
        if self._rng.random() > prob:
            return
        m = self._rng.choice(self._failed)
        log.info("attempting reconnect to %s %s:%d", m.name, m.addr, m.port)
        token = self._memberlist.start_join((m.addr, m.port), now, StreamKind.RECONNECT)
        self._join_streams[token] = _JoinStream(None, 0, now + self.config.memberlist.tcp_timeout,
                                                m.name)

    def _erase(self, m: _MemberState) -> None:
        self._members_dirty = True
        if self._members.get(m.name) is m:
            del self._members[m.name]
            if self._coords is not None:
                # As Serf's eraseNode: the latency samples and the cached coordinate go.
                self._coords.forget_node(m.name)
                self._coord_cache.pop(m.name, None)
        if m in self._failed:
            self._failed.remove(m)
        if m in self._left:
            self._left.remove(m)
        self._events.append(MemberEvent(EventType.MEMBER_REAP, (m.snapshot(),)))

    # ------------------------------------------------------------------ memberlist delegate

    def node_meta(self, limit: int) -> bytes:
        meta = encode_tags(self.tags)
        if len(meta) > limit:
            raise SerfError(f"Encoded length of tags exceeds limit of {limit} bytes")
        return meta

    def ack_payload(self) -> bytes | None:
        """Our coordinate for a direct ping's ack (Serf's AckPayload); None when
        coordinates are disabled (Serf registers no ping delegate then)."""
        if self._coords is None:
            return None
        if self._ack_payload is None:
            self._ack_payload = encode_ack_payload(self._coords.get_coordinate())
        return self._ack_payload

    def notify_ping_complete(self, node: Node, rtt: float, payload: bytes | None,
                             now: float) -> None:
        """A direct probe of ``node`` was acked after ``rtt`` seconds with ``payload``:
        learn from its coordinate as Serf's NotifyPingComplete does."""
        if self._coords is None or not payload:
            return
        name = node.name
        if payload[0] != PING_VERSION:
            self.drops.drop("coordinate_bad_version", now,
                            "unsupported ping version %d from %.64s", payload[0], name)
            return
        if name not in self._members:
            # Every probed node is a member (notify_join came first); a race with an
            # erase must not grow the samples or the cache past the member list.
            self.drops.drop("coordinate_unknown_node", now,
                            "coordinate from %.64s, not a member", name)
            return
        try:
            coord = decode_ack_payload(payload)
        except DecodeError as e:
            self.drops.drop("coordinate_decode_error", now,
                            "failed to decode coordinate from ping of %.64s: %s", name, e)
            return
        metrics = self.config.metrics
        before = self._coords.get_coordinate()
        rtt_ns = round(rtt * 1e9)
        try:
            after = self._coords.update(name, coord, rtt_ns)
        except CoordinateError as e:
            metrics.incr(("serf", "coordinate", "rejected"))
            self.drops.drop("coordinate_rejected", now,
                            "rejected coordinate from %.64s: %s", name, e)
            return
        if rtt_ns == 0:
            metrics.incr(("serf", "coordinate", "zero-rtt"))
        metrics.sample(("serf", "coordinate", "adjustment-ms"),
                       before.distance_seconds(after) * 1.0e3)
        self._ack_payload = None
        self._coord_cache[name] = coord
        self._coord_cache[self.config.node_name] = after

    def get_coordinate(self) -> Coordinate:
        """Our own coordinate; SerfError when coordinates are disabled."""
        if self._coords is None:
            raise SerfError("Coordinates are disabled")
        return self._coords.get_coordinate()

    def get_cached_coordinate(self, name: str) -> Coordinate | None:
        """The last coordinate learnt for ``name`` (our own for our name); None when
        unknown or coordinates are disabled (Serf's GetCachedCoordinate)."""
        coord = self._coord_cache.get(name)
        return None if coord is None else coord.clone()

    def coordinate_cache_size(self) -> int:
        """Entries in the coordinate cache (at most the members, ourselves included)."""
        return len(self._coord_cache)

    def has_broadcasts(self) -> bool:
        """Whether get_broadcasts() may return anything (memberlist skips idle gossip
        ticks otherwise)."""
        return bool(len(self._intent_q) or len(self._query_q) or len(self._event_q))

    def get_broadcasts(self, overhead: int, limit: int) -> list[bytes]:
        msgs = self._intent_q.get_broadcasts(overhead, limit)
        used = sum(len(m) + overhead for m in msgs)
        for q in (self._query_q, self._event_q):
            more = q.get_broadcasts(overhead, limit - used)
            used += sum(len(m) + overhead for m in more)
            msgs.extend(more)
        if msgs and self._metrics.enabled:
            sample = self._metrics.sample
            for m in msgs:
                sample(("serf", "msgs", "sent"), len(m))
        return msgs

    def notify_join(self, node: Node, now: float) -> None:
        name = node.name
        m = self._members.get(name)
        if m is None:
            m = _MemberState(name, _node_addr(node), node.port, self._tags_of(node),
                             MemberStatus.ALIVE)
            intent = self._intents.get(name)
            if intent is not None and intent.type == SerfMsgType.JOIN:
                m.status_ltime = intent.ltime
            if intent is not None and intent.type == SerfMsgType.LEAVE:
                m.status = MemberStatus.LEAVING
                m.status_ltime = intent.ltime
            self._members[name] = m
            old = MemberStatus.NONE
        else:
            old = m.status
            if old is MemberStatus.FAILED and now - m.leave_time < self.config.flap_timeout:
                self._metrics.incr(("serf", "member", "flap"))
            m.status = MemberStatus.ALIVE
            m.leave_time = 0.0
            m.addr = _node_addr(node)
            m.port = node.port
            m.tags = self._tags_of(node)
        m.versions = _node_versions(node)
        if old in (MemberStatus.FAILED, MemberStatus.LEFT):
            if m in self._failed:
                self._failed.remove(m)
            if m in self._left:
                self._left.remove(m)
        log.info("EventMemberJoin: %s %s", m.name, m.addr)
        self._members_dirty = True
        self._metrics.incr(("serf", "member", "join"))
        self._events.append(MemberEvent(EventType.MEMBER_JOIN, (m.snapshot(),)))

    def notify_leave(self, node: Node, now: float) -> None:
        m = self._members.get(node.name)
        if m is None:
            return
        if m.status == MemberStatus.LEAVING:
            m.status = MemberStatus.LEFT
            m.leave_time = now
            self._left.append(m)
            kind = EventType.MEMBER_LEAVE
        elif m.status == MemberStatus.ALIVE:
            m.status = MemberStatus.FAILED
            m.leave_time = now
            self._failed.append(m)
            kind = EventType.MEMBER_FAILED
        else:
            log.warning("bad state when leave: %s %s", m.name, m.status.label)
            return
        log.info("Event%s: %s %s",
                 "MemberLeave" if kind is EventType.MEMBER_LEAVE else "MemberFailed",
                 m.name, m.addr)
        self._members_dirty = True
        self._metrics.incr(("serf", "member", m.status.label))  # left | failed
        self._events.append(MemberEvent(kind, (m.snapshot(),)))

    def notify_update(self, node: Node, now: float) -> None:
        m = self._members.get(node.name)
        if m is None:
            return
        m.addr = _node_addr(node)
        m.port = node.port
        m.tags = self._tags_of(node)
        m.versions = _node_versions(node)
        log.info("EventMemberUpdate: %s", m.name)
        self._metrics.incr(("serf", "member", "update"))
        self._events.append(MemberEvent(EventType.MEMBER_UPDATE, (m.snapshot(),)))

    def notify_conflict(self, existing: Node, other: Node) -> None:
        # memberlist counts the refused alive ("conflict"); here only the log line, one
        # per 10 s, as a peer can send as many conflicting alives as it likes.
        now = self._memberlist.now()
        if existing.name == self.config.node_name:
            self._self_conflict_log.drop("self", now,
                                         "name conflict: another node claims our name %s "
                                         "from %s:%d (resolution enabled: %s)", other.name,
                                         _node_addr(other), other.port,
                                         self.config.enable_name_conflict_resolution)
            if self.config.enable_name_conflict_resolution:
                self._start_conflict_resolution()
        else:
            self._conflict_log.drop("other", now, "name conflict for %s: %s:%d and %s:%d",
                                    existing.name, _node_addr(existing), existing.port,
                                    _node_addr(other), other.port)

    def _tags_of(self, node: Node) -> dict[str, str]:
        try:
            return decode_tags(node.meta)
        except DecodeError:
            self._count("bad_tags")
            return {}

    def local_state(self, join: bool) -> bytes:
        return MessagePushPull(
            ltime=self.clock.time(),
            status_ltimes={n: m.status_ltime for n, m in self._members.items()},
            left_members=tuple(m.name for m in self._left),
            event_ltime=self.event_clock.time(),
            events=tuple(self._event_buffer),
            query_ltime=self.query_clock.time(),
        ).encode()

    def merge_remote_state(self, data: bytes, join: bool, now: float) -> None:
        if not data or data[0] != SerfMsgType.PUSH_PULL:
            self._count("bad_remote_state")
            return
        try:
            pp = MessagePushPull.from_body(data[1:])
        except DecodeError as e:
            log.debug("bad remote state: %s", e)
            self._count("bad_remote_state")
            return
        if pp.ltime > 0:
            self.clock.witness(pp.ltime - 1)
        if pp.event_ltime > 0:
            self.event_clock.witness(pp.event_ltime - 1)
        if pp.query_ltime > 0:
            self.query_clock.witness(pp.query_ltime - 1)
        left = set(pp.left_members)
        for name in pp.left_members:
            ltime = min(pp.status_ltimes.get(name, 0) + 1, MAX_LTIME)  # Go would wrap to 0
            self._handle_leave_intent(MessageLeave(ltime=ltime, node=name), now)
        for name, ltime in pp.status_ltimes.items():
            if name not in left:
                self._handle_join_intent(MessageJoin(ltime=ltime, node=name), now)
        if join and self._event_join_ignore and pp.event_ltime > self._event_min_time:
            self._event_min_time = pp.event_ltime
        for slot in pp.events:
            if slot is None:
                continue
            for rec in slot.events:
                self._handle_user_event(
                    MessageUserEvent(ltime=slot.ltime, name=rec.name, payload=rec.payload), now)

    def notify_msg(self, data: bytes, now: float) -> None:
        if not data:
            return
        self._metrics.sample(("serf", "msgs", "received"), len(data))
        if len(data) > self.config.max_message_size:
            self.drops.drop("serf_message_too_large", now,
                            "dropping a %d-byte Serf message (type %d): over %d bytes",
                            len(data), data[0], self.config.max_message_size)
            return
        t = data[0]
        if t == SerfMsgType.RELAY:
            self._handle_relay(data, now)
            return
        if t not in (SerfMsgType.LEAVE, SerfMsgType.JOIN, SerfMsgType.USER_EVENT,
                     SerfMsgType.QUERY, SerfMsgType.QUERY_RESPONSE):
            self._count("unknown_serf_message")
            return
        try:
            msg = decode_serf_message(data)
        except DecodeError as e:
            log.debug("bad serf message type %d: %s", t, e)
            self._count("bad_serf_message")
            return
        if isinstance(msg, MessageLeave):
            if self._handle_leave_intent(msg, now):
                self._enqueue(self._intent_q, "intent", bytes(data), now)
        elif isinstance(msg, MessageJoin):
            if self._handle_join_intent(msg, now):
                self._enqueue(self._intent_q, "intent", bytes(data), now)
        elif isinstance(msg, MessageUserEvent):
            if self._handle_user_event(msg, now):
                self._enqueue(self._event_q, "event", bytes(data), now)
                self._memberlist.fresh_broadcast()
        elif isinstance(msg, MessageQuery):
            if self._handle_query(msg, now):
                self._enqueue(self._query_q, "query", bytes(data), now)
                self._memberlist.fresh_broadcast()
        elif isinstance(msg, MessageQueryResponse):
            self._handle_query_response(msg, now)

    def _handle_relay(self, data: bytes, now: float) -> None:
        # [9][relayHeader][inner...]: forward the inner message unchanged over UDP. Serf
        # forwards any inner message to any address; we forward only what Serf ever
        # relays (a query response) and only to a member we know, so we are no open
        # reflector. The direct response does not depend on relays.
        unpacker = msgpack.Unpacker(raw=True, strict_map_key=False, max_buffer_size=len(data))
        unpacker.feed(data[1:])
        try:
            header = obj_to_struct(_RELAY_HEADER, unpacker.unpack())
            dest = obj_to_struct(_UDP_ADDR, header["dest_addr"])
            ip = bytes_to_ip(dest["ip"] or b"")
        except (DecodeError, ValueError, msgpack.UnpackException) as e:
            log.debug("bad relay message: %s", e)
            self._count("bad_relay")
            return
        inner = data[1 + unpacker.tell():]
        if not inner:
            self._count("bad_relay")
            return
        dest_addr = (ip, dest["port"])
        if inner[0] != SerfMsgType.QUERY_RESPONSE:
            self.drops.drop("relay_refused", now,
                            "refusing to relay a message of type %d to %s:%d", inner[0],
                            *dest_addr)
            return
        m = self._members.get(header["dest_name"])
        if m is None or (m.addr, m.port) != dest_addr:
            self.drops.drop("relay_refused", now,
                            "refusing to relay a response to %.64s at %s:%d: not a member there",
                            header["dest_name"], *dest_addr)
            return
        log.debug("relaying a query response to %.64s at %s:%d", header["dest_name"], *dest_addr)
        self._memberlist.send_user_msg(dest_addr, inner)

    # ------------------------------------------------------------------ intents

    def _handle_leave_intent(self, msg: MessageLeave, now: float) -> bool:
        self.clock.witness(msg.ltime)
        m = self._members.get(msg.node)
        if m is None:
            return self._upsert_intent(msg.node, SerfMsgType.LEAVE, msg.ltime, now)
        if msg.ltime <= m.status_ltime:
            return False
        if msg.node == self.config.node_name and self.state == SerfState.ALIVE:
            log.debug("refuting an older leave intent")
            self._broadcast_join(self.clock.time(), now)
            return False
        m.status_ltime = msg.ltime
        if m.status == MemberStatus.ALIVE:
            m.status = MemberStatus.LEAVING
            self._members_dirty = True
            if msg.prune:
                self._prune(m, now)
            return True
        if m.status == MemberStatus.FAILED:
            m.status = MemberStatus.LEFT
            self._members_dirty = True
            if m in self._failed:
                self._failed.remove(m)
            self._left.append(m)
            log.info("EventMemberLeave (forced): %s %s", m.name, m.addr)
            self._events.append(MemberEvent(EventType.MEMBER_LEAVE, (m.snapshot(),)))
            if msg.prune:
                self._prune(m, now)
            return True
        if m.status in (MemberStatus.LEAVING, MemberStatus.LEFT):
            if msg.prune:
                self._prune(m, now)
            return True
        return False

    def _prune(self, m: _MemberState, now: float) -> None:
        if m.status == MemberStatus.LEAVING:
            delay = self.config.broadcast_timeout + self.config.leave_propagate_delay
            self._prunes.setdefault(m.name, now + delay)  # one per member: the first wins
            return
        log.info("EventMemberReap (forced): %s %s", m.name, m.addr)
        self._erase(m)

    def _handle_join_intent(self, msg: MessageJoin, now: float) -> bool:
        self.clock.witness(msg.ltime)
        m = self._members.get(msg.node)
        if m is None:
            return self._upsert_intent(msg.node, SerfMsgType.JOIN, msg.ltime, now)
        if msg.ltime <= m.status_ltime:
            return False
        m.status_ltime = msg.ltime
        if m.status == MemberStatus.LEAVING:
            m.status = MemberStatus.ALIVE
            self._members_dirty = True
        return True

    def _upsert_intent(self, node: str, kind: int, ltime: int, now: float) -> bool:
        cur = self._intents.get(node)
        if cur is not None and ltime <= cur.ltime:
            return False
        cfg = self.config
        cost = _intent_cost(node)
        if cur is not None:
            del self._intents[node]  # re-inserted last: the dict stays in arrival order
            self._intent_bytes -= cost
        elif cost > cfg.max_intent_bytes:
            self.drops.drop("intents_full", now, "dropping intent for a %d-byte node name",
                            cost - ENTRY_OVERHEAD)
            return False
        while self._intents and (len(self._intents) >= cfg.max_intents
                                 or self._intent_bytes + cost > cfg.max_intent_bytes):
            old = next(iter(self._intents))
            del self._intents[old]
            self._intent_bytes -= _intent_cost(old)
            self.drops.drop("intents_full", now,
                            "%d intents for unknown nodes buffered: forgetting the oldest (%.64s)",
                            len(self._intents) + 1, old)
        self._intents[node] = _Intent(kind, ltime, now)
        self._intent_bytes += cost
        return True

    # ------------------------------------------------------------------ events and queries

    def _in_window(self, clock: LamportClock, min_time: int, buffer_size: int, ltime: int,
                   kind: str, name: str, now: float) -> bool:
        """Witness ``ltime``; False if it is before ``min_time`` or older than the dedup ring
        can remember (Serf's rule for both user events and queries)."""
        clock.witness(ltime)
        if ltime < min_time:
            return False
        cur = clock.time()
        if cur > buffer_size and ltime < cur - buffer_size:
            self.drops.drop(f"{kind}_too_old", now,
                            "received old %s %s from time %d (current: %d)", kind, name, ltime,
                            cur)
            return False
        return True

    def _handle_user_event(self, msg: MessageUserEvent, now: float) -> bool:
        cost = _event_cost(msg.name, msg.payload)
        if cost - ENTRY_OVERHEAD > USER_EVENT_SANE_LIMIT:
            # No Serf sends one this big (its hard limit on an encoded event).
            self.drops.drop("user_event_too_large", now,
                            "dropping user event %.64s of %d bytes: over Serf's limit of %d",
                            msg.name, cost - ENTRY_OVERHEAD, USER_EVENT_SANE_LIMIT)
            return False
        if not self._in_window(self.event_clock, self._event_min_time, len(self._event_buffer),
                               msg.ltime, "event", msg.name, now):
            return False
        idx = msg.ltime % len(self._event_buffer)
        slot = self._event_buffer[idx]
        rec = UserEventRecord(msg.name, msg.payload)
        if slot is not None and slot.ltime == msg.ltime:
            for prev in slot.events:
                if prev.name == rec.name and (prev.payload or b"") == (rec.payload or b""):
                    return False
            if len(slot.events) >= self.config.max_events_per_ltime:
                self.drops.drop("user_events_per_ltime", now,
                                "dropping user event %.64s: already %d events at LTime %d",
                                msg.name, len(slot.events), msg.ltime)
                return False
            freed = 0
            events = (*slot.events, rec)
        else:
            freed = _slot_cost(slot)
            events = (rec,)
        if self._event_bytes - freed + cost > self.config.max_event_buffer_bytes:
            self.drops.drop("event_buffer_full", now,
                            "dropping user event %.64s: the event buffer holds %d bytes",
                            msg.name, self._event_bytes)
            return False
        self._event_bytes += cost - freed
        self._event_buffer[idx] = UserEvents(msg.ltime, events)
        metrics = self._metrics
        if metrics.enabled:
            metrics.incr(("serf", "events"))
            metrics.incr(("serf", "events", metrics.bounded_name(msg.name)))
        self._deliver(UserEvent(msg.ltime, msg.name, msg.payload or b"", msg.cc), now)
        return True

    def user_event(self, name: str, payload: bytes, coalesce: bool, now: float) -> None:
        """Send a user event (Serf.UserEvent); SerfError with Serf's text if over a limit."""
        limit = self.config.user_event_size_limit
        size = len(name.encode("utf-8", "surrogateescape")) + len(payload)
        if size > limit:
            raise SerfError(f"user event exceeds configured limit of {limit} bytes before encoding")
        if size > USER_EVENT_SANE_LIMIT:
            raise SerfError(
                f"user event exceeds sane limit of {USER_EVENT_SANE_LIMIT} bytes before encoding")
        msg = MessageUserEvent(ltime=self.event_clock.time(), name=name, payload=payload or None,
                               cc=coalesce)
        raw = msg.encode()
        if len(raw) > limit:
            raise SerfError(
                f"encoded user event exceeds configured limit of {limit} bytes after encoding")
        if len(raw) > USER_EVENT_SANE_LIMIT:
            raise SerfError(
                f"encoded user event exceeds sane limit of {USER_EVENT_SANE_LIMIT} bytes "
                "before encoding")
        self.event_clock.increment()
        self._handle_user_event(msg, now)
        self._enqueue(self._event_q, "event", raw, now)
        self._memberlist.fresh_broadcast()

    def default_query_timeout(self) -> float:
        """GossipInterval x QueryTimeoutMult x ceil(log10(N+1)), N = alive members."""
        return default_query_timeout(self.config.memberlist.gossip_interval,
                                     self._memberlist.num_alive())

    def query(self, name: str, payload: bytes, param: QueryParam, now: float) -> int:
        """Start a query (Serf.Query); returns its id. Its records come as
        :class:`QueryRecordEvent` s with that id: acks and responses, then one done (at
        the deadline, or sooner once every member it reaches has answered)."""
        pq = self._start_query(name, payload, param, now)
        query_id = self._next_op()
        self._query_ids[pq] = query_id
        self._flush_records(pq)  # our own ack or answer may already be in
        return query_id

    def _flush_records(self, pq: PendingQuery) -> None:
        # Bounded by the query's own bounds: 2 x max_answers + 1 records over its life.
        query_id = self._query_ids.get(pq)
        if query_id is None:
            return  # an internal query (conflict resolution): Serf reads it itself
        for rec in pq.drain():
            self._events.append(QueryRecordEvent(query_id, rec))
        if pq.finished:
            del self._query_ids[pq]

    def _start_query(self, name: str, payload: bytes, param: QueryParam,
                     now: float) -> PendingQuery:
        if self.config.protocol < 4:
            raise SerfError("Feature not supported")
        timeout = param.timeout or self.default_query_timeout()
        cfg = self.config
        if not 0 <= param.relay_factor <= 255:  # a uint8 on the wire
            raise SerfError("relay factor must be between 0 and 255")
        if timeout > cfg.max_query_timeout:
            raise SerfError(f"query timeout of {timeout:g}s exceeds the maximum of "
                            f"{cfg.max_query_timeout:g}s")
        if len(self._asking) >= cfg.max_asking:
            self.drops.drop("asking_full", now, "refusing query %s: %d queries in progress",
                            name, len(self._asking))
            raise SerfError(f"too many queries in progress ({len(self._asking)}): "
                            "try again when one finishes")
        filters = encode_filters(param)
        me = self._members.get(self.config.node_name)
        addr = self.config.memberlist.advertise_addr
        port = self.config.memberlist.advertise_port
        msg = MessageQuery(
            ltime=self.query_clock.time(),
            id=self._rng.getrandbits(31),
            addr=ip_to_bytes(addr),
            port=port,
            source_node=self.config.node_name,
            filters=filters,
            flags=QUERY_FLAG_ACK if param.request_ack else 0,
            relay_factor=param.relay_factor,
            timeout=round(timeout * 1e9),
            name=name,
            payload=payload or None,
        )
        raw = msg.encode()
        if len(raw) > self.config.query_size_limit:
            raise SerfError(f"query exceeds limit of {self.config.query_size_limit} bytes")
        expected = frozenset(
            m.name for m in self._members.values()
            if m.status == MemberStatus.ALIVE
            and filters_match(filters, m.name, self.tags if m is me else m.tags, self.regexes, now)
        )
        # An ack and a response per member, twice over for members that join meanwhile;
        # a response as big as ours may be per member (Serf caps neither).
        members = len(self._members)
        pq = PendingQuery(ltime=msg.ltime, id=msg.id, name=name, deadline=now + timeout,
                          request_ack=param.request_ack, expected=expected,
                          max_answers=max(cfg.max_query_answers, 4 * members),
                          max_bytes=max(cfg.max_query_answer_bytes,
                                        2 * members * cfg.query_response_size_limit))
        self._asking[msg.ltime] = pq
        self._handle_query(msg, now)
        self._enqueue(self._query_q, "query", raw, now)
        self._memberlist.fresh_broadcast()
        return pq

    def respond(self, q: IncomingQuery, payload: bytes, now: float) -> None:
        """Answer a query delivered to us (Query.Respond), once, before its deadline."""
        resp = MessageQueryResponse(ltime=q.ltime, id=q.id, from_=self.config.node_name,
                                    flags=0, payload=payload or None)
        raw = resp.encode()
        limit = self.config.query_response_size_limit
        if len(raw) > limit:
            raise SerfError(f"response exceeds limit of {limit} bytes")
        ans = self._answering.get((q.ltime, q.id))
        if ans is None and now > q.deadline:
            raise SerfError("response is past the deadline")
        if ans is None:
            raise SerfError("query was dropped: too many queries being answered at once")
        if ans.responded:
            raise SerfError("response already sent")
        if now > ans.deadline:
            raise SerfError("response is past the deadline")
        ans.responded = True
        self._send_response(ans, resp, raw, now)

    def _send_response(self, ans: _Answering, resp: MessageQueryResponse, raw: bytes,
                       now: float) -> None:
        ml = self.config.memberlist
        if ans.addr == (ml.advertise_addr, ml.advertise_port):
            self._handle_query_response(resp, now)  # our own query: no trip through the socket
        else:
            self._memberlist.send_user_msg(ans.addr, raw)
        self._relay_response(ans, resp)

    def _relay_response(self, ans: _Answering, resp: MessageQueryResponse) -> None:
        # Serf's relayResponse: a relay-wrapped copy via up to RelayFactor random members.
        k = ans.relay_factor  # at most max_relay_factor (see _handle_query)
        if k == 0 or len(self._members) < k + 1:
            return
        header = pack_gossip({
            b"DestAddr": {b"IP": ip_to_bytes(ans.addr[0]), b"Port": ans.addr[1], b"Zone": b""},
            b"DestName": ans.source_node.encode("utf-8", "surrogateescape"),
        })
        raw = bytes((SerfMsgType.RELAY,)) + header + resp.encode()
        if len(raw) > self.config.query_response_size_limit:
            log.error("failed to relay response: relayed response exceeds limit of %d bytes",
                      self.config.query_response_size_limit)
            return
        me = self.config.node_name
        peers = [m for m in self._members.values()
                 if m.status == MemberStatus.ALIVE and m.name != me and m.versions[1] >= 5]
        for m in self._rng.sample(peers, min(k, len(peers))):
            self._memberlist.send_user_msg((m.addr, m.port), raw)

    def _enqueue(self, q: TransmitLimitedQueue, kind: str, raw: bytes, now: float,
                 on_finished: Callable[[], None] | None = None) -> None:
        # Serf prunes each queue to MaxQueueDepth every QueueCheckInterval (30 s); we do
        # it as soon as one is over, so the bound holds at every instant, and an eighth
        # deeper, so that a flood costs one sort per limit/8 messages, not one each.
        q.queue(raw, on_finished=on_finished)
        # The next gossip tick is reckoned from the latest time memberlist heard of: after
        # an idle spell with no tick armed, that must be now, not its last input.
        self._memberlist.delegate_queued(now)
        limit = self.config.max_queue_depth
        if len(q) > limit:
            keep = limit - limit // 8
            n = len(q) - keep
            q.prune(keep)
            self.drops.drop(f"{kind}_queue_pruned", now,
                            "%s broadcast queue over %d: dropped its %d most-sent messages",
                            kind, limit, n, n=n)

    def _handle_query(self, msg: MessageQuery, now: float) -> bool:
        """Dedup, filter, ack and deliver a query; True if it should be re-gossiped."""
        if not self._in_window(self.query_clock, self._query_min_time, len(self._query_buffer),
                               msg.ltime, "query", msg.name, now):
            return False
        idx = msg.ltime % len(self._query_buffer)
        slot = self._query_buffer[idx]
        if slot is not None and slot[0] == msg.ltime:
            if msg.id in slot[1]:
                return False
            if len(slot[1]) >= self.config.max_query_ids_per_ltime:
                # Not remembered, so not handled either: it could loop through gossip.
                self.drops.drop("query_ids_per_ltime", now,
                                "dropping query %.64s: already %d queries at LTime %d",
                                msg.name, len(slot[1]), msg.ltime)
                return False
            slot[1].add(msg.id)
        else:
            self._query_buffer[idx] = (msg.ltime, {msg.id})
        metrics = self._metrics
        if metrics.enabled:
            metrics.incr(("serf", "queries"))
            metrics.incr(("serf", "queries", metrics.bounded_name(msg.name)))
        rebroadcast = not msg.flags & QUERY_FLAG_NO_BROADCAST
        if not filters_match(msg.filters, self.config.node_name, self.tags, self.regexes, now):
            return rebroadcast
        try:
            addr = (bytes_to_ip(msg.addr or b""), msg.port)
        except ValueError:
            self._count("bad_query_addr")
            return rebroadcast
        cfg = self.config
        timeout = max(0, msg.timeout) / 1e9
        if timeout > cfg.max_query_timeout:
            self.drops.drop("query_timeout_capped", now,
                            "query %.64s from %.64s asks for %gs: answering for at most %gs",
                            msg.name, msg.source_node, timeout, cfg.max_query_timeout)
            timeout = cfg.max_query_timeout
        relay = msg.relay_factor
        if relay > cfg.max_relay_factor:
            self.drops.drop("query_relay_factor_capped", now,
                            "query %.64s from %.64s asks for %d relays: sending at most %d",
                            msg.name, msg.source_node, relay, cfg.max_relay_factor)
            relay = cfg.max_relay_factor
        deadline = now + timeout
        while len(self._answering) >= cfg.max_answering:
            # The oldest goes: a flood of long queries cannot lock out new ones.
            key = next(iter(self._answering))
            del self._answering[key]
            self.drops.drop("answering_full", now,
                            "answering %d queries at once: forgetting the oldest (LTime %d)",
                            cfg.max_answering, key[0])
        ans = _Answering(addr, msg.source_node, relay, deadline)
        self._answering[(msg.ltime, msg.id)] = ans
        if msg.flags & QUERY_FLAG_ACK:
            ack = MessageQueryResponse(ltime=msg.ltime, id=msg.id, from_=self.config.node_name,
                                       flags=QUERY_FLAG_ACK, payload=None)
            self._send_response(ans, ack, ack.encode(), now)
        q = IncomingQuery(msg.ltime, msg.id, msg.name, msg.payload or b"", msg.source_node,
                          deadline)
        if msg.name.startswith(INTERNAL_PREFIX):
            self._internal_query(q, now)
        else:
            self._deliver(q, now)
        return rebroadcast

    def _internal_query(self, q: IncomingQuery, now: float) -> None:
        kind = q.name[len(INTERNAL_PREFIX):]
        if kind == "ping":
            return  # the ack is the answer
        if kind == "conflict":
            node = q.payload.decode("utf-8", "surrogateescape")
            if node == self.config.node_name:
                return  # never answer about ourselves
            log.debug("got conflict resolution query for '%s'", node)
            m = self._members.get(node)
            body = pack_gossip(None if m is None else _member_obj(m))
            try:
                self.respond(q, bytes((SerfMsgType.CONFLICT_RESPONSE,)) + body, now)
            except SerfError as e:
                log.error("failed to respond to conflict query: %s", e)
            return
        hook = self.internal_query_hooks.get(kind)
        if hook is not None:
            answer = hook(q, now)
            if answer is not None:
                try:
                    self.respond(q, answer, now)
                except SerfError as e:
                    log.error("failed to respond to %s query: %s", kind, e)
            return
        self.drops.drop("unhandled_internal_query", now, "unhandled internal query '%.64s'",
                        kind)

    def _handle_query_response(self, resp: MessageQueryResponse, now: float) -> None:
        pq = self._asking.get(resp.ltime)
        if pq is None:
            self.drops.drop("query_response_unexpected", now,
                            "reply for non-running query (LTime: %d, ID: %d) From: %.64s",
                            resp.ltime, resp.id, resp.from_)
            return
        if pq.id != resp.id:
            self.drops.drop("query_response_unexpected", now,
                            "query reply ID mismatch (Local: %d, Response: %d)", pq.id, resp.id)
            return
        if now > pq.deadline:
            return
        metrics = self._metrics
        if metrics.enabled:
            is_ack = bool(resp.flags & QUERY_FLAG_ACK)
            if resp.from_ in (pq.acks if is_ack else pq.responses):
                metrics.incr(("serf", "query_duplicate_acks" if is_ack
                              else "query_duplicate_responses"))
            else:
                metrics.incr(("serf", "query_acks" if is_ack else "query_responses"))
        cut = pq.cut
        pq.add(resp.from_, bool(resp.flags & QUERY_FLAG_ACK), resp.payload or b"")
        if pq.cut > cut:
            self.drops.drop("query_answers_cut", now,
                            "query %s has kept %d answers (%d bytes), its limit: dropping "
                            "the one from %.64s", pq.name, len(pq.acks) + len(pq.responses),
                            pq.used_bytes, resp.from_)
        if pq.complete():
            self._close_query(pq)
        else:
            self._flush_records(pq)

    def _close_query(self, pq: PendingQuery) -> None:
        pq.finish()
        self._asking.pop(pq.ltime, None)
        self._flush_records(pq)
        if pq is self._conflict_query:
            self._conflict_query = None
            self._resolve_conflict(pq)

    def _expire_queries(self, now: float) -> None:
        for pq in [pq for pq in self._asking.values() if now >= pq.deadline]:
            self._close_query(pq)
        for key in [k for k, a in self._answering.items() if now >= a.deadline]:
            del self._answering[key]

    def pending_query_count(self) -> int:
        return len(self._asking)

    # ------------------------------------------------------------------ name conflicts

    def _start_conflict_resolution(self) -> None:
        # memberlist tells us without a time: the query starts at the next timer.
        self._conflict_wanted = self._conflict_query is None

    def _run_conflict_resolution(self, now: float) -> None:
        self._conflict_wanted = False
        try:
            self._conflict_query = self._start_query(
                INTERNAL_PREFIX + "conflict", self.config.node_name.encode(), QueryParam(), now)
        except SerfError as e:
            log.error("failed to start name resolution query: %s", e)

    def _resolve_conflict(self, pq: PendingQuery) -> None:
        ml = self.config.memberlist
        responses = matching = 0
        for rec in pq.drain():
            if rec.type is not QueryRecordType.RESPONSE:
                continue
            if not rec.payload or rec.payload[0] != SerfMsgType.CONFLICT_RESPONSE:
                log.error("invalid conflict query response type: %r", rec.payload[:1])
                continue
            try:
                obj = msgpack.unpackb(rec.payload[1:], raw=True, strict_map_key=False)
                addr = bytes_to_ip(obj[b"Addr"]) if isinstance(obj, dict) else None
                port = obj.get(b"Port") if isinstance(obj, dict) else None
            except (ValueError, KeyError, TypeError, msgpack.UnpackException) as e:
                log.error("failed to decode conflict query response: %s", e)
                continue
            responses += 1
            if addr == ml.advertise_addr and port == ml.advertise_port:
                matching += 1
        majority = responses // 2 + 1
        if matching >= majority:
            log.info("majority in name conflict resolution [%d / %d]", matching, responses)
            return
        log.warning("minority in name conflict resolution, quitting [%d / %d]",
                    matching, responses)
        self.conflict_lost = True
        self.state = SerfState.SHUTDOWN
        self._events.append(ConflictLost(matching, responses))

    def _deliver(self, ev: UserEvent | IncomingQuery, now: float) -> bool:
        # Member events are bounded by the member count; user events and queries by
        # max_pending_events (the agent drains after every input, so this is a guard).
        if self._pending_user >= self.config.max_pending_events:
            self.drops.drop("event_queue_full", now,
                            "event queue full (%d user events and queries waiting): "
                            "dropping %s", self._pending_user, ev.name)
            return False
        self._pending_user += 1
        self._events.append(ev)
        return True


__all__ = [
    "MEMBER_EVENT_TYPES",
    "CompletionEvent",
    "ConflictLost",
    "CoreCounters",
    "DeliveredEvent",
    "EventType",
    "ForceLeaveDone",
    "IncomingQuery",
    "JoinDone",
    "JoinError",
    "LeaveDone",
    "LeavePhase",
    "MemberEvent",
    "QueryRecordEvent",
    "Serf",
    "SerfConfig",
    "SerfError",
    "SerfEvent",
    "SerfState",
    "UserEvent",
]
