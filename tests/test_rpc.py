"""serfd.agent.rpc_server against RPC-TRACES.md: exact bytes, session rules, every command, garbage.

The server runs on its own loop thread over a FakeAgent (tests/fake_agent.py); the
tests talk to it through real Unix and TCP sockets with raw msgpack.
"""

from __future__ import annotations

import os
import random
import socket
import stat
import threading
import time
from pathlib import Path
from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from serfd.agent.rpc_server import RPCServer
from serfd.core.coordinate import Coordinate
from serfd.core.member import Member, MemberStatus
from serfd.rpc.protocol import encode_member, filter_members
from serfd.testing.fake_agent import FakeAgent, ServerThread
from tests.support import AUTH_KEY, Raw, wait_until

H = bytes.fromhex


def both(s: ServerThread) -> list[str | tuple[str, int]]:
    return [s.socket_path, s.tcp]


def healthy(s: ServerThread) -> None:
    """The server still answers a fresh client on both listeners."""
    for target in both(s):
        c = Raw(target)
        c.handshake()
        c.request("members")
        assert c.read()["Error"] == ""
        assert len(c.read()["Members"]) == len(s.agent.member_list)
        c.close()


# ----------------------------------------------------------------------------------
# Session rules, byte for byte against RPC-TRACES.md A, B0, B.

TRACE_A_REQ = H("82a7436f6d6d616e64a76d656d62657273a353657100")
TRACE_A_RESP = H(
    "82a54572726f72b248616e647368616b65207265717569726564a353657100"
)  # {Error: "Handshake required", Seq: 0}


@pytest.mark.parametrize("where", ["unix", "tcp"])
def test_command_before_handshake_is_refused_and_closed(srv: ServerThread, where: str) -> None:
    c = Raw(srv.socket_path if where == "unix" else srv.tcp)
    c.send_bytes(TRACE_A_REQ)
    assert c.read_bytes(len(TRACE_A_RESP)) == TRACE_A_RESP
    assert c.closed()
    assert srv.server.counters["handshake_required"] == 1
    healthy(srv)


def test_handshake_version_2_is_refused_but_connection_stays(srv: ServerThread) -> None:
    c = Raw(srv.socket_path)
    c.send_bytes(H("82a7436f6d6d616e64a968616e647368616b65a35365710081a756657273696f6e02"))
    expected = H("82a54572726f72b7556e737570706f72746564204950432076657273696f6ea353657100")
    assert c.read_bytes(len(expected)) == expected
    c.seq = 1
    c.handshake()  # a good handshake still works on the same connection


TRACE_B = [
    (  # handshake v1 -> ""
        "82a7436f6d6d616e64a968616e647368616b65a35365710081a756657273696f6e01",
        "82a54572726f72a0a353657100",
    ),
    (  # second handshake -> "Handshake already performed"
        "82a7436f6d6d616e64a968616e647368616b65a35365710181a756657273696f6e01",
        "82a54572726f72bb48616e647368616b6520616c726561647920706572666f726d6564a353657101",
    ),
    (  # members before auth -> "Authentication required", header only
        "82a7436f6d6d616e64a76d656d62657273a353657102",
        "82a54572726f72b741757468656e7469636174696f6e207265717569726564a353657102",
    ),
    (  # auth "wrong" -> "Invalid authentication token"
        "82a7436f6d6d616e64a461757468a35365710381a7417574684b6579a577726f6e67",
        "82a54572726f72bc496e76616c69642061757468656e7469636174696f6e20746f6b656ea353657103",
    ),
    (  # auth AUTH_KEY ("s3cret-token", the auth_srv fixture's) -> ""
        "82a7436f6d6d616e64a461757468a35365710481a7417574684b6579ac7333637265742d746f6b656e",
        "82a54572726f72a0a353657104",
    ),
]


def test_trace_b_handshake_and_auth_bytes_on_tcp(auth_srv: ServerThread) -> None:
    c = Raw(auth_srv.tcp)
    for req, resp in TRACE_B:
        c.send_bytes(H(req))
        expected = H(resp)
        assert c.read_bytes(len(expected)) == expected
    c.seq = 5
    c.request("members")
    assert c.read() == {"Error": "", "Seq": 5}
    assert len(c.read()["Members"]) == 4
    assert auth_srv.server.counters["auth_required"] == 1
    assert auth_srv.server.counters["auth_failed"] == 1


