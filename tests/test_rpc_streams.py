"""RPC ``stream``, ``monitor`` and query records to clients that stop reading: records are
dropped (counted, logged rate-limited), serfd's buffered bytes stay under the bound, no
per-record work is spent on what is dropped, other clients are served; and the
constant-time auth compare.

A real RPCServer runs on its own loop thread (tests/fake_agent.py) and the tests talk
to it over real Unix and TCP sockets, as tests/test_rpc.py does.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import os
import socket
from collections.abc import Callable, Iterator
from typing import Any

import pytest

import serfd.agent.rpc_server as rpc_mod
from serfd.agent.monitor import LogRing
from serfd.agent.rpc_server import MAX_OPEN_QUERIES, MAX_STREAMS, STREAM_BUFFER_LIMIT
from serfd.core.query import IncomingQuery
from serfd.core.serf import UserEvent
from serfd.testing.fake_agent import FakeAgent, ServerThread
from tests.support import Raw, wait_until


class StreamAgent(FakeAgent):
    """FakeAgent plus event and log subscriptions, fed by the tests on the loop."""

    def __init__(self) -> None:
        super().__init__()
        self.subs: list[Callable[[Any], None]] = []
        self.ring: LogRing | None = None
        self.responded: list[tuple[IncomingQuery, bytes]] = []

    def subscribe_events(self, cb: Callable[[Any], None]) -> Callable[[], None]:
        self.subs.append(cb)
        return lambda: self.subs.remove(cb)

    def subscribe_logs(self, level: int, cb: Callable[[str], None]) -> Callable[[], None]:
        assert self.ring is not None
        return self.ring.subscribe(level, cb)

    def respond(self, q: IncomingQuery, payload: bytes) -> None:
        self.responded.append((q, payload))


@pytest.fixture
def srv(sockdir: str) -> Iterator[ServerThread]:
    """conftest's ``srv``, over a StreamAgent."""
    s = ServerThread(os.path.join(sockdir, "s.sock"))
    agent = StreamAgent()
    s.agent = agent
    s.server.agent = agent
    yield s
    s.close()


def agent_of(s: ServerThread) -> StreamAgent:
    assert isinstance(s.agent, StreamAgent)
    return s.agent


def buffered(s: ServerThread) -> int:
    """The largest write buffer the server holds for one client (on the loop)."""
    async def get() -> int:
        return max((c.writer.transport.get_write_buffer_size()
                    for c in s.server._conns.values()), default=0)
    return s.run(get())


def publish(s: ServerThread, events: list[Any]) -> int:
    """Hand events to every stream subscriber on the loop, yielding between them so
    the transport writes what the socket takes; the peak buffered bytes seen."""
    async def go() -> int:
        peak = 0
        for i, ev in enumerate(events):
            for cb in list(agent_of(s).subs):
                cb(ev)
            peak = max([peak] + [c.writer.transport.get_write_buffer_size()
                                 for c in s.server._conns.values()])
            if i % 20 == 0:
                await asyncio.sleep(0)
        return peak
    return s.run(go(), timeout=60)


def stalled_stream_client(s: ServerThread) -> Raw:
    hog = Raw(s.socket_path)
    hog.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    hog.handshake()
    hog.request("stream", {"Type": "*"})
    assert hog.read() == {"Error": "", "Seq": 1}
    wait_until(lambda: agent_of(s).subs, desc="stream registered")
    return hog


def served(s: ServerThread, c: Raw) -> None:
    c.request("stats")
    assert c.read()["Error"] == ""
    assert c.read()["agent"]["name"] == "node0"


