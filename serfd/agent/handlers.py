"""Event handlers: Serf-compatible scripts, run concurrently so that none can block serfd.

Theory of operation
-------------------
A :class:`Handler` is one routing entry from the ``[handlers]`` table: a filter list
(``events.parse_filters``) and a command, either a string run by ``/bin/sh -c`` (as
Serf runs ``-event-handler`` scripts) or a list run without a shell. A command
whose first word has no ``/`` and names a file in the handlers directory runs that
file; otherwise the shell (or PATH) finds it.

The process sees exactly what a Serf handler sees: the agent's environment
(without ``NOTIFY_SOCKET``) plus ``SERF_EVENT``, ``SERF_SELF_NAME``,
``SERF_SELF_ROLE``, ``SERF_TAG_*`` and ``SERF_USER_EVENT``/``SERF_USER_LTIME`` or
``SERF_QUERY_NAME``/``SERF_QUERY_LTIME``; on stdin, member lines
``name\\taddr\\trole\\ttags`` or the payload (a newline appended when missing).
Payloads never go on a command line.

Unlike Serf (serf#369), handlers never wait for one another:

* each run is an asyncio subprocess in its own session (so its own process group);
  at most ``max_concurrent`` run at once, the rest wait for a slot in a backlog;
* a run that outlives ``timeout`` has its whole process group killed (SIGKILL) and
  an error logged;
* one handler's *member* events are run one after another, in order (a
  load-balancer script must not see a leave before the join it follows); user
  events and queries do not wait for earlier runs of the same handler;
* stdout and stderr lines are logged, tagged with the handler; for a query, stdout
  of a run that exits 0 is the response.

Nothing here blocks the event loop: gossip and RPC go on while handlers run.

Bounds (a peer can send events faster than handlers run; what is cut is counted
in the agent's counters and logged, rate-limited, by a ``DropLog``):

* the backlog of user-event and query runs waiting for a slot holds at most
  ``BACKLOG`` (handler, event) pairs; a run that does not fit is dropped
  (``handler_backlog_user``, ``handler_backlog_query``: that query gets no
  response from this handler);
* a query whose deadline passed while it waited is not run (``handler_query_expired``):
  nobody would get its response;
* each handler keeps at most ``MEMBER_BACKLOG`` member events behind the one it
  runs; when more come, the oldest waiting one is dropped (``handler_member_backlog``),
  so the script sees the latest membership rather than a stale queue;
* tasks exist only for runs that hold a slot: at most ``max_concurrent``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import shlex
import signal
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from serfd.agent.clock import Clock, LoopClock
from serfd.base.metrics import NULL_METRICS, Metrics
from serfd.base.ratelog import DropLog
from serfd.core.filters import AnyEvent, EventFilter, event_type, matches_any, parse_filters
from serfd.core.member import Member
from serfd.core.query import IncomingQuery
from serfd.core.serf import MemberEvent, UserEvent

__all__ = ["Handler", "HandlerRunner", "event_env", "event_stdin", "handler_stats",
           "parse_handlers"]

log = logging.getLogger("serfd.handlers")

MAX_OUTPUT = 64 * 1024  # stdout kept for a query response (the rest is read and dropped)
_PIPE_GRACE = 1.0  # seconds to finish reading pipes after the handler itself exited
_SANITIZE = re.compile(r"[^A-Z0-9_]")
# Our bounds (Serf has none: its agent runs handlers one at a time and stalls the
# event channel instead). With the default 16 slots, 256 waiting runs is 16 rounds of
# work; payloads are at most the user event / query size limits (512 / 1024 bytes).
BACKLOG = 256  # user-event and query runs waiting for a slot, all handlers together
MEMBER_BACKLOG = 128  # member events waiting behind a handler's running one, per handler


@dataclass(frozen=True, slots=True)
class Handler:
    """One routing entry: filters and the command (str: via /bin/sh -c; tuple: exec)."""

    route: str  # the filter text as configured, for logs
    filters: tuple[EventFilter, ...]
    command: str | tuple[str, ...]

    @property
    def label(self) -> str:
        cmd = self.command if isinstance(self.command, str) else shlex.join(self.command)
        return f"{self.route}={cmd}"


def parse_handlers(table: Mapping[str, str | tuple[str, ...] | list[str]]) -> tuple[Handler, ...]:
    """Handlers from the ``[handlers]`` table; ValueError for a bad filter or command."""
    out = []
    for route, command in table.items():
        filters = parse_filters(route)
        if isinstance(command, str):
            if not command.strip():
                raise ValueError(f"{route}: empty command")
            out.append(Handler(route, filters, command))
        else:
            argv = tuple(command)
            if not argv or not argv[0]:
                raise ValueError(f"{route}: empty command")
            out.append(Handler(route, filters, argv))
    return tuple(out)


def handler_stats(handlers: Iterable[Handler]) -> dict[str, str]:
    """The ``event_handlers`` section of RPC ``stats`` as Serf's agent fills it: one
    entry per filter, ``EVENT:NAME`` (NAME empty but for user:/query:) -> the command (a
    later handler for the same filter wins, as in Serf's map)."""
    out: dict[str, str] = {}
    for h in handlers:
        cmd = h.command if isinstance(h.command, str) else shlex.join(h.command)
        for f in h.filters:
            out[f"{f.event}:{f.name}"] = cmd
    return out


def _clean(v: str) -> str:
    return v.replace("\t", "\\t").replace("\n", "\\n")


def event_stdin(ev: AnyEvent) -> bytes:
    """What a Serf handler reads on stdin for this event."""
    if isinstance(ev, MemberEvent):
        lines = []
        for m in ev.members:
            tags = ",".join(f"{k}={v}" for k, v in m.tags.items())
            lines.append(f"{_clean(m.name)}\t{m.addr}\t{_clean(m.tags.get('role', ''))}"
                         f"\t{_clean(tags)}\n")
        return "".join(lines).encode("utf-8", "surrogateescape")
    payload = ev.payload
    if payload and not payload.endswith(b"\n"):
        payload += b"\n"
    return payload


def event_env(ev: AnyEvent, self_member: Member, base: Mapping[str, str]) -> dict[str, str]:
    """The environment of a handler run: ``base`` (minus NOTIFY_SOCKET) plus SERF_*."""
    env = {k: v for k, v in base.items() if k != "NOTIFY_SOCKET"}
    env["SERF_EVENT"] = event_type(ev).value
    env["SERF_SELF_NAME"] = self_member.name
    env["SERF_SELF_ROLE"] = self_member.tags.get("role", "")
    for name, val in self_member.tags.items():
        env["SERF_TAG_" + _SANITIZE.sub("_", name.upper())] = val
    if isinstance(ev, UserEvent):
        env["SERF_USER_EVENT"] = ev.name
        env["SERF_USER_LTIME"] = str(ev.ltime)
    elif isinstance(ev, IncomingQuery):
        env["SERF_QUERY_NAME"] = ev.name
        env["SERF_QUERY_LTIME"] = str(ev.ltime)
    return env


@dataclass(slots=True)
class _Chain:
    """Member events waiting for one handler, run strictly in order."""

    pending: deque[MemberEvent] = field(default_factory=deque)
    running: bool = False  # a step is queued for a slot or running


# A unit of work waiting for a slot: one run of a handler for a user event or query,
# or the next step of a handler's member-event chain (at most one per handler).
_Job = tuple[Handler, AnyEvent | _Chain]


class HandlerRunner:
    """Runs the configured handlers for each event, concurrently, with a cap and a timeout."""

    def __init__(
        self,
        handlers: tuple[Handler, ...],
        handlers_dir: Path,
        *,
        max_concurrent: int,
        timeout: float,
        self_member: Callable[[], Member],
        respond: Callable[[IncomingQuery, bytes, str], None],
        spawn: Callable[[Awaitable[None]], object],
        drops: DropLog | None = None,
        clock: Clock | None = None,
        backlog: int = BACKLOG,
        member_backlog: int = MEMBER_BACKLOG,
        metrics: Metrics = NULL_METRICS,
    ) -> None:
        self.handlers = handlers
        self.handlers_dir = handlers_dir
        self.timeout = timeout
        self._max = max_concurrent
        self._self_member = self_member
        self._respond = respond
        self._spawn = spawn
        self._drops = drops if drops is not None else DropLog(log)
        self._clock: Clock = clock if clock is not None else LoopClock()
        self._now = self._clock.now
        self.backlog_limit = backlog
        self.member_backlog_limit = member_backlog
        self._chains: dict[Handler, _Chain] = {}
        self._backlog: deque[_Job] = deque()  # FIFO; chain steps are not counted in the cap
        self._queued_runs = 0  # user-event/query runs in _backlog
        self.running = 0
        self.counters = {"runs": 0, "failed": 0, "timed_out": 0}
        # agent.invoke.<command> per run (Serf's), serfd.handlers.timeout per kill.
        self.metrics = metrics

    @property
    def queued(self) -> int:
        """User-event and query runs waiting for a slot."""
        return self._queued_runs

    def pending_member_events(self) -> int:
        """Member events waiting in every handler's chain."""
        return sum(len(c.pending) for c in self._chains.values())

    def update(self, handlers: tuple[Handler, ...], handlers_dir: Path, *,
               max_concurrent: int, timeout: float) -> None:
        """Swap in new routing and limits (reload); runs in progress finish as they were."""
        self.handlers = handlers
        self.handlers_dir = handlers_dir
        self.timeout = timeout
        self._max = max_concurrent
        self._chains = {h: c for h, c in self._chains.items() if c.running or c.pending}
        self._start_ready()

    def dispatch(self, ev: AnyEvent) -> None:
        """Start (or queue) every handler whose filters match ``ev`` (never waits)."""
        for h in self.handlers:
            if not matches_any(h.filters, ev):
                continue
            if isinstance(ev, MemberEvent):
                self._add_member_event(h, ev)
            elif self._queued_runs >= self.backlog_limit:
                self._drop_run(h, ev)
            else:
                self._backlog.append((h, ev))
                self._queued_runs += 1
        self._start_ready()

    def _add_member_event(self, h: Handler, ev: MemberEvent) -> None:
        chain = self._chains.setdefault(h, _Chain())
        if len(chain.pending) >= self.member_backlog_limit:
            old = chain.pending.popleft()
            self._drops.drop("handler_member_backlog", self._now(),
                             "handler %s: %d member events waiting; dropped the oldest (%s)",
                             h.label, len(chain.pending) + 1, old.type)
        chain.pending.append(ev)
        if not chain.running:
            chain.running = True
            self._backlog.append((h, chain))

    def _drop_run(self, h: Handler, ev: AnyEvent) -> None:
        if isinstance(ev, IncomingQuery):
            self._drops.drop("handler_backlog_query", self._now(),
                             "handler %s: %d runs waiting for a slot; dropped query %s "
                             "(no response from this handler)", h.label, self._queued_runs,
                             ev.name)
        else:
            self._drops.drop("handler_backlog_user", self._now(),
                             "handler %s: %d runs waiting for a slot; dropped %s",
                             h.label, self._queued_runs, event_type(ev))

    def _start_ready(self) -> None:
        while self.running < self._max and self._backlog:
            h, item = self._backlog.popleft()
            if isinstance(item, _Chain):
                ev: AnyEvent = item.pending.popleft()
            else:
                self._queued_runs -= 1
                ev = item
                if isinstance(ev, IncomingQuery) and self._now() > ev.deadline:
                    self._drops.drop("handler_query_expired", self._now(),
                                     "handler %s: query %s expired while waiting for a slot",
                                     h.label, ev.name)
                    continue
            self.running += 1
            self._spawn(self._run(h, ev, item if isinstance(item, _Chain) else None))

    async def _run(self, h: Handler, ev: AnyEvent, chain: _Chain | None) -> None:
        try:
            await self._exec(h, ev)
        finally:
            self.running -= 1
            if chain is not None:
                if chain.pending:
                    self._backlog.append((h, chain))  # its next step waits its turn
                else:
                    chain.running = False
            self._start_ready()

    def _argv(self, h: Handler) -> list[str]:
        if isinstance(h.command, str):
            stripped = h.command.lstrip()
            first = stripped.split(None, 1)[0] if stripped else ""
            if first and "/" not in first and (self.handlers_dir / first).is_file():
                rest = stripped[len(first):]
                return ["/bin/sh", "-c", shlex.quote(str(self.handlers_dir / first)) + rest]
            return ["/bin/sh", "-c", h.command]
        argv = list(h.command)
        if "/" not in argv[0] and (self.handlers_dir / argv[0]).is_file():
            argv[0] = str(self.handlers_dir / argv[0])
        return argv

    async def _exec(self, h: Handler, ev: AnyEvent) -> None:
        what = event_type(ev).value
        if isinstance(ev, UserEvent | IncomingQuery):
            what += f" {ev.name}"
        env = event_env(ev, self._self_member(), os.environ)
        cwd = str(self.handlers_dir) if self.handlers_dir.is_dir() else None
        self.counters["runs"] += 1
        started = self._now()
        try:
            await self._run_process(h, ev, what, env, cwd)
        finally:
            metrics = self.metrics
            if metrics.enabled:
                script = h.command if isinstance(h.command, str) else shlex.join(h.command)
                metrics.measure_since(("agent", "invoke", metrics.bounded_name(script)),
                                      started, self._now())

    async def _run_process(self, h: Handler, ev: AnyEvent, what: str, env: dict[str, str],
                          cwd: str | None) -> None:
        try:
            proc = await asyncio.create_subprocess_exec(
                *self._argv(h),
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                env=env,
                cwd=cwd,
                start_new_session=True,
            )
        except OSError as e:
            self.counters["failed"] += 1
            log.error("handler %s: cannot start for %s: %s", h.label, what, e)
            return
        log.debug("handler %s: started for %s (pid %d)", h.label, what, proc.pid)
        out = bytearray()
        keep = isinstance(ev, IncomingQuery)
        readers = [
            asyncio.ensure_future(self._pump(h, proc.stdout, "stdout", out if keep else None)),
            asyncio.ensure_future(self._pump(h, proc.stderr, "stderr", None)),
            asyncio.ensure_future(self._feed(proc.stdin, event_stdin(ev))),
        ]
        # Both waits are on the clock: the handler timeout, then a grace for the pipes.
        exited: asyncio.Future[None] = asyncio.ensure_future(_wait(proc))
        timed_out = False
        try:
            if not await self._within(self.timeout, [exited]):
                timed_out = True
                self.counters["timed_out"] += 1
                self.metrics.incr(("serfd", "handlers", "timeout"))
                log.error("handler %s: timed out after %gs for %s; killing its process group %d",
                          h.label, self.timeout, what, proc.pid)
                _kill_group(proc.pid)
                await exited
        except asyncio.CancelledError:
            _kill_group(proc.pid)
            exited.cancel()
            raise
        finally:
            if not await self._within(_PIPE_GRACE, readers):
                for t in readers:
                    t.cancel()
                # A child of the handler still holds the pipes: it goes with the group.
                _kill_group(proc.pid)
        rc = proc.returncode
        if timed_out:
            return
        if rc != 0:
            self.counters["failed"] += 1
            log.warning("handler %s: exited with status %s for %s", h.label, rc, what)
            return
        log.debug("handler %s: done for %s", h.label, what)
        if isinstance(ev, IncomingQuery) and out:
            self._respond(ev, bytes(out), h.label)

    async def _within(self, delay: float, tasks: Sequence[asyncio.Future[None]]) -> bool:
        """Wait until every task is done, for at most ``delay`` seconds of the clock.

        True if they all finished in time; False if time ran out first (cancelling the
        unfinished tasks is the caller's choice).
        """
        expired: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        def expire() -> None:
            if not expired.done():
                expired.set_result(None)

        timer = self._clock.call_at(self._clock.now() + delay, expire)
        pending = set(tasks)
        try:
            while pending and not expired.done():
                done, _ = await asyncio.wait({*pending, expired},
                                             return_when=asyncio.FIRST_COMPLETED)
                pending -= done
        finally:
            timer.cancel()
            expired.cancel()
        return not pending

    async def _feed(self, stdin: asyncio.StreamWriter | None, data: bytes) -> None:
        if stdin is None:
            return
        with contextlib.suppress(ConnectionError, OSError):
            if data:
                stdin.write(data)
                await stdin.drain()
        with contextlib.suppress(ConnectionError, OSError):
            stdin.close()

    async def _pump(self, h: Handler, stream: asyncio.StreamReader | None, name: str,
                    keep: bytearray | None) -> None:
        if stream is None:
            return
        while True:
            try:
                line = await stream.readline()
            except ValueError:  # a line over the stream limit: take what is there
                line = await stream.read(65536)
            if not line:
                return
            if keep is not None:
                if len(keep) < MAX_OUTPUT:
                    keep.extend(line[: MAX_OUTPUT - len(keep)])
                log.debug("handler %s: %s: %s", h.label, name,
                          line.rstrip(b"\n").decode("utf-8", "replace"))
            else:
                log.info("handler %s: %s: %s", h.label, name,
                         line.rstrip(b"\n").decode("utf-8", "replace"))


async def _wait(proc: asyncio.subprocess.Process) -> None:
    await proc.wait()


def _kill_group(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)
