"""The [gossip] table: serfd's switches (confirm_suspicions, verified_suspicions, eager,
join_follow_up) and memberlist's timings over the profile's, validated, rendered,
restart-only, plumbed into the memberlist config the agent builds."""

from __future__ import annotations

from pathlib import Path

import pytest

from serfd.agent.config import TIMING_KEYS, Config, ConfigError, config_to_toml, load_config
from serfd.agent.reload import plan_reload
from serfd.core.serf import Serf
from serfd.memberlist.profiles import LAN, LOCAL, get_profile
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


# --- timings: memberlist's, overriding the profile's ----------------------------------

# A value for each timing key that no profile has, as TOML and as parsed.
_OVERRIDES: dict[str, tuple[str, float | int]] = {
    "probe_interval": ('"700ms"', 0.7),
    "probe_timeout": ('"150ms"', 0.15),
    "suspicion_mult": ("5", 5),
    "suspicion_max_timeout_mult": ("9", 9),
    "gossip_interval": ('"250ms"', 0.25),
    "gossip_nodes": ("7", 7),
    "gossip_to_the_dead_time": ('"45s"', 45.0),
    "push_pull_interval": ('"2m"', 120.0),
    "retransmit_mult": ("3", 3),
    "indirect_checks": ("2", 2),
    "awareness_max_multiplier": ("5", 5),
    "tcp_timeout": ('"7s"', 7.0),
}


def test_every_timing_key_has_an_override_case() -> None:
    assert set(_OVERRIDES) == set(TIMING_KEYS)


@pytest.mark.parametrize("profile", ["lan", "wan", "local"])
def test_unset_timings_are_the_profile_s(tmp_path: Path, profile: str) -> None:
    write(tmp_path, "10.toml", f'profile = "{profile}"\n')
    cfg = load_config(tmp_path)
    assert all(getattr(cfg, f"gossip_{key}") is None for key in TIMING_KEYS)
    assert cfg.timings == get_profile(profile)


@pytest.mark.parametrize("key", TIMING_KEYS)
def test_a_timing_key_overrides_the_profile_s_value_and_only_that(tmp_path: Path,
                                                                  key: str) -> None:
    text, value = _OVERRIDES[key]
    write(tmp_path, "10.toml", 'profile = "local"\n')
    write(tmp_path, "50.toml", f"[gossip]\n{key} = {text}\n")
    cfg = load_config(tmp_path)
    assert getattr(cfg, f"gossip_{key}") == value
    assert cfg.sources[f"gossip.{key}"] == str(tmp_path / "50.toml")
    for other in TIMING_KEYS:
        want = value if other == key else getattr(LOCAL, other)
        assert getattr(cfg.timings, other) == want, other


def test_all_timings_at_once(tmp_path: Path) -> None:
    write(tmp_path, "50.toml",
          "[gossip]\n" + "".join(f"{k} = {t}\n" for k, (t, _) in _OVERRIDES.items()))
    timings = load_config(tmp_path).timings
    assert {k: getattr(timings, k) for k in TIMING_KEYS} == {
        k: v for k, (_, v) in _OVERRIDES.items()}


