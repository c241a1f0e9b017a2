"""One version everywhere: pyproject, serfd.__version__, `serfd --version`, the Debian
changelog's latest entry (what the package is versioned by) and the man pages' headers."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import serfd

ROOT = Path(__file__).resolve().parents[1]


def _pyproject_version() -> str:
    with open(ROOT / "pyproject.toml", "rb") as f:
        version = tomllib.load(f)["project"]["version"]
    assert isinstance(version, str)
    return version


def test_package_version_is_the_project_version() -> None:
    version = _pyproject_version()
    assert serfd.__version__ == version
    first = (ROOT / "packaging/debian/changelog").read_text().splitlines()[0]
    assert re.fullmatch(r"serfd \((\S+)\) \S+; urgency=\w+", first), first
    assert first.split()[1] == f"({version})"
    for page in ("serfd.8", "serfctl.1", "serfd.toml.5"):
        header = (ROOT / "docs/man" / page).read_text().splitlines()[0]
        assert f'"serfd {version}"' in header, (page, header)


def test_serfd_version_option() -> None:
    r = subprocess.run([sys.executable, "-m", "serfd", "--version"], capture_output=True,
                       text=True, timeout=30, check=True, cwd=ROOT)
    assert r.stdout == f"serfd {_pyproject_version()}\n"


def test_serfctl_version_command_prints_the_protocol_range_as_serf_version() -> None:
    r = subprocess.run([sys.executable, "-m", "serfctl", "version"], capture_output=True,
                       text=True, timeout=30, check=True, cwd=ROOT,
                       env={**os.environ, "SERFD_SOCKET": "/nonexistent"})  # no agent
    assert r.stdout == (f"serfctl {_pyproject_version()}\n"
                        "Agent Protocol: 5 (Understands back to: 2)\n")


def test_serfctl_protocol_range_is_what_the_agent_advertises() -> None:
    from serfctl.__main__ import version_text
    from serfd.wire.messages import DEFAULT_VSN

    dmin, dmax = DEFAULT_VSN[3], DEFAULT_VSN[4]
    assert version_text().splitlines()[1] == f"Agent Protocol: {dmax} (Understands back to: {dmin})"
    serf = shutil.which("serf")
    if serf is not None:  # the real CLI says the same (its first line is its own version)
        out = subprocess.run([serf, "version"], capture_output=True, text=True, timeout=30,
                             check=True).stdout
        assert out.splitlines()[1] == version_text().splitlines()[1]
