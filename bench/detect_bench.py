"""Failure detection and false verdicts in the simulator: memberlist's rules against serfd's.

Three rule sets run the same seeded clusters (``serfd.testing.detection``):

* ``memberlist``: every serfd extra off (what a cluster of real serf agents does);
* ``serfd-0.2``: the agent's switches before verified suspicions (eager gossip,
  confirmation checks);
* ``serfd``: what the agent runs now (verified suspicions on).

Detection: converged clusters of N bare memberlist cores; members crash one by one, each
15-16 s after the previous one was dead everywhere (so Lifeguard scores are back to 0, as
in the cluster bench's single kill); the time from the crash until every live member
holds it dead (``leave``), and until the first one suspects it. A ``process`` crash is a
killed agent (its host refuses TCP connects), a ``host`` crash a machine gone (connects
time out).

False verdicts: nobody crashes; ``leave`` notifications seen by anyone, summed over the
seeds, under 10 % loss, members that stall (one after another, at a random instant), and
CPU-starved members (every input handled that late), as in tests/test_verified_sim.py.

Run: ``.venv/bin/python -m bench.detect_bench [--n 20 50 100] [--seeds 6] [--crashes 6]
[--loss 0 0.05 0.1] [--faults] [--only-faults]``. About a minute per N = 100 row set on
one core.
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

from serfd.testing.detection import (
    MEMBERLIST_RULES,
    SERFD_RULES,
    crash_one_by_one,
    false_verdicts,
    pct,
)

RULES: dict[str, dict[str, Any]] = {
    "memberlist": MEMBERLIST_RULES,
    "serfd-0.2": {**SERFD_RULES, "verified_suspicions": False},
    "serfd": SERFD_RULES,
}

FAULTS: dict[str, dict[str, Any]] = {
    "10% loss": {"loss": 0.10},
    "stalls 2-5 s": {"loss": 0.05, "stalls": [2.0, 3.0, 4.0, 5.0]},
    "stalls 5.5-6 s": {"loss": 0.05, "stalls": [5.5, 6.0, 5.5, 6.0]},
    "stalls 7-8 s": {"loss": 0.05, "stalls": [7.0, 8.0]},
    "starved 0.6-1.5 s, 10% loss": {"loss": 0.10, "lags": [0.6, 1.0, 1.5]},
    "starved 2-4 s": {"loss": 0.05, "lags": [2.0, 3.0, 4.0]},
    "starved 4.5-5 s": {"loss": 0.05, "lags": [4.5, 5.0]},
}


def detection_rows(n: int, seeds: int, crashes: int, loss: float, host: bool) -> None:
    medians: dict[str, float] = {}
    for name, rules in RULES.items():
        t = time.monotonic()
        detect: list[float] = []
        first: list[float] = []
        wrong = 0
        for seed in range(1, seeds + 1):
            run = crash_one_by_one(n, seed, rules, crashes, loss=loss, pause=15.0,
                                   host=host)
            detect += [c.detect for c in run.crashes]
            first += [c.first for c in run.crashes]
            wrong += run.false_verdicts
        medians[name] = statistics.median(detect)
        ratio = medians[name] / medians["memberlist"]
        print(f"N={n:<4} {'host' if host else 'process':7s} loss {loss:4.0%} {name:10s} "
              f"detect median {medians[name]:5.2f} p90 {pct(detect, 0.9):5.2f} "
              f"max {max(detect):5.2f} s ({ratio:4.2f}x) | first suspicion median "
              f"{statistics.median(first):4.2f} p90 {pct(first, 0.9):4.2f} s | "
              f"false {wrong} | {len(detect)} crashes, {time.monotonic() - t:.0f} s wall",
              flush=True)


def fault_rows(n: int, seeds: int) -> None:
    for fault, kw in FAULTS.items():
        line = f"N={n:<4} {fault:28s}"
        for name, rules in RULES.items():
            counts = [false_verdicts(n, seed, rules, **kw) for seed in range(1, seeds + 1)]
            line += f" | {name} {sum(counts):4d}"
        print(line + f"  ({seeds} seeds)", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, nargs="+", default=[20, 50, 100])
    ap.add_argument("--seeds", type=int, default=6)
    ap.add_argument("--crashes", type=int, default=6)
    ap.add_argument("--loss", type=float, nargs="+", default=[0.0, 0.05, 0.10])
    ap.add_argument("--faults", action="store_true", help="also count false verdicts")
    ap.add_argument("--only-faults", action="store_true")
    args = ap.parse_args()
    for n in args.n:
        if not args.only_faults:
            for loss in args.loss:
                for host in (False, True):
                    detection_rows(n, args.seeds, args.crashes, loss, host)
        if args.faults or args.only_faults:
            fault_rows(n, args.seeds)


if __name__ == "__main__":
    main()
