"""Log lines for RPC ``monitor`` clients: a ring of the latest lines plus live subscribers.

Serf's agent keeps the last 512 log lines and replays them to a new monitor before
streaming live lines at or above the level the client asked for. Lines look like
Serf's: ``YYYY/MM/DD HH:MM:SS [LEVEL] logger: message``.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable

from serfd.logsetup import TRACE

__all__ = ["MONITOR_LEVELS", "LogRing"]

RING_SIZE = 512  # Serf's log writer buffer

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


class LogRing(logging.Handler):
    """A logging handler: remembers RING_SIZE lines, fans each one out to subscribers."""

    def __init__(self, size: int = RING_SIZE) -> None:
        super().__init__(level=TRACE)
        self.setFormatter(logging.Formatter("%(asctime)s [%(serf_level)s] %(name)s: %(message)s",
                                            "%Y/%m/%d %H:%M:%S"))
        self._ring: deque[tuple[int, str]] = deque(maxlen=size)
        self._subs: dict[int, tuple[int, Callable[[str], None]]] = {}
        self._next = 0

    def emit(self, record: logging.LogRecord) -> None:
        try:
            record.serf_level = _NAMES.get(record.levelno, record.levelname)
            line = self.format(record)
        except Exception:  # noqa: BLE001 - logging must never raise
            return
        self._ring.append((record.levelno, line))
        for level, cb in list(self._subs.values()):
            if record.levelno >= level:
                try:
                    cb(line)
                except Exception:  # noqa: BLE001, S112 - a broken client must not break logging
                    continue

    def subscribe(self, level: int, cb: Callable[[str], None]) -> Callable[[], None]:
        """Replay the ring (lines >= level) to cb, then send it live lines; returns unsubscribe."""
        for lvl, line in list(self._ring):
            if lvl >= level:
                cb(line)
        key = self._next
        self._next += 1
        self._subs[key] = (level, cb)
        return lambda: self._subs.pop(key, None) and None
