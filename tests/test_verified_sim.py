"""Verified suspicions in whole clusters (serfd.testing.detection): detection and false deaths.

Each case runs the same seeded clusters under memberlist's rules (every serfd extra off:
what real serf agents do) and under serfd's (what the agent runs), and prints the
figures (``-s``; bench/detect_bench.py prints the full tables). The rules they hold:

* a killed member (its host refuses TCP connects) is dead at every member in at most
  0.85x memberlist's time (median; issue 13's target), its p90 no later; measured:
  0.35-0.47x at N = 20, 50, 100 (3.2-3.8 s against 7.1-10.3 s), because the suspicion
  ends after the retransmit horizon (1.6 s, 2.4 s from 100 members) once verified and
  refused, instead of SuspicionMult x log10 N s;
* a member whose machine is gone (connects time out) is detected no later at N = 20,
  where the verified floor (4 s + the horizon) is memberlist's own, and in at most 0.9x
  its time at N = 50 and 100 (measured 0.81-0.85x at 50, 0.75-0.77x at 100);
* no more false 'failed' verdicts than under memberlist's rules, nor than with
  confirmation checks alone (serfd 0.2), under 10 % loss, members that stall for 2 to
  5 s, and CPU-starved members (0.6-1.5 s behind with 10 % loss, 2-4 s behind);
* a member killed and started again within 2 s is not reported failed (one down for
  4 s is, which memberlist's rules would mostly not notice).

The stall bound: a verified suspicion still waits SuspicionMult x ProbeInterval (4 s)
plus the horizon after the suspect's first failed probe (1 s), so a member that resumes
within 5 s of the first ping it missed refutes in time, at any N; and within
memberlist's own bound where that is shorter (N <= 25). Longer stalls can be fatal
where memberlist would have waited (16 stalls per length and N, 5 % loss: serfd
survives 6 s at N = 50 and 7 s at N = 100, memberlist's rules 7.5 s and over 8.5 s;
at N = 20, where the floor is memberlist's, as often as with checks alone).
"""

from __future__ import annotations

import functools
import statistics
from typing import Any

import pytest

from serfd.testing.detection import (
    MEMBERLIST_RULES,
    SERFD_RULES,
    DetectionRun,
    crash_one_by_one,
    false_verdicts,
    pct,
    restart_verdicts,
    summary,
)

GOSSIP_INTERVAL = 0.2
TARGET = 0.85  # issue 13: at most 0.85x memberlist's detection time
SERFD_0_2 = {**SERFD_RULES, "verified_suspicions": False}


@functools.cache
def _detect(n: int, seeds: range, crashes: int, rules: str, host: bool,
            loss: float = 0.05) -> tuple[list[float], int]:
    """Detection times and false verdicts over the seeds; cached, as memberlist's rules
    give the same runs for both kinds of crash (the reason a connect failed is not
    read)."""
    config = MEMBERLIST_RULES if rules == "memberlist" else SERFD_RULES
    runs: list[DetectionRun] = [
        crash_one_by_one(n, seed, config, crashes, loss=loss, pause=15.0, host=host)
        for seed in seeds]
    return [c.detect for r in runs for c in r.crashes], sum(r.false_verdicts for r in runs)


# (N, seeds, crashes per seed): 8-20 crashes per rule set, a few seconds each.
CASES = [(20, range(1, 5), 5), (50, range(1, 4), 5), (100, range(1, 3), 4)]


@pytest.mark.parametrize(("n", "seeds", "crashes"), CASES)
def test_a_killed_member_is_dead_everywhere_in_at_most_085x_memberlists_time(
        n: int, seeds: range, crashes: int) -> None:
    ml, ml_false = _detect(n, seeds, crashes, "memberlist", host=False)
    sd, sd_false = _detect(n, seeds, crashes, "serfd", host=False)
    ratio = statistics.median(sd) / statistics.median(ml)
    print(f"\nN={n} killed, 5% loss: memberlist {summary(ml)}; serfd {summary(sd)} "
          f"({ratio:.2f}x)")
    assert ratio <= TARGET
    assert pct(sd, 0.9) <= pct(ml, 0.9)
    assert ml_false == sd_false == 0


