"""TCP RPC with an auth key: serfd refuses unauthenticated commands byte for byte as serf."""

from __future__ import annotations

import json
import socket
import subprocess
import sys

import msgpack

from tests.integration.dropins import start_serfd
from tests.integration.harness import serf_cli
from tests.support import wait_until

TOKEN = "s3cret-token"


def _session(addr: str) -> list[bytes]:
    """Raw replies to: handshake, members (no auth), auth (wrong), auth (right), members."""
    host, _, port = addr.rpartition(":")
    steps = [
        [{"Command": "handshake", "Seq": 0}, {"Version": 1}],
        [{"Command": "members", "Seq": 1}],
        [{"Command": "auth", "Seq": 2}, {"AuthKey": "wrong"}],
        [{"Command": "auth", "Seq": 3}, {"AuthKey": TOKEN}],
    ]
    out: list[bytes] = []
    with socket.create_connection((host, int(port)), timeout=5) as s:
        for objs in steps:
            s.sendall(b"".join(msgpack.packb(o, use_bin_type=True) for o in objs))
            out.append(s.recv(65536))
        s.sendall(msgpack.packb({"Command": "members", "Seq": 4}))
        up = msgpack.Unpacker(raw=False)
        objs_in: list[object] = []
        while len(objs_in) < 2:
            up.feed(s.recv(65536))
            objs_in.extend(up)
        assert objs_in[0] == {"Error": "", "Seq": 4}
    return out


def test_auth_key_refusals_match_serf(make_cluster) -> None:  # type: ignore[no-untyped-def]
    c = make_cluster()
    cfg = c.tmpdir / "rpc_auth.json"
    cfg.parent.mkdir(parents=True, exist_ok=True)
    cfg.write_text(json.dumps({"rpc_auth": TOKEN}))
    s = c.serf("gosrf", extra_args=[f"-config-file={cfg}"])
    d = start_serfd(c, "pyd", f'[rpc]\nauth_key = "{TOKEN}"')
    # wait_ready's members call needs auth on both: wait for the ports instead.
    _wait_port(s.rpc_addr)
    _wait_port(d.rpc_addr)
    go, py = _session(s.rpc_addr), _session(d.rpc_addr)
    assert py == go
    assert msgpack.unpackb(py[1]) == {"Error": "Authentication required", "Seq": 1}
    assert msgpack.unpackb(py[2]) == {"Error": "Invalid authentication token", "Seq": 2}
    # Serf's own CLI against serfd: refused without the key, served with it.
    no = serf_cli("members", f"-rpc-addr={d.rpc_addr}")
    assert no.returncode != 0 and "Authentication required" in no.stderr + no.stdout
    yes = serf_cli("members", f"-rpc-addr={d.rpc_addr}", f"-rpc-auth={TOKEN}")
    assert yes.returncode == 0 and "pyd" in yes.stdout


def _wait_port(addr: str, timeout: float = 10.0) -> None:
    host, _, port = addr.rpartition(":")

    def accepts() -> bool:
        socket.create_connection((host, int(port)), timeout=1).close()
        return True

    wait_until(accepts, timeout, 0.05, desc=f"{addr} accepting", retry_on=(OSError,))


def test_non_loopback_tcp_without_auth_key_is_refused_at_start(tmp_path) -> None:  # type: ignore[no-untyped-def]
    d = tmp_path / "serfd.d"
    d.mkdir()
    (d / "50.toml").write_text('node_name = "x"\nbind = "127.0.0.1:0"\n'
                               f'state_dir = "{tmp_path}/state"\n[rpc]\ntcp = "0.0.0.0:7373"\n'
                               f'socket = "{tmp_path}/s.sock"\n')
    out = subprocess.run([sys.executable, "-m", "serfd", "--config-dir", str(d)],
                         capture_output=True, text=True, timeout=20, check=False)
    assert out.returncode == 2
    assert "rpc.tcp" in out.stderr and "auth_key" in out.stderr
    assert not (tmp_path / "s.sock").exists()
