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

Layout: one tier per transmit count, and in each tier one bucket per message length
(the lengths kept sorted), each bucket a list ordered by (id, -arrival) so that its
last entry is the one memberlist picks first among equals (the newest; between equal
ids, which the id reset makes possible, the earlier queued). A pick is then a bisect
for the biggest length that fits and a pop, whatever the queue's size: a cluster of
1,000 that joins at once queues about 1,000 broadcasts per node, and sorting them for
every packet cost milliseconds.
"""

from __future__ import annotations

import math
from bisect import bisect_left, bisect_right, insort
from collections.abc import Callable, Iterator

__all__ = ["TransmitLimitedQueue", "retransmit_limit"]


def retransmit_limit(retransmit_mult: int, n: int) -> int:
    """memberlist retransmitLimit: RetransmitMult x ceil(log10(n + 1))."""
    return retransmit_mult * math.ceil(math.log10(n + 1))


class _Entry:
    __slots__ = ("arrival", "id", "msg", "name", "on_finished", "size", "transmits")

    def __init__(
        self, msg: bytes, ident: int, name: str | None, on_finished: Callable[[], None] | None,
        arrival: int,
    ) -> None:
        self.transmits = 0
        self.msg = msg
        self.size = len(msg)
        self.id = ident
        self.name = name
        self.on_finished = on_finished
        self.arrival = arrival  # queue order: breaks ties between equal ids

    def finish(self) -> None:
        if self.on_finished is not None:
            self.on_finished()


# A bucket holds (id, -arrival, entry), ascending: the last is picked first.
_Bucket = list[tuple[int, int, _Entry]]


class _Tier:
    """The broadcasts sent ``transmits`` times: buckets by length, lengths sorted."""

    __slots__ = ("buckets", "sizes")

    def __init__(self) -> None:
        self.buckets: dict[int, _Bucket] = {}
        self.sizes: list[int] = []  # ascending

    def add(self, e: _Entry) -> None:
        bucket = self.buckets.get(e.size)
        item = (e.id, -e.arrival, e)
        if bucket is None:
            self.buckets[e.size] = [item]
            insort(self.sizes, e.size)
        elif bucket[-1] < item:
            bucket.append(item)  # the usual case: the newest broadcast of its tier
        else:
            insort(bucket, item)

    def remove(self, e: _Entry) -> None:
        bucket = self.buckets[e.size]
        del bucket[bisect_left(bucket, (e.id, -e.arrival))]
        if not bucket:
            self._drop_size(e.size)

    def pop_fitting(self, free: int) -> _Entry | None:
        """The first entry, in pick order, of at most ``free`` bytes (removed), or None."""
        sizes = self.sizes
        i = bisect_right(sizes, free)
        if i == 0:
            return None
        size = sizes[i - 1]
        bucket = self.buckets[size]
        e = bucket.pop()[2]
        if not bucket:
            self._drop_size(size)
        return e

    def _drop_size(self, size: int) -> None:
        del self.buckets[size]
        del self.sizes[bisect_left(self.sizes, size)]

    def ordered(self) -> Iterator[_Entry]:
        """The tier's entries in pick order."""
        for size in reversed(self.sizes):
            for item in reversed(self.buckets[size]):
                yield item[2]


