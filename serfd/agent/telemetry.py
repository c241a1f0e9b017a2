"""Where the metrics go: the in-memory sink (SIGUSR1), statsd, statsite and Prometheus.

Theory of operation
-------------------
The cores and services report through one :class:`~serfd.base.metrics.Metrics` front
(``Agent.metrics``), which prefixes Serf's keys (``serf-agent``, and the host name on
gauges) and hands them to every sink here. Serf's agent builds the same set
(``cmd/serf/command/agent/command.go``): an in-memory sink always, statsite and statsd
when ``statsite_addr`` / ``statsd_addr`` are set, the host name on gauges only when one of
those two is (with the in-memory sink alone go-metrics leaves it off).

* :class:`InmemSink`: go-metrics' ``InmemSink(10s, 1m)``. Per 10 s interval (aligned to
  the wall clock, as ``time.Now().Truncate``) the last value of each gauge and, for each
  counter and sample, count, sum, min, max, mean, stddev and when it was last updated; six
  intervals kept (the current one included). :meth:`InmemSink.dump_lines` is
  go-metrics' SIGUSR1 dump (``[G]``/``[C]``/``[S]`` lines, the interval still being
  aggregated left out), which the agent logs on the loop.
* :class:`StatsdSink` (UDP) and :class:`StatsiteSink` (TCP): go-metrics' line format
  (``key:%f|c``, ``|g``, ``|ms``; ``:`` and spaces in keys become ``_``; values as
  float32). A metric call only formats a line into a bounded buffer; a timer armed when
  the buffer stops being empty flushes it 100 ms later (go-metrics' flushInterval), so an
  idle node arms nothing. statsd packets hold at most 1400 bytes of whole lines; statsite
  reconnects after 5 s, doubling up to 60 s, and drops what comes while it is down, as
  go-metrics drains its queue while it waits.
* :class:`PrometheusSink` + :class:`PrometheusEndpoint`: ``[telemetry] prometheus_bind``.
  go-metrics' Prometheus sink's names (key parts joined by ``_``, then `` .=-/`` made
  ``_``), counters as counters, gauges as gauges, samples as summaries (quantiles 0.5,
  0.9, 0.99 over the last 10 s, go-metrics' MaxAge). The host name is never part of a
  name there (Prometheus labels the target with ``instance``). Served by a small HTTP
  server on the loop, rendered with the prometheus_client library, imported only when
  the endpoint is configured.

Everything a peer can grow is bounded: keys per interval, series, buffered bytes,
connections; what is cut is counted (``serfctl info``: ``dropped_metrics_*``) and logged
at most once per 10 s per reason (:class:`~serfd.base.ratelog.DropLog`).
"""

from __future__ import annotations

import abc
import asyncio
import logging
import math
import re
import socket
import struct
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from serfd.agent.clock import Clock, Timer
from serfd.base.metrics import Key, Metrics
from serfd.base.ratelog import DropLog

if TYPE_CHECKING:
    from serfd.agent.config import Config

__all__ = [
    "InmemSink",
    "PrometheusEndpoint",
    "PrometheusSink",
    "StatsdSink",
    "StatsiteSink",
    "Telemetry",
    "go_time",
    "pack_lines",
    "prometheus_name",
    "statsd_line",
]

log = logging.getLogger("serfd.telemetry")

# Serf's agent: metrics.NewInmemSink(10*time.Second, time.Minute).
INMEM_INTERVAL = 10.0
INMEM_RETAIN = 60.0
INMEM_MAX_KEYS = 1024  # distinct names per interval (ours; go-metrics has no bound)

STATSD_MAX_PACKET = 1400  # go-metrics statsdMaxLen
FLUSH_INTERVAL = 0.1  # go-metrics flushInterval (statsd and statsite)
QUEUE_LINES = 4096  # go-metrics' metricQueue length: lines waiting for a flush
STATSITE_MAX_BUFFER = 256 * 1024  # bytes written but not yet taken by the kernel
STATSITE_RETRY = 5.0  # go-metrics waits 5 s before it dials again
STATSITE_RETRY_MAX = 60.0  # ours: the wait doubles up to this
CONNECT_TIMEOUT = 5.0

