"""Log lines for RPC ``monitor`` clients: a ring of the latest lines plus live subscribers.

Serf's agent keeps the last 512 log lines and replays them to a new monitor before
streaming live lines at or above the level the client asked for. Lines look like
Serf's: ``YYYY/MM/DD HH:MM:SS [LEVEL] logger: message``.

Threads
-------
``emit`` runs on whatever thread logs: the event loop, the snapshot writer thread,
the loop's executor. Subscribers write to asyncio transports, which only the loop's
thread may touch. So:

* the ring and the subscriber table change only under the handler's lock (logging
  already holds it around ``emit``; ``subscribe`` and ``unsubscribe`` take it);
* a line logged on the loop's thread goes to subscribers at once; a line from any
  other thread (or logged while a line is being handed out) waits in a queue of at
  most ``PENDING_LIMIT`` lines, drained on the loop by one ``call_soon_threadsafe``;
  what does not fit is counted (``monitor_lines_dropped``), never logged (that
  would log again);
* every line has a sequence number; a subscriber gets only lines newer than the
  ring it replayed, so a queued line is never seen twice.

Subscriber callbacks must not raise; if one does it is counted
(``monitor_callback_errors``), as is a record that cannot be formatted
(``log_format_errors``): logging from inside logging would recurse.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections import deque
from collections.abc import Callable

from serfd.agent.logsetup import TRACE

__all__ = ["MONITOR_LEVELS", "PENDING_LIMIT", "RING_SIZE", "LogRing"]

RING_SIZE = 512  # Serf's log writer buffer
PENDING_LIMIT = 512  # lines from other threads waiting for the loop (Serf's logCh is 512 too)

# The levels a monitor client may ask for (Serf's names, upper-cased) and ours.
MONITOR_LEVELS = {
    "TRACE": TRACE,
    "DEBUG": logging.DEBUG,
    "INFO": logging.INFO,
    "WARN": logging.WARNING,
    "ERR": logging.ERROR,
}
_NAMES = {TRACE: "TRACE", logging.DEBUG: "DEBUG", logging.INFO: "INFO", logging.WARNING: "WARN",
          logging.ERROR: "ERR", logging.CRITICAL: "ERR"}

_Line = tuple[int, int, str]  # (sequence number, level, text)


class LogRing(logging.Handler):
    """A logging handler: remembers RING_SIZE lines, fans each one out to subscribers.

    Create it on the loop's thread with that ``loop``; ``loop=None`` hands lines out
    on the logging thread (only for single-threaded use without a loop).
    """

    def __init__(self, size: int = RING_SIZE, *, loop: asyncio.AbstractEventLoop | None = None,
                 counters: dict[str, int] | None = None,
                 pending_limit: int = PENDING_LIMIT) -> None:
        super().__init__(level=TRACE)
        self.setFormatter(logging.Formatter("%(asctime)s [%(serf_level)s] %(name)s: %(message)s",
                                            "%Y/%m/%d %H:%M:%S"))
        self.counters: dict[str, int] = counters if counters is not None else {}
        self._ring: deque[_Line] = deque(maxlen=size)
        # key -> (level, callback, sequence number of the last line it replayed)
        self._subs: dict[int, tuple[int, Callable[[str], None], int]] = {}
        self._next = 0
        self._seq = 0
        self._loop = loop
        self._loop_thread = threading.get_ident() if loop is not None else None
        self._pending: deque[_Line] = deque()
        self._pending_limit = pending_limit
        self._drain_scheduled = False
        self._delivering = False  # on the loop thread: handing a line out right now

    def _count(self, key: str, n: int = 1) -> None:
        self.counters[key] = self.counters.get(key, 0) + n

    def emit(self, record: logging.LogRecord) -> None:
        # Called with self.lock held (logging.Handler.handle).
        try:
            record.serf_level = _NAMES.get(record.levelno, record.levelname)
            line = self.format(record)
        except Exception:  # noqa: BLE001 - logging must never raise; counted
            self._count("log_format_errors")
            return
        self._seq += 1
        item = (self._seq, record.levelno, line)
        self._ring.append(item)
        if not self._subs:
            return
        on_loop = self._loop is None or threading.get_ident() == self._loop_thread
        if on_loop and not self._delivering and not self._pending:
            self._deliver([item])
            return
        self._queue(item, on_loop)

    def _queue(self, item: _Line, on_loop: bool) -> None:
        if len(self._pending) >= self._pending_limit:
            self._count("monitor_lines_dropped")
            return
        self._pending.append(item)
        if self._drain_scheduled or self._loop is None:
            return
        self._drain_scheduled = True
        try:
            if on_loop:
                self._loop.call_soon(self._drain)
            else:
                self._loop.call_soon_threadsafe(self._drain)
        except RuntimeError:  # the loop is closed: nobody is listening any more
            self._count("monitor_lines_dropped", len(self._pending))
            self._pending.clear()
            self._drain_scheduled = False

    def _drain(self) -> None:
        """On the loop: hand out the lines queued by other threads."""
        self.acquire()
        try:
            batch = list(self._pending)
            self._pending.clear()
            self._drain_scheduled = False
        finally:
            self.release()
        self._deliver(batch)

    def _deliver(self, items: list[_Line]) -> None:
        # On the loop's thread. A line logged by a callback is queued, not nested.
        self._delivering = True
        try:
            for seq, levelno, line in items:
                for level, cb, start in list(self._subs.values()):
                    if levelno >= level and seq > start:
                        self._call(cb, line)
        finally:
            self._delivering = False

    def _call(self, cb: Callable[[str], None], line: str) -> None:
        try:
            cb(line)
        except Exception:  # noqa: BLE001 - a broken client must not break logging; counted
            self._count("monitor_callback_errors")

    def subscribe(self, level: int, cb: Callable[[str], None]) -> Callable[[], None]:
        """Replay the ring (lines >= level) to cb, then send it live lines; returns unsubscribe.

        Call it on the loop's thread.
        """
        self.acquire()
        try:
            replay = [line for _seq, lvl, line in self._ring if lvl >= level]
            key = self._next
            self._next += 1
            self._subs[key] = (level, cb, self._seq)
        finally:
            self.release()
        self._delivering = True
        try:
            for line in replay:
                self._call(cb, line)
        finally:
            self._delivering = False

        def unsubscribe() -> None:
            self.acquire()
            try:
                self._subs.pop(key, None)
            finally:
                self.release()

        return unsubscribe

    def pending(self) -> int:
        """Lines waiting for the loop."""
        return len(self._pending)
