"""System test: the Debian package under a real systemd, the user's journey.

Builds dist/serfd_<version>_<arch>.deb with `make deb` and a signed apt repository of it
with `make repo` (a fresh signing key per journey, the repository bind-mounted
read-only into the containers as file:/srv/repo), boots containers with systemd as
PID 1 (tests/integration/nspawn.py, after reference/SYSTEMD-LAB.md) and checks what
an operator sees. The whole journey runs on Debian 12 (bookworm) and again on Debian
13 (trixie), with the one package built on the host (the `suite` fixture; tests are
named test_x[bookworm], test_x[trixie]):

* "seed", on the host network with serfd bound to a loopback address, given only the
  repository's source entry and keyring (no .deb file): `apt-get install serfd` by
  name pulls the dependencies from the archive, starts serfd and waits for READY=1;
  the same repository with one byte of its Release changed is refused by `apt-get
  update`; a newer build published to the repository is what `apt upgrade` takes;
  an upgrade with a drop-in the new serfd refuses keeps the running node (no restart,
  the errors in apt's output and `systemctl status`); after the purge, an install onto
  a drop-in the machine cannot run leaves the unit failed with 2, not restarting;
  serfctl works for root and group serfd, not for others; `systemctl
  reload` applies new tags, and refuses a broken drop-in while the old config keeps
  running; `apt-get purge` removes it all.
* n1..n3, each in a network namespace of its own (10.77.0.11-13 on a private
  bridge), installed by name offline from the repository, the package lists and the
  dependencies the seed downloaded: they form an encrypted cluster from the package
  defaults plus a join list and a key; the shipped
  example handler, enabled by a drop-in and a reload, answers `serfctl query` and
  sees `serfctl event` inside the sandbox; `systemctl stop` is seen as
  `left`; a SIGSTOPped daemon is restarted by the watchdog and rejoins; a SIGKILLed
  one (Restart=no in a drop-in) is seen as `failed`; n1 is downgraded to the previous
  release (tests/fixtures/serfd_0.1.0_all.deb, or
  $SERFD_TEST_PREVIOUS_DEB) and upgraded back, from the repository, keeping its
  drop-ins, keyring and snapshot, restarted once and alive again on the others. Tags
  set on n1 with `serfctl tags` survive `systemctl reload`, `systemctl restart` and that
  downgrade and upgrade (the tags file), and the others see them.

`[timing]` lines (pytest -s, CI logs) give per release: the package and install
sizes, the install time and the time from `apt-get install` to READY=1, and how long
a node is missing from the others' member lists during an upgrade.

Needs root and the Debian tools listed in .ci/run; skips, naming what is missing,
otherwise. A rootfs per release is cached in $SERFD_TEST_CACHE (default
/var/cache/serfd-test, with the archive's .debs in archives-<release>/);
$SERFD_TEST_DEB names a prebuilt package to test instead of running `make deb` (the
repository is still made from it by `make repo`).
The tests run in file order and build on each other's state, like the journey.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PREVIOUS_DEB = REPO / "tests" / "fixtures" / "serfd_0.1.0_all.deb"
CACHE = Path(os.environ.get("SERFD_TEST_CACHE", "/var/cache/serfd-test"))
NODES = {"n1": "10.77.0.11/24", "n2": "10.77.0.12/24", "n3": "10.77.0.13/24"}
# The journey runs once per Debian release, with the one package built on the host:
# bookworm (12: Python 3.11, systemd 252) and trixie (13: Python 3.13, systemd 257).
SUITES = ("bookworm", "trixie")
# The cluster gossips encrypted: AES-GCM from python3-cryptography must work inside the
# sandbox (MemoryDenyWriteExecute, the system call filter).
CLUSTER_KEY = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="

# tool -> the Debian package that has it
TOOLS = {
    "systemd-nspawn": "systemd-container",
    "mmdebstrap": "mmdebstrap",
    "dpkg-buildpackage": "dpkg-dev",
    "apt-ftparchive": "apt-utils",
    "gpg": "gpg",
    "gpg-agent": "gpg-agent",
    "dh": "debhelper",
    "dh_python3": "dh-python",
    "fakeroot": "fakeroot",
    "make": "make",
    "ip": "iproute2",
    "nsenter": "util-linux",
}


def _missing() -> list[str]:
    path = "/usr/sbin:/usr/bin:/sbin:/bin"
    missing = [f"{tool} ({pkg})" for tool, pkg in TOOLS.items()
               if not shutil.which(tool, path=path)]
    if not Path("/usr/share/dh-python/dhpython/build/plugin_pyproject.py").exists():
        missing.append("pybuild's pyproject plugin (pybuild-plugin-pyproject)")
    if not Path("/sys/fs/cgroup/systemd").is_dir():
        missing.append("the name=systemd cgroup hierarchy (/sys/fs/cgroup/systemd)")
    return missing


if os.geteuid() != 0:
    pytest.skip("the systemd system test needs root (CI runs it as root)", allow_module_level=True)
if _missing():
    pytest.skip("the systemd system test needs: " + ", ".join(_missing()), allow_module_level=True)

from tests.integration import nspawn  # noqa: E402 - after the skips: only useful when they pass


@pytest.fixture(scope="module")
def deb() -> Path:
    prebuilt = os.environ.get("SERFD_TEST_DEB")  # test a given package instead of building
    if prebuilt:
        return Path(prebuilt).resolve()
    t = time.monotonic()
    r = subprocess.run(["make", "deb"], cwd=REPO, capture_output=True, text=True, timeout=300,
                       check=False, env={**os.environ, "PATH": nspawn.SYSPATH})
    assert r.returncode == 0, f"make deb failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    debs = sorted((REPO / "dist").glob("serfd_*.deb"), key=lambda p: p.stat().st_mtime)
    print(f"\n[timing] make deb: {time.monotonic() - t:.1f}s")
    return debs[-1]


@pytest.fixture(scope="module", params=SUITES)
def suite(request: pytest.FixtureRequest) -> str:
    """The Debian release the containers run; the journey's state is per suite."""
    return str(request.param)


