"""Tags: the configuration's ``[tags]`` as the base, runtime changes on top, kept on disk.

Theory of operation
-------------------
A node's tags come from two places: ``[tags]`` in the drop-ins (the *base*) and the
changes made at run time with the RPC ``tags`` command (``serfctl tags``, ``serf tags``),
the *overrides*. The tags gossiped are the base with the overrides laid over it key by
key (:func:`effective_tags`): an override ``KEY: "VALUE"`` sets KEY whatever the base
says, an override ``KEY: None`` deletes a KEY the base sets.

A ``tags`` request keeps Serf's order, deletions first, then sets (:func:`apply_change`):
deleting a key the base sets records ``None``, deleting any other key drops its override,
setting a key records its value. An override stays until it is changed again or reset
(serfd's RPC ``reset-tags``, ``serfctl tags --reset [KEY...]``: :func:`reset_overrides`),
so a reload that changes ``[tags]`` changes only the keys no override covers, and a
restart changes nothing.

The overrides live in ``tags_file`` (default ``<state_dir>/tags``) in Serf's tags file
format, a JSON object of tag names to strings, plus ``null`` for a deleted base tag
(serfd's addition; Serf writes strings only). :class:`TagService` rewrites it whole and
atomically (temporary file, fsync, rename, fsync of the directory; mode 0640) before the
change is gossiped, one change at a time, so a success answered to the client means the
change survives a restart; a failed write changes nothing and answers Serf's ``Failed to
write tags file: ...``. The file is read at start only (:func:`load_runtime_tags`): a file
that cannot be read or is not such an object stops the start with an error naming it
(:class:`TagsFileError`), never a silent fallback to the configuration's tags.

Serf's agent differs: its ``-tags-file`` holds all the tags and may not be used with tags
in the configuration, and its reload sets the configuration's tags (and writes them to the
file), dropping every runtime change.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Protocol

from serfd.agent.config import META_MAX_SIZE
from serfd.base.atomicfile import replace_file
from serfd.wire.serf_messages import encode_tags

__all__ = [
    "TAGS_FILE_MAX",
    "Overrides",
    "TagDriver",
    "TagService",
    "TagsError",
    "TagsFileError",
    "apply_change",
    "decode_tags_file",
    "effective_tags",
    "encode_tags_file",
    "load_runtime_tags",
    "read_tags_file",
    "reset_overrides",
    "write_tags_file",
]

log = logging.getLogger("serfd.agent")

TAGS_FILE_MAX = 64 * 1024  # ours: the largest tags file read or written
TAGS_FILE_MODE = 0o640  # tags are gossiped in the clear; the group serfd may read them

# Tag name -> value, or None for a base tag deleted at run time.
Overrides = dict[str, str | None]


class TagsFileError(Exception):
    """The tags file cannot be used at start; the message names the file."""


class TagsError(Exception):
    """A tag change refused, with Serf's text where Serf has one."""


# --- precedence: pure ----------------------------------------------------------------


def effective_tags(base: Mapping[str, str], overrides: Mapping[str, str | None]) -> dict[str, str]:
    """The tags to gossip: ``base`` with ``overrides`` laid over it key by key."""
    tags = dict(base)
    for key, value in overrides.items():
        if value is None:
            tags.pop(key, None)
        else:
            tags[key] = value
    return tags


def apply_change(base: Mapping[str, str], overrides: Mapping[str, str | None],
                 set_tags: Mapping[str, str], delete: Iterable[str]) -> Overrides:
    """The overrides after an RPC ``tags`` request (Serf's order: delete, then set)."""
    out = dict(overrides)
    for key in delete:
        if key in base:
            out[key] = None  # remembered: the base must not bring it back
        else:
            out.pop(key, None)
    out.update(set_tags)
    return out


def reset_overrides(overrides: Mapping[str, str | None], keys: Iterable[str]) -> Overrides:
    """The overrides without those of ``keys`` (no keys: none left)."""
    drop = set(keys)
    if not drop:
        return {}
    return {k: v for k, v in overrides.items() if k not in drop}


def _check_size(tags: Mapping[str, str]) -> None:
    if len(encode_tags(dict(tags))) > META_MAX_SIZE:
        raise TagsError(f"Encoded length of tags exceeds limit of {META_MAX_SIZE} bytes")


# --- the file ------------------------------------------------------------------------


def encode_tags_file(overrides: Mapping[str, str | None]) -> bytes:
    """The file's bytes: a JSON object, 2-space indented with sorted keys, as Serf writes."""
    return (json.dumps(dict(overrides), indent=2, sort_keys=True, ensure_ascii=False)
            + "\n").encode("utf-8")


def decode_tags_file(data: bytes) -> Overrides:
    """The overrides in a tags file's bytes; ValueError(reason) for anything else."""
    if len(data) > TAGS_FILE_MAX:
        raise ValueError(f"larger than {TAGS_FILE_MAX} bytes")
    if not data.strip():
        raise ValueError('empty (a tags file holds a JSON object, such as {"role": "web"})')
    try:
        doc = json.loads(data.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise ValueError(f"not valid UTF-8 (byte {e.start})") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"not valid JSON: {e.msg} at line {e.lineno} column {e.colno}") from None
    if not isinstance(doc, dict):
        raise ValueError(f"expected a JSON object of tag names to strings, got "
                         f"{type(doc).__name__}")
    out: Overrides = {}
    for key, value in doc.items():
        if value is not None and not isinstance(value, str):
            raise ValueError(f"tag {json.dumps(key)}: expected a string or null, got "
                             f"{type(value).__name__}")
        out[key] = value
    return out


