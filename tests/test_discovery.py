"""serfd.agent.discovery alone: Serf's names, how a response is read, and what Discovery
joins, when and how much (a fake backend, a fake joiner, a FakeClock; no sockets)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from serfd.agent import discovery
from serfd.agent.discovery import (
    MAX_BATCH,
    MAX_SEEN,
    Discovery,
    Record,
    entries,
    fix_nsec_writer,
    instance_name,
    service_type,
    txt_record,
)
from serfd.agent.joins import JoinFailed
from serfd.testing.clock import FakeClock

STYPE = "_serf_web._tcp.local."


def test_names_are_serfs() -> None:
    # mdns.go: mdnsName = "_serf_%s._tcp", domain "local.", instance = node name,
    # TXT "Serf '%s' cluster".
    assert service_type("web") == STYPE
    assert instance_name("n1", "web") == "n1._serf_web._tcp.local."
    assert txt_record("web") == "Serf 'web' cluster"


def serf_answer(node: str, ip: str, port: int = 7946, host: str = "box.") -> list[Record]:
    """A response as hashicorp/mdns's server writes it for a PTR question."""
    inst = instance_name(node, "web")
    return [Record(STYPE, "PTR", target=inst),
            Record(inst, "SRV", target=host, port=port),
            Record(host, "A" if ":" not in ip else "AAAA", address=ip)]


def test_entries_read_a_response_as_serfs_client() -> None:
    assert entries(serf_answer("a", "10.0.0.1"), STYPE) == [("10.0.0.1", 7946)]
    # records in any order; the target's address, IPv4 before IPv6
    recs = [*serf_answer("a", "10.0.0.1")[::-1], Record("box.", "AAAA", address="2001:db8::1")]
    assert entries(recs, STYPE) == [("10.0.0.1", 7946)]
    assert entries(serf_answer("a", "2001:db8::1", 8000), STYPE) == [("2001:db8::1", 8000)]
    # the address may be named after the instance itself (serfd's own records)
    inst = instance_name("b", "web")
    assert entries([Record(inst, "SRV", target=inst, port=7000),
                    Record(inst, "A", address="10.0.0.2")], STYPE) == [("10.0.0.2", 7000)]
    # two instances in one response
    both = serf_answer("a", "10.0.0.1", host="h1.") + serf_answer("b", "10.0.0.2", host="h2.")
    assert entries(both, STYPE) == [("10.0.0.1", 7946), ("10.0.0.2", 7946)]


@pytest.mark.parametrize("recs", [
    serf_answer("a", "10.0.0.1")[:2],  # no address
    serf_answer("a", "10.0.0.1")[::2],  # no SRV
    [Record("_serf_db._tcp.local.", "PTR", target="a._serf_db._tcp.local."),
     Record("a._serf_db._tcp.local.", "SRV", target="box.", port=7946),
     Record("box.", "A", address="10.0.0.1")],  # another cluster's service
    [Record("printer._ipp._tcp.local.", "SRV", target="box.", port=631),
     Record("box.", "A", address="10.0.0.1")],  # not a Serf service at all
    serf_answer("a", "fe80::1"),  # link-local: no zone to join it with
    serf_answer("a", "10.0.0.1", port=0),
    serf_answer("a", "not-an-ip"),
])
def test_entries_leave_out_what_serf_cannot_join(recs: list[Record]) -> None:
    assert entries(recs, STYPE) == []


class FakeBackend:
    def __init__(self) -> None:
        self.on_records: Callable[[list[Record]], None] | None = None
        self.queries = 0
        self.closed = False

    def start(self, on_records: Callable[[list[Record]], None]) -> None:
        self.on_records = on_records

    def query(self) -> None:
        self.queries += 1

    def close(self) -> None:
        self.closed = True


