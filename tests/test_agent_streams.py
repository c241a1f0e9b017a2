"""The agent's TCP stream tasks (its GossipDriver's) are bounded: outbound exchanges it
opens for the core (push/pull, fallback pings, reconnects), inbound gossip connections,
and the bytes all stream reads hold together. What is refused is counted.

An in-process Agent on 127.0.0.1 (ephemeral ports, a temporary state directory); the
core's stream requests and the exchange itself are faked where a peer would be needed.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import signal
import socket
import tempfile
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

import serfd.agent.gossip as gossip_mod
from serfd.agent.agent import Agent
from serfd.agent.config import Config
from serfd.agent.gossip import MAX_INBOUND_STREAMS, MAX_OUTBOUND_STREAMS, GossipDriver
from serfd.agent.keys import MAX_KEY_CHANGES
from serfd.agent.systemd import Notifier
from serfd.core.keymanager import decode_key_response, request_payload
from serfd.core.query import IncomingQuery
from serfd.memberlist.swim import StreamKind, StreamRequest
from serfd.wire.framing import ENCRYPT_HEADER_SIZE, StreamReader, encode_user_stream
from serfd.wire.keyring import Keyring
from serfd.wire.messages import ErrResp, MsgType
from tests.support import running_agent, until


def driver(agent: Agent) -> GossipDriver:
    assert agent.gossip is not None
    return agent.gossip


def tcp_port(agent: Agent) -> int:
    return driver(agent).tcp_port


def test_outbound_streams_and_reconnects_are_capped() -> None:
    async def main() -> None:
        async with running_agent() as agent:
            gate = asyncio.Event()
            started: list[tuple[str, int]] = []

            async def stalled(host: str, port: int, plain: bytes, expect_reply: bool,
                              timeout: float,  # noqa: ASYNC109 - as _exchange
                              kind: StreamKind = StreamKind.USER) -> bytes | None:
                started.append((host, port))
                await gate.wait()
                return None

            gd = driver(agent)
            gd._exchange = stalled  # type: ignore[method-assign]
            now = agent._now()
            requests = [StreamRequest(10_000 + i, ("127.0.0.2", 7946), b"\x00", True,
                                      now + 3600.0, StreamKind.PING) for i in range(200)]
            # Reconnects are stream requests too, under the same cap.
            requests += [StreamRequest(20_000 + i, ("127.0.0.3", 7946), b"\x06", True,
                                       now + 3600.0, StreamKind.RECONNECT) for i in range(30)]
            replies: list[tuple[int, bytes | None, str]] = []
            once = [requests]
            agent.serf.streams_to_open = (  # type: ignore[method-assign]
                lambda: once.pop() if once else [])
            agent.serf.stream_outcome = (  # type: ignore[method-assign]
                lambda token, plain, now, error="": replies.append((token, plain, error)))
            agent._pump()
            for _ in range(10):
                await asyncio.sleep(0)
            assert len(started) == MAX_OUTBOUND_STREAMS
            assert gd._outbound_streams == MAX_OUTBOUND_STREAMS
            # The ones not opened failed at once, as far as the core is concerned.
            assert sorted(t for t, _, _ in replies) == [
                10_000 + i for i in range(MAX_OUTBOUND_STREAMS, 200)] + [
                20_000 + i for i in range(30)]
            assert {e for _, _, e in replies} == {"too many outbound streams"}
            assert agent.counters["tcp_outbound_too_many"] == 200 - MAX_OUTBOUND_STREAMS + 30
            stats = agent.stats()["serfd"]
            assert stats["dropped_tcp_outbound_too_many"] == str(200 - MAX_OUTBOUND_STREAMS + 30)
            gate.set()
            await until(lambda: gd._outbound_streams == 0, "streams to finish")
            assert len(replies) == 230

    asyncio.run(main())


def test_inbound_connections_beyond_the_cap_are_refused_and_counted() -> None:
    async def main() -> None:
        async with running_agent() as agent:
            port = tcp_port(agent)
            conns: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
            for _ in range(MAX_INBOUND_STREAMS):
                conns.append(await asyncio.open_connection("127.0.0.1", port))
            await until(lambda: driver(agent)._inbound_streams == MAX_INBOUND_STREAMS,
                        "held streams")
            extra = [await asyncio.open_connection("127.0.0.1", port) for _ in range(40)]
            await until(lambda: agent.counters.get("tcp_too_many", 0) == 40, "refusals")
            for r, _w in extra:  # closed by serfd at once, not held
                with contextlib.suppress(ConnectionResetError):
                    assert await r.read() == b""
            assert driver(agent)._inbound_streams == MAX_INBOUND_STREAMS
            for _r, w in conns + extra:
                w.close()
            await until(lambda: driver(agent)._inbound_streams == 0, "streams to close")

    asyncio.run(main())


def test_stream_reads_in_progress_share_one_byte_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(gossip_mod, "STREAM_BYTES_BUDGET", 300_000)

    async def main() -> None:
        async with running_agent() as agent:
            port = tcp_port(agent)
            # Three peers each start a 1 MB user message and send 120 KB of it.
            msg = encode_user_stream(b"u" * 1_000_000)
            conns = []
            for _ in range(3):
                r, w = await asyncio.open_connection("127.0.0.1", port)
                w.write(msg[:120_000])
                await w.drain()
                conns.append((r, w))
            await until(lambda: agent.counters.get("tcp_over_budget", 0) == 1, "budget refusal")
            assert driver(agent)._stream_bytes <= 300_000
            await until(lambda: driver(agent)._inbound_streams == 2, "the refused stream to end")
            for _r, w in conns:
                w.close()
            await until(lambda: driver(agent)._inbound_streams == 0, "streams to close")
            assert driver(agent)._stream_bytes == 0

    asyncio.run(main())


def test_a_peer_that_never_reads_our_reply_does_not_hold_the_stream() -> None:
    async def main() -> None:
        async with running_agent(profile="local", compress=False) as agent:  # TCPTimeout 1 s
            # Our reply (a push/pull of a big cluster, say) is more than the socket takes.
            agent.serf.receive_stream = (  # type: ignore[method-assign]
                lambda plain, addr, now: b"\x08" + b"r" * 8_000_000)
            port = tcp_port(agent)
            _r, w = await asyncio.open_connection("127.0.0.1", port)
            sock = w.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            w.write(encode_user_stream(b"hello"))
            await w.drain()
            await until(lambda: driver(agent)._inbound_streams == 1, "the stream to be served")
            # We never read. After its deadline, serfd gives up and aborts the connection:
            # no task is left serving it.
            def serving() -> int:
                return sum(1 for t in asyncio.all_tasks() if "_on_stream" in repr(t.get_coro()))

            assert serving() == 1
            await until(lambda: serving() == 0, "serfd to let go", limit=15.0)
            assert driver(agent)._inbound_streams == 0
            w.close()

    asyncio.run(main())


def test_key_changes_asked_by_peers_wait_in_a_bounded_line() -> None:
    async def main() -> None:
        with tempfile.TemporaryDirectory(prefix="agk") as d:
            key = base64.b64encode(bytes(range(16))).decode()
            cfg = Config(node_name="a", bind=("127.0.0.1", 0), state_dir=Path(d),
                         rpc_socket=Path(d) / "s.sock", log_level="warn", encrypt_key=key)
            agent = Agent(cfg, notifier=Notifier())
            await agent.start()
            try:
                answered: list[bytes] = []
                agent.serf.respond = (  # type: ignore[method-assign]
                    lambda q, payload, now: answered.append(payload))
                await agent.keys._lock.acquire()  # a rotation in progress holds it
                new = request_payload(bytes(range(1, 17)))
                out = [agent.keys.on_key_query("install-key", IncomingQuery(
                    7, i, "_serf_install-key", new, "peer", agent._now() + 60.0))
                    for i in range(MAX_KEY_CHANGES + 4)]
                assert out[:MAX_KEY_CHANGES] == [None] * MAX_KEY_CHANGES
                refused = [decode_key_response(o[1:]) for o in out[MAX_KEY_CHANGES:] if o]
                assert len(refused) == 4 and not any(r.result for r in refused)
                assert agent.counters["key_change_refused"] == 4
                agent.keys._lock.release()
                await until(lambda: len(answered) == MAX_KEY_CHANGES, "the waiting changes")
                assert agent.keys.changes_waiting == 0
                assert all(decode_key_response(a[1:]).result for a in answered)
            finally:
                await agent._shutdown()

    asyncio.run(main())


def test_a_stop_signal_during_start_up_ends_the_run_cleanly() -> None:
    async def main() -> int:
        with tempfile.TemporaryDirectory(prefix="ags") as d:
            cfg = Config(node_name="a", bind=("127.0.0.1", 0), state_dir=Path(d),
                         rpc_socket=Path(d) / "s.sock", log_level="warn")
            agent = Agent(cfg, notifier=Notifier())
            real_start = agent.start

            async def start_with_a_signal() -> None:
                agent._on_signal(signal.SIGTERM)  # as the loop would run it mid-start
                agent._on_sighup()  # ignored until started
                await real_start()

            agent.start = start_with_a_signal  # type: ignore[method-assign]
            code = await asyncio.wait_for(agent.run(), 30)
            udp = driver(agent)._udp
            assert udp is not None and udp.is_closing()
            return code

    assert asyncio.run(main()) == 0


def test_a_stream_we_cannot_decrypt_is_answered_with_the_reason() -> None:
    """A decryption failure is told by its type (DecryptError), whatever its text: even
    a bad version-0 padding (no "crypt" in the message) is refused with an error
    response, as memberlist answers a peer with another key."""
    key = bytes(range(16))

    async def main() -> None:
        async with running_agent(encrypt_key=base64.b64encode(key).decode()) as agent:
            nonce = bytes(12)
            plain = b"a" * 15 + bytes([200])  # padding byte larger than the message
            length = 1 + len(nonce) + len(plain) + 16
            header = bytes([MsgType.ENCRYPT]) + length.to_bytes(4, "big")
            assert len(header) == ENCRYPT_HEADER_SIZE
            blob = b"\x00" + nonce + AESGCM(key).encrypt(nonce, plain, header)
            reader, writer = await asyncio.open_connection("127.0.0.1", tcp_port(agent))
            writer.write(header + blob)
            await writer.drain()
            reply = await asyncio.wait_for(reader.read(), 10.0)
            writer.close()
            sr = StreamReader(keyring=Keyring([key]))
            sr.feed(reply)
            msg = sr.message()
            assert msg is not None and msg[0] == MsgType.ERR
            assert ErrResp.from_body(msg[1:]).error == "bad PKCS#7 padding"
            assert agent.counters.get("tcp_bad_message", 0) == 1

    asyncio.run(main())
