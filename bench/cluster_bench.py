#!/usr/bin/env python3
"""Cluster benchmark: real HashiCorp `serf` vs `serfd` on loopback.

For each N and implementation, every rep starts N agents on a fresh 127.A.B.0/24,
star-joins them (nodes 1..N-1 RPC-join node0 at the same moment) and measures

* join convergence: time until every agent lists all N members alive;
* event latency: after a settle, ``--events`` user events from node0, one at a time,
  each timed from just before the RPC call to every node's handler; p50 and p99 across
  nodes per event, median over events. The figure includes the RPC, dissemination,
  the agent's dispatch and starting the handler, a tiny ``/bin/sh`` script that execs
  ``date`` (a few ms idle; at large N on few cores the N shells of one event queue for
  CPU, in both implementations alike): see ``bench.events_bench``;
* query all-N: ``--queries`` queries with RequestAck from node0, time until all N
  responses arrived, median over queries (and until the ``done`` record);
* failure detection: SIGKILL one node, time until every other agent lists it ``failed``;
* RSS per agent (VmRSS) at the end of an idle window;
* idle CPU per agent: utime+stime over the idle window, as % of one core;
* gossip bytes and packets sent per agent per second (nftables, needs root), over the
  idle window and over a burst of user events after it.

The handlers run only for the timed events and queries, which end a settle before the
idle window starts; the burst's events have another name and run no handler.

Stimuli are preceded by a random 0.25-0.65 s pause so the harness cannot phase-lock
onto the 200 ms gossip tick (SERF-BASELINE.md, "Phase-lock artifact").  Every process
the benchmark starts is killed on the way out, whatever happens (and, through
PR_SET_PDEATHSIG, even if the benchmark itself is SIGKILLed).

    python -m bench.cluster_bench --n 3 10 20 [--impl serf serfd] [--reps R] [--events E]
        [--queries Q]
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import math
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bench.events_bench import Handlers, StreamTaps, time_events, time_queries
from tests.integration.harness import (
    AddressAllocator,
    Agent,
    Cluster,
    RPCClient,
    proc_threads,
)

IMPLS = ("serf", "serfd")
JOIN_TIMEOUT = 60.0  # a join that never converges counts as +inf
FAIL_TIMEOUT = 60.0
READY_TIMEOUT = 30.0  # N Python processes starting at once on 2 cores take a while
BURST_EVENTS = 20  # user events sent at once from node0 for the "events" traffic window
BURST_WINDOW = 5.0  # seconds of traffic counted from the first of those events


class GossipCounters:
    """Gossip traffic each agent sends, counted by nftables on loopback (needs root).

    A table of our own (``serfd_bench_<pid>_<n>``) hooks the output path, where each
    loopback packet passes once, with per-agent rules: UDP from the agent's gossip
    address, TCP from its gossip port (the push/pull replies it serves), TCP to its
    gossip port (the requests others send it). Outbound TCP is not bound to the agent's
    address, so the requests are charged to the cluster and split evenly; RPC traffic
    (port 7373) is not counted. The table is deleted on the way out, whatever happens.
    """

    _seq = 0

    def __init__(self, agents: Sequence[Agent]) -> None:
        GossipCounters._seq += 1
        self.table = f"serfd_bench_{os.getpid()}_{GossipCounters._seq}"
        self.addrs = [a.bind_addr.rsplit(":", 1) for a in agents]
        self.created = False

    @staticmethod
    def unavailable() -> str:
        """'' if counting can work here, else why not."""
        if shutil.which("nft") is None:
            return "nft (nftables) not installed"
        if os.geteuid() != 0:
            return "not root"
        return ""

    def _nft(self, *args: str, script: str | None = None) -> str:
        out = subprocess.run(["nft", *args], input=script, capture_output=True, text=True,
                             timeout=30, check=True)
        return out.stdout

    def __enter__(self) -> GossipCounters:
        rules = []
        for ip, port in self.addrs:
            rules.append(f'ip saddr {ip} udp sport {port} counter comment "udp {ip}"')
            rules.append(f'ip saddr {ip} tcp sport {port} counter comment "tcp_out {ip}"')
            rules.append(f'ip daddr {ip} tcp dport {port} counter comment "tcp_in {ip}"')
        body = "\n    ".join(rules)
        script = (f"table inet {self.table} {{\n  chain out {{\n"
                  f"    type filter hook output priority 0; policy accept;\n"
                  f"    {body}\n  }}\n}}\n")
        self.created = True  # delete even if the load half-failed
        self._nft("-f", "-", script=script)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.created:
            with contextlib.suppress(subprocess.SubprocessError, OSError):
                self._nft("delete", "table", "inet", self.table)

    def read(self) -> dict[str, tuple[int, int]]:
        """(packets, bytes) by rule comment."""
        data = json.loads(self._nft("-j", "list", "table", "inet", self.table))
        out: dict[str, tuple[int, int]] = {}
        for item in data.get("nftables", []):
            rule = item.get("rule")
            if not rule or "comment" not in rule:
                continue
            for e in rule.get("expr", []):
                if "counter" in e:
                    out[rule["comment"]] = (e["counter"]["packets"], e["counter"]["bytes"])
        return out

    def per_agent(self, before: dict[str, tuple[int, int]], after: dict[str, tuple[int, int]],
                  seconds: float) -> tuple[list[float], list[float]]:
        """(bytes/s, packets/s) sent by each agent between two reads."""

        def delta(key: str) -> tuple[int, int]:
            a, b = after.get(key, (0, 0)), before.get(key, (0, 0))
            return a[0] - b[0], a[1] - b[1]

        n = len(self.addrs)
        req_pk = sum(delta(f"tcp_in {ip}")[0] for ip, _ in self.addrs) / n
        req_by = sum(delta(f"tcp_in {ip}")[1] for ip, _ in self.addrs) / n
        bps: list[float] = []
        pps: list[float] = []
        for ip, _ in self.addrs:
            up, ub = delta(f"udp {ip}")
            tp, tb = delta(f"tcp_out {ip}")
            bps.append((ub + tb + req_by) / seconds)
            pps.append((up + tp + req_pk) / seconds)
        return bps, pps


@dataclass
class RepResult:
    impl: str
    n: int
    rep: int
    join_s: float = math.nan
    fail_s: float = math.nan
    fail_sweep_s: list[float] = field(default_factory=list)  # poll sweeps while detecting
    rss_mib: list[float] = field(default_factory=list)
    cpu_pct: list[float] = field(default_factory=list)
    threads: list[int] = field(default_factory=list)
    join_rpc_s: list[float] = field(default_factory=list)
    event_p50_ms: list[float] = field(default_factory=list)  # one a timed event
    event_p99_ms: list[float] = field(default_factory=list)
    stream_p50_ms: list[float] = field(default_factory=list)  # the same, to the RPC stream
    stream_p99_ms: list[float] = field(default_factory=list)
    query_all_ms: list[float] = field(default_factory=list)  # one a query
    query_done_ms: list[float] = field(default_factory=list)
    idle_bps: list[float] = field(default_factory=list)
    idle_pps: list[float] = field(default_factory=list)
    event_bps: list[float] = field(default_factory=list)
    event_pps: list[float] = field(default_factory=list)
    error: str = ""


def pause(rng: random.Random) -> None:
    """Random inter-stimulus pause (anti phase-lock)."""
    time.sleep(rng.uniform(0.25, 0.65))


def poll_all(
    agents: Sequence[Agent],
    clients: dict[str, RPCClient],
    done: Any,
    t0: float,
    timeout: float,
    interval: float,
    sweeps: list[float] | None = None,
) -> float:
    """Poll members on each agent until ``done(members)``; time (from t0) the last one got there.

    An agent is seen done when the sweep reaches it, so the time is late by up to one
    sweep (``sweeps``, if given, collects how long each took: N RPC round trips)."""
    pending = list(agents)
    last = 0.0
    deadline = t0 + timeout
    while pending:
        start = time.monotonic()
        for a in list(pending):
            try:
                members = clients[a.name].members()
            except Exception:  # noqa: BLE001 - reconnect next round
                clients[a.name].close()
                with contextlib.suppress(OSError):
                    clients[a.name] = RPCClient(a.rpc_target, timeout=2.0)
                continue
            if done(members):
                last = time.monotonic() - t0
                pending.remove(a)
        if sweeps is not None:
            sweeps.append(time.monotonic() - start)
        if not pending:
            break
        if time.monotonic() >= deadline:
            return math.inf
        time.sleep(interval)
    return last


def run_rep(
    impl: str,
    n: int,
    rep: int,
    alloc: AddressAllocator,
    args: argparse.Namespace,
    rng: random.Random,
) -> RepResult:
    res = RepResult(impl, n, rep)
    tmp = Path(tempfile.mkdtemp(prefix=f"bench-{impl}-n{n}-"))
    handlers = Handlers.write(tmp)
    clients: dict[str, RPCClient] = {}
    with Cluster(alloc, tmp) as cl:
        try:
            for i in range(n):
                handlers.add_agent(cl, impl, f"node{i}", tags={"role": "bench", "idx": str(i)})
            cl.wait_ready(READY_TIMEOUT)
            agents = cl.agents
            names = {a.name for a in agents}
            for a in agents:
                clients[a.name] = RPCClient(a.rpc_target, timeout=5.0)

            # -- join convergence: nodes 1..N-1 join node0 at once
            seed = agents[0].bind_addr
            barrier = threading.Barrier(len(agents))  # joiners + this thread
            join_errors: list[str] = []

            def joiner(a: Agent) -> None:
                c = clients[a.name]
                barrier.wait(10)
                t = time.monotonic()
                try:
                    c.join([seed])
                except Exception as exc:  # noqa: BLE001
                    join_errors.append(f"{a.name}: {exc!r}")
                res.join_rpc_s.append(time.monotonic() - t)

            # Separate clients for the joins so the poller's clients are never shared.
            poll_clients = {a.name: RPCClient(a.rpc_target, timeout=5.0) for a in agents}
            threads = [threading.Thread(target=joiner, args=(a,)) for a in agents[1:]]
            for t in threads:
                t.start()
            pause(rng)
            t0 = time.monotonic()
            barrier.wait(10)

            def all_alive(ms: Any) -> bool:
                return {m.name for m in ms if m.status == "alive"} >= names

            res.join_s = poll_all(agents, poll_clients, all_alive, t0, JOIN_TIMEOUT, 0.01)
            for t in threads:
                t.join(30)
            if join_errors:
                res.error += "join errors: " + "; ".join(join_errors) + " "

            for c in [*clients.values(), *poll_clients.values()]:
                c.close()
            clients.clear()
            poll_clients.clear()

            # -- timed user events and queries from node0: settle, then one at a time
            time.sleep(args.settle)
            taps = StreamTaps(agents)
            try:
                with RPCClient(agents[0].rpc_target, timeout=30.0) as ec:
                    times = time_events(ec, [a.name for a in agents], handlers.log,
                                        args.events, rng, taps)
                    res.query_all_ms, res.query_done_ms = time_queries(ec, n, args.queries, rng)
            finally:
                taps.close()
            res.event_p50_ms, res.event_p99_ms = times.p50, times.p99
            res.stream_p50_ms, res.stream_p99_ms = times.stream_p50, times.stream_p99

            # -- idle resources: settle (the handlers and the events' gossip end), measure
            time.sleep(args.settle)
            counters = contextlib.ExitStack()
            nft = None if args.no_traffic else counters.enter_context(GossipCounters(agents))
            with counters:
                cpu0 = {a.name: a.cpu_seconds() for a in agents}
                c0 = nft.read() if nft else {}
                w0 = time.monotonic()
                time.sleep(args.idle)
                window = time.monotonic() - w0
                if nft:
                    res.idle_bps, res.idle_pps = nft.per_agent(c0, nft.read(), window)
                for a in agents:
                    res.cpu_pct.append(100.0 * (a.cpu_seconds() - cpu0[a.name]) / window)
                    res.rss_mib.append(a.rss_kib() / 1024.0)
                    res.threads.append(proc_threads(a.pid or 0))
                if nft:
                    # -- traffic during a burst of user events from node0
                    ec = RPCClient(agents[0].rpc_target, timeout=5.0)
                    try:
                        c0 = nft.read()
                        w0 = time.monotonic()
                        for i in range(BURST_EVENTS):
                            ec.event(f"bench{i}", b"x" * 32)
                        time.sleep(max(0.0, BURST_WINDOW - (time.monotonic() - w0)))
                        window = time.monotonic() - w0
                        res.event_bps, res.event_pps = nft.per_agent(c0, nft.read(), window)
                    finally:
                        ec.close()

            # -- failure detection: SIGKILL one non-seed node
            victim = agents[rng.randrange(1, n)]
            others = [a for a in agents if a is not victim]
            poll_clients = {a.name: RPCClient(a.rpc_target, timeout=5.0) for a in others}
            pause(rng)
            t0 = time.monotonic()
            victim.kill()

            def victim_failed(ms: Any) -> bool:
                return any(m.name == victim.name and m.status == "failed" for m in ms)

            res.fail_s = poll_all(others, poll_clients, victim_failed, t0, FAIL_TIMEOUT, 0.02,
                                  res.fail_sweep_s)
            for c in poll_clients.values():
                c.close()
        except Exception as exc:  # noqa: BLE001 - one bad rep must not lose the others
            res.error += f"{type(exc).__name__}: {exc}"
        finally:
            for c in clients.values():
                c.close()
    if res.error or args.keep_logs:
        res.error += f" (logs in {tmp})" if res.error else ""
    else:
        shutil.rmtree(tmp, ignore_errors=True)
    return res


def probe_serfd(alloc: AddressAllocator) -> str:
    """'' if `python -m serfd` starts and answers RPC, else the reason it does not."""
    if importlib.util.find_spec("serfd") is None:
        return "package serfd is not importable"
    if importlib.util.find_spec("serfd.__main__") is None:
        return "serfd has no __main__ (python -m serfd fails)"
    tmp = Path(tempfile.mkdtemp(prefix="bench-probe-"))
    with Cluster(alloc, tmp) as cl:
        a = cl.serfd("probe", log_level="info")
        try:
            a.wait_ready(15)
        except Exception as exc:  # noqa: BLE001
            first = str(exc).splitlines()[0] if str(exc) else repr(exc)
            tail = a.log_tail(5).replace("\n", " | ")
            return f"python -m serfd did not come up: {first} [log: {tail}]"
    shutil.rmtree(tmp, ignore_errors=True)
    return ""


def med(xs: Sequence[float]) -> float:
    xs = [x for x in xs if not math.isnan(x)]
    return statistics.median(xs) if xs else math.nan


def fmt(x: float, digits: int = 3) -> str:
    if math.isnan(x):
        return "n/a"
    if math.isinf(x):
        return "inf"
    return f"{x:.{digits}f}"


def fmt_range(xs: Sequence[float], digits: int) -> str:
    xs = [x for x in xs if not math.isnan(x)]
    if not xs:
        return "n/a"
    if len(xs) == 1:
        return fmt(xs[0], digits)
    return f"{fmt(med(xs), digits)} [{fmt(min(xs), digits)}-{fmt(max(xs), digits)}]"


def ratio(a: float, b: float) -> str:
    if math.isnan(a) or math.isnan(b) or b == 0 or math.isinf(b):
        return "n/a"
    return "inf" if math.isinf(a) else f"{a / b:.2f}x"


def report(n: int, results: list[RepResult], impls: Sequence[str], notes: dict[str, str]) -> str:
    by = {i: [r for r in results if r.impl == i and r.n == n] for i in IMPLS}
    metrics = [
        ("join convergence (s)", lambda rs: [r.join_s for r in rs], 3),
        ("event p50 over nodes (ms)", lambda rs: [x for r in rs for x in r.event_p50_ms], 0),
        ("event p99 over nodes (ms)", lambda rs: [x for r in rs for x in r.event_p99_ms], 0),
        ("  to RPC stream p50 (ms)", lambda rs: [x for r in rs for x in r.stream_p50_ms], 0),
        ("  to RPC stream p99 (ms)", lambda rs: [x for r in rs for x in r.stream_p99_ms], 0),
        ("query all-N responses (ms)", lambda rs: [x for r in rs for x in r.query_all_ms], 0),
        ("query done (ms)", lambda rs: [x for r in rs for x in r.query_done_ms], 0),
        ("SIGKILL -> all see failed (s)", lambda rs: [r.fail_s for r in rs], 2),
        ("  poll sweep meanwhile (s)", lambda rs: [x for r in rs for x in r.fail_sweep_s], 3),
        ("RSS per agent (MiB)", lambda rs: [x for r in rs for x in r.rss_mib], 1),
        ("idle CPU per agent (% core)", lambda rs: [x for r in rs for x in r.cpu_pct], 2),
        ("threads per agent", lambda rs: [float(x) for r in rs for x in r.threads], 0),
        ("join RPC (s)", lambda rs: [x for r in rs for x in r.join_rpc_s], 2),
        ("idle bytes/s per agent", lambda rs: [x for r in rs for x in r.idle_bps], 0),
        ("idle packets/s per agent", lambda rs: [x for r in rs for x in r.idle_pps], 1),
        (f"events bytes/s per agent ({BURST_EVENTS} ev)",
         lambda rs: [x for r in rs for x in r.event_bps], 0),
        ("events packets/s per agent", lambda rs: [x for r in rs for x in r.event_pps], 1),
    ]
    reps = {i: len(by[i]) for i in IMPLS}
    head = f"== N={n}  (reps: serf {reps['serf'] or '-'}, serfd {reps['serfd'] or '-'}; "
    lines = [head + "median [min-max])"]
    w = [34, 24, 24, 11]
    lines.append(f"{'metric':<{w[0]}} {'serf':<{w[1]}} {'serfd':<{w[2]}} {'serfd/serf':<{w[3]}}")
    for label, get, digits in metrics:
        sv, dv = get(by["serf"]), get(by["serfd"])
        lines.append(
            f"{label:<{w[0]}} {fmt_range(sv, digits):<{w[1]}} {fmt_range(dv, digits):<{w[2]}} "
            f"{ratio(med(dv), med(sv)):<{w[3]}}"
        )
    for i in IMPLS:
        if i not in impls:
            lines.append(f"  note: {i} {notes.get(i, 'not requested')}")
        for r in by[i]:
            if r.error:
                lines.append(f"  {i} rep {r.rep}: {r.error.strip()}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, nargs="+", default=[3, 10, 20])
    ap.add_argument("--impl", nargs="+", choices=IMPLS, default=list(IMPLS))
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--idle", type=float, default=20.0, help="idle window for CPU (s)")
    ap.add_argument("--settle", type=float, default=5.0,
                    help="settling after the join and again before the idle window (s)")
    ap.add_argument("--events", type=int, default=10, help="timed user events per rep")
    ap.add_argument("--queries", type=int, default=5, help="timed queries per rep")
    ap.add_argument("--seed", type=int, default=None, help="seed for pauses and victims")
    ap.add_argument("--keep-logs", action="store_true", help="keep agent logs of good reps")
    ap.add_argument("--json", type=Path, default=None, help="write raw results here")
    ap.add_argument("--no-traffic", action="store_true",
                    help="do not count gossip bytes/packets with nftables")
    args = ap.parse_args(argv)
    if not args.no_traffic and (why := GossipCounters.unavailable()):
        print(f"NOTE: no traffic figures: {why}", flush=True)
        args.no_traffic = True

    # SIGTERM/SIGHUP unwind like Ctrl-C so every `with Cluster` kills its agents.
    def _raise(signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, _raise)
    signal.signal(signal.SIGHUP, _raise)

    rng = random.Random(args.seed)
    alloc = AddressAllocator(range(200, 240))
    impls = list(dict.fromkeys(args.impl))
    notes: dict[str, str] = {}
    if "serfd" in impls:
        why = probe_serfd(alloc)
        if why:
            impls.remove("serfd")
            notes["serfd"] = f"NOT RUNNABLE YET, serf figures only: {why}"
            print(f"NOTE: serfd {notes['serfd']}", flush=True)
    results: list[RepResult] = []
    try:
        for n in args.n:
            for rep in range(args.reps):
                for impl in impls:  # interleave implementations so drift hits both
                    r = run_rep(impl, n, rep, alloc, args, rng)
                    results.append(r)
                    print(
                        f"# {impl} N={n} rep {rep}: join {fmt(r.join_s)} s, event p50/p99 "
                        f"{fmt(med(r.event_p50_ms), 0)}/{fmt(med(r.event_p99_ms), 0)} ms, "
                        f"stream {fmt(med(r.stream_p50_ms), 0)}/{fmt(med(r.stream_p99_ms), 0)} ms, "
                        f"query all-N {fmt(med(r.query_all_ms), 0)} ms, fail "
                        f"{fmt(r.fail_s, 2)} s, RSS {fmt(med(r.rss_mib), 1)} MiB, CPU "
                        f"{fmt(med(r.cpu_pct), 2)} %"
                        + (f"  [{r.error.strip()}]" if r.error else ""),
                        flush=True,
                    )
            print(report(n, results, impls, notes) + "\n", flush=True)
    except KeyboardInterrupt:
        print("interrupted; all started agents were killed", file=sys.stderr)
        return 130
    finally:
        alloc.release_all()
        if args.json:
            args.json.write_text(json.dumps([asdict(r) for r in results], indent=1))
    print("== summary")
    for n in args.n:
        print(report(n, results, impls, notes) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
