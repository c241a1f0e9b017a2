"""The serfd agent: lifecycle, signals and reload over a few services around the Serf core.

Theory of operation
-------------------
The core (:class:`~serfd.core.serf.Serf`) owns every decision; the services own the
I/O, each with its own state, talking to the core only through its driver contract:

* :class:`~serfd.agent.gossip.GossipDriver` (``agent.gossip``): the gossip sockets, the
  pump and the one timer; commands that wait (join, leave, force-leave, queries) wait
  on futures its pump resolves from the core's completion events;
* :class:`~serfd.agent.joins.Joiner` (``agent.joins``): DNS, RPC join, retry_join,
  snapshot rejoin, join after reload;
* :class:`~serfd.agent.keys.KeyService` (``agent.keys``): the key queries;
* :class:`~serfd.agent.tags.TagService` (``agent.tags``): ``[tags]`` with the runtime
  changes over it, kept in ``tags_file``;
* :class:`~serfd.agent.events.EventsService` (``agent.events``): coalescing, handlers,
  RPC event streams and the monitor;
* :class:`~serfd.agent.recorder.SnapshotRecorder` (``agent.recorder``): the snapshot
  (clocks restored at start, members to rejoin, events recorded);
* the RPC server (serfd.agent.rpc_server).

``Agent.start`` builds them in order: keyring, the runtime tags (read from their file),
Serf core, driver (unbound), tags, events, snapshot (clocks restored), key hooks, then
the gossip sockets (so no gossip reaches a core without its clocks and hooks), then RPC.
The driver hands member events, user events and incoming queries to ``_dispatch`` (the
recorder first, then the events service: coalescing, handlers, RPC streams). The
agent's own methods that RPC calls (``join``, ``leave``, ``query``, ...) are thin
delegations to these services.

Slow things never run on the loop itself: DNS goes through ``getaddrinfo`` (the
loop's executor), TCP I/O is asynchronous with deadlines. A peer that sends
garbage costs a counter increment (``serfctl info`` shows them all), never the
process.
"""

from __future__ import annotations

import asyncio
import fcntl
import ipaddress
import logging
import os
import random
import signal
import socket
import struct
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from serfd import __version__
from serfd.agent.addresses import (
    bind_from_interface,
    has_host_names,
    resolve_gossip_addresses,
    resolve_sink_addresses,
    sink_host_names,
)
from serfd.agent.clock import Clock, LoopClock
from serfd.agent.config import Config, ConfigError, load_config
from serfd.agent.discovery import Discovery
from serfd.agent.events import EventsService
from serfd.agent.gossip import GossipDriver
from serfd.agent.handlers import handler_stats
from serfd.agent.joins import Joiner, parse_join_addr
from serfd.agent.keys import KeyService
from serfd.agent.logsetup import SyslogHandler, set_level
from serfd.agent.looplag import LoopLag
from serfd.agent.recorder import SnapshotRecorder
from serfd.agent.reload import plan_reload
from serfd.agent.rpc_adapter import RPCAdapter
from serfd.agent.rpc_server import RPCServer
from serfd.agent.systemd import Notifier
from serfd.agent.tags import TagsError, TagService, TagsFileError, load_runtime_tags
from serfd.agent.tasks import TaskSet
from serfd.agent.telemetry import Telemetry
from serfd.base.metrics import Metrics
from serfd.base.ratelog import DropCounters
from serfd.core.member import MemberStatus
from serfd.core.query import default_query_timeout
from serfd.core.serf import (
    DEFAULT_MAX_QUERY_TIMEOUT,
    ConflictLost,
    DeliveredEvent,
    Serf,
    SerfConfig,
    SerfError,
    SerfState,
)
from serfd.memberlist.swim import MemberlistConfig
from serfd.wire.keyring import Keyring, KeyringFileError, keyring_from_config
from serfd.wire.messages import DEFAULT_VSN

log = logging.getLogger("serfd.agent")

# The core's cap on a query's timeout covers our own default timeout up to this many
# members (Serf's default grows with GossipInterval x ceil(log10(N+1))).
QUERY_CAP_MEMBERS = 100_000


