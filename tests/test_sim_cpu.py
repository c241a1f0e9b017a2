"""The simulator's shared machine (serfd.testing.cpu): inputs cost CPU time, a node
handles one at a time, the nodes share the cores; and with the calibrated costs it
reproduces issue 13's straggler.

Real figures (100 serfd agents on a 2-core machine, nodes 1..99 RPC-join node0 at once,
convergence as bench.cluster_bench's poller sees it): with the pure-Python LZW 5.5 to
11 s, the agents together burning about 1.9 cores all along (10 to 21 s of CPU); with
the C LZW 2.5 to 3.0 s (4 to 5 s of CPU). The model (the same burst with the agent's
tickers and that poller on a 2-core machine) gives 6.1 s and 12 s of CPU, and 2.3 s and
4.5 s (``bench.cpu_calibrate --figures 100``).

COST: the two N = 100 runs take about 3 s of wall time together.
"""

from __future__ import annotations

from dataclasses import replace

import pytest

from serfd.memberlist.swim import Addr, StreamKind, StreamRequest
from serfd.testing.cpu import C_LZW, PYTHON_LZW, CostTable, Linear, Machine, Work
from serfd.testing.serf_sim import StarJoin, cpu_star_join
from serfd.testing.sim import Sim, SimNode

# Every job costs COST seconds, whatever it did (no LZW, no per-byte part).
COST = 0.1
FLAT = CostTable(name="flat", compress=Linear(0.0, 0.0), decompress=Linear(0.0, 0.0),
                 timer_fixed=0.0, datagram_fixed=COST, serve_fixed=COST, outcome_fixed=COST,
                 per_message=0.0, per_byte=0.0, stream_per_byte=0.0, per_event=0.0,
                 per_datagram_out=0.0, per_byte_out=0.0, per_stream_out=0.0)
DELAY = 0.001


class Probe:
    """A core of the driver contract that records when it handled what, sends what it is
    told to at its next timer, and answers every datagram ``echo`` with one back."""

    def __init__(self) -> None:
        self.handled: list[tuple[float, bytes]] = []
        self.outcomes: list[tuple[float, bytes | None, str]] = []
        self.to_send: list[tuple[bytes, Addr]] = []
        self.at_timer: list[tuple[bytes, Addr]] = []
        self.to_open: list[StreamRequest] = []
        self.timer: float | None = None
        self.reply = b"pong"

    def datagrams_to_send(self) -> list[tuple[bytes, Addr]]:
        out, self.to_send = self.to_send, []
        return out

    def streams_to_open(self) -> list[StreamRequest]:
        out, self.to_open = self.to_open, []
        return out

    def get_timer(self) -> float | None:
        return self.timer

    def handle_timer(self, now: float) -> None:
        self.timer = None
        self.to_send.extend(self.at_timer)
        self.at_timer.clear()

    def receive_datagram(self, data: bytes, addr: Addr, now: float) -> None:
        self.handled.append((now, data))
        if data == b"echo":
            self.to_send.append((b"back", addr))

    def receive_stream(self, plain: bytes, addr: Addr, now: float) -> bytes | None:
        self.handled.append((now, plain))
        return self.reply

    def stream_outcome(self, token: int, reply: bytes | None, now: float,
                       error: str = "") -> None:
        self.outcomes.append((now, reply, error))


def probes(n: int, cores: int) -> tuple[Sim, list[Probe], list[SimNode]]:
    sim = Sim(delay=(DELAY, DELAY), cpu=Machine(cores=cores, costs=FLAT))
    cores_, nodes = [], []
    for i in range(n):
        probe = Probe()
        node = SimNode(f"p{i}", (f"10.9.0.{i + 1}", 7946), probe)
        sim.nodes[node.name] = node
        sim.by_addr[node.addr] = node
        cores_.append(probe)
        nodes.append(node)
    return sim, cores_, nodes


def send_at(sim: Sim, node: SimNode, probe: Probe, when: float,
            datagrams: list[tuple[bytes, SimNode]]) -> None:
    """``node`` sends ``datagrams`` from its timer at ``when`` (a timer job: free here)."""
    probe.at_timer.extend((data, dst.addr) for data, dst in datagrams)
    probe.timer = when
    sim.service(node.name)


def times(probe: Probe) -> list[float]:
    return [round(t, 9) for t, _ in probe.handled]


def at(*values: float) -> list[float]:
    return [round(v, 9) for v in values]


def test_a_busy_node_handles_its_inputs_one_after_another() -> None:
    """Three datagrams reach one node at once: with cores to spare, the second waits for
    the first's cost, the third for both."""
    sim, (sender, receiver), (a, b) = probes(2, cores=8)
    send_at(sim, a, sender, 1.0, [(b"x", b), (b"y", b), (b"z", b)])
    sim.run_until(2.0)
    assert times(receiver) == at(1.0 + DELAY, 1.0 + DELAY + COST, 1.0 + DELAY + 2 * COST)
    assert [d for _, d in receiver.handled] == [b"x", b"y", b"z"]


@pytest.mark.parametrize(("cores", "second"), [(1, 1.0 + DELAY + COST), (2, 1.0 + DELAY)])
def test_nodes_share_the_machine_cores(cores: int, second: float) -> None:
    """Two nodes each get a datagram at once: one core serves them in turn (in arrival
    order), two cores together."""
    sim, (sender, r1, r2), (a, b, c) = probes(3, cores=cores)
    send_at(sim, a, sender, 1.0, [(b"x", b), (b"y", c)])
    sim.run_until(2.0)
    assert times(r1) == at(1.0 + DELAY)
    assert times(r2) == at(second)
    assert sim.cpu is not None
    assert sim.cpu.cpu_seconds == pytest.approx(2 * COST)
    assert sim.cpu.max_wait == pytest.approx(second - 1.0 - DELAY)


