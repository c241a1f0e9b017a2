"""Serf's msgpack RPC ("IPC") server, wire-compatible with Serf 0.9.4's agent.

Theory of operation
-------------------
A client opens a stream (our Unix socket, or the optional TCP listener) and writes
msgpack objects back to back, with no length prefix (PROTOCOL.md section 4): a
request header ``{Command, Seq}``, then one body for the commands that take one.
For every request the server writes a response header ``{Error, Seq}`` (keys in
Go's alphabetical field order, ``Error`` "" meaning OK) and, for the commands that
define one, a body. Strings go out as msgpack str, Go ``[]byte`` as bin, and an
empty ``[]byte`` as nil, exactly as Serf's ``MsgpackHandle{RawToString, WriteExt}``.

Session rules, in the order Serf applies them to each request:

1. Until a ``handshake {Version: 1}`` succeeds, any other command is answered
   "Handshake required" and the connection is closed.
2. On a listener with an auth key (TCP only: the Unix socket is guarded by its file
   mode), every command but handshake/auth is answered "Authentication required"
   (header only, no body) until ``auth {AuthKey}`` succeeds. Unlike Serf we consume
   the refused request's body so the session stays in step.
3. A command we do not serve is answered "Unsupported command" and the connection
   is closed. A malformed body, a bad filter regex (like Serf: no answer at all) or
   garbage closes the connection too.

Each connection is served by its own task, one request at a time (as Serf does),
so a slow agent call or a client that stops reading only stalls that connection.
Garbage is split from misuse as STYLE.md asks: whatever a peer sends is counted in
:attr:`RPCServer.counters`, logged at debug level and answered by closing that
connection; it never raises out of the server.

Commands are a table (:data:`REQUEST_SCHEMAS` for every Serf command's body,
``RPCServer._handlers`` for the ones served); a later command is one schema entry
and one handler method.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import grp
import logging
import os
import socket
import stat
import struct
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

import msgpack

from serfd.agent.monitor import MONITOR_LEVELS
from serfd.agent.tasks import TaskSet
from serfd.base.goregexp import GoRegexpError
from serfd.base.metrics import NULL_METRICS, Metrics
from serfd.base.ratelog import DropCounters, DropLog
from serfd.core.coordinate import Coordinate
from serfd.core.filters import matches_any, parse_filters
from serfd.core.member import Member
from serfd.core.query import IncomingQuery, QueryParam, QueryRecord
from serfd.rpc.protocol import (
    ERR_AUTH_REQUIRED,
    ERR_DUPLICATE_HANDSHAKE,
    ERR_HANDSHAKE_REQUIRED,
    ERR_INVALID_AUTH,
    ERR_INVALID_FILTER,
    ERR_INVALID_QUERY_ID,
    ERR_MONITOR_EXISTS,
    ERR_STREAM_EXISTS,
    ERR_TOO_MANY_STREAMS,
    ERR_UNSUPPORTED_COMMAND,
    ERR_UNSUPPORTED_VERSION,
    IPC_VERSION,
    MUTATING_COMMANDS,
    REQUEST_SCHEMAS,
    BadRequest,
    decode_body,
    decode_header,
    encode_coordinate_response,
    encode_event_record,
    encode_member,
    encode_query_record,
    filter_members,
    pack,
    pack_header,
)

__all__ = [
    "ACTIVITY_KEYS",
    "COUNTER_KEYS",
    "MAX_REQUEST_SIZE",
    "AgentAPI",
    "RPCError",
    "RPCServer",
]

MAX_REQUEST_SIZE = 1 << 20  # our cap on one buffered request (Serf has none)
WRITE_TIMEOUT = 10.0  # seconds a client may leave a response unread before we drop it
REQUEST_TIMEOUT = 60.0  # seconds a started-but-unfinished request may stay incomplete

# Records of `stream`, `monitor` and query streams are written without waiting; once a
# client leaves this many bytes unread, records are dropped (Serf: a 512-record channel
# per stream, "Dropping event to ..."). A record always fits in an empty buffer, so
# the bound is this or one record, whichever is larger.
STREAM_BUFFER_LIMIT = 1 << 20
# Queries delivered to one connection's streams that it may still `respond` to (Serf
# keeps every one until its deadline); past this the oldest is forgotten.
MAX_OPEN_QUERIES = 1024
# `stream` subscriptions one connection may hold (Serf: unbounded); each is a check per
# event, so the cap keeps one client from making every event cost more.
MAX_STREAMS = 64
# RPC clients connected at once, Unix and TCP together (Serf: unbounded). Each may hold
# a request (MAX_REQUEST_SIZE) and unread records (STREAM_BUFFER_LIMIT).
MAX_CONNECTIONS = 256

_LOG = logging.getLogger("serfd.rpc")

# Keys of RPCServer.counters: what peers sent that we refused or dropped. All present
# from the start so a dashboard sees zeros; the agent merges them into its stats.
COUNTER_KEYS = (
    "malformed_msgpack",  # bytes that are not msgpack (or invalid UTF-8 in a str)
    "bad_field_type",  # msgpack of the wrong shape: header/body not a map, wrong field type
    "oversized_request",  # one request over MAX_REQUEST_SIZE
    "truncated_request",  # peer closed in the middle of a request
    "request_timeout",  # a request left incomplete for REQUEST_TIMEOUT
    "slow_client",  # a client that did not read its responses within WRITE_TIMEOUT
    "stream_slow_client",  # stream/monitor/query records dropped: the client is not reading
    "stream_query_evicted",  # a delivered query forgotten (MAX_OPEN_QUERIES per connection)
    "stream_too_many",  # a `stream` refused: MAX_STREAMS already open on the connection
    "too_many_connections",  # a client refused: MAX_CONNECTIONS already connected
    "handshake_required",  # command before handshake (connection closed)
    "unsupported_command",  # unknown or not-yet-served command (connection closed)
    "bad_regex",  # members-filtered with a regex that does not compile (closed)
    "auth_required",  # command refused before auth
    "auth_failed",  # auth with a wrong token
)
# Keys of RPCServer.activity: plain usage, and agent calls that raised (our bugs).
ACTIVITY_KEYS = ("connections", "requests", "agent_errors")


class RPCError(Exception):
    """An error string to put in the response header."""


class AgentAPI(Protocol):
    """What the RPC server needs from the agent."""

    def members(self) -> list[Member]:
        """All known members, including left and failed ones."""
        ...

    async def join(self, addrs: list[str], replay: bool) -> int:
        """Join via addrs; the number contacted. RPCError(multierror text) if none."""
        ...

    async def leave(self) -> None:
        """Graceful leave; the agent shuts down after the reply is flushed."""
        ...

    async def force_leave(self, node: str, prune: bool) -> None:
        """Force a failed member into the left state (prune: forget it at once)."""
        ...

    async def set_tags(self, tags: dict[str, str], delete: list[str]) -> None:
        """New tags = current - delete + tags."""
        ...

    async def reset_tags(self, keys: list[str]) -> None:
        """Drop the runtime tag changes of keys (none: all): the configuration's tags."""
        ...

    def stats(self) -> dict[str, dict[str, str]]:
        """Serf's stats map (agent, runtime, serf, tags, event_handlers, ...)."""
        ...

    def coordinate(self, node: str) -> Coordinate | None:
        """The cached network coordinate of node (None: unknown, or disabled)."""
        ...

    async def reload(self) -> list[str]:
        """Re-read and apply the configuration; its errors ([] = applied)."""
        ...

    async def user_event(self, name: str, payload: bytes, coalesce: bool) -> None:
        """Send a user event; RPCError with Serf's text (size limits)."""
        ...

    def query(self, name: str, payload: bytes, param: QueryParam,
              on_record: Callable[[QueryRecord], None]) -> object:
        """Start a query; its records go to on_record (never before this returns)."""
        ...

    def respond(self, q: IncomingQuery, payload: bytes) -> None:
        """Answer a query delivered to a stream; RPCError with Serf's text."""
        ...

    def subscribe_events(self, cb: Callable[[Any], None]) -> Callable[[], None]:
        """Every (coalesced) member/user event and query; returns unsubscribe."""
        ...

    def subscribe_logs(self, level: int, cb: Callable[[str], None]) -> Callable[[], None]:
        """Recent then live log lines at or above level; returns unsubscribe."""
        ...



