"""Talking to the service manager: sd_notify readiness, STATUS, watchdog, reload, stop.

Theory of operation
-------------------
:class:`Notifier` is the agent's one channel to whoever started it. Under systemd
(``NOTIFY_SOCKET`` set) it speaks sd_notify(3) through the ``sdnotify`` package; in
classic daemon mode (``serfd --daemonize``) the only message that matters, readiness,
goes down a pipe to the parent process that is waiting to exit; otherwise every call
is a no-op. The agent drives it in this order:

1. ``ready(status)`` once the gossip UDP/TCP sockets and the RPC socket are bound.
   Never after a join: a join may never succeed, and its state goes into STATUS.
2. ``keepalive(status_fn)`` runs as a task on the agent's event loop for the life of
   the process (under systemd; elsewhere it has nothing to say): ``WATCHDOG=1`` every
   ``WATCHDOG_USEC / 2`` when the watchdog is on, and ``STATUS=`` whenever
   ``status_fn()`` changes. Because the pings come from the loop itself (never a
   thread), a wedged loop stops them and systemd restarts us.
3. ``reloading()`` (``RELOADING=1`` with ``MONOTONIC_USEC``) then ``ready(status)``
   around every reload, whether the new configuration was applied or refused.
4. ``stopping()`` (``STOPPING=1``) as soon as a stop begins, before the leave.

The sd_notify variables are removed from ``os.environ`` when the notifier is built,
so event handlers (children) never inherit ``NOTIFY_SOCKET`` or the watchdog
settings. A failed send is logged once and otherwise ignored: losing the service
manager must never take the agent down.

Nor may a slow one stall it: the notify socket is non-blocking. When the manager's
queue is full (a datagram socket holds ``net.unix.max_dgram_qlen`` messages, 10 by
default), a WATCHDOG ping is dropped (the next one follows within the interval) and any
other message (READY, RELOADING, STOPPING, STATUS) waits, in order, in a short line that
every later send and every keepalive tick tries to flush first. Both are counted
(``sd_notify_watchdog_dropped``, ``sd_notify_deferred``; ``sd_notify_lost`` if the line
overflows), in :attr:`Notifier.counters`, which ``serfctl info`` shows.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections import deque
from collections.abc import Awaitable, Callable

import sdnotify

from serfd.base.ratelog import DropLog

log = logging.getLogger("serfd.systemd")

__all__ = ["STATUS_REFRESH", "Notifier", "monotonic_usec", "watchdog_interval"]

STATUS_REFRESH = 2.0  # seconds between checks of the STATUS line when no watchdog is set
MAX_DEFERRED = 16  # messages kept while the manager's queue is full (WATCHDOG pings are not)
_WATCHDOG = "WATCHDOG=1"


def monotonic_usec() -> int:
    """CLOCK_MONOTONIC in microseconds, as systemd wants it in MONOTONIC_USEC."""
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000


def watchdog_interval(env: dict[str, str] | os._Environ[str]) -> float | None:
    """Seconds between WATCHDOG=1 pings (half of WATCHDOG_USEC), or None when off."""
    usec = env.get("WATCHDOG_USEC", "")
    pid = env.get("WATCHDOG_PID", "")
    if not usec.isdigit() or int(usec) == 0:
        return None
    if pid and pid != str(os.getpid()):
        return None  # meant for another process (sd_watchdog_enabled(3))
    return int(usec) / 2e6


class Notifier:
    """sd_notify (or a readiness pipe, or nothing) for one agent process."""

    def __init__(
        self,
        sd: sdnotify.SystemdNotifier | None = None,
        *,
        watchdog: float | None = None,
        ready_fd: int | None = None,
    ) -> None:
        self._sd = sd
        self._ready_fd = ready_fd
        self.watchdog = watchdog
        self._status: str | None = None
        self._warned = False
        self.sent: deque[str] = deque(maxlen=64)  # the latest messages, for tests
        self.counters: dict[str, int] = {}
        self._drops = DropLog(log, self.counters)
        self._deferred: deque[str] = deque()
        sock = getattr(sd, "socket", None)
        if sock is not None:
            sock.setblocking(False)  # a full manager queue must not stall the loop

    @classmethod
    def from_env(cls, *, ready_fd: int | None = None) -> Notifier:
        """The notifier for this process; strips the sd_notify variables from os.environ."""
        watchdog = watchdog_interval(os.environ)
        sd = None
        if os.environ.get("NOTIFY_SOCKET"):
            try:
                sd = sdnotify.SystemdNotifier(debug=True)
            except OSError as e:
                log.warning("cannot reach the service manager at $NOTIFY_SOCKET: %s", e)
        for var in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"):
            os.environ.pop(var, None)
        return cls(sd, watchdog=watchdog, ready_fd=ready_fd)

    @property
    def active(self) -> bool:
        """Whether anyone is listening (systemd or a waiting parent)."""
        return self._sd is not None or self._ready_fd is not None

    def _send(self, message: str) -> None:
        self.sent.append(message)
        if self._sd is None:
            return
        if self.flush() and self._deliver(message):
            return
        now = time.monotonic()
        if message == _WATCHDOG:
            self._drops.drop("sd_notify_watchdog_dropped", now,
                             "service manager queue full: a watchdog ping was dropped")
            return
        if len(self._deferred) >= MAX_DEFERRED:
            self._deferred.popleft()
            self._drops.drop("sd_notify_lost", now,
                             "service manager queue full: the oldest waiting message was lost")
        self._deferred.append(message)
        self._drops.drop("sd_notify_deferred", now,
                         "service manager queue full: a message waits for the next try")

    def _deliver(self, message: str) -> bool:
        """One send; False only if the manager's queue is full (the message may be retried)."""
        assert self._sd is not None
        try:
            self._sd.notify(message)
        except BlockingIOError:
            return False
        except OSError as e:
            if not self._warned:
                log.warning("sd_notify failed: %s (further failures are not logged)", e)
                self._warned = True
        return True

    def flush(self) -> bool:
        """Send what waits, in order; True once nothing is left waiting."""
        while self._deferred:
            if not self._deliver(self._deferred[0]):
                return False
            self._deferred.popleft()
        return True

    def ready(self, status: str) -> None:
        """READY=1 with the current STATUS (after start and after each reload)."""
        self._status = status
        self._send(f"READY=1\nSTATUS={status}")
        if self._ready_fd is not None:
            with contextlib.suppress(OSError):
                os.write(self._ready_fd, b"READY=1\n")
                os.close(self._ready_fd)
            self._ready_fd = None

    def status(self, status: str) -> None:
        """STATUS=, sent only when the text changed."""
        if status != self._status:
            self._status = status
            self._send(f"STATUS={status}")

    def reloading(self) -> None:
        """RELOADING=1 with MONOTONIC_USEC; must be followed by ready()."""
        self._send(f"RELOADING=1\nMONOTONIC_USEC={monotonic_usec()}\nSTATUS=reloading")
        self._status = "reloading"

    def stopping(self, status: str = "stopping") -> None:
        """STOPPING=1: a stop has begun."""
        self._status = status
        self._send(f"STOPPING=1\nSTATUS={status}")

    def fail_startup(self, reason: str) -> None:
        """Tell a waiting --daemonize parent that startup failed (no-op otherwise)."""
        if self._ready_fd is not None:
            with contextlib.suppress(OSError):
                os.write(self._ready_fd, f"ERROR={reason}\n".encode(errors="replace"))
                os.close(self._ready_fd)
            self._ready_fd = None

    async def keepalive(
        self,
        status_fn: Callable[[], str],
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        """Forever: WATCHDOG=1 every watchdog interval, STATUS= when it changed.

        ``sleep`` waits one interval on the running loop (a test passes a fake clock).
        Without a service manager there is nobody to tell: it returns at once, so an
        agent outside systemd neither wakes for it nor builds STATUS lines.
        """
        if self._sd is None:
            return
        interval = self.watchdog if self.watchdog is not None else STATUS_REFRESH
        interval = min(interval, STATUS_REFRESH)
        if self.watchdog is not None:
            log.debug("watchdog on: pinging every %.3fs", interval)
        while True:
            if self._sd is not None:
                self.flush()
            if self.watchdog is not None:
                self._send(_WATCHDOG)
            try:
                self.status(status_fn())
            except Exception:  # a status bug must not stop the watchdog pings
                log.exception("building the STATUS line failed")
            await sleep(interval)
