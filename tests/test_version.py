"""One version everywhere: pyproject, serfd.__version__, `serfd --version`, the Debian
changelog's latest entry (what the package is versioned by) and the man pages' headers."""

from __future__ import annotations

import re
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
