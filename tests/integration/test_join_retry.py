"""`join` in the config is retried with backoff until the seed answers."""

from __future__ import annotations

import time

from tests.integration.harness import Cluster


def test_join_retried_until_seed_is_up(make_cluster) -> None:  # type: ignore[no-untyped-def]
    c: Cluster = make_cluster()
    seed = c.serf("seed", start=False)
    d = c.serfd("late", join=[seed.bind_addr], extra_toml='retry_interval = "2s"')
    d.wait_ready()
    # The seed is down: serfd keeps running alone and keeps trying.
    time.sleep(1.5)
    assert d.running()
    assert d.statuses() == {"late": "alive"}
    seed.start()
    seed.wait_ready()
    # Backoff is 1 s, 2 s, 2 s ... so the next attempt lands within about 2 s.
    c.wait_statuses([d, seed], {"late": "alive", "seed": "alive"}, timeout=6)
    assert "join attempt" in d.log_tail(200)
