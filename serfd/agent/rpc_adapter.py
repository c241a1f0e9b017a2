"""What the RPC server may ask of the agent, answered by the agent's services.

Theory of operation
-------------------
:class:`~serfd.agent.rpc_server.RPCServer` speaks the protocol and knows nothing of the
agent; it calls an :class:`~serfd.agent.rpc_server.AgentAPI`. :class:`RPCAdapter` is that
API: each command is one call into the service that owns it (membership to the gossip
driver, tags to the tag service, joins to the joiner, key commands to the key service,
events, queries and streams to the events service), and each refusal becomes an
:class:`~serfd.agent.rpc_server.RPCError` carrying Serf's text for it. What belongs to the
agent's lifecycle (leave-then-stop, reload, the stats it assembles) is handed in as
callables, so the adapter holds no state of its own.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any, Protocol

from serfd.agent.events import EventsService
from serfd.agent.joins import JoinFailed
from serfd.agent.rpc_server import RPCError
from serfd.agent.tags import TagsError
from serfd.core.coordinate import Coordinate
from serfd.core.filters import AnyEvent
from serfd.core.member import Member
from serfd.core.query import IncomingQuery, QueryParam, QueryRecord
from serfd.core.serf import SerfError

__all__ = ["RPCAdapter"]


class _Gossip(Protocol):
    def members(self) -> list[Member]: ...
    def coordinate(self, node: str) -> Coordinate | None: ...
    async def force_leave(self, node: str, prune: bool) -> None: ...


class _Tags(Protocol):
    async def update(self, set_tags: Mapping[str, str], delete: Iterable[str]) -> None: ...
    async def reset(self, keys: Iterable[str]) -> None: ...


class _Joins(Protocol):
    async def join(self, texts: list[str], replay: bool) -> int: ...


class _Keys(Protocol):
    async def key_request(self, op: str, key: str) -> tuple[dict[str, Any], str]: ...


class RPCAdapter:
    """:class:`~serfd.agent.rpc_server.AgentAPI` over the gossip, join, key and events
    services."""

    def __init__(self, *, gossip: _Gossip, joins: _Joins, keys: _Keys, tags: _Tags,
                 events: EventsService,
                 leave: Callable[[], Awaitable[None]],
                 reload: Callable[[], Awaitable[list[str]]],
                 stats: Callable[[], dict[str, dict[str, str]]]) -> None:
        self._gossip = gossip
        self._joins = joins
        self._keys = keys
        self._tags = tags
        self._events = events
        self._leave = leave
        self._reload = reload
        self._stats = stats

    # -- membership

    def members(self) -> list[Member]:
        return self._gossip.members()

    def coordinate(self, node: str) -> Coordinate | None:
        return self._gossip.coordinate(node)

    async def join(self, addrs: list[str], replay: bool) -> int:
        try:
            return await self._joins.join(addrs, replay)
        except (JoinFailed, SerfError) as e:
            raise RPCError(str(e)) from None

    async def leave(self) -> None:
        await self._leave()

    async def force_leave(self, node: str, prune: bool) -> None:
        try:
            await self._gossip.force_leave(node, prune)
        except TimeoutError:
            raise RPCError("timed out broadcasting node removal") from None

    # -- tags

    async def set_tags(self, tags: dict[str, str], delete: list[str]) -> None:
        """Serf's tags command: the current tags, minus ``delete``, plus ``tags``, kept as
        runtime changes over ``[tags]`` (serfd.agent.tags)."""
        try:
            await self._tags.update(tags, delete)
        except (TagsError, SerfError) as e:
            raise RPCError(str(e)) from None

    async def reset_tags(self, keys: list[str]) -> None:
        """serfd's reset-tags: drop the runtime changes of ``keys`` (none: all)."""
        try:
            await self._tags.reset(keys)
        except (TagsError, SerfError) as e:
            raise RPCError(str(e)) from None

    # -- keys

    async def key_request(self, op: str, key: str) -> tuple[dict[str, Any], str]:
        return await self._keys.key_request(op, key)

    # -- the agent

    def stats(self) -> dict[str, dict[str, str]]:
        return self._stats()

    async def reload(self) -> list[str]:
        return await self._reload()

    # -- events, queries and streams

    async def user_event(self, name: str, payload: bytes, coalesce: bool) -> None:
        self._events.user_event(name, payload, coalesce)

    def query(self, name: str, payload: bytes, param: QueryParam,
              on_record: Callable[[QueryRecord], None]) -> object:
        return self._events.query(name, payload, param, on_record)

    def respond(self, q: IncomingQuery, payload: bytes) -> None:
        self._events.respond(q, payload)

    def subscribe_events(self, cb: Callable[[AnyEvent], None]) -> Callable[[], None]:
        return self._events.subscribe_events(cb)

    def subscribe_logs(self, level: int, cb: Callable[[str], None]) -> Callable[[], None]:
        return self._events.subscribe_logs(level, cb)
