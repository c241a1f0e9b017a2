"""serfctl: control serfd (or any Serf agent) over its RPC; output as the ``serf`` CLI prints it.

Exit status: 0 success, 1 agent or connection error (one line on stderr), 2 bad usage.
"""

from __future__ import annotations

import argparse
import os
import sys
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

    p = sub.add_parser("tags", parents=[common], help="set or delete the agent's tags")
    p.add_argument(
        "--set", action="append", type=_kv, default=[], metavar="KEY=VALUE", dest="set_tags"
    )
    p.add_argument("--delete", action="append", default=[], metavar="KEY")

    p = sub.add_parser("info", parents=[common], help="show the agent's stats")
    p.add_argument("--format", choices=("text", "json"), default="text")

    sub.add_parser(
        "reload",
        parents=[common],
        help="make serfd re-read its config; waits until it is applied or refused",
    )
    return parser


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


# Each returns its output (printed with a newline, even when empty, as serf does) or None.
_COMMANDS: dict[str, Callable[[RPCClient, argparse.Namespace], str | None]] = {
    "members": _members,
    "join": _join,
    "leave": _leave,
    "force-leave": _force_leave,
    "tags": _tags,
    "info": _info,
    "reload": _reload,
}


def main(argv: Sequence[str] | None = None) -> int:
    """Run serfctl; the exit status."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)  # bad usage: SystemExit(2) after the message
        if args.command == "tags" and not args.set_tags and not args.delete:
            parser.error("tags: give at least one --set KEY=VALUE or --delete KEY")
        with _connect(args) as client:
            out = _COMMANDS[args.command](client, args)
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else 2
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
