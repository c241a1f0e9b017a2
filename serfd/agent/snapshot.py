"""Serf's snapshot file: known members and Lamport clocks, so a restarted node rejoins by
itself and does not run old events again.

Theory of operation
-------------------
The file is Serf's own line format (``serf/snapshot.go``, PROTOCOL.md section 3.11), so
a snapshot written by ``serf agent -snapshot`` can be read by serfd and the reverse::

    alive: <name> <ip:port>      a member joined (name = everything before the last space)
    not-alive: <name>            it left or failed
    clock: <n>                   member Lamport clock - 1, when it grew
    event-clock: <n>             LTime of a user event, when it grew
    query-clock: <n>             LTime of a query, when it grew
    leave                        we left gracefully; forget members and clocks (unless
                                 rejoin_after_leave), only clocks are recorded after it
    # ...                        a comment; "coordinate: ..." lines are legacy, ignored

**Reading** (:func:`parse_snapshot`) is pure and total: any byte string gives a
:class:`SnapshotState` plus a list of :class:`SnapshotWarning` (line number and
reason) for the lines it skipped: a torn last line (no newline: a crash mid-append),
bytes that are not UTF-8, NULs (a zeroed block after a crash), unknown records, bad
numbers or addresses. A corrupt line never stops the lines after it from counting.

**Writing** (:class:`Snapshotter`) keeps all file I/O on one writer thread so the
event loop never waits on the disk: the loop only queues records. The thread appends
each batch with one ``write`` (the OS has it even if we are SIGKILLed a moment later)
and ``fdatasync``s at most every :data:`SYNC_INTERVAL` (and at leave and close), so
an OS crash loses at most that much. When the file outgrows
``max(128 KiB, 2 x 128 B x alive members)`` it is **compacted**: the alive members and
the three clocks go to ``<path>.compact``, which is fsynced and renamed over the file
(atomic, unlike Serf's remove-then-rename), then the directory is fsynced. At any
instant the path holds either the old file or the complete new one.

**Faults** never stop serfd. The writer keeps a model of the file in memory; when the
disk refuses (a write, an ``fdatasync``, an open, a compaction: ENOSPC, EIO, EROFS, or
a bug) the fault is logged once, shown by the agent (:attr:`Snapshotter.fault`, in
STATUS= and ``serfctl info``), and compaction is retried with a bounded backoff; the
first that succeeds writes the whole model, clears the fault and appends resume. The
queue from the loop is bounded: a writer stuck in the kernel makes the loop cut
records (counted), then hand the writer the agent's whole state to rewrite.
"""

from __future__ import annotations

import contextlib
import functools
import ipaddress
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from serfd.base.metrics import NULL_METRICS, Metrics
from serfd.base.ratelog import DropLog

__all__ = [
    "MIN_COMPACT_SIZE",
    "FileOps",
    "SnapshotFault",
    "SnapshotState",
    "SnapshotWarning",
    "Snapshotter",
    "format_addr",
    "parse_snapshot",
    "read_snapshot",
]

log = logging.getLogger("serfd.snapshot")

MIN_COMPACT_SIZE = 128 * 1024  # serf.go snapshotSizeLimit: never compact below this
BYTES_PER_NODE = 128  # snapshot.go snapshotBytesPerNode
COMPACTION_THRESHOLD = 2  # snapshot.go snapshotCompactionThreshold
CLOCK_INTERVAL = 0.5  # snapshot.go clockUpdateInterval
SYNC_INTERVAL = 0.5  # our fdatasync cadence (Serf flushes its buffer every 500 ms)
MAX_LINE = 4096  # a longer "line" is garbage (a node name is at most 128 bytes)
COMPACT_EXT = ".compact"  # snapshot.go tmpExt
_U64_MAX = (1 << 64) - 1


@dataclass(frozen=True, slots=True)
class SnapshotWarning:
    """One skipped line: 1-based line number and why."""

    line: int
    reason: str


@dataclass(slots=True)
class SnapshotState:
    """What a snapshot says: members to rejoin and the clocks to restore."""

    alive: dict[str, str] = field(default_factory=dict)  # name -> "ip:port"
    last_clock: int = 0
    last_event_clock: int = 0
    last_query_clock: int = 0
    left: bool = False  # the last record of our own lifecycle was a graceful leave

    def previous_nodes(self, exclude: str) -> list[tuple[str, str]]:
        """(name, addr) of the members to try rejoining, ourselves excluded."""
        return [(n, a) for n, a in self.alive.items() if n != exclude]


