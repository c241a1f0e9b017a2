"""One serfd per state directory: an exclusive ``flock`` on ``<state_dir>/serfd.lock``.

Two agents on one state directory would append to one snapshot and rewrite one
keyring behind each other's back. So ``serfd`` takes the lock at start, before it
binds any socket, and holds it for its whole life; a second one finds it taken and
exits 2, naming the directory and the pid written in the file by the holder.

``flock`` belongs to the open file, not to the path: the kernel drops it when the
last descriptor closes, so a serfd killed with SIGKILL leaves a file that blocks
nobody (the file itself is never removed: unlinking a lock file races with the
next opener). The descriptor is close-on-exec, so handler processes never inherit
the lock; it survives ``fork``, which is how ``--daemonize`` hands it from the
foreground process to the daemon, which then writes its own pid.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
from pathlib import Path

__all__ = ["LOCK_NAME", "StateDirInUse", "StateDirLock"]

LOCK_NAME = "serfd.lock"


class StateDirInUse(Exception):
    """Another process holds the state directory's lock."""

    def __init__(self, state_dir: Path, pid: int | None) -> None:
        self.state_dir = state_dir
        self.pid = pid
        who = f"serfd pid {pid}" if pid is not None else (
            f"another serfd (no pid in {state_dir / LOCK_NAME})")
        super().__init__(f"state directory {state_dir} is in use by {who}")


class StateDirLock:
    """The held lock of one state directory (see :meth:`acquire`)."""

    def __init__(self, state_dir: Path, fd: int) -> None:
        self.state_dir = state_dir
        self.path = state_dir / LOCK_NAME
        self.fd = fd

    @classmethod
    def acquire(cls, state_dir: Path) -> StateDirLock:
        """Lock ``state_dir`` (created if missing) and write our pid, or raise
        StateDirInUse (another holder) or OSError (cannot create the lock file)."""
        state_dir = Path(state_dir)
        state_dir.mkdir(mode=0o750, parents=True, exist_ok=True)
        path = state_dir / LOCK_NAME
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o640)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            pid = _read_pid(fd)
            os.close(fd)
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise StateDirInUse(state_dir, pid) from None
            raise
        lock = cls(state_dir, fd)
        try:
            lock.write_pid()
        except OSError:
            lock.release()
            raise
        return lock

    def write_pid(self, pid: int | None = None) -> None:
        """Record ``pid`` (default: ours) for the message a second serfd prints."""
        data = f"{os.getpid() if pid is None else pid}\n".encode()
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, data, 0)

    def release(self) -> None:
        """Unlock (emptying the pid first); safe to call twice."""
        if self.fd < 0:
            return
        with contextlib.suppress(OSError):
            os.ftruncate(self.fd, 0)
        with contextlib.suppress(OSError):
            fcntl.flock(self.fd, fcntl.LOCK_UN)
        os.close(self.fd)
        self.fd = -1


def _read_pid(fd: int) -> int | None:
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None