def test_auth_applies_to_tcp_only(auth_srv: ServerThread) -> None:
    c = Raw(auth_srv.socket_path)
    c.handshake()
    c.request("members")
    assert c.read()["Error"] == ""
    assert len(c.read()["Members"]) == 4
    c.request("auth", {"AuthKey": "anything"})  # accepted: the socket mode guards it
    assert c.read()["Error"] == ""


def test_auth_required_consumes_the_body_and_keeps_the_session(auth_srv: ServerThread) -> None:
    c = Raw(auth_srv.tcp)
    c.handshake()
    c.request("members-filtered", {"Tags": {}, "Status": "", "Name": ""})
    assert c.read() == {"Error": "Authentication required", "Seq": 1}
    c.request("join", {"Existing": ["x"], "Replay": False})
    assert c.read() == {"Error": "Authentication required", "Seq": 2}
    c.request("auth", {"AuthKey": AUTH_KEY})
    assert c.read() == {"Error": "", "Seq": 3}
    c.request("members-filtered", {"Tags": {"role": "db"}, "Status": "", "Name": ""})
    assert c.read() == {"Error": "", "Seq": 4}
    assert {m["Name"] for m in c.read()["Members"]} == {"node2", "node3"}
    assert auth_srv.agent.calls == []  # the refused join never reached the agent


def test_tcp_without_auth_key_needs_no_auth(srv: ServerThread) -> None:
    c = Raw(srv.tcp)
    c.handshake()
    c.request("stats")
    assert c.read()["Error"] == ""
    assert c.read()["agent"] == {"name": "node0"}


# ----------------------------------------------------------------------------------
# members / members-filtered, byte for byte against RPC-TRACES.md D2, D3, D4.

FIELDS_HEX = {  # pieces of a Member map exactly as the trace shows them
    "Addr": "a441646472c4047f4e01",
    "Delegate": "ab44656c656761746543757205ab44656c65676174654d617805ab44656c65676174654d696e02",
    "Name": "a44e616d65a56e6f6465",
    "Port": "a4506f7274cd1f0a",
    "Protocol": "ab50726f746f636f6c43757202ab50726f746f636f6c4d617805ab50726f746f636f6c4d696e01",
    "Status": "a6537461747573a5616c697665",
    "Tags": "a454616773",
}
TAG_HEX = {
    ("role", "web"): "a4726f6c65a3776562",
    ("role", "db"): "a4726f6c65a26462",
    ("idx", "0"): "a3696478a130",
    ("idx", "1"): "a3696478a131",
    ("idx", "2"): "a3696478a132",
}


def member_hex(i: int, tags: list[tuple[str, str]]) -> str:
    f = FIELDS_HEX
    return (
        "8b"
        + f["Addr"]
        + f"{i + 1:02x}"
        + f["Delegate"]
        + f["Name"]
        + f"{0x30 + i:02x}"
        + f["Port"]
        + f["Protocol"]
        + f["Status"]
        + f["Tags"]
        + f"{0x80 + len(tags):02x}"
        + "".join(TAG_HEX[t] for t in tags)
    )


def trace_members() -> list[Member]:
    """node0..node3 with tags in the order the trace's responses show them."""
    return [
        Member("node0", "127.78.1.1", 7946, {"role": "web", "idx": "0"}),
        Member("node1", "127.78.1.2", 7946, {"idx": "1", "role": "web"}),
        Member("node2", "127.78.1.3", 7946, {"role": "db", "idx": "2"}),
        Member("node3", "127.78.1.4", 7946, {"role": "db", "idx": "3"}),
    ]


