"""Counted drops with rate-limited log lines: what a peer or client makes us cut is seen.

Every place that refuses or drops something a peer or client sent bumps a counter (the
agent sums them into ``serfctl info`` as ``dropped_<reason>``) and logs a line, but at
most one line per reason per ``interval`` seconds, so a flood cannot flood the journal
too. The line after a quiet spell says how many were suppressed since the last one.

Pure: time is passed in as ``now``. Reasons are fixed strings chosen by our code, never
by a peer, so the table stays as small as the set of reasons.

:class:`DropCounters` is the dict those counters live in when metrics are wanted: each
increment, whether it comes through :meth:`DropLog.drop` or a plain
``counters[reason] += 1``, is also reported as the counter ``serfd.dropped.<reason>``
(serfd.base.metric_names).
"""

from __future__ import annotations

import logging

from serfd.base.metrics import Metrics

__all__ = ["DropCounters", "DropLog"]

DEFAULT_INTERVAL = 10.0  # seconds between two log lines for one reason


class DropCounters(dict[str, int]):
    """Drop counters by reason that also count each increase as ``serfd.dropped.<reason>``.

    Every place that counts a drop writes ``counters[reason] = old + n``; this dict turns
    that write into ``metrics.incr(("serfd", "dropped", reason), n)`` too, so no counting
    site needs to know about metrics. Writes that do not increase a count (a reset to 0,
    ``update``, ``setdefault``) report nothing.
    """

    __slots__ = ("metrics",)

    def __init__(self, metrics: Metrics) -> None:
        super().__init__()
        self.metrics = metrics

    def __setitem__(self, reason: str, value: int) -> None:
        delta = value - self.get(reason, 0)
        super().__setitem__(reason, value)
        if delta > 0:
            self.metrics.incr(("serfd", "dropped", reason), delta)


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
