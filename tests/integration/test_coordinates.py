"""Network coordinates between serfd and the real `serf` 0.9.4 on loopback: each learns
the other's coordinate from its ping acks; `get-coordinate` answers are laid out byte for
byte as a serf agent's (only the float64 values differ); `serf rtt` works against serfd's
RPC and `serfctl rtt` against serf's."""

from __future__ import annotations

import re
import socket
import subprocess
import sys
from typing import Any

import msgpack

from serfd.wire.messages import Ack, Ping, decode_message
from serfd.wire.packet import decode_packet, encode_packet
from tests.integration.harness import Cluster, SerfAgent, SerfdAgent, serf_cli
from tests.support import wait_until
from tests.test_serf_coordinates import FRESH_ACK

RTT_LINE = re.compile(r"^Estimated (\S+) <-> (\S+) rtt: (\d+\.\d{3}) ms\n$")


def raw_get_coordinate(rpc_addr: str, node: str) -> bytes:
    """The bytes of the answer (header and body) to get-coordinate ``node``, Seq 1."""
    host, _, port = rpc_addr.rpartition(":")
    with socket.create_connection((host, int(port)), timeout=5.0) as sock:
        sock.sendall(msgpack.packb({"Command": "handshake", "Seq": 0}) + msgpack.packb(
            {"Version": 1}) + msgpack.packb({"Command": "get-coordinate", "Seq": 1})
            + msgpack.packb({"Node": node}))
        buf = b""
        while True:
            unpacker = msgpack.Unpacker(raw=False)
            unpacker.feed(buf)
            ends = []
            for _ in unpacker:
                ends.append(unpacker.tell())
            if len(ends) >= 3:
                return buf[ends[0]:ends[2]]
            data = sock.recv(65536)
            assert data, f"{rpc_addr} closed the connection after {buf.hex()}"
            buf += data


def layout(data: bytes) -> bytes:
    """The bytes with every float64's value masked: what two answers of the same shape
    share (the coordinates themselves differ)."""
    out = bytearray()
    i = 0
    while i < len(data):
        out.append(data[i])
        if data[i] == 0xCB:
            out += b"F" * 8
            i += 9
        else:
            i += 1
    return bytes(out)


def shape(obj: Any) -> Any:
    """Types and keys (in order) of a decoded answer, values left out."""
    if isinstance(obj, dict):
        return [(k, shape(v)) for k, v in obj.items()]
    if isinstance(obj, list):
        return [shape(v) for v in obj]
    return type(obj).__name__


def serfctl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "serfctl", *args], capture_output=True,
                          text=True, timeout=15, check=False)


