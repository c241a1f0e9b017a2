"""serfctl's man page and bash completion against its argument parser: a command or an
option added to serfctl without a man page entry or a completion fails here.

The completion function is run by a real bash (no bash-completion package needed), fed
the command line as bash passes it (COMP_LINE, COMP_POINT)."""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from serfctl.__main__ import build_parser

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "packaging/bash-completion/serfctl"
MAN = ROOT / "docs/man/serfctl.1"

pytestmark = pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")


def _commands() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    raise AssertionError("serfctl has no subcommands")


def _options(parser: argparse.ArgumentParser) -> set[str]:
    return {s for a in parser._actions for s in a.option_strings}


def _value_options() -> set[str]:
    """Options (anywhere) whose value is the next word."""
    parsers = [build_parser(), *_commands().values()]
    return {s for p in parsers for a in p._actions if a.option_strings and a.nargs is None
            for s in a.option_strings}


def complete(*lines: str) -> list[list[str]]:
    """What the completion offers at the end of each command line."""
    script = [f"source {SCRIPT}"]
    for line in lines:
        script += [f"COMP_LINE={_sh(line)}; COMP_POINT=${{#COMP_LINE}}; COMPREPLY=()",
                   "_serfctl; printf '%s\\n' \"${COMPREPLY[@]}\"; echo '<end>'"]
    out = subprocess.run(["bash", "--norc", "--noprofile", "-c", "\n".join(script)],
                         capture_output=True, text=True, timeout=30, check=True,
                         cwd=ROOT).stdout
    answers = out.split("<end>\n")[:-1]
    assert len(answers) == len(lines), out
    return [[w for w in a.split("\n") if w] for a in answers]


def _sh(text: str) -> str:
    return "'" + text.replace("'", "'\\''") + "'"


def test_the_completion_script_is_valid_bash() -> None:
    subprocess.run(["bash", "-n", str(SCRIPT)], check=True, timeout=30)


def test_completion_offers_every_command_and_every_option() -> None:
    commands = _commands()
    lines = ["serfctl ", "serfctl -", *(f"serfctl {c} -" for c in commands)]
    got = complete(*lines)
    assert sorted(got[0]) == sorted(commands)
    assert set(got[1]) == _options(build_parser())
    for name, answer in zip(commands, got[2:], strict=True):
        assert set(answer) == _options(commands[name]), name


def test_completion_knows_which_options_take_a_value() -> None:
    text = SCRIPT.read_text()
    m = re.search(r'^_serfctl_with_value="([^"]*)"', text, re.M)
    assert m is not None
    assert set(m.group(1).split()) == _value_options()
    # A value option's value is not the command: here "members" is the auth key, and the
    # command is still to come.
    assert complete("serfctl --rpc-auth members m", "serfctl --socket /tmp/s members --f",
                    "serfctl members --name stream --det") == [
        ["members", "monitor"], ["--format"], ["--detailed"]]


def test_completion_of_values() -> None:
    assert complete(
        "serfctl members --format ",
        "serfctl members --format=j",  # bash replaces only what follows "="
        "serfctl --rpc-addr 127.0.0.1:7373 members --st",
        "serfctl --rpc-addr=127.0.0.1:7373 q",
        "serfctl members --status f",
        "serfctl monitor --log-level w",
        "serfctl event --coalesce ",
        "serfctl stream --type member-join,member-l",
        "serfctl keygen -",
    ) == [
        ["text", "json"],
        ["json"],
        ["--status"],
        ["query"],
        ["failed"],
        ["warn"],
        ["true", "false"],
        ["member-join,member-leave"],
        ["-h", "--help"],
    ]


def _man_text() -> str:
    """The man page with roff's escapes undone (enough for option and command names)."""
    return re.sub(r"\\f[BIRP]", "", MAN.read_text()).replace("\\-", "-")


def test_the_man_page_describes_every_command_and_option() -> None:
    text = _man_text()
    section = text[text.index(".SH COMMANDS"):text.index(".SH EXIT STATUS")]
    entries = re.findall(r"^\.TP\n\.BI? (\S+)", section, re.M)
    assert set(entries) == set(_commands()), entries
    missing = [(name, opt) for name, p in _commands().items() for opt in _options(p)
               if opt not in ("-h", "--help") and opt not in text]
    assert not missing
