"""Calibrate the simulator's CPU cost model (serfd.testing.cpu), check it against real
agents, and print what the model says of a star join.

Prints a ``CostTable`` for the C LZW and for the pure-Python one (the module docstring
of serfd.testing.cpu says what each constant covers), built in steps:

1. **LZW**: a simulated star join (N = ``--n``, the agent's gossip settings, compression
   on) supplies the plain content of every datagram it carried; a sample (their sizes
   as the burst has them: most are full gossip packets) is compressed and decompressed
   with ``lzw.compress_py`` / ``decompress_py`` and ``compress_c`` / ``decompress_c``
   (best of 5 per item), and ``fixed + per_byte x size`` is fitted by least squares.
2. **The core's handling**: the same burst runs ``--repeats`` times with the C LZW on a
   machine with a core per node (no waiting, so every run makes the same calls); every
   job's core calls are timed with ``perf_counter`` and each job keeps its fastest time
   (the other processes on the machine only add). The C LZW's share is taken out, and
   the table's linear form (fixed per kind; messages and plain bytes in; members in
   delivered events; datagrams, bytes and streams out) is fitted by non-negative least
   squares.
3. **The event loop**: an asyncio datagram endpoint's receive, ``transport.sendto`` and a
   re-armed ``call_at`` timer on loopback, per datagram/timer (best of 5 batches),
   added to the per-datagram, per-send and per-timer constants.
4. ``--agent``: ONE real serfd agent (compression on, C LZW) is fed crafted inputs from a
   socket of this process: pings, compounds of 16 stale alives (plain, then compressed),
   alives of new members, and push/pulls over TCP. Its CPU time (``/proc/PID/stat``,
   minus its idle rate) per input is set against the table's prediction for the same
   input (the same packets through an in-process Serf). What it spends beyond the
   prediction per ping goes into ``datagram_fixed``, per new member (the event's
   dispatch: the snapshot record, the events service, the log line) into
   ``per_event``, per push/pull (if anything) into ``serve_fixed`` (and half of it each
   into the requester's ``per_stream_out`` and ``outcome_fixed``). Then the same with
   the Python LZW, against the completed table: a check.
5. ``--cluster N [N ...]`` (each < 50): N real agents, nodes 1..N-1 join node0 at once,
   with either LZW. The agents' CPU over ``--window`` seconds from the release, minus
   their idle rate, against the model's for the same join: the ratio of the sums is
   ``contention``. Their idle rate beyond the model's gives ``AGENT_TICK``; 300
   ``members`` RPCs on one agent give ``POLL_AGENT`` / ``POLL_CLIENT`` (fitted over
   the sizes).

``--figures N [N ...]`` then runs the model's star join (``serf_sim.cpu_star_join``: the
agent's settings, its tickers, bench.cluster_bench's poller) with serfd.testing.cpu's
tables as committed, both LZWs, ``--seeds``: convergence, what the poller saw, CPU.

Run: ``PYTHONPATH=$PWD .venv/bin/python -m bench.cpu_calibrate [--agent] [--cluster 30 40
40] [--figures 50 100] [--no-calibration]``. Steps 1-3 take about 20 s, ``--agent`` about
2 minutes, ``--cluster`` half a minute per size and LZW; ``--figures 100`` 10 s.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import math
import os
import random
import socket
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from serfd.core.serf import Serf, SerfConfig
from serfd.memberlist.swim import MemberlistConfig
from serfd.testing.cpu import (
    AGENT_TICK_PERIOD,
    C_LZW,
    PROFILES,
    CostTable,
    Linear,
    Machine,
    Work,
    packet_shape,
)
from serfd.testing.serf_sim import SerfSim, cpu_star_join
from serfd.wire import lzw
from serfd.wire.framing import StreamReader, encode_stream
from serfd.wire.messages import Ack, Alive, MsgType, Ping, decode_message, ip_to_bytes
from serfd.wire.packet import CRC_OVERHEAD, decode_packet, decompress_message, encode_packet
from serfd.wire.serf_messages import encode_tags

# The agent's gossip settings (serfd/agent/agent.py) that change what is sent.
AGENT_CONFIG: dict[str, Any] = {"enable_compression": True, "eager_gossip": True,
                                "confirm_suspicions": True}
FIELDS = ("timer_fixed", "datagram_fixed", "serve_fixed", "outcome_fixed", "per_message",
          "per_byte", "stream_per_byte", "per_event", "per_datagram_out", "per_byte_out",
          "per_stream_out")


# ---------------------------------------------------------------- least squares

def nnls(rows: Sequence[Sequence[float]], y: Sequence[float]) -> list[float]:
    """Least squares with every coefficient >= 0 (a negative one is fixed at 0 and the
    rest refitted): normal equations, Gaussian elimination."""
    k = len(rows[0])
    active = [True] * k
    while True:
        idx = [j for j in range(k) if active[j]]
        a = [[sum(r[i] * r[j] for r in rows) for j in idx] for i in idx]
        b = [sum(r[i] * t for r, t in zip(rows, y, strict=True)) for i in idx]
        coef = _solve(a, b)
        full = [0.0] * k
        for j, c in zip(idx, coef, strict=True):
            full[j] = c
        worst = min(idx, key=lambda j: full[j])
        if full[worst] >= 0:
            return full
        active[worst] = False


def _solve(a: list[list[float]], b: list[float]) -> list[float]:
    n = len(b)
    m = [[*row, rhs] for row, rhs in zip(a, b, strict=True)]
    for col in range(n):
        piv = max(range(col, n), key=lambda r: abs(m[r][col]))
        if abs(m[piv][col]) < 1e-300:
            m[piv][col] = 1e-300  # a feature that never occurs: its coefficient is 0
        m[col], m[piv] = m[piv], m[col]
        for r in range(n):
            if r != col and m[r][col]:
                f = m[r][col] / m[col][col]
                m[r] = [x - f * z for x, z in zip(m[r], m[col], strict=True)]
    return [m[i][n] / m[i][i] for i in range(n)]


def fit_linear(samples: list[tuple[int, float]]) -> Linear:
    fixed, per_byte = nnls([(1.0, float(n)) for n, _ in samples], [t for _, t in samples])
    return Linear(fixed, per_byte)


# ---------------------------------------------------------------- 1-2. the simulated burst

def star_burst(n: int, seed: int, machine: Machine, window: float,
               on_datagram: Callable[[str, bytes, Any], None] | None = None,
               idle: float = 2.0) -> tuple[SerfSim, float | None]:
    """n Serfs with the agent's settings on ``machine``, idle for ``idle`` virtual
    seconds; then n1..n(n-1) join n0 at once; run ``window`` virtual seconds. (The sim,
    the virtual seconds until every node knew every other alive.)"""
    sim = SerfSim(seed=seed, config=dict(AGENT_CONFIG), cpu=machine)
    sim.on_datagram = on_datagram
    names = [f"n{i}" for i in range(n)]
    for name in names:
        sim.add_serf(name)
    sim.run_until(idle)
    for name in names[1:]:
        sim.start_join(name, ["n0"])
    start = sim.now
    done = sim.run_until(start + window, lambda: all(
        sim.serf(x).num_alive() == n for x in names), every=0.01)
    took = sim.now - start if done else None
    sim.run_until(start + window)
    return sim, took


def plain_of(data: bytes) -> tuple[bytes, bool]:
    """A datagram's plain content (what was compressed) and whether it went compressed."""
    buf = data[CRC_OVERHEAD:] if data[:1] == bytes((MsgType.HAS_CRC,)) else data
    if buf[:1] == bytes((MsgType.COMPRESS,)):
        return decompress_message(buf[1:]), True
    return buf, False


