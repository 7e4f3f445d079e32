"""The store: a git-like history of low-rank edits over one base checkpoint.

``Store.init`` registers a base and creates ``<dir>/.editstore``; ``Store.open``
finds a store the way git finds a repository. Every write holds the writer lock
and lands in one SQLite transaction after its objects are safely on disk.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .compose.cache import ComposedCache
from .compose.diff import ParamDiff, param_diff
from .compose.materialise import Composition, Progress, load_model, make_dir, write_checkout
from .compose.sequential import resolve_device
from .core import db as dbmod
from .core.config import check_setting, default
from .core.hashing import HEX_ID_LENGTH, is_hex, sha256_json
from .core.lock import writer_lock
from .core.objects import ObjectStore
from .core.records import Commit, Edit, author, conflict_row, embedding_row, now, tree_id
from .core.revisions import MIN_PREFIX, check_ref_name, parse_revision
from .core.schema import validate
from .errors import (
    AmbiguousRevisionError,
    BaseModelError,
    HeadMovedError,
    NotInTreeError,
    RefError,
    RevisionError,
    StoreExistsError,
    StoreNotFoundError,
    UnknownRevisionError,
)
from .model.checkpoint import Checkpoint
from .model.delta import Delta, Factors, FactorStacks

log = logging.getLogger(__name__)

STORE_DIRNAME = ".editstore"
DB_FILE = "store.db"
ENV_VAR = "EDITSTORE_DIR"
HEADS = "refs/heads/"
TAGS = "refs/tags/"
DEFAULT_BRANCH = "main"


def find_store(explicit: str | Path | None = None, *, start: Path | None = None) -> Path:
    """The store directory: ``explicit``, else ``$EDITSTORE_DIR``, else ``.editstore`` in the nearest ancestor."""
    chosen = explicit or os.environ.get(ENV_VAR)
    if chosen:
        root = Path(chosen)
        if not (root / DB_FILE).is_file():
            raise StoreNotFoundError(f"no editstore store at {root}")
        return root.resolve()
    here = (start or Path.cwd()).resolve()
    for directory in (here, *here.parents):
        if (directory / STORE_DIRNAME / DB_FILE).is_file():
            return directory / STORE_DIRNAME
    raise StoreNotFoundError(
        f"no editstore store in {here} or any parent; run `editstore init --base MODEL_DIR` or pass --store"
    )


def _orientations_key(checkpoint: Checkpoint) -> str:
    return f"orientations.{checkpoint.fingerprint}"


def _minus(items: Sequence[str], other: Sequence[str]) -> list[str]:
    """``items`` without those in ``other``, order kept."""
    drop = set(other)
    return [i for i in items if i not in drop]


def _reinsert(tree: list[str], items: Sequence[str], order: Sequence[str]) -> list[str]:
    """``tree`` with ``items`` put back where ``order`` (an earlier tree) had them: each after the nearest
    edit before it in ``order`` that ``tree`` holds, so reverting a commit that took edits out restores its
    parent's tree exactly when nothing else changed."""
    out, held = list(tree), set(tree)
    position = {e: i for i, e in enumerate(order)}
    for item in items:
        before = order[: position[item]] if item in position else []
        anchor = next((e for e in reversed(before) if e in held), None)
        out.insert(out.index(anchor) + 1 if anchor is not None else 0, item)
        held.add(item)
    return out


@dataclass(frozen=True)
class NewEdit:
    """What a caller hands to :meth:`Store.record_edits`: a delta and how it was made."""

    delta: Delta
    method: str
    name: str | None = None
    request: dict[str, Any] | None = None
    hparams: dict[str, Any] | None = None
    info: dict[str, Any] = field(default_factory=dict)
    embedding: tuple[str, torch.Tensor] | None = None  # (backend, prompt embedding), see editstore.conflicts.index
    conflicts: Sequence[dict[str, Any]] = ()  # Conflict.to_json() of what this edit was committed despite


@dataclass(frozen=True)
class Branch:
    name: str
    commit: str
    current: bool


