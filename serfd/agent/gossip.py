"""The gossip driver: the one asyncio object between the sans-IO Serf core and the network.

Theory of operation
-------------------
:class:`GossipDriver` owns the gossip UDP socket, the TCP listener, every TCP stream
task and the single timer (armed on a :class:`~serfd.agent.clock.Clock`); the
:class:`~serfd.core.serf.Serf` core owns every decision. Each input (a datagram, an
inbound TCP message, the outcome of an outbound stream, the timer, a command) is handed
to the core with ``now = clock.now()``, then :meth:`GossipDriver.pump` drains what the
core produced:

1. datagrams to send go out on the UDP socket;
2. stream requests (push/pull, fallback pings, reliable user messages, joins,
   reconnects) become tasks, at most ``MAX_OUTBOUND_STREAMS`` at once (joins, which an
   operator asked for, are not held back); each outcome goes back through
   ``serf.stream_outcome``, a failure with Go's text for it;
3. events: member events, user events and incoming queries go to ``on_event``; the
   completion events resolve what a command is waiting on: ``JoinDone`` a
   :meth:`join_addrs`, ``LeaveDone`` a :meth:`leave`, ``ForceLeaveDone`` a
   :meth:`force_leave`, ``QueryRecordEvent`` a :meth:`query`'s callback (one loop
   iteration later, so an RPC header always goes first);
   ``ConflictLost`` (we lost a name conflict vote) goes to ``on_conflict_lost``;
4. the one timer is re-armed for ``serf.get_timer()``; each firing tells ``loop_lag``
   (:class:`~serfd.agent.looplag.LoopLag`) how late the loop ran it;
5. ``on_pump`` is called (the snapshot recorder looks whether a clock moved).

Nothing here polls: every wait is a future resolved by a core event.

Metrics: memberlist's ``tcp.accept`` (each inbound stream), ``tcp.connect`` (each
push/pull we connected: periodic, join, reconnect) and ``tcp.sent`` (bytes of each
stream message we write) are counted here, where memberlist's transport counts them.

Bounds (issue 8): inbound streams at most ``MAX_INBOUND_STREAMS`` (``tcp_too_many``),
outbound ones ``MAX_OUTBOUND_STREAMS`` (``tcp_outbound_too_many``; the core sees the
refused ones fail), all stream reads together at most ``STREAM_BYTES_BUDGET`` bytes
(``tcp_over_budget``), each message at most ``STREAM_MAX_SIZE``; counted in the
``counters`` the driver is given.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import socket
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any

from serfd.agent.clock import Clock, Timer
from serfd.agent.looplag import LoopLag
from serfd.agent.tasks import TaskSet
from serfd.base.metrics import NULL_METRICS, Metrics
from serfd.base.ratelog import DropLog
from serfd.core.coordinate import Coordinate
from serfd.core.member import Member
from serfd.core.query import IncomingQuery, QueryParam, QueryRecord, QueryRecordType
from serfd.core.serf import (
    ConflictLost,
    DeliveredEvent,
    ForceLeaveDone,
    JoinDone,
    JoinError,
    LeaveDone,
    QueryRecordEvent,
    Serf,
    SerfState,
)
from serfd.memberlist.swim import Addr, StreamKind, StreamRequest
from serfd.wire.codec import DecodeError
from serfd.wire.framing import StreamReader, encode_stream
from serfd.wire.keyring import DecryptError, Keyring
from serfd.wire.messages import ErrResp

__all__ = [
    "CLOSE_TIMEOUT",
    "MAX_INBOUND_STREAMS",
    "MAX_OUTBOUND_STREAMS",
    "STREAM_BYTES_BUDGET",
    "STREAM_MAX_SIZE",
    "GossipDriver",
]

log = logging.getLogger("serfd.agent")

STREAM_MAX_SIZE = 20 * 1024 * 1024  # memberlist refuses larger stream messages
MAX_INBOUND_STREAMS = 128  # memberlist drops push/pulls beyond this many at once
# Ours (memberlist starts a goroutine per stream, unbounded): TCP exchanges the core
# asks for (push/pull, fallback pings, large user messages, reconnects). A healthy
# node has a handful at once; beyond this many the core is told "failed".
MAX_OUTBOUND_STREAMS = 64
BIND_ATTEMPTS = 16  # tries for a port free for both UDP and TCP when bound to port 0
# Ours: bytes of stream messages being read at once, inbound and outbound together
# (128 peers x 20 MiB would otherwise be allowed). A push/pull of 5,000 members is
# about 1 MiB.
STREAM_BYTES_BUDGET = 64 * 1024 * 1024
# Seconds a closing stream may take to hand its last bytes to the peer before it is
# aborted (asyncio's close() waits for a peer that never reads forever).
CLOSE_TIMEOUT = 1.0
# The stream kinds that are push/pulls (memberlist's tcp.connect counts only those).
_PUSH_PULL_KINDS = frozenset({StreamKind.PUSH_PULL, StreamKind.JOIN, StreamKind.RECONNECT})


class _OverBudget(ConnectionError):
    """Reading this stream would pass STREAM_BYTES_BUDGET."""


def describe_stream_error(e: BaseException, ip: str, port: int) -> str:
    """Go's text for a failed dial/exchange (what ``serf join`` prints)."""
    if isinstance(e, ConnectionRefusedError):
        return f"dial tcp {ip}:{port}: connect: connection refused"
    if isinstance(e, TimeoutError):
        return f"dial tcp {ip}:{port}: i/o timeout"
    if isinstance(e, OSError) and e.errno is not None:
        return f"dial tcp {ip}:{port}: {os.strerror(e.errno).lower()}"
    return str(e) or e.__class__.__name__


