"""Key rotation across real serf and serfd: Serf's internal key queries both ways, the
keyring file, and a restart that keeps the rotated keyring."""

from __future__ import annotations

import stat

from serfd.wire.keyring import decode_key, generate_key, read_keyring_file
from tests.integration.dropins import restart, start_serfd
from tests.integration.harness import PROBE_INTERVAL_LAN, SUSPICION_TIMEOUT_LAN, RPCClient, serf_cli
from tests.support import wait_until

FAIL_TIMEOUT = SUSPICION_TIMEOUT_LAN + PROBE_INTERVAL_LAN + 8.0


def serf_keys(agent, *args: str):  # type: ignore[no-untyped-def]
    return serf_cli("keys", *args, f"-rpc-addr={agent.rpc_addr}", timeout=30)


def file_keys(agent) -> list[str]:  # type: ignore[no-untyped-def]
    from serfd.wire.keyring import encode_key

    return [encode_key(k) for k in read_keyring_file(agent.state_dir / "keyring")]


def test_rotation_both_ways_and_restart(make_cluster) -> None:  # type: ignore[no-untyped-def]
    k1, k2, k3 = generate_key(), generate_key(), generate_key()
    c = make_cluster()
    s = c.serf("gosrf", extra_args=[f"-encrypt={k1}"])
    d1 = start_serfd(c, "pyd1", f'encrypt_key = "{k1}"')
    d2 = start_serfd(c, "pyd2", f'encrypt_key = "{k1}"')
    c.wait_ready()
    assert d1.join([s.bind_addr]) == 1
    assert d2.join([s.bind_addr]) == 1
    c.wait_all_alive(timeout=8)

    # serf's CLI on the serf agent rotates serfd's keyring.
    out = serf_keys(s, f"-install={k2}")
    assert out.returncode == 0, out.stdout + out.stderr
    assert file_keys(d1) == [k1, k2] and file_keys(d2) == [k1, k2]
    out = serf_keys(s, f"-use={k2}")
    assert out.returncode == 0, out.stdout + out.stderr
    assert file_keys(d1) == [k2, k1]
    out = serf_keys(s, f"-remove={k1}")
    assert out.returncode == 0, out.stdout + out.stderr
    assert file_keys(d1) == [k2] and file_keys(d2) == [k2]
    assert stat.S_IMODE((d1.state_dir / "keyring").stat().st_mode) == 0o600
    # serfctl on serfd sees the result on every member...
    out = d1.serfctl("keys", "--list")
    assert out.returncode == 0, out.stderr
    assert f"{k2}  [3/3]" in out.stdout and k1 not in out.stdout

    # ...and rotates the serf agent's keyring too.
    for args, ok in ((["--install", k3], "Successfully installed key!"),
                     (["--use", k3], "Successfully changed primary key!"),
                     (["--remove", k2], "Successfully removed key!")):
        out = d1.serfctl("keys", *args)
        assert out.returncode == 0 and ok in out.stdout, out.stdout + out.stderr
    out = serf_keys(s, "-list")
    assert out.returncode == 0, out.stdout + out.stderr
    assert k3 in out.stdout and "[3/3]" in out.stdout and k2 not in out.stdout
    # The cluster still talks (now on k3 only): a tag change goes through.
    d2.set_tags({"rotated": "yes"})
    wait_until(lambda: s.member_map()["pyd2"].tags.get("rotated") == "yes", 8, desc="gossip")

    # Removing the primary key fails everywhere, with memberlist's message per node.
    out = d1.serfctl("keys", "--remove", k3)
    assert out.returncode == 1
    assert "3/3 nodes reported failure" in out.stderr
    assert out.stderr.count("Removing the primary key is not allowed") == 3
    with RPCClient(d1.rpc_target) as cl:
        body = cl.call("list-keys", timeout=30)
    assert body == {"Keys": {k3: 3}, "Messages": {}, "NumErr": 0, "NumNodes": 3, "NumResp": 3}

    # A restart keeps the rotated keyring (the config still says k1) and rejoins.
    d1.kill()
    c.wait_statuses([s, d2], {"pyd1": "failed"}, FAIL_TIMEOUT)
    restart(d1)
    d1.wait_ready()
    c.wait_statuses([s, d2, d1], {"pyd1": "alive", "pyd2": "alive", "gosrf": "alive"}, 8)
    assert file_keys(d1) == [k3]
    assert "encrypt_key is not in the keyring file" in d1.log_path.read_text()


def test_key_commands_without_encryption(make_cluster) -> None:  # type: ignore[no-untyped-def]
    c = make_cluster()
    d = c.serfd("plain")
    s = c.serf("plainsrf")
    c.wait_ready()
    assert d.join([s.bind_addr]) == 1
    out = d.serfctl("keys", "--list")
    assert out.returncode == 1
    assert "2/2 nodes reported failure" in out.stderr
    assert out.stderr.count("Keyring is empty (encryption not enabled)") == 2
    out = serf_keys(s, f"-install={generate_key()}")
    assert out.returncode == 1
    assert out.stderr.count("No keyring to modify (encryption not enabled)") + out.stdout.count(
        "No keyring to modify (encryption not enabled)") == 2
    out = d.serfctl("keys", "--install", "not base64!")
    assert out.returncode == 1 and "illegal base64 data at input byte" in out.stderr


def test_keygen() -> None:
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "serfctl", "keygen"], capture_output=True,
                         text=True, timeout=20, check=True)
    assert len(decode_key(out.stdout.strip())) == 32
