"""serfd.agent.joins alone: a fake resolver, a fake gossip driver and a FakeClock; no
sockets, no sleeps. What Joiner asks the driver, the error text it builds, and its retry,
rejoin and backoff schedules."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import pytest

from serfd.agent.joins import Joiner, JoinFailed, join_error_text, parse_join_addr
from serfd.core.serf import JoinError, SerfError
from serfd.testing.clock import FakeClock

Addr = tuple[str, int]


@dataclass
class FakeDriver:
    """Joins what ``reachable`` lists; records every call with the fake time."""

    clock: FakeClock
    reachable: set[Addr] = field(default_factory=set)
    calls: list[tuple[float, list[Addr], bool, bool]] = field(default_factory=list)
    members: int = 1
    is_alive: bool = True
    on_join: Callable[[], None] | None = None

    async def join_addrs(self, addrs: list[Addr], ignore_old: bool, *,
                         intent: bool = True) -> tuple[int, list[JoinError]]:
        if not self.is_alive:
            raise SerfError("Serf can't Join after Leave or Shutdown")
        self.calls.append((self.clock.now(), list(addrs), ignore_old, intent))
        if self.on_join is not None:
            self.on_join()
        ok = [a for a in addrs if a in self.reachable]
        return len(ok), [JoinError(a, f"dial tcp {a[0]}:{a[1]}: connect: connection refused")
                         for a in addrs if a not in self.reachable]

    def num_alive(self) -> int:
        return self.members

    def alive(self) -> bool:
        return self.is_alive


DNS = {"seed.example": ["10.0.0.1", "10.0.0.2"], "other.example": ["10.0.0.9"]}


async def fake_resolve(host: str, port: int) -> list[str]:
    if host in DNS:
        return DNS[host]
    if host[0].isdigit() or ":" in host:
        return [host]
    raise OSError(f"lookup {host}: no such host")


def make(reachable: set[Addr] | None = None) -> tuple[FakeClock, FakeDriver, Joiner]:
    clock = FakeClock(start=0.0)
    driver = FakeDriver(clock, reachable or set())
    return clock, driver, Joiner(driver, clock=clock, default_port=7946, resolver=fake_resolve)


def run(main: Callable[[], Awaitable[None]]) -> None:
    async def wrapped() -> None:
        await main()

    asyncio.run(wrapped())


def test_parse_join_addr_forms() -> None:
    assert parse_join_addr("10.0.0.1", 7946) == (None, "10.0.0.1", 7946)
    assert parse_join_addr("10.0.0.1:8000", 7946) == (None, "10.0.0.1", 8000)
    assert parse_join_addr("seed.example", 7000) == (None, "seed.example", 7000)
    assert parse_join_addr("[::1]:8000", 7946) == (None, "::1", 8000)
    assert parse_join_addr("[::1]", 7946) == (None, "::1", 7946)
    assert parse_join_addr("::1", 7946) == (None, "::1", 7946)
    assert parse_join_addr("n1/10.0.0.1:8000", 7946) == ("n1", "10.0.0.1", 8000)
    with pytest.raises(ValueError):
        parse_join_addr("host:port", 7946)


def test_errors_come_in_the_order_of_the_addresses_given() -> None:
    async def main() -> None:
        _clock, driver, joiner = make({("10.0.0.2", 7946)})
        n, errors = await joiner.join_texts(
            ["10.0.0.5:8000", "nowhere.example", "seed.example", "x:y", "other.example"],
            ignore_old=True)
        assert n == 1
        assert errors == [
            "Failed to join 10.0.0.5: dial tcp 10.0.0.5:8000: connect: connection refused",
            "Failed to resolve nowhere.example: lookup nowhere.example: no such host",
            "Failed to join 10.0.0.1: dial tcp 10.0.0.1:7946: connect: connection refused",
            "Failed to join x:y: bad address",
            "Failed to join 10.0.0.9: dial tcp 10.0.0.9:7946: connect: connection refused",
        ]
        # One Serf join for every IP, in order, with the caller's ignore_old.
        [(_, addrs, ignore_old, intent)] = driver.calls
        assert addrs == [("10.0.0.5", 8000), ("10.0.0.1", 7946), ("10.0.0.2", 7946),
                         ("10.0.0.9", 7946)]
        assert ignore_old and intent

    run(main)


def test_rpc_join_raises_go_text_when_nothing_was_joined() -> None:
    async def main() -> None:
        _clock, driver, joiner = make({("10.0.0.1", 7946)})
        assert await joiner.join(["10.0.0.1"], replay=True) == 1
        assert joiner.last_join == "joined 1"
        assert driver.calls[0][2] is False  # replay: old events are not ignored
        with pytest.raises(JoinFailed) as e:
            await joiner.join(["10.0.0.3", "bad.example"], replay=False)
        assert str(e.value) == (
            "2 errors occurred:\n"
            "\t* Failed to join 10.0.0.3: dial tcp 10.0.0.3:7946: connect: connection refused\n"
            "\t* Failed to resolve bad.example: lookup bad.example: no such host\n\n")
        assert driver.calls[1][2] is True and joiner.last_join == "failed"
        with pytest.raises(JoinFailed, match=r"^1 error occurred:\n\t\* no addresses to join"):
            await joiner.join([], replay=False)

    run(main)


def test_join_error_text_is_go_multierror() -> None:
    assert join_error_text(["a"]) == "1 error occurred:\n\t* a\n\n"
    assert join_error_text(["a", "b"]) == "2 errors occurred:\n\t* a\n\t* b\n\n"


def test_retry_join_backs_off_from_one_second_to_retry_interval() -> None:
    async def main() -> None:
        clock, driver, joiner = make()
        seed = ("10.0.0.1", 7946)

        def on_join() -> None:  # the seed comes up at t=20
            if clock.now() >= 20.0:
                driver.reachable.add(seed)

        driver.on_join = on_join
        task = asyncio.ensure_future(joiner.retry_join(["10.0.0.1"], retry_interval=5.0,
                                                       max_attempts=0))
        await clock.advance(30.0)
        assert task.done() and task.result() is True
        assert [t for t, *_ in driver.calls] == [0.0, 1.0, 3.0, 7.0, 12.0, 17.0, 22.0]
        assert joiner.last_join == "joined 1"

    run(main)


def test_retry_join_gives_up_after_max_attempts() -> None:
    async def main() -> None:
        clock, driver, joiner = make()
        task = asyncio.ensure_future(joiner.retry_join(["10.0.0.1"], retry_interval=30.0,
                                                       max_attempts=3))
        await clock.advance(2.0)
        assert not task.done()  # the third attempt is due at t=3
        await clock.advance(100.0)
        assert task.result() is False
        assert [t for t, *_ in driver.calls] == [0.0, 1.0, 3.0]
        assert clock.pending() == 0  # nothing left sleeping

    run(main)


def test_retry_join_stops_when_serf_is_no_longer_alive() -> None:
    async def main() -> None:
        clock, driver, joiner = make()
        task = asyncio.ensure_future(joiner.retry_join(["10.0.0.1"], retry_interval=30.0,
                                                       max_attempts=0))
        await clock.advance(1.5)
        driver.is_alive = False  # we left meanwhile
        await clock.advance(100.0)
        assert task.result() is False and len(driver.calls) == 2

    run(main)


def test_rejoin_tries_each_previous_member_without_intent_until_one_answers() -> None:
    async def main() -> None:
        clock, driver, joiner = make()
        previous = [("n1", "10.0.0.1:7946"), ("n2", "10.0.0.2:7946")]

        def on_join() -> None:  # n2 comes back at t=2
            if clock.now() >= 2.0:
                driver.reachable.add(("10.0.0.2", 7946))

        driver.on_join = on_join
        task = asyncio.ensure_future(joiner.rejoin(previous, retry_interval=30.0))
        await clock.advance(10.0)
        assert task.result() is True and joiner.last_join == "rejoined"
        # One member per join, no join intent, old events not ignored (handleRejoin).
        assert all(len(addrs) == 1 and not ignore and not intent
                   for _, addrs, ignore, intent in driver.calls)
        rounds = sorted({t for t, *_ in driver.calls})
        assert rounds[:2] == [0.0, 1.0]  # a round, then 1 s, then (2 s later) the next
        assert driver.calls[-1][1] == [("10.0.0.2", 7946)]

    run(main)


def test_rejoin_stops_once_someone_joined_us() -> None:
    async def main() -> None:
        clock, driver, joiner = make()
        task = asyncio.ensure_future(joiner.rejoin([("n1", "10.0.0.1:7946")],
                                                   retry_interval=30.0))
        await clock.advance(0.5)
        driver.members = 2  # a config join, or a peer, got us in
        await clock.advance(10.0)
        assert task.result() is True and len(driver.calls) == 1
        assert joiner.last_join == "none yet"

    run(main)


def test_join_after_reload_logs_either_way(caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> None:
        _clock, _driver, joiner = make({("10.0.0.1", 7946)})
        await joiner.join_after_reload(["10.0.0.1"])
        await joiner.join_after_reload(["10.0.0.4"])

    with caplog.at_level("INFO", "serfd.agent"):
        run(main)
    lines = [r.getMessage() for r in caplog.records]
    assert "reload: joined 1 node(s) of the new join list" in lines
    assert any(m.startswith("reload: joining the new join list failed: 1 error occurred: "
                            "* Failed to join 10.0.0.4") for m in lines)


@pytest.mark.parametrize("replay", [False, True])
def test_configured_joins_ignore_old_events_unless_replay(replay: bool) -> None:
    """Serf's replay_on_join: the start (retry) join and the reload join of the configured
    list are Serf joins with ignoreOld = not replay."""
    async def main() -> None:
        _clock, driver, joiner = make({("10.0.0.1", 7946)})
        assert await joiner.retry_join(["10.0.0.1"], retry_interval=30.0, max_attempts=0,
                                       replay=replay)
        await joiner.join_after_reload(["10.0.0.1"], replay=replay)
        assert [ignore for _, _, ignore, _ in driver.calls] == [not replay, not replay]

    run(main)
