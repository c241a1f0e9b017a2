"""The [gossip] table: confirm_suspicions and verified_suspicions, validated, rendered,
restart-only, plumbed."""

from __future__ import annotations

from pathlib import Path

import pytest

from serfd.agent.config import Config, ConfigError, config_to_toml, load_config
from serfd.agent.reload import plan_reload
from tests.test_config import write


def _errors(d: Path) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config(d)
    return info.value.errors


def test_confirm_suspicions_defaults_on_and_a_drop_in_turns_it_off(tmp_path: Path) -> None:
    assert load_config(tmp_path).gossip_confirm_suspicions is True
    write(tmp_path, "10-on.toml", "[gossip]\nconfirm_suspicions = true\n")
    write(tmp_path, "50-off.toml", "[gossip]\nconfirm_suspicions = false\n")
    cfg = load_config(tmp_path)
    assert cfg.gossip_confirm_suspicions is False
    assert cfg.sources["gossip.confirm_suspicions"] == str(tmp_path / "50-off.toml")


def test_bad_gossip_values_are_reported_as_file_key_reason(tmp_path: Path) -> None:
    a = write(tmp_path, "10-a.toml", '[gossip]\nconfirm_suspicions = "no"\n')
    b = write(tmp_path, "20-b.toml", "[gossip]\nconfirm_suspicion = false\n")
    c = write(tmp_path, "30-c.toml", "gossip = 1\n")
    # A bad value counts even when a later file sets a good one.
    write(tmp_path, "40-d.toml", "[gossip]\nconfirm_suspicions = true\n")
    assert _errors(tmp_path) == [
        f"{a}: gossip.confirm_suspicions: expected a boolean (true or false), got string",
        (f'{b}: gossip.confirm_suspicion: unknown key (did you mean '
         f'"gossip.confirm_suspicions"?)'),
        f"{c}: gossip: expected a table, got integer",
    ]


def test_confirm_suspicions_at_the_top_level_is_unknown(tmp_path: Path) -> None:
    path = write(tmp_path, "10.toml", "confirm_suspicions = false\n")
    (err,) = _errors(tmp_path)
    assert err.startswith(f"{path}: confirm_suspicions: unknown key")


def test_verified_suspicions_defaults_on_and_a_drop_in_turns_it_off(tmp_path: Path) -> None:
    assert load_config(tmp_path).gossip_verified_suspicions is True
    write(tmp_path, "50-off.toml", "[gossip]\nverified_suspicions = false\n")
    cfg = load_config(tmp_path)
    assert cfg.gossip_verified_suspicions is False
    assert cfg.gossip_confirm_suspicions is True
    assert cfg.sources["gossip.verified_suspicions"] == str(tmp_path / "50-off.toml")


def test_gossip_table_renders_and_loads_back(tmp_path: Path) -> None:
    cfg = Config(node_name="a", gossip_confirm_suspicions=False, gossip_verified_suspicions=False)
    text = config_to_toml(cfg)
    assert "[gossip]\nconfirm_suspicions = false\nverified_suspicions = false\n" in text
    write(tmp_path, "check.toml", text)
    assert load_config(tmp_path) == cfg


@pytest.mark.parametrize("key", ["confirm_suspicions", "verified_suspicions", "eager",
                                 "join_follow_up"])
def test_gossip_switches_are_restart_only(key: str) -> None:
    running = Config(node_name="a")
    plan = plan_reload(running, Config(node_name="a", **{f"gossip_{key}": False}))
    assert plan.restart_needed == (f"gossip.{key}",)
    assert getattr(plan.applied, f"gossip_{key}") is True


@pytest.mark.parametrize("on", [True, False])
def test_the_agent_builds_its_memberlist_with_the_switches(on: bool) -> None:
    from serfd.agent.agent import Agent

    cfg = Config(node_name="a", bind=("127.0.0.1", 7946), advertise=("127.0.0.1", 7946),
                 gossip_confirm_suspicions=on, gossip_verified_suspicions=not on,
                 gossip_eager=on, gossip_join_follow_up=not on)
    memberlist = Agent(cfg)._make_serf(0.0).config.memberlist
    assert memberlist.confirm_suspicions is on
    assert memberlist.verified_suspicions is not on
    assert memberlist.eager_gossip is on
    assert memberlist.join_follow_up is not on


@pytest.mark.parametrize("key", ["eager", "join_follow_up"])
def test_eager_and_join_follow_up_default_on_and_a_drop_in_turns_them_off(
        tmp_path: Path, key: str) -> None:
    assert getattr(load_config(tmp_path), f"gossip_{key}") is True
    write(tmp_path, "50-off.toml", f"[gossip]\n{key} = false\n")
    cfg = load_config(tmp_path)
    assert getattr(cfg, f"gossip_{key}") is False
    assert cfg.sources[f"gossip.{key}"] == str(tmp_path / "50-off.toml")