def format_addr(ip: str, port: int) -> str:
    """Go's net.TCPAddr.String(): ``ip:port``, ``[v6]:port``."""
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


def _valid_addr(text: str) -> bool:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not port.isascii() or not 0 <= int(port) <= 65535:
        return False
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _uint(text: str) -> int | None:
    if not text.isascii() or not text.isdigit():
        return None
    v = int(text)
    return v if v <= _U64_MAX else None


_CLOCKS = {"clock: ": "last_clock", "event-clock: ": "last_event_clock",
           "query-clock: ": "last_query_clock"}


def parse_snapshot(data: bytes, *, rejoin_after_leave: bool = False
                   ) -> tuple[SnapshotState, list[SnapshotWarning]]:
    """Replay a snapshot's lines (as Serf's ``replay``), skipping and reporting bad ones."""
    st = SnapshotState()
    warnings: list[SnapshotWarning] = []
    lines = data.split(b"\n")
    torn = lines.pop()  # after the last newline: empty, or a line cut short
    for no, raw in enumerate(lines, 1):
        reason = _apply(st, raw, rejoin_after_leave)
        if reason is not None:
            warnings.append(SnapshotWarning(no, reason))
    if torn:
        warnings.append(SnapshotWarning(len(lines) + 1, f"incomplete last line ({len(torn)} "
                                        "bytes without a newline): skipped"))
    return st, warnings


def _apply(st: SnapshotState, raw: bytes, rejoin_after_leave: bool) -> str | None:
    if len(raw) > MAX_LINE:
        return f"line of {len(raw)} bytes is too long: skipped"
    if b"\0" in raw:
        return "NUL bytes (zeroed or corrupt data): skipped"
    try:
        line = raw.decode("utf-8")
    except UnicodeDecodeError:
        return "not valid UTF-8: skipped"
    if line.startswith("alive: "):
        name, sep, addr = line[len("alive: "):].rpartition(" ")
        if not sep or not name:
            return f"failed to parse address: {line!r}"
        if not _valid_addr(addr):
            return f"bad address {addr!r} for {name!r}: skipped"
        st.alive[name] = addr
        st.left = False
        return None
    if line.startswith("not-alive: "):
        st.alive.pop(line[len("not-alive: "):], None)
        return None
    for prefix, attr in _CLOCKS.items():
        if line.startswith(prefix):
            v = _uint(line[len(prefix):])
            if v is None:
                return f"bad {prefix[:-2]} value {line[len(prefix):]!r}: skipped"
            setattr(st, attr, v)
            return None
    if line.startswith(("coordinate: ", "#")):
        return None
    if line == "leave":
        if rejoin_after_leave:
            st.left = True
            return None
        st.alive.clear()
        st.last_clock = st.last_event_clock = st.last_query_clock = 0
        st.left = True
        return None
    if line == "":
        return "empty line: skipped"
    return f"unrecognized line {line[:80]!r}"


def read_snapshot(path: Path, *, rejoin_after_leave: bool = False,
                  logger: logging.Logger | None = None
                  ) -> tuple[SnapshotState, list[SnapshotWarning]]:
    """Read ``path`` (missing = empty), logging each skipped line as ``FILE:LINE: reason``."""
    logger = logger or log
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        return SnapshotState(), []
    except OSError as e:
        logger.warning("%s: cannot read snapshot (%s): starting without it", path,
                       e.strerror or e)
        return SnapshotState(), [SnapshotWarning(0, f"unreadable: {e.strerror or e}")]
    st, warnings = parse_snapshot(data, rejoin_after_leave=rejoin_after_leave)
    for w in warnings[:20]:
        logger.warning("%s:%d: %s", path, w.line, w.reason)
    if len(warnings) > 20:
        logger.warning("%s: %d more bad lines skipped", path, len(warnings) - 20)
    return st, warnings


# --------------------------------------------------------------------------- writing

MAX_QUEUE = 4096  # records waiting for the writer thread; more are cut (counted), see above
RETRY_MIN = 0.5  # seconds before the first retry of a failing disk
RETRY_MAX = 10.0  # the retry backoff doubles up to this, never more
FAULT_LOG_INTERVAL = 60.0  # a fault that persists is logged again at most this often

