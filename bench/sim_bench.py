"""The simulator's speed and the convergence it shows, at N = 100 and N = 1,000.

Prints, per case, simulated node-seconds per wall second (N x virtual seconds / wall
seconds: how much cluster life one second of this machine simulates) and convergence
percentiles in virtual time:

* ``star``: N nodes (bare memberlist cores, or whole Serfs) all join n0 at the same
  instant. Pair percentiles: when each (observer, member) pair became known alive,
  the time by which 99 % / 99.99 % / all pairs were. Then an idle stretch.
* ``converged``: N memberlist cores built converged (``Sim.add_converged``), idle for
  a while; then one new node joins n0, and then a member's meta update (the stand-in
  for a user event: one gossip broadcast) goes out. Node percentiles p50 / p99 /
  p99.99 of when each node heard, against Serf's convergence model at that N and loss
  (99.99 % of 1,000 nodes in 2.2 s, tests/test_sim_1000.py); the issue's target at
  N = 1,000 is 2.75 s.
* ``burst``: N whole Serfs (LZW compression on, as the agents run), 20 user events
  from n0 at once, as cluster_bench's "events" rows; per node, bytes (IP headers
  included) and datagrams sent per second over 5 s, and the events' delivery delays,
  eager gossip off (Serf's behaviour) and on (the agent's), with the on/off ratios.

Run: ``.venv/bin/python -m bench.sim_bench [--star 100] [--converged 1000] [--layers
memberlist serf] [--loss 0.0] [--seed 1] [--eager] [--burst 50 100]``. The default run takes about a
minute on one core. A star join of 1,000 takes minutes (``--star 1000``): its gossip is
N^2 x 16 messages.
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Callable

from serfd.core.serf import EventType, MemberEvent
from serfd.testing.serf_sim import Burst, SerfSim, build_cluster, event_burst
from serfd.testing.sim import Event, Sim

TARGET = 2.75  # issue 13: 99.99 % within 2.75 s of virtual time at N = 1,000


def serf_model(n: int, interval: float = 0.2, fanout: int = 3, loss: float = 0.0) -> float:
    """When Serf's convergence simulator (website/source/assets/javascripts/
    _simulator.js) reaches 99.99 % of n nodes: 2.2 s at N = 1,000."""
    contact = fanout / n * (1 - loss) * 0.5
    x = 0
    while 1 / (1 + (n + 1) * math.exp(-contact * n * x)) < 0.9999:
        x += 1
    return x * interval


def pct(values: list[float], p: float) -> float:
    """Nearest-rank percentile (inf for an empty list)."""
    if not values:
        return math.inf
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p * len(ordered)) - 1)]


def rate(n: int, virtual: float, wall: float) -> str:
    return f"{n * virtual / wall:8.0f} node-s/s ({virtual:.1f} s virtual in {wall:.1f} s)"


def star(layer: str, n: int, seed: int, loss: float, eager: bool, idle: float) -> None:
    """n nodes join n0 at once; pair percentiles, then the speed when idle."""
    config = {"eager_gossip": eager}
    names = [f"n{i}" for i in range(n)]
    known: dict[tuple[str, str], float] = {}
    start = 0.0
    if layer == "serf":
        ssim = SerfSim(seed=seed, loss=loss, config=config)
        sim: Sim = ssim
        for i, name in enumerate(names):
            ssim.add_serf(name)
            if i == 0:
                sim.run_until(1.0)
        w0 = time.perf_counter()
        start = sim.now
        for name in names[1:]:
            ssim.start_join(name, ["n0"])

        def step() -> None:
            for x in names:
                for ev in ssim.events_of(x):
                    if isinstance(ev, MemberEvent) and ev.type is EventType.MEMBER_JOIN:
                        for m in ev.members:
                            known.setdefault((x, m.name), sim.now - start)
    else:
        sim = Sim(seed=seed, loss=loss, config=config, record_events=False)

        def on_event(ev: Event) -> None:
            if ev.kind == "join":
                known.setdefault((ev.observer, ev.node), ev.at - start)

        sim.on_event = on_event
        for i, name in enumerate(names):
            sim.add_node(name)
            if i == 0:
                sim.run_until(1.0)
        w0 = time.perf_counter()
        start = sim.now
        for name in names[1:]:
            sim.join(name, "n0")

        def step() -> None:
            pass

    def done() -> bool:
        step()
        return len(known) >= n * n

    sim.run_until(start + 120.0, done, every=0.05)
    w1 = time.perf_counter()
    took = sim.now - start
    times = list(known.values()) + [math.inf] * (n * n - len(known))
    print(f"  {layer:10} star join N={n:<5} pairs p99 {pct(times, 0.99):5.2f} s  "
          f"p99.99 {pct(times, 0.9999):5.2f} s  all {pct(times, 1.0):5.2f} s | "
          f"{rate(n, took, w1 - w0)}")
    sim.on_event = None
    w1 = time.perf_counter()
    sim.run_until(sim.now + idle)
    w2 = time.perf_counter()
    print(f"  {layer:10} idle      N={n:<5} {'':50} | {rate(n, idle, w2 - w1)}")


def spread(sim: Sim, kind: str, about: str, expected: int) -> tuple[list[float], float]:
    """Run until ``expected`` other nodes reported ``kind`` about ``about``: (their
    delays, inf for those that did not within 10 s; the wall time)."""
    seen: dict[str, float] = {}
    start = sim.now

    def on_event(ev: Event) -> None:
        if ev.kind == kind and ev.node == about and ev.observer not in seen \
                and ev.observer != about:
            seen[ev.observer] = ev.at - start

    sim.on_event = on_event
    w0 = time.perf_counter()
    sim.run_until(start + 10.0, lambda: len(seen) >= expected, every=0.05)
    wall = time.perf_counter() - w0
    sim.on_event = None
    return list(seen.values()) + [math.inf] * (expected - len(seen)), wall


def converged(n: int, seed: int, loss: float, eager: bool, idle: float) -> None:
    """A converged memberlist cluster of n: idle speed, then a join and an event."""
    sim = Sim(seed=seed, loss=loss, config={"eager_gossip": eager}, record_events=False)
    w0 = time.perf_counter()
    sim.add_converged([f"n{i}" for i in range(n)])
    print(f"  memberlist built     N={n:<5} converged in {time.perf_counter() - w0:.1f} s "
          f"of wall time")
    w0 = time.perf_counter()
    sim.run_until(sim.now + idle)
    print(f"  memberlist idle      N={n:<5} {'':50} | "
          f"{rate(n, idle, time.perf_counter() - w0)}")

    def report(what: str, delays: list[float], wall: float, virtual: float) -> None:
        print(f"  memberlist {what:9} N={n:<5} p50 {pct(delays, 0.5):4.2f} s  p99 "
              f"{pct(delays, 0.99):4.2f} s  p99.99 {pct(delays, 0.9999):4.2f} s "
              f"(Serf's model {serf_model(n, loss=loss):.1f} s) | {rate(n, virtual, wall)}")

    sim.add_node("joiner")
    sim.join("joiner", "n0")
    t0 = sim.now
    delays, wall = spread(sim, "join", "joiner", n)
    report("join", delays, wall, sim.now - t0)
    sim.run_until(sim.now + 1.0)
    node = sim.nodes["n1"]
    assert node.delegate is not None
    node.delegate.meta = b"v2"
    sim.ml("n1").update_meta(sim.now)
    sim.service("n1")
    t0 = sim.now
    delays, wall = spread(sim, "update", "n1", n - 1)
    report("event", delays, wall, sim.now - t0)


def burst(n: int, seed: int, loss: float) -> None:
    """20 user events from n0 of n Serfs, eager gossip off and on: traffic and delays."""
    results: dict[bool, Burst] = {}
    for eager in (False, True):
        w0 = time.perf_counter()
        sim = build_cluster(n, seed=seed, settle=5.0,
                            config={"eager_gossip": eager, "enable_compression": True})
        sim.loss = loss
        b = results[eager] = event_burst(sim, "n0")
        wall = time.perf_counter() - w0
        print(f"  serf burst eager {'on ' if eager else 'off'} N={n:<5} "
              f"{b.bytes_per_node_s():6.0f} B/s {b.datagrams_per_node_s():5.1f} pkt/s per node"
              f"  delay p50 {b.delay(0.5) * 1e3:5.0f} ms  p99 {b.delay(0.99) * 1e3:5.0f} ms  "
              f"max {b.delay(1.0) * 1e3:5.0f} ms | {wall:.1f} s wall with the build")
    off, on = results[False], results[True]
    print(f"  serf burst on/off   N={n:<5} bytes {on.bytes / off.bytes:4.2f}x  "
          f"packets {on.datagrams / off.datagrams:4.2f}x  "
          f"p50 {on.delay(0.5) / off.delay(0.5):4.2f}x  "
          f"p99 {on.delay(0.99) / off.delay(0.99):4.2f}x")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--star", type=int, nargs="*", default=[100],
                    help="sizes of the star-join cases (default 100)")
    ap.add_argument("--converged", type=int, nargs="*", default=[100, 1000],
                    help="sizes of the converged-cluster cases (default 100 1000)")
    ap.add_argument("--layers", nargs="*", default=["memberlist", "serf"],
                    choices=["memberlist", "serf"], help="layers for the star join")
    ap.add_argument("--burst", type=int, nargs="*", default=[],
                    help="sizes of the user-event burst cases (eager off and on; none by "
                         "default)")
    ap.add_argument("--loss", type=float, default=0.0)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--idle", type=float, default=10.0, help="idle virtual seconds")
    ap.add_argument("--eager", action="store_true",
                    help="eager gossip (the agent's setting; memberlist's rules without)")
    args = ap.parse_args(argv)
    print(f"sim_bench: seed {args.seed}, loss {args.loss:.0%}, "
          f"eager gossip {'on' if args.eager else 'off'}; issue 13's targets at N = 1,000: "
          f"99.99 % within {TARGET} s of virtual time, >= 1,000 node-s/s")
    cases: list[Callable[[], None]] = []
    for n in args.star:
        for layer in args.layers:
            cases.append(lambda layer=layer, n=n: star(
                layer, n, args.seed, args.loss, args.eager, args.idle))
    for n in args.converged:
        cases.append(lambda n=n: converged(n, args.seed, args.loss, args.eager, args.idle))
    for n in args.burst:
        cases.append(lambda n=n: burst(n, args.seed, args.loss))
    for case in cases:
        case()


if __name__ == "__main__":
    main()