def test_members_filtered_tags_matches_trace_d2_bytes(srv: ServerThread) -> None:
    srv.agent.member_list = trace_members()
    c = Raw(srv.tcp)
    c.handshake()
    c.send_bytes(
        H(
            "82a7436f6d6d616e64b06d656d626572732d66696c7465726564a353657107"
            "83a454616773 81a4726f6c65a3776562 a6537461747573a0 a44e616d65a0".replace(" ", "")
        )
    )
    expected = H(
        "82a54572726f72a0a353657107"
        "81a74d656d6265727392"
        + member_hex(0, [("role", "web"), ("idx", "0")])
        + member_hex(1, [("idx", "1"), ("role", "web")])
    )
    assert len(expected) == 309  # the trace's response size
    assert c.read_bytes(len(expected)) == expected


def test_members_filtered_status_and_name_match_trace_d3_bytes(srv: ServerThread) -> None:
    srv.agent.member_list = trace_members()
    c = Raw(srv.socket_path)
    c.handshake()
    c.send_bytes(
        H(
            "82a7436f6d6d616e64b06d656d626572732d66696c7465726564a353657108"
            "83a45461677380a6537461747573a5616c697665a44e616d65a86e6f64655b31325d"
        )
    )
    expected = H(
        "82a54572726f72a0a353657108"
        "81a74d656d6265727392"
        + member_hex(1, [("idx", "1"), ("role", "web")])
        + member_hex(2, [("role", "db"), ("idx", "2")])
    )
    assert len(expected) == 308
    assert c.read_bytes(len(expected)) == expected


def test_members_filtered_bad_regex_closes_without_answer(srv: ServerThread) -> None:
    c = Raw(srv.tcp)
    c.handshake()
    c.send_bytes(
        H(
            "82a7436f6d6d616e64b06d656d626572732d66696c7465726564a353657109"
            "83a45461677380a6537461747573a0a44e616d65a56e6f646528"
        )
    )
    assert c.read_bytes(1) == b""  # no answer at all, then EOF
    assert srv.server.counters["bad_regex"] == 1
    healthy(srv)


def test_members_returns_every_member_with_status_strings(srv: ServerThread) -> None:
    c = Raw(srv.socket_path)
    c.handshake()
    c.request("members")
    assert c.read() == {"Error": "", "Seq": 1}
    body = c.read()
    assert list(body) == ["Members"]
    got = {m["Name"]: m for m in body["Members"]}
    assert {n: m["Status"] for n, m in got.items()} == {
        "node0": "alive",
        "node1": "alive",
        "node2": "left",
        "node3": "failed",
    }
    m = got["node0"]
    assert list(m) == sorted(m)  # Go's alphabetical field order
    assert m["Addr"] == bytes([127, 78, 1, 1])
    assert (m["ProtocolMin"], m["ProtocolMax"], m["ProtocolCur"]) == (1, 5, 2)
    assert (m["DelegateMin"], m["DelegateMax"], m["DelegateCur"]) == (2, 5, 5)


@pytest.mark.parametrize(
    ("filters", "names"),
    [
        ({"Tags": {"role": "web"}}, {"node0", "node1"}),
        ({"Tags": {"role": "we"}}, set()),  # anchored: no partial match
        ({"Tags": {"role": "w.*|d.*"}}, {"node0", "node1", "node2", "node3"}),
        ({"Tags": {"missing": ""}}, {"node0", "node1", "node2", "node3"}),  # "" matches ""
        ({"Tags": {"missing": ".+"}}, set()),
        ({"Status": "left|failed"}, {"node2", "node3"}),
        ({"Status": "alive", "Name": "node[12]"}, {"node1"}),
        ({"Name": "node"}, set()),
        ({"Status": "", "Name": ""}, {"node0", "node1", "node2", "node3"}),
        ({}, {"node0", "node1", "node2", "node3"}),  # missing fields are zero values
    ],
)
def test_members_filtered_semantics(
    srv: ServerThread, filters: dict[str, Any], names: set[str]
) -> None:
    c = Raw(srv.socket_path)
    c.handshake()
    c.request("members-filtered", filters, has_body=True)
    assert c.read()["Error"] == ""
    assert {m["Name"] for m in c.read()["Members"]} == names


def test_filter_members_end_anchor_is_end_of_text() -> None:
    ms = [Member("a\n", "10.0.0.1", 1), Member("a", "10.0.0.2", 1)]
    assert [m.addr for m in filter_members(ms, {}, "", "a")] == ["10.0.0.2"]