# go-metrics' Prometheus sink: summaries with these objectives over MaxAge 10 s.
PROM_QUANTILES = (0.5, 0.9, 0.99)
PROM_MAX_AGE = 10.0
PROM_WINDOW = 512  # observations kept per summary for its quantiles (ours)
PROM_MAX_SERIES = 2048  # metric names served (ours)
HTTP_MAX_CONNECTIONS = 8
HTTP_MAX_REQUEST = 8192  # request line and headers
HTTP_TIMEOUT = 5.0


_F32 = struct.Struct("f")


def f32(value: float) -> float:
    """``value`` as the float32 go-metrics passes to every sink."""
    try:
        return float(_F32.unpack(_F32.pack(value))[0])
    except OverflowError:
        return math.copysign(math.inf, value)


def go_float(value: float, spec: str = "%f") -> str:
    """Go's ``%f``/``%0.3f`` of a float: like C's, but NaN and infinities spelled as Go."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return spec % value


def go_time(ns: int) -> str:
    """Go's ``time.Time.String()`` of a wall time in local time (without the ``m=+``
    monotonic reading go-metrics' LastUpdated also shows)."""
    secs, frac = divmod(ns, 1_000_000_000)
    t = time.localtime(secs)
    text = time.strftime("%Y-%m-%d %H:%M:%S", t)
    if frac:
        text += "." + f"{frac:09d}".rstrip("0")
    return f"{text} {time.strftime('%z', t)} {t.tm_zone}"


# --------------------------------------------------------------------------- in memory


@dataclass(slots=True)
class AggregateSample:
    """go-metrics' AggregateSample: a counter's or sample's values in one interval."""

    count: int = 0
    sum: float = 0.0
    sum_sq: float = 0.0
    min: float = 0.0
    max: float = 0.0
    last: float = 0.0
    last_updated: int = 0  # wall clock, ns

    def ingest(self, value: float, now_ns: int) -> None:
        self.count += 1
        self.sum += value
        self.sum_sq += value * value
        if value < self.min or self.count == 1:
            self.min = value
        if value > self.max or self.count == 1:
            self.max = value
        self.last = value
        self.last_updated = now_ns

    @property
    def mean(self) -> float:
        return self.sum / self.count if self.count else 0.0

    @property
    def stddev(self) -> float:
        div = self.count * (self.count - 1)
        if div == 0:
            return 0.0
        var = (self.count * self.sum_sq - self.sum * self.sum) / div
        return math.sqrt(var) if var >= 0 else math.nan  # Go's Sqrt of a negative: NaN

    def go_string(self) -> str:
        """AggregateSample.String(), as the SIGUSR1 dump prints it."""
        if self.count == 0:
            return "Count: 0"
        when = go_time(self.last_updated)
        sd = self.stddev
        if sd == 0:
            return f"Count: {self.count} Sum: {go_float(self.sum, '%0.3f')} LastUpdated: {when}"
        return (f"Count: {self.count} Min: {go_float(self.min, '%0.3f')} "
                f"Mean: {go_float(self.mean, '%0.3f')} Max: {go_float(self.max, '%0.3f')} "
                f"Stddev: {go_float(sd, '%0.3f')} Sum: {go_float(self.sum, '%0.3f')} "
                f"LastUpdated: {when}")


@dataclass(slots=True)
class IntervalMetrics:
    """One aggregation interval: its start (wall clock, ns) and what was reported in it."""

    start_ns: int
    gauges: dict[str, float] = field(default_factory=dict)
    counters: dict[str, AggregateSample] = field(default_factory=dict)
    samples: dict[str, AggregateSample] = field(default_factory=dict)

    def size(self) -> int:
        return len(self.gauges) + len(self.counters) + len(self.samples)


