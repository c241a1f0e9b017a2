"""A small blocking client for Serf's msgpack RPC (serfd's Unix socket or any agent's TCP).

One request at a time: write the header (and body), read the response header and,
when the command defines one, its body. Used by ``serfctl`` and by the tests.
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Self

import msgpack

from serfd.rpc.protocol import (
    DEFAULT_RPC_PORT,
    ERRORS_WITHOUT_BODY,
    IPC_VERSION,
    BadRequest,
    Command,
    Coordinate,
    decode_coordinate_response,
    pack_request,
)

__all__ = [
    "DEFAULT_RPC_PORT",
    "AgentError",
    "ClientError",
    "ConnectError",
    "ConnectionClosed",
    "RPCClient",
    "RPCMember",
    "format_addr",
    "parse_host_port",
]



class ClientError(Exception):
    """Any failure talking to the agent."""


class ConnectError(ClientError):
    """Could not reach the agent (missing socket, refused, timeout)."""


class ConnectionClosed(ClientError):
    """The agent closed the connection before answering."""


class ReplyTimeout(ClientError):
    """No answer from the agent within the socket timeout."""


class AgentError(ClientError):
    """The agent answered with an error string in the response header."""


@dataclass(frozen=True, slots=True)
class RPCMember:
    """A member as the RPC ``members`` commands return it."""

    name: str
    addr: str  # IP as text ("" if the agent sent none)
    port: int
    tags: dict[str, str] = field(default_factory=dict)
    status: str = "alive"
    protocol_min: int = 0
    protocol_max: int = 0
    protocol_cur: int = 0
    delegate_min: int = 0
    delegate_max: int = 0
    delegate_cur: int = 0

    @classmethod
    def from_wire(cls, obj: dict[str, Any]) -> RPCMember:
        """Build from a decoded Serf RPC ``Member`` map."""
        raw = obj.get("Addr")
        addr = ""
        if isinstance(raw, bytes | str) and raw:
            data = raw if isinstance(raw, bytes) else raw.encode("latin-1")
            try:
                ip = ipaddress.ip_address(data)
                if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
                    ip = ip.ipv4_mapped
                addr = str(ip)
            except ValueError:
                addr = data.hex()
        return cls(
            name=str(obj.get("Name") or ""),
            addr=addr,
            port=int(obj.get("Port") or 0),
            tags=dict(obj.get("Tags") or {}),
            status=str(obj.get("Status") or ""),
            protocol_min=int(obj.get("ProtocolMin") or 0),
            protocol_max=int(obj.get("ProtocolMax") or 0),
            protocol_cur=int(obj.get("ProtocolCur") or 0),
            delegate_min=int(obj.get("DelegateMin") or 0),
            delegate_max=int(obj.get("DelegateMax") or 0),
            delegate_cur=int(obj.get("DelegateCur") or 0),
        )


def format_addr(ip: str, port: int) -> str:
    """host:port as Go's net.TCPAddr prints it ([v6]:port)."""
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


def parse_host_port(text: str, default_port: int = DEFAULT_RPC_PORT) -> tuple[str, int]:
    """'host:port', '[v6]:port' or 'host' → (host, port); ValueError if malformed."""
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise ValueError(f"bad address {text!r}")
        port_text = rest[1:]
    elif text.count(":") == 1:
        host, _, port_text = text.partition(":")
    else:
        host, port_text = text, ""
    if not host:
        raise ValueError(f"bad address {text!r}: no host")
    if not port_text:
        return host, default_port
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f"bad port in {text!r}")
    return host, int(port_text)