def test_encode_member_addresses() -> None:
    assert encode_member(Member("x", "10.1.2.3", 1))["Addr"] == bytes([10, 1, 2, 3])
    assert encode_member(Member("x", "::ffff:10.1.2.3", 1))["Addr"] == bytes([10, 1, 2, 3])
    v6 = encode_member(Member("x", "fd00::1", 1))["Addr"]
    assert len(v6) == 16 and v6[-1] == 1
    assert encode_member(Member("x", "", 1))["Addr"] is None  # Go: nil IP -> nil
    assert encode_member(Member("x", "1.2.3.4", 1, status=MemberStatus.NONE))["Status"] == "none"


def test_ipv6_member_is_bin16_on_the_wire(srv: ServerThread) -> None:
    srv.agent.member_list = [Member("v6", "fd00::7", 7946)]
    c = Raw(srv.socket_path)
    c.handshake()
    c.request("members")
    assert c.read()["Error"] == ""
    m = c.read()["Members"][0]
    assert m["Addr"] == bytes.fromhex("fd000000000000000000000000000007")


# ----------------------------------------------------------------------------------
# The other served commands.


def test_join_ok_and_error_both_carry_a_num_body(srv: ServerThread) -> None:
    c = Raw(srv.tcp)
    c.handshake()
    c.send_bytes(  # trace C, Seq 5
        H(
            "82a7436f6d6d616e64a46a6f696ea35365710582a84578697374696e6793"
            "af3132372e37382e312e323a37393436af3132372e37382e312e333a37393436"
            "af3132372e37382e312e343a37393436a65265706c6179c2"
        )
    )
    expected = H("82a54572726f72a0a35365710581a34e756d03")
    assert c.read_bytes(len(expected)) == expected
    c.request("join", {"Existing": ["bad1", "bad2"], "Replay": True})
    header = c.read()
    assert header["Error"].startswith("2 error(s) occurred:")
    assert c.read() == {"Num": 0}
    assert srv.agent.calls[-1] == ("join", (["bad1", "bad2"], True))


def test_slow_join_does_not_block_other_clients(srv: ServerThread) -> None:
    srv.agent.join_delay = 1.0
    slow = Raw(srv.tcp)
    slow.handshake()
    slow.request("join", {"Existing": ["a"], "Replay": False})
    t0 = time.monotonic()
    healthy(srv)
    assert time.monotonic() - t0 < 0.8
    assert slow.read()["Error"] == ""
    assert slow.read() == {"Num": 1}


def test_force_leave_and_tags(srv: ServerThread) -> None:
    c = Raw(srv.socket_path)
    c.handshake()
    c.send_bytes(  # trace L, force-leave node3 Prune=false, Seq 16
        H(
            "82a7436f6d6d616e64ab666f7263652d6c65617665a353657110"
            "82a44e6f6465a56e6f646533a55072756e65c2"
        )
    )
    expected = H("82a54572726f72a0a353657110")
    assert c.read_bytes(len(expected)) == expected
    c.request("force-leave", {"Node": "ghost", "Prune": True})
    assert c.read()["Error"] == "node not found"
    c.request("force-leave", {"Node": "boom"})
    assert c.read()["Error"] == "agent bug"  # an agent exception becomes an error string
    assert srv.server.activity["agent_errors"] == 1
    c.send_bytes(  # trace J: tags set dc=lab delete idx, Seq 13
        H(
            "82a7436f6d6d616e64a474616773a35365710d82a45461677381a26463a36c6162"
            "aa44656c65746554616773"
            "91a3696478"
        )
    )
    expected = H("82a54572726f72a0a35365710d")
    assert c.read_bytes(len(expected)) == expected
    assert srv.agent.tags == {"role": "web", "dc": "lab"}
    assert srv.agent.calls[:3] == [
        ("force-leave", ("node3", False)),
        ("force-leave", ("ghost", True)),
        ("force-leave", ("boom", False)),
    ]


def test_stats_and_stop(srv: ServerThread) -> None:
    c = Raw(srv.tcp)
    c.handshake()
    c.request("stats")
    assert c.read() == {"Error": "", "Seq": 1}
    assert c.read() == srv.agent.stats()
    c.request("stop", {"Stop": 7})
    assert c.read() == {"Error": "", "Seq": 2}


