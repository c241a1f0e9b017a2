"""Acceptance (issue 11): serf agents started with ``-discover NAME`` and serfd nodes with
``discover = "NAME"``, in network namespaces on one bridge and with no ``join``, form one
cluster; a node with another NAME stays alone.

Each direction is shown on its own, because a serf agent asks only at its start and then
every 60 s (and never announces), and a serfd node asks at its start and then every 60 s
too: a serf agent started after a serfd node can only have found it through its own
query and serfd's answer (hashicorp/mdns's client reading python-zeroconf's response);
a serfd node started after a serf agent, through its query and the agent's answer.

Each test makes its own namespaces (a hub with the bridge, one per node, names unique
to the run) with addresses in 10.213.0.0/24 that exist only inside them, and a route
for 224.0.0.0/4 on the node's interface (nothing else routes multicast there). The
host's own network is never touched. Processes run under ``ip netns exec`` and are
killed by PID at teardown; the namespaces are deleted.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.harness import RPCClient, _pdeathsig
from tests.support import wait_until

SUBNET = "10.213.0"
CONVERGE_TIMEOUT = 30.0  # well under the 60 s poll interval of both


def _sh(*args: str) -> None:
    subprocess.run(list(args), check=True, capture_output=True, text=True, timeout=30)


class Net:
    """A bridge in a hub namespace and one namespace per node, each with eth0 on the bridge."""

    def __init__(self, tag: str) -> None:
        self.tag = tag
        self.namespaces: list[str] = []
        self.procs: list[subprocess.Popen[bytes]] = []
        hub = f"{tag}-hub"
        _sh("ip", "netns", "add", hub)
        self.namespaces.append(hub)
        _sh("ip", "-n", hub, "link", "add", "br0", "type", "bridge", "mcast_snooping", "0")
        _sh("ip", "-n", hub, "link", "set", "br0", "up")
        self.hub = hub

    def node(self, i: int) -> tuple[str, str]:
        """Namespace number i (address SUBNET.i+1): (namespace, address)."""
        ns = f"{self.tag}-n{i}"
        _sh("ip", "netns", "add", ns)
        self.namespaces.append(ns)
        _sh("ip", "-n", ns, "link", "add", "eth0", "type", "veth", "peer", "name", f"p{i}",
            "netns", self.hub)
        _sh("ip", "-n", self.hub, "link", "set", f"p{i}", "master", "br0", "up")
        # No duplicate address detection: the link-local IPv6 address is usable at once.
        _sh("ip", "netns", "exec", ns, "sysctl", "-q", "-w", "net.ipv6.conf.eth0.accept_dad=0")
        ip = f"{SUBNET}.{i + 1}"
        _sh("ip", "-n", ns, "addr", "add", f"{ip}/24", "dev", "eth0")
        _sh("ip", "-n", ns, "link", "set", "eth0", "up", "multicast", "on")
        _sh("ip", "-n", ns, "link", "set", "lo", "up")
        _sh("ip", "-n", ns, "route", "add", "224.0.0.0/4", "dev", "eth0")
        return ns, ip

    def spawn(self, ns: str, argv: list[str], log: Path) -> subprocess.Popen[bytes]:
        with log.open("wb") as out:
            proc = subprocess.Popen(
                ["ip", "netns", "exec", ns, *argv], stdout=out, stderr=subprocess.STDOUT,
                preexec_fn=_pdeathsig,  # noqa: PLW1509
                env={**os.environ, "PYTHONPATH": os.getcwd()})
        self.procs.append(proc)
        return proc

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(10)
        for ns in reversed(self.namespaces):
            subprocess.run(["ip", "netns", "del", ns], check=False, capture_output=True)


_NETS = itertools.count(1)


@pytest.fixture
def net(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Net]:
    if os.geteuid() != 0:
        pytest.skip("needs root (network namespaces)")
    if shutil.which("ip") is None or subprocess.run(
            ["ip", "netns", "list"], capture_output=True, check=False).returncode != 0:
        pytest.skip("`ip netns` (iproute2) not available")
    if shutil.which("serf") is None:
        pytest.skip("real HashiCorp `serf` binary not found on PATH (Debian package `serf`)")
    n = Net(f"sfm{os.getpid()}-{next(_NETS)}")  # unique per test and run
    try:
        yield n
    finally:
        n.close()
        rep = getattr(request.node, "rep_call", None)
        if rep is not None and rep.failed:
            for log in sorted(tmp_path.glob("*.log")):
                sys.stderr.write(f"\n===== {log.name} =====\n"
                                 + log.read_text(errors="replace")[-4000:])


# Prints the source and kind of every datagram sent to 224.0.0.251:5353 on its link.
MULTICAST_LISTENER = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("224.0.0.251", 5353))
s.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP,
             socket.inet_aton("224.0.0.251") + socket.inet_aton(sys.argv[1]))
print("ready", flush=True)
while True:
    data, (ip, port) = s.recvfrom(9000)
    if len(data) >= 12:
        print(ip, port, "response" if data[2] & 0x80 else "query", flush=True)
"""


