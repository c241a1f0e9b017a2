"""``serfd``: run the agent, or check the configuration."""

from __future__ import annotations

import sys

# serfd speaks no TLS. asyncio imports ssl only to offer it (and works without it), and
# ssl maps OpenSSL's libssl and libcrypto: about 4 MiB of every agent's RSS. Keep it out
# of this process, unless something imported it already (an embedding program).
if "ssl" not in sys.modules:
    sys.modules["ssl"] = None  # type: ignore[assignment]

import argparse
import asyncio
import os
from pathlib import Path

from serfd import __version__


def _help_formatter(prog: str) -> argparse.HelpFormatter:
    """argparse's formatter at the terminal's width, found as shutil.get_terminal_size
    does but without importing shutil (argparse would, loading bz2 and lzma: about
    1 MiB of every agent's RSS)."""
    try:
        columns = int(os.environ["COLUMNS"])
    except (KeyError, ValueError):
        stdout = sys.__stdout__
        try:
            columns = 80 if stdout is None else os.get_terminal_size(stdout.fileno()).columns
        except (AttributeError, ValueError, OSError):
            columns = 80
    return argparse.HelpFormatter(prog, width=max(columns, 20) - 2)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="serfd",
        formatter_class=_help_formatter,
        description="Serf-compatible gossip membership agent. Reads DIR/*.toml in lexical order.",
    )
    parser.add_argument("--config-dir", default="/etc/serfd.d", metavar="DIR",
                        help="directory of TOML drop-ins (default: /etc/serfd.d)")
    parser.add_argument("--check-config", action="store_true",
                        help="validate, print the merged effective config as TOML, and exit")
    parser.add_argument("--import-serf-config", action="append", metavar="FILE|DIR",
                        help="print the TOML drop-in equivalent to a Serf JSON config (a "
                        "file, or DIR/*.json merged as serf agent does; repeatable) and exit: "
                        "0 all mapped, 3 some options named on stderr were not, 2 bad input")
    parser.add_argument("--daemonize", action="store_true",
                        help="run in the background as a classic daemon (hosts without "
                        "systemd); returns once serfd is ready. Default: foreground")
    parser.add_argument("--pidfile", metavar="PATH",
                        help="with --daemonize: write the daemon's PID to PATH")
    parser.add_argument("--log-file", metavar="PATH", default="/var/log/serfd.log",
                        help="with --daemonize: append logs to PATH (default: /var/log/serfd.log)")
    parser.add_argument("--version", action="version", version=f"serfd {__version__}")
    args = parser.parse_args(argv)
    if args.pidfile and not args.daemonize:
        parser.error("--pidfile needs --daemonize (under systemd, the unit tracks the PID)")

    if args.import_serf_config:
        return _import_serf_config([Path(p) for p in args.import_serf_config])

    from serfd.agent.config import ConfigError, config_to_toml, load_config

    try:
        config = load_config(Path(args.config_dir))
    except ConfigError as e:
        for line in e.errors:
            print(line, file=sys.stderr)
        return 2
    # What the files cannot tell: whether this machine has the RPC socket's group. Checked
    # here, so --check-config (the package's check before a restart) and a start agree,
    # and a start fails with 2 (no restart) before anything is bound.
    if config.rpc_socket_group is not None:
        from serfd.agent.rpc_server import resolve_group

        try:
            resolve_group(config.rpc_socket_group)
        except ValueError as e:
            print(e, file=sys.stderr)
            return 2
    if args.check_config:
        from serfd.agent.addresses import (
            has_host_names,
            resolve_gossip_addresses,
            resolve_sink_addresses,
            sink_host_names,
        )
        from serfd.agent.config import derived_paths_comment

        resolved = ""
        if has_host_names(config):  # resolved as a start would (which exits 1 instead)
            try:
                bind, advertise = resolve_gossip_addresses(config)
            except ConfigError as e:
                for line in e.errors:
                    print(line, file=sys.stderr)
                return 2
            rows = [("bind", config.bind[0], bind[0])]
            if config.advertise is not None and advertise is not None:
                rows.append(("advertise", config.advertise[0], advertise[0]))
            resolved = "".join(f"# {key} {name} resolves to {ip}\n"
                               for key, name, ip in rows if name != ip)
        if sink_host_names(config):  # statsd_addr, statsite_addr: the same way
            try:
                sinks = resolve_sink_addresses(config)
            except ConfigError as e:
                for line in e.errors:
                    print(line, file=sys.stderr)
                return 2
            for key, addr in sinks.items():
                written = getattr(config, key)
                if addr is not None and written is not None and written[0] != addr[0]:
                    resolved += f"# {key} {written[0]} resolves to {addr[0]}\n"
        if config.interface is not None:  # checked as a start would (which exits 1 instead)
            from serfd.agent.addresses import bind_from_interface, resolve_host

            try:
                bind_ip = resolve_host(config.bind[0])
                derived = bind_from_interface(config, (bind_ip, config.bind[1]))
            except ConfigError as e:
                for line in e.errors:
                    print(line, file=sys.stderr)
                return 2
            except OSError as e:
                print(f"serfd: bind: {e}", file=sys.stderr)
                return 2
            resolved += f"# interface {config.interface} gives bind {derived[0]}\n"
        sys.stdout.write(config_to_toml(config) + "\n" + resolved
                         + derived_paths_comment(config, Path(args.config_dir).absolute()))
        return 0

    # One serfd per state directory, checked before anything is bound.
    from serfd.agent.statelock import StateDirInUse, StateDirLock

    try:
        lock = StateDirLock.acquire(config.state_dir)
    except StateDirInUse as e:
        print(f"serfd: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"serfd: cannot lock state directory {config.state_dir}: {e.strerror or e}",
              file=sys.stderr)
        return 1

    if args.daemonize:
        from serfd.agent.daemonize import run_daemonized

        pidfile = Path(args.pidfile).absolute() if args.pidfile else None
        return run_daemonized(config, Path(args.config_dir).absolute(), pidfile,
                              Path(args.log_file).absolute(), lock)

    from serfd.agent.agent import Agent
    from serfd.agent.logsetup import setup_logging
    from serfd.agent.systemd import Notifier
    from serfd.agent.tags import TagsFileError
    from serfd.wire.keyring import KeyringFileError

    setup_logging(config.log_level,
                  syslog_facility=config.syslog_facility if config.enable_syslog else None)
    agent = Agent(config, config_dir=Path(args.config_dir).absolute(),
                  notifier=Notifier.from_env())
    try:
        return asyncio.run(agent.run())
    except (TagsFileError, KeyringFileError):
        return 2  # logged by the agent; like a broken config, a restart will not fix it
    except OSError as e:
        print(f"serfd: {e}", file=sys.stderr)
        return 1
    finally:
        lock.release()


def _import_serf_config(paths: list[Path]) -> int:
    from serfd.agent import importserf

    try:
        merged, files = importserf.read_serf_config(paths)
    except importserf.SerfConfigError as e:
        for line in e.errors:
            print(line, file=sys.stderr)
        return importserf.EXIT_BAD_INPUT
    imported = importserf.import_serf_config(merged, files)
    sys.stdout.write(imported.toml)
    for key, reason in imported.unmapped:
        print(f"serfd: not imported: {key}: {reason}", file=sys.stderr)
    return importserf.EXIT_UNMAPPED if imported.unmapped else importserf.EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
