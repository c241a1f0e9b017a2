"""Network coordinates in the Serf layer: the ack payload (Serf's bytes), learning from
peers' acks (version, decode, rejections, metrics), the bounded cache, disabling, and a
simulated cluster whose estimates order its pairs as the configured link delays."""

from __future__ import annotations

import itertools
import math
import random

import msgpack

from serfd.base.metrics import Metrics
from serfd.core.coordinate import Coordinate, CoordinateConfig, decode_ack_payload
from serfd.core.serf import Serf, SerfConfig, SerfError
from serfd.memberlist.swim import MemberlistConfig
from serfd.testing.serf_sim import SerfSim
from tests.test_metrics_front import Recorder
from tests.test_serf import FakeMemberlist, FakeNode

# A fresh Serf 0.9.4 agent's ack payload, as its ping delegate encodes it (PROTOCOL.md
# 3.13 [V]): version 1, then {Adjustment 0.0, Error 1.5, Height 1e-5, Vec [0.0 x 8]} with
# the keys as raw strings in Go's field order and every number a float64.
FRESH_ACK = bytes.fromhex("".join([
    "01", "84",
    "aa41646a7573746d656e74", "cb0000000000000000",  # Adjustment 0.0
    "a54572726f72", "cb3ff8000000000000",  # Error 1.5
    "a6486569676874", "cb3ee4f8b588e368f1",  # Height 1e-5
    "a3566563", "98", "cb0000000000000000" * 8,  # Vec [0.0 x 8]
]))


def make(name: str = "me", *, disabled: bool = False, metrics: Metrics | None = None) -> Serf:
    mlc = MemberlistConfig.from_profile("lan", name=name)
    extra = {"metrics": metrics} if metrics is not None else {}
    cfg = SerfConfig(node_name=name, memberlist=mlc, disable_coordinates=disabled, **extra)
    return Serf(cfg, random.Random(1), 0.0, memberlist_factory=FakeMemberlist)


def peer_payload(vec: list[float], error: float = 1.0, height: float = 1e-5,
                 adjustment: float = 0.0) -> bytes:
    return b"\x01" + msgpack.packb({b"Adjustment": adjustment, b"Error": error,
                                    b"Height": height, b"Vec": vec}, use_bin_type=False)


def test_ack_payload_is_byte_identical_to_a_fresh_serf_agents() -> None:
    s = make()
    assert s.ack_payload() == FRESH_ACK
    assert decode_ack_payload(FRESH_ACK) == Coordinate.origin(CoordinateConfig())


def test_a_peers_ack_moves_our_coordinate_and_is_cached() -> None:
    rec = Recorder()
    s = make(metrics=Metrics("serf-agent", "h", sinks=[rec]))
    s.notify_join(FakeNode("a"), 0.0)
    before = s.ack_payload()
    s.notify_ping_complete(FakeNode("a"), 0.010, peer_payload([0.001] + [0.0] * 7), 1.0)  # type: ignore[arg-type]
    assert s.get_cached_coordinate("a") == Coordinate([0.001] + [0.0] * 7, 1.0, 0.0, 1e-5)
    mine = s.get_cached_coordinate("me")
    assert mine is not None and mine == s.get_coordinate() and mine.vec != [0.0] * 8
    assert s.ack_payload() != before  # the payload follows the update
    assert decode_ack_payload(s.ack_payload() or b"") == mine
    [(kind, key, value)] = [c for c in rec.calls if "coordinate" in c[1]]
    assert (kind, key) == ("s", ("serf-agent", "serf", "coordinate", "adjustment-ms"))
    assert value > 0
    assert s.stats()["coordinate_resets"] == "0"


def test_bad_payloads_are_counted_and_change_nothing() -> None:
    rec = Recorder()
    s = make(metrics=Metrics("serf-agent", "h", sinks=[rec]))
    s.notify_join(FakeNode("a"), 0.0)
    fresh = s.get_coordinate()
    node = FakeNode("a")
    s.notify_ping_complete(node, 0.01, None, 1.0)  # type: ignore[arg-type]
    s.notify_ping_complete(node, 0.01, b"", 1.0)  # type: ignore[arg-type]
    s.notify_ping_complete(node, 0.01, b"\x02" + FRESH_ACK[1:], 1.0)  # type: ignore[arg-type]
    s.notify_ping_complete(node, 0.01, b"\x01\xc1garbage", 1.0)  # type: ignore[arg-type]
    s.notify_ping_complete(node, 0.01, b"\x01\x84", 1.0)  # type: ignore[arg-type]
    s.notify_ping_complete(node, 0.01, b"\x01" + msgpack.packb({b"Vec": "x"}), 1.0)  # type: ignore[arg-type]
    s.notify_ping_complete(node, 0.01, peer_payload([0.0] * 3), 1.0)  # type: ignore[arg-type]
    s.notify_ping_complete(node, 0.01, peer_payload([math.nan] * 8), 1.0)  # type: ignore[arg-type]
    s.notify_ping_complete(node, 11.0, peer_payload([0.0] * 8), 1.0)  # type: ignore[arg-type]
    s.notify_ping_complete(FakeNode("stranger"), 0.01, peer_payload([0.0] * 8), 1.0)  # type: ignore[arg-type]
    assert s.get_coordinate() == fresh
    assert s.get_cached_coordinate("a") is None
    assert s.coordinate_cache_size() == 1
    dropped = s.counters_view().dropped
    assert {k: v for k, v in dropped.items() if k.startswith("coordinate")} == {
        "coordinate_bad_version": 1, "coordinate_decode_error": 3, "coordinate_rejected": 3,
        "coordinate_unknown_node": 1}
    assert [c[1] for c in rec.calls if "coordinate" in c[1]] == [
        ("serf-agent", "serf", "coordinate", "rejected")] * 3


