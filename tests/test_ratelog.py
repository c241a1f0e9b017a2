"""DropLog: counts every drop, logs at most one line per reason per interval."""

from __future__ import annotations

import logging

import pytest

from serfd.base.ratelog import DropLog


def test_counts_every_drop_and_logs_once_per_interval(caplog: pytest.LogCaptureFixture) -> None:
    d = DropLog(logging.getLogger("t"), interval=10.0)
    with caplog.at_level(logging.WARNING):
        assert d.drop("queue_full", 0.0, "dropped %s", "a")
        for i in range(5):
            assert not d.drop("queue_full", 1.0 + i, "dropped %s", "b")
        assert d.drop("other", 2.0, "other")  # reasons are limited separately
        assert d.drop("queue_full", 10.0, "dropped %s", "c")
    assert d.counters == {"queue_full": 7, "other": 1}
    lines = [r.getMessage() for r in caplog.records]
    assert lines == ["dropped a", "other", "dropped c (5 more queue_full since the last such line)"]


def test_shares_a_counter_table() -> None:
    table: dict[str, int] = {"x": 1}
    d = DropLog(logging.getLogger("t"), table)
    d.drop("x", 0.0, "x", n=3)
    assert table == {"x": 4}
