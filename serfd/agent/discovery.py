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

* the backend (:class:`ZeroconfBackend`, python-zeroconf on its own thread and event
  loop; a fake in unit tests) answers queries for our instance, sends one PTR query
  per poll, and hands every response's records to :meth:`Discovery.on_records`
  through ``call_soon_threadsafe``;
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

Serf's responder (hashicorp/mdns) never multicasts: it answers every question by
unicast to the address and port that asked, and announces nothing. Its client reads
*every* response it hears on 224.0.0.251/ff02::fb during its one-second query window,
whatever the service, and joins each complete SRV + A/AAAA: a serfd node that
multicast its records (as RFC 6762 and zeroconf do: announcements, answers, goodbyes)
would be joined by the serf agents of *another* cluster that happen to be asking at
that moment. So the backend answers the way Serf does: zeroconf chooses the records
(:func:`_answer_by_unicast_only` replaces its multicast/unicast dispatch with one
unicast reply to the asker: the legacy form, question and id echoed, for Serf's
queries from an ephemeral port), the service is put in zeroconf's registry without
the announcements (and taken out before closing, so no goodbye), and serfd nodes find
each other by asking, at start and every 60 s, as serf agents do.

python-zeroconf 0.47.3 (Debian 12) would not register the service anyway: it refuses
a service type with an underscore in it (RFC 6763 names; ``_serf_NAME`` has one).
hashicorp/mdns does not probe names either, and node names are unique in a cluster.

