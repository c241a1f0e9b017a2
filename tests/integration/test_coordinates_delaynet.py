"""Acceptance: a mixed cluster on links with different delays (two serf agents, two serfd,
each in its own network namespace on tests/integration/delaynet.py's switch). `serf rtt`
against each serfd and `serfctl rtt` against each serf agent answer, and every one of the
four orders the six pairs as the real delays do."""

from __future__ import annotations

import itertools
import json
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.delaynet import DelayNet, missing
from tests.support import wait_until

# Hosts on a line (ms from the first): serf0 0, serfd0 2, serf1 10, serfd1 30; the one-way
# delay of a pair is their distance, so the round trips are 4, 16, 20, 40, 56 and 60 ms.
POSITION_MS = {"serf0": 0.0, "serfd0": 2.0, "serf1": 10.0, "serfd1": 30.0}
SERFS = ("serf0", "serf1")
SERFDS = ("serfd0", "serfd1")
RPC = "127.0.0.1:7373"  # each host's own loopback
RTT_LINE = re.compile(r"^Estimated (\S+) <-> (\S+) rtt: (\d+\.\d{3}) ms$")
PAIRS = list(itertools.combinations(POSITION_MS, 2))
TRUTH = {p: 2 * abs(POSITION_MS[p[0]] - POSITION_MS[p[1]]) for p in PAIRS}
BY_TRUTH = sorted(PAIRS, key=TRUTH.__getitem__)


@pytest.fixture
def net() -> Iterator[DelayNet]:
    why = missing()
    if why is not None:
        pytest.skip(f"a delay network needs {why}")
    if shutil.which("serf") is None:
        pytest.skip("real HashiCorp `serf` binary not found on PATH (Debian package `serf`)")
    delays = {(a, b): abs(POSITION_MS[a] - POSITION_MS[b]) / 1000.0 for a, b in PAIRS}
    dn = DelayNet(list(POSITION_MS), delays).start()
    try:
        yield dn
    finally:
        dn.close()


def run_in(net: DelayNet, host: str, argv: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(net.exec_argv(host, argv), capture_output=True, text=True,
                          timeout=20, check=False)


def serfd_config(home: Path, name: str, ip: str, join: str) -> Path:
    cfg = home / "serfd.d"
    cfg.mkdir(parents=True)
    (home / "state").mkdir()
    (cfg / "50-test.toml").write_text("\n".join([
        f"node_name = {json.dumps(name)}",
        f'bind = "{ip}:7946"',
        'log_level = "debug"',
        f"state_dir = {json.dumps(str(home / 'state'))}",
        f'join = ["{join}"]',
        "",
        "[rpc]",
        f"socket = {json.dumps(str(home / 'serfd.sock'))}",
        f'tcp = "{RPC}"',
        "",
    ]))
    return cfg


def estimate(net: DelayNet, view: str, a: str, b: str) -> float | None:
    """The rtt ``view``'s agent estimates for a <-> b, through `serf rtt` for a serfd and
    `serfctl rtt` for a serf agent; None when it has no coordinate yet."""
    if view in SERFDS:
        out = run_in(net, view, ["serf", "rtt", f"-rpc-addr={RPC}", a, b])
    else:
        out = run_in(net, view, [sys.executable, "-m", "serfctl", "--rpc-addr", RPC, "rtt", a,
                                 b])
    if out.returncode != 0:
        assert "Could not find a coordinate" in out.stdout + out.stderr, out
        return None
    m = RTT_LINE.match(out.stdout.strip())
    assert m and m.group(1, 2) == (a, b), out.stdout
    return float(m.group(3))


def test_serf_rtt_and_serfctl_rtt_order_pairs_as_the_real_delays(
        net: DelayNet, tmp_path: Path) -> None:
    procs: list[subprocess.Popen[bytes]] = []
    logs: dict[str, Path] = {}
    seed = f"{net.hosts['serf0'].ip}:7946"

    def start(name: str, argv: list[str]) -> None:
        logs[name] = tmp_path / f"{name}.log"
        with open(logs[name], "wb") as log:
            procs.append(subprocess.Popen(net.exec_argv(name, argv), stdin=subprocess.DEVNULL,
                                          stdout=log, stderr=subprocess.STDOUT,
                                          start_new_session=True, cwd=tmp_path))

    def members_alive(host: str) -> int:
        out = run_in(net, host, ["serf", "members", f"-rpc-addr={RPC}", "-status=alive"])
        return len(out.stdout.splitlines()) if out.returncode == 0 else -1

    last: dict[str, dict[tuple[str, str], float | None]] = {}

    def ordered() -> bool:
        for view in POSITION_MS:
            last[view] = est = {p: estimate(net, view, *p) for p in PAIRS}
            if any(v is None for v in est.values()):
                return False
            if sorted(PAIRS, key=lambda p: est[p] or 0.0) != BY_TRUTH:
                return False
        return True

    try:
        start("serf0", ["serf", "agent", "-node=serf0", f"-bind={seed}", f"-rpc-addr={RPC}",
                        "-profile=lan", "-log-level=debug"])
        wait_until(lambda: members_alive("serf0") == 1, timeout=15.0, interval=0.2,
                   desc="serf0 up")
        start("serf1", ["serf", "agent", "-node=serf1", f"-bind={net.hosts['serf1'].ip}:7946",
                        f"-rpc-addr={RPC}", "-profile=lan", f"-join={seed}"])
        for name in SERFDS:
            cfg = serfd_config(tmp_path / name, name, net.hosts[name].ip, seed)
            start(name, [sys.executable, "-m", "serfd", "--config-dir", str(cfg)])
        wait_until(lambda: all(members_alive(h) == 4 for h in POSITION_MS), timeout=30.0,
                   interval=0.5, desc="all four see four alive members")
        # Each node probes one member a second: every pair is measured from both ends
        # every few seconds, and the estimates order themselves within about 20 s.
        wait_until(ordered, timeout=90.0, interval=2.0,
                   desc=lambda: f"pairs ordered as {BY_TRUTH} in every view: {last}")
        print(f"\nreal rtt ms {TRUTH}\nestimates (ms) by view: {last}")
    except BaseException:
        for name, path in logs.items():
            sys.stderr.write(f"\n----- {name}\n" + "\n".join(
                path.read_text(errors="replace").splitlines()[-30:]) + "\n")
        raise
    finally:
        for p in procs:
            p.kill()
        for p in procs:
            p.wait(10)
