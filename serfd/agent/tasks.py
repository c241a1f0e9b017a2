"""Background tasks a service owns: kept referenced, their failures logged and counted.

asyncio holds only weak references to tasks, so a fire-and-forget task can vanish
mid-run; and an exception in one nobody awaits is reported, if ever, at garbage
collection. :class:`TaskSet` keeps each task until it ends, logs an exception the moment
it ends with one (and bumps ``counters[error_key]`` when given counters), and cancels
whatever is left at shutdown.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable
from typing import Any

__all__ = ["TaskSet"]


class TaskSet:
    def __init__(self, log: logging.Logger, what: str, *,
                 counters: dict[str, int] | None = None, error_key: str = "") -> None:
        self._log = log
        self._what = what
        self._counters = counters
        self._error_key = error_key
        self._tasks: set[asyncio.Future[Any]] = set()

    def __len__(self) -> int:
        return len(self._tasks)

    def spawn(self, work: Awaitable[Any]) -> asyncio.Future[Any]:
        """Run ``work`` (a coroutine or another awaitable) as a task of this set."""
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Future[Any]) -> None:
        self._tasks.discard(task)
        if task.cancelled() or task.exception() is None:
            return
        if self._counters is not None and self._error_key:
            self._counters[self._error_key] = self._counters.get(self._error_key, 0) + 1
        self._log.error("%s task failed: %r", self._what, task.exception(),
                        exc_info=task.exception())

    def cancel_all(self) -> list[asyncio.Future[Any]]:
        """Cancel every task still running; the cancelled tasks (to await if wanted)."""
        left = list(self._tasks)
        for t in left:
            t.cancel()
        return left
