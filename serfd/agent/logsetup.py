"""Logging to stderr: a human format with timestamps, or journald priorities under systemd.

With ``enable_syslog`` (Serf's option, mostly useful with ``--daemonize``) every record
also goes to the local syslog daemon on ``/dev/log``: :class:`SyslogHandler`, a
non-blocking datagram socket, so a stuck syslog daemon costs a counted drop, never a
stalled loop (go-syslog gives its local writes a 20 ms deadline for the same reason).
"""

from __future__ import annotations

import logging
import logging.handlers
import os
import socket
import sys
import time

from serfd.base.ratelog import DropLog

TRACE = 5
logging.addLevelName(TRACE, "TRACE")

LEVELS = {
    "trace": TRACE,
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warn": logging.WARNING,
    "error": logging.ERROR,
}

# syslog priorities journald understands as a "<N>" line prefix (sd-daemon.h).
_PRIORITY = {TRACE: 7, logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3,
             logging.CRITICAL: 2}


class _JournalFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        prio = _PRIORITY.get(record.levelno, 6)
        return f"<{prio}>{record.name}: {super().format(record)}"


def stderr_is_journal() -> bool:
    """Whether stderr is connected to journald: $JOURNAL_STREAM names its "dev:inode".

    Comparing the two (as systemd.exec(5) advises) keeps the timestamps when stderr
    was redirected elsewhere, e.g. to a log file by ``--daemonize``.
    """
    value = os.environ.get("JOURNAL_STREAM", "")
    try:
        st = os.fstat(sys.stderr.fileno())
    except (OSError, ValueError, AttributeError):
        return False
    return value == f"{st.st_dev}:{st.st_ino}"


# Serf's agent (syslog.go levelPriority) sends its levels one syslog severity lower
# than their names: DEBUG as info, INFO as notice. serfd does the same, so a syslog
# filter written for serf agent (e.g. local0.notice) keeps working.
SYSLOG_SEVERITY = {TRACE: 7, logging.DEBUG: 6, logging.INFO: 5, logging.WARNING: 4,
                   logging.ERROR: 3, logging.CRITICAL: 2}
SYSLOG_ADDRESS = "/dev/log"
SYSLOG_TAG = "serfd"
SYSLOG_RETRY = 1.0  # seconds between two attempts to reach a missing syslog socket
_SYSLOG_LOGGER = "serfd.agent.syslog"  # its own lines are not sent to syslog


class SyslogHandler(logging.handlers.SysLogHandler):
    """Records to a local syslog socket as ``<PRI>Mmm dd hh:mm:ss serfd[PID]: name: msg``.

    The socket is a non-blocking Unix datagram socket: a full syslog queue drops the
    record (``dropped["syslog_busy"]``), a missing or restarted daemon too
    (``syslog_unreachable``), with a reconnect at most once per :data:`SYSLOG_RETRY`;
    both are logged rate-limited to the other handlers (stderr).
    """

    def __init__(self, facility: str, address: str = SYSLOG_ADDRESS) -> None:
        self.connect_error: str | None = None
        self._next_connect = 0.0
        self.dropped: dict[str, int] = {}
        self._drops = DropLog(logging.getLogger(_SYSLOG_LOGGER), self.dropped)
        super().__init__(address, self.facility_names[facility.lower()], socket.SOCK_DGRAM)

    def createSocket(self) -> None:  # the stdlib's name
        """Connect to the syslog socket, or note why not (``connect_error``)."""
        self.unixsocket = True
        self.socket = None
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.setblocking(False)
        try:
            sock.connect(self.address)
        except OSError as exc:
            sock.close()
            self.connect_error = exc.strerror or str(exc)
            return
        self.socket = sock
        self.connect_error = None

    def format_datagram(self, record: logging.LogRecord) -> bytes:
        """The datagram for one record (RFC 3164 as go-syslog writes it locally)."""
        pri = (self.facility << 3) | SYSLOG_SEVERITY.get(record.levelno, 5)
        stamp = time.strftime("%b %d %H:%M:%S", time.localtime(record.created))
        msg = f"{record.name}: {record.getMessage()}".replace("\0", "")
        return f"<{pri}>{stamp} {SYSLOG_TAG}[{os.getpid()}]: {msg}\n".encode(
            "utf-8", "replace")

    def emit(self, record: logging.LogRecord) -> None:
        if record.name == _SYSLOG_LOGGER:
            return  # about syslog itself: stderr only
        data = self.format_datagram(record)
        now = record.created
        if self.socket is None and now >= self._next_connect:
            self._next_connect = now + SYSLOG_RETRY
            self.createSocket()
        if self.socket is None:
            self._drops.drop("syslog_unreachable", now, "syslog: %s: %s; records dropped",
                             self.address, self.connect_error)
            return
        try:
            self.socket.send(data)
        except BlockingIOError:
            self._drops.drop("syslog_busy", now, "syslog: %s is not keeping up; records "
                             "dropped", self.address)
        except OSError as exc:  # the daemon went away: reconnect at the next record
            self.socket.close()
            self.socket = None
            self.connect_error = exc.strerror or str(exc)
            self._drops.drop("syslog_unreachable", now, "syslog: %s: %s; records dropped",
                             self.address, self.connect_error)


def setup_logging(level: str, *, syslog_facility: str | None = None,
                  syslog_address: str = SYSLOG_ADDRESS) -> None:
    """Send every log line to stderr at ``level`` (trace, debug, info, warn, error), and
    to syslog as well when ``syslog_facility`` is given (Serf's ``enable_syslog``)."""
    handler = logging.StreamHandler(sys.stderr)
    if stderr_is_journal():
        handler.setFormatter(_JournalFormatter("%(message)s"))
    else:
        handler.setFormatter(
            logging.Formatter("%(asctime)s [%(levelname)s] %(name)s: %(message)s",
                              "%Y/%m/%d %H:%M:%S")
        )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(LEVELS[level])
    if syslog_facility is not None:
        tee = SyslogHandler(syslog_facility, syslog_address)
        root.addHandler(tee)
        if tee.connect_error is not None:
            logging.getLogger(_SYSLOG_LOGGER).warning(
                "syslog: cannot connect to %s: %s; logging to stderr only until it appears",
                syslog_address, tee.connect_error)


def set_level(level: str) -> None:
    logging.getLogger().setLevel(LEVELS[level])
