"""mDNS discovery, Serf's ``discover = "NAME"``: advertise this node, find the others, join.

Theory of operation
-------------------
Serf's agent (cmd/serf/command/agent/mdns.go, over hashicorp/mdns) advertises the
service ``_serf_NAME._tcp`` in ``local.`` with the node name as the instance, the
advertised gossip address and port (SRV and A/AAAA) and the TXT ``Serf 'NAME'
cluster``; it asks for that service every 60 s and joins every address it has not
seen, in batches: a new address (re)starts a 100 ms quiet period, at whose end the
batch is joined. :class:`Discovery` does the same, so serf and serfd agents with the
same NAME find each other:

* the backend (:class:`MulticastBackend`: serfd's own UDP sockets on the agent's loop;
  a fake in unit tests) answers queries about our instance, sends one PTR query per
  poll, and hands the records of every response about our service type to
  :meth:`Discovery.on_records`;
* :func:`entries` reads one response as Serf's client does (PTR -> instance, its SRV
  -> target and port, the target's A/AAAA -> address), keeping only instances of our
  service type;
* :meth:`Discovery.on_records` queues each new address (not ours, not seen, not
  queued) and arms the quiet timer; the batch is joined through the
  :class:`~serfd.agent.joins.Joiner` (Serf's agent.Join, replaying as
  ``replay_on_join``).

Bounds (whatever a peer answers costs at most this): at most :data:`MAX_BATCH`
addresses per batch and one batch join at a time, a batch joined at most
:data:`MAX_BATCH_DELAY` after its first address even if answers keep coming (or when
the join in flight ends), at most :data:`MAX_SEEN` addresses remembered;
what is cut is counted (``dropped_mdns_*`` in ``serfctl info``) and logged
rate-limited. Like Serf, an address once tried is not tried again by discovery (the
core's reconnect takes over a member it knew).

The responder: unicast only, as hashicorp/mdns
----------------------------------------------
Serf's responder never multicasts: it answers every question by unicast to the
address and port that asked, and announces nothing. Its client reads *every* response
it hears on 224.0.0.251/ff02::fb during its one-second query window, whatever the
service, and joins each complete SRV + A/AAAA: a serfd node that multicast its records
(as RFC 6762 responders do: announcements, answers, goodbyes) would be joined by the
serf agents of *another* cluster that happen to be asking at that moment. So serfd
answers exactly as hashicorp/mdns does, from its own sockets (:class:`Zone` says what,
:class:`MulticastBackend` where):

* one socket per family bound to port 5353 (``SO_REUSEADDR``/``SO_REUSEPORT``: it
  shares the port with avahi, a serf agent or another serfd), joined to 224.0.0.251 /
  ff02::fb on the ``[mdns] interface`` (else ``interface``; else every interface with
  an address of that family, at most :data:`MAX_INTERFACES`); with an interface set,
  what arrives on another one is ignored (``IP_PKTINFO``);
* only what was sent to the group is taken on that socket (as hashicorp/mdns, whose
  listener is bound to the group: a unicast datagram to port 5353, which could come
  from off the link, gets no answer);
* a query (opcode 0, rcode 0, not truncated) is answered from that socket (source port
  5353) by unicast to the asker's address and port, never by multicast; hashicorp/mdns's
  records and layout: all in the Answer section, TTL 120, class IN without the
  cache-flush bit, for a PTR question on the service PTR, SRV (priority 10, weight 1),
  A or AAAA, TXT, in that order (Serf's client ties an address to a service only
  through an SRV seen earlier in the same response, and counts an entry complete only
  with its TXT); the instance's own ANY/SRV/TXT/A/AAAA questions and the
  ``_services._dns-sd._udp`` enumeration get hashicorp/mdns's subsets. The id is the
  query's for a QU question or a query from a port other than 5353, 0 otherwise; a
  query from another port (RFC 6762 6.7's legacy resolver, which Serf's client is)
  also gets its questions echoed, which Serf's client ignores;
* nothing is announced, nothing is sent at stop.

The SRV record's target (the "host" of the service) is the instance name itself (Serf
uses the machine's host name), so two serfd nodes on one host never share an address
record's name.

The poller, as Serf's client: a QM question for PTR ``_serf_NAME._tcp.local.``, at
start and every 60 s, multicast from an ephemeral socket per family (on each chosen
interface); responders answer to that port (hashicorp/mdns and RFC 6762's legacy
unicast alike). Every response heard, on that socket or multicast on port 5353, whose
records name our service type goes to :meth:`Discovery.on_records`.

The DNS messages are read and written by :mod:`serfd.agent.mdns_wire` (serfd's own;
python-zeroconf is not used: its packet API differs between Debian 12's 0.47.3 and the
later, compiled releases, and 0.47.3 writes NSEC records hashicorp/mdns refuses).
Garbage (malformed or oversized datagrams) is counted as ``dropped_mdns_bad_packet``
and logged rate-limited; at most :data:`MAX_PACKET` bytes are read per datagram and
:data:`READS_PER_WAKEUP` datagrams per socket per wakeup of the loop.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
import struct
from collections.abc import Callable, Iterable
from typing import Any, Protocol

from serfd.agent import mdns_wire as wire
from serfd.agent.clock import Clock, Timer
from serfd.agent.mdns_wire import MAX_PACKET, BadPacket, Message, Record
from serfd.base.ratelog import DropLog

__all__ = [
    "MAX_BATCH",
    "MAX_SEEN",
    "Backend",
    "Discovery",
    "MulticastBackend",
    "Record",
    "Zone",
    "entries",
    "instance_name",
    "service_type",
    "txt_record",
]

log = logging.getLogger("serfd.agent.mdns")

POLL_INTERVAL = 60.0  # Serf's mdnsPollInterval
QUIET_INTERVAL = 0.1  # Serf's mdnsQuietInterval
MAX_BATCH = 32  # addresses per join (Serf's hosts channel holds 32 entries)
MAX_BATCH_DELAY = 1.0  # a batch is joined this long after its first address at the latest
MAX_SEEN = 4096  # addresses remembered as tried
MDNS_PORT = 5353
MDNS_V4 = "224.0.0.251"
MDNS_V6 = "ff02::fb"
TTL = 120  # hashicorp/mdns's defaultTTL, every record
SERVICES = "_services._dns-sd._udp.local."  # DNS-SD's service type enumeration
MAX_QUESTIONS = 16  # questions of one query looked at
MAX_INTERFACES = 16  # per family, when no interface is set (IGMP allows 20 groups a socket)
READS_PER_WAKEUP = 64  # datagrams read from one socket before the loop runs others
IP_PKTINFO = 8  # Linux's <linux/in.h> (the socket module has it from Python 3.13 only)


def service_type(discover: str) -> str:
    """The DNS-SD service type Serf advertises and asks for: ``_serf_NAME._tcp.local.``."""
    return f"_serf_{discover}._tcp.local."


def instance_name(node: str, discover: str) -> str:
    """This node's instance: its node name under the service type."""
    return f"{node}.{service_type(discover)}"


