#!/usr/bin/env python3
"""Flood benchmark: a real `serf` agent vs `serfd` receiving the same flood from a serf peer.

For each flood kind and implementation, every rep starts a fresh two-node cluster on its
own 127.A.B.0/24: a real ``serf agent`` (the flooder) and the receiver (``serf`` or
``serfd``), with the same shell handler for ``user:flood`` and ``query:flood`` on the
receiver (it appends a line to a file, sleeps ``--handler-sleep`` s and prints the node
name). Through the flooder's RPC, pipelined as fast as it takes them:

* ``events``: ``--events`` user events (coalesce=false), then one push/pull (an RPC
  ``join`` from the flooder to the receiver: Serf's state exchange, which it does every
  30 s anyway, carries the last 512 events in one burst);
* ``queries``: ``--queries`` queries with RequestAck, a timeout of ``--query-timeout``
  (default 1000h) and ``--relay-factor``; the window goes on at least until the
  receiver acked them all (queries travel by gossip only, ~50 a second from one peer).

Measured on the receiver from the first command until ``--window`` s after the flood
(gossip from one peer keeps delivering it for about that long):

* event-loop latency: the round trip of RPC ``members`` on its own connection every
  50 ms, p50/p99/max (a call with no answer counts as its elapsed time): the measure
  both implementations share;
* serfd's own event-loop lag (``loop_lag_p99_ms``/``max`` of ``serfctl info``: how late
  its loop ran its gossip timer, over the last minute), read at the end of the window;
* RSS (``VmRSS``) just before the flood, its peak in the window, and at the end;
* CPU seconds of the receiver process (utime+stime) in the window; time from the end of
  the flood (and after the queries arrived) to the end of the first 2 s under 5 % of a
  core; the handler runs started in the window (lines in the handler's file).

Tables print the median over reps and the serfd/serf ratio of the medians.

    python -m bench.flood_bench [--impl serf serfd] [--flood events queries] [--reps R]
        [--events 1500] [--queries 500] [--handler-sleep 1] [--window 30]
        [--stuck-streams N] [--json FILE]

With ``--stuck-streams N``, an RPC client connected to the receiver holds N ``stream``
subscriptions (type ``*``) and a debug ``monitor`` and never reads (4 KiB receive
buffer), for the whole flood.
"""

from __future__ import annotations

import argparse
import json
import math
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tests.integration.flood import (
    HOUR_NS,
    Flooder,
    StuckStreamClient,
    Watcher,
    nearest_rank,
    wait_idle,
)
from tests.integration.harness import AddressAllocator, Cluster, RPCClient

IMPLS = ("serf", "serfd")
FLOODS = ("events", "queries")
IDLE_WINDOW = 2.0  # s
IDLE_CPU = 0.05  # fraction of one core

HANDLER_SH = """#!/bin/sh
echo "$SERF_EVENT" >> "{dir}/$SERF_SELF_NAME.runs"
cat > /dev/null
sleep {sleep}
echo "$SERF_SELF_NAME"
"""

COLUMNS = [  # key, header, format
    ("p50_ms", "RPC p50 (ms)", "{:.1f}"),
    ("p99_ms", "RPC p99 (ms)", "{:.0f}"),
    ("max_ms", "RPC max (ms)", "{:.0f}"),
    ("rss_before", "RSS before (MiB)", "{:.1f}"),
    ("rss_peak", "RSS peak (MiB)", "{:.1f}"),
    ("rss_after", "RSS after (MiB)", "{:.1f}"),
    ("cpu_s", "CPU (s)", "{:.2f}"),
    ("idle_s", "idle after (s)", "{:.1f}"),
    ("runs", "handler runs", "{:.0f}"),
    ("acked", "queries acked", "{:.0f}"),
    ("lag_p99_ms", "loop lag p99 (ms)", "{:.0f}"),
    ("lag_max_ms", "loop lag max (ms)", "{:.0f}"),
]


