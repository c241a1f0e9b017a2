"""Tools every layer may use; they know nothing about Serf.

Theory of operation
-------------------
Small modules, each a leaf of the import graph:

* ``ratelog``: :class:`~serfd.base.ratelog.DropLog`, the one way serfd cuts what a peer
  or client sends. Each cut bumps a named counter (shown as ``dropped_<reason>`` in
  ``serfctl info``) and logs at most one line per reason per interval, so a flood cannot
  flood the journal too.
* ``goregexp``: Go 1.19's regexp syntax, compiled to an NFA and matched in time linear in
  the text. Peers choose query tag filters and clients choose ``members-filtered``
  expressions, so no backtracking engine ever sees them.
* ``duration``: Go's ``time.ParseDuration`` syntax ("1h30m", "250ms") for the config and
  the CLI.
* ``atomicfile``: ``replace_file``, the one way a small state file (the keyring, the
  runtime tags) is rewritten: temporary file, fsync, rename, directory fsync.

Time, when needed, is a ``now`` float passed in; nothing here but ``atomicfile`` does
IO, and that only on the file it is given.
"""
