"""The Serf layer: members with tags and statuses, user events, queries, and their clocks.

Theory of operation
-------------------
:class:`~serfd.core.serf.Serf` is the one object the agent and the simulation drive, and
it is sans-IO: inputs are datagrams, inbound stream messages, the outcomes of streams it
asked for, timer ticks and commands (join, leave, force-leave, user event, query, respond,
tags); outputs are datagrams to send, streams to open, the next timer deadline and a queue
of events. It owns a memberlist state machine privately and is its delegate. On top of
membership it keeps Serf's member statuses (alive, leaving, left, failed) ordered by the
member Lamport clock (``lamport``, ``member``), gossips join/leave intents, user events
and queries as memberlist user messages, reaps and reconnects failed members, and answers
the ``_serf_*`` internal queries (``keymanager``: key rotation against the keyring).

Also pure and beside it: ``query`` (a query's parameters and filters, the asker's pending
state, the answerer's view), ``filters`` (Serf's event filter vocabulary for handlers and
RPC streams), ``coalesce`` (Serf's agent-side coalescing of member and user events, time
passed in).

Every bound on what peers send (queue depths, intent and event buffers, query fan-in,
regex work) is enforced here and counted; the table is in ``serf``'s docstring.
"""