@pytest.mark.parametrize(("key", "text", "reason"), [
    ("probe_interval", '"99ms"', '"99ms" is below the minimum of 100ms'),
    ("probe_interval", '"61s"', '"61s" is above the maximum of 1m'),
    ("probe_interval", "1", 'expected a duration string such as "30s", got integer'),
    ("probe_interval", '"1 s"', "invalid duration"),
    ("probe_timeout", '"9ms"', '"9ms" is below the minimum of 10ms'),
    ("probe_timeout", '"0s"', '"0s" is below the minimum of 10ms'),
    ("suspicion_mult", "0", "0 is out of range: must be between 1 and 32"),
    ("suspicion_mult", "33", "33 is out of range: must be between 1 and 32"),
    ("suspicion_mult", "4.0", "expected an integer, got float"),
    ("suspicion_mult", '"4"', "expected an integer, got string"),
    ("suspicion_max_timeout_mult", "0", "0 is out of range: must be between 1 and 32"),
    ("gossip_interval", '"9ms"', '"9ms" is below the minimum of 10ms'),
    ("gossip_interval", '"5001ms"', '"5001ms" is above the maximum of 5s'),
    ("gossip_nodes", "0", "0 is out of range: must be between 1 and 32"),
    ("gossip_nodes", "true", "expected an integer, got boolean"),
    ("gossip_to_the_dead_time", '"-1s"', "negative"),
    ("gossip_to_the_dead_time", '"61m"', '"61m" is above the maximum of 1h'),
    ("push_pull_interval", '"0s"', '"0s" is below the minimum of 1s'),
    ("push_pull_interval", '"2h"', '"2h" is above the maximum of 1h'),
    ("retransmit_mult", "0", "0 is out of range: must be between 1 and 16"),
    ("retransmit_mult", "17", "17 is out of range: must be between 1 and 16"),
    ("indirect_checks", "0", "0 is out of range: must be between 1 and 16"),
    ("awareness_max_multiplier", "0", "0 is out of range: must be between 1 and 32"),
    ("tcp_timeout", '"50ms"', '"50ms" is below the minimum of 100ms'),
    ("tcp_timeout", '"6m"', '"6m" is above the maximum of 5m'),
])
def test_a_bad_timing_is_refused_as_file_key_reason(tmp_path: Path, key: str, text: str,
                                                    reason: str) -> None:
    path = write(tmp_path, "10.toml", f"[gossip]\n{key} = {text}\n")
    # A bad value counts even when a later file sets a good one.
    good, _ = _OVERRIDES[key]
    write(tmp_path, "20.toml", f"[gossip]\n{key} = {good}\n")
    (err,) = _errors(tmp_path)
    assert err.startswith(f"{path}: gossip.{key}: "), err
    assert reason in err, err


def test_the_bounds_themselves_are_accepted(tmp_path: Path) -> None:
    write(tmp_path, "10.toml", """[gossip]
probe_interval = "100ms"
probe_timeout = "10ms"
suspicion_mult = 1
suspicion_max_timeout_mult = 32
gossip_interval = "5s"
gossip_nodes = 32
gossip_to_the_dead_time = "0s"
push_pull_interval = "1h"
retransmit_mult = 16
indirect_checks = 1
awareness_max_multiplier = 1
tcp_timeout = "5m"
""")
    cfg = load_config(tmp_path)
    assert (cfg.gossip_probe_interval, cfg.gossip_gossip_to_the_dead_time) == (0.1, 0.0)


def test_a_typo_in_a_timing_key_is_unknown_with_a_hint(tmp_path: Path) -> None:
    path = write(tmp_path, "10.toml", '[gossip]\nprobe_intervall = "1s"\n')
    assert _errors(tmp_path) == [
        f'{path}: gossip.probe_intervall: unknown key (did you mean "gossip.probe_interval"?)']


def test_probe_timeout_must_be_below_probe_interval_both_set(tmp_path: Path) -> None:
    a = write(tmp_path, "10-a.toml", '[gossip]\nprobe_interval = "300ms"\n')
    b = write(tmp_path, "20-b.toml", '[gossip]\nprobe_timeout = "300ms"\n')
    assert _errors(tmp_path) == [
        (f'{b}: gossip.probe_timeout: "300ms" must be shorter than probe_interval '
        f'("300ms", set in {a})')]


def test_probe_timeout_must_be_below_the_profile_s_probe_interval(tmp_path: Path) -> None:
    path = write(tmp_path, "10.toml", '[gossip]\nprobe_timeout = "2s"\n')
    assert _errors(tmp_path) == [
        (f'{path}: gossip.probe_timeout: "2s" must be shorter than probe_interval '
        '("1s", the lan profile\'s)')]


def test_probe_interval_must_be_above_the_profile_s_probe_timeout(tmp_path: Path) -> None:
    write(tmp_path, "10.toml", 'profile = "wan"\n')  # probe_timeout 3s
    path = write(tmp_path, "20.toml", '[gossip]\nprobe_interval = "2s"\n')
    assert _errors(tmp_path) == [
        (f'{path}: gossip.probe_interval: "2s" must be longer than probe_timeout '
        '("3s", the wan profile\'s): set gossip.probe_timeout too')]
    # The same interval is fine under lan (500ms), or with a shorter timeout.
    write(tmp_path, "10.toml", 'profile = "lan"\n')
    assert load_config(tmp_path).timings.probe_interval == 2.0
    write(tmp_path, "10.toml", 'profile = "wan"\n[gossip]\nprobe_timeout = "1s"\n')
    assert load_config(tmp_path).timings.probe_timeout == 1.0


