"""`serfd --daemonize [--pidfile PATH] [--log-file PATH]`: the classic daemon mode."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import free_port, wait_until, write_base


def serfd(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "JOURNAL_STREAM")}
    return subprocess.run([sys.executable, "-m", "serfd", *args], capture_output=True,
                          text=True, timeout=60, check=False, env=env)


def proc_status(pid: int) -> dict[str, str]:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        out[key] = value.strip()
    return out


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    # A zombie whose parent (init) has not reaped it yet counts as gone.
    return proc_status(pid).get("State", "").startswith("Z")


def test_daemonize_detaches_once_ready_and_cleans_up(tmp_path: Path) -> None:
    d = tmp_path / "serfd.d"
    port = free_port()
    write_base(d, tmp_path, port)
    pidfile, logfile = tmp_path / "serfd.pid", tmp_path / "serfd.log"
    args = ("--config-dir", str(d), "--daemonize", "--pidfile", str(pidfile),
            "--log-file", str(logfile))
    r = serfd(*args)
    assert r.returncode == 0, r.stderr
    pid = int(pidfile.read_text())
    try:
        # Returned only once ready: the RPC socket is there already.
        assert (tmp_path / "serfd.sock").exists()
        st = proc_status(pid)
        assert st["Umask"] == "0022"
        assert os.readlink(f"/proc/{pid}/cwd") == "/"
        # A new session it does not lead (the second fork): it can never regain a terminal.
        assert os.getsid(pid) not in (os.getsid(0), pid)
        assert os.readlink(f"/proc/{pid}/fd/0") == "/dev/null"
        assert os.readlink(f"/proc/{pid}/fd/2") == str(logfile)
        text = logfile.read_text()
        assert "RPC listening on unix:" in text and text[:4].isdigit()  # timestamps

        # A second one on the same state directory is refused (exit 2) before it forks:
        # the daemon, not the foreground process that exited, holds the lock.
        r2 = serfd(*args)
        assert r2.returncode == 2, r2.stderr
        assert f"state directory {tmp_path / 'state'} is in use by serfd pid {pid}" in r2.stderr
        # One on another state directory but with the same PID file: refused too.
        d2 = tmp_path / "other.d"
        d2.mkdir()
        (d2 / "10-base.toml").write_text((d / "10-base.toml").read_text())
        (d2 / "20-state.toml").write_text(f'state_dir = "{tmp_path}/state2"\n')
        r2 = serfd("--config-dir", str(d2), *args[2:])
        assert r2.returncode == 1 and f"already running as PID {pid}" in r2.stderr

        # SIGHUP reloads in daemon mode too.
        (d / "20-tags.toml").write_text('[tags]\nrole = "daemon"\n')
        os.kill(pid, signal.SIGHUP)
        wait_until(lambda: "reload done" in logfile.read_text(), 10, 0.05, desc="reload done")
        assert "reload done: applied tags" in logfile.read_text()
    finally:
        os.kill(pid, signal.SIGTERM)
    wait_until(lambda: gone(pid), 20.0, 0.05, desc=f"pid {pid} gone")
    assert not pidfile.exists()
    assert "serfd stopped" in logfile.read_text()


def test_daemonize_reports_a_startup_failure(tmp_path: Path) -> None:
    d = tmp_path / "serfd.d"
    write_base(d, tmp_path, free_port())
    # The RPC socket's directory is a file: binding fails after the fork.
    (tmp_path / "blocker").write_text("")
    with (d / "10-base.toml").open("a") as f:
        f.write(f'socket = "{tmp_path}/blocker/serfd.sock"\n')
    (d / "10-base.toml").write_text(
        (d / "10-base.toml").read_text().replace(f'socket = "{tmp_path}/serfd.sock"\n', "")
    )
    r = serfd("--config-dir", str(d), "--daemonize", "--log-file", str(tmp_path / "log"))
    assert r.returncode == 1
    assert r.stderr.startswith("serfd: ") and "blocker" in r.stderr


def test_daemonize_refuses_an_unwritable_log_file_before_forking(tmp_path: Path) -> None:
    d = tmp_path / "serfd.d"
    write_base(d, tmp_path, free_port())
    r = serfd("--config-dir", str(d), "--daemonize", "--log-file", str(tmp_path / "no/such/log"))
    assert r.returncode == 1 and "cannot open log file" in r.stderr


def test_pidfile_needs_daemonize(tmp_path: Path) -> None:
    r = serfd("--config-dir", str(tmp_path), "--pidfile", str(tmp_path / "p"))
    assert r.returncode == 2 and "--pidfile needs --daemonize" in r.stderr


@pytest.mark.parametrize("content", ["", "junk\n", "999999999\n"])
def test_stale_pidfile_is_replaced(tmp_path: Path, content: str) -> None:
    from serfd.agent.daemonize import claim_pidfile, release_pidfile

    p = tmp_path / "serfd.pid"
    p.write_text(content)
    claim_pidfile(p)
    assert p.read_text() == f"{os.getpid()}\n"
    release_pidfile(p)
    assert not p.exists()


def test_daemonize_with_syslog_but_no_dev_log_warns_and_runs(tmp_path: Path) -> None:
    if Path("/dev/log").exists():
        pytest.skip("this host has a syslog socket at /dev/log; the test needs one without "
                    "(tests/test_syslog.py covers delivery to a socket)")
    d = tmp_path / "serfd.d"
    write_base(d, tmp_path, free_port())
    (d / "30-syslog.toml").write_text('enable_syslog = true\nsyslog_facility = "daemon"\n')
    pidfile, logfile = tmp_path / "serfd.pid", tmp_path / "serfd.log"
    r = serfd("--config-dir", str(d), "--daemonize", "--pidfile", str(pidfile),
              "--log-file", str(logfile))
    assert r.returncode == 0, r.stderr
    pid = int(pidfile.read_text())
    try:
        text = logfile.read_text()
        assert ("syslog: cannot connect to /dev/log: No such file or directory; logging to "
                "stderr only until it appears") in text
        assert "RPC listening on unix:" in text
        info = subprocess.run([sys.executable, "-m", "serfctl", "--socket",
                               str(tmp_path / "serfd.sock"), "info", "--format", "json"],
                              capture_output=True, text=True, timeout=30, check=True)
        dropped = int(json.loads(info.stdout)["serfd"]["dropped_syslog_unreachable"])
        assert dropped >= 1  # the lines since the start, counted (serfctl info)
    finally:
        os.kill(pid, signal.SIGTERM)
    wait_until(lambda: gone(pid), 20.0, 0.05, desc=f"pid {pid} gone")
