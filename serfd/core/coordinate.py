"""Vivaldi network coordinates, as Serf 0.9.4's ``coordinate`` package computes them.

Theory of operation
-------------------
Each node keeps a :class:`Coordinate`: a point in an 8-dimensional Euclidean space plus a
non-Euclidean height (its access link) and an adjustment (a correction learnt from recent
samples), all in seconds, and an error estimate (dimensionless). The distance between two
coordinates estimates the round-trip time between their nodes.

A :class:`Client` owns the local coordinate. Each probe that a peer acknowledged directly
gives an observation: the peer's coordinate (carried in its ack) and the measured RTT.
:meth:`Client.update` then, in Serf's order:

1. checks the peer's coordinate (same dimensionality, finite components) and the RTT
   (0 to 10 s), refusing the observation with Serf's error text otherwise;
2. replaces the RTT by the median of the last ``latency_filter_size`` (3) RTTs seen for
   that node (the latency filter: a glitch is ridden out);
3. moves the coordinate like a spring (Vivaldi): the error-weighted difference between
   measured and estimated distance pushes it away from or towards the peer, and the
   error estimate follows how wrong the estimate was;
4. updates the adjustment: the mean of the last ``adjustment_window_size`` (20) samples of
   RTT minus raw distance, halved;
5. applies gravity: a pull towards the origin growing with the square of the distance
   from it over ``gravity_rho`` (150 s), against drift of the whole system;
6. if any component became NaN or infinite, starts over at the origin and counts a reset.

Everything is a pure function of its inputs: when two points coincide, the random unit
vector Vivaldi needs comes from the ``random.Random`` the client was given. Distances are
Go ``time.Duration`` values (whole nanoseconds, truncated towards zero) where Serf
converts them, so estimates match Serf's to the nanosecond.

The per-node latency filter holds a few floats per node observed; the owner calls
:meth:`Client.forget_node` when a member is erased (Serf does it in eraseNode), which keeps
it bounded by the member list.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Any

import msgpack

from serfd.base.duration import format_duration_ns
from serfd.wire.codec import DecodeError, pack_gossip

__all__ = [
    "PING_VERSION",
    "ZERO_THRESHOLD",
    "Client",
    "ClientStats",
    "Coordinate",
    "CoordinateConfig",
    "CoordinateError",
    "DimensionalityConflictError",
    "decode_ack_payload",
    "decode_coordinate",
    "duration_seconds",
    "encode_ack_payload",
    "to_duration",
]

SECONDS_TO_NANOSECONDS = 1.0e9
# Below this two coordinates are on top of each other (coordinate.go zeroThreshold).
ZERO_THRESHOLD = 1.0e-6
MAX_RTT_NS = 10 * 1_000_000_000  # an RTT over 10 s is refused (client.go maxRTT)
_MAX_INT64 = (1 << 63) - 1


@dataclass(frozen=True, slots=True)
class CoordinateConfig:
    """The Vivaldi tuning parameters (coordinate/config.go DefaultConfig)."""

    dimensionality: int = 8  # Euclidean dimensions (plus the height)
    vivaldi_error_max: float = 1.5  # initial error and its ceiling
    vivaldi_ce: float = 0.25  # most an observation moves the error estimate
    vivaldi_cc: float = 0.25  # most an observation moves the coordinate
    adjustment_window_size: int = 20  # samples of the adjustment term (0: none)
    height_min: float = 10.0e-6  # s: the least height
    latency_filter_size: int = 3  # RTT samples per node, of which the median is used
    gravity_rho: float = 150.0  # s: how weakly gravity pulls towards the origin


class CoordinateError(ValueError):
    """An observation or coordinate the client refuses (the text is Serf's)."""


class DimensionalityConflictError(CoordinateError):
    """Two coordinates of different dimensionality were combined (a panic in Serf)."""

    def __init__(self) -> None:
        super().__init__("coordinate dimensionality does not match")


def to_duration(seconds: float) -> int:
    """Go's ``time.Duration(seconds * 1e9)``: whole nanoseconds, truncated towards zero
    (out of int64's range Go's conversion on amd64 gives the minimum int64)."""
    ns = seconds * SECONDS_TO_NANOSECONDS
    if not math.isfinite(ns) or not -(1 << 63) <= ns <= _MAX_INT64:
        return -(1 << 63)
    return int(ns)


def duration_seconds(ns: int) -> float:
    """Go's ``Duration.Seconds()``: whole seconds plus the nanoseconds over 1e9."""
    sign = -1 if ns < 0 else 1
    whole, frac = divmod(abs(ns), 1_000_000_000)
    return sign * float(whole) + sign * float(frac) / 1e9


@dataclass(slots=True)
class Coordinate:
    """A network coordinate (coordinate.go Coordinate); every field in seconds except
    ``error``."""

    vec: list[float]
    error: float = 1.5
    adjustment: float = 0.0
    height: float = 10.0e-6

    @classmethod
    def origin(cls, config: CoordinateConfig) -> Coordinate:
        """A fresh coordinate: at the origin, with the largest error (NewCoordinate)."""
        return cls([0.0] * config.dimensionality, config.vivaldi_error_max, 0.0,
                   config.height_min)

    def clone(self) -> Coordinate:
        return Coordinate(list(self.vec), self.error, self.adjustment, self.height)

    def is_valid(self) -> bool:
        """No component is NaN or infinite."""
        return (all(math.isfinite(v) for v in self.vec) and math.isfinite(self.error)
                and math.isfinite(self.adjustment) and math.isfinite(self.height))

    def is_compatible_with(self, other: Coordinate) -> bool:
        return len(self.vec) == len(other.vec)

    def apply_force(self, config: CoordinateConfig, force: float, other: Coordinate,
                    rng: random.Random) -> Coordinate:
        """This coordinate pushed by ``force`` seconds away from ``other`` (towards it when
        negative); ``rng`` picks the direction when the two coincide."""
        if not self.is_compatible_with(other):
            raise DimensionalityConflictError()
        ret = self.clone()
        unit, mag = _unit_vector_at(self.vec, other.vec, rng)
        ret.vec = [a + u * force for a, u in zip(ret.vec, unit, strict=True)]
        if mag > ZERO_THRESHOLD:
            ret.height = (ret.height + other.height) * force / mag + ret.height
            ret.height = max(ret.height, config.height_min)
        return ret

    def distance_to(self, other: Coordinate) -> int:
        """The estimated RTT to ``other`` in nanoseconds (a Go Duration): the raw distance
        plus both adjustments, unless that would not be positive."""
        if not self.is_compatible_with(other):
            raise DimensionalityConflictError()
        dist = self.raw_distance_to(other)
        adjusted = dist + self.adjustment + other.adjustment
        if adjusted > 0.0:
            dist = adjusted
        return to_duration(dist)

    def distance_seconds(self, other: Coordinate) -> float:
        """:meth:`distance_to` in seconds, as Go's ``DistanceTo(...).Seconds()``."""
        return duration_seconds(self.distance_to(other))

    def raw_distance_to(self, other: Coordinate) -> float:
        """The Vivaldi distance in seconds: Euclidean part plus both heights, no
        adjustment."""
        return _magnitude(_diff(self.vec, other.vec)) + self.height + other.height


def _diff(a: list[float], b: list[float]) -> list[float]:
    return [x - y for x, y in zip(a, b, strict=True)]


def _sum(values: list[float]) -> float:
    # Left to right with one rounding per addition, as Go's loop adds (Python 3.12's
    # sum() compensates, which would differ in the last bits).
    total = 0.0
    for v in values:
        total += v
    return total


def _magnitude(vec: list[float]) -> float:
    return math.sqrt(_sum([v * v for v in vec]))


def _unit_vector_at(a: list[float], b: list[float],
                    rng: random.Random) -> tuple[list[float], float]:
    # The unit vector from b to a and the distance between them; a random direction
    # (distance 0) when they coincide, the first axis if even that comes out null.
    ret = _diff(a, b)
    mag = _magnitude(ret)
    if mag > ZERO_THRESHOLD:
        return [v / mag for v in ret], mag
    ret = [rng.random() - 0.5 for _ in ret]
    mag = _magnitude(ret)
    if mag > ZERO_THRESHOLD:
        return [v / mag for v in ret], 0.0
    ret = [0.0] * len(ret)
    ret[0] = 1.0
    return ret, 0.0


@dataclass(slots=True)
class ClientStats:
    """What happened while updating (ClientStats)."""

    resets: int = 0  # the coordinate went invalid and started over at the origin


class Client:
    """The local node's coordinate and the state that updates it (coordinate.Client)."""

    def __init__(self, config: CoordinateConfig, rng: random.Random) -> None:
        if not config.dimensionality > 0:
            raise CoordinateError("dimensionality must be >0")
        self.config = config
        self._rng = rng
        self._coord = Coordinate.origin(config)
        self._origin = Coordinate.origin(config)
        self._adjustment_index = 0
        self._adjustment_samples = [0.0] * config.adjustment_window_size
        self._latency: dict[str, list[float]] = {}
        self.stats = ClientStats()

    def get_coordinate(self) -> Coordinate:
        """A copy of the current coordinate."""
        return self._coord.clone()

    def set_coordinate(self, coord: Coordinate) -> None:
        """Force the coordinate (checked as an observation's is)."""
        self._check(coord)
        self._coord = coord.clone()

    def forget_node(self, node: str) -> None:
        """Drop the latency samples kept for ``node``."""
        self._latency.pop(node, None)

    def tracked_nodes(self) -> int:
        """How many nodes have latency samples (bounded by the owner's forget_node)."""
        return len(self._latency)

    def distance_to(self, other: Coordinate) -> int:
        """The estimated RTT from us to ``other``, in nanoseconds."""
        return self._coord.distance_to(other)

    def _check(self, coord: Coordinate) -> None:
        if not self._coord.is_compatible_with(coord):
            raise CoordinateError("dimensions aren't compatible")
        if not coord.is_valid():
            raise CoordinateError("coordinate is invalid")

    def latency_filter(self, node: str, rtt: float) -> float:
        """Add an RTT sample (seconds) for ``node``; the median of its last samples."""
        samples = self._latency.setdefault(node, [])
        samples.append(rtt)
        if len(samples) > self.config.latency_filter_size:
            del samples[0]
        ordered = sorted(samples)
        return ordered[len(ordered) // 2]

    def update(self, node: str, other: Coordinate, rtt_ns: int) -> Coordinate:
        """Observe ``other`` (``node``'s coordinate) at ``rtt_ns`` nanoseconds; the new
        coordinate. :class:`CoordinateError` (Serf's text) when refused."""
        self._check(other)
        if rtt_ns < 0 or rtt_ns > MAX_RTT_NS:
            raise CoordinateError(
                f"round trip time not in valid range, duration {format_duration_ns(rtt_ns)} "
                f"is not a positive value less than {format_duration_ns(MAX_RTT_NS)} ")
        rtt = self.latency_filter(node, duration_seconds(rtt_ns))
        self._update_vivaldi(other, rtt)
        self._update_adjustment(other, rtt)
        self._update_gravity()
        if not self._coord.is_valid():
            self.stats.resets += 1
            self._coord = Coordinate.origin(self.config)
        return self._coord.clone()

    def _update_vivaldi(self, other: Coordinate, rtt: float) -> None:
        cfg = self.config
        coord = self._coord
        dist = coord.distance_seconds(other)
        rtt = max(rtt, ZERO_THRESHOLD)
        wrongness = abs(dist - rtt) / rtt
        total_error = max(coord.error + other.error, ZERO_THRESHOLD)
        weight = coord.error / total_error
        coord.error = cfg.vivaldi_ce * weight * wrongness + coord.error * (
            1.0 - cfg.vivaldi_ce * weight)
        coord.error = min(coord.error, cfg.vivaldi_error_max)
        force = cfg.vivaldi_cc * weight * (rtt - dist)
        self._coord = coord.apply_force(cfg, force, other, self._rng)

    def _update_adjustment(self, other: Coordinate, rtt: float) -> None:
        window = self.config.adjustment_window_size
        if window == 0:
            return
        # The adjustments themselves stay out of this sample: the raw distance.
        self._adjustment_samples[self._adjustment_index] = rtt - self._coord.raw_distance_to(other)
        self._adjustment_index = (self._adjustment_index + 1) % window
        self._coord.adjustment = _sum(self._adjustment_samples) / (2.0 * window)

    def _update_gravity(self) -> None:
        dist = self._origin.distance_seconds(self._coord)
        ratio = dist / self.config.gravity_rho
        force = -1.0 * (ratio * ratio)  # math.Pow(x, 2) is x*x in Go
        self._coord = self._coord.apply_force(self.config, force, self._origin, self._rng)


# ---------------------------------------------------------------------------
# The ack payload (serf/ping_delegate.go): [PING_VERSION][Coordinate in go-msgpack's
# gossip dialect], a map of the four fields in Go's name order, every number a float64.

PING_VERSION = 1  # Serf's PingVersion, the payload's first byte


def encode_ack_payload(coord: Coordinate) -> bytes:
    """What Serf puts in a ping ack: the version byte and the coordinate."""
    return bytes([PING_VERSION]) + pack_gossip({
        b"Adjustment": float(coord.adjustment),
        b"Error": float(coord.error),
        b"Height": float(coord.height),
        b"Vec": [float(v) for v in coord.vec],
    })


def _number(name: str, v: Any) -> float:
    # go-msgpack decodes a float64 field from float32/64 or any integer; nil is zero.
    if v is None:
        return 0.0
    if isinstance(v, float):
        return v
    if isinstance(v, int) and not isinstance(v, bool) and -(1 << 63) <= v < (1 << 64):
        return float(v)
    raise DecodeError(f"coordinate field {name}: expected a number, got {type(v).__name__}")


def decode_coordinate(obj: Any) -> Coordinate:
    """A decoded coordinate map as Go reads it into its struct: unknown keys ignored,
    missing ones zero; :class:`~serfd.wire.codec.DecodeError` for wrong types."""
    if not isinstance(obj, dict):
        raise DecodeError(f"coordinate: expected a map, got {type(obj).__name__}")
    fields = {(k.decode("utf-8", "replace") if isinstance(k, bytes) else k): v
              for k, v in obj.items()}
    vec = fields.get("Vec")
    if vec is None:
        vec = []
    if not isinstance(vec, list):
        raise DecodeError(f"coordinate field Vec: expected an array, got {type(vec).__name__}")
    return Coordinate([_number("Vec", v) for v in vec], _number("Error", fields.get("Error")),
                      _number("Adjustment", fields.get("Adjustment")),
                      _number("Height", fields.get("Height")))


def decode_ack_payload(payload: bytes) -> Coordinate:
    """The coordinate in a peer's whole ack payload (its version byte, which the caller
    checked, is skipped). Like Serf's stream decoder it reads one object and ignores what
    follows."""
    unpacker = msgpack.Unpacker(raw=True, strict_map_key=False, use_list=True,
                                max_buffer_size=len(payload) + 1)
    unpacker.feed(payload[1:])
    try:
        obj = unpacker.unpack()
    except msgpack.OutOfData:
        raise DecodeError("coordinate: truncated msgpack") from None
    except (ValueError, TypeError, msgpack.UnpackException, RecursionError) as e:
        raise DecodeError(f"coordinate: bad msgpack: {e.__class__.__name__}") from None
    return decode_coordinate(obj)