def txt_record(discover: str) -> str:
    """The one TXT string Serf puts in its service."""
    return f"Serf '{discover}' cluster"


def entries(records: Iterable[Record], stype: str) -> list[tuple[str, int]]:
    """The (address, port) of each complete instance of ``stype`` in one response, in the
    order the instances appear (Serf's client: PTR, SRV and the target's A/AAAA)."""
    stype = stype.lower()
    suffix = "." + stype
    recs = list(records)
    instances: dict[str, None] = {}  # ordered; sets and dicts keep this linear
    for r in recs:
        name = r.target if r.kind == "PTR" and r.name == stype else r.name
        if (r.kind in ("PTR", "SRV") and name.endswith(suffix) and len(name) > len(suffix)
                and name not in instances):
            instances[name] = None
    srv = {r.name: r for r in recs if r.kind == "SRV"}
    v4: dict[str, str] = {}
    v6: dict[str, str] = {}
    for r in recs:
        table = v4 if r.kind == "A" else v6 if r.kind == "AAAA" else None
        if table is not None:
            table.setdefault(r.name, r.address)
    out: dict[tuple[str, int], None] = {}
    for inst in instances:
        s = srv.get(inst)
        if s is None or not 0 < s.port < 65536:
            continue
        addr = v4.get(s.target) or v4.get(inst) or v6.get(s.target) or v6.get(inst)
        if addr is None:
            continue
        try:
            ip = ipaddress.ip_address(addr)
        except ValueError:
            continue
        if ip.is_link_local or ip.is_unspecified or ip.is_multicast:
            continue  # no scope to join a link-local address with
        out[(str(ip), s.port)] = None
    return list(out)


