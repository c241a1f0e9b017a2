"""LoopLag: the loop's lateness over a bounded window, and the agent shows it in stats."""

from __future__ import annotations

import asyncio
import time

from serfd.agent.looplag import LoopLag


def test_lag_is_how_much_later_than_asked_the_loop_woke() -> None:
    now = [0.0]
    extra = iter([0.0, 0.002, 0.5, 0.001] + [0.0] * 96)

    async def sleep(dt: float) -> None:
        now[0] += dt + next(extra)

    lag = LoopLag(interval=0.1, window=50)

    async def main() -> None:
        task = asyncio.ensure_future(lag.run(lambda: now[0], sleep))
        # sleep(0) only hands the loop to the fake-clock task: no time passes, nothing to await.
        while len(lag.samples) < 50 or now[0] < 9.9:  # noqa: ASYNC110 - see above
            await asyncio.sleep(0)
        task.cancel()

    asyncio.run(main())
    assert len(lag.samples) == 50  # the ring keeps the latest 50 of 100
    assert max(lag.samples) < 1e-9  # the 0.5 s stall is older than the window
    lag.record(0.5)
    st = lag.stats()
    assert st["loop_lag_max_ms"] == "500.0" and st["loop_lag_p50_ms"] == "0.0"


def test_percentiles_by_nearest_rank() -> None:
    lag = LoopLag(window=100)
    assert lag.stats() == {}
    for i in range(100):
        lag.record(i / 1000)
    lag.record(-0.01)  # clocks never go back: a negative lag counts as 0
    st = lag.stats()
    assert (st["loop_lag_p50_ms"], st["loop_lag_p99_ms"], st["loop_lag_max_ms"]) == (
        "49.0", "98.0", "99.0")


def test_agent_reports_a_stalled_loop() -> None:
    from tests.support import running_agent, until

    async def main() -> None:
        async with running_agent() as agent:
            await until(lambda: bool(agent.loop_lag.samples), "a first loop lag sample")
            # The loop is stuck here: the probe asleep since before wakes at least
            # 0.4 s minus its own interval (0.1 s) too late.
            time.sleep(0.4)  # noqa: ASYNC251 - blocking the loop is the point
            n = len(agent.loop_lag.samples)
            await until(lambda: len(agent.loop_lag.samples) != n, "a sample after the stall")
            assert float(agent.stats()["serfd"]["loop_lag_max_ms"]) >= 299.0

    asyncio.run(main())