class FakeJoiner:
    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.calls: list[tuple[float, list[str], bool]] = []
        self.fail = False
        self.takes = 0.0  # how long a join runs

    async def join(self, texts: list[str], replay: bool) -> int:
        self.calls.append((self.clock.now(), list(texts), replay))
        if self.takes:
            await self.clock.sleep(self.takes)
        if self.fail:
            raise JoinFailed("1 error occurred:\n\t* Failed to join 10.0.0.9: refused\n\n")
        return len(texts)


def run(body: Callable[[FakeClock, FakeBackend, FakeJoiner, Discovery, dict[str, int]],
                       Awaitable[None]]) -> None:
    async def main() -> None:
        clock = FakeClock()
        backend = FakeBackend()
        joiner = FakeJoiner(clock)
        counters: dict[str, int] = {}
        tasks: set[asyncio.Task[Any]] = set()

        def spawn(coro: Any) -> None:
            task = asyncio.ensure_future(coro)
            tasks.add(task)

        d = Discovery(backend, joiner, clock=clock, discover="web",
                      own_addr=("10.0.0.100", 7946), replay=lambda: True,
                      counters=counters, spawn=spawn)
        await d.start()
        try:
            await body(clock, backend, joiner, d, counters)
        finally:
            await d.stop()
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        assert backend.closed

    asyncio.run(main())


def test_polls_at_start_and_every_60s() -> None:
    async def body(clock: FakeClock, backend: FakeBackend, joiner: FakeJoiner,
                   d: Discovery, counters: dict[str, int]) -> None:
        await clock.settle()
        assert backend.queries == 1
        await clock.advance(59.9)
        assert backend.queries == 1
        await clock.advance(0.2)
        assert backend.queries == 2  # Serf's mdnsPollInterval

    run(body)


def test_joins_a_batch_after_the_quiet_period_once_each() -> None:
    async def body(clock: FakeClock, backend: FakeBackend, joiner: FakeJoiner,
                   d: Discovery, counters: dict[str, int]) -> None:
        t0 = clock.now()
        d.on_records(serf_answer("a", "10.0.0.1"))
        await clock.advance(0.05)
        d.on_records(serf_answer("b", "2001:db8::2", 8000, host="b."))  # restarts the quiet
        d.on_records(serf_answer("me", "10.0.0.100"))  # our own answer: never joined
        await clock.advance(0.09)
        assert joiner.calls == []
        await clock.advance(0.02)
        assert joiner.calls == [(pytest.approx(t0 + 0.15), ["10.0.0.1:7946",
                                                            "[2001:db8::2]:8000"], True)]
        # heard again: already seen, as in Serf
        d.on_records(serf_answer("a", "10.0.0.1") + serf_answer("b", "2001:db8::2", 8000, "b."))
        await clock.advance(1.0)
        assert len(joiner.calls) == 1
        assert d.stats()["mdns_seen"] == "2" and d.stats()["mdns_joined"] == "2"

    run(body)


def test_a_failed_join_is_logged_and_not_retried(caplog: pytest.LogCaptureFixture) -> None:
    async def body(clock: FakeClock, backend: FakeBackend, joiner: FakeJoiner,
                   d: Discovery, counters: dict[str, int]) -> None:
        joiner.fail = True
        d.on_records(serf_answer("x", "10.0.0.9"))
        await clock.advance(0.2)
        d.on_records(serf_answer("x", "10.0.0.9"))
        await clock.advance(0.2)
        assert len(joiner.calls) == 1

    run(body)
    assert "mDNS: failed to join 10.0.0.9:7946" in caplog.text


