"""memberlist timing profiles: lan, wan, local (memberlist 0.2.2 config.go, PROTOCOL.md 2.9).

The agent's ``profile`` setting picks one; ``MemberlistConfig.from_profile`` copies it.
Times are float seconds. Each number is named after the memberlist Config field it mirrors.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["LAN", "LOCAL", "PROFILES", "WAN", "Profile", "get_profile"]


@dataclass(frozen=True, slots=True)
class Profile:
    """The memberlist knobs that differ between network profiles."""

    name: str
    tcp_timeout: float  # TCPTimeout
    indirect_checks: int  # IndirectChecks
    retransmit_mult: int  # RetransmitMult
    suspicion_mult: int  # SuspicionMult
    suspicion_max_timeout_mult: int  # SuspicionMaxTimeoutMult
    push_pull_interval: float  # PushPullInterval
    probe_timeout: float  # ProbeTimeout
    probe_interval: float  # ProbeInterval
    awareness_max_multiplier: int  # AwarenessMaxMultiplier
    gossip_nodes: int  # GossipNodes
    gossip_interval: float  # GossipInterval
    gossip_to_the_dead_time: float  # GossipToTheDeadTime


# DefaultLANConfig
LAN = Profile(
    name="lan",
    tcp_timeout=10.0,  # TCPTimeout 10s
    indirect_checks=3,  # IndirectChecks
    retransmit_mult=4,  # RetransmitMult
    suspicion_mult=4,  # SuspicionMult
    suspicion_max_timeout_mult=6,  # SuspicionMaxTimeoutMult
    push_pull_interval=30.0,  # PushPullInterval 30s
    probe_timeout=0.5,  # ProbeTimeout 500ms
    probe_interval=1.0,  # ProbeInterval 1s
    awareness_max_multiplier=8,  # AwarenessMaxMultiplier
    gossip_nodes=3,  # GossipNodes
    gossip_interval=0.2,  # GossipInterval 200ms
    gossip_to_the_dead_time=30.0,  # GossipToTheDeadTime 30s
)

# DefaultWANConfig: LAN with these changes
WAN = Profile(
    name="wan",
    tcp_timeout=30.0,  # TCPTimeout 30s
    indirect_checks=3,  # IndirectChecks
    retransmit_mult=4,  # RetransmitMult
    suspicion_mult=6,  # SuspicionMult
    suspicion_max_timeout_mult=6,  # SuspicionMaxTimeoutMult
    push_pull_interval=60.0,  # PushPullInterval 60s
    probe_timeout=3.0,  # ProbeTimeout 3s
    probe_interval=5.0,  # ProbeInterval 5s
    awareness_max_multiplier=8,  # AwarenessMaxMultiplier
    gossip_nodes=4,  # GossipNodes
    gossip_interval=0.5,  # GossipInterval 500ms
    gossip_to_the_dead_time=60.0,  # GossipToTheDeadTime 60s
)

# DefaultLocalConfig: LAN with these changes
LOCAL = Profile(
    name="local",
    tcp_timeout=1.0,  # TCPTimeout 1s
    indirect_checks=1,  # IndirectChecks
    retransmit_mult=2,  # RetransmitMult
    suspicion_mult=3,  # SuspicionMult
    suspicion_max_timeout_mult=6,  # SuspicionMaxTimeoutMult
    push_pull_interval=15.0,  # PushPullInterval 15s
    probe_timeout=0.2,  # ProbeTimeout 200ms
    probe_interval=1.0,  # ProbeInterval 1s
    awareness_max_multiplier=8,  # AwarenessMaxMultiplier
    gossip_nodes=3,  # GossipNodes
    gossip_interval=0.1,  # GossipInterval 100ms
    gossip_to_the_dead_time=15.0,  # GossipToTheDeadTime 15s
)

PROFILES: dict[str, Profile] = {p.name: p for p in (LAN, WAN, LOCAL)}


def get_profile(name: str) -> Profile:
    """The profile called ``name`` (lan, wan or local); ValueError otherwise."""
    try:
        return PROFILES[name]
    except KeyError:
        raise ValueError(f"unknown profile {name!r} (want lan, wan or local)") from None
