"""Deterministic simulation of many sans-IO cores: in-memory network, fake clock.

A core is anything that keeps the driver contract (:class:`Core`): a bare
``Memberlist`` here, a whole ``Serf`` in :mod:`serfd.testing.serf_sim`. The simulator
is their driver, as the agent's ``GossipDriver`` is on real sockets: it feeds them
datagrams, inbound streams, stream outcomes and timers, and drains what they produce.

One event heap drives everything: datagram deliveries, stream legs and each core's
next timer. Loss, delay and partitions apply to datagrams; streams (TCP) are reliable
but fail (reply None, with the error text a dialer would give, at their deadline)
across a partition or to a crashed node. All randomness comes from one seeded
``random.Random``, so a run is a pure function of its seed.
"""

from __future__ import annotations

import gc
import heapq
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from serfd.memberlist.swim import Addr, Memberlist, MemberlistConfig, Node, StreamRequest
from serfd.wire.messages import NodeStateType, PushNodeState, ip_to_bytes


@dataclass
class Event:
    """One notification a core gave its delegate."""

    at: float
    observer: str
    kind: str  # join, leave, update, conflict, msg, merge
    node: str
    state: NodeStateType | None = None
    incarnation: int = 0


class FakeDelegate:
    """The smallest Serf stand-in: fixed meta, no user state, records every notification."""

    def __init__(self, name: str, sink: Callable[[Event], None], meta: bytes = b"") -> None:
        self.name = name
        self.meta = meta
        self.sink = sink
        self.user_msgs: list[bytes] = []
        self.user_broadcasts: list[bytes] = []
        self.remote_states: list[tuple[bytes, bool]] = []
        self.state = b""

    def node_meta(self, limit: int) -> bytes:
        return self.meta[:limit]

    def notify_msg(self, data: bytes, now: float) -> None:
        self.user_msgs.append(data)
        self.sink(Event(now, self.name, "msg", ""))

    def has_broadcasts(self) -> bool:
        return bool(self.user_broadcasts)

    def get_broadcasts(self, overhead: int, limit: int) -> list[bytes]:
        out: list[bytes] = []
        used = 0
        while self.user_broadcasts and used + overhead + len(self.user_broadcasts[0]) <= limit:
            msg = self.user_broadcasts.pop(0)
            used += overhead + len(msg)
            out.append(msg)
        return out

    def local_state(self, join: bool) -> bytes:
        return self.state

    def merge_remote_state(self, data: bytes, join: bool, now: float) -> None:
        self.remote_states.append((data, join))

    def notify_join(self, node: Node, now: float) -> None:
        self.sink(Event(now, self.name, "join", node.name, node.state, node.incarnation))

    def notify_leave(self, node: Node, now: float) -> None:
        self.sink(Event(now, self.name, "leave", node.name, node.state, node.incarnation))

    def notify_update(self, node: Node, now: float) -> None:
        self.sink(Event(now, self.name, "update", node.name, node.state, node.incarnation))

    def notify_conflict(self, existing: Node, other: Node) -> None:
        self.sink(Event(-1.0, self.name, "conflict", existing.name))

    def ack_payload(self) -> bytes | None:
        return None


class Core(Protocol):
    """The sans-IO driver contract that Memberlist and Serf both keep."""

    def datagrams_to_send(self) -> list[tuple[bytes, Addr]]: ...

    def streams_to_open(self) -> list[StreamRequest]: ...

    def get_timer(self) -> float | None: ...

    def handle_timer(self, now: float) -> None: ...

    def receive_datagram(self, data: bytes, addr: Addr, now: float) -> None: ...

    def receive_stream(self, plain: bytes, addr: Addr, now: float) -> bytes | None: ...

    def stream_outcome(self, token: int, reply: bytes | None, now: float,
                       error: str = "") -> None: ...


@dataclass
class SimNode:
    name: str
    addr: Addr
    core: Core
    delegate: FakeDelegate | None = None  # a bare memberlist's stand-in for Serf
    up: bool = True
    host_up: bool = True  # when down, its host is gone too: streams to it time out
    wake: float = float("inf")  # time of this node's pending timer event in the heap


@dataclass
class Stats:
    datagrams: int = 0
    dropped: int = 0
    bytes: int = 0
    streams: int = 0
    timer_calls: int = 0


