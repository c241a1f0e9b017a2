"""[gossip] timings in simulation: the memberlist the agent builds from a Config with a
shorter probe interval detects a killed member sooner, with and without serfd's verified
suspicions (the real-process check is tests/integration/test_gossip_timings.py, which
this one also backs: the default timings never beat its bound)."""

from __future__ import annotations

from typing import Any

import pytest

from serfd.agent.config import TIMING_KEYS, Config
from serfd.memberlist.profiles import LAN
from serfd.memberlist.suspicion import suspicion_timeout
from serfd.testing.detection import SERFD_RULES, crash_one_by_one, summary

N = 4  # as the integration test: one victim, three observers
SEEDS = range(1, 5)
FAST = Config(gossip_probe_interval=0.2, gossip_probe_timeout=0.1)


def _rules(cfg: Config, verified: bool) -> dict[str, Any]:
    """The agent's switches and the Config's timings, as the sim's MemberlistConfig."""
    timings = {key: getattr(cfg.timings, key) for key in TIMING_KEYS}
    return {**SERFD_RULES, "verified_suspicions": verified, **timings}


def _detect(cfg: Config, verified: bool) -> list[float]:
    runs = [crash_one_by_one(N, seed, _rules(cfg, verified), 1, pause=5.0) for seed in SEEDS]
    assert all(r.false_verdicts == 0 for r in runs)
    return [c.detect for r in runs for c in r.crashes]


@pytest.mark.parametrize("verified", [True, False])
def test_a_shorter_probe_interval_detects_a_kill_sooner(verified: bool) -> None:
    default, fast = _detect(Config(), verified), _detect(FAST, verified)
    print(f"\nN={N}, verified {verified}: default {summary(default)}; "
          f"probe_interval 200ms {summary(fast)}")
    assert max(fast) < min(default)
    if not verified:
        # memberlist's floor, the integration test's bound: the default never beats it,
        # the shorter probe interval always does.
        bound = suspicion_timeout(LAN.suspicion_mult, N, LAN.probe_interval)
        assert max(fast) < bound <= min(default)
