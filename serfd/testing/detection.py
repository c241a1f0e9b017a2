"""Failure detection in the simulator: crash members one by one and time the verdicts.

A run builds a converged cluster of bare memberlist cores (``Sim.add_converged``) with
one set of ``MemberlistConfig`` switches, then crashes members one after another (each
once the previous one is dead everywhere, after a pause) and times, per crash:

* ``first``: crash -> the first member holds the victim suspect (the wait until some
  member probes it, plus that probe);
* ``detect``: crash -> every live member holds it dead (the ``leave`` notification),
  what the cluster bench measures on real agents as "SIGKILL -> all see failed".

and counts false verdicts: ``leave`` notifications about a member that never crashed
(one per observer: a live member declared dead by all of N-1 others counts N-1).
``false_verdicts`` counts them in a cluster where nobody crashes, under loss, stalls
or CPU-starved members (``serfd.testing.slow``); ``restart_verdicts`` those about a
member killed and started again.

The crash plan (victims, pauses) comes from its own ``random.Random(seed)``, so runs of
one seed with different switches crash the same members at the same instants; the
network's randomness then differs as soon as the switches make the cores send
differently. ``MEMBERLIST_RULES`` turns every serfd extra off (memberlist's and Serf's
behaviour), ``SERFD_RULES`` is what the agent runs.
"""

from __future__ import annotations

import math
import random
import statistics
from dataclasses import dataclass, field
from typing import Any

from serfd.memberlist.swim import Memberlist, Node
from serfd.testing.sim import Event, Sim
from serfd.testing.slow import SlowCore
from serfd.wire.messages import NodeStateType

__all__ = [
    "MEMBERLIST_RULES",
    "SERFD_RULES",
    "Crash",
    "DetectionRun",
    "crash_one_by_one",
    "false_verdicts",
    "memberlist_of",
    "pct",
    "restart_verdicts",
    "summary",
]

# Every behaviour beyond memberlist off: what a cluster of real serf agents does.
MEMBERLIST_RULES: dict[str, Any] = {
    "eager_gossip": False,
    "catch_up": False,
    "confirm_suspicions": False,
    "join_follow_up": False,
    "verified_suspicions": False,
}
# What the agent runs (serfd.agent.agent builds its MemberlistConfig so).
SERFD_RULES: dict[str, Any] = {
    "eager_gossip": True,
    "catch_up": True,
    "confirm_suspicions": True,
    "join_follow_up": True,
    "verified_suspicions": True,
}

POLL = 0.02  # how often a run looks for the first suspicion (simulated seconds)
GIVE_UP = 60.0  # a crash not detected everywhere by then fails the run


@dataclass
class Crash:
    victim: str
    at: float
    first: float = math.inf  # crash -> first suspicion anywhere
    detect: float = math.inf  # crash -> dead at every live member


@dataclass
class DetectionRun:
    n: int
    seed: int
    crashes: list[Crash] = field(default_factory=list)
    false_verdicts: int = 0