async def _close(writer: asyncio.StreamWriter) -> None:
    """Close a TCP stream; abort it if the peer does not take what is left in time."""
    writer.close()
    try:
        await asyncio.wait_for(writer.wait_closed(), CLOSE_TIMEOUT)
    except OSError:  # TimeoutError included: the peer is not reading, or the socket failed
        writer.transport.abort()
    except asyncio.CancelledError:
        writer.transport.abort()
        raise


class _UDP(asyncio.DatagramProtocol):
    def __init__(self, driver: GossipDriver) -> None:
        self.driver = driver

    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        self.driver.on_datagram(data, (addr[0], addr[1]))

    def error_received(self, exc: Exception) -> None:
        log.debug("udp error: %s", exc)


class GossipDriver:
    """Sockets, the pump and the one timer around one Serf core (module docstring)."""

    def __init__(self, serf: Serf, *, clock: Clock, keyring: Keyring | None = None,
                 compress: bool = True, verify_incoming: bool = True,
                 verify_outgoing: bool = True, counters: dict[str, int] | None = None,
                 on_event: Callable[[DeliveredEvent], None] | None = None,
                 on_conflict_lost: Callable[[ConflictLost], None] | None = None,
                 loop_lag: LoopLag | None = None,
                 on_pump: Callable[[], None] | None = None,
                 metrics: Metrics = NULL_METRICS) -> None:
        self.serf = serf
        self.clock = clock
        # The keyring is the one the core uses, mutated in place by key rotation.
        self._keyring = keyring
        self._compress = compress
        self._verify_incoming = verify_incoming
        self._verify_outgoing = verify_outgoing
        self.counters: dict[str, int] = counters if counters is not None else {}
        self.drops = DropLog(log, self.counters)
        self.on_event = on_event
        self.on_conflict_lost = on_conflict_lost
        self._udp: asyncio.DatagramTransport | None = None
        self._tcp_server: asyncio.Server | None = None
        self._timer: Timer | None = None
        self._timer_at: float | None = None
        self._timer_expected = 0.0  # when it should fire: its due time, or when armed if later
        self.loop_lag = loop_lag  # fed how late each firing of the timer came
        self.on_pump = on_pump  # called after each pump: the core handled an input
        self.metrics = metrics  # memberlist.tcp.* (module docstring)
        self._tasks = TaskSet(log, "gossip", counters=self.counters, error_key="core_errors")
        self._inbound_streams = 0  # _on_stream tasks (MAX_INBOUND_STREAMS)
        self._outbound_streams = 0  # non-join _outbound_stream tasks (MAX_OUTBOUND_STREAMS)
        self._stream_bytes = 0  # bytes held by stream reads in progress (STREAM_BYTES_BUDGET)
        # What commands wait on, resolved by the core's completion events.
        self._joins: dict[int, asyncio.Future[JoinDone]] = {}
        self._leave: asyncio.Future[str] | None = None
        self._force_leaves: dict[int, asyncio.Future[None]] = {}
        self._queries: dict[int, Callable[[QueryRecord], None]] = {}
        self._closing = False

    # ------------------------------------------------------------------ sockets

    async def bind(self, host: str, port: int) -> None:
        """Bind the gossip UDP socket and TCP listener on ``host:port`` (0: any port,
        the same for both)."""
        loop = asyncio.get_running_loop()
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        # Port 0: the kernel picks a free UDP port, which a TCP socket (another
        # listener, or an outgoing connection's ephemeral port) may hold; try another.
        attempts = BIND_ATTEMPTS if port == 0 else 1
        for attempt in range(1, attempts + 1):
            chosen = port
            sock = socket.socket(family, socket.SOCK_DGRAM)
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 2 * 1024 * 1024)
                sock.bind((host, port))
                chosen = sock.getsockname()[1]
                tcp = await asyncio.start_server(
                    self._on_stream, host=host, port=chosen, reuse_address=True, limit=65536)
            except OSError as e:
                sock.close()
                if e.errno != errno.EADDRINUSE or attempt == attempts:
                    raise
                log.debug("gossip port %d is taken for TCP; picking another", chosen)
                continue
            break
        self._tcp_server = tcp
        transport, _ = await loop.create_datagram_endpoint(lambda: _UDP(self), sock=sock)
        self._udp = transport

    @property
    def udp_port(self) -> int:
        assert self._udp is not None
        return int(self._udp.get_extra_info("sockname")[1])

    @property
    def tcp_port(self) -> int:
        assert self._tcp_server is not None
        return int(self._tcp_server.sockets[0].getsockname()[1])

    def task_count(self) -> int:
        """Stream tasks running (shown as part of ``goroutines``)."""
        return len(self._tasks)

    def shutdown(self) -> None:
        """Stop the core (Serf.Shutdown): the last events (open queries' done records)
        are delivered now, callbacks included."""
        self._closing = True
        self.serf.shutdown()
        self.pump()

    async def close(self) -> None:
        """Close the sockets and cancel the stream tasks and what still waits."""
        self._closing = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._tcp_server is not None:
            self._tcp_server.close()
        self._tasks.cancel_all()
        if self._udp is not None:
            self._udp.close()
        for fut in [*self._joins.values(), *self._force_leaves.values(), self._leave]:
            if fut is not None and not fut.done():
                fut.cancel()

    # ------------------------------------------------------------------ the pump

    def now(self) -> float:
        return self.clock.now()

    def _count(self, reason: str) -> None:
        self.counters[reason] = self.counters.get(reason, 0) + 1

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        self._tasks.spawn(coro)

    def pump(self) -> None:
        """Drain the core's output and re-arm the timer. Called after every input."""
        serf = self.serf
        if self._udp is not None:
            for data, addr in serf.datagrams_to_send():
                try:
                    self._udp.sendto(data, addr)
                except OSError as e:
                    log.debug("udp send to %s failed: %s", addr, e)
        else:
            serf.datagrams_to_send()  # not bound (yet, or any more): nowhere to send
        for req in serf.streams_to_open():
            if req.kind is StreamKind.JOIN:
                self._spawn(self._outbound_stream(req, counted=False))
                continue
            if self._outbound_streams >= MAX_OUTBOUND_STREAMS:
                self.drops.drop("tcp_outbound_too_many", self.now(),
                                "not opening %s to %s:%d: %d outbound streams already open",
                                req.kind, req.addr[0], req.addr[1], MAX_OUTBOUND_STREAMS)
                asyncio.get_running_loop().call_soon(
                    self._stream_done, req.token, None, "too many outbound streams")
                continue
            self._outbound_streams += 1
            self._spawn(self._outbound_stream(req, counted=True))
        while (ev := serf.next_event()) is not None:
            self._dispatch(ev)
        due = serf.get_timer()
        if due != self._timer_at:
            if self._timer is not None:
                self._timer.cancel()
            self._timer_at = due
            if due is None:
                self._timer = None
            else:
                self._timer = self.clock.call_at(due, self._on_timer)
                if self.loop_lag is not None:
                    self._timer_expected = max(due, self.clock.now())
        if self.on_pump is not None:
            self.on_pump()

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_at = None
        now = self.now()
        if self.loop_lag is not None:
            self.loop_lag.observe(self._timer_expected, now)
        try:
            self.serf.handle_timer(now)
        except Exception:  # a bug in the core must not stop the loop
            log.exception("core timer handling failed")
            self._count("core_errors")
        self.pump()

    def _dispatch(self, ev: Any) -> None:
        if isinstance(ev, QueryRecordEvent):
            cb = self._queries.get(ev.query_id)
            if ev.record.type is QueryRecordType.DONE:
                self._queries.pop(ev.query_id, None)
            if cb is not None:
                if self._closing:
                    self._deliver_record(cb, ev.record)
                else:
                    asyncio.get_running_loop().call_soon(self._deliver_record, cb, ev.record)
        elif isinstance(ev, JoinDone):
            fut = self._joins.pop(ev.join_id, None)
            if fut is not None and not fut.done():
                fut.set_result(ev)
        elif isinstance(ev, LeaveDone):
            if self._leave is not None and not self._leave.done():
                self._leave.set_result(ev.error)
        elif isinstance(ev, ForceLeaveDone):
            ffut = self._force_leaves.pop(ev.op_id, None)
            if ffut is not None and not ffut.done():
                ffut.set_result(None)
        elif isinstance(ev, ConflictLost):
            if self.on_conflict_lost is not None:
                self.on_conflict_lost(ev)
        elif self.on_event is not None:
            try:
                self.on_event(ev)
            except Exception:  # our bug: the other events still go out
                self._count("event_delivery_errors")
                log.exception("event sink failed on %r", ev)

    def _deliver_record(self, cb: Callable[[QueryRecord], None], rec: QueryRecord) -> None:
        try:
            cb(rec)
        except Exception:  # our bug: the other queries' records still go out
            self._count("event_delivery_errors")
            log.exception("query record callback failed")

    # ------------------------------------------------------------------ commands

    async def join_addrs(self, addrs: list[Addr], ignore_old: bool, *,
                         intent: bool = True) -> tuple[int, list[JoinError]]:
        """Serf's join of ``addrs``: (how many were joined, one error per failed address,
        in order). SerfError if the core refuses (after a leave)."""
        join_id = self.serf.join(addrs, ignore_old, self.now(), intent=intent)
        fut: asyncio.Future[JoinDone] = asyncio.get_running_loop().create_future()
        self._joins[join_id] = fut
        self.pump()
        done = await fut
        return done.num_joined, list(done.errors)

    async def leave(self, on_started: Callable[[], None] | None = None,
                    limit: float | None = None) -> str:
        """Graceful leave; returns why it was cut short ("" if it was not). SerfError if
        the core refuses (already leaving, or shut down). ``on_started`` runs once the
        leave is under way; ``limit`` caps the wait (the core's own deadlines end it
        sooner: 2 x BroadcastTimeout + LeavePropagateDelay)."""
        fut: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._leave = fut
        try:
            self.serf.leave(self.now())
        except BaseException:
            self._leave = None
            raise
        if on_started is not None:
            on_started()
        self.pump()
        if limit is None:
            cfg = self.serf.config
            limit = 2 * cfg.broadcast_timeout + cfg.leave_propagate_delay + 1.0
        try:
            return await asyncio.wait_for(fut, limit)
        except TimeoutError:
            return f"leave did not complete in {limit:.1f}s"
        finally:
            self._leave = None

    async def force_leave(self, node: str, prune: bool) -> None:
        """Serf.RemoveFailedNode: returns once the broadcast has gone out; TimeoutError
        after BroadcastTimeout."""
        op_id = self.serf.force_leave(node, prune, self.now())
        if op_id is None:
            self.pump()
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._force_leaves[op_id] = fut
        self.pump()
        try:
            await asyncio.wait_for(fut, self.serf.config.broadcast_timeout)
        finally:
            self._force_leaves.pop(op_id, None)

    def set_tags(self, tags: dict[str, str]) -> None:
        """Replace our tags and gossip them; SerfError (Serf's text) if they do not fit."""
        self.serf.set_tags(tags, self.now())
        self.pump()

    def members(self) -> list[Member]:
        return self.serf.members()

    def coordinate(self, node: str) -> Coordinate | None:
        """The coordinate the core cached for ``node`` (None: unknown or disabled)."""
        return self.serf.get_cached_coordinate(node)

    @property
    def tags(self) -> dict[str, str]:
        return dict(self.serf.tags)

    def user_event(self, name: str, payload: bytes, coalesce: bool) -> None:
        """Send a user event (SerfError with Serf's text if over a size limit)."""
        self.serf.user_event(name, payload, coalesce, self.now())
        self.pump()

    def query(self, name: str, payload: bytes, param: QueryParam,
              on_record: Callable[[QueryRecord], None]) -> int:
        """Start a query; its records go to ``on_record``, never before this returns, the
        last one ``done``. SerfError if the core refuses it."""
        query_id = self.serf.query(name, payload, param, self.now())
        self._queries[query_id] = on_record
        self.pump()
        return query_id

    async def query_records(self, name: str, payload: bytes,
                            param: QueryParam) -> AsyncIterator[QueryRecord]:
        """The records of a new query as they come, ``done`` last."""
        queue: asyncio.Queue[QueryRecord] = asyncio.Queue()  # at most the query's bounds
        self.query(name, payload, param, queue.put_nowait)
        while True:
            rec = await queue.get()
            yield rec
            if rec.type is QueryRecordType.DONE:
                return

    def respond(self, q: IncomingQuery, payload: bytes) -> None:
        """Answer an incoming query (SerfError with Serf's text if refused)."""
        self.serf.respond(q, payload, self.now())
        self.pump()

    def set_internal_query_hook(self, kind: str,
                                hook: Callable[[IncomingQuery, float], bytes | None]) -> None:
        self.serf.set_internal_query_hook(kind, hook)

    def num_alive(self) -> int:
        return self.serf.num_alive()

    def local_member(self) -> Member:
        """This node as the core knows it (name, address, tags)."""
        return self.serf.local_member()

    def alive(self) -> bool:
        """The core can still join, query and leave (state ALIVE)."""
        return self.serf.state is SerfState.ALIVE

    # ------------------------------------------------------------------ UDP

    def on_datagram(self, data: bytes, addr: Addr) -> None:
        try:
            self.serf.receive_datagram(data, addr, self.now())
        except Exception:
            log.exception("core failed on a datagram from %s", addr)
            self._count("core_errors")
        self.pump()

    # ------------------------------------------------------------------ TCP

    async def _read_message(self, reader: asyncio.StreamReader, deadline: float) -> bytes:
        sr = StreamReader(max_size=STREAM_MAX_SIZE, keyring=self._keyring,
                          verify_incoming=self._verify_incoming)
        held = 0  # this read's share of _stream_bytes
        try:
            while True:
                msg = sr.message()
                if msg is not None:
                    return msg
                timeout = deadline - self.now()
                if timeout <= 0:
                    raise TimeoutError("stream read timed out")
                chunk = await asyncio.wait_for(reader.read(65536), timeout)
                if not chunk:
                    raise ConnectionError("connection closed mid-message")
                if self._stream_bytes + len(chunk) > STREAM_BYTES_BUDGET:
                    raise _OverBudget(f"stream reads in progress hold over "
                                      f"{STREAM_BYTES_BUDGET} bytes")
                self._stream_bytes += len(chunk)
                held += len(chunk)
                sr.feed(chunk)
        finally:
            self._stream_bytes -= held

    async def _on_stream(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername") or ("?", 0)
        self.metrics.incr(("memberlist", "tcp", "accept"))
        if self._inbound_streams >= MAX_INBOUND_STREAMS:
            self.drops.drop("tcp_too_many", self.now(),
                            "refused a stream from %s: %d inbound streams already open",
                            peer, MAX_INBOUND_STREAMS)
            writer.transport.abort()
            return
        self._inbound_streams += 1
        try:
            deadline = self.now() + self.serf.config.memberlist.tcp_timeout
            try:
                plain = await self._read_message(reader, deadline)
            except DecryptError as e:
                # Most likely a node with another key (or none): say so, and tell the
                # peer in an error response, as memberlist does.
                self.drops.drop("tcp_bad_message", self.now(),
                                "refused stream from %s: %s", peer, e)
                with contextlib.suppress(OSError):  # incl. TimeoutError: best effort
                    self._write_stream(writer, ErrResp(error=str(e)).encode())
                    await asyncio.wait_for(writer.drain(), 1.0)
                return
            except DecodeError as e:
                self._count("tcp_bad_message")
                log.debug("bad stream from %s: %s", peer, e)
                return
            except _OverBudget as e:
                self.drops.drop("tcp_over_budget", self.now(),
                                "dropped a stream from %s: %s", peer, e)
                return
            except (TimeoutError, ConnectionError, OSError) as e:
                log.debug("stream from %s failed: %s", peer, e)
                self._count("tcp_incomplete")
                return
            try:
                reply = self.serf.receive_stream(plain, (peer[0], peer[1]), self.now())
            except Exception:
                log.exception("core failed on a stream from %s", peer)
                self._count("core_errors")
                reply = None
            self.pump()
            if reply is not None:
                self._write_stream(writer, reply)
                await asyncio.wait_for(writer.drain(), max(0.1, deadline - self.now()))
        except (TimeoutError, ConnectionError, OSError) as e:
            log.debug("stream with %s: %s", peer, e)
        finally:
            try:
                await _close(writer)
            finally:
                self._inbound_streams -= 1

    def _write_stream(self, writer: asyncio.StreamWriter, plain: bytes) -> None:
        """Write one stream message (compressed and encrypted as memberlist does)."""
        # memberlist encrypts streams when a keyring is set and GossipVerifyOutgoing.
        out = self._keyring if self._verify_outgoing else None
        data = encode_stream(plain, compress=self._compress, keyring=out)
        self.metrics.incr(("memberlist", "tcp", "sent"), len(data))
        writer.write(data)

    # The timeout is a deadline shared by connect, write and read: the write keeps a 50 ms
    # floor and the read uses the deadline per chunk, which asyncio.timeout() would not keep.
    async def _exchange(self, host: str, port: int, plain: bytes, expect_reply: bool,
                        timeout: float,  # noqa: ASYNC109 - see above
                        kind: StreamKind = StreamKind.USER) -> bytes | None:
        deadline = self.now() + timeout
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
        if kind in _PUSH_PULL_KINDS:  # memberlist counts the connects of sendAndReceiveState
            self.metrics.incr(("memberlist", "tcp", "connect"))
        try:
            self._write_stream(writer, plain)
            await asyncio.wait_for(writer.drain(), max(0.05, deadline - self.now()))
            if not expect_reply:
                return None
            return await self._read_message(reader, deadline)
        finally:
            await _close(writer)

    def _stream_done(self, token: int, reply: bytes | None, error: str = "") -> None:
        try:
            self.serf.stream_outcome(token, reply, self.now(), error)
        except Exception:  # a bug in the core must not stop the loop
            log.exception("core failed on a stream outcome")
            self._count("core_errors")
        self.pump()

    async def _outbound_stream(self, req: StreamRequest, counted: bool) -> None:
        """One exchange for the core; a counted one is in _outbound_streams."""
        reply: bytes | None = None
        error = ""
        host, port = req.addr
        try:
            # The core gives each stream its own deadline (a fallback ping must answer
            # within the probe interval; a push/pull within TCPTimeout).
            timeout = max(0.05, min(req.deadline - self.now(),
                                    self.serf.config.memberlist.tcp_timeout))
            reply = await self._exchange(host, port, req.plain, req.expect_reply, timeout,
                                         req.kind)
        except _OverBudget as e:
            self.drops.drop("tcp_over_budget", self.now(),
                            "dropped the reply of %s:%d: %s", host, port, e)
            error = str(e)
        except (DecodeError, TimeoutError, ConnectionError, OSError) as e:
            log.debug("%s stream to %s:%d failed: %s", req.kind, host, port, e)
            error = describe_stream_error(e, host, port)
        finally:
            if counted:
                self._outbound_streams -= 1
        self._stream_done(req.token, reply, error)