def inmem_name(key: Key) -> str:
    """go-metrics' InmemSink flattenKey: parts joined by ``.``, spaces made ``_``."""
    return ".".join(key).replace(" ", "_")


class InmemSink:
    """go-metrics' InmemSink (see the module docstring); bounded in keys per interval."""

    def __init__(self, interval: float = INMEM_INTERVAL, retain: float = INMEM_RETAIN, *,
                 max_keys: int = INMEM_MAX_KEYS, wall_ns: Callable[[], int] = time.time_ns,
                 drops: DropLog | None = None, now: Callable[[], float] = time.monotonic
                 ) -> None:
        self.interval_ns = int(interval * 1e9)
        self.max_intervals = max(1, int(retain / interval))
        self.max_keys = max_keys
        self._wall_ns = wall_ns
        self._now = now
        self._drops = drops
        self.intervals: list[IntervalMetrics] = []
        self._end_ns = 0  # when the last interval ends
        self._names: dict[Key, str] = {}  # flattened names, a cache (bounded below)

    def _current(self, now_ns: int) -> IntervalMetrics:
        if now_ns < self._end_ns and now_ns >= self._end_ns - self.interval_ns:
            return self.intervals[-1]  # the common case: no new interval
        start = now_ns - now_ns % self.interval_ns
        if self.intervals and self.intervals[-1].start_ns == start:
            return self.intervals[-1]  # (the wall clock stepped back into it)
        cur = IntervalMetrics(start)
        self.intervals.append(cur)
        del self.intervals[:-self.max_intervals]
        self._end_ns = start + self.interval_ns
        if len(self._names) > 4 * self.max_keys:
            self._names.clear()
        return cur

    def _name(self, key: Key) -> str:
        name = self._names.get(key)
        if name is None:
            name = self._names[key] = inmem_name(key)
        return name

    def _room(self, intv: IntervalMetrics, name: str) -> bool:
        if intv.size() < self.max_keys:
            return True
        if self._drops is not None:
            self._drops.drop("metrics_inmem_keys", self._now(),
                             "in-memory metrics: over %d names in one interval, %r not kept",
                             self.max_keys, name)
        return False

    def set_gauge(self, key: Key, value: float) -> None:
        now_ns = self._wall_ns()
        intv = self._current(now_ns)
        name = self._name(key)
        if name in intv.gauges or self._room(intv, name):
            intv.gauges[name] = f32(value)

    def incr_counter(self, key: Key, value: float) -> None:
        now_ns = self._wall_ns()
        intv = self._current(now_ns)
        self._aggregate(intv, intv.counters, key, value, now_ns)

    def add_sample(self, key: Key, value: float) -> None:
        now_ns = self._wall_ns()
        intv = self._current(now_ns)
        self._aggregate(intv, intv.samples, key, value, now_ns)

    def _aggregate(self, intv: IntervalMetrics, aggs: dict[str, AggregateSample], key: Key,
                   value: float, now_ns: int) -> None:
        name = self._name(key)
        agg = aggs.get(name)
        if agg is None:
            if not self._room(intv, name):
                return
            agg = aggs[name] = AggregateSample()
        agg.ingest(value if value == 1.0 else f32(value), now_ns)  # (most are incr by 1)

    def data(self) -> list[IntervalMetrics]:
        """The retained intervals, oldest first; the last is the current one (created now
        if nothing was reported in it yet, as go-metrics' Data())."""
        self._current(self._wall_ns())
        return list(self.intervals)

    def dump_lines(self) -> list[str]:
        """go-metrics' InmemSignal dump: every interval but the one still being
        aggregated, gauges then counters then samples (each sorted by name)."""
        lines: list[str] = []
        for intv in self.data()[:-1]:
            at = go_time(intv.start_ns)
            for name, value in sorted(intv.gauges.items()):
                lines.append(f"[{at}][G] '{name}': {go_float(value, '%0.3f')}")
            for name, agg in sorted(intv.counters.items()):
                lines.append(f"[{at}][C] '{name}': {agg.go_string()}")
            for name, agg in sorted(intv.samples.items()):
                lines.append(f"[{at}][S] '{name}': {agg.go_string()}")
        return lines


