"""serfd.agent.tags: [tags] as the base, runtime changes over it key by key, kept in the
tags file; the precedence (pure), the file (atomic, Serf's format, refused when broken),
the service (file first, then gossip; reload; reset) and the agent around them."""

from __future__ import annotations

import asyncio
import json
import os
import stat
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from serfd.agent.agent import Agent
from serfd.agent.config import Config, ConfigError, config_to_toml, load_config
from serfd.agent.reload import RESTART_FIELDS, plan_reload
from serfd.agent.systemd import Notifier
from serfd.agent.tags import (
    TAGS_FILE_MAX,
    TagsError,
    TagService,
    TagsFileError,
    apply_change,
    decode_tags_file,
    effective_tags,
    encode_tags_file,
    load_runtime_tags,
    read_tags_file,
    reset_overrides,
    write_tags_file,
)
from serfd.core.serf import SerfError
from tests.support import free_port, write_base

BASE = {"role": "web", "dc": "east"}

# --- precedence ------------------------------------------------------------------------


def test_overrides_set_and_delete_over_the_base_key_by_key() -> None:
    assert effective_tags(BASE, {}) == BASE
    assert effective_tags(BASE, {"role": "db", "dc": None, "zone": "a"}) == {
        "role": "db", "zone": "a"}
    assert effective_tags({}, {"gone": None}) == {}  # deleting what is not there


def test_a_tags_request_records_sets_and_deletions_of_base_keys() -> None:
    over = apply_change(BASE, {}, {"role": "db", "zone": "a"}, ["dc"])
    assert over == {"role": "db", "zone": "a", "dc": None}
    # Deleting a runtime-only key drops its override; a key the base sets stays deleted.
    assert apply_change(BASE, over, {}, ["zone", "dc", "nowhere"]) == {"role": "db", "dc": None}
    # Serf's order: deletions first, then sets, so a key in both ends set.
    assert apply_change(BASE, {}, {"dc": "west"}, ["dc"]) == {"dc": "west"}
    # Setting the base's own value is still a runtime change: it pins the key.
    assert apply_change(BASE, {}, {"role": "web"}, []) == {"role": "web"}


def test_reset_drops_some_or_all_overrides() -> None:
    over = {"role": "db", "dc": None, "zone": "a"}
    assert reset_overrides(over, ["dc", "absent"]) == {"role": "db", "zone": "a"}
    assert reset_overrides(over, []) == {}


# --- the file --------------------------------------------------------------------------

_text = st.text(st.characters(exclude_categories=("Cs",)), max_size=20)


@given(st.dictionaries(_text, st.one_of(st.none(), _text), max_size=10))
def test_the_file_round_trips(over: dict[str, str | None]) -> None:
    assert decode_tags_file(encode_tags_file(over)) == over


def test_the_file_is_serfs_json_object_and_reads_what_serf_writes() -> None:
    assert encode_tags_file({"role": "db", "dc": None}) == (
        b'{\n  "dc": null,\n  "role": "db"\n}\n')
    assert encode_tags_file({}) == b"{}\n"
    # Serf's json.MarshalIndent: sorted, 2 spaces, HTML characters escaped, no newline.
    serf_wrote = b'{\n  "lb": "a\\u003cb\\u0026c",\n  "role": "web"\n}'
    assert decode_tags_file(serf_wrote) == {"lb": "a<b&c", "role": "web"}


@pytest.mark.parametrize(("data", "reason"), [
    (b"", "empty"),
    (b"  \n", "empty"),
    (b'{"role": "web"', "not valid JSON: Expecting ',' delimiter at line 1 column 15"),
    (b'["role"]', "expected a JSON object of tag names to strings, got list"),
    (b'{"n": 1}', 'tag "n": expected a string or null, got int'),
    (b'{"n": {"x": "y"}}', 'tag "n": expected a string or null, got dict'),
    (b'{"r": "\xff"}', "not valid UTF-8 (byte 7)"),
    (b"{" + b" " * TAGS_FILE_MAX + b"}", f"larger than {TAGS_FILE_MAX} bytes"),
])
def test_a_broken_file_is_refused_with_its_reason(data: bytes, reason: str) -> None:
    with pytest.raises(ValueError) as info:
        decode_tags_file(data)
    assert str(info.value).startswith(reason)