_NO_BODY = object()


@dataclass(slots=True)
class _Reply:
    error: str = ""
    body: Any = _NO_BODY
    send: bool = True  # False: close without answering (Serf's handler error)
    close: bool = False  # close the connection after the answer
    after: Callable[[], Awaitable[None]] | None = None  # run once the answer is flushed


class _Closed(Exception):
    """The peer went away (cleanly or not); nothing to answer."""


# ---------------------------------------------------------------------------
# One connection.


class _Conn:
    def __init__(
        self,
        server: RPCServer,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        unix: bool,
    ) -> None:
        self.server = server
        self.reader = reader
        self.writer = writer
        self.unpacker = msgpack.Unpacker(raw=False, max_buffer_size=server.max_request_size)
        self.fed = 0  # bytes fed to the unpacker
        self.done = 0  # bytes of the objects returned so far (tell() counts partial ones too)
        self.version = 0
        self.unix = unix
        self.authed = unix or server.auth_key is None
        peer = writer.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else "unix"
        self.uid: int | None = None  # the peer's uid on the Unix socket (SO_PEERCRED)
        if unix:
            cred = peer_credentials(writer.get_extra_info("socket"))
            if cred is not None:
                pid, self.uid, _gid = cred
                self.peer = f"unix(uid {self.uid}, pid {pid})"
        # Streams (stream, monitor, query records) by the Seq that opened them.
        self.streams: dict[int, Callable[[], None]] = {}  # seq -> unsubscribe
        self.monitor_seq: int | None = None
        self.queries: dict[int, IncomingQuery] = {}  # respond IDs (per connection, from 1)
        self.next_query_id = 1
        self.current_seq = 0  # Seq of the request being served
        self.stalled = False  # a stream record was dropped; see push()

    def push(self, seq: int, make_body: Callable[[], Any]) -> bool:
        """Write one stream record now (no waiting); False if dropped (client not reading).

        A record goes out whole only if it fits under STREAM_BUFFER_LIMIT (an empty
        buffer takes any record). Once one did not fit, the connection is stalled:
        records are dropped without being built until the client has read half of what
        is buffered, so a client that stopped reading costs a size check per record.
        """
        transport = self.writer.transport
        if transport.is_closing():
            return False
        buffered = transport.get_write_buffer_size()
        if self.stalled:
            if buffered > STREAM_BUFFER_LIMIT // 2:
                self._dropped(seq)
                return False
            self.stalled = False
        data = pack_header(seq, "") + pack(make_body())
        if buffered and buffered + len(data) > STREAM_BUFFER_LIMIT:
            self.stalled = True
            self._dropped(seq)
            return False
        self.writer.write(data)
        return True

    def _dropped(self, seq: int) -> None:
        self.server.drops.drop("stream_slow_client", self.server.now(),
                               "dropping event to slow client %s (stream %d): over %d bytes "
                               "unread", self.peer, seq, STREAM_BUFFER_LIMIT)

    def open_query(self, q: IncomingQuery) -> int:
        """Remember a delivered query for ``respond``; its ID (the oldest go past the cap)."""
        queries = self.queries
        now = self.server.now()
        # Forget expired ones from the front (IDs are in delivery order), then the oldest.
        while queries:
            first = next(iter(queries))
            live = queries[first].deadline >= now - 1.0
            if live and len(queries) < MAX_OPEN_QUERIES:
                break
            if live:
                self.server.drops.drop("stream_query_evicted", now,
                                       "client %s: over %d open queries; forgot query %s",
                                       self.peer, MAX_OPEN_QUERIES, queries[first].name)
            del queries[first]
        qid = self.next_query_id
        self.next_query_id += 1
        queries[qid] = q
        return qid

    def close_streams(self) -> None:
        for unsubscribe in list(self.streams.values()):
            unsubscribe()
        self.streams.clear()

    async def read_object(self, in_request: bool = False) -> Any:
        """The next msgpack object; in_request: a header was read, its body is due."""
        while True:
            try:
                obj = next(self.unpacker)
                self.done = self.unpacker.tell()
                return obj
            except StopIteration:
                pass
            except ValueError as e:  # FormatError, StackError, UnicodeDecodeError, ...
                # msgpack refuses a container/str header over its limits at once.
                key = "oversized_request" if "exceeds max_" in str(e) else "malformed_msgpack"
                raise BadRequest(key, str(e) or type(e).__name__) from None
            started = in_request or self.fed > self.done
            try:
                async with asyncio.timeout(self.server.request_timeout if started else None):
                    data = await self.reader.read(65536)
            except TimeoutError:
                raise BadRequest("request_timeout", "request left incomplete") from None
            except OSError:
                data = b""
            if not data:
                if started:
                    self.server.counters["truncated_request"] += 1
                raise _Closed
            try:
                self.unpacker.feed(data)
            except msgpack.BufferFull:
                raise BadRequest("oversized_request", "request over the size cap") from None
            self.fed += len(data)

    async def send(self, seq: int, reply: _Reply) -> None:
        data = pack_header(seq, reply.error)
        if reply.body is not _NO_BODY:
            data += pack(reply.body)
        self.writer.write(data)
        try:
            async with asyncio.timeout(self.server.write_timeout):
                await self.writer.drain()
        except TimeoutError:
            raise BadRequest("slow_client", "client is not reading its responses") from None
        except OSError:
            raise _Closed from None