class Backend(Protocol):
    """The mDNS responder and querier (:class:`MulticastBackend`, or a fake)."""

    def start(self, on_records: Callable[[list[Record]], None]) -> None:
        """Open the sockets and answer from now on (on the loop; OSError when no socket
        could be opened). ``on_records`` is called, on the loop, with the records of
        each response about our service heard."""

    def query(self) -> None:
        """Ask once for the service type (does not block)."""

    def close(self) -> None:
        """Stop answering and close the sockets (sends nothing)."""


class JoinTarget(Protocol):
    async def join(self, texts: list[str], replay: bool) -> int: ...


class Discovery:
    """Serf's AgentMDNS: advertise, poll, join new addresses in quiet-period batches."""

    def __init__(self, backend: Backend, joiner: JoinTarget, *, clock: Clock, discover: str,
                 own_addr: tuple[str, int], replay: Callable[[], bool],
                 counters: dict[str, int], spawn: Callable[[Any], None]) -> None:
        self.backend = backend
        self.joiner = joiner
        self.clock = clock
        self.stype = service_type(discover)
        self.own_addr = own_addr
        self.replay = replay
        self.spawn = spawn
        self.drops = DropLog(log, counters)
        self.pending: list[tuple[str, int]] = []
        self.seen: set[tuple[str, int]] = set()
        self.joined = 0  # members joined through discovery
        self.polls = 0
        self._first_pending = 0.0
        self._quiet: Timer | None = None
        self._running = False
        self._joining = False  # one batch join at a time

    async def start(self) -> None:
        """Start the backend and the poll loop."""
        self.backend.start(self.on_records)
        self._running = True
        self.spawn(self._poll())
        log.info("mDNS: advertising and looking for %s", self.stype)

    async def stop(self) -> None:
        """Stop polling and joining, close the backend (no goodbye, as Serf)."""
        self._running = False
        if self._quiet is not None:
            self._quiet.cancel()
            self._quiet = None
        self.backend.close()

    async def _poll(self) -> None:
        while self._running:
            self.polls += 1
            self.backend.query()
            await self.clock.sleep(POLL_INTERVAL)

    def on_records(self, records: list[Record]) -> None:
        """One response: queue the addresses not seen yet and (re)arm the quiet timer."""
        if not self._running:
            return
        now = self.clock.now()
        for addr in entries(records, self.stype):
            if addr == self.own_addr or addr in self.seen or addr in self.pending:
                continue
            if len(self.seen) + len(self.pending) >= MAX_SEEN:
                self.drops.drop("mdns_seen_full", now, "mDNS: %d addresses seen already; "
                                "%s:%d not joined", MAX_SEEN, addr[0], addr[1])
                continue
            if len(self.pending) >= MAX_BATCH:
                self.drops.drop("mdns_batch_full", now, "mDNS: %d addresses waiting to be "
                                "joined; %s:%d left for a later poll", MAX_BATCH, *addr)
                continue
            if not self.pending:
                self._first_pending = now
            self.pending.append(addr)
            self._arm(now)

    def _arm(self, now: float) -> None:
        if self._quiet is not None:
            self._quiet.cancel()
        when = min(now + QUIET_INTERVAL, self._first_pending + MAX_BATCH_DELAY)
        self._quiet = self.clock.call_at(when, self._flush)

    def _flush(self) -> None:
        self._quiet = None
        if self._joining:
            return  # the batch waits for the join in flight (re-armed when it ends)
        batch, self.pending = self.pending, []
        if not batch or not self._running:
            return
        self.seen.update(batch)  # Serf marks them seen whatever the join's outcome
        self._joining = True
        self.spawn(self._join(batch))

    async def _join(self, batch: list[tuple[str, int]]) -> None:
        from serfd.agent.joins import JoinFailed
        from serfd.core.serf import SerfError

        texts = [f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}" for ip, port in batch]
        try:
            n = await self.joiner.join(texts, self.replay())
        except (JoinFailed, SerfError) as e:
            log.error("mDNS: failed to join %s: %s", ", ".join(texts), e)
        else:
            self.joined += n
            log.info("mDNS: joined %d hosts", n)
        finally:
            self._joining = False
            if self.pending and self._running:
                self._flush()

    def stats(self) -> dict[str, str]:
        return {"mdns_service": self.stype, "mdns_polls": str(self.polls),
                "mdns_seen": str(len(self.seen)), "mdns_joined": str(self.joined)}


