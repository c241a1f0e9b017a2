"""Real-process test harness: Serf's msgpack RPC client, agent wrappers, addresses, waits.

Theory of operation
-------------------
Integration tests and the benchmark start real processes on loopback: the real
HashiCorp ``serf agent`` (Debian 0.9.4 at /usr/bin/serf) and our ``serfd``. Both speak
Serf's msgpack RPC ("IPC", PROTOCOL.md §4), so one small synchronous client,
``RPCClient``, drives and observes either of them over TCP or a Unix socket.

* ``AddressAllocator`` hands out whole ``127.A.B.0/24`` slices.  Each slice is
  reserved with an ``flock`` on a file under the temp dir, so two test runs (or a
  test run and the benchmark) on one machine never share addresses, and every agent
  gets its own IP with Serf's default ports (7946 gossip, 7373 RPC).
* ``SerfAgent`` / ``SerfdAgent`` wrap one process each.  They only ever signal the
  PID they spawned, and only while ``Popen`` says it is still ours (not yet
  reaped), so a recycled PID can never be hit.  Children also get
  ``PR_SET_PDEATHSIG=SIGKILL``: if the harness itself dies, they die with it.
* Waits use ``tests.support.wait_until``: bounded, returns the elapsed time.

Nothing here sleeps for a fixed "long enough"; every wait has a deadline.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import fcntl
import ipaddress
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Self

import msgpack

import serfctl.client as ctl
from tests.support import WaitTimeout, wait_until

SERF_BIN = "serf"
GOSSIP_PORT = 7946  # Serf's default bind port
RPC_PORT = 7373  # Serf's default RPC port

# memberlist DefaultLANConfig: SuspicionMult 4 x ProbeInterval 1 s x max(1, log10 N) is the
# minimum suspicion timeout; with few confirmers it starts at SuspicionMaxTimeoutMult 6 x
# that (24 s), see SERF-BASELINE.md.  Tests allow this minimum plus probe + slack.
SUSPICION_TIMEOUT_LAN = 4.0
PROBE_INTERVAL_LAN = 1.0


class RPCError(Exception):
    """The agent answered a command with a non-empty Error."""

    def __init__(self, command: str, error: str) -> None:
        super().__init__(f"{command}: {error}")
        self.command = command
        self.error = error


# --------------------------------------------------------------------------- addresses


@dataclasses.dataclass(frozen=True, slots=True)
class Slice:
    """One reserved 127.A.B.0/24; ``host(i)`` is 127.A.B.(i+1)."""

    a: int
    b: int

    @property
    def prefix(self) -> str:
        return f"127.{self.a}.{self.b}"

    def host(self, i: int) -> str:
        if not 0 <= i < 254:
            raise ValueError(f"host index {i} outside a /24")
        return f"{self.prefix}.{i + 1}"


def bindable(ip: str, ports: Iterable[int]) -> bool:
    """Whether every port is free on ip, for both TCP and UDP."""
    for port in ports:
        for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
            with socket.socket(socket.AF_INET, kind) as s:
                try:
                    s.bind((ip, port))
                except OSError:
                    return False
    return True


class AddressAllocator:
    """Hands out 127.A.B.0/24 slices with A in ``first_octets``, locked across processes."""

    def __init__(
        self,
        first_octets: range = range(100, 200),
        lock_dir: str | os.PathLike[str] | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.first_octets = first_octets
        self.lock_dir = Path(lock_dir or Path(tempfile.gettempdir()) / "serfd-harness-addrs")
        self.lock_dir.mkdir(parents=True, exist_ok=True)
        self._rng = rng or random.Random(os.getpid() ^ time.monotonic_ns())
        self._held: dict[Slice, int] = {}  # slice -> locked fd

    def allocate(self, probe_hosts: int = 4) -> Slice:
        """Reserve a fresh /24 whose first ``probe_hosts`` addresses have free ports."""
        candidates = [(a, b) for a in self.first_octets for b in range(256)]
        start = self._rng.randrange(len(candidates))
        for k in range(len(candidates)):
            a, b = candidates[(start + k) % len(candidates)]
            sl = Slice(a, b)
            if sl in self._held:
                continue
            fd = os.open(self.lock_dir / f"127.{a}.{b}.lock", os.O_RDWR | os.O_CREAT, 0o666)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(fd)
                continue
            if all(bindable(sl.host(i), (GOSSIP_PORT, RPC_PORT)) for i in range(probe_hosts)):
                self._held[sl] = fd
                return sl
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)
        raise RuntimeError("no free 127.x.y.0/24 slice left")

    def release(self, sl: Slice) -> None:
        fd = self._held.pop(sl, None)
        if fd is not None:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    def release_all(self) -> None:
        for sl in list(self._held):
            self.release(sl)


# --------------------------------------------------------------------------- RPC client


@dataclasses.dataclass(frozen=True, slots=True)
class Member:
    """A member as either RPC ``members`` or ``serf members -format=json`` reports it."""

    name: str
    addr: str  # IP text
    port: int
    tags: Mapping[str, str]
    status: str
    protocol: tuple[int, int, int] | None = None  # delegate (min, max, cur), as the CLI shows

    @classmethod
    def from_rpc(cls, m: Mapping[str, Any]) -> Member:
        raw = m.get("Addr")
        if isinstance(raw, (bytes, bytearray)) and len(raw) in (4, 16):
            addr = str(ipaddress.ip_address(bytes(raw)))
            if len(raw) == 16 and addr.startswith("::ffff:"):
                addr = addr.removeprefix("::ffff:")
        else:
            addr = str(raw)
        proto = None
        if "DelegateMin" in m:
            proto = (int(m["DelegateMin"]), int(m["DelegateMax"]), int(m["DelegateCur"]))
        return cls(
            name=str(m["Name"]),
            addr=addr,
            port=int(m["Port"]),
            tags=dict(m.get("Tags") or {}),
            status=str(m["Status"]),
            protocol=proto,
        )

    @classmethod
    def from_cli_json(cls, m: Mapping[str, Any]) -> Member:
        """One entry of ``serf members -format=json`` (``addr`` is "ip:port")."""
        host, _, _ = str(m["addr"]).rpartition(":")
        p = m.get("protocol") or {}
        proto = (int(p["min"]), int(p["max"]), int(p["version"])) if p else None
        return cls(
            name=str(m["name"]),
            addr=host.strip("[]"),
            port=int(m["port"]),
            tags=dict(m.get("tags") or {}),
            status=str(m["status"]),
            protocol=proto,
        )


# Commands that answer with a body after the header (PROTOCOL.md §4.3).
_BODY_COMMANDS = frozenset(
    {
        "join",
        "members",
        "members-filtered",
        "stats",
        "get-coordinate",
        "install-key",
        "use-key",
        "remove-key",
        "list-keys",
    }
)
def parse_addr(addr: str | tuple[str, int] | os.PathLike[str]) -> tuple[int, Any]:
    """ "host:port" / (host, port) -> TCP; a path (contains '/') -> Unix socket."""
    if isinstance(addr, tuple):
        return socket.AF_INET, addr
    text = os.fspath(addr)
    if "/" in text:
        return socket.AF_UNIX, text
    host, _, port = text.rpartition(":")
    return socket.AF_INET, (host.strip("[]"), int(port))


class RPCClient:
    """The tests' RPC client: serfctl's client (``serfctl.client.RPCClient``, as ``.client``)
    behind the harness's interface.

    Addresses are TCP ("ip:port", (host, port)) or a Unix socket path. ``timeout`` bounds each
    read; agent errors raise ``RPCError``, a lost or silent connection ``ConnectionError`` /
    ``TimeoutError`` (both OSError, as a raw socket would). ``handshake=False`` leaves the
    session unopened (to test what an agent answers before the handshake). Hostile-input tests
    (garbage, stalled readers, pipelined floods) use raw sockets instead: a well-behaved client
    cannot send what they send.
    """

    def __init__(
        self,
        addr: str | tuple[str, int] | os.PathLike[str],
        timeout: float = 5.0,
        auth_key: str | None = None,
        handshake: bool = True,
    ) -> None:
        self.addr = addr
        self.timeout = timeout
        family, sockaddr = parse_addr(addr)
        with _transport_errors():
            if not handshake:
                sock = socket.socket(family, socket.SOCK_STREAM)
                sock.settimeout(timeout)
                try:
                    sock.connect(sockaddr)
                except BaseException:
                    sock.close()
                    raise
                self.client = ctl.RPCClient(sock, name=str(addr))
            elif family == socket.AF_UNIX:
                self.client = ctl.RPCClient.unix(sockaddr, timeout=timeout)
                if auth_key is not None:
                    self.auth(auth_key)
            else:
                self.client = ctl.RPCClient.tcp(*sockaddr, auth_key=auth_key, timeout=timeout,
                                                connect_timeout=timeout)

    @property
    def sock(self) -> socket.socket:
        return self.client.sock

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.client.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def call(
        self, command: str, body: Mapping[str, Any] | None = None, timeout: float | None = None
    ) -> Any:
        """Send one command; return its body (or None); raise RPCError on a non-empty Error."""
        self.client.set_timeout(self.timeout if timeout is None else timeout)
        try:
            with _transport_errors():
                return self.client.call(command, body, expect_body=command in _BODY_COMMANDS)
        except ctl.AgentError as e:
            raise RPCError(command, str(e)) from None
        finally:
            self.client.set_timeout(self.timeout)

    # -- commands

    def handshake(self, version: int = 1) -> None:
        self.call("handshake", {"Version": version})

    def auth(self, key: str) -> None:
        self.call("auth", {"AuthKey": key})

    def members(self) -> list[Member]:
        return [Member.from_rpc(m) for m in self.call("members")["Members"] or []]

    def members_filtered(
        self, tags: Mapping[str, str] | None = None, status: str = "", name: str = ""
    ) -> list[Member]:
        body = {"Tags": dict(tags or {}), "Status": status, "Name": name}
        return [Member.from_rpc(m) for m in self.call("members-filtered", body)["Members"] or []]

    def join(self, addrs: Sequence[str], replay: bool = False, timeout: float = 15.0) -> int:
        return int(self.call("join", {"Existing": list(addrs), "Replay": replay}, timeout)["Num"])

    def tags(self, set_tags: Mapping[str, str] | None = None, delete: Sequence[str] = ()) -> None:
        self.call("tags", {"Tags": dict(set_tags or {}), "DeleteTags": list(delete)}, 10.0)

    def force_leave(self, node: str, prune: bool = False) -> None:
        self.call("force-leave", {"Node": node, "Prune": prune}, 15.0)

    def event(self, name: str, payload: bytes = b"", coalesce: bool = False) -> None:
        self.call("event", {"Name": name, "Payload": payload, "Coalesce": coalesce})

    def leave(self, timeout: float = 15.0) -> None:
        self.call("leave", None, timeout)

    def stats(self) -> dict[str, dict[str, str]]:
        return dict(self.call("stats"))


@contextlib.contextmanager
def _transport_errors() -> Iterator[None]:
    """serfctl's transport errors as the OSErrors a socket raises (the tests catch those)."""
    try:
        yield
    except ctl.ReplyTimeout as e:
        raise TimeoutError(str(e)) from None
    except (ctl.ConnectError, ctl.ConnectionClosed) as e:
        raise ConnectionError(str(e)) from None
    except ctl.AgentError:
        raise
    except ctl.ClientError as e:  # garbage or a bad header: the session is unusable
        raise ConnectionError(str(e)) from None