def test_leave_replies_then_calls_agent(srv: ServerThread) -> None:
    c = Raw(srv.socket_path)
    c.handshake()
    c.send_bytes(H("82a7436f6d6d616e64a56c65617665a353657111"))  # trace M
    expected = H("82a54572726f72a0a353657111")
    assert c.read_bytes(len(expected)) == expected
    assert srv.agent.left.wait(5)


@pytest.mark.parametrize(
    ("command", "body"),
    [
        ("no-such-command", None),
        ("", None),
    ],
)
def test_unserved_commands_are_unsupported_then_closed(
    srv: ServerThread, command: str, body: Any
) -> None:
    c = Raw(srv.tcp)
    c.handshake()
    c.request(command, body)
    assert c.read() == {"Error": "Unsupported command", "Seq": 1}
    assert c.closed()
    assert srv.server.counters["unsupported_command"] == 1


def test_seq_is_echoed_including_large_values(srv: ServerThread) -> None:
    c = Raw(srv.socket_path)
    c.send({"Command": "handshake", "Seq": 2**64 - 1}, {"Version": 1})
    assert c.read() == {"Error": "", "Seq": 2**64 - 1}
    c.send({"Seq": 3, "Command": "stop"}, {"Stop": 0})  # any key order
    assert c.read() == {"Error": "", "Seq": 3}


def test_pipelined_requests_in_one_write(srv: ServerThread) -> None:
    c = Raw(srv.socket_path)
    c.send(
        {"Command": "handshake", "Seq": 0},
        {"Version": 1},
        {"Command": "stats", "Seq": 1},
        {"Command": "members-filtered", "Seq": 2},
        {"Name": "node0"},
    )
    assert c.read() == {"Error": "", "Seq": 0}
    assert c.read() == {"Error": "", "Seq": 1}
    c.read()
    assert c.read() == {"Error": "", "Seq": 2}
    assert [m["Name"] for m in c.read()["Members"]] == ["node0"]


# ----------------------------------------------------------------------------------
# Garbage: the server survives, other clients are served, counters move.


def assert_dropped(srv: ServerThread, payload: bytes, counter: str, handshake: bool = True) -> None:
    before = srv.server.counters[counter]
    c = Raw(srv.tcp)
    if handshake:
        c.handshake()
    c.send_bytes(payload)
    assert c.closed(), f"server kept the connection after {payload[:40]!r}"
    wait_until(lambda: srv.server.counters[counter] > before, desc=counter)
    healthy(srv)


P = msgpack.packb


@pytest.mark.parametrize(
    ("payload", "counter"),
    [
        (b"\xc1", "malformed_msgpack"),  # never-used msgpack byte
        (b"\xa2\xff\xfe", "malformed_msgpack"),  # invalid UTF-8 in a str
        (b"\x81\x01\x02", "malformed_msgpack"),  # int map key
        (b"\x91" * 5000 + b"\x00", "malformed_msgpack"),  # nesting too deep
        (P(5), "bad_field_type"),  # header is not a map
        (P({"Command": 5, "Seq": 1}), "bad_field_type"),
        (P({"Command": b"members", "Seq": 1}, use_bin_type=True), "bad_field_type"),
        (b"\xdd\xff\xff\xff\xff", "oversized_request"),  # array32 of 4 G elements
        (b"\xdf\x00\x10\x00\x01", "oversized_request"),  # map32 over the cap
        (P({"Command": "members", "Seq": -1}), "bad_field_type"),
        (P({"Command": "members", "Seq": "1"}), "bad_field_type"),
        (P({"Command": "members", "Seq": 1.0}), "bad_field_type"),
        (P({"Command": "members-filtered", "Seq": 1}) + P([1, 2]), "bad_field_type"),
        (P({"Command": "members-filtered", "Seq": 1}) + P({"Tags": ["x"]}), "bad_field_type"),
        (P({"Command": "members-filtered", "Seq": 1}) + P({"Tags": {"a": 1}}), "bad_field_type"),
        (P({"Command": "join", "Seq": 1}) + P({"Existing": "a:1"}), "bad_field_type"),
        (P({"Command": "join", "Seq": 1}) + P({"Replay": 7}), "bad_field_type"),
        (P({"Command": "tags", "Seq": 1}) + P({"DeleteTags": [1]}), "bad_field_type"),
        (P({"Command": "force-leave", "Seq": 1}) + P({"Node": True}), "bad_field_type"),
        (P({"Command": "stop", "Seq": 1}) + P({"Stop": -5}), "bad_field_type"),
        (
            P({"Command": "stop", "Seq": 1}) + msgpack.packb(msgpack.ExtType(1, b"x")),
            "bad_field_type",
        ),
    ],
)
def test_garbage_after_handshake_is_dropped(
    srv: ServerThread, payload: bytes, counter: str
) -> None:
    assert_dropped(srv, payload, counter)


