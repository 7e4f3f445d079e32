"""Conflict checks against the store: the index of a version, embeddings, and the checks themselves.

- :func:`version_checker` gives a :class:`~editstore.conflicts.detect.Checker` for a tree: the
  persisted index when the tree is HEAD's (synced, or rebuilt when it does not match
  its manifest), else one built in memory;
- :func:`sync_index` keeps the persisted index on HEAD after every commit and revert,
  from the embeddings in SQLite and the keys in the delta objects (no model);
- :func:`version_conflicts` lists the conflicts inside a version;
- :func:`check_prospective` checks requests that are not edits yet.

Embeddings come from the base model (:class:`~editstore.conflicts.embeddings.ModelEmbedder`),
loaded only when an embedding is missing, or from a local sentence-transformers model
(``editstore config conflicts.backend sentence-transformers:PATH``).
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..compose.checkout import checkout
from ..core.records import embedding_row
from ..core.requests import EditRequest
from ..methods.hparams import Hparams
from ..store import Store, on_head_moved
from .detect import Checker, Conflict, Thresholds, tree_requests
from .embeddings import Embedder, ModelEmbedder, SentenceTransformerEmbedder, model_backend_name
from .index import ConflictIndex, Whitener, delta_keys, embedding_rows

log = logging.getLogger(__name__)

INDEX_DIR = "index"
EmbedderFactory = Callable[[], Embedder]


def backend_name(store: Store) -> str:
    """The configured embedding backend's name, without loading it."""
    backend = store.config("conflicts.backend")
    if backend == "model":
        return model_backend_name(store.base.config)
    return backend


def make_embedder(store: Store, model: torch.nn.Module | None = None, *, device: torch.device | None = None) -> Embedder:
    """The configured backend; the model backend uses ``model`` (a loaded base) or loads the base."""
    backend = store.config("conflicts.backend")
    if backend != "model":
        return SentenceTransformerEmbedder(backend.removeprefix("sentence-transformers:"))
    from ..compose.materialise import load_model
    from ..model.tokens import load_tokenizer

    if model is None:
        model = load_model(store.base, {}, device=device or torch.device("cpu"), base_hashes={})
    return ModelEmbedder(model, load_tokenizer(store.base))


def semantic_vectors(store: Store, backend: str, embed: EmbedderFactory | None) -> Callable[[list[str]], dict[str, np.ndarray]]:
    """Stored embeddings of edits; the missing ones computed (and stored) when ``embed`` is given."""

    def vectors(edits: list[str]) -> dict[str, np.ndarray]:
        found = embedding_rows(store, edits, backend)
        requests = tree_requests(store, [e for e in edits if e not in found])
        if requests and embed is not None:
            ids = list(requests)
            computed = embed().embed([requests[e] for e in ids])
            with store.db.atomic():  # derived data: safe to write outside a user operation
                store.db["embeddings"].insert_all(
                    [embedding_row(e, backend, v) for e, v in zip(ids, computed)], replace=True
                )
            found.update((e, v.numpy()) for e, v in zip(ids, computed))
        elif requests:
            log.info("%d edit(s) have no %s embedding yet; the next conflict check computes them", len(requests), backend)
        return found

    return vectors


def version_index(store: Store, tree: Sequence[str], *, embed: EmbedderFactory | None, persist: bool) -> ConflictIndex:
    """The index of ``tree``: the persisted one (synced; rebuilt when it fails its manifest or its keys were
    whitened by other statistics than the store's now) or a new one. Saving takes the writer lock."""
    backend, root = backend_name(store), store.root / INDEX_DIR
    flat_max = int(store.config("conflicts.flat_max"))
    whitener = Whitener(store)
    index = ConflictIndex.load(root, backend=backend, base=store.base_fingerprint, flat_max=flat_max) if persist else None
    if index is not None and any(index.whitening.get(p) != whitener.source(p) for p in index.keys):
        log.info("the statistics changed since the conflict index whitened its keys; rebuilding it")
        index = None
    if index is None:
        index = ConflictIndex(root, backend, store.base_fingerprint, flat_max)
    changed = index.sync(tree, semantic=semantic_vectors(store, backend, embed),
                         keys=lambda new: delta_keys(store, new, whitener))
    whitening = {p: whitener.source(p) for p in index.keys}
    changed |= whitening != index.whitening
    index.whitening = whitening
    if persist and (changed or not (root / "manifest.json").is_file()):
        with store.locked():
            index.save()
    return index


def lazy_embedder(store: Store, device: torch.device | None = None) -> EmbedderFactory:
    """A factory that builds the configured embedder (loading the base) on first use only."""
    made: list[Embedder] = []

    def embed() -> Embedder:
        if not made:
            made.append(make_embedder(store, device=device))
        return made[0]

    return embed


def version_checker(store: Store, tree: Sequence[str], *, embed: EmbedderFactory | None, head: bool) -> Checker:
    """A checker against ``tree`` (``head``: it is HEAD's, use and keep the persisted index)."""
    index = version_index(store, tree, embed=embed, persist=head)
    return Checker(index, tree_requests(store, tree), Thresholds.of(store))


