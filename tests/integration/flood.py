"""Flood a cluster through a serf agent's RPC and watch the receiver (issue 8).

Shared by ``test_floods.py`` and ``bench/flood_bench.py``.

* ``Flooder`` pipelines ``event`` and ``query`` commands on one RPC connection to the
  sending agent, as fast as that agent takes them, while a thread reads (and throws
  away) everything the agent writes back: the replies, and the ack/response records
  of the queries, which stay open for their whole timeout.
* ``Watcher`` measures the receiver from outside while it is flooded: one thread
  round-trips a cheap RPC command (``members``) on its own connection every
  ``interval`` and records the latency (a call that gets no answer counts as its
  elapsed time, so a stalled loop shows up as large latencies, never as missing
  samples); another samples RSS and CPU time from /proc.
* ``StuckStreamClient`` subscribes to ``stream`` (and ``monitor``) with a small receive
  buffer and then never reads.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import socket
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import msgpack

from tests.integration.harness import RPCClient, parse_addr, proc_cpu_seconds, proc_rss_kib
from tests.support import WaitTimeout, wait_until

HOUR_NS = 3600 * 10**9


def _pack(obj: object) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)  # type: ignore[no-any-return]


def nearest_rank(xs: Sequence[float], q: float) -> float:
    """The q-quantile by nearest rank (nan for no samples)."""
    if not xs:
        return math.nan
    s = sorted(xs)
    return s[max(0, math.ceil(q * len(s)) - 1)]


# --------------------------------------------------------------------------- sending


@dataclasses.dataclass(slots=True)
class FloodResult:
    sent: int = 0  # commands written
    replied: int = 0  # commands answered with an empty Error
    errors: list[str] = dataclasses.field(default_factory=list)
    records: int = 0  # query records (ack/response/done) read back
    acks: dict[str, int] = dataclasses.field(default_factory=dict)  # node -> acks
    responses: dict[str, int] = dataclasses.field(default_factory=dict)  # node -> responses
    send_seconds: float = 0.0  # first write to last write
    accept_seconds: float = math.inf  # first write to last reply


class Flooder:
    """Pipelines ``events`` user events and ``queries`` queries on one RPC connection.

    Queries are spread evenly among the events. Every query asks with ``Timeout``
    ``query_timeout_ns`` and ``RelayFactor`` ``relay_factor``; the records they open are
    read and discarded by a thread until ``close()``.
    """

    def __init__(self, rpc_addr: str, events: int, queries: int,
                 query_timeout_ns: int = 1000 * HOUR_NS, relay_factor: int = 0,
                 event_name: str = "flood", query_name: str = "flood",
                 payload: bytes = b"x" * 16) -> None:
        self.client = RPCClient(rpc_addr, timeout=10.0)
        self.events = events
        self.queries = queries
        self.query_timeout_ns = query_timeout_ns
        self.relay_factor = relay_factor
        self.event_name = event_name
        self.query_name = query_name
        self.payload = payload
        self.result = FloodResult()
        self._replied: set[int] = set()
        self._all_replied = threading.Event()
        self._cond = threading.Condition()
        self._t0 = 0.0
        self._stop = False
        self._reader = threading.Thread(target=self._drain, name="flood-drain", daemon=True)

    def _commands(self) -> list[tuple[str, dict[str, Any]]]:
        n = self.events + self.queries
        # Query k goes at index (k + 0.5) * n / queries: spread evenly among the events.
        kinds = ["event"] * n
        for k in range(self.queries):
            kinds[int((k + 0.5) * n / self.queries)] = "query"
        out = []
        for kind in kinds:
            if kind == "event":
                body: dict[str, Any] = {"Name": self.event_name, "Payload": self.payload,
                                        "Coalesce": False}
            else:
                body = {"FilterNodes": [], "FilterTags": {}, "RequestAck": True,
                        "RelayFactor": self.relay_factor, "Timeout": self.query_timeout_ns,
                        "Name": self.query_name, "Payload": self.payload}
            out.append((kind, body))
        return out

    def _drain(self) -> None:
        unpacker = msgpack.Unpacker(raw=False, strict_map_key=False)
        sock = self.client.sock
        sock.settimeout(0.2)
        expect_body = False  # a query record header was read: its body is next
        while not self._stop:
            try:
                data = sock.recv(1 << 16)
            except TimeoutError:
                continue
            except OSError:
                return
            if not data:
                return
            unpacker.feed(data)
            for obj in unpacker:
                if expect_body:
                    expect_body = False
                    self._record(obj)
                    continue
                if not (isinstance(obj, dict) and "Seq" in obj and "Error" in obj):
                    continue
                seq = obj["Seq"]
                if seq in self._replied:  # a record header of an open query
                    expect_body = True
                    continue
                self._replied.add(seq)
                if obj["Error"]:
                    self.result.errors.append(f"seq {seq}: {obj['Error']}")
                else:
                    self.result.replied += 1
                if len(self._replied) == self.events + self.queries:
                    self.result.accept_seconds = time.monotonic() - self._t0
                    self._all_replied.set()

    def _record(self, rec: Any) -> None:
        with self._cond:
            self.result.records += 1
            if isinstance(rec, dict) and rec.get("Type") in ("ack", "response"):
                per = self.result.acks if rec["Type"] == "ack" else self.result.responses
                node = str(rec.get("From"))
                per[node] = per.get(node, 0) + 1
            self._cond.notify_all()

    def wait_acks(self, node: str, n: int, timeout: float) -> bool:
        """Wait until ``node`` acked ``n`` of the queries (they reached it)."""
        with self._cond:
            return self._cond.wait_for(lambda: self.result.acks.get(node, 0) >= n, timeout)

    def run(self, accept_timeout: float = 20.0) -> FloodResult:
        """Send everything, then wait until every command was answered."""
        cmds = self._commands()
        self._t0 = time.monotonic()
        self._reader.start()
        self.client.client.set_timeout(accept_timeout)
        for kind, body in cmds:
            self.client.client.send_request(kind, body)  # pipelined: _drain reads the answers
            self.result.sent += 1
        self.result.send_seconds = time.monotonic() - self._t0
        self._all_replied.wait(accept_timeout)
        return self.result

    def close(self) -> None:
        self._stop = True
        self.client.close()
        if self._reader.is_alive():
            self._reader.join(2.0)


# --------------------------------------------------------------------------- watching


@dataclasses.dataclass(slots=True)
class Sample:
    t: float  # monotonic
    rss_kib: int
    cpu_s: float


class Watcher:
    """RPC round-trip latency and /proc samples of one agent, in background threads."""

    def __init__(self, rpc_addr: str, pid: int, interval: float = 0.05,
                 call_timeout: float = 5.0, command: str = "members") -> None:
        self.rpc_addr = rpc_addr
        self.pid = pid
        self.interval = interval
        self.call_timeout = call_timeout
        self.command = command
        self.latencies: list[tuple[float, float]] = []  # (start, seconds)
        self.failures: list[str] = []
        self.samples: list[Sample] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._poll_rpc, daemon=True, name="rpc-poll"),
                         threading.Thread(target=self._poll_proc, daemon=True, name="proc-poll")]

    def start(self) -> Watcher:
        self.sample()  # one sample now, so "before" exists at once
        for t in self._threads:
            t.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(self.call_timeout + 2.0)

    def sample(self) -> Sample:
        s = Sample(time.monotonic(), proc_rss_kib(self.pid), proc_cpu_seconds(self.pid))
        with self._lock:
            self.samples.append(s)
        return s

    def _poll_proc(self) -> None:
        while not self._stop.wait(self.interval):
            with contextlib.suppress(OSError, RuntimeError):
                self.sample()

    def _poll_rpc(self) -> None:
        client: RPCClient | None = None
        while not self._stop.is_set():
            start = time.monotonic()
            try:
                if client is None:
                    client = RPCClient(self.rpc_addr, timeout=self.call_timeout)
                client.call(self.command, None, timeout=self.call_timeout)
            except Exception as exc:  # noqa: BLE001 - a failed call is a latency sample too
                self.failures.append(repr(exc))
                if client is not None:
                    client.close()
                client = None
            took = time.monotonic() - start
            with self._lock:
                self.latencies.append((start, took))
            self._stop.wait(max(0.0, self.interval - took))
        if client is not None:
            client.close()

    # -- views

    def latency_values(self, since: float = -math.inf) -> list[float]:
        with self._lock:
            return [d for t, d in self.latencies if t >= since]

    def rss_peak_kib(self, since: float = -math.inf) -> int:
        with self._lock:
            return max(s.rss_kib for s in self.samples if s.t >= since)

    def idle_since(self, since: float, window: float, max_cpu_fraction: float) -> float | None:
        """End time of the first ``window`` seconds after ``since`` in which the process
        used under ``max_cpu_fraction`` of one core; None if there was none yet."""
        with self._lock:
            samples = [s for s in self.samples if s.t >= since]
        j = 0
        for i, s in enumerate(samples):
            while j + 1 < i and s.t - samples[j + 1].t >= window:
                j += 1
            first = samples[j]
            span = s.t - first.t
            if span >= window and s.cpu_s - first.cpu_s < max_cpu_fraction * span:
                return s.t
        return None


def wait_idle(watcher: Watcher, since: float, deadline: float, window: float = 2.0,
              max_cpu_fraction: float = 0.05) -> float | None:
    """Wait until the watched process was idle (see ``Watcher.idle_since``) after
    ``since``; the end time of that idle window, or None if none ended by ``deadline``."""
    ends: list[float] = []

    def idle() -> bool:
        end = watcher.idle_since(since, window, max_cpu_fraction)
        if end is not None and end <= deadline:
            ends.append(end)
        return bool(ends)

    try:
        wait_until(idle, max(0.0, deadline - time.monotonic()), 0.1, retry_on=())
    except WaitTimeout:
        return None
    return ends[0]


# --------------------------------------------------------------------------- stuck client


class StuckStreamClient:
    """An RPC client that subscribes ``streams`` times to ``stream`` (type ``*``; Serf
    allows any number of streams on one connection, one per Seq) and to ``monitor``, and
    then never reads; its receive buffer is made small so the agent's writes back up at
    once. Every event is then written ``streams`` times to this one connection."""

    def __init__(self, rpc_addr: str, rcvbuf: int = 4096, monitor_level: str | None = "debug",
                 stream_type: str = "*", streams: int = 1) -> None:
        family, sockaddr = parse_addr(rpc_addr)
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.settimeout(5.0)
        self.sock.connect(sockaddr)
        self._unpacker = msgpack.Unpacker(raw=False, strict_map_key=False)
        reqs: list[tuple[str, dict[str, Any]]] = [("handshake", {"Version": 1})]
        reqs += [("stream", {"Type": stream_type})] * streams
        if monitor_level is not None:
            reqs.append(("monitor", {"LogLevel": monitor_level}))
        for seq, (command, body) in enumerate(reqs):
            self.sock.sendall(_pack({"Command": command, "Seq": seq}) + _pack(body))
            header = self._next()
            if header.get("Seq") != seq or header.get("Error"):
                raise RuntimeError(f"{command}: {header!r}")
        # From here on nobody reads this socket until close().

    def _next(self) -> Any:
        while True:
            with contextlib.suppress(StopIteration):
                return next(self._unpacker)
            data = self.sock.recv(4096)
            if not data:
                raise ConnectionError("closed during subscribe")
            self._unpacker.feed(data)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()


def child_pids(pid: int) -> list[int]:
    """PIDs whose parent is ``pid`` (e.g. the handler processes an agent is running)."""
    out = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            stat = Path(f"/proc/{d}/stat").read_text()
        except OSError:
            continue
        if int(stat[stat.rindex(")") + 2 :].split()[1]) == pid:
            out.append(int(d))
    return out


def dropped_counters(stats: dict[str, dict[str, str]]) -> dict[str, int]:
    """Every ``dropped_*`` entry of any section of an RPC ``stats`` answer."""
    out: dict[str, int] = {}
    for section in stats.values():
        if isinstance(section, dict):
            for k, v in section.items():
                if k.startswith("dropped_"):
                    with contextlib.suppress(ValueError):
                        out[k] = out.get(k, 0) + int(v)
    return out