def test_timings_render_set_keys_and_the_profile_s_as_comments(tmp_path: Path) -> None:
    cfg = Config(node_name="a", profile="local", gossip_probe_interval=0.25,
                 gossip_probe_timeout=0.1, gossip_retransmit_mult=3)
    text = config_to_toml(cfg)
    assert ('join_follow_up = true\nprobe_interval = "250ms"\nprobe_timeout = "100ms"\n'
            'retransmit_mult = 3\n# not set, the local profile\'s:\n'
            '# suspicion_mult = 3\n# suspicion_max_timeout_mult = 6\n'
            '# gossip_interval = "100ms"\n# gossip_nodes = 3\n'
            '# gossip_to_the_dead_time = "15s"\n# push_pull_interval = "15s"\n'
            '# indirect_checks = 1\n# awareness_max_multiplier = 8\n'
            '# tcp_timeout = "1s"\n\n[tags]\n') in text
    write(tmp_path, "check.toml", text)
    assert load_config(tmp_path) == cfg


def test_timings_all_set_render_no_comment(tmp_path: Path) -> None:
    cfg = Config(node_name="a", **{f"gossip_{k}": v for k, (_, v) in _OVERRIDES.items()})
    text = config_to_toml(cfg)
    assert "profile's" not in text
    write(tmp_path, "check.toml", text)
    assert load_config(tmp_path) == cfg


@pytest.mark.parametrize("key", TIMING_KEYS)
def test_timings_are_restart_only(key: str) -> None:
    _, value = _OVERRIDES[key]
    running = Config(node_name="a")
    plan = plan_reload(running, Config(node_name="a", **{f"gossip_{key}": value}))
    assert plan.restart_needed == (f"gossip.{key}",)
    assert plan.changed == ()
    assert getattr(plan.applied, f"gossip_{key}") is None
    assert plan.applied.timings == LAN


def _agent_serf(cfg: Config) -> Serf:
    from serfd.agent.agent import Agent

    return Agent(cfg)._make_serf(0.0)


@pytest.mark.parametrize("profile", ["lan", "wan", "local"])
def test_the_agent_builds_its_memberlist_with_the_profile_alone(profile: str) -> None:
    memberlist = _agent_serf(Config(node_name="a", bind=("127.0.0.1", 7946),
                                    advertise=("127.0.0.1", 7946),
                                    profile=profile)).config.memberlist
    for key in TIMING_KEYS:
        assert getattr(memberlist, key) == getattr(get_profile(profile), key), key


def test_the_agent_builds_its_memberlist_with_the_timings() -> None:
    cfg = Config(node_name="a", bind=("127.0.0.1", 7946), advertise=("127.0.0.1", 7946),
                 profile="wan", **{f"gossip_{k}": v for k, (_, v) in _OVERRIDES.items()})
    serf = _agent_serf(cfg)
    memberlist = serf.config.memberlist
    for key, (_, value) in _OVERRIDES.items():
        assert getattr(memberlist, key) == value, key
    # What serfd derives from them follows: Serf's default query timeout (one member:
    # GossipInterval x 16 x ceil(log10(2))) ...
    assert serf.default_query_timeout() == pytest.approx(0.25 * 16)
    # ... and the rest of the switches are untouched.
    assert memberlist.confirm_suspicions and memberlist.verified_suspicions


def test_the_query_timeout_cap_covers_a_long_gossip_interval() -> None:
    from serfd.agent.agent import max_query_timeout
    from serfd.core.query import default_query_timeout
    from serfd.core.serf import DEFAULT_MAX_QUERY_TIMEOUT

    assert max_query_timeout(Config()) == DEFAULT_MAX_QUERY_TIMEOUT
    assert max_query_timeout(Config(profile="wan")) == DEFAULT_MAX_QUERY_TIMEOUT
    slow = Config(gossip_gossip_interval=5.0)
    assert max_query_timeout(slow) == default_query_timeout(5.0, 100_000) == 480.0
    assert max_query_timeout(Config(gossip_gossip_interval=5.0, handler_timeout=600.0)) == 600.0
    # The core the agent builds is given it.
    serf = _agent_serf(Config(node_name="a", bind=("127.0.0.1", 7946),
                              advertise=("127.0.0.1", 7946), gossip_gossip_interval=5.0))
    assert serf.config.max_query_timeout == 480.0