The SRV record's target (the "host" of the service) is the instance name itself, so
its A/AAAA record carries the instance name too. Serf's client ties an A record to a
service only through an SRV seen *earlier in the same response* (it aliases the
target to the instance), and zeroconf orders the additional records of an answer as a
Python set, differently in every process; with target == instance, the order no longer
matters (Serf itself uses the machine's host name, and orders its records SRV, A, TXT).

zeroconf 0.47.3 also writes an NSEC record's window and bitmap length as 16-bit
fields instead of one octet each (RFC 4034 4.1.2; fixed upstream in
python-zeroconf#1326). zeroconf adds such an NSEC ("no AAAA here") to every answer
for an IPv4-only service, and hashicorp/mdns (miekg/dns) then refuses the whole
response, so a serf agent would never see a serfd node. :func:`fix_nsec_writer`
detects the old writer and replaces it with one that writes the octets; a fixed
zeroconf is left alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import ipaddress
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol

from serfd.agent.clock import Clock, Timer
from serfd.base.ratelog import DropLog

__all__ = [
    "MAX_BATCH",
    "MAX_SEEN",
    "Backend",
    "Discovery",
    "Record",
    "ZeroconfBackend",
    "entries",
    "fix_nsec_writer",
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
DNS_FLAGS_QUERY = 0x0000  # a standard query (RFC 1035 4.1.1)
DNS_TYPE_PTR = 12
DNS_CLASS_IN = 1


def service_type(discover: str) -> str:
    """The DNS-SD service type Serf advertises and asks for: ``_serf_NAME._tcp.local.``."""
    return f"_serf_{discover}._tcp.local."


def instance_name(node: str, discover: str) -> str:
    """This node's instance: its node name under the service type."""
    return f"{node}.{service_type(discover)}"


def txt_record(discover: str) -> str:
    """The one TXT string Serf puts in its service."""
    return f"Serf '{discover}' cluster"


@dataclass(frozen=True, slots=True)
class Record:
    """One resource record of a response, as the backend hands it over (names lowercase)."""

    name: str
    kind: str  # "PTR", "SRV", "A" or "AAAA"
    target: str = ""  # PTR: the instance; SRV: the host name
    port: int = 0  # SRV
    address: str = ""  # A / AAAA


def entries(records: Iterable[Record], stype: str) -> list[tuple[str, int]]:
    """The (address, port) of each complete instance of ``stype`` in one response, in the
    order the instances appear (Serf's client: PTR, SRV and the target's A/AAAA)."""
    stype = stype.lower()
    suffix = "." + stype
    recs = list(records)
    instances: list[str] = []
    for r in recs:
        name = r.target if r.kind == "PTR" and r.name == stype else r.name
        if (r.kind in ("PTR", "SRV") and name.endswith(suffix) and len(name) > len(suffix)
                and name not in instances):
            instances.append(name)
    srv = {r.name: r for r in recs if r.kind == "SRV"}
    v4: dict[str, str] = {}
    v6: dict[str, str] = {}
    for r in recs:
        table = v4 if r.kind == "A" else v6 if r.kind == "AAAA" else None
        if table is not None:
            table.setdefault(r.name, r.address)
    out: list[tuple[str, int]] = []
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
        if (str(ip), s.port) not in out:
            out.append((str(ip), s.port))
    return out


class Backend(Protocol):
    """The mDNS responder and querier (zeroconf, or a fake)."""

    def start(self, on_records: Callable[[list[Record]], None]) -> None:
        """Bind and advertise (blocking; run off the loop). ``on_records`` is called, on
        the backend's own thread, with the records of each response heard."""

    def query(self) -> None:
        """Ask once for the service type (thread-safe, does not block)."""

    def close(self) -> None:
        """Say goodbye and stop (blocking; run off the loop)."""


class JoinTarget(Protocol):
    async def join(self, texts: list[str], replay: bool) -> int: ...


class Discovery:
    """Serf's AgentMDNS: advertise, poll, join new addresses in quiet-period batches."""

    def __init__(self, backend: Backend, joiner: JoinTarget, *, clock: Clock, discover: str,
                 own_addr: tuple[str, int], replay: Callable[[], bool],
                 counters: dict[str, int], spawn: Callable[[Any], None],
                 loop: asyncio.AbstractEventLoop | None = None) -> None:
        self.backend = backend
        self.joiner = joiner
        self.clock = clock
        self.stype = service_type(discover)
        self.own_addr = own_addr
        self.replay = replay
        self.spawn = spawn
        self.loop = loop
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
        """Start the backend (off the loop) and the poll loop."""
        loop = self.loop if self.loop is not None else asyncio.get_running_loop()
        self.loop = loop
        await loop.run_in_executor(None, self.backend.start, self._from_backend)
        self._running = True
        self.spawn(self._poll())
        log.info("mDNS: advertising and looking for %s", self.stype)

    async def stop(self) -> None:
        """Stop polling and joining; the backend says goodbye (off the loop)."""
        self._running = False
        if self._quiet is not None:
            self._quiet.cancel()
            self._quiet = None
        assert self.loop is not None
        await self.loop.run_in_executor(None, self.backend.close)

    def _from_backend(self, records: list[Record]) -> None:
        # On the backend's thread: hand over to the agent's loop.
        assert self.loop is not None
        if not self.loop.is_closed():
            self.loop.call_soon_threadsafe(self.on_records, records)

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


class ZeroconfBackend:
    """python-zeroconf (imported here only: an agent without ``discover`` never loads it)."""

    def __init__(self, *, discover: str, node: str, advertise: tuple[str, int],
                 interfaces: list[str | int] | None,
                 ipv4: bool = True, ipv6: bool = True) -> None:
        self.stype = service_type(discover)
        self.instance = instance_name(node, discover)
        self.txt = txt_record(discover)
        self.advertise = advertise
        self.interfaces = interfaces
        self.ipv4 = ipv4
        self.ipv6 = ipv6
        self.zc: Any = None
        self.info: Any = None

    def start(self, on_records: Callable[[list[Record]], None]) -> None:
        zeroconf = _zeroconf()
        if fix_nsec_writer(zeroconf):
            log.debug("mDNS: zeroconf %s writes NSEC bitmaps with 16-bit fields: fixed",
                      zeroconf.__version__)
        versions = zeroconf.IPVersion
        version = (versions.All if self.ipv4 and self.ipv6
                   else versions.V4Only if self.ipv4 else versions.V6Only)
        interfaces = (zeroconf.InterfaceChoice.All if self.interfaces is None
                      else self.interfaces)
        # Called from an executor thread (no running loop): zeroconf runs its own loop
        # on its own thread.
        zc = zeroconf.Zeroconf(interfaces=interfaces, ip_version=version)
        self.zc = zc
        txt = self.txt.encode()
        self.info = zeroconf.ServiceInfo(
            self.stype, self.instance, port=self.advertise[1],
            properties=bytes([len(txt)]) + txt,  # one TXT string, as Serf's
            server=self.instance, parsed_addresses=[self.advertise[0]])

        stype = self.stype.lower()

        def update_records(_self: Any, _zc: Any, _now: float, records: Any) -> None:
            # On zeroconf's thread: every record of one response (new or known).
            out: list[Record] = []
            for update in records:
                rec = update.new
                name = rec.name.lower()
                if isinstance(rec, zeroconf.DNSPointer) and name == stype:
                    out.append(Record(name, "PTR", target=rec.alias.lower()))
                elif isinstance(rec, zeroconf.DNSService):
                    out.append(Record(name, "SRV", target=rec.server.lower(), port=rec.port))
                elif isinstance(rec, zeroconf.DNSAddress):
                    try:
                        addr = str(ipaddress.ip_address(rec.address))
                    except ValueError:
                        continue
                    out.append(Record(name, "A" if ":" not in addr else "AAAA",
                                      address=addr))
            # Only responses about our service cross to the agent's loop.
            if any(r.kind == "PTR" or (r.kind == "SRV" and r.name.endswith("." + stype))
                   for r in out):
                on_records(out)

        listener = type("SerfListener", (zeroconf.RecordUpdateListener,),
                        {"async_update_records": update_records})
        zc.add_listener(listener(), None)
        _answer_by_unicast_only(zc)
        # zeroconf's register_service insists on RFC 6763 service names, which Serf's
        # type is not (see the module docstring), and would announce the service by
        # multicast: put it in the registry, which is what zeroconf answers from.
        asyncio.run_coroutine_threadsafe(_registry(zc, self.info, add=True),
                                         zc.loop).result(10)

    def query(self) -> None:
        zeroconf = _zeroconf()
        out = zeroconf.DNSOutgoing(DNS_FLAGS_QUERY)
        # QM, as hashicorp/mdns asks (no unicast-response bit)
        out.add_question(zeroconf.DNSQuestion(self.stype, DNS_TYPE_PTR, DNS_CLASS_IN))
        self.zc.send(out)

    def close(self) -> None:
        if self.zc is None:
            return
        # Out of the registry first: no goodbye is multicast (see the module docstring;
        # hashicorp/mdns sends none either), then the sockets and the thread.
        with contextlib.suppress(TimeoutError, RuntimeError):  # a loop already stopped
            asyncio.run_coroutine_threadsafe(_registry(self.zc, self.info, add=False),
                                             self.zc.loop).result(5)
        self.zc.close()


class _WriteProbe:
    """Records how a record's ``write`` encodes itself (for :func:`fix_nsec_writer`)."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def write_name(self, _name: str) -> None:
        self.calls.append("name")

    def write_short(self, _value: int) -> None:
        self.calls.append("short")

    def write_string(self, _value: bytes) -> None:
        self.calls.append("string")


def _write_nsec(self: Any, out: Any) -> None:
    # RFC 4034 4.1.2: the next name, then per window: window number and bitmap length,
    # one octet each, and the bitmap (mDNS uses window 0 only, RFC 6762 6.1).
    bitmap = bytearray(32)
    used = 0
    for rdtype in self.rdtypes:
        if 0 < rdtype < 256:
            bitmap[rdtype // 8] |= 0x80 >> (rdtype % 8)
            used = max(used, rdtype // 8 + 1)
    out.write_name(self.next_name)
    if used:
        out.write_string(bytes([0, used]) + bytes(bitmap[:used]))


def fix_nsec_writer(zeroconf: Any) -> bool:
    """Replace zeroconf's NSEC writer when it writes 16-bit window/length fields (see the
    module docstring); True when it did."""
    nsec = zeroconf.DNSNsec
    probe = _WriteProbe()
    try:
        nsec("x.local.", 47, 1, 120, "x.local.", [28]).write(probe)
    except TypeError:
        # A compiled zeroconf (Cython, later releases) takes only its own DNSOutgoing;
        # those releases carry the upstream fix already.
        return False
    if probe.calls[1:3] != ["short", "short"]:
        return False  # already RFC 4034's octets
    nsec.write = _write_nsec
    return True


def _zeroconf() -> Any:
    """The zeroconf module, untyped here: its API is used as Debian 12's 0.47.3 has it."""
    return importlib.import_module("zeroconf")


async def _registry(zc: Any, info: Any, *, add: bool) -> None:
    # On zeroconf's loop, as its registry wants.
    if add:
        zc.registry.async_add(info)
    else:
        zc.registry.async_remove(info)


def _answer_by_unicast_only(zc: Any) -> None:
    """Make this Zeroconf answer every question by unicast to whoever asked (see the
    module docstring): zeroconf's own choice of records (known answers, additionals),
    but one unicast reply instead of multicast (and, for a legacy query, the unicast one
    with the question and id echoed)."""
    handlers = importlib.import_module("zeroconf._handlers")
    if not hasattr(handlers, "construct_outgoing_unicast_answers"):
        # Later (compiled) releases answer from their own code paths; the unicast-only
        # rule is 0.47's (Debian 12's), the version serfd is tested with.
        log.warning("mDNS: zeroconf %s answers by multicast too: serf agents with another "
                    "discover name on this link may join this node (tested: 0.47.3)",
                    importlib.import_module("zeroconf").__version__)
        return

    def handle_assembled_query(packets: Any, addr: str, port: int, transport: Any,
                               v6_flow_scope: Any = ()) -> None:
        legacy = port != MDNS_PORT
        answers = zc.query_handler.async_response(packets, legacy)
        merged = {**answers.mcast_aggregate_last_second, **answers.mcast_aggregate,
                  **answers.mcast_now, **answers.ucast}
        if not merged:
            return
        first = packets[0]
        out = handlers.construct_outgoing_unicast_answers(merged, legacy, first.questions,
                                                           first.id if legacy else 0)
        zc.async_send(out, addr, port, v6_flow_scope, transport)

    zc.handle_assembled_query = handle_assembled_query
