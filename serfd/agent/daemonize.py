"""Classic daemon mode (``serfd --daemonize``) for hosts without systemd.

The foreground process checks everything it can while it still has a terminal (the
log file opens, the PID file does not name a running serfd), then forks. The child
becomes a daemon with python-daemon's ``DaemonContext`` (a new session, a second
fork, working directory ``/``, umask 022, stdin on /dev/null, stdout and stderr
appended to the log file) and runs the agent. The foreground process waits on a
pipe: the daemon's :class:`~serfd.agent.systemd.Notifier` writes ``READY=1`` into it once
every socket is bound, or ``ERROR=reason`` if startup failed. So ``serfd --daemonize``
exits 0 only when the agent is really serving, and 1 with the reason otherwise,
which is what an init script wants.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
from pathlib import Path
from typing import TextIO

import daemon

from serfd.agent.config import Config
from serfd.agent.statelock import StateDirLock

__all__ = ["PidFileError", "claim_pidfile", "run_daemonized"]

READY_TIMEOUT = 60.0  # seconds the foreground process waits for the daemon to be ready


class PidFileError(Exception):
    """The PID file is unusable or names a running process."""


def _read_pid(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except FileNotFoundError:
        return None
    except OSError as e:
        raise PidFileError(f"cannot read {path}: {e.strerror or e}") from None
    return int(text) if text.isdigit() else None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    return True


def check_pidfile(path: Path) -> None:
    """Refuse (PidFileError) when path names a live process; a stale file is fine."""
    pid = _read_pid(path)
    if pid is not None and pid != os.getpid() and _alive(pid):
        raise PidFileError(f"{path}: serfd is already running as PID {pid}")
    if not path.parent.is_dir():
        raise PidFileError(f"{path}: directory {path.parent} does not exist")


def claim_pidfile(path: Path) -> None:
    """Write our PID to path (replacing a stale file), or PidFileError."""
    check_pidfile(path)
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        raise PidFileError(f"{path}: another serfd is starting at the same time") from None
    except OSError as e:
        raise PidFileError(f"cannot create {path}: {e.strerror or e}") from None
    with os.fdopen(fd, "w") as f:
        f.write(f"{os.getpid()}\n")


def release_pidfile(path: Path) -> None:
    """Remove path if it still holds our PID."""
    with contextlib.suppress(OSError):
        if _read_pid(path) == os.getpid():
            path.unlink()


def _wait_ready(fd: int, log_file: Path) -> int:
    """In the foreground process: the exit status, once the daemon reported."""
    import select

    data = b""
    with os.fdopen(fd, "rb", buffering=0) as pipe:
        while True:
            ready, _, _ = select.select([pipe], [], [], READY_TIMEOUT)
            if not ready:
                print(f"serfd: not ready after {READY_TIMEOUT:.0f}s; see {log_file}",
                      file=sys.stderr)
                return 1
            chunk = pipe.read(4096)
            if not chunk:
                break
            data += chunk
    text = data.decode(errors="replace")
    if "READY=1" in text:
        return 0
    for line in text.splitlines():
        if line.startswith("ERROR="):
            print(f"serfd: {line[6:]}", file=sys.stderr)
            break
    else:
        print(f"serfd: the daemon exited during startup; see {log_file}", file=sys.stderr)
    return 1


def run_daemonized(config: Config, config_dir: Path, pidfile: Path | None, log_file: Path,
                   lock: StateDirLock | None = None) -> int:
    """Detach and run the agent; returns the exit status (in both processes).

    ``lock`` (the state directory's, taken before the fork) passes to the daemon, which
    writes its pid into it; the foreground process only closes its copy."""
    try:
        log_stream: TextIO = open(log_file, "a", buffering=1, encoding="utf-8")  # noqa: SIM115
    except OSError as e:
        print(f"serfd: cannot open log file {log_file}: {e.strerror or e}", file=sys.stderr)
        return 1
    if pidfile is not None:
        try:
            check_pidfile(pidfile)
        except PidFileError as e:
            print(f"serfd: {e}", file=sys.stderr)
            return 1
    sys.stdout.flush()
    sys.stderr.flush()
    read_end, write_end = os.pipe()
    if os.fork() > 0:
        os.close(write_end)
        log_stream.close()
        if lock is not None:
            os.close(lock.fd)  # not release(): the daemon's copy keeps the lock held
            lock.fd = -1
        return _wait_ready(read_end, log_file)

    os.close(read_end)
    context = daemon.DaemonContext(
        working_directory="/",
        umask=0o022,
        detach_process=True,  # even when started by init: --daemonize means fork
        stdout=log_stream,
        stderr=log_stream,
        files_preserve=[write_end] + ([lock.fd] if lock is not None else []),
    )
    with context:
        try:
            if lock is not None:
                with contextlib.suppress(OSError):  # only the message of a second serfd
                    lock.write_pid()  # the daemon's pid, after the second fork
            return _run_agent(config, config_dir, pidfile, write_end)
        finally:
            if lock is not None:
                lock.release()


def _run_agent(config: Config, config_dir: Path, pidfile: Path | None, ready_fd: int) -> int:
    # Imported here: the foreground process never needs them.
    from serfd.agent.agent import Agent
    from serfd.agent.logsetup import setup_logging
    from serfd.agent.systemd import Notifier
    from serfd.agent.tags import TagsFileError

    os.environ.pop("JOURNAL_STREAM", None)  # our stderr is the log file now
    notifier = Notifier.from_env(ready_fd=ready_fd)
    setup_logging(config.log_level,
                  syslog_facility=config.syslog_facility if config.enable_syslog else None)
    try:
        if pidfile is not None:
            claim_pidfile(pidfile)
        try:
            agent = Agent(config, config_dir=config_dir, notifier=notifier)
            return asyncio.run(agent.run())
        finally:
            if pidfile is not None:
                release_pidfile(pidfile)
    except (OSError, PidFileError) as e:
        notifier.fail_startup(str(e))
        print(f"serfd: {e}", file=sys.stderr)
        return 1
    except TagsFileError as e:
        notifier.fail_startup(str(e))
        return 2  # logged by the agent
    except SystemExit as e:
        notifier.fail_startup(str(e.code))
        raise
    finally:
        notifier.fail_startup("stopped before it was ready")