# --------------------------------------------------------------------------- processes


def _pdeathsig() -> None:  # runs in the child between fork and exec
    with contextlib.suppress(Exception):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG


def proc_rss_kib(pid: int) -> int:
    """VmRSS of ``pid`` in KiB (from /proc/PID/status)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


def proc_threads(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Threads:"):
            return int(line.split()[1])
    return 0


_CLK_TCK = os.sysconf("SC_CLK_TCK")


def proc_cpu_seconds(pid: int) -> float:
    """utime + stime of ``pid`` in seconds (from /proc/PID/stat)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()  # after "pid (comm) "
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK  # fields 14, 15 of stat(5)


class Agent:
    """One agent process (base of SerfAgent / SerfdAgent)."""

    kind = "agent"

    def __init__(
        self,
        name: str,
        ip: str,
        port: int = GOSSIP_PORT,
        rpc_port: int = RPC_PORT,
        tags: Mapping[str, str] | None = None,
        tmpdir: str | os.PathLike[str] | None = None,
    ) -> None:
        self.name = name
        self.ip = ip
        self.port = port
        self.rpc_port = rpc_port
        self.tags = dict(tags or {})
        self.tmpdir = Path(tmpdir or tempfile.mkdtemp(prefix="serfd-it-"))
        self.tmpdir.mkdir(parents=True, exist_ok=True)
        self.log_path = self.tmpdir / f"{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self._client: RPCClient | None = None

    # -- addresses

    @property
    def bind_addr(self) -> str:
        return f"{self.ip}:{self.port}"

    @property
    def rpc_addr(self) -> str:
        return f"{self.ip}:{self.rpc_port}"

    @property
    def rpc_target(self) -> str:
        """What ``RPCClient`` connects to by default."""
        return self.rpc_addr

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def command(self) -> list[str]:
        raise NotImplementedError

    # -- lifecycle

    def start(self) -> Agent:
        if self.proc is not None:
            raise RuntimeError(f"{self.name} already started")
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                self.command(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.tmpdir,
                start_new_session=True,  # a Ctrl-C on the test run must not reach it
                # Only the main thread spawns agents, while no other thread runs.
                preexec_fn=_pdeathsig,  # noqa: PLW1509
            )
        return self

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "<no log>"

    def wait_ready(self, timeout: float = 10.0) -> float:
        """Wait until the RPC answers a handshake and ``members``; return the elapsed time."""

        errors: list[Exception] = []

        def ready() -> bool:
            # An exited agent fails at once (retry_on=() below); an RPC error is "not yet".
            if not self.running():
                raise RuntimeError(
                    f"{self.name} exited with {self.proc.returncode if self.proc else None}:\n"
                    + self.log_tail()
                )
            try:
                with RPCClient(self.rpc_target, timeout=1.0) as c:
                    c.members()
            except Exception as exc:  # noqa: BLE001 - not up yet; named on timeout
                errors[:] = [exc]
                return False
            return True

        def failed() -> str:
            return (f"{self.kind} {self.name} RPC at {self.rpc_target} ready "
                    f"({errors[-1] if errors else None!r}); log tail:\n{self.log_tail()}")

        return wait_until(ready, timeout, 0.05, desc=failed, retry_on=())

    def _signal(self, sig: int) -> bool:
        # Popen.send_signal is a no-op once the child was reaped, so a recycled PID is safe.
        if self.proc is None or self.proc.poll() is not None:
            return False
        self.proc.send_signal(sig)
        return True

    def kill(self, timeout: float = 10.0) -> None:
        """SIGKILL the process we started and reap it."""
        self.close_client()
        if self._signal(signal.SIGKILL) and self.proc is not None:
            self.proc.wait(timeout)

    def interrupt(self, sig: int = signal.SIGINT) -> bool:
        """Send SIGINT (graceful leave) without waiting; False if it already exited."""
        self.close_client()
        return self._signal(sig)

    def wait_exit(self, timeout: float = 15.0) -> int:
        """Wait for the process to exit; on timeout SIGKILL it and raise ``WaitTimeout``."""
        if self.proc is None:
            raise RuntimeError(f"{self.name} never started")
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise WaitTimeout(f"{self.name} did not exit within {timeout} s") from None

    def stop_graceful(self, timeout: float = 15.0, sig: int = signal.SIGINT) -> int:
        """Send SIGINT (graceful leave) once and wait for exit; return the exit code."""
        self.interrupt(sig)
        return self.wait_exit(timeout)

    def cleanup(self) -> None:
        """Kill (if still running) and reap; safe to call many times."""
        with contextlib.suppress(Exception):
            self.kill()

    # -- RPC

    def client(self, timeout: float = 5.0) -> RPCClient:
        """A persistent RPC client (reconnected after errors)."""
        if self._client is None:
            self._client = RPCClient(self.rpc_target, timeout=timeout)
        return self._client

    def close_client(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    def _rpc(self, fn: Callable[[RPCClient], Any]) -> Any:
        try:
            return fn(self.client())
        except (OSError, ConnectionError, ValueError, msgpack.UnpackException):
            self.close_client()
            raise

    def members(self) -> list[Member]:
        return list(self._rpc(lambda c: c.members()))

    def member_map(self) -> dict[str, Member]:
        return {m.name: m for m in self.members()}

    def statuses(self) -> dict[str, str]:
        return {m.name: m.status for m in self.members()}

    def join(self, addrs: Sequence[str]) -> int:
        return int(self._rpc(lambda c: c.join(addrs)))

    def set_tags(
        self, set_tags: Mapping[str, str] | None = None, delete: Sequence[str] = ()
    ) -> None:
        self._rpc(lambda c: c.tags(set_tags, delete))

    def stats(self) -> dict[str, dict[str, str]]:
        return dict(self._rpc(lambda c: c.stats()))

    def force_leave(self, node: str) -> None:
        self._rpc(lambda c: c.force_leave(node))

    # -- /proc

    def rss_kib(self) -> int:
        assert self.pid is not None
        return proc_rss_kib(self.pid)

    def cpu_seconds(self) -> float:
        assert self.pid is not None
        return proc_cpu_seconds(self.pid)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name} {self.bind_addr} pid={self.pid}>"


