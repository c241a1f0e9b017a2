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
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import os
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

__all__ = [
    "MIN_COMPACT_SIZE",
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

_STOP = object()


class Snapshotter:
    """Appends Serf snapshot records from the event loop through a writer thread.

    The loop calls :meth:`member_alive`, :meth:`member_gone`, :meth:`user_event`,
    :meth:`query`, :meth:`clock`, :meth:`leave` (all cheap: they queue); :meth:`close`
    flushes, fsyncs and joins the thread (call it from an executor, it waits).
    """

    def __init__(self, path: Path, state: SnapshotState, *,
                 min_compact_size: int = MIN_COMPACT_SIZE,
                 rejoin_after_leave: bool = False,
                 logger: logging.Logger | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.path = Path(path)
        self.log = logger or log
        self.min_compact_size = min_compact_size
        self.rejoin_after_leave = rejoin_after_leave
        self._now = clock
        # Writer-thread state (touched only by the thread after start()).
        self._alive = dict(state.alive)
        self._last_clock = state.last_clock
        self._last_event = state.last_event_clock
        self._last_query = state.last_query_clock
        self._leaving = False
        self._q: queue.SimpleQueue[object] = queue.SimpleQueue()
        self._fd = -1
        self._offset = 0
        self._dirty = False
        self._last_sync = 0.0
        self.errors = 0
        self.compactions = 0
        self._thread: threading.Thread | None = None

    # -- the loop side

    def start(self, *, rewrite: bool = False) -> None:
        """Open the file and start the writer thread.

        ``rewrite``: compact first (after a read that skipped bad lines, so the file is
        clean again rather than carrying the garbage forever).
        """
        if rewrite:
            self.compact()
        else:
            self._open()
        self._thread = threading.Thread(target=self._run, name="serfd-snapshot", daemon=True)
        self._thread.start()

    def member_alive(self, name: str, addr: str) -> None:
        self._q.put(("alive", name, addr))

    def member_gone(self, name: str) -> None:
        self._q.put(("gone", name))

    def user_event(self, ltime: int) -> None:
        self._q.put(("event", ltime))

    def query(self, ltime: int) -> None:
        self._q.put(("query", ltime))

    def clock(self, member_clock_time: int) -> None:
        """The member clock's current time (recorded as time - 1, when it grew)."""
        self._q.put(("clock", member_clock_time - 1))

    def leave(self) -> None:
        self._q.put(("leave",))

    def close(self, timeout: float = 5.0) -> None:
        """Flush, fsync and stop the writer thread (blocking)."""
        if self._thread is None:
            return
        self._q.put(_STOP)
        self._thread.join(timeout)
        self._thread = None

    # -- the writer thread

    def _open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
        self._offset = os.fstat(self._fd).st_size
        # A torn last line (a crash mid-append) would glue onto our first record.
        if self._offset > 0:
            with open(self.path, "rb") as f:
                f.seek(self._offset - 1)
                if f.read(1) != b"\n":
                    self._write(b"\n")

    def _run(self) -> None:
        while True:
            try:
                item = self._q.get(timeout=SYNC_INTERVAL)
            except queue.Empty:
                self._sync_if_due(force=True)
                continue
            batch = [item]
            while True:  # drain what else is queued: one write per batch
                try:
                    batch.append(self._q.get_nowait())
                except queue.Empty:
                    break
            stop = False
            out: list[str] = []
            for it in batch:
                if it is _STOP:
                    stop = True
                    continue
                assert isinstance(it, tuple)
                out.extend(self._record(it))
            if out:
                self._append("".join(out).encode("utf-8", "surrogateescape"))
            if stop or any(isinstance(it, tuple) and it[0] == "leave" for it in batch):
                self._sync_if_due(force=True)
            else:
                self._sync_if_due(force=False)
            if stop:
                with contextlib.suppress(OSError):
                    os.close(self._fd)
                self._fd = -1
                return

    def _record(self, it: tuple[object, ...]) -> list[str]:
        kind = it[0]
        if kind == "clock":
            v = int(it[1])  # type: ignore[call-overload]
            if v > self._last_clock:
                self._last_clock = v
                return [f"clock: {v}\n"]
            return []
        if kind == "leave":
            self._leaving = True
            if not self.rejoin_after_leave:
                self._alive.clear()
            return ["leave\n"]
        if self._leaving:
            return []  # after a leave only clocks are recorded (snapshot.go)
        if kind == "alive":
            name, addr = str(it[1]), str(it[2])
            self._alive[name] = addr
            return [f"alive: {name} {addr}\n"]
        if kind == "gone":
            self._alive.pop(str(it[1]), None)
            return [f"not-alive: {it[1]}\n"]
        if kind == "event":
            v = int(it[1])  # type: ignore[call-overload]
            if v > self._last_event:
                self._last_event = v
                return [f"event-clock: {v}\n"]
            return []
        if kind == "query":
            v = int(it[1])  # type: ignore[call-overload]
            if v > self._last_query:
                self._last_query = v
                return [f"query-clock: {v}\n"]
            return []
        return []

    def _write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(self._fd, view):]
        self._offset += len(data)
        self._dirty = True

    def _append(self, data: bytes) -> None:
        try:
            self._write(data)
        except OSError as e:
            self.errors += 1
            self.log.error("failed to update snapshot %s: %s", self.path, e)
            return
        if self._offset > self.max_size():
            try:
                self.compact()
            except OSError as e:
                self.errors += 1
                self.log.error("snapshot compaction of %s failed: %s", self.path, e)

    def _sync_if_due(self, force: bool) -> None:
        if not self._dirty or self._fd < 0:
            return
        now = self._now()
        if not force and now - self._last_sync < SYNC_INTERVAL:
            return
        try:
            os.fdatasync(self._fd)
        except OSError as e:
            self.errors += 1
            self.log.error("failed to sync snapshot %s: %s", self.path, e)
        self._dirty = False
        self._last_sync = now

    def max_size(self) -> int:
        """snapshot.go snapshotMaxSize: compaction threshold in bytes."""
        return max(self.min_compact_size,
                   len(self._alive) * BYTES_PER_NODE * COMPACTION_THRESHOLD)

    def compact(self) -> None:
        """Rewrite the file as alive members + clocks: temp file, fsync, atomic rename."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        lines = [f"alive: {n} {a}\n" for n, a in self._alive.items()]
        if self._leaving and not self.rejoin_after_leave:
            lines.append("leave\n")
        lines += [f"clock: {self._last_clock}\n", f"event-clock: {self._last_event}\n",
                  f"query-clock: {self._last_query}\n"]
        data = "".join(lines).encode("utf-8", "surrogateescape")
        tmp = self.path.with_name(self.path.name + COMPACT_EXT)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o640)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, self.path)
        with contextlib.suppress(OSError):
            dfd = os.open(self.path.parent, os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)
        old = self._fd
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
        if old >= 0:
            with contextlib.suppress(OSError):
                os.close(old)
        self._offset = len(data)
        self._dirty = False
        self.compactions += 1