def test_wrong_handshake_types_are_dropped(srv: ServerThread) -> None:
    assert_dropped(
        srv, P({"Command": "handshake", "Seq": 0}) + P({"Version": "1"}), "bad_field_type", False
    )
    assert_dropped(
        srv, P({"Command": "handshake", "Seq": 0}) + P({"Version": 2**40}), "bad_field_type", False
    )


def test_huge_length_prefix_hits_the_size_cap(sockdir: str) -> None:
    s = ServerThread(os.path.join(sockdir, "s.sock"), max_request_size=64 * 1024)
    try:
        c = Raw(s.tcp)
        c.handshake()
        c.send_bytes(b"\xdb\xff\xff\xff\xff")  # a 4 GiB string header...
        with pytest.raises(OSError):  # ...then more than the cap: dropped mid-send
            for _ in range(100):
                c.send_bytes(b"x" * 4096)
                time.sleep(0.001)
        assert c.closed()
        wait_until(lambda: s.server.counters["oversized_request"] == 1)
        healthy(s)
    finally:
        s.close()


def test_huge_length_prefix_then_silence_times_out(sockdir: str) -> None:
    s = ServerThread(os.path.join(sockdir, "s.sock"), request_timeout=0.3)
    try:
        c = Raw(s.socket_path)
        c.handshake()
        c.send_bytes(b"\xdb\xff\xff\xff\xff")  # str32 of 4 GiB, nothing after
        assert c.closed()
        assert s.server.counters["request_timeout"] == 1
        idle = Raw(s.socket_path)  # an idle connection between requests is fine
        idle.handshake()
        time.sleep(0.5)
        idle.request("stats")
        assert idle.read()["Error"] == ""
    finally:
        s.close()


@pytest.mark.parametrize(
    "payload",
    [
        P({"Command": "members", "Seq": 1})[:9],  # header cut in the middle
        P({"Command": "members-filtered", "Seq": 1}),  # header, body never sent
        P({"Command": "join", "Seq": 1}) + P({"Existing": ["a:1", "b:2"]})[:10],
    ],
)
def test_client_disconnecting_mid_request(srv: ServerThread, payload: bytes) -> None:
    c = Raw(srv.tcp)
    c.handshake()
    c.send_bytes(payload)
    c.close()
    wait_until(lambda: srv.server.counters["truncated_request"] == 1, desc="truncated counter")
    healthy(srv)
    assert srv.agent.calls == []


