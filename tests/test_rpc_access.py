"""RPC access control: socket mode and group, SO_PEERCRED in the log, TCP auth as Serf."""

from __future__ import annotations

import grp
import logging
import os
import pwd
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import msgpack
import pytest

from serfd.agent.rpc_server import RPCServer, peer_credentials, resolve_group
from serfd.testing.fake_agent import ServerThread

ROOT = os.geteuid() == 0


@pytest.fixture
def opendir() -> Iterator[Path]:
    """A directory every user may traverse (pytest's tmp_path is 0700)."""
    d = Path(tempfile.mkdtemp(prefix="sfdacl-", dir="/tmp"))
    d.chmod(0o755)
    yield d
    shutil.rmtree(d, ignore_errors=True)


def _call(path: str, *objs: object) -> list[object]:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(5)
        s.connect(path)
        s.sendall(b"".join(msgpack.packb(o) for o in objs))
        up = msgpack.Unpacker(raw=False)
        out: list[object] = []
        while len(out) < 2:
            data = s.recv(65536)
            if not data:
                break
            up.feed(data)
            out.extend(up)
        return out


def test_peer_credentials_of_a_socketpair() -> None:
    a, b = socket.socketpair()
    with a, b:
        assert peer_credentials(a) == (os.getpid(), os.getuid(), os.getgid())
    assert peer_credentials(None) is None


def test_resolve_group() -> None:
    assert resolve_group("0") == 0
    assert resolve_group(grp.getgrgid(os.getgid()).gr_name) == os.getgid()
    with pytest.raises(ValueError, match="unknown group 'no-such-group-x'"):
        resolve_group("no-such-group-x")


def test_mutating_commands_log_the_peer_uid(opendir: Path,
                                            caplog: pytest.LogCaptureFixture) -> None:
    path = str(opendir / "s.sock")
    srv = ServerThread(path)
    try:
        with caplog.at_level(logging.INFO, logger="serfd.rpc"):
            replies = _call(path, {"Command": "handshake", "Seq": 0}, {"Version": 1},
                            {"Command": "tags", "Seq": 1}, {"Tags": {"a": "b"}, "DeleteTags": []})
            assert replies == [{"Error": "", "Seq": 0}, {"Error": "", "Seq": 1}]
            _call(path, {"Command": "handshake", "Seq": 0}, {"Version": 1},
                  {"Command": "members", "Seq": 1})
    finally:
        srv.close()
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("RPC ")]
    assert lines == [f"RPC tags from unix(uid {os.getuid()}, pid {os.getpid()})"]


def test_socket_mode_and_group(opendir: Path) -> None:
    path = str(opendir / "g.sock")
    gid = os.getgid()
    srv = ServerThread.__new__(ServerThread)
    ServerThread.__init__(srv, str(opendir / "other.sock"))  # a loop to run on
    try:
        server = RPCServer(srv.agent)
        srv.run(server.start_unix(path, 0o640, str(gid)))
        st = os.stat(path)
        assert stat.S_ISSOCK(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o640
        assert st.st_gid == gid
        srv.run(server.close())
        assert not os.path.exists(path)
        with pytest.raises(ValueError, match="unknown group"):
            srv.run(server.start_unix(path, 0o660, "no-such-group-x"))
    finally:
        srv.close()


_CLIENT = """
import os, socket, sys
gid, uid, path = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
os.setgroups([]); os.setgid(gid); os.setuid(uid)
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
try:
    s.connect(path)
except PermissionError:
    print("refused"); sys.exit(0)
s.sendall(bytes.fromhex("82a7436f6d6d616e64a968616e647368616b65a353657100")
          + bytes.fromhex("81a756657273696f6e01"))
print("answered" if s.recv(100) else "closed")
"""


@pytest.mark.skipif(not ROOT, reason="needs root to run a client as another user")
def test_user_outside_the_socket_group_is_refused(opendir: Path) -> None:
    nobody = pwd.getpwnam("nobody")
    outsider_gid = nobody.pw_gid
    member_gid = next(g.gr_gid for g in grp.getgrall() if g.gr_gid not in (0, outsider_gid))
    path = str(opendir / "acl.sock")
    srv = ServerThread.__new__(ServerThread)
    ServerThread.__init__(srv, str(opendir / "other.sock"))
    try:
        server = RPCServer(srv.agent)
        srv.run(server.start_unix(path, 0o660, str(member_gid)))

        def client(gid: int) -> str:
            out = subprocess.run([sys.executable, "-c", _CLIENT, str(gid), str(nobody.pw_uid),
                                  path], capture_output=True, text=True, timeout=20, check=True)
            return out.stdout.strip()

        assert client(outsider_gid) == "refused"  # not in the socket's group
        assert client(member_gid) == "answered"  # same user, in the group: let in
        srv.run(server.close())
    finally:
        srv.close()
