"""Metrics from real serfd processes on loopback: a statsd listener in the test receives
Serf's ``serf-agent.serf.member.join`` when a node joins; the Prometheus endpoint's
scrape parses with prometheus_client's own parser and carries the member counts that
``serfctl members`` shows; SIGUSR1 writes go-metrics' dump to the log while the agent
goes on answering RPC and gossiping; ``serfctl info`` shows Serf's event_handlers."""

from __future__ import annotations

import collections
import json
import re
import signal
import socket
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.harness import Cluster, cli_members_json
from tests.support import wait_until

JOIN = b"serf-agent.serf.member.join:1.000000|c"
PROM_PORT = 9946  # each agent has its own loopback IP


@pytest.fixture
def statsd() -> Iterator[socket.socket]:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    s.setblocking(False)
    yield s
    s.close()


def _lines(sock: socket.socket, into: list[bytes]) -> list[bytes]:
    """Every statsd line received so far (packets of whole lines)."""
    while True:
        try:
            packet = sock.recv(65536)
        except BlockingIOError:
            return into
        assert len(packet) <= 1400
        into.extend(packet.splitlines())


def test_statsd_listener_receives_member_join_when_a_node_joins(
        cluster: Cluster, statsd: socket.socket) -> None:
    port = statsd.getsockname()[1]
    a = cluster.serfd("a", extra_toml=f'statsd_addr = "127.0.0.1:{port}"')
    a.wait_ready()
    got: list[bytes] = []
    # a's own join (Serf counts the local member too) ...
    wait_until(lambda: _lines(statsd, got).count(JOIN) == 1, desc=lambda: f"lines {got}")
    b = cluster.serfd("b", join=[a.bind_addr])
    cluster.wait_all_alive([a, b])
    # ... then b's.
    wait_until(lambda: _lines(statsd, got).count(JOIN) == 2, desc=lambda: f"lines {got}")
    assert "telemetry" in a.stats()["serfd"]
    assert a.stats()["serfd"]["telemetry"] == f"inmem, statsd 127.0.0.1:{port}"


def _scrape(ip: str) -> dict[str, float]:
    with urllib.request.urlopen(f"http://{ip}:{PROM_PORT}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    return {s.name: s.value for fam in text_string_to_metric_families(text)
            for s in fam.samples if not s.labels}


def _members_counts(agent: object) -> dict[str, int]:
    out = agent.serfctl("members", "--format", "json")  # type: ignore[attr-defined]
    assert out.returncode == 0, out.stderr
    return dict(collections.Counter(m.status for m in cli_members_json(out.stdout)))


def test_prometheus_scrape_carries_the_member_counts_serfctl_shows(cluster: Cluster) -> None:
    ip = cluster.next_ip()  # an address of the cluster's /24 of its own
    a = cluster.serfd("a", extra_toml=f'[telemetry]\nprometheus_bind = "{ip}:{PROM_PORT}"')
    a.wait_ready()
    b = cluster.serfd("b", join=[a.bind_addr])
    c = cluster.serfd("c", join=[a.bind_addr])
    cluster.wait_all_alive([a, b, c])
    assert c.stop_graceful() == 0
    cluster.wait_statuses([a], {"a": "alive", "b": "alive", "c": "left"}, timeout=15)

    def agree() -> bool:
        counts = _members_counts(a)
        scraped = _scrape(ip)
        return all(scraped[f"serf_agent_serfd_members_{s}"] == counts.get(s, 0)
                   for s in ("alive", "failed", "left", "leaving"))

    wait_until(agree, timeout=10, desc=lambda: f"{_members_counts(a)} vs {_scrape(ip)}")
    scraped = _scrape(ip)
    assert scraped["serf_agent_serfd_members_alive"] == 2
    assert scraped["serf_agent_serfd_members_left"] == 1
    assert scraped["serf_agent_serf_member_join_total"] >= 3  # a, b and c
    assert scraped["process_resident_memory_bytes"] > 0