def test_random_bytes_never_hurt_the_server(srv: ServerThread) -> None:
    rng = random.Random(20261127)
    before = sum(srv.server.counters[k] for k in ("malformed_msgpack", "bad_field_type"))
    for i in range(150):
        c = Raw(srv.tcp if i % 2 else srv.socket_path)
        if i % 3:
            c.handshake()
        c.send_bytes(rng.randbytes(rng.randrange(1, 300)))
        c.sock.shutdown(socket.SHUT_WR)  # EOF after the garbage: every case ends
        c.closed()
        c.close()
    healthy(srv)
    after = sum(srv.server.counters[k] for k in ("malformed_msgpack", "bad_field_type"))
    assert after > before


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    st.lists(
        st.recursive(
            st.none()
            | st.booleans()
            | st.integers(-(2**63), 2**64 - 1)
            | st.text(max_size=20)
            | st.binary(max_size=20)
            | st.sampled_from(["members", "members-filtered", "join", "tags", "stop", "auth"]),
            lambda inner: (
                st.lists(inner, max_size=4)
                | st.dictionaries(
                    st.sampled_from(
                        ["Command", "Seq", "Tags", "Name", "Status", "Existing", "Node"]
                    ),
                    inner,
                    max_size=4,
                )
            ),
            max_leaves=12,
        ),
        min_size=1,
        max_size=6,
    )
)
def test_arbitrary_msgpack_objects_never_hurt_the_server(
    srv: ServerThread, objs: list[Any]
) -> None:
    c = Raw(srv.socket_path)
    c.handshake()
    c.send(*objs)
    c.sock.shutdown(socket.SHUT_WR)
    c.closed()
    c.close()
    healthy(srv)


def test_slow_reader_is_dropped_and_does_not_stall_others(sockdir: str) -> None:
    s = ServerThread(os.path.join(sockdir, "s.sock"), write_timeout=0.5)
    many = [Member(f"node-{i:05d}", "10.0.0.1", 7946, {"role": "x" * 40}) for i in range(3000)]
    s.agent.member_list = many
    try:
        hog = Raw(s.tcp)
        hog.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        hog.handshake()
        req = P({"Command": "members", "Seq": 1})

        def flood() -> None:
            try:
                for _ in range(200):
                    hog.sock.sendall(req)
            except OSError:
                pass

        t = threading.Thread(target=flood, daemon=True)
        t.start()
        t0 = time.monotonic()
        c = Raw(s.socket_path)
        c.handshake()
        for _ in range(3):
            c.request("stats")
            assert c.read()["Error"] == ""
            c.read()
        assert time.monotonic() - t0 < 2.0
        wait_until(lambda: s.server.counters["slow_client"] == 1, timeout=10, desc="slow client")
        t.join(5)
        hog.close()
        c.request("members-filtered", {"Name": "node-00001"})
        assert c.read()["Error"] == ""
        assert [m["Name"] for m in c.read()["Members"]] == ["node-00001"]
    finally:
        s.close()


# ----------------------------------------------------------------------------------
# Listeners.


def test_unix_socket_mode_stale_file_and_cleanup(sockdir: str) -> None:
    path = os.path.join(sockdir, "s.sock")
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(path)  # a socket file nobody listens on
    stale.close()
    s = ServerThread(path)
    try:
        st_ = os.stat(path)
        assert stat.S_ISSOCK(st_.st_mode)
        assert stat.S_IMODE(st_.st_mode) == 0o660
        assert os.listdir(sockdir) == ["s.sock"]  # no temporary left behind
        healthy(s)
        other = RPCServer(FakeAgent())
        with pytest.raises(OSError, match="in use"):
            s.run(other.start_unix(path))  # a live socket is never stolen
    finally:
        s.close()
    assert not os.path.exists(path)


def test_unix_socket_custom_mode_and_non_socket_refused(sockdir: str) -> None:
    s = ServerThread(os.path.join(sockdir, "s.sock"))
    try:
        mode_path = os.path.join(sockdir, "m.sock")
        s.run(s.server.start_unix(mode_path, mode=0o600))
        assert stat.S_IMODE(os.stat(mode_path).st_mode) == 0o600
        plain = os.path.join(sockdir, "plain")
        Path(plain).write_text("x")
        with pytest.raises(FileExistsError):
            s.run(RPCServer(FakeAgent()).start_unix(plain))
        assert Path(plain).read_text() == "x"
    finally:
        s.close()


def test_close_drops_connected_clients(sockdir: str) -> None:
    s = ServerThread(os.path.join(sockdir, "s.sock"))
    c = Raw(s.socket_path)
    c.handshake()
    s.close()
    assert c.closed()


# ----------------------------------------------------------------------------------
# serfclient 1.2.0 (Seq from 0, str payloads, exact body counts).


