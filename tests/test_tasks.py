"""serfd.agent.tasks.TaskSet: tasks are kept until they end, failures logged and counted."""

from __future__ import annotations

import asyncio
import logging

import pytest

from serfd.agent.tasks import TaskSet


def test_a_failing_task_is_logged_counted_and_forgotten(caplog: pytest.LogCaptureFixture) -> None:
    counters: dict[str, int] = {}

    async def boom() -> None:
        raise RuntimeError("bug")

    async def ok() -> None:
        return None

    async def main() -> int:
        tasks = TaskSet(logging.getLogger("t"), "probe", counters=counters, error_key="errs")
        t1, t2 = tasks.spawn(boom()), tasks.spawn(ok())
        assert len(tasks) == 2
        await asyncio.wait({t1, t2})
        await asyncio.sleep(0)  # done callbacks run
        return len(tasks)

    with caplog.at_level(logging.ERROR, "t"):
        assert asyncio.run(main()) == 0
    assert counters == {"errs": 1}
    assert [r.getMessage() for r in caplog.records] == ["probe task failed: RuntimeError('bug')"]


def test_cancel_all_cancels_what_is_left_and_that_is_no_failure() -> None:
    counters: dict[str, int] = {}

    async def main() -> None:
        tasks = TaskSet(logging.getLogger("t"), "probe", counters=counters, error_key="errs")
        never = asyncio.Event()
        t = tasks.spawn(never.wait())
        await asyncio.sleep(0)
        assert tasks.cancel_all() == [t]
        with pytest.raises(asyncio.CancelledError):
            await t
        assert len(tasks) == 0

    asyncio.run(main())
    assert counters == {}
