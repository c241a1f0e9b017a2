"""serfd.agent.discovery alone: Serf's names, how a response is read, what Discovery joins,
when and how much (a fake backend, a fake joiner, a FakeClock), and what the backend answers
and hands over for each datagram (a fake socket; no network)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from serfd.agent import discovery, mdns_wire
from serfd.agent.discovery import (
    MAX_BATCH,
    MAX_SEEN,
    Discovery,
    MulticastBackend,
    Record,
    Zone,
    entries,
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


# ---- the wire: what hashicorp/mdns sends is read, what serfd sends is hashicorp/mdns's ----

def _labels(name: str) -> bytes:
    return b"".join(bytes([len(x)]) + x.encode() for x in name.strip(".").split(".")) + b"\0"


def serf_response() -> bytes:
    """A response as hashicorp/mdns (miekg/dns, compressed) writes it for a PTR question:
    PTR, SRV (target: the host name), A, TXT, names compressed with pointers."""
    out = bytearray(struct.pack("!6H", 0, 0x8400, 0, 4, 0, 0))
    stype_at = len(out)
    out += _labels(STYPE) + struct.pack("!HHIH", 12, 1, 120, 5)
    inst_at = len(out)
    out += b"\x02s1" + struct.pack("!H", 0xC000 | stype_at)
    rdata = struct.pack("!HHH", 10, 1, 7946)
    out += struct.pack("!H", 0xC000 | inst_at) + struct.pack("!HHIH", 33, 1, 120,
                                                               len(rdata) + 5)
    host_at = len(out) + len(rdata)
    out += rdata + b"\x03BOX\x00"
    out += struct.pack("!H", 0xC000 | host_at) + struct.pack("!HHIH", 1, 1, 120, 4)
    out += bytes([10, 0, 0, 1])
    txt = b"Serf 'web' cluster"
    out += struct.pack("!H", 0xC000 | inst_at) + struct.pack("!HHIH", 16, 1, 120, len(txt) + 1)
    out += bytes([len(txt)]) + txt
    return bytes(out)


def test_decode_reads_a_compressed_serf_response() -> None:
    msg = mdns_wire.decode(serf_response())
    inst = "s1." + STYPE
    assert msg.flags == 0x8400 and msg.questions == ()
    assert msg.records == (Record(STYPE, "PTR", target=inst),
                           Record(inst, "SRV", target="box.", port=7946),  # lowercased
                           Record("box.", "A", address="10.0.0.1"),
                           Record(inst, "TXT"))
    assert entries(msg.records, STYPE) == [("10.0.0.1", 7946)]


def _bad(data: bytes) -> bytes:
    return struct.pack("!6H", 0, 0x8400, 0, 1, 0, 0) + data


@pytest.mark.parametrize("data", [
    b"\x00\x00\x84",  # shorter than a header
    _bad(b"\x05ab"),  # label past the end
    _bad(b"\xc0\x0c"),  # a pointer to itself: a loop
    _bad(b"\xc0\x20" + bytes(20)),  # a pointer forwards
    _bad(b"\x40abc\x00"),  # label type 1 (extended)
    _bad((b"\x3f" + b"a" * 63) * 4 + b"\x00" + struct.pack("!HHIH", 1, 1, 1, 0)),  # > 255
    _bad(b"\x00" + struct.pack("!HHIH", 1, 1, 120, 5) + bytes(5)),  # A of 5 bytes
    _bad(b"\x00" + struct.pack("!HHIH", 1, 1, 120, 4) + bytes(3)),  # data past the end
    _bad(b"\x00" + struct.pack("!HHIH", 33, 1, 120, 3) + bytes(3)),  # SRV too short
    _bad(b"\x00" + struct.pack("!HHIH", 12, 1, 120, 2) + b"\x01a\x00"),  # PTR overruns
])
def test_decode_refuses_garbage(data: bytes) -> None:
    with pytest.raises(mdns_wire.BadPacket):
        mdns_wire.decode(data)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300) | st.lists(st.tuples(st.integers(0, 200), st.integers(0, 255)),
                                        max_size=6))
def test_decode_takes_anything(data: bytes | list[tuple[int, int]]) -> None:
    # random bytes, or Serf's response with a few bytes changed: a message or BadPacket
    if isinstance(data, list):
        mutated = bytearray(serf_response())
        for at, value in data:
            mutated[at % len(mutated)] = value
        data = bytes(mutated)
    with contextlib.suppress(mdns_wire.BadPacket):
        mdns_wire.decode(data)


def query(name: str, qtype: int, *, ident: int = 0x1234, unicast: bool = False,
          flags: int = 0) -> mdns_wire.Message:
    return mdns_wire.decode(mdns_wire.message(
        ident=ident, flags=flags, questions=[mdns_wire.question(name, qtype, unicast=unicast)]))


def zone(ip: str = "10.0.0.7") -> Zone:
    return Zone(discover="web", node="N1", advertise=(ip, 7946))


def test_zone_answers_a_ptr_question_as_hashicorp_mdns() -> None:
    inst = instance_name("N1", "web")
    # Serf's client asks from an ephemeral port: the id and question come back
    out = zone().respond(query(STYPE, 12), 40000)
    assert out is not None
    ident, flags, qd, an, ns, ar = struct.unpack_from("!6H", out)
    assert (ident, flags, qd, an, ns, ar) == (0x1234, 0x8400, 1, 4, 0, 0)
    msg = mdns_wire.decode(out)
    assert msg.questions == (mdns_wire.Question(STYPE, 12, False),)
    # hashicorp/mdns's order: PTR, SRV, address, TXT; the SRV's target is the instance
    assert msg.records == (Record(STYPE, "PTR", target=inst.lower()),
                           Record(inst.lower(), "SRV", target=inst.lower(), port=7946),
                           Record(inst.lower(), "A", address="10.0.0.7"),
                           Record(inst.lower(), "TXT"))
    # every record class IN without cache-flush, TTL 120; the TXT is Serf's one string
    for rtype in (12, 33, 1, 16):
        assert struct.pack("!HHI", rtype, 1, 120) in out
    assert out.endswith(b"\x12Serf 'web' cluster")
    # PTR (12) and SRV (33) fields: priority 10, weight 1, the port
    assert struct.pack("!HHH", 10, 1, 7946) in out


def test_zone_ids_and_questions() -> None:
    z = zone("2001:db8::7")
    # from port 5353, QM: id 0, no question echoed; QU: the query's id
    out = z.respond(query(STYPE, 12), 5353)
    assert out is not None and struct.unpack_from("!HHH", out) == (0, 0x8400, 0)
    out = z.respond(query(STYPE, 12, unicast=True), 5353)
    assert out is not None and struct.unpack_from("!HHH", out) == (0x1234, 0x8400, 0)
    assert mdns_wire.decode(out).records[2] == Record(instance_name("n1", "web"), "AAAA",
                                                      address="2001:db8::7")


@pytest.mark.parametrize(("name", "qtype", "kinds"), [
    (STYPE, 255, ["PTR", "SRV", "A", "TXT"]),
    ("n1." + STYPE, 255, ["SRV", "A", "TXT"]),  # names compare without case
    ("N1." + STYPE, 33, ["SRV", "A"]),
    ("N1." + STYPE, 16, ["TXT"]),
    ("N1." + STYPE, 1, ["A"]),
    ("N1." + STYPE, 28, []),  # no IPv6 address: nothing (no NSEC either)
    ("N1." + STYPE, 12, []),  # Serf's client's follow-up question: hashicorp/mdns answers none
    ("_services._dns-sd._udp.local.", 12, ["PTR"]),
    ("_serf_db._tcp.local.", 12, []),  # another cluster's service
    ("other.local.", 1, []),
])
def test_zone_answers_what_hashicorp_mdns_answers(name: str, qtype: int,
                                                  kinds: list[str]) -> None:
    out = zone().respond(query(name, qtype), 40000)
    assert ([r.kind for r in mdns_wire.decode(out).records] if out else []) == kinds


@pytest.mark.parametrize("flags", [0x8000, 0x0800, 0x0001, 0x0200])  # QR, opcode, rcode, TC
def test_zone_answers_only_plain_queries(flags: int) -> None:
    assert zone().respond(query(STYPE, 12, flags=flags), 40000) is None


def test_zone_response_is_read_by_zeroconf_too() -> None:
    # An independent reader (python-zeroconf, whichever release is installed).
    zeroconf = pytest.importorskip("zeroconf")
    out = zone().respond(query(STYPE, 12), 5353)
    assert out is not None
    incoming = zeroconf.DNSIncoming(out)
    answers = incoming.answers() if callable(incoming.answers) else incoming.answers
    assert incoming.valid and [type(a).__name__ for a in answers] == [
        "DNSPointer", "DNSService", "DNSAddress", "DNSText"]
    assert {a.ttl for a in answers} == {120} and not any(a.unique for a in answers)
    assert answers[1].port == 7946 and answers[3].text == b"\x12Serf 'web' cluster"


def test_a_node_name_mdns_cannot_carry() -> None:
    with pytest.raises(ValueError, match="63 bytes"):
        Zone(discover="web", node="x" * 64, advertise=("10.0.0.7", 7946))


# ---- the backend: each datagram, on a fake socket ----

class FakeSocket:
    def __init__(self, incoming: list[tuple[bytes, list[tuple[int, int, bytes]], int,
                                            tuple[str, int]]] | None = None) -> None:
        self.incoming = list(incoming or [])
        self.sent: list[tuple[bytes, Any]] = []

    def sendto(self, data: bytes, addr: Any) -> int:
        self.sent.append((data, addr))
        return len(data)

    def recvmsg(self, size: int, ancsize: int) -> tuple[bytes, list[tuple[int, int, bytes]],
                                                          int, tuple[str, int]]:
        if not self.incoming:
            raise BlockingIOError
        return self.incoming.pop(0)


def backend(counters: dict[str, int], interface: str | None = None
            ) -> tuple[MulticastBackend, list[list[Record]]]:
    b = MulticastBackend(discover="web", node="n1", advertise=("10.0.0.7", 7946),
                         interface=interface, clock=FakeClock(), counters=counters)
    b.zone = Zone(discover="web", node="n1", advertise=("10.0.0.7", 7946))
    heard: list[list[Record]] = []
    b.on_records = heard.append
    return b, heard


def test_backend_answers_queries_by_unicast_on_the_5353_socket() -> None:
    b, heard = backend({})
    sock = FakeSocket()
    data = mdns_wire.message(ident=7, questions=[mdns_wire.question(STYPE, 12)])
    b._datagram(sock, data, 0, ("10.0.0.9", 40000), True)  # type: ignore[arg-type]
    assert [(mdns_wire.decode(d).id, a) for d, a in sock.sent] == [(7, ("10.0.0.9", 40000))]
    other = FakeSocket()  # the querier's ephemeral socket answers nothing
    b._datagram(other, data, 0, ("10.0.0.9", 40000), False)  # type: ignore[arg-type]
    assert other.sent == [] and heard == []


def test_backend_hands_over_responses_about_our_service_only() -> None:
    b, heard = backend({})
    sock = FakeSocket()
    b._datagram(sock, serf_response(), 0, ("10.0.0.1", 5353), False)  # type: ignore[arg-type]
    other = serf_response().replace(b"_serf_web", b"_serf_xyz")
    b._datagram(sock, other, 0, ("10.0.0.2", 5353), True)  # type: ignore[arg-type]
    assert len(heard) == 1 and entries(heard[0], STYPE) == [("10.0.0.1", 7946)]
    assert sock.sent == []  # a response is never answered


def test_backend_counts_garbage(caplog: pytest.LogCaptureFixture) -> None:
    counters: dict[str, int] = {}
    b, heard = backend(counters)
    sock = FakeSocket()
    b._datagram(sock, b"\x00" * 5, 0, ("10.0.0.9", 5353), True)  # type: ignore[arg-type]
    b._datagram(sock, serf_response(), socket.MSG_TRUNC,  # type: ignore[arg-type]
                ("10.0.0.9", 5353), True)
    assert counters == {"mdns_bad_packet": 2} and heard == [] and sock.sent == []
    assert "mDNS: dropped a datagram from 10.0.0.9:5353" in caplog.text


def test_backend_with_an_interface_ignores_the_others() -> None:
    b, heard = backend({})
    b.accept = {2}

    sock = FakeSocket([(serf_response(), pktinfo(3), 0, ("10.0.0.1", 5353)),
                       (serf_response(), pktinfo(2), 0, ("10.0.0.2", 5353))])
    b._readable(sock, True)  # type: ignore[arg-type]
    assert len(heard) == 1 and sock.incoming == []


def pktinfo(index: int, to: str = "224.0.0.251") -> list[tuple[int, int, bytes]]:
    if ":" in to:
        return [(socket.IPPROTO_IPV6, socket.IPV6_PKTINFO,
                 socket.inet_pton(socket.AF_INET6, to) + struct.pack("=I", index))]
    return [(socket.IPPROTO_IP, discovery.IP_PKTINFO,
             struct.pack("=i", index) + socket.inet_aton(to) + socket.inet_aton(to))]


def test_backend_answers_only_what_was_sent_to_the_group() -> None:
    # As hashicorp/mdns's listener bound to the group: a query sent to port 5353 by
    # unicast (possibly from off the link) gets no answer.
    b, _ = backend({})
    q = mdns_wire.message(ident=7, questions=[mdns_wire.question(STYPE, 12)])
    sock = FakeSocket([(q, pktinfo(2, "10.0.0.7"), 0, ("192.0.2.1", 40000)),
                       (q, pktinfo(2, "2001:db8::7"), 0, ("2001:db8::1", 40000, 0, 0)),
                       (q, pktinfo(2, "ff02::fb"), 0, ("fe80::1", 40000, 0, 2)),
                       (q, pktinfo(2), 0, ("10.0.0.9", 40000))])
    b._readable(sock, True)  # type: ignore[arg-type]
    assert [a for _, a in sock.sent] == [("fe80::1", 40000, 0, 2), ("10.0.0.9", 40000)]