@dataclass
class Sim:
    """N cores on a fake network. ``run_until(t)`` advances the clock to ``t``."""

    seed: int = 1
    loss: float = 0.0
    delay: tuple[float, float] = (0.0005, 0.002)
    config: dict[str, Any] = field(default_factory=dict)
    now: float = 0.0
    # Keep every delegate notification in ``events`` (a 1,000-node cluster makes a
    # million of them; ``on_event`` sees them either way).
    record_events: bool = True

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)
        self.nodes: dict[str, SimNode] = {}
        self.by_addr: dict[Addr, SimNode] = {}
        self.events: list[Event] = []
        self.stats = Stats()
        self._heap: list[tuple[float, int, int, Any]] = []
        self._seq = 0
        self._groups: dict[str, int] | None = None  # partition: name -> group id
        self.on_event: Callable[[Event], None] | None = None
        # Sees every stream request a core makes: (requester's name, request).
        self.on_stream: Callable[[str, StreamRequest], None] | None = None

    # -------------------------------------------------------------- building the cluster

    def add_node(self, name: str, meta: bytes = b"", **overrides: Any) -> SimNode:
        """Start a core called ``name`` at the current time, on its own address."""
        i = len(self.by_addr) + 1
        addr = (f"10.{i // 65536}.{(i // 256) % 256}.{i % 256}", 7946)
        return self.start_core(name, addr, meta, **overrides)

    def start_core(self, name: str, addr: Addr, meta: bytes = b"", **overrides: Any) -> SimNode:
        """Start (or restart) a core called ``name`` at ``addr``."""
        cfg_values = {"enable_compression": False, **self.config, **overrides}
        cfg = MemberlistConfig(
            name=name, advertise_addr=addr[0], advertise_port=addr[1], **cfg_values
        )
        delegate = FakeDelegate(name, self._record, meta)
        core = Memberlist(cfg, delegate, random.Random(self.rng.getrandbits(64)), self.now)
        node = SimNode(name, addr, core, delegate)
        self.nodes[name] = node
        self.by_addr[addr] = node
        self._service(node)
        return node

    def add_converged(self, names: list[str], meta: bytes = b"") -> list[SimNode]:
        """Start a bare memberlist core per name, each already knowing all of them alive,
        with no gossip left to send about it: a converged cluster, built without
        the N^2 x retransmit-limit messages that gossiping it would take."""
        # N^2 long-lived records: the cyclic collector would rescan them all again and
        # again while they are made (a third of the time at N = 1,000), so it waits.
        collecting = gc.isenabled()
        gc.disable()
        try:
            nodes = [self.add_node(name, meta) for name in names]
            states = []
            for node in nodes:
                me = self.ml(node.name).local_node()
                states.append(PushNodeState(me.name, ip_to_bytes(me.addr), me.port, me.meta,
                                            me.incarnation, int(me.state), me.vsn))
            for node in nodes:
                self.ml(node.name).preload(states, self.now)
                self._service(node)
        finally:
            if collecting:
                gc.enable()
        return nodes

    def service(self, name: str) -> None:
        """Flush what a core produced outside a timer or datagram (a local command)."""
        self._service(self.nodes[name])

    def ml(self, name: str) -> Memberlist:
        """The bare memberlist core of ``name`` (a node started by :meth:`add_node`)."""
        core = self.nodes[name].core
        assert isinstance(core, Memberlist), f"{name} is not a bare memberlist node"
        return core

    def join(self, name: str, other: str) -> None:
        """Explicit join: a push/pull with Join=true from ``name`` to ``other``."""
        self.ml(name).start_push_pull(self.nodes[other].addr, True, self.now)
        self._service(self.nodes[name])

    def crash(self, name: str, host: bool = False) -> None:
        """The node stops: no timers, nothing delivered to it, its streams fail (at their
        deadline, as every failed stream here): refused (a process that died: its host
        answers a connect with a reset), or with ``host`` with no answer, a timeout (the
        machine is gone)."""
        node = self.nodes[name]
        node.up = False
        node.host_up = not host

    def partition(self, *groups: list[str]) -> None:
        """Only nodes in the same group can talk; nodes in no group are isolated."""
        self._groups = {n: gi for gi, g in enumerate(groups) for n in g}

    def heal(self) -> None:
        self._groups = None

    # -------------------------------------------------------------- running

    def run_until(
        self, t: float, check: Callable[[], bool] | None = None, every: float = 0.1
    ) -> bool:
        """Advance to ``t``; with ``check`` (tested every ``every`` simulated seconds),
        stop early and return True as soon as it holds."""
        if check is not None:
            while self.now < t:
                self._run(min(t, self.now + every))
                if check():
                    return True
            return False
        self._run(t)
        return False

    def _run(self, t: float) -> None:
        heap = self._heap
        while heap and heap[0][0] <= t:
            when, _, kind, payload = heapq.heappop(heap)
            self.now = when
            if kind == 0:
                self._on_timer(payload, when)
            elif kind == 1:
                self._on_datagram(payload)
            else:
                self._on_stream(payload)
        self.now = t

    def run_for(self, dt: float) -> None:
        self.run_until(self.now + dt)

    def live(self) -> list[SimNode]:
        return [n for n in self.nodes.values() if n.up]

    def view(self, observer: str, name: str) -> NodeStateType | None:
        node = self.ml(observer).get_node(name)
        return node.state if node is not None else None

    def converged(self) -> bool:
        """Every live node sees every live node alive."""
        live = self.live()
        names = [n.name for n in live]
        for n in live:
            core = self.ml(n.name)
            for name in names:
                rec = core.get_node(name)
                if rec is None or rec.state != NodeStateType.ALIVE:
                    return False
        return True

    # -------------------------------------------------------------- internals

    def _record(self, ev: Event) -> None:
        if ev.at < 0:
            ev.at = self.now
        if self.record_events:
            self.events.append(ev)
        if self.on_event is not None:
            self.on_event(ev)

    def _push(self, when: float, kind: int, payload: Any) -> None:
        self._seq += 1
        heapq.heappush(self._heap, (when, self._seq, kind, payload))

    def _can_talk(self, a: str, b: str) -> bool:
        g = self._groups
        if g is None:
            return True
        ga = g.get(a)
        return ga is not None and ga == g.get(b)

    def _service(self, node: SimNode) -> None:
        """Collect a core's output and re-arm its timer."""
        core = node.core
        rng = self.rng
        lo, hi = self.delay
        for data, dst in core.datagrams_to_send():
            self.stats.datagrams += 1
            self.stats.bytes += len(data)
            target = self.by_addr.get(dst)
            if target is None or not self._can_talk(node.name, target.name):
                self.stats.dropped += 1
                continue
            if self.loss and rng.random() < self.loss:
                self.stats.dropped += 1
                continue
            self._push(self.now + rng.uniform(lo, hi), 1, (target, data, node.addr))
        for req in core.streams_to_open():
            self.stats.streams += 1
            if self.on_stream is not None:
                self.on_stream(node.name, req)
            self._push(self.now + rng.uniform(lo, hi), 2, (node, req, "request", None, ""))
        # Re-armed whenever the core's next deadline moved, later too, as the agent's
        # driver does (the event left in the heap for the old one is ignored).
        t = core.get_timer()
        if t is None:
            node.wake = float("inf")
        elif t != node.wake:
            node.wake = t
            self._push(t, 0, node)

    def _on_timer(self, node: SimNode, when: float) -> None:
        if when != node.wake or not node.up:
            return
        node.wake = float("inf")
        self.stats.timer_calls += 1
        node.core.handle_timer(when)
        self._service(node)

    def _on_datagram(self, payload: tuple[SimNode, bytes, Addr]) -> None:
        target, data, src = payload
        if not target.up or self.by_addr.get(target.addr) is not target:
            return
        target.core.receive_datagram(data, src, self.now)
        self._service(target)

    def _on_stream(self, payload: tuple[SimNode, StreamRequest, str, bytes | None, str]) -> None:
        node, req, leg, reply, error = payload
        if leg == "request":
            target = self.by_addr.get(req.addr)
            if target is None or not target.up or not self._can_talk(node.name, target.name):
                # No answer: the requester's side gives up at the deadline, with the
                # text a dialer would give (nobody there, or nothing comes back; a
                # reset from a crashed node's host does not cross a partition).
                refused = target is None or (not target.up and target.host_up
                                             and self._can_talk(node.name, target.name))
                why = "connect: connection refused" if refused else "i/o timeout"
                error = f"dial tcp {req.addr[0]}:{req.addr[1]}: {why}"
                self._push(max(self.now, req.deadline), 2, (node, req, "reply", None, error))
                return
            out = target.core.receive_stream(req.plain, node.addr, self.now)
            self._service(target)
            lo, hi = self.delay
            back = out if req.expect_reply else None
            when = min(self.now + self.rng.uniform(lo, hi), req.deadline)
            self._push(when, 2, (node, req, "reply", back, ""))
        else:
            if not node.up or self.nodes.get(node.name) is not node:
                return
            node.core.stream_outcome(req.token, reply, self.now, error)
            self._service(node)
