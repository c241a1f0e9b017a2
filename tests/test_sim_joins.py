"""Join bursts in the deterministic simulation (issue 13): 100 nodes join one node at once.

memberlist sends each alive a fixed number of times (RetransmitMult x log10(N+1), 12 at
N = 100) to random members its senders know, and early in a burst they know few; so
now and then one node hears of every member but one, and memberlist leaves that pair to
the periodic push/pull (60 s at N = 100). serfd's join follow-up (a push/pull with a
random member ten gossip rounds after a join, again while that teaches something)
repairs it as the burst's gossip ends.
"""

from __future__ import annotations

import pytest

from serfd.memberlist.swim import StreamKind, StreamRequest
from serfd.testing.serf_sim import SerfSim
from serfd.testing.sim import Sim
from serfd.wire.framing import decode_push_pull

N = 100
# Serf's convergence model puts 99.99 % of 100 nodes within 10 gossip rounds (2.0 s)
# for one broadcast; a burst of 99 joins gets half as long again. The push/pull
# interval at N = 100 is 60 s (30 s scaled), the first one 30 to 60 s after start.
GOSSIP_BOUND = 3.0


def _star_join(layer: str, seed: int, loss: float, serf: dict[str, object] | None = None,
               **config: object) -> tuple[float | None, Sim]:
    """n1..n99 all join n0 at the same instant; the virtual seconds until every node
    knows every other alive (None: not within 20 s). Asserts on the way that every
    push/pull with Join=false opened until then was a join follow-up, not a periodic one."""
    sim: Sim = (SerfSim if layer == "serf" else Sim)(seed=seed, loss=loss, config=dict(config))
    plain_push_pulls: list[str] = []

    def on_stream(name: str, req: StreamRequest) -> None:
        if req.kind is StreamKind.PUSH_PULL and not decode_push_pull(req.plain)[0].join:
            plain_push_pulls.append(name)

    sim.on_stream = on_stream
    names = [f"n{i}" for i in range(N)]
    for i, name in enumerate(names):
        if isinstance(sim, SerfSim):
            sim.add_serf(name, **(serf or {}))
        else:
            sim.add_node(name)
        if i == 0:
            sim.run_until(1.0)
    for name in names[1:]:
        if isinstance(sim, SerfSim):
            sim.start_join(name, ["n0"])
        else:
            sim.join(name, "n0")
    start = sim.now

    def converged() -> bool:
        return all(_core_alive(sim, x) == N for x in names)

    done = sim.run_until(start + 20.0, converged, every=0.05)
    follow_ups = sum(_activity(sim, x).get("join_follow_up_push_pull", 0) for x in names)
    assert len(plain_push_pulls) == follow_ups, "a periodic push/pull ran during the burst"
    return (sim.now - start if done else None), sim


def _core_alive(sim: Sim, name: str) -> int:
    if isinstance(sim, SerfSim):
        return sim.serf(name).num_alive()
    return sim.ml(name).num_alive()


def _activity(sim: Sim, name: str) -> dict[str, int]:
    if isinstance(sim, SerfSim):
        return sim.serf(name).counters_view().activity
    return sim.ml(name).activity


# Seeds 38 (Serf layer) and 35 (memberlist) left one pair unheard of for good (until
# the periodic push/pull) before the join follow-up; the others are plain seeds.
@pytest.mark.parametrize(("layer", "seed", "loss"), [
    ("serf", 0, 0.0), ("serf", 1, 0.0), ("serf", 0, 0.05), ("serf", 38, 0.05),
    ("memberlist", 35, 0.05),
])
def test_hundred_simultaneous_joins_converge_by_gossip(layer: str, seed: int,
                                                        loss: float) -> None:
    """Every node knows every other within GOSSIP_BOUND of virtual time, with no periodic
    push/pull (none could have run by then, and the check in _star_join says none did)."""
    took, _sim = _star_join(layer, seed, loss)
    assert took is not None and took <= GOSSIP_BOUND, f"converged after {took} s"


def test_without_the_follow_up_a_burst_can_leave_a_pair_to_push_pull() -> None:
    """The straggler is real: memberlist's rules alone (no follow-up) leave seed 38's
    burst unconverged for 20 s, until the periodic push/pull would repair it. (Found
    before acks carried coordinates: the payload changes how gossip piggybacks on acks,
    so the seed's packet sequence needs them off.)"""
    took, sim = _star_join("serf", 38, 0.05, serf={"disable_coordinates": True},
                           join_follow_up=False)
    assert took is None
    assert isinstance(sim, SerfSim)
    short = [x for x in sim.nodes if sim.serf(x).num_alive() < N]
    assert 0 < len(short) <= 3, short