def max_query_timeout(cfg: Config) -> float:
    """The longest a query stays open, asked or answered: the core's 300 s, longer when a
    handler may answer later (it runs until handler_timeout) or when our own default
    timeout at QUERY_CAP_MEMBERS is longer (a [gossip] gossip_interval over 3.125 s)."""
    return max(DEFAULT_MAX_QUERY_TIMEOUT, cfg.handler_timeout,
               default_query_timeout(cfg.timings.gossip_interval, QUERY_CAP_MEMBERS))


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


class Agent:
    """Runs one serfd node until told to leave or stop."""

    def __init__(self, config: Config, *, config_dir: Path | None = None,
                 notifier: Notifier | None = None, clock: Clock | None = None) -> None:
        self.config = config
        # bind and advertise as IPs: host names are resolved by start() (addresses.py).
        self.bind_addr: tuple[str, int] = config.bind
        self.advertise_addr: tuple[str, int] | None = config.advertise
        self.clock: Clock = clock if clock is not None else LoopClock()
        self.config_dir = config_dir  # where reload() re-reads the drop-ins
        self.notifier = notifier if notifier is not None else Notifier()
        # Called as hook(old, new) after a reload applied the built-in keys; a hook may
        # raise ConfigError to report errors (the reload then answers with them).
        self.reload_hooks: list[Callable[[Config, Config], None]] = []
        self.restart_needed: tuple[str, ...] = ()  # keys changed on disk, not yet in effect
        self.last_reload_error: str = ""
        self._reload_lock = asyncio.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tasks = TaskSet(log, "internal")
        self._started = False  # start() finished: the Serf layer and sockets exist
        self.loop_lag = LoopLag()
        # Metrics under Serf's names (serfd.base.metrics): the cores and the services
        # report to it; the sinks (in-memory, statsd, statsite, Prometheus) hang off it.
        # go-metrics names gauges with the machine's host name, not the node name.
        self.metrics: Metrics = Metrics("serf-agent", socket.gethostname(),
                                        perf=time.perf_counter)
        # The agent's drops (serfctl info: dropped_<key>; metrics serfd.dropped.<key>).
        self.counters: dict[str, int] = DropCounters(self.metrics)
        # The sinks (serfd.agent.telemetry): in-memory always (SIGUSR1 dumps it), the
        # others as the config says; hung off the front by start().
        self.telemetry = Telemetry(self.metrics, clock=self.clock, counters=self.counters,
                                   member_statuses=self._member_statuses)
        self._stop = asyncio.Event()
        self._exit_code = 0
        # The core and the services around it, made by start() (module docstring).
        self.serf: Serf
        self.gossip: GossipDriver | None = None
        self.joins: Joiner
        self.keys: KeyService
        self.events: EventsService
        self.recorder: SnapshotRecorder  # members to rejoin and clocks, across restarts
        self.tags: TagService  # [tags] with the runtime changes over it, and their file
        self.api: RPCAdapter  # what RPC commands call (serfd.agent.rpc_adapter)
        self.rpc: RPCServer
        self.discovery: Discovery | None = None  # mDNS (Serf's discover), when configured
        # Gossip encryption (serfd.wire.keyring): the keyring, shared with the memberlist core
        # and mutated in place by key rotation, and the file that persists it.
        self.keyring: Keyring | None = None
        self.keyring_path: Path | None = None

    # ------------------------------------------------------------------ setup

    def _advertise(self) -> tuple[str, int]:
        if self.advertise_addr is not None:
            return self.advertise_addr
        host, port = self.bind_addr
        if host in ("0.0.0.0", "::"):
            ip = _private_ipv4()
            if ip is None:
                raise SystemExit(
                    "serfd: no private IPv4 address found to advertise; set `advertise`")
            return ip, port
        return host, port

    def _make_serf(self, now: float, tags: dict[str, str] | None = None) -> Serf:
        """The core; ``tags``: [tags] with the runtime changes (default: [tags] alone)."""
        cfg = self.config
        adv_host, adv_port = self._advertise()
        mlc = MemberlistConfig.from_profile(
            cfg.timings,  # the profile's, with the [gossip] overrides
            name=cfg.node_name,
            bind_port=cfg.bind[1],
            advertise_addr=adv_host,
            advertise_port=adv_port,
            enable_compression=cfg.enable_compression,
            keyring=self.keyring,
            gossip_verify_incoming=cfg.gossip_verify_incoming,
            gossip_verify_outgoing=cfg.gossip_verify_outgoing,
            # memberlist 1..5 speaking 2 (Serf pins it); Serf's delegate 2..5 at `protocol`.
            vsn=DEFAULT_VSN[:5] + bytes([cfg.protocol]),
            # News (joins, suspicions, deaths, tag changes, user events, queries) goes
            # out at once, in a gossip round run early (within the retransmit budget;
            # [gossip] eager).
            eager_gossip=cfg.gossip_eager,
            # A suspicion we hear of is checked by our own probe at once ([gossip]).
            confirm_suspicions=cfg.gossip_confirm_suspicions,
            # ... and one we verified that way ends sooner (shorter floor, [gossip]).
            verified_suspicions=cfg.gossip_verified_suspicions,
            # After a join, more push/pulls with random members while they teach us
            # members (catches what the burst's gossip missed, [gossip]).
            join_follow_up=cfg.gossip_join_follow_up,
            metrics=self.metrics,
        )
        sc = SerfConfig(
            node_name=cfg.node_name,
            memberlist=mlc,
            tags=dict(cfg.tags) if tags is None else tags,
            protocol=cfg.protocol,
            broadcast_timeout=cfg.broadcast_timeout,
            reconnect_interval=cfg.reconnect_interval,
            reconnect_timeout=cfg.reconnect_timeout,
            tombstone_timeout=cfg.tombstone_timeout,
            user_event_size_limit=cfg.user_event_size_limit,
            query_size_limit=cfg.query_size_limit,
            query_response_size_limit=cfg.query_response_size_limit,
            max_query_timeout=max_query_timeout(cfg),
            metrics=self.metrics,
            disable_coordinates=cfg.disable_coordinates,
        )
        return Serf(sc, random.Random(), now)

    async def start(self) -> None:
        """Build the core and the services, bind every socket (gossip UDP+TCP, RPC); after
        this the agent is 'ready'."""
        loop = asyncio.get_running_loop()
        self._loop = loop
        if has_host_names(self.config):  # DNS off the loop, once (Serf resolves at start)
            try:
                self.bind_addr, self.advertise_addr = await loop.run_in_executor(
                    None, resolve_gossip_addresses, self.config)
            except ConfigError as e:
                for line in e.errors:
                    log.error("cannot start: %s", line)
                raise SystemExit("serfd: " + "\nserfd: ".join(e.errors)) from None
            log.info("bind %s resolved to %s; advertise %s resolved to %s",
                     self.config.bind[0], self.bind_addr[0],
                     self.config.advertise[0] if self.config.advertise else "(unset)",
                     self.advertise_addr[0] if self.advertise_addr else "(derived from bind)")
        if self.config.interface is not None:  # Serf's -iface: the bind address from it
            try:
                self.bind_addr = bind_from_interface(self.config, self.bind_addr)
            except ConfigError as e:
                for line in e.errors:
                    log.error("cannot start: %s", line)
                raise SystemExit("serfd: " + "\nserfd: ".join(e.errors)) from None
            log.info("interface %s: binding %s", self.config.interface, self.bind_addr[0])
        sinks = {"statsd_addr": self.config.statsd_addr,
                 "statsite_addr": self.config.statsite_addr}
        if sink_host_names(self.config):  # the same way, at the same moment
            try:
                sinks = await loop.run_in_executor(None, resolve_sink_addresses, self.config)
            except ConfigError as e:
                for line in e.errors:
                    log.error("cannot start: %s", line)
                raise SystemExit("serfd: " + "\nserfd: ".join(e.errors)) from None
        # Before the core exists, so that it reports from its first event.
        self.telemetry.start_sinks(self.config, statsd=sinks["statsd_addr"],
                                   statsite=sinks["statsite_addr"])
        host, port = self.bind_addr
        try:
            self.keyring, self.keyring_path = keyring_from_config(
                self.config.encrypt_key, self.config.keyring_file, self.config.state_dir, log)
        except KeyringFileError as e:
            # Raised on: like a broken config or tags file, a restart cannot fix it
            # (serfd exits 2, which the unit does not restart).
            log.error("cannot set up encryption: %s", e)
            raise
        if self.keyring is not None:
            log.info("gossip encryption on (%d keys; verify incoming %s, outgoing %s)",
                     len(self.keyring.keys), self.config.gossip_verify_incoming,
                     self.config.gossip_verify_outgoing)
        cfg = self.config
        # The runtime tag changes kept in tags_file (TagsFileError: the start stops here,
        # before anything is bound; serfd exits 2).
        try:
            overrides, tags = load_runtime_tags(cfg.tags, cfg.tags_file)
        except TagsFileError as e:
            log.error("cannot start: %s (fix or remove the file)", e)
            raise
        self.serf = self._make_serf(self._now(), tags)
        self.gossip = GossipDriver(
            self.serf, clock=self.clock, keyring=self.keyring, compress=cfg.enable_compression,
            verify_incoming=cfg.gossip_verify_incoming,
            verify_outgoing=cfg.gossip_verify_outgoing, counters=self.counters,
            on_event=self._dispatch, on_conflict_lost=self._conflict_lost,
            loop_lag=self.loop_lag, metrics=self.metrics)
        self.joins = Joiner(self.gossip, clock=self.clock, default_port=port)
        self.tags = TagService(self.gossip, cfg.tags, cfg.tags_file, overrides)
        self.events = EventsService(cfg, self.gossip, clock=self.clock, spawn=self._spawn,
                                    config_dir=self.config_dir, loop=loop,
                                    metrics=self.metrics)
        self.events.start()
        self.reload_hooks.append(self._reload_events)
        self.recorder = SnapshotRecorder(cfg, self.serf, clock=self.clock, metrics=self.metrics)
        await self.recorder.open()
        self.gossip.on_pump = self.recorder.poke  # only the core's inputs move its clocks
        self.keys = KeyService(self.gossip, self.keyring, self.keyring_path,
                               node_name=cfg.node_name,
                               response_limit=self.serf.config.query_response_size_limit,
                               spawn=self._spawn, counters=self.counters)
        self.keys.install()
        # Gossip only now: the core has its clocks back and answers key queries.
        await self.gossip.bind(host, port)
        self.api = RPCAdapter(gossip=self.gossip, joins=self.joins, keys=self.keys,
                              tags=self.tags, events=self.events, leave=self.leave,
                              reload=self.reload, stats=self.stats)
        self.rpc = RPCServer(self.api, auth_key=self.config.rpc_auth_key, metrics=self.metrics)
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
        try:
            await self.telemetry.start_endpoint(self.config)
        except OSError as e:
            bind = self.config.telemetry_prometheus_bind
            log.error("cannot listen for Prometheus on %s: %s", bind, e.strerror or e)
            raise SystemExit(f"serfd: telemetry.prometheus_bind: cannot listen on {bind}: "
                             f"{e.strerror or e}") from None
        adv = self._advertise()
        log.info("serfd %s: node %s bound to %s:%d, advertising %s:%d", __version__,
                 self.config.node_name, host, port, adv[0], adv[1])
        if cfg.discover is not None:
            self.discovery = self._make_discovery(cfg.discover, adv)
            try:
                await self.discovery.start()
            except OSError as e:  # no mDNS socket could be opened: the start stops, loudly
                log.exception("cannot start mDNS discovery: %s", e)
                raise SystemExit(f"serfd: cannot start mDNS discovery: {e}") from None
        self._started = True
        self._pump()

    def _make_discovery(self, discover: str, adv: tuple[str, int]) -> Discovery:
        """Serf's AgentMDNS over serfd's own mDNS sockets, on mdns.interface, else
        interface (else every interface)."""
        from serfd.agent.discovery import MulticastBackend

        cfg = self.config
        iface = cfg.mdns_interface or cfg.interface
        if iface is not None:
            try:
                socket.if_nametoindex(iface)
            except OSError as e:
                raise SystemExit(f"serfd: mDNS interface {iface}: {e.strerror or e}") from None
            log.info("mDNS on interface %s", iface)
        backend = MulticastBackend(discover=discover, node=cfg.node_name, advertise=adv,
                                   interface=iface, clock=self.clock, counters=self.counters,
                                   ipv4=not cfg.mdns_disable_ipv4,
                                   ipv6=not cfg.mdns_disable_ipv6)
        return Discovery(backend, self.joins, clock=self.clock, discover=discover,
                         own_addr=adv, replay=lambda: self.config.replay_on_join,
                         counters=self.counters, spawn=self._spawn)

    async def run(self) -> int:
        """Start, join, serve until a signal or RPC leave; returns the exit code."""
        # Signals are ours before any socket exists, so a stop during start-up is clean.
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self._on_signal, sig)
        loop.add_signal_handler(signal.SIGHUP, self._on_sighup)
        loop.add_signal_handler(signal.SIGUSR1, self._on_sigusr1)
        await self.start()
        if self._stop.is_set():  # a signal came while we were starting: no cluster to leave
            await self._shutdown()
            return self._exit_code
        # Ready once every socket is bound; a join may never succeed (it shows in STATUS).
        self.notifier.ready(self.status_line())
        self._spawn(self.notifier.keepalive(self.status_line))
        if self.config.join:
            self._spawn(self._retry_join())
        if previous := self.recorder.previous_members():
            self._spawn(self.joins.rejoin(previous, retry_interval=self.config.retry_interval))
        await self._stop.wait()
        await self._shutdown()
        return self._exit_code

    def _on_sighup(self) -> None:
        if not self._started:
            log.warning("caught SIGHUP while starting: the configuration is being read anyway")
            return
        self._spawn(self.reload())

    def _on_sigusr1(self) -> None:
        """go-metrics' DefaultInmemSignal: the in-memory metrics to the log, on the loop."""
        n = self.telemetry.dump()
        log.info("caught SIGUSR1: %d metrics lines written (finished 10 s intervals)", n)

    def _member_statuses(self) -> list[str]:
        return [m.status.label for m in self.serf.members()] if self._started else []

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
        # Serf's choice: SIGINT leaves unless skip_leave_on_interrupt, SIGTERM leaves if
        # leave_on_terminate (serfd's default: true, so systemctl stop leaves).
        if sig == signal.SIGTERM and not self.config.leave_on_terminate:
            why = "leave_on_terminate = false"
        elif sig == signal.SIGINT and self.config.skip_leave_on_interrupt:
            why = "skip_leave_on_interrupt = true"
        else:
            why = ""
        if why:
            log.info("caught %s: stopping without leaving (%s)", name, why)
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
        if self.discovery is not None:
            try:
                await self.discovery.stop()
            except Exception:  # shutting down anyway
                log.exception("stopping mDNS discovery failed")
        if hasattr(self, "events"):  # (start() may have stopped short)
            self.events.stop()
        if self.gossip is not None:
            self.gossip.shutdown()  # Serf.Shutdown; open queries end with their done record
        if hasattr(self, "recorder"):
            await self.recorder.close()  # the final clock, then the file flushed off the loop
        if hasattr(self, "rpc"):
            try:
                await self.rpc.close()
            except Exception:  # shutting down anyway
                log.exception("closing the RPC server failed")
        if self.gossip is not None:
            await self.gossip.close()
        await self.telemetry.close()  # what is queued goes out first
        self._tasks.cancel_all()
        log.info("serfd stopped")

    # ------------------------------------------------------------------ the pump

    def _now(self) -> float:
        return self.clock.now()

    def _count(self, reason: str) -> None:
        self.counters[reason] = self.counters.get(reason, 0) + 1

    def _spawn(self, coro: Any) -> None:
        self._tasks.spawn(coro)

    def _pump(self) -> None:
        """Drain the core's output and re-arm the timer (the gossip driver's pump)."""
        if self.gossip is not None:
            self.gossip.pump()

    def _dispatch(self, ev: DeliveredEvent) -> None:
        self.recorder.record(ev)  # the snapshot sees events before coalescing, as Serf's does
        self.events.event(ev)  # coalescing, then handlers and RPC streams

    def _conflict_lost(self, ev: ConflictLost) -> None:
        if not self._stop.is_set():
            log.error("lost the name conflict resolution for %s (%d of %d vouched for us): "
                      "stopping", self.config.node_name, ev.matching, ev.responses)
            self._exit_code = 1
            self._stop.set()

    async def _retry_join(self) -> None:
        cfg = self.config
        joined = await self.joins.retry_join(list(cfg.join), retry_interval=cfg.retry_interval,
                                             max_attempts=cfg.retry_max_attempts,
                                             replay=cfg.replay_on_join)
        if not joined and self.serf.state is SerfState.ALIVE:  # gave up (not: we left)
            self._exit_code = 1
            self._stop.set()

    # ------------------------------------------------------------------ lifecycle

    @property
    def last_join(self) -> str:
        return self.joins.last_join if hasattr(self, "joins") else "none yet"

    async def leave_cluster(self) -> None:
        """Graceful leave: intent, memberlist dead, propagation delay (Serf.Leave)."""
        assert self.gossip is not None

        try:
            # The leave marker: a restart will not rejoin unless rejoin_after_leave.
            error = await self.gossip.leave(on_started=self.recorder.leave)
        except SerfError as e:
            log.warning("leave: %s", e)
            return
        if error:
            log.warning("leave: %s", error)
        log.info("left the cluster")

    async def leave(self) -> None:
        self.notifier.stopping()
        await self.leave_cluster()
        self._stop.set()

    def stats(self) -> dict[str, dict[str, str]]:
        import platform  # only for serfctl info

        core = self.serf.counters_view()
        drops: dict[str, int] = {}
        syslog = [h.dropped for h in logging.getLogger().handlers if isinstance(h, SyslogHandler)]
        for src in (self.counters, self.events.counters, self.recorder.counters, core.dropped,
                    self.rpc.counters, self.notifier.counters, *syslog):
            for k, v in src.items():
                drops[k] = drops.get(k, 0) + v
        tasks = len(self._tasks) + (self.gossip.task_count() if self.gossip else 0)
        return {
            "agent": {"name": self.config.node_name},
            "runtime": {
                "os": sys.platform,
                "arch": platform.machine(),
                "version": f"python{platform.python_version()}",
                "max_procs": str(os.cpu_count() or 1),
                "goroutines": str(threading.active_count() + tasks),
                "cpu_count": str(os.cpu_count() or 1),
            },
            "serf": {**self.serf.stats(), "encrypted": str(self.keyring is not None).lower()},
            "tags": dict(self.serf.tags),
            "event_handlers": handler_stats(self.events.handler_runner.handlers),
            "runtime_tags": self.tags.stats(),
            "serfd": {"version": __version__, **self.recorder.stats(),
                      **self.loop_lag.stats(self._now()),
                      "tags_file": str(self.tags.path or ""),
                      "telemetry": self.telemetry.describe(),
                      **{k: str(v) for k, v in sorted(core.activity.items())},
                      **{f"dropped_{k}": str(v) for k, v in sorted(drops.items())},
                      **(self.discovery.stats() if self.discovery is not None else {})},
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
        try:  # the new [tags] under the runtime changes
            await self.tags.reload(self.config.tags)
        except (TagsError, SerfError) as e:
            errors.append(f"tags: {e}")
        if new.join != old.join and new.join:
            self._spawn(self.joins.join_after_reload(list(new.join),
                                                     replay=self.config.replay_on_join))
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
        self.serf.set_limits(
            user_event_size_limit=new.user_event_size_limit,
            query_size_limit=new.query_size_limit,
            query_response_size_limit=new.query_response_size_limit,
            max_query_timeout=max_query_timeout(new),
        )


__all__ = ["Agent", "parse_join_addr"]
