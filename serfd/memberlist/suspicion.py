"""Lifeguard suspicion timeouts, as pure arithmetic (memberlist 0.2.2 suspicion.go, util.go).

Theory of operation
-------------------
When a node is first suspected we start a timer. Its length depends on the cluster
size ``n`` (memberlist's node estimate, dead-but-unreaped nodes included):

* ``min = SuspicionMult x max(1, log10(max(1, n))) x ProbeInterval``
* ``max = SuspicionMaxTimeoutMult x min``
* ``k = SuspicionMult - 2`` independent confirmations are awaited, or none when the
  cluster is too small for them (``n - 2 < k``).

The timer starts at ``max`` when ``k >= 1`` (else at ``min``). Each *new* distinct
confirmer ``c`` (counted up to ``k``, the original accuser does not count) pulls the
deadline in: the total timeout becomes ``max - (ln(c+1)/ln(k+1)) x (max - min)``,
floored to whole milliseconds and never below ``min``. Confirmations after the k-th
change nothing. All times here are float seconds; nothing reads a clock.
"""

from __future__ import annotations

import math

__all__ = ["Suspicion", "confirmations_wanted", "remaining_suspicion_time", "suspicion_timeout"]

_NS = 1_000_000_000


def suspicion_timeout(suspicion_mult: int, n: int, probe_interval: float) -> float:
    """memberlist suspicionTimeout: the minimum suspicion time for a cluster of ``n`` nodes."""
    node_scale = max(1.0, math.log10(max(1.0, float(n))))
    # Go: Duration(mult) * Duration(nodeScale*1000) * interval / 1000, integer nanoseconds.
    interval_ns = round(probe_interval * _NS)
    timeout_ns = suspicion_mult * int(node_scale * 1000) * interval_ns // 1000
    return timeout_ns / _NS


def confirmations_wanted(suspicion_mult: int, n: int) -> int:
    """k: the independent confirmations that shorten a suspicion (0 for tiny clusters)."""
    k = suspicion_mult - 2
    if n - 2 < k:
        k = 0
    return k


def remaining_suspicion_time(
    confirmations: int, k: int, elapsed: float, min_timeout: float, max_timeout: float
) -> float:
    """memberlist remainingSuspicionTime: time left after ``confirmations`` of ``k``."""
    frac = math.log(confirmations + 1.0) / math.log(k + 1.0)
    raw = max_timeout - frac * (max_timeout - min_timeout)
    timeout = math.floor(1000.0 * raw) / 1000.0  # whole milliseconds, like Go
    timeout = max(timeout, min_timeout)
    return timeout - elapsed


class Suspicion:
    """One running suspicion of one node: who confirmed it and when it expires."""

    __slots__ = ("confirmers", "deadline", "k", "max_timeout", "min_timeout", "n", "start")

    def __init__(
        self, accuser: str, k: int, min_timeout: float, max_timeout: float, start: float
    ) -> None:
        self.k = k
        self.min_timeout = min_timeout
        self.max_timeout = max_timeout
        self.start = start
        self.n = 0  # confirmations so far, the accuser excluded
        self.confirmers: set[str] = {accuser}
        self.deadline = start + (max_timeout if k >= 1 else min_timeout)

    def confirm(self, confirmer: str, now: float) -> bool:
        """Count a confirmation; True when it was new (and so worth re-gossiping)."""
        if self.n >= self.k or confirmer in self.confirmers:
            return False
        self.confirmers.add(confirmer)
        self.n += 1
        remaining = remaining_suspicion_time(
            self.n, self.k, now - self.start, self.min_timeout, self.max_timeout
        )
        # A deadline already in the past fires at once (Go runs the timeout function).
        self.deadline = now + remaining if remaining > 0 else now
        return True
