"""Fixtures for real-process integration tests (real `serf` and `serfd` on loopback)."""

from __future__ import annotations

import shutil
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.integration.harness import AddressAllocator, Cluster


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):  # type: ignore[no-untyped-def]
    # Keep each phase's report on the item so fixtures can dump logs after a failure.
    rep = yield
    setattr(item, f"rep_{rep.when}", rep)
    return rep


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).resolve().parent
    for item in items:
        if here in Path(str(item.fspath)).resolve().parents:
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def address_allocator() -> Iterator[AddressAllocator]:
    alloc = AddressAllocator(range(100, 200))
    yield alloc
    alloc.release_all()


@pytest.fixture
def make_cluster(
    request: pytest.FixtureRequest,
    address_allocator: AddressAllocator,
    tmp_path: Path,
) -> Iterator[Callable[[], Cluster]]:
    """Factory for clusters, each on its own 127.x.y.0/24; kills every process at teardown."""
    if shutil.which("serf") is None:
        pytest.skip("real HashiCorp `serf` binary not found on PATH (Debian package `serf`)")
    clusters: list[Cluster] = []

    def factory() -> Cluster:
        c = Cluster(address_allocator, tmp_path / f"cluster{len(clusters)}")
        clusters.append(c)
        return c

    try:
        yield factory
    finally:
        rep = getattr(request.node, "rep_call", None)
        for c in clusters:
            c.close()
        if rep is not None and rep.failed:
            for c in clusters:
                sys.stderr.write(f"\n===== agent logs ({c.slice.prefix}.0/24) =====\n")
                sys.stderr.write(c.log_tails(40) + "\n")


@pytest.fixture
def cluster(make_cluster: Callable[[], Cluster]) -> Cluster:
    """One cluster; every agent started through it is killed at teardown."""
    return make_cluster()