def test_ints_and_trailing_bytes_are_read_as_go_reads_them() -> None:
    s = make()
    s.notify_join(FakeNode("a"), 0.0)
    payload = b"\x01" + msgpack.packb({b"Vec": [0, 0, 0, 0, 0, 0, 0, 1], b"Error": 1,
                                       b"Other": "ignored"}) + b"\xc1trailing"
    s.notify_ping_complete(FakeNode("a"), 0.01, payload, 1.0)  # type: ignore[arg-type]
    assert s.get_cached_coordinate("a") == Coordinate([0.0] * 7 + [1.0], 1.0, 0.0, 0.0)


def test_a_zero_rtt_is_counted_and_applied() -> None:
    rec = Recorder()
    s = make(metrics=Metrics("serf-agent", "h", sinks=[rec]))
    s.notify_join(FakeNode("a"), 0.0)
    s.notify_ping_complete(FakeNode("a"), 0.0, peer_payload([0.0] * 8), 1.0)  # type: ignore[arg-type]
    assert [c[1][-1] for c in rec.calls if "coordinate" in c[1]] == ["zero-rtt",
                                                                     "adjustment-ms"]
    assert s.get_cached_coordinate("a") is not None


def test_the_cache_forgets_erased_members() -> None:
    s = make()
    for name in ("a", "b"):
        s.notify_join(FakeNode(name), 0.0)
        s.notify_ping_complete(FakeNode(name), 0.01, peer_payload([0.001] * 8), 1.0)  # type: ignore[arg-type]
    assert s.coordinate_cache_size() == 3
    s.notify_leave(FakeNode("a"), 1.0)
    assert s.get_cached_coordinate("a") is not None  # failed, not yet reaped: as Serf
    s.handle_timer(1.0 + 24 * 3600 + 16)  # reconnect_timeout passed: reaped
    assert "a" not in [m.name for m in s.members()]
    assert s.get_cached_coordinate("a") is None
    assert s.coordinate_cache_size() == 2


def test_disabled_coordinates_send_and_learn_nothing() -> None:
    s = make(disabled=True)
    s.notify_join(FakeNode("a"), 0.0)
    assert s.ack_payload() is None
    s.notify_ping_complete(FakeNode("a"), 0.01, peer_payload([0.001] * 8), 1.0)  # type: ignore[arg-type]
    assert s.get_cached_coordinate("a") is None and s.get_cached_coordinate("me") is None
    assert "coordinate_resets" not in s.stats()
    try:
        s.get_coordinate()
    except SerfError as e:
        assert str(e) == "Coordinates are disabled"
    else:
        raise AssertionError("get_coordinate worked with coordinates disabled")
    assert FakeMemberlist.of[s] is not None


# One-way delays (seconds) of a line 0 - 2 - 10 - 30 ms: round trips 4 to 60 ms, all
# pairs in a different order than their names.
POSITIONS = {"n0": 0.0, "n1": 0.002, "n2": 0.010, "n3": 0.030}


def test_a_simulated_cluster_orders_its_pairs_as_the_link_delays() -> None:
    sim = SerfSim(seed=3)
    names = list(POSITIONS)
    for name in names:
        sim.add_serf(name)
    for a, b in itertools.combinations(names, 2):
        sim.set_link_delay(a, b, abs(POSITIONS[a] - POSITIONS[b]))
    for name in names[1:]:
        sim.join_serf(name, names[0])
    pairs = list(itertools.combinations(names, 2))
    truth = {p: 2 * abs(POSITIONS[p[0]] - POSITIONS[p[1]]) for p in pairs}
    by_truth = sorted(pairs, key=truth.__getitem__)

    def estimates(observer: str) -> dict[tuple[str, str], float] | None:
        s = sim.serf(observer)
        coords = {n: s.get_cached_coordinate(n) for n in names}
        if any(c is None for c in coords.values()):
            return None
        return {(a, b): coords[a].distance_seconds(coords[b])  # type: ignore[union-attr]
                for a, b in pairs}

    def ordered() -> bool:
        for observer in names:
            est = estimates(observer)
            if est is None or sorted(pairs, key=est.__getitem__) != by_truth:
                return False
        return True

    assert sim.run_until(sim.now + 300.0, ordered, every=5.0), {
        n: estimates(n) for n in names}
    # Given time, the figures themselves come close to the truth, from every view (the
    # shortest pair is the slowest: 11 ms for 4 ms at 20 s, 4.3 ms at 320 s).
    sim.run_until(400.0)
    for observer in names:
        est = estimates(observer)
        assert est is not None
        for p in pairs:
            assert abs(est[p] - truth[p]) <= 0.15 * truth[p], (observer, p, est[p], truth[p])
    for name in names:
        assert sim.serf(name).coordinate_cache_size() == len(names)
        assert sim.serf(name).stats()["coordinate_resets"] == "0"
