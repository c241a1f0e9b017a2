#!/usr/bin/env python3
"""Event and query benchmark: real HashiCorp `serf` vs `serfd` on loopback.

For each N and implementation, every rep starts N agents on a fresh 127.A.B.0/24 with
a handler for the user event ``benchlat`` that appends "NODE KEY WALLCLOCK" to a log and
a handler for the query ``benchq`` that answers "NODE:PAYLOAD" (``Handlers``), star-joins
them and waits until all are alive. Then, from node0 over RPC:

* user events (name ``benchlat``, the key as payload, coalesce=false): latency from just
  before the RPC call to each node's handler; per event p50 and p99 (nearest rank)
  across the N nodes, then the median over events;
* queries with RequestAck to all N: time until all N responses arrived ("query RTT"),
  and until the ``done`` record (serfd ends early once all answered; Serf waits for
  its deadline).

What an event latency includes: the RPC to node0, gossip dissemination, the agent's
event dispatch, and starting the handler (fork and exec of ``/bin/sh -c SCRIPT``, the
script's own ``/bin/sh``, then ``exec date``: no further fork). On an idle machine
starting the handler costs a few ms; with N handlers for one event on few cores they
queue for CPU, and that queueing is in the figure too (both implementations start
one shell per node per event). A query's time includes the same handler start on
each responder.

Stimuli are separated by random 0.25-0.65 s pauses (anti phase-lock, SERF-BASELINE.md).
``bench.cluster_bench`` takes the same measurement (``Handlers``, ``time_events``,
``time_queries``) with its other figures.

    python -m bench.events_bench --n 3 10 20 [--impl serf serfd] [--reps R] [--events E]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import random
import socket
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import msgpack

from tests.integration.harness import AddressAllocator, Agent, Cluster, RPCClient

IMPLS = ("serf", "serfd")
EVENT = "benchlat"  # the one user event name the handler runs for; the key is the payload
QUERY = "benchq"
EVENT_TIMEOUT = 20.0  # a node whose handler has not run by then counts as +inf

# Both handlers fork nothing beyond the shell the agent starts: `read` and `printf` are
# builtins and the event handler execs `date` in place. One short line per run goes to a
# log shared by the cluster (O_APPEND, one write), so the bench reads one file.
EVENT_SH = """#!/bin/sh
read -r k
exec date "+$SERF_SELF_NAME $k %s.%N" >> {log}
"""
QUERY_SH = """#!/bin/sh
read -r p
printf '%s:%s' "$SERF_SELF_NAME" "$p"
"""


def _script(path: Path, text: str) -> str:
    path.write_text(text)
    path.chmod(0o755)
    return str(path)


def nearest_rank(xs: Sequence[float], q: float) -> float:
    s = sorted(xs)
    return s[max(0, math.ceil(q * len(s)) - 1)]


@dataclass(frozen=True)
class Handlers:
    """The timing handlers of one rep: scripts and the event log, under one directory.

    Only the user event named ``EVENT`` and the query named ``QUERY`` run them, so other
    user events (cluster_bench's traffic burst) fork nothing. Both implementations run a
    handler string as ``/bin/sh -c STRING``.
    """

    log: Path
    event_sh: str
    query_sh: str

    @classmethod
    def write(cls, tmp: Path) -> Handlers:
        log = tmp / "events.log"
        ev = _script(tmp / "event.sh", EVENT_SH.format(log=json.dumps(str(log))))
        return cls(log, ev, _script(tmp / "query.sh", QUERY_SH))

    def add_agent(self, cl: Cluster, impl: str, name: str,
                  tags: dict[str, str] | None = None, serf_args: Sequence[str] = ()) -> Agent:
        """Start one agent of ``impl`` in ``cl`` with these handlers (serfd logs at info)."""
        if impl == "serf":
            return cl.serf(name, tags=tags, extra_args=[
                *serf_args, "-event-handler", f"user:{EVENT}={self.event_sh}",
                "-event-handler", f"query:{QUERY}={self.query_sh}"])
        # A JSON string is a valid TOML basic string.
        return cl.serfd(name, tags=tags, log_level="info", extra_toml=(
            f"[handlers]\n{json.dumps(f'user:{EVENT}')} = {json.dumps(self.event_sh)}\n"
            f"{json.dumps(f'query:{QUERY}')} = {json.dumps(self.query_sh)}\n"))


class EventLog:
    """Reads the lines the event handlers appended since the last read."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0
        self.partial = b""

    def new_lines(self) -> list[tuple[str, str, float]]:
        """(node, key, wall-clock seconds) of each complete new line."""
        try:
            with self.path.open("rb") as f:
                f.seek(self.offset)
                data = f.read()
        except FileNotFoundError:
            return []
        self.offset += len(data)
        *lines, self.partial = (self.partial + data).split(b"\n")
        out = []
        for line in lines:
            parts = line.decode(errors="replace").split()
            if len(parts) == 3:
                out.append((parts[0], parts[1], float(parts[2])))
        return out


class StreamTaps:
    """One RPC ``stream`` subscription (``user:benchlat``) on every agent: when each agent
    handed each event to its RPC stream clients, on the bench's wall clock at receipt.

    This is delivery as the agent sees it, without the handler: at N = 100 on 2 cores the
    N shells one event starts queue for the CPU (a few ms each, in both implementations),
    and that queue, not the gossip, sets most of the handler figure. One thread per agent
    blocks on its socket; ``close()`` ends them.
    """

    def __init__(self, agents: Sequence[Agent]) -> None:
        self.seen: dict[str, dict[str, float]] = {}  # event key -> node -> seconds
        self._lock = threading.Lock()
        self._socks: list[socket.socket] = []
        self._threads: list[threading.Thread] = []
        for a in agents:
            host, port = a.rpc_target.rsplit(":", 1)
            sock = socket.create_connection((host, int(port)), timeout=10)
            sock.sendall(msgpack.packb({"Command": "handshake", "Seq": 0})
                         + msgpack.packb({"Version": 1}))
            sock.sendall(msgpack.packb({"Command": "stream", "Seq": 1})
                         + msgpack.packb({"Type": f"user:{EVENT}"}))
            sock.settimeout(None)
            self._socks.append(sock)
            t = threading.Thread(target=self._read, args=(a.name, sock), daemon=True)
            t.start()
            self._threads.append(t)

    def _read(self, node: str, sock: socket.socket) -> None:
        unpacker = msgpack.Unpacker(raw=True)
        while True:
            try:
                data = sock.recv(65536)
            except OSError:
                return
            if not data:
                return
            now = time.time()
            unpacker.feed(data)
            for obj in unpacker:
                if isinstance(obj, dict) and obj.get(b"Event") == b"user":
                    payload = obj.get(b"Payload") or b""
                    key = payload.decode() if isinstance(payload, bytes) else str(payload)
                    with self._lock:
                        self.seen.setdefault(key, {}).setdefault(node, now)

    def times(self, key: str) -> dict[str, float]:
        with self._lock:
            return dict(self.seen.get(key, {}))

    def close(self) -> None:
        for sock in self._socks:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()
        for t in self._threads:
            t.join(5)


@dataclass
class EventTimes:
    """Per event, p50 and p99 across nodes (ms): to the handler, and to the RPC stream."""

    p50: list[float]
    p99: list[float]
    stream_p50: list[float]
    stream_p99: list[float]


def time_events(client: RPCClient, nodes: Sequence[str], log: Path, count: int,
                rng: random.Random, taps: StreamTaps | None = None) -> EventTimes:
    """Send ``count`` user events from ``client``'s agent; per event p50 and p99 in ms.

    Latency runs from the bench's wall clock just before the RPC ``event`` call to each
    node's handler running ``date`` and, with ``taps``, to each agent's RPC stream
    delivering it; p50/p99 are nearest rank across ``nodes``. The next event waits for
    all nodes (or EVENT_TIMEOUT) and a random 0.25-0.65 s pause.
    """
    reader = EventLog(log)
    out = EventTimes([], [], [], [])
    for k in range(count):
        time.sleep(rng.uniform(0.25, 0.65))
        key = f"e{k}"
        t0 = time.time()
        client.event(EVENT, key.encode(), False)
        got: dict[str, float] = {}
        streamed: dict[str, float] = {}
        deadline = time.monotonic() + EVENT_TIMEOUT
        while time.monotonic() < deadline:
            if taps is not None:
                streamed = taps.times(key)
            if got.keys() >= set(nodes) and (taps is None or streamed.keys() >= set(nodes)):
                break
            time.sleep(0.02)
            for node, kk, ts in reader.new_lines():
                if kk == key:
                    got.setdefault(node, ts)
        lat = [(got[nd] - t0) * 1000 if nd in got else math.inf for nd in nodes]
        out.p50.append(nearest_rank(lat, 0.5))
        out.p99.append(nearest_rank(lat, 0.99))
        if taps is not None:
            lat = [(streamed[nd] - t0) * 1000 if nd in streamed else math.inf for nd in nodes]
            out.stream_p50.append(nearest_rank(lat, 0.5))
            out.stream_p99.append(nearest_rank(lat, 0.99))
    return out


def time_queries(client: RPCClient, n: int, count: int,
                 rng: random.Random) -> tuple[list[float], list[float]]:
    """Send ``count`` queries (RequestAck, default timeout) from ``client``'s agent; per
    query ms until all ``n`` responses arrived (+inf if some never did) and until the
    ``done`` record. Each follows a random 0.25-0.65 s pause."""
    all_n: list[float] = []
    done: list[float] = []
    client.client.set_timeout(30)
    for _ in range(count):
        time.sleep(rng.uniform(0.25, 0.65))
        t0 = time.monotonic()
        responders: set[str] = set()
        all_at = math.inf
        client.client.open_stream("query", {
            "FilterNodes": [], "FilterTags": {}, "RequestAck": True, "RelayFactor": 0,
            "Timeout": 0, "Name": QUERY, "Payload": b"ping"})
        while True:
            _, rec = client.client.read_record()
            if rec.get("Type") == "response":
                responders.add(rec.get("From"))
                if len(responders) == n and math.isinf(all_at):
                    all_at = (time.monotonic() - t0) * 1000
            elif rec.get("Type") == "done":
                break
        all_n.append(all_at)
        done.append((time.monotonic() - t0) * 1000)
    return all_n, done


def run_rep(impl: str, n: int, alloc: AddressAllocator, args: argparse.Namespace,
            rng: random.Random) -> dict[str, list[float]]:
    tmp = Path(tempfile.mkdtemp(prefix=f"evbench-{impl}-n{n}-"))
    h = Handlers.write(tmp)
    res: dict[str, list[float]] = {}
    with Cluster(alloc, tmp) as cl:
        for i in range(n):
            h.add_agent(cl, impl, f"node{i}", serf_args=["-log-level=info"])
        cl.wait_ready(30)
        seed = cl.agents[0]
        for a in cl.agents[1:]:
            a.join([seed.bind_addr])
        cl.wait_all_alive(timeout=60)
        time.sleep(1.0)
        with RPCClient(seed.rpc_target, timeout=30.0) as c:
            times = time_events(c, [a.name for a in cl.agents], h.log, args.events, rng)
            res["p50"], res["p99"] = times.p50, times.p99
            res["query_all"], res["query_done"] = time_queries(c, n, args.queries, rng)
    return res


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, nargs="+", default=[3, 10, 20])
    ap.add_argument("--impl", nargs="+", choices=IMPLS, default=list(IMPLS))
    ap.add_argument("--reps", type=int, default=1)
    ap.add_argument("--events", type=int, default=8)
    ap.add_argument("--queries", type=int, default=3)
    ap.add_argument("--seed", type=int, default=None)
    args = ap.parse_args(argv)
    rng = random.Random(args.seed)
    alloc = AddressAllocator()
    table: dict[tuple[str, int], dict[str, list[float]]] = {}
    try:
        for n in args.n:
            for impl in args.impl:
                agg: dict[str, list[float]] = {}
                for _ in range(args.reps):
                    for k, v in run_rep(impl, n, alloc, args, rng).items():
                        agg.setdefault(k, []).extend(v)
                table[(impl, n)] = agg
                print(f"done {impl} N={n}", file=sys.stderr, flush=True)
    finally:
        alloc.release_all()
    med = statistics.median
    print("| N | impl | event p50 (ms) | event p99 (ms) | query all-N responses (ms) "
          "| query done (ms) |")
    print("|---|---|---|---|---|---|")
    for n in args.n:
        for impl in args.impl:
            r = table[(impl, n)]
            print(f"| {n} | {impl} | {med(r['p50']):.0f} | {med(r['p99']):.0f} "
                  f"| {med(r['query_all']):.0f} | {med(r['query_done']):.0f} |")
        if set(args.impl) == set(IMPLS):
            a, b = table[("serfd", n)], table[("serf", n)]
            ratios = [med(a[k]) / med(b[k]) if med(b[k]) else math.nan
                      for k in ("p50", "p99", "query_all", "query_done")]
            print(f"| {n} | serfd/serf | {ratios[0]:.2f}x | {ratios[1]:.2f}x "
                  f"| {ratios[2]:.2f}x | {ratios[3]:.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
