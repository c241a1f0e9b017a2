"""Acceptance: a Serf JSON config directory, run by the real ``serf agent`` and, through
``serfd --import-serf-config``, by serfd: both join the same (encrypted) peer with the
same tags.

The shared part of the configuration (tags, the deprecated role, the encryption key,
start_join, timings) is one file; each node adds its own (node_name, bind, rpc_addr),
so the import also goes through Serf's directory merge.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.integration.harness import Cluster, SerfAgent, SerfdAgent

KEY = "6hRTJPebtwdfvbZB72SW+nNMkVu1HVCgZLu9MmArzeg="
READY_TIMEOUT = 15.0
CONVERGE_TIMEOUT = 10.0


class JSONSerfAgent(SerfAgent):
    """``serf agent -config-dir DIR``: everything from the JSON files, no flags."""

    def __init__(self, name: str, ip: str, config_dir: Path, tmpdir: Path) -> None:
        super().__init__(name, ip, tmpdir=tmpdir)
        self.config_dir = config_dir

    def command(self) -> list[str]:
        return [self.serf_bin, "agent", "-config-dir", str(self.config_dir)]


class ImportedSerfdAgent(SerfdAgent):
    """serfd with the imported drop-in; the harness adds only where files go."""

    def config_text(self) -> str:
        return (f"state_dir = {json.dumps(str(self.state_dir))}\n\n"
                f"[rpc]\nsocket = {json.dumps(str(self.socket_path))}\n")


def serf_config_dir(base: Path, shared: dict[str, object], name: str, ip: str) -> Path:
    d = base / f"{name}.serf.d"
    d.mkdir(parents=True)
    (d / "10-cluster.json").write_text(json.dumps(shared))
    (d / "20-node.json").write_text(json.dumps({
        "node_name": name, "bind": f"{ip}:7946", "rpc_addr": f"{ip}:7373"}))
    return d


def test_imported_config_joins_like_serf(cluster: Cluster) -> None:
    peer = cluster.serf("peer", extra_args=[f"-encrypt={KEY}"])
    peer.wait_ready(READY_TIMEOUT)
    shared: dict[str, object] = {
        "role": "web",
        "tags": {"dc": "east", "rack": "r1"},
        "encrypt_key": KEY,
        "start_join": [peer.bind_addr],
        "profile": "lan",
        "log_level": "DEBUG",
        "reconnect_interval": "10s",
        "tombstone_timeout": "1h",
        "broadcast_timeout": "3s",
    }

    serf_ip = cluster.next_ip()
    serf_agent = JSONSerfAgent("serf-json", serf_ip,
                               serf_config_dir(cluster.tmpdir, shared, "serf-json", serf_ip),
                               cluster.tmpdir)
    cluster.agents.append(serf_agent)
    serf_agent.start()
    serf_agent.wait_ready(READY_TIMEOUT)

    serfd_ip = cluster.next_ip()
    src = serf_config_dir(cluster.tmpdir, shared, "serfd-imported", serfd_ip)
    imported = subprocess.run(
        [sys.executable, "-m", "serfd", "--import-serf-config", str(src)],
        capture_output=True, text=True, timeout=30, check=False)
    assert imported.returncode == 0, imported.stderr
    assert imported.stderr == ""

    serfd_agent = ImportedSerfdAgent("serfd-imported", serfd_ip, tmpdir=cluster.tmpdir)
    cluster.agents.append(serfd_agent)
    serfd_agent.config_dir.mkdir(parents=True)
    (serfd_agent.config_dir / "40-imported.toml").write_text(imported.stdout)
    serfd_agent.write_config()
    check = subprocess.run(
        [sys.executable, "-m", "serfd", "--check-config", "--config-dir",
         str(serfd_agent.config_dir)], capture_output=True, text=True, timeout=30, check=False)
    assert check.returncode == 0, check.stderr
    serfd_agent.start()
    serfd_agent.wait_ready(READY_TIMEOUT)

    names = {"peer": "alive", "serf-json": "alive", "serfd-imported": "alive"}
    cluster.wait_statuses([peer, serf_agent, serfd_agent], names, CONVERGE_TIMEOUT)
    seen = peer.member_map()
    want = {"role": "web", "dc": "east", "rack": "r1"}
    assert dict(seen["serf-json"].tags) == want
    assert dict(seen["serfd-imported"].tags) == want
    assert seen["serfd-imported"].addr == serfd_ip and seen["serfd-imported"].port == 7946
    # The serfd node speaks on the RPC address the Serf file named, as serf agent did.
    assert serfd_agent.rpc_addr == f"{serfd_ip}:7373"
    assert set(serfd_agent.member_map()) == set(names)
