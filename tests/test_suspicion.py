"""Lifeguard suspicion math against the numbers memberlist 0.2.2 produces (PROTOCOL.md 2.8)."""

from __future__ import annotations

import pytest

from serfd.memberlist.suspicion import (
    Suspicion,
    confirmations_wanted,
    remaining_suspicion_time,
    suspicion_timeout,
)


@pytest.mark.parametrize(
    ("n", "expected"),
    [(0, 4.0), (1, 4.0), (5, 4.0), (10, 4.0), (100, 8.0), (1000, 12.0), (50, 6.792)],
)
def test_suspicion_timeout_lan(n: int, expected: float) -> None:
    # SuspicionMult 4, ProbeInterval 1s; log10 scale floored to a thousandth.
    assert suspicion_timeout(4, n, 1.0) == pytest.approx(expected)


def test_confirmations_wanted() -> None:
    assert confirmations_wanted(4, 3) == 0  # n - 2 < k
    assert confirmations_wanted(4, 4) == 2
    assert confirmations_wanted(6, 100) == 4
    assert confirmations_wanted(3, 10) == 1


def test_remaining_time_matches_go_table() -> None:
    # memberlist suspicion_test.go TestSuspicion_remainingSuspicionTime cases.
    cases = [
        (0, 3, 0.0, 2.0, 30.0, 30.0),
        (1, 3, 2.0, 2.0, 30.0, 14.0),
        (2, 3, 3.0, 2.0, 30.0, 4.810),
        (3, 3, 4.0, 2.0, 30.0, -2.0),
        (4, 3, 5.0, 2.0, 30.0, -3.0),
        (5, 3, 10.0, 2.0, 30.0, -8.0),
    ]
    for n, k, elapsed, lo, hi, want in cases:
        assert remaining_suspicion_time(n, k, elapsed, lo, hi) == pytest.approx(want)


def test_lan_confirmation_schedule() -> None:
    # LAN, n>=4: 24 s, then 11.38 s after one confirmation, then 4 s after two.
    lo = suspicion_timeout(4, 10, 1.0)
    s = Suspicion("accuser", confirmations_wanted(4, 10), lo, 6 * lo, start=100.0)
    assert s.deadline == pytest.approx(124.0)
    assert s.confirm("accuser", 101.0) is False  # the accuser does not count
    assert s.confirm("b", 101.0) is True
    assert s.deadline == pytest.approx(111.381)
    assert s.confirm("b", 102.0) is False  # same confirmer twice
    assert s.confirm("c", 102.0) is True
    assert s.deadline == pytest.approx(104.0)
    assert s.confirm("d", 103.0) is False  # beyond k
    assert s.deadline == pytest.approx(104.0)


def test_small_cluster_starts_at_min() -> None:
    s = Suspicion("a", confirmations_wanted(4, 3), 4.0, 24.0, start=0.0)
    assert s.deadline == 4.0
    assert s.confirm("b", 1.0) is False


def test_late_confirmation_fires_now() -> None:
    s = Suspicion("a", 2, 4.0, 24.0, start=0.0)
    assert s.confirm("b", 20.0) is True  # 11.381 total already passed
    assert s.deadline == 20.0
