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
from .core.lock import writer_lock
from .core.objects import ObjectStore
from .core.paths import DB_FILE, STORE_DIRNAME, find_store, make_dir
from .core.records import Commit, Edit, author, conflict_row, embedding_row, now, tree_id
from .core.refs import HEAD, Refs
from .core.revisions import lookup, parse_revision
from .core.schema import validate
from .core.trees import minus
from .errors import (
    BaseModelError,
    HeadMovedError,
    NotInTreeError,
    RevisionError,
    StoreExistsError,
    UnknownRevisionError,
)

if TYPE_CHECKING:
    import torch

    from .core.requests import EditRequest
    from .model.checkpoint import Checkpoint
    from .model.delta import Delta

log = logging.getLogger(__name__)


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


def _orientations_key(checkpoint: Checkpoint) -> str:
    return f"orientations.{checkpoint.fingerprint}"


@dataclass(frozen=True)
class NewEdit:
    """What a caller hands to :meth:`Store.record_edits`: a delta and how it was made."""

    delta: Delta
    method: str
    name: str | None = None
    request: EditRequest | None = None
    hparams: dict[str, Any] | None = None
    info: dict[str, Any] = field(default_factory=dict)
    embedding: tuple[str, torch.Tensor] | None = None  # (backend, prompt embedding), see editstore.conflicts.index
    conflicts: Sequence[dict[str, Any]] = ()  # Conflict.to_json() of what this edit was committed despite


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
    def init(cls, base: str | Path, store: str | Path | None = None, *, download: bool = False) -> Store:
        """Register the checkpoint ``base`` and create a store with an empty ``main`` branch.

        ``base``: a Hugging Face directory, or a Hub id ``org/name[@revision]`` found in the local Hugging
        Face cache (fetched first with ``download``; see :mod:`editstore.model.hub`). The store goes to
        ``store``, else ``./.editstore``.
        """
        from .model import hub
        from .model.checkpoint import Checkpoint  # torch: only commands that read the base pay for it

        resolved = hub.resolve(str(base), download=download) if hub.is_hub_id(str(base)) else None
        if resolved is not None:
            base = resolved.path

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
            meta = {_orientations_key(checkpoint): checkpoint.orientations}
            if resolved is not None:
                meta["base.hub"] = {"id": resolved.repo_id, "revision": resolved.revision, "commit": resolved.commit}
            dbmod.create_store(root / DB_FILE, base=checkpoint.fingerprint, base_path=str(checkpoint.path),
                               config=checkpoint.config, meta=meta)
        log.info("initialised store at %s for base %s", root, checkpoint.path)
        return cls(root)

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
        kind, oid = lookup(self.db, self.refs, parsed.name)
        if parsed.back and kind != "commit":
            raise RevisionError(f"{rev}: ~ and ^ apply to commits, and {parsed.name} names an {kind}")
        for step in range(parsed.back):
            parents = self.commit(oid).parents
            if not parents:
                raise UnknownRevisionError(f"{rev} goes back {parsed.back} commit(s), but history has only {step}")
            oid = parents[0]
        return kind, oid

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

    def edits(self, edit_ids: Sequence[str]) -> dict[str, Edit]:
        """The records of several edits, by id, in one query; :class:`UnknownRevisionError` names a missing one."""
        rows = self.db.query("SELECT e.* FROM json_each(?) AS t JOIN edits AS e ON e.id = t.value",
                             [json.dumps(list(edit_ids))])
        out = {row["id"]: Edit.from_row(row) for row in rows}
        missing = [e for e in edit_ids if e not in out]
        if missing:
            raise UnknownRevisionError(f"no edit {missing[0]}")
        return out

    def load_delta(self, edit_id: str, *, record: Edit | None = None) -> Delta:
        """The delta object of an edit, hash-verified."""
        from .model.delta import Delta  # torch: only commands that read deltas pay for it

        oid = (record or self.edit(edit_id)).delta
        return Delta.from_bytes(self.objects.read(oid), source=f"object {oid}", trusted=True)

    def log(self, rev: str = "HEAD", *, limit: int | None = None) -> list[tuple[str, Commit]]:
        """Commits reachable from ``rev``, newest first (one recursive query)."""
        query = (
            "WITH RECURSIVE reach(id) AS (SELECT ? UNION SELECT p.value FROM reach JOIN commits AS c ON c.id = reach.id,"
            " json_each(c.parents) AS p) SELECT c.* FROM commits AS c JOIN reach ON c.id = reach.id"
            " ORDER BY c.time DESC, c.id LIMIT ?"
        )
        rows = self.db.query(query, [self.resolve(rev), -1 if limit is None else limit])
        return [(row["id"], Commit.from_row(row)) for row in rows]

    def move_head(self, expected: str, commit_id: str) -> None:
        """Point the current branch (or a detached HEAD) at ``commit_id`` if it still holds ``expected``
        (compare-and-swap, inside the caller's transaction); :class:`HeadMovedError` if it moved."""
        if not self.refs.set_if_equals(HEAD, expected, commit_id):
            raise HeadMovedError(f"HEAD moved from {expected[:12]} to {self.head()[:12]}; run it again")

    def update_head(self, expected: str | None, commit_id: str) -> None:
        """Move HEAD to ``commit_id`` on its own (no commit written): under the writer lock, by compare-and-swap
        on ``expected`` (None: whatever HEAD holds once the lock is taken), then the head-moved hooks run."""
        with self.locked():
            with self.db.atomic():
                self.move_head(self.head() if expected is None else expected, commit_id)
            self.head_moved()

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

    def _store_edit(self, item: NewEdit) -> Edit:
        oid = self.objects.write(item.delta.to_bytes())
        return Edit(base=self.base_fingerprint, name=item.name, method=item.method, request=item.request,
                    hparams=item.hparams, delta=oid, params=tuple(item.delta.params), rank=item.delta.rank,
                    info=dict(item.info), author=author(), time=now())

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
                self.db.table("edits").insert(edit.row(), ignore=True)
            self.db.table("base_tensors").insert_all(base_hashes, ignore=True)
            self.db.table("trees").insert({"id": commit.tree, "edits": json.dumps(tree), "size": len(tree)}, ignore=True)
            self.db.table("commits").insert(commit.row())
            self.db.table("embeddings").insert_all(embeddings, replace=True)
            self.db.table("conflicts").insert_all([conflict_row(commit.id, e, c) for e, c in conflicts])
            self.move_head(expected, commit.id)
        log.info("commit %s (%s, %d edits)", commit.id[:12], operation, len(tree))
        self.head_moved(tree)
        return commit.id

    def head_moved(self, tree: Sequence[str] | None = None) -> None:
        """Run the head-moved hooks (:func:`on_head_moved`) with HEAD's tree (``tree`` when the caller has it)."""
        tree = list(self.tree(HEAD) if tree is None else tree)
        for hook in _head_moved:
            try:
                hook(self, tree)
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
            self.db.table("meta").insert({"key": f"config.{key}", "value": value}, replace=True)
        return value
