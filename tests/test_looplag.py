"""LoopLag: how late the loop ran the gossip driver's timer, over the last minute; the
agent shows it in stats."""

from __future__ import annotations

import asyncio
import random
import time

from serfd.agent.gossip import GossipDriver
from serfd.agent.looplag import LoopLag
from serfd.core.serf import Serf, SerfConfig
from serfd.memberlist.swim import MemberlistConfig
from serfd.testing.clock import FakeClock


def test_percentiles_by_nearest_rank() -> None:
    lag = LoopLag()
    assert lag.stats(0.0) == {}
    for i in range(100):
        lag.record(i / 1000, now=1.0)
    lag.record(-0.01, now=1.0)  # clocks never go back: a negative lag counts as 0
    st = lag.stats(1.0)
    assert (st["loop_lag_p50_ms"], st["loop_lag_p99_ms"], st["loop_lag_max_ms"]) == (
        "49.0", "98.0", "99.0")


def test_only_the_last_window_counts_and_the_samples_are_bounded() -> None:
    lag = LoopLag(window=60.0, max_samples=50)
    lag.observe(due=10.0, now=10.5)  # a 0.5 s stall at t = 10
    for i in range(40):
        lag.observe(due=11.0 + i, now=11.0 + i)
    assert lag.stats(60.0)["loop_lag_max_ms"] == "500.0"
    assert lag.stats(70.6)["loop_lag_max_ms"] == "0.0"  # the stall is over a minute old
    for i in range(100):
        lag.observe(due=100.0 + i / 10, now=100.0 + i / 10)
    assert len(lag.samples) == 50  # the latest 50


def test_the_driver_reports_how_late_its_timer_ran() -> None:
    async def main() -> None:
        clock = FakeClock()
        mlc = MemberlistConfig.from_profile("lan", name="a", advertise_addr="127.0.0.1")
        serf = Serf(SerfConfig(node_name="a", memberlist=mlc), random.Random(1), clock.now())
        lag = LoopLag()
        driver = GossipDriver(serf, clock=clock, loop_lag=lag)
        driver.pump()  # arms the one timer (not bound: nothing is sent)
        due = clock.next_deadline()
        assert due is not None
        await clock.advance(due - clock.now())  # on time
        assert [x for _, x in lag.samples] == [0.0]
        due = clock.next_deadline()
        assert due is not None
        clock.stall(due - clock.now() + 0.3)  # the loop was blocked past the deadline
        await clock.advance(0.0)
        assert [round(x, 6) for _, x in lag.samples] == [0.0, 0.3]
        assert lag.stats(clock.now())["loop_lag_max_ms"] == "300.0"
        await driver.close()

    asyncio.run(main())


def test_agent_reports_a_stalled_loop() -> None:
    from tests.support import running_agent, until

    async def main() -> None:
        async with running_agent() as agent:
            await until(lambda: bool(agent.loop_lag.samples), "a first loop lag sample")
            # The loop is stuck here. The driver's timer is never armed more than a
            # probe interval (1 s) ahead, so it runs at least 0.5 s late.
            time.sleep(1.5)  # noqa: ASYNC251 - blocking the loop is the point
            n = len(agent.loop_lag.samples)
            await until(lambda: len(agent.loop_lag.samples) != n, "a sample after the stall")
            assert float(agent.stats()["serfd"]["loop_lag_max_ms"]) >= 499.0

    asyncio.run(main())
