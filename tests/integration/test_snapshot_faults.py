"""Faults around serfd's durable state, with real processes.

* A full disk under the snapshot (a 64 KiB tmpfs; root only): serfd stays up and
  answers RPC, says so in its log, in ``serfctl info`` and in STATUS= (read from a
  NOTIFY_SOCKET of our own), and once space is freed it rewrites the snapshot, with
  the members that joined (and without the one that left) while the disk was full,
  and clears the fault.
* One serfd per state directory: a second one exits 2 before binding anything, naming
  the directory and the running pid; after a SIGKILL of the first, a new one starts.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from serfd.agent.snapshot import read_snapshot
from serfd.agent.statelock import LOCK_NAME
from tests.integration.dropins import restart, start_serfd
from tests.integration.harness import (
    GOSSIP_PORT,
    RPC_PORT,
    Cluster,
    RPCClient,
    SerfdAgent,
    bindable,
)
from tests.support import wait_until


def _tmpfs_missing() -> str | None:
    if os.geteuid() != 0:
        return ("mounting a tmpfs needs root (CAP_SYS_ADMIN); this test runs as uid "
                f"{os.geteuid()}")
    for tool in ("mount", "umount"):
        if shutil.which(tool) is None:
            return f"`{tool}` not found on PATH (util-linux)"
    return None


@contextlib.contextmanager
def small_tmpfs(path: Path, size: str = "64k") -> Iterator[Path]:
    """A tmpfs of ``size`` mounted on ``path`` for the duration."""
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs",
                    str(path)], check=True, capture_output=True, timeout=30)
    try:
        yield path
    finally:
        r = subprocess.run(["umount", str(path)], capture_output=True, timeout=30, check=False)
        if r.returncode != 0:  # still busy: detach it, so the test run leaves no mount
            subprocess.run(["umount", "-l", str(path)], capture_output=True, timeout=30,
                           check=False)


def fill(path: Path) -> int:
    """Write a file in ``path``'s file system until it is full; its size."""
    n = 0
    with open(path, "wb", buffering=0) as f:
        for chunk in (65536, 4096, 512, 1):
            while True:
                try:
                    f.write(bytes(chunk))
                except OSError as e:
                    assert e.errno == errno.ENOSPC, e
                    break
                n += chunk
    return n