@pytest.mark.parametrize(("n", "seeds", "crashes"), CASES)
def test_a_lost_host_is_detected_no_later_and_sooner_from_50_members(
        n: int, seeds: range, crashes: int) -> None:
    ml, _ = _detect(n, seeds, crashes, "memberlist", host=False)  # the same runs
    sd, sd_false = _detect(n, seeds, crashes, "serfd", host=True)
    ratio = statistics.median(sd) / statistics.median(ml)
    print(f"\nN={n} host gone, 5% loss: memberlist {summary(ml)}; serfd {summary(sd)} "
          f"({ratio:.2f}x)")
    if n < 50:
        # The verified floor is memberlist's here: only eager gossip and the checks
        # act (no slower, within one gossip round).
        assert statistics.median(sd) <= statistics.median(ml) + GOSSIP_INTERVAL
    else:
        assert ratio <= 0.9
    assert sd_false == 0


# name -> keyword arguments of false_verdicts; nobody crashes.
FAULTS: dict[str, dict[str, Any]] = {
    "10% loss": {"loss": 0.10},
    "stalls of 2 to 5 s": {"loss": 0.05, "stalls": [2.0, 3.0, 4.0, 5.0]},
    "starved 0.6-1.5 s, 10% loss": {"loss": 0.10, "lags": [0.6, 1.0, 1.5]},
    "starved 2-4 s": {"loss": 0.05, "lags": [2.0, 3.0, 4.0]},
}


@pytest.mark.parametrize("fault", list(FAULTS))
def test_no_more_false_failed_verdicts_than_memberlist_or_checks_alone(fault: str) -> None:
    """20 members, six seeds (without checks, starved members 2-4 s behind die in half
    of them)."""
    counts = {}
    for name, rules in (("memberlist", MEMBERLIST_RULES), ("serfd 0.2", SERFD_0_2),
                        ("serfd", SERFD_RULES)):
        counts[name] = [false_verdicts(20, seed, rules, **FAULTS[fault])
                        for seed in range(1, 7)]
    print(f"\n{fault}: false 'failed' verdicts per seed {counts}")
    assert sum(counts["serfd"]) <= sum(counts["memberlist"])
    assert sum(counts["serfd"]) <= sum(counts["serfd 0.2"])


@pytest.mark.costly
@pytest.mark.parametrize("n", [50, 100])
@pytest.mark.parametrize("fault", ["stalls of 2 to 5 s", "starved 2-4 s"])
def test_no_more_false_failed_verdicts_in_bigger_clusters(n: int, fault: str) -> None:
    """Where the verified floor is below memberlist's: the stall bound holds.

    Eight seeds: the verdicts come in rare bursts, which three seeds cannot weigh. At
    N = 50 with members starved 2-4 s behind, memberlist's rules lost one starved
    member to 48 observers in one seed of eight and nothing in the others; serfd's lost
    one to 1 or 2 observers (a dead broadcast its refutation overtook) in six seeds, 10
    verdicts in all (2026-12-02)."""
    counts = {}
    for name, rules in (("memberlist", MEMBERLIST_RULES), ("serfd", SERFD_RULES)):
        counts[name] = [false_verdicts(n, seed, rules, **FAULTS[fault])
                        for seed in range(1, 9)]
    print(f"\nN={n} {fault}: false 'failed' verdicts per seed {counts}")
    assert sum(counts["serfd"]) <= sum(counts["memberlist"])


def test_a_member_restarted_within_2_s_is_not_reported_failed() -> None:
    """Killed and started again at its address (no state, it rejoins): memberlist's
    rules rarely notice a restart of under 6 s; serfd's report one of over 3 s (the
    member was gone: its host refused the TCP pings), and never one within 2.5 s (12
    seeds at N = 20; the refutation travels with the rejoin's push/pull)."""
    counts = [restart_verdicts(20, seed, SERFD_RULES, down=2.0) for seed in range(1, 7)]
    assert counts == [0] * 6
    longer = [restart_verdicts(20, seed, SERFD_RULES, down=4.0) for seed in range(1, 7)]
    print(f"\nrestarted after 4 s: 'failed' verdicts per seed {longer}")
    assert sum(longer) > 0  # the same runs do see a longer absence
