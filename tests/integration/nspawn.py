"""A small lab of systemd containers (systemd-nspawn) for the serfd system test.

Follows the tested recipe in reference/SYSTEMD-LAB.md:

* a Debian rootfs per suite (bookworm, trixie), made once with mmdebstrap from the
  host's archive and cached (``rootfs()``), shared read-only by every container
  through ``--volatile=overlay``;
* each container boots systemd as PID 1 with ``--register=no --keep-unit``, in a
  cgroup of its own under ``/sys/fs/cgroup/{systemd,unified}/<lab>/<name>``;
* commands run inside with ``nsenter -t <leader> -a`` and a clean environment;
* "hosts" are network namespaces this lab creates (``10.77.0.x/24`` on a bridge
  that lives in a namespace of its own); nothing is added to the host's network.

Everything a Lab makes (containers, cgroups, namespaces) carries the test
process's PID in its name and is removed by ``Lab.close()``; nothing else is
touched.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

from tests.support import wait_until

SYSPATH = "/usr/sbin:/usr/bin:/sbin:/bin"
ROOTFS_PACKAGES = "systemd,systemd-sysv,dbus,python3,iproute2,procps,ca-certificates"
CGROUP_ROOTS = (Path("/sys/fs/cgroup/systemd"), Path("/sys/fs/cgroup/unified"))


def sh(*args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run a host command with Debian's PATH."""
    return subprocess.run(list(args), capture_output=True, text=True, timeout=timeout,
                          check=check, env={"PATH": SYSPATH, "LC_ALL": "C.UTF-8"})


def apt_sources() -> list[Path]:
    """The host's active apt sources (the archive the containers can reach)."""
    d = Path("/etc/apt/sources.list.d")
    found = sorted(p for p in d.glob("*") if p.suffix in (".list", ".sources"))
    main = Path("/etc/apt/sources.list")
    if main.exists() and main.read_text().strip():
        found.insert(0, main)
    return found


def host_suite() -> str:
    """The host's Debian code name (bookworm on the project's machines)."""
    for line in Path("/etc/os-release").read_text().splitlines():
        if line.startswith("VERSION_CODENAME="):
            return line.split("=", 1)[1].strip().strip('"')
    raise RuntimeError("/etc/os-release names no VERSION_CODENAME")


def suite_sources(suite: str) -> list[tuple[str, str]]:
    """(file name, text) of the host's apt sources for another suite of the same archive:
    the host's code name replaced (bookworm, bookworm-updates, bookworm-security ->
    trixie, ...). The archive mirror stays the host's, the only one reachable."""
    host = host_suite()
    out = []
    for path in apt_sources():
        text = path.read_text()
        if suite != host:
            text = re.sub(rf"\b{re.escape(host)}(?=[\s/-]|$)", suite, text, flags=re.M)
        out.append((path.name, text))
    return out


def rootfs(cache: Path, suite: str) -> Path:
    """A prepared rootfs of Debian suite under cache, built (25-30 s) when missing."""
    sources = suite_sources(suite)
    key = hashlib.sha256(
        (ROOTFS_PACKAGES + "".join(text for _, text in sources)).encode()
    ).hexdigest()[:12]
    root = cache / f"rootfs-{suite}-{key}"
    if (root / ".ready").exists():
        return root
    cache.mkdir(parents=True, exist_ok=True)
    tmp = cache / f"rootfs-{suite}-{key}.tmp{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    lists = cache / f"sources-{suite}.tmp{os.getpid()}"
    shutil.rmtree(lists, ignore_errors=True)
    lists.mkdir()
    for name, text in sources:
        (lists / name).write_text(text)
    try:
        sh("mmdebstrap", "--variant=minbase", f"--include={ROOTFS_PACKAGES}", suite,
           str(tmp), *(str(lists / name) for name, _ in sources), timeout=600)
    finally:
        shutil.rmtree(lists, ignore_errors=True)
    # A fresh machine-id and host name per boot, no periodic apt jobs.
    (tmp / "etc/machine-id").write_text("")
    dbus_id = tmp / "var/lib/dbus/machine-id"
    dbus_id.unlink(missing_ok=True)
    dbus_id.parent.mkdir(parents=True, exist_ok=True)
    dbus_id.symlink_to("/etc/machine-id")
    (tmp / "etc/hostname").unlink(missing_ok=True)
    for timer in ("apt-daily.timer", "apt-daily-upgrade.timer"):
        link = tmp / "etc/systemd/system" / timer
        link.unlink(missing_ok=True)
        link.symlink_to("/dev/null")
    (tmp / ".ready").write_text("")
    shutil.rmtree(root, ignore_errors=True)
    tmp.rename(root)
    return root