@on_head_moved
def sync_index(store: Store, tree: Sequence[str]) -> None:
    """After a commit: bring a persisted index to ``tree`` with what the store holds (no model)."""
    if (store.root / INDEX_DIR / "manifest.json").is_file():
        version_index(store, tree, embed=None, persist=True)


def rebuild_index(store: Store, *, device: torch.device | None = None) -> ConflictIndex:
    """Delete the index and build it again for HEAD (``editstore fsck --rebuild``)."""
    shutil.rmtree(store.root / INDEX_DIR, ignore_errors=True)
    return version_index(store, store.tree("HEAD"), embed=lazy_embedder(store, device), persist=True)


def check_edits(store: Store, checker: Checker, edits: Sequence[str], vectors: Mapping[str, np.ndarray],
                requests: Mapping[str, EditRequest]) -> list[Conflict]:
    """Conflicts of stored ``edits`` (with their embeddings, requests and recorded keys) with the checker's version."""
    keys = delta_keys(store, edits, Whitener(store))
    return checker.check([requests[e] for e in edits], torch.from_numpy(np.stack([vectors[e] for e in edits])),
                         [keys.get(e, {}) for e in edits], edits=edits)


def version_conflicts(store: Store, rev: str = "HEAD", *, device: torch.device | None = None) -> list[Conflict]:
    """Every conflict between two edits of the version ``rev``, each pair once (the later edit first)."""
    tree = store.tree(rev)
    checker = version_checker(store, tree, embed=lazy_embedder(store, device), head=store.resolve(rev) == store.head())
    ids = [e for e in tree if e in checker.requests]
    vectors = checker.index.semantic_vectors(ids)  # the embeddings the index was just synced with
    ids = [e for e in ids if e in vectors]
    if not ids:
        return []
    found = check_edits(store, checker, ids, vectors, checker.requests)
    order = {e: i for i, e in enumerate(tree)}
    pairs: dict[tuple[str, str, str], Conflict] = {}  # each pair once, the later edit first
    for c in found:
        if c.other is None or c.edit is None:
            continue
        if order[c.edit] < order[c.other]:  # seen from the earlier edit: turn it around
            c = Conflict(c.kind, c.other_request or {}, c.edit, c.request, c.score, c.other, c.param)
        pairs.setdefault((c.kind, c.edit, c.other), c)
    return list(pairs.values())


def prospective_keys(store: Store, model: torch.nn.Module, tokenizer: Any, requests: Sequence[EditRequest],
                     hp: Hparams) -> list[dict[str, np.ndarray]]:
    """Per request, the whitened keys it would have at ``hp``'s modules on the version in ``model``."""
    from ..methods.targets import context_prefixes, mean_keys, tokenize_request
    from ..model.tokens import pad_id

    prefixes = context_prefixes(model, tokenizer, hp.prefixes)
    prompts = [tokenize_request(tokenizer, r, prefixes) for r in requests]
    whitener = Whitener(store)
    out: list[dict[str, np.ndarray]] = [{} for _ in requests]
    for layer in hp.layers:
        name = hp.module_name(layer)
        keys = mean_keys(model, prompts, name, pad_id(tokenizer), hp.prefixes.unprefixed_weight)  # (n, d_in)
        for i in range(len(requests)):
            out[i][f"{name}.weight"] = whitener.whiten(f"{name}.weight", keys[i][:, None].cpu())
    return out


@dataclass
class Precheck:
    """Requests checked against HEAD's version before anything is computed (no interference yet)."""

    base: torch.nn.Module  # the base, loaded once and unedited: the embeddings come from it
    checker: Checker
    vectors: torch.Tensor  # the requests' prompt embeddings
    conflicts: list[Conflict]


def precheck(store: Store, requests: Sequence[EditRequest], tree: Sequence[str], *, device: torch.device,
             device_map: str | dict[str, Any] | None = None) -> Precheck:
    """Load the base (over ``device_map`` when given), embed ``requests`` and check them against ``tree``
    (HEAD's) and each other."""
    from ..compose.materialise import load_model

    model = load_model(store.base, {}, device=device, base_hashes={}, device_map=device_map)
    embedder = make_embedder(store, model)
    checker = version_checker(store, tree, embed=lambda: embedder, head=True)
    vectors = embedder.embed(requests)
    return Precheck(model, checker, vectors, checker.check(requests, vectors))


def check_prospective(
    store: Store,
    requests: Sequence[EditRequest],
    *,
    method: str = "rome",
    device: torch.device | None = None,
) -> tuple[list[Conflict], torch.Tensor]:
    """Conflicts of requests that are not edits yet with HEAD's version and with each other (interference
    at the modules ``method``'s packaged hparams edit), and the requests' embeddings."""
    from ..methods import resolve_hparams
    from ..model.tokens import load_tokenizer

    device = device or torch.device("cpu")
    hp = resolve_hparams(store.base, method)
    pre = precheck(store, requests, store.tree("HEAD"), device=device)
    found = pre.conflicts
    if hp.method != "ft":
        model = checkout(store, "HEAD", device=device, into=pre.base)
        keys = prospective_keys(store, model, load_tokenizer(store.base), requests, hp)
        found += pre.checker.interference(requests, keys, found)
    return found, pre.vectors
