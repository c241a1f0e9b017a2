"""``serfd --import-serf-config``: a Serf 0.9.4 JSON configuration as a serfd TOML drop-in.

Theory of operation
-------------------
`read_serf_config(paths)` reads what ``serf agent -config-file``/``-config-dir`` would:
a file, or every ``*.json`` file directly in a directory in lexical order of name, and
merges them as Serf's ``MergeConfig`` does: a later file overrides a string, number or
``true`` it sets (an empty string, 0 or ``false`` leaves the earlier value), ``tags``
merge key by key, and ``start_join``, ``retry_join`` and ``event_handlers`` are
concatenated. Input that ``serf agent`` refuses (unreadable, not JSON, not an object, a
key Serf does not know, a value of the wrong JSON type, tags or role with a tags_file,
encrypt_key with a keyring_file) raises `SerfConfigError`, one ``FILE: reason`` line per
problem.

`import_serf_config(merged)` maps the merged options onto serfd's keys (`SERF_KEYS`
says where each goes) and checks every value with serfd's own parser
(`serfd.agent.config.check_setting`). What serfd has no equivalent for, or a value
serfd refuses, is returned as ``(key, reason)`` in `Imported.unmapped` and named in the
drop-in as a comment: never dropped silently. Where serfd's default differs from Serf's
(``leave_on_terminate``, the RPC listener on 127.0.0.1:7373) the drop-in states Serf's
value, so the agent behaves as ``serf agent`` did.

Pure: no IO besides reading the given files; the CLI prints and picks the exit status
(`EXIT_OK`, `EXIT_UNMAPPED`, `EXIT_BAD_INPUT`).
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from serfd.agent.config import check_setting

__all__ = [
    "EXIT_BAD_INPUT",
    "EXIT_OK",
    "EXIT_UNMAPPED",
    "SERF_KEYS",
    "Imported",
    "SerfConfigError",
    "import_serf_config",
    "merge_serf_configs",
    "read_serf_config",
]

EXIT_OK = 0  # every option was mapped
EXIT_BAD_INPUT = 2  # serf agent would refuse the input: nothing printed
EXIT_UNMAPPED = 3  # a drop-in was printed, but some options have no serfd equivalent

SERF_RPC_DEFAULT = "127.0.0.1:7373"  # Serf's DefaultConfig RPCAddr

# Every key of Serf 0.9.4's agent Config (cmd/serf/command/agent/config.go) with its
# JSON type, and what serfd does with it ("-" = not mapped; the reason is in _REASONS).
SERF_KEYS: dict[str, tuple[type, str]] = {
    "node_name": (str, "node_name"),
    "role": (str, "tags.role"),
    "disable_coordinates": (bool, "disable_coordinates"),
    "tags": (dict, "[tags]"),
    "tags_file": (str, "tags_file"),
    "bind": (str, "bind"),
    "advertise": (str, "advertise"),
    "encrypt_key": (str, "encrypt_key"),
    "keyring_file": (str, "keyring_file"),
    "log_level": (str, "log_level"),
    "rpc_addr": (str, "rpc.tcp"),
    "rpc_auth": (str, "rpc.auth_key"),
    "protocol": (int, "protocol"),
    "replay_on_join": (bool, "replay_on_join"),
    "query_response_size_limit": (int, "query_response_size_limit"),
    "query_size_limit": (int, "query_size_limit"),
    "user_event_size_limit": (int, "user_event_size_limit"),
    "start_join": (list, "join"),
    "event_handlers": (list, "[handlers]"),
    "profile": (str, "profile"),
    "snapshot_path": (str, "snapshot_path"),
    "leave_on_terminate": (bool, "leave_on_terminate"),
    "skip_leave_on_interrupt": (bool, "skip_leave_on_interrupt"),
    "discover": (str, "discover"),
    "interface": (str, "interface"),
    "reconnect_interval": (str, "reconnect_interval"),
    "reconnect_timeout": (str, "reconnect_timeout"),
    "tombstone_timeout": (str, "tombstone_timeout"),
    "disable_name_resolution": (bool, "-"),
    "enable_syslog": (bool, "enable_syslog"),
    "syslog_facility": (str, "syslog_facility"),
    "retry_join": (list, "join"),
    "retry_max_attempts": (int, "retry_max_attempts"),
    "retry_interval": (str, "retry_interval"),
    "rejoin_after_leave": (bool, "rejoin_after_leave"),
    "enable_compression": (bool, "enable_compression"),
    "statsite_addr": (str, "statsite_addr"),
    "statsd_addr": (str, "statsd_addr"),
    "broadcast_timeout": (str, "broadcast_timeout"),
}

# Why an unmappable key is not mapped (only reported when it asks for something serfd
# does not do: `true`, or a non-empty string).
_REASONS: dict[str, str] = {
    "disable_name_resolution": "serfd always resolves node name conflicts, as Serf's default",
}

# Keys Serf merges by concatenation, and the one it takes from the last file as is.
_CONCAT = ("start_join", "retry_join", "event_handlers")
_LOG_LEVELS = {"ERR": "error", "WARN": "warn", "INFO": "info", "DEBUG": "debug",
               "TRACE": "trace"}


class SerfConfigError(Exception):
    """Input serf agent would refuse; `errors` holds one ``FILE: reason`` line each."""

    def __init__(self, errors: list[str]) -> None:
        super().__init__("\n".join(errors))
        self.errors = errors


@dataclass(frozen=True, slots=True)
class Imported:
    """The drop-in (`toml`), and each Serf key it could not carry over with the reason."""

    toml: str
    settings: Mapping[str, Any]  # dotted serfd key -> TOML value
    unmapped: list[tuple[str, str]] = field(default_factory=list)


# --- reading and merging, as serf agent does ------------------------------------------


def _json_type(value: object) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object" if isinstance(value, dict) else "null"


def _check_types(path: Path, doc: Mapping[str, Any]) -> list[str]:
    errors: list[str] = []
    for key, value in doc.items():
        spec = SERF_KEYS.get(key)
        if spec is None:
            errors.append(f"{path}: {key}: not an option of Serf 0.9.4 (serf agent refuses it)")
            continue
        kind = spec[0]
        if kind is int and isinstance(value, float) and value.is_integer():
            continue  # JSON has one number type; Serf decodes 5.0 as 5
        ok = isinstance(value, kind) and not (kind is int and isinstance(value, bool))
        if ok and kind is list:
            ok = all(isinstance(item, str) for item in value)
        if ok and kind is dict:
            ok = all(isinstance(item, str) for item in value.values())
        if not ok:
            want = {str: "a string", bool: "a boolean", int: "an integer",
                    list: "an array of strings", dict: "an object of strings"}[kind]
            errors.append(f"{path}: {key}: expected {want}, got {_json_type(value)}")
    return errors


def _files(path: Path) -> list[Path]:
    if path.is_dir():
        return sorted((p for p in path.iterdir() if p.name.endswith(".json") and not p.is_dir()),
                      key=lambda p: p.name)
    return [path]


def read_serf_config(paths: Sequence[Path]) -> tuple[dict[str, Any], list[Path]]:
    """Read and merge as ``serf agent -config-file/-config-dir`` (merged dict, files read)."""
    errors: list[str] = []
    docs: list[dict[str, Any]] = []
    read: list[Path] = []
    for path in paths:
        try:
            files = _files(path)
        except OSError as exc:
            errors.append(f"{path}: cannot list: {exc.strerror or exc}")
            continue
        for file in files:
            try:
                text = file.read_text(encoding="utf-8")
            except OSError as exc:
                errors.append(f"{file}: cannot read: {exc.strerror or exc}")
                continue
            except UnicodeDecodeError:
                errors.append(f"{file}: not valid UTF-8")
                continue
            try:
                doc = json.loads(text)
            except json.JSONDecodeError as exc:
                errors.append(f"{file}:{exc.lineno}: invalid JSON: {exc.msg}")
                continue
            if not isinstance(doc, dict):
                errors.append(f"{file}: expected a JSON object, got {_json_type(doc)}")
                continue
            problems = _check_types(file, doc)
            errors.extend(problems)
            if not problems:
                docs.append(doc)
                read.append(file)
    if errors:
        raise SerfConfigError(errors)
    merged = merge_serf_configs(docs)
    where = ", ".join(str(p) for p in paths)
    # serf agent refuses these pairs at start (agent.go loadTagsFile, loadKeyringFile).
    if merged.get("tags_file") and (merged.get("tags") or merged.get("role")):
        errors.append(f"{where}: tags_file: serf agent refuses tags or role with a tags file "
                      "(\"Tags config not allowed while using tag files\")")
    if merged.get("keyring_file") and merged.get("encrypt_key"):
        errors.append(f"{where}: keyring_file: serf agent refuses encrypt_key with a keyring "
                      "file (\"Encryption key not allowed while using a keyring\")")
    if errors:
        raise SerfConfigError(errors)
    return merged, read


def merge_serf_configs(docs: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Serf's MergeConfig over the files in order (all already type-checked)."""
    out: dict[str, Any] = {}
    for doc in docs:
        for key, value in doc.items():
            if key in _CONCAT:
                out[key] = [*out.get(key, []), *value]
            elif key == "tags":
                out["tags"] = {**out.get("tags", {}), **value}
            elif key == "enable_compression":
                out[key] = value  # Serf copies it unconditionally
            elif value not in ("", 0, False):
                out[key] = int(value) if SERF_KEYS[key][0] is int else value
    return out


