"""enable_syslog / syslog_facility: Serf's keys, validated; records reach a syslog socket
with the facility and Serf's severities in the <PRI> header; no socket is no crash."""

from __future__ import annotations

import logging
import os
import re
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from serfd.agent.config import SYSLOG_FACILITIES, Config, ConfigError, config_to_toml, load_config
from serfd.agent.logsetup import TRACE, SyslogHandler, setup_logging

# go-syslog's facility numbers (syslog.h): LOG_LOCAL0 is 16, LOG_DAEMON 3, LOG_USER 1.
LOCAL0, LOCAL3, DAEMON = 16, 19, 3



def load_config_text(d: Path, text: str) -> Config:
    (d / "a.toml").write_text(text)
    return load_config(d)


def test_defaults_are_serfs(tmp_path: Path) -> None:
    cfg = load_config(tmp_path)
    assert cfg.enable_syslog is False and cfg.syslog_facility == "LOCAL0"


def test_facility_any_case_every_serf_name(tmp_path: Path) -> None:
    for name in SYSLOG_FACILITIES:
        text = f'enable_syslog = true\nsyslog_facility = "{name.lower()}"\n'
        cfg = load_config_text(tmp_path, text)
        assert cfg.syslog_facility == name
        out = tmp_path / "out"
        out.mkdir(exist_ok=True)
        (out / "c.toml").write_text(config_to_toml(cfg))
        assert load_config(out) == cfg


@pytest.mark.parametrize(("text", "reason"), [
    ('syslog_facility = "LOCAL8"', '"LOCAL8" is not a syslog facility: one of KERN, USER'),
    ('syslog_facility = "ntp"', '"ntp" is not a syslog facility'),  # Python's, not Serf's
    ('syslog_facility = ""', "must not be empty"),
    ("syslog_facility = 16", "expected a string, got integer"),
    ('enable_syslog = "yes"', "expected a boolean"),
])
def test_bad_values_are_file_key_reason(tmp_path: Path, text: str, reason: str) -> None:
    path = tmp_path / "a.toml"
    path.write_text(text + "\n")
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path)
    (err,) = info.value.errors
    key = text.split(" ")[0]
    assert err.startswith(f"{path}: {key}: ") and reason in err


@pytest.fixture
def syslog_socket(tmp_path: Path) -> Iterator[tuple[str, socket.socket]]:
    """A fake syslog daemon: a Unix datagram socket bound in the test's directory."""
    path = str(tmp_path / "log")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(5)
    yield path, sock
    sock.close()


@pytest.fixture
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    for h in root.handlers:
        if h not in handlers:
            h.close()
    root.handlers[:] = handlers
    root.setLevel(level)


_LINE = re.compile(rb"<(\d+)>[A-Z][a-z]{2} [ \d]\d \d\d:\d\d:\d\d serfd\[(\d+)\]: (.*)\n")


def _read(sock: socket.socket) -> tuple[int, int, bytes]:
    m = _LINE.fullmatch(sock.recv(65536))
    assert m is not None
    return int(m.group(1)), int(m.group(2)), m.group(3)


@pytest.mark.usefixtures("restore_logging")
def test_records_reach_syslog_with_facility_and_serfs_severities(
        syslog_socket: tuple[str, socket.socket]) -> None:
    path, sock = syslog_socket
    setup_logging("trace", syslog_facility="LOCAL3", syslog_address=path)
    log = logging.getLogger("serfd.agent.test")
    # Serf's levelPriority: TRACE debug(7), DEBUG info(6), INFO notice(5), WARN warning(4),
    # ERR err(3); CRIT crit(2).
    for level, severity in [(TRACE, 7), (logging.DEBUG, 6), (logging.INFO, 5),
                            (logging.WARNING, 4), (logging.ERROR, 3), (logging.CRITICAL, 2)]:
        log.log(level, "level %s", logging.getLevelName(level))
        pri, pid, text = _read(sock)
        assert pri == LOCAL3 * 8 + severity
        assert pid == os.getpid()
        assert text == f"serfd.agent.test: level {logging.getLevelName(level)}".encode()


@pytest.mark.usefixtures("restore_logging")
def test_level_filter_applies_to_syslog_too(syslog_socket: tuple[str, socket.socket]) -> None:
    path, sock = syslog_socket
    setup_logging("warn", syslog_facility="DAEMON", syslog_address=path)
    logging.getLogger("x").info("not this")
    logging.getLogger("x").warning("this")
    pri, _, text = _read(sock)
    assert (pri, text) == (DAEMON * 8 + 4, b"x: this")


@pytest.mark.usefixtures("restore_logging")
def test_missing_socket_warns_and_does_not_crash(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = str(tmp_path / "nolog")
    setup_logging("info", syslog_facility="LOCAL0", syslog_address=path)
    logging.getLogger("serfd.agent.x").info("still logged to stderr")
    err = capsys.readouterr().err
    assert (f"syslog: cannot connect to {path}: No such file or directory; logging to "
            "stderr only until it appears") in err
    assert "still logged to stderr" in err
    (tee,) = [h for h in logging.getLogger().handlers if isinstance(h, SyslogHandler)]
    assert tee.dropped == {"syslog_unreachable": 1}


def test_socket_that_appears_later_is_used(tmp_path: Path) -> None:
    path = str(tmp_path / "late")
    tee = SyslogHandler("USER", path)
    assert tee.connect_error is not None
    rec = logging.LogRecord("n", logging.INFO, __file__, 1, "early", (), None)
    tee.handle(rec)
    assert tee.dropped == {"syslog_unreachable": 1}
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(5)
    try:
        late = logging.LogRecord("n", logging.INFO, __file__, 1, "late", (), None)
        late.created = rec.created + 1.0  # the reconnect waits SYSLOG_RETRY
        tee.handle(late)
        pri, _, text = _read(sock)
        assert (pri, text) == (1 * 8 + 5, b"n: late")
    finally:
        sock.close()
        tee.close()


def test_full_syslog_queue_drops_and_counts(syslog_socket: tuple[str, socket.socket]) -> None:
    path, _unread = syslog_socket
    tee = SyslogHandler("LOCAL0", path)
    try:
        rec = logging.LogRecord("n", logging.INFO, __file__, 1, "x" * 1000, (), None)
        sent = 0
        while not tee.dropped and sent < 100_000:  # nobody reads: the queue fills
            tee.handle(rec)
            sent += 1
        assert tee.dropped == {"syslog_busy": 1}  # the send did not block
    finally:
        tee.close()
