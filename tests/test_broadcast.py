"""memberlist TransmitLimitedQueue behaviour (queue.go)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from hypothesis import example, given, settings
from hypothesis import strategies as st

from serfd.memberlist.broadcast import TransmitLimitedQueue, retransmit_limit


def test_retransmit_limit() -> None:
    assert retransmit_limit(4, 0) == 0
    assert retransmit_limit(4, 1) == 4
    assert retransmit_limit(4, 9) == 4
    assert retransmit_limit(4, 10) == 8
    assert retransmit_limit(4, 99) == 8
    assert retransmit_limit(4, 100) == 12
    assert retransmit_limit(3, 99) == 6


def test_named_broadcast_replaces_and_finishes_old() -> None:
    q = TransmitLimitedQueue(4, lambda: 10)
    finished: list[str] = []
    q.queue(b"old", name="n1", on_finished=lambda: finished.append("old"))
    q.queue(b"other", name="n2")
    q.queue(b"new", name="n1", on_finished=lambda: finished.append("new"))
    assert finished == ["old"]
    assert sorted(q.messages()) == [b"new", b"other"]


def test_unique_broadcasts_never_invalidate() -> None:
    q = TransmitLimitedQueue(4, lambda: 10)
    q.queue(b"x")
    q.queue(b"x")
    assert len(q) == 2


def test_pick_order_fewest_transmits_then_bigger_then_newer() -> None:
    q = TransmitLimitedQueue(4, lambda: 10)  # limit 8
    q.queue(b"aaaa", name="a")
    q.queue(b"bb", name="b")
    q.queue(b"cc", name="c")
    # Room for one 4-byte message only: the biggest goes first.
    assert q.get_broadcasts(0, 4) == [b"aaaa"]
    # Fewer transmits beats size; among equal sizes the newer first.
    assert q.get_broadcasts(0, 2) == [b"cc"]
    assert q.get_broadcasts(0, 2) == [b"bb"]
    # All at one transmit now: big first, then both small ones fit.
    assert q.get_broadcasts(0, 100) == [b"aaaa", b"cc", b"bb"]


def test_overhead_counts_per_message() -> None:
    q = TransmitLimitedQueue(4, lambda: 10)
    q.queue(b"12345", name="a")
    q.queue(b"12345", name="b")
    assert len(q.get_broadcasts(2, 13)) == 1  # 7 + 7 > 13
    assert len(q.get_broadcasts(2, 14)) == 2


def test_limit_drops_and_finishes() -> None:
    done: list[int] = []
    q = TransmitLimitedQueue(4, lambda: 3)  # limit 4
    q.queue(b"m", name="x", on_finished=lambda: done.append(1))
    for _ in range(3):
        assert q.get_broadcasts(2, 100) == [b"m"]
        assert done == []
    assert q.get_broadcasts(2, 100) == [b"m"]
    assert done == [1]
    assert len(q) == 0
    assert q.get_broadcasts(2, 100) == []


def test_limit_follows_node_count() -> None:
    n = [3]
    q = TransmitLimitedQueue(4, lambda: n[0])
    q.queue(b"m")
    for _ in range(4):
        q.get_broadcasts(0, 100)
    assert len(q) == 0
    n[0] = 50  # limit 8
    q.queue(b"m")
    for _ in range(7):
        q.get_broadcasts(0, 100)
    assert len(q) == 1


def test_prune_keeps_least_sent() -> None:
    done: list[bytes] = []
    q = TransmitLimitedQueue(4, lambda: 100)
    q.queue(b"old", on_finished=lambda: done.append(b"old"))
    q.get_broadcasts(0, 100)
    q.queue(b"new1")
    q.queue(b"new2")
    q.prune(2)
    assert done == [b"old"]
    assert sorted(q.messages()) == [b"new1", b"new2"]


@given(
    st.lists(st.tuples(st.integers(1, 40), st.sampled_from([None, "a", "b", "c"])), max_size=30),
    st.integers(0, 200),
    st.integers(0, 4),
)
def test_picks_fit_and_never_repeat(
    items: list[tuple[int, str | None]], limit: int, overhead: int
) -> None:
    q = TransmitLimitedQueue(4, lambda: 10)
    for i, (size, name) in enumerate(items):
        q.queue(bytes([i]) * size, name=name)
    before = len(q)
    out = q.get_broadcasts(overhead, limit)
    assert sum(len(m) + overhead for m in out) <= max(limit, 0) or not out
    assert len(out) <= before
    assert len({id(m) for m in out}) == len(out)


class _RefEntry:
    __slots__ = ("id", "msg", "name", "tag", "transmits")

    def __init__(self, msg: bytes, ident: int, name: str | None, tag: int) -> None:
        self.transmits = 0
        self.msg = msg
        self.id = ident
        self.name = name
        self.tag = tag


class _ReferenceQueue:
    """The queue as it was first written: a stable sort of every entry per packet, by
    (transmits, -len, -id), queue order breaking ties. Slow, plainly right; the real
    queue must behave exactly like it."""

    def __init__(self, mult: int, num_nodes: Callable[[], int], done: list[int]) -> None:
        self.mult, self.num_nodes, self.done = mult, num_nodes, done
        self.entries: list[_RefEntry] = []
        self.named: dict[str, _RefEntry] = {}
        self.id_gen = 0

    @staticmethod
    def _order(e: _RefEntry) -> tuple[int, int, int]:
        return (e.transmits, -len(e.msg), -e.id)

    def queue(self, msg: bytes, name: str | None, tag: int) -> None:
        self.id_gen += 1
        entry = _RefEntry(msg, self.id_gen, name, tag)
        if name is not None:
            old = self.named.pop(name, None)
            if old is not None:
                self.entries.remove(old)
                self.done.append(old.tag)
                if not self.entries:
                    self.id_gen = 0
            self.named[name] = entry
        self.entries.append(entry)

    def get_broadcasts(self, overhead: int, limit: int) -> list[bytes]:
        if not self.entries:
            return []
        tlimit = retransmit_limit(self.mult, self.num_nodes())
        used, out, picked = 0, [], []
        for e in sorted(self.entries, key=self._order):
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
        if len(picked) == len(self.entries):
            self.id_gen = 0
        for e in picked:
            e.transmits += 1
        finished = [e for e in picked if e.transmits >= tlimit]
        if finished:
            self.entries = [e for e in self.entries if all(e is not f for f in finished)]
            for e in finished:
                if e.name is not None and self.named.get(e.name) is e:
                    del self.named[e.name]
            if not self.entries:
                self.id_gen = 0
            self.done.extend(e.tag for e in finished)
        return out

    def prune(self, max_retain: int) -> None:
        if len(self.entries) <= max_retain:
            return
        # (The first version sorted its list in place here, so that later ties between
        # equal ids went by that order rather than by queue order; Go's btree cannot hold
        # two equal items at all. Queue order is the rule now.)
        dropped = sorted(self.entries, key=self._order)[max_retain:]
        self.entries = [e for e in self.entries if all(e is not d for d in dropped)]
        for e in dropped:
            if e.name is not None and self.named.get(e.name) is e:
                del self.named[e.name]
        if not self.entries:
            self.id_gen = 0
        self.done.extend(e.tag for e in dropped)

    def reset(self) -> None:
        self.done.extend(e.tag for e in self.entries)
        self.entries, self.named, self.id_gen = [], {}, 0

    def messages(self) -> list[bytes]:
        return [e.msg for e in sorted(self.entries, key=self._order)]


_OPS = st.one_of(
    # Few sizes, so that entries share a bucket and the id reset's ties show.
    st.tuples(st.just("queue"), st.sampled_from([1, 2, 3, 8, 30]),
              st.sampled_from([None, "a", "b", "c", "d"])),
    st.tuples(st.just("get"), st.integers(0, 3), st.sampled_from([-1, 0, 3, 6, 10, 40, 200])),
    st.tuples(st.just("prune"), st.integers(0, 12)),
    st.tuples(st.just("nodes"), st.integers(1, 200)),
    st.tuples(st.just("reset")),
)


# After a packet takes every entry the ids restart, so a newer broadcast can rank below
# older ones of its tier, or tie with one (then the earlier queued goes first).
_ID_RESET = [("queue", 3, None), ("queue", 3, None), ("get", 0, 200), ("queue", 3, None),
             ("get", 0, 3), ("get", 0, 3), ("get", 0, 3), ("get", 0, 3)]
# A named broadcast that replaces the only entry empties the queue: ids restart too.
_NAMED_RESET = [("queue", 3, "a"), ("queue", 3, "a"), ("queue", 3, None), ("get", 0, 3)]


@settings(max_examples=400)
@given(st.lists(_OPS, max_size=120))
@example(_ID_RESET)
@example(_NAMED_RESET)
def test_queue_picks_exactly_as_the_sorting_reference(ops: list[tuple[Any, ...]]) -> None:
    """Every sequence of queue/pick/prune/reset, with the node count moving the limit,
    gives the same packets, the same finish calls in the same order, and the same queue
    contents as the sort-per-packet reference (memberlist's order, ids reset included)."""
    n = [5]
    done_ref: list[int] = []
    done_new: list[int] = []
    ref = _ReferenceQueue(2, lambda: n[0], done_ref)
    q = TransmitLimitedQueue(2, lambda: n[0])
    for tag, op in enumerate(ops):
        if op[0] == "queue":
            msg = bytes([tag % 256]) * op[1]
            ref.queue(msg, op[2], tag)
            q.queue(msg, name=op[2], on_finished=lambda t=tag: done_new.append(t))
        elif op[0] == "get":
            assert q.get_broadcasts(op[1], op[2]) == ref.get_broadcasts(op[1], op[2])
        elif op[0] == "prune":
            q.prune(op[1])
            ref.prune(op[1])
        elif op[0] == "nodes":
            n[0] = op[1]
        else:
            q.reset()
            ref.reset()
        assert done_new == done_ref
        assert q.messages() == ref.messages()
        assert len(q) == len(ref.entries)
