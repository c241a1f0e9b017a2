"""A real network with a chosen delay per pair of hosts, without netem.

Each host is a network namespace of its own with one TAP device (``tap0``) created inside
it: a short helper (``ip netns exec NS python -c ...``) opens ``/dev/net/tun`` there and
hands the file descriptor back over a Unix socket, so the host's own network is never
touched. The test process keeps every TAP's descriptor and runs a small switch in a
thread: each Ethernet frame a host sends is copied to every other host (a hub: the
kernels drop unicast frames that are not theirs), each copy held for that pair's one-way
delay. ``close()`` stops the switch, closes the descriptors (the TAPs go with them) and
deletes the namespaces.

Needs root, ``/dev/net/tun`` and ``ip netns``; :func:`missing` names what is absent.
"""

from __future__ import annotations

import contextlib
import heapq
import os
import selectors
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

TUNSETIFF = 0x400454CA
IFF_TAP = 0x0002
IFF_NO_PI = 0x1000
MAX_QUEUED = 4096  # frames in flight in the switch; more are dropped (counted)

_OPEN_TAP = """
import fcntl, os, socket, struct, sys
fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK)
fcntl.ioctl(fd, {tunsetiff}, struct.pack("16sH", b"tap0", {flags}))
sock = socket.socket(fileno=int(sys.argv[1]))
socket.send_fds(sock, [b"tap"], [fd])
"""


def missing() -> str | None:
    """What this machine lacks for a delay network (None: nothing)."""
    if os.geteuid() != 0:
        return "root (network namespaces and TAP devices)"
    if not os.path.exists("/dev/net/tun"):
        return "/dev/net/tun (the tun module)"
    if shutil.which("ip") is None:
        return "the `ip` command (iproute2)"
    probe = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True,
                           check=False)
    if probe.returncode != 0:
        return f"`ip netns` ({probe.stderr.strip()})"
    return None


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], capture_output=True, text=True, check=True, timeout=30)


@dataclass
class Host:
    name: str
    netns: str
    ip: str
    fd: int = -1


@dataclass
class DelayNet:
    """Hosts on one /24 (``10.78.0.<i+1>``), ``delays[(a, b)]`` seconds one way."""

    names: Sequence[str]
    delays: Mapping[tuple[str, str], float]
    prefix: str = "10.78.0"
    hosts: dict[str, Host] = field(default_factory=dict)
    forwarded: int = 0
    dropped: int = 0

    def __post_init__(self) -> None:
        self._tag = f"sdly{os.getpid()}"
        self._stop_r, self._stop_w = os.pipe()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def delay(self, a: str, b: str) -> float:
        return self.delays.get((a, b), self.delays.get((b, a), 0.0))

    # -- setup ------------------------------------------------------------------

    def start(self) -> DelayNet:
        try:
            for i, name in enumerate(self.names):
                host = Host(name, f"{self._tag}-{i}", f"{self.prefix}.{i + 1}")
                self.hosts[name] = host
                _ip("netns", "add", host.netns)
                host.fd = self._open_tap(host.netns)
                _ip("-n", host.netns, "link", "set", "lo", "up")
                _ip("-n", host.netns, "addr", "add", f"{host.ip}/24", "dev", "tap0")
                _ip("-n", host.netns, "link", "set", "tap0", "up")
        except BaseException:
            self.close()
            raise
        self._thread = threading.Thread(target=self._switch, name="delaynet", daemon=True)
        self._thread.start()
        return self

    @staticmethod
    def _open_tap(netns: str) -> int:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        with ours, theirs:
            code = _OPEN_TAP.format(tunsetiff=TUNSETIFF, flags=IFF_TAP | IFF_NO_PI)
            helper = subprocess.run(
                ["ip", "netns", "exec", netns, sys.executable, "-c", code, str(theirs.fileno())],
                pass_fds=(theirs.fileno(),), capture_output=True, text=True, timeout=30,
                check=False)
            if helper.returncode != 0:
                raise RuntimeError(f"TAP in {netns}: {helper.stderr.strip()}")
            ours.settimeout(5.0)
            _, fds, _, _ = socket.recv_fds(ours, 16, 1)
        if not fds:
            raise RuntimeError(f"TAP in {netns}: no descriptor came back")
        return fds[0]

    def exec_argv(self, name: str, argv: Sequence[str]) -> list[str]:
        """``argv`` run inside host ``name``'s namespace."""
        return ["ip", "netns", "exec", self.hosts[name].netns, *argv]

    # -- the switch -------------------------------------------------------------

    def _switch(self) -> None:
        sel = selectors.DefaultSelector()
        by_fd = {h.fd: h.name for h in self.hosts.values()}
        for fd in by_fd:
            sel.register(fd, selectors.EVENT_READ)
        sel.register(self._stop_r, selectors.EVENT_READ)
        pending: list[tuple[float, int, int, bytes]] = []
        seq = 0
        try:
            while True:
                timeout = None
                if pending:
                    timeout = max(0.0, pending[0][0] - time.monotonic())
                for key, _ in sel.select(timeout):
                    if key.fd == self._stop_r:
                        return
                    src = by_fd[key.fd]
                    while True:
                        try:
                            frame = os.read(key.fd, 65536)
                        except BlockingIOError:
                            break
                        now = time.monotonic()
                        for h in self.hosts.values():
                            if h.name == src:
                                continue
                            if len(pending) >= MAX_QUEUED:
                                self.dropped += 1
                                continue
                            seq += 1
                            heapq.heappush(pending, (now + self.delay(src, h.name), seq, h.fd,
                                                     frame))
                now = time.monotonic()
                while pending and pending[0][0] <= now:
                    _, _, fd, frame = heapq.heappop(pending)
                    try:
                        os.write(fd, frame)
                        self.forwarded += 1
                    except OSError:
                        self.dropped += 1
        finally:
            sel.close()

    # -- teardown ---------------------------------------------------------------

    def close(self) -> None:
        if self._thread is not None:
            os.write(self._stop_w, b"x")
            self._thread.join(5.0)
            self._thread = None
        for host in self.hosts.values():
            if host.fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(host.fd)
                host.fd = -1
            subprocess.run(["ip", "netns", "delete", host.netns], capture_output=True,
                           check=False, timeout=30)
        self.hosts.clear()
        for fd in (self._stop_r, self._stop_w):
            with contextlib.suppress(OSError):
                os.close(fd)
        self._stop_r = self._stop_w = -1