# ---------------------------------------------------------------------------
# The server.


class RPCServer:
    """Serf's RPC protocol over a Unix socket and an optional TCP listener."""

    def __init__(
        self,
        agent: AgentAPI,
        *,
        auth_key: str | None = None,
        log: logging.Logger = _LOG,
        max_request_size: int = MAX_REQUEST_SIZE,
        write_timeout: float = WRITE_TIMEOUT,
        request_timeout: float = REQUEST_TIMEOUT,
        max_connections: int = MAX_CONNECTIONS,
        metrics: Metrics = NULL_METRICS,
    ) -> None:
        self.agent = agent
        self.metrics = metrics  # agent.ipc.accept / agent.ipc.command, as Serf's agent
        self.max_connections = max_connections
        self.auth_key = auth_key or None
        self.log = log
        self.max_request_size = max_request_size
        self.write_timeout = write_timeout
        self.request_timeout = request_timeout
        self.counters: dict[str, int] = DropCounters(metrics)  # also serfd.dropped.*
        self.counters.update(dict.fromkeys(COUNTER_KEYS, 0))
        self.activity: dict[str, int] = dict.fromkeys(ACTIVITY_KEYS, 0)
        self.drops = DropLog(log, self.counters)  # rate-limited lines for counted drops
        self._servers: list[asyncio.Server] = []
        self._conns: dict[asyncio.Task[Any], _Conn] = {}
        self._background = TaskSet(self.log, "RPC background")
        self._unix_path: str | None = None
        self._unix_ino: int | None = None
        self._tcp_addr: tuple[str, int] | None = None
        # The commands served; REQUEST_SCHEMAS gives each one's body.
        self._handlers: dict[str, Callable[[_Conn, dict[str, Any]], Awaitable[_Reply]]] = {
            "handshake": self._handshake,
            "auth": self._auth,
            "members": self._members,
            "members-filtered": self._members_filtered,
            "join": self._join,
            "leave": self._leave,
            "force-leave": self._force_leave,
            "tags": self._tags,
            "reset-tags": self._reset_tags,
            "stats": self._stats,
            "get-coordinate": self._get_coordinate,
            **{op: self._key_handler(op)
               for op in ("install-key", "use-key", "remove-key", "list-keys")},
            "stop": self._stop,
            "reload": self._reload,
            "event": self._event,
            "query": self._query,
            "respond": self._respond,
            "stream": self._stream,
            "monitor": self._monitor,
        }

    # -- listeners ---------------------------------------------------------

    async def start_unix(self, path: str, mode: int = 0o660, group: str | None = None) -> None:
        """Listen on a Unix socket created with mode and group (name or gid; None: ours).

        A stale socket file is replaced. Who may connect is the kernel's decision
        (write permission on the socket file), made before we see the client.
        """
        gid = resolve_group(group) if group is not None else -1
        _remove_stale_socket(path)
        sock = _bind_unix(path, mode, gid)
        st = os.stat(path)
        self._unix_path, self._unix_ino = path, st.st_ino
        server = await asyncio.start_unix_server(
            lambda r, w: self._accept(r, w, unix=True), sock=sock
        )
        self._servers.append(server)
        self.log.info("RPC listening on unix:%s (mode %04o%s)", path, mode,
                      f", group {group}" if group is not None else "")

    async def start_tcp(self, host: str, port: int) -> None:
        """Listen on TCP host:port (port 0: any free port, see tcp_address)."""
        server = await asyncio.start_server(lambda r, w: self._accept(r, w, unix=False), host, port)
        self._servers.append(server)
        bound = server.sockets[0].getsockname()
        self._tcp_addr = (bound[0], bound[1])
        self.log.info("RPC listening on tcp:%s:%d", bound[0], bound[1])

    @staticmethod
    def now() -> float:
        """The loop's clock (for rate-limited logs and query deadlines)."""
        return asyncio.get_running_loop().time()

    @property
    def tcp_address(self) -> tuple[str, int] | None:
        """The bound TCP (host, port), once start_tcp ran."""
        return self._tcp_addr

    async def close(self) -> None:
        """Stop listening, drop every connection, remove our socket file."""
        for server in self._servers:
            server.close()
        me = asyncio.current_task()
        tasks = [t for t in self._conns if t is not me]
        for task in tasks:
            conn = self._conns.get(task)
            if conn is not None:
                conn.writer.transport.abort()
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for server in self._servers:
            await server.wait_closed()
        self._servers.clear()
        if self._unix_path is not None:
            with contextlib.suppress(OSError):
                if os.stat(self._unix_path).st_ino == self._unix_ino:
                    os.unlink(self._unix_path)
            self._unix_path = None

    # -- connections -------------------------------------------------------

    async def _accept(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, unix: bool
    ) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.metrics.incr(("agent", "ipc", "accept"))
        if len(self._conns) >= self.max_connections:
            peer = writer.get_extra_info("peername")
            self.drops.drop("too_many_connections", self.now(),
                            "refused RPC client %s: %d clients connected", peer or "unix",
                            self.max_connections)
            writer.transport.abort()
            return
        conn = _Conn(self, reader, writer, unix)
        self._conns[task] = conn
        self.activity["connections"] += 1
        self.log.debug("accepted client %s", conn.peer)
        try:
            await self._serve(conn)
        except BadRequest as g:
            self.counters[g.key] += 1
            self.log.debug("dropping client %s: %s", conn.peer, g)
        except _Closed:
            pass
        except asyncio.CancelledError:
            pass
        except Exception:
            self.log.exception("RPC client %s: internal error", conn.peer)
        finally:
            conn.close_streams()
            self._conns.pop(task, None)
            writer.transport.abort()

    async def _serve(self, conn: _Conn) -> None:
        while True:
            command, seq = decode_header(await conn.read_object())
            conn.current_seq = seq
            self.activity["requests"] += 1
            reply = await self._request(conn, command, seq)
            try:
                if reply.send:
                    await conn.send(seq, reply)
            finally:
                if reply.after is not None:  # the request was whole: act on it anyway
                    self._spawn(reply.after())
            if reply.close:
                return

    async def _request(self, conn: _Conn, command: str, seq: int) -> _Reply:
        if command != "handshake" and conn.version == 0:
            self.counters["handshake_required"] += 1
            self.log.debug("client %s: %r before handshake", conn.peer, command)
            return _Reply(ERR_HANDSHAKE_REQUIRED, close=True)
        self.metrics.incr(("agent", "ipc", "command"))
        schema = REQUEST_SCHEMAS.get(command)
        if not conn.authed and command not in ("handshake", "auth"):
            self.counters["auth_required"] += 1
            self.log.warning("client %s sending commands before auth", conn.peer)
            if schema is not None:  # keep the session in step (Serf leaves it unread)
                decode_body(schema, await conn.read_object(in_request=True))
            return _Reply(ERR_AUTH_REQUIRED)
        handler = self._handlers.get(command)
        if handler is None:
            self.counters["unsupported_command"] += 1
            self.log.debug("client %s: unsupported command %r", conn.peer, command)
            return _Reply(ERR_UNSUPPORTED_COMMAND, close=True)
        body: dict[str, Any] = {}
        if schema is not None:
            body = decode_body(schema, await conn.read_object(in_request=True))
        if command in MUTATING_COMMANDS:
            # Who changed the cluster: the uid on the Unix socket, the address on TCP.
            self.log.info("RPC %s from %s", command, conn.peer)
        return await handler(conn, body)

    def _spawn(self, work: Awaitable[None]) -> None:
        self._background.spawn(work)

    async def _call_agent(self, what: str, call: Awaitable[Any]) -> tuple[Any, str]:
        """Await an agent call: (result, "") or (None, error text)."""
        try:
            return await call, ""
        except RPCError as e:
            return None, str(e)
        except Exception as e:  # an agent bug must not take the RPC server down
            self.activity["agent_errors"] += 1
            self.log.exception("agent %s failed", what)
            return None, str(e) or type(e).__name__

    # -- command handlers --------------------------------------------------

    async def _handshake(self, conn: _Conn, req: dict[str, Any]) -> _Reply:
        if req["Version"] != IPC_VERSION:
            return _Reply(ERR_UNSUPPORTED_VERSION)
        if conn.version != 0:
            return _Reply(ERR_DUPLICATE_HANDSHAKE)
        conn.version = req["Version"]
        return _Reply()

    async def _auth(self, conn: _Conn, req: dict[str, Any]) -> _Reply:
        if conn.unix:  # guarded by the socket's file mode: any token will do
            return _Reply()
        # Serf compares with its key, "" if none. In constant time: how long a wrong token
        # takes to refuse must not tell how much of it was right.
        import hmac  # here: it loads OpenSSL's libcrypto, which most agents never need

        if hmac.compare_digest(req["AuthKey"].encode("utf-8", "surrogateescape"),
                               (self.auth_key or "").encode("utf-8", "surrogateescape")):
            conn.authed = True
            return _Reply()
        self.counters["auth_failed"] += 1
        return _Reply(ERR_INVALID_AUTH)

    async def _members(self, conn: _Conn, req: dict[str, Any]) -> _Reply:
        return _Reply(body={"Members": [encode_member(m) for m in self.agent.members()]})

    async def _members_filtered(self, conn: _Conn, req: dict[str, Any]) -> _Reply:
        try:
            members = filter_members(self.agent.members(), req["Tags"], req["Status"], req["Name"])
        except GoRegexpError as e:
            # Serf's handler returns an error before writing: no answer, connection dropped.
            # (Also a pattern we refuse to run: too large, or a Unicode script class.)
            self.counters["bad_regex"] += 1
            self.log.info("client %s: failed to compile regex: %s", conn.peer, e)
            return _Reply(send=False, close=True)
        return _Reply(body={"Members": [encode_member(m) for m in members]})

    async def _join(self, conn: _Conn, req: dict[str, Any]) -> _Reply:
        num, err = await self._call_agent("join", self.agent.join(req["Existing"], req["Replay"]))
        return _Reply(err, body={"Num": int(num or 0) if not err else 0})

    async def _leave(self, conn: _Conn, req: dict[str, Any]) -> _Reply:
        # Reply first, then leave: the agent shuts down (and closes us) when it is done.
        self.log.info("graceful leave triggered by RPC client %s", conn.peer)
        return _Reply(after=self.agent.leave)

    async def _force_leave(self, conn: _Conn, req: dict[str, Any]) -> _Reply:
        _, err = await self._call_agent(
            "force-leave", self.agent.force_leave(req["Node"], req["Prune"])
        )
        return _Reply(err)

    async def _tags(self, conn: _Conn, req: dict[str, Any]) -> _Reply:
        _, err = await self._call_agent(
            "set_tags", self.agent.set_tags(req["Tags"], req["DeleteTags"])
        )
        return _Reply(err)

    async def _reset_tags(self, conn: _Conn, req: dict[str, Any]) -> _Reply:
        _, err = await self._call_agent("reset_tags", self.agent.reset_tags(req["Keys"]))
        return _Reply(err)

    def _key_handler(self, op: str) -> Callable[[_Conn, dict[str, Any]], Awaitable[_Reply]]:
        async def handler(conn: _Conn, req: dict[str, Any]) -> _Reply:
            # Serf always answers a body: {Keys, Messages, NumErr, NumNodes, NumResp}.
            empty: dict[str, Any] = {"Keys": None, "Messages": {}, "NumErr": 0, "NumNodes": 0,
                                     "NumResp": 0}
            call = getattr(self.agent, "key_request", None)
            if call is None:
                return _Reply("Keyring is empty (encryption not enabled)", body=empty)
            res, err = await self._call_agent(op, call(op, req.get("Key", "")))
            if res is None:
                return _Reply(err, body=empty)
            body, error = res
            return _Reply(error, body=body)

        return handler

    async def _stats(self, conn: _Conn, req: dict[str, Any]) -> _Reply:
        return _Reply(body=self.agent.stats())

    async def _get_coordinate(self, conn: _Conn, req: dict[str, Any]) -> _Reply:
        # Serf answers every node, known or not: Ok says which.
        return _Reply(body=encode_coordinate_response(self.agent.coordinate(req["Node"])))

    async def _reload(self, conn: _Conn, req: dict[str, Any]) -> _Reply:
        # Answers only once the reload is applied or refused (ExecReload waits on it).
        errors, err = await self._call_agent("reload", self.agent.reload())
        return _Reply(err or "\n".join(errors or []))

    async def _stop(self, conn: _Conn, req: dict[str, Any]) -> _Reply:
        # Ends the stream or monitor opened with that Seq; Serf always answers "".
        unsubscribe = conn.streams.pop(req["Stop"], None)
        if unsubscribe is not None:
            unsubscribe()
        if conn.monitor_seq == req["Stop"]:
            conn.monitor_seq = None
        return _Reply()

    async def _event(self, conn: _Conn, req: dict[str, Any]) -> _Reply:
        _, err = await self._call_agent(
            "user_event", self.agent.user_event(req["Name"], req["Payload"], req["Coalesce"])
        )
        return _Reply(err)

    async def _query(self, conn: _Conn, req: dict[str, Any]) -> _Reply:
        seq = conn.current_seq
        param = QueryParam(
            filter_nodes=tuple(req["FilterNodes"]),
            filter_tags=dict(req["FilterTags"]),
            request_ack=req["RequestAck"],
            relay_factor=req["RelayFactor"],
            timeout=max(0, req["Timeout"]) / 1e9,
        )

        def on_record(rec: QueryRecord) -> None:
            conn.push(seq, lambda: {"From": rec.from_, "Payload": rec.payload or None,
                                    "Type": rec.type.value})

        try:
            self.agent.query(req["Name"], req["Payload"], param, on_record)
        except RPCError as e:
            return _Reply(str(e))
        except Exception as e:  # an agent bug must not take the RPC server down
            self.activity["agent_errors"] += 1
            self.log.exception("agent query failed")
            return _Reply(str(e) or type(e).__name__)
        return _Reply()

    async def _respond(self, conn: _Conn, req: dict[str, Any]) -> _Reply:
        q = conn.queries.get(req["ID"])
        if q is None:
            return _Reply(ERR_INVALID_QUERY_ID)
        try:
            self.agent.respond(q, req["Payload"])
        except RPCError as e:
            return _Reply(str(e))
        conn.queries.pop(req["ID"], None)  # answered: Serf forgets it too
        return _Reply()

    async def _stream(self, conn: _Conn, req: dict[str, Any]) -> _Reply:
        seq = conn.current_seq
        try:
            filters = parse_filters(req["Type"])
        except ValueError:
            return _Reply(ERR_INVALID_FILTER)
        if seq in conn.streams:
            return _Reply(ERR_STREAM_EXISTS)
        if len(conn.streams) >= MAX_STREAMS:
            self.drops.drop("stream_too_many", self.now(),
                            "client %s: refused a stream: %d open on this connection",
                            conn.peer, MAX_STREAMS)
            return _Reply(ERR_TOO_MANY_STREAMS)

        def on_event(ev: Any) -> None:
            if not matches_any(filters, ev):
                return
            if isinstance(ev, IncomingQuery):
                qid = conn.next_query_id
                if conn.push(seq, lambda: encode_query_record(qid, ev)):
                    conn.open_query(ev)  # only a query the client saw can be answered
            else:
                conn.push(seq, lambda: encode_event_record(ev))

        # Register once the OK header is out (as Serf does), so no record precedes it.
        async def register() -> None:
            conn.streams[seq] = self.agent.subscribe_events(on_event)

        conn.streams[seq] = lambda: None
        return _Reply(after=register)

    async def _monitor(self, conn: _Conn, req: dict[str, Any]) -> _Reply:
        seq = conn.current_seq
        level = MONITOR_LEVELS.get(req["LogLevel"].upper())
        if level is None:
            return _Reply(f"Unknown log level: {req['LogLevel']}")
        if conn.monitor_seq is not None:
            return _Reply(ERR_MONITOR_EXISTS)
        conn.monitor_seq = seq

        def on_line(line: str) -> None:
            conn.push(seq, lambda: {"Log": line})

        async def register() -> None:
            if conn.monitor_seq == seq:
                conn.streams[seq] = self.agent.subscribe_logs(level, on_line)

        conn.streams[seq] = lambda: None
        return _Reply(after=register)




