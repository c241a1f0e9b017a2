"""The serfd agent: one asyncio driver around the pure Serf/memberlist core.

Theory of operation
-------------------
The agent owns every socket and the single timer; the core owns every decision.
Each input (a datagram, an inbound TCP message, the outcome of an outbound stream,
the timer, an RPC command) is handed to the core with ``now = loop.time()``, then
``_pump()`` drains what the core produced:

1. datagrams to send go out on the UDP socket;
2. streams to open (push/pull, TCP fallback pings) and reconnect joins become tasks;
3. Serf events are logged (handlers come with a later issue);
4. the one timer is re-armed for ``serf.get_timer()``.

Slow things never run on the loop itself: DNS goes through ``getaddrinfo`` (the
loop's executor), TCP I/O is asynchronous with deadlines. A peer that sends
garbage costs a counter increment (``serfctl info`` shows them all), never the
process.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import fcntl
import ipaddress
import logging
import os
import platform
import random
import signal
import socket
import struct
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from serfd import __version__
from serfd.agent.clock import LoopClock
from serfd.agent.config import Config, ConfigError, load_config
from serfd.agent.events import EventsService
from serfd.agent.logsetup import set_level
from serfd.agent.looplag import LoopLag
from serfd.agent.recorder import SnapshotRecorder
from serfd.agent.reload import plan_reload
from serfd.agent.rpc_server import RPCError, RPCServer
from serfd.agent.systemd import Notifier
from serfd.base.ratelog import DropLog
from serfd.core.filters import AnyEvent
from serfd.core.keymanager import (
    KEY_QUERIES,
    KeyResponder,
    KeyResult,
    decode_key_arg,
    decode_key_response,
    encode_key_response,
    final_error,
    request_payload,
    response_fits_for,
    tally,
)
from serfd.core.member import Member, MemberStatus
from serfd.core.query import IncomingQuery, PendingQuery, QueryParam, QueryRecord, QueryRecordType
from serfd.core.serf import (
    DEFAULT_MAX_QUERY_TIMEOUT,
    MemberEvent,
    Serf,
    SerfConfig,
    SerfError,
    SerfState,
    UserEvent,
)
from serfd.memberlist.swim import MemberlistConfig, ProtocolError, StreamRequest
from serfd.wire.codec import DecodeError
from serfd.wire.framing import StreamReader, encode_stream
from serfd.wire.keyring import (
    DecryptError,
    Keyring,
    KeyringError,
    KeyringFileError,
    keyring_from_config,
    write_keyring_file,
)
from serfd.wire.messages import ErrResp, MsgType

log = logging.getLogger("serfd.agent")

STREAM_MAX_SIZE = 20 * 1024 * 1024  # memberlist refuses larger stream messages
MAX_INBOUND_STREAMS = 128  # memberlist drops push/pulls beyond this many at once
# Ours (memberlist starts a goroutine per stream, unbounded): TCP exchanges the agent
# opens for the core (push/pull, fallback pings, large user messages) and reconnects.
# A healthy node has a handful at once; beyond this many the core is told "failed".
MAX_OUTBOUND_STREAMS = 64
# Ours: bytes of stream messages being read at once, inbound and outbound together
# (128 peers x 20 MiB would otherwise be allowed). A push/pull of 5,000 members is
# about 1 MiB.
STREAM_BYTES_BUDGET = 64 * 1024 * 1024
# Seconds a closing stream may take to hand its last bytes to the peer before it is
# aborted (asyncio's close() waits for a peer that never reads forever).
CLOSE_TIMEOUT = 1.0
# Ours: key changes asked by peers (_serf_install-key etc.) waiting for the keyring lock
# and the file write; a rotation needs one at a time, so beyond this many are refused.
MAX_KEY_CHANGES = 16


class _OverBudget(ConnectionError):
    """Reading this stream would pass STREAM_BYTES_BUDGET."""


def _private_ipv4() -> str | None:
    """The first non-loopback IPv4 address of this host's interfaces (no traffic sent)."""
    siocgifaddr = 0x8915
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for _, name in socket.if_nameindex():
            try:
                req = struct.pack("256s", name.encode()[:15])
                res = fcntl.ioctl(s.fileno(), siocgifaddr, req)
            except OSError:
                continue
            ip = socket.inet_ntoa(res[20:24])
            if not ipaddress.IPv4Address(ip).is_loopback:
                return ip
    return None


def parse_join_addr(text: str, default_port: int) -> tuple[str | None, str, int]:
    """``host``, ``host:port``, ``[v6]:port`` or ``name/host:port`` → (name, host, port)."""
    name: str | None = None
    if "/" in text:
        name, text = text.split("/", 1)
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port = int(rest[1:]) if rest.startswith(":") else default_port
        return name, host, port
    if text.count(":") == 1:
        host, _, p = text.partition(":")
        return name, host, int(p)
    return name, text, default_port


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
    def __init__(self, agent: Agent) -> None:
        self.agent = agent

    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        self.agent.on_datagram(data, (addr[0], addr[1]))

    def error_received(self, exc: Exception) -> None:
        log.debug("udp error: %s", exc)


