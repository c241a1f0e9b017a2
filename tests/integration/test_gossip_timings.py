"""[gossip] timings on real processes: a shorter probe interval on the serfd nodes of a
mixed cluster gets a SIGKILLed serf agent declared failed sooner than the default
timings can.

No race between two timed runs: the test runs the override only and compares it with
a bound the default timings cannot beat. Under memberlist's rules a member is declared
dead no sooner than the minimum suspicion timeout after someone suspected it, and
nobody can suspect a member before it is gone: SuspicionMult x max(1, log10 N) x
ProbeInterval = 4 x 1 x 1 s = 4 s after the kill with lan's timings. serfd's verified
suspicions end sooner than that floor, so the serfd nodes here turn them off (they are
a separate shortening, tested in simulation: tests/test_timings_sim.py). With
probe_interval 200ms the floor is 0.8 s and the kill is seen in about 1.2 s (1.07-1.24 s
in the same 4-member cluster simulated; the default takes 5.1-6.1 s there).
"""

from __future__ import annotations

import time

from serfd.memberlist.profiles import LAN
from serfd.memberlist.suspicion import suspicion_timeout
from tests.integration.harness import Cluster
from tests.support import WaitTimeout

READY_TIMEOUT = 15.0
CONVERGE_TIMEOUT = 10.0

FAST = """
[gossip]
probe_interval = "200ms"
probe_timeout = "100ms"
verified_suspicions = false
"""


def test_a_shorter_probe_interval_detects_a_killed_serf_agent_before_the_default_can(
        cluster: Cluster) -> None:
    s0 = cluster.serf("s0")
    s0.wait_ready(READY_TIMEOUT)
    serfds = [cluster.serfd(f"d{i}", join=[s0.bind_addr], extra_toml=FAST) for i in range(3)]
    for d in serfds:
        d.wait_ready(READY_TIMEOUT)
    everyone = [s0, *serfds]
    cluster.wait_all_alive(everyone, timeout=CONVERGE_TIMEOUT)

    # The earliest the default (lan) timings could declare s0 dead after the kill.
    bound = suspicion_timeout(LAN.suspicion_mult, len(everyone), LAN.probe_interval)
    assert bound == 4.0
    killed = time.monotonic()
    s0.kill()
    try:
        left = max(0.0, killed + bound - time.monotonic())
        cluster.wait_statuses(serfds, {"s0": "failed"}, timeout=left, interval=0.05)
    except WaitTimeout as exc:
        raise AssertionError(
            f"s0 not failed on every serfd node within {bound} s of the kill, the earliest "
            f"the default timings allow: {exc}") from None
    took = time.monotonic() - killed
    print(f"\nSIGKILL -> failed on 3 serfd nodes (probe_interval 200ms): {took:.2f} s "
          f"(default timings: at least {bound:.1f} s)")
    assert took < bound
