"""The Vagrantfile (no VM boots here): Ruby accepts it (`make check-vagrant`), and the
script each VM runs is valid shell that installs serfd by name from make repo's
repository, with the files build-repo writes."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.skipif(shutil.which("ruby") is None,
                                reason="ruby not installed (Debian package ruby)")

# The Vagrantfile loaded with a stand-in for Vagrant: prints n1's provision script.
RENDER = """
module Vagrant
  def self.configure(_version); end
end
load ARGV[0]
print provision_script("n1", "172.20.20.10", ["172.20.20.11", "172.20.20.12"])
"""


def test_make_check_vagrant_passes() -> None:
    r = subprocess.run(["make", "--no-print-directory", "check-vagrant"], cwd=ROOT,
                       capture_output=True, text=True, timeout=60, check=False)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "Syntax OK" in r.stdout


def test_provision_installs_serfd_by_name_from_the_repository() -> None:
    script = subprocess.run(["ruby", "-e", RENDER, str(ROOT / "Vagrantfile")],
                            capture_output=True, text=True, timeout=60, check=True).stdout
    assert subprocess.run(["sh", "-n"], input=script, text=True, check=False).returncode == 0
    build_repo = (ROOT / "packaging/repo/build-repo").read_text()
    assert "KEYRING_NAME=serfd-archive-keyring.gpg" in build_repo
    assert "cat > serfd.sources" in build_repo
    lines = [line.strip() for line in script.splitlines()]
    # The repository the synced folder shows, its keyring and source entry as users add them.
    assert "repo=/vagrant/build/repo" in lines
    assert 'install -m 0644 "$repo/serfd-archive-keyring.gpg" /etc/apt/keyrings/' in lines
    assert 'install -m 0644 "$repo/serfd.sources" /etc/apt/sources.list.d/' in lines
    # By name, never a package file.
    assert "apt-get install -y -q serfd" in lines
    assert ".deb" not in script
    assert 'bind = "172.20.20.10:7946"' in lines
    assert 'join = ["172.20.20.11", "172.20.20.12"]' in lines
