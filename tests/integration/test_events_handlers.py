"""User events, queries and handlers across serfd and the real `serf agent` (issue 4)."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

from tests.integration.harness import Agent, Cluster, RPCClient, serf_cli
from tests.support import wait_until

# A Serf-style handler: one record per run, the SERF_* variables and stdin.
RECORD = """#!/bin/sh
out="{dir}/$SERF_SELF_NAME.$1.log"
{{
  echo "== $SERF_EVENT user=$SERF_USER_EVENT ltime=$SERF_USER_LTIME self=$SERF_SELF_NAME role=$SERF_SELF_ROLE tag_idx=$SERF_TAG_IDX notify=${{NOTIFY_SOCKET:-none}}"
  cat
}} >> "$out"
"""  # noqa: E501 - the handler's record line, one echo kept whole
QUERY = """#!/bin/sh
printf '%s:' "$SERF_SELF_NAME"
cat
"""


def script(path: Path, text: str) -> str:
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return str(path)


def send_event(agent: Agent, name: str, payload: bytes = b"") -> None:
    with RPCClient(agent.rpc_target, timeout=5.0) as c:
        c.event(name, payload, coalesce=False)


def records(path: Path) -> list[str]:
    try:
        text = path.read_text()
    except FileNotFoundError:
        return []
    return [r for r in text.split("== ") if r]


def serfd_handlers(record: str, query: str) -> str:
    return f"""
[handlers]
"user:deploy" = "{record} user"
"member-join" = ["{record}", "member"]
"query:uptime" = ["{query}"]
"""


def test_mixed_cluster_events_queries_and_member_handlers(
    cluster: Cluster, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    record = script(tmp_path / "record.sh", RECORD.format(dir=out))
    query = script(tmp_path / "query.sh", QUERY)
    serf_handlers = [
        "-event-handler", f"user:deploy={record} user",
        "-event-handler", f"query:uptime={query}",
    ]
    s0 = cluster.serf("s0", tags={"role": "lb", "idx": "0"}, extra_args=serf_handlers)
    s0.wait_ready()
    d1 = cluster.serfd("d1", tags={"role": "web", "idx": "1"}, join=[s0.bind_addr],
                       extra_toml=serfd_handlers(record, query))
    s2 = cluster.serf("s2", tags={"role": "db", "idx": "2"}, extra_args=serf_handlers)
    d3 = cluster.serfd("d3", tags={"role": "web", "idx": "3"}, join=[s0.bind_addr],
                       extra_toml=serfd_handlers(record, query))
    cluster.wait_ready()
    s2.join([s0.bind_addr])
    cluster.wait_all_alive(timeout=15)

    # serf event (coalesce=true by default) from a serf agent runs serfd's handlers.
    r = serf_cli("event", f"-rpc-addr={s0.rpc_addr}", "deploy", "v1")
    assert r.returncode == 0, r.stderr
    for d in (d1, d3):
        path = out / f"{d.name}.user.log"
        wait_until(lambda p=path: any("v1" in x for x in records(p)), 10, desc=f"{d.name} v1")
        (rec,) = records(path)
        assert rec.startswith("user user=deploy ltime=") and f"self={d.name} role=web" in rec
        assert f"tag_idx={d.tags['idx']}" in rec and "notify=none" in rec
        assert rec.endswith("\nv1\n")

    # serfctl event runs the serf agents' handlers.
    r = d1.serfctl("event", "deploy", "v2")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "Event 'deploy' dispatched! Coalescing enabled: true"
    for s in (s0, s2):
        path = out / f"{s.name}.user.log"
        wait_until(lambda p=path: any("v2" in x for x in records(p)), 10, desc=f"{s.name} v2")
        assert f"self={s.name}" in records(path)[-1]

    # serfctl query collects all 4 and ends well before its timeout.
    start = time.monotonic()
    r = d1.serfctl("query", "--timeout", "10s", "uptime", "hi")
    took = time.monotonic() - start
    assert r.returncode == 0, r.stderr
    for n in ("s0", "d1", "s2", "d3"):
        assert f"Ack from '{n}'" in r.stdout
        assert f"Response from '{n}': {n}:hi" in r.stdout
    assert r.stdout.rstrip().endswith("Total Acks: 4\nTotal Responses: 4")
    assert took < 5.0, took

    # The real serf CLI gets serfd's responses too.
    r = serf_cli("query", f"-rpc-addr={s2.rpc_addr}", "-timeout=3s", "uptime", "yo", timeout=20)
    assert r.returncode == 0, r.stderr
    for n in ("s0", "d1", "s2", "d3"):
        assert f"Response from '{n}': {n}:yo" in r.stdout, r.stdout

    # Member events from serf agents reached serfd's member-join handler (coalesced lines).
    lines = "".join(records(out / "d1.member.log"))
    assert "\ns0\t" in lines and "\ts0" not in lines.split("\n")[0]
    assert any(ln.startswith("s2\t") and ln.split("\t")[2] == "db" for ln in lines.splitlines())

    # Each event ran each handler exactly once per node (gossip, eager sends and push/pull).
    time.sleep(1.5)
    for n in ("s0", "d1", "s2", "d3"):
        recs = records(out / f"{n}.user.log")
        assert sum("v1" in x for x in recs) == 1 and sum("v2" in x for x in recs) == 1, (n, recs)


def test_payload_over_the_limit_is_refused_before_sending(cluster: Cluster) -> None:
    s0 = cluster.serf("s0")
    s0.wait_ready()
    d1 = cluster.serfd("d1", join=[s0.bind_addr])
    cluster.wait_ready()
    cluster.wait_all_alive()
    before = d1.stats()["serf"]["event_time"]
    r = d1.serfctl("event", "big", "x" * 600)
    assert r.returncode == 1
    assert "user event exceeds configured limit of 512 bytes before encoding" in r.stderr
    r = d1.serfctl("query", "big", "x" * 1100)
    assert r.returncode == 1
    assert "query exceeds limit of 1024 bytes" in r.stderr
    assert d1.stats()["serf"]["event_time"] == before
    assert s0.stats()["serf"]["event_time"] == before


SLOW = """#!/bin/sh
echo $$ > "{dir}/slow.pid"
sleep 60 &
echo $! > "{dir}/child.pid"
sleep 60
"""
FAST = """#!/bin/sh
date +%s.%N > "{dir}/fast.$SERF_USER_EVENT"
"""


def _text(path: Path) -> str:
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        return ""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as f:
        return f.read().split()[2] != "Z"


def test_slow_handler_blocks_nothing_and_is_killed_with_its_children(
    cluster: Cluster, tmp_path: Path
) -> None:
    slow = script(tmp_path / "slow.sh", SLOW.format(dir=tmp_path))
    fast = script(tmp_path / "fast.sh", FAST.format(dir=tmp_path))
    s0 = cluster.serf("s0")
    s0.wait_ready()
    d1 = cluster.serfd("d1", join=[s0.bind_addr], extra_toml=f"""