class Zone:
    """hashicorp/mdns's MDNSService for this node: the records answering each question
    (see the module docstring), already in wire form. ValueError when a name cannot be
    written (a label of the node name longer than 63 bytes)."""

    def __init__(self, *, discover: str, node: str, advertise: tuple[str, int]) -> None:
        stype = service_type(discover)
        inst = instance_name(node, discover)
        ptr = wire.ptr_record(stype, TTL, inst)
        srv = wire.srv_record(inst, TTL, advertise[1], inst)
        addr = wire.address_record(inst, TTL, advertise[0])
        txt = wire.txt_record(inst, TTL, [txt_record(discover)])
        enum = wire.ptr_record(SERVICES, TTL, stype)
        addr_type = wire.TYPE_AAAA if ":" in advertise[0] else wire.TYPE_A
        stype, inst = stype.lower(), inst.lower()
        self.records: dict[tuple[str, int], list[bytes]] = {
            (SERVICES, wire.TYPE_PTR): [enum], (SERVICES, wire.TYPE_ANY): [enum],
            (stype, wire.TYPE_PTR): [ptr, srv, addr, txt],
            (stype, wire.TYPE_ANY): [ptr, srv, addr, txt],
            (inst, wire.TYPE_ANY): [srv, addr, txt],
            (inst, wire.TYPE_SRV): [srv, addr],
            (inst, wire.TYPE_TXT): [txt],
            (inst, addr_type): [addr],
        }

    def respond(self, query: Message, port: int) -> bytes | None:
        """The unicast response to a query that came from ``port``, or None."""
        if query.flags & (wire.FLAG_RESPONSE | wire.MASK_OPCODE | wire.MASK_RCODE
                          | wire.FLAG_TRUNCATED):
            return None  # RFC 6762 18.3, 18.11; truncated: as hashicorp/mdns
        answers: list[bytes] = []
        asked: list[wire.Question] = []
        for q in query.questions[:MAX_QUESTIONS]:
            recs = self.records.get((q.name, q.qtype))
            if recs:
                asked.append(q)
                answers += [r for r in recs if r not in answers]
        if not answers:
            return None
        legacy = port != MDNS_PORT
        ident = query.id if legacy or any(q.unicast for q in asked) else 0
        questions = [wire.question(q.name, q.qtype) for q in asked] if legacy else []
        return wire.message(ident=ident, flags=wire.FLAG_RESPONSE | wire.FLAG_AUTHORITATIVE,
                            questions=questions, answers=answers)


