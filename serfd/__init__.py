"""serfd: a systemd-native, wire-compatible reimplementation of HashiCorp Serf."""

__version__ = "0.2.0"