class RPCClient:
    """A connected, handshaken RPC session. Use :meth:`unix` or :meth:`tcp`."""

    def __init__(self, sock: socket.socket, *, name: str) -> None:
        self.sock = sock
        self.name = name  # for messages: the socket path or host:port
        self._unpacker = msgpack.Unpacker(raw=False)
        self._seq = 0

    # -- connecting --------------------------------------------------------

    @classmethod
    def unix(cls, path: str, *, timeout: float | None = 60.0) -> RPCClient:
        """Connect to a Unix socket and handshake."""
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        try:
            sock.connect(path)
        except FileNotFoundError:
            sock.close()
            raise ConnectError(f"socket {path} does not exist") from None
        except PermissionError:
            sock.close()
            raise ConnectError(f"permission denied on socket {path}") from None
        except ConnectionRefusedError:
            sock.close()
            raise ConnectError(f"nothing is listening on socket {path}") from None
        except OSError as e:
            sock.close()
            raise ConnectError(f"cannot connect to socket {path}: {e.strerror or e}") from None
        client = cls(sock, name=path)
        client._start(None)
        return client

    @classmethod
    def tcp(
        cls,
        host: str,
        port: int,
        *,
        auth_key: str | None = None,
        timeout: float | None = 60.0,
        connect_timeout: float = 10.0,
    ) -> RPCClient:
        """Connect over TCP, handshake, and authenticate when auth_key is given."""
        name = format_addr(host, port)
        try:
            sock = socket.create_connection((host, port), timeout=connect_timeout)
        except ConnectionRefusedError:
            raise ConnectError(f"connection refused by {name}") from None
        except TimeoutError:
            raise ConnectError(f"timed out connecting to {name}") from None
        except OSError as e:
            raise ConnectError(f"cannot connect to {name}: {e.strerror or e}") from None
        sock.settimeout(timeout)
        client = cls(sock, name=name)
        client._start(auth_key)
        return client

    def _start(self, auth_key: str | None) -> None:
        try:
            self.call(Command.HANDSHAKE, {"Version": IPC_VERSION})
            if auth_key:
                self.call(Command.AUTH, {"AuthKey": auth_key})
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Close the connection."""
        self.sock.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- the wire ----------------------------------------------------------

    def _read(self) -> Any:
        while True:
            try:
                return next(self._unpacker)
            except StopIteration:
                pass
            except ValueError as e:
                raise ClientError(f"garbage from the agent: {e}") from None
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                raise ReplyTimeout(f"timed out waiting for {self.name}") from None
            except OSError as e:
                raise ConnectionClosed(f"connection to {self.name} failed: {e}") from None
            if not data:
                raise ConnectionClosed("RPC connection closed by agent")
            self._unpacker.feed(data)

    def _request(self, command: str, body: Any) -> tuple[int, Any]:
        """Send one request; (its Seq, the response header as read)."""
        seq = self.send_request(command, body)
        return seq, self._read()

    def send_request(self, command: str, body: Any = None) -> int:
        """Send one request without reading its answer (pipelining); its Seq.

        The caller reads the answers itself (:meth:`read_message`), in order."""
        seq = self._seq
        self._seq += 1
        data = pack_request(command, seq, body)
        try:
            self.sock.sendall(data)
        except OSError as e:
            raise ConnectionClosed(f"connection to {self.name} failed: {e}") from None
        return seq

    def read_message(self) -> Any:
        """The next msgpack object from the agent (a header or a body), as sent."""
        return self._read()

    def call(self, command: str, body: Any = None, *, expect_body: bool = False) -> Any:
        """One request; the response body (or None). AgentError on an error header."""
        seq, header = self._request(command, body)
        if not isinstance(header, dict):
            raise ClientError(f"bad response header from the agent: {header!r}")
        error = header.get("Error") or ""
        if header.get("Seq") != seq:
            raise ClientError(f"response Seq {header.get('Seq')!r}, expected {seq}")
        result = None
        if expect_body and error not in ERRORS_WITHOUT_BODY:
            result = self._read()
        if error:
            raise AgentError(error)
        return result

    def call_keeping_body(self, command: str, body: Any = None) -> tuple[str, Any]:
        """One request whose body comes even with an error (the key commands):
        (error text or "", body)."""
        seq, header = self._request(command, body)
        if not isinstance(header, dict) or header.get("Seq") != seq:
            raise ClientError(f"bad response header from the agent: {header!r}")
        error = str(header.get("Error") or "")
        if error in ERRORS_WITHOUT_BODY:
            raise AgentError(error)
        return error, self._read()

    # -- commands ----------------------------------------------------------

    def members(self) -> list[RPCMember]:
        """All members the agent knows."""
        resp = self.call(Command.MEMBERS, expect_body=True)
        return [RPCMember.from_wire(m) for m in (resp or {}).get("Members") or []]

    def members_filtered(
        self, tags: dict[str, str] | None = None, status: str = "", name: str = ""
    ) -> list[RPCMember]:
        """Members matching anchored regexes (what ``serf members`` uses)."""
        body = {"Tags": tags or {}, "Status": status, "Name": name}
        resp = self.call(Command.MEMBERS_FILTERED, body, expect_body=True)
        return [RPCMember.from_wire(m) for m in (resp or {}).get("Members") or []]

    def join(self, addrs: list[str], replay: bool = False) -> int:
        """Ask the agent to join; the number of nodes contacted."""
        resp = self.call(Command.JOIN, {"Existing": addrs, "Replay": replay}, expect_body=True)
        return int((resp or {}).get("Num") or 0)

    def leave(self) -> None:
        """Graceful leave; the agent shuts down afterwards."""
        self.call(Command.LEAVE)

    def force_leave(self, node: str, prune: bool = False) -> None:
        """Force a (failed) member into the left state."""
        self.call(Command.FORCE_LEAVE, {"Node": node, "Prune": prune})

    def update_tags(self, tags: dict[str, str], delete: list[str]) -> None:
        """Set and delete the agent's tags."""
        self.call(Command.TAGS, {"Tags": tags, "DeleteTags": delete})

    def reset_tags(self, keys: list[str]) -> None:
        """serfd only: drop runtime tag changes of keys (none: all), back to [tags]."""
        self.call(Command.RESET_TAGS, {"Keys": keys})

    def stats(self) -> dict[str, dict[str, str]]:
        """The agent's stats map."""
        resp = self.call(Command.STATS, expect_body=True)
        return resp if isinstance(resp, dict) else {}

    def get_coordinate(self, node: str) -> Coordinate | None:
        """The agent's cached coordinate for ``node``; None when it has none (Serf's
        client reads Ok)."""
        resp = self.call(Command.GET_COORDINATE, {"Node": node}, expect_body=True)
        try:
            return decode_coordinate_response(resp)
        except BadRequest as e:
            raise ClientError(f"bad get-coordinate answer: {e}") from None

    def event(self, name: str, payload: bytes, coalesce: bool) -> None:
        """Send a user event."""
        self.call(Command.EVENT, {"Name": name, "Payload": payload, "Coalesce": coalesce})

    # -- streams: one request, then records (header with the request's Seq + body) --

    def open_stream(self, command: str, body: Any) -> int:
        """Send a streaming request (stream, monitor, query); its Seq once accepted."""
        seq = self._seq
        self.call(command, body)
        return seq

    def read_record(self) -> tuple[int, Any]:
        """The next stream record: (Seq, body)."""
        header = self._read()
        if not isinstance(header, dict):
            raise ClientError(f"bad record header from the agent: {header!r}")
        if header.get("Error"):
            raise AgentError(str(header["Error"]))
        return int(header.get("Seq") or 0), self._read()

    def stop(self, seq: int) -> None:
        """End a stream or monitor (the answer is not awaited: records may be in flight)."""
        data = pack_request(Command.STOP, self._seq, {"Stop": seq})
        self._seq += 1
        try:
            self.sock.sendall(data)
        except OSError as e:
            raise ConnectionClosed(f"connection to {self.name} failed: {e}") from None

    def set_timeout(self, timeout: float | None) -> None:
        self.sock.settimeout(timeout)

    def reload(self) -> None:
        """serfd only: re-read the config; returns once applied (AgentError: the errors)."""
        self.call(Command.RELOAD)