# --------------------------------------------------------------------------- statsd


def statsd_name(key: Key) -> str:
    """go-metrics' statsd/statsite flattenKey: parts joined by ``.``, ``:`` and spaces
    made ``_``."""
    return ".".join(key).replace(":", "_").replace(" ", "_")


def statsd_line(key: Key, value: float, kind: str) -> bytes:
    """One statsd line as go-metrics writes it: ``name:%f|kind\\n`` (kind c, g or ms)."""
    return f"{statsd_name(key)}:{go_float(f32(value))}|{kind}\n".encode()


def pack_lines(lines: Iterable[bytes], max_len: int = STATSD_MAX_PACKET) -> list[bytes]:
    """Whole lines into packets of at most ``max_len`` bytes, as go-metrics fills them (a
    line longer than that alone goes out in a packet of its own)."""
    packets: list[bytes] = []
    buf = bytearray()
    for line in lines:
        if buf and len(buf) + len(line) > max_len:
            packets.append(bytes(buf))
            buf.clear()
        buf += line
    if buf:
        packets.append(bytes(buf))
    return packets


class _LineSink(abc.ABC):
    """What statsd and statsite share: lines formatted into a bounded queue, flushed
    FLUSH_INTERVAL after the queue stops being empty."""

    name = ""

    def __init__(self, addr: tuple[str, int], *, clock: Clock, drops: DropLog,
                 max_lines: int = QUEUE_LINES) -> None:
        self.addr = addr
        self._clock = clock
        self._drops = drops
        self._max_lines = max_lines
        self._lines: list[bytes] = []
        self._timer: Timer | None = None
        self.sent_lines = 0

    def set_gauge(self, key: Key, value: float) -> None:
        self._push(statsd_line(key, value, "g"))

    def incr_counter(self, key: Key, value: float) -> None:
        self._push(statsd_line(key, value, "c"))

    def add_sample(self, key: Key, value: float) -> None:
        self._push(statsd_line(key, value, "ms"))

    def _push(self, line: bytes) -> None:
        if len(self._lines) >= self._max_lines:
            self._drops.drop(f"metrics_{self.name}_queue", self._clock.now(),
                             "%s: %d lines waiting to be sent, dropping metrics",
                             self.name, self._max_lines)
            return
        self._lines.append(line)
        if self._timer is None:
            self._timer = self._clock.call_at(self._clock.now() + FLUSH_INTERVAL, self.flush)

    def flush(self) -> None:
        """Send what is queued now (the timer's callback; also at close)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        lines, self._lines = self._lines, []
        if lines:
            self._send(lines)

    @abc.abstractmethod
    def _send(self, lines: list[bytes]) -> None:
        """Hand ``lines`` to the collector (each subclass's transport)."""

    def close(self) -> None:
        self.flush()


class StatsdSink(_LineSink):
    """go-metrics' StatsdSink: UDP packets of whole lines (module docstring)."""

    name = "statsd"

    def __init__(self, addr: tuple[str, int], *, clock: Clock, drops: DropLog,
                 max_lines: int = QUEUE_LINES, max_packet: int = STATSD_MAX_PACKET) -> None:
        super().__init__(addr, clock=clock, drops=drops, max_lines=max_lines)
        self.max_packet = max_packet
        family = socket.AF_INET6 if ":" in addr[0] else socket.AF_INET
        self._sock = socket.socket(family, socket.SOCK_DGRAM)
        self._sock.setblocking(False)
        self._sock.connect(addr)  # an IP: no lookup; a UDP connect sends nothing
        self.sent_packets = 0

    def _send(self, lines: list[bytes]) -> None:
        for packet in pack_lines(lines, self.max_packet):
            try:
                self._sock.send(packet)
            except OSError as e:  # no listener (ICMP refused), a full socket buffer
                self._drops.drop("metrics_statsd_send", self._clock.now(),
                                 "statsd: cannot send to %s:%d: %s", *self.addr,
                                 e.strerror or e)
                continue
            self.sent_packets += 1
            self.sent_lines += packet.count(b"\n")

    def close(self) -> None:
        super().close()
        self._sock.close()


class StatsiteSink(_LineSink):
    """go-metrics' StatsiteSink: lines over one TCP connection, redialled with backoff."""

    name = "statsite"

    def __init__(self, addr: tuple[str, int], *, clock: Clock, drops: DropLog,
                 max_lines: int = QUEUE_LINES, max_buffer: int = STATSITE_MAX_BUFFER,
                 retry: float = STATSITE_RETRY, retry_max: float = STATSITE_RETRY_MAX) -> None:
        super().__init__(addr, clock=clock, drops=drops, max_lines=max_lines)
        self.max_buffer = max_buffer
        self.retry = retry
        self.retry_max = retry_max
        self._writer: asyncio.StreamWriter | None = None
        self._task: asyncio.Task[None] | None = None
        self.connects = 0

    @property
    def connected(self) -> bool:
        return self._writer is not None and not self._writer.is_closing()

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())
        self._task.add_done_callback(self._ended)

    def _ended(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and (exc := task.exception()) is not None:
            log.error("statsite: sender stopped: %r; no more metrics to %s:%d", exc,
                      *self.addr)

    async def _run(self) -> None:
        wait = self.retry
        while True:
            try:
                reader, writer = await asyncio.wait_for(
                    asyncio.open_connection(*self.addr), CONNECT_TIMEOUT)
            except (OSError, TimeoutError) as e:
                reason = str(e) if isinstance(e, TimeoutError) or not e.strerror else e.strerror
                self._drops.drop("metrics_statsite_connect", self._clock.now(),
                                 "statsite: cannot connect to %s:%d: %s (retrying in %gs)",
                                 *self.addr, reason or "timed out", wait)
                await self._clock.sleep(wait)
                wait = min(wait * 2, self.retry_max)
                continue
            self._writer = writer
            self.connects += 1
            wait = self.retry
            log.info("statsite: connected to %s:%d", *self.addr)
            try:
                while await reader.read(4096):  # statsite says nothing; EOF: it closed
                    pass
            except OSError as e:
                log.warning("statsite: connection to %s:%d lost: %s", *self.addr, e)
            else:
                log.warning("statsite: %s:%d closed the connection", *self.addr)
            self._writer = None
            writer.close()
            await self._clock.sleep(wait)

    def _send(self, lines: list[bytes]) -> None:
        writer = self._writer
        if writer is None or writer.is_closing():
            self._drops.drop("metrics_statsite_down", self._clock.now(),
                             "statsite: not connected to %s:%d, dropping metrics", *self.addr,
                             n=len(lines))
            return
        if writer.transport.get_write_buffer_size() > self.max_buffer:
            self._drops.drop("metrics_statsite_slow", self._clock.now(),
                             "statsite: %s:%d takes too long to read, dropping metrics",
                             *self.addr, n=len(lines))
            return
        writer.write(b"".join(lines))
        self.sent_lines += len(lines)

    def close(self) -> None:
        super().close()
        if self._task is not None:
            self._task.cancel()
        if self._writer is not None:
            self._writer.close()
            self._writer = None


# --------------------------------------------------------------------------- Prometheus

_FORBIDDEN = re.compile(r"[ .=\-/]")  # go-metrics' Prometheus sink forbiddenChars
_NOT_PROM = re.compile(r"[^a-zA-Z0-9_:]")


def prometheus_name(key: Key) -> str:
    """go-metrics' Prometheus flattenKey (parts joined by ``_``, `` .=-/`` made ``_``);
    any other character a Prometheus name cannot hold is made ``_`` too (go-metrics would
    emit an invalid name), and a leading digit gets a ``_`` before it."""
    name = _NOT_PROM.sub("_", _FORBIDDEN.sub("_", "_".join(key)))
    return "_" + name if name[:1].isdigit() else name


class _Summary:
    __slots__ = ("count", "sum", "window")

    def __init__(self) -> None:
        self.count = 0
        self.sum = 0.0
        self.window: deque[tuple[float, float]] = deque(maxlen=PROM_WINDOW)

    def quantiles(self, now: float) -> list[tuple[float, float]]:
        while self.window and self.window[0][0] < now - PROM_MAX_AGE:
            self.window.popleft()
        values = sorted(v for _, v in self.window)
        if not values:
            return [(q, math.nan) for q in PROM_QUANTILES]  # client_golang: NaN when empty
        return [(q, values[min(len(values) - 1, max(0, math.ceil(q * len(values)) - 1))])
                for q in PROM_QUANTILES]


class PrometheusSink:
    """The values the endpoint serves: counters summed, gauges last, samples summarised.

    ``hostname``: the host name the front puts in gauge keys (removed here)."""

    def __init__(self, *, clock: Clock, drops: DropLog, hostname: str | None = None,
                 max_series: int = PROM_MAX_SERIES) -> None:
        self._clock = clock
        self._drops = drops
        self.hostname = hostname
        self.max_series = max_series
        self.kinds: dict[str, str] = {}  # name -> "counter" | "gauge" | "summary"
        self.counters: dict[str, float] = {}
        self.gauges: dict[str, float] = {}
        self.summaries: dict[str, _Summary] = {}

    def _admit(self, name: str, kind: str) -> bool:
        have = self.kinds.get(name)
        if have == kind:
            return True
        if have is not None:
            self._drops.drop("metrics_prometheus_clash", self._clock.now(),
                             "prometheus: %s is a %s, not reported as a %s too", name, have, kind)
            return False
        if len(self.kinds) >= self.max_series:
            self._drops.drop("metrics_prometheus_series", self._clock.now(),
                             "prometheus: over %d metric names, %s not served",
                             self.max_series, name)
            return False
        self.kinds[name] = kind
        return True

    def set_gauge(self, key: Key, value: float) -> None:
        if self.hostname and len(key) > 2 and key[1] == self.hostname:
            key = (key[0], *key[2:])
        name = prometheus_name(key)
        if self._admit(name, "gauge"):
            self.gauges[name] = f32(value)

    def incr_counter(self, key: Key, value: float) -> None:
        name = prometheus_name(key)
        if self._admit(name, "counter"):
            self.counters[name] = self.counters.get(name, 0.0) + f32(value)

    def add_sample(self, key: Key, value: float) -> None:
        name = prometheus_name(key)
        if not self._admit(name, "summary"):
            return
        s = self.summaries.get(name)
        if s is None:
            s = self.summaries[name] = _Summary()
        v = f32(value)
        s.count += 1
        s.sum += v
        s.window.append((self._clock.now(), v))

    def collect(self) -> Iterator[Any]:
        """The metric families (prometheus_client ``Metric``), for a registry."""
        from prometheus_client.core import GaugeMetricFamily, Metric

        now = self._clock.now()
        for name, value in sorted(self.counters.items()):
            c = Metric(name, name, "counter")  # the exposition adds _total
            c.add_sample(name + "_total", {}, value)
            yield c
        for name, value in sorted(self.gauges.items()):
            yield GaugeMetricFamily(name, name, value=value)
        for name, s in sorted(self.summaries.items()):
            m = Metric(name, name, "summary")
            for q, v in s.quantiles(now):
                m.add_sample(name, {"quantile": str(q)}, v)
            m.add_sample(name + "_sum", {}, s.sum)
            m.add_sample(name + "_count", {}, float(s.count))
            yield m


def _allow_ssl() -> None:
    """prometheus_client imports ssl (for its push and HTTPS helpers, unused here), which
    ``python -m serfd`` keeps out of the process to save OpenSSL's RSS: let it in, since
    the endpoint is configured (about 4 MiB more)."""
    import sys

    if "ssl" in sys.modules and sys.modules["ssl"] is None:
        del sys.modules["ssl"]


class PrometheusEndpoint:
    """``GET /metrics`` on the loop: the sink's families (and the process's own) as the
    Prometheus text format; at most HTTP_MAX_CONNECTIONS at once, each bounded in size
    and time."""

    def __init__(self, sink: PrometheusSink, *, clock: Clock, drops: DropLog,
                 before_scrape: Callable[[], None] | None = None) -> None:
        _allow_ssl()
        from prometheus_client import CollectorRegistry, ProcessCollector

        self.sink = sink
        self._clock = clock
        self._drops = drops
        self._before_scrape = before_scrape
        self.registry = CollectorRegistry(auto_describe=False)
        # 0.16 (Debian 12) has no type hints; newer releases want a Collector subclass.
        self.registry.register(sink)  # type: ignore[arg-type,unused-ignore]
        ProcessCollector(registry=self.registry)
        self._server: asyncio.base_events.Server | None = None
        self._active = 0
        self.scrapes = 0

    def render(self) -> bytes:
        from prometheus_client import generate_latest

        if self._before_scrape is not None:
            self._before_scrape()
        return generate_latest(self.registry)

    async def start(self, host: str, port: int) -> tuple[str, int]:
        """Listen; the address bound (OSError if it cannot be)."""
        self._server = await asyncio.start_server(self._serve, host, port,
                                                  limit=HTTP_MAX_REQUEST)
        addr = self._server.sockets[0].getsockname()
        return str(addr[0]), int(addr[1])

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._active >= HTTP_MAX_CONNECTIONS:
            self._drops.drop("metrics_http_connections", self._clock.now(),
                             "prometheus: %d scrapes in progress, connection refused",
                             HTTP_MAX_CONNECTIONS)
            writer.close()
            return
        self._active += 1
        try:
            await asyncio.wait_for(self._answer(reader, writer), HTTP_TIMEOUT)
        except (OSError, TimeoutError, asyncio.IncompleteReadError,
                asyncio.LimitOverrunError, ValueError) as e:
            self._drops.drop("metrics_http_bad", self._clock.now(),
                             "prometheus: request dropped: %s", type(e).__name__)
        finally:
            self._active -= 1
            writer.close()

    async def _answer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        request = head.split(b"\r\n", 1)[0].decode("latin-1").split()
        if len(request) != 3:
            status, body, ctype = "400 Bad Request", b"bad request\n", "text/plain"
        elif request[0] not in ("GET", "HEAD"):
            status, body, ctype = "405 Method Not Allowed", b"GET /metrics\n", "text/plain"
        elif request[1].split("?", 1)[0] != "/metrics":
            status, body, ctype = "404 Not Found", b"see /metrics\n", "text/plain"
        else:
            from prometheus_client import CONTENT_TYPE_LATEST

            status, body, ctype = "200 OK", self.render(), CONTENT_TYPE_LATEST
            self.scrapes += 1
        writer.write(
            f"HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {len(body)}\r\n"
            "Connection: close\r\n\r\n".encode("latin-1"))
        if request[:1] != ["HEAD"]:
            writer.write(body)
        await writer.drain()


# --------------------------------------------------------------------------- the set


def member_counts(statuses: Iterable[str]) -> dict[str, int]:
    """Members by status label (alive, leaving, left, failed), zeros included."""
    counts = dict.fromkeys(("alive", "leaving", "left", "failed"), 0)
    for s in statuses:
        if s in counts:
            counts[s] += 1
    return counts


class Telemetry:
    """The agent's sinks, built from the config (module docstring)."""

    def __init__(self, metrics: Metrics, *, clock: Clock, counters: dict[str, int],
                 member_statuses: Callable[[], Iterable[str]] | None = None) -> None:
        self.metrics = metrics
        self._clock = clock
        self.drops = DropLog(log, counters)
        self._member_statuses = member_statuses
        self.inmem = InmemSink(drops=self.drops, now=clock.now)
        self.statsd: StatsdSink | None = None
        self.statsite: StatsiteSink | None = None
        self.prometheus: PrometheusSink | None = None
        self.endpoint: PrometheusEndpoint | None = None
        self.endpoint_addr: tuple[str, int] | None = None

    def start_sinks(self, cfg: Config, statsd: tuple[str, int] | None = None,
                    statsite: tuple[str, int] | None = None) -> None:
        """Hang the sinks off the front; ``statsd``/``statsite``: the configured
        addresses with host names resolved."""
        m = self.metrics
        # Serf: the host name on gauges only when statsite or statsd is set.
        m.enable_hostname = bool(statsd or statsite) and not cfg.telemetry_disable_hostname
        m.add_sink(self.inmem)
        if statsite is not None:
            self.statsite = StatsiteSink(statsite, clock=self._clock, drops=self.drops)
            self.statsite.start()
            m.add_sink(self.statsite)
        if statsd is not None:
            self.statsd = StatsdSink(statsd, clock=self._clock, drops=self.drops)
            m.add_sink(self.statsd)
        if cfg.telemetry_prometheus_bind is not None:
            self.prometheus = PrometheusSink(
                clock=self._clock, drops=self.drops,
                hostname=m.hostname if m.enable_hostname else None)
            m.add_sink(self.prometheus)

    async def start_endpoint(self, cfg: Config) -> None:
        """Listen for scrapes (OSError when the address cannot be bound)."""
        if self.prometheus is None or cfg.telemetry_prometheus_bind is None:
            return
        self.endpoint = PrometheusEndpoint(self.prometheus, clock=self._clock,
                                           drops=self.drops, before_scrape=self._members)
        self.endpoint_addr = await self.endpoint.start(*cfg.telemetry_prometheus_bind)
        log.info("prometheus metrics on http://%s/metrics", _host_port(self.endpoint_addr))

    def _members(self) -> None:
        """The member counts `serfctl members` shows, as gauges, fresh at each scrape."""
        if self._member_statuses is None or self.prometheus is None:
            return
        for status, n in member_counts(self._member_statuses()).items():
            self.prometheus.set_gauge((self.metrics.service, "serfd", "members", status), n)

    def dump(self) -> int:
        """SIGUSR1: the in-memory intervals to the log, whatever log_level says (Serf
        writes them to stderr); the number of lines."""
        lines = self.inmem.dump_lines()
        for line in lines:
            rec = log.makeRecord(log.name, logging.INFO, __file__, 0, "%s", (line,), None)
            log.handle(rec)
        return len(lines)

    def describe(self) -> str:
        """What is on, for ``serfctl info``."""
        parts = ["inmem"]
        if self.statsd is not None:
            parts.append(f"statsd {_host_port(self.statsd.addr)}")
        if self.statsite is not None:
            parts.append(f"statsite {_host_port(self.statsite.addr)}")
        if self.endpoint_addr is not None:
            parts.append(f"prometheus {_host_port(self.endpoint_addr)}")
        return ", ".join(parts)

    async def close(self) -> None:
        for sink in (self.statsd, self.statsite):
            if sink is not None:
                sink.close()
        if self.endpoint is not None:
            await self.endpoint.close()


def _host_port(addr: tuple[str, int]) -> str:
    return f"[{addr[0]}]:{addr[1]}" if ":" in addr[0] else f"{addr[0]}:{addr[1]}"