class MulticastBackend:
    """serfd's mDNS sockets on the agent's loop: the unicast-only responder and the
    poller (see the module docstring)."""

    def __init__(self, *, discover: str, node: str, advertise: tuple[str, int],
                 interface: str | None, clock: Clock, counters: dict[str, int],
                 ipv4: bool = True, ipv6: bool = True) -> None:
        self.discover = discover
        self.node = node
        self.stype = service_type(discover).lower()
        self.advertise = advertise
        self.interface = interface
        self.clock = clock
        self.drops = DropLog(log, counters)
        self.families: list[int] = [
            f for f, on in ((socket.AF_INET, ipv4), (socket.AF_INET6, ipv6)) if on]
        self.zone: Zone | None = None
        self.query_packet = wire.message(questions=[wire.question(self.stype, wire.TYPE_PTR)])
        self.on_records: Callable[[list[Record]], None] = lambda _records: None
        self.accept: set[int] | None = None  # interfaces heard on port 5353 (None: all)
        self.sends: dict[int, list[int]] = {}  # family -> interfaces queries go out on
        self.sockets: list[socket.socket] = []
        self.queriers: dict[int, socket.socket] = {}
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(self, on_records: Callable[[list[Record]], None]) -> None:
        self.on_records = on_records
        self._loop = asyncio.get_running_loop()
        try:
            self.zone = Zone(discover=self.discover, node=self.node, advertise=self.advertise)
        except ValueError as e:
            log.error("mDNS: this node cannot be advertised (%s); looking for peers only", e)
        if self.interface is not None:
            index = socket.if_nametoindex(self.interface)
            self.accept = {index}
            chosen = {family: [index] for family in self.families}
        else:
            chosen = _interfaces(self.families)
        errors: list[str] = []
        for family in self.families:
            try:
                self._open(family, chosen.get(family, []))
            except OSError as e:
                name = "IPv4" if family == socket.AF_INET else "IPv6"
                errors.append(f"{name}: {e.strerror or e}")
                log.warning("mDNS over %s unavailable: %s", name, e.strerror or e)
        if not self.queriers:
            self.close()
            raise OSError(f"no mDNS socket could be opened ({'; '.join(errors)})")

    def _open(self, family: int, indexes: list[int]) -> None:
        if not indexes:
            raise OSError("no interface with an address of this family")
        v6 = family == socket.AF_INET6
        resp = socket.socket(family, socket.SOCK_DGRAM)
        query = socket.socket(family, socket.SOCK_DGRAM)
        try:
            resp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if hasattr(socket, "SO_REUSEPORT"):
                resp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if v6:
                for s in (resp, query):
                    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_HOPS, 255)
                resp.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_RECVPKTINFO, 1)
                resp.bind(("::", MDNS_PORT))
                query.bind(("::", 0))
            else:
                for s in (resp, query):
                    s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 255)
                resp.setsockopt(socket.IPPROTO_IP, IP_PKTINFO, 1)
                resp.bind(("0.0.0.0", MDNS_PORT))
                query.bind(("0.0.0.0", 0))
            joined = []
            for index in indexes:
                try:
                    _join(resp, family, index)
                except OSError as e:
                    log.debug("mDNS: cannot join the group on interface %d: %s", index, e)
                else:
                    joined.append(index)
            if not joined:
                raise OSError(f"cannot join {MDNS_V6 if v6 else MDNS_V4} on any interface")
            for s in (resp, query):
                s.setblocking(False)
        except OSError:
            resp.close()
            query.close()
            raise
        assert self._loop is not None
        self.sockets += [resp, query]
        self.queriers[family] = query
        self.sends[family] = joined
        self._loop.add_reader(resp.fileno(), self._readable, resp, True)
        self._loop.add_reader(query.fileno(), self._readable, query, False)

    def query(self) -> None:
        for family, sock in self.queriers.items():
            for index in self.sends[family]:
                try:
                    if family == socket.AF_INET6:
                        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_IF, index)
                        sock.sendto(self.query_packet, (MDNS_V6, MDNS_PORT, 0, index))
                    else:
                        sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF,
                                        _mreqn("0.0.0.0", index))
                        sock.sendto(self.query_packet, (MDNS_V4, MDNS_PORT))
                except OSError as e:
                    log.debug("mDNS: query on interface %d not sent: %s", index, e)

    def close(self) -> None:
        for sock in self.sockets:
            if self._loop is not None and not self._loop.is_closed():
                self._loop.remove_reader(sock.fileno())
            sock.close()
        self.sockets = []
        self.queriers = {}

    def _readable(self, sock: socket.socket, responder: bool) -> None:
        for _ in range(READS_PER_WAKEUP):
            try:
                data, ancillary, flags, src = sock.recvmsg(MAX_PACKET, _ANCILLARY)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:  # e.g. an ICMP error queued on the socket
                log.debug("mDNS: receive failed: %s", e)
                return
            if responder:
                index, to = _arrival(ancillary)
                if to not in _GROUPS or (self.accept is not None and index not in self.accept):
                    continue  # unicast to 5353, or another interface than mDNS's
            self._datagram(sock, data, flags, src, responder)

    def _datagram(self, sock: socket.socket, data: bytes, flags: int, src: Any,
                  responder: bool) -> None:
        now = self.clock.now()
        try:
            if flags & socket.MSG_TRUNC:
                raise BadPacket(f"larger than {MAX_PACKET} bytes")
            msg = wire.decode(data)
        except BadPacket as e:
            self.drops.drop("mdns_bad_packet", now, "mDNS: dropped a datagram from %s:%d: %s",
                            src[0], src[1], e)
            return
        if msg.flags & wire.FLAG_RESPONSE:
            suffix = "." + self.stype
            if any((r.kind == "PTR" and r.name == self.stype)
                   or (r.kind == "SRV" and r.name.endswith(suffix)) for r in msg.records):
                self.on_records(list(msg.records))
            return
        if not responder or self.zone is None:
            return
        out = self.zone.respond(msg, src[1])
        if out is None:
            return
        try:
            sock.sendto(out, src)  # unicast to the asker (for IPv6 with its scope)
        except OSError as e:
            log.debug("mDNS: answer to %s:%d not sent: %s", src[0], src[1], e)


