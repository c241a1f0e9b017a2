"""Counted drops with rate-limited log lines: what a peer or client makes us cut is seen.

Every place that refuses or drops something a peer or client sent bumps a counter (the
agent sums them into ``serfctl info`` as ``dropped_<reason>``) and logs a line, but at
most one line per reason per ``interval`` seconds, so a flood cannot flood the journal
too. The line after a quiet spell says how many were suppressed since the last one.

Pure: time is passed in as ``now``. Reasons are fixed strings chosen by our code, never
by a peer, so the table stays as small as the set of reasons.
"""

from __future__ import annotations

import logging

__all__ = ["DropLog"]

DEFAULT_INTERVAL = 10.0  # seconds between two log lines for one reason


class DropLog:
    """Counters of what was dropped, by reason, and a rate-limited warning for each."""

    def __init__(self, logger: logging.Logger, counters: dict[str, int] | None = None,
                 interval: float = DEFAULT_INTERVAL, level: int = logging.WARNING) -> None:
        self.counters: dict[str, int] = counters if counters is not None else {}
        self._log = logger
        self._interval = interval
        self._level = level
        self._last: dict[str, float] = {}  # reason -> when its last line was logged
        self._suppressed: dict[str, int] = {}  # reason -> drops since that line

    def drop(self, reason: str, now: float, msg: str, *args: object, n: int = 1) -> bool:
        """Count ``n`` drops for ``reason``; log ``msg % args`` unless one was logged lately.

        Returns True when a line was logged.
        """
        self.counters[reason] = self.counters.get(reason, 0) + n
        last = self._last.get(reason)
        if last is not None and now - last < self._interval:
            self._suppressed[reason] = self._suppressed.get(reason, 0) + n
            return False
        quiet = self._suppressed.pop(reason, 0)
        self._last[reason] = now
        if quiet:
            msg += f" ({quiet} more {reason} since the last such line)"
        self._log.log(self._level, msg, *args)
        return True
