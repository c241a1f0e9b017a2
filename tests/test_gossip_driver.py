"""The gossip driver alone: two pure Serf cores, each behind a GossipDriver on loopback
sockets, time on a FakeClock. No agent, no root, no serf binary, no sleeps: every wait
is on a future a core event resolves, and time moves only by ``clock.advance``."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import random
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import pytest

from serfd.agent.gossip import GossipDriver
from serfd.core.query import IncomingQuery, QueryParam, QueryRecord, QueryRecordType
from serfd.core.serf import (
    ConflictLost,
    DeliveredEvent,
    JoinError,
    MemberEvent,
    Serf,
    SerfConfig,
    SerfError,
    SerfState,
)
from serfd.memberlist.swim import MemberlistConfig
from serfd.testing.clock import FakeClock
from serfd.wire.keyring import Keyring
from tests.support import free_port

T = TypeVar("T")


class Node:
    """One Serf core behind its driver; incoming queries are answered with name:payload."""

    def __init__(self, name: str, clock: FakeClock, *, keyring: Keyring | None = None,
                 verify_outgoing: bool = True, **serf_overrides: Any) -> None:
        self.name = name
        self.port = free_port()
        mlc = MemberlistConfig.from_profile("local", name=name, bind_port=self.port,
                                            advertise_addr="127.0.0.1",
                                            advertise_port=self.port, keyring=keyring,
                                            gossip_verify_outgoing=verify_outgoing)
        cfg = SerfConfig(node_name=name, memberlist=mlc, **serf_overrides)
        self.serf = Serf(cfg, random.Random(name), clock.now())
        self.events: list[DeliveredEvent] = []
        self.driver = GossipDriver(self.serf, clock=clock, keyring=keyring,
                                   verify_outgoing=verify_outgoing, on_event=self.on_event)

    def on_event(self, ev: DeliveredEvent) -> None:
        self.events.append(ev)
        if isinstance(ev, IncomingQuery) and ev.name != "silent":
            self.driver.respond(ev, f"{self.name}:".encode() + ev.payload)

    @property
    def addr(self) -> tuple[str, int]:
        return ("127.0.0.1", self.port)

    def alive(self) -> set[str]:
        return {m.name for m in self.serf.members() if m.status.label == "alive"}


@contextlib.asynccontextmanager
async def nodes(*names: str, **kw: Any) -> AsyncIterator[tuple[FakeClock, list[Node]]]:
    clock = FakeClock()
    made = [Node(n, clock, **kw) for n in names]
    for n in made:
        await n.driver.bind("127.0.0.1", n.port)
        n.driver.pump()
    try:
        yield clock, made
    finally:
        for n in made:
            await n.driver.close()


async def run_until_done(clock: FakeClock, aw: Awaitable[T], step: float = 0.1,
                         limit: float = 60.0) -> T:
    """Await ``aw`` while fake time moves by ``step`` (real socket I/O happens between)."""
    task = asyncio.ensure_future(aw)
    waited = 0.0
    while not task.done():
        assert waited <= limit, "did not finish in fake time"
        await asyncio.wait({task}, timeout=0.05)  # real time for loopback I/O only
        if not task.done():
            await clock.advance(step)
            waited += step
    return task.result()


def run(main: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(main())  # type: ignore[arg-type]


def test_join_resolves_on_join_done_and_both_sides_know_each_other() -> None:
    async def main() -> None:
        async with nodes("a", "b") as (_clock, (a, b)):
            n, errors = await a.driver.join_addrs([b.addr], ignore_old=False)
            assert (n, errors) == (1, [])
            assert a.alive() == {"a", "b"} and b.alive() == {"a", "b"}
            joins = [m.name for e in a.events if isinstance(e, MemberEvent)
                     for m in e.members if e.type == "member-join"]
            assert joins == ["a", "b"]

    run(main)


def test_a_join_to_a_closed_port_fails_with_go_text() -> None:
    async def main() -> None:
        async with nodes("a") as (_clock, (a,)):
            closed = ("127.0.0.1", free_port())
            n, errors = await a.driver.join_addrs([closed], ignore_old=False)
            assert n == 0
            assert errors == [JoinError(closed, f"dial tcp 127.0.0.1:{closed[1]}: connect: "
                                                "connection refused")]

    run(main)


def test_a_peer_that_refuses_our_push_pull_is_a_remote_error() -> None:
    async def main() -> None:
        clock = FakeClock()
        a = Node("a", clock)
        # b wants encryption in (and still writes plain, so a can read why it refused).
        b = Node("b", clock, keyring=Keyring([bytes(range(16))]), verify_outgoing=False)
        # c encrypts its answer too: a cannot even read it.
        c = Node("c", clock, keyring=Keyring([bytes(range(16))]))
        for n in (a, b, c):
            await n.driver.bind("127.0.0.1", n.port)
        try:
            n_joined, errors = await a.driver.join_addrs([b.addr, c.addr], ignore_old=False)
            assert n_joined == 0
            assert [e.addr for e in errors] == [b.addr, c.addr]
            assert errors[0].reason.startswith("remote error: "), errors
            assert "encrypt" in errors[0].reason
            assert errors[1].reason == ("Remote state is encrypted and encryption is not "
                                        "configured")
            assert b.alive() == {"b"} and a.alive() == {"a"}
        finally:
            for n in (a, b, c):
                await n.driver.close()

    run(main)


def test_leave_returns_when_the_core_says_it_is_done() -> None:
    async def main() -> None:
        async with nodes("a", "b") as (clock, (a, b)):
            await a.driver.join_addrs([b.addr], ignore_old=False)
            started: list[float] = []
            error = await run_until_done(
                clock, a.driver.leave(on_started=lambda: started.append(clock.now())))
            assert error == "" and len(started) == 1
            assert a.serf.state.value == "left"
            # Not before the propagation delay (the core's deadline, on the fake clock).
            assert clock.now() - started[0] >= a.serf.config.leave_propagate_delay
            assert await a.driver.leave() == ""  # once left, leaving again is done at once
            assert await run_until_done(clock, _status(b, "a", "left"))

    run(main)


def test_a_leave_the_core_refuses_raises_its_error() -> None:
    async def main() -> None:
        async with nodes("a") as (_clock, (a,)):
            a.serf.shutdown()
            with pytest.raises(SerfError, match="Leave called after Shutdown"):
                await a.driver.leave()
            assert a.driver._leave is None

    run(main)


async def _status(node: Node, name: str, want: str) -> bool:
    # Yields to the loop while run_until_done moves fake time.
    while {m.name: m.status.label for m in node.serf.members()}.get(name) != want:  # noqa: ASYNC110
        await asyncio.sleep(0)
    return True


def test_force_leave_returns_once_its_broadcast_went_out() -> None:
    async def main() -> None:
        async with nodes("a", "b", "c") as (clock, (a, b, c)):
            assert (await a.driver.join_addrs([b.addr, c.addr], ignore_old=False))[0] == 2
            start = clock.now()
            await run_until_done(clock, a.driver.force_leave("c", prune=False))
            # It took gossip rounds (fake time), not one loop iteration.
            assert clock.now() > start
            assert a.driver._force_leaves == {}

    run(main)


def test_force_leave_times_out_when_its_broadcast_never_goes_out() -> None:
    async def main() -> None:
        async with nodes("a", "b", "c", broadcast_timeout=0.05) as (_clock, (a, b, c)):
            await a.driver.join_addrs([b.addr, c.addr], ignore_old=False)
            # Fake time stands still: no gossip tick takes the broadcast off the queue.
            with pytest.raises(TimeoutError):
                await a.driver.force_leave("c", prune=False)
            assert a.driver._force_leaves == {}

    run(main)


def test_query_records_go_to_the_callback_after_query_returns_done_last() -> None:
    async def main() -> None:
        async with nodes("a", "b") as (clock, (a, b)):
            await a.driver.join_addrs([b.addr], ignore_old=False)
            records: list[QueryRecord] = []
            done = asyncio.get_running_loop().create_future()

            def on_record(rec: QueryRecord) -> None:
                records.append(rec)
                if rec.type is QueryRecordType.DONE:
                    done.set_result(None)

            a.driver.query("uptime", b"x", QueryParam(request_ack=True), on_record)
            assert records == []  # our own ack is in already, but never before we return
            await run_until_done(clock, done, step=0.01)
            acks = sorted(r.from_ for r in records if r.type is QueryRecordType.ACK)
            resps = {r.from_: r.payload for r in records if r.type is QueryRecordType.RESPONSE}
            assert acks == ["a", "b"] and resps == {"a": b"a:x", "b": b"b:x"}
            assert records[-1].type is QueryRecordType.DONE
            assert [r.type for r in records].count(QueryRecordType.DONE) == 1

    run(main)


def test_query_records_as_an_async_iterator() -> None:
    async def main() -> None:
        async with nodes("a", "b") as (clock, (a, b)):
            await a.driver.join_addrs([b.addr], ignore_old=False)

            async def collect() -> list[QueryRecord]:
                return [r async for r in a.driver.query_records("q", b"", QueryParam())]

            recs = await run_until_done(clock, collect(), step=0.01)
            assert sorted(r.from_ for r in recs if r.type is QueryRecordType.RESPONSE) == [
                "a", "b"]
            assert recs[-1].type is QueryRecordType.DONE

    run(main)


def test_shutdown_ends_open_queries_with_their_done_record_at_once() -> None:
    async def main() -> None:
        async with nodes("a") as (_clock, (a,)):
            records: list[QueryRecord] = []
            a.driver.query("silent", b"", QueryParam(timeout=30.0), records.append)
            await asyncio.sleep(0)  # nobody answers: nothing but time would end it
            assert records == []
            a.driver.shutdown()
            # Delivered now, not a loop iteration later: the RPC server closes next.
            assert [r.type for r in records][-1] is QueryRecordType.DONE

    run(main)


def test_the_one_timer_is_the_cores_and_runs_on_the_clock() -> None:
    async def main() -> None:
        clock = FakeClock()
        a = Node("a", clock)
        a.driver.pump()  # not bound yet: nothing is sent, and nothing breaks
        assert a.driver._udp is None
        due = a.serf.get_timer()
        assert due is not None and clock.next_deadline() == due
        await a.driver.bind("127.0.0.1", a.port)
        try:
            assert a.driver.udp_port == a.port == a.driver.tcp_port
            before = a.serf.stats()["member_time"]
            await clock.advance(due - clock.now())
            # The timer fired, the core ran, and the next one is armed (only one).
            nxt = a.serf.get_timer()
            assert nxt is not None and nxt > due and clock.next_deadline() == nxt
            assert clock.pending() == 1
            assert a.serf.stats()["member_time"] == before
        finally:
            await a.driver.close()

    run(main)


def test_set_tags_goes_out_at_once_and_peers_see_the_update() -> None:
    async def main() -> None:
        async with nodes("a", "b") as (clock, (a, b)):
            await a.driver.join_addrs([b.addr], ignore_old=False)
            a.driver.set_tags({"role": "db"})
            assert a.driver.tags == {"role": "db"}

            async def seen() -> bool:
                while {m.name: m.tags for m in b.driver.members()}["a"] != {"role": "db"}:  # noqa: ASYNC110
                    await asyncio.sleep(0)
                return True

            await run_until_done(clock, seen())
            with pytest.raises(SerfError, match="exceeds limit"):
                a.driver.set_tags({"k": "v" * 600})
            assert a.driver.tags == {"role": "db"}

    run(main)


def test_a_lost_name_conflict_reaches_on_conflict_lost() -> None:
    async def main() -> None:
        async with nodes("a", "b", "c") as (clock, (a, b, c)):
            await a.driver.join_addrs([b.addr, c.addr], ignore_old=False)
            impostor = Node("a", clock)
            lost: list[ConflictLost] = []
            impostor.driver.on_conflict_lost = lost.append
            await impostor.driver.bind("127.0.0.1", impostor.port)
            try:
                await impostor.driver.join_addrs([b.addr], ignore_old=False)

                async def voted_out() -> bool:
                    while not lost:  # noqa: ASYNC110
                        await asyncio.sleep(0)
                    return True

                await run_until_done(clock, voted_out())
                assert impostor.serf.state is SerfState.SHUTDOWN
                assert a.serf.state is SerfState.ALIVE
            finally:
                await impostor.driver.close()

    run(main)


def test_bind_to_port_0_tries_another_port_when_tcp_holds_the_one_udp_got(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The kernel's free UDP port may be taken for TCP (by an outgoing connection's
    ephemeral port, say): a driver bound to port 0 picks again instead of failing."""
    real = asyncio.start_server
    tried: list[int] = []

    async def taken_once(*args: Any, **kw: Any) -> asyncio.Server:
        tried.append(kw["port"])
        if len(tried) == 1:
            raise OSError(errno.EADDRINUSE, "address already in use")
        return await real(*args, **kw)

    monkeypatch.setattr(asyncio, "start_server", taken_once)

    async def main() -> None:
        clock = FakeClock()
        node = Node("a", clock)
        try:
            await node.driver.bind("127.0.0.1", 0)
            assert len(tried) == 2
            assert node.driver.udp_port == node.driver.tcp_port == tried[1]
        finally:
            await node.driver.close()

    run(main)


def test_bind_to_a_given_port_in_use_fails_at_once() -> None:
    async def main() -> None:
        with socket.socket() as holder:
            holder.bind(("127.0.0.1", 0))
            holder.listen()
            port = holder.getsockname()[1]
            node = Node("a", FakeClock())
            with pytest.raises(OSError) as e:
                await node.driver.bind("127.0.0.1", port)
            assert e.value.errno == errno.EADDRINUSE
            await node.driver.close()

    run(main)
