"""serfd.agent.telemetry: the sinks alone, on a FakeClock and a fake wall clock.

The in-memory sink's aggregation and go-metrics' SIGUSR1 dump lines; statsd and statsite
lines byte for byte (go-metrics' ``%f`` of a float32) through a real UDP / TCP listener
on 127.0.0.1, statsd packets cut at 1400 bytes of whole lines; the Prometheus exposition
read back with prometheus_client's own parser; what each sink bounds and counts.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import socket
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from serfd.agent.config import Config, ConfigError, config_to_toml, load_config
from serfd.agent.handlers import handler_stats, parse_handlers
from serfd.agent.telemetry import (
    InmemSink,
    PrometheusEndpoint,
    PrometheusSink,
    StatsdSink,
    StatsiteSink,
    Telemetry,
    pack_lines,
    prometheus_name,
    statsd_line,
)
from serfd.base.metrics import Metrics
from serfd.base.ratelog import DropLog
from serfd.testing.clock import FakeClock
from tests.support import until

log = logging.getLogger("test")

# 2026-12-02 14:20:00 UTC, the start of a 10 s interval.
T0 = 1_796_221_200 * 10**9


@pytest.fixture
def utc() -> Iterator[None]:
    """Local time is UTC (go-metrics prints the local zone)."""
    old = os.environ.get("TZ")
    os.environ["TZ"] = "UTC"
    time.tzset()
    yield
    if old is None:
        del os.environ["TZ"]
    else:
        os.environ["TZ"] = old
    time.tzset()


class Wall:
    def __init__(self, ns: int = T0) -> None:
        self.ns = ns

    def __call__(self) -> int:
        return self.ns


def run(coro: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(coro())  # type: ignore[arg-type]


# --------------------------------------------------------------------------- in memory


def test_inmem_aggregates_counters_and_samples_per_interval_and_keeps_gauges_last() -> None:
    wall = Wall()
    sink = InmemSink(wall_ns=wall)
    m = Metrics("serf-agent", "host1", enable_hostname=False, sinks=[sink])
    for v in (1.0, 2.0, 3.0):
        m.sample(("serf", "msgs", "received"), v)
        wall.ns += 10**9
    m.incr(("serf", "member", "join"))
    m.incr(("serf", "member", "join"), 2)
    m.gauge(("memberlist", "health", "score"), 3)
    m.gauge(("memberlist", "health", "score"), 1)
    [intv] = sink.data()
    s = intv.samples["serf-agent.serf.msgs.received"]
    assert (s.count, s.sum, s.min, s.max, s.mean, s.last) == (3, 6.0, 1.0, 3.0, 2.0, 3.0)
    assert s.stddev == pytest.approx(1.0)
    c = intv.counters["serf-agent.serf.member.join"]
    assert (c.count, c.sum) == (2, 3.0)
    assert intv.gauges == {"serf-agent.memberlist.health.score": 1.0}
    # The next 10 s interval starts afresh; six are kept (Serf: 10 s for 1 min).
    wall.ns = T0 + 10 * 10**9
    m.incr(("serf", "member", "join"))
    assert [i.counters["serf-agent.serf.member.join"].count for i in sink.data()] == [2, 1]
    for k in range(2, 10):
        wall.ns = T0 + k * 10 * 10**9
        m.incr(("serf", "events"))
    assert len(sink.data()) == 6
    assert sink.data()[0].start_ns == T0 + 4 * 10 * 10**9


def test_inmem_keys_per_interval_are_bounded_and_the_cut_counted() -> None:
    counters: dict[str, int] = {}
    sink = InmemSink(wall_ns=Wall(), max_keys=3, drops=DropLog(log, counters))
    for i in range(5):
        sink.incr_counter(("serf-agent", "serf", "events", f"e{i}"), 1)
    sink.set_gauge(("serf-agent", "g"), 1)
    sink.incr_counter(("serf-agent", "serf", "events", "e0"), 1)  # a known key still counts
    [intv] = sink.data()
    assert intv.size() == 3
    assert intv.counters["serf-agent.serf.events.e0"].count == 2
    assert counters == {"metrics_inmem_keys": 3}


def test_sigusr1_dump_is_go_metrics_format_without_the_current_interval(utc: None) -> None:
    wall = Wall()
    sink = InmemSink(wall_ns=wall)
    m = Metrics("serf-agent", "host1", sinks=[sink])
    wall.ns = T0 + 3_500_000_000
    m.gauge(("memberlist", "health", "score"), 2)
    m.incr(("serf", "member", "join"))
    m.incr(("serf", "member", "join"))
    m.sample(("memberlist", "probeNode"), 1.0)
    wall.ns = T0 + 4_250_000_000
    m.sample(("memberlist", "probeNode"), 3.0)
    m.sample(("memberlist", "gossip"), 0.25)
    assert sink.dump_lines() == []  # the interval is still being aggregated
    wall.ns = T0 + 12 * 10**9
    m.incr(("serf", "member", "join"))  # the next interval: not in the dump yet
    at = "[2026-12-02 14:20:00 +0000 UTC]"
    assert sink.dump_lines() == [
        f"{at}[G] 'serf-agent.host1.memberlist.health.score': 2.000",
        (f"{at}[C] 'serf-agent.serf.member.join': Count: 2 Sum: 2.000 "
        "LastUpdated: 2026-12-02 14:20:03.5 +0000 UTC"),
        (f"{at}[S] 'serf-agent.memberlist.gossip': Count: 1 Sum: 0.250 "
        "LastUpdated: 2026-12-02 14:20:04.25 +0000 UTC"),
        (f"{at}[S] 'serf-agent.memberlist.probeNode': Count: 2 Min: 1.000 Mean: 2.000 "
        "Max: 3.000 Stddev: 1.414 Sum: 4.000 LastUpdated: 2026-12-02 14:20:04.25 +0000 UTC"),
    ]


def test_the_dump_is_logged_whatever_the_log_level(caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock()
    t = Telemetry(Metrics("serf-agent", "h"), clock=clock, counters={})
    wall = Wall()
    t.inmem = InmemSink(wall_ns=wall)
    t.metrics.add_sink(t.inmem)
    t.metrics.incr(("serf", "member", "join"))
    wall.ns += 10 * 10**9
    root = logging.getLogger()
    old = root.level
    root.setLevel(logging.ERROR)  # log_level = "error"; the handlers have no level
    try:
        assert t.dump() == 1
    finally:
        root.setLevel(old)
    assert ["[C] 'serf-agent.serf.member.join': Count: 1" in r.getMessage()
            for r in caplog.records] == [True]


# --------------------------------------------------------------------------- statsd


def test_statsd_lines_are_go_metrics_lines() -> None:
    assert statsd_line(("serf-agent", "serf", "member", "join"), 1, "c") == (
        b"serf-agent.serf.member.join:1.000000|c\n")
    assert statsd_line(("serf-agent", "h", "memberlist", "health", "score"), 2, "g") == (
        b"serf-agent.h.memberlist.health.score:2.000000|g\n")
    # Values are float32, as go-metrics passes them; ':' and ' ' in keys become '_'.
    assert statsd_line(("serf-agent", "serf", "events", "a:b c"), 0.1, "ms") == (
        b"serf-agent.serf.events.a_b_c:0.100000|ms\n")
    assert statsd_line(("k",), 16777217, "c") == b"k:16777216.000000|c\n"
    assert statsd_line(("k",), 1e39, "g") == b"k:+Inf|g\n"


def test_packets_hold_whole_lines_up_to_1400_bytes() -> None:
    lines = [b"x" * 99 + b"\n"] * 30  # 100 bytes each
    packets = pack_lines(lines)
    assert [len(p) for p in packets] == [1400, 1400, 200]
    assert b"".join(packets) == b"".join(lines)
    # A line that does not fit with the others goes in the next packet; a huge one alone.
    assert pack_lines([b"a" * 1000, b"b" * 500, b"c" * 2000, b"d"]) == [
        b"a" * 1000, b"b" * 500, b"c" * 2000, b"d"]


@pytest.fixture
def udp_listener() -> Iterator[socket.socket]:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    s.settimeout(5.0)
    yield s
    s.close()


def test_statsd_sends_after_the_flush_interval_in_packets(udp_listener: socket.socket) -> None:
    clock = FakeClock()
    counters: dict[str, int] = {}
    sink = StatsdSink(udp_listener.getsockname(), clock=clock, drops=DropLog(log, counters))
    m = Metrics("serf-agent", "h", sinks=[sink])

    async def go() -> None:
        for i in range(60):
            m.incr(("serf", "events", f"event{i:03d}"))
        assert clock.pending() == 1  # one flush timer, armed by the first line
        udp_listener.setblocking(False)
        with pytest.raises(BlockingIOError):
            udp_listener.recv(65536)  # nothing before the flush
        udp_listener.setblocking(True)
        await clock.advance(0.1)
        assert clock.pending() == 0  # idle again: nothing armed
    run(go)
    got = [udp_listener.recv(65536) for _ in range(sink.sent_packets)]
    assert sink.sent_packets == 2
    assert all(len(p) <= 1400 for p in got)
    assert b"".join(got).decode().splitlines() == [
        f"serf-agent.serf.events.event{i:03d}:1.000000|c" for i in range(60)]
    sink.close()


def test_statsd_queue_is_bounded_and_drops_counted(udp_listener: socket.socket) -> None:
    clock = FakeClock()
    counters: dict[str, int] = {}
    sink = StatsdSink(udp_listener.getsockname(), clock=clock, drops=DropLog(log, counters),
                      max_lines=10)
    for _ in range(25):
        sink.incr_counter(("k",), 1)
    sink.flush()
    assert counters == {"metrics_statsd_queue": 15}
    assert udp_listener.recv(65536) == b"k:1.000000|c\n" * 10
    sink.close()


# --------------------------------------------------------------------------- statsite


def test_statsite_streams_lines_and_reconnects_with_backoff(
        caplog: pytest.LogCaptureFixture) -> None:
    async def go() -> None:
        clock = FakeClock()
        counters: dict[str, int] = {}
        received = bytearray()
        conns: list[asyncio.StreamWriter] = []

        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            conns.append(writer)
            while data := await reader.read(65536):
                received.extend(data)

        server = await asyncio.start_server(serve, "127.0.0.1", 0)
        addr = server.sockets[0].getsockname()
        sink = StatsiteSink(addr, clock=clock, drops=DropLog(log, counters))
        sink.start()
        await until(lambda: sink.connected and conns)
        sink.incr_counter(("serf-agent", "serf", "member", "join"), 1)
        sink.add_sample(("serf-agent", "memberlist", "gossip"), 0.5)
        await clock.advance(0.1)
        await until(lambda: received.count(b"\n") == 2)
        assert bytes(received) == (b"serf-agent.serf.member.join:1.000000|c\n"
                                   b"serf-agent.memberlist.gossip:0.500000|ms\n")
        # statsite goes away: what comes meanwhile is dropped (counted), and the sink
        # dials again after 5 s, then 10 s, ... while it is refused.
        server.close()
        conns[0].close()
        await server.wait_closed()
        await until(lambda: not sink.connected)
        sink.incr_counter(("k",), 1)
        await clock.advance(0.1)
        assert counters["metrics_statsite_down"] == 1
        await clock.advance(5.0)  # the first retry: refused
        await until(lambda: counters.get("metrics_statsite_connect") == 1)
        await clock.advance(5.0)
        await until(lambda: counters.get("metrics_statsite_connect") == 2)
        # (the second refusal's line is rate-limited away: one per 10 s)
        assert [r.getMessage().rsplit("(", 1)[1] for r in caplog.records
                if "cannot connect" in r.getMessage()] == ["retrying in 5s)"]
        assert clock.next_deadline() == pytest.approx(clock.now() + 10.0, abs=0.2)
        # statsite is back on the same port: the next retry connects.
        server = await asyncio.start_server(serve, addr[0], addr[1])
        await clock.advance(10.0)
        await until(lambda: sink.connected and len(conns) == 2)
        assert sink.connects == 2
        sink.close()
        server.close()
        await server.wait_closed()
    run(go)


# --------------------------------------------------------------------------- Prometheus


def test_prometheus_names_are_flattened_as_go_metrics_does() -> None:
    assert prometheus_name(("serf-agent", "serf", "member", "join")) == (
        "serf_agent_serf_member_join")
    assert prometheus_name(("serf-agent", "serf", "events", "a=b/c d")) == (
        "serf_agent_serf_events_a_b_c_d")
    # Beyond go-metrics' set: anything Prometheus refuses becomes '_' too.
    assert prometheus_name(("serf-agent", "serf", "events", "dé+ploy")) == (
        "serf_agent_serf_events_d__ploy")
    assert prometheus_name(("9x",)) == "_9x"


def _families(text: bytes) -> dict[str, object]:
    return {f.name: f for f in text_string_to_metric_families(text.decode())}


def test_prometheus_exposition_parses_with_the_library_parser() -> None:
    clock = FakeClock()
    counters: dict[str, int] = {}
    sink = PrometheusSink(clock=clock, drops=DropLog(log, counters), hostname="host1")
    m = Metrics("serf-agent", "host1", sinks=[sink])
    m.incr(("serf", "member", "join"))
    m.incr(("serf", "member", "join"), 2)
    m.gauge(("memberlist", "health", "score"), 2)
    for v in range(1, 101):
        m.sample(("memberlist", "probeNode"), float(v))
    endpoint = PrometheusEndpoint(sink, clock=clock, drops=DropLog(log, counters))
    fams = _families(endpoint.render())
    join = fams["serf_agent_serf_member_join"]
    assert join.type == "counter"  # type: ignore[attr-defined]
    assert [(s.name, s.value) for s in join.samples] == [  # type: ignore[attr-defined]
        ("serf_agent_serf_member_join_total", 3.0)]
    # The host name is not part of gauge names here.
    score = fams["serf_agent_memberlist_health_score"]
    assert score.type == "gauge"  # type: ignore[attr-defined]
    assert [s.value for s in score.samples] == [2.0]  # type: ignore[attr-defined]
    probe = fams["serf_agent_memberlist_probeNode"]
    assert probe.type == "summary"  # type: ignore[attr-defined]
    values = {(s.name, s.labels.get("quantile")): s.value
              for s in probe.samples}  # type: ignore[attr-defined]
    assert values == {
        ("serf_agent_memberlist_probeNode", "0.5"): 50.0,
        ("serf_agent_memberlist_probeNode", "0.9"): 90.0,
        ("serf_agent_memberlist_probeNode", "0.99"): 99.0,
        ("serf_agent_memberlist_probeNode_sum", None): 5050.0,
        ("serf_agent_memberlist_probeNode_count", None): 100.0,
    }
    assert "process_resident_memory_bytes" in fams
    assert counters == {}


def test_prometheus_quantiles_cover_the_last_10_seconds() -> None:
    async def go() -> None:
        clock = FakeClock()
        sink = PrometheusSink(clock=clock, drops=DropLog(log, {}))
        sink.add_sample(("s",), 5.0)
        await clock.advance(10.5)
        fams = _families(PrometheusEndpoint(sink, clock=clock, drops=sink._drops).render())
        vals = {(s.name, s.labels.get("quantile")): s.value
                for s in fams["s"].samples}  # type: ignore[attr-defined]
        # Nothing in the last 10 s: NaN quantiles (as client_golang); the totals stay.
        assert [math.isnan(vals["s", q]) for q in ("0.5", "0.9", "0.99")] == [True] * 3
        assert (vals["s_sum", None], vals["s_count", None]) == (5.0, 1.0)
    run(go)


def test_prometheus_series_are_bounded_and_clashes_refused() -> None:
    clock = FakeClock()
    counters: dict[str, int] = {}
    sink = PrometheusSink(clock=clock, drops=DropLog(log, counters), max_series=3)
    sink.incr_counter(("a", "b"), 1)
    sink.set_gauge(("a.b",), 1)  # the same flat name as a gauge: refused
    sink.incr_counter(("a_b",), 1)  # the same name and kind: the same series
    sink.set_gauge(("g",), 1)
    sink.add_sample(("s",), 1)
    sink.add_sample(("t",), 1)  # a fourth name
    assert sink.counters == {"a_b": 2.0}
    assert set(sink.kinds) == {"a_b", "g", "s"}
    assert counters == {"metrics_prometheus_clash": 1, "metrics_prometheus_series": 1}
    _families(PrometheusEndpoint(sink, clock=clock, drops=sink._drops).render())


def test_prometheus_endpoint_serves_get_metrics_over_http() -> None:
    async def go() -> None:
        clock = FakeClock()
        sink = PrometheusSink(clock=clock, drops=DropLog(log, {}))
        scraped: list[int] = []

        def before() -> None:
            scraped.append(1)
            sink.set_gauge(("serf-agent", "serfd", "members", "alive"), len(scraped))

        endpoint = PrometheusEndpoint(sink, clock=clock, drops=sink._drops, before_scrape=before)
        host, port = await endpoint.start("127.0.0.1", 0)

        async def get(path: str) -> tuple[bytes, bytes]:
            reader, writer = await asyncio.open_connection(host, port)
            writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            data = await reader.read()
            writer.close()
            head, _, body = data.partition(b"\r\n\r\n")
            return head, body

        head, body = await get("/metrics")
        assert head.startswith(b"HTTP/1.1 200 OK\r\n")
        assert b"Content-Type: text/plain; version=0.0.4" in head
        fams = _families(body)
        alive = fams["serf_agent_serfd_members_alive"]
        assert [s.value for s in alive.samples] == [1.0]  # type: ignore[attr-defined]
        head, _ = await get("/other")
        assert head.startswith(b"HTTP/1.1 404")
        assert endpoint.scrapes == 1
        await endpoint.close()
    run(go)


# --------------------------------------------------------------------------- the set


def test_host_name_on_gauges_only_with_statsd_or_statsite_as_serf(
        udp_listener: socket.socket) -> None:
    statsd = udp_listener.getsockname()
    for cfg, addr, expect in [
        (Config(), None, False),  # the in-memory sink alone: go-metrics leaves it off
        (Config(statsd_addr=statsd), statsd, True),
        (Config(statsd_addr=statsd, telemetry_disable_hostname=True), statsd, False),
    ]:
        t = Telemetry(Metrics("serf-agent", "host1"), clock=FakeClock(), counters={})
        t.start_sinks(cfg, statsd=addr)
        assert t.metrics.enable_hostname is expect
        assert t.describe() == ("inmem" if addr is None else f"inmem, statsd {statsd[0]}:"
                                f"{statsd[1]}")
        if t.statsd is not None:
            t.statsd.close()


def test_prometheus_client_is_imported_only_for_the_endpoint() -> None:
    import subprocess
    import sys

    code = ("import sys; from serfd.agent.agent import Agent; "
            "print('prometheus_client' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=60)
    assert out.stdout.strip() == "False"


# --------------------------------------------------------------------------- config


def test_telemetry_keys_load(tmp_path: Path) -> None:
    (tmp_path / "a.toml").write_text(
        'statsd_addr = "127.0.0.1:8125"\nstatsite_addr = "stats.example:8125"\n'
        '[telemetry]\nprometheus_bind = "127.0.0.1:9946"\ndisable_hostname = true\n')
    cfg = load_config(tmp_path)
    assert cfg.statsd_addr == ("127.0.0.1", 8125)
    assert cfg.statsite_addr == ("stats.example", 8125)
    assert cfg.telemetry_prometheus_bind == ("127.0.0.1", 9946)
    assert cfg.telemetry_disable_hostname is True
    (tmp_path / "a.toml").write_text('statsd_addr = ""\n')  # Serf's "": off
    assert load_config(tmp_path) == Config()


def test_telemetry_keys_render_and_load_back(tmp_path: Path) -> None:
    cfg = Config(statsd_addr=("stats.example", 8125), statsite_addr=("::1", 8126),
                 telemetry_prometheus_bind=("127.0.0.1", 9946), telemetry_disable_hostname=True)
    text = config_to_toml(cfg)
    assert 'statsite_addr = "[::1]:8126"' in text
    assert '[telemetry]\nprometheus_bind = "127.0.0.1:9946"\ndisable_hostname = true\n' in text
    (tmp_path / "check.toml").write_text(text)
    assert load_config(tmp_path) == cfg


@pytest.mark.parametrize(("line", "error"), [
    ('statsd_addr = "127.0.0.1"', ('statsd_addr: "127.0.0.1": missing port '
     '(expected "host:port")')),
    ('statsite_addr = "0.0.0.0:8125"', ('statsite_addr: "0.0.0.0:8125": cannot advertise '
     "the unspecified address 0.0.0.0")),
    ("statsd_addr = 8125", "statsd_addr: expected a string, got integer"),
    ('statsd_addr = "bad host:1"', ('statsd_addr: "bad host:1": "bad host" is neither an '
     "IP address nor a host name")),
    ('[telemetry]\nprometheus_bind = "localhost:9946"', ('telemetry.prometheus_bind: '
     '"localhost:9946": "localhost" is not an IP address literal (host names are not '
     "allowed here)")),
    ('[telemetry]\nprometheus_bind = "127.0.0.1:0"', ('telemetry.prometheus_bind: '
     '"127.0.0.1:0": port 0 is out of range 1..65535')),
    ('[telemetry]\ndisable_hostname = "yes"', ("telemetry.disable_hostname: expected a "
     "boolean (true or false), got string")),
    ('[telemetry]\nprometheus_port = 9946', ('telemetry.prometheus_port: unknown key '
     '(did you mean "telemetry.prometheus_bind"?)')),
])
def test_telemetry_key_errors(tmp_path: Path, line: str, error: str) -> None:
    path = tmp_path / "50-x.toml"
    path.write_text(line + "\n")
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path)
    assert info.value.errors == [f"{path}: {error}"]


# --------------------------------------------------------------------------- info


def test_event_handlers_stats_have_serfs_shape() -> None:
    handlers = parse_handlers({
        "member-join,member-leave": "lb-update",
        "user:deploy": ["/usr/bin/deploy", "--now", "a b"],
        "*": "log-all",
        "query:uptime": "uptime",
    })
    # Serf's Agent.Stats: "event:name" -> script, one entry per filter.
    assert handler_stats(handlers) == {
        "member-join:": "lb-update",
        "member-leave:": "lb-update",
        "user:deploy": "/usr/bin/deploy --now 'a b'",
        "*:": "log-all",
        "query:uptime": "uptime",
    }
