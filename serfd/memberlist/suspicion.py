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

serfd's verified suspicions (``verify``): once our own probe of the suspect failed too
and the k confirmations are in, the floor is ``verified`` = min(min, SuspicionMult x
ProbeInterval + horizon), or ``refused`` = min(min, horizon) when the suspect's host
refused our TCP ping, where horizon = retransmit limit x GossipInterval (how long a
broadcast, a refutation say, is gossiped); the deadline only ever moves in.
"""

from __future__ import annotations

import math

__all__ = [
    "Suspicion",
    "confirmations_wanted",
    "remaining_suspicion_time",
    "suspicion_timeout",
    "verified_suspicion_timeouts",
]

_NS = 1_000_000_000


def suspicion_timeout(suspicion_mult: int, n: int, probe_interval: float) -> float:
    """memberlist suspicionTimeout: the minimum suspicion time for a cluster of ``n`` nodes."""
    node_scale = max(1.0, math.log10(max(1.0, float(n))))
    # Go: Duration(mult) * Duration(nodeScale*1000) * interval / 1000, integer nanoseconds.
    interval_ns = round(probe_interval * _NS)
    timeout_ns = suspicion_mult * int(node_scale * 1000) * interval_ns // 1000
    return timeout_ns / _NS


def verified_suspicion_timeouts(
    suspicion_mult: int, n: int, probe_interval: float, retransmit_limit: int,
    gossip_interval: float,
) -> tuple[float, float]:
    """serfd: the floors of a suspicion we verified ourselves (Suspicion.verify), without
    and with a refused TCP ping: (small + horizon, horizon), neither above the minimum
    suspicion_timeout, where small is memberlist's minimum for a cluster of at most 10
    and horizon is how long a broadcast is retransmitted (limit x GossipInterval)."""
    lo = suspicion_timeout(suspicion_mult, n, probe_interval)
    small = suspicion_timeout(suspicion_mult, 1, probe_interval)
    horizon = retransmit_limit * gossip_interval
    return min(lo, small + horizon), min(lo, horizon)


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

    __slots__ = ("confirmers", "deadline", "k", "max_timeout", "min_timeout", "n",
                 "refused", "refused_timeout", "start", "verified", "verified_timeout")

    def __init__(
        self, accuser: str, k: int, min_timeout: float, max_timeout: float, start: float,
        verified_timeout: float | None = None, refused_timeout: float | None = None,
    ) -> None:
        self.k = k
        self.min_timeout = min_timeout
        self.max_timeout = max_timeout
        self.start = start
        self.n = 0  # confirmations so far, the accuser excluded
        self.confirmers: set[str] = {accuser}
        self.deadline = start + (max_timeout if k >= 1 else min_timeout)
        # serfd: the floors once our own probe failed too, and once its TCP ping was
        # refused as well (None: memberlist's rules only).
        self.verified_timeout = verified_timeout
        self.refused_timeout = refused_timeout
        self.verified = False  # our own probe or check of the suspect failed
        self.refused = False  # ... and the suspect's host refused its TCP ping

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
        self._apply_verified(now)
        return True

    def verify(self, now: float, refused: bool = False) -> bool:
        """Our own probe of the suspect failed during this suspicion (serfd), its TCP
        ping ``refused`` or not; True when that moved the deadline in."""
        if self.verified_timeout is None:
            return False
        self.verified = True
        self.refused = self.refused or (refused and self.refused_timeout is not None)
        return self._apply_verified(now)

    def shortened(self) -> str | None:
        """Which floor holds: "refused", "verified", or None (memberlist's)."""
        if not self.verified or self.k < 1 or self.n < self.k:
            return None
        return "refused" if self.refused else "verified"

    def _apply_verified(self, now: float) -> bool:
        """With our own failure and all k confirmations in, the floor is verified_timeout
        (refused_timeout after a refused TCP ping), from the start, instead of
        min_timeout; never later than memberlist's deadline."""
        which = self.shortened()
        floor = self.refused_timeout if which == "refused" else self.verified_timeout
        if which is None or floor is None:
            return False
        deadline = max(now, self.start + floor)
        if deadline >= self.deadline:
            return False
        self.deadline = deadline
        return True