def best_time(fn: Callable[[bytes], object], data: bytes, reps: int = 5) -> float:
    best = math.inf
    for _ in range(reps):
        t = time.perf_counter()
        fn(data)
        best = min(best, time.perf_counter() - t)
    return best


def calibrate_lzw(n: int, seed: int) -> dict[str, Linear]:
    """Fitted on datagrams, whose sizes are spread over the range a packet can have (the
    fit weighs them as the burst does: most are full gossip packets); the few streams
    (push/pulls of 1-10 KB) are extrapolated."""
    sent: list[bytes] = []
    star_burst(n, seed, Machine(cores=n), 6.0,
                        lambda name, data, dst: sent.append(data))
    plains = [plain_of(d) for d in sent]
    sample = [p for p, _ in plains[:: max(1, len(plains) // 1500)]]
    out: dict[str, Linear] = {}
    for impl in ("py", "c"):
        comp: Callable[[bytes], bytes] = getattr(lzw, f"compress_{impl}")
        decomp: Callable[[bytes], bytes] = getattr(lzw, f"decompress_{impl}")
        out[f"compress_{impl}"] = fit_linear([(len(p), best_time(comp, p)) for p in sample])
        packed = [(len(p), lzw.compress_c(p)) for p in sample]
        out[f"decompress_{impl}"] = fit_linear([(size, best_time(decomp, z))
                                                 for size, z in packed])
    sizes = sorted(len(p) for p in sample)
    print(f"  LZW sample: {len(sample)} plain payloads, {sizes[0]}-{sizes[-1]} B "
          f"(median {sizes[len(sizes) // 2]} B)")
    for name, lin in out.items():
        print(f"    {name:15} {lin.fixed * 1e6:6.2f} us + {lin.per_byte * 1e9:7.2f} ns/B"
              f"  (1,400 B: {lin(1400) * 1e6:6.1f} us)")
    return out


def features(w: Work) -> list[float]:
    """The row of ``w`` for FIELDS' coefficients."""
    stream_bytes = (w.plain_in + w.reply if w.kind in ("serve", "outcome") else 0) \
        + sum(w.streams)
    dgram = w.kind == "datagram"
    return [float(w.kind == "timer"), float(dgram), float(w.kind == "serve"),
            float(w.kind == "outcome"), w.messages if dgram else 0.0,
            w.plain_in if dgram else 0.0, float(stream_bytes), float(w.events),
            float(len(w.out)), float(sum(w.out)), float(len(w.streams))]


def lzw_share(w: Work, c_compress: Linear, c_decompress: Linear) -> float:
    """The C LZW's part of a job's measured time."""
    t = c_decompress(w.plain_in) if w.compressed_in else 0.0
    t += sum(c_compress(size) for size in w.out)
    t += sum(c_compress(size) for size in w.streams)
    return t + (c_compress(w.reply) if w.reply else 0.0)


def calibrate_handling(n: int, seed: int, repeats: int, lz: dict[str, Linear]
                       ) -> dict[str, float]:
    runs: list[list[tuple[Work, float]]] = []
    for _ in range(repeats):
        machine = Machine(cores=n, measure=[])
        star_burst(n, seed, machine, 6.0)
        assert machine.measure is not None
        runs.append(machine.measure)
    base = runs[0]
    assert all(len(r) == len(base) for r in runs), "the runs differ: not deterministic"
    best = [min(r[i][1] for r in runs) for i in range(len(base))]
    works = [w for w, _ in base]
    y = [t - lzw_share(w, lz["compress_c"], lz["decompress_c"]) for w, t in zip(works, best,
                                                                               strict=True)]
    coef = nnls([features(w) for w in works], y)
    fitted = dict(zip(FIELDS, coef, strict=True))
    total = sum(best)
    model = sum(sum(c * f for c, f in zip(coef, features(w), strict=True)) for w in works)
    by_kind: dict[str, tuple[int, float]] = {}
    for w, t in zip(works, best, strict=True):
        k, s = by_kind.get(w.kind, (0, 0.0))
        by_kind[w.kind] = (k + 1, s + t)
    print(f"  core handling: {len(works)} jobs, {total:.3f} s measured (fastest of "
          f"{repeats}), the fit gives {model:.3f} s; by kind: " + ", ".join(
              f"{k} {c} jobs {s:.3f} s" for k, (c, s) in sorted(by_kind.items())))
    return fitted


# ---------------------------------------------------------------- 3. the event loop

def loop_overheads(batch: int = 400) -> dict[str, float]:
    """Per datagram received through asyncio, sent with transport.sendto, and per re-armed
    call_at timer (process CPU time, best of 5 batches)."""

    async def main() -> dict[str, float]:
        loop = asyncio.get_running_loop()
        got = 0
        done: asyncio.Future[None] = loop.create_future()

        class Proto(asyncio.DatagramProtocol):
            def datagram_received(self, data: bytes, addr: Any) -> None:
                nonlocal got
                got += 1
                if got == batch and not done.done():
                    done.set_result(None)

        rsock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        rsock.bind(("127.0.0.1", 0))
        rsock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)
        transport, _ = await loop.create_datagram_endpoint(Proto, sock=rsock)
        ssock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        ssock.bind(("127.0.0.1", 0))
        ssock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)
        payload = b"x" * 600
        recv = send = timer = math.inf
        for _ in range(5):
            got = 0
            done = loop.create_future()
            for _ in range(batch):
                ssock.sendto(payload, rsock.getsockname())
            t = time.process_time()
            await done
            recv = min(recv, (time.process_time() - t) / batch)
            t = time.process_time()
            for _ in range(batch):
                transport.sendto(payload, ssock.getsockname())
            send = min(send, (time.process_time() - t) / batch)
            ssock.setblocking(False)
            while True:
                try:
                    ssock.recv(2048)
                except BlockingIOError:
                    break
            timer = min(timer, await timer_cost(loop, batch))
        transport.close()
        ssock.close()
        return {"recv": recv, "send": send, "timer": timer}

    return asyncio.run(main())


async def timer_cost(loop: asyncio.AbstractEventLoop, batch: int) -> float:
    """Process CPU per call_at callback that re-arms the next one and cancels a spare
    (as the driver re-arms the core's timer)."""
    fired = 0
    fin: asyncio.Future[None] = loop.create_future()

    def tick() -> None:
        nonlocal fired
        fired += 1
        if fired == batch:
            fin.set_result(None)
            return
        loop.call_at(loop.time(), tick)
        loop.call_at(loop.time() + 10, tick).cancel()

    t = time.process_time()
    loop.call_at(loop.time(), tick)
    await fin
    return (time.process_time() - t) / batch


# ---------------------------------------------------------------- the tables

def build_tables(core: dict[str, float], io: dict[str, float], lz: dict[str, Linear],
                 agent: dict[str, float] | None = None) -> dict[str, CostTable]:
    v = dict(core)
    v["datagram_fixed"] += io["recv"]
    v["per_datagram_out"] += io["send"]
    v["timer_fixed"] += io["timer"]
    if agent is not None:
        v["datagram_fixed"] += agent["datagram"]
        v["per_event"] += agent["per_event"]
        v["serve_fixed"] += agent["stream"]
        v["outcome_fixed"] += agent["stream"] / 2
        v["per_stream_out"] += agent["stream"] / 2
    c = CostTable(name="c", compress=lz["compress_c"], decompress=lz["decompress_c"], **v)
    return {"c": c, "python": replace(c, name="python", compress=lz["compress_py"],
                                      decompress=lz["decompress_py"])}


def show_table(t: CostTable) -> str:
    def us(x: float) -> str:
        return f"{x * 1e6:.3g}e-6"

    def ns(x: float) -> str:
        return f"{x * 1e9:.3g}e-9"

    lines = [f"    compress=Linear({us(t.compress.fixed)}, {ns(t.compress.per_byte)}),",
             f"    decompress=Linear({us(t.decompress.fixed)}, {ns(t.decompress.per_byte)}),"]
    for name, value in asdict(t).items():
        if name in FIELDS:
            lines.append(f"    {name}={ns(value) if 'byte' in name else us(value)},")
    lines.append(f"    contention={t.contention},")
    return "\n".join(lines)


# ---------------------------------------------------------------- --agent: one real agent

class Ghost:
    """A fake member at a UDP socket of ours: it acks the agent's pings."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)
        self.addr = self.sock.getsockname()
        self._stop = False
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        self.sock.settimeout(0.2)
        while not self._stop:
            try:
                data, src = self.sock.recvfrom(70000)
            except TimeoutError:
                continue
            try:
                parts = decode_packet(data)
            except ValueError:
                continue
            for p in parts:
                if p[0] == MsgType.PING:
                    ping = decode_message(p)
                    assert isinstance(ping, Ping)
                    self.sock.sendto(plain_packet([Ack(ping.seq_no).encode()]), src)

    def close(self) -> None:
        self._stop = True
        self._thread.join()
        self.sock.close()


def plain_packet(parts: list[bytes]) -> bytes:
    return encode_packet(parts, compress=False, crc=False)


META = encode_tags({"role": "ghost"})
VSN = bytes([1, 5, 2, 2, 5, 4])


def alive(name: str, incarnation: int, addr: tuple[str, int]) -> bytes:
    return Alive(incarnation, name, ip_to_bytes(addr[0]), addr[1], META, VSN).encode()


class InProcess:
    """An in-process Serf fed what the real agent is fed: the table's prediction."""

    def __init__(self, table: CostTable) -> None:
        mlc = MemberlistConfig.from_profile("lan", name="node0", advertise_addr="127.0.0.9",
                                            eager_gossip=True, confirm_suspicions=True,
                                            vsn=VSN)
        self.serf = Serf(SerfConfig(node_name="node0", memberlist=mlc,
                                    tags={"role": "bench"}), random.Random(1), 0.0)
        self.table = table
        self.now = 1.0

    def datagram(self, data: bytes, src: tuple[str, int]) -> float:
        self.now += 0.001
        self.serf.receive_datagram(data, src, self.now)
        messages, plain, compressed = packet_shape(data)
        return self._cost(Work("datagram", messages, plain, compressed, 0, [], []))

    def stream(self, plain: bytes, src: tuple[str, int]) -> float:
        self.now += 0.001
        reply = self.serf.receive_stream(plain, src, self.now) or b""
        return self._cost(Work("serve", 1, len(plain), True, 0, [], [], len(reply)))

    def _cost(self, w: Work) -> float:
        out = [packet_shape(d)[1] for d, _ in self.serf.datagrams_to_send()]
        streams = [len(r.plain) for r in self.serf.streams_to_open()]
        events = sum(len(getattr(ev, "members", (None,))) for ev in self.serf.drain_events())
        return self.table.cost(replace(w, out=out, streams=streams, events=events), True)


def push_pull_plain(peer: str) -> bytes:
    """A real push/pull (Join=false) from a Serf called ``peer`` that knows only itself."""
    sim = SerfSim(seed=1, config=dict(AGENT_CONFIG))
    sim.add_serf(peer)
    sim.add_serf("other")
    reqs: list[bytes] = []
    sim.on_stream = lambda name, req: reqs.append(req.plain)
    sim.start_join(peer, ["other"])
    return reqs[0]


def agent_check(build: Callable[[dict[str, float] | None], dict[str, CostTable]],
                rate: float = 2000.0, count: int = 6000) -> dict[str, CostTable]:
    """One real agent with the C LZW: its CPU per input against the tables from
    ``build(None)``; what it spends beyond them is its own cost per datagram, per member
    event and per stream. Then one with the Python LZW, against ``build(those costs)``
    (a check); returns those tables."""
    pp = push_pull_plain("ghostpp")
    c = one_agent("c", build(None)["c"], pp, rate, count)
    derived = {"datagram": max(0.0, c["ping"][0] - c["ping"][1])}
    derived["per_event"] = max(0.0, c["new"][0] - c["new"][1] - derived["datagram"])
    derived["stream"] = max(0.0, c["push/pull"][0] - c["push/pull"][1])
    print(f"  the agent beyond the table: {derived['datagram'] * 1e6:.1f} us per "
          f"datagram, {derived['per_event'] * 1e6:.0f} us per member event, "
          f"{derived['stream'] * 1e6:.0f} us per stream served")
    tables = build(derived)
    one_agent("python", tables["python"], pp, rate, count)
    return tables


def one_agent(impl: str, table: CostTable, pp: bytes, rate: float,
              count: int) -> dict[str, tuple[float, float]]:
    """Feed one real agent (``impl`` LZW) each phase's inputs: per phase, (its CPU per
    input beyond idle, the table's prediction)."""
    from tests.integration.harness import AddressAllocator, Cluster

    os.environ["SERFD_PURE_LZW"] = "1" if impl == "python" else "0"
    model = InProcess(table)
    out: dict[str, tuple[float, float]] = {}
    with Cluster(AddressAllocator(range(200, 240)),
                 Path(tempfile.mkdtemp(prefix="cpu-calibrate-"))) as cl:
        agent = cl.serfd("node0", tags={"role": "bench"}, log_level="info")
        cl.wait_ready(30)
        host, port = agent.bind_addr.rsplit(":", 1)
        dst = (host, int(port))
        ghost = Ghost()
        try:
            first = plain_packet([alive("ghost", 5, ghost.addr)])
            ghost.sock.sendto(first, dst)
            model.datagram(first, ghost.addr)
            time.sleep(3)
            c0, t0 = agent.cpu_seconds(), time.monotonic()
            time.sleep(4)
            idle = (agent.cpu_seconds() - c0) / (time.monotonic() - t0)
            print(f"  real agent, {impl} LZW: idle {idle * 100:.2f} % of a core")

            def phase(key: str, label: str, packets: list[bytes], pace: float = rate) -> None:
                predicted = sum(model.datagram(p, ghost.addr) for p in packets) / len(packets)
                c0, t0 = agent.cpu_seconds(), time.monotonic()
                for i, data in enumerate(packets):
                    ghost.sock.sendto(data, dst)
                    if i % 10 == 9:
                        time.sleep(max(0.0, t0 + (i + 1) / pace - time.monotonic()))
                time.sleep(0.5)
                cpu = agent.cpu_seconds() - c0 - idle * (time.monotonic() - t0)
                out[key] = (cpu / len(packets), predicted)
                print(f"    {label:28} real {out[key][0] * 1e6:7.1f} us, model "
                      f"{predicted * 1e6:7.1f} us")

            phase("ping", "ping -> ack",
                  [plain_packet([Ping(i, "node0").encode()]) for i in range(count)])
            stale = [alive("ghost", 1, ghost.addr)] * 16
            phase("stale", "16 stale alives, plain", [plain_packet(stale)] * count)
            phase("stale lzw", "16 stale alives, LZW",
                  [encode_packet(stale, compress=True, crc=False)] * count)
            phase("new", "alive of a new member",
                  [plain_packet([alive(f"g{i}", 1, ghost.addr)]) for i in range(1000)],
                  pace=200.0)
            out["push/pull"] = tcp_push_pulls(agent, idle, pp, model, 400)
            print(f"    {'push/pull served (TCP)':28} real {out['push/pull'][0] * 1e6:7.1f} us,"
                  f" model {out['push/pull'][1] * 1e6:7.1f} us")
        finally:
            ghost.close()
            os.environ.pop("SERFD_PURE_LZW", None)
    return out


def tcp_push_pulls(agent: Any, idle: float, plain: bytes, model: InProcess,
                   count: int) -> tuple[float, float]:
    """``count`` push/pulls to the real agent over TCP, one at a time: (its CPU per push/
    pull beyond idle, the table's prediction)."""
    host, port = agent.bind_addr.rsplit(":", 1)
    wire = encode_stream(plain, compress=True)
    predicted = sum(model.stream(plain, ("127.0.0.1", 40000 + i)) for i in range(count))
    c0, t0 = agent.cpu_seconds(), time.monotonic()
    for _ in range(count):
        with socket.create_connection((host, int(port)), timeout=5) as s:
            s.sendall(wire)
            reader = StreamReader()
            while reader.message() is None:
                chunk = s.recv(65536)
                if not chunk:
                    break
                reader.feed(chunk)
        time.sleep(0.005)
    time.sleep(0.5)
    cpu = agent.cpu_seconds() - c0 - idle * (time.monotonic() - t0)
    return cpu / count, predicted / count


# ---------------------------------------------------------------- --cluster: real agents

def model_burst(n: int, table: CostTable, window: float) -> tuple[float, float]:
    """The model's CPU seconds over ``window`` from the release of a star join of n,
    beyond its idle rate, and that idle rate per node (CPU seconds per second), both
    measured over the 10 s before."""
    longer = Machine(cores=2, costs=table)
    star_burst(n, 1, longer, 0.0, idle=20.0)
    ref = Machine(cores=2, costs=table)
    star_burst(n, 1, ref, 0.0, idle=10.0)
    rate = (longer.cpu_seconds - ref.cpu_seconds) / 10.0
    m = Machine(cores=2, costs=table)
    star_burst(n, 1, m, window, idle=10.0)
    return m.cpu_seconds - ref.cpu_seconds - rate * window, rate / n


def real_star_join(n: int, impl: str, window: float) -> tuple[float, float, float, float]:
    """n real agents (``impl`` LZW); nodes 1..n-1 join node0 at once: (their CPU over
    ``window`` seconds from the release beyond their idle rate, that idle rate, then a
    members RPC's CPU on the agent and on the client)."""
    from tests.integration.harness import AddressAllocator, Cluster, RPCClient

    os.environ["SERFD_PURE_LZW"] = "1" if impl == "python" else "0"
    try:
        with Cluster(AddressAllocator(range(200, 240)),
                     Path(tempfile.mkdtemp(prefix="cpu-calibrate-"))) as cl:
            for i in range(n):
                cl.serfd(f"node{i}", tags={"role": "bench", "idx": str(i)}, log_level="info")
            cl.wait_ready(60)
            agents = cl.agents
            time.sleep(3)

            def cpu() -> float:
                return sum(a.cpu_seconds() for a in agents)

            c0, t0 = cpu(), time.monotonic()
            time.sleep(5)
            idle = (cpu() - c0) / (time.monotonic() - t0)
            clients = [RPCClient(a.rpc_target, timeout=15.0) for a in agents]
            barrier = threading.Barrier(n)
            seed = agents[0].bind_addr

            def joiner(c: RPCClient) -> None:
                barrier.wait(10)
                c.join([seed])

            threads = [threading.Thread(target=joiner, args=(c,)) for c in clients[1:]]
            for t in threads:
                t.start()
            c0, t0 = cpu(), time.monotonic()
            barrier.wait(10)
            for t in threads:
                t.join(30)
            time.sleep(max(0.0, t0 + window - time.monotonic()))
            real = cpu() - c0 - idle * (time.monotonic() - t0)
            # members RPCs on one agent, the cluster converged and quiet.
            polled, calls = agents[-1], 300
            a0, p0, t0 = polled.cpu_seconds(), time.process_time(), time.monotonic()
            for _ in range(calls):
                clients[-1].members()
            agent_s = (polled.cpu_seconds() - a0 - idle / n * (time.monotonic() - t0)) / calls
            client_s = (time.process_time() - p0) / calls
            for c in clients:
                c.close()
    finally:
        os.environ.pop("SERFD_PURE_LZW", None)
    return real, idle, agent_s, client_s


def cluster_check(sizes: Sequence[int], tables: dict[str, CostTable], window: float
                  ) -> tuple[float, float, Linear, Linear]:
    """Real star joins of each size with either LZW, against the tables (their
    ``contention`` is ignored): (the mean real/model CPU ratio, the agent's own tick cost,
    the members RPC's agent and client costs fitted over the sizes)."""
    ratios: list[float] = []
    reals: list[float] = []
    models: list[float] = []
    real_idle: list[float] = []
    model_idle: list[float] = []
    poll_agent: list[tuple[int, float]] = []
    poll_client: list[tuple[int, float]] = []
    for n in sizes:
        if n >= 50:
            raise SystemExit("--cluster: keep it under 50 agents on a shared machine")
        for impl in ("c", "python"):
            real, idle, agent_s, client_s = real_star_join(n, impl, window)
            poll_agent.append((n, agent_s))
            poll_client.append((n, client_s))
            model, model_rate = model_burst(n, replace(tables[impl], contention=1.0), window)
            ratios.append(real / model)
            reals.append(real)
            models.append(model)
            print(f"  star join of {n} real agents, {impl} LZW: {real:.2f} s of CPU over "
                  f"{window:.0f} s beyond idle, the model {model:.2f} s (x{real / model:.2f});"
                  f" idle per agent {idle / n * 100:.2f} % of a core (the model "
                  f"{model_rate * 100:.3f} %); members RPC: agent {agent_s * 1e6:.0f} us, "
                  f"client {client_s * 1e6:.0f} us")
            real_idle.append(idle / n)
            model_idle.append(model_rate)
    contention = sum(reals) / sum(models)  # small runs weigh less: /proc counts 10 ms
    # The model's idle work is charged with the contention too; the tick is the rest.
    rest = (sum(real_idle) - contention * sum(model_idle)) / len(real_idle)
    tick = max(0.0, rest) * AGENT_TICK_PERIOD
    pa, pc = fit_linear(poll_agent), fit_linear(poll_client)
    print(f"  contention {contention:.2f} (real/model, {min(ratios):.2f}-{max(ratios):.2f}); "
          f"agent tick {tick * 1e6:.0f} us every {AGENT_TICK_PERIOD} s; members RPC: agent "
          f"{pa.fixed * 1e6:.0f} us + {pa.per_byte * 1e6:.2f} us/member, client "
          f"{pc.fixed * 1e6:.0f} us + {pc.per_byte * 1e6:.2f} us/member")
    return contention, tick, pa, pc


# ---------------------------------------------------------------- --figures: the model

def figures(sizes: Sequence[int], seeds: Sequence[int], cores: int) -> None:
    """The model's star join (the agent's settings, tickers and cluster_bench's poller):
    true convergence, what the poller saw, CPU, the longest wait, the wall time."""
    logging.disable(logging.WARNING)  # each starved node's drop log, 10 s apart
    for n in sizes:
        for impl, table in PROFILES.items():
            for seed in seeds:
                w0 = time.perf_counter()
                r = cpu_star_join(n, seed, table, cores)
                wall = time.perf_counter() - w0
                notable = {k: v for k, v in sorted(r.counters.items())
                           if k != "join_follow_up_push_pull"}
                print(f"  N={n:<4} {impl:6} LZW, {cores} cores, seed {seed}: converged "
                      f"{_s(r.converged)}, poller saw {_s(r.polled)}; CPU {r.cpu:5.2f} s, "
                      f"longest wait {r.max_wait:.2f} s, push/pulls {r.push_pulls} "
                      f"({r.follow_ups} follow-ups), {r.failed} member-failed events; "
                      f"{wall:.1f} s wall\n      {notable}")
    logging.disable(logging.NOTSET)


def _s(x: float | None) -> str:
    return "never" if x is None else f"{x:5.2f} s"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=100, help="nodes in the simulated burst")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--no-calibration", action="store_true", help="skip steps 1-3")
    ap.add_argument("--agent", action="store_true", help="check against one real agent")
    ap.add_argument("--cluster", type=int, nargs="*", default=[],
                    help="real star joins of these sizes (< 50)")
    ap.add_argument("--window", type=float, default=8.0)
    ap.add_argument("--figures", type=int, nargs="*", default=[100],
                    help="the model's star join at these sizes (default 100)")
    ap.add_argument("--seeds", type=int, nargs="*", default=[1, 2, 3])
    ap.add_argument("--cores", type=int, default=2)
    args = ap.parse_args(argv)
    print(f"cpu_calibrate: LZW implementation loaded: {lzw.IMPLEMENTATION}")
    if not args.no_calibration:
        if lzw.IMPLEMENTATION != "c":
            raise SystemExit("build the C LZW first (setup.py build_ext --inplace)")
        lz = calibrate_lzw(args.n, args.seed)
        core = calibrate_handling(args.n, args.seed, args.repeats, lz)
        io = loop_overheads()
        print(f"  event loop: receive {io['recv'] * 1e6:.1f} us, send "
              f"{io['send'] * 1e6:.1f} us, timer {io['timer'] * 1e6:.1f} us")
        tables = build_tables(core, io, lz)
        if args.agent:
            tables = agent_check(lambda agent: build_tables(core, io, lz, agent))
        if args.cluster:
            contention, tick, pa, pc = cluster_check(args.cluster, tables, args.window)
            tables = {k: replace(t, contention=round(contention, 2))
                      for k, t in tables.items()}
            print(f"\nAGENT_TICK = {tick * 1e6:.3g}e-6\nPOLL_AGENT = Linear("
                  f"{pa.fixed * 1e6:.3g}e-6, {pa.per_byte * 1e6:.3g}e-6)\nPOLL_CLIENT = "
                  f"Linear({pc.fixed * 1e6:.3g}e-6, {pc.per_byte * 1e6:.3g}e-6)")
        for name, table in tables.items():
            print(f"\n{name}:")
            print(show_table(table))
        print(f"\n(serfd.testing.cpu.C_LZW now: {C_LZW})")
    if args.figures:
        print("\nthe model (serfd.testing.cpu's tables):")
        figures(args.figures, args.seeds, args.cores)


if __name__ == "__main__":
    main()