# ---------------------------------------------------------------------------
# Unix socket file handling.


def _remove_stale_socket(path: str) -> None:
    """Remove a leftover socket file; refuse to touch a live socket or a non-socket."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise FileExistsError(f"{path} exists and is not a socket")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)  # a live server with a full backlog counts as in use
    try:
        probe.connect(path)
    except (ConnectionRefusedError, FileNotFoundError):
        pass  # nobody listening: stale
    else:
        raise OSError(f"{path} is in use by a running server")
    finally:
        probe.close()
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)



def peer_credentials(sock: Any) -> tuple[int, int, int] | None:
    """(pid, uid, gid) of a Unix socket's peer (Linux SO_PEERCRED), None if unavailable."""
    opt = getattr(socket, "SO_PEERCRED", None)
    if sock is None or opt is None:
        return None
    try:
        raw = sock.getsockopt(socket.SOL_SOCKET, opt, struct.calcsize("3i"))
    except OSError:
        return None
    pid, uid, gid = struct.unpack("3i", raw)
    return pid, uid, gid


def resolve_group(group: str) -> int:
    """A group name or numeric gid -> gid; ValueError naming the group if unknown."""
    if group.isdigit():
        return int(group)
    try:
        return grp.getgrnam(group).gr_gid
    except KeyError:
        raise ValueError(f"rpc.socket_group: unknown group {group!r}") from None


