"""serfctl: output formats and exit codes against the in-process RPC server, and,
marked integration, side by side with the real ``serf`` CLI and a real ``serf agent``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from serfctl.__main__ import columnize, go_json, main
from serfctl.client import ReplyTimeout, RPCClient
from serfd.core.member import Member
from serfd.testing.fake_agent import ServerThread
from tests.support import AUTH_KEY, wait_until

SERF = shutil.which("serf")
needs_serf = pytest.mark.skipif(
    SERF is None, reason="real HashiCorp `serf` binary not found on PATH (Debian package `serf`)"
)


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("SERF_RPC_ADDR", "SERF_RPC_AUTH", "SERFD_SOCKET"):
        monkeypatch.delenv(var, raising=False)


def ctl(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


# ----------------------------------------------------------------------------------
# serfctl.client as the tests' RPC client (tests/integration/harness.py wraps it).


def test_client_pipelines_requests_and_reads_their_answers_in_order(srv: ServerThread) -> None:
    with RPCClient.unix(srv.socket_path, timeout=5) as c:
        seqs = [c.send_request("members"), c.send_request("stats"), c.send_request("members")]
        assert seqs == [1, 2, 3]  # the handshake was 0
        for seq in seqs:
            header = c.read_message()
            assert header == {"Error": "", "Seq": seq}
            assert isinstance(c.read_message(), dict)  # members and stats answer with a body
        assert c.call("members", expect_body=True)["Members"]  # the session is still in step


def test_client_reports_a_silent_agent_as_reply_timeout(sockdir: str) -> None:
    path = os.path.join(sockdir, "mute.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as mute:
        mute.bind(path)
        mute.listen(1)  # accepts (the kernel does) but never answers
        with pytest.raises(ReplyTimeout, match="timed out"):
            RPCClient.unix(path, timeout=0.05)


# ----------------------------------------------------------------------------------
# Output formats (expected strings follow RPC-TRACES.md "CLI output formats").

MEMBERS_TEXT = """\
node0  127.78.1.1:7946  alive   idx=0,role=web
node1  127.78.1.2:7946  alive   idx=1,role=web
node2  127.78.1.3:7946  left    idx=2,role=db
node3  127.78.1.4:7946  failed  idx=3,role=db
"""

MEMBERS_DETAILED = """\
node0  127.78.1.1:7946  alive   idx=0,role=web  Protocol Version: 5  Available Protocol Range: [2, 5]
node1  127.78.1.2:7946  alive   idx=1,role=web  Protocol Version: 5  Available Protocol Range: [2, 5]
node2  127.78.1.3:7946  left    idx=2,role=db   Protocol Version: 5  Available Protocol Range: [2, 5]
node3  127.78.1.4:7946  failed  idx=3,role=db   Protocol Version: 5  Available Protocol Range: [2, 5]
"""  # noqa: E501 - `serf members -detailed` output, byte for byte

LEFT_JSON = """\
{
  "members": [
    {
      "name": "node2",
      "addr": "127.78.1.3:7946",
      "port": 7946,
      "tags": {
        "idx": "2",
        "role": "db"
      },
      "status": "left",
      "protocol": {
        "max": 5,
        "min": 2,
        "version": 5
      }
    }
  ]
}
"""

INFO_TEXT = """\
agent:
\tname = node0
runtime:
\tarch = amd64
\tos = linux
\tversion = python3
serf:
\tencrypted = false
\tmembers = 4
tags:
\tidx = 0
\trole = web
"""


def test_members_text_socket(srv: ServerThread, capsys: pytest.CaptureFixture[str]) -> None:
    assert ctl(capsys, "--socket", srv.socket_path, "members") == (0, MEMBERS_TEXT, "")


def test_members_detailed(srv: ServerThread, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = ctl(capsys, "--socket", srv.socket_path, "members", "--detailed")
    assert (code, out) == (0, MEMBERS_DETAILED)


def test_members_json_matches_serf_shape(
    srv: ServerThread, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = ctl(
        capsys, "--rpc-addr", srv.rpc_addr, "members", "--status", "left", "--format", "json"
    )
    assert (code, out) == (0, LEFT_JSON)
    code, out, _ = ctl(capsys, "--socket", srv.socket_path, "members", "--format=json")
    doc = json.loads(out)
    assert [m["name"] for m in doc["members"]] == ["node0", "node1", "node2", "node3"]


def test_members_json_empty_is_null(srv: ServerThread, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = ctl(
        capsys, "--socket", srv.socket_path, "members", "--name", "x", "--format", "json"
    )
    assert (code, out) == (0, '{\n  "members": null\n}\n')
    assert ctl(capsys, "--socket", srv.socket_path, "members", "--name", "x") == (0, "\n", "")


def test_members_filters(srv: ServerThread, capsys: pytest.CaptureFixture[str]) -> None:
    def names(*args: str) -> list[str]:
        code, out, _ = ctl(capsys, "--socket", srv.socket_path, "members", *args)
        assert code == 0
        return [line.split()[0] for line in out.splitlines() if line]

    assert names("--tag", "role=web") == ["node0", "node1"]
    assert names("--tag", "role=db", "--tag", "idx=[23]", "--status", "failed") == ["node3"]
    assert names("--name", "node[01]", "--status", "alive") == ["node0", "node1"]
    assert names("--tag", "role=w") == []  # anchored


def test_members_bad_regex_is_an_error(
    srv: ServerThread, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = ctl(capsys, "--socket", srv.socket_path, "members", "--name", "node(")
    assert (code, out) == (1, "")
    assert err == "Error retrieving members: RPC connection closed by agent\n"


def test_members_text_alignment_and_pipe_quirk() -> None:
    assert columnize([["a", "bb", "c"], ["dddd", "e", "ff"]]) == "a     bb  c\ndddd  e   ff"
    # Serf joins cells with "|" before columnizing: a "|" in a value splits it too.
    assert columnize([["n", "x|y"], ["nn", "z"]]) == "n   x  y\nnn  z"


def test_go_json_escaping() -> None:
    assert go_json({"b": "<&>\u2028\x08\n", "a": [1, None, True]}) == (
        '{\n  "a": [\n    1,\n    null,\n    true\n  ],\n'
        '  "b": "\\u003c\\u0026\\u003e\\u2028\\u0008\\n"\n}'
    )
    assert go_json({}) == "{}" and go_json([]) == "[]"


def test_ipv6_member_addr_is_bracketed(
    srv: ServerThread, capsys: pytest.CaptureFixture[str]
) -> None:
    srv.agent.member_list = [Member("six", "fd00::5", 7946, {})]
    code, out, _ = ctl(capsys, "--socket", srv.socket_path, "members")
    assert (code, out) == (0, "six  [fd00::5]:7946  alive\n")


def test_info_text_and_json(srv: ServerThread, capsys: pytest.CaptureFixture[str]) -> None:
    assert ctl(capsys, "--socket", srv.socket_path, "info") == (0, INFO_TEXT, "")
    code, out, _ = ctl(capsys, "--socket", srv.socket_path, "info", "--format", "json")
    assert code == 0
    assert json.loads(out) == srv.agent.stats()
    assert out.startswith('{\n  "agent": {\n    "name": "node0"\n  },\n  "runtime": {\n')


def test_join(srv: ServerThread, capsys: pytest.CaptureFixture[str]) -> None:
    assert ctl(
        capsys, "--socket", srv.socket_path, "join", "--replay", "10.0.0.2", "10.0.0.3:7946"
    ) == (
        0,
        "Successfully joined cluster by contacting 2 nodes.\n",
        "",
    )
    assert srv.agent.calls[-1] == ("join", (["10.0.0.2", "10.0.0.3:7946"], True))
    code, out, err = ctl(capsys, "--socket", srv.socket_path, "join", "bad1")
    assert (code, out) == (1, "")
    assert err == (
        "Error joining the cluster: 1 error(s) occurred: * Failed to join bad1: dial tcp: refused\n"
    )
    assert ctl(capsys, "--socket", srv.socket_path, "join")[0] == 2


def test_leave(srv: ServerThread, capsys: pytest.CaptureFixture[str]) -> None:
    assert ctl(capsys, "--socket", srv.socket_path, "leave") == (0, "Graceful leave complete\n", "")
    assert srv.agent.left.wait(5)


def test_force_leave(srv: ServerThread, capsys: pytest.CaptureFixture[str]) -> None:
    assert ctl(capsys, "--socket", srv.socket_path, "force-leave", "node3") == (0, "", "")
    assert ctl(capsys, "--socket", srv.socket_path, "force-leave", "--prune", "node2") == (
        0,
        "",
        "",
    )
    assert srv.agent.calls == [("force-leave", ("node3", False)), ("force-leave", ("node2", True))]
    assert ctl(capsys, "--socket", srv.socket_path, "force-leave", "ghost") == (
        1,
        "",
        "Error force leaving: node not found\n",
    )
    assert ctl(capsys, "--socket", srv.socket_path, "force-leave")[0] == 2


def test_tags(srv: ServerThread, capsys: pytest.CaptureFixture[str]) -> None:
    assert ctl(
        capsys,
        "--socket",
        srv.socket_path,
        "tags",
        "--set",
        "dc=lab",
        "--set",
        "x=a=b",
        "--delete",
        "idx",
    ) == (0, "Successfully updated agent tags\n", "")
    assert srv.agent.tags == {"role": "web", "dc": "lab", "x": "a=b"}
    assert ctl(capsys, "--socket", srv.socket_path, "tags")[0] == 2
    assert ctl(capsys, "--socket", srv.socket_path, "tags", "--set", "novalue")[0] == 2
    assert ctl(capsys, "--socket", srv.socket_path, "tags", "--set", "=v")[0] == 2


def test_tags_reset_sends_serfds_reset_tags(srv: ServerThread,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    sock = srv.socket_path
    done = (0, "Successfully reset agent tags to the configuration\n", "")
    assert ctl(capsys, "--socket", sock, "tags", "--reset") == done
    assert ctl(capsys, "--socket", sock, "tags", "--reset", "role", "dc") == done
    assert [c for c in srv.agent.calls if c[0] == "reset-tags"] == [
        ("reset-tags", []), ("reset-tags", ["role", "dc"])]
    # One request: a reset is not mixed with changes.
    code, _, err = ctl(capsys, "--socket", sock, "tags", "--reset", "--set", "a=b")
    assert code == 2 and "--reset cannot be combined" in err
    assert ctl(capsys, "--socket", sock, "tags", "--delete", "a", "--reset")[0] == 2
    assert len([c for c in srv.agent.calls if c[0] == "reset-tags"]) == 2


# ----------------------------------------------------------------------------------
# Connection choices, environment, errors and exit codes.


def test_missing_socket_names_path_and_systemctl(
    sockdir: str, capsys: pytest.CaptureFixture[str]
) -> None:
    path = os.path.join(sockdir, "nope.sock")
    code, out, err = ctl(capsys, "--socket", path, "members")
    assert (code, out) == (1, "")
    assert path in err and "systemctl status serfd" in err
    assert err.count("\n") == 1


def test_default_socket_from_env(
    srv: ServerThread, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    code, _, err = ctl(capsys, "members")
    assert code == 1 and "/run/serfd/serfd.sock" in err
    monkeypatch.setenv("SERFD_SOCKET", srv.socket_path)
    assert ctl(capsys, "members") == (0, MEMBERS_TEXT, "")


def test_refused_tcp_names_the_address(capsys: pytest.CaptureFixture[str]) -> None:
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    code, out, err = ctl(capsys, "--rpc-addr", f"127.0.0.1:{port}", "members")
    assert (code, out) == (1, "")
    assert f"127.0.0.1:{port}" in err and "refused" in err
    assert err.count("\n") == 1


def test_rpc_addr_and_auth_from_env_and_after_command(
    auth_srv: ServerThread, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    code, _, err = ctl(capsys, "--rpc-addr", auth_srv.rpc_addr, "members")
    assert (code, err) == (1, "Error retrieving members: Authentication required\n")
    code, _, err = ctl(capsys, "--rpc-addr", auth_srv.rpc_addr, "--rpc-auth", "bad", "members")
    assert code == 1
    assert (
        err
        == f"Error connecting to Serf agent at {auth_srv.rpc_addr}: Invalid authentication token\n"
    )
    # Serf-style: options after the command work too.
    assert ctl(capsys, "members", "--rpc-addr", auth_srv.rpc_addr, "--rpc-auth", AUTH_KEY)[0] == 0
    monkeypatch.setenv("SERF_RPC_ADDR", auth_srv.rpc_addr)
    monkeypatch.setenv("SERF_RPC_AUTH", AUTH_KEY)
    assert ctl(capsys, "members") == (0, MEMBERS_TEXT, "")
    # An explicit --socket wins over $SERF_RPC_ADDR (no auth on the socket).
    assert ctl(capsys, "--socket", auth_srv.socket_path, "info")[0] == 0


def test_usage_errors_exit_2(srv: ServerThread, capsys: pytest.CaptureFixture[str]) -> None:
    assert ctl(capsys)[0] == 2
    assert ctl(capsys, "frobnicate")[0] == 2
    assert ctl(capsys, "--socket", "x", "--rpc-addr", "y:1", "members")[0] == 2
    assert ctl(capsys, "--rpc-addr", "127.0.0.1:notaport", "members")[0] == 2
    assert ctl(capsys, "--socket", srv.socket_path, "members", "--tag", "role")[0] == 2
    assert ctl(capsys, "--socket", srv.socket_path, "members", "--format", "yaml")[0] == 2
    assert ctl(capsys, "--help")[0] == 0


def test_console_script_runs(srv: ServerThread) -> None:
    r = subprocess.run(
        [sys.executable, "-m", "serfctl", "--socket", srv.socket_path, "members"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert (r.returncode, r.stdout) == (0, MEMBERS_TEXT)


# ----------------------------------------------------------------------------------
# Integration: the real `serf` CLI against our server.


def serf(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    assert SERF is not None
    return subprocess.run(
        [SERF, *args], capture_output=True, text=True, timeout=timeout, check=False
    )


def sort_tags_in_lines(text: str) -> list[str]:
    """Each members line with its tags cell sorted (Serf prints Go map order)."""
    out = []
    for line in text.splitlines():
        m = re.match(r"^(\S+\s+\S+\s+\S+\s+)(\S*)(.*)$", line)
        assert m, line
        out.append(m.group(1) + ",".join(sorted(m.group(2).split(","))) + m.group(3))
    return out


@pytest.mark.integration
@needs_serf
def test_real_serf_cli_reads_our_server(
    srv: ServerThread, capsys: pytest.CaptureFixture[str]
) -> None:
    addr = f"-rpc-addr={srv.rpc_addr}"
    for serf_args, ctl_args in [
        ([], []),
        (["-detailed"], ["--detailed"]),
        (["-tag", "role=web"], ["--tag", "role=web"]),
        (["-status=alive", "-name=node[01]"], ["--status=alive", "--name=node[01]"]),
    ]:
        r = serf("members", addr, *serf_args)
        assert r.returncode == 0, r.stderr
        code, out, _ = ctl(capsys, "--rpc-addr", srv.rpc_addr, "members", *ctl_args)
        assert code == 0
        assert sort_tags_in_lines(r.stdout) == sort_tags_in_lines(out)
    # JSON and info are fully ordered (Go sorts map keys): byte-identical.
    r = serf("members", addr, "-format=json")
    assert (
        r.returncode == 0
        and r.stdout == ctl(capsys, "--rpc-addr", srv.rpc_addr, "members", "--format=json")[1]
    )
    r = serf("info", addr)
    assert r.returncode == 0 and r.stdout == INFO_TEXT
    r = serf("info", addr, "-format=json")
    assert (
        r.returncode == 0
        and r.stdout == ctl(capsys, "--rpc-addr", srv.rpc_addr, "info", "--format=json")[1]
    )


@pytest.mark.integration
@needs_serf
def test_real_serf_cli_commands_reach_our_agent(srv: ServerThread) -> None:
    addr = f"-rpc-addr={srv.rpc_addr}"
    r = serf("join", addr, "-replay", "10.0.0.2:7946")
    assert (r.returncode, r.stdout) == (0, "Successfully joined cluster by contacting 1 nodes.\n")
    r = serf("join", addr, "bad1")
    # The serf CLI writes its error lines to stdout.
    assert r.returncode == 1 and "Failed to join bad1" in r.stdout + r.stderr
    r = serf("tags", addr, "-set", "zone=z1", "-delete", "idx")
    assert (r.returncode, r.stdout) == (0, "Successfully updated agent tags\n")
    r = serf("force-leave", addr, "-prune", "node3")
    assert r.returncode == 0
    r = serf("members", addr, "-name=node(")
    assert r.returncode == 1 and "Error retrieving members:" in r.stdout + r.stderr
    r = serf("event", addr, "deploy")  # not served yet: the CLI sees the connection drop
    assert r.returncode == 1
    r = serf("leave", addr)
    assert (r.returncode, r.stdout) == (0, "Graceful leave complete\n")
    assert srv.agent.left.wait(5)
    assert srv.agent.calls[:4] == [
        ("join", (["10.0.0.2:7946"], True)),
        ("join", (["bad1"], False)),
        ("tags", ({"zone": "z1"}, ["idx"])),
        ("force-leave", ("node3", True)),
    ]
    assert srv.agent.tags == {"role": "web", "zone": "z1"}


@pytest.mark.integration
@needs_serf
def test_real_serf_cli_auth_against_our_server(auth_srv: ServerThread) -> None:
    r = serf("members", f"-rpc-addr={auth_srv.rpc_addr}")
    assert r.returncode == 1
    assert r.stdout + r.stderr == "Error retrieving members: Authentication required\n"
    r = serf("members", f"-rpc-addr={auth_srv.rpc_addr}", f"-rpc-auth={AUTH_KEY}")
    assert r.returncode == 0 and len(r.stdout.splitlines()) == 4


# ----------------------------------------------------------------------------------
# Integration: serfctl against a real `serf agent`.


@pytest.fixture
def serf_pair(tmp_path: Path) -> Iterator[tuple[Any, Any]]:
    """Two real serf agents, ctl1 (role=web) and ctl2 (role=db), on a reserved 127.x.y.0/24."""
    if SERF is None:
        pytest.skip("real HashiCorp `serf` binary not found on PATH (Debian package `serf`)")
    from tests.integration.harness import AddressAllocator, SerfAgent

    alloc = AddressAllocator(range(100, 200))
    sl = alloc.allocate(probe_hosts=2)
    agents = [
        SerfAgent("ctl1", sl.host(0), tags={"role": "web"}, tmpdir=tmp_path),
        SerfAgent("ctl2", sl.host(1), tags={"role": "db", "idx": "2"}, tmpdir=tmp_path),
    ]
    try:
        for a in agents:
            a.start()
        for a in agents:
            a.wait_ready(10)
        yield agents[0], agents[1]
    finally:
        for a in agents:
            a.cleanup()  # SIGKILL by the PID we started, then reap
        alloc.release(sl)


def wait_ctl(capsys: pytest.CaptureFixture[str], pred: Any, *args: str, timeout: float = 10) -> str:
    """Run `serfctl ARGS` until it succeeds with stdout satisfying pred; its stdout."""
    runs: list[tuple[int, str, str]] = []

    def ok() -> bool:
        runs.append(ctl(capsys, *args))
        code, out, _ = runs[-1]
        return code == 0 and bool(pred(out))

    wait_until(ok, timeout, 0.05, desc=lambda: f"serfctl {args} (last: {runs[-1]!r})", retry_on=())
    return runs[-1][1]


def wait_serf(pred: Any, *args: str, timeout: float = 10) -> str:
    """Run `serf ARGS` until it succeeds with stdout satisfying pred; its stdout."""
    runs: list[subprocess.CompletedProcess[str]] = []

    def ok() -> bool:
        runs.append(serf(*args))
        return runs[-1].returncode == 0 and bool(pred(runs[-1].stdout))

    wait_until(ok, timeout, 0.05, desc=lambda: f"serf {args} (last: {runs[-1]!r})", retry_on=())
    return runs[-1].stdout


@pytest.mark.integration
def test_serfctl_against_real_serf_agent(
    serf_pair: tuple[Any, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    a, b = serf_pair
    code, out, err = ctl(capsys, "--rpc-addr", a.rpc_addr, "join", b.bind_addr)
    assert (code, out, err) == (0, "Successfully joined cluster by contacting 1 nodes.\n", "")
    wait_ctl(
        capsys,
        lambda o: len(json.loads(o)["members"] or []) == 2,
        "--rpc-addr",
        a.rpc_addr,
        "members",
        "--format",
        "json",
    )

    # JSON: equal to `serf members -format=json` modulo member order.
    r = serf("members", f"-rpc-addr={a.rpc_addr}", "-format=json")
    assert r.returncode == 0, r.stderr
    _, out, _ = ctl(capsys, "--rpc-addr", a.rpc_addr, "members", "--format", "json")

    def by_name(doc: str) -> dict[str, Any]:
        return {m["name"]: m for m in json.loads(doc)["members"]}

    assert by_name(out) == by_name(r.stdout)
    assert sorted(json.dumps(m, indent=2) for m in json.loads(out)["members"]) == sorted(
        json.dumps(m, indent=2) for m in json.loads(r.stdout)["members"]
    )

    # Text: same lines modulo member and tag order.
    r = serf("members", f"-rpc-addr={a.rpc_addr}", "-detailed")
    _, out, _ = ctl(capsys, "--rpc-addr", a.rpc_addr, "members", "--detailed")
    assert sorted(sort_tags_in_lines(out)) == sorted(sort_tags_in_lines(r.stdout))

    # Filters behave like Serf's.
    _, out, _ = ctl(capsys, "--rpc-addr", a.rpc_addr, "members", "--tag", "role=d.")
    assert [line.split()[0] for line in out.splitlines()] == ["ctl2"]

    # Tags set through serfctl show in `serf members`.
    code, out, _ = ctl(
        capsys, "--rpc-addr", a.rpc_addr, "tags", "--set", "zone=z1", "--delete", "role"
    )
    assert (code, out) == (0, "Successfully updated agent tags\n")
    for target in (a, b):  # locally at once, and gossiped to the peer
        wait_serf(
            lambda out: "zone=z1" in out and "role=" not in out,
            "members",
            f"-rpc-addr={target.rpc_addr}",
            "-name=ctl1",
        )

    # serfd's reset-tags is not Serf's: refused by name, nothing changed.
    assert ctl(capsys, "--rpc-addr", a.rpc_addr, "tags", "--reset") == (
        1, "", "Error resetting tags: Unsupported command\n")
    assert "zone=z1" in serf("members", f"-rpc-addr={a.rpc_addr}", "-name=ctl1").stdout

    # info: same sections and keys as `serf info`.
    r = serf("info", f"-rpc-addr={a.rpc_addr}", "-format=json")
    _, out, _ = ctl(capsys, "--rpc-addr", a.rpc_addr, "info", "--format", "json")
    theirs, ours = json.loads(r.stdout), json.loads(out)
    assert {k: set(v) for k, v in theirs.items()} == {k: set(v) for k, v in ours.items()}
    assert ours["agent"] == {"name": "ctl1"}
    _, text, _ = ctl(capsys, "--rpc-addr", a.rpc_addr, "info")
    assert text.startswith("agent:\n\tname = ctl1\n")

    # leave: ctl2 leaves gracefully and exits 0; ctl1 then lists it as left.
    code, out, _ = ctl(capsys, "--rpc-addr", b.rpc_addr, "leave")
    assert (code, out) == (0, "Graceful leave complete\n")
    assert b.wait_exit(15) == 0
    wait_ctl(
        capsys,
        lambda o: o.split()[:1] == ["ctl2"],
        "--rpc-addr",
        a.rpc_addr,
        "members",
        "--status",
        "left",
    )
    # force-leave of a left node is accepted by real Serf.
    assert ctl(capsys, "--rpc-addr", a.rpc_addr, "force-leave", "ctl2")[0] == 0


# ----------------------------------------------------------------------------------
# rtt: serf rtt's output, errors and exit codes.


def test_rtt_prints_serfs_line_and_defaults_to_the_agents_own_node(
        srv: ServerThread, capsys: pytest.CaptureFixture[str]) -> None:
    from serfd.core.coordinate import Coordinate

    srv.agent.coordinates["node0"] = Coordinate([0.0] * 8, 1.5, 0.0, 0.0)
    srv.agent.coordinates["node1"] = Coordinate([0.003, 0.004] + [0.0] * 6, 0.5, 0.0005,
                                                0.0001)
    sock = srv.socket_path
    # 5 ms apart, plus the height 0.1 ms and the adjustment 0.5 ms.
    assert ctl(capsys, "--socket", sock, "rtt", "node1", "node0") == (
        0, "Estimated node1 <-> node0 rtt: 5.600 ms\n", "")
    assert ctl(capsys, "--socket", sock, "rtt", "node1") == (
        0, "Estimated node1 <-> node0 rtt: 5.600 ms\n", "")
    assert ctl(capsys, "--socket", sock, "rtt", "node1", "nope") == (
        1, "", 'Could not find a coordinate for node "nope"\n')
    code, out, err = ctl(capsys, "--socket", sock, "rtt")
    assert (code, out) == (1, "")
    assert err.startswith("One or two node names must be specified\n\nusage: serfctl rtt")
    code, _, err = ctl(capsys, "--socket", sock, "rtt", "a", "b", "c")
    assert code == 1 and err.startswith("One or two node names must be specified")
