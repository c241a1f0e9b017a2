"""Metrics under Serf's and memberlist's names: the front every layer calls.

Serf reports through armon/go-metrics: a key is a list of name parts
(``["serf", "member", "join"]``), and the go-metrics front prepends the service name
(``serf-agent`` in Serf's agent) to every key and the host name to gauges only, before
it hands the key to each sink (in-memory for SIGUSR1, statsd, statsite). :class:`Metrics`
is that front. The layers below the agent call it with Serf's own keys; the agent builds
it with the sinks the config asks for (``serfd.agent.telemetry``).

Three kinds, as go-metrics has them:

* counters (``incr``): a count per interval (statsd ``|c``);
* gauges (``gauge``): the last value (statsd ``|g``);
* samples (``sample``; ``measure_since`` for timers, in milliseconds as go-metrics'
  default ``TimerGranularity``): statistics per interval (statsd ``|ms``).

Pure: no clock is read here. Timers take two ``now`` values from the caller; where a
duration is CPU time rather than protocol time (memberlist's ``gossip``), the caller asks
:meth:`Metrics.perf`, a clock the agent injects (``time.perf_counter``) and that is
``None`` in a simulation, where such a timer is simply not reported.

A front with no sinks costs one attribute test per call, so the cores can report
unconditionally. Names are chosen by our code; the one peer-chosen part Serf puts in a
name (a user event's or query's name, ``serf.events.<name>``) is passed through
:meth:`Metrics.bounded_name`, which caps the number of distinct names and their length so a
peer cannot grow the sinks' tables without bound.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Protocol

__all__ = ["NULL_METRICS", "Key", "MetricSink", "Metrics"]

Key = tuple[str, ...]

MAX_DYNAMIC_NAMES = 256  # distinct peer-chosen name parts reported per front
MAX_DYNAMIC_NAME_LEN = 64  # longer names are cut to this many characters
OVERFLOW_NAME = "_other"  # the name part reported once MAX_DYNAMIC_NAMES are in use


class MetricSink(Protocol):
    """Where metrics go: each method gets the full key (service and, for gauges, host
    name already prepended, as go-metrics hands keys to its sinks)."""

    def set_gauge(self, key: Key, value: float) -> None: ...

    def incr_counter(self, key: Key, value: float) -> None: ...

    def add_sample(self, key: Key, value: float) -> None: ...


class Metrics:
    """go-metrics' ``Metrics``: prefixes keys and fans them out to the sinks."""

    def __init__(self, service: str = "serf-agent", hostname: str = "", *,
                 enable_hostname: bool = True, sinks: Iterable[MetricSink] = (),
                 perf: Callable[[], float] | None = None) -> None:
        self.service = service
        self.hostname = hostname
        self.enable_hostname = enable_hostname
        self.perf = perf
        self._sinks: list[MetricSink] = list(sinks)
        self._dynamic: set[str] = set()
        self.dynamic_overflow = 0  # names reported as OVERFLOW_NAME

    @property
    def sinks(self) -> Sequence[MetricSink]:
        return tuple(self._sinks)

    @property
    def enabled(self) -> bool:
        return bool(self._sinks)

    def add_sink(self, sink: MetricSink) -> None:
        self._sinks.append(sink)

    def remove_sink(self, sink: MetricSink) -> None:
        self._sinks.remove(sink)

    def _prefixed(self, key: Key, gauge: bool) -> Key:
        if gauge and self.enable_hostname and self.hostname:
            key = (self.hostname, *key)
        return (self.service, *key) if self.service else key

    def incr(self, key: Key, value: float = 1.0) -> None:
        if not self._sinks:
            return
        full = self._prefixed(key, False)
        for sink in self._sinks:
            sink.incr_counter(full, value)

    def gauge(self, key: Key, value: float) -> None:
        if not self._sinks:
            return
        full = self._prefixed(key, True)
        for sink in self._sinks:
            sink.set_gauge(full, value)

    def sample(self, key: Key, value: float) -> None:
        if not self._sinks:
            return
        full = self._prefixed(key, False)
        for sink in self._sinks:
            sink.add_sample(full, value)

    def measure_since(self, key: Key, start: float, now: float) -> None:
        """A timer: ``now - start`` seconds reported in milliseconds."""
        if self._sinks:
            self.sample(key, (now - start) * 1000.0)

    def bounded_name(self, name: str) -> str:
        """A peer-chosen name part, cut to a bounded set (see the module docstring)."""
        name = name[:MAX_DYNAMIC_NAME_LEN]
        if name in self._dynamic:
            return name
        if len(self._dynamic) >= MAX_DYNAMIC_NAMES:
            self.dynamic_overflow += 1
            return OVERFLOW_NAME
        self._dynamic.add(name)
        return name


NULL_METRICS = Metrics(service="")  # no sinks: every call returns at once
"""The default for cores built without one (tests, simulations). Shared: never add a
sink to it."""