def _private_dir(parent: str) -> str:
    """A new 0700 directory ``parent/.rpcXXXXXXXXXXXX``: tempfile.mkdtemp's way, without
    tempfile (which loads shutil, bz2 and lzma, about 1 MiB of RSS, for this one call)."""
    for _ in range(100):
        path = os.path.join(parent, ".rpc" + os.urandom(6).hex())
        try:
            os.mkdir(path, 0o700)
        except FileExistsError:
            continue
        return path
    raise FileExistsError(errno.EEXIST, "no free name for a private directory", parent)


def _bind_unix(path: str, mode: int, gid: int = -1) -> socket.socket:
    """A listening Unix socket at path whose file never exists with a wider mode.

    Bind inside a private 0700 directory, chown/chmod there, then rename into place.
    """
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        tmpdir = _private_dir(os.path.dirname(path) or ".")
        tmp = os.path.join(tmpdir, "s")
        try:
            sock.bind(tmp)
            if gid != -1:
                os.chown(tmp, -1, gid)
            os.chmod(tmp, mode)
            os.rename(tmp, path)
        except OSError:
            # e.g. the temporary path is too long for sun_path: bind in place.
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            sock.close()
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.bind(path)
            os.chmod(path, mode & 0o700)  # nobody else until the group is right
            if gid != -1:
                os.chown(path, -1, gid)
            os.chmod(path, mode)
        finally:
            os.rmdir(tmpdir)
        sock.listen(128)
        sock.setblocking(False)
        return sock
    except BaseException:
        sock.close()
        raise
