"""Serf queries as state: parameters, filters, the asker's pending query, the answerer's view.

Theory of operation
-------------------
A query is a gossip broadcast (``messageQuery``) that each node which passes its
filters may acknowledge and answer *directly* (UDP ``messageQueryResponse`` to the
asker's address, optionally also relayed through ``relay_factor`` random members).

* The **asker** keeps a :class:`PendingQuery` keyed by the query's LTime: it accepts
  one ack and one response per ``From`` until its deadline, and turns them into
  :class:`QueryRecord` s (``ack``, ``response``, then exactly one ``done``) that the
  agent drains and streams to the RPC client.
* Beyond Serf (serf#509), the asker also knows which members the query could reach
  (alive members passing the filters, judged from their gossiped tags). When each
  of them has answered, ``done`` comes at once instead of at the deadline. An
  "answer" is a response, plus the ack when one was requested; for ``_serf_ping``,
  which never gets a response, the ack alone.
* The **answerer** sees an :class:`IncomingQuery` (an event for the handlers); its
  reply goes through ``Serf.respond``, which allows one response before the deadline.
* Bounds (beyond Serf): a :class:`PendingQuery` keeps at most ``max_answers`` acks and
  as many responses, and at most ``max_bytes`` of names and payloads over its life
  (0 = no limit); what comes after is dropped and counted in ``cut``.

Everything here is pure: times are passed in, nothing is sent from this module.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum

import msgpack

from serfd.base.goregexp import GoRegexpError, RegexCache
from serfd.wire.codec import STR, DecodeError, Field, encode_struct, obj_to_struct, pack_gossip

__all__ = [
    "INTERNAL_PREFIX",
    "IncomingQuery",
    "PendingQuery",
    "QueryParam",
    "QueryRecord",
    "QueryRecordType",
    "default_query_timeout",
    "encode_filters",
    "filters_match",
]

INTERNAL_PREFIX = "_serf_"  # InternalQueryPrefix: answered by Serf itself, never by handlers
QUERY_TIMEOUT_MULT = 16  # Serf's QueryTimeoutMult
ANSWER_OVERHEAD = 64  # bytes charged per kept ack/response on top of name and payload

_FILTER_NODE = 0  # filterNodeType
_FILTER_TAG = 1  # filterTagType
_TAG_FILTER = (Field("tag", "Tag", STR), Field("expr", "Expr", STR))


def default_query_timeout(gossip_interval: float, num_members: int) -> float:
    """Serf's DefaultQueryTimeout: GossipInterval x 16 x ceil(log10(N+1)), in seconds."""
    return gossip_interval * QUERY_TIMEOUT_MULT * math.ceil(math.log10(num_members + 1))


@dataclass(frozen=True, slots=True)
class QueryParam:
    """What an asker may set (Serf's QueryParam); timeout 0 = the default formula."""

    filter_nodes: tuple[str, ...] = ()
    filter_tags: Mapping[str, str] = field(default_factory=dict)
    request_ack: bool = False
    relay_factor: int = 0
    timeout: float = 0.0


def encode_filters(param: QueryParam) -> list[bytes] | None:
    """The wire filters: ``[0]+msgpack([names])`` and one ``[1]+msgpack({Tag, Expr})`` per tag."""
    out: list[bytes] = []
    if param.filter_nodes:
        names = [n.encode("utf-8", "surrogateescape") for n in param.filter_nodes]
        out.append(bytes((_FILTER_NODE,)) + pack_gossip(names))
    for tag, expr in param.filter_tags.items():
        out.append(bytes((_FILTER_TAG,)) + encode_struct(_TAG_FILTER, {"tag": tag, "expr": expr}))
    return out or None


# Compiled tag filters shared by callers that bring no cache of their own.
DEFAULT_REGEXES = RegexCache()


def _go_search(expr: str, text: str, regexes: RegexCache, now: float) -> bool:
    # Go's regexp.MatchString (an unanchored search), in linear time: see serfd/goregexp.py.
    return regexes.search(expr, text, now)


