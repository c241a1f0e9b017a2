"""What tests and benchmarks need to drive serfd without a network or a clock.

Theory of operation
-------------------
* ``sim``: a discrete-event network of memberlist state machines on a virtual clock
  (latency, loss, partitions), seeded so every run is reproducible.
* ``serf_sim``: the same network of Serf cores, driven through exactly the contract the
  agent drives (datagrams, streams and their outcomes, timers, commands, events);
  ``cpu_star_join``, issue 13's join burst on a shared machine.
* ``cpu``: a shared machine for either (``Sim(cpu=Machine(cores, costs))``): every input
  costs CPU time from a calibrated table (C or pure-Python LZW), waits for its node and a
  free core, and lets out what it produced when it ends.
* ``slow``: ``SlowCore``, a stalled or CPU-starved node; ``detection``: failure
  detection and false-verdict runs of a ``sim`` cluster under memberlist's or serfd's
  rules.
* ``clock``: ``FakeClock``, the agent services' :class:`~serfd.agent.clock.Clock` for
  unit tests: time moves only when the test advances it.
* ``fake_agent``: a fake agent behind the real RPC server, on a loop thread, for the RPC
  and ``serfctl`` tests; ``fakes``: small doubles (a GCM keyring).

Nothing in serfd's runtime imports this package.
"""