class TransmitLimitedQueue:
    """Broadcast queue with a retransmit limit and named invalidation."""

    def __init__(self, retransmit_mult: int, num_nodes: Callable[[], int]) -> None:
        self.retransmit_mult = retransmit_mult
        self.num_nodes = num_nodes
        self._tiers: dict[int, _Tier] = {}
        self._all: dict[int, _Entry] = {}  # by arrival, in queue order
        self._named: dict[str, _Entry] = {}
        self._id_gen = 0
        self._arrivals = 0

    def __len__(self) -> int:
        return len(self._all)

    def queue(
        self,
        msg: bytes,
        name: str | None = None,
        on_finished: Callable[[], None] | None = None,
    ) -> None:
        """Queue a broadcast; a named one replaces the queued one of the same name."""
        self._id_gen += 1
        self._arrivals += 1
        entry = _Entry(msg, self._id_gen, name, on_finished, self._arrivals)
        if name is not None:
            old = self._named.pop(name, None)
            if old is not None:
                self._remove(old)
                old.finish()
                if not self._all:
                    self._id_gen = 0  # Go restarts ids when the tree empties
            self._named[name] = entry
        self._insert(entry)

    def get_broadcasts(self, overhead: int, limit: int) -> list[bytes]:
        """Pick broadcasts for one packet of ``limit`` bytes, each costing ``overhead`` more."""
        if not self._all:
            return []
        transmit_limit = retransmit_limit(self.retransmit_mult, self.num_nodes())
        used = 0
        out: list[bytes] = []
        picked: list[_Entry] = []
        # memberlist's walk: tier by tier (fewest transmits first), the biggest entry
        # that fits, newest first among equals; what did not fit cannot fit later in
        # the packet, the space only shrinks. Picks join their next tier afterwards.
        tiers = self._tiers
        for t in sorted(tiers):
            tier = tiers[t]
            while True:
                free = limit - used - overhead
                if free <= 0:
                    break
                e = tier.pop_fitting(free)
                if e is None:
                    break
                used += overhead + e.size
                out.append(e.msg)
                picked.append(e)
            if not tier.sizes:
                del tiers[t]
            if limit - used - overhead <= 0:
                break
        if not picked:
            return out
        if len(picked) == len(self._all):
            # Go deletes each pick from its tree before re-inserting; emptying the tree
            # restarts the id generator, so later broadcasts rank as "older" than these.
            self._id_gen = 0
        finished: list[_Entry] = []
        for e in picked:
            e.transmits += 1
            if e.transmits >= transmit_limit:
                finished.append(e)
                del self._all[e.arrival]
                if e.name is not None and self._named.get(e.name) is e:
                    del self._named[e.name]
            else:
                self._tier(e.transmits).add(e)
        if finished:
            if not self._all:
                self._id_gen = 0
            for e in finished:
                e.finish()
        return out

    def prune(self, max_retain: int) -> None:
        """Drop (and finish) the most-sent broadcasts until at most ``max_retain`` remain."""
        excess = len(self._all) - max_retain
        if excess <= 0:
            return
        order = list(self._ordered())
        dropped = order[len(order) - excess:]
        for e in dropped:
            self._remove(e)
            if e.name is not None and self._named.get(e.name) is e:
                del self._named[e.name]
        if not self._all:
            self._id_gen = 0
        for e in dropped:
            e.finish()

    def reset(self) -> None:
        """Drop (and finish) everything."""
        dropped = list(self._all.values())
        self._tiers = {}
        self._all = {}
        self._named = {}
        self._id_gen = 0
        for e in dropped:
            e.finish()

    def messages(self) -> list[bytes]:
        """The queued messages, in pick order (for inspection and tests)."""
        return [e.msg for e in self._ordered()]

    def _ordered(self) -> Iterator[_Entry]:
        for t in sorted(self._tiers):
            yield from self._tiers[t].ordered()

    def _tier(self, transmits: int) -> _Tier:
        tier = self._tiers.get(transmits)
        if tier is None:
            tier = self._tiers[transmits] = _Tier()
        return tier

    def _insert(self, e: _Entry) -> None:
        self._all[e.arrival] = e
        tier = self._tiers.get(e.transmits)
        if tier is None:
            tier = self._tiers[e.transmits] = _Tier()
        tier.add(e)

    def _remove(self, e: _Entry) -> None:
        del self._all[e.arrival]
        tier = self._tiers[e.transmits]
        tier.remove(e)
        if not tier.sizes:
            del self._tiers[e.transmits]
