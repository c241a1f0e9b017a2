"""Fixtures shared by every test module; helpers (waits, AUTH_KEY) are in tests/support.py."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator

import pytest

from serfd.testing.fake_agent import ServerThread
from tests.support import AUTH_KEY


@pytest.fixture
def sockdir() -> Iterator[str]:
    """A short temporary directory for Unix sockets (sun_path is 108 bytes)."""
    d = tempfile.mkdtemp(prefix="srft")
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def srv(sockdir: str) -> Iterator[ServerThread]:
    """serfd's RPC server over a FakeAgent on its own loop thread (Unix socket and TCP)."""
    s = ServerThread(os.path.join(sockdir, "s.sock"))
    yield s
    s.close()


@pytest.fixture
def auth_srv(sockdir: str) -> Iterator[ServerThread]:
    """As ``srv``, with RPC auth required (key ``support.AUTH_KEY``)."""
    s = ServerThread(os.path.join(sockdir, "a.sock"), auth_key=AUTH_KEY)
    yield s
    s.close()