@dataclass(frozen=True)
class VersionDiff:
    """Edits only in A, only in B, and per parameter how far the weights moved."""

    a: str
    b: str
    only_a: list[str]
    only_b: list[str]
    params: list[ParamDiff]

    def to_json(self) -> dict[str, Any]:
        return {
            "a": self.a,
            "b": self.b,
            "only_a": self.only_a,
            "only_b": self.only_b,
            "params": [{"param": p.param, "frobenius": p.frobenius, "rank": p.rank} for p in self.params],
        }


class Store:
    """An opened store. Use :meth:`init` or :meth:`open` rather than the constructor."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root).resolve()
        self.db = dbmod.connect(self.root / DB_FILE)
        try:
            dbmod.check_format(self.db, self.root / DB_FILE)
        except BaseException:
            self.db.close()
            raise
        self.objects = ObjectStore(self.root / "objects")
        self._lock_depth = 0

    # ----------------------------------------------------------------- lifecycle

    @classmethod
    def init(cls, base: str | Path, store: str | Path | None = None) -> Store:
        """Register the checkpoint ``base`` and create a store with an empty ``main`` branch.

        The store goes to ``store``, else ``$EDITSTORE_DIR``, else ``./.editstore``.
        """
        root = Path(store or os.environ.get(ENV_VAR) or Path.cwd() / STORE_DIRNAME)
        if root.exists() and not root.is_dir():
            raise StoreExistsError(f"{root} exists and is not a directory")
        if (root / DB_FILE).exists():
            raise StoreExistsError(f"a store already exists at {root}")
        checkpoint = Checkpoint(base)
        if not root.is_dir():
            make_dir(root, f"the store directory {root}")
        with writer_lock(root / "lock"):
            if (root / DB_FILE).exists():
                raise StoreExistsError(f"a store already exists at {root}")
            staging = root / f".{DB_FILE}.tmp-{os.getpid()}"  # complete before it is renamed into place
            staging.unlink(missing_ok=True)
            db = dbmod.create(staging)
            cls._write_root(db, checkpoint)
            db.close()
            os.replace(staging, root / DB_FILE)
        log.info("initialised store at %s for base %s", root, checkpoint.path)
        return cls(root)

    @staticmethod
    def _write_root(db: Any, checkpoint: Checkpoint) -> None:
        """The base row, the empty root commit, ``main`` and ``HEAD``, in one transaction."""
        with db.atomic():
            db["bases"].insert(
                {
                    "fingerprint": checkpoint.fingerprint,
                    "path": str(checkpoint.path),
                    "config": json.dumps(checkpoint.config),
                    "created": now(),
                }
            )
            root_commit = Commit(checkpoint.fingerprint, (), tree_id([]), "init", "init", author(), now())
            db["trees"].insert({"id": root_commit.tree, "edits": "[]", "size": 0}, ignore=True)
            db["commits"].insert(root_commit.row())
            db["refs"].insert({"name": HEADS + DEFAULT_BRANCH, "target": root_commit.id, "symbolic": None})
            db["refs"].insert({"name": "HEAD", "target": None, "symbolic": HEADS + DEFAULT_BRANCH})
            db["meta"].insert({"key": _orientations_key(checkpoint), "value": json.dumps(checkpoint.orientations)})

    @classmethod
    def open(cls, store: str | Path | None = None) -> Store:
        """Open the store at ``store``, ``$EDITSTORE_DIR``, or the nearest ``.editstore`` upwards."""
        return cls(find_store(store))

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the store's writer lock (every write does; readers never need it). Re-entrant."""
        if self._lock_depth:
            self._lock_depth += 1
            try:
                yield
            finally:
                self._lock_depth -= 1
            return
        with writer_lock(self.root / "lock"):
            self._lock_depth = 1
            try:
                yield
            finally:
                self._lock_depth = 0

    # ----------------------------------------------------------------- base

    @functools.cached_property
    def base_fingerprint(self) -> str:
        return self.db.execute("SELECT fingerprint FROM bases").fetchone()[0]

    @functools.cached_property
    def base(self) -> Checkpoint:
        """The registered base checkpoint, checked against its fingerprint."""
        path = self.db.execute("SELECT path FROM bases").fetchone()[0]
        checkpoint = Checkpoint(path)
        if checkpoint.fingerprint != self.base_fingerprint:
            raise BaseModelError(f"the base model at {path} has changed since `editstore init` (config or tensor layout)")
        # orientations need the architecture built on the meta device: `init` keeps the answer
        row = self.db.execute("SELECT value FROM meta WHERE key = ?", [_orientations_key(checkpoint)]).fetchone()
        if row:
            checkpoint.orientations = json.loads(row[0])
        return checkpoint

    def base_hashes(self) -> dict[str, str]:
        """Recorded content hashes of the base tensors that deltas touch."""
        rows = self.db.execute("SELECT name, sha256 FROM base_tensors WHERE base = ?", [self.base_fingerprint])
        return dict(rows.fetchall())

    # ----------------------------------------------------------------- refs and revisions

    def _ref(self, name: str) -> dict[str, Any] | None:
        rows = list(self.db["refs"].rows_where("name = ?", [name]))
        return rows[0] if rows else None

    def current_branch(self) -> str | None:
        """The branch HEAD points at, or None when HEAD is detached."""
        symbolic = self._ref("HEAD")["symbolic"]
        return symbolic.removeprefix(HEADS) if symbolic else None

    def head(self) -> str:
        """The commit id HEAD resolves to."""
        ref = self._ref("HEAD")
        return self._ref(ref["symbolic"])["target"] if ref["symbolic"] else ref["target"]

    def _move_head(self, commit_id: str) -> None:
        """Point the current branch (or a detached HEAD) at ``commit_id``; call inside a transaction."""
        ref = self._ref("HEAD")
        self.db["refs"].update(ref["symbolic"] or "HEAD", {"target": commit_id})

    def resolve_object(self, rev: str) -> tuple[str, str]:
        """``("commit", id)``, ``("edit", id)`` or ``("editor", id)`` for a revision string."""
        parsed = parse_revision(rev)
        kind, oid = self._resolve_name(parsed.name)
        if parsed.back and kind != "commit":
            raise RevisionError(f"{rev}: ~ and ^ apply to commits, and {parsed.name} names an {kind}")
        for step in range(parsed.back):
            parents = self.commit(oid).parents
            if not parents:
                raise UnknownRevisionError(f"{rev} goes back {parsed.back} commit(s), but history has only {step}")
            oid = parents[0]
        return kind, oid

    def _resolve_name(self, name: str) -> tuple[str, str]:
        if name == "HEAD":
            return "commit", self.head()
        for prefix in (HEADS, TAGS):
            ref = self._ref(prefix + name)
            if ref:
                return "commit", ref["target"]
        text = name.lower()
        if not is_hex(text) or len(text) > HEX_ID_LENGTH:
            raise UnknownRevisionError(f"unknown revision {name!r} (not a branch, tag or id)")
        if len(text) < MIN_PREFIX:
            raise UnknownRevisionError(f"unknown revision {name!r}; id prefixes need at least {MIN_PREFIX} characters")
        matches = [
            (kind, row[0])
            for kind, table in (("commit", "commits"), ("edit", "edits"), ("editor", "editors"))
            for row in self.db.execute(f"SELECT id FROM {table} WHERE id >= ? AND id < ?", [text, text + "g"])
        ]
        if not matches:
            raise UnknownRevisionError(f"unknown revision {name!r}")
        if len(matches) > 1:
            listed = ", ".join(f"{k} {i[:12]}" for k, i in matches[:5])
            raise AmbiguousRevisionError(f"revision {name!r} is ambiguous: {listed}")
        return matches[0]

    def resolve(self, rev: str) -> str:
        """The commit id a revision names; an edit id is an error here."""
        kind, oid = self.resolve_object(rev)
        if kind != "commit":
            raise RevisionError(f"{rev} names an {kind}, not a commit")
        return oid

    # ----------------------------------------------------------------- reading records

    def commit(self, commit_id: str) -> Commit:
        rows = list(self.db["commits"].rows_where("id = ?", [commit_id]))
        if not rows:
            raise UnknownRevisionError(f"no commit {commit_id}")
        return Commit.from_row(rows[0])

    def edit(self, edit_id: str) -> Edit:
        rows = list(self.db["edits"].rows_where("id = ?", [edit_id]))
        if not rows:
            raise UnknownRevisionError(f"no edit {edit_id}")
        return Edit.from_row(rows[0])

    def tree(self, rev: str = "HEAD") -> list[str]:
        """The ordered edit ids of a version."""
        return self.commit_tree(self.resolve(rev))

    def commit_tree(self, commit_id: str) -> list[str]:
        """The ordered edit ids of the commit ``commit_id`` (a full id, not a revision)."""
        return self.tree_edits(self.commit(commit_id).tree)

    def tree_edits(self, tid: str) -> list[str]:
        """The ordered edit ids of the tree ``tid``."""
        return json.loads(self.db.execute("SELECT edits FROM trees WHERE id = ?", [tid]).fetchone()[0])

    def _edit_rows(self, edit_ids: Sequence[str], columns: str = "*") -> dict[str, Any]:
        """Rows of the ``edits`` table by id, 500 ids a query."""
        out: dict[str, Any] = {}
        ids = list(dict.fromkeys(edit_ids))
        for i in range(0, len(ids), 500):
            chunk = ids[i : i + 500]
            rows = self.db["edits"].rows_where(f"id IN ({', '.join('?' * len(chunk))})", chunk, select=columns)
            out.update((row["id"], row) for row in rows)
        missing = [e for e in ids if e not in out]
        if missing:
            raise UnknownRevisionError(f"no edit {missing[0]}")
        return out

    def edits(self, edit_ids: Sequence[str]) -> dict[str, Edit]:
        """The records of several edits, by id, in few queries."""
        return {eid: Edit.from_row(row) for eid, row in self._edit_rows(edit_ids).items()}

    def load_delta(self, edit_id: str, *, record: Edit | None = None) -> Delta:
        """The delta object of an edit, hash-verified."""
        oid = (record or self.edit(edit_id)).delta
        return Delta.from_bytes(self.objects.read(oid), source=f"object {oid}", trusted=True)

    def log(self, rev: str = "HEAD", *, limit: int | None = None) -> list[tuple[str, Commit]]:
        """Commits reachable from ``rev``, newest first."""
        seen: dict[str, Commit] = {}
        frontier = [self.resolve(rev)]
        while frontier:
            cid = frontier.pop()
            if cid in seen:
                continue
            seen[cid] = self.commit(cid)
            frontier.extend(seen[cid].parents)
        ordered = sorted(seen.items(), key=lambda item: item[1].time, reverse=True)
        return ordered if limit is None else ordered[:limit]

    def show(self, rev: str) -> dict[str, Any]:
        """A commit (with the edits it added and removed), an edit or a trained editor, as a JSON-ready dict."""
        kind, oid = self.resolve_object(rev)
        if kind == "edit":
            return {"type": "edit", "id": oid, **self.edit(oid).record()}
        if kind == "editor":
            row = next(self.db["editors"].rows_where("id = ?", [oid]))
            return {"type": "editor", **row, **{k: json.loads(row[k]) for k in ("modules", "hparams", "metrics")}}
        c = self.commit(oid)
        tree = self.commit_tree(oid)
        parent_tree = self.commit_tree(c.parents[0]) if c.parents else []
        added, removed = _minus(tree, parent_tree), _minus(parent_tree, tree)
        edits = [{"id": e, "name": (edit := self.edit(e)).name, "method": edit.method} for e in added]
        return {"type": "commit", "id": oid, **c.record(), "size": len(tree), "added": edits, "removed": removed}

    # ----------------------------------------------------------------- branches and tags

    def branches(self) -> list[Branch]:
        current = self.current_branch()
        rows = self.db.execute("SELECT name, target FROM refs WHERE name LIKE ? ORDER BY name", [HEADS + "%"])
        return [Branch(n.removeprefix(HEADS), t, n.removeprefix(HEADS) == current) for n, t in rows.fetchall()]

    def tags(self) -> dict[str, str]:
        rows = self.db.execute("SELECT name, target FROM refs WHERE name LIKE ? ORDER BY name", [TAGS + "%"])
        return {n.removeprefix(TAGS): t for n, t in rows.fetchall()}

    def _create_ref(self, full: str, rev: str, what: str) -> str:
        check_ref_name(full.split("/", 2)[2])
        with self.locked():
            if self._ref(full):
                raise RefError(f"{what} {full.split('/', 2)[2]!r} already exists")
            target = self.resolve(rev)
            with self.db.atomic():
                self.db["refs"].insert({"name": full, "target": target, "symbolic": None})
        return target

    def create_branch(self, name: str, rev: str = "HEAD") -> str:
        """Create branch ``name`` at ``rev``; returns its commit id."""
        return self._create_ref(HEADS + name, rev, "branch")

    def tag(self, name: str, rev: str = "HEAD") -> str:
        """Create tag ``name`` at ``rev``; returns its commit id."""
        return self._create_ref(TAGS + name, rev, "tag")

    def delete_branch(self, name: str) -> None:
        with self.locked():
            if not self._ref(HEADS + name):
                raise RefError(f"no branch named {name!r}")
            if self.current_branch() == name:
                raise RefError(f"cannot delete {name!r}: it is the current branch")
            with self.db.atomic():
                self.db["refs"].delete(HEADS + name)

    def switch(self, name: str, *, create: bool = False) -> None:
        """Make ``name`` the current branch (creating it at HEAD with ``create``)."""
        if create:
            self.create_branch(name)
        with self.locked():
            if not self._ref(HEADS + name):
                raise RefError(f"no branch named {name!r}")
            with self.db.atomic():
                self.db["refs"].update("HEAD", {"symbolic": HEADS + name, "target": None})
            self._after_move(self.tree("HEAD"))

    def reset(self, rev: str) -> str:
        """Move the current branch (or detached HEAD) to ``rev``."""
        with self.locked():
            target = self.resolve(rev)
            with self.db.atomic():
                self._move_head(target)
            self._after_move(self.commit_tree(target))
        return target

    # ----------------------------------------------------------------- writing history

    def record_edits(
        self,
        new: Sequence[NewEdit],
        *,
        message: str,
        operation: str = "edit",
        expected_head: str | None = None,
        remove: Sequence[str] = (),
    ) -> str:
        """Store the deltas, append their edits to the current tree and commit; returns the commit id.

        With ``expected_head``, refuse (:class:`HeadMovedError`) when HEAD moved since the
        caller computed the deltas on that version. ``remove``: edits of the current tree the
        commit takes out (the edits an update replaces). The edits' embeddings and conflicts
        are written in the same transaction as the commit.
        """
        for item in new:
            item.delta.check_fits(self.base)
            if item.request is not None:
                validate(item.request, "edit-request", what="edit request")
        with self.locked():
            if expected_head is not None and self.head() != expected_head:
                raise HeadMovedError(
                    f"HEAD moved from {expected_head[:12]} to {self.head()[:12]} while the edit was computed; run it again"
                )
            known = self.base_hashes()
            touched = sorted({p for item in new for p in item.delta.params if p not in known})
            hashes = [{"base": self.base_fingerprint, "name": p, "sha256": self.base.tensor_hash(p)} for p in touched]
            edits = [self._store_edit(item) for item in new]
            current = self.tree("HEAD")
            if not set(remove) <= set(current):
                raise NotInTreeError(f"edit {sorted(set(remove) - set(current))[0][:12]} is not in the current tree")
            tree = _minus(current, remove) + [e.id for e in edits]
            embeddings = [embedding_row(e.id, *item.embedding) for item, e in zip(new, edits) if item.embedding]
            conflicts = [(e.id, c) for item, e in zip(new, edits) for c in item.conflicts]
            return self._commit(tree, operation=operation, message=message, new_edits=edits, base_hashes=hashes,
                                embeddings=embeddings, conflicts=conflicts)

    def write_commit(
        self,
        tree: list[str],
        *,
        operation: str,
        message: str,
        parents: Sequence[str],
        expected_head: str,
        conflicts: Sequence[tuple[str, dict[str, Any]]] = (),
    ) -> str:
        """Commit ``tree`` (of edits already in the store) with ``parents`` (a merge, say), recording
        ``conflicts`` as (edit id, :meth:`Conflict.to_json`); refused when HEAD moved from ``expected_head``."""
        with self.locked():
            if self.head() != expected_head:
                raise HeadMovedError(f"HEAD moved from {expected_head[:12]} to {self.head()[:12]}; run it again")
            self.edits(tree)  # every edit exists
            return self._commit(tree, operation=operation, message=message, parents=parents, conflicts=conflicts)

    def import_delta(self, delta: str | Path | Delta, *, message: str, name: str | None = None) -> str:
        """Validate a delta file (or object) against the base and commit it as one edit."""
        source = None if isinstance(delta, Delta) else str(delta)
        d = delta if isinstance(delta, Delta) else Delta.load(delta)
        method = d.metadata.get("method", "import")
        info = {"source": Path(source).name} if source else {}
        return self.record_edits([NewEdit(d, method, name=name, info=info)], message=message, operation="import")

    def revert(self, rev: str, *, message: str | None = None) -> str:
        """New commit whose tree lacks the edit ``rev`` (or undoes commit ``rev``: the edits it added leave,
        the edits it took out come back at their old places, so reverting an update or a revert restores
        the earlier tree exactly when nothing else changed)."""
        kind, oid = self.resolve_object(rev)
        if kind == "editor":
            raise RevisionError(f"{rev} names a trained editor, not an edit or commit")
        with self.locked():
            tree = self.tree("HEAD")
            if kind == "edit":
                if oid not in tree:
                    raise NotInTreeError(f"edit {oid[:12]} is not in the current tree")
                label = self.edit(oid).name or oid[:12]
                return self._commit(_minus(tree, [oid]), operation="revert", message=message or f"Revert edit {label}")
            commit = self.commit(oid)
            before = self.commit_tree(commit.parents[0]) if commit.parents else []
            after = self.commit_tree(oid)
            remove = (set(after) - set(before)) & set(tree)
            readd = _minus(_minus(before, after), tree)
            if not remove and not readd:
                raise NotInTreeError(f"the changes of commit {oid[:12]} are not in the current tree")
            default = f'Revert "{commit.message.splitlines()[0] if commit.message else oid[:12]}"'
            return self._commit(_reinsert(_minus(tree, remove), readd, before), operation="revert",
                                message=message or default)

    def _store_edit(self, item: NewEdit) -> Edit:
        oid = self.objects.write(item.delta.to_bytes())
        return Edit(
            base=self.base_fingerprint,
            name=item.name,
            method=item.method,
            request=item.request,
            hparams=item.hparams,
            delta=oid,
            params=tuple(item.delta.params),
            rank=item.delta.rank,
            info=dict(item.info),
            author=author(),
            time=now(),
        )

    def _commit(
        self,
        tree: list[str],
        *,
        operation: str,
        message: str,
        new_edits: Sequence[Edit] = (),
        parents: Sequence[str] | None = None,
        base_hashes: Sequence[dict[str, str]] = (),
        embeddings: Sequence[dict[str, Any]] = (),
        conflicts: Sequence[tuple[str, dict[str, Any]]] = (),
    ) -> str:
        """Write one commit in one transaction, with the new edits' embedding rows and the conflicts
        (edit id, :meth:`Conflict.to_json`) it is made despite; the caller holds the writer lock.
        Then keep the conflict index on HEAD."""
        commit = Commit(
            self.base_fingerprint, tuple(parents or [self.head()]), tree_id(tree), operation, message, author(), now()
        )
        with self.db.atomic():
            for edit in new_edits:
                self.db["edits"].insert(edit.row(), ignore=True)
            self.db["base_tensors"].insert_all(base_hashes, ignore=True)
            self.db["trees"].insert({"id": commit.tree, "edits": json.dumps(tree), "size": len(tree)}, ignore=True)
            self.db["commits"].insert(commit.row())
            self.db["embeddings"].insert_all(embeddings, replace=True)
            self.db["conflicts"].insert_all([conflict_row(commit.id, e, c) for e, c in conflicts])
            self._move_head(commit.id)
        log.info("commit %s (%s, %d edits)", commit.id[:12], operation, len(tree))
        self._after_move(tree)
        return commit.id

    def _after_move(self, tree: list[str]) -> None:
        """Derived state that follows HEAD: the conflict index (a failure here is logged; the next check
        sees the index's manifest name another tree and syncs it)."""
        from .conflicts.checks import sync_index

        try:
            sync_index(self, tree)
        except Exception as exc:  # noqa: BLE001 (the commit has landed; derived state must not undo it)
            log.warning("conflict index not updated (%s); it is synced at the next check", exc)

    # ----------------------------------------------------------------- checkout and diff

    def factors(self, edit_ids: Sequence[str]) -> dict[str, list[Factors]]:
        """Per parameter, the factors U, V of the given edits in tree order, concatenated into one float32
        :class:`Factors` (hash-verified; no keys)."""
        rows = self._edit_rows(edit_ids, "id, delta")
        return self._read_factors([rows[eid]["delta"] for eid in edit_ids])

    def _read_factors(self, objects: Sequence[str]) -> dict[str, list[Factors]]:
        """Per parameter, U and V of the delta objects in order, concatenated into one :class:`Factors`
        (objects only: safe in another thread)."""
        stacks = FactorStacks(expected=len(objects))
        for data in self.objects.stream(objects):
            stacks.add(data)
        return {param: [f] for param, f in stacks.factors().items()}

    def _tree_deltas(self, tree: Sequence[str]) -> tuple[list[str], dict[str, list[str]]]:
        """The delta objects of ``tree`` in order, and per parameter those touching it (one query)."""
        query = (
            "SELECT t.key, e.delta, p.value FROM json_each(?) AS t JOIN edits AS e ON e.id = t.value "
            "LEFT JOIN json_each(e.params) AS p ORDER BY t.key, p.key"
        )
        objects: dict[int, str] = {}
        sources: dict[str, list[str]] = {}
        for index, delta, param in self.db.execute(query, [json.dumps(list(tree))]):
            objects[index] = delta
            if param is not None:
                sources.setdefault(param, []).append(delta)
        if len(objects) != len(tree):
            self._edit_rows(tree, "id")  # names the missing edit
        return list(objects.values()), sources

    def composition(self, tree: Sequence[str], *, compose: str | None = None, device: torch.device) -> Composition:
        """How the edited parameters of ``tree`` are composed in mode ``compose`` (default: the store's setting).

        Cache keys: sequential, the delta objects touching each parameter in order;
        batched, the whole tree, the statistics stored for its modules, ``checkout.lambda_e`` and
        ``checkout.targets`` (a re-solve couples the edits of a group and depends on Σ and on how
        groups are solved).
        """
        mode = self.compose_mode(compose)
        hashes = self.base_hashes()
        objects, sources = self._tree_deltas(tree)
        whole = [tree_id(list(tree))]
        lambda_e, targets = 0.0, "rebased"
        if mode == "batched":  # the solve also depends on Σ, λ_e and the targets: a change of any is a new key
            lambda_e, targets = float(self.config("checkout.lambda_e")), self.config("checkout.targets")
            modules = sorted({p.removesuffix(".weight") for p in sources})
            query = f"SELECT object FROM stats WHERE module IN ({', '.join('?' * len(modules))})"
            whole += sorted(row[0] for row in self.db.execute(query, modules))
            if lambda_e:
                whole.append(f"lambda_e={lambda_e!r}")
            whole.append(f"targets={targets}")
        keys = {
            param: sha256_json({"mode": mode, "param": param, "base": hashes.get(param), "device": device.type,
                                "from": deltas if mode == "sequential" else whole})
            for param, deltas in sources.items()
        }
        if mode == "sequential":
            return Composition(sorted(sources), lambda: self._read_factors(objects), keys, self.cache,
                               factors_in_background=True)
        from .compose.resolve import batched_factors

        return Composition(sorted(sources), lambda: batched_factors(self, tree, device=device, lambda_e=lambda_e, targets=targets),
                           keys, self.cache)

    def checkout(
        self,
        rev: str = "HEAD",
        *,
        device: str | torch.device = "auto",
        compose: str | None = None,
        progress: Progress | None = None,
        into: torch.nn.Module | None = None,
    ) -> torch.nn.Module:
        """The version ``rev`` as an in-memory ``PreTrainedModel``: the base loaded once, composed weights swapped in.

        ``into``: the base, already loaded and unedited, to compose into instead of loading it.
        """
        return self.checkout_tree(self.tree(rev), device=device, compose=compose, progress=progress, into=into)

    def checkout_tree(
        self,
        tree: Sequence[str],
        *,
        device: str | torch.device = "auto",
        compose: str | None = None,
        progress: Progress | None = None,
        into: torch.nn.Module | None = None,
    ) -> torch.nn.Module:
        """The version holding the edits ``tree`` (ids in order, whether or not a commit has it), in memory."""
        dev = resolve_device(device)
        composition = self.composition(tree, compose=compose, device=dev)
        model = load_model(self.base, composition, device=dev, base_hashes=self.base_hashes(), progress=progress,
                           into=into)
        self.cache.trim()
        return model

    def checkout_to(
        self,
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
        commit_id = self.resolve(rev)
        tree = self.commit_tree(commit_id)
        dev = resolve_device(device)
        mode = self.compose_mode(compose)
        composition = self.composition(tree, compose=mode, device=dev)
        provenance = {"store": str(self.root), "commit": commit_id, "tree": tree_id(tree), "base": self.base_fingerprint,
                      "compose": mode}
        path = write_checkout(
            self.base, composition, Path(out), device=dev, base_hashes=self.base_hashes(),
            provenance=provenance, link=link, progress=progress,
        )
        self.cache.trim()
        return path

    # ----------------------------------------------------------------- settings and cache

    def config(self, key: str) -> str:
        """The value of setting ``key`` (see :mod:`editstore.core.config`)."""
        row = self.db.execute("SELECT value FROM meta WHERE key = ?", [f"config.{key}"]).fetchone()
        return check_setting(key, row[0]) if row else default(key)

    def compose_mode(self, compose: str | None = None) -> str:
        """``compose`` checked, or the store's ``checkout.compose``."""
        return check_setting("checkout.compose", compose) if compose else self.config("checkout.compose")

    def set_config(self, key: str, value: str) -> str:
        """Set ``key`` to ``value`` (validated); returns the stored value."""
        value = check_setting(key, value)
        with self.locked(), self.db.atomic():
            self.db["meta"].insert({"key": f"config.{key}", "value": value}, replace=True)
        return value

    @property
    def cache(self) -> ComposedCache:
        """The composed-parameter cache, bounded by ``cache.max_bytes``."""
        return ComposedCache(self.root / "cache", int(self.config("cache.max_bytes")))

    def diff(self, rev_a: str, rev_b: str) -> VersionDiff:
        """Edits only in A or only in B, and each touched parameter's ‖W_B − W_A‖_F and rank."""
        a, b = self.resolve(rev_a), self.resolve(rev_b)
        tree_a, tree_b = self.commit_tree(a), self.commit_tree(b)
        only_a, only_b = _minus(tree_a, tree_b), _minus(tree_b, tree_a)
        removed, added = self.factors(only_a), self.factors(only_b)
        params = [param_diff(p, added.get(p, []), removed.get(p, [])) for p in sorted(set(added) | set(removed))]
        return VersionDiff(a, b, only_a, only_b, params)