@pytest.fixture(scope="module")
def repo(deb: Path, suite: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`make repo` of the package: a fresh repository and signing key for each suite's
    journey (it publishes newer and older builds into it)."""
    out = tmp_path_factory.mktemp("apt")
    t = time.monotonic()
    r = subprocess.run(["make", "repo", f"REPO={out / 'repo'}", f"REPO_KEY_DIR={out / 'key'}",
                        "REPO_URL=file:/srv/repo", f"REPO_DEBS={deb}"],
                       cwd=REPO, capture_output=True, text=True, timeout=120, check=False,
                       env={**os.environ, "PATH": nspawn.SYSPATH})
    assert r.returncode == 0, f"make repo failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    print(f"\n[timing] {suite}: make repo (with a new key): {time.monotonic() - t:.1f}s; "
          f"package size {deb.stat().st_size / 1024:.0f} KiB")
    return out / "repo"


# What a user does with the repository's two files (served here at /srv/repo).
ADD_REPO = ("mkdir -p /etc/apt/keyrings && "
            "cp /srv/repo/serfd-archive-keyring.gpg /etc/apt/keyrings/ && "
            "cp /srv/repo/serfd.sources /etc/apt/sources.list.d/")


@pytest.fixture(scope="module")
def lab(suite: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[nspawn.Lab]:
    t = time.monotonic()
    root = nspawn.rootfs(CACHE, suite)
    print(f"\n[timing] {suite}: rootfs ready: {time.monotonic() - t:.1f}s")
    the_lab = nspawn.Lab(tmp_path_factory.mktemp(f"lab-{suite}"), root, suite)
    try:
        yield the_lab
    finally:
        the_lab.close()


@pytest.fixture(autouse=True)
def journals_on_failure(request: pytest.FixtureRequest) -> Iterator[None]:
    yield
    rep = getattr(request.node, "rep_call", None)
    the_lab = request.node.funcargs.get("lab") if hasattr(request.node, "funcargs") else None
    if rep is None or not rep.failed or the_lab is None:
        return
    for c in the_lab.containers:
        if c.proc.poll() is None:
            r = c.run("journalctl -u serfd --no-pager -n 60; systemctl status serfd --no-pager",
                      check=False)
            print(f"\n===== {c.name}: journal =====\n{r.stdout}{r.stderr}")


def _loopback_for_this_run() -> str:
    pid = os.getpid()
    return f"127.77.{(pid >> 8) & 0xFF}.{max(1, pid & 0xFF)}"


def _install_figures(c: nspawn.Container, started: float, ended: float, apt_out: str) -> str:
    """What an `apt-get install serfd` that ran from started to ended (host monotonic
    seconds: the containers share CLOCK_MONOTONIC, systemd's ...TimestampMonotonic)
    cost: time, download and disk, and when serfd was started and sent READY=1."""
    props = dict(line.split("=", 1) for line in c.run(
        "systemctl show -p ExecMainStartTimestampMonotonic -p ActiveEnterTimestampMonotonic"
        " serfd").stdout.split())
    execd = int(props["ExecMainStartTimestampMonotonic"]) / 1e6
    ready = int(props["ActiveEnterTimestampMonotonic"]) / 1e6
    # apt 2.6 (bookworm): "Need to get 1,234 kB of archives." "After this operation, 9 MB
    # of additional disk space will be used."; apt 3.0 (trixie): "Download size: 1,234 kB",
    # "Space needed: 9 MB / ...".
    size = r"([\d.,]+ [kMG]?B)"
    # "0 B/1,234 kB" when some were in apt's cache already: the second is the total.
    download = re.search(rf"(?:Need to get|Download size:) {size}(?: ?/ ?{size})?", apt_out)
    disk = re.search(rf"(?:After this operation,|Space needed:) {size}", apt_out)
    installed = c.run("dpkg-query -W -f '${Installed-Size}' serfd").stdout
    return (f"apt-get install {ended - started:.1f}s "
            f"(download {(download.group(2) or download.group(1)) if download else '0 B'}, "
            f"disk {disk.group(1) if disk else '?'}, serfd {installed} KiB installed); "
            f"serfd started {execd - started:.1f}s after apt, READY=1 {ready - execd:.2f}s later "
            f"= {ready - started:.1f}s from apt; apt returned {ended - ready:.1f}s after READY")


@pytest.fixture(scope="module")
def seed(lab: nspawn.Lab, repo: Path, suite: str) -> Iterator[nspawn.Container]:
    """A host-network container with serfd installed by name from the repository."""
    xfer = lab.workdir / "xfer"
    xfer.mkdir()
    archives = CACHE / f"archives-{suite}"  # the archive's .debs, kept across runs
    archives.mkdir(parents=True, exist_ok=True)
    c = lab.boot("seed", binds=(f"{archives}:/var/cache/apt/archives", f"{xfer}:/srv/xfer"),
                 ro_binds=(f"{repo}:/srv/repo",))
    # On the host's network: bind a loopback address only, never the host's interfaces.
    c.run(f"mkdir -p /etc/serfd.d && printf 'bind = \"{_loopback_for_this_run()}:17946\"\\n'"
          " > /etc/serfd.d/50-test.toml")
    t = time.monotonic()
    c.install = c.run(  # type: ignore[attr-defined]
        f"{ADD_REPO} && apt-get update -qq", check=False, timeout=300)
    updated = time.monotonic()
    if c.install.returncode == 0:  # type: ignore[attr-defined]
        c.install = c.run(  # type: ignore[attr-defined]
            "DEBIAN_FRONTEND=noninteractive apt-get install -y -q serfd", check=False,
            timeout=300)
    done = time.monotonic()
    if c.install.returncode == 0:  # type: ignore[attr-defined]
        print(f"\n[timing] {suite}: seed: apt-get update {updated - t:.1f}s; "
              + _install_figures(c, updated, done, c.install.stdout))  # type: ignore[attr-defined]
    # What the offline containers need: the package lists (the repository's too) and
    # the downloaded .debs.
    c.run("cp -a /var/lib/apt/lists /srv/xfer/lists && mkdir /srv/xfer/debs && "
          "cp /var/cache/apt/archives/*.deb /srv/xfer/debs/")
    yield c


def members(c: nspawn.Container, *args: str) -> dict[str, tuple[str, str]]:
    """`serfctl members` inside c: name -> (status, tags)."""
    out = c.run("serfctl members " + " ".join(args)).stdout
    rows = {}
    for line in out.splitlines():
        cells = line.split()
        if len(cells) >= 3:
            rows[cells[0]] = (cells[2], cells[3] if len(cells) > 3 else "")
    return rows


def show(c: nspawn.Container, prop: str) -> str:
    return c.run(f"systemctl show -p {prop} --value serfd").stdout.strip()


# ----------------------------------------------------------------------------------
# The package itself


def test_lintian_finds_no_errors(deb: Path) -> None:
    if shutil.which("lintian", path=nspawn.SYSPATH) is None:
        pytest.skip("lintian not installed (Debian package lintian)")
    r = nspawn.sh("lintian", "--fail-on", "error", str(deb), check=False, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert not [line for line in r.stdout.splitlines() if line.startswith("E:")]


# ----------------------------------------------------------------------------------
# One node, from the package: install, access, reload


def test_apt_install_starts_serfd_and_waits_for_ready(seed: nspawn.Container) -> None:
    r = seed.install  # type: ignore[attr-defined]
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    for dep in ("python3-msgpack", "python3-cryptography", "python3-sdnotify",
                "python3-tomli-w", "python3-daemon"):
        assert f"Setting up {dep} " in r.stdout  # pulled from the archive
    # apt returned only after READY=1: the unit is already active, its STATUS set.
    assert seed.run("systemctl is-active serfd").stdout.strip() == "active"
    assert show(seed, "Type") == "notify"
    assert show(seed, "StatusText").startswith("members: 1 alive, 0 failed, 0 left")
    assert show(seed, "UnitFileState") == "enabled"
    assert seed.run("command -v serfd; command -v serfctl").stdout.split() == ["/usr/bin/serfd",
                                                                   "/usr/bin/serfctl"]
    # Runs as the serfd system user, with its state and runtime directories.
    assert seed.run("ps -o user= -p $(systemctl show -p MainPID --value serfd)").stdout.strip() \
        == "serfd"
    assert seed.run("stat -c '%U:%G %a' /var/lib/serfd").stdout.strip() == "serfd:serfd 750"
    assert seed.run("stat -c '%U:%G %a' /run/serfd/serfd.sock").stdout.strip() == "serfd:serfd 660"
    # The shipped serfd.toml is a conffile that sets nothing.
    assert "/etc/serfd.d/serfd.toml" in seed.run("cat /var/lib/dpkg/info/serfd.conffiles").stdout
    effective = seed.run("serfd --check-config").stdout
    assert "# merged from: /etc/serfd.d/50-test.toml\n" in effective
    for page in ("man8/serfd.8.gz", "man1/serfctl.1.gz", "man5/serfd.toml.5.gz"):
        seed.run(f"test -f /usr/share/man/{page}")
    seed.run("bash -n /usr/share/bash-completion/completions/serfctl")
    seed.run("test -x /etc/serfd.d/handlers/example-handler"
             " && test -f /etc/serfd.d/handlers/README")
    # The package carries the C LZW, and the distribution's python3 loads it.
    assert seed.run("python3 -c 'from serfd.wire import lzw; print(lzw.IMPLEMENTATION)'"
                    ).stdout.strip() == "c"


def test_apt_installs_serfd_by_name_from_the_signed_repository(
        seed: nspawn.Container, deb: Path) -> None:
    r = seed.install  # type: ignore[attr-defined]
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    # The container has no package file: only the repository's entry and keyring.
    assert seed.run("test -e /srv/dist", check=False).returncode == 1
    entry = seed.run("cat /etc/apt/sources.list.d/serfd.sources").stdout
    assert "Signed-By: /etc/apt/keyrings/serfd-archive-keyring.gpg" in entry
    assert "trusted" not in entry.lower()
    # apt took the index from the verified InRelease and the package from the repository.
    seed.run("test -s /var/lib/apt/lists/_srv_repo_dists_stable_InRelease")
    policy = seed.run("apt-cache policy serfd").stdout
    assert re.search(r"\*\*\* \S+ 500\n\s+500 file:/srv/repo stable/main \w+ Packages", policy), \
        policy
    version = nspawn.sh("dpkg-deb", "-f", str(deb), "Version").stdout.strip()
    assert seed.run("dpkg-query -W -f '${Version}' serfd").stdout == version
    assert seed.run("serfd --version").stdout == f"serfd {version}\n"  # the program agrees
    # The user's next steps.
    seed.run("systemctl start serfd")
    assert members(seed)["seed"][0] == "alive"


def _apt_update_only(c: nspawn.Container, name: str, uri: str) -> subprocess.CompletedProcess[str]:
    """`apt-get update` of one repository entry, in lists and caches of its own under /tmp/name
    (the container's own lists stay as they are)."""
    d = f"/tmp/{name}"
    c.run(f"mkdir -p {d}/parts {d}/lists/partial {d}/cache && echo 'deb "
          f"[signed-by=/etc/apt/keyrings/serfd-archive-keyring.gpg] {uri} stable main'"
          f" > {d}/parts/serfd.list")
    return c.run(f"apt-get update -o Dir::Etc::SourceList=/dev/null "
                 f"-o Dir::Etc::SourceParts={d}/parts -o Dir::State::Lists={d}/lists "
                 f"-o Dir::Cache={d}/cache", check=False)


# apt's verdict on a signature that does not match: from gpgv (apt 2.6, bookworm), or from
# Sequoia's sqv, which apt 3.0 (trixie) verifies with instead.
BAD_SIGNATURE = {
    "bookworm": r"The following signatures were invalid: BADSIG ",
    "trixie": (r"Sub-process /usr/bin/sqv returned an error code \(1\), error message is: "
               r"Verifying signature:\s+Message has been manipulated"),
}


def test_apt_refuses_a_repository_with_a_tampered_release(
        lab: nspawn.Lab, seed: nspawn.Container, repo: Path) -> None:
    # A copy of the repository, in a directory the seed sees as /srv/xfer/tampered.
    copy = lab.workdir / "xfer" / "tampered"
    shutil.copytree(repo, copy)
    uri = "file:/srv/xfer/tampered"
    good = _apt_update_only(seed, "untouched", uri)
    assert good.returncode == 0, good.stdout + good.stderr  # the copy as made verifies

    def one_byte(path: Path) -> None:
        data = path.read_bytes()
        i = data.index(b"\nLabel: serfd\n") + len("\nLabel: serf")
        path.write_bytes(data[:i] + b"e" + data[i + 1:])

    stable = copy / "dists" / "stable"
    # The inline-signed InRelease (what apt reads first), one byte changed.
    one_byte(stable / "InRelease")
    r = _apt_update_only(seed, "inrelease", uri)
    assert r.returncode == 100, r.stdout + r.stderr
    bad = BAD_SIGNATURE[lab.suite]
    assert re.search(rf"stable InRelease: {bad}", r.stderr), r.stderr
    assert f"E: The repository '{uri} stable InRelease' is not signed." in r.stderr
    # Without InRelease apt falls back to Release and its detached Release.gpg.
    (stable / "InRelease").unlink()
    one_byte(stable / "Release")
    r = _apt_update_only(seed, "release", uri)
    assert r.returncode == 100, r.stdout + r.stderr
    assert re.search(rf"stable Release: {bad}", r.stderr), r.stderr
    assert f"E: The repository '{uri} stable Release' is not signed." in r.stderr
    # Refused: no package index was kept from either.
    for name in ("inrelease", "release"):
        assert "Packages" not in seed.run(f"ls /tmp/{name}/lists").stdout
    assert "Packages" in seed.run("ls /tmp/untouched/lists").stdout


def test_a_second_serfd_on_the_state_directory_is_refused(seed: nspawn.Container) -> None:
    # The unit's serfd holds /var/lib/serfd (StateDirectory=); another one exits 2 before
    # binding anything, naming the directory and the running pid, and the unit goes on.
    pid = show(seed, "MainPID")
    r = seed.run("serfd --config-dir=/etc/serfd.d", user="serfd", check=False)
    assert r.returncode == 2, r.stdout + r.stderr
    assert r.stderr.strip() == f"serfd: state directory /var/lib/serfd is in use by serfd pid {pid}"
    assert seed.run("cat /var/lib/serfd/serfd.lock").stdout.strip() == pid
    assert seed.run("stat -c '%U:%G %a' /var/lib/serfd/serfd.lock").stdout.strip() == \
        "serfd:serfd 640"
    assert seed.run("systemctl is-active serfd").stdout.strip() == "active"
    assert show(seed, "MainPID") == pid


def test_serfctl_for_root_and_group_serfd_only(seed: nspawn.Container) -> None:
    seed.run("useradd -m -G serfd alice && useradd -m bob")
    assert seed.run("serfctl members").stdout.startswith("seed ")
    assert seed.run("serfctl members", user="alice").stdout.startswith("seed ")
    r = seed.run("serfctl members", user="bob", check=False)
    assert r.returncode == 1
    assert "permission denied" in r.stderr.lower()


def test_reload_applies_new_tags(seed: nspawn.Container) -> None:
    pid = show(seed, "MainPID")
    seed.run("printf '[tags]\\nrole = \"reloaded\"\\ndc = \"lab\"\\n' > /etc/serfd.d/60-tags.toml")
    seed.run("systemctl reload serfd")
    # ExecReload waits for serfd: the tags are there when systemctl returns.
    assert members(seed)["seed"][1] == "dc=lab,role=reloaded"
    assert show(seed, "MainPID") == pid
    assert "reload done: applied tags" in seed.run("journalctl -u serfd -o cat").stdout


def test_broken_reload_keeps_the_old_config(seed: nspawn.Container) -> None:
    pid = show(seed, "MainPID")
    seed.run("printf 'bind = \\n' > /etc/serfd.d/70-broken.toml && "
             "printf '[tags]\\nrole = \"never\"\\n' > /etc/serfd.d/65-more-tags.toml")
    r = seed.run("systemctl reload serfd", check=False)
    assert r.returncode != 0  # the operator sees that the reload failed
    assert seed.run("systemctl is-active serfd").stdout.strip() == "active"
    assert show(seed, "MainPID") == pid
    assert members(seed)["seed"][1] == "dc=lab,role=reloaded"
    assert "last reload failed (1 error)" in show(seed, "StatusText")
    # The error is in the journal, at priority err (from the "<3>" prefix).
    errors = seed.run("journalctl -u serfd -p err -o cat").stdout
    assert re.search(r"reload: /etc/serfd.d/70-broken.toml:1: ", errors), errors
    assert "reload done" not in errors  # info lines are not at err
    # Fixed: the next reload applies, and the failure note goes away.
    seed.run("rm /etc/serfd.d/70-broken.toml /etc/serfd.d/65-more-tags.toml && "
             "systemctl reload serfd")
    assert "failed" not in show(seed, "StatusText").split(";", 1)[1]


def test_restart_only_setting_is_named_in_status(seed: nspawn.Container) -> None:
    seed.run("printf 'profile = \"wan\"\\n' > /etc/serfd.d/80-profile.toml"
             " && systemctl reload serfd")
    assert show(seed, "StatusText").endswith("restart needed for: profile")
    assert "profile changed on disk but needs a restart" in seed.run(
        "journalctl -u serfd -p warning -o cat").stdout
    seed.run("rm /etc/serfd.d/80-profile.toml && systemctl reload serfd")
    assert "restart needed" not in show(seed, "StatusText")


def _newer_build(deb: Path, out: Path, suffix: str) -> Path:
    """The same package, repacked with a higher version (VERSION+suffix)."""
    tree = out / "tree"
    out.mkdir(parents=True)
    nspawn.sh("dpkg-deb", "-R", str(deb), str(tree))
    control = tree / "DEBIAN" / "control"
    text = control.read_text()
    version = re.search(r"^Version: (\S+)$", text, re.M).group(1)  # type: ignore[union-attr]
    control.write_text(text.replace(f"Version: {version}\n", f"Version: {version}{suffix}\n"))
    arch = re.search(r"^Architecture: (\S+)$", text, re.M).group(1)  # type: ignore[union-attr]
    newer = out / f"serfd_{version}{suffix}_{arch}.deb"
    nspawn.sh("dpkg-deb", "--root-owner-group", "-b", str(tree), str(newer))
    return newer


def test_apt_upgrade_takes_a_newer_version_from_the_repository(
        lab: nspawn.Lab, seed: nspawn.Container, repo: Path, deb: Path) -> None:
    # Publishing: a newer build added to the same repository with the same key (`make
    # repo` again); the user's keyring still verifies it. (The journey from the real
    # previous release, in a running cluster, is issue 12's upgrade test.)
    keyring = (repo / "serfd-archive-keyring.gpg").read_bytes()
    newer = _newer_build(deb, lab.workdir / "newer", "+repotest1")
    r = subprocess.run(["make", "repo", f"REPO={repo}", f"REPO_KEY_DIR={repo.parent / 'key'}",
                        "REPO_URL=file:/srv/repo", f"REPO_DEBS={newer}"],
                       cwd=REPO, capture_output=True, text=True, timeout=120, check=False,
                       env={**os.environ, "PATH": nspawn.SYSPATH})
    assert r.returncode == 0, r.stdout + r.stderr
    assert (repo / "serfd-archive-keyring.gpg").read_bytes() == keyring  # the key is kept
    assert {p.name for p in (repo / "pool/main/s/serfd").iterdir()} == {deb.name, newer.name}

    def starts() -> int:
        return seed.run("journalctl -u serfd -o cat").stdout.count(": node seed bound to ")

    before, pid = starts(), show(seed, "MainPID")
    t = time.monotonic()
    seed.run("apt-get update -qq")
    old = nspawn.sh("dpkg-deb", "-f", str(deb), "Version").stdout.strip()
    version = nspawn.sh("dpkg-deb", "-f", str(newer), "Version").stdout.strip()
    # `apt upgrade` would take it (simulated: the archive may have other updates for the
    # cached rootfs, which this test has no business downloading).
    plan = seed.run("apt-get -s upgrade").stdout
    arch = nspawn.sh("dpkg-deb", "-f", str(newer), "Architecture").stdout.strip()
    assert f"Inst serfd [{old}] ({version} serfd:stable [{arch}])" in plan, plan
    seed.run("DEBIAN_FRONTEND=noninteractive apt-get install -y -q --only-upgrade serfd",
             timeout=300)
    print(f"\n[timing] {seed.lab.suite}: apt-get update + upgrade from the repository: "
          f"{time.monotonic() - t:.1f}s")
    assert seed.run("dpkg-query -W -f '${Version}' serfd").stdout == version
    # Restarted once by the package (its postinst, after an upgrade), with its drop-ins.
    assert starts() == before + 1
    assert show(seed, "MainPID") != pid
    assert seed.run("systemctl is-active serfd").stdout.strip() == "active"
    assert members(seed)["seed"] == ("alive", "dc=lab,role=reloaded")


def test_upgrade_with_a_broken_drop_in_keeps_the_running_node(seed: nspawn.Container) -> None:
    # A drop-in the running serfd never loaded (no reload since it was written) and the
    # package's serfd refuses. Restarting into it on upgrade would take the node out of
    # its cluster for good; the package checks first, keeps the node running, and the
    # failure shows in apt's output and in `systemctl status` (the reload it asks for).
    pid = show(seed, "MainPID")
    seed.run("printf 'bind = \\n' > /etc/serfd.d/70-broken.toml")
    r = seed.run("DEBIAN_FRONTEND=noninteractive apt-get install -y -q --reinstall serfd",
                 check=False, timeout=300)
    out = r.stdout + r.stderr  # apt's output, the package's messages in it
    assert r.returncode == 0, out
    assert show(seed, "MainPID") == pid, out
    assert seed.run("systemctl is-active serfd").stdout.strip() == "active"
    assert members(seed)["seed"] == ("alive", "dc=lab,role=reloaded")
    assert ("serfd: the configuration in /etc/serfd.d does not load:\n"
            "  /etc/serfd.d/70-broken.toml:1: ") in out, out
    assert "serfd: not restarted: the running serfd keeps the configuration" in out
    assert "Job for serfd.service failed" not in out
    status = seed.run("systemctl status serfd --no-pager -n 20", check=False).stdout
    assert "last reload failed (1 error)" in status, status
    assert "reload: /etc/serfd.d/70-broken.toml:1: " in status, status
    # Fixed, restarted by hand: the new files run.
    seed.run("rm /etc/serfd.d/70-broken.toml && systemctl restart serfd")
    assert show(seed, "MainPID") != pid
    assert members(seed)["seed"] == ("alive", "dc=lab,role=reloaded")


# ----------------------------------------------------------------------------------
# Three nodes in their own network namespaces


@pytest.fixture(scope="module")
def cluster(lab: nspawn.Lab, seed: nspawn.Container, repo: Path,
            suite: str) -> dict[str, nspawn.Container]:
    netns = lab.network(NODES)
    nodes = {}
    xfer = lab.workdir / "xfer"
    for name in NODES:
        nodes[name] = lab.boot(name, netns=netns[name],
                               ro_binds=(f"{repo}:/srv/repo", f"{xfer}:/srv/xfer"))
    drop_ins = {
        "n2": "[Service]\nWatchdogSec=3\n",  # the watchdog test: a quick verdict
        "n3": "[Service]\nRestart=no\n",  # the SIGKILL test: stay dead
    }
    t = time.monotonic()
    for name, c in nodes.items():
        others = [cidr.split("/")[0] for n, cidr in NODES.items() if n != name]
        join = ", ".join(f'"{ip}"' for ip in others)
        # A join list and a key: node name, bind, advertise, state are the package defaults.
        c.run("mkdir -p /etc/serfd.d && "
              f"printf 'join = [{join}]\\nencrypt_key = \"{CLUSTER_KEY}\"\\n'"
              " > /etc/serfd.d/50-deploy.toml")
        if name in drop_ins:
            c.run("mkdir -p /etc/systemd/system/serfd.service.d && printf "
                  f"'{drop_ins[name]}' > /etc/systemd/system/serfd.service.d/test.conf")
        # Offline, by name: the repository's entry and key, the lists and .debs the seed
        # fetched.
        c.run(f"{ADD_REPO} && cp -a /srv/xfer/lists/. /var/lib/apt/lists/ && "
              "cp /srv/xfer/debs/*.deb /var/cache/apt/archives/")
        started = time.monotonic()
        r = c.run("DEBIAN_FRONTEND=noninteractive apt-get install -y -q serfd", timeout=300)
        print(f"\n[timing] {suite}: {name} offline: "
              + _install_figures(c, started, time.monotonic(), r.stdout))
    print(f"[timing] {suite}: three offline installs by name: {time.monotonic() - t:.1f}s")
    return nodes


def _all_alive(out: str) -> bool:
    return sum(1 for line in out.splitlines() if " alive" in line) == 3


def test_cluster_forms_from_the_package(cluster: dict[str, nspawn.Container]) -> None:
    t = time.monotonic()
    for c in cluster.values():
        c.wait_for("serfctl members --status alive", _all_alive, timeout=30)
    print(f"\n[timing] {cluster['n1'].lab.suite}: three nodes alive everywhere: "
          f"{time.monotonic() - t:.1f}s")
    rows = members(cluster["n1"])
    # Node name = host name, advertise = the namespace's address, port 7946.
    assert cluster["n1"].run("serfctl members").stdout.count(":7946") == 3
    assert set(rows) == {"n1", "n2", "n3"}
    assert "10.77.0.12:7946" in cluster["n1"].run("serfctl members --name n2").stdout
    assert "encrypted = true" in cluster["n1"].run("serfctl info").stdout


def test_handlers_reloaded_and_run_inside_the_sandbox(cluster: dict[str, nspawn.Container]) -> None:
    # The journey's `serfctl event` and `serfctl query`, with the shipped example handler
    # (found in handlers_dir by its bare name), enabled by a drop-in and a reload.
    for c in cluster.values():
        c.run("printf '[handlers]\\n\"user:deploy\" = \"example-handler\"\\n"
              "\"query:uptime\" = \"example-handler\"\\n' > /etc/serfd.d/60-handlers.toml && "
              "systemctl reload serfd")
    n1, n2 = cluster["n1"], cluster["n2"]
    out = n1.run("serfctl query uptime").stdout
    assert "Total Responses: 3" in out, out
    assert re.search(r"Response from 'n2': \d+\.\d+", out), out
    n1.run("serfctl event deploy v42")
    n2.wait_for("journalctl -u serfd -o cat",
                lambda log: "serfd handler: user event deploy" in log, timeout=15)


def test_systemctl_stop_is_seen_as_left(cluster: dict[str, nspawn.Container]) -> None:
    n1, n2 = cluster["n1"], cluster["n2"]
    t = time.monotonic()
    n1.run("systemctl stop serfd")
    n2.wait_for("serfctl members --status left", lambda out: out.startswith("n1 "), timeout=15)
    print(f"\n[timing] {n1.lab.suite}: stop -> left seen: {time.monotonic() - t:.1f}s")
    assert n1.run("systemctl is-active serfd", check=False).stdout.strip() == "inactive"
    n1.run("systemctl start serfd")
    n2.wait_for("serfctl members --status alive", _all_alive, timeout=30)


def test_watchdog_restarts_a_stalled_daemon(cluster: dict[str, nspawn.Container]) -> None:
    n1, n2 = cluster["n1"], cluster["n2"]
    assert show(n2, "WatchdogUSec") == "3s"
    pid = show(n2, "MainPID")
    t = time.monotonic()
    n2.run(f"kill -STOP {pid}")
    n2.wait_for("journalctl -u serfd -o cat",
                lambda out: "Failed with result 'watchdog'" in out, timeout=20)
    new_pid = n2.wait_for("systemctl show -p MainPID --value serfd && systemctl is-active serfd",
                          lambda out: out.split()[0] not in ("0", pid), timeout=20).split()[0]
    print(f"\n[timing] {n1.lab.suite}: SIGSTOP -> restarted by the watchdog: "
          f"{time.monotonic() - t:.1f}s")
    assert new_pid != pid
    assert "Watchdog timeout" in n2.run("journalctl -u serfd -o cat").stdout
    assert int(show(n2, "NRestarts")) >= 1
    # Back in the cluster, seen as alive by the others.
    n1.wait_for("serfctl members --status alive", _all_alive, timeout=30)
    print(f"[timing] {n1.lab.suite}: ... and alive again on n1: {time.monotonic() - t:.1f}s")


def test_sigkill_is_seen_as_failed(cluster: dict[str, nspawn.Container]) -> None:
    n1, n2, n3 = cluster["n1"], cluster["n2"], cluster["n3"]
    t = time.monotonic()
    n3.run("systemctl kill -s KILL serfd")
    for c in (n1, n2):
        c.wait_for("serfctl members --status failed", lambda out: out.startswith("n3 "),
                   timeout=40)
    print(f"\n[timing] {n1.lab.suite}: SIGKILL -> failed seen on both: {time.monotonic() - t:.1f}s")
    # Restart=no from the test's drop-in: it stays down.
    assert n3.run("systemctl is-active serfd", check=False).stdout.strip() == "failed"
    assert show(n3, "Result") == "signal"


# Runtime tags on n1 (issue 11), kept through the downgrade and upgrade below (issue 12).
RUNTIME_TAGS = "rack=r1,role=runtime,zone=z1"
RUNTIME_TAGS_FILE = '{\n  "dc": null,\n  "role": "runtime",\n  "zone": "z1"\n}\n'


def test_runtime_tags_survive_reload_and_restart(cluster: dict[str, nspawn.Container]) -> None:
    n1, n2 = cluster["n1"], cluster["n2"]
    n1.run("printf '[tags]\\nrole = \"config\"\\ndc = \"lab\"\\n' > /etc/serfd.d/70-tags.toml"
           " && systemctl reload serfd")
    n2.wait_for("serfctl members --name n1", lambda out: "dc=lab,role=config" in out, timeout=15)
    assert n1.run("serfctl tags --set role=runtime --set zone=z1 --delete dc").stdout == \
        "Successfully updated agent tags\n"
    assert n1.run("cat /var/lib/serfd/tags").stdout == RUNTIME_TAGS_FILE
    assert n1.run("stat -c '%U:%G %a' /var/lib/serfd/tags").stdout.strip() == "serfd:serfd 640"
    n2.wait_for("serfctl members --name n1", lambda out: "role=runtime,zone=z1" in out,
                timeout=15)
    # A reload with a changed [tags]: the new key shows, the runtime changes stay.
    n1.run("printf '[tags]\\nrack = \"r1\"\\nrole = \"reloaded\"\\n' > "
           "/etc/serfd.d/71-tags.toml && systemctl reload serfd")
    assert members(n1)["n1"][1] == RUNTIME_TAGS  # ExecReload waited for it
    n2.wait_for("serfctl members --name n1", lambda out: RUNTIME_TAGS in out, timeout=15)
    # A restart: a new process, the same tags, seen alive with them by the others.
    pid = show(n1, "MainPID")
    n1.run("systemctl restart serfd")
    assert show(n1, "MainPID") != pid
    assert members(n1)["n1"] == ("alive", RUNTIME_TAGS)
    n2.wait_for("serfctl members --status alive --name n1", lambda out: RUNTIME_TAGS in out,
                timeout=30)
    assert "restored 3 runtime tag changes from /var/lib/serfd/tags" in n1.run(
        "journalctl -u serfd -o cat").stdout
    assert n1.run("serfd --check-config").stdout.count('tags_file = "/var/lib/serfd/tags"') == 1


# ----------------------------------------------------------------------------------
# Downgrade to the previous release and upgrade back, on a node of the running cluster


@pytest.fixture(scope="module")
def previous(lab: nspawn.Lab, repo: Path) -> Path:
    """The previous release's package, added to the repository with the same key:
    tests/fixtures/serfd_0.1.0_all.deb (the last 0.1.0 build, made with `make deb` from
    the tree before the version bump to 0.2.0, e037b1f), or $SERFD_TEST_PREVIOUS_DEB. A
    file, not a build from git history, so a shallow clone runs the test too."""
    given = os.environ.get("SERFD_TEST_PREVIOUS_DEB")
    old = Path(given).resolve() if given else PREVIOUS_DEB
    assert old.is_file(), f"no previous release package at {old}"
    r = subprocess.run(["make", "repo", f"REPO={repo}", f"REPO_KEY_DIR={repo.parent / 'key'}",
                        "REPO_URL=file:/srv/repo", f"REPO_DEBS={old}"],
                       cwd=REPO, capture_output=True, text=True, timeout=120, check=False,
                       env={**os.environ, "PATH": nspawn.SYSPATH})
    assert r.returncode == 0, r.stdout + r.stderr
    return old


def _missing_figures(logs: dict[str, str], start: float) -> str:
    """How long a node was missing, from the "TIME STATUS" samples each other node took
    of it (about 10 a second) since start (wall clock): when each saw it go and come back
    alive, and the time no one saw it alive."""
    gaps: dict[str, tuple[float, float]] = {}
    seen: set[str] = set()
    for name, log in logs.items():
        samples = [(float(cells[0]), cells[1]) for cells in map(str.split, log.splitlines())
                   if len(cells) == 2]  # the last line may be cut short
        seen |= {status for _, status in samples}
        gone = next((at for at, status in samples if status != "alive" and at >= start), None)
        if gone is not None:
            back = next((at for at, status in samples if status == "alive" and at > gone),
                        samples[-1][0])
            gaps[name] = (gone - start, back - start)
    if not gaps:
        return f"never seen missing (statuses seen: {sorted(seen)})"
    each = ", ".join(f"on {name} from {a:.1f}s to {b:.1f}s ({b - a:.1f}s)"
                     for name, (a, b) in sorted(gaps.items()))
    again = max(b for _, b in gaps.values())  # the others never missed it
    nowhere = 0.0  # the gaps' overlap, if every other node had one
    if len(gaps) == len(logs):
        nowhere = max(0.0, min(b for _, b in gaps.values()) - max(a for a, _ in gaps.values()))
    return (f"missing {each}; listed alive by all again {again:.1f}s after the start, "
            f"alive nowhere for {nowhere:.1f}s (statuses seen: {sorted(seen)})")


def test_downgrade_and_upgrade_keep_the_node(
        cluster: dict[str, nspawn.Container], previous: Path) -> None:
    n1, n2, n3 = cluster["n1"], cluster["n2"], cluster["n3"]
    n3.run("systemctl start serfd")  # down since the SIGKILL test
    for c in cluster.values():
        c.wait_for("serfctl members --status alive", _all_alive, timeout=30)
    # State worth keeping on n1: a second key in its keyring, a handled user event.
    second_key = n1.run("serfctl keygen").stdout.strip()
    n1.run(f"serfctl keys --install {second_key}")

    def handled() -> list[str]:
        log = n1.run("journalctl -u serfd -o cat").stdout
        return re.findall(r"serfd handler: user event deploy at ltime (\d+)", log)

    def barrier_event() -> list[str]:
        """A new event, handled once: any replay of old ones would have come before it."""
        seen = handled()
        n1.run("serfctl event deploy next")
        n1.wait_for("journalctl -u serfd -o cat",
                    lambda log: log.count("serfd handler: user event deploy") > len(seen),
                    timeout=15)
        return handled()

    def starts() -> int:
        return n1.run("journalctl -u serfd -o cat").stdout.count(": node n1 bound to ")

    events = barrier_event()
    # The repository's new index, for its own entry only (no archive in the namespaces).
    n1.run("apt-get update -qq -o Dir::Etc::SourceList=/etc/apt/sources.list.d/serfd.sources "
           "-o Dir::Etc::SourceParts=- -o APT::Get::List-Cleanup=0")
    current = n1.run("dpkg-query -W -f '${Version}' serfd").stdout
    old = nspawn.sh("dpkg-deb", "-f", str(previous), "Version").stdout.strip()
    assert old != current
    for step, command in (
        ("downgrade", f"apt-get install -y -q --allow-downgrades serfd={old}"),
        ("upgrade", "apt-get install -y -q --only-upgrade serfd"),
    ):
        before, keyring = starts(), n1.run("sha256sum /var/lib/serfd/keyring").stdout
        # n2 and n3 sample n1's status meanwhile: how long n1 is missing from the cluster.
        watchers = {c: c.run(
            "nohup sh -c 'while :; do set -- $(serfctl members --name n1);"
            " echo $(date +%s.%N) ${3:-none}; done' > /tmp/watch.log 2>&1 & echo $!"
        ).stdout.strip() for c in (n2, n3)}
        t, wall = time.monotonic(), time.time()  # the containers share the host's clocks
        n1.run(f"DEBIAN_FRONTEND=noninteractive {command}", timeout=300)
        installed = time.monotonic()
        for c in (n2, n3):
            c.wait_for("serfctl members --status alive --name n1",
                       lambda out: out.startswith("n1 "), timeout=10, interval=0.1)
        back = time.monotonic()
        for c, watcher in watchers.items():
            c.run(f"kill {watcher}")
        print(f"\n[timing] {n1.lab.suite}: {step}: apt {installed - t:.1f}s, then alive on n2 "
              f"and n3 {back - installed:.1f}s later; "
              + _missing_figures({c.name: c.run("cat /tmp/watch.log").stdout
                                  for c in watchers}, wall))
        version = n1.run("dpkg-query -W -f '${Version}' serfd").stdout
        if step == "downgrade":
            assert version == old
        else:  # the newest in the repository
            n1.run(f"dpkg --compare-versions {version} ge {current}")
        assert n1.run("serfd --version").stdout == f"serfd {version.split('+')[0]}\n"
        assert starts() == before + 1, step  # restarted once
        # Kept: drop-ins, keyring (both keys), snapshot; no handled event runs again.
        n1.run("test -f /etc/serfd.d/50-deploy.toml && test -f /etc/serfd.d/60-handlers.toml")
        assert n1.run("sha256sum /var/lib/serfd/keyring").stdout == keyring, step
        assert second_key in n1.run("serfctl keys --list").stdout, step
        n1.run("grep -q '^alive: n2 ' /var/lib/serfd/snapshot")
        now = barrier_event()
        assert now[:len(events)] == events and len(now) == len(events) + 1, (step, events, now)
        events = now


def test_upgrade_brings_the_runtime_tags_back(cluster: dict[str, nspawn.Container]) -> None:
    # 0.1.0 knows no tags_file: it ran with [tags] alone and left the file as it was; the
    # upgrade back reads it again (issue 12).
    n1, n2 = cluster["n1"], cluster["n2"]
    assert n1.run("cat /var/lib/serfd/tags").stdout == RUNTIME_TAGS_FILE
    assert members(n1)["n1"] == ("alive", RUNTIME_TAGS)
    n2.wait_for("serfctl members --status alive --name n1", lambda out: RUNTIME_TAGS in out,
                timeout=15)
    # And back to the configuration's tags when asked.
    n1.run("serfctl tags --reset")
    assert members(n1)["n1"][1] == "dc=lab,rack=r1,role=reloaded"


# ----------------------------------------------------------------------------------
# Purge


def test_apt_purge_removes_service_config_and_state(seed: nspawn.Container) -> None:
    r = seed.run("DEBIAN_FRONTEND=noninteractive apt-get purge -y -q serfd")
    assert "Purging configuration files for serfd" in r.stdout
    assert seed.run("pgrep -u serfd", check=False).returncode == 1  # nothing runs as serfd
    assert seed.run("systemctl list-unit-files serfd.service --no-legend",
                    check=False).stdout.strip() == ""
    for path in ("/etc/serfd.d", "/var/lib/serfd", "/run/serfd",
                 "/lib/systemd/system/serfd.service", "/usr/bin/serfd", "/usr/bin/serfctl",
                 "/etc/systemd/system/multi-user.target.wants/serfd.service"):
        assert seed.run(f"test -e {path}", check=False).returncode == 1, path
    assert seed.run("dpkg-query -W -f '${Status}' serfd", check=False).stdout in (
        "", "unknown ok not-installed")
    # The system user stays, as Debian keeps system users (files may still be theirs).
    seed.run("getent passwd serfd")


def test_install_with_a_broken_drop_in_leaves_serfd_failed_not_restarting(
        seed: nspawn.Container) -> None:
    # A first install (after the purge) onto drop-ins this machine cannot run: the RPC
    # socket's group does not exist. serfd fails once with 2 (a configuration error,
    # nothing bound) and the unit stays failed, showing why; no restart loop. apt
    # succeeds, as with debhelper's own start, and prints the errors.
    seed.run(f"mkdir -p /etc/serfd.d && printf 'bind = \"{_loopback_for_this_run()}:17946\"\\n'"
             " > /etc/serfd.d/50-test.toml && printf '[rpc]\\nsocket_group = \"no-such-group\"\\n'"
             " > /etc/serfd.d/70-group.toml")
    r = seed.run("DEBIAN_FRONTEND=noninteractive apt-get install -y -q serfd", check=False,
                 timeout=300)
    out = r.stdout + r.stderr  # apt's output, the package's messages in it
    assert r.returncode == 0, out
    # Failed for good at once, not "activating (auto-restart)".
    assert show(seed, "ActiveState") == "failed", out
    assert (show(seed, "Result"), show(seed, "ExecMainStatus")) == ("exit-code", "2")
    assert show(seed, "NRestarts") == "0"
    assert ("serfd: the configuration in /etc/serfd.d does not load:\n"
            "  rpc.socket_group: unknown group 'no-such-group'\n") in out, out
    status = seed.run("systemctl status serfd --no-pager", check=False).stdout
    assert "rpc.socket_group: unknown group 'no-such-group'" in status, status
    assert seed.run("pgrep -u serfd", check=False).returncode == 1
    # Fixed: it starts.
    seed.run("rm /etc/serfd.d/70-group.toml && systemctl start serfd")
    assert members(seed)["seed"][0] == "alive"
