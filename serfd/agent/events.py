"""The agent's events service: coalescing, handlers, RPC event streams and the monitor.

Theory of operation
-------------------
:class:`EventsService` is where the Serf core's events go once the gossip driver has
drained them (the snapshot recorder saw them first, before coalescing, as in Serf's
agent). It owns, from ``__init__`` on:

* the :class:`~serfd.agent.dispatch.Dispatcher`: coalescing windows on the service's
  :class:`~serfd.agent.clock.Clock`, then every event goes to the handler runner and to
  each RPC ``stream`` subscriber;
* the :class:`~serfd.agent.handlers.HandlerRunner`, rebuilt from the configuration by
  :meth:`EventsService.reload`; a query answered on a handler's stdout goes back
  through :meth:`EventsService._handler_respond` (truncated to the response size limit);
* the :class:`~serfd.agent.monitor.LogRing` behind RPC ``monitor``, on the root logger
  between :meth:`~EventsService.start` and :meth:`~EventsService.stop`;
* the RPC side of ``event``, ``query`` and ``respond``: Serf's checks and log lines,
  its errors turned into :class:`~serfd.agent.rpc_server.RPCError`.

It reaches the core only through :class:`GossipAPI` (send a user event, start a query,
answer one, read the local member, ask whether the core is alive), which
:class:`~serfd.agent.gossip.GossipDriver` provides; query records come back through
the driver to the asker's callback, never through this service. What the service
drops or gets wrong is counted in :attr:`EventsService.counters` (``serfctl info``
shows them as ``dropped_<key>``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Protocol

from serfd.agent.clock import Clock
from serfd.agent.config import Config, ConfigError, handlers_directory
from serfd.agent.dispatch import Dispatcher
from serfd.agent.handlers import Handler, HandlerRunner, parse_handlers
from serfd.agent.monitor import LogRing
from serfd.agent.rpc_server import RPCError
from serfd.base.metrics import NULL_METRICS, Metrics
from serfd.base.ratelog import DropCounters, DropLog
from serfd.core.filters import AnyEvent
from serfd.core.member import Member
from serfd.core.query import INTERNAL_PREFIX, IncomingQuery, QueryParam, QueryRecord
from serfd.core.serf import SerfError
from serfd.wire.serf_messages import MessageQueryResponse

__all__ = ["DEFAULT_HANDLERS_DIR", "EventsService", "GossipAPI"]

log = logging.getLogger("serfd.agent")

DEFAULT_HANDLERS_DIR = Path("/etc/serfd.d/handlers")


class GossipAPI(Protocol):
    """What the events service asks of the gossip side (the Serf core and its driver).

    Each call takes effect at once (the driver hands the core ``now`` and pumps its
    output); a refusal raises :class:`~serfd.core.serf.SerfError` with Serf's text.
    """

    def local_member(self) -> Member:
        """This node as the cluster sees it (name and tags, for handler environments)."""
        ...

    def alive(self) -> bool:
        """The core can still send and query (not leaving, left or shut down)."""
        ...

    def user_event(self, name: str, payload: bytes, coalesce: bool) -> None:
        """Send a user event (Serf.UserEvent)."""
        ...

    def query(self, name: str, payload: bytes, param: QueryParam,
              on_record: Callable[[QueryRecord], None]) -> object:
        """Start a query (Serf.Query); its ack, response and done records go to
        ``on_record``, never before this returns."""
        ...

    def respond(self, q: IncomingQuery, payload: bytes) -> None:
        """Answer a query delivered to this node (once, before its deadline)."""
        ...


class EventsService:
    """Coalescing, handlers, RPC event streams and the monitor (see the module docstring)."""

    def __init__(
        self,
        config: Config,
        gossip: GossipAPI,
        *,
        clock: Clock,
        spawn: Callable[[Awaitable[None]], object],
        config_dir: Path | None = None,
        loop: asyncio.AbstractEventLoop | None = None,
        metrics: Metrics = NULL_METRICS,
    ) -> None:
        """``spawn`` starts (and supervises) handler runs; ``config_dir`` is where the
        handlers directory defaults to; ``loop`` is the loop monitor lines are handed out
        on (default: the running one); ``metrics`` gets the handler runs (agent.invoke.*)
        and the drops counted here (serfd.dropped.*)."""
        self.config = config
        self.config_dir = config_dir
        self._gossip = gossip
        self._clock = clock
        # Drop and error counters (serfctl info: dropped_<key>), shared by the parts below.
        self.counters: dict[str, int] = DropCounters(metrics)
        self.drops = DropLog(log, self.counters)
        self.listeners: list[Callable[[AnyEvent], None]] = []  # RPC stream subscribers
        self.log_ring = LogRing(loop=loop if loop is not None else asyncio.get_running_loop(),
                                counters=self.counters)
        handlers = self._initial_handlers(config)
        self.handler_runner = HandlerRunner(
            handlers,
            self.handlers_dir(),
            max_concurrent=config.handler_max_concurrent,
            timeout=config.handler_timeout,
            self_member=gossip.local_member,
            respond=self._handler_respond,
            spawn=spawn,
            drops=self.drops,
            clock=clock,
            metrics=metrics,
        )
        self.dispatcher = Dispatcher(clock, self.handler_runner, self.listeners,
                                     counters=self.counters)
        self._started = False

    @staticmethod
    def _initial_handlers(config: Config) -> tuple[Handler, ...]:
        try:
            return parse_handlers(config.handlers)
        except ValueError as e:  # load_config validated them; keep going without handlers
            log.error("handlers: %s", e)
            return ()

    def handlers_dir(self) -> Path:
        """``handlers_dir``, else ``<config dir>/handlers``."""
        return handlers_directory(self.config, self.config_dir)

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Feed log lines to monitors; say which handlers are in effect."""
        if self._started:
            return
        self._started = True
        logging.getLogger().addHandler(self.log_ring)
        for h in self.handler_runner.handlers:
            log.info("handler: events '%s' run %s", h.route, h.label.split("=", 1)[1])

    def stop(self) -> None:
        """Disarm the coalescing timer and leave the root logger (runs in progress are the
        spawner's to cancel)."""
        self.dispatcher.close()
        logging.getLogger().removeHandler(self.log_ring)
        self._started = False

    def reload(self, old: Config, new: Config) -> None:
        """New routing, handlers directory and limits; runs in progress go on.

        ConfigError (nothing changed) if the handlers do not parse.
        """
        try:
            handlers = parse_handlers(new.handlers)
        except ValueError as e:
            raise ConfigError([f"handlers: {e}"]) from None
        self.config = new
        self.handler_runner.update(handlers, self.handlers_dir(),
                                   max_concurrent=new.handler_max_concurrent,
                                   timeout=new.handler_timeout)
        if old.handlers != new.handlers or old.handlers_dir != new.handlers_dir:
            log.info("reload: %d handler route%s in effect", len(handlers),
                     "" if len(handlers) == 1 else "s")

    # ------------------------------------------------------------------ the sink

    def event(self, ev: AnyEvent) -> None:
        """One event from the core: coalescing, then handlers and stream subscribers."""
        self.dispatcher.event(ev)

    # ------------------------------------------------------------------ RPC (AgentAPI)

    def user_event(self, name: str, payload: bytes, coalesce: bool) -> None:
        """RPC ``event``: Serf's errors (size limits) come back as RPCError."""
        log.debug("requesting user event send: %s. Coalesced: %s. Payload: %r",
                  name, coalesce, payload)
        try:
            self._gossip.user_event(name, payload, coalesce)
        except SerfError as e:
            log.warning("failed to send user event: %s", e)
            raise RPCError(str(e)) from None

    def query(self, name: str, payload: bytes, param: QueryParam,
              on_record: Callable[[QueryRecord], None]) -> object:
        """RPC ``query``: start it; ack/response/done records go to on_record later."""
        if name.startswith(INTERNAL_PREFIX) and (name != INTERNAL_PREFIX + "ping" or payload):
            raise RPCError(f"Queries cannot contain the '{INTERNAL_PREFIX}' prefix")
        if not self._gossip.alive():
            raise RPCError("Serf can't query after Leave or Shutdown")
        log.debug("requesting query send: %s. Payload: %r", name, payload)
        try:
            return self._gossip.query(name, payload, param, on_record)
        except SerfError as e:
            log.warning("failed to start user query: %s", e)
            raise RPCError(str(e)) from None

    def respond(self, q: IncomingQuery, payload: bytes) -> None:
        """RPC ``respond``: Serf's errors come back as RPCError."""
        try:
            self._gossip.respond(q, payload)
        except SerfError as e:
            raise RPCError(str(e)) from None

    def subscribe_events(self, cb: Callable[[AnyEvent], None]) -> Callable[[], None]:
        """RPC ``stream``: cb gets every (coalesced) event; returns unsubscribe."""
        self.listeners.append(cb)

        def unsubscribe() -> None:
            if cb in self.listeners:
                self.listeners.remove(cb)

        return unsubscribe

    def subscribe_logs(self, level: int, cb: Callable[[str], None]) -> Callable[[], None]:
        """RPC ``monitor``: the last 512 lines, then live ones, at or above level."""
        return self.log_ring.subscribe(level, cb)

    # ------------------------------------------------------------------ handlers

    def _handler_respond(self, q: IncomingQuery, out: bytes, label: str) -> None:
        """A handler's stdout for a query: the response, cut to fit the size limit."""
        limit = self.config.query_response_size_limit
        me = self.config.node_name
        payload = out
        if _response_size(q, me, len(payload)) > limit:
            n = len(payload)
            while n > 0 and _response_size(q, me, n) > limit:
                n -= max(1, _response_size(q, me, n) - limit)
            payload = payload[:n]
            log.warning("handler %s: response to query %s is %d bytes, over the %d-byte limit: "
                        "truncated to %d bytes", label, q.name, len(out), limit, len(payload))
        try:
            self._gossip.respond(q, payload)
        except SerfError as e:  # a late or repeated answer; a flood must not flood the log
            self.drops.drop("handler_response", self._clock.now(),
                            "handler %s: failed to respond to query %s: %s "
                            "(response dropped)", label, q.name, e)


def _response_size(q: IncomingQuery, me: str, n: int) -> int:
    return len(MessageQueryResponse(ltime=q.ltime, id=q.id, from_=me, flags=0,
                                    payload=b"x" * n if n else None).encode())