class Container:
    """One booted container; ``run()`` executes a shell command inside it."""

    def __init__(self, lab: Lab, name: str, proc: subprocess.Popen[bytes], log: Path) -> None:
        self.lab = lab
        self.name = name
        self.proc = proc
        self.log = log
        self.leader = 0

    def _leader(self) -> int:
        """The container's systemd PID, 0 while there is none yet."""
        if self.proc.poll() is not None:
            raise RuntimeError(f"nspawn for {self.name} exited: {self.log.read_text()[-2000:]}")
        # nspawn forks helpers too: the leader is the child that runs systemd.
        for task in Path(f"/proc/{self.proc.pid}/task").glob("*"):
            with contextlib.suppress(OSError):
                for child in (task / "children").read_text().split():
                    if Path(f"/proc/{child}/comm").read_text().strip() == "systemd":
                        return int(child)
        return 0

    def wait_booted(self, timeout: float = 60) -> None:
        """Until systemd inside says the system is running (or degraded)."""

        def found() -> int:
            self.leader = self._leader()
            return self.leader

        wait_until(found, timeout, desc=f"{self.name}: container leader", retry_on=())

        def booted() -> str:
            r = self.run("systemctl is-system-running --wait", check=False, timeout=timeout)
            return r.stdout.strip() if r.stdout.strip() in ("running", "degraded") else ""

        wait_until(booted, timeout, 0.1, desc=f"{self.name}: system running", retry_on=())

    def run(self, command: str, *, check: bool = True, timeout: float = 120,
            user: str | None = None) -> subprocess.CompletedProcess[str]:
        """`sh -c command` inside the container (as user, via runuser, if given)."""
        argv = ["sh", "-c", command]
        if user is not None:
            argv = ["runuser", "-u", user, "--", *argv]
        r = subprocess.run(
            ["nsenter", "-t", str(self.leader), "-a", "env", "-i", f"PATH={SYSPATH}",
             "LC_ALL=C.UTF-8", "HOME=/root", *argv],
            capture_output=True, text=True, timeout=timeout, check=False,
        )
        if check and r.returncode != 0:
            raise AssertionError(
                f"[{self.name}] {command!r} exited {r.returncode}\n"
                f"stdout: {r.stdout}\nstderr: {r.stderr}"
            )
        return r

    def wait_for(self, command: str, predicate: object = None, timeout: float = 30,
                 interval: float = 0.2) -> str:
        """Rerun command until it succeeds (and predicate(stdout) holds); its stdout."""
        runs: list[subprocess.CompletedProcess[str]] = []

        def satisfied() -> bool:
            runs.append(self.run(command, check=False))
            last = runs[-1]
            ok = predicate is None or predicate(last.stdout)  # type: ignore[operator]
            return last.returncode == 0 and bool(ok)

        def failed() -> str:
            last = runs[-1]
            return (f"[{self.name}] {command!r}: last exit {last.returncode}\n"
                    f"stdout: {last.stdout}\nstderr: {last.stderr}")

        wait_until(satisfied, timeout, interval, desc=failed, retry_on=())
        return runs[-1].stdout

    def stop(self, timeout: float = 15) -> None:
        """Orderly poweroff (SIGTERM to nspawn); kill the container's cgroup if stuck."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.lab.kill_cgroup(self.name)


class Lab:
    """Containers, cgroups and network namespaces owned by one test run."""

    def __init__(self, workdir: Path, root: Path, suite: str = "") -> None:
        self.workdir = workdir
        self.root = root
        self.suite = suite  # the Debian release in root, for what the tests print
        self.tag = f"serfdt{os.getpid()}"
        self.containers: list[Container] = []
        self.netns: list[str] = []

    # -- cgroups ---------------------------------------------------------------

    def _cgroups(self, name: str) -> list[Path]:
        return [r / self.tag / name for r in CGROUP_ROOTS if r.is_dir()]

    def kill_cgroup(self, name: str) -> None:
        """SIGKILL whatever is left in a container's cgroups (only ours), then remove them."""
        for cg in self._cgroups(name):
            for _ in range(50):
                pids = []
                for procs in cg.rglob("cgroup.procs"):
                    with contextlib.suppress(OSError):
                        pids += [int(p) for p in procs.read_text().split()]
                if not pids:
                    break
                for pid in pids:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                time.sleep(0.1)
            for d in sorted(cg.rglob("*"), key=lambda p: len(p.parts), reverse=True):
                if d.is_dir():
                    with contextlib.suppress(OSError):
                        d.rmdir()
            with contextlib.suppress(OSError):
                cg.rmdir()

    # -- networks --------------------------------------------------------------

    def network(self, hosts: dict[str, str]) -> dict[str, str]:
        """One namespace per host (name -> "10.77.0.x/24") on a private bridge; name -> netns."""
        bridge = f"{self.tag}-br"
        sh("ip", "netns", "add", bridge)
        self.netns.append(bridge)
        sh("ip", "-n", bridge, "link", "add", "br0", "type", "bridge")
        sh("ip", "-n", bridge, "link", "set", "br0", "up")
        out = {}
        for i, (host, cidr) in enumerate(hosts.items()):
            ns = f"{self.tag}-{host}"
            sh("ip", "netns", "add", ns)
            self.netns.append(ns)
            # Made inside the namespaces: the host's own network is never touched.
            sh("ip", "-n", ns, "link", "add", "eth0", "type", "veth", "peer", "name", f"p{i}",
               "netns", bridge)
            sh("ip", "-n", bridge, "link", "set", f"p{i}", "master", "br0", "up")
            sh("ip", "-n", ns, "addr", "add", cidr, "dev", "eth0")
            sh("ip", "-n", ns, "link", "set", "eth0", "up")
            sh("ip", "-n", ns, "link", "set", "lo", "up")
            out[host] = ns
        return out

    # -- containers ------------------------------------------------------------

    def boot(self, name: str, *, netns: str | None = None, binds: tuple[str, ...] = (),
             ro_binds: tuple[str, ...] = ()) -> Container:
        """Start a container and return it once systemd inside is up."""
        cgroups = self._cgroups(name)
        for cg in cgroups:
            cg.mkdir(parents=True, exist_ok=True)
        argv = ["systemd-nspawn", "--quiet", "--boot", "--register=no", "--keep-unit",
                "--volatile=overlay", "-D", str(self.root), "-M", name]
        if netns is not None:
            argv.append(f"--network-namespace-path=/run/netns/{netns}")
        argv += [f"--bind={b}" for b in binds] + [f"--bind-ro={b}" for b in ro_binds]
        log = self.workdir / f"{name}.console.log"
        # A shell moves itself into the container's cgroups, then becomes nspawn.
        enter = "".join(f'echo $$ > "{cg}/cgroup.procs" && ' for cg in cgroups)
        argv = ["sh", "-c", enter + 'exec "$@"', "sh", *argv]
        with open(log, "wb") as out:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out,
                                    stderr=subprocess.STDOUT,
                                    env={"PATH": SYSPATH, "LC_ALL": "C.UTF-8"})
        c = Container(self, name, proc, log)
        self.containers.append(c)
        c.wait_booted()
        return c

    def close(self) -> None:
        for c in self.containers:
            with contextlib.suppress(Exception):
                c.stop()
        for ns in reversed(self.netns):
            sh("ip", "netns", "del", ns, check=False)
        for r in CGROUP_ROOTS:
            with contextlib.suppress(OSError):
                (r / self.tag).rmdir()