# --- mapping ---------------------------------------------------------------------------


def _handler_routes(scripts: Sequence[str]) -> tuple[dict[str, str], list[tuple[str, str]]]:
    """Serf's "filter=script" strings as [handlers] routes (a filter list -> /bin/sh -c)."""
    routes: dict[str, str] = {}
    bad: list[tuple[str, str]] = []
    for i, item in enumerate(scripts):
        route, sep, script = item.partition("=")
        if not sep:
            route, script = "*", item  # Serf: no filter means every event
        route = route or "*"
        if not script:
            bad.append((f"event_handlers[{i}]", f"{item!r}: no script"))
            continue
        key = route
        while key in routes:  # two scripts for one filter: a second, equivalent route
            key += "," + route.split(",")[0]
        try:
            check_setting(f"handlers.{key}", script)
        except ValueError as exc:
            bad.append((f"event_handlers[{i}]", str(exc)))
            continue
        routes[key] = script
    return routes, bad


def _join_list(merged: Mapping[str, Any]) -> list[str]:
    seen: list[str] = []
    for addr in [*merged.get("start_join", []), *merged.get("retry_join", [])]:
        if addr not in seen:
            seen.append(addr)
    return seen


def _is_loopback(addr: str) -> bool:
    host = addr.rpartition(":")[0].strip("[]")
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a bad address: check_setting names the problem


