"""serfctl: the command-line client for serfd (and any Serf agent's RPC)."""
