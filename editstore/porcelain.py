"""History and refs as the user handles them (git's porcelain): import a delta, revert, show, and
branches and tags. Each is a function over a :class:`~editstore.store.Store`, built on its plumbing
(:meth:`~editstore.store.Store.record_edits`, :meth:`~editstore.store.Store.write_commit`, the refs'
compare-and-swap).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .core.records import Commit, Edit
from .core.refs import HEAD, HEADS, TAGS
from .core.revisions import check_ref_name
from .core.trees import minus, reinsert
from .errors import NotInTreeError, RefError, RevisionError
from .store import NewEdit, Store

if TYPE_CHECKING:
    from .model.delta import Delta


# ---------------------------------------------------------------------- history


def import_delta(store: Store, delta: str | Path | Delta, *, message: str, name: str | None = None) -> str:
    """Validate a delta file (or object) against the base and commit it as one edit; returns the commit id."""
    from .model.delta import Delta  # torch: only commands that read deltas pay for it

    source = None if isinstance(delta, Delta) else str(delta)
    d = delta if isinstance(delta, Delta) else Delta.load(delta)
    method = d.metadata.get("method", "import")
    info = {"source": Path(source).name} if source else {}
    return store.record_edits([NewEdit(d, method, name=name, info=info)], message=message, operation="import")


def revert(store: Store, rev: str, *, message: str | None = None) -> str:
    """New commit whose tree lacks the edit ``rev`` (or undoes commit ``rev``: the edits it added leave,
    the edits it took out come back at their old places, so reverting an update or a revert restores
    the earlier tree exactly when nothing else changed)."""
    kind, oid = store.resolve_object(rev)
    if kind == "editor":
        raise RevisionError(f"{rev} names a trained editor, not an edit or commit")
    with store.locked():
        head = store.head()
        tree = store.commit_tree(head)
        if kind == "edit":
            if oid not in tree:
                raise NotInTreeError(f"edit {oid[:12]} is not in the current tree")
            label = store.edit(oid).name or oid[:12]
            return store.write_commit(minus(tree, [oid]), operation="revert", message=message or f"Revert edit {label}",
                                      parents=[head], expected_head=head)
        commit = store.commit(oid)
        before = store.commit_tree(commit.parents[0]) if commit.parents else []
        after = store.commit_tree(oid)
        remove = (set(after) - set(before)) & set(tree)
        readd = minus(minus(before, after), tree)
        if not remove and not readd:
            raise NotInTreeError(f"the changes of commit {oid[:12]} are not in the current tree")
        default = f'Revert "{commit.message.splitlines()[0] if commit.message else oid[:12]}"'
        return store.write_commit(reinsert(minus(tree, remove), readd, before), operation="revert",
                                  message=message or default, parents=[head], expected_head=head)


# ---------------------------------------------------------------------- show


@dataclass(frozen=True)
class EditSummary:
    """An edit as a commit lists it."""

    id: str
    name: str | None
    method: str


@dataclass(frozen=True)
class ShownCommit:
    """A commit, the size of its tree, and the edits it added to and removed from its first parent's."""

    id: str
    commit: Commit
    size: int
    added: list[EditSummary]
    removed: list[str]

    def to_json(self) -> dict[str, Any]:
        added = [{"id": e.id, "name": e.name, "method": e.method} for e in self.added]
        return {"type": "commit", "id": self.id, **self.commit.record(), "size": self.size, "added": added,
                "removed": self.removed}


@dataclass(frozen=True)
class ShownEdit:
    id: str
    edit: Edit

    def to_json(self) -> dict[str, Any]:
        return {"type": "edit", "id": self.id, **self.edit.record()}


@dataclass(frozen=True)
class ShownEditor:
    """A trained editor (MEND): its modules, hyperparameters and training metrics."""

    id: str
    base: str
    method: str
    modules: list[str]
    hparams: dict[str, Any]
    metrics: dict[str, Any]
    created: str

    def to_json(self) -> dict[str, Any]:
        return {"type": "editor", **self.__dict__}


Shown = ShownCommit | ShownEdit | ShownEditor


def show(store: Store, rev: str) -> Shown:
    """The commit, edit or trained editor that ``rev`` names."""
    kind, oid = store.resolve_object(rev)
    if kind == "edit":
        return ShownEdit(oid, store.edit(oid))
    if kind == "editor":
        row = next(store.db["editors"].rows_where("id = ?", [oid]))
        return ShownEditor(**{**row, **{k: json.loads(row[k]) for k in ("modules", "hparams", "metrics")}})
    c = store.commit(oid)
    tree = store.commit_tree(oid)
    parent_tree = store.commit_tree(c.parents[0]) if c.parents else []
    added = minus(tree, parent_tree)
    records = store.edits(added)
    summaries = [EditSummary(e, records[e].name, records[e].method) for e in added]
    return ShownCommit(oid, c, len(tree), summaries, minus(parent_tree, tree))


# ---------------------------------------------------------------------- branches and tags


@dataclass(frozen=True)
class Branch:
    name: str
    commit: str
    current: bool


def branches(store: Store) -> list[Branch]:
    """Every branch, by name, with the one HEAD is on marked."""
    current = store.current_branch()
    return [Branch(name, target, name == current) for name, target in store.refs.under(HEADS)]


def tags(store: Store) -> dict[str, str]:
    """Tag name → commit id."""
    return dict(store.refs.under(TAGS))


def _create_ref(store: Store, full: str, rev: str, what: str) -> str:
    check_ref_name(full.split("/", 2)[2])
    with store.locked():
        target = store.resolve(rev)
        with store.db.atomic():
            if not store.refs.add_if_new(full, target):
                raise RefError(f"{what} {full.split('/', 2)[2]!r} already exists")
    return target


def create_branch(store: Store, name: str, rev: str = HEAD) -> str:
    """Create branch ``name`` at ``rev``; returns its commit id."""
    return _create_ref(store, HEADS + name, rev, "branch")


def tag(store: Store, name: str, rev: str = HEAD) -> str:
    """Create tag ``name`` at ``rev``; returns its commit id."""
    return _create_ref(store, TAGS + name, rev, "tag")


def delete_branch(store: Store, name: str) -> None:
    """Delete branch ``name`` (not the current one)."""
    with store.locked():
        if store.current_branch() == name:
            raise RefError(f"cannot delete {name!r}: it is the current branch")
        with store.db.atomic():
            if not store.refs.remove_if_equals(HEADS + name, None):
                raise RefError(f"no branch named {name!r}")


def switch(store: Store, name: str, *, create: bool = False) -> None:
    """Make ``name`` the current branch (creating it at HEAD with ``create``)."""
    if create:
        create_branch(store, name)
    with store.locked():
        if store.refs.get(HEADS + name) is None:
            raise RefError(f"no branch named {name!r}")
        with store.db.atomic():
            store.refs.set_symbolic(HEAD, HEADS + name)
        store.head_moved()


def reset(store: Store, rev: str) -> str:
    """Move the current branch (or a detached HEAD) to ``rev``; returns its commit id."""
    with store.locked():
        target = store.resolve(rev)
        store.update_head(None, target)
    return target