def read_tags_file(path: Path) -> Overrides:
    """The overrides kept in ``path`` ({} when there is no file); TagsFileError otherwise."""
    try:
        with open(path, "rb") as f:
            data = f.read(TAGS_FILE_MAX + 1)
    except FileNotFoundError:
        return {}
    except OSError as e:
        raise TagsFileError(f"{path}: cannot read the tags file: {e.strerror or e}") from None
    try:
        return decode_tags_file(data)
    except ValueError as e:
        raise TagsFileError(f"{path}: tags file {e}") from None


def write_tags_file(path: Path, overrides: Mapping[str, str | None]) -> None:
    """Atomically replace ``path`` with ``overrides`` (mode 0640); OSError on failure."""
    data = encode_tags_file(overrides)
    if len(data) > TAGS_FILE_MAX:  # what we write we must be able to read back
        raise OSError(f"the runtime tags would take {len(data)} bytes, over {TAGS_FILE_MAX}")
    replace_file(path, data, TAGS_FILE_MODE)


def load_runtime_tags(base: Mapping[str, str],
                      path: Path | None) -> tuple[Overrides, dict[str, str]]:
    """At start: the overrides kept in ``path`` and the tags they give over ``base``.

    TagsFileError for a file that cannot be read, is not a tags file, or whose
    overrides make the tags too large to gossip.
    """
    overrides = read_tags_file(path) if path is not None else {}
    tags = effective_tags(base, overrides)
    try:
        _check_size(tags)
    except TagsError:
        raise TagsFileError(
            f"{path}: the tags of the configuration with the runtime changes in this file "
            f"encode to {len(encode_tags(tags))} bytes, over the limit of {META_MAX_SIZE}: "
            "remove keys from the file or from [tags]") from None
    if overrides:
        log.info("restored %d runtime tag change%s from %s: %s", len(overrides),
                 "" if len(overrides) == 1 else "s", path, _describe(overrides))
    return overrides, tags


def _describe(overrides: Mapping[str, str | None]) -> str:
    return ", ".join(f"{k}={v}" if v is not None else f"-{k}"
                     for k, v in sorted(overrides.items()))


# --- the service ---------------------------------------------------------------------


class TagDriver(Protocol):
    """What the tag service needs from the gossip driver."""

    @property
    def tags(self) -> dict[str, str]: ...

    def set_tags(self, tags: dict[str, str]) -> None: ...


# Writes the tags file (path, overrides); run off the loop.
TagsWriter = Callable[[Path, Mapping[str, str | None]], None]


class TagService:
    """The node's tags: the base, the overrides and their file (module docstring)."""

    def __init__(self, driver: TagDriver, base: Mapping[str, str], path: Path | None,
                 overrides: Mapping[str, str | None], *,
                 write_file: TagsWriter = write_tags_file) -> None:
        self.driver = driver
        self.path = path  # None: runtime changes are kept in memory only
        self._base = dict(base)
        self._overrides: Overrides = dict(overrides)
        self._write_file = write_file
        self._lock = asyncio.Lock()  # one change at a time: memory, file and gossip agree

    @property
    def base(self) -> dict[str, str]:
        return dict(self._base)

    @property
    def overrides(self) -> Overrides:
        return dict(self._overrides)

    async def update(self, set_tags: Mapping[str, str], delete: Iterable[str]) -> None:
        """RPC ``tags``: set and delete at run time; TagsError/SerfError when refused."""
        async with self._lock:
            await self._commit(apply_change(self._base, self._overrides, set_tags, delete))

    async def reset(self, keys: Iterable[str]) -> None:
        """RPC ``reset-tags``: back to the configuration's tags for ``keys`` (none: all)."""
        async with self._lock:
            await self._commit(reset_overrides(self._overrides, keys))

    async def reload(self, base: Mapping[str, str]) -> None:
        """A reloaded ``[tags]``: the new base under the same overrides (TagsError when the
        result does not fit; the old base stays)."""
        async with self._lock:
            base = dict(base)
            tags = effective_tags(base, self._overrides)
            _check_size(tags)
            shadowed = sorted(k for k in self._overrides if base.get(k) != self._base.get(k))
            if shadowed:
                log.info("reload: [tags] changed for %s, overridden at run time "
                         "(serfctl tags --reset KEY takes the configuration's)",
                         ", ".join(shadowed))
            if tags != self.driver.tags:
                self.driver.set_tags(tags)
            self._base = base

    def stats(self) -> dict[str, str]:
        """The overrides for ``serfctl info``: a deleted base tag shows as ``<deleted>``."""
        return {k: "<deleted>" if v is None else v for k, v in self._overrides.items()}

    async def _commit(self, overrides: Overrides) -> None:
        tags = effective_tags(self._base, overrides)
        _check_size(tags)  # before the file: what is on disk must be what can be gossiped
        if self.path is not None:
            try:
                await asyncio.get_running_loop().run_in_executor(
                    None, self._write_file, self.path, overrides)
            except OSError as e:
                log.error("cannot write the tags file %s: %s", self.path, e)
                raise TagsError(f"Failed to write tags file: {e}") from None
        self.driver.set_tags(tags)
        self._overrides = overrides
        log.info("tags now %s (runtime changes: %s)",
                 ",".join(f"{k}={v}" for k, v in sorted(tags.items())) or "none",
                 _describe(overrides) or "none")
