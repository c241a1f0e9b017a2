"""A serf peer floods a serfd node with user events and 1000 h queries while its handlers
are slow and an RPC stream client never reads: handler processes, backlog and memory
stay bounded, other RPC clients are answered, and the counters say what was dropped."""

from __future__ import annotations

import os
import socket
import stat
import time
from pathlib import Path

import msgpack

from tests.integration.harness import Cluster, RPCClient

SLOW = """#!/bin/sh
cat > /dev/null
sleep 20
"""


def children(pid: int) -> int:
    n = 0
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            n += 1
    return n


def test_event_and_query_flood_with_slow_handlers_and_a_stalled_stream(
        cluster: Cluster, tmp_path: Path) -> None:
    slow = tmp_path / "slow.sh"
    slow.write_text(SLOW)
    slow.chmod(slow.stat().st_mode | stat.S_IXUSR)
    s0 = cluster.serf("s0")
    s0.wait_ready()
    d1 = cluster.serfd("d1", join=[s0.bind_addr], extra_toml=f"""
[handlers]
"user,query" = "{slow}"
[handler_limits]
max_concurrent = 4
timeout = "60s"
""")
    cluster.wait_ready()
    cluster.wait_all_alive()
    pid = d1.pid
    assert pid is not None
    rss0 = d1.rss_kib()

    # A stream client that never reads.
    hog = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    hog.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    hog.connect((d1.ip, d1.rpc_port))
    hog.sendall(msgpack.packb({"Command": "handshake", "Seq": 0})
                + msgpack.packb({"Version": 1})
                + msgpack.packb({"Command": "stream", "Seq": 1})
                + msgpack.packb({"Type": "*"}))

    # The flood, from the serf peer: 1,500 user events and 500 queries of 1000 h.
    t0 = time.monotonic()
    with RPCClient(s0.rpc_addr, timeout=10.0) as c:
        for i in range(1500):
            c.call("event", {"Name": f"flood{i % 50}", "Payload": b"p" * 200, "Coalesce": False})
    asker = RPCClient(s0.rpc_addr, timeout=10.0)
    for i in range(500):  # pipelined: the answers are never read
        asker.client.send_request("query", {
            "FilterNodes": None, "FilterTags": None, "RequestAck": False, "RelayFactor": 0,
            "Timeout": 1000 * 3600 * 10**9, "Name": f"q{i}", "Payload": b"x"})
    flood_s = time.monotonic() - t0

    # While it lands: other RPC clients are answered at every poll, handlers stay capped.
    worst = 0.0
    peak_children = 0
    end = time.monotonic() + 10.0
    while time.monotonic() < end:
        t = time.monotonic()
        with RPCClient(d1.rpc_target, timeout=5.0) as c:
            c.call("members")
        worst = max(worst, time.monotonic() - t)
        peak_children = max(peak_children, children(pid))
        time.sleep(0.2)
    rss1 = d1.rss_kib()
    stats = d1.stats()["serfd"]
    print(f"flood sent in {flood_s:.1f}s; worst RPC {worst * 1000:.0f} ms; peak handler "
          f"processes {peak_children}; RSS {rss0} -> {rss1} KiB; counters "
          f"{ {k: v for k, v in stats.items() if k.startswith('dropped_') and v != '0'} }")
    assert peak_children <= 4
    assert worst < 0.5
    assert rss1 - rss0 < 40 * 1024
    # Serf's peer sends only part of 1,500 events (its queue keeps the newest), but the
    # queries alone overflow the 256-run backlog behind 4 stuck handlers.
    dropped = int(stats.get("dropped_handler_backlog_user", "0")) + \
        int(stats.get("dropped_handler_backlog_query", "0"))
    assert dropped > 0
    hog.close()
    asker.close()