def import_serf_config(merged: Mapping[str, Any], sources: Sequence[Path] = ()) -> Imported:
    """Map Serf's merged options onto serfd keys; unmappable ones come back with a reason.
    `sources` (the files read) are named in the drop-in's header."""
    settings: dict[str, Any] = {}
    unmapped: list[tuple[str, str]] = []
    notes: list[str] = []

    def put(serf_key: str, dotted: str, value: Any) -> None:
        try:
            check_setting(dotted, value)
        except ValueError as exc:
            unmapped.append((serf_key, f"{dotted}: {exc}"))
            return
        settings[dotted] = value

    for key, value in merged.items():
        target = SERF_KEYS[key][1]
        if key in _REASONS:
            unmapped.append((key, _REASONS[key]))  # merged values are never "" or false
        elif key == "disable_coordinates":
            put(key, target, value)
            notes.append("disable_coordinates: Serf 0.9.4's agent reads this key but still "
                         "computes coordinates; serfd applies it (no coordinates, `rtt` "
                         "finds none)")
        elif key == "tags":
            for name, tag in value.items():
                put(f"tags.{name}", f"tags.{name}", tag)
        elif key == "role":
            pass  # after the tags: Serf's role overrides tags.role
        elif key in ("start_join", "retry_join", "rpc_addr", "event_handlers"):
            pass  # below
        elif key == "log_level":
            level = _LOG_LEVELS.get(value.upper(), value)
            put(key, target, level)
        else:
            put(key, target, value)
    if "role" in merged:
        put("role", "tags.role", merged["role"])

    joins = _join_list(merged)
    if joins:
        put("start_join/retry_join", "join", joins)
        if merged.get("start_join"):
            notes.append("join: serfd retries these until one answers (Serf's start_join "
                         "gives up at once); retry_max_attempts bounds the attempts")

    # serf agent always listens for RPC on TCP (127.0.0.1:7373 by default), and leaves
    # only when told to on SIGTERM; serfd's defaults differ, so say Serf's.
    rpc = merged.get("rpc_addr", SERF_RPC_DEFAULT)
    if _is_loopback(rpc) or "rpc.auth_key" in settings:
        put("rpc_addr", "rpc.tcp", rpc)
    else:
        reason = (f"{rpc!r} is not a loopback address and rpc_auth is not set: serfd "
                  "wants an auth key for a remote RPC listener")
        unmapped.append(("rpc_addr", reason))
    settings.setdefault("leave_on_terminate", merged.get("leave_on_terminate", False))

    routes, bad = _handler_routes(merged.get("event_handlers", []))
    unmapped.extend(bad)
    for route, script in routes.items():
        settings[f"handlers.{route}"] = script

    return Imported(_render(settings, unmapped, notes, sources), settings, unmapped)


def _render(settings: Mapping[str, Any], unmapped: Sequence[tuple[str, str]],
            notes: Sequence[str], sources: Sequence[Path]) -> str:
    import tomli_w

    top: dict[str, Any] = {}
    tables: dict[str, dict[str, Any]] = {}
    for dotted, value in settings.items():
        table, dot, sub = dotted.partition(".")
        if dot and table in ("tags", "rpc", "handlers"):
            tables.setdefault(table, {})[sub] = value
        else:
            top[dotted] = value
    lines = ["# serfd drop-in imported from a Serf 0.9.4 JSON configuration"]
    if sources:
        lines.append("# from: " + ", ".join(str(p) for p in sources))
    lines += [f"# note: {note}" for note in notes]
    lines += [f"# not imported: {key}: {reason}" for key, reason in unmapped]
    body = tomli_w.dumps({**top, **{name: tables[name] for name in ("tags", "rpc", "handlers")
                                    if name in tables}})
    return "\n".join(lines) + "\n\n" + body
