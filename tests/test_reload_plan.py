"""The reload plan: every Config field is classified live or restart-only, and a field
nobody listed as live is reported as needing a restart, never silently "applied"."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from serfd.agent.config import Config
from serfd.agent.reload import LIVE_FIELDS, RESTART_FIELDS, UNCOMPARED_FIELDS, plan_reload


def test_every_config_field_is_classified_once() -> None:
    fields = {f.name for f in dataclasses.fields(Config)}
    unclassified = fields - LIVE_FIELDS - RESTART_FIELDS - UNCOMPARED_FIELDS
    assert not unclassified, (
        f"Config fields neither live nor restart-only: {sorted(unclassified)}; add each to "
        "serfd/reload.py LIVE_FIELDS (and apply it in Agent._reload or a reload hook) or "
        "RESTART_FIELDS")
    assert not LIVE_FIELDS & RESTART_FIELDS
    # No stale names: each listed field still exists.
    assert not (LIVE_FIELDS | RESTART_FIELDS | UNCOMPARED_FIELDS) - fields


@dataclass(frozen=True, slots=True)
class _NewerConfig(Config):
    """A Config as a later change might grow it: one field nobody classified yet."""

    new_knob: int = 0


def test_a_field_not_listed_live_needs_a_restart_and_keeps_its_running_value() -> None:
    running = _NewerConfig(node_name="a", new_knob=1)
    new = _NewerConfig(node_name="a", new_knob=2, log_level="debug")
    plan = plan_reload(running, new)
    assert plan.restart_needed == ("new_knob",)
    assert plan.changed == ("log_level",)
    applied = plan.applied
    assert isinstance(applied, _NewerConfig)
    assert applied.new_knob == 1 and applied.log_level == "debug"


def test_rejoin_after_leave_is_restart_only() -> None:
    # The snapshot is read, and its writer told, at start: a reload cannot apply it.
    running = Config(node_name="a")
    plan = plan_reload(running, dataclasses.replace(running, rejoin_after_leave=True))
    assert plan.restart_needed == ("rejoin_after_leave",) and plan.changed == ()
    assert plan.applied.rejoin_after_leave is False


def test_sources_are_never_a_change() -> None:
    running = Config(node_name="a", sources={"tags": "/etc/serfd.d/10.toml"})
    plan = plan_reload(running, dataclasses.replace(running, sources={}))
    assert plan.changed == () and plan.restart_needed == ()
