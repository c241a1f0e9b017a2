"""Query tag filters from a real serf peer: linear time, and the same answers as Serf (issue 8).

Serf matches a query's tag filters with Go's regexp (RE2, linear time). serfd must too: a
backtracking engine lets one `serf query -tag role='^(.|.)*X$'` pin serfd's event loop, so
the cluster marks it failed. And a node must answer exactly when a serf node with the same
tags would, for Go's syntax (which Python's re reads differently in places).
"""

from __future__ import annotations

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.integration.harness import Cluster, RPCClient, SerfAgent, serf_cli
from tests.support import wait_until

ROLE = "web-frontend-eu-west-1a-canary-042"  # an ordinary tag of 34 characters

# Nested quantifiers and alternations that never match ROLE: exponential for a backtracker.
HOSTILE = [
    "^(.|.)*X$",
    "^(\\w|\\w\\w|[a-z0-9-])*!$",
    "^(([a-z]+-?)*)*\\d{5}$",
    "(.*.*)*(.*)*=",
    "^(?:(?:w|we|web|-|[a-z]|[0-9])+)+Z$",
    "^(a|\\w|.)*(b|\\w|.)*(c|\\w|.)*$X",
]


def _query(asker: SerfAgent, expr: str, timeout: str) -> dict[str, object]:
    r = serf_cli("query", f"-rpc-addr={asker.rpc_addr}", "-format=json", "-tag", f"role={expr}",
                 f"-timeout={timeout}", "probe", "", timeout=30)
    assert r.returncode == 0, (expr, r.stdout, r.stderr)
    out: dict[str, object] = json.loads(r.stdout)
    return out


def test_hostile_filters_do_not_stall_serfd(cluster: Cluster) -> None:
    s = cluster.serf("s", tags={"role": ROLE})
    d = cluster.serfd("d", tags={"role": ROLE}, log_level="info")
    cluster.wait_ready(15)
    assert d.join([s.bind_addr]) == 1
    cluster.wait_all_alive(timeout=10)

    stop = threading.Event()
    sent = [0]

    def flood() -> None:
        i = 0
        while not stop.is_set():
            _query(s, HOSTILE[i % len(HOSTILE)], "400ms")
            sent[0] += 1
            i += 1

    workers = [threading.Thread(target=flood, daemon=True) for _ in range(4)]
    for w in workers:
        w.start()
    slowest = 0.0
    polls = 0
    try:
        with RPCClient(d.rpc_addr, timeout=5.0) as c:
            end = time.monotonic() + 10.0
            while time.monotonic() < end:
                t0 = time.monotonic()
                try:
                    c.members()
                except OSError as e:  # TimeoutError included
                    pytest.fail(f"serfd RPC did not answer during the hostile queries: {e!r}")
                took = time.monotonic() - t0
                slowest = max(slowest, took)
                polls += 1
                assert took <= 0.5, f"serfd RPC took {took:.2f} s during the hostile queries"
                time.sleep(max(0.0, 0.1 - took))
    finally:
        stop.set()
        for w in workers:
            w.join(timeout=30)
    print(f"hostile queries sent: {sent[0]}; RPC polls: {polls}; slowest: {slowest * 1e3:.1f} ms")
    assert sent[0] >= 10, sent  # the flood did run
    assert polls >= 50, polls

    # Serf never suspected serfd: it is alive and serf's log has no suspicion of it.
    assert s.statuses()["d"] == "alive"
    log = s.log_path.read_text(errors="replace")
    bad = [ln for ln in log.splitlines()
           if f"Suspect {d.name} " in ln or f"Marking {d.name} as failed" in ln
           or f"EventMemberFailed: {d.name} " in ln]
    assert not bad, bad
    # serfd evaluated the filters (and, not matching, did not answer them).
    with RPCClient(d.rpc_addr) as c:
        assert c.stats()["serf"]["members"] == "2"


# Tag values, each on one serf and one serfd node; None = no role tag at all.
VALUES: dict[str, str | None] = {
    "long": ROLE,
    "empty": "",
    "missing": None,
    "fold": "Kelvin\u212a-\u017f-\u01c5-\u03a3-x.y",
    "nl": "edge\n",
}

# Patterns, many where Go's regexp and Python's re disagree (syntax or meaning).
PATTERNS = [
    "^web", "canary-042$", "042\\z", "^$", "^.*$", "(?s)^.*$", "edge$", "(?m)^edge$",
    "\\Qeu-west\\E", "\\Q.y", "(?i)kelvink", "(?i)^kelvin.-S", "(?i)\u01c4", "\\x{212A}",
    "\\pL+-\\pL", "^\\p{Lu}", "\\PL\\z", "[[:upper:]]", "[[:^alpha:]]$", "\\141", "\\x2e",
    "(?U)e+d", "(?i:WEB)-frontend", "\\bfront", "\\Bfront", "\\s", "[^\\n]$", "^(?:)$",
    "x{0}", "a{,3}", "web|", "(?P<n>web)", "(?<n>web)", "(?=web)", "(a)\\1", "x**",
    "[z-a]", "\\Z", "(", "\\p{Greekish}", "[[:nope:]]", "(?i)\u03c3", "\\d{3}$", "^[^0-9]*$",
]


def test_answers_match_serf_for_each_pattern_and_tag(cluster: Cluster) -> None:
    asker = cluster.serf("asker")
    pairs: dict[str, tuple[SerfAgent, str]] = {}
    for key, value in VALUES.items():
        tags = {"pair": key} if value is None else {"pair": key, "role": value}
        s = cluster.serf(f"s-{key}", tags=tags)
        d = cluster.serfd(f"d-{key}", tags=tags, log_level="info")
        pairs[key] = (s, d.name)
    cluster.wait_ready(20)
    for a in cluster.agents[1:]:
        assert a.join([asker.bind_addr]) == 1
    cluster.wait_all_alive([asker], timeout=20)
    wait_until(lambda: len(asker.members()) == len(cluster.agents), 10, desc="all members")

    def ask(expr: str) -> tuple[str, set[str]]:
        out = _query(asker, expr, "2s")
        return expr, set(out.get("Acks") or [])  # type: ignore[arg-type]

    with ThreadPoolExecutor(max_workers=6) as pool:
        results = dict(pool.map(ask, PATTERNS))

    differ = []
    answered = 0
    for expr, acks in results.items():
        for key, (s, dname) in pairs.items():
            serf_says = s.name in acks
            answered += serf_says
            if serf_says != (dname in acks):
                differ.append((expr, VALUES[key], f"serf={serf_says}"))
    pairs_checked = len(PATTERNS) * len(VALUES)
    assert pairs_checked >= 50
    # Not a vacuous table: serf answers a good part of it and ignores another.
    assert 20 <= answered <= pairs_checked - 20, answered
    assert not differ, differ