def pct(values: list[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..1); inf for an empty list."""
    if not values:
        return math.inf
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p * len(ordered)) - 1)]


def summary(values: list[float]) -> str:
    """Median, p90 and max, for a test's or bench's line."""
    return (f"median {statistics.median(values):.2f} s, p90 {pct(values, 0.9):.2f} s, "
            f"max {max(values):.2f} s")


def crash_one_by_one(
    n: int,
    seed: int,
    config: dict[str, Any],
    crashes: int,
    loss: float = 0.0,
    pause: float = 2.0,
    host: bool = False,
) -> DetectionRun:
    """``n`` converged members; ``crashes`` of them crash one after another, each
    ``pause`` + U(0, 1) s after the previous one was dead everywhere (the first after a
    warm-up of 5 s). With ``host`` the victims' machines go too (``Sim.crash``)."""
    plan = random.Random(seed)
    sim = Sim(seed=seed, loss=loss, config=dict(config))
    names = [f"n{i}" for i in range(n)]
    sim.add_converged(names)
    run = DetectionRun(n, seed)
    crashed: set[str] = set()
    heard: set[str] = set()  # the live members that hold the current victim dead
    live: set[str] = set(names)

    def on_event(ev: Event) -> None:
        if ev.kind != "leave":
            return
        if ev.node not in crashed:
            run.false_verdicts += 1
            return
        crash = run.crashes[-1]
        if ev.node == crash.victim and ev.observer in live:
            heard.add(ev.observer)
            if len(heard) == len(live):
                crash.detect = ev.at - crash.at

    sim.on_event = on_event
    sim.run_until(sim.now + 5.0)
    candidates = names[1:]
    for _ in range(crashes):
        sim.run_until(sim.now + pause + plan.random())
        victim = candidates.pop(plan.randrange(len(candidates)))
        crash = Crash(victim, sim.now)
        run.crashes.append(crash)
        crashed.add(victim)
        live.discard(victim)
        heard.clear()
        sim.crash(victim, host=host)
        cores = [memberlist_of(sim, name) for name in sorted(live)]

        def done(c: Crash = crash, cores: list[Memberlist] = cores) -> bool:
            if c.first == math.inf and any(
                    _suspected(m.get_node(c.victim)) for m in cores):
                c.first = sim.now - c.at
            return c.detect < math.inf

        if not sim.run_until(crash.at + GIVE_UP, done, every=POLL):
            raise AssertionError(f"seed {seed}: {victim} not dead everywhere in {GIVE_UP} s")
    return run


def memberlist_of(sim: Sim, name: str) -> Memberlist:
    """The memberlist core of ``name``, under a SlowCore if it is wrapped in one."""
    core = sim.nodes[name].core
    if isinstance(core, SlowCore):
        core = core.inner
    assert isinstance(core, Memberlist)
    return core


def _suspected(node: Node | None) -> bool:
    return node is not None and node.state in (NodeStateType.SUSPECT, NodeStateType.DEAD)


def false_verdicts(
    n: int,
    seed: int,
    config: dict[str, Any],
    loss: float = 0.0,
    stalls: list[float] | None = None,
    lags: list[float] | None = None,
    duration: float = 45.0,
) -> int:
    """``n`` converged members, nobody crashes; the verdicts 'dead' anyone gives.

    ``stalls``: one member after another stops processing for that many seconds
    (serfd.testing.slow), at a random instant, the next one 20 s after the previous one
    resumed. ``lags``: that many members process every input that late, for
    ``duration`` s. Otherwise the cluster just runs ``duration`` s (with ``loss``)."""
    plan = random.Random(seed)
    sim = Sim(seed=seed, loss=loss, config=dict(config))
    names = [f"n{i}" for i in range(n)]
    sim.add_converged(names)
    count = 0

    def on_event(ev: Event) -> None:
        nonlocal count
        if ev.kind == "leave":
            count += 1

    sim.on_event = on_event
    sim.run_until(sim.now + 5.0)
    slow = plan.sample(names, len(stalls or lags or []))
    if stalls:
        for name, length in zip(slow, stalls, strict=True):
            t = sim.now + plan.random() * 2.0
            node = sim.nodes[name]
            node.core = SlowCore(node.core, stalls=[(t, t + length)])
            sim.run_until(t + length + 20.0)
    elif lags:
        for name, lag in zip(slow, lags, strict=True):
            node = sim.nodes[name]
            node.core = SlowCore(node.core, lag=lag)
        sim.run_until(sim.now + duration)
    else:
        sim.run_until(sim.now + duration)
    return count


def restart_verdicts(n: int, seed: int, config: dict[str, Any], down: float,
                     loss: float = 0.0) -> int:
    """``n`` converged members; one is killed and started again ``down`` s later at its
    address, with no state, and joins n0 (as a restart with a snapshot rejoins). The
    verdicts 'dead' about it, by anyone, over the next 30 s."""
    plan = random.Random(seed)
    sim = Sim(seed=seed, loss=loss, config=dict(config))
    names = [f"n{i}" for i in range(n)]
    sim.add_converged(names)
    sim.run_until(sim.now + 5.0 + plan.random())
    victim = names[plan.randrange(1, n)]
    count = 0

    def on_event(ev: Event) -> None:
        nonlocal count
        if ev.kind == "leave" and ev.node == victim:
            count += 1

    sim.on_event = on_event
    addr = sim.nodes[victim].addr
    sim.crash(victim)
    sim.run_until(sim.now + down)
    sim.start_core(victim, addr)
    sim.join(victim, "n0")
    sim.run_until(sim.now + 30.0)
    return count
