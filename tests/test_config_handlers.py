"""Config keys for events and handlers: [handlers], [handler_limits], handlers_dir, size limits."""

from __future__ import annotations

from pathlib import Path

import pytest

from serfd.agent.config import Config, ConfigError, config_to_toml, load_config


def write(d: Path, name: str, text: str) -> Path:
    p = d / name
    p.write_text(text, encoding="utf-8")
    return p


def test_defaults() -> None:
    cfg = Config()
    assert cfg.handlers == {} and cfg.handlers_dir is None
    assert (cfg.handler_max_concurrent, cfg.handler_timeout) == (16, 60.0)
    assert (cfg.user_event_size_limit, cfg.query_size_limit, cfg.query_response_size_limit) == (
        512, 1024, 1024)


def test_handlers_table_strings_and_arrays(tmp_path: Path) -> None:
    write(tmp_path, "10-a.toml", '''
handlers_dir = "/srv/h"
user_event_size_limit = 1024
[handlers]
"member-join,member-leave" = "lb-update"
"user:deploy" = "deploy.sh --fast"
"query:uptime" = ["/usr/bin/uptime"]
[handler_limits]
max_concurrent = 4
timeout = "1m30s"
''')
    cfg = load_config(tmp_path)
    assert dict(cfg.handlers) == {
        "member-join,member-leave": "lb-update",
        "user:deploy": "deploy.sh --fast",
        "query:uptime": ("/usr/bin/uptime",),
    }
    assert cfg.handlers_dir == Path("/srv/h")
    assert (cfg.handler_max_concurrent, cfg.handler_timeout) == (4, 90.0)
    assert cfg.user_event_size_limit == 1024
    # renders back to an equal configuration
    other = tmp_path / "other"
    other.mkdir()
    write(other, "serfd.toml", config_to_toml(cfg))
    assert load_config(other) == cfg


def test_drop_ins_add_and_remove_routes(tmp_path: Path) -> None:
    write(tmp_path, "10-a.toml", '[handlers]\n"user" = "a.sh"\n"query:x" = "x.sh"\n')
    write(tmp_path, "20-b.toml", '[handlers]\n"user:deploy" = "deploy.sh"\n"query:x" = ""\n')
    assert dict(load_config(tmp_path).handlers) == {"user": "a.sh", "user:deploy": "deploy.sh"}


def test_bad_values_are_reported_per_file_and_key(tmp_path: Path) -> None:
    path = write(tmp_path, "10-a.toml", '''
user_event_size_limit = 10000
query_size_limit = 0
[handlers]
"member-jion" = "x"
"user" = 3
"query" = ["ok", 2]
[handler_limits]
max_concurrent = 0
timeout = "soon"
tiemout = "1s"
''')
    with pytest.raises(ConfigError) as e:
        load_config(tmp_path)
    errs = e.value.errors
    assert (f"{path}: user_event_size_limit: 10000 is out of range: must be between 1 and 9216"
            in errs)
    assert any(x.startswith(f"{path}: query_size_limit: 0 is out of range") for x in errs)
    assert any(x.startswith(f"{path}: handlers.member-jion: invalid event filter 'member-jion'")
               for x in errs)
    assert (f"{path}: handlers.user: expected a command string or an array of strings, "
            "got integer") in errs
    assert f"{path}: handlers.query: [1]: expected a string, got integer" in errs
    assert any(x.startswith(f"{path}: handler_limits.max_concurrent: 0 is out of range")
               for x in errs)
    assert any(x.startswith(f"{path}: handler_limits.timeout:") for x in errs)
    assert any(x.startswith(f"{path}: handler_limits.tiemout: unknown key") for x in errs)
