#!/usr/bin/env python3
"""Event and query benchmark: real HashiCorp `serf` vs `serfd` on loopback.

For each N and implementation, every rep starts N agents on a fresh 127.A.B.0/24 with
a user-event handler that records the wall-clock time it ran and a query handler
(``printf '%s:' $SERF_SELF_NAME; cat``), star-joins them and waits until all are alive.
Then, from node0 over RPC:

* user events (coalesce=false): latency from the RPC call to each node's handler;
  per event p50 and p99 (nearest rank) across the N nodes, then the median over events;
* queries with RequestAck to all N: time until all N responses arrived ("query RTT"),
  and until the ``done`` record (serfd ends early once all answered; Serf waits for
  its deadline).

Stimuli are separated by random 0.25-0.65 s pauses (anti phase-lock, SERF-BASELINE.md).

    python -m bench.events_bench --n 3 10 20 [--impl serf serfd] [--reps R] [--events E]
"""

from __future__ import annotations

import argparse
import math
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from tests.integration.harness import AddressAllocator, Cluster, RPCClient
from tests.support import wait_until

IMPLS = ("serf", "serfd")

EVENT_SH = """#!/bin/sh
echo "$SERF_USER_EVENT $(date +%s.%N)" >> "{dir}/$SERF_SELF_NAME.events"
"""
QUERY_SH = """#!/bin/sh
printf '%s:' "$SERF_SELF_NAME"
cat
"""


def _script(path: Path, text: str) -> str:
    path.write_text(text)
    path.chmod(0o755)
    return str(path)


def nearest_rank(xs: Sequence[float], q: float) -> float:
    s = sorted(xs)
    return s[max(0, math.ceil(q * len(s)) - 1)]


def run_rep(impl: str, n: int, alloc: AddressAllocator, args: argparse.Namespace,
            rng: random.Random) -> dict[str, list[float]]:
    tmp = Path(tempfile.mkdtemp(prefix=f"evbench-{impl}-n{n}-"))
    out = tmp / "events"
    out.mkdir()
    ev = _script(tmp / "event.sh", EVENT_SH.format(dir=out))
    qh = _script(tmp / "query.sh", QUERY_SH)
    res: dict[str, list[float]] = {"p50": [], "p99": [], "query_all": [], "query_done": []}
    with Cluster(alloc, tmp) as cl:
        for i in range(n):
            if impl == "serf":
                cl.serf(f"node{i}", extra_args=["-log-level=info", "-event-handler",
                                                f"user={ev}", "-event-handler",
                                                f"query:benchq={qh}"])
            else:
                cl.serfd(f"node{i}", log_level="info", extra_toml=f"""
[handlers]
"user" = "{ev}"
"query:benchq" = ["{qh}"]
""")
        cl.wait_ready(30)
        seed = cl.agents[0]
        for a in cl.agents[1:]:
            a.join([seed.bind_addr])
        cl.wait_all_alive(timeout=60)
        time.sleep(1.0)
        with RPCClient(seed.rpc_target, timeout=30.0) as c:
            for k in range(args.events):
                time.sleep(rng.uniform(0.25, 0.65))
                name = f"e{k}"
                t0 = time.time()
                c.event(name, b"", False)

                def arrived(name: str = name) -> list[float] | None:
                    times = []
                    for a in cl.agents:
                        try:
                            lines = (out / f"{a.name}.events").read_text().splitlines()
                        except FileNotFoundError:
                            return None
                        got = [float(x.split()[1]) for x in lines if x.split()[0] == name]
                        if not got:
                            return None
                        times.append(got[0])
                    return times

                wait_until(lambda: arrived() is not None, 20, interval=0.01, desc=name)
                lat = [(t - t0) * 1000 for t in arrived() or []]
                res["p50"].append(nearest_rank(lat, 0.5))
                res["p99"].append(nearest_rank(lat, 0.99))
            for _ in range(args.queries):
                time.sleep(rng.uniform(0.25, 0.65))
                t0 = time.monotonic()
                responders: set[str] = set()
                all_at = math.inf
                c.client.set_timeout(30)
                c.client.open_stream("query", {
                    "FilterNodes": [], "FilterTags": {}, "RequestAck": True, "RelayFactor": 0,
                    "Timeout": 0, "Name": "benchq", "Payload": b"ping"})
                while True:
                    _, rec = c.client.read_record()
                    if rec.get("Type") == "response":
                        responders.add(rec.get("From"))
                        if len(responders) == n:
                            all_at = (time.monotonic() - t0) * 1000
                    elif rec.get("Type") == "done":
                        break
                res["query_all"].append(all_at)
                res["query_done"].append((time.monotonic() - t0) * 1000)
    return res


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, nargs="+", default=[3, 10, 20])
    ap.add_argument("--impl", nargs="+", choices=IMPLS, default=list(IMPLS))
    ap.add_argument("--reps", type=int, default=1)
    ap.add_argument("--events", type=int, default=8)
    ap.add_argument("--queries", type=int, default=3)
    ap.add_argument("--seed", type=int, default=None)
    args = ap.parse_args(argv)
    rng = random.Random(args.seed)
    alloc = AddressAllocator()
    table: dict[tuple[str, int], dict[str, list[float]]] = {}
    try:
        for n in args.n:
            for impl in args.impl:
                agg: dict[str, list[float]] = {}
                for _ in range(args.reps):
                    for k, v in run_rep(impl, n, alloc, args, rng).items():
                        agg.setdefault(k, []).extend(v)
                table[(impl, n)] = agg
                print(f"done {impl} N={n}", file=sys.stderr, flush=True)
    finally:
        alloc.release_all()
    med = statistics.median
    print("| N | impl | event p50 (ms) | event p99 (ms) | query all-N responses (ms) "
          "| query done (ms) |")
    print("|---|---|---|---|---|---|")
    for n in args.n:
        for impl in args.impl:
            r = table[(impl, n)]
            print(f"| {n} | {impl} | {med(r['p50']):.0f} | {med(r['p99']):.0f} "
                  f"| {med(r['query_all']):.0f} | {med(r['query_done']):.0f} |")
        if set(args.impl) == set(IMPLS):
            a, b = table[("serfd", n)], table[("serf", n)]
            ratios = [med(a[k]) / med(b[k]) if med(b[k]) else math.nan
                      for k in ("p50", "p99", "query_all", "query_done")]
            print(f"| {n} | serfd/serf | {ratios[0]:.2f}x | {ratios[1]:.2f}x "
                  f"| {ratios[2]:.2f}x | {ratios[3]:.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