def filters_match(filters: Iterable[bytes] | None, name: str, tags: Mapping[str, str],
                  regexes: RegexCache | None = None, now: float = 0.0) -> bool:
    """Serf's shouldProcessQuery for a node called ``name`` with ``tags``.

    Every filter must pass; a filter we cannot decode, an unknown filter type or a
    regex that does not compile fails the query for this node (as Serf does). Tag
    regexes are Go's syntax, matched in linear time; one we cannot run never matches
    and is counted in ``regexes`` (default: a cache shared by the process).
    """
    regexes = regexes if regexes is not None else DEFAULT_REGEXES
    for raw in filters or ():
        if not isinstance(raw, (bytes, bytearray)) or not raw:
            return False
        kind, body = raw[0], bytes(raw[1:])
        try:
            obj = msgpack.unpackb(body, raw=True, strict_map_key=False)
        except (ValueError, msgpack.UnpackException):
            return False
        if kind == _FILTER_NODE:
            if not isinstance(obj, list):
                return False
            names = {n.decode("utf-8", "surrogateescape") for n in obj if isinstance(n, bytes)}
            if name not in names:
                return False
        elif kind == _FILTER_TAG:
            try:
                tf = obj_to_struct(_TAG_FILTER, obj)
                matched = _go_search(tf["expr"], tags.get(tf["tag"], ""), regexes, now)
            except (DecodeError, GoRegexpError):
                return False
            if not matched:
                return False
        else:
            return False
    return True


class QueryRecordType(StrEnum):
    """What one record of an asked query is; the value is the RPC record's ``Type``."""

    ACK = "ack"
    RESPONSE = "response"
    DONE = "done"  # the last record of every query, exactly once


@dataclass(frozen=True, slots=True)
class QueryRecord:
    """One record for the asker's client: ``ack``, ``response`` or ``done``."""

    type: QueryRecordType
    from_: str = ""
    payload: bytes = b""


@dataclass(slots=True, eq=False)  # identity: the agent keys its open queries by them
class PendingQuery:
    """The asker's side of one query (Serf's QueryResponse)."""

    ltime: int
    id: int
    name: str
    deadline: float
    request_ack: bool
    expected: frozenset[str]  # members we believe the query reaches (serf#509 early done)
    acks: set[str] = field(default_factory=set)
    responses: set[str] = field(default_factory=set)
    finished: bool = False
    records: deque[QueryRecord] = field(default_factory=deque)
    max_answers: int = 0  # acks kept, and responses kept, at most (0 = no limit)
    max_bytes: int = 0  # bytes of names and payloads kept over the query's life (0 = none)
    used_bytes: int = 0
    cut: int = 0  # answers dropped by these two limits

    @property
    def ack_only(self) -> bool:
        """Queries that are answered by their ack alone (``_serf_ping``)."""
        return self.name == INTERNAL_PREFIX + "ping"

    def add(self, from_: str, is_ack: bool, payload: bytes) -> bool:
        """Record an ack or response; False if it is a duplicate or the query is over."""
        if self.finished:
            return False
        seen = self.acks if is_ack else self.responses
        if from_ in seen:
            return False
        cost = len(from_.encode("utf-8", "surrogateescape")) + len(payload) + ANSWER_OVERHEAD
        if (self.max_answers and len(seen) >= self.max_answers) or (
                self.max_bytes and self.used_bytes + cost > self.max_bytes):
            self.cut += 1
            return False
        self.used_bytes += cost
        seen.add(from_)
        if is_ack:
            self.records.append(QueryRecord(QueryRecordType.ACK, from_))
        else:
            self.records.append(QueryRecord(QueryRecordType.RESPONSE, from_, payload))
        return True

    def complete(self) -> bool:
        """True once every expected member has answered (so ``done`` may come early)."""
        if not self.expected:
            return False
        if self.ack_only:
            return self.request_ack and self.expected <= self.acks
        if not self.expected <= self.responses:
            return False
        return not self.request_ack or self.expected <= self.acks

    def finish(self) -> None:
        """Close the query: append the one ``done`` record."""
        if not self.finished:
            self.finished = True
            self.records.append(QueryRecord(QueryRecordType.DONE))

    def drain(self) -> list[QueryRecord]:
        """The records since the last drain, in arrival order."""
        out = list(self.records)
        self.records.clear()
        return out


@dataclass(frozen=True, slots=True)
class IncomingQuery:
    """A query delivered to this node's handlers (Serf's Query event)."""

    ltime: int
    id: int
    name: str
    payload: bytes
    source_node: str
    deadline: float