class _CoreGossip:
    """The events service's GossipAPI (serfd.agent.events) over this agent's Serf core and
    pump: each call hands the core ``now``, then pumps."""

    def __init__(self, agent: Agent) -> None:
        self._agent = agent

    def local_member(self) -> Member:
        return self._agent.serf.local_member()

    def user_event(self, name: str, payload: bytes, coalesce: bool) -> None:
        a = self._agent
        a.serf.user_event(name, payload, coalesce, a._now())
        a._pump()

    def query(self, name: str, payload: bytes, param: QueryParam,
              on_record: Callable[[QueryRecord], None]) -> PendingQuery:
        a = self._agent
        if a.serf.state != SerfState.ALIVE:
            raise SerfError("Serf can't query after Leave or Shutdown")
        pq = a.serf.query(name, payload, param, a._now())
        a._queries[pq] = on_record
        a._pump()
        return pq

    def respond(self, q: IncomingQuery, payload: bytes) -> None:
        a = self._agent
        a.serf.respond(q, payload, a._now())
        a._pump()


class Agent:
    """Runs one serfd node until told to leave or stop."""

    def __init__(self, config: Config, *, config_dir: Path | None = None,
                 notifier: Notifier | None = None) -> None:
        self.config = config
        self.config_dir = config_dir  # where reload() re-reads the drop-ins
        self.notifier = notifier if notifier is not None else Notifier()
        # Called as hook(old, new) after a reload applied the built-in keys; a hook may
        # raise ConfigError to report errors (the reload then answers with them).
        self.reload_hooks: list[Callable[[Config, Config], None]] = []
        self.restart_needed: tuple[str, ...] = ()  # keys changed on disk, not yet in effect
        self.last_reload_error: str = ""
        self._reload_lock = asyncio.Lock()
        self.counters: dict[str, int] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._udp: asyncio.DatagramTransport | None = None
        self._tcp_server: asyncio.base_events.Server | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._inbound_streams = 0  # _on_stream tasks (MAX_INBOUND_STREAMS)
        self._outbound_streams = 0  # _outbound_stream + _reconnect tasks (MAX_OUTBOUND_STREAMS)
        self._stream_bytes = 0  # bytes held by stream reads in progress (STREAM_BYTES_BUDGET)
        self._key_changes = 0  # _answer_key_change tasks (MAX_KEY_CHANGES)
        self._started = False  # start() finished: the Serf layer and sockets exist
        self.loop_lag = LoopLag()
        self.stream_drops = DropLog(log, self.counters)
        self._stop = asyncio.Event()
        self._exit_code = 0
        self._left = asyncio.Event()
        self.serf: Serf
        self.rpc: RPCServer
        self.clock = LoopClock()
        # Events, handlers and monitor (serfd.agent.events): created in start(), with the core.
        self.events: EventsService
        # Open queries (RPC and key rotation): after every pump their new records go to the
        # asker's callback, one loop iteration later, so the RPC header always goes first.
        self._queries: dict[PendingQuery, Callable[[QueryRecord], None]] = {}
        self._query_flush_scheduled = False
        self.last_join: str = "none yet"
        # Durable state (serfd.agent.recorder): members to rejoin and clocks, across
        # restarts; created in start(), with the core.
        self.recorder: SnapshotRecorder
        # Gossip encryption (serfd.wire.keyring): the keyring, shared with the memberlist core
        # and mutated in place by key rotation, and the file that persists it.
        self.keyring: Keyring | None = None
        self.keyring_path: Path | None = None

    # ------------------------------------------------------------------ setup

    def _advertise(self) -> tuple[str, int]:
        cfg = self.config
        if cfg.advertise is not None:
            return cfg.advertise
        host, port = cfg.bind
        if host in ("0.0.0.0", "::"):
            ip = _private_ipv4()
            if ip is None:
                raise SystemExit(
                    "serfd: no private IPv4 address found to advertise; set `advertise`")
            return ip, port
        return host, port

    def _make_serf(self, now: float) -> Serf:
        cfg = self.config
        adv_host, adv_port = self._advertise()
        mlc = MemberlistConfig.from_profile(
            cfg.profile,
            name=cfg.node_name,
            bind_port=cfg.bind[1],
            advertise_addr=adv_host,
            advertise_port=adv_port,
            enable_compression=cfg.enable_compression,
            keyring=self.keyring,
            gossip_verify_incoming=cfg.gossip_verify_incoming,
            gossip_verify_outgoing=cfg.gossip_verify_outgoing,
            # memberlist 1..5 speaking 2 (Serf pins it); Serf's delegate 2..5 at `protocol`.
            vsn=bytes([1, 5, 2, 2, 5, cfg.protocol]),
            # News (joins, suspicions, deaths, tag changes) goes out at once.
            eager_gossip=True,
        )
        sc = SerfConfig(
            node_name=cfg.node_name,
            memberlist=mlc,
            tags=dict(cfg.tags),
            protocol=cfg.protocol,
            broadcast_timeout=cfg.broadcast_timeout,
            reconnect_interval=cfg.reconnect_interval,
            reconnect_timeout=cfg.reconnect_timeout,
            tombstone_timeout=cfg.tombstone_timeout,
            user_event_size_limit=cfg.user_event_size_limit,
            query_size_limit=cfg.query_size_limit,
            query_response_size_limit=cfg.query_response_size_limit,
            # A handler may answer until it is killed: keep its queries open that long.
            max_query_timeout=max(DEFAULT_MAX_QUERY_TIMEOUT, cfg.handler_timeout),
        )
        return Serf(sc, random.Random(), now)

    async def start(self) -> None:
        """Bind every socket (gossip UDP+TCP, RPC); after this the agent is 'ready'."""
        loop = asyncio.get_running_loop()
        self._loop = loop
        host, port = self.config.bind
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_DGRAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 2 * 1024 * 1024)
        sock.bind((host, port))
        transport, _ = await loop.create_datagram_endpoint(lambda: _UDP(self), sock=sock)
        self._udp = transport
        self._tcp_server = await asyncio.start_server(
            self._on_stream, host=host, port=port, reuse_address=True, limit=65536
        )
        try:
            self.keyring, self.keyring_path = keyring_from_config(
                self.config.encrypt_key, self.config.keyring_file, self.config.state_dir, log)
        except KeyringFileError as e:
            log.error("cannot set up encryption: %s", e)
            raise SystemExit(f"serfd: cannot set up encryption: {e}") from None
        if self.keyring is not None:
            log.info("gossip encryption on (%d keys; verify incoming %s, outgoing %s)",
                     len(self.keyring.keys), self.config.gossip_verify_incoming,
                     self.config.gossip_verify_outgoing)
        self.serf = self._make_serf(loop.time())
        self.events = EventsService(self.config, _CoreGossip(self), clock=self.clock,
                                    spawn=self._spawn, config_dir=self.config_dir, loop=loop)
        self.events.start()
        self.reload_hooks.append(self._reload_events)
        self.recorder = SnapshotRecorder(self.config, self.serf, clock=self.clock)
        await self.recorder.open()
        self._setup_key_queries()
        self.rpc = RPCServer(self, auth_key=self.config.rpc_auth_key)
        sock_path = self.config.rpc_socket
        sock_path.parent.mkdir(parents=True, exist_ok=True)
        try:
            await self.rpc.start_unix(str(sock_path), self.config.rpc_socket_mode,
                                      self.config.rpc_socket_group)
        except ValueError as e:  # an unknown socket group
            log.error("%s", e)
            raise SystemExit(f"serfd: {e}") from None
        if self.config.rpc_tcp is not None:
            await self.rpc.start_tcp(*self.config.rpc_tcp)
        adv = self._advertise()
        log.info("serfd %s: node %s bound to %s:%d, advertising %s:%d", __version__,
                 self.config.node_name, host, port, adv[0], adv[1])
        self._spawn(self.loop_lag.run(asyncio.get_running_loop().time))
        self._started = True
        self._pump()

    async def run(self) -> int:
        """Start, join, serve until a signal or RPC leave; returns the exit code."""
        # Signals are ours before any socket exists, so a stop during start-up is clean.
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self._on_signal, sig)
        loop.add_signal_handler(signal.SIGHUP, self._on_sighup)
        await self.start()
        if self._stop.is_set():  # a signal came while we were starting: no cluster to leave
            await self._shutdown()
            return self._exit_code
        # Ready once every socket is bound; a join may never succeed (it shows in STATUS).
        self.notifier.ready(self.status_line())
        self._spawn(self.notifier.keepalive(self.status_line))
        if self.config.join:
            self._spawn(self._retry_join())
        if self.recorder.previous_members():
            self._spawn(self._rejoin_previous())
        await self._stop.wait()
        await self._shutdown()
        return self._exit_code

    def _on_sighup(self) -> None:
        if not self._started:
            log.warning("caught SIGHUP while starting: the configuration is being read anyway")
            return
        self._spawn(self.reload())

    def _on_signal(self, sig: int) -> None:
        if not self._started:
            log.info("caught %s while starting: stopping", signal.Signals(sig).name)
            self._stop.set()
            return
        if self.serf.state != SerfState.ALIVE:
            log.warning("second signal: exiting without waiting for the leave")
            self._exit_code = 1
            self._stop.set()
            return
        name = signal.Signals(sig).name
        self.notifier.stopping()
        if sig == signal.SIGTERM and not self.config.leave_on_terminate:
            log.info("caught %s: stopping without leaving (leave_on_terminate = false)", name)
            self._stop.set()
            return
        log.info("caught %s: leaving the cluster gracefully", name)
        self._spawn(self._leave_then_stop())

    async def _leave_then_stop(self) -> None:
        try:
            await self.leave_cluster()
        finally:
            self._stop.set()

    async def _shutdown(self) -> None:
        self.events.stop()
        for pq in list(self._queries):
            pq.finish()
        self._flush_queries()
        self.serf.shutdown()
        await self.recorder.close()
        if self._timer is not None:
            self._timer.cancel()
        try:
            await self.rpc.close()
        except Exception:  # shutting down anyway
            log.exception("closing the RPC server failed")
        if self._tcp_server is not None:
            self._tcp_server.close()
        for t in list(self._tasks):
            t.cancel()
        if self._udp is not None:
            self._udp.close()
        log.info("serfd stopped")

    # ------------------------------------------------------------------ the pump

    def _now(self) -> float:
        assert self._loop is not None
        return self._loop.time()

    def _count(self, reason: str) -> None:
        self.counters[reason] = self.counters.get(reason, 0) + 1

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("internal task failed: %r", task.exception(), exc_info=task.exception())

    def _pump(self) -> None:
        """Drain the core's output and re-arm the timer. Called after every input."""
        serf = self.serf
        ml = serf.memberlist
        if serf.leave_in_progress():
            serf.poll(self._now())
        if self._udp is not None:
            for data, addr in ml.datagrams_to_send():
                try:
                    self._udp.sendto(data, addr)
                except OSError as e:
                    log.debug("udp send to %s failed: %s", addr, e)
        for req in ml.streams_to_open():
            if self._outbound_streams >= MAX_OUTBOUND_STREAMS:
                self._refuse_outbound(f"{req.kind} to {req.addr[0]}:{req.addr[1]}")
                self._loop.call_soon(self._stream_failed, req.token)  # type: ignore[union-attr]
                continue
            self._outbound_streams += 1
            self._spawn(self._outbound_stream(req))
        for name, ip, port in serf.joins_to_attempt():
            if self._outbound_streams >= MAX_OUTBOUND_STREAMS:
                self._refuse_outbound(f"reconnect to {name}")
                continue
            self._outbound_streams += 1
            self._spawn(self._reconnect(name, ip, port))
        while (ev := serf.next_event()) is not None:
            self._dispatch(ev)
        self._after_pump()
        if serf.state == SerfState.LEFT:
            self._left.set()
        due = serf.get_timer()
        if due != self._timer_at:
            if self._timer is not None:
                self._timer.cancel()
            self._timer_at = due
            self._timer = None if due is None else self._loop.call_at(due, self._on_timer)  # type: ignore[union-attr]

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_at = None
        try:
            self.serf.handle_timer(self._now())
        except Exception:  # a bug in the core must not stop the loop
            log.exception("core timer handling failed")
            self._count("core_errors")
        self._pump()

    def _dispatch(self, ev: MemberEvent | UserEvent | IncomingQuery) -> None:
        self.recorder.record(ev)  # the snapshot sees events before coalescing, as Serf's does
        self.events.event(ev)  # coalescing, then handlers and RPC streams

    def _after_pump(self) -> None:
        if self.serf.conflict_lost and not self._stop.is_set():
            log.error("lost the name conflict resolution for %s: stopping",
                      self.config.node_name)
            self._exit_code = 1
            self._stop.set()
        if self._queries and not self._query_flush_scheduled:
            self._query_flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush_queries)

    def _flush_queries(self) -> None:
        self._query_flush_scheduled = False
        for pq, cb in list(self._queries.items()):
            for rec in pq.drain():
                try:
                    cb(rec)
                except Exception:  # our bug: the other queries' records still go out
                    self.counters["event_delivery_errors"] = (
                        self.counters.get("event_delivery_errors", 0) + 1)
                    log.exception("query record callback failed")
            if pq.finished:
                del self._queries[pq]

    # ------------------------------------------------------------------ UDP

    def on_datagram(self, data: bytes, addr: tuple[str, int]) -> None:
        try:
            self.serf.memberlist.receive_datagram(data, addr, self._now())
        except Exception:
            log.exception("core failed on a datagram from %s", addr)
            self._count("core_errors")
        self._pump()

    # ------------------------------------------------------------------ TCP

    async def _read_message(self, reader: asyncio.StreamReader, deadline: float) -> bytes:
        sr = StreamReader(max_size=STREAM_MAX_SIZE, keyring=self.keyring,
                          verify_incoming=self.config.gossip_verify_incoming)
        held = 0  # this read's share of _stream_bytes
        try:
            while True:
                msg = sr.message()
                if msg is not None:
                    return msg
                timeout = deadline - self._now()
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
        if self._inbound_streams >= MAX_INBOUND_STREAMS:
            self.stream_drops.drop("tcp_too_many", self._now(),
                                   "refused a stream from %s: %d inbound streams already open",
                                   peer, MAX_INBOUND_STREAMS)
            writer.transport.abort()
            return
        self._inbound_streams += 1
        try:
            deadline = self._now() + self.serf.config.memberlist.tcp_timeout
            try:
                plain = await self._read_message(reader, deadline)
            except DecryptError as e:
                # Most likely a node with another key (or none): say so, and tell the
                # peer in an error response, as memberlist does.
                self.stream_drops.drop("tcp_bad_message", self._now(),
                                       "refused stream from %s: %s", peer, e)
                with contextlib.suppress(OSError):  # incl. TimeoutError: best effort
                    writer.write(self._encode_stream(ErrResp(error=str(e)).encode()))
                    await asyncio.wait_for(writer.drain(), 1.0)
                return
            except DecodeError as e:
                self._count("tcp_bad_message")
                log.debug("bad stream from %s: %s", peer, e)
                return
            except _OverBudget as e:
                self.stream_drops.drop("tcp_over_budget", self._now(),
                                       "dropped a stream from %s: %s", peer, e)
                return
            except (TimeoutError, ConnectionError, OSError) as e:
                log.debug("stream from %s failed: %s", peer, e)
                self._count("tcp_incomplete")
                return
            try:
                reply = self.serf.memberlist.receive_stream(plain, (peer[0], peer[1]), self._now())
            except Exception:
                log.exception("core failed on a stream from %s", peer)
                self._count("core_errors")
                reply = None
            self._pump()
            if reply is not None:
                writer.write(self._encode_stream(reply))
                await asyncio.wait_for(writer.drain(), max(0.1, deadline - self._now()))
        except (TimeoutError, ConnectionError, OSError) as e:
            log.debug("stream with %s: %s", peer, e)
        finally:
            try:
                await _close(writer)
            finally:
                self._inbound_streams -= 1

    def _encode_stream(self, plain: bytes) -> bytes:
        # memberlist encrypts streams when a keyring is set and GossipVerifyOutgoing.
        out = self.keyring if self.config.gossip_verify_outgoing else None
        return encode_stream(plain, compress=self.config.enable_compression, keyring=out)

    # The timeout is a deadline shared by connect, write and read: the write keeps a 50 ms
    # floor and the read uses the deadline per chunk, which asyncio.timeout() would not keep.
    async def _exchange(self, host: str, port: int, plain: bytes, expect_reply: bool,
                        timeout: float) -> bytes | None:  # noqa: ASYNC109 - see above
        deadline = self._now() + timeout
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
        try:
            writer.write(self._encode_stream(plain))
            await asyncio.wait_for(writer.drain(), max(0.05, deadline - self._now()))
            if not expect_reply:
                return None
            return await self._read_message(reader, deadline)
        finally:
            await _close(writer)

    def _refuse_outbound(self, what: str) -> None:
        self.stream_drops.drop("tcp_outbound_too_many", self._now(),
                               "not opening %s: %d outbound streams already open",
                               what, MAX_OUTBOUND_STREAMS)

    def _stream_failed(self, token: int) -> None:
        """An outbound stream we did not open: the core sees it fail (as a timeout)."""
        self._stream_done(token, None)

    def _stream_done(self, token: int, reply: bytes | None) -> None:
        try:
            self.serf.memberlist.stream_reply(token, reply, self._now())
        except Exception:  # a bug in the core must not stop the loop
            log.exception("core failed on a stream reply")
            self._count("core_errors")
        self._pump()

    async def _outbound_stream(self, req: StreamRequest) -> None:
        """One exchange for the core; the caller counted it in _outbound_streams."""
        reply: bytes | None = None
        try:
            # The core gives each stream its own deadline (a fallback ping must answer
            # within the probe interval; a push/pull within TCPTimeout).
            timeout = max(0.05, min(req.deadline - self._now(),
                                    self.serf.config.memberlist.tcp_timeout))
            reply = await self._exchange(req.addr[0], req.addr[1], req.plain, req.expect_reply,
                                         timeout)
        except _OverBudget as e:
            self.stream_drops.drop("tcp_over_budget", self._now(),
                                   "dropped the reply of %s:%d: %s", req.addr[0], req.addr[1], e)
        except (DecodeError, TimeoutError, ConnectionError, OSError) as e:
            log.debug("stream to %s:%d failed: %s", req.addr[0], req.addr[1], e)
        finally:
            self._outbound_streams -= 1
        self._stream_done(req.token, reply)

    async def _push_pull_join(self, host: str, port: int) -> None:
        """One memberlist join: push/pull with Join=true, then merge the reply."""
        ml = self.serf.memberlist
        payload = ml.push_pull_payload(join=True)
        reply = await self._exchange(host, port, payload, True, ml.config.tcp_timeout)
        assert reply is not None
        if reply[:1] == bytes((MsgType.ERR,)):
            # The peer refused our push/pull (e.g. another encryption key): memberlist's text.
            try:
                text = ErrResp.from_body(reply[1:]).error
            except DecodeError:
                text = "undecodable error response"
            raise DecodeError(f"remote error: {text}")
        try:
            ml.merge_push_pull(reply, True, self._now())
        finally:
            self._pump()

    async def _resolve(self, host: str, port: int) -> list[str]:
        try:
            ipaddress.ip_address(host)
            return [host]
        except ValueError:
            pass
        assert self._loop is not None
        infos = await self._loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        ips: list[str] = []
        for family, _, _, _, sa in infos:
            if family in (socket.AF_INET, socket.AF_INET6) and sa[0] not in ips:
                ips.append(str(sa[0]))
        return ips

    async def memberlist_join(self, addrs: list[str]) -> tuple[int, list[str]]:
        """memberlist.Join: push/pull with every address; (successes, error lines)."""
        default_port = self.config.bind[1]
        ok = 0
        errors: list[str] = []
        for text in addrs:
            try:
                _, host, port = parse_join_addr(text, default_port)
            except ValueError:
                errors.append(f"Failed to join {text}: bad address")
                continue
            try:
                ips = await self._resolve(host, port)
            except OSError as e:
                errors.append(f"Failed to resolve {host}: {e}")
                continue
            for ip in ips:
                try:
                    await self._push_pull_join(ip, port)
                    ok += 1
                except Exception as e:  # noqa: BLE001 - every failure becomes a join error line
                    errors.append(f"Failed to join {ip}: {self._describe(e, ip, port)}")
        return ok, errors

    @staticmethod
    def _describe(e: BaseException, ip: str, port: int) -> str:
        if isinstance(e, ConnectionRefusedError):
            return f"dial tcp {ip}:{port}: connect: connection refused"
        if isinstance(e, TimeoutError | asyncio.TimeoutError):
            return f"dial tcp {ip}:{port}: i/o timeout"
        if isinstance(e, OSError) and e.errno is not None:
            return f"dial tcp {ip}:{port}: {os.strerror(e.errno).lower()}"
        return str(e) or e.__class__.__name__

    async def _reconnect(self, name: str, ip: str, port: int) -> None:
        """One reconnect attempt; the caller counted it in _outbound_streams."""
        try:
            await self._push_pull_join(ip, port)
            log.info("reconnected to %s (%s:%d)", name, ip, port)
        except (DecodeError, ProtocolError, TimeoutError, ConnectionError, OSError) as e:
            log.debug("reconnect to %s (%s:%d) failed: %s", name, ip, port, e)
        except Exception:  # a bug in the core must not end the agent
            self._count("core_errors")
            log.exception("reconnect to %s (%s:%d) failed", name, ip, port)
        finally:
            self._outbound_streams -= 1

    async def _retry_join(self) -> None:
        attempts = 0
        delay = min(1.0, self.config.retry_interval)
        while self.serf.state == SerfState.ALIVE:
            attempts += 1
            try:
                n = await self.join(list(self.config.join), replay=False)
                log.info("joined %d of the configured nodes", n)
                return
            except RPCError as e:
                log.warning("join attempt %d failed: %s", attempts,
                            str(e).strip().replace("\n", " "))
            if self.config.retry_max_attempts and attempts >= self.config.retry_max_attempts:
                log.error("giving up joining after %d attempts", attempts)
                self._exit_code = 1
                self._stop.set()
                return
            await asyncio.sleep(delay)
            # Back off from 1 s up to retry_interval so a cluster that starts together
            # finds itself fast, without hammering an absent seed.
            delay = min(delay * 2, self.config.retry_interval)

    # ------------------------------------------------------------------ key rotation

    def _setup_key_queries(self) -> None:
        """Answer Serf's _serf_*-key queries from our keyring (serfd.core.keymanager)."""
        fits = response_fits_for(self.config.node_name,
                                 self.serf.config.query_response_size_limit)
        self.key_responder = KeyResponder(self.keyring, response_fits=fits)
        self._keyring_lock = asyncio.Lock()

        def hook(op: str) -> Callable[[IncomingQuery, float], bytes | None]:
            return lambda q, now: self._on_key_query(op, q)

        for op in KEY_QUERIES:
            self.serf.internal_query_hooks[op] = hook(op)

    def _on_key_query(self, op: str, q: Any) -> bytes | None:
        if op == "list-keys" or self.keyring is None:
            return self.key_responder.answer(op, q.payload)
        if self._key_changes >= MAX_KEY_CHANGES:
            self.stream_drops.drop("key_change_refused", self._now(),
                                   "%d key changes in progress: refusing %s from %s",
                                   self._key_changes, op, q.source_node)
            return encode_key_response(False, "too many key changes in progress", None, "")
        self._key_changes += 1
        self._spawn(self._answer_key_change(op, q))  # the file is written off the loop
        return None

    async def _answer_key_change(self, op: str, q: Any) -> None:
        try:
            await self._change_key(op, q)
        finally:
            self._key_changes -= 1

    async def _change_key(self, op: str, q: Any) -> None:
        async with self._keyring_lock:
            answer = self.key_responder.answer(op, q.payload)  # changes the keyring in memory
            assert answer is not None
            path = self.keyring_path
            if path is not None and self.keyring is not None and \
                    decode_key_response(answer[1:]).result:
                keys = self.keyring.keys
                try:
                    await asyncio.get_running_loop().run_in_executor(
                        None, write_keyring_file, path, keys)
                    log.info("keyring file %s rewritten after %s (%d keys)", path, op, len(keys))
                except OSError as e:
                    err = f"Failed to write keyring file: {e}"
                    log.error("%s", err)
                    answer = encode_key_response(False, err, None, "")
        try:
            self.serf.respond(q, answer, self._now())
        except SerfError as e:
            log.error("failed to respond to key query: %s", e)
        self._pump()

    async def key_request(self, op: str, key: str) -> tuple[dict[str, Any], str]:
        """RPC install-key/use-key/remove-key/list-keys: query every member, tally (the
        RPC body, Serf's error text or "")."""
        result = KeyResult()
        with_keys = op == "list-keys"
        raw = b""
        if not with_keys:
            try:
                raw = decode_key_arg(key)
            except KeyringError as e:
                return result.rpc_body(with_keys), str(e)
        if self.serf.state != SerfState.ALIVE:
            return result.rpc_body(with_keys), "Serf can't query after Leave or Shutdown"
        log.info("initiating %s", op)
        try:
            pq = self.serf.query(f"_serf_{op}", request_payload(raw), QueryParam(), self._now())
        except SerfError as e:
            return result.rpc_body(with_keys), str(e)
        result.num_nodes = self.serf.memberlist.num_alive()
        answered: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        def on_record(rec: QueryRecord) -> None:
            # Records arrive after each pump (_flush_queries); done ends the wait at the
            # latest, every member answering ends it sooner.
            if rec.type is QueryRecordType.RESPONSE:
                tally(result, rec.from_, rec.payload)
            over = rec.type is QueryRecordType.DONE or result.num_resp >= result.num_nodes
            if over and not answered.done():
                answered.set_result(None)

        self._queries[pq] = on_record
        self._pump()
        await answered
        return result.rpc_body(with_keys), final_error(result)

    # ------------------------------------------------------------------ rejoin

    async def _rejoin_previous(self) -> None:
        """Rejoin the members the snapshot knew (serf.go handleRejoin: memberlist join, no
        join intent), one at a time. Unlike Serf we keep trying, backing off, until some
        member is reached, so a whole cluster restarting together finds itself again."""
        delay = 1.0
        while self.serf.state == SerfState.ALIVE:
            previous = self.recorder.previous_members()
            random.shuffle(previous)
            for name, addr in previous:
                if self.serf.memberlist.num_alive() > 1:
                    return  # joined meanwhile (config join, or someone joined us)
                log.info("attempting re-join to previously known node %s: %s", name, addr)
                ok, errors = await self.memberlist_join([f"{name}/{addr}"])
                if ok:
                    log.info("re-joined to previously known node %s: %s", name, addr)
                    self.last_join = "rejoined"
                    return
                log.debug("re-join to %s failed: %s", name, "; ".join(errors))
            if self.serf.memberlist.num_alive() > 1:
                return
            log.warning("failed to re-join any previously known node; retrying in %.0fs", delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, self.config.retry_interval)

    # ------------------------------------------------------------------ AgentAPI (RPC)

    async def user_event(self, name: str, payload: bytes, coalesce: bool) -> None:
        self.events.user_event(name, payload, coalesce)

    def query(self, name: str, payload: bytes, param: QueryParam,
              on_record: Callable[[QueryRecord], None]) -> object:
        return self.events.query(name, payload, param, on_record)

    def respond(self, q: IncomingQuery, payload: bytes) -> None:
        self.events.respond(q, payload)

    def subscribe_events(self, cb: Callable[[AnyEvent], None]) -> Callable[[], None]:
        return self.events.subscribe_events(cb)

    def subscribe_logs(self, level: int, cb: Callable[[str], None]) -> Callable[[], None]:
        return self.events.subscribe_logs(level, cb)

    def members(self) -> list[Member]:
        return self.serf.members()

    async def join(self, addrs: list[str], replay: bool) -> int:
        if self.serf.state != SerfState.ALIVE:
            raise RPCError("Serf can't Join after Leave or Shutdown")
        self.serf.begin_join(ignore_old=not replay)
        n = 0
        try:
            n, errors = await self.memberlist_join(addrs)
        finally:
            self.serf.end_join(n, self._now())
            self._pump()
        if n > 0:
            self.last_join = f"joined {n}"
            return n
        self.last_join = "failed"
        if not errors:
            errors = ["no addresses to join"]
        plural = "s" if len(errors) != 1 else ""
        points = "\n\t".join(f"* {e}" for e in errors)
        raise RPCError(f"{len(errors)} error{plural} occurred:\n\t{points}\n\n")

    async def leave_cluster(self) -> None:
        """Graceful leave: intent, memberlist dead, propagation delay (Serf.Leave)."""
        try:
            self.serf.leave(self._now())
        except SerfError as e:
            log.warning("leave: %s", e)
            return
        self.recorder.leave()  # a restart will not rejoin unless rejoin_after_leave
        self._pump()
        cfg = self.serf.config
        limit = 2 * cfg.broadcast_timeout + cfg.leave_propagate_delay + 1.0
        try:
            await asyncio.wait_for(self._left.wait(), limit)
        except TimeoutError:
            log.warning("leave did not complete in %.1fs", limit)
        if self.serf.leave_error:
            log.warning("leave: %s", self.serf.leave_error)
        log.info("left the cluster")

    async def leave(self) -> None:
        self.notifier.stopping()
        await self.leave_cluster()
        self._stop.set()

    async def force_leave(self, node: str, prune: bool) -> None:
        sent: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        def on_sent() -> None:
            if not sent.done():
                sent.set_result(None)

        queued = self.serf.force_leave(node, prune, self._now(), on_sent)
        self._pump()
        if not queued:
            return
        try:
            await asyncio.wait_for(sent, self.serf.config.broadcast_timeout)
        except TimeoutError:
            raise RPCError("timed out broadcasting node removal") from None

    async def set_tags(self, tags: dict[str, str], delete: list[str]) -> None:
        new = dict(self.serf.tags)
        for k in delete:
            new.pop(k, None)
        new.update(tags)
        try:
            self.serf.set_tags(new, self._now())
        except SerfError as e:
            raise RPCError(str(e)) from None
        self._pump()

    def stats(self) -> dict[str, dict[str, str]]:
        drops: dict[str, int] = {}
        for src in (self.counters, self.events.counters, self.recorder.counters,
                    self.serf.counters, self.serf.memberlist.counters, self.rpc.counters):
            for k, v in src.items():
                drops[k] = drops.get(k, 0) + v
        return {
            "agent": {"name": self.config.node_name},
            "runtime": {
                "os": sys.platform,
                "arch": platform.machine(),
                "version": f"python{platform.python_version()}",
                "max_procs": str(os.cpu_count() or 1),
                "goroutines": str(threading.active_count() + len(self._tasks)),
                "cpu_count": str(os.cpu_count() or 1),
            },
            "serf": {**self.serf.stats(), "encrypted": str(self.keyring is not None).lower()},
            "tags": dict(self.serf.tags),
            "serfd": {"version": __version__, **self.recorder.stats(), **self.loop_lag.stats(),
                      **{k: str(v) for k, v in sorted(self.serf.memberlist.activity.items())},
                      **{f"dropped_{k}": str(v) for k, v in sorted(drops.items())}},
        }

    def status_line(self) -> str:
        """A one-line summary (for systemd STATUS= and logs)."""
        counts: dict[str, int] = {}
        for m in self.serf.members():
            counts[m.status.label] = counts.get(m.status.label, 0) + 1
        parts = [f"{counts.get(s.label, 0)} {s.label}" for s in
                 (MemberStatus.ALIVE, MemberStatus.FAILED, MemberStatus.LEFT)]
        line = f"members: {', '.join(parts)}; last join: {self.last_join}"
        if self.last_reload_error:
            line += f"; {self.last_reload_error}"
        if self.restart_needed:
            line += f"; restart needed for: {', '.join(self.restart_needed)}"
        if snapshot := self.recorder.status():
            line += f"; {snapshot}"
        return line

    # ------------------------------------------------------------------ reload

    async def reload(self) -> list[str]:
        """Re-read the drop-ins and apply what changed; the errors ([] = applied).

        An invalid configuration leaves the running one untouched. Either way the
        service manager sees RELOADING=1 ... READY=1.
        """
        async with self._reload_lock:
            self.notifier.reloading()
            try:
                return await self._reload()
            finally:
                self.notifier.ready(self.status_line())

    async def _reload(self) -> list[str]:
        if self.config_dir is None:
            return ["no configuration directory to reload from"]
        if self.serf.state != SerfState.ALIVE:
            return ["cannot reload: the agent is leaving or has left"]
        log.info("reloading the configuration from %s", self.config_dir)
        assert self._loop is not None
        try:
            new = await self._loop.run_in_executor(None, load_config, self.config_dir)
        except ConfigError as e:
            for line in e.errors:
                log.error("reload: %s", line)
            n = len(e.errors)
            log.error("reload refused: %d error%s; still running the previous configuration",
                      n, "" if n == 1 else "s")
            self.last_reload_error = f"last reload failed ({n} error{'' if n == 1 else 's'})"
            return list(e.errors)
        old = self.config
        plan = plan_reload(old, new)
        self.config = plan.applied
        self.last_reload_error = ""
        errors: list[str] = []
        if new.log_level != old.log_level:
            set_level(new.log_level)
        if new.rpc_auth_key != old.rpc_auth_key:
            self.rpc.auth_key = new.rpc_auth_key or None
        if dict(new.tags) != dict(old.tags):
            try:
                self.serf.set_tags(dict(new.tags), self._now())
            except SerfError as e:
                errors.append(f"tags: {e}")
            self._pump()
        if new.join != old.join and new.join:
            self._spawn(self._join_after_reload(list(new.join)))
        for hook in list(self.reload_hooks):
            try:
                hook(old, self.config)
            except ConfigError as e:
                errors.extend(e.errors)
            except Exception as e:
                log.exception("reload hook %r failed", hook)
                errors.append(f"reload hook failed: {e}")
        for line in errors:
            log.error("reload: %s", line)
        self.restart_needed = plan.restart_needed
        if plan.restart_needed:
            log.warning("reload: %s changed on disk but need%s a restart (systemctl restart serfd)",
                        ", ".join(plan.restart_needed),
                        "s" if len(plan.restart_needed) == 1 else "")
        log.info("reload done: %s", "applied " + ", ".join(plan.changed) if plan.changed
                 else "nothing to apply")
        return errors

    def _reload_events(self, old: Config, new: Config) -> None:
        """Reload hook: handlers (the events service), then the core's size limits."""
        self.events.reload(old, new)
        self.serf.config = dataclasses.replace(
            self.serf.config,
            user_event_size_limit=new.user_event_size_limit,
            query_size_limit=new.query_size_limit,
            query_response_size_limit=new.query_response_size_limit,
            max_query_timeout=max(DEFAULT_MAX_QUERY_TIMEOUT, new.handler_timeout),
        )

    async def _join_after_reload(self, addrs: list[str]) -> None:
        try:
            n = await self.join(addrs, replay=False)
            log.info("reload: joined %d node(s) of the new join list", n)
        except RPCError as e:
            log.warning("reload: joining the new join list failed: %s",
                        " ".join(str(e).split()))


__all__ = ["Agent", "parse_join_addr"]