@pytest.mark.parametrize("payload_size", [1000, 300_000])
def test_a_stream_client_that_never_reads_loses_records_not_memory(
        srv: ServerThread, payload_size: int, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    encoded = 0
    real = rpc_mod.encode_event_record

    def counting(ev: Any) -> dict[str, Any]:
        nonlocal encoded
        encoded += 1
        return real(ev)

    monkeypatch.setattr(rpc_mod, "encode_event_record", counting)
    hog = stalled_stream_client(srv)
    other = Raw(srv.socket_path)
    other.handshake()
    n = 4000 if payload_size < 10_000 else 60
    peak = 0
    caplog.set_level(logging.WARNING, logger="serfd.rpc")
    for batch in range(4):
        events = [UserEvent(batch * n + i, "flood", b"x" * payload_size, False)
                  for i in range(n)]
        peak = max(peak, publish(srv, events))
        served(srv, other)  # answered while the hog's records pile up
    total = 4 * n
    dropped = srv.server.counters["stream_slow_client"]
    assert dropped > 0
    # Bounded: never more than the limit buffered (a record fits only if it fits whole).
    assert peak <= STREAM_BUFFER_LIMIT
    assert buffered(srv) <= STREAM_BUFFER_LIMIT
    # Dropped records cost no encoding: only the ones written were built, and the one
    # that found the buffer full.
    assert encoded == total - dropped + 1
    # Said in the log, rate-limited: one line per interval, not one per record.
    lines = [r for r in caplog.records if "dropping event to slow client" in r.getMessage()]
    assert 1 <= len(lines) <= 2
    hog.close()
    other.close()


def test_monitor_replay_and_live_lines_to_a_client_that_never_reads(
        srv: ServerThread) -> None:
    agent = agent_of(srv)

    async def make_ring() -> LogRing:
        return LogRing(loop=asyncio.get_running_loop())

    ring = srv.run(make_ring())
    agent.ring = ring
    lg = logging.getLogger("test.rpc.monitor")
    lg.propagate = False
    lg.handlers[:] = [ring]
    lg.setLevel(logging.DEBUG)
    for i in range(512):  # a full ring of 4 KB lines: 2 MiB to replay
        lg.info("line %d %s", i, "y" * 4000)
    hog = Raw(srv.socket_path)
    hog.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    hog.handshake()
    hog.request("monitor", {"LogLevel": "DEBUG"})
    assert hog.read() == {"Error": "", "Seq": 1}
    wait_until(lambda: srv.server.counters["stream_slow_client"] > 0, desc="replay drops")
    assert buffered(srv) <= STREAM_BUFFER_LIMIT
    other = Raw(srv.socket_path)
    other.handshake()
    for k in range(3):
        # Live lines, from this (non-loop) thread: they reach the client via the loop.
        for i in range(300):
            lg.info("live %d %d %s", k, i, "z" * 4000)
        served(srv, other)
        assert buffered(srv) <= STREAM_BUFFER_LIMIT
    assert srv.server.counters["stream_slow_client"] > 512
    hog.close()
    other.close()


def test_open_query_ids_per_connection_are_bounded(srv: ServerThread) -> None:
    c = Raw(srv.socket_path)
    c.handshake()
    c.request("stream", {"Type": "query"})
    assert c.read() == {"Error": "", "Seq": 1}
    wait_until(lambda: agent_of(srv).subs, desc="stream registered")
    n = MAX_OPEN_QUERIES + 500
    far = 3_600_000.0 * 1000  # a 1000 h deadline: nothing expires
    publish(srv, [IncomingQuery(i, i, "q", b"", "peer", far) for i in range(n)])
    records = [c.read() for _ in range(2 * n)]  # header + body each
    ids = [r["ID"] for r in records[1::2]]
    assert ids == list(range(1, n + 1))

    async def open_ids() -> int:
        return max(len(conn.queries) for conn in srv.server._conns.values())

    assert srv.run(open_ids()) == MAX_OPEN_QUERIES
    assert srv.server.counters["stream_query_evicted"] == n - MAX_OPEN_QUERIES
    c.request("respond", {"ID": 1, "Payload": b"late"})
    assert c.read() == {"Error": "No pending queries matching ID", "Seq": 2}
    c.request("respond", {"ID": n, "Payload": b"ok"})
    assert c.read() == {"Error": "", "Seq": 3}
    assert [p for _, p in agent_of(srv).responded] == [b"ok"]
    assert srv.run(open_ids()) == MAX_OPEN_QUERIES - 1  # answered: forgotten
    c.close()


def test_a_query_dropped_for_a_slow_client_is_not_kept(srv: ServerThread) -> None:
    hog = stalled_stream_client(srv)
    far = 3_600_000.0 * 1000
    big = b"q" * 500_000
    publish(srv, [IncomingQuery(i, i, "q", big, "peer", far) for i in range(40)])
    dropped = srv.server.counters["stream_slow_client"]
    assert dropped > 0

    async def open_ids() -> int:
        return sum(len(conn.queries) for conn in srv.server._conns.values())

    assert srv.run(open_ids()) == 40 - dropped
    hog.close()


def test_stream_subscriptions_per_connection_are_capped(srv: ServerThread) -> None:
    c = Raw(srv.socket_path)
    c.handshake()
    for i in range(MAX_STREAMS + 10):
        c.request("stream", {"Type": "user"})
        error = c.read()["Error"]
        assert error == ("" if i < MAX_STREAMS else "Too many streams on this connection")
    wait_until(lambda: len(agent_of(srv).subs) == MAX_STREAMS, desc="subscriptions")
    assert srv.server.counters["stream_too_many"] == 10
    c.request("stop", {"Stop": 1})  # one ends: room for another
    assert c.read()["Error"] == ""
    c.request("stream", {"Type": "user"})
    assert c.read()["Error"] == ""
    served(srv, c)
    c.close()


def test_rpc_clients_beyond_the_cap_are_refused(sockdir: str) -> None:
    s = ServerThread(os.path.join(sockdir, "s.sock"), max_connections=20)
    try:
        held = [Raw(s.socket_path if i % 2 else s.tcp) for i in range(20)]
        for c in held:
            c.handshake()
        extra = [Raw(s.socket_path), Raw(s.tcp)]
        for c in extra:
            c.sock.settimeout(5.0)
            assert c.closed()
        assert s.server.counters["too_many_connections"] == 2
        held.pop().close()
        wait_until(lambda: len(s.server._conns) == 19, desc="a slot to free")
        c = Raw(s.socket_path)
        c.handshake()
        for c2 in [*held, c]:
            c2.close()
    finally:
        s.close()


@pytest.mark.parametrize("where", ["unix", "tcp"])
def test_auth_compares_in_constant_time(
        where: str, monkeypatch: pytest.MonkeyPatch, sockdir: str) -> None:
    calls: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a: Any, b: Any) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)  # rpc_server imports it when used
    s = ServerThread(os.path.join(sockdir, "s.sock"), auth_key="s3cret-tökén")
    try:
        target = s.socket_path if where == "unix" else s.tcp
        c = Raw(target)
        c.handshake()
        c.request("auth", {"AuthKey": "s3cret-tökeX"})
        # The Unix socket is guarded by its file mode: any token is accepted, no compare.
        expect = "" if where == "unix" else "Invalid authentication token"
        assert c.read() == {"Error": expect, "Seq": 1}
        c.request("auth", {"AuthKey": "s3cret-tökén"})
        assert c.read() == {"Error": "", "Seq": 2}
        c.request("members")
        assert c.read()["Error"] == ""
        c.close()
        if where == "tcp":
            assert calls == [("s3cret-tökeX".encode(), "s3cret-tökén".encode()),
                             ("s3cret-tökén".encode(), "s3cret-tökén".encode())]
        else:
            assert calls == []
    finally:
        s.close()
