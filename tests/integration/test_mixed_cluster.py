"""Acceptance: serfd and the real `serf` 0.9.4 in one cluster, on loopback.

Every check goes through a real client: `serfctl` on serfd's Unix socket, the real
`serf` CLI on serf's (and serfd's) TCP RPC, PyPI's serfclient, and the harness's own
RPC client.  Each failure/leave scenario runs in its own 4-node cluster: a node that
already failed or left still counts in memberlist's node estimate and would push the
next suspicion timer to its 24 s maximum (RPC-TRACES.md, "Leave and failure").
"""

from __future__ import annotations

import random
import signal
import time
from collections.abc import Iterable, Mapping

import pytest

from tests.integration.harness import (
    PROBE_INTERVAL_LAN,
    SUSPICION_TIMEOUT_LAN,
    Agent,
    Cluster,
    Member,
    RPCClient,
    SerfAgent,
    SerfdAgent,
    cli_members_json,
    serf_cli,
)
from tests.support import wait_until

CONVERGE_TIMEOUT = 5.0
FAIL_TIMEOUT = SUSPICION_TIMEOUT_LAN + PROBE_INTERVAL_LAN + 5.0
LEAVE_TIMEOUT = 5.0
READY_TIMEOUT = 15.0


def pause() -> None:
    time.sleep(random.uniform(0.25, 0.65))  # off the 200 ms gossip tick (phase-lock)


def cli_view(agent: Agent) -> dict[str, Member]:
    """The agent's member list through its own CLI (`serfctl` for serfd, `serf` for serf)."""
    if isinstance(agent, SerfdAgent):
        out = agent.serfctl("members", "--format", "json")
    else:
        out = serf_cli("members", "-format=json", f"-rpc-addr={agent.rpc_addr}")
    assert out.returncode == 0, f"{agent.name} CLI members: rc {out.returncode} {out.stderr}"
    return {m.name: m for m in cli_members_json(out.stdout)}


def wait_views(
    observers: Iterable[Agent],
    expected: Mapping[str, tuple[str, int, Mapping[str, str], str]],
    timeout: float,
    interval: float = 0.1,
) -> float:
    """Wait until every observer's CLI lists each expected (ip, port, tags, status)."""
    pending = list(observers)
    seen: dict[str, object] = {}

    def check() -> bool:
        for obs in list(pending):
            view = cli_view(obs)
            got = {
                n: (m.addr, m.port, dict(m.tags), m.status)
                for n, m in view.items()
                if n in expected
            }
            want = {n: (ip, port, dict(tags), st) for n, (ip, port, tags, st) in expected.items()}
            seen[obs.name] = got
            if got == want:
                pending.remove(obs)
        if pending:
            raise AssertionError({p.name: seen.get(p.name) for p in pending})
        return True

    return wait_until(check, timeout, interval, desc="member views")


def entry(agent: Agent, status: str = "alive") -> tuple[str, int, Mapping[str, str], str]:
    return (agent.ip, agent.port, agent.tags, status)


def rpc_status_wait(observers: Iterable[Agent], name: str, status: str, timeout: float) -> float:
    start = time.monotonic()
    for obs in observers:
        left = max(0.1, timeout - (time.monotonic() - start))
        wait_until(
            lambda o=obs: o.statuses().get(name) == status,
            left,
            desc=f"{obs.name} lists {name} {status}",
        )
    return time.monotonic() - start


def four_nodes(cluster: Cluster, direction: str) -> tuple[list[SerfdAgent], list[SerfAgent]]:
    """2 serfd + 2 serf, joined in the given direction; returns (serfds, serfs)."""
    if direction == "serf_joins_serfd":
        d0 = cluster.serfd("d0", tags={"role": "web", "impl": "serfd"})
        d0.wait_ready(READY_TIMEOUT)
        d1 = cluster.serfd("d1", tags={"role": "db", "impl": "serfd"}, join=[d0.bind_addr])
        s0 = cluster.serf("s0", tags={"role": "web", "impl": "serf"})
        # s1 joins at start-up from the command line, s0 through the RPC.
        s1 = cluster.serf(
            "s1", tags={"role": "db", "impl": "serf"}, extra_args=["-join", d0.bind_addr]
        )
        for a in (d1, s0, s1):
            a.wait_ready(READY_TIMEOUT)
        pause()
        assert s0.join([d1.bind_addr]) == 1
    else:
        s0 = cluster.serf("s0", tags={"role": "web", "impl": "serf"})
        s1 = cluster.serf("s1", tags={"role": "db", "impl": "serf"})
        s0.wait_ready(READY_TIMEOUT)
        s1.wait_ready(READY_TIMEOUT)
        assert s1.join([s0.bind_addr]) == 1
        # d0 joins from its config at start-up, d1 through its RPC.
        d0 = cluster.serfd("d0", tags={"role": "web", "impl": "serfd"}, join=[s0.bind_addr])
        d1 = cluster.serfd("d1", tags={"role": "db", "impl": "serfd"})
        d0.wait_ready(READY_TIMEOUT)
        d1.wait_ready(READY_TIMEOUT)
        pause()
        assert d1.join([s1.bind_addr]) == 1
    return [d0, d1], [s0, s1]


