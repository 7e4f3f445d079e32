"""The composed-parameter cache (issue 4, point 4): hits, neighbours, corruption, the size bound, gc."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
import torch

import editstore.compose.checkout
from editstore import Store
from editstore.compose.cache import ComposedCache
from editstore.compose.checkout import checkout, checkout_to, composed_cache, composition
from editstore.errors import ConfigError
from editstore.fsck import gc
from editstore.model.synthetic import random_delta
from editstore.porcelain import import_delta

from .conftest import GPT2_PARAMS, read_weights


def commit(store: Store, params: list[str], seed: int) -> None:
    import_delta(store, random_delta(store.base, params, rank=2, seed=seed, with_keys=True), message=f"delta {seed}")


def test_a_second_checkout_reads_the_cache_and_writes_the_same_bytes(
    tmp_path: Path, gpt2_store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    commit(gpt2_store, GPT2_PARAMS[:2], 1)
    first = read_weights(checkout_to(gpt2_store, "HEAD", tmp_path / "one"))
    assert len(composed_cache(gpt2_store).entries()) == 2

    def no_factors(*_: object) -> None:
        raise AssertionError("a cached version was composed again")

    monkeypatch.setattr(editstore.compose.checkout, "read_factors", no_factors)
    second = read_weights(checkout_to(gpt2_store, "HEAD", tmp_path / "two"))
    in_memory = checkout(gpt2_store, device="cpu").state_dict()
    for name in first:
        assert torch.equal(first[name], second[name]), name
    for name in GPT2_PARAMS[:2]:
        assert torch.equal(in_memory[name], first[name]), name


def test_a_sequential_checkout_does_not_wait_for_the_cache_before_loading_the_base(
    tmp_path: Path, gpt2_store: Store
) -> None:
    """Reading and hash-checking the cached weights overlaps with ``from_pretrained`` (only a
    re-solve, which loads its own model, needs to know beforehand whether the cache misses)."""
    commit(gpt2_store, GPT2_PARAMS[:2], 1)
    checkout_to(gpt2_store, "HEAD", tmp_path / "one")
    gate = threading.Event()

    class GatedCache(ComposedCache):
        def get(self, key: str) -> torch.Tensor | None:
            gate.wait()
            return super().get(key)

    plan = composition(gpt2_store, gpt2_store.tree(), compose="sequential", device=torch.device("cpu"))
    plan.cache = GatedCache(composed_cache(gpt2_store).root, composed_cache(gpt2_store).max_bytes)
    plan.start()
    prepared = threading.Thread(target=plan.prepare)
    prepared.start()
    prepared.join(timeout=10)
    waited = prepared.is_alive()
    gate.set()
    prepared.join()
    assert not waited, "prepare() waited for the cache to be read"
    assert all(plan.cached(p) is not None for p in GPT2_PARAMS[:2])


def test_a_neighbouring_version_reuses_the_parameters_it_shares(tmp_path: Path, gpt2_store: Store) -> None:
    commit(gpt2_store, GPT2_PARAMS[:1], 1)
    checkout_to(gpt2_store, "HEAD", tmp_path / "v1")
    [entry] = composed_cache(gpt2_store).entries()
    commit(gpt2_store, GPT2_PARAMS[1:2], 2)  # the child touches another parameter only
    checkout_to(gpt2_store, "HEAD", tmp_path / "v2")
    assert entry in composed_cache(gpt2_store).entries() and len(composed_cache(gpt2_store).entries()) == 2
    v1, v2 = read_weights(tmp_path / "v1"), read_weights(tmp_path / "v2")
    assert torch.equal(v1[GPT2_PARAMS[0]], v2[GPT2_PARAMS[0]])


def test_a_corrupt_entry_is_never_used(tmp_path: Path, gpt2_store: Store) -> None:
    commit(gpt2_store, GPT2_PARAMS[:1], 1)
    want = read_weights(checkout_to(gpt2_store, "HEAD", tmp_path / "one"))
    [entry] = composed_cache(gpt2_store).entries()
    data = bytearray(entry.read_bytes())
    data[-3] ^= 0xFF  # inside the tensor bytes
    entry.write_bytes(bytes(data))
    got = read_weights(checkout_to(gpt2_store, "HEAD", tmp_path / "two"))
    assert torch.equal(got[GPT2_PARAMS[0]], want[GPT2_PARAMS[0]])
    assert composed_cache(gpt2_store).get(entry.parent.name + entry.name.removesuffix(".safetensors")) is not None  # rewritten


def test_the_cache_stays_within_its_bound_and_gc_trims_it(tmp_path: Path, gpt2_store: Store) -> None:
    for i, param in enumerate(GPT2_PARAMS):
        commit(gpt2_store, [param], i)
    checkout_to(gpt2_store, "HEAD", tmp_path / "all")
    sizes = [p.stat().st_size for p in composed_cache(gpt2_store).entries()]
    assert len(sizes) == 3
    gpt2_store.set_config("cache.max_bytes", str(max(sizes)))
    assert gc(gpt2_store).cache.removed >= 1
    assert sum(p.stat().st_size for p in composed_cache(gpt2_store).entries()) <= max(sizes)
    gpt2_store.set_config("cache.max_bytes", "0")  # off
    checkout_to(gpt2_store, "HEAD", tmp_path / "again")
    assert gc(gpt2_store).cache.kept_bytes == 0 and not composed_cache(gpt2_store).entries()
    with pytest.raises(ConfigError):
        gpt2_store.set_config("cache.max_bytes", "lots")
