"""The tests' shared toolkit: one bounded wait for threads and processes, one for asyncio.

Both poll a predicate until it is truthy and fail with ``WaitTimeout`` (an AssertionError)
naming what was awaited and the last value or exception seen. The timeout only turns a hang
into a failure; no test asserts on how long a wait took. Fixtures live in conftest.py.

Below the waits: small builders that several test modules share (a free loopback port, a
base drop-in for a real serfd process, an in-process agent on ephemeral ports) and `Raw`, an RPC
connection that sends and reads raw msgpack for the garbage and session-rule tests.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import msgpack

from serfd.agent.agent import Agent
from serfd.agent.config import Config
from serfd.agent.systemd import Notifier

# The RPC auth key of the ``auth_srv`` fixture (tests/conftest.py).
AUTH_KEY = "s3cret-token"


class WaitTimeout(AssertionError):
    """``wait_until`` or ``until`` ran out of time."""


Desc = str | Callable[[], str]


def _timed_out(predicate: Callable[[], Any], desc: Desc, timeout: float, last: Any) -> WaitTimeout:
    what = (desc() if callable(desc) else desc) or getattr(predicate, "__name__", "condition")
    return WaitTimeout(f"{what} not met within {timeout:.1f} s (last: {last!r})")


def wait_until(
    predicate: Callable[[], Any],
    timeout: float = 10.0,
    interval: float = 0.02,
    desc: Desc = "",
    retry_on: tuple[type[BaseException], ...] = (Exception,),
) -> float:
    """Poll ``predicate`` until it is truthy; return the elapsed seconds.

    An exception of a ``retry_on`` type counts as "not yet" (an agent that is still starting
    refuses connections); pass ``retry_on=()`` when a raising predicate must fail at once.
    ``desc`` names the condition in the timeout's message; a callable is asked then, so it
    can show the last output the predicate saw.
    """
    start = time.monotonic()
    deadline = start + timeout
    last: Any = None
    while True:
        try:
            last = predicate()
            if last:
                return time.monotonic() - start
        except retry_on as exc:
            last = exc
        now = time.monotonic()
        if now >= deadline:
            raise _timed_out(predicate, desc, timeout, last)
        time.sleep(min(interval, max(0.0, deadline - now)))


async def until(
    predicate: Callable[[], Any],
    desc: Desc = "",
    limit: float = 10.0,
    interval: float = 0.005,
) -> None:
    """``wait_until`` for a coroutine: poll without blocking the loop that does the work.

    ``limit`` is the timeout (ruff's ASYNC109 keeps ``timeout=`` for asyncio.timeout()).
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit
    while True:
        last = predicate()
        if last:
            return
        if loop.time() >= deadline:
            raise _timed_out(predicate, desc, limit, last)
        await asyncio.sleep(interval)


# ---------------------------------------------------------------------------- builders


def free_port() -> int:
    """A port free for both UDP and TCP on 127.0.0.1."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as t:
            t.bind(("127.0.0.1", 0))
            port = t.getsockname()[1]
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
                try:
                    u.bind(("127.0.0.1", port))
                except OSError:
                    continue
            return int(port)
    raise RuntimeError("no free port")


def write_base(d: Path, tmp: Path, port: int, **extra: str) -> None:
    """A drop-in ``10-base.toml`` in d for node sd1 on 127.0.0.1:port, state under tmp."""
    d.mkdir(exist_ok=True)
    lines = [
        'node_name = "sd1"',
        f'bind = "127.0.0.1:{port}"',
        f'state_dir = "{tmp}/state"',
        'profile = "local"',
        *(f"{k} = {v}" for k, v in extra.items()),
        "[tags]",
        'role = "a"',
        "[rpc]",
        f'socket = "{tmp}/serfd.sock"',
    ]
    (d / "10-base.toml").write_text("\n".join(lines) + "\n")


@contextlib.asynccontextmanager
async def running_agent(profile: str = "lan", compress: bool = True,
                        encrypt_key: str | None = None) -> AsyncIterator[Agent]:
    """A started in-process Agent (node a, ephemeral ports, a temporary state dir)."""
    with tempfile.TemporaryDirectory(prefix="ags") as d:
        cfg = Config(node_name="a", bind=("127.0.0.1", 0), state_dir=Path(d),
                     rpc_socket=Path(d) / "s.sock", log_level="warn", profile=profile,
                     enable_compression=compress, encrypt_key=encrypt_key)
        agent = Agent(cfg, notifier=Notifier())
        await agent.start()
        try:
            yield agent
        finally:
            await agent._shutdown()


class Raw:
    """A raw RPC connection: send msgpack objects or bytes, read objects or bytes."""

    def __init__(self, target: str | tuple[str, int], timeout: float = 5.0) -> None:
        if isinstance(target, str):
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        else:
            self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.connect(target)
        self.unpacker = msgpack.Unpacker(raw=False)
        self.seq = 0

    def send(self, *objs: Any) -> None:
        self.sock.sendall(b"".join(msgpack.packb(o, use_bin_type=True) for o in objs))

    def send_bytes(self, data: bytes) -> None:
        self.sock.sendall(data)

    def request(self, command: str, body: Any = None, *, has_body: bool | None = None) -> None:
        objs: list[Any] = [{"Command": command, "Seq": self.seq}]
        if body is not None or has_body:
            objs.append(body)
        self.seq += 1
        self.send(*objs)

    def read(self) -> Any:
        while True:
            try:
                return next(self.unpacker)
            except StopIteration:
                pass
            data = self.sock.recv(65536)
            if not data:
                raise EOFError("closed by server")
            self.unpacker.feed(data)

    def read_bytes(self, n: int) -> bytes:
        buf = b""
        while len(buf) < n:
            data = self.sock.recv(n - len(buf))
            if not data:
                break
            buf += data
        return buf

    def closed(self) -> bool:
        """True once the server has closed (any pending objects are discarded)."""
        try:
            while True:
                data = self.sock.recv(65536)
                if not data:
                    return True
        except TimeoutError:
            return False
        except ConnectionResetError:
            return True

    def handshake(self) -> None:
        self.request("handshake", {"Version": 1})
        assert self.read() == {"Error": "", "Seq": self.seq - 1}

    def close(self) -> None:
        self.sock.close()