class NotifySocket:
    """systemd's notification socket, played by the test: every STATUS= serfd sends."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.setblocking(False)
        self.statuses: list[str] = []

    def drain(self) -> list[str]:
        while True:
            try:
                msg = self.sock.recv(65536).decode()
            except BlockingIOError:
                return self.statuses
            for line in msg.splitlines():
                if line.startswith("STATUS="):
                    self.statuses.append(line[len("STATUS="):])

    def last(self) -> str:
        st = self.drain()
        return st[-1] if st else ""

    def close(self) -> None:
        self.sock.close()


def snapshot_error(agent: SerfdAgent) -> str:
    with RPCClient(agent.rpc_target, timeout=2.0) as c:
        return str(c.stats()["serfd"]["snapshot_error"])


@pytest.mark.skipif(_tmpfs_missing() is not None, reason=str(_tmpfs_missing()))
def test_full_disk_under_the_snapshot_is_survived_shown_and_recovered(
        cluster: Cluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    disk = tmp_path / "disk"
    notify = NotifySocket(tmp_path / "notify")
    d: SerfdAgent | None = None
    with small_tmpfs(disk):
        snap = disk / "snapshot"
        try:
            monkeypatch.setenv("NOTIFY_SOCKET", str(notify.path))
            d = start_serfd(cluster, "pyd0", f'snapshot_path = "{snap}"', log_level="info")
            monkeypatch.delenv("NOTIFY_SOCKET")
            s1 = cluster.serf("gosrf1")
            cluster.wait_ready()
            assert d.join([s1.bind_addr]) == 1
            wait_until(lambda: "gosrf1" in read_snapshot(snap)[0].alive, 10,
                       desc="gosrf1 in the snapshot")
            assert snapshot_error(d) == ""

            filled = fill(disk / "filler")
            assert filled > 0
            # The snapshot's last page may still take a few records: send events until
            # the writer runs into the full disk.
            sent = 0
            with RPCClient(d.rpc_target) as c:
                while not c.stats()["serfd"]["snapshot_error"]:
                    for _ in range(20):
                        c.event(f"fill-{sent}", b"", coalesce=False)
                        sent += 1
                    assert sent < 3000, "the snapshot never hit the full disk"
                    time.sleep(0.05)
            # Members arriving while the disk is full.
            s2 = cluster.serf("gosrf2")
            s3 = cluster.serf("gosrf3")
            s2.wait_ready()
            s3.wait_ready()
            assert d.join([s2.bind_addr, s3.bind_addr]) == 2
            cluster.wait_statuses(
                [d], dict.fromkeys(("pyd0", "gosrf1", "gosrf2", "gosrf3"), "alive"), 10)
            # And one leaving while the disk is full.
            assert s1.stop_graceful() == 0
            cluster.wait_statuses([d], {"gosrf1": "left"}, 10)
            st = read_snapshot(snap)[0]
            assert "gosrf2" not in st.alive and "gosrf1" in st.alive

            # Up and serving, and it says so everywhere.
            assert d.running()
            err = snapshot_error(d)
            assert err.startswith("No space left on device since "), err
            info = d.serfctl("info")
            assert info.returncode == 0, info.stderr
            assert f"snapshot_error = {err}" in info.stdout
            wait_until(lambda: f"; snapshot: error: {err}" in notify.last(), 10,
                       desc="STATUS= with the snapshot error")
            log_text = d.log_path.read_text()
            assert f"snapshot {snap}: appending failed: No space left on device" in log_text
            assert log_text.count("failed: No space left on device; serfd keeps running") == 1

            # Space again: the writer rewrites the snapshot whole and resumes.
            (disk / "filler").unlink()
            took = wait_until(lambda: snapshot_error(d) == "", 30, desc="snapshot error cleared")
            print(f"full disk hit after {sent} events; recovered {took:.2f} s after space "
                  "was freed")
            wait_until(lambda: "snapshot: error" not in notify.last(), 10,
                       desc="STATUS= without the snapshot error")
            assert "writable again" in d.log_path.read_text()
            st, warnings = read_snapshot(snap)
            assert warnings == []
            assert set(st.alive) == {"pyd0", "gosrf2", "gosrf3"}
            assert st.last_event_clock >= sent - 1
            with RPCClient(d.rpc_target) as c:
                c.event("after", b"", coalesce=False)
            wait_until(lambda: read_snapshot(snap)[0].last_event_clock >= sent, 10,
                       desc="appends resumed")
            assert not (disk / "snapshot.compact").exists()
        finally:
            if d is not None:
                d.kill()  # before the umount
            notify.close()


def test_second_serfd_on_the_same_state_dir_exits_2_before_binding(cluster: Cluster) -> None:
    first = cluster.serfd("pyd0")
    first.wait_ready()
    second = start_serfd(cluster, "pyd1", f'state_dir = "{first.state_dir}"')
    assert second.wait_exit(30) == 2
    assert (f"serfd: state directory {first.state_dir} is in use by serfd pid {first.pid}"
            in second.log_path.read_text())
    assert not second.socket_path.exists()
    assert bindable(second.ip, (GOSSIP_PORT, RPC_PORT))
    assert first.running() and first.members()

    first.kill()  # SIGKILL: the lock file stays behind, naming a dead pid
    assert (first.state_dir / LOCK_NAME).read_text() == f"{first.pid}\n"
    restart(second)
    second.wait_ready()
    assert (first.state_dir / LOCK_NAME).read_text() == f"{second.pid}\n"
