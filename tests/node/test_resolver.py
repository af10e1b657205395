"""A conflict resolver plugged in by a library user ('siblings' mode): a read that finds several values
passes them to it and writes back the value it returns with the read's context."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import pytest

from dsm import EpidemicStorage, NodeInfo, Sibling, StorageConfig, StorageFactory


def union(key: str, siblings: Sequence[Sibling]) -> bytes:
    """A set-union resolver: values are comma-separated items (deterministic: sorted)."""
    items = {item for s in siblings for item in s.value.split(b",") if item}
    return b",".join(sorted(items))


async def start(tmp_path: Path, name: str, factory_resolver: object = None) -> EpidemicStorage:
    config = StorageConfig(data_dir=str(tmp_path / name), listen_addr="", conflict_resolution="siblings")
    factory = StorageFactory(config, resolver=factory_resolver)  # type: ignore[arg-type]
    return await factory.create_epidemic_storage(name, NodeInfo(), [], None)


@pytest.fixture
async def node(tmp_path: Path) -> AsyncIterator[EpidemicStorage]:
    n = await start(tmp_path, "r1", union)
    yield n
    await n.close()


async def test_a_read_resolves_siblings_and_writes_the_resolution_back(node: EpidemicStorage) -> None:
    await node.put("cart", b"apple")
    await node.put("cart", b"pear")  # blind: a sibling of the first
    await node.put("cart", b"fig,apple")
    calls: list[int] = []
    resolver = node.resolver
    assert resolver is not None
    node.resolver = lambda key, siblings: (calls.append(len(siblings)), resolver(key, siblings))[1]
    got = await node.get("cart")
    assert got is not None and not got.conflict and got.value == b"apple,fig,pear"
    assert calls == [3] and node.resolved == 1
    again = await node.get("cart")  # resolved for every later reader: the resolver is not called again
    assert again is not None and again.value == b"apple,fig,pear" and calls == [3]
    # A write that carries the resolved read's context supersedes it normally.
    await node.put("cart", b"plum", context=again.context)
    final = await node.get("cart")
    assert final is not None and final.siblings[0].value == b"plum" and not final.conflict


async def test_a_resolver_that_declines_or_fails_leaves_the_siblings(node: EpidemicStorage) -> None:
    await node.put("k", b"a")
    await node.put("k", b"b")
    node.resolver = lambda key, siblings: None
    got = await node.get("k")
    assert got is not None and sorted(s.value for s in got.siblings) == [b"a", b"b"]

    def broken(key: str, siblings: Sequence[Sibling]) -> bytes:
        raise RuntimeError("user bug")

    node.resolver = broken
    got = await node.get("k")
    assert got is not None and got.conflict and node.resolver_failures == 1
    node.resolver = lambda key, siblings: "not bytes"  # type: ignore[assignment,return-value]
    got = await node.get("k")
    assert got is not None and got.conflict and node.resolver_failures == 2
    assert node.resolved == 0


async def test_lww_mode_never_calls_the_resolver(tmp_path: Path) -> None:
    config = StorageConfig(data_dir=str(tmp_path / "lww"), listen_addr="")
    called = []
    factory = StorageFactory(config, resolver=lambda key, s: called.append(key) or b"x")  # type: ignore[arg-type,func-returns-value]
    node = await factory.create_epidemic_storage("lww", NodeInfo(), [], None)
    try:
        await node.put("k", b"a")
        await node.put("k", b"b")
        got = await node.get("k")
        assert got is not None and got.value == b"b" and called == []
    finally:
        await node.close()
