"""The package tree is the layer diagram: a module may import its own layer and those below.

serfd.base < serfd.wire < serfd.memberlist < serfd.core < serfd.rpc < serfd.agent <
serfd.testing. The pure layers (everything below the agent) do no IO and read no clock: they
must not import asyncio, socket, threading, subprocess or time. ``serfctl`` is a client: it
may use the pure layers (the RPC protocol, keygen, durations) but never the agent. The
root ``serfd`` package (just ``__version__``) is importable from anywhere; ``serfd.__main__``
sits on top.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

LAYERS = ("base", "wire", "memberlist", "core", "rpc", "agent", "testing")
RANK = {f"serfd.{name}": i for i, name in enumerate(LAYERS)}
RANK["serfd.__main__"] = len(LAYERS)
PURE = {f"serfd.{name}" for name in LAYERS[: LAYERS.index("agent")]}
IO_MODULES = frozenset({"asyncio", "socket", "threading", "subprocess", "time"})
SERFCTL_MAY_USE = frozenset({"serfd.base", "serfd.wire", "serfd.rpc"})


def layer_of(module: str) -> str | None:
    """The layer package of a dotted module name (None for the root ``serfd`` and others)."""
    parts = module.split(".")
    if parts[0] == "serfctl":
        return "serfctl"
    if parts[0] != "serfd" or len(parts) < 2:
        return None
    return ".".join(parts[:2])


def imports_of(path: Path, module: str) -> list[tuple[int, str]]:
    """Every module a file imports, anywhere in it (functions included): (line, name)."""
    tree = ast.parse(path.read_text(), str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                target = f"{base}.{node.module}" if node.module else base
            else:
                target = node.module or ""
            found.append((node.lineno, target))
            # ``from serfd import agent`` imports the package serfd.agent
            found.extend((node.lineno, f"{target}.{alias.name}") for alias in node.names
                         if layer_of(f"{target}.{alias.name}") in RANK)
    return found


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def check(module: str, imports: list[tuple[int, str]]) -> list[str]:
    """The layering rules broken by one module's imports, as readable lines."""
    problems: list[str] = []
    own = layer_of(module)
    for line, target in imports:
        top = target.split(".")[0]
        dest = layer_of(target)
        if own in PURE and top in IO_MODULES:
            problems.append(f"{module}:{line}: pure layer {own} imports {top}")
        if own == "serfctl":
            if dest is not None and dest != "serfctl" and dest not in SERFCTL_MAY_USE:
                problems.append(f"{module}:{line}: serfctl imports {target} (agent side)")
            continue
        if own in RANK and dest in RANK and RANK[dest] > RANK[own]:
            problems.append(f"{module}:{line}: {own} imports {target}, a layer above it")
        if own in RANK and target.split(".")[0] == "serfctl" and own != "serfd.testing":
            problems.append(f"{module}:{line}: {own} imports the client {target}")
    return problems


def all_modules() -> list[tuple[str, Path]]:
    paths = sorted((ROOT / "serfd").rglob("*.py")) + sorted((ROOT / "serfctl").rglob("*.py"))
    return [(module_name(p), p) for p in paths]


def test_every_module_sits_in_a_layer_package() -> None:
    loose = [m for m, _ in all_modules()
             if m.startswith("serfd.") and layer_of(m) not in RANK]
    assert loose == [], "modules outside the layer packages: " + ", ".join(loose)


def test_no_module_imports_a_layer_above_its_own_or_io_below_the_agent() -> None:
    problems: list[str] = []
    for module, path in all_modules():
        problems += check(module, imports_of(path, module))
    assert problems == [], "\n".join(problems)


@pytest.mark.parametrize(("module", "target", "expect"), [
    ("serfd.core.serf", "serfd.agent.gossip", "a layer above it"),
    ("serfd.wire.codec", "serfd.memberlist.swim", "a layer above it"),
    ("serfd.memberlist.swim", "time", "pure layer serfd.memberlist imports time"),
    ("serfd.rpc.protocol", "asyncio", "pure layer serfd.rpc imports asyncio"),
    ("serfd.core.query", "threading.local", "imports threading"),
    ("serfctl.client", "serfd.agent.config", "agent side"),
    ("serfd.agent.agent", "serfctl.client", "imports the client"),
])
def test_the_checker_catches_each_kind_of_violation(module: str, target: str, expect: str) -> None:
    problems = check(module, [(1, target)])
    assert len(problems) == 1 and expect in problems[0]


@pytest.mark.parametrize(("module", "target"), [
    ("serfd.agent.agent", "asyncio"),
    ("serfd.agent.agent", "serfd.core.serf"),
    ("serfd.core.serf", "serfd.memberlist.swim"),
    ("serfd.testing.serf_sim", "serfd.core.serf"),
    ("serfctl.client", "serfd.rpc.protocol"),
    ("serfd.wire.codec", "serfd"),
])
def test_the_checker_allows_imports_downwards(module: str, target: str) -> None:
    assert check(module, [(1, target)]) == []


def test_relative_and_from_package_imports_are_resolved(tmp_path: Path) -> None:
    src = tmp_path / "x.py"
    src.write_text("from . import lamport\nfrom ..agent import gossip\nfrom serfd import agent\n")
    found = {name for _, name in imports_of(src, "serfd.core.x")}
    assert {"serfd.core.lamport", "serfd.agent.gossip", "serfd.agent"} <= found


def private_reaches(path: Path, root: Path = ROOT) -> list[str]:
    """``x._name`` on anything but self/cls, and ``.memberlist`` not through a config."""
    found: list[str] = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if not isinstance(node, ast.Attribute):
            continue
        text = ast.unparse(node)
        owner = node.value
        own = isinstance(owner, ast.Name) and owner.id in ("self", "cls", "os")
        if node.attr.startswith("_") and not node.attr.startswith("__") and not own:
            found.append(f"{path.relative_to(root)}:{node.lineno}: {text}")
        if node.attr == "memberlist" and not text.endswith("config.memberlist"):
            found.append(f"{path.relative_to(root)}:{node.lineno}: {text}")
    return found


def test_the_agent_and_the_simulator_use_only_the_cores_public_contract() -> None:
    """Issue 9: nothing outside the core reads its private state or reaches its memberlist."""
    paths = [p for layer in ("agent", "rpc", "testing")
             for p in (ROOT / "serfd" / layer).rglob("*.py")]
    problems = [line for p in sorted(paths) for line in private_reaches(p)]
    assert problems == [], "\n".join(problems)


def test_the_private_reach_check_catches_both_forms(tmp_path: Path) -> None:
    src = tmp_path / "x.py"
    src.write_text("def f(serf):\n    serf._leave_phase\n    serf.memberlist.num_alive()\n"
                   "    self._ok\n    serf.config.memberlist\n")
    found = private_reaches(src, tmp_path)
    assert [f.split(": ", 1)[1] for f in found] == ["serf._leave_phase", "serf.memberlist"]