# The records the loop queues for the writer thread, one class per kind.


@dataclass(frozen=True, slots=True)
class _Alive:
    """``alive: <name> <addr>``."""

    name: str
    addr: str  # "ip:port" (format_addr)


@dataclass(frozen=True, slots=True)
class _Gone:
    """``not-alive: <name>`` (left or failed)."""

    name: str


@dataclass(frozen=True, slots=True)
class _Clock:
    """``clock: <n>`` when it grew (n is the member clock's time - 1)."""

    value: int


@dataclass(frozen=True, slots=True)
class _EventClock:
    """``event-clock: <ltime>`` when it grew."""

    ltime: int


@dataclass(frozen=True, slots=True)
class _QueryClock:
    """``query-clock: <ltime>`` when it grew."""

    ltime: int


@dataclass(frozen=True, slots=True)
class _Leave:
    """``leave``: we left gracefully."""


@dataclass(frozen=True, slots=True)
class _Reset:
    """After a cut: the whole state to rewrite (None: compact what the writer has)."""

    state: SnapshotState | None


@dataclass(frozen=True, slots=True)
class _Stop:
    """Flush, fsync and end the writer thread."""


_Item = _Alive | _Gone | _Clock | _EventClock | _QueryClock | _Leave | _Reset | _Stop
_STOP = _Stop()


class FileOps:
    """The system calls of the writer, in one place: a test swaps in a failing disk."""

    def mkdir(self, path: Path) -> None:
        path.mkdir(parents=True, exist_ok=True)

    def open(self, path: Path, flags: int, mode: int) -> int:
        return os.open(path, flags, mode)

    def size(self, fd: int) -> int:
        return os.fstat(fd).st_size

    def pread(self, fd: int, n: int, offset: int) -> bytes:
        return os.pread(fd, n, offset)

    def write(self, fd: int, data: memoryview) -> int:
        return os.write(fd, data)

    def fdatasync(self, fd: int) -> None:
        os.fdatasync(fd)

    def fsync(self, fd: int) -> None:
        os.fsync(fd)

    def close(self, fd: int) -> None:
        os.close(fd)

    def replace(self, src: Path, dst: Path) -> None:
        os.replace(src, dst)

    def unlink(self, path: Path) -> None:
        os.unlink(path)

    def fsync_dir(self, path: Path) -> None:
        dfd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)


@dataclass(frozen=True, slots=True)
class SnapshotFault:
    """Why the snapshot cannot be written, and since when (wall clock)."""

    reason: str  # e.g. "No space left on device"
    since: float  # time.time() of the first failure

    def __str__(self) -> str:
        return f"{self.reason} since {time.strftime('%H:%M:%S', time.localtime(self.since))}"


class _Inbox:
    """The bounded FIFO from the loop (never blocks) to the writer thread."""

    def __init__(self, maxsize: int) -> None:
        self.maxsize = maxsize
        self._items: deque[_Item] = deque()
        self._cond = threading.Condition(threading.Lock())

    def __len__(self) -> int:
        return len(self._items)

    def put(self, item: _Item, *, force: bool = False) -> bool:
        """Queue ``item``; False (nothing queued) when full, unless ``force``."""
        with self._cond:
            if not force and len(self._items) >= self.maxsize:
                return False
            self._items.append(item)
            self._cond.notify()
            return True

    def replace_all(self, item: _Item) -> None:
        """Drop every queued record in favour of ``item`` (a stop request stays, last)."""
        with self._cond:
            stop = any(isinstance(it, _Stop) for it in self._items)
            self._items.clear()
            self._items.append(item)
            if stop:
                self._items.append(_STOP)
            self._cond.notify()

    def take(self, timeout: float | None) -> list[_Item]:
        """Everything queued, waiting up to ``timeout`` (None: forever) for the first item."""
        with self._cond:
            if not self._items and (timeout is None or timeout > 0):
                self._cond.wait(timeout)
            items = list(self._items)
            self._items.clear()
            return items


