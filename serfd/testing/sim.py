"""Deterministic simulation of many sans-IO cores: in-memory network, fake clock.

A core is anything that keeps the driver contract (:class:`Core`): a bare
``Memberlist`` here, a whole ``Serf`` in :mod:`serfd.testing.serf_sim`. The simulator
is their driver, as the agent's ``GossipDriver`` is on real sockets: it feeds them
datagrams, inbound streams, stream outcomes and timers, and drains what they produce.

One event heap drives everything: datagram deliveries, stream legs and each core's
next timer. Loss, delay (``delay`` for every pair, or per pair with
:meth:`Sim.set_link_delay`) and partitions apply to datagrams, delays to stream legs
too; streams (TCP) are reliable but fail (reply None, with the error text a dialer
would give, at their deadline) across a partition or to a crashed node. All
randomness comes from one seeded ``random.Random``, so a run is a pure function of its
seed.

By default a core handles each input the instant it arrives. With ``cpu=Machine(...)``
(:mod:`serfd.testing.cpu`) every input is a job that costs CPU time, waits for its node
and a free core of the shared machine, and lets out what it produced when it ends.
"""

from __future__ import annotations

import gc
import heapq
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from serfd.memberlist.swim import Addr, Memberlist, MemberlistConfig, Node, StreamRequest
from serfd.testing.cpu import Machine, Work, packet_shape
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
    timer_queued: bool = False  # a timer job waits for the CPU (Sim.cpu)


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
    # A shared machine: inputs cost CPU time (serfd.testing.cpu); None: they are free.
    cpu: Machine | None = None

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)
        self.nodes: dict[str, SimNode] = {}
        self.by_addr: dict[Addr, SimNode] = {}
        self.events: list[Event] = []
        self.stats = Stats()
        self._heap: list[tuple[float, int, int, Any]] = []
        self._seq = 0
        self._groups: dict[str, int] | None = None  # partition: name -> group id
        # One-way delay range per pair of node names (both directions); else ``delay``.
        self._links: dict[frozenset[str], tuple[float, float]] = {}
        self.on_event: Callable[[Event], None] | None = None
        # Sees every stream request a core makes: (requester's name, request).
        self.on_stream: Callable[[str, StreamRequest], None] | None = None
        # Sees every datagram a core sends: (sender's name, datagram, destination).
        self.on_datagram: Callable[[str, bytes, Addr], None] | None = None
        self._settled: set[int] = set()  # stream requests with an outcome (Sim.cpu)
        if self.cpu is not None:
            self.cpu.compression = bool(self.config.get("enable_compression", False))

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

    def set_link_delay(self, a: str, b: str, lo: float, hi: float | None = None) -> None:
        """Between ``a`` and ``b`` (both ways) a datagram or stream leg takes ``lo`` to
        ``hi`` seconds (``hi`` = ``lo``: fixed) instead of ``delay``. Draws stay one per
        message, so a run remains a pure function of the seed."""
        self._links[frozenset((a, b))] = (lo, lo if hi is None else hi)

    def _delay(self, a: str, b: str | None) -> float:
        lo, hi = self.delay
        if self._links and b is not None:
            lo, hi = self._links.get(frozenset((a, b)), (lo, hi))
        return self.rng.uniform(lo, hi)

    def _name_at(self, addr: Addr) -> str | None:
        node = self.by_addr.get(addr)
        return None if node is None else node.name

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
            elif kind == 2:
                self._on_stream(payload)
            elif kind == 3:
                self._job_done(payload)
            else:
                payload()
        self.now = t

    def run_for(self, dt: float) -> None:
        self.run_until(self.now + dt)

    def at(self, when: float, callback: Callable[[], None]) -> None:
        """Call ``callback()`` at virtual time ``when`` (not before now)."""
        self._push(max(when, self.now), 4, callback)

    def cpu_task(self, owner: object, cost: float, *, start: Callable[[], None] | None = None,
                 then: Callable[[], None] | None = None) -> None:
        """Queue ``cost`` CPU seconds of other work on the shared machine (``cpu``) for
        ``owner``: a node (an RPC it serves, say) or any object standing for another
        process. It waits its turn like a node's inputs; ``start()`` is called when it
        starts, ``then()`` when it ends."""
        if self.cpu is None:
            raise ValueError("cpu_task needs a shared machine (Sim(cpu=Machine(...)))")
        self._submit(owner, ("task", self.now, cost, start, then))

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
        self._send(node, core.datagrams_to_send(), core.streams_to_open(), None)
        self._arm(node)

    def _arm(self, node: SimNode) -> None:
        # Re-armed whenever the core's next deadline moved, later too, as the agent's
        # driver does (the event left in the heap for the old one is ignored). A timer
        # job waiting for the CPU re-arms when it ends.
        if node.timer_queued:
            return
        t = node.core.get_timer()
        if t is None:
            node.wake = float("inf")
        elif t != node.wake:
            node.wake = t
            self._push(t, 0, node)

    def _send(self, node: SimNode, datagrams: list[tuple[bytes, Addr]],
              streams: list[StreamRequest],
              shapes: list[tuple[int, int, bool]] | None) -> None:
        """Put what ``node`` produced on the network, now."""
        rng = self.rng
        for i, (data, dst) in enumerate(datagrams):
            self.stats.datagrams += 1
            if self.on_datagram is not None:
                self.on_datagram(node.name, data, dst)
            self.stats.bytes += len(data)
            target = self.by_addr.get(dst)
            if target is None or not self._can_talk(node.name, target.name):
                self.stats.dropped += 1
                continue
            if self.loss and rng.random() < self.loss:
                self.stats.dropped += 1
                continue
            shape = shapes[i] if shapes is not None else None
            self._push(self.now + self._delay(node.name, target.name), 1,
                       (target, data, node.addr, shape))
        for req in streams:
            self.stats.streams += 1
            if self.on_stream is not None:
                self.on_stream(node.name, req)
            self._push(self.now + self._delay(node.name, self._name_at(req.addr)), 2,
                       (node, req, "request", None, ""))

    def _on_timer(self, node: SimNode, when: float) -> None:
        if when != node.wake or not node.up:
            return
        node.wake = float("inf")
        if self.cpu is not None:
            if not node.timer_queued:
                node.timer_queued = True
                self._submit(node, ("timer", when))
            return
        self.stats.timer_calls += 1
        node.core.handle_timer(when)
        self._service(node)

    def _on_datagram(self, payload: tuple[SimNode, bytes, Addr,
                                          tuple[int, int, bool] | None]) -> None:
        target, data, src, shape = payload
        if not target.up or self.by_addr.get(target.addr) is not target:
            return
        if self.cpu is not None:
            self._submit(target, ("datagram", self.now, data, src,
                                  shape if shape is not None else packet_shape(data)))
            return
        target.core.receive_datagram(data, src, self.now)
        self._service(target)

    def _on_stream(self, payload: tuple[SimNode, StreamRequest, str, bytes | None, str]) -> None:
        node, req, leg, reply, error = payload
        if self.cpu is not None:
            self._on_stream_cpu(node, req, leg, reply, error)
            return
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
            back = out if req.expect_reply else None
            when = min(self.now + self._delay(node.name, target.name), req.deadline)
            self._push(when, 2, (node, req, "reply", back, ""))
        else:
            if not node.up or self.nodes.get(node.name) is not node:
                return
            node.core.stream_outcome(req.token, reply, self.now, error)
            self._service(node)

    # -------------------------------------------------------------- the shared machine

    def _submit(self, node: object, job: tuple[Any, ...]) -> None:
        assert self.cpu is not None
        self.cpu.submit(node, job)
        self._start_jobs()

    def _start_jobs(self) -> None:
        cpu = self.cpu
        assert cpu is not None
        while (started := cpu.next_job()) is not None:
            owner, job = started
            if not self._start_job(owner, job):
                cpu.finish(owner)

    def _start_job(self, owner: object, job: tuple[Any, ...]) -> bool:
        """Run ``job`` for ``owner`` now; False if its node is gone (nothing ran)."""
        cpu = self.cpu
        assert cpu is not None
        kind, arrived = job[0], job[1]
        if kind == "task":
            _, _, cost, start, then = job
            if start is not None:
                start()
            cpu.charge(kind, cost, self.now, arrived)
            self._push(self.now + cost, 4, lambda: self._task_done(owner, then))
            return True
        assert isinstance(owner, SimNode)
        node = owner
        if not node.up or self.nodes.get(node.name) is not node:
            if kind == "timer":
                node.timer_queued = False
            elif kind == "serve":
                self._reply(job[2], job[3], None, False)
            return False
        core = node.core
        now = self.now
        reply_to: tuple[SimNode, StreamRequest, bytes | None] | None = None
        measure = cpu.measure
        t0 = time.perf_counter() if measure is not None else 0.0
        # What the input was: (messages, plain bytes, compressed); nothing for a timer.
        shape: tuple[int, int, bool] = (0, 0, False)
        if kind == "timer":
            node.timer_queued = False
            self.stats.timer_calls += 1
            core.handle_timer(now)
        elif kind == "datagram":
            _, _, data, src, shape = job
            core.receive_datagram(data, src, now)
        elif kind == "serve":
            _, _, requester, req = job
            out = core.receive_stream(req.plain, requester.addr, now)
            reply_to = (requester, req, out if req.expect_reply else None)
            shape = (1, len(req.plain), cpu.compression)
        else:  # outcome
            _, _, req, reply, error = job
            core.stream_outcome(req.token, reply, now, error)
            shape = (1, len(reply or b""), cpu.compression and reply is not None)
        datagrams = core.datagrams_to_send()
        streams = core.streams_to_open()
        events = self._delivered(node)
        if measure is not None:
            elapsed = time.perf_counter() - t0
        shapes = [packet_shape(data) for data, _ in datagrams]
        reply_len = len(reply_to[2] or b"") if reply_to is not None else 0
        work = Work(kind, shape[0], shape[1], shape[2], events,
                    [sh[1] for sh in shapes], [len(r.plain) for r in streams], reply_len)
        cost = cpu.cost(work)
        if measure is not None:
            measure.append((work, elapsed))
        cpu.charge(kind, cost, now, arrived)
        self._push(now + cost, 3, (node, datagrams, shapes, streams, reply_to))
        return True

    def _task_done(self, owner: object, then: Callable[[], None] | None) -> None:
        assert self.cpu is not None
        self.cpu.finish(owner)
        if then is not None:
            then()
        self._start_jobs()

    def _delivered(self, node: SimNode) -> int:
        """Drain the events ``node``'s core delivered in a job (keeping them for the
        test); how many members they carried (an agent's work is per member)."""
        return 0

    def _job_done(self, payload: tuple[SimNode, list[tuple[bytes, Addr]],
                                       list[tuple[int, int, bool]], list[StreamRequest],
                                       tuple[SimNode, StreamRequest, bytes | None] | None]
                  ) -> None:
        node, datagrams, shapes, streams, reply_to = payload
        cpu = self.cpu
        assert cpu is not None
        cpu.finish(node)
        alive = node.up and self.nodes.get(node.name) is node
        if alive:
            self._send(node, datagrams, streams, shapes)
            self._arm(node)
        if reply_to is not None:
            requester, req, out = reply_to
            self._reply(requester, req, out if alive else None, alive)
        self._start_jobs()

    def _reply(self, requester: SimNode, req: StreamRequest, out: bytes | None,
               served: bool) -> None:
        """A served stream's reply (or, from a node that went away, a reset) leaves now;
        after the requester's deadline it is moot (see _on_stream_cpu)."""
        error = "" if served else f"read tcp {req.addr[0]}:{req.addr[1]}: connection reset by peer"
        self._push(self.now + self._delay(requester.name, self._name_at(req.addr)), 2,
                   (requester, req, "reply", out, error))

    def _on_stream_cpu(self, node: SimNode, req: StreamRequest, leg: str,
                       reply: bytes | None, error: str) -> None:
        if leg == "request":
            target = self.by_addr.get(req.addr)
            if target is None or not target.up or not self._can_talk(node.name, target.name):
                why = ("connect: connection refused" if target is None or not target.up
                       else "i/o timeout")
                error = f"dial tcp {req.addr[0]}:{req.addr[1]}: {why}"
                self._push(max(self.now, req.deadline), 2, (node, req, "failed", None, error))
                return
            # The requester gives up at the deadline unless the reply came first.
            self._push(req.deadline, 2, (node, req, "deadline", None,
                                         f"read tcp {req.addr[0]}:{req.addr[1]}: i/o timeout"))
            self._submit(target, ("serve", self.now, node, req))
            return
        if leg != "failed":
            # "reply" and "deadline" both come; the first one is the outcome. (The
            # pending second leg keeps ``req`` alive, so its id is not reused before.)
            token = id(req)
            if token in self._settled:
                self._settled.discard(token)
                return
            self._settled.add(token)
        if not node.up or self.nodes.get(node.name) is not node:
            return
        self._submit(node, ("outcome", self.now, req, reply, error))

