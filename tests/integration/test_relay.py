"""serfd relays query responses for real serf agents (issue 8: relays only to members)."""

from __future__ import annotations

from tests.integration.harness import Cluster, serf_cli
from tests.support import wait_until


def test_serfd_forwards_relayed_answers_to_a_serf_asker(cluster: Cluster) -> None:
    s0 = cluster.serf("s0")
    s0.wait_ready()
    s1 = cluster.serf("s1")
    d2 = cluster.serfd("d2", join=[s0.bind_addr])
    d3 = cluster.serfd("d3", join=[s0.bind_addr])
    cluster.wait_ready()
    s1.join([s0.bind_addr])
    cluster.wait_all_alive(timeout=15)

    # Every member acks and relays its ack through 2 of the other 3: over a few queries
    # both serfd nodes relay acks to s0, and refuse none (s0 is a member at that address).
    for i in range(6):
        r = serf_cli("query", f"-rpc-addr={s0.rpc_addr}", "-relay-factor=2", "-timeout=1s",
                     f"probe{i}", timeout=20)
        assert r.returncode == 0, r.stderr
        assert "Total Acks: 4" in r.stdout, r.stdout
    for d in (d2, d3):
        wait_until(lambda d=d: "relaying a query response to s0" in d.log_path.read_text(),
                   10, desc=f"{d.name} relayed to s0")
        drops = d.stats()["serfd"]
        assert "dropped_relay_refused" not in drops, drops
