"""memberlist's TransmitLimitedQueue: gossip broadcasts with a retransmit budget (queue.go).

Theory of operation
-------------------
Every broadcast is sent a limited number of times, ``RetransmitMult x ceil(log10(N+1))``
where N is the current node estimate (read through a callable at each pick, so the limit
follows the cluster size). When a packet is filled, candidates are taken in this order:

1. fewest transmissions so far,
2. then the bigger message,
3. then the newer one (higher submission id),

skipping those that do not fit the space left; each pick costs ``overhead + len``.
A picked broadcast that reaches the limit is dropped and its ``on_finished`` hook runs;
otherwise its count goes up and it becomes eligible again in the *next* packet.

Broadcasts are either *named* (memberlist's own: named after the node they talk about;
a new one replaces, and finishes, the queued one of the same name) or *unique* (Serf's:
they never invalidate anything). ``prune``/``reset`` finish what they drop.

Queues are small (tens of entries), so a sort per pick round is cheaper in Python than
a balanced tree.
"""

from __future__ import annotations

import math
from collections.abc import Callable

__all__ = ["TransmitLimitedQueue", "retransmit_limit"]


def retransmit_limit(retransmit_mult: int, n: int) -> int:
    """memberlist retransmitLimit: RetransmitMult x ceil(log10(n + 1))."""
    return retransmit_mult * math.ceil(math.log10(n + 1))


class _Entry:
    __slots__ = ("id", "msg", "name", "on_finished", "transmits")

    def __init__(
        self, msg: bytes, ident: int, name: str | None, on_finished: Callable[[], None] | None
    ) -> None:
        self.transmits = 0
        self.msg = msg
        self.id = ident
        self.name = name
        self.on_finished = on_finished

    def finish(self) -> None:
        if self.on_finished is not None:
            self.on_finished()


def _order(e: _Entry) -> tuple[int, int, int]:
    return (e.transmits, -len(e.msg), -e.id)


class TransmitLimitedQueue:
    """Broadcast queue with a retransmit limit and named invalidation."""

    def __init__(self, retransmit_mult: int, num_nodes: Callable[[], int]) -> None:
        self.retransmit_mult = retransmit_mult
        self.num_nodes = num_nodes
        self._entries: list[_Entry] = []
        self._named: dict[str, _Entry] = {}
        self._id_gen = 0

    def __len__(self) -> int:
        return len(self._entries)

    def queue(
        self,
        msg: bytes,
        name: str | None = None,
        on_finished: Callable[[], None] | None = None,
    ) -> None:
        """Queue a broadcast; a named one replaces the queued one of the same name."""
        self._id_gen += 1
        entry = _Entry(msg, self._id_gen, name, on_finished)
        if name is not None:
            old = self._named.pop(name, None)
            if old is not None:
                self._entries.remove(old)
                old.finish()
                if not self._entries:
                    self._id_gen = 0  # Go restarts ids when the tree empties
            self._named[name] = entry
        self._entries.append(entry)

    def get_broadcasts(self, overhead: int, limit: int) -> list[bytes]:
        """Pick broadcasts for one packet of ``limit`` bytes, each costing ``overhead`` more."""
        if not self._entries:
            return []
        transmit_limit = retransmit_limit(self.retransmit_mult, self.num_nodes())
        used = 0
        out: list[bytes] = []
        picked: list[_Entry] = []
        # With the order (transmits asc, size desc, id desc), memberlist's walk (biggest
        # fitting entry of the lowest transmit count, repeated) is one pass over the
        # sorted list: what did not fit earlier cannot fit later, the space only shrinks.
        for e in sorted(self._entries, key=_order):
            free = limit - used - overhead
            if free <= 0:
                break
            if len(e.msg) > free:
                continue
            used += overhead + len(e.msg)
            out.append(e.msg)
            picked.append(e)
        if not picked:
            return out
        if len(picked) == len(self._entries):
            # Go deletes each pick from its tree before re-inserting; emptying the tree
            # restarts the id generator, so later broadcasts rank as "older" than these.
            self._id_gen = 0
        for e in picked:
            e.transmits += 1
        finished = [e for e in picked if e.transmits >= transmit_limit]
        if finished:
            gone = set(map(id, finished))
            self._entries = [e for e in self._entries if id(e) not in gone]
            for e in finished:
                if e.name is not None and self._named.get(e.name) is e:
                    del self._named[e.name]
            if not self._entries:
                self._id_gen = 0
            for e in finished:
                e.finish()
        return out

    def prune(self, max_retain: int) -> None:
        """Drop (and finish) the most-sent broadcasts until at most ``max_retain`` remain."""
        if len(self._entries) <= max_retain:
            return
        self._entries.sort(key=_order)
        dropped = self._entries[max_retain:]
        del self._entries[max_retain:]
        for e in dropped:
            if e.name is not None and self._named.get(e.name) is e:
                del self._named[e.name]
        if not self._entries:
            self._id_gen = 0
        for e in dropped:
            e.finish()

    def reset(self) -> None:
        """Drop (and finish) everything."""
        dropped = self._entries
        self._entries = []
        self._named = {}
        self._id_gen = 0
        for e in dropped:
            e.finish()

    def messages(self) -> list[bytes]:
        """The queued messages, in pick order (for inspection and tests)."""
        return [e.msg for e in sorted(self._entries, key=_order)]
