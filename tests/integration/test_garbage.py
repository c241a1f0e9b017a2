"""Garbage in: a running serfd shrugs off junk on its gossip UDP/TCP ports and its RPC socket.

Random bytes, truncated msgpack, wrong field types and huge length prefixes are thrown
at a serfd that is in a cluster with a real serf agent. Afterwards serfd must still be
running, still answer RPC, still be `alive` on the serf agent, and count what it
dropped (visible in `serfctl info`).
"""

from __future__ import annotations

import json
import random
import socket
import time

import msgpack

from serfd.wire.messages import Alive, Ping
from tests.integration.harness import Cluster
from tests.support import wait_until

# A handful of crafted packets on top of the random ones.
_VALID_PING = Ping(seq_no=7, node="", source_addr=b"\x7f\x00\x00\x01", source_port=1).encode()


def crafted_udp() -> list[bytes]:
    alive = Alive(incarnation=1, node="x", addr=b"\x7f\x00\x00\x09", port=7946).encode()
    return [
        b"",
        b"\x00",
        _VALID_PING[:-3],  # truncated msgpack
        b"\x00" + msgpack.packb({"SeqNo": "seven", "Node": 5}),  # wrong field types
        b"\x04" + msgpack.packb({"Incarnation": -1, "Node": b"x", "Addr": 12345, "Port": "p"}),
        alive[:10],
        b"\x07\xff" + b"\xff\xff" * 255,  # compound claiming 255 parts of 64 KiB
        b"\x07\x02\x00\x05\xff\xff" + alive,
        b"\x09" + msgpack.packb({"Algo": 0, "Buf": b"\xff" * 300}),  # LZW garbage
        b"\x09" + msgpack.packb({"Algo": 7, "Buf": b"abc"}),  # unknown algorithm
        b"\x0c\x00\x00\x00\x00" + alive,  # wrong CRC
        b"\x0c\x01",  # short CRC header
        b"\x07\x01\x00\x03\x07\x01\x00",  # nested compound, truncated
        b"\x08",  # empty user message
        b"\x08\x63garbage",  # unknown Serf message type
        b"\x08\x04" + msgpack.packb({"LTime": "x"}),  # query with a wrong type
        b"\xde\xad\xbe\xef" * 100,
        bytes(range(256)) * 5,
    ]


def crafted_tcp() -> list[bytes]:
    return [
        b"\x0a\xff\xff\xff\xff",  # encrypted frame of 4 GiB
        b"\x06" + msgpack.packb({"Nodes": 10**9, "UserStateLen": 10**12, "Join": True}),
        b"\x06" + msgpack.packb({"Nodes": 1, "UserStateLen": 0, "Join": False}) + b"\xc1",
        b"\x08" + msgpack.packb({"UserMsgLen": 2**40}),
        b"\x09" + msgpack.packb({"Algo": 0, "Buf": b"\x00" * 64}),
        b"\x00" + msgpack.packb({"SeqNo": [], "Node": {}}),
        b"\x63" + b"junk" * 50,
        b"\xdb\xff\xff\xff\xff",
    ]


def crafted_rpc() -> list[bytes]:
    return [
        b"\xc1\xc1\xc1",
        b"\xdf\xff\xff\xff\xff",  # a map claiming 4 billion entries
        b"\xdb\xff\xff\xff\xff" + b"x" * 100,  # a 4 GiB string, truncated
        msgpack.packb({"Command": 5, "Seq": "one"}),
        msgpack.packb({"Command": "handshake", "Seq": 1}) + msgpack.packb({"Version": "one"}),
        msgpack.packb({"Command": "handshake", "Seq": 1})
        + msgpack.packb({"Version": 1})
        + msgpack.packb({"Command": "members-filtered", "Seq": 2})
        + msgpack.packb({"Tags": [1, 2], "Status": 3, "Name": None}),
        msgpack.packb([1, 2, 3]),
    ]


def send_tcp(ip: str, port: int, data: bytes) -> None:
    with socket.create_connection((ip, port), timeout=2) as s:
        s.sendall(data)
        s.shutdown(socket.SHUT_WR)
        s.settimeout(2)
        try:
            while s.recv(65536):
                pass
        except OSError:
            pass


def send_unix(path: str, data: bytes) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(2)
        s.connect(path)
        try:
            s.sendall(data)
            s.shutdown(socket.SHUT_WR)
            while s.recv(65536):
                pass
        except OSError:
            pass


def test_garbage_on_every_port(make_cluster) -> None:  # type: ignore[no-untyped-def]
    c: Cluster = make_cluster()
    d = c.serfd("victim", tags={"role": "db"})
    s = c.serf("peer")
    c.wait_ready()
    assert s.join([d.bind_addr]) == 1
    c.wait_all_alive(timeout=5)

    rng = random.Random(20261127)
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    target = (d.ip, d.port)
    # Stalled TCP connections must not block anyone: open some and leave them hanging.
    stalled = [socket.create_connection(target, timeout=2) for _ in range(3)]
    for st in stalled:
        st.sendall(b"\x06")
    try:
        for data in crafted_udp():
            udp.sendto(data, target)
        for _ in range(300):
            udp.sendto(rng.randbytes(rng.randint(1, 1400)), target)
        for _ in range(100):
            # Mutations of a valid packet: a type byte the receiver knows, then noise.
            pkt = bytearray(_VALID_PING)
            for _ in range(rng.randint(1, 6)):
                pkt[rng.randrange(len(pkt))] = rng.randrange(256)
            udp.sendto(bytes(pkt), target)
        for data in crafted_tcp():
            send_tcp(*target, data)
        for _ in range(30):
            send_tcp(*target, rng.randbytes(rng.randint(1, 3000)))
        for data in crafted_rpc():
            send_unix(str(d.socket_path), data)
        for _ in range(30):
            send_unix(str(d.socket_path), rng.randbytes(rng.randint(1, 2000)))
        for _ in range(10):
            send_tcp(d.ip, d.rpc_port, rng.randbytes(rng.randint(1, 2000)))

        # While the stalled connections are still open, the cluster still works:
        # a tag change on serfd reaches the serf agent.
        d.set_tags({"after": "garbage"})

        def peer_sees_tag() -> bool:
            m = s.member_map().get("victim")
            return m is not None and m.status == "alive" and m.tags.get("after") == "garbage"

        wait_until(peer_sees_tag, 5, 0.05, desc="serf sees the new tag", retry_on=())
    finally:
        for st in stalled:
            st.close()
        udp.close()

    # A few probe rounds later serfd is still alive everywhere and still serving.
    time.sleep(3)
    assert d.running()
    assert s.statuses() == {"victim": "alive", "peer": "alive"}
    assert d.statuses() == {"victim": "alive", "peer": "alive"}

    info = d.serfctl("info", "--format", "json")
    assert info.returncode == 0, info.stderr
    stats = json.loads(info.stdout)
    drops = {k: int(v) for k, v in stats["serfd"].items() if k.startswith("dropped_")}
    # Every class of junk was counted somewhere: UDP, TCP streams and RPC.
    assert sum(drops.values()) >= 300, drops
    assert any(k.startswith("dropped_") and v > 0 for k, v in drops.items())
    counted = json.dumps(drops)
    assert "malformed_msgpack" in counted or "bad_field_type" in counted, counted
    assert "tcp" in counted, counted
