"""Start serfd agents with an extra top-level TOML drop-in (the harness's ``extra_toml``
lands after its ``[rpc]`` table, so top-level keys need a file of their own)."""

from __future__ import annotations

from typing import Any

from tests.integration.harness import Cluster, SerfdAgent


def start_serfd(cluster: Cluster, name: str, toml: str = "", **kwargs: Any) -> SerfdAgent:
    """``cluster.serfd(name, ...)`` with ``toml`` written to ``60-test.toml`` first."""
    agent = cluster.serfd(name, start=False, **kwargs)
    write_dropin(agent, toml)
    agent.start()
    return agent


def write_dropin(agent: SerfdAgent, toml: str) -> None:
    agent.write_config()
    (agent.config_dir / "60-test.toml").write_text(toml.strip() + "\n")


def restart(agent: SerfdAgent) -> SerfdAgent:
    """Start a stopped (killed or exited) agent again with the same files."""
    assert agent.proc is not None and agent.proc.poll() is not None, "still running"
    agent.proc = None
    agent.start()
    return agent