def multicast_listener(net: Net, tmp: Path, i: int) -> Path:
    ns, ip = net.node(i)
    out = tmp / "multicast.log"
    net.spawn(ns, [sys.executable, "-c", MULTICAST_LISTENER, ip], out)
    wait_until(lambda: out.read_text().startswith("ready"), timeout=CONVERGE_TIMEOUT,
               interval=0.1, desc="the multicast listener is up")
    return out


def serf_agent(net: Net, tmp: Path, i: int, discover: str) -> tuple[str, str]:
    """(namespace, node name) of a serf agent on SUBNET.i+1:7946."""
    ns, ip = net.node(i)
    name = f"serf{i}"
    net.spawn(ns, ["serf", "agent", "-node", name, "-bind", f"{ip}:7946",
                   "-rpc-addr", "127.0.0.1:7373", "-discover", discover, "-log-level", "debug"],
              tmp / f"{name}.log")
    return ns, name


def serfd_node(net: Net, tmp: Path, i: int, discover: str, *, by_interface: bool,
               extra: str = "", beside: tuple[str, str] | None = None,
               port: int = 7946) -> Path:
    # beside: (namespace, address) of another node, to share its host (and port 5353)
    ns, ip = beside if beside is not None else net.node(i)
    name = f"serfd{i}"
    home = tmp / name
    (home / "conf").mkdir(parents=True)
    # by_interface: no bind, Serf's `interface` gives it (and the mDNS interface).
    where = 'interface = "eth0"' if by_interface else f'bind = "{ip}:{port}"'
    (home / "conf" / "50-test.toml").write_text(
        f'node_name = "{name}"\n{where}\ndiscover = "{discover}"\nlog_level = "debug"\n'
        f'state_dir = "{home / "state"}"\n\n[rpc]\nsocket = "{home / "sock"}"\n{extra}')
    net.spawn(ns, [sys.executable, "-m", "serfd", "--config-dir", str(home / "conf")],
              tmp / f"{name}.log")
    return home / "sock"


def serfd_advertising(sock: Path) -> bool:
    """The node's mDNS responder is up (it answers from before its first query)."""
    with RPCClient(str(sock), timeout=5.0) as client:
        return int(client.stats()["serfd"].get("mdns_polls", "0")) >= 1


def serf_ready(ns: str) -> bool:
    return bool(serf_statuses(ns))


def serf_statuses(ns: str) -> dict[str, str]:
    out = subprocess.run(["ip", "netns", "exec", ns, "serf", "members", "-format", "json",
                          "-rpc-addr", "127.0.0.1:7373"], capture_output=True, text=True,
                         timeout=10, check=True)
    return {m["name"]: m["status"] for m in json.loads(out.stdout)["members"]}


def serfd_statuses(sock: Path) -> dict[str, str]:
    with RPCClient(str(sock), timeout=5.0) as client:
        return {m.name: m.status for m in client.members()}


def test_serf_agent_finds_serfd(net: Net, tmp_path: Path) -> None:
    sock = serfd_node(net, tmp_path, 0, "web", by_interface=False)
    wait_until(lambda: serfd_advertising(sock), timeout=CONVERGE_TIMEOUT, interval=0.2,
               desc="serfd advertises")
    ns, _ = serf_agent(net, tmp_path, 1, "web")
    want = {"serfd0": "alive", "serf1": "alive"}
    wait_until(lambda: serf_statuses(ns) == want, timeout=CONVERGE_TIMEOUT, interval=0.5,
               desc="the serf agent joined the serfd node it found")
    assert serfd_statuses(sock) == want


def test_serfd_finds_serf_agent(net: Net, tmp_path: Path) -> None:
    ns, _ = serf_agent(net, tmp_path, 0, "web")
    wait_until(lambda: serf_ready(ns), timeout=CONVERGE_TIMEOUT, interval=0.2,
               desc="the serf agent answers RPC")
    sock = serfd_node(net, tmp_path, 1, "web", by_interface=False)
    want = {"serf0": "alive", "serfd1": "alive"}
    wait_until(lambda: serfd_statuses(sock) == want, timeout=CONVERGE_TIMEOUT, interval=0.5,
               desc="the serfd node joined the serf agent it found")
    assert serf_statuses(ns) == want
    with RPCClient(str(sock), timeout=5.0) as client:
        assert client.stats()["serfd"]["mdns_joined"] == "1"


