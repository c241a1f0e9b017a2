"""sd_notify, watchdog, reload and STATUS: the Notifier alone, the reload plan, and a
real agent on loopback talking to a fake NOTIFY_SOCKET (an AF_UNIX datagram socket
owned by the test), in-process and as a `serfd` process driven by signals and serfctl.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from serfd.agent.agent import Agent
from serfd.agent.config import Config, ConfigError, load_config
from serfd.agent.reload import plan_reload
from serfd.agent.systemd import Notifier, monotonic_usec, watchdog_interval
from tests.support import free_port, wait_until, write_base

# ----------------------------------------------------------------------------------
# Helpers


class NotifySocket:
    """A stand-in for systemd's notification socket."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.05)
        self.messages: list[str] = []

    def drain(self) -> list[str]:
        while True:
            try:
                self.messages.append(self.sock.recv(4096).decode())
            except (TimeoutError, BlockingIOError):
                return self.messages

    def wait_for(self, prefix: str, timeout: float = 10.0, after: int = 0) -> str:
        """The first message (from index `after` on) that starts with prefix."""
        def found() -> str | None:
            self.drain()
            return next((m for m in self.messages[after:] if m.startswith(prefix)), None)

        wait_until(found, timeout, desc=f"{prefix!r} notified", retry_on=())
        found_message = found()
        assert found_message is not None
        return found_message

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def notify(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[NotifySocket]:
    ns = NotifySocket(tmp_path / "notify")
    monkeypatch.setenv("NOTIFY_SOCKET", str(ns.path))
    yield ns
    ns.close()


# ----------------------------------------------------------------------------------
# Notifier


def test_watchdog_interval_is_half_of_watchdog_usec() -> None:
    assert watchdog_interval({"WATCHDOG_USEC": "3000000"}) == 1.5
    assert watchdog_interval({}) is None
    assert watchdog_interval({"WATCHDOG_USEC": "0"}) is None
    assert watchdog_interval({"WATCHDOG_USEC": "junk"}) is None
    # WATCHDOG_PID names another process: not for us.
    assert watchdog_interval({"WATCHDOG_USEC": "3000000", "WATCHDOG_PID": "1"}) is None
    mine = {"WATCHDOG_USEC": "3000000", "WATCHDOG_PID": str(os.getpid())}
    assert watchdog_interval(mine) == 1.5


def test_notifier_messages_and_environment_scrubbed(
    notify: NotifySocket, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "200000")
    n = Notifier.from_env()
    # Handlers (children) must not inherit the sd_notify variables.
    assert "NOTIFY_SOCKET" not in os.environ and "WATCHDOG_USEC" not in os.environ
    assert n.active and n.watchdog == pytest.approx(0.1)
    n.ready("members: 1 alive")
    n.status("members: 1 alive")  # unchanged: not sent again
    n.status("members: 2 alive")
    before = monotonic_usec()
    n.reloading()
    n.ready("members: 2 alive")
    n.stopping()
    msgs = notify.drain()
    assert msgs[0] == "READY=1\nSTATUS=members: 1 alive"
    assert msgs[1] == "STATUS=members: 2 alive"
    fields = dict(line.split("=", 1) for line in msgs[2].splitlines())
    assert fields["RELOADING"] == "1"
    assert 0 <= int(fields["MONOTONIC_USEC"]) - before < 5_000_000
    assert msgs[3].startswith("READY=1\n")
    assert msgs[4].startswith("STOPPING=1")
    assert len(msgs) == 5


def test_keepalive_pings_once_per_interval_and_sends_status_on_change(
    notify: NotifySocket, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The schedule on a fake clock: one WATCHDOG=1 per interval (half of WATCHDOG_USEC),
    STATUS= only when the text changed. No wall clock, so no load can bend it."""
    monkeypatch.setenv("WATCHDOG_USEC", "100000")  # ping every 50 ms
    n = Notifier.from_env()
    texts = iter(["a", "a", "b", "b", "b", "c"])
    slept: list[float] = []

    async def fake_sleep(interval: float) -> None:
        slept.append(interval)
        if len(slept) == 6:
            raise asyncio.CancelledError  # the agent cancels the task when it stops

    with pytest.raises(asyncio.CancelledError):
        asyncio.run(n.keepalive(lambda: next(texts), sleep=fake_sleep))
    assert slept == [0.05] * 6
    assert notify.drain() == [
        "WATCHDOG=1", "STATUS=a",
        "WATCHDOG=1",
        "WATCHDOG=1", "STATUS=b",
        "WATCHDOG=1",
        "WATCHDOG=1",
        "WATCHDOG=1", "STATUS=c",
    ]


def test_keepalive_pings_come_from_the_loop(
    notify: NotifySocket, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A blocked loop sends nothing (that is what lets systemd restart a wedged serfd),
    and the pings resume when it runs again. Only conditions with deadlines: a slow
    machine makes it wait longer, never fail."""
    monkeypatch.setenv("WATCHDOG_USEC", "100000")  # ping every 50 ms
    n = Notifier.from_env()

    async def pings_reach(count: int) -> None:
        deadline = time.monotonic() + 30.0
        while notify.drain().count("WATCHDOG=1") < count:
            assert time.monotonic() < deadline, f"fewer than {count} pings in 30 s"
            await asyncio.sleep(0.01)

    async def main() -> None:
        task = asyncio.ensure_future(n.keepalive(lambda: "ok"))
        await pings_reach(2)
        before = len(notify.drain())
        time.sleep(0.3)  # noqa: ASYNC251 - blocking the loop on purpose: 6 intervals
        assert len(notify.drain()) == before  # nothing while the loop was blocked
        await pings_reach(notify.messages.count("WATCHDOG=1") + 1)
        task.cancel()

    asyncio.run(main())


def test_notifier_without_systemd_is_silent(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    n = Notifier.from_env()
    assert not n.active
    n.ready("x")
    n.reloading()
    n.stopping()  # no socket: nothing raises


def test_keepalive_without_systemd_ends_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """Nobody to tell: no wake-ups every interval, no STATUS lines built."""
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    monkeypatch.setenv("WATCHDOG_USEC", "100000")
    n = Notifier.from_env()
    built: list[int] = []
    slept: list[float] = []

    def status() -> str:
        built.append(1)
        return "x"

    async def fake_sleep(interval: float) -> None:
        slept.append(interval)
        if len(slept) == 3:
            raise asyncio.CancelledError

    asyncio.run(n.keepalive(status, sleep=fake_sleep))  # returns: no CancelledError
    assert built == [] and slept == []


def test_notifier_survives_a_vanished_socket(notify: NotifySocket) -> None:
    n = Notifier.from_env()
    notify.close()
    notify.path.unlink()
    n.ready("x")  # logged once, never raised
    n.status("y")


# ----------------------------------------------------------------------------------
# Reload plan


def test_plan_reload_splits_live_and_restart_only_keys() -> None:
    running = Config(node_name="a", bind=("127.0.0.1", 7946), log_level="info")
    new = Config(node_name="b", bind=("127.0.0.2", 7946), log_level="debug",
                 tags={"role": "web"}, join=("10.0.0.1",))
    plan = plan_reload(running, new)
    assert set(plan.changed) == {"log_level", "tags", "join"}
    assert set(plan.restart_needed) == {"node_name", "bind"}
    # Restart-only keys keep their running values; live ones take the new ones.
    assert plan.applied.node_name == "a" and plan.applied.bind == ("127.0.0.1", 7946)
    assert plan.applied.log_level == "debug" and dict(plan.applied.tags) == {"role": "web"}
    assert plan_reload(running, running).changed == ()
    assert "rpc.tcp" in plan_reload(running, Config(node_name="a", bind=("127.0.0.1", 7946),
                                                    rpc_tcp=("127.0.0.1", 7373))).restart_needed


# ----------------------------------------------------------------------------------
# A real agent, in-process


def test_agent_ready_reload_and_stop_notifications(
    tmp_path: Path, notify: NotifySocket
) -> None:
    d = tmp_path / "serfd.d"
    port = free_port()
    write_base(d, tmp_path, port)
    hook_calls: list[tuple[Config, Config]] = []

    async def main() -> None:
        agent = Agent(load_config(d), config_dir=d, notifier=Notifier.from_env())
        agent.reload_hooks.append(lambda old, new: hook_calls.append((old, new)))
        run = asyncio.ensure_future(agent.run())
        for _ in range(200):
            if any(m.startswith("READY=1") for m in notify.drain()):
                break
            await asyncio.sleep(0.02)
        ready = notify.messages[0]
        assert ready.startswith("READY=1\nSTATUS=members: 1 alive, 0 failed, 0 left")
        assert (tmp_path / "serfd.sock").exists()

        # Live keys applied; a restart-only key named in the result and STATUS.
        (d / "20-new.toml").write_text(
            f'log_level = "debug"\nbind = "127.0.0.1:{port + 1}"\n[tags]\nrole = "b"\n'
        )
        mark = len(notify.drain())
        assert await agent.reload() == []
        assert dict(agent.serf.tags) == {"role": "b"}
        assert agent.config.bind == ("127.0.0.1", port)  # still the bound one
        assert agent.restart_needed == ("bind",)
        msgs = notify.drain()[mark:]
        assert msgs[0].startswith("RELOADING=1\nMONOTONIC_USEC=")
        assert msgs[-1].startswith("READY=1\nSTATUS=")
        assert "restart needed for: bind" in msgs[-1]
        assert len(hook_calls) == 1
        assert hook_calls[0][1].log_level == "debug" and hook_calls[0][0].log_level == "info"

        # A broken drop-in: every error reported, old config kept, READY=1 anyway.
        (d / "99-broken.toml").write_text('bnid = "x"\nretry_interval = "soon"\n')
        mark = len(notify.drain())
        before = agent.config
        errors = await agent.reload()
        assert len(errors) == 2 and all("99-broken.toml" in e for e in errors)
        assert agent.config is before and dict(agent.serf.tags) == {"role": "b"}
        msgs = notify.drain()[mark:]
        assert msgs[0].startswith("RELOADING=1") and msgs[-1].startswith("READY=1")
        assert "last reload failed (2 errors)" in msgs[-1]
        assert len(hook_calls) == 1  # hooks never see a refused config

        # Fixed again: the failure note goes away.
        (d / "99-broken.toml").unlink()
        assert await agent.reload() == []
        assert "reload failed" not in agent.status_line()

        # A hook reporting config errors makes the reload answer with them.
        def refuse(old: Config, new: Config) -> None:
            raise ConfigError(["handlers: bad handler"])

        agent.reload_hooks.append(refuse)
        assert await agent.reload() == ["handlers: bad handler"]

        mark = len(notify.drain())
        agent._on_signal(signal.SIGINT)
        assert await asyncio.wait_for(run, 15) == 0
        assert notify.drain()[mark].startswith("STOPPING=1")

    asyncio.run(main())


# ----------------------------------------------------------------------------------
# A real `serfd` process: SIGHUP, `serfctl reload`, journald-style logging


def _serfctl(sock: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "serfctl", "--socket", str(sock), *args],
                          capture_output=True, text=True, timeout=30, check=False)


def test_serfd_process_reload_by_sighup_and_serfctl(tmp_path: Path, notify: NotifySocket) -> None:
    d = tmp_path / "serfd.d"
    write_base(d, tmp_path, free_port())
    log_path = tmp_path / "serfd.log"
    sock = tmp_path / "serfd.sock"
    with open(log_path, "w") as log_file:
        st = os.fstat(log_file.fileno())
        env = {**os.environ, "NOTIFY_SOCKET": str(notify.path), "WATCHDOG_USEC": "400000",
               "JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}
        proc = subprocess.Popen([sys.executable, "-m", "serfd", "--config-dir", str(d)],
                                stdin=subprocess.DEVNULL, stdout=log_file, stderr=log_file, env=env)
    try:
        notify.wait_for("READY=1")
        notify.wait_for("WATCHDOG=1")

        (d / "20-tags.toml").write_text('[tags]\nrole = "hup"\n')
        mark = len(notify.drain())
        proc.send_signal(signal.SIGHUP)
        notify.wait_for("RELOADING=1", after=mark)
        notify.wait_for("READY=1", after=mark)
        assert "role=hup" in _serfctl(sock, "members").stdout

        (d / "20-tags.toml").write_text('[tags]\nrole = "ctl"\n')
        r = _serfctl(sock, "reload")
        assert (r.returncode, r.stdout.strip()) == (0, "Configuration reloaded")
        assert "role=ctl" in _serfctl(sock, "members").stdout  # applied when reload returned

        (d / "30-broken.toml").write_text("bind = \n")
        r = _serfctl(sock, "reload")
        assert r.returncode == 1
        assert "keeps running the previous one" in r.stderr
        assert f"{d / '30-broken.toml'}:1:" in r.stderr
        assert "role=ctl" in _serfctl(sock, "members").stdout

        mark = len(notify.drain())
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
        notify.wait_for("STOPPING=1", after=mark)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = log_path.read_text()
    # Under journald: "<N>" priorities, no timestamps.
    assert "<3>serfd.agent: reload: " in text and "30-broken.toml" in text
    assert "<6>serfd.agent: reload done" in text
    assert not any(line[:4].isdigit() for line in text.splitlines())


def test_serfd_logs_timestamps_when_stderr_is_not_the_journal(tmp_path: Path) -> None:
    d = tmp_path / "serfd.d"
    write_base(d, tmp_path, free_port())
    # JOURNAL_STREAM inherited but stderr redirected elsewhere: keep the human format.
    env = {**os.environ, "JOURNAL_STREAM": "1:2"}
    env.pop("NOTIFY_SOCKET", None)
    proc = subprocess.Popen([sys.executable, "-m", "serfd", "--config-dir", str(d)],
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, env=env, text=True)
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()
        proc.send_signal(signal.SIGINT)
        proc.wait(20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert first[:4].isdigit() and "[INFO]" in first and not first.startswith("<")