def test_sigusr1_logs_the_metrics_and_the_agent_carries_on(cluster: Cluster) -> None:
    a = cluster.serfd("a", extra_toml='[handlers]\n"member-join,user:deploy" = "true"')
    b = cluster.serfd("b", join=[a.bind_addr])
    cluster.wait_all_alive([a, b])
    joins = re.compile(r"\[([^]]+)\]\[C\] 'serf-agent\.serf\.member\.join': Count: (\d+) ")

    def dumped() -> bool:
        # The dump leaves out the 10 s interval still being aggregated: signal until the
        # intervals with both joins (a's own, then b's) are over.
        a.interrupt(signal.SIGUSR1)
        per_interval = dict(joins.findall(a.log_path.read_text(errors="replace")))
        return sum(int(n) for n in per_interval.values()) == 2

    wait_until(dumped, timeout=25, interval=1.0, desc=lambda: a.log_tail(20))
    text = a.log_path.read_text(errors="replace")
    assert "caught SIGUSR1" in text
    dump = [ln for ln in text.splitlines() if "'serf-agent." in ln]
    assert all(" [INFO] serfd.telemetry: [" in ln for ln in dump), dump
    # Still answering RPC, and still gossiping: a third node joins through b, a sees it.
    assert a.running()
    c = cluster.serfd("c", join=[b.bind_addr])
    cluster.wait_all_alive([a, b, c])
    # serfctl info: Serf's event_handlers section.
    info = a.serfctl("info")
    assert info.returncode == 0, info.stderr
    assert "event_handlers:\n\tmember-join: = true\n\tuser:deploy = true\n" in info.stdout


# go-metrics' dump line for a counter; real Serf adds the monotonic reading (" m=+1.5")
# to LastUpdated, which serfd leaves out.
DUMP_JOIN = re.compile(
    r"\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d [+-]\d{4} \w+)\]\[C\] 'serf-agent\.serf\.member\.join': "
    r"Count: (\d+) (?:Sum|Min): [0-9.]+ .*LastUpdated: \d{4}-\d\d-\d\d \d\d:\d\d:\d\d(?:\.\d+)? "
    r"[+-]\d{4} \w+")


def test_the_same_statsd_line_dump_line_and_event_handlers_as_a_real_serf_agent(
        cluster: Cluster, tmp_path: Path) -> None:
    listeners = []
    for _ in range(2):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind(("127.0.0.1", 0))
        s.setblocking(False)
        listeners.append(s)
    try:
        conf = tmp_path / "serf.json"
        conf.write_text(json.dumps({
            "statsd_addr": f"127.0.0.1:{listeners[0].getsockname()[1]}",
            "event_handlers": ["member-join,user:deploy=true", "query:uptime=uptime"]}))
        serf = cluster.serf("serf", extra_args=["-config-file", str(conf)])
        serfd = cluster.serfd("serfd", join=[serf.bind_addr], extra_toml=(
            f'statsd_addr = "127.0.0.1:{listeners[1].getsockname()[1]}"\n'
            '[handlers]\n"member-join,user:deploy" = "true"\n"query:uptime" = "uptime"'))
        cluster.wait_all_alive([serf, serfd])
        got: list[list[bytes]] = [[], []]
        # Both count both joins, in the same line.
        for sock, lines in zip(listeners, got, strict=True):
            wait_until(lambda s=sock, ls=lines: _lines(s, ls).count(JOIN) == 2,
                       desc=lambda ls=lines: f"lines {ls}")
        # serfctl info / serf info: the same event_handlers section.
        assert serfd.stats()["event_handlers"] == serf.stats()["event_handlers"] == {
            "member-join:": "true", "user:deploy": "true", "query:uptime": "uptime"}

        def dumped(agent: object) -> bool:
            agent.interrupt(signal.SIGUSR1)  # type: ignore[attr-defined]
            text = agent.log_path.read_text(errors="replace")  # type: ignore[attr-defined]
            per_interval = dict(DUMP_JOIN.findall(text))
            return sum(int(n) for n in per_interval.values()) == 2

        for agent in (serf, serfd):
            wait_until(lambda a=agent: dumped(a), timeout=25, interval=1.0,
                       desc=lambda a=agent: a.log_tail(20))
        cluster.wait_all_alive([serf, serfd])
    finally:
        for s in listeners:
            s.close()
