"""Gossip encryption against the real `serf agent -encrypt`: mixed clusters, wrong keys, rollout."""

from __future__ import annotations

import stat

import pytest

from serfd.wire.keyring import decode_key, generate_key, read_keyring_file
from tests.integration.dropins import start_serfd
from tests.integration.harness import RPCError
from tests.support import wait_until

CONVERGE = 8.0


def _log_has(agent, text: str) -> bool:  # type: ignore[no-untyped-def]
    return text in agent.log_path.read_text(errors="replace")


def test_mixed_encrypted_cluster(make_cluster) -> None:  # type: ignore[no-untyped-def]
    key = generate_key()
    c = make_cluster()
    s = c.serf("gosrf", extra_args=[f"-encrypt={key}"])
    d1 = start_serfd(c, "pyd1", f'encrypt_key = "{key}"')
    d2 = start_serfd(c, "pyd2", f'encrypt_key = "{key}"')
    c.wait_ready()
    assert d1.join([s.bind_addr]) == 1  # serfd -> serf
    assert s.join([d2.bind_addr]) == 1  # serf -> serfd
    c.wait_all_alive(timeout=CONVERGE)
    d1.set_tags({"enc": "yes"})
    wait_until(lambda: s.member_map()["pyd1"].tags.get("enc") == "yes", CONVERGE, desc="tags")
    assert d1.stats()["serf"]["encrypted"] == "true"
    # The keyring was persisted in the state dir, private to serfd.
    path = d1.state_dir / "keyring"
    assert read_keyring_file(path) == [decode_key(key)]
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_wrong_key_or_no_key_cannot_join_and_logs_why(make_cluster) -> None:  # type: ignore[no-untyped-def]
    key = generate_key()
    c = make_cluster()
    s = c.serf("gosrf", extra_args=[f"-encrypt={key}"])
    wrong = start_serfd(c, "wrong", f'encrypt_key = "{generate_key()}"')
    plain = c.serfd("plain")
    good = start_serfd(c, "good", f'encrypt_key = "{key}"')
    c.wait_ready()
    assert good.join([s.bind_addr]) == 1
    for agent, reason in (
        (wrong, "No installed keys could decrypt the message"),
        (plain, "Remote state is encrypted and encryption is not configured"),
    ):
        for target in (s, good):
            with pytest.raises(RPCError) as e:
                agent.join([target.bind_addr])
            assert reason in e.value.error, e.value.error
    # And the other way: serf with another key cannot join serfd; serfd's log says why.
    s2 = c.serf("othersrf", extra_args=[f"-encrypt={generate_key()}"])
    s2.wait_ready()
    with pytest.raises(RPCError):
        s2.join([good.bind_addr])
    wait_until(lambda: _log_has(good, "No installed keys could decrypt the message"), 5,
               desc="serfd logs the refused stream")
    for a in (s, good):
        assert set(a.statuses()) == {"gosrf", "good"}


def test_join_config_failure_is_logged(make_cluster) -> None:  # type: ignore[no-untyped-def]
    c = make_cluster()
    s = c.serf("gosrf", extra_args=[f"-encrypt={generate_key()}"])
    s.wait_ready()
    d = start_serfd(c, "pyd", f'encrypt_key = "{generate_key()}"', join=[s.bind_addr])
    d.wait_ready()
    wait_until(lambda: _log_has(d, "No installed keys could decrypt the message"), 10,
               desc="join failure reason in serfd's log")


def test_rolling_out_encryption(make_cluster) -> None:  # type: ignore[no-untyped-def]
    """memberlist's rollout: step 1 (key, verify nothing) talks to plain nodes; step 2
    (encrypt outgoing, accept both) talks to encrypted nodes and to step-1 nodes."""
    key = generate_key()
    c = make_cluster()
    s_plain = c.serf("plainsrf")
    step1 = start_serfd(c, "step1", (
        f'encrypt_key = "{key}"\ngossip_verify_incoming = false\ngossip_verify_outgoing = false'))
    c.wait_ready()
    assert step1.join([s_plain.bind_addr]) == 1
    c.wait_statuses([step1, s_plain], {"step1": "alive", "plainsrf": "alive"}, CONVERGE)

    c2 = make_cluster()
    s_enc = c2.serf("encsrf", extra_args=[f"-encrypt={key}"])
    step2 = start_serfd(c2, "step2", (
        f'encrypt_key = "{key}"\ngossip_verify_incoming = false'))
    step1b = start_serfd(c2, "step1b", (
        f'encrypt_key = "{key}"\ngossip_verify_incoming = false\ngossip_verify_outgoing = false'))
    c2.wait_ready()
    assert s_enc.join([step2.bind_addr]) == 1
    assert step1b.join([step2.bind_addr]) == 1
    c2.wait_statuses([s_enc, step2], {"encsrf": "alive", "step2": "alive"}, CONVERGE)
    wait_until(lambda: step2.statuses().get("step1b") == "alive", CONVERGE, desc="step1b")
    # A step-1 node (plaintext out) cannot reach a node that verifies incoming gossip.
    with pytest.raises(RPCError) as e:
        step1b.join([s_enc.bind_addr])
    assert "not encrypted" in e.value.error
