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
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .core import db as dbmod
from .core.config import check_setting, default
from .core.hashing import HEX_ID_LENGTH, is_hex
from .core.lock import writer_lock
from .core.objects import ObjectStore
from .core.paths import make_dir
from .core.records import Commit, Edit, author, conflict_row, embedding_row, now, tree_id
from .core.refs import DEFAULT_BRANCH, HEAD, HEADS, TAGS, Refs
from .core.revisions import MIN_PREFIX, check_ref_name, parse_revision
from .core.schema import validate
from .core.trees import minus, reinsert
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

if TYPE_CHECKING:
    import torch

    from .model.checkpoint import Checkpoint
    from .model.delta import Delta

log = logging.getLogger(__name__)

STORE_DIRNAME = ".editstore"
DB_FILE = "store.db"

HeadMoved = Callable[["Store", list[str]], None]
_head_moved: list[HeadMoved] = []


def on_head_moved(hook: HeadMoved) -> HeadMoved:
    """Register ``hook(store, tree)``, called after every write that moves HEAD, with HEAD's new tree.

    This is how derived state that follows HEAD (the conflict index) keeps up without the store
    importing the layers above it: they register themselves when imported. A hook's failure is
    logged, never raised (the commit has landed); derived state must also catch up by itself.
    """
    _head_moved.append(hook)
    return hook


