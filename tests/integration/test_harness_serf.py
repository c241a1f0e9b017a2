"""Validates the harness against the real `serf` agent only (no serfd needed)."""

from __future__ import annotations

import random
import time

import pytest

from tests.integration.harness import (
    PROBE_INTERVAL_LAN,
    SUSPICION_TIMEOUT_LAN,
    Cluster,
    RPCClient,
    RPCError,
)
from tests.support import wait_until

# A 3-node cluster runs the minimum suspicion timeout (4 s); allow a probe and 5 s slack.
FAIL_TIMEOUT = SUSPICION_TIMEOUT_LAN + PROBE_INTERVAL_LAN + 5.0
LEAVE_TIMEOUT = 5.0


def test_three_serf_agents_join_fail_leave_and_tags(cluster: Cluster) -> None:
    agents = [cluster.serf(f"node{i}", tags={"role": "web", "idx": str(i)}) for i in range(3)]
    cluster.wait_ready(10)
    n0, n1, n2 = agents

    # Star join through the RPC, then every agent lists all three alive.
    assert n1.join([n0.bind_addr]) == 1
    assert n2.join([n0.bind_addr]) == 1
    cluster.wait_all_alive(timeout=5)
    for observer in agents:
        seen = observer.member_map()
        for a in agents:
            m = seen[a.name]
            assert (m.addr, m.port, m.status) == (a.ip, a.port, "alive")
            assert dict(m.tags) == a.tags
            assert m.protocol == (2, 5, 5)  # Serf delegate protocol min/max/cur

    # Tags set through the RPC show up on the other agents.
    n1.set_tags({"zone": "z1"}, delete=["idx"])
    wait_until(
        lambda: all(
            dict(o.member_map()["node1"].tags) == {"role": "web", "zone": "z1"} for o in (n0, n2)
        ),
        5,
        desc="node1 tags on node0/node2",
    )

    # SIGKILL → the others list it failed after the suspicion timeout.
    time.sleep(random.uniform(0.25, 0.65))  # off the 200 ms gossip tick (phase-lock)
    n2.kill()
    t_fail = cluster.wait_statuses([n0, n1], {"node2": "failed"}, FAIL_TIMEOUT)
    assert t_fail > 1.0  # not instantly: a probe must time out first

    # SIGINT → graceful leave → the remaining agent lists it left.
    time.sleep(random.uniform(0.25, 0.65))
    assert n1.interrupt()
    cluster.wait_statuses([n0], {"node1": "left"}, LEAVE_TIMEOUT)
    assert n1.wait_exit(timeout=10) == 0  # Serf exits 0 after a successful graceful leave


def test_rpc_client_errors_and_stats(cluster: Cluster) -> None:
    a = cluster.serf("solo", tags={"role": "x"})
    a.wait_ready(10)
    with RPCClient(a.rpc_addr) as c:
        stats = c.stats()
        assert stats["agent"]["name"] == "solo"
        assert stats["serf"]["members"] == "1"
        assert [m.name for m in c.members_filtered(tags={"role": "x"})] == ["solo"]
        assert c.members_filtered(tags={"role": "nope"}) == []
        with pytest.raises(RPCError, match="Handshake already performed"):
            c.handshake()
    with (
        RPCClient(a.rpc_addr, handshake=False) as c,
        pytest.raises(RPCError, match="Handshake required"),
    ):
        c.members()
    # A join to nothing fails with Num 0 and an error, and the agent keeps running.
    with RPCClient(a.rpc_addr) as c, pytest.raises(RPCError):
        c.join([f"{cluster.next_ip()}:7946"], timeout=15)
    assert a.running()