class SerfAgent(Agent):
    """The real ``serf agent`` on loopback, logging at debug to ``tmpdir/NAME.log``."""

    kind = "serf"

    def __init__(
        self,
        name: str,
        ip: str,
        port: int = GOSSIP_PORT,
        rpc_port: int = RPC_PORT,
        tags: Mapping[str, str] | None = None,
        tmpdir: str | os.PathLike[str] | None = None,
        extra_args: Sequence[str] = (),
        serf_bin: str | None = None,
    ) -> None:
        super().__init__(name, ip, port, rpc_port, tags, tmpdir)
        self.extra_args = list(extra_args)
        self.serf_bin = serf_bin or shutil.which(SERF_BIN) or SERF_BIN

    def command(self) -> list[str]:
        cmd = [
            self.serf_bin,
            "agent",
            f"-node={self.name}",
            f"-bind={self.bind_addr}",
            f"-rpc-addr={self.rpc_addr}",
            "-log-level=debug",
            "-profile=lan",
        ]
        for k, v in self.tags.items():
            cmd += ["-tag", f"{k}={v}"]
        return cmd + self.extra_args


def _toml_str(s: str) -> str:
    return json.dumps(s)  # a JSON string is a valid TOML basic string


def _toml_key(k: str) -> str:
    bare = k and all(c.isalnum() or c in "-_" for c in k) and k.isascii()
    return k if bare else _toml_str(k)