class Snapshotter:
    """Records Serf snapshot lines from the event loop through a writer thread.

    The loop calls :meth:`member_alive`, :meth:`member_gone`, :meth:`user_event`,
    :meth:`query`, :meth:`clock`, :meth:`leave` (cheap, never blocking: they queue) and
    :meth:`check` now and then; :meth:`close` flushes, fsyncs and joins the thread (it
    waits: call it from an executor). :attr:`fault` is what the agent shows.

    Faults
    ------
    The writer thread keeps its own model of the file (members and clocks), updated by
    every record whether or not the disk takes it. When a write, ``fdatasync``, open or
    compaction fails (ENOSPC, EIO, EROFS, ...) the file is *stale*: :attr:`fault` is
    set, one error is logged (repeats at most every :data:`FAULT_LOG_INTERVAL`), appends
    stop, and compaction (the whole model, atomically) is retried with a doubling
    backoff of :data:`RETRY_MIN`..:data:`RETRY_MAX` s. When it succeeds the fault is
    cleared, a line says so, and appends resume. An unexpected exception counts as a
    fault too and the thread goes on; a thread that ends anyway is restarted by
    :meth:`check`.

    The queue holds at most ``max_queue`` records. When it is full (the thread is stuck
    in a system call, say on a hung disk) records are cut, counted in
    ``counters["snapshot_queue_full"]`` and logged rate-limited, and the loop side
    remembers it: once the queue has room again it calls ``state_fn()`` (on the loop:
    the agent's current members and clocks), replaces whatever is still queued with
    that state, and the thread rewrites the file from it. Nothing cut is lost: the
    state covers every cut record, and events still to come after it are recorded
    on top of it.
    """

    def __init__(self, path: Path, state: SnapshotState, *,
                 min_compact_size: int = MIN_COMPACT_SIZE,
                 rejoin_after_leave: bool = False,
                 logger: logging.Logger | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 wall: Callable[[], float] = time.time,
                 max_queue: int = MAX_QUEUE,
                 counters: dict[str, int] | None = None,
                 state_fn: Callable[[], SnapshotState] | None = None,
                 ops: FileOps | None = None,
                 post: Callable[[Callable[[], object]], object] | None = None,
                 metrics: Metrics = NULL_METRICS) -> None:
        self.path = Path(path)
        self.log = logger or log
        self.min_compact_size = min_compact_size
        self.rejoin_after_leave = rejoin_after_leave
        self._now = clock
        self._wall = wall
        self._ops = ops or FileOps()
        self._post = post  # e.g. loop.call_soon_threadsafe, for log lines from the thread
        # serf.snapshot.appendLine / compact timers (``clock`` time), reported through
        # ``post`` like log lines: sinks run on the loop's thread.
        self._metrics = metrics
        self._inbox = _Inbox(max_queue)
        # Written by the thread, read by the loop: replaced whole, never mutated.
        self.fault: SnapshotFault | None = None
        self.errors = 0  # failed system calls (and unexpected exceptions) so far
        self.compactions = 0
        # Loop side.
        self._drops = DropLog(self.log, counters)
        self._state_fn = state_fn
        self._lost = False  # records were cut: hand the thread the whole state
        self._left = False  # leave() was called
        self._closing = False
        self._thread: threading.Thread | None = None
        self._need_state = False  # set by the thread: its model may lack records
        # Writer side (touched only by the writer thread once started).
        self._alive = dict(state.alive)
        self._last_clock = state.last_clock
        self._last_event = state.last_event_clock
        self._last_query = state.last_query_clock
        self._leaving = False
        self._fd = -1
        self._offset = 0
        self._stale = False  # the file lags the model: compact before appending again
        self._unsynced = False
        self._last_sync = 0.0
        self._retry_at = 0.0
        self._backoff = RETRY_MIN
        self._attempts = 0  # failures since the fault began
        self._fault_logged = 0.0

    # -- the loop side

    def start(self, *, rewrite: bool = False) -> None:
        """Start the writer thread; it opens the file (no disk I/O here).

        ``rewrite``: compact first (after a read that skipped bad lines, so the file is
        clean again rather than carrying the garbage forever).
        """
        self._stale = rewrite
        self._spawn()

    def _spawn(self) -> None:
        self._thread = threading.Thread(target=self._run, name="serfd-snapshot", daemon=True)
        self._thread.start()

    def member_alive(self, name: str, addr: str) -> None:
        self._put(_Alive(name, addr))

    def member_gone(self, name: str) -> None:
        self._put(_Gone(name))

    def user_event(self, ltime: int) -> None:
        self._put(_EventClock(ltime))

    def query(self, ltime: int) -> None:
        self._put(_QueryClock(ltime))

    def clock(self, member_clock_time: int) -> None:
        """The member clock's current time (recorded as time - 1, when it grew)."""
        self._put(_Clock(member_clock_time - 1))

    def leave(self) -> None:
        self._left = True
        self._put(_Leave())

    @property
    def queued(self) -> int:
        """Records waiting for the writer thread."""
        return len(self._inbox)

    def _put(self, item: _Item) -> None:
        if self._closing:
            return
        if self._lost and not self._resync():
            self._drop()
            return
        if not self._inbox.put(item):
            self._lost = True
            self._drop()

    def _drop(self) -> None:
        self._drops.drop("snapshot_queue_full", self._now(),
                         "snapshot %s: the writer is %d records behind: dropping records; "
                         "the file will be rewritten whole from memory", self.path,
                         len(self._inbox))

    def _resync(self) -> bool:
        """After a cut, once the queue has room: replace what is queued by the whole state."""
        if len(self._inbox) > self._inbox.maxsize // 2:
            return False
        if self._state_fn is None:
            # No source of truth (tools, tests): the thread compacts what it has.
            state = None
        else:
            state = self._state_fn()
            state.left = state.left or self._left
        self._inbox.replace_all(_Reset(state))
        self._lost = False
        self.log.info("snapshot %s: the writer caught up; rewriting it from the agent's "
                      "state", self.path)
        return True

    @property
    def unsettled(self) -> bool:
        """Whether :meth:`check` still has something to watch: records waiting or cut, a
        fault, a writer thread that ended."""
        t = self._thread
        return (self._lost or self._need_state or self.fault is not None
                or len(self._inbox) > 0 or (t is not None and not t.is_alive()))

    def check(self) -> None:
        """On the loop, while :attr:`unsettled`: resync after a cut, restart a writer
        thread that ended."""
        if self._closing:
            return
        if self._need_state:
            self._need_state = False
            self._lost = True
        if self._lost:
            self._resync()
        t = self._thread
        if t is None or t.is_alive():
            return
        self.errors += 1
        self.log.error("snapshot %s: the writer thread ended unexpectedly; restarting it "
                       "and rewriting the file from the agent's state", self.path)
        self._lost = True  # its model may be half-updated: take the agent's state
        self._resync()
        self._spawn()

    def request_stop(self) -> None:
        """Ask the writer to flush, fsync and finish (without waiting)."""
        self._closing = True
        self._inbox.put(_STOP, force=True)

    def close(self, timeout: float = 5.0) -> None:
        """Flush, fsync and stop the writer thread (blocking, at most ``timeout``)."""
        self.request_stop()
        t = self._thread
        if t is None:
            return
        t.join(timeout)
        if t.is_alive():
            self._say(logging.ERROR, "snapshot %s: the writer did not finish within %.0f s "
                      "(is the disk hung?); the file may lack the last records", self.path,
                      timeout)
        self._thread = None

    def _say(self, level: int, msg: str, *args: object,
             exc: BaseException | None = None) -> None:
        """Log from the writer (or a closing) thread: through the loop when ``post`` is set,
        so log handlers that feed RPC monitor clients run on the loop's thread."""
        if self._post is not None:
            try:
                self._post(functools.partial(self.log.log, level, msg, *args, exc_info=exc))
                return
            except RuntimeError:  # the loop is closed (shutdown): log from here
                pass
        self.log.log(level, msg, *args, exc_info=exc)

    # -- the writer thread

    def _run(self) -> None:
        try:
            while True:
                try:
                    if self.run_once(self._wait_time()):
                        return
                except Exception as e:  # noqa: BLE001 - a bug must not end the writer
                    self._need_state = True  # records of that round may be missing
                    self._failed("writing", e, self._now())
        except BaseException as e:  # noqa: BLE001 - the thread ends: say so; check() restarts it
            self.fault = SnapshotFault(f"writer thread ended: {e!r}",
                                       self.fault.since if self.fault else self._wall())
            self._say(logging.CRITICAL, "snapshot %s: the writer thread ended: %r", self.path, e)
            self._close_fd()
            self._stale = True

    def _wait_time(self) -> float | None:
        now = self._now()
        if self._fd < 0 or self._stale:
            return max(0.0, self._retry_at - now)
        if self._unsynced:
            return max(0.0, self._last_sync + SYNC_INTERVAL - now)
        return None

    def run_once(self, timeout: float | None = 0.0) -> bool:
        """One round of the writer: take what is queued (waiting up to ``timeout``), apply
        it, write it; True once a stop was handled. The thread loops on this; a test may
        call it instead of starting the thread."""
        items = self._inbox.take(timeout)
        stop = any(isinstance(it, _Stop) for it in items)
        out: list[str] = []
        for it in items:
            if not isinstance(it, _Stop):
                out.extend(self._record(it))
        now = self._now()
        compacted = False
        if (self._fd < 0 or self._stale) and (stop or now >= self._retry_at):
            compacted = self._recover(now)  # a compaction writes the model: ``out`` too
        if out and not compacted and self._fd >= 0 and not self._stale:
            self._append("".join(out).encode("utf-8", "surrogateescape"), now)
        if self._fd >= 0 and not self._stale:
            self._sync_if_due(now, force=stop or any(isinstance(it, _Leave) for it in items))
        if stop:
            if self._fd < 0 or self._stale:
                self._say(logging.ERROR, "snapshot %s: stopping with the file behind the last "
                          "records (%s)", self.path, self.fault or "not written")
            self._close_fd()
        return stop

    def _record(self, it: _Item) -> list[str]:
        if isinstance(it, _Reset):
            st = it.state
            if st is not None:
                self._alive = dict(st.alive)
                self._last_clock = max(self._last_clock, st.last_clock)
                self._last_event = max(self._last_event, st.last_event_clock)
                self._last_query = max(self._last_query, st.last_query_clock)
                self._leaving = self._leaving or st.left
                if self._leaving and not self.rejoin_after_leave:
                    self._alive.clear()
            self._stale = True
            return []
        if isinstance(it, _Clock):
            if it.value > self._last_clock:
                self._last_clock = it.value
                return [f"clock: {it.value}\n"]
            return []
        if isinstance(it, _Leave):
            self._leaving = True
            if not self.rejoin_after_leave:
                self._alive.clear()
            return ["leave\n"]
        if self._leaving:
            return []  # after a leave only clocks are recorded (snapshot.go)
        if isinstance(it, _Alive):
            self._alive[it.name] = it.addr
            return [f"alive: {it.name} {it.addr}\n"]
        if isinstance(it, _Gone):
            self._alive.pop(it.name, None)
            return [f"not-alive: {it.name}\n"]
        if isinstance(it, _EventClock):
            if it.ltime > self._last_event:
                self._last_event = it.ltime
                return [f"event-clock: {it.ltime}\n"]
            return []
        if isinstance(it, _QueryClock):
            if it.ltime > self._last_query:
                self._last_query = it.ltime
                return [f"query-clock: {it.ltime}\n"]
            return []
        return []  # _Stop: handled by run_once

    # I/O. Every failure goes through _failed(): the file is stale from then on.

    def _failed(self, what: str, e: BaseException, now: float) -> None:
        self.errors += 1
        self._stale = True
        self._attempts += 1
        self._retry_at = now + self._backoff
        self._backoff = min(self._backoff * 2, RETRY_MAX)
        reason = (e.strerror if isinstance(e, OSError) and e.strerror else None) or repr(e)
        old = self.fault
        if old is None or old.reason != reason:
            self.fault = SnapshotFault(reason, old.since if old else self._wall())
            self._fault_logged = now
            self._say(logging.ERROR, "snapshot %s: %s failed: %s; serfd keeps running with the "
                      "state in memory and retries (at least every %.0f s)", self.path, what,
                      reason, RETRY_MAX, exc=None if isinstance(e, OSError) else e)
        elif now - self._fault_logged >= FAULT_LOG_INTERVAL:
            self._fault_logged = now
            self._say(logging.ERROR, "snapshot %s: still failing: %s (%d attempts)", self.path,
                      self.fault, self._attempts)

    def _recover(self, now: float) -> bool:
        """Open the file, or (stale) rewrite it whole; on success any fault is over.

        True when it rewrote the file."""
        compact = self._stale or self.fault is not None
        try:
            if compact:
                self.compact()
            else:
                self._open()
        except OSError as e:
            self._failed("compaction" if compact else "opening", e, now)
            return False
        if self.fault is not None:
            self._say(logging.WARNING, "snapshot %s: writable again after failing (%s, %d "
                      "attempts): rewrote it from memory (%d members); appending again",
                      self.path, self.fault, self._attempts, len(self._alive))
            self.fault = None
        self._backoff = RETRY_MIN
        self._attempts = 0
        self._last_sync = now
        return compact

    def _close_fd(self) -> None:
        if self._fd >= 0:
            with contextlib.suppress(OSError):
                self._ops.close(self._fd)
        self._fd = -1

    def _open(self) -> None:
        ops = self._ops
        ops.mkdir(self.path.parent)
        fd = ops.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o640)
        try:
            size = ops.size(fd)
            # A torn last line (a crash mid-append) would glue onto our first record.
            if size > 0 and ops.pread(fd, 1, size - 1) != b"\n":
                self._write_all(fd, b"\n")
                size += 1
        except BaseException:
            with contextlib.suppress(OSError):
                ops.close(fd)
            raise
        self._close_fd()
        self._fd = fd
        self._offset = size

    def _write_all(self, fd: int, data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[self._ops.write(fd, view):]

    def _timed(self, key: tuple[str, ...], start: float) -> None:
        """Report a timer from the writer thread (through ``post`` when set)."""
        metrics = self._metrics
        end = self._now()
        if self._post is not None:
            try:
                self._post(functools.partial(metrics.measure_since, key, start, end))
                return
            except RuntimeError:  # the loop is closed (shutdown): nobody reads them now
                return
        metrics.measure_since(key, start, end)

    def _append(self, data: bytes, now: float) -> None:
        if self._metrics.enabled:
            start = self._now()
            try:
                self._append_untimed(data, now)
            finally:
                self._timed(("serf", "snapshot", "appendLine"), start)
        else:
            self._append_untimed(data, now)

    def _append_untimed(self, data: bytes, now: float) -> None:
        try:
            self._write_all(self._fd, data)
        except OSError as e:
            self._failed("appending", e, now)  # maybe a torn line: compaction replaces it
            return
        self._offset += len(data)
        self._unsynced = True
        if self._offset > self.max_size():
            try:
                self.compact()
            except OSError as e:
                self._failed("compaction", e, now)

    def _sync_if_due(self, now: float, force: bool) -> None:
        if not self._unsynced:
            return
        if not force and now - self._last_sync < SYNC_INTERVAL:
            return
        try:
            self._ops.fdatasync(self._fd)
        except OSError as e:
            # The kernel may have dropped the dirty pages: only a rewrite is sure.
            self._failed("fdatasync", e, now)
            return
        self._unsynced = False
        self._last_sync = now

    def max_size(self) -> int:
        """snapshot.go snapshotMaxSize: compaction threshold in bytes."""
        return max(self.min_compact_size,
                   len(self._alive) * BYTES_PER_NODE * COMPACTION_THRESHOLD)

    def compact(self) -> None:
        """Rewrite the file as alive members + clocks: temp file, fsync, atomic rename.

        Raises OSError, leaving the old file (and no temp file) in place."""
        if not self._metrics.enabled:
            self._compact()
            return
        start = self._now()
        try:
            self._compact()
        finally:
            self._timed(("serf", "snapshot", "compact"), start)

    def _compact(self) -> None:
        ops = self._ops
        ops.mkdir(self.path.parent)
        lines = [f"alive: {n} {a}\n" for n, a in self._alive.items()]
        if self._leaving and not self.rejoin_after_leave:
            lines.append("leave\n")
        lines += [f"clock: {self._last_clock}\n", f"event-clock: {self._last_event}\n",
                  f"query-clock: {self._last_query}\n"]
        data = "".join(lines).encode("utf-8", "surrogateescape")
        tmp = self.path.with_name(self.path.name + COMPACT_EXT)
        try:
            fd = ops.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o640)
            try:
                self._write_all(fd, data)
                ops.fsync(fd)
            finally:
                ops.close(fd)
            ops.replace(tmp, self.path)
        except BaseException:
            with contextlib.suppress(OSError):
                ops.unlink(tmp)  # a half-written copy must not keep a full disk full
            raise
        with contextlib.suppress(OSError):  # not every file system syncs directories
            ops.fsync_dir(self.path.parent)
        new = ops.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o640)
        self._close_fd()
        self._fd = new
        self._offset = len(data)
        self._stale = False
        self._unsynced = False
        self.compactions += 1
