"""serfd gossiping over IPv6 with a real serf agent (issue 11: "serfd on IPv6 addresses
and a serf agent form a cluster, with tags, events and a SIGKILL seen").

Both agents gossip on ::1 (each its own port); their RPC stays on 127.0.0.1 so the
harness's clients are unchanged. serfd joins the serf agent by its bracketed address;
both must list each other alive at ::1 with their tags, a user event must reach the
other side's handler each way, and a SIGKILLed serf agent must be listed failed.
"""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from tests.integration.harness import Cluster, SerfAgent, SerfdAgent
from tests.support import free_port, wait_until

READY_TIMEOUT = 15.0
TIMEOUT = 20.0  # failure detection of 2 members: a probe, then a suspicion of 4-6 s


def _free_v6_port() -> int:
    """A port free for UDP and TCP on ::1 (and on 127.0.0.1: the harness binds RPC there)."""
    for _ in range(50):
        port = free_port()
        try:
            for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
                with socket.socket(socket.AF_INET6, kind) as s:
                    s.bind(("::1", port))
        except OSError:
            continue
        return port
    raise RuntimeError("no free port on ::1")


def _ipv6_loopback() -> str:
    """'' if ::1 can be bound here, else why not."""
    if not socket.has_ipv6:
        return "Python has no IPv6"
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as s:
            s.bind(("::1", 0))
    except OSError as e:
        return f"cannot bind ::1 ({e})"
    return ""


class _V6Serfd(SerfdAgent):
    @property
    def bind_addr(self) -> str:
        return f"[::1]:{self.port}"


class _V6Serf(SerfAgent):
    @property
    def bind_addr(self) -> str:
        return f"[::1]:{self.port}"


def _handler(path: Path, out: Path) -> str:
    path.write_text(f'#!/bin/sh\necho "$SERF_USER_EVENT $(cat)" >> "{out}"\n')
    path.chmod(0o755)
    return str(path)


def test_serfd_and_a_serf_agent_gossip_over_ipv6(cluster: Cluster, tmp_path: Path) -> None:
    why = _ipv6_loopback()
    if why:
        pytest.skip(f"no IPv6 loopback here: {why}")
    at_serfd, at_serf = tmp_path / "serfd.events", tmp_path / "serf.events"
    s = _V6Serf("s6", "127.0.0.1", port=_free_v6_port(), rpc_port=free_port(),
                tags={"role": "serf"}, tmpdir=tmp_path,
                extra_args=["-event-handler",
                            f"user:fromd={_handler(tmp_path / 'on-serf.sh', at_serf)}"])
    on_serfd = _handler(tmp_path / "on-serfd.sh", at_serfd)
    d = _V6Serfd("d6", "127.0.0.1", port=_free_v6_port(), rpc_port=free_port(),
                 tags={"role": "serfd"}, tmpdir=tmp_path, log_level="info",
                 extra_toml=f'[handlers]\n"user:froms" = "{on_serfd}"\n')
    cluster.agents += [s, d]  # killed at teardown
    s.start()
    d.start()
    s.wait_ready(READY_TIMEOUT)
    d.wait_ready(READY_TIMEOUT)

    assert d.join([s.bind_addr]) == 1

    def both_see_both() -> bool:
        for a in (s, d):
            ms = {m.name: m for m in a.members()}
            if set(ms) != {"s6", "d6"} or any(m.status != "alive" for m in ms.values()):
                return False
            assert ms["s6"].addr == "::1" and ms["d6"].addr == "::1", ms
            assert ms["s6"].port == s.port and ms["d6"].port == d.port, ms
            assert ms["s6"].tags == {"role": "serf"} and ms["d6"].tags == {"role": "serfd"}
        return True

    wait_until(both_see_both, TIMEOUT, 0.05, desc="s6 and d6 alive at ::1 on both")

    # User events both ways, each run by the other side's handler.
    s.client().event("froms", b"hello from serf")
    d.client().event("fromd", b"hello from serfd")
    wait_until(lambda: at_serfd.exists() and "froms hello from serf" in at_serfd.read_text(),
               TIMEOUT, 0.05, desc="serfd's handler ran for serf's event")
    wait_until(lambda: at_serf.exists() and "fromd hello from serfd" in at_serf.read_text(),
               TIMEOUT, 0.05, desc="serf's handler ran for serfd's event")

    # A SIGKILLed serf agent is found failed over IPv6 probes.
    s.kill()
    wait_until(lambda: {m.name: m.status for m in d.members()}.get("s6") == "failed",
               TIMEOUT, 0.1, desc="serfd lists the killed serf agent failed")
