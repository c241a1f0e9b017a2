"""Event kinds are Enums inside serfd, and Serf's own strings at every edge: the handler
environment, RPC stream records and the filter vocabulary are byte-identical to Serf's."""

from __future__ import annotations

import msgpack

from serfd.agent.handlers import event_env
from serfd.core.filters import EVENT_TYPES, event_type, parse_filters
from serfd.core.member import Member
from serfd.core.query import QueryRecordType
from serfd.core.serf import MEMBER_EVENT_TYPES, EventType, MemberEvent, UserEvent
from serfd.rpc.protocol import encode_event_record

SERF_NAMES = ("member-join", "member-leave", "member-failed", "member-update", "member-reap",
              "user", "query")


def test_event_type_values_are_serfs_names_in_serfs_order() -> None:
    assert tuple(t.value for t in EventType) == SERF_NAMES == EVENT_TYPES
    assert {t.value for t in MEMBER_EVENT_TYPES} == set(SERF_NAMES[:5])
    assert [t.value for t in QueryRecordType] == ["ack", "response", "done"]
    assert [str(f) for f in parse_filters("member-join,user:deploy,query")] == [
        "member-join", "user:deploy", "query"]


def test_handler_environment_and_rpc_records_carry_plain_strings() -> None:
    m = Member("n1", "10.0.0.1", 7946, {})
    ev = MemberEvent(EventType.MEMBER_FAILED, (m,))
    env = event_env(ev, m, {})
    assert type(env["SERF_EVENT"]) is str and env["SERF_EVENT"] == "member-failed"
    rec = encode_event_record(ev)
    assert type(rec["Event"]) is str
    assert msgpack.packb(rec) == msgpack.packb({**rec, "Event": "member-failed"})
    user = UserEvent(1, "deploy", b"", False)
    assert event_type(user) is EventType.USER
    assert type(event_env(user, m, {})["SERF_EVENT"]) is str