def test_reading_names_the_file_and_a_missing_file_is_no_changes(tmp_path: Path) -> None:
    path = tmp_path / "tags"
    assert read_tags_file(path) == {}
    path.write_bytes(b"{oops")
    with pytest.raises(TagsFileError, match=rf"^{path}: tags file not valid JSON: "):
        read_tags_file(path)
    path.unlink()
    path.mkdir()  # unreadable as a file
    with pytest.raises(TagsFileError, match=rf"^{path}: cannot read the tags file: "):
        read_tags_file(path)


def test_write_is_atomic_mode_0640_and_replaces_the_file(tmp_path: Path) -> None:
    path = tmp_path / "state" / "tags"
    write_tags_file(path, {"role": "db"})  # the directory is made if missing
    # A leftover temporary file from a crash is taken over, with our mode.
    leftover = path.with_name(f".tags.tmp{os.getpid()}")
    leftover.write_bytes(b"junk")
    leftover.chmod(0o666)
    write_tags_file(path, {"role": "cache", "dc": None})
    assert read_tags_file(path) == {"role": "cache", "dc": None}
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    assert sorted(p.name for p in path.parent.iterdir()) == ["tags"]


def test_a_failed_write_leaves_the_previous_file_whole(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "tags"
    write_tags_file(path, {"role": "db"})
    before = path.read_bytes()

    def no_space(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", no_space)
    with pytest.raises(OSError, match="No space left"):
        write_tags_file(path, {"role": "cache"})
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["tags"]  # no temporary file left


def test_what_cannot_be_read_back_is_not_written(tmp_path: Path) -> None:
    path = tmp_path / "tags"
    with pytest.raises(OSError, match="over 65536"):
        write_tags_file(path, {f"k{i}": None for i in range(TAGS_FILE_MAX // 8)})
    assert not path.exists()


def test_start_loads_the_overrides_over_the_base(tmp_path: Path) -> None:
    path = tmp_path / "tags"
    assert load_runtime_tags(BASE, path) == ({}, BASE)
    assert load_runtime_tags(BASE, None) == ({}, BASE)
    write_tags_file(path, {"role": "db", "dc": None})
    assert load_runtime_tags(BASE, path) == ({"role": "db", "dc": None}, {"role": "db"})
    # Overrides that no longer fit with a grown [tags] stop the start, naming the file.
    write_tags_file(path, {"big": "x" * 300})
    with pytest.raises(TagsFileError, match=rf"^{path}: .* over the limit of 512"):
        load_runtime_tags({"also": "y" * 300}, path)


# --- the service -----------------------------------------------------------------------


class Driver:
    """The gossip driver's tag side: what was gossiped, in order."""

    def __init__(self, tags: Mapping[str, str]) -> None:
        self.tags = dict(tags)
        self.sets: list[dict[str, str]] = []

    def set_tags(self, tags: dict[str, str]) -> None:
        self.tags = dict(tags)
        self.sets.append(dict(tags))


class Writes:
    """A tags file writer that records, and fails when told."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.fail: OSError | None = None
        self.order: list[str] = []

    def __call__(self, path: Path, overrides: Mapping[str, str | None]) -> None:
        self.order.append("write")
        if self.fail is not None:
            raise self.fail
        write_tags_file(path, overrides)


def service(tmp_path: Path, base: Mapping[str, str] = BASE) -> tuple[TagService, Driver, Writes]:
    driver = Driver(base)
    writes = Writes(tmp_path / "tags")
    svc = TagService(driver, base, writes.path, {}, write_file=writes)
    return svc, driver, writes


def test_a_change_is_on_disk_before_it_is_gossiped(tmp_path: Path) -> None:
    svc, driver, writes = service(tmp_path)
    real_set = driver.set_tags

    def set_tags(tags: dict[str, str]) -> None:
        writes.order.append("gossip")
        real_set(tags)

    driver.set_tags = set_tags  # type: ignore[method-assign]
    asyncio.run(svc.update({"role": "db"}, ["dc"]))
    assert writes.order == ["write", "gossip"]
    assert driver.tags == {"role": "db"}
    assert read_tags_file(writes.path) == {"role": "db", "dc": None}
    assert svc.stats() == {"role": "db", "dc": "<deleted>"}


def test_a_failed_write_is_serfs_error_and_changes_nothing(tmp_path: Path) -> None:
    svc, driver, writes = service(tmp_path)
    asyncio.run(svc.update({"zone": "a"}, []))
    writes.fail = OSError(30, "Read-only file system")
    with pytest.raises(TagsError, match=r"^Failed to write tags file: \[Errno 30\] Read-only"):
        asyncio.run(svc.update({"role": "db"}, []))
    assert driver.tags == {**BASE, "zone": "a"}
    assert svc.overrides == {"zone": "a"}
    assert read_tags_file(writes.path) == {"zone": "a"}


def test_tags_too_large_are_refused_before_the_file(tmp_path: Path) -> None:
    svc, driver, writes = service(tmp_path)
    with pytest.raises(TagsError, match=r"^Encoded length of tags exceeds limit of 512 bytes$"):
        asyncio.run(svc.update({"big": "x" * 600}, []))
    assert writes.order == [] and driver.sets == [] and svc.overrides == {}


def test_a_core_refusal_after_the_write_leaves_memory_as_it_was(tmp_path: Path) -> None:
    svc, driver, _ = service(tmp_path)

    def refuse(tags: dict[str, str]) -> None:
        raise SerfError("Serf can't do that now")

    driver.set_tags = refuse  # type: ignore[method-assign]
    with pytest.raises(SerfError):
        asyncio.run(svc.update({"role": "db"}, []))
    assert svc.overrides == {}


def test_reload_puts_the_new_base_under_the_same_overrides(tmp_path: Path) -> None:
    svc, driver, writes = service(tmp_path)

    async def run() -> None:
        await svc.update({"role": "db", "zone": "a"}, ["dc"])
        written = writes.path.read_bytes()
        # [tags] changes role (overridden), dc (deleted at run time), adds rack, drops
        # nothing the overrides cover: only rack shows.
        await svc.reload({"role": "cache", "dc": "west", "rack": "r1"})
        assert driver.tags == {"role": "db", "zone": "a", "rack": "r1"}
        assert writes.path.read_bytes() == written  # a reload never writes the file
        # Reset one key: the configuration's value, then all: the configuration's tags.
        await svc.reset(["role"])
        assert driver.tags == {"role": "cache", "zone": "a", "rack": "r1"}
        await svc.reset([])
        assert driver.tags == {"role": "cache", "dc": "west", "rack": "r1"}
        assert read_tags_file(writes.path) == {}

    asyncio.run(run())


def test_reload_that_does_not_change_the_tags_gossips_nothing(tmp_path: Path) -> None:
    svc, driver, _ = service(tmp_path)
    asyncio.run(svc.update({"role": "db"}, []))
    n = len(driver.sets)
    asyncio.run(svc.reload({"role": "other", "dc": "east"}))  # role is overridden
    assert len(driver.sets) == n


def test_reload_whose_tags_do_not_fit_keeps_the_old_base(tmp_path: Path) -> None:
    svc, driver, _ = service(tmp_path)
    asyncio.run(svc.update({"big": "x" * 300}, []))
    with pytest.raises(TagsError, match="exceeds limit"):
        asyncio.run(svc.reload({"also": "y" * 300}))
    assert svc.base == BASE
    assert driver.tags == {**BASE, "big": "x" * 300}


def test_without_a_file_the_precedence_holds_in_memory(tmp_path: Path) -> None:
    driver = Driver(BASE)
    svc = TagService(driver, BASE, None, {})

    async def run() -> None:
        await svc.update({}, ["dc"])
        await svc.reload({"dc": "west", "role": "web"})
        assert driver.tags == {"role": "web"}

    asyncio.run(run())
    assert list(tmp_path.iterdir()) == []


def test_changes_are_applied_one_at_a_time_in_order(tmp_path: Path) -> None:
    svc, driver, writes = service(tmp_path)

    async def run() -> None:
        await asyncio.gather(*(svc.update({"n": str(i)}, []) for i in range(20)),
                             svc.reload({"role": "x"}))

    asyncio.run(run())
    # The file, the memory and the gossip agree on the last change.
    assert read_tags_file(writes.path) == svc.overrides
    assert driver.tags == effective_tags(svc.base, svc.overrides)


# --- configuration ---------------------------------------------------------------------


def test_tags_file_defaults_under_state_dir_and_empty_turns_it_off(tmp_path: Path) -> None:
    d = tmp_path / "d"
    d.mkdir()
    assert load_config(d).tags_file == Path("/var/lib/serfd/tags")
    (d / "10.toml").write_text('state_dir = "/srv/serfd"\n')
    assert load_config(d).tags_file == Path("/srv/serfd/tags")
    (d / "20.toml").write_text('tags_file = "/srv/other/tags.json"\n')
    cfg = load_config(d)
    assert cfg.tags_file == Path("/srv/other/tags.json")
    assert cfg.sources["tags_file"] == str(d / "20.toml")
    (d / "20.toml").write_text('tags_file = ""\n')
    assert load_config(d).tags_file is None
    (d / "20.toml").write_text('tags_file = "tags.json"\n')
    with pytest.raises(ConfigError, match=r'tags_file: "tags\.json" is not an absolute path'):
        load_config(d)


def test_check_config_shows_the_tags_file_and_loads_back(tmp_path: Path) -> None:
    for cfg, line in ((Config(state_dir=Path("/srv/s")), 'tags_file = "/srv/s/tags"'),
                      (Config(tags_file=None), 'tags_file = ""')):
        text = config_to_toml(cfg)
        assert line in text.splitlines()
        (tmp_path / "check.toml").write_text(text)
        assert load_config(tmp_path) == cfg


def test_a_new_tags_file_needs_a_restart() -> None:
    assert "tags_file" in RESTART_FIELDS
    old = Config()
    plan = plan_reload(old, Config(tags_file=Path("/x/tags")))
    assert plan.restart_needed == ("tags_file",) and plan.applied.tags_file == old.tags_file


# --- the agent: start, RPC, reload, restart --------------------------------------------


def test_agent_keeps_runtime_tags_across_reload_and_restart(tmp_path: Path) -> None:
    d = tmp_path / "serfd.d"
    write_base(d, tmp_path, free_port())  # [tags] role = "a"
    tags_path = tmp_path / "state" / "tags"

    async def start() -> Agent:
        agent = Agent(load_config(d), config_dir=d, notifier=Notifier())
        await agent.start()
        return agent

    async def main() -> None:
        agent = await start()
        try:
            await agent.api.set_tags({"zone": "z1"}, ["role"])
            assert agent.serf.tags == {"zone": "z1"}
            assert json.loads(tags_path.read_text()) == {"role": None, "zone": "z1"}
            # A reload with new [tags]: new keys show, the deleted one stays deleted.
            (d / "20-tags.toml").write_text('[tags]\nrole = "b"\nrack = "r1"\n')
            assert await agent.reload() == []
            assert agent.serf.tags == {"zone": "z1", "rack": "r1"}
            stats = agent.stats()
            assert stats["runtime_tags"] == {"role": "<deleted>", "zone": "z1"}
            assert stats["serfd"]["tags_file"] == str(tags_path)
        finally:
            await agent._shutdown()
        agent = await start()  # the same state directory
        try:
            assert agent.serf.tags == {"zone": "z1", "rack": "r1"}
            await agent.api.reset_tags([])
            assert agent.serf.tags == {"role": "b", "rack": "r1"}
        finally:
            await agent._shutdown()
        agent = await start()
        try:
            assert agent.serf.tags == {"role": "b", "rack": "r1"}
        finally:
            await agent._shutdown()

    asyncio.run(main())


def test_agent_start_stops_on_a_broken_tags_file(tmp_path: Path) -> None:
    d = tmp_path / "serfd.d"
    write_base(d, tmp_path, free_port())
    (tmp_path / "state").mkdir()
    (tmp_path / "state" / "tags").write_text('{"role": 7}')

    async def main() -> None:
        agent = Agent(load_config(d), config_dir=d, notifier=Notifier())
        with pytest.raises(TagsFileError, match='tag "role": expected a string or null'):
            await agent.start()
        assert not (tmp_path / "serfd.sock").exists()  # nothing was bound

    asyncio.run(main())


def test_serfd_exits_2_naming_a_broken_tags_file(tmp_path: Path) -> None:
    d = tmp_path / "serfd.d"
    write_base(d, tmp_path, free_port())
    (tmp_path / "state").mkdir()
    path = tmp_path / "state" / "tags"
    path.write_text("{not json")
    r = subprocess.run([sys.executable, "-m", "serfd", "--config-dir", str(d)],
                       capture_output=True, text=True, timeout=60, check=False)
    assert r.returncode == 2, r.stderr
    assert f"cannot start: {path}: tags file not valid JSON" in r.stderr
    assert "Traceback" not in r.stderr
    assert path.read_text() == "{not json"  # left for the operator to fix
