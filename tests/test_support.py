"""The shared waits in tests/support.py: what they return, retry and report."""

from __future__ import annotations

import asyncio
import itertools

import pytest

from tests.support import WaitTimeout, until, wait_until


def test_wait_until_polls_until_truthy_and_retries_errors() -> None:
    calls = itertools.count(1)

    def third_time() -> bool:
        n = next(calls)
        if n == 1:
            raise ConnectionRefusedError("not up yet")
        return n >= 3

    assert wait_until(third_time, timeout=10, interval=0) >= 0.0
    assert next(calls) == 4


def test_wait_until_names_the_condition_and_last_value_on_timeout() -> None:
    seen = ["first"]
    with pytest.raises(WaitTimeout, match=r"the thing \(last seen first\) not met .*last: 0"):
        wait_until(lambda: 0, timeout=0, desc=lambda: f"the thing (last seen {seen[-1]})")


def test_wait_until_with_no_retry_fails_at_once() -> None:
    def exited() -> bool:
        raise RuntimeError("the process exited")

    with pytest.raises(RuntimeError, match="exited"):
        wait_until(exited, timeout=60, retry_on=())


def test_until_waits_for_the_loop_to_make_progress() -> None:
    async def main() -> None:
        done: list[int] = []
        asyncio.get_running_loop().call_soon(done.append, 1)
        await until(lambda: done, "the callback")
        with pytest.raises(WaitTimeout, match="never"):
            await until(lambda: False, "never", limit=0)

    asyncio.run(main())
