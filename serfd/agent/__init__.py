"""The agent: the one place with sockets, processes, files, signals and a clock.

Theory of operation
-------------------
One asyncio loop runs everything. The Serf core below decides; the agent only carries
its inputs in and its outputs out, through small services that each own their state
from ``__init__`` and take a :class:`~serfd.agent.clock.Clock`, so each is unit-tested
on a fake clock:

* ``gossip``: :class:`~serfd.agent.gossip.GossipDriver`, the gossip UDP socket, TCP
  listener and streams, the pump and the one timer; commands that wait (join, leave,
  force-leave, queries) wait on futures resolved by the core's completion events;
* ``joins``: :class:`~serfd.agent.joins.Joiner`, addresses and DNS, the RPC join and its
  Go error text, ``retry_join`` with backoff, the snapshot rejoin, join after reload;
* ``keys``: :class:`~serfd.agent.keys.KeyService`, the ``_serf_*-key`` query answers
  (keyring file written first) and the RPC key commands;
* ``events``: :class:`~serfd.agent.events.EventsService`, coalescing (``dispatch``),
  handler processes (``handlers``), RPC event streams and the log ring (``monitor``);
* ``recorder``: :class:`~serfd.agent.recorder.SnapshotRecorder`, the snapshot file
  (``snapshot``: parser and writer thread), clocks restored at start, members to rejoin;
* ``telemetry``: :class:`~serfd.agent.telemetry.Telemetry`, the metric sinks behind
  ``Agent.metrics`` (in memory for SIGUSR1, statsd, statsite, the Prometheus endpoint);
* ``discovery``: :class:`~serfd.agent.discovery.Discovery`, Serf's mDNS discovery
  (``discover``): advertise, poll, join what is found in bounded batches, over its own
  UDP sockets (unicast answers only, as hashicorp/mdns; ``mdns_wire``: the DNS messages);
* ``rpc_adapter`` + ``rpc_server``: the AgentAPI over these services, and Serf's msgpack
  RPC on the Unix socket and the optional TCP listener.

:class:`~serfd.agent.agent.Agent` builds them, in an order that lets no gossip reach a
core before its clocks and key hooks are in place, and keeps what is the whole node's:
lifecycle, signals, reload (``reload``: which keys apply live), stats and the systemd
notifications (``systemd``). Beside it: ``config`` (TOML drop-ins, validated up front),
``daemonize``, ``statelock`` (one serfd per state directory), ``looplag``, ``logsetup``.
"""
