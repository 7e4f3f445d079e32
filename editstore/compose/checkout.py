"""Checkout: a version of a store as a model, in memory or as a Hugging Face directory.

Functions over a :class:`~editstore.store.Store`: they read its trees, delta objects, statistics and
settings, and hand a :class:`~editstore.compose.materialise.Composition` (what each edited parameter
becomes, and its key in the composed-parameter cache) to the materialiser.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ..core.config import check_setting
from ..core.hashing import sha256_json
from ..core.records import tree_id
from ..model.delta import Factors, FactorStacks
from .cache import ComposedCache
from .materialise import Composition, Progress, load_model, write_checkout
from .sequential import resolve_device

if TYPE_CHECKING:
    from ..store import Store


def composed_cache(store: Store) -> ComposedCache:
    """The store's composed-parameter cache, bounded by ``cache.max_bytes``."""
    return ComposedCache(store.root / "cache", int(store.config("cache.max_bytes")))


def compose_mode(store: Store, compose: str | None = None) -> str:
    """``compose`` checked, or the store's ``checkout.compose``."""
    return check_setting("checkout.compose", compose) if compose else store.config("checkout.compose")


def read_factors(store: Store, objects: Sequence[str]) -> dict[str, list[Factors]]:
    """Per parameter, U and V of the delta objects in order, concatenated into one :class:`Factors`
    (hash-verified; no keys; reads objects only, so it is safe in another thread)."""
    stacks = FactorStacks(expected=len(objects))
    for data in store.objects.stream(objects):
        stacks.add(data)
    return {param: [f] for param, f in stacks.factors().items()}


def factors(store: Store, edit_ids: Sequence[str]) -> dict[str, list[Factors]]:
    """Per parameter, the factors U, V of the given edits in tree order, concatenated into one float32
    :class:`Factors`."""
    records = store.edits(edit_ids)
    return read_factors(store, [records[eid].delta for eid in edit_ids])


def tree_deltas(store: Store, tree: Sequence[str]) -> tuple[list[str], dict[str, list[str]]]:
    """The delta objects of ``tree`` in order, and per parameter those touching it (one query)."""
    query = (
        "SELECT t.key, e.delta, p.value FROM json_each(?) AS t JOIN edits AS e ON e.id = t.value "
        "LEFT JOIN json_each(e.params) AS p ORDER BY t.key, p.key"
    )
    objects: dict[int, str] = {}
    sources: dict[str, list[str]] = {}
    for index, delta, param in store.db.execute(query, [json.dumps(list(tree))]):
        objects[index] = delta
        if param is not None:
            sources.setdefault(param, []).append(delta)
    if len(objects) != len(tree):
        store.edits(tree)  # names the missing edit
    return list(objects.values()), sources


def composition(store: Store, tree: Sequence[str], *, compose: str | None = None, device: torch.device) -> Composition:
    """How the edited parameters of ``tree`` are composed in mode ``compose`` (default: the store's setting).

    Cache keys: sequential, the delta objects touching each parameter in order;
    batched, the whole tree, the statistics stored for its modules, ``checkout.lambda_e`` and
    ``checkout.targets`` (a re-solve couples the edits of a group and depends on Σ and on how
    groups are solved).
    """
    mode = compose_mode(store, compose)
    hashes = store.base_hashes()
    objects, sources = tree_deltas(store, tree)
    whole = [tree_id(list(tree))]
    lambda_e, targets = 0.0, "rebased"
    if mode == "batched":  # the solve also depends on Σ, λ_e and the targets: a change of any is a new key
        lambda_e, targets = float(store.config("checkout.lambda_e")), store.config("checkout.targets")
        modules = sorted({p.removesuffix(".weight") for p in sources})
        query = f"SELECT object FROM stats WHERE module IN ({', '.join('?' * len(modules))})"
        whole += sorted(row[0] for row in store.db.execute(query, modules))
        if lambda_e:
            whole.append(f"lambda_e={lambda_e!r}")
        whole.append(f"targets={targets}")
    keys = {
        param: sha256_json({"mode": mode, "param": param, "base": hashes.get(param), "device": device.type,
                            "from": deltas if mode == "sequential" else whole})
        for param, deltas in sources.items()
    }
    cache = composed_cache(store)
    if mode == "sequential":
        return Composition(sorted(sources), lambda: read_factors(store, objects), keys, cache,
                           factors_in_background=True)
    from .resolve import batched_factors  # the edit methods and transformers: only a re-solve needs them

    return Composition(
        sorted(sources), lambda: batched_factors(store, tree, device=device, lambda_e=lambda_e, targets=targets),
        keys, cache,
    )


def checkout_tree(
    store: Store,
    tree: Sequence[str],
    *,
    device: str | torch.device = "auto",
    compose: str | None = None,
    progress: Progress | None = None,
    into: torch.nn.Module | None = None,
    device_map: str | dict[str, Any] | None = None,
) -> torch.nn.Module:
    """The version holding the edits ``tree`` (ids in order, whether or not a commit has it) as an in-memory
    ``PreTrainedModel``: the base loaded once, composed weights swapped in.

    ``into``: the base, already loaded and unedited, to compose into instead of loading it.
    ``device_map``: ``"auto"`` or module -> ``"cpu"``, ``"disk"``, a GPU index: the base is dispatched
    by accelerate over those devices (``device`` is then where the weights are composed).
    """
    dev = resolve_device(device)
    plan = composition(store, tree, compose=compose, device=dev)
    model = load_model(store.base, plan, device=dev, base_hashes=store.base_hashes(), progress=progress, into=into,
                       device_map=device_map)
    composed_cache(store).trim()
    return model


def checkout(
    store: Store,
    rev: str = "HEAD",
    *,
    device: str | torch.device = "auto",
    compose: str | None = None,
    progress: Progress | None = None,
    into: torch.nn.Module | None = None,
    device_map: str | dict[str, Any] | None = None,
) -> torch.nn.Module:
    """The version ``rev`` as an in-memory ``PreTrainedModel`` (see :func:`checkout_tree`)."""
    return checkout_tree(store, store.tree(rev), device=device, compose=compose, progress=progress, into=into,
                         device_map=device_map)


def checkout_to(
    store: Store,
    rev: str,
    out: str | Path,
    *,
    device: str | torch.device = "auto",
    compose: str | None = None,
    link: bool = False,
    progress: Progress | None = None,
) -> Path:
    """Write the version ``rev`` as a Hugging Face directory at ``out`` (missing or empty).

    ``compose``: ``sequential`` or ``batched`` (default: the store's ``checkout.compose``).
    Shards no delta touches are reflinked where the filesystem can, else copied (``link``:
    hard-linked to the base); see :mod:`editstore.compose.materialise`.
    """
    commit_id = store.resolve(rev)
    tree = store.commit_tree(commit_id)
    dev = resolve_device(device)
    mode = compose_mode(store, compose)
    plan = composition(store, tree, compose=mode, device=dev)
    provenance = {"store": str(store.root), "commit": commit_id, "tree": tree_id(tree), "base": store.base_fingerprint,
                  "compose": mode}
    path = write_checkout(store.base, plan, Path(out), device=dev, base_hashes=store.base_hashes(),
                          provenance=provenance, link=link, progress=progress)
    composed_cache(store).trim()
    return path
