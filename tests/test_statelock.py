"""One serfd per state directory: the flock on <state_dir>/serfd.lock, alone and in `serfd`."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from serfd.agent.statelock import LOCK_NAME, StateDirInUse, StateDirLock
from tests.support import free_port, wait_until, write_base


def test_second_lock_is_refused_with_the_holders_pid(tmp_path: Path) -> None:
    state = tmp_path / "state"
    lock = StateDirLock.acquire(state)  # creates the directory
    assert (state / LOCK_NAME).read_text() == f"{os.getpid()}\n"
    with pytest.raises(StateDirInUse) as exc:
        StateDirLock.acquire(state)
    assert exc.value.pid == os.getpid()
    assert str(exc.value) == f"state directory {state} is in use by serfd pid {os.getpid()}"
    lock.release()
    lock.release()  # twice is fine
    again = StateDirLock.acquire(state)  # free again after release
    again.release()


def test_lock_is_not_inherited_by_children(tmp_path: Path) -> None:
    lock = StateDirLock.acquire(tmp_path)
    assert not os.get_inheritable(lock.fd)
    lock.release()


def _serfd(d: Path, log: Path | None = None) -> subprocess.Popen[str]:
    """`serfd --config-dir d`, its stderr in ``log`` (a long-running one) or a pipe."""
    env = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "JOURNAL_STREAM")}
    with open(log or os.devnull, "a") as f:
        return subprocess.Popen([sys.executable, "-m", "serfd", "--config-dir", str(d)],
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=f if log else subprocess.PIPE, text=True, env=env)


def _wait_path(p: Path, proc: subprocess.Popen[str], timeout: float = 20.0) -> None:
    def there() -> bool:
        assert proc.poll() is None, f"serfd exited with {proc.returncode}"
        return p.exists()

    # retry_on=(): serfd exiting fails at once, not after the timeout.
    wait_until(there, timeout, 0.05, desc=f"{p} created", retry_on=())


def test_second_serfd_exits_2_before_binding_and_sigkill_frees_the_lock(tmp_path: Path) -> None:
    a, b = tmp_path / "a.d", tmp_path / "b.d"
    write_base(a, tmp_path, free_port())
    # Same state directory, its own port and RPC socket.
    port_b = free_port()
    write_base(b, tmp_path, port_b)
    (b / "10-base.toml").write_text((b / "10-base.toml").read_text().replace("serfd.sock",
                                                                             "b.sock"))
    first = _serfd(a, tmp_path / "first.log")
    try:
        _wait_path(tmp_path / "serfd.sock", first)
        second = _serfd(b)
        _, err = second.communicate(timeout=30)
        assert second.returncode == 2, err
        assert err.strip() == (f"serfd: state directory {tmp_path / 'state'} is in use by "
                               f"serfd pid {first.pid}")
        assert not (tmp_path / "b.sock").exists()
        # Nothing was bound: the port is free.
        for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM):
            with socket.socket(socket.AF_INET, kind) as s:
                s.bind(("127.0.0.1", port_b))

        first.send_signal(signal.SIGKILL)
        first.wait(10)
        # The lock file stays, with a dead pid in it; it blocks nobody.
        assert (tmp_path / "state" / LOCK_NAME).read_text() == f"{first.pid}\n"
        third = _serfd(b, tmp_path / "third.log")
        try:
            _wait_path(tmp_path / "b.sock", third)
            assert (tmp_path / "state" / LOCK_NAME).read_text() == f"{third.pid}\n"
        finally:
            third.send_signal(signal.SIGTERM)
            assert third.wait(20) == 0
        # A clean exit releases the lock and leaves no pid behind.
        assert (tmp_path / "state" / LOCK_NAME).read_text() == ""
        StateDirLock.acquire(tmp_path / "state").release()
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
