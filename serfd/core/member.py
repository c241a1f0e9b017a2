"""Serf members as the Serf layer, the RPC server and serfctl see them."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum


class MemberStatus(IntEnum):
    """Serf member status (serf.go MemberStatus); the numbers are Serf's own."""

    NONE = 0
    ALIVE = 1
    LEAVING = 2
    LEFT = 3
    FAILED = 4

    @property
    def label(self) -> str:
        """The word Serf's RPC and CLI use: none, alive, leaving, left, failed."""
        return self.name.lower()


@dataclass(frozen=True, slots=True)
class Member:
    """One member of the cluster (a snapshot; the Serf layer owns the live state)."""

    name: str
    addr: str  # IP address as text; IPv4-mapped IPv6 is shown as IPv4
    port: int
    tags: dict[str, str] = field(default_factory=dict)
    status: MemberStatus = MemberStatus.ALIVE
    protocol_min: int = 1
    protocol_max: int = 5
    protocol_cur: int = 2
    delegate_min: int = 2
    delegate_max: int = 5
    delegate_cur: int = 5
