"""SWIM membership and failure detection: HashiCorp memberlist 0.2.2 as a state machine.

Theory of operation
-------------------
:class:`~serfd.memberlist.swim.Memberlist` is a sans-IO state machine. It is fed inputs
(a datagram, an inbound stream message, the outcome of a stream it asked for, a timer
tick) with the current time, and it leaves outputs to be collected (datagrams to send,
streams to open, the next time it wants a tick). Each probe interval it pings one member
round-robin, asks ``indirect_checks`` others to ping a member that did not ack, and turns
silence into a suspicion that ``suspicion`` lets expire faster as independent
confirmations arrive. State spreads by piggy-backing broadcasts (``broadcast``: each
message retransmitted ``retransmit_mult * log(n+1)`` times, newest first) on every packet,
and by periodic TCP push/pull of the whole member list. ``profiles`` holds the lan/wan/
local timing presets.

The layer above (the Serf core) is its delegate: it supplies node metadata, piggy-backed
user messages and push/pull user state, and hears joins, leaves, updates and conflicts.
"""