_ANCILLARY = socket.CMSG_SPACE(32)  # room for in_pktinfo or in6_pktinfo


def _mreqn(address: str, index: int) -> bytes:
    # struct ip_mreqn: group (or interface) address, interface address, interface index
    return socket.inet_aton(address) + socket.inet_aton("0.0.0.0") + struct.pack("=i", index)


def _join(sock: socket.socket, family: int, index: int) -> None:
    if family == socket.AF_INET6:
        mreq = socket.inet_pton(socket.AF_INET6, MDNS_V6) + struct.pack("=I", index)
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_JOIN_GROUP, mreq)
    else:
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, _mreqn(MDNS_V4, index))


_GROUPS = {socket.inet_pton(socket.AF_INET, MDNS_V4), socket.inet_pton(socket.AF_INET6, MDNS_V6)}


def _arrival(ancillary: list[tuple[int, int, bytes]]) -> tuple[int, bytes]:
    """The interface index a datagram arrived on and the address it was sent to (its IP
    header's destination), from IP_PKTINFO / IPV6_PKTINFO; (0, b"") when unknown."""
    for level, kind, data in ancillary:
        if level == socket.IPPROTO_IP and kind == IP_PKTINFO and len(data) >= 12:
            # struct in_pktinfo: ifindex, local address, header destination address
            return int(struct.unpack_from("=i", data)[0]), data[8:12]
        if level == socket.IPPROTO_IPV6 and kind == socket.IPV6_PKTINFO and len(data) >= 20:
            # struct in6_pktinfo: destination address, ifindex
            return int(struct.unpack_from("=I", data, 16)[0]), data[:16]
    return 0, b""


def _interfaces(families: list[int]) -> dict[int, list[int]]:
    """Every interface with an address of each family (at most MAX_INTERFACES each)."""
    import ifaddr  # only with discover

    out: dict[int, list[int]] = {f: [] for f in families}
    for adapter in ifaddr.get_adapters():
        try:
            index = socket.if_nametoindex(adapter.name)
        except OSError:
            continue
        for family in families:
            want = str if family == socket.AF_INET else tuple
            if any(isinstance(ip.ip, want) for ip in adapter.ips) and index not in out[family]:
                if len(out[family]) < MAX_INTERFACES:
                    out[family].append(index)
                else:
                    log.info("mDNS: more than %d interfaces; not on %s (set [mdns] interface)",
                             MAX_INTERFACES, adapter.name)
    return out
