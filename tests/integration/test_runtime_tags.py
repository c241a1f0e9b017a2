"""Runtime tags (issue 11): tags set with ``serfctl tags`` (or ``serf tags``) on a serfd
survive a reload (SIGHUP) and a restart (SIGTERM, then the same state directory), and a
real ``serf agent`` peer sees them after both; ``serfctl tags --reset`` brings the
configuration's ``[tags]`` back."""

from __future__ import annotations

import json
import signal
from typing import Any

from tests.integration.dropins import restart
from tests.integration.harness import serf_cli
from tests.support import wait_until


def _reloads(agent: Any) -> int:
    return agent.log_path.read_text(errors="replace").count("reload done: ")


def test_runtime_tags_survive_reload_and_restart_and_a_serf_peer_sees_them(  # type: ignore[no-untyped-def]
        make_cluster) -> None:
    c = make_cluster()
    s = c.serf("gosrf")
    s.wait_ready()
    d = c.serfd("pyd", tags={"role": "web", "dc": "east"}, join=[s.bind_addr])
    d.wait_ready()
    c.wait_all_alive(timeout=10)
    tags_file = d.state_dir / "tags"

    def peer_sees(expected: dict[str, str]) -> None:
        seen: list[Any] = []

        def ok() -> bool:
            seen[:] = [s.member_map()["pyd"]]
            return seen[0].status == "alive" and dict(seen[0].tags) == expected

        wait_until(ok, 10, desc=lambda: f"serf sees pyd as {expected}; last {seen}")

    peer_sees({"role": "web", "dc": "east"})
    assert not tags_file.exists()  # nothing changed at run time yet

    # Runtime changes, from serfctl and from Serf's own CLI: kept in the tags file.
    r = d.serfctl("tags", "--set", "role=db", "--set", "zone=z1", "--delete", "dc")
    assert (r.returncode, r.stdout) == (0, "Successfully updated agent tags\n"), r.stderr
    r = serf_cli("tags", f"-rpc-addr={d.rpc_addr}", "-set", "owner=ops")
    assert r.returncode == 0, r.stdout + r.stderr
    runtime = {"role": "db", "zone": "z1", "owner": "ops"}
    peer_sees(runtime)
    assert json.loads(tags_file.read_text()) == {"dc": None, "owner": "ops", "role": "db",
                                                 "zone": "z1"}

    # Reload (SIGHUP) with a new [tags]: a new key shows, the runtime changes stay.
    d.tags = {"role": "cache", "dc": "west", "rack": "r1"}
    d.write_config()
    before = _reloads(d)
    assert d.proc is not None
    d.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: _reloads(d) > before, 10, desc="reload done in the log")
    peer_sees({**runtime, "rack": "r1"})

    # Restart: a graceful stop, then the same config and state directory.
    assert d.stop_graceful(sig=signal.SIGTERM) == 0
    c.wait_statuses([s], {"pyd": "left"}, 10)
    restart(d)
    d.wait_ready()
    peer_sees({**runtime, "rack": "r1"})
    assert "restored 4 runtime tag changes from" in d.log_tail(200)
    out = serf_cli("members", f"-rpc-addr={s.rpc_addr}", "-name=pyd").stdout
    assert "role=db" in out and "dc=" not in out, out

    # Back to the configuration: one key, then all; kept across a restart too.
    assert d.serfctl("tags", "--reset", "role").returncode == 0
    peer_sees({"role": "cache", "zone": "z1", "owner": "ops", "rack": "r1"})
    r = d.serfctl("tags", "--reset")
    assert (r.returncode, r.stdout) == (0, "Successfully reset agent tags to the configuration\n")
    config_tags = {"role": "cache", "dc": "west", "rack": "r1"}
    peer_sees(config_tags)
    assert json.loads(tags_file.read_text()) == {}
    assert d.stop_graceful(sig=signal.SIGTERM) == 0
    c.wait_statuses([s], {"pyd": "left"}, 10)
    restart(d)
    d.wait_ready()
    peer_sees(config_tags)
