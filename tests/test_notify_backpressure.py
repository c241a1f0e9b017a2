"""serfd.agent.systemd.Notifier never blocks the event loop on a full notify socket.

A datagram socket's peer queue holds net.unix.max_dgram_qlen messages (10 by default). A
service manager (or a test) that reads slowly used to block serfd's loop inside
``sendall`` until it read: RPC clients then hung. Found under load in
test_sd_notify_reload.py (the test reads its notify socket only between steps).
"""

from __future__ import annotations

import socket

import sdnotify

from serfd.agent.systemd import MAX_DEFERRED, Notifier


def notifier_on(sock: socket.socket) -> Notifier:
    # Should the notifier leave the socket blocking, a full queue costs 0.2 s per send and
    # the assertions below fail, instead of the test hanging.
    sock.settimeout(0.2)
    sd = sdnotify.SystemdNotifier.__new__(sdnotify.SystemdNotifier)
    sd.debug = True
    sd.socket = sock
    return Notifier(sd, watchdog=0.2)


def pair() -> tuple[socket.socket, socket.socket]:
    """(manager, ours): a datagram pair whose manager side holds only a few messages."""
    manager, ours = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    manager.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    return manager, ours


def drain(sock: socket.socket) -> list[str]:
    out: list[str] = []
    sock.setblocking(False)
    while True:
        try:
            out.append(sock.recv(4096).decode())
        except BlockingIOError:
            return out


def test_a_full_manager_queue_drops_pings_defers_the_rest_and_never_blocks() -> None:
    manager, ours = pair()
    with manager, ours:
        n = notifier_on(ours)  # also makes ours non-blocking, as from_env's socket
        for _ in range(40):  # far past what the small buffer holds
            n._send("WATCHDOG=1")
        n.stopping("stopping")
        n.status("leaving")
        assert n.counters["sd_notify_watchdog_dropped"] > 0
        assert n.counters["sd_notify_deferred"] == 2
        got = drain(manager)
        assert got and set(got) == {"WATCHDOG=1"}  # what fit before the queue was full
        # The manager read: the next send flushes what waited first, in order.
        n._send("WATCHDOG=1")
        assert drain(manager) == ["STOPPING=1\nSTATUS=stopping", "STATUS=leaving", "WATCHDOG=1"]
        assert n.flush()


def test_the_waiting_line_is_bounded_and_keeps_the_newest() -> None:
    manager, ours = pair()
    with manager, ours:
        n = notifier_on(ours)
        for _ in range(40):
            n._send("WATCHDOG=1")
        for i in range(MAX_DEFERRED + 5):
            n._send(f"STATUS=s{i}")
        assert n.counters["sd_notify_lost"] == 5
        assert set(drain(manager)) == {"WATCHDOG=1"}
        got: list[str] = []
        while not n.flush():  # as much as the manager's buffer takes, each time it has read
            got += drain(manager)
        got += drain(manager)
        assert got == [f"STATUS=s{i}" for i in range(5, MAX_DEFERRED + 5)]
