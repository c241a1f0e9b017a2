"""The agent's side of events and queries: handlers, coalescing, RPC event/query/respond/monitor.

``EventsMixin`` is part of :class:`serfd.agent.agent.Agent` (kept in its own file so the
agent's socket and join code stays readable). It owns:

* the :class:`~serfd.agent.dispatch.Dispatcher` (coalescing, then handlers and RPC streams)
  and the :class:`~serfd.agent.handlers.HandlerRunner`, rebuilt from the config on reload;
* the RPC operations ``user_event``, ``query``, ``respond``, ``subscribe_events``
  and ``subscribe_logs`` (serfd.agent.rpc_server.AgentAPI);
* queries asked through RPC: the gossip driver hands each record to the asker's
  callback, one loop iteration later, so the RPC header always goes first;
* the :class:`~serfd.agent.monitor.LogRing` behind RPC ``monitor``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from serfd.agent.config import Config, ConfigError
from serfd.agent.dispatch import Dispatcher
from serfd.agent.handlers import HandlerRunner, parse_handlers
from serfd.agent.monitor import LogRing
from serfd.agent.rpc_server import RPCError
from serfd.base.ratelog import DropLog
from serfd.core.filters import AnyEvent
from serfd.core.member import Member
from serfd.core.query import INTERNAL_PREFIX, IncomingQuery, QueryParam, QueryRecord
from serfd.core.serf import DEFAULT_MAX_QUERY_TIMEOUT, SerfError, SerfState
from serfd.wire.serf_messages import MessageQueryResponse

if TYPE_CHECKING:
    from serfd.agent.gossip import GossipDriver
    from serfd.core.serf import Serf

__all__ = ["EventsMixin"]

log = logging.getLogger("serfd.agent")

DEFAULT_HANDLERS_DIR = Path("/etc/serfd.d/handlers")


class EventsMixin:
    """Events, queries and handlers for the Agent (see the module docstring)."""

    config: Config
    config_dir: Path | None
    counters: dict[str, int]  # the agent's drop counters (serfctl info: dropped_<key>)
    serf: Serf
    gossip: GossipDriver | None
    listeners: list[Callable[[AnyEvent], None]]
    reload_hooks: list[Callable[[Config, Config], None]]
    _stop: asyncio.Event
    _exit_code: int

    if TYPE_CHECKING:  # provided by Agent
        def _spawn(self, coro: object) -> None: ...
        def _pump(self) -> None: ...
        def _now(self) -> float: ...

    # ------------------------------------------------------------------ setup

    def handlers_dir(self) -> Path:
        """``handlers_dir``, else ``<config dir>/handlers``."""
        if self.config.handlers_dir is not None:
            return self.config.handlers_dir
        if self.config_dir is not None:
            return self.config_dir / "handlers"
        return DEFAULT_HANDLERS_DIR

    def _start_events(self, loop: asyncio.AbstractEventLoop) -> None:
        self.event_drops = DropLog(log, self.counters)
        self.log_ring = LogRing(loop=loop, counters=self.counters)
        logging.getLogger().addHandler(self.log_ring)
        try:
            handlers = parse_handlers(self.config.handlers)
        except ValueError as e:  # load_config validated them; keep going without handlers
            log.error("handlers: %s", e)
            handlers = ()
        self.handler_runner = HandlerRunner(
            handlers,
            self.handlers_dir(),
            max_concurrent=self.config.handler_max_concurrent,
            timeout=self.config.handler_timeout,
            self_member=self._self_member,
            respond=self._handler_respond,
            spawn=self._spawn,
            drops=self.event_drops,
            now=loop.time,
        )
        self.dispatcher = Dispatcher(loop, self.handler_runner, self.listeners,
                                     counters=self.counters)
        self.reload_hooks.append(self._reload_events)
        for h in handlers:
            log.info("handler: events '%s' run %s", h.route, h.label.split("=", 1)[1])

    def _stop_events(self) -> None:
        self.dispatcher.close()
        logging.getLogger().removeHandler(self.log_ring)

    def _reload_events(self, old: Config, new: Config) -> None:
        """Reload hook: new routing, limits and size limits; runs in progress go on."""
        try:
            handlers = parse_handlers(new.handlers)
        except ValueError as e:
            raise ConfigError([f"handlers: {e}"]) from None
        self.handler_runner.update(handlers, self.handlers_dir(),
                                   max_concurrent=new.handler_max_concurrent,
                                   timeout=new.handler_timeout)
        self.serf.config = dataclasses.replace(
            self.serf.config,
            user_event_size_limit=new.user_event_size_limit,
            query_size_limit=new.query_size_limit,
            query_response_size_limit=new.query_response_size_limit,
            max_query_timeout=max(DEFAULT_MAX_QUERY_TIMEOUT, new.handler_timeout),
        )
        if old.handlers != new.handlers or old.handlers_dir != new.handlers_dir:
            log.info("reload: %d handler route%s in effect", len(handlers),
                     "" if len(handlers) == 1 else "s")

    def _self_member(self) -> Member:
        return self.serf.local_member()

    # ------------------------------------------------------------------ after each pump

    def _after_pump(self) -> None:
        if self.serf.conflict_lost and not self._stop.is_set():
            log.error("lost the name conflict resolution for %s: stopping",
                      self.config.node_name)
            self._exit_code = 1
            self._stop.set()

    # ------------------------------------------------------------------ AgentAPI

    async def user_event(self, name: str, payload: bytes, coalesce: bool) -> None:
        """RPC ``event``: Serf's errors (size limits) come back as RPCError."""
        log.debug("requesting user event send: %s. Coalesced: %s. Payload: %r",
                  name, coalesce, payload)
        try:
            self.serf.user_event(name, payload, coalesce, self._now())
        except SerfError as e:
            log.warning("failed to send user event: %s", e)
            raise RPCError(str(e)) from None
        self._pump()

    def query(self, name: str, payload: bytes, param: QueryParam,
              on_record: Callable[[QueryRecord], None]) -> int:
        """RPC ``query``: start it; ack/response/done records go to on_record later."""
        if name.startswith(INTERNAL_PREFIX) and (name != INTERNAL_PREFIX + "ping" or payload):
            raise RPCError(f"Queries cannot contain the '{INTERNAL_PREFIX}' prefix")
        if self.serf.state != SerfState.ALIVE:
            raise RPCError("Serf can't query after Leave or Shutdown")
        log.debug("requesting query send: %s. Payload: %r", name, payload)
        assert self.gossip is not None
        try:
            return self.gossip.query(name, payload, param, on_record)
        except SerfError as e:
            log.warning("failed to start user query: %s", e)
            raise RPCError(str(e)) from None

    def respond(self, q: IncomingQuery, payload: bytes) -> None:
        """RPC ``respond``: Serf's errors come back as RPCError."""
        try:
            self.serf.respond(q, payload, self._now())
        except SerfError as e:
            raise RPCError(str(e)) from None
        self._pump()

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
        limit = self.serf.config.query_response_size_limit
        payload = out
        if _response_size(q, self.config.node_name, len(payload)) > limit:
            n = len(payload)
            while n > 0 and _response_size(q, self.config.node_name, n) > limit:
                n -= max(1, _response_size(q, self.config.node_name, n) - limit)
            payload = payload[:n]
            log.warning("handler %s: response to query %s is %d bytes, over the %d-byte limit: "
                        "truncated to %d bytes", label, q.name, len(out), limit, len(payload))
        try:
            self.serf.respond(q, payload, self._now())
        except SerfError as e:  # a late or repeated answer; a flood must not flood the log
            self.event_drops.drop("handler_response", self._now(),
                                  "handler %s: failed to respond to query %s: %s "
                                  "(response dropped)", label, q.name, e)
            return
        self._pump()


def _response_size(q: IncomingQuery, me: str, n: int) -> int:
    return len(MessageQueryResponse(ltime=q.ltime, id=q.id, from_=me, flags=0,
                                    payload=b"x" * n if n else None).encode())