def find_store(explicit: str | Path | None = None, *, start: Path | None = None) -> Path:
    """The store directory: ``explicit``, else ``.editstore`` in ``start`` (default: the working directory)
    or its nearest ancestor that has one."""
    if explicit:
        root = Path(explicit)
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
        self.refs = Refs(self.db)
        self._lock_depth = 0

    # ----------------------------------------------------------------- lifecycle

    @classmethod
    def init(cls, base: str | Path, store: str | Path | None = None) -> Store:
        """Register the checkpoint ``base`` and create a store with an empty ``main`` branch.

        The store goes to ``store``, else ``./.editstore``.
        """
        import os

        from .model.checkpoint import Checkpoint  # torch: only commands that read the base pay for it

        root = Path(store or Path.cwd() / STORE_DIRNAME)
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
            db["refs"].insert({"name": HEAD, "target": None, "symbolic": HEADS + DEFAULT_BRANCH})
            db["meta"].insert({"key": _orientations_key(checkpoint), "value": json.dumps(checkpoint.orientations)})

    @classmethod
    def open(cls, store: str | Path | None = None) -> Store:
        """Open the store at ``store``, or the nearest ``.editstore`` upwards from the working directory."""
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
        from .model.checkpoint import Checkpoint  # torch: only commands that read the base pay for it

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

    def current_branch(self) -> str | None:
        """The branch HEAD points at, or None when HEAD is detached."""
        return self.refs.current_branch()

    def head(self) -> str:
        """The commit id HEAD resolves to."""
        return self.refs.head()

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
        if name == HEAD:
            return "commit", self.head()
        for prefix in (HEADS, TAGS):
            ref = self.refs.get(prefix + name)
            if ref is not None and ref.target is not None:
                return "commit", ref.target
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
        from .model.delta import Delta  # torch: only commands that read deltas pay for it

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
        added, removed = minus(tree, parent_tree), minus(parent_tree, tree)
        edits = [{"id": e, "name": (edit := self.edit(e)).name, "method": edit.method} for e in added]
        return {"type": "commit", "id": oid, **c.record(), "size": len(tree), "added": edits, "removed": removed}

    # ----------------------------------------------------------------- branches and tags

    def branches(self) -> list[Branch]:
        current = self.current_branch()
        return [Branch(name, target, name == current) for name, target in self.refs.under(HEADS)]

    def tags(self) -> dict[str, str]:
        return dict(self.refs.under(TAGS))

    def _create_ref(self, full: str, rev: str, what: str) -> str:
        check_ref_name(full.split("/", 2)[2])
        with self.locked():
            target = self.resolve(rev)
            with self.db.atomic():
                if not self.refs.add_if_new(full, target):
                    raise RefError(f"{what} {full.split('/', 2)[2]!r} already exists")
        return target

    def create_branch(self, name: str, rev: str = "HEAD") -> str:
        """Create branch ``name`` at ``rev``; returns its commit id."""
        return self._create_ref(HEADS + name, rev, "branch")

    def tag(self, name: str, rev: str = "HEAD") -> str:
        """Create tag ``name`` at ``rev``; returns its commit id."""
        return self._create_ref(TAGS + name, rev, "tag")

    def delete_branch(self, name: str) -> None:
        with self.locked():
            if self.current_branch() == name:
                raise RefError(f"cannot delete {name!r}: it is the current branch")
            with self.db.atomic():
                if not self.refs.remove_if_equals(HEADS + name, None):
                    raise RefError(f"no branch named {name!r}")

    def switch(self, name: str, *, create: bool = False) -> None:
        """Make ``name`` the current branch (creating it at HEAD with ``create``)."""
        if create:
            self.create_branch(name)
        with self.locked():
            if self.refs.get(HEADS + name) is None:
                raise RefError(f"no branch named {name!r}")
            with self.db.atomic():
                self.refs.set_symbolic(HEAD, HEADS + name)
            self._after_move(self.tree(HEAD))

    def reset(self, rev: str) -> str:
        """Move the current branch (or detached HEAD) to ``rev``."""
        with self.locked():
            target = self.resolve(rev)
            with self.db.atomic():
                self._move_head(self.head(), target)
            self._after_move(self.commit_tree(target))
        return target

    def _move_head(self, expected: str, commit_id: str) -> None:
        """Point the current branch (or a detached HEAD) at ``commit_id`` if it still holds ``expected``
        (compare-and-swap, inside the caller's transaction); :class:`HeadMovedError` if it moved."""
        if not self.refs.set_if_equals(HEAD, expected, commit_id):
            raise HeadMovedError(f"HEAD moved from {expected[:12]} to {self.head()[:12]}; run it again")

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
            expected = expected_head or self.head()
            if self.head() != expected:  # checked before any object is written; the commit's swap checks again
                raise HeadMovedError(
                    f"HEAD moved from {expected[:12]} to {self.head()[:12]} while the edit was computed; run it again"
                )
            known = self.base_hashes()
            touched = sorted({p for item in new for p in item.delta.params if p not in known})
            hashes = [{"base": self.base_fingerprint, "name": p, "sha256": self.base.tensor_hash(p)} for p in touched]
            edits = [self._store_edit(item) for item in new]
            current = self.commit_tree(expected)
            if not set(remove) <= set(current):
                raise NotInTreeError(f"edit {sorted(set(remove) - set(current))[0][:12]} is not in the current tree")
            tree = minus(current, remove) + [e.id for e in edits]
            embeddings = [embedding_row(e.id, *item.embedding) for item, e in zip(new, edits) if item.embedding]
            conflicts = [(e.id, c) for item, e in zip(new, edits) for c in item.conflicts]
            return self._commit(tree, expected=expected, operation=operation, message=message, new_edits=edits,
                                base_hashes=hashes, embeddings=embeddings, conflicts=conflicts)

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
            self.edits(tree)  # every edit exists
            return self._commit(tree, expected=expected_head, operation=operation, message=message, parents=parents,
                                conflicts=conflicts)

    def import_delta(self, delta: str | Path | Delta, *, message: str, name: str | None = None) -> str:
        """Validate a delta file (or object) against the base and commit it as one edit."""
        from .model.delta import Delta  # torch: only commands that read deltas pay for it

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
            head = self.head()
            tree = self.commit_tree(head)
            if kind == "edit":
                if oid not in tree:
                    raise NotInTreeError(f"edit {oid[:12]} is not in the current tree")
                label = self.edit(oid).name or oid[:12]
                return self._commit(minus(tree, [oid]), expected=head, operation="revert",
                                    message=message or f"Revert edit {label}")
            commit = self.commit(oid)
            before = self.commit_tree(commit.parents[0]) if commit.parents else []
            after = self.commit_tree(oid)
            remove = (set(after) - set(before)) & set(tree)
            readd = minus(minus(before, after), tree)
            if not remove and not readd:
                raise NotInTreeError(f"the changes of commit {oid[:12]} are not in the current tree")
            default = f'Revert "{commit.message.splitlines()[0] if commit.message else oid[:12]}"'
            return self._commit(reinsert(minus(tree, remove), readd, before), expected=head, operation="revert",
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
        expected: str,
        operation: str,
        message: str,
        new_edits: Sequence[Edit] = (),
        parents: Sequence[str] | None = None,
        base_hashes: Sequence[dict[str, str]] = (),
        embeddings: Sequence[dict[str, Any]] = (),
        conflicts: Sequence[tuple[str, dict[str, Any]]] = (),
    ) -> str:
        """Write one commit in one transaction, with the new edits' embedding rows and the conflicts
        (edit id, :meth:`Conflict.to_json`) it is made despite, and move HEAD from ``expected`` to it by
        compare-and-swap (:class:`HeadMovedError`, nothing written, if HEAD holds another commit); the
        caller holds the writer lock. Then the head-moved hooks run."""
        commit = Commit(
            self.base_fingerprint, tuple(parents or [expected]), tree_id(tree), operation, message, author(), now()
        )
        with self.db.atomic():
            for edit in new_edits:
                self.db["edits"].insert(edit.row(), ignore=True)
            self.db["base_tensors"].insert_all(base_hashes, ignore=True)
            self.db["trees"].insert({"id": commit.tree, "edits": json.dumps(tree), "size": len(tree)}, ignore=True)
            self.db["commits"].insert(commit.row())
            self.db["embeddings"].insert_all(embeddings, replace=True)
            self.db["conflicts"].insert_all([conflict_row(commit.id, e, c) for e, c in conflicts])
            self._move_head(expected, commit.id)
        log.info("commit %s (%s, %d edits)", commit.id[:12], operation, len(tree))
        self._after_move(tree)
        return commit.id

    def _after_move(self, tree: list[str]) -> None:
        """Run the head-moved hooks (:func:`on_head_moved`) with HEAD's new tree."""
        for hook in _head_moved:
            try:
                hook(self, list(tree))
            except Exception as exc:  # noqa: BLE001 (HEAD has moved; derived state must not undo it)
                log.warning("%s after HEAD moved failed (%s); derived state catches up later", hook.__qualname__, exc)

    # ----------------------------------------------------------------- settings and cache

    def config(self, key: str) -> str:
        """The value of setting ``key`` (see :mod:`editstore.core.config`)."""
        row = self.db.execute("SELECT value FROM meta WHERE key = ?", [f"config.{key}"]).fetchone()
        return check_setting(key, row[0]) if row else default(key)

    def set_config(self, key: str, value: str) -> str:
        """Set ``key`` to ``value`` (validated); returns the stored value."""
        value = check_setting(key, value)
        with self.locked(), self.db.atomic():
            self.db["meta"].insert({"key": f"config.{key}", "value": value}, replace=True)
        return value
