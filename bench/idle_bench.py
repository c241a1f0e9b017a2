#!/usr/bin/env python3
"""Idle cost of one agent: CPU, wakeups and RSS of settled serf and serfd clusters.

One cluster per implementation, all started at once (so machine noise hits both), each
of N agents on its own /24; nodes 1..N-1 RPC-join node0; once every agent lists all N
alive and ``--settle`` seconds passed, every RPC client is closed and the agents are
left alone for ``--window`` seconds. Per agent, from /proc:

* CPU: utime+stime over the window, as % of one core (clock ticks: 10 ms);
* wakeups: voluntary + involuntary context switches of all its threads over the window,
  per second (a thread that blocks and is woken again counts one each time);
* RSS: VmRSS at the end of the window; threads.

    python -m bench.idle_bench --n 10 [--impl serf serfd] [--window 60] [--settle 5]

``--baseline DIR`` adds a third cluster running the serfd of another checkout (say
/work/main: before and after a change, in the same run); ``--hold S`` keeps the clusters
up S seconds after the window and prints the PIDs (for ``strace -c -f -p PID`` or
``perf``); ``--extra-toml`` is added to every serfd's drop-in.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from contextlib import ExitStack
from pathlib import Path

from tests.integration.harness import (
    AddressAllocator,
    Agent,
    Cluster,
    RPCClient,
    proc_threads,
)

IMPLS = ("serf", "serfd")
READY_TIMEOUT = 30.0
JOIN_TIMEOUT = 60.0


def ctx_switches(pid: int) -> int:
    """Voluntary + involuntary context switches of every thread of ``pid``."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            text = (task / "status").read_text()
        except OSError:  # the thread ended
            continue
        for line in text.splitlines():
            if line.startswith(("voluntary_ctxt_switches:", "nonvoluntary_ctxt_switches:")):
                total += int(line.split()[1])
    return total


def start(cl: Cluster, impl: str, n: int, extra_toml: str, python: str | None = None) -> None:
    for i in range(n):
        tags = {"role": "bench", "idx": str(i)}
        if impl == "serf":
            cl.serf(f"node{i}", tags=tags)
        else:
            cl.serfd(f"node{i}", tags=tags, log_level="info", extra_toml=extra_toml,
                     python=python)


def baseline_python(checkout: Path, tmp: Path) -> str:
    """An interpreter wrapper that runs ``python -m serfd`` from ``checkout``."""
    wrapper = tmp / "python-baseline"
    wrapper.write_text(f'#!/bin/sh\nPYTHONPATH={checkout} exec {sys.executable} "$@"\n')
    wrapper.chmod(0o755)
    return str(wrapper)


def join(agents: Sequence[Agent]) -> None:
    seed = agents[0].bind_addr
    for a in agents[1:]:
        with RPCClient(a.rpc_target, timeout=10.0) as c:
            c.join([seed])
    names = {a.name for a in agents}
    deadline = time.monotonic() + JOIN_TIMEOUT
    pending = list(agents)
    while pending:
        if time.monotonic() > deadline:
            raise TimeoutError(f"not converged: {[a.name for a in pending]}")
        for a in list(pending):
            with RPCClient(a.rpc_target, timeout=5.0) as c:
                if {m.name for m in c.members() if m.status == "alive"} >= names:
                    pending.remove(a)
        time.sleep(0.2)


def summary(xs: Sequence[float], digits: int) -> str:
    if not xs:
        return "n/a"
    return (f"{statistics.mean(xs):.{digits}f} (median {statistics.median(xs):.{digits}f}, "
            f"{min(xs):.{digits}f}-{max(xs):.{digits}f})")


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=10)
    ap.add_argument("--impl", nargs="+", choices=IMPLS, default=list(IMPLS))
    ap.add_argument("--window", type=float, default=60.0, help="idle window (s)")
    ap.add_argument("--settle", type=float, default=5.0, help="after convergence (s)")
    ap.add_argument("--hold", type=float, default=0.0, help="keep running after (s)")
    ap.add_argument("--extra-toml", default="", help="added to every serfd drop-in")
    ap.add_argument("--baseline", type=Path, default=None,
                    help="also run the serfd of this checkout (e.g. /work/main)")
    args = ap.parse_args(argv)

    alloc = AddressAllocator()
    tmp = Path(tempfile.mkdtemp(prefix="idle-bench-"))
    try:
        with ExitStack() as stack:
            clusters = {}
            for impl in args.impl:
                cl = stack.enter_context(Cluster(alloc, tmp / impl))
                start(cl, impl, args.n, args.extra_toml)
                clusters[impl] = cl
            if args.baseline is not None:
                label = f"serfd@{os.path.basename(os.path.abspath(args.baseline))}"
                cl = stack.enter_context(Cluster(alloc, tmp / "baseline"))
                start(cl, "serfd", args.n, args.extra_toml,
                      python=baseline_python(args.baseline.absolute(), tmp))
                clusters[label] = cl
            for cl in clusters.values():
                cl.wait_ready(READY_TIMEOUT)
            for cl in clusters.values():
                join(cl.agents)
            time.sleep(args.settle)
            pids = {impl: [a.pid or 0 for a in cl.agents] for impl, cl in clusters.items()}
            cpu0 = {p: a.cpu_seconds() for cl in clusters.values() for a in cl.agents
                    for p in [a.pid]}
            sw0 = {p: ctx_switches(p) for ps in pids.values() for p in ps}
            t0 = time.monotonic()
            time.sleep(args.window)
            window = time.monotonic() - t0
            print(f"N={args.n}, window {window:.1f} s")
            for impl, cl in clusters.items():
                cpu = [100.0 * (a.cpu_seconds() - cpu0[a.pid]) / window for a in cl.agents]
                sw = [(ctx_switches(a.pid or 0) - sw0[a.pid or 0]) / window for a in cl.agents]
                rss = [a.rss_kib() / 1024.0 for a in cl.agents]
                thr = [float(proc_threads(a.pid or 0)) for a in cl.agents]
                print(f"  {impl:10} CPU % core  {summary(cpu, 3)}")
                print(f"  {impl:10} wakeups/s   {summary(sw, 1)}")
                print(f"  {impl:10} RSS MiB     {summary(rss, 1)}")
                print(f"  {impl:10} threads     {summary(thr, 0)}")
            sys.stdout.flush()
            if args.hold > 0:
                for impl, ps in pids.items():
                    print(f"  {impl} pids: {' '.join(map(str, ps))}", flush=True)
                time.sleep(args.hold)
    finally:
        alloc.release_all()
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
