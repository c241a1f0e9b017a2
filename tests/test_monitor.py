"""serfd.agent.monitor.LogRing: lines logged on other threads reach subscribers on the loop's
thread only, in order, at most once; the queue between the threads is bounded."""

from __future__ import annotations

import asyncio
import logging
import threading

from serfd.agent.monitor import LogRing


def make_logger(ring: LogRing, name: str) -> logging.Logger:
    lg = logging.getLogger(name)
    lg.propagate = False
    lg.handlers[:] = [ring]
    lg.setLevel(logging.DEBUG)
    return lg


def test_lines_from_other_threads_are_handed_out_on_the_loop_thread() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        counters: dict[str, int] = {}
        ring = LogRing(loop=loop, counters=counters, pending_limit=10_000)
        lg = make_logger(ring, "test.monitor.threads")
        lg.info("before")
        got: list[tuple[int, str]] = []
        ring.subscribe(logging.INFO, lambda line: got.append((threading.get_ident(), line)))
        done = asyncio.Event()

        def writer(k: int) -> None:
            for i in range(500):
                lg.info("t%d line %d", k, i)
            loop.call_soon_threadsafe(done.set)

        threads = [threading.Thread(target=writer, args=(k,)) for k in range(2)]
        for t in threads:
            t.start()
        lg.info("from the loop")
        for t in threads:
            await asyncio.to_thread(t.join)
        await done.wait()
        for _ in range(5):
            await asyncio.sleep(0)
        me = threading.get_ident()
        assert {tid for tid, _ in got} == {me}  # never on the writer threads
        texts = [line.split(": ", 1)[1] for _, line in got]
        assert texts[0] == "before"  # the replay
        assert len(texts) == len(set(texts)) == 1 + 1 + 1000  # each line once
        for k in range(2):
            mine = [t for t in texts if t.startswith(f"t{k} ")]
            assert mine == [f"t{k} line {i}" for i in range(500)]  # in order
        assert counters == {}
        assert ring.pending() == 0

    asyncio.run(main())


def test_lines_queued_for_a_blocked_loop_are_bounded_and_counted() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        counters: dict[str, int] = {}
        ring = LogRing(size=64, loop=loop, counters=counters, pending_limit=100)
        lg = make_logger(ring, "test.monitor.blocked")
        got: list[str] = []
        ring.subscribe(logging.DEBUG, got.append)
        # The loop is blocked (join without awaiting) while a thread logs 5,000 lines.
        t = threading.Thread(target=lambda: [lg.debug("n %d", i) for i in range(5000)])
        t.start()
        t.join()
        assert ring.pending() == 100
        assert counters == {"monitor_lines_dropped": 4900}
        assert len(ring._ring) == 64
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        assert [g.split(": ", 1)[1] for g in got] == [f"n {i}" for i in range(100)]
        assert ring.pending() == 0

    asyncio.run(main())


def test_a_line_logged_by_a_subscriber_is_queued_not_nested() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        ring = LogRing(loop=loop)
        lg = make_logger(ring, "test.monitor.nested")
        got: list[str] = []
        depth = 0

        def cb(line: str) -> None:
            nonlocal depth
            depth += 1
            assert depth == 1
            got.append(line.split(": ", 1)[1])
            if len(got) < 3:
                lg.warning("dropping logs to a slow client %d", len(got))
            depth -= 1

        ring.subscribe(logging.INFO, cb)
        lg.info("first")
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        assert got == ["first", "dropping logs to a slow client 1",
                       "dropping logs to a slow client 2"]

    asyncio.run(main())


def test_a_broken_subscriber_is_counted_and_others_still_get_lines() -> None:
    async def main() -> None:
        counters: dict[str, int] = {}
        ring = LogRing(loop=asyncio.get_running_loop(), counters=counters)
        lg = make_logger(ring, "test.monitor.broken")
        got: list[str] = []

        def broken(line: str) -> None:
            raise RuntimeError("boom")

        ring.subscribe(logging.INFO, broken)
        ring.subscribe(logging.INFO, got.append)
        lg.info("x")
        assert len(got) == 1 and counters == {"monitor_callback_errors": 1}

    asyncio.run(main())
