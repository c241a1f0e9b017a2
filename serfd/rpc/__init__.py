"""Serf's msgpack RPC protocol, the one part shared by the server and ``serfctl``.

Theory of operation
-------------------
``protocol`` holds everything both ends must agree on and nothing that does IO: command
names, the IPC version, error strings exactly as Serf spells them, request body schemas
with converters that accept what Go's decoder accepts, and the encoders of headers,
members and stream records. The server that speaks it over sockets is
:mod:`serfd.agent.rpc_server`; the blocking client is :mod:`serfctl.client`.
"""