class SerfdAgent(Agent):
    """``python -m serfd --config-dir DIR`` with one TOML drop-in written by the harness."""

    kind = "serfd"

    def __init__(
        self,
        name: str,
        ip: str,
        port: int = GOSSIP_PORT,
        rpc_port: int = RPC_PORT,
        tags: Mapping[str, str] | None = None,
        tmpdir: str | os.PathLike[str] | None = None,
        join: Sequence[str] = (),
        log_level: str = "debug",
        extra_toml: str = "",
        python: str | None = None,
    ) -> None:
        super().__init__(name, ip, port, rpc_port, tags, tmpdir)
        self.join_addrs = list(join)
        self.log_level = log_level
        self.extra_toml = extra_toml
        self.python = python or sys.executable
        self.home = self.tmpdir / name
        self.config_dir = self.home / "serfd.d"
        self.state_dir = self.home / "state"
        # AF_UNIX paths are limited to 107 bytes; fall back to a short temp dir.
        sock = self.home / "serfd.sock"
        if len(os.fsencode(sock)) > 100:
            sock = Path(tempfile.mkdtemp(prefix="sfd-")) / "serfd.sock"
        self.socket_path = sock

    def config_text(self) -> str:
        lines = [
            f"node_name = {_toml_str(self.name)}",
            f"bind = {_toml_str(self.bind_addr)}",
            f"log_level = {_toml_str(self.log_level)}",
            f"state_dir = {_toml_str(str(self.state_dir))}",
            "join = [" + ", ".join(_toml_str(a) for a in self.join_addrs) + "]",
            "",
            "[tags]",
            *(f"{_toml_key(k)} = {_toml_str(v)}" for k, v in self.tags.items()),
            "",
            "[rpc]",
            f"socket = {_toml_str(str(self.socket_path))}",
            f"tcp = {_toml_str(self.rpc_addr)}",
            "",
        ]
        # extra_toml's top-level keys must come before the first table header; its
        # tables go at the end.
        top: list[str] = []
        rest: list[str] = []
        for line in self.extra_toml.strip().splitlines():
            (rest if rest or line.lstrip().startswith("[") else top).append(line)
        text = "\n".join(top + lines)
        if rest:
            text += "\n" + "\n".join(rest) + "\n"
        return text

    def write_config(self) -> Path:
        self.config_dir.mkdir(parents=True, exist_ok=True)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        path = self.config_dir / "50-harness.toml"
        path.write_text(self.config_text())
        return path

    def command(self) -> list[str]:
        # -P: the agent's working directory (the cluster's tmpdir, where a node named
        # "serfd" has a directory) must not shadow the installed package.
        return [self.python, "-P", "-m", "serfd", "--config-dir", str(self.config_dir)]

    def start(self) -> Agent:
        self.write_config()
        return super().start()

    def serfctl(self, *args: str, timeout: float = 15.0) -> subprocess.CompletedProcess[str]:
        """Run ``python -m serfctl --socket PATH ARGS...``."""
        return subprocess.run(
            [self.python, "-m", "serfctl", "--socket", str(self.socket_path), *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )


def serf_cli(*args: str, timeout: float = 15.0) -> subprocess.CompletedProcess[str]:
    """Run the real ``serf`` CLI (e.g. ``serf_cli("members", "-rpc-addr=...")``)."""
    return subprocess.run(
        [shutil.which(SERF_BIN) or SERF_BIN, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def cli_members_json(stdout: str) -> list[Member]:
    """Members from ``serf members -format=json`` / ``serfctl members --format json`` output."""
    return [Member.from_cli_json(m) for m in json.loads(stdout)["members"]]


# --------------------------------------------------------------------------- cluster


class Cluster:
    """A set of agents on one reserved /24; ``close()`` kills every process it started."""

    def __init__(
        self,
        allocator: AddressAllocator,
        tmpdir: str | os.PathLike[str],
    ) -> None:
        self.allocator = allocator
        self.slice = allocator.allocate()
        self.tmpdir = Path(tmpdir)
        self.agents: list[Agent] = []
        self._next_host = 0

    def next_ip(self) -> str:
        ip = self.slice.host(self._next_host)
        self._next_host += 1
        return ip

    def _name(self, name: str | None) -> str:
        return name or f"node{len(self.agents)}"

    def serf(
        self,
        name: str | None = None,
        tags: Mapping[str, str] | None = None,
        extra_args: Sequence[str] = (),
        start: bool = True,
    ) -> SerfAgent:
        agent = SerfAgent(
            self._name(name), self.next_ip(), tags=tags, tmpdir=self.tmpdir, extra_args=extra_args
        )
        self.agents.append(agent)
        if start:
            agent.start()
        return agent

    def serfd(
        self,
        name: str | None = None,
        tags: Mapping[str, str] | None = None,
        join: Sequence[str] = (),
        start: bool = True,
        **kwargs: Any,
    ) -> SerfdAgent:
        agent = SerfdAgent(
            self._name(name), self.next_ip(), tags=tags, tmpdir=self.tmpdir, join=join, **kwargs
        )
        self.agents.append(agent)
        if start:
            agent.start()
        return agent

    def wait_ready(self, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        for a in self.agents:
            if a.proc is not None:
                a.wait_ready(max(0.5, deadline - time.monotonic()))

    def wait_statuses(
        self,
        observers: Iterable[Agent],
        expected: Mapping[str, str],
        timeout: float,
        interval: float = 0.02,
    ) -> float:
        """Wait until every observer lists each name in ``expected`` with that status."""
        pending = list(observers)

        seen: dict[str, dict[str, str]] = {}

        def check() -> bool:
            for a in list(pending):
                seen[a.name] = st = a.statuses()
                if all(st.get(n) == s for n, s in expected.items()):
                    pending.remove(a)
            if pending:
                raise AssertionError(
                    "; ".join(f"{a.name} sees {seen.get(a.name)}" for a in pending)
                )
            return True

        return wait_until(check, timeout, interval, desc=f"statuses {dict(expected)}")

    def wait_all_alive(self, agents: Sequence[Agent] | None = None, timeout: float = 10.0) -> float:
        agents = list(self.agents if agents is None else agents)
        return self.wait_statuses(agents, {a.name: "alive" for a in agents}, timeout)

    def log_tails(self, lines: int = 30) -> str:
        return "\n".join(
            f"----- {a.kind} {a.name} ({a.bind_addr}, pid {a.pid}, rc "
            f"{a.proc.returncode if a.proc else None}) {a.log_path}\n{a.log_tail(lines)}"
            for a in self.agents
        )

    def close(self) -> None:
        for a in self.agents:
            a.cleanup()
        self.allocator.release(self.slice)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@contextlib.contextmanager
def cluster(tmpdir: str | os.PathLike[str] | None = None) -> Iterator[Cluster]:
    """A one-off cluster outside pytest (benchmarks, scripts)."""
    alloc = AddressAllocator()
    tmp = Path(tmpdir) if tmpdir else Path(tempfile.mkdtemp(prefix="serfd-cluster-"))
    c = Cluster(alloc, tmp)
    try:
        yield c
    finally:
        c.close()
        alloc.release_all()
