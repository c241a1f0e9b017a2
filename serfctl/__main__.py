"""serfctl: control serfd (or any Serf agent) over its RPC; output as the ``serf`` CLI prints it.

Exit status: 0 success, 1 agent or connection error (one line on stderr), 2 bad usage.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

from serfctl.client import (
    AgentError,
    ClientError,
    ConnectError,
    RPCClient,
    RPCMember,
    format_addr,
    parse_host_port,
)
from serfd.rpc.protocol import Command

DEFAULT_SOCKET = "/run/serfd/serfd.sock"


# ---------------------------------------------------------------------------
# Output formats, as Serf's CLI prints them.


def columnize(rows: list[list[str]]) -> str:
    """ryanuber/columnize SimpleFormat: cells trimmed, columns padded, two-space glue."""
    # Serf joins the cells with "|" and columnize splits them again: a "|" inside a
    # value starts a new column there too; we keep that quirk.
    split = [[c.strip() for c in "|".join(row).split("|")] for row in rows]
    widths: list[int] = []
    for cells in split:
        for i, c in enumerate(cells):
            if i == len(widths):
                widths.append(len(c))
            else:
                widths[i] = max(widths[i], len(c))
    lines = []
    for cells in split:
        head = "".join(c.ljust(widths[i]) + "  " for i, c in enumerate(cells[:-1]))
        lines.append(head + cells[-1])
    return "\n".join(lines)


class GoStruct(dict[str, Any]):
    """A Go struct for :func:`go_json`: fields keep their order (maps are sorted)."""


def go_json(obj: Any, indent: str = "  ", level: int = 0) -> str:
    """Go's json.MarshalIndent(obj, "", indent) for dicts, lists, str, int, bool, None."""
    pad = indent * (level + 1)
    if isinstance(obj, dict):
        if not obj:
            return "{}"
        keys = (
            list(obj) if isinstance(obj, GoStruct) else sorted(obj, key=lambda k: str(k).encode())
        )
        items = [f"{pad}{_go_str(str(k))}: {go_json(obj[k], indent, level + 1)}" for k in keys]
        return "{\n" + ",\n".join(items) + "\n" + indent * level + "}"
    if isinstance(obj, list | tuple):
        if not obj:
            return "[]"
        items = [pad + go_json(v, indent, level + 1) for v in obj]
        return "[\n" + ",\n".join(items) + "\n" + indent * level + "]"
    if obj is None:
        return "null"
    if isinstance(obj, bool):
        return "true" if obj else "false"
    if isinstance(obj, int):
        return str(obj)
    return _go_str(str(obj))


