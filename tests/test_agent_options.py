"""Serf's agent options in a real, in-process agent (127.0.0.1, ephemeral ports, a
temporary state directory): which stop signal leaves the cluster
(``skip_leave_on_interrupt``, ``leave_on_terminate``), whether the configured joins
replay old user events (``replay_on_join``), host names in ``bind`` and ``advertise``
("localhost" only: no DNS), and the paths --check-config shows."""

from __future__ import annotations

import asyncio
import dataclasses
import signal
import socket
import tempfile
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

import pytest

from serfd.agent.agent import Agent
from serfd.agent.config import Config, derived_paths, load_config
from serfd.agent.snapshot import parse_snapshot
from serfd.agent.statelock import StateDirLock
from serfd.agent.systemd import Notifier
from tests.support import free_port, until, write_base


def _config(d: str, **options: Any) -> Config:
    base: dict[str, Any] = {"node_name": "a", "bind": ("127.0.0.1", 0), "state_dir": Path(d),
                            "rpc_socket": Path(d) / "s.sock", "log_level": "warn"}
    return Config(**{**base, **options})


@pytest.mark.parametrize(("sig", "options", "leaves"), [
    (signal.SIGINT, {}, True),
    (signal.SIGINT, {"skip_leave_on_interrupt": True}, False),
    (signal.SIGINT, {"leave_on_terminate": False}, True),
    (signal.SIGTERM, {}, True),
    (signal.SIGTERM, {"leave_on_terminate": False}, False),
    (signal.SIGTERM, {"skip_leave_on_interrupt": True}, True),
], ids=["int", "int-skip", "int-no-term", "term", "term-no-leave", "term-skip-int"])
def test_which_stop_signal_leaves_the_cluster(sig: int, options: dict[str, Any],
                                              leaves: bool) -> None:
    """A graceful leave puts the leave marker in the snapshot (a restart does not rejoin);
    a stop without leaving does not (peers see the node fail, and it rejoins at start)."""

    async def main() -> tuple[int, bool]:
        with tempfile.TemporaryDirectory(prefix="ago") as d:
            agent = Agent(_config(d, **options), notifier=Notifier())
            run = asyncio.ensure_future(agent.run())
            await until(lambda: agent._started, "the agent started")
            agent._on_signal(sig)
            code = await asyncio.wait_for(run, 30)
            state, _ = parse_snapshot((Path(d) / "snapshot").read_bytes())
            return code, state.left

    assert asyncio.run(main()) == (0, leaves)


class _JoinSpy:
    """Stands in for the agent's Joiner: records the replay flag of each configured join."""

    def __init__(self) -> None:
        self.replays: list[tuple[str, bool]] = []
        self.last_join = "none yet"

    async def retry_join(self, texts: list[str], *, retry_interval: float,
                         max_attempts: int, replay: bool = False) -> bool:
        self.replays.append(("start", replay))
        return True

    def join_after_reload(self, texts: list[str], *,
                          replay: bool = False) -> Coroutine[Any, Any, None]:
        self.replays.append(("reload", replay))
        return asyncio.sleep(0)


@pytest.mark.parametrize("replay", [False, True])
def test_configured_joins_replay_as_replay_on_join(tmp_path: Path, replay: bool) -> None:
    d = tmp_path / "serfd.d"
    write_base(d, tmp_path, free_port(), log_level='"warn"',
               replay_on_join=str(replay).lower())

    async def main() -> list[tuple[str, bool]]:
        agent = Agent(load_config(d), config_dir=d, notifier=Notifier())
        await agent.start()
        try:
            spy = _JoinSpy()
            agent.joins = spy  # type: ignore[assignment]
            await agent._retry_join()
            (d / "20-join.toml").write_text('join = ["127.0.0.1:1"]\n')
            assert await agent.reload() == []
            return spy.replays
        finally:
            await agent._shutdown()

    assert asyncio.run(main()) == [("start", replay), ("reload", replay)]


def test_the_agent_uses_the_paths_check_config_shows(tmp_path: Path) -> None:
    """--check-config's derived paths are the ones a started agent really uses."""
    d = tmp_path / "serfd.d"
    write_base(d, tmp_path, free_port(), log_level='"warn"',
               encrypt_key='"6hRTJPebtwdfvbZB72SW+nNMkVu1HVCgZLu9MmArzeg="')
    cfg = load_config(d)

    async def main() -> dict[str, str]:
        agent = Agent(cfg, config_dir=d, notifier=Notifier())
        await agent.start()
        try:
            return {
                "state_dir": str(cfg.state_dir),
                "snapshot_path": str(agent.recorder.path),
                "keyring_file": str(agent.keyring_path),
                "tags_file": str(agent.tags.path),
                "handlers_dir": str(agent.events.handlers_dir()),
                "rpc.socket": str(cfg.rpc_socket),
            }
        finally:
            await agent._shutdown()

    used = asyncio.run(main())
    shown = dict(derived_paths(cfg, d))
    lock = StateDirLock.acquire(cfg.state_dir)  # as serfd's main takes it
    lock.release()
    assert shown.pop("state lock") == str(lock.path)
    assert shown == used
    assert Path(used["keyring_file"]).exists() and Path(used["rpc.socket"]).parent.is_dir()



def test_bind_and_advertise_host_names_are_resolved_at_start() -> None:
    port = free_port()

    async def main() -> list[tuple[str, int]]:
        with tempfile.TemporaryDirectory(prefix="ago") as d:
            agent = Agent(_config(d, bind=("localhost", port), advertise=("localhost", port)),
                          notifier=Notifier())
            await agent.start()
            try:
                member = agent.serf.local_member()
                assert agent.gossip is not None and agent.gossip._udp is not None
                return [agent.bind_addr, (member.addr, member.port),
                        agent.gossip._udp.get_extra_info("sockname")[:2]]
            finally:
                await agent._shutdown()

    assert asyncio.run(main()) == [("127.0.0.1", port)] * 3


def test_a_host_name_that_does_not_resolve_stops_the_start(
        monkeypatch: pytest.MonkeyPatch) -> None:
    def no_such_host(host: str) -> list[Any]:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr("serfd.agent.addresses._getaddrinfo", no_such_host)

    async def main() -> None:
        with tempfile.TemporaryDirectory(prefix="ago") as d:
            cfg = dataclasses.replace(_config(d, bind=("db.example", free_port())),
                                      sources={"bind": "/etc/serfd.d/50-a.toml"})
            agent = Agent(cfg, notifier=Notifier())
            with pytest.raises(SystemExit) as e:
                await agent.start()
            assert str(e.value) == ('serfd: /etc/serfd.d/50-a.toml: bind: cannot resolve host '
                                    'name "db.example": Name or service not known')
            assert agent.gossip is None and not (Path(d) / "s.sock").exists()

    asyncio.run(main())