def run_rep(impl: str, kind: str, alloc: AddressAllocator,
            args: argparse.Namespace) -> dict[str, float]:
    tmp = Path(tempfile.mkdtemp(prefix=f"floodbench-{impl}-{kind}-"))
    handler = tmp / "handler.sh"
    handler.write_text(HANDLER_SH.format(dir=tmp, sleep=args.handler_sleep))
    handler.chmod(0o755)
    with Cluster(alloc, tmp) as cl:
        flooder = cl.serf("flooder", extra_args=["-log-level=info"])
        flooder.wait_ready(15)
        if impl == "serf":
            recv: Any = cl.serf("recv", extra_args=[
                "-log-level=info",
                "-event-handler", f"user:flood={handler}",
                "-event-handler", f"query:flood={handler}"])
        else:
            recv = cl.serfd("recv", log_level="info", extra_toml=f"""
[handlers]
"user:flood" = ["{handler}"]
"query:flood" = ["{handler}"]
""")
        cl.wait_ready(30)
        recv.join([flooder.bind_addr])
        cl.wait_all_alive(timeout=30)
        events, queries = (args.events, 0) if kind == "events" else (0, args.queries)
        stuck = (StuckStreamClient(recv.rpc_addr, monitor_level="debug",
                                   streams=args.stuck_streams)
                 if args.stuck_streams else None)
        watcher = Watcher(recv.rpc_addr, recv.pid, interval=0.05).start()
        fl = Flooder(flooder.rpc_addr, events, queries,
                     query_timeout_ns=round(args.query_timeout * HOUR_NS),
                     relay_factor=args.relay_factor)
        try:
            time.sleep(1.0)  # baseline samples
            before = watcher.sample()
            res = fl.run(accept_timeout=30)
            flood_end = time.monotonic()
            if res.replied != events + queries:
                raise RuntimeError(f"flooder accepted {res.replied} of {events + queries}: "
                                   f"{res.errors[:3]}")
            with RPCClient(flooder.rpc_target, timeout=15) as c:
                c.join([recv.bind_addr])  # push/pull now
            if queries:
                fl.wait_acks("recv", queries, timeout=args.window)
            since = time.monotonic()
            # The window always lasts --window s after the flood (gossip keeps delivering
            # it that long); idle is when the first quiet 2 s ended, if any.
            time.sleep(max(0.0, flood_end + args.window - time.monotonic()))
            idle = wait_idle(watcher, since, flood_end + args.window, IDLE_WINDOW, IDLE_CPU)
            end = watcher.sample()
            # serfd samples its own loop's lateness over the last minute (serf has no loop).
            lag = recv.stats().get("serfd", {}) if impl == "serfd" else {}
        finally:
            watcher.stop()
            fl.close()
            if stuck is not None:
                stuck.close()
        lat = watcher.latency_values(before.t)
        try:
            runs = len((tmp / "recv.runs").read_text().splitlines())
        except FileNotFoundError:
            runs = 0
        return {
            "p50_ms": nearest_rank(lat, 0.5) * 1000,
            "p99_ms": nearest_rank(lat, 0.99) * 1000,
            "max_ms": max(lat) * 1000,
            "rss_before": before.rss_kib / 1024,
            "rss_peak": watcher.rss_peak_kib(before.t) / 1024,
            "rss_after": end.rss_kib / 1024,
            "cpu_s": end.cpu_s - before.cpu_s,
            "idle_s": math.inf if idle is None else idle - flood_end,
            "runs": runs,
            "acked": res.acks.get("recv", 0),
            "lag_p99_ms": float(lag.get("loop_lag_p99_ms", "nan")),
            "lag_max_ms": float(lag.get("loop_lag_max_ms", "nan")),
        }


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--impl", nargs="+", choices=IMPLS, default=list(IMPLS))
    ap.add_argument("--flood", nargs="+", choices=FLOODS, default=list(FLOODS))
    ap.add_argument("--reps", type=int, default=1)
    ap.add_argument("--events", type=int, default=1500)
    ap.add_argument("--queries", type=int, default=500)
    ap.add_argument("--query-timeout", type=float, default=1000.0, help="hours")
    ap.add_argument("--relay-factor", type=int, default=0)
    ap.add_argument("--handler-sleep", type=float, default=1.0, help="seconds")
    ap.add_argument("--window", type=float, default=30.0,
                    help="seconds measured after the flood")
    ap.add_argument("--stuck-streams", type=int, default=0,
                    help="an RPC client that never reads holds this many `stream` "
                         "subscriptions (type *) and a debug `monitor` on the receiver")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)

    def _raise(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, _raise)
    signal.signal(signal.SIGHUP, _raise)
    alloc = AddressAllocator(range(200, 240))
    results: dict[tuple[str, str], list[dict[str, float]]] = {}
    try:
        for _ in range(args.reps):
            for kind in args.flood:
                for impl in args.impl:  # interleaved, so machine noise hits both
                    r = run_rep(impl, kind, alloc, args)
                    results.setdefault((impl, kind), []).append(r)
                    print(f"done {impl} {kind}: {json.dumps(r)}", file=sys.stderr, flush=True)
    finally:
        alloc.release_all()

    def med(impl: str, kind: str, key: str) -> float:
        return statistics.median(r[key] for r in results[(impl, kind)])

    print(f"\nflood: {args.events} user events / {args.queries} queries (timeout "
          f"{args.query_timeout:g}h, relay factor {args.relay_factor}) from one serf peer; "
          f"handler sleeps {args.handler_sleep:g} s; stuck stream subscriptions "
          f"{args.stuck_streams}; median of {args.reps} rep(s)\n")
    print("| flood | receiver | " + " | ".join(h for _, h, _ in COLUMNS) + " |")
    print("|---|---|" + "---|" * len(COLUMNS))
    for kind in args.flood:
        for impl in args.impl:
            cells = [fmt.format(v) if math.isfinite(v := med(impl, kind, k)) else "–"  # noqa: RUF001 - a dash for "no figure"
                     for k, _, fmt in COLUMNS]
            print(f"| {kind} | {impl} | " + " | ".join(cells) + " |")
        if set(args.impl) == set(IMPLS):
            cells = []
            for k, _, _ in COLUMNS:
                a, b = med("serfd", kind, k), med("serf", kind, k)
                cells.append(f"{a / b:.2f}x" if b and math.isfinite(a) and math.isfinite(b)
                             else "n/a")
            print(f"| {kind} | serfd/serf | " + " | ".join(cells) + " |")
    if args.json:
        args.json.write_text(json.dumps(
            {f"{i}/{k}": v for (i, k), v in results.items()}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