_GO_ESCAPES = {'"': '\\"', "\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _go_str(s: str) -> str:
    # Go (1.19) escapes " \ \n \r \t by name, other controls and the HTML-sensitive
    # < > & plus U+2028/U+2029 as \u00XX; everything else stays UTF-8.
    out = []
    for ch in s:
        if ch in _GO_ESCAPES:
            out.append(_GO_ESCAPES[ch])
        elif ch < " " or ch in "<>&\u2028\u2029":
            out.append(f"\\u{ord(ch):04x}")
        elif "\ud800" <= ch <= "\udfff":  # unpaired surrogate (undecodable input)
            out.append("\ufffd")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def _tags_text(tags: dict[str, str]) -> str:
    # Serf prints Go map order (random); we print sorted so output is stable.
    return ",".join(f"{k}={v}" for k, v in sorted(tags.items()))


def members_text(members: list[RPCMember], detailed: bool = False) -> str:
    """``serf members`` text output."""
    rows = []
    for m in members:
        row = [m.name, format_addr(m.addr, m.port), m.status, _tags_text(m.tags)]
        if detailed:
            row += [
                f"Protocol Version: {m.delegate_cur}",
                f"Available Protocol Range: [{m.delegate_min}, {m.delegate_max}]",
            ]
        rows.append(row)
    return columnize(rows).strip()


def members_json(members: list[RPCMember]) -> str:
    """``serf members -format=json`` output (protocol = Serf's delegate versions)."""
    out = [
        GoStruct(
            name=m.name,
            addr=format_addr(m.addr, m.port),
            port=m.port,
            tags=m.tags,
            status=m.status,
            protocol={"min": m.delegate_min, "max": m.delegate_max, "version": m.delegate_cur},
        )
        for m in members
    ]
    return go_json(GoStruct(members=out or None))  # Go marshals an empty slice as null


def info_text(stats: dict[str, dict[str, str]]) -> str:
    """``serf info`` text output: sections and keys sorted."""
    lines = []
    for section in sorted(stats):
        lines.append(f"{section}:")
        values = stats[section] or {}
        for key in sorted(values):
            lines.append(f"\t{key} = {values[key]}")
    return "\n".join(lines).strip()


# ---------------------------------------------------------------------------
# Command line.


class _Usage(Exception):
    """Bad usage found after parsing (exit 2)."""


def _kv(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"Invalid tag: '{text}' (want KEY=VALUE)")
    return key, value


def _connection_options(parser: argparse.ArgumentParser, suppress: bool) -> None:
    default = argparse.SUPPRESS if suppress else None
    group = parser.add_mutually_exclusive_group()
    group.add_argument(
        "--socket",
        metavar="PATH",
        default=default,
        help=f"serfd's Unix socket (default: $SERFD_SOCKET or {DEFAULT_SOCKET})",
    )
    group.add_argument(
        "--rpc-addr",
        metavar="HOST:PORT",
        default=default,
        help="a Serf agent's TCP RPC address instead (default: $SERF_RPC_ADDR)",
    )
    parser.add_argument(
        "--rpc-auth",
        metavar="KEY",
        default=default,
        help="RPC auth token for --rpc-addr (default: $SERF_RPC_AUTH)",
    )


def build_parser() -> argparse.ArgumentParser:
    """The serfctl argument parser."""
    parser = argparse.ArgumentParser(
        prog="serfctl",
        description="Control serfd, or any Serf agent over its RPC.",
        epilog="Connection: --socket, else --rpc-addr, else $SERF_RPC_ADDR, "
        f"else $SERFD_SOCKET, else {DEFAULT_SOCKET}.",
    )
    _connection_options(parser, suppress=False)
    common = argparse.ArgumentParser(add_help=False)
    _connection_options(common, suppress=True)  # also accepted after the command
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("members", parents=[common], help="list the cluster's members")
    p.add_argument("--status", default="", metavar="REGEX", help="filter on status")
    p.add_argument(
        "--tag",
        action="append",
        type=_kv,
        default=[],
        metavar="KEY=REGEX",
        help="filter on a tag (repeatable)",
    )
    p.add_argument("--name", default="", metavar="REGEX", help="filter on the node name")
    p.add_argument("--format", choices=("text", "json"), default="text")
    p.add_argument("--detailed", action="store_true", help="show protocol versions")

    p = sub.add_parser("join", parents=[common], help="join a cluster via ADDR")
    p.add_argument("--replay", action="store_true", help="replay past user events")
    p.add_argument("addrs", nargs="+", metavar="ADDR")

    sub.add_parser("leave", parents=[common], help="leave gracefully and stop the agent")

    p = sub.add_parser("force-leave", parents=[common], help="force a member into 'left'")
    p.add_argument("--prune", action="store_true", help="forget the member at once")
    p.add_argument("node", metavar="NODE")

    p = sub.add_parser("tags", parents=[common],
                       help="set, delete or reset the agent's tags (kept across restarts)")
    p.add_argument(
        "--set", action="append", type=_kv, default=[], metavar="KEY=VALUE", dest="set_tags"
    )
    p.add_argument("--delete", action="append", default=[], metavar="KEY")
    p.add_argument("--reset", nargs="*", default=None, metavar="KEY",
                   help="serfd only: drop the runtime changes of these tags (none given: of "
                   "all), back to the configuration's [tags]")

    p = sub.add_parser("info", parents=[common], help="show the agent's stats")
    p.add_argument("--format", choices=("text", "json"), default="text")

    p = sub.add_parser("event", parents=[common], help="send a custom user event")
    p.add_argument("--coalesce", type=_bool, default=True, metavar="true|false",
                   help="let nodes coalesce it with later events of the name (default true)")
    p.add_argument("name", metavar="NAME")
    p.add_argument("payload", nargs="?", default=None, metavar="PAYLOAD|-",
                   help="the payload, or - to read it from stdin")

    p = sub.add_parser("query", parents=[common], help="send a query and print the answers")
    p.add_argument("--node", action="append", default=[], metavar="NAME",
                   help="only this node answers (repeatable)")
    p.add_argument("--tag", action="append", type=_kv, default=[], metavar="KEY=REGEX",
                   help="only nodes whose tag matches (repeatable)")
    p.add_argument("--timeout", type=_duration, default=0.0, metavar="DURATION",
                   help="e.g. 5s (default: Serf's formula for the cluster size)")
    p.add_argument("--no-ack", action="store_true", help="do not ask for acks")
    p.add_argument("--relay-factor", type=int, default=0, metavar="N",
                   help="also send each answer via N other members")
    p.add_argument("--format", choices=("text", "json"), default="text")
    p.add_argument("name", metavar="NAME")
    p.add_argument("payload", nargs="?", default=None, metavar="PAYLOAD|-")

    p = sub.add_parser("monitor", parents=[common], help="stream the agent's log")
    p.add_argument("--log-level", default="INFO", metavar="LEVEL",
                   help="trace, debug, info, warn or err (default info)")

    p = sub.add_parser("stream", parents=[common], help="print each event as one JSON line")
    p.add_argument("--type", default="*", metavar="FILTER",
                   help="e.g. member-join,user:deploy,query (default *)")

    p = sub.add_parser("reachability", parents=[common], help="ping every member via a query")
    p.add_argument("--verbose", action="store_true", help="print each ack and the timing")

    p = sub.add_parser("rtt", parents=[common],
                       help="estimate the round-trip time between two nodes (default: this "
                       "one) from their network coordinates")
    p.add_argument("nodes", nargs="*", metavar="NODE", help="one or two node names")
    p.set_defaults(rtt_help=p.format_help())

    p = sub.add_parser("keys", parents=[common],
                       help="install, use, remove or list the cluster's encryption keys")
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--install", metavar="KEY", help="install a new key on every member")
    g.add_argument("--use", metavar="KEY", help="make an installed key the primary everywhere")
    g.add_argument("--remove", metavar="KEY", help="remove a (non-primary) key everywhere")
    g.add_argument("--list", action="store_true", help="list the keys installed in the cluster")

    sub.add_parser("keygen", help="print a new random 32-byte encryption key (no agent needed)")

    sub.add_parser("version", help="print serfctl's version and the Serf protocol range "
                   "(no agent needed)")

    sub.add_parser(
        "reload",
        parents=[common],
        help="make serfd re-read its config; waits until it is applied or refused",
    )
    return parser


def version_text() -> str:
    """``serf version``'s lines, for serfctl: its version, then the Serf (delegate)
    protocol versions it and serfd speak."""
    from serfd import __version__
    from serfd.wire.messages import SERF_PROTOCOL_MAX, SERF_PROTOCOL_MIN

    return (f"serfctl {__version__}\n"
            f"Agent Protocol: {SERF_PROTOCOL_MAX} (Understands back to: {SERF_PROTOCOL_MIN})")


def _connect(args: argparse.Namespace) -> RPCClient:
    socket_path = getattr(args, "socket", None)
    rpc_addr = getattr(args, "rpc_addr", None)
    if socket_path is None and rpc_addr is None:
        rpc_addr = os.environ.get("SERF_RPC_ADDR") or None
        if rpc_addr is None:
            socket_path = os.environ.get("SERFD_SOCKET") or DEFAULT_SOCKET
    if rpc_addr is not None:
        try:
            host, port = parse_host_port(rpc_addr)
        except ValueError as e:
            raise _Usage(f"--rpc-addr: {e}") from None
        auth = getattr(args, "rpc_auth", None)
        if auth is None:
            auth = os.environ.get("SERF_RPC_AUTH") or None
        try:
            return RPCClient.tcp(host, port, auth_key=auth)
        except ClientError as e:  # includes a refused handshake or auth token
            raise ConnectError(f"Error connecting to Serf agent at {rpc_addr}: {e}") from None
    assert socket_path is not None
    try:
        return RPCClient.unix(socket_path)
    except ConnectError as e:
        raise ConnectError(
            f"Error connecting to serfd: {e} (is serfd running? try: systemctl status serfd)"
        ) from None
    except ClientError as e:
        raise ConnectError(f"Error connecting to serfd at {socket_path}: {e}") from None


def _members(c: RPCClient, args: argparse.Namespace) -> str:
    try:
        members = c.members_filtered(dict(args.tag), args.status, args.name)
    except ClientError as e:
        raise ClientError(f"Error retrieving members: {e}") from None
    if args.format == "json":
        return members_json(members)
    return members_text(members, args.detailed)


def _join(c: RPCClient, args: argparse.Namespace) -> str:
    try:
        n = c.join(args.addrs, args.replay)
    except ClientError as e:
        raise ClientError(f"Error joining the cluster: {e}") from None
    return f"Successfully joined cluster by contacting {n} nodes."


def _leave(c: RPCClient, args: argparse.Namespace) -> str:
    try:
        c.leave()
    except ClientError as e:
        raise ClientError(f"Error leaving: {e}") from None
    return "Graceful leave complete"


def _force_leave(c: RPCClient, args: argparse.Namespace) -> str | None:
    try:
        c.force_leave(args.node, args.prune)
    except ClientError as e:
        raise ClientError(f"Error force leaving: {e}") from None
    return None  # serf prints nothing here


def _tags(c: RPCClient, args: argparse.Namespace) -> str:
    if args.reset is not None:
        try:
            c.reset_tags(args.reset)
        except ClientError as e:
            raise ClientError(f"Error resetting tags: {e}") from None
        return "Successfully reset agent tags to the configuration"
    try:
        c.update_tags(dict(args.set_tags), args.delete)
    except ClientError as e:
        raise ClientError(f"Error setting tags: {e}") from None
    return "Successfully updated agent tags"


def _info(c: RPCClient, args: argparse.Namespace) -> str:
    try:
        stats = c.stats()
    except ClientError as e:
        raise ClientError(f"Error querying agent: {e}") from None
    return go_json(stats) if args.format == "json" else info_text(stats)


def _reload(c: RPCClient, args: argparse.Namespace) -> str:
    try:
        c.reload()
    except AgentError as e:
        if str(e) == "Unsupported command":
            raise ClientError("Error reloading: this agent has no reload command "
                              "(a Serf agent? send it SIGHUP)") from None
        # Each config error on its own line, as serfd --check-config prints them.
        print("Error reloading: the new configuration is invalid; serfd keeps running "
              "the previous one:", file=sys.stderr)
        for line in str(e).splitlines():
            print(f"  {line}", file=sys.stderr)
        raise SystemExit(1) from None
    except ClientError as e:
        raise ClientError(f"Error reloading: {e}") from None
    return "Configuration reloaded"


def _rtt(c: RPCClient, args: argparse.Namespace) -> str:
    """``serf rtt``: the second node defaults to the agent's own name."""
    nodes = list(args.nodes)
    if len(nodes) == 1:
        try:
            stats = c.stats()
        except ClientError as e:
            raise ClientError(f"Error querying agent: {e}") from None
        nodes.append(stats.get("agent", {}).get("name", ""))
    elif len(nodes) != 2:
        print(f"One or two node names must be specified\n\n{args.rtt_help}", file=sys.stderr,
              end="")
        raise SystemExit(1)
    coords = []
    for node in nodes:
        try:
            coord = c.get_coordinate(node)
        except ClientError as e:
            raise ClientError(f"Error getting coordinates: {e}") from None
        if coord is None:
            raise ClientError(f"Could not find a coordinate for node {json.dumps(node)}")
        coords.append(coord)
    try:
        ms = coords[0].distance_seconds(coords[1]) * 1000.0
    except ValueError as e:  # other dimensionality (Serf's client panics)
        raise ClientError(f"Error getting coordinates: {e}") from None
    return f"Estimated {nodes[0]} <-> {nodes[1]} rtt: {ms:.3f} ms"


def _bool(text: str) -> bool:
    low = text.lower()
    if low in ("true", "1", "t", "yes"):
        return True
    if low in ("false", "0", "f", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def _duration(text: str) -> float:
    from serfd.base.duration import parse_duration

    try:
        return parse_duration(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _payload(arg: str | None) -> bytes:
    if arg is None:
        return b""
    if arg == "-":
        return sys.stdin.buffer.read()
    return os.fsencode(arg)


def _event(c: RPCClient, args: argparse.Namespace) -> str:
    try:
        c.event(args.name, _payload(args.payload), args.coalesce)
    except ClientError as e:
        raise ClientError(f"Error sending event: {e}") from None
    return f"Event '{args.name}' dispatched! Coalescing enabled: {str(args.coalesce).lower()}"


def _print(line: str) -> None:
    print(line, flush=True)


def _query(c: RPCClient, args: argparse.Namespace) -> str | None:
    if not 0 <= args.relay_factor <= 255:
        raise _Usage("Relay factor must be between 0 and 255")
    body = {
        "FilterNodes": list(args.node),
        "FilterTags": dict(args.tag),
        "RequestAck": not args.no_ack,
        "RelayFactor": args.relay_factor,
        "Timeout": int(args.timeout * 1e9),
        "Name": args.name,
        "Payload": _payload(args.payload),
    }
    c.set_timeout(None)
    try:
        seq = c.open_stream(Command.QUERY, body)
    except ClientError as e:
        raise ClientError(f"Error sending query: {e}") from None
    text = args.format == "text"
    if text:
        _print(f"Query '{args.name}' dispatched")
    acks: list[str] = []
    responses: dict[str, str] = {}
    while True:
        rseq, rec = c.read_record()
        if rseq != seq or not isinstance(rec, dict):
            continue
        kind, sender = rec.get("Type"), str(rec.get("From") or "")
        payload = rec.get("Payload") or b""
        if isinstance(payload, str):
            payload = payload.encode()
        if kind == "ack":
            acks.append(sender)
            if text:
                _print(f"Ack from '{sender}'")
        elif kind == "response":
            responses[sender] = payload.decode("utf-8", "replace")
            if text:
                shown = payload[:-1] if payload.endswith(b"\n") else payload
                _print(f"Response from '{sender}': {shown.decode('utf-8', 'replace')}")
        elif kind == "done":
            break
    if not text:
        return go_json(GoStruct(Acks=acks or None, Responses=responses))
    if not args.no_ack:
        _print(f"Total Acks: {len(acks)}")
    return f"Total Responses: {len(responses)}"


def _follow(c: RPCClient, command: str, body: Any, show: Callable[[Any], str | None]) -> None:
    c.set_timeout(None)
    seq = c.open_stream(command, body)
    try:
        while True:
            rseq, rec = c.read_record()
            if rseq == seq and isinstance(rec, dict):
                line = show(rec)
                if line is not None:
                    _print(line)
    except KeyboardInterrupt:
        with contextlib.suppress(ClientError):
            c.stop(seq)


def _monitor(c: RPCClient, args: argparse.Namespace) -> None:
    try:
        _follow(c, "monitor", {"LogLevel": args.log_level.upper()}, lambda r: r.get("Log"))
    except AgentError as e:
        raise ClientError(f"Error starting monitor: {e}") from None


def _stream_line(rec: dict[str, Any]) -> str:
    out: dict[str, Any] = {"event": rec.get("Event")}
    if "Members" in rec:
        out["members"] = [
            {"name": m.name, "addr": m.addr, "port": m.port, "tags": m.tags, "status": m.status}
            for m in (RPCMember.from_wire(x) for x in rec.get("Members") or [])
        ]
    else:
        for key in ("ID", "LTime", "Name", "Coalesce"):
            if key in rec:
                out[key.lower()] = rec[key]
        payload = rec.get("Payload") or b""
        if isinstance(payload, str):
            payload = payload.encode()
        out["payload"] = payload.decode("utf-8", "replace")
        out["payload_base64"] = base64.b64encode(payload).decode()
    return json.dumps(out, separators=(",", ":"), ensure_ascii=False)


def _stream(c: RPCClient, args: argparse.Namespace) -> None:
    try:
        _follow(c, "stream", {"Type": args.type}, _stream_line)
    except AgentError as e:
        raise ClientError(f"Error starting stream: {e}") from None


_TOO_FEW = (
    "\nMissing acks from some live nodes. This can be caused by network connectivity\n"
    "problems, a firewall dropping UDP, or nodes that have not noticed a failure yet."
)


class _Failed(Exception):
    """The command ran but its result is a failure: printed to stdout, exit 1."""


def _reachability(c: RPCClient, args: argparse.Namespace) -> str:
    try:
        members = c.members()
    except ClientError as e:
        raise ClientError(f"Error getting members: {e}") from None
    live = {m.name for m in members if m.status == "alive"}
    _print(f"Total members: {len(members)}, live members: {len(live)}")
    body = {"FilterNodes": [], "FilterTags": {}, "RequestAck": True, "RelayFactor": 0,
            "Timeout": 0, "Name": "_serf_ping", "Payload": b""}
    c.set_timeout(None)
    try:
        seq = c.open_stream(Command.QUERY, body)
    except ClientError as e:
        raise ClientError(f"Error sending query: {e}") from None
    _print("Starting reachability test...")
    start = last = time.monotonic()
    acks: set[str] = set()
    dups = False
    while True:
        rseq, rec = c.read_record()
        if rseq != seq or not isinstance(rec, dict):
            continue
        if rec.get("Type") == "done":
            break
        if rec.get("Type") != "ack":
            continue
        sender = str(rec.get("From") or "")
        if args.verbose:
            _print(f"\tAck from '{sender}'")
        if sender in acks:
            dups = True
            _print(f"Duplicate response from '{sender}'")
        acks.add(sender)
        last = time.monotonic()
    if args.verbose:
        _print(f"Query time: {time.monotonic() - start:0.2f} sec, "
               f"time to last response: {last - start:0.2f} sec")
    if len(acks) == len(live):
        if dups:
            raise _Failed("Successfully contacted all live nodes (with duplicate responses)")
        return "Successfully contacted all live nodes"
    if len(acks) > len(live):
        lines = ["Received more acks than live nodes! Acks from non-live nodes:"]
        lines += [f"\t{m}" for m in sorted(acks - live)]
    else:
        lines = ["Received less acks than live nodes! Missing acks from:"]
        lines += [f"\t{m}" for m in sorted(live - acks)]
        lines.append(_TOO_FEW)
    raise _Failed("\n".join(lines))


def _keys(c: RPCClient, args: argparse.Namespace) -> str:
    """serf keys: one cluster-wide key query; failures per node, as serf prints them."""
    if args.list:
        command, body = Command.LIST_KEYS, None
        start, fail = "Asking all members for installed keys...", "Failed to gather member keys"
    elif args.install:
        command, body = Command.INSTALL_KEY, {"Key": args.install}
        start, fail = "Installing key on all members...", "Error installing key"
    elif args.use:
        command, body = Command.USE_KEY, {"Key": args.use}
        start, fail = "Changing primary key on all members...", "Error changing primary key"
    else:
        command, body = Command.REMOVE_KEY, {"Key": args.remove}
        start, fail = "Removing key on all members...", "Error removing key"
    print(f"==> {start}")
    error, resp = c.call_keeping_body(command, body)
    resp = resp if isinstance(resp, dict) else {}
    if error:
        messages = resp.get("Messages") or {}
        rows = [("failed:", str(n), str(m)) for n, m in sorted(messages.items())]
        if rows:
            print(_columns(rows), file=sys.stderr)
        print(f"\n{fail}: {error}", file=sys.stderr)
        raise SystemExit(1)
    if args.list:
        total = resp.get("NumNodes", 0)
        print("==> Keys gathered, listing cluster keys...\n")
        return _columns([(str(k), f"[{n}/{total}]")
                         for k, n in sorted((resp.get("Keys") or {}).items())])
    done = {"install-key": "Successfully installed key!",
            "use-key": "Successfully changed primary key!",
            "remove-key": "Successfully removed key!"}[command]
    return f"==> {done}"


def _columns(rows: Sequence[tuple[str, ...]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))] if rows else []
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
                     for r in rows)


# Each returns its output (printed with a newline, even when empty, as serf does) or None.
_COMMANDS: dict[str, Callable[[RPCClient, argparse.Namespace], str | None]] = {
    "members": _members,
    "join": _join,
    "leave": _leave,
    "force-leave": _force_leave,
    "tags": _tags,
    "info": _info,
    "reload": _reload,
    "event": _event,
    "query": _query,
    "monitor": _monitor,
    "stream": _stream,
    "reachability": _reachability,
    "keys": _keys,
    "rtt": _rtt,
}


def main(argv: Sequence[str] | None = None) -> int:
    """Run serfctl; the exit status."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)  # bad usage: SystemExit(2) after the message
        if args.command == "tags":
            if args.reset is not None and (args.set_tags or args.delete):
                parser.error("tags: --reset cannot be combined with --set or --delete")
            if args.reset is None and not args.set_tags and not args.delete:
                parser.error("tags: give at least one --set KEY=VALUE, --delete KEY or --reset")
        if args.command == "keygen":  # serf keygen: 32 random bytes, base64
            from serfd.wire.keyring import generate_key

            print(generate_key())
            return 0
        if args.command == "version":
            print(version_text())
            return 0
        with _connect(args) as client:
            out = _COMMANDS[args.command](client, args)
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else 2
    except _Failed as e:
        print(e)
        return 1
    except KeyboardInterrupt:
        return 130
    except _Usage as e:
        parser.print_usage(sys.stderr)
        print(f"serfctl: error: {e}", file=sys.stderr)
        return 2
    except ClientError as e:
        # One line, even for Serf's multi-line join errors ("2 error(s) occurred: ...").
        print(
            " ".join(line.strip() for line in str(e).splitlines() if line.strip()), file=sys.stderr
        )
        return 1
    if out is not None:
        print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