@pytest.mark.parametrize("family", ["ipv4", "ipv6"])
def test_serfd_finds_serf_agent_over_one_family(net: Net, tmp_path: Path, family: str) -> None:
    # Serf 0.10's [mdns] disable_ipv4 / disable_ipv6: the other family carries the query
    # and the answer (the answer still names the agent's IPv4 gossip address).
    off = "ipv6" if family == "ipv4" else "ipv4"
    ns, _ = serf_agent(net, tmp_path, 0, "web")
    wait_until(lambda: serf_ready(ns), timeout=CONVERGE_TIMEOUT, interval=0.2,
               desc="the serf agent answers RPC")
    sock = serfd_node(net, tmp_path, 1, "web", by_interface=False,
                      extra=f'\n[mdns]\ninterface = "eth0"\ndisable_{off} = true\n')
    want = {"serf0": "alive", "serfd1": "alive"}
    wait_until(lambda: serfd_statuses(sock) == want, timeout=CONVERGE_TIMEOUT, interval=0.5,
               desc=f"the serfd node found the serf agent over {family} mDNS")


def test_serf_and_serfd_discover_each_other(net: Net, tmp_path: Path) -> None:
    serfs = [serf_agent(net, tmp_path, i, "web") for i in (0, 1)]
    # A serf agent asks once at its start (then in 60 s): if every node started at once,
    # each might ask before the others answer. The agents' responders are up before
    # their RPC (command.go), so the serfd nodes, started then, find them.
    wait_until(lambda: all(serf_ready(ns) for ns, _ in serfs), timeout=CONVERGE_TIMEOUT,
               interval=0.2, desc="the serf agents answer RPC")
    socks = [serfd_node(net, tmp_path, 2, "web", by_interface=False),
             serfd_node(net, tmp_path, 3, "web", by_interface=True)]
    want = {"serf0": "alive", "serf1": "alive", "serfd2": "alive", "serfd3": "alive"}

    def converged() -> bool:
        return (all(serf_statuses(ns) == want for ns, _ in serfs)
                and all(serfd_statuses(s) == want for s in socks))

    wait_until(converged, timeout=CONVERGE_TIMEOUT, interval=0.5,
               desc="every node sees all four alive, through mDNS only")
    with RPCClient(str(socks[1]), timeout=5.0) as client:
        me = {m.name: m for m in client.members()}["serfd3"]
    assert me.addr == f"{SUBNET}.4"  # the bind address came from the interface


def test_other_discover_name_stays_apart(net: Net, tmp_path: Path) -> None:
    # "db" first: it hears every query of the "web" nodes, and answers none (nor does it
    # multicast anything a serf agent, which joins whatever complete service it hears
    # while it asks, could take for a "web" node).
    heard = multicast_listener(net, tmp_path, 9)
    lonely = serfd_node(net, tmp_path, 3, "db", by_interface=False)
    wait_until(lambda: serfd_advertising(lonely), timeout=CONVERGE_TIMEOUT, interval=0.2,
               desc="the db node advertises")
    serfs = [serf_agent(net, tmp_path, i, "web") for i in (0, 1)]
    wait_until(lambda: all(serf_ready(ns) for ns, _ in serfs), timeout=CONVERGE_TIMEOUT,
               interval=0.2, desc="the serf agents answer RPC")
    sock = serfd_node(net, tmp_path, 2, "web", by_interface=False)
    want = {"serf0": "alive", "serf1": "alive", "serfd2": "alive"}
    wait_until(lambda: serfd_statuses(sock) == want and all(
        serf_statuses(ns) == want for ns, _ in serfs), timeout=CONVERGE_TIMEOUT, interval=0.5,
        desc="the three 'web' nodes form a cluster")
    with RPCClient(str(lonely), timeout=5.0) as client:
        assert {m.name for m in client.members()} == {"serfd3"}
        stats = client.stats()
    assert stats["serfd"]["mdns_service"] == "_serf_db._tcp.local."
    assert stats["serfd"]["mdns_seen"] == "0"
    # As serf agents, serfd nodes answer by unicast only: nothing they multicast is a
    # response (their queries, which the listener heard, are multicast).
    lines = [line.split() for line in heard.read_text().splitlines()[1:]]
    serfds = (f"{SUBNET}.3", f"{SUBNET}.4")
    assert [ip for ip, _, kind in lines if kind == "query" and ip in serfds]
    assert [(ip, kind) for ip, _, kind in lines if kind == "response" and ip in serfds] == []


def test_serfd_beside_a_serf_agent_on_one_host(net: Net, tmp_path: Path) -> None:
    # Both responders bind UDP 5353 on the same host (SO_REUSEADDR, as avahi would too),
    # and each finds the other through its own query, looped back on the host.
    ns, _ = serf_agent(net, tmp_path, 0, "web")
    wait_until(lambda: serf_ready(ns), timeout=CONVERGE_TIMEOUT, interval=0.2,
               desc="the serf agent answers RPC")
    sock = serfd_node(net, tmp_path, 1, "web", by_interface=False,
                      beside=(ns, f"{SUBNET}.1"), port=7947)
    want = {"serf0": "alive", "serfd1": "alive"}
    wait_until(lambda: serfd_statuses(sock) == want, timeout=CONVERGE_TIMEOUT, interval=0.5,
               desc="the serfd node found the serf agent beside it")
    assert serf_statuses(ns) == want
