"""Our wire layer against the real ``serf`` 0.9.4 agent on loopback.

One real agent (``vec1``) runs for the whole module. From Python we ping it over
UDP and TCP, exchange push/pulls (plain and LZW-compressed, ours and its), and ask
``serf members`` whether the nodes we announced were accepted. The agent's
compressed replies are also recompressed with our LZW, which must give back the
agent's exact bytes.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import random
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from serfd.wire import lzw
from serfd.wire.codec import DecodeError
from serfd.wire.framing import StreamReader, decode_push_pull, encode_push_pull, encode_stream
from serfd.wire.messages import (
    DEFAULT_VSN,
    Ack,
    Compress,
    ErrResp,
    MsgType,
    NodeStateType,
    Ping,
    PushNodeState,
    bytes_to_ip,
    decode_message,
)
from serfd.wire.packet import decode_packet, encode_packet
from serfd.wire.serf_messages import MessagePushPull, decode_serf_message, decode_tags, encode_tags
from tests.integration.harness import bindable
from tests.support import wait_until

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        shutil.which("serf") is None, reason="the real `serf` binary is not installed"
    ),
]

GOSSIP_PORT = 7946
RPC_PORT = 7373
AGENT_TAGS = {"role": "vector", "dc": "lab"}
T = TypeVar("T")


@dataclass
class Agent:
    ip: str  # the agent's bind address
    peer_ip: str  # ours: the test's sockets and the fake nodes live here
    proc: subprocess.Popen[bytes]
    log: Path

    @property
    def rpc(self) -> str:
        return f"{self.ip}:{RPC_PORT}"

    def members(self) -> dict[str, dict[str, Any]]:
        out = subprocess.run(
            ["serf", "members", f"-rpc-addr={self.rpc}", "-format=json"],
            capture_output=True,
            timeout=5,
            check=True,
        ).stdout
        return {m["name"]: m for m in json.loads(out)["members"]}


def _wait_for(what: str, fn: Callable[[], T | None], timeout: float = 8.0) -> T:
    """``wait_until`` that returns the first value of ``fn`` that is not None."""
    got: list[T] = []

    def ready() -> bool:
        value = fn()
        if value is not None:
            got.append(value)
        return value is not None

    wait_until(ready, timeout, 0.05, desc=what, retry_on=(OSError, subprocess.SubprocessError))
    return got[0]


@contextlib.contextmanager
def _run_agent(host: int, name: str, *extra: str) -> Iterator[Agent]:
    """A real serf agent on 127.31.b.<host> (b: the first block where .1-.3 are free)."""
    # Our own corner of loopback (the harness allocates from 127.100-199.x.x).
    net = next(
        (
            f"127.31.{b}"
            for b in range(77, 120)
            if all(bindable(f"127.31.{b}.{h}", (GOSSIP_PORT, RPC_PORT)) for h in (host, host + 1))
        ),
        None,
    )
    if net is None:
        pytest.skip("no free 127.31.x.y address for the serf agent")
    ip = f"{net}.{host}"
    tmp = Path(tempfile.mkdtemp(prefix="serfd-wire-vectors-"))
    log = tmp / "serf.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [
                "serf",
                "agent",
                f"-node={name}",
                f"-bind={ip}:{GOSSIP_PORT}",
                f"-rpc-addr={ip}:{RPC_PORT}",
                "-log-level=debug",
                *(f"-tag={k}={v}" for k, v in AGENT_TAGS.items()),
                *extra,
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    # Our sockets and fake nodes use the next address up, where no agent listens.
    a = Agent(ip=ip, peer_ip=f"{net}.{host + 1}", proc=proc, log=log)
    try:
        _wait_for("serf agent RPC", lambda: a.members() or None)
        yield a
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
        print(log.read_text(errors="replace")[-4000:])  # shown by pytest on failure
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture(scope="module")
def agent() -> Iterator[Agent]:
    with _run_agent(1, "vec1") as a:
        yield a


ENCRYPT_KEY = bytes(range(100, 132))


class GcmKeyring:
    """memberlist encryption version 1 with one AES-256 key (what ``serf -encrypt`` uses)."""

    def __init__(self, key: bytes) -> None:
        self.key = key

    def encrypt(self, data: bytes, aad: bytes) -> bytes:
        nonce = os.urandom(12)
        return b"\x01" + nonce + AESGCM(self.key).encrypt(nonce, data, aad)

    def decrypt(self, data: bytes, aad: bytes) -> bytes:
        if len(data) < 29 or data[0] != 1:
            raise DecodeError("not a version 1 payload")
        try:
            return AESGCM(self.key).decrypt(data[1:13], data[13:], aad)
        except InvalidTag:
            raise DecodeError("no key fits") from None


@pytest.fixture(scope="module")
def encrypted_agent() -> Iterator[Agent]:
    with _run_agent(3, "vec2", f"-encrypt={base64.b64encode(ENCRYPT_KEY).decode()}") as a:
        yield a


def _fake_node(a: Agent, name: str, port: int, **tags: str) -> PushNodeState:
    return PushNodeState(
        name=name,
        addr=socket.inet_aton(a.peer_ip),
        port=port,
        meta=encode_tags({"role": "fake", "n": name, **tags}),
        incarnation=1,
        state=NodeStateType.ALIVE,
        vsn=DEFAULT_VSN,
    )


def _our_state(nodes: list[PushNodeState]) -> bytes:
    return MessagePushPull(
        ltime=1, status_ltimes={n.name: 1 for n in nodes}, events=(None,) * 512
    ).encode()


def _exchange(a: Agent, wire: bytes) -> bytes:
    """Open a TCP stream to the agent, send ``wire``, return its raw reply."""
    with socket.create_connection((a.ip, GOSSIP_PORT), timeout=5) as s:
        s.sendall(wire)
        chunks = []
        while data := s.recv(65536):
            chunks.append(data)
    return b"".join(chunks)


def _read(raw: bytes) -> bytes:
    r = StreamReader()
    msg = None
    for i in range(0, len(raw), 1000):  # arbitrary chunking, like a socket would give
        assert msg is None
        r.feed(raw[i : i + 1000])
        msg = r.message()
    assert msg is not None, "incomplete reply"
    return msg


def _assert_lzw_identical(raw: bytes) -> None:
    """The agent compressed ``raw`` ([9][compress]); our encoder must produce the same bytes."""
    assert raw[0] == MsgType.COMPRESS
    c = Compress.from_body(raw[1:])
    assert c.algo == 0 and c.buf is not None
    assert lzw.compress(lzw.decompress(c.buf)) == c.buf


def test_udp_ping_ack(agent: Agent) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((agent.peer_ip, 0))
        port = s.getsockname()[1]
        s.settimeout(0.2)
        ping = Ping(
            seq_no=4242,
            node="vec1",
            source_addr=socket.inet_aton(agent.peer_ip),
            source_port=port,
            source_node="pyvec",
        )

        def ack() -> Ack | None:
            s.sendto(encode_packet([ping.encode()], compress=False, crc=False), (agent.ip, 7946))
            try:
                data, _ = s.recvfrom(65536)
            except TimeoutError:
                return None
            for m in decode_packet(data):
                msg = decode_message(m)
                if isinstance(msg, Ack) and msg.seq_no == 4242:
                    return msg
            return None

        got = _wait_for("UDP ack", ack)
        assert got.payload  # Serf's ping delegate sends its Vivaldi coordinate


def test_tcp_stream_ping(agent: Agent) -> None:
    ping = Ping(seq_no=77, node="vec1", source_node="pyvec").encode()
    raw = _exchange(agent, encode_stream(ping, compress=True))
    _assert_lzw_identical(raw)  # the agent compresses its streams by default
    assert decode_message(_read(raw)) == Ack(seq_no=77, payload=None)


@pytest.mark.parametrize("compress", [False, True], ids=["plain", "lzw"])
def test_push_pull_both_ways(agent: Agent, compress: bool) -> None:
    name = f"fake-{'lzw' if compress else 'plain'}"
    node = _fake_node(agent, name, 17000 + compress)
    ours = encode_push_pull(True, [node], _our_state([node]))
    raw = _exchange(agent, encode_stream(ours, compress=compress))

    _assert_lzw_identical(raw)
    header, nodes, user = decode_push_pull(_read(raw))
    assert header.join is True  # the responder echoes the join flag
    by_name = {n.name: n for n in nodes}
    vec1 = by_name["vec1"]
    assert bytes_to_ip(vec1.addr or b"") == agent.ip
    assert len(vec1.addr or b"") == 4  # explicit IPv4 bind: 4-byte Addr
    assert vec1.port == GOSSIP_PORT
    assert vec1.state == NodeStateType.ALIVE
    assert vec1.vsn == DEFAULT_VSN
    assert decode_tags(vec1.meta) == AGENT_TAGS
    state = decode_serf_message(user)
    assert isinstance(state, MessagePushPull)
    assert "vec1" in state.status_ltimes
    assert len(state.events) == 512  # Go sends the whole event ring

    # The agent merged our state after replying: our fake node is now a member.
    def listed() -> dict[str, dict[str, Any]] | None:
        m = agent.members()
        return m if name in m else None

    members = _wait_for(name, listed)
    fake = members[name]
    assert fake["addr"] == f"{agent.peer_ip}:{node.port}"
    assert fake["tags"] == {"role": "fake", "n": name}


def _lzw_clears(buf: bytes) -> int:
    """How many clear codes a Go LZW stream holds (the leading one included)."""
    width, hi, acc, nbits, clears = 9, 257, 0, 0, 0
    for byte in buf:
        acc |= byte << nbits
        nbits += 8
        while nbits >= width:
            code = acc & ((1 << width) - 1)
            acc >>= width
            nbits -= width
            if code == 256:
                clears, width, hi = clears + 1, 9, 257
            elif code == 257:
                return clears
            else:
                hi += 1
                if hi >= 1 << width:
                    width, hi = (width, hi - 1) if width == 12 else (width + 1, hi)
    raise AssertionError("no EOF")


def test_big_compressed_push_pull(agent: Agent) -> None:
    # Random-looking tags keep the LZW busy enough to need mid-stream clears.
    rng = random.Random(1)
    nodes = [
        _fake_node(agent, f"big-{i:03d}", 20000 + i, id=rng.randbytes(20).hex()) for i in range(300)
    ]
    ours = encode_push_pull(False, nodes, _our_state(nodes))
    wire = encode_stream(ours, compress=True)
    assert len(ours) > 25_000 and len(wire) < len(ours) // 2

    t0 = time.perf_counter()
    lzw.compress(ours)
    assert time.perf_counter() - t0 < 0.1

    assert _lzw_clears(Compress.from_body(wire[1:]).buf or b"") > 2
    raw = _exchange(agent, wire)
    _assert_lzw_identical(raw)
    header, _, _ = decode_push_pull(_read(raw))
    assert header.join is False

    def all_big() -> dict[str, dict[str, Any]] | None:
        m = agent.members()
        return m if sum(1 for k in m if k.startswith("big-")) == 300 else None

    members = _wait_for("300 big-* members", all_big)
    assert members["big-299"]["addr"] == f"{agent.peer_ip}:20299"

    # A later push/pull reply lists them all, and its (large) LZW is byte-identical to ours.
    raw = _exchange(agent, encode_stream(encode_push_pull(False, [], b""), compress=True))
    _assert_lzw_identical(raw)
    assert _lzw_clears(Compress.from_body(raw[1:]).buf or b"") > 2  # Go also cleared mid-stream
    _, nodes_back, _ = decode_push_pull(_read(raw))
    assert {f"big-{i:03d}" for i in range(300)} <= {n.name for n in nodes_back}


def test_encrypted_udp_ping(encrypted_agent: Agent) -> None:
    a = encrypted_agent
    ring = GcmKeyring(ENCRYPT_KEY)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((a.peer_ip, 0))
        s.settimeout(0.2)
        ping = Ping(
            seq_no=99,
            node="vec2",
            source_addr=socket.inet_aton(a.peer_ip),
            source_port=s.getsockname()[1],
            source_node="pyvec",
        ).encode()

        def ack() -> Ack | None:
            s.sendto(encode_packet([ping], compress=True, crc=False, keyring=ring), (a.ip, 7946))
            try:
                data, _ = s.recvfrom(65536)
            except TimeoutError:
                return None
            assert data[0] == 1  # encryption version 1, no type byte on UDP
            msgs = [decode_message(m) for m in decode_packet(data, keyring=ring)]
            return next((m for m in msgs if isinstance(m, Ack) and m.seq_no == 99), None)

        _wait_for("encrypted UDP ack", ack)


def test_encrypted_push_pull(encrypted_agent: Agent) -> None:
    a = encrypted_agent
    ring = GcmKeyring(ENCRYPT_KEY)
    node = _fake_node(a, "fake-enc", 18000)
    ours = encode_push_pull(True, [node], _our_state([node]))
    raw = _exchange(a, encode_stream(ours, compress=True, keyring=ring))
    # [10][len u32][vsn 1][nonce][...]: Serf encrypts with version 1.
    assert raw[0] == MsgType.ENCRYPT and raw[5] == 1
    assert int.from_bytes(raw[1:5], "big") == len(raw) - 5
    r = StreamReader(keyring=ring)
    r.feed(raw)
    _, nodes, _ = decode_push_pull(r.message() or b"")
    assert "vec2" in {n.name for n in nodes}
    _wait_for("fake-enc", lambda: a.members().get("fake-enc"))


def test_encrypted_agent_refuses_plain_stream(encrypted_agent: Agent) -> None:
    raw = _exchange(encrypted_agent, encode_stream(encode_push_pull(False, [], b""), compress=True))
    # The refusal itself goes out through the agent's wrappers: encrypted, compressed [13].
    r = StreamReader(keyring=GcmKeyring(ENCRYPT_KEY))
    r.feed(raw)
    err = decode_message(r.message() or b"")
    assert err == ErrResp(error="Encryption is configured but remote state is not encrypted")


# memberlist 0.2.2 / serf 0.9.4 log lines that would mean it choked on our bytes.
_COMPLAINTS = (
    "Failed to decode",
    "Failed to decompress",
    "Failed to read remote state",
    "Failed push/pull merge",
    "Failed to receive",
    "failed to receive",
    "Received invalid msgType",
    "Message type (",
    "msg type (",
    "Compound request had",
    "Got invalid checksum",
    "Got ping for unexpected node",
    "Failed to merge",
)


def test_agent_did_not_complain(agent: Agent) -> None:
    # Runs last in this module: everything above must have been accepted silently.
    log = agent.log.read_text(errors="replace")
    bad = [line for line in log.splitlines() if any(c in line for c in _COMPLAINTS)]
    assert not bad, "\n".join(bad)
