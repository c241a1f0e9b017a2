"""Joins: from the addresses an operator writes to Serf's join, with DNS, retries, rejoin.

Theory of operation
-------------------
:class:`Joiner` turns join addresses (``host``, ``host:port``, ``[v6]:port``,
``name/host:port``) into IPs, off the loop (an injectable :data:`Resolver`, by default
the loop's ``getaddrinfo``), and hands them to the gossip driver's
:meth:`~serfd.agent.gossip.GossipDriver.join_addrs`, which is Serf's join (push/pulls,
the join intent, ``JoinDone``). Its error lines are memberlist's, in the order the
addresses were given: ``Failed to resolve <host>: ...`` here, ``Failed to join <ip>:
...`` from the core; an RPC join with no success gets them as Go's multierror text
(:func:`join_error_text`).

Three loops run on the agent's :class:`~serfd.agent.clock.Clock`, so tests step them
on a fake one:

* :meth:`Joiner.retry_join`: the configured ``join`` list at start, retried with a
  backoff from 1 s up to ``retry_interval`` until one address is joined, or given up
  after ``retry_max_attempts`` (the agent then exits 1); old user events are ignored
  unless ``replay_on_join`` (Serf's ``-replay`` for its start and retry joins);
* :meth:`Joiner.rejoin`: the members the snapshot knew (serf.go handleRejoin: a
  memberlist join, no join intent), one at a time, until one answers or someone
  joined us; unlike Serf, retried with the same backoff, so a whole cluster restarting
  together finds itself again;
* :meth:`Joiner.join_after_reload`: a reload that changed ``join`` joins the new list
  once (replaying as ``replay_on_join`` says).

``last_join`` says how the last attempt went, for the agent's status line.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import random
import socket
from collections.abc import Awaitable, Callable
from typing import Protocol

from serfd.agent.clock import Clock
from serfd.core.serf import JoinError, SerfError
from serfd.memberlist.swim import Addr

__all__ = [
    "JoinDriver",
    "JoinFailed",
    "Joiner",
    "Resolver",
    "join_error_text",
    "parse_join_addr",
    "resolve_with_loop",
]

log = logging.getLogger("serfd.agent")

# host, port -> the IPs to try (in order); OSError if the name does not resolve.
Resolver = Callable[[str, int], Awaitable[list[str]]]


class JoinDriver(Protocol):
    """What joins need from the gossip driver."""

    async def join_addrs(self, addrs: list[Addr], ignore_old: bool, *,
                         intent: bool = True) -> tuple[int, list[JoinError]]: ...

    def num_alive(self) -> int: ...

    def alive(self) -> bool: ...


class JoinFailed(Exception):
    """No address was joined; the message is the RPC error text (Go's multierror)."""


def parse_join_addr(text: str, default_port: int) -> tuple[str | None, str, int]:
    """``host``, ``host:port``, ``[v6]:port`` or ``name/host:port`` → (name, host, port)."""
    name: str | None = None
    if "/" in text:
        name, text = text.split("/", 1)
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port = int(rest[1:]) if rest.startswith(":") else default_port
        return name, host, port
    if text.count(":") == 1:
        host, _, p = text.partition(":")
        return name, host, int(p)
    return name, text, default_port


def join_error_text(errors: list[str]) -> str:
    """Go's multierror text for the RPC join reply (what ``serf join`` prints)."""
    if not errors:
        errors = ["no addresses to join"]
    plural = "s" if len(errors) != 1 else ""
    points = "\n\t".join(f"* {e}" for e in errors)
    return f"{len(errors)} error{plural} occurred:\n\t{points}\n\n"


async def resolve_with_loop(host: str, port: int) -> list[str]:
    """An IP stays itself; a name goes through the loop's getaddrinfo (its executor)."""
    try:
        ipaddress.ip_address(host)
        return [host]
    except ValueError:
        pass
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    ips: list[str] = []
    for family, _, _, _, sa in infos:
        if family in (socket.AF_INET, socket.AF_INET6) and sa[0] not in ips:
            ips.append(str(sa[0]))
    return ips


class Joiner:
    """DNS, Serf's join, retry_join, snapshot rejoin, join after reload (module docstring)."""

    def __init__(self, driver: JoinDriver, *, clock: Clock, default_port: int,
                 resolver: Resolver = resolve_with_loop,
                 rng: random.Random | None = None) -> None:
        self.driver = driver
        self.clock = clock
        self.default_port = default_port
        self.resolver = resolver
        self.rng = rng if rng is not None else random.Random()
        self.last_join = "none yet"

    async def join_texts(self, texts: list[str], ignore_old: bool, *,
                         intent: bool = True) -> tuple[int, list[str]]:
        """memberlist.Join: resolve every address and join the IPs; (joined, error lines
        in the order of ``texts``). SerfError if Serf refuses (after a leave)."""
        slots: list[str | list[Addr]] = []  # per text: its error line, or its IPs
        for text in texts:
            try:
                _, host, port = parse_join_addr(text, self.default_port)
            except ValueError:
                slots.append(f"Failed to join {text}: bad address")
                continue
            try:
                ips = await self.resolver(host, port)
            except OSError as e:
                slots.append(f"Failed to resolve {host}: {e}")
                continue
            slots.append([(ip, port) for ip in ips])
        addrs = [a for slot in slots if isinstance(slot, list) for a in slot]
        n, failures = await self.driver.join_addrs(addrs, ignore_old, intent=intent)
        why = {f.addr: str(f) for f in failures}
        errors: list[str] = []
        for slot in slots:
            if isinstance(slot, str):
                errors.append(slot)
            else:
                errors.extend(why[a] for a in slot if a in why)
        return n, errors

    async def join(self, texts: list[str], replay: bool) -> int:
        """RPC join: how many were joined; JoinFailed (Go's text) if none, SerfError if
        Serf refuses."""
        n, errors = await self.join_texts(texts, ignore_old=not replay)
        if n > 0:
            self.last_join = f"joined {n}"
            return n
        self.last_join = "failed"
        raise JoinFailed(join_error_text(errors))

    async def retry_join(self, texts: list[str], *, retry_interval: float,
                         max_attempts: int, replay: bool = False) -> bool:
        """Join ``texts`` until one is joined (True), backing off from 1 s up to
        ``retry_interval``; False once ``max_attempts`` (0: no limit) failed or Serf
        stopped being alive. ``replay``: Serf's ``replay_on_join`` (old user events are
        delivered again)."""
        attempts = 0
        delay = min(1.0, retry_interval)
        while self.driver.alive():
            attempts += 1
            try:
                n = await self.join(list(texts), replay=replay)
                log.info("joined %d of the configured nodes (replay: %s)", n,
                         "yes" if replay else "no")
                return True
            except (JoinFailed, SerfError) as e:
                log.warning("join attempt %d failed: %s", attempts,
                            str(e).strip().replace("\n", " "))
            if max_attempts and attempts >= max_attempts:
                log.error("giving up joining after %d attempts", attempts)
                return False
            await self.clock.sleep(delay)
            # Back off from 1 s up to retry_interval so a cluster that starts together
            # finds itself fast, without hammering an absent seed.
            delay = min(delay * 2, retry_interval)
        return False

    async def rejoin(self, previous: list[tuple[str, str]], *, retry_interval: float) -> bool:
        """Rejoin the snapshot's members ``(name, "ip:port")``, one at a time, in random
        order, no join intent; True once one answered or someone joined us meanwhile."""
        delay = min(1.0, retry_interval)
        while self.driver.alive():
            order = list(previous)
            self.rng.shuffle(order)
            for name, addr in order:
                if self.driver.num_alive() > 1:
                    return True  # joined meanwhile (config join, or someone joined us)
                log.info("attempting re-join to previously known node %s: %s", name, addr)
                try:
                    n, errors = await self.join_texts([f"{name}/{addr}"], ignore_old=False,
                                                      intent=False)
                except SerfError:
                    return False
                if n:
                    log.info("re-joined to previously known node %s: %s", name, addr)
                    self.last_join = "rejoined"
                    return True
                log.debug("re-join to %s failed: %s", name, "; ".join(errors))
            if self.driver.num_alive() > 1:
                return True
            log.warning("failed to re-join any previously known node; retrying in %.0fs", delay)
            await self.clock.sleep(delay)
            delay = min(delay * 2, retry_interval)
        return False

    async def join_after_reload(self, texts: list[str], *, replay: bool = False) -> None:
        """A reload changed ``join``: join the new list once (logged either way)."""
        try:
            n = await self.join(texts, replay=replay)
            log.info("reload: joined %d node(s) of the new join list", n)
        except (JoinFailed, SerfError) as e:
            log.warning("reload: joining the new join list failed: %s", " ".join(str(e).split()))
