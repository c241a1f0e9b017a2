"""serfd.testing.clock.FakeClock: deadlines fire in order and only when time is advanced."""

from __future__ import annotations

import asyncio

from serfd.agent.clock import Clock, LoopClock
from serfd.testing.clock import FakeClock


def test_callbacks_fire_in_deadline_order_only_when_advanced() -> None:
    async def main() -> list[tuple[str, float]]:
        clock = FakeClock(start=10.0)
        seen: list[tuple[str, float]] = []
        clock.call_at(12.0, lambda: seen.append(("b", clock.now())))
        clock.call_at(11.0, lambda: seen.append(("a", clock.now())))
        cancelled = clock.call_at(11.5, lambda: seen.append(("x", clock.now())))
        cancelled.cancel()
        await clock.advance(0.5)
        assert seen == []
        await clock.advance(5.0)
        assert clock.now() == 15.5
        return seen

    assert asyncio.run(main()) == [("a", 11.0), ("b", 12.0)]


def test_sleepers_wake_at_their_deadline() -> None:
    async def main() -> list[float]:
        clock = FakeClock(start=0.0)
        woke: list[float] = []

        async def sleeper(d: float) -> None:
            await clock.sleep(d)
            woke.append(clock.now())

        tasks = [asyncio.create_task(sleeper(d)) for d in (3.0, 1.0)]
        await clock.advance(2.0)
        assert woke == [1.0]
        assert clock.pending() == 1
        await clock.advance(2.0)
        await asyncio.gather(*tasks)
        return woke

    assert asyncio.run(main()) == [1.0, 3.0]


def test_loop_clock_is_the_loops_time() -> None:
    async def main() -> None:
        clock: Clock = LoopClock()
        loop = asyncio.get_running_loop()
        assert abs(clock.now() - loop.time()) < 1.0
        fired = asyncio.Event()
        clock.call_at(clock.now(), fired.set)
        await asyncio.wait_for(fired.wait(), 5)

    asyncio.run(main())