[handlers]
"user:slow" = "{slow}"
"user:fast,user:fast2" = ["{fast}"]
[handler_limits]
timeout = "4s"
""")
    cluster.wait_ready()
    cluster.wait_all_alive()
    send_event(s0, "slow")
    # The redirect creates the file before echo writes it: wait for the content.
    wait_until(lambda: _text(tmp_path / "child.pid"), 5, desc="slow handler started")
    sent = time.time()
    send_event(s0, "fast")
    # The redirect creates the file before `date` writes it: wait for the content.
    wait_until(lambda: _text(tmp_path / "fast.fast"), 1.5, desc="fast handler ran")
    assert float((tmp_path / "fast.fast").read_text()) - sent < 1.0
    slow_pid = int((tmp_path / "slow.pid").read_text())
    child_pid = int((tmp_path / "child.pid").read_text())
    assert _alive(slow_pid) and _alive(child_pid)
    wait_until(lambda: not _alive(slow_pid) and not _alive(child_pid), 8,
               desc="slow handler and its child killed")
    assert "timed out after 4s" in d1.log_tail(200)
    # Nobody was suspected meanwhile.
    assert "suspect" not in d1.log_tail(400).lower() or "d1" not in s0.log_tail(400)
    assert s0.statuses()["d1"] == "alive" and d1.statuses()["s0"] == "alive"


def test_handlers_dropped_in_take_effect_on_sighup(cluster: Cluster, tmp_path: Path) -> None:
    d1 = cluster.serfd("d1")
    d1.wait_ready()
    hdir = d1.config_dir / "handlers"
    hdir.mkdir(exist_ok=True)
    script(hdir / "deploy.sh", f"#!/bin/sh\ncat > {tmp_path}/got.$SERF_USER_EVENT\n")
    (d1.config_dir / "60-deploy.toml").write_text('[handlers]\n"user:deploy" = "deploy.sh"\n')
    send_event(d1, "deploy", b"before")
    time.sleep(0.5)
    assert not (tmp_path / "got.deploy").exists()
    assert d1.proc is not None
    d1.proc.send_signal(signal.SIGHUP)

    got = tmp_path / "got.deploy"

    def reloaded() -> bool:
        send_event(d1, "deploy", b"after")
        # The shell creates the file before cat has written to it: wait for the content.
        return wait_until(lambda: got.exists() and got.read_text() == "after\n", 1.0) >= 0

    wait_until(reloaded, 10, interval=0.3, desc="handler after reload")
    assert got.read_text() == "after\n"


def test_serfctl_stream_and_monitor(cluster: Cluster) -> None:
    d1 = cluster.serfd("d1")
    d1.wait_ready()
    cmd = [sys.executable, "-m", "serfctl", "--socket", str(d1.socket_path)]
    stream = subprocess.Popen([*cmd, "stream", "--type", "user:hello"],
                              stdout=subprocess.PIPE, text=True)
    monitor = subprocess.Popen([*cmd, "monitor", "--log-level", "info"],
                               stdout=subprocess.PIPE, text=True)
    try:
        time.sleep(0.5)
        assert d1.serfctl("event", "--coalesce", "false", "other", "x").returncode == 0
        assert d1.serfctl("event", "--coalesce", "false", "hello", "world").returncode == 0
        assert stream.stdout is not None and monitor.stdout is not None
        line = stream.stdout.readline()
        assert '"event":"user"' in line and '"name":"hello"' in line and '"payload":"world"' in line
        seen: list[str] = []
        wait_until(lambda: seen.append(monitor.stdout.readline()) or
                   any("received event: user-event: hello" in x for x in seen), 10)
        assert all(" [" in x for x in seen if x.strip())
    finally:
        for p in (stream, monitor):
            p.send_signal(signal.SIGINT)
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                p.kill()
    r = d1.serfctl("reachability")
    assert r.returncode == 0 and "Successfully contacted all live nodes" in r.stdout, r.stdout