def test_serfclient_members_stats_join_force_leave(srv: ServerThread) -> None:
    from serfclient import SerfClient

    client = SerfClient(srv.tcp[0], srv.tcp[1])
    resp = client.members()
    assert resp.head == {b"Error": b"", b"Seq": 1} or resp.head == {"Error": "", "Seq": 1}
    names = {m[b"Name"] if b"Name" in m else m["Name"] for m in _members_of(resp.body)}
    assert names == {"node0", "node1", "node2", "node3"} or names == {
        b"node0",
        b"node1",
        b"node2",
        b"node3",
    }
    filtered = client.members(name="node[01]", status="alive", tags={"role": "web"})
    assert len(_members_of(filtered.body)) == 2
    stats = client.stats()
    assert _get(_get(stats.body, "agent"), "name") in ("node0", b"node0")
    join = client.join(["10.0.0.9:7946"])
    assert _get(join.body, "Num") == 1
    assert client.force_leave("node3").head is not None
    client.close()
    assert ("force-leave", ("node3", False)) in srv.agent.calls


def test_serfclient_with_rpc_auth(auth_srv: ServerThread) -> None:
    from serfclient import SerfClient

    client = SerfClient(auth_srv.tcp[0], auth_srv.tcp[1], rpc_auth=AUTH_KEY)
    assert len(_members_of(client.members().body)) == 4
    client.close()


def _get(d: Any, key: str) -> Any:
    return d[key] if key in d else d[key.encode()]


def _members_of(body: Any) -> list[Any]:
    return list(_get(body, "Members"))


def test_counters_start_at_zero_and_activity_is_separate(srv: ServerThread) -> None:
    from serfd.agent.rpc_server import ACTIVITY_KEYS, COUNTER_KEYS

    assert srv.server.counters == dict.fromkeys(COUNTER_KEYS, 0)
    healthy(srv)
    assert srv.server.counters == dict.fromkeys(COUNTER_KEYS, 0)  # no garbage counted
    assert set(srv.server.activity) == set(ACTIVITY_KEYS)
    wait_until(lambda: srv.server.activity["connections"] == 2)
    assert srv.server.activity["requests"] == 4


# ----------------------------------------------------------------------------------
# get-coordinate, byte for byte against RPC-TRACES.md H2 (a known node) and H3 (unknown).

TRACE_H2_REQ = H("82a7436f6d6d616e64ae6765742d636f6f7264696e617465a35365710681a44e6f6465"
                 "a56e6f646531")
TRACE_H2_RESP = H(
    "82a54572726f72a0a353657106"
    "82a5436f6f726484aa41646a7573746d656e74cb3f117340599acc66a54572726f72cb3ff8000000000000"
    "a6486569676874cb3f486de5d6e8070da3566563"
    "98cb3ee2ccb8cdb465f4cb3f23a20285fd8386cbbeb4d9452e8ca093cb3f22974b3583d47c"
    "cbbf20afe0d7c6bc36cbbf101494cdf2c03dcbbf3359ee51620b90cb3f204adf73ec2f21a24f6bc3")
TRACE_H3_REQ = H("82a7436f6d6d616e64ae6765742d636f6f7264696e617465a35365710781a44e6f6465"
                 "a46e6f7065")
TRACE_H3_RESP = H(
    "82a54572726f72a0a353657107"
    "82a5436f6f726484aa41646a7573746d656e74cb0000000000000000a54572726f72cb0000000000000000"
    "a6486569676874cb0000000000000000a3566563c0a24f6bc2")


def test_trace_h_get_coordinate_bytes(srv: ServerThread) -> None:
    srv.agent.coordinates["node1"] = Coordinate(
        [8.964393080779038e-06, 0.00014978676608292887, -1.2426800656915488e-06,
         0.00014183800772796576, -0.00012731189407364098, -6.134184103490175e-05,
         -0.00029527729328309663, 0.00012430169768894945],
        1.5, 6.656723271696168e-05, 0.0007455227149082158)
    c = Raw(srv.tcp)
    c.handshake()
    for req, resp in ((TRACE_H2_REQ, TRACE_H2_RESP), (TRACE_H3_REQ, TRACE_H3_RESP)):
        c.send_bytes(req)
        assert c.read_bytes(len(resp)) == resp
    assert ("get-coordinate", "nope") in srv.agent.calls