def test_what_a_job_produces_leaves_when_it_ends() -> None:
    """An echo is answered after the job that handled it: its cost, then the delay."""
    sim, (sender, echo), (a, b) = probes(2, cores=2)
    send_at(sim, a, sender, 1.0, [(b"echo", b)])
    sim.run_until(2.0)
    assert times(echo) == at(1.0 + DELAY)
    # The answer leaves at the end of the echo's job and reaches the sender a delay later.
    assert times(sender) == at(1.0 + DELAY + COST + DELAY)


def test_a_stream_to_a_starved_node_times_out_at_its_deadline() -> None:
    """The server is busy past the requester's deadline: the requester gets no reply and
    Go's read timeout at the deadline; the server serves the request late all the same."""
    sim, (client, server), (a, b) = probes(2, cores=2)
    # Ten datagrams keep the server busy for 1 s from 1.001, before the request arrives.
    send_at(sim, a, client, 1.0, [(b"x", b)] * 10)
    sim.run_until(1.0005)
    client.to_open.append(StreamRequest(7, b.addr, b"pull", True, 1.5, StreamKind.PUSH_PULL))
    sim.service(a.name)
    sim.run_until(3.0)
    assert [(round(t, 9), r, e) for t, r, e in client.outcomes] == [
        (1.5, None, f"read tcp {b.addr[0]}:{b.addr[1]}: i/o timeout")]
    assert times(server)[-1] == pytest.approx(1.0 + DELAY + 10 * COST)
    assert server.handled[-1][1] == b"pull"


def test_a_stream_answered_in_time_has_its_reply() -> None:
    sim, (client, _), (a, b) = probes(2, cores=2)
    client.to_open.append(StreamRequest(7, b.addr, b"pull", True, 5.0, StreamKind.PUSH_PULL))
    sim.service(a.name)
    sim.run_until(1.0)
    assert [(round(t, 9), r, e) for t, r, e in client.outcomes] == [
        (round(DELAY + COST + DELAY, 9), b"pong", "")]


def test_costs_follow_the_table() -> None:
    """Decompression is charged where a datagram came compressed, compression for every
    datagram sent when the node compresses, and everything times the contention."""
    table = replace(FLAT, compress=Linear(1.0, 0.01), decompress=Linear(2.0, 0.001),
                    contention=2.0)
    w = Work("datagram", 3, 1000, True, 0, [100, 200], [])
    assert table.cost(w, compression=True) == pytest.approx(
        2.0 * (COST + 2.0 + 1.0 + 2 * 1.0 + 0.01 * 300))
    assert table.cost(replace(w, compressed_in=False), compression=False) == \
        pytest.approx(2.0 * COST)


def test_a_run_is_a_function_of_its_seed() -> None:
    a = cpu_star_join(12, 5, PYTHON_LZW)
    b = cpu_star_join(12, 5, PYTHON_LZW)
    assert a == b
    assert a.converged is not None and a.polled is not None and a.cpu > 0


# ---------------------------------------------------------------- issue 13's straggler

N = 100
# Real figures: with the C LZW the poller saw convergence after 2.5 to 3.0 s and the
# agents spent 4 to 5 s of CPU; with the Python LZW 5.5 to 11 s and 10 to 21 s of CPU.
# The smallest ratios they allow: 5.5 / 3.0 and 10 / 5.
C_REAL_MAX = 3.0
RATIO_REAL_MIN = 5.5 / 3.0
CPU_RATIO_REAL_MIN = 10 / 5
# Memberlist's gossip time at N = 100 (tests/test_sim_joins.py): the periodic push/pull
# (30 to 60 s after start) cannot have helped.
GOSSIP_BOUND = 3.0


@pytest.fixture(scope="module")
def star_joins() -> dict[str, StarJoin]:
    return {"c": cpu_star_join(N, 1, C_LZW), "python": cpu_star_join(N, 1, PYTHON_LZW)}


def test_with_the_c_lzw_a_hundred_joins_converge_by_gossip(
        star_joins: dict[str, StarJoin]) -> None:
    """On 2 cores with the C LZW's costs, the burst converges within memberlist's gossip
    time, with no periodic push/pull, and the poller sees it within the real range."""
    c = star_joins["c"]
    assert c.converged is not None and c.converged <= GOSSIP_BOUND, c
    assert c.push_pulls == c.follow_ups, "a periodic push/pull ran during the burst"
    assert c.polled is not None and c.polled <= C_REAL_MAX, c


def test_with_the_python_lzw_the_same_joins_straggle(star_joins: dict[str, StarJoin]) -> None:
    """The same burst with the pure-Python LZW's costs: the poller sees convergence at
    least as many times later as in the real runs, after at least as many times the CPU."""
    c, py = star_joins["c"], star_joins["python"]
    assert c.polled is not None
    assert py.polled is None or py.polled >= RATIO_REAL_MIN * c.polled, (py, c)
    assert py.cpu >= CPU_RATIO_REAL_MIN * c.cpu, (py, c)
    # Not the poller's doing alone: the cluster itself converges later.
    assert c.converged is not None
    assert py.converged is None or py.converged > c.converged, (py, c)
