"""A fake serfd agent behind a real RPCServer, run on a background event loop.

Shared by test_rpc.py and test_serfctl.py: blocking test code talks to the server
over real sockets while the server runs in its own thread.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar, cast

from serfd.agent.rpc_server import AgentAPI, RPCError, RPCServer
from serfd.core.coordinate import Coordinate
from serfd.core.member import Member, MemberStatus

T = TypeVar("T")


def sample_members() -> list[Member]:
    """The four-node cluster of RPC-TRACES.md, after a leave and a failure."""
    return [
        Member("node0", "127.78.1.1", 7946, {"role": "web", "idx": "0"}),
        Member("node1", "127.78.1.2", 7946, {"role": "web", "idx": "1"}),
        Member("node2", "127.78.1.3", 7946, {"role": "db", "idx": "2"}, MemberStatus.LEFT),
        Member("node3", "127.78.1.4", 7946, {"role": "db", "idx": "3"}, MemberStatus.FAILED),
    ]


class FakeAgent:
    """Implements serfd.agent.rpc_server.AgentAPI and records every call."""

    def __init__(self, members: list[Member] | None = None) -> None:
        self.member_list = sample_members() if members is None else members
        self.tags: dict[str, str] = {"role": "web", "idx": "0"}
        self.calls: list[tuple[str, Any]] = []
        self.join_delay = 0.0
        self.left = threading.Event()
        self.coordinates: dict[str, Coordinate] = {}

    def members(self) -> list[Member]:
        return list(self.member_list)

    async def join(self, addrs: list[str], replay: bool) -> int:
        self.calls.append(("join", (addrs, replay)))
        if self.join_delay:
            await asyncio.sleep(self.join_delay)
        good = [a for a in addrs if not a.startswith("bad")]
        if not good:
            raise RPCError(
                f"{len(addrs)} error(s) occurred:\n\n"
                + "\n".join(f"* Failed to join {a}: dial tcp: refused" for a in addrs)
            )
        return len(good)

    async def leave(self) -> None:
        self.calls.append(("leave", None))
        self.left.set()

    async def force_leave(self, node: str, prune: bool) -> None:
        self.calls.append(("force-leave", (node, prune)))
        if node == "boom":
            raise RuntimeError("agent bug")
        if node not in {m.name for m in self.member_list}:
            raise RPCError("node not found")

    async def set_tags(self, tags: dict[str, str], delete: list[str]) -> None:
        self.calls.append(("tags", (tags, delete)))
        new = {k: v for k, v in self.tags.items() if k not in delete}
        new.update(tags)
        self.tags = new

    async def reset_tags(self, keys: list[str]) -> None:
        self.calls.append(("reset-tags", keys))

    def coordinate(self, node: str) -> Coordinate | None:
        self.calls.append(("get-coordinate", node))
        return self.coordinates.get(node)

    def stats(self) -> dict[str, dict[str, str]]:
        return {
            "agent": {"name": "node0"},
            "runtime": {"os": "linux", "arch": "amd64", "version": "python3"},
            "serf": {"members": str(len(self.member_list)), "encrypted": "false"},
            "tags": dict(self.tags),
        }


class ServerThread:
    """An RPCServer over a FakeAgent on its own loop thread (Unix socket + TCP)."""

    def __init__(self, socket_path: str, *, auth_key: str | None = None, **kw: Any) -> None:
        self.agent = FakeAgent()
        self.socket_path = socket_path
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        # The fake implements the commands test_rpc and test_serfctl drive; the others
        # (events, queries, streams, reload) are covered against the real Agent.
        self.server = RPCServer(cast(AgentAPI, self.agent), auth_key=auth_key, **kw)
        self.run(self.server.start_unix(socket_path))
        self.run(self.server.start_tcp("127.0.0.1", 0))
        addr = self.server.tcp_address
        assert addr is not None
        self.tcp = addr

    @property
    def rpc_addr(self) -> str:
        return f"{self.tcp[0]}:{self.tcp[1]}"

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 10.0) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.run(self.server.close())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()
