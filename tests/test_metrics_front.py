"""serfd.base.metrics: go-metrics' front (prefixes, fan-out, bounded peer-chosen names)."""

from __future__ import annotations

from serfd.base.metrics import MAX_DYNAMIC_NAME_LEN, MAX_DYNAMIC_NAMES, NULL_METRICS, Metrics


class Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple[str, ...], float]] = []

    def set_gauge(self, key: tuple[str, ...], value: float) -> None:
        self.calls.append(("g", key, value))

    def incr_counter(self, key: tuple[str, ...], value: float) -> None:
        self.calls.append(("c", key, value))

    def add_sample(self, key: tuple[str, ...], value: float) -> None:
        self.calls.append(("s", key, value))


def test_service_prefixes_every_key_and_the_host_name_gauges_only() -> None:
    rec = Recorder()
    m = Metrics("serf-agent", "node1", sinks=[rec])
    m.incr(("serf", "member", "join"))
    m.gauge(("memberlist", "health", "score"), 2)
    m.sample(("serf", "msgs", "sent"), 40)
    m.measure_since(("memberlist", "probeNode"), 10.0, 10.25)
    assert rec.calls == [
        ("c", ("serf-agent", "serf", "member", "join"), 1.0),
        ("g", ("serf-agent", "node1", "memberlist", "health", "score"), 2),
        ("s", ("serf-agent", "serf", "msgs", "sent"), 40),
        ("s", ("serf-agent", "memberlist", "probeNode"), 250.0),
    ]


def test_hostname_can_be_left_out_and_every_sink_gets_every_metric() -> None:
    a, b = Recorder(), Recorder()
    m = Metrics("serf-agent", "node1", enable_hostname=False, sinks=[a])
    m.add_sink(b)
    m.gauge(("serf", "queue", "Event"), 3)
    assert a.calls == b.calls == [("g", ("serf-agent", "serf", "queue", "Event"), 3)]
    m.remove_sink(a)
    m.incr(("serf", "events"))
    assert len(a.calls) == 1 and len(b.calls) == 2


def test_a_front_without_sinks_reports_nothing() -> None:
    assert not NULL_METRICS.enabled
    NULL_METRICS.incr(("serf", "events"))  # no sink, no error, nothing kept
    assert NULL_METRICS.sinks == ()


def test_peer_chosen_names_are_bounded_in_number_and_length() -> None:
    m = Metrics()
    assert m.bounded_name("deploy") == "deploy"
    assert m.bounded_name("x" * 500) == "x" * MAX_DYNAMIC_NAME_LEN
    for i in range(MAX_DYNAMIC_NAMES - 2):  # "deploy" and the cut name hold two places
        m.bounded_name(f"n{i}")
    assert m.bounded_name("deploy") == "deploy"  # known names stay
    assert m.bounded_name("brand-new") == "_other"
    assert m.dynamic_overflow == 1


def test_a_serf_core_counts_a_member_join_under_serfs_name() -> None:
    from serfd.testing.serf_sim import SerfSim

    recs = {name: Recorder() for name in ("a", "b")}
    sim = SerfSim(seed=3)
    for name, rec in recs.items():
        sim.add_serf(name, metrics=Metrics("serf-agent", name, sinks=[rec]))
    sim.join_serf("b", "a")
    sim.run_for(1.0)
    for rec in recs.values():
        joins = [c for c in rec.calls if c[1] == ("serf-agent", "serf", "member", "join")]
        assert len(joins) == 2  # itself and the other
