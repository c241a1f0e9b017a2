"""Logging to stderr: a human format with timestamps, or journald priorities under systemd."""

from __future__ import annotations

import logging
import os
import sys

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


def setup_logging(level: str) -> None:
    """Send every log line to stderr at ``level`` (trace, debug, info, warn, error)."""
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


def set_level(level: str) -> None:
    logging.getLogger().setLevel(LEVELS[level])
