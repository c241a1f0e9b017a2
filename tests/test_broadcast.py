"""memberlist TransmitLimitedQueue behaviour (queue.go)."""

from __future__ import annotations

from hypothesis import given
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
