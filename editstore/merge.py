"""``editstore merge``: the union of two versions, three-way against their merge base.

The merged tree keeps our edits (less those the other branch removed since the merge
base) and appends theirs that we do not have (less those we removed). Before
anything is written, their new edits are checked against our edits that they do not
have (:mod:`editstore.conflicts.detect`); a contradiction stops the merge
(:class:`MergeConflictError`, exit 3) unless a resolution is given:

- ``ours``: drop their edits that contradict ours;
- ``theirs``: drop our edits that theirs contradict;
- ``force``: keep both, and record the conflicts with the merge commit.

A clean merge (or a resolved one) is a commit with two parents, ours first.
"""

from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

from .conflicts.checks import check_edits, lazy_embedder, semantic_vectors, version_checker
from .conflicts.detect import Conflict, ConflictError, blocking, tree_requests
from .errors import RevisionError

if TYPE_CHECKING:
    from .store import Store

log = logging.getLogger(__name__)

RESOLUTIONS = ("ours", "theirs", "force")


class MergeConflictError(ConflictError):
    """The branches contradict each other; nothing was committed."""

    def __init__(self, conflicts: list[Conflict]) -> None:
        super().__init__(conflicts)
        lines = "".join(f"\n  {c.describe()}" for c in conflicts)
        self.args = (f"the branches contradict each other; nothing was committed "
                     f"(--ours, --theirs or --force resolves it){lines}",)


@dataclass(frozen=True)
class MergeResult:
    commit: str
    tree: list[str]
    added: list[str]
    dropped: list[str] = field(default_factory=list)
    conflicts: list[Conflict] = field(default_factory=list)


def ancestors(store: Store, commit: str) -> dict[str, int]:
    """Every commit reachable from ``commit``, with its distance in parent steps."""
    dist = {commit: 0}
    queue = deque([commit])
    while queue:
        cid = queue.popleft()
        for parent in store.commit(cid).parents:
            if parent not in dist:
                dist[parent] = dist[cid] + 1
                queue.append(parent)
    return dist


def merge_base(store: Store, a: str, b: str) -> str | None:
    """The best common ancestor of ``a`` and ``b``, as git's merge-base: a common ancestor that is not an
    ancestor of another one (of several such, the nearest to both)."""
    da, db = ancestors(store, a), ancestors(store, b)
    common = set(da) & set(db)
    below: set[str] = set()  # strict ancestors of common ancestors, in one walk (each is common too)
    frontier = [p for c in common for p in store.commit(c).parents]
    while frontier:
        cid = frontier.pop()
        if cid not in below:
            below.add(cid)
            frontier.extend(store.commit(cid).parents)
    best = common - below
    return min(best, key=lambda c: (da[c] + db[c], c)) if best else None


def merge(
    store: Store,
    rev: str,
    *,
    resolution: str | None = None,
    message: str | None = None,
    device: torch.device | None = None,
) -> MergeResult:
    """Merge version ``rev`` into the current branch; see the module docstring."""
    if resolution is not None and resolution not in RESOLUTIONS:
        raise ValueError(f"resolution must be one of {RESOLUTIONS}")
    ours, theirs = store.head(), store.resolve(rev)
    if theirs in ancestors(store, ours):
        raise RevisionError(f"{rev} is already contained in the current version; nothing to merge")
    base = merge_base(store, ours, theirs)
    base_tree = set(store.commit_tree(base)) if base else set()
    our_tree, their_tree = store.commit_tree(ours), store.commit_tree(theirs)
    our_set, their_set = set(our_tree), set(their_tree)
    removed_by_us, removed_by_them = base_tree - our_set, base_tree - their_set
    kept = [e for e in our_tree if e not in removed_by_them]
    incoming = [e for e in their_tree if e not in our_set and e not in removed_by_us]
    ours_only = [e for e in kept if e not in their_set]

    found = _conflicts(store, ours_only, incoming, device)
    stop = blocking(found)
    dropped: list[str] = []
    if stop and resolution is None:
        raise MergeConflictError(stop)
    if stop and resolution == "ours":
        dropped = sorted({c.edit for c in stop if c.edit})
    elif stop and resolution == "theirs":
        dropped = sorted({c.other for c in stop if c.other})
    tree = [e for e in kept + incoming if e not in dropped]
    recorded = [c for c in found if c.edit not in dropped and c.other not in dropped]
    label = message or f"Merge {rev}" + (f" ({resolution})" if resolution and stop else "")
    commit = store.write_commit(tree, operation="merge", message=label, parents=[ours, theirs], expected_head=ours,
                                conflicts=[(c.edit, c.to_json()) for c in recorded if c.edit])
    log.info("merged %s: %d edits in, %d dropped, %d conflicts", rev, len(incoming), len(dropped), len(found))
    return MergeResult(commit, tree, [e for e in incoming if e not in dropped], dropped, recorded)


def _conflicts(store: Store, ours_only: list[str], incoming: list[str], device: torch.device | None) -> list[Conflict]:
    """Conflicts of the incoming edits with ours (their embeddings and keys as stored)."""
    if not ours_only or not incoming:
        return []
    embed = lazy_embedder(store, device)
    checker = version_checker(store, ours_only, embed=embed, head=False)
    vectors = semantic_vectors(store, checker.index.backend, embed)(incoming)  # missing ones computed and kept
    requests = tree_requests(store, incoming)
    ids = [e for e in incoming if e in requests and e in vectors]
    return check_edits(store, checker, ids, vectors, requests) if ids else []