def test_batches_are_bounded_and_cut_counted() -> None:
    async def body(clock: FakeClock, backend: FakeBackend, joiner: FakeJoiner,
                   d: Discovery, counters: dict[str, int]) -> None:
        t0 = clock.now()
        # A peer answering without pause cannot hold the batch back past 1 s, nor make
        # it longer than MAX_BATCH.
        for i in range(40):
            d.on_records(serf_answer(f"n{i}", f"10.1.0.{i + 1}"))
            await clock.advance(0.05)
        assert len(joiner.calls) >= 1
        when, texts, _ = joiner.calls[0]
        assert when <= t0 + 1.0 + 1e-9
        assert len(texts) <= MAX_BATCH
        await clock.advance(1.0)
        assert sum(len(c[1]) for c in joiner.calls) == 40  # nothing cut at this pace

        # All in one response: MAX_BATCH joined, the rest cut and counted.
        many: list[Record] = []
        for i in range(MAX_BATCH + 10):
            many += serf_answer(f"m{i}", f"10.2.{i // 250}.{i % 250 + 1}", host=f"h{i}.")
        before = len(joiner.calls)
        d.on_records(many)
        await clock.advance(0.2)
        assert [len(c[1]) for c in joiner.calls[before:]] == [MAX_BATCH]
        assert counters["mdns_batch_full"] == 10

    run(body)


def test_one_batch_join_at_a_time() -> None:
    async def body(clock: FakeClock, backend: FakeBackend, joiner: FakeJoiner,
                   d: Discovery, counters: dict[str, int]) -> None:
        joiner.takes = 5.0  # e.g. addresses that do not answer
        t0 = clock.now()
        d.on_records(serf_answer("a", "10.0.0.1"))
        await clock.advance(0.2)
        d.on_records(serf_answer("b", "10.0.0.2"))
        d.on_records(serf_answer("c", "10.0.0.3"))
        await clock.advance(1.0)
        assert [c[1] for c in joiner.calls] == [["10.0.0.1:7946"]]  # the second waits
        await clock.advance(4.0)
        assert [c[1] for c in joiner.calls] == [["10.0.0.1:7946"],
                                                ["10.0.0.2:7946", "10.0.0.3:7946"]]
        assert joiner.calls[1][0] == pytest.approx(t0 + 0.1 + 5.0)

    run(body)


def test_seen_addresses_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(discovery, "MAX_SEEN", 3)

    async def body(clock: FakeClock, backend: FakeBackend, joiner: FakeJoiner,
                   d: Discovery, counters: dict[str, int]) -> None:
        for i in range(5):
            d.on_records(serf_answer(f"n{i}", f"10.0.0.{i + 1}"))
        await clock.advance(0.2)
        assert joiner.calls[0][1] == ["10.0.0.1:7946", "10.0.0.2:7946", "10.0.0.3:7946"]
        assert counters["mdns_seen_full"] == 2

    run(body)
    assert MAX_SEEN == 4096


def test_backend_thread_hands_records_to_the_loop() -> None:
    async def body(clock: FakeClock, backend: FakeBackend, joiner: FakeJoiner,
                   d: Discovery, counters: dict[str, int]) -> None:
        import threading

        assert backend.on_records is not None
        t = threading.Thread(target=backend.on_records, args=(serf_answer("a", "10.0.0.1"),))
        t.start()
        t.join()
        await clock.settle()  # call_soon_threadsafe ran on the loop
        await clock.advance(0.2)
        assert joiner.calls and joiner.calls[0][1] == ["10.0.0.1:7946"]

    run(body)


class _Out:
    """Collects what a record's write() emits, as DNSOutgoing would."""

    def __init__(self) -> None:
        self.data = b""

    def write_name(self, name: str) -> None:
        self.data += b"<" + name.encode() + b">"

    def write_short(self, value: int) -> None:
        self.data += value.to_bytes(2, "big")

    def write_string(self, value: bytes) -> None:
        self.data += value


def test_nsec_is_written_with_octet_window_and_length() -> None:
    zeroconf = pytest.importorskip("zeroconf")
    fix_nsec_writer(zeroconf)
    out = _Out()
    # zeroconf's "no AAAA at this name" record (type 28 = AAAA: bit 28 of window 0)
    zeroconf.DNSNsec("x.local.", 47, 1, 120, "x.local.", [28]).write(out)
    # RFC 4034 4.1.2: next name, window 0, bitmap length 4, then bits 0..31
    assert out.data == b"<x.local.>" + bytes([0, 4, 0, 0, 0, 0x08])
    assert fix_nsec_writer(zeroconf) is False  # fixed once; a fixed zeroconf is left alone