@pytest.mark.parametrize("direction", ["serf_joins_serfd", "serfd_joins_serf"])
def test_join_both_directions(cluster: Cluster, direction: str) -> None:
    serfds, serfs = four_nodes(cluster, direction)
    everyone = [*serfds, *serfs]
    wait_views(everyone, {a.name: entry(a) for a in everyone}, CONVERGE_TIMEOUT)
    # serfd reports Serf's delegate protocol range like real serf does.
    for m in cli_view(serfs[0]).values():
        assert m.protocol == (2, 5, 5)
    # Unix socket and TCP RPC on serfd give the same answer.
    d0 = serfds[0]
    with RPCClient(d0.socket_path) as unix_c, RPCClient(d0.rpc_addr) as tcp_c:
        assert {m.name: m.status for m in unix_c.members()} == {
            m.name: m.status for m in tcp_c.members()
        }


def test_tags_propagate_both_ways(cluster: Cluster) -> None:
    (d0, d1), (s0, s1) = four_nodes(cluster, "serf_joins_serfd")
    everyone = [d0, d1, s0, s1]
    wait_views(everyone, {a.name: entry(a) for a in everyone}, CONVERGE_TIMEOUT)

    pause()
    out = d0.serfctl("tags", "--set", "role=db")
    assert out.returncode == 0, out.stderr
    wait_views(
        [s0, s1], {"d0": (d0.ip, d0.port, {**d0.tags, "role": "db"}, "alive")}, CONVERGE_TIMEOUT
    )

    pause()
    out = serf_cli("tags", f"-rpc-addr={s1.rpc_addr}", "-set", "zone=z1")
    assert out.returncode == 0, out.stderr
    wait_views(
        [d0, d1], {"s1": (s1.ip, s1.port, {**s1.tags, "zone": "z1"}, "alive")}, CONVERGE_TIMEOUT
    )


@pytest.mark.parametrize("victim_kind", ["serf", "serfd"])
def test_sigkill_detected_as_failed(cluster: Cluster, victim_kind: str) -> None:
    serfds, serfs = four_nodes(cluster, "serfd_joins_serf")
    everyone = [*serfds, *serfs]
    wait_views(everyone, {a.name: entry(a) for a in everyone}, CONVERGE_TIMEOUT)
    victim: Agent = serfs[1] if victim_kind == "serf" else serfds[1]
    others = [a for a in everyone if a is not victim]

    pause()
    victim.kill()
    took = rpc_status_wait(others, victim.name, "failed", FAIL_TIMEOUT)
    assert took <= FAIL_TIMEOUT
    wait_views(others, {victim.name: entry(victim, "failed")}, CONVERGE_TIMEOUT)


@pytest.mark.parametrize(
    ("victim_kind", "sig"),
    [
        ("serf", signal.SIGINT),
        ("serfd", signal.SIGINT),
        ("serfd", signal.SIGTERM),  # systemd stops units with SIGTERM: serfd leaves gracefully
    ],
    ids=["serf-SIGINT", "serfd-SIGINT", "serfd-SIGTERM"],
)
def test_graceful_stop_seen_as_left(cluster: Cluster, victim_kind: str, sig: int) -> None:
    serfds, serfs = four_nodes(cluster, "serf_joins_serfd")
    everyone = [*serfds, *serfs]
    wait_views(everyone, {a.name: entry(a) for a in everyone}, CONVERGE_TIMEOUT)
    victim: Agent = serfs[1] if victim_kind == "serf" else serfds[1]
    others = [a for a in everyone if a is not victim]

    pause()
    assert victim.interrupt(sig)
    rpc_status_wait(others, victim.name, "left", LEAVE_TIMEOUT)
    assert victim.wait_exit(15) == 0
    wait_views(others, {victim.name: entry(victim, "left")}, CONVERGE_TIMEOUT)


def test_real_serf_cli_and_serfclient_against_serfd(cluster: Cluster) -> None:
    d0 = cluster.serfd("d0", tags={"role": "web"})
    s0 = cluster.serf("s0", tags={"role": "db"})
    s1 = cluster.serf("s1", tags={"role": "db"})
    for a in (d0, s0, s1):
        a.wait_ready(READY_TIMEOUT)

    # serf members against serfd's TCP RPC (text and JSON).
    out = serf_cli("members", f"-rpc-addr={d0.rpc_addr}")
    assert out.returncode == 0, out.stderr
    fields = out.stdout.split()
    assert fields[:3] == ["d0", d0.bind_addr, "alive"], out.stdout
    assert "role=web" in fields[3]

    # serf join through serfd's RPC.
    pause()
    out = serf_cli("join", f"-rpc-addr={d0.rpc_addr}", s0.bind_addr, s1.bind_addr)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "Successfully joined cluster by contacting 2 nodes" in out.stdout
    wait_views([d0, s0, s1], {a.name: entry(a) for a in (d0, s0, s1)}, CONVERGE_TIMEOUT)

    # serfclient (PyPI) reads members from serfd.
    from serfclient.client import SerfClient

    client = SerfClient(host=d0.ip, port=d0.rpc_port)
    try:
        result = client.members()
    finally:
        client.close()
    got = {m["Name"]: (m["Status"], bytes(m["Addr"]), m["Port"]) for m in result.body["Members"]}
    for a in (d0, s0, s1):
        assert got[a.name] == ("alive", bytes(int(x) for x in a.ip.split(".")), a.port)

    # serf force-leave through serfd's RPC turns a failed node into left everywhere.
    pause()
    s1.kill()
    rpc_status_wait([d0, s0], "s1", "failed", FAIL_TIMEOUT)
    out = serf_cli("force-leave", f"-rpc-addr={d0.rpc_addr}", "s1")
    assert out.returncode == 0, out.stdout + out.stderr
    rpc_status_wait([d0, s0], "s1", "left", LEAVE_TIMEOUT)