def test_coordinates_between_serf_and_serfd(cluster: Cluster) -> None:
    serf = cluster.serf("serf0")
    serf.wait_ready()
    serfd = cluster.serfd("serfd0", join=[serf.bind_addr])
    serfd.wait_ready()
    assert isinstance(serf, SerfAgent) and isinstance(serfd, SerfdAgent)

    def learnt() -> bool:
        # Each needs a probe of the other (ProbeInterval 1 s in a 2-node cluster).
        for agent, other in ((serf, serfd), (serfd, serf)):
            if raw_get_coordinate(agent.rpc_addr, other.name)[-1] != 0xC3:  # Ok true
                return False
        return True

    wait_until(learnt, timeout=20.0, interval=0.5, desc="coordinates learnt both ways")

    for node in (serf.name, serfd.name):
        theirs = raw_get_coordinate(serf.rpc_addr, node)
        ours = raw_get_coordinate(serfd.rpc_addr, node)
        assert layout(ours) == layout(theirs), (ours.hex(), theirs.hex())
        unpacker_a, unpacker_b = msgpack.Unpacker(raw=False), msgpack.Unpacker(raw=False)
        unpacker_a.feed(ours)
        unpacker_b.feed(theirs)
        assert [shape(o) for o in unpacker_a] == [shape(o) for o in unpacker_b]
    # A node nobody knows: the very same bytes (zero floats, nil Vec, Ok false).
    assert raw_get_coordinate(serfd.rpc_addr, "nope") == raw_get_coordinate(serf.rpc_addr,
                                                                              "nope")

    # serf rtt against serfd's RPC, with one node (the agent's own is the other) and two.
    out = serf_cli("rtt", f"-rpc-addr={serfd.rpc_addr}", serf.name)
    assert out.returncode == 0, out.stderr
    m = RTT_LINE.match(out.stdout)
    assert m and m.group(1, 2) == (serf.name, serfd.name), out.stdout
    out = serf_cli("rtt", f"-rpc-addr={serfd.rpc_addr}", serfd.name, serf.name)
    assert out.returncode == 0 and RTT_LINE.match(out.stdout), out
    out = serf_cli("rtt", f"-rpc-addr={serfd.rpc_addr}", "nope")
    # (serf's CLI writes its errors to stdout; serfctl, like all its commands, to stderr)
    assert (out.returncode, out.stdout) == (1, 'Could not find a coordinate for node "nope"\n')

    # serfctl rtt against serf's RPC prints what serf rtt prints for the same coordinates:
    # both read the same agent's cache, so the lines are equal unless a probe moved it
    # in between; compare against serf's own right after.
    for _ in range(5):
        mine = serfctl("--rpc-addr", serf.rpc_addr, "rtt", serfd.name, serf.name)
        theirs = serf_cli("rtt", f"-rpc-addr={serf.rpc_addr}", serfd.name, serf.name)
        assert mine.returncode == 0 and theirs.returncode == 0, (mine, theirs)
        if mine.stdout == theirs.stdout:
            break
    assert mine.stdout == theirs.stdout and RTT_LINE.match(mine.stdout), (mine, theirs)
    out = serfctl("--rpc-addr", serf.rpc_addr, "rtt", "nope")
    assert (out.returncode, out.stderr) == (1, 'Could not find a coordinate for node "nope"\n')


def _ack_payload(ip: str, node: str) -> bytes:
    """Ping ``node`` at ``ip``:7946 over UDP from the same /24; the payload of its ack
    (b"" for none). Tries a few times: a ping or its ack may be lost."""
    for _ in range(10):
        got = _ping_once(ip, node)
        if got is not None:
            return got
    raise AssertionError(f"no ack from {node} at {ip}")


def _ping_once(ip: str, node: str) -> bytes | None:
    peer_ip = ip.rsplit(".", 1)[0] + ".250"
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((peer_ip, 0))
        s.settimeout(0.5)
        ping = Ping(seq_no=4242, node=node, source_addr=socket.inet_aton(peer_ip),
                    source_port=s.getsockname()[1], source_node="pyping")
        s.sendto(encode_packet([ping.encode()], compress=False, crc=False), (ip, 7946))
        while True:
            try:
                data, _ = s.recvfrom(65536)
            except TimeoutError:
                return None
            for m in decode_packet(data):
                msg = decode_message(m)
                if isinstance(msg, Ack) and msg.seq_no == 4242:
                    return msg.payload or b""


def test_fresh_ack_payloads_are_byte_identical(cluster: Cluster) -> None:
    """A lone serf agent and a lone serfd (both still at the origin) ack a ping with the
    same bytes; with disable_coordinates serfd's ack carries nothing and get-coordinate
    knows no coordinate, not even its own."""
    serf = cluster.serf("lone-serf")
    serfd = cluster.serfd("lone-serfd")
    off = cluster.serfd("off-serfd", extra_toml="disable_coordinates = true")
    cluster.wait_ready()
    theirs = _ack_payload(serf.ip, serf.name)
    assert theirs == FRESH_ACK  # the unit tests' vector is the real agent's
    assert _ack_payload(serfd.ip, serfd.name) == theirs
    assert _ack_payload(off.ip, off.name) == b""  # memberlist's ack without a payload
    assert raw_get_coordinate(off.rpc_addr, off.name)[-1] == 0xC2  # Ok false
    assert raw_get_coordinate(serfd.rpc_addr, serfd.name)[-1] == 0xC3
