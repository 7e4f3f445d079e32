"""Refs: branches, tags and HEAD, kept in the ``refs`` table, updated by compare-and-swap.

A ref either points at a commit (``target``) or, like HEAD on a branch, at another ref
(``symbolic``). Every update that moves a ref says which commit it expects the ref to hold
(:meth:`Refs.set_if_equals`, as dulwich's ``RefsContainer.set_if_equals``): a writer that
computed an edit on one version never moves a branch that another writer has moved since. A
remote's refs follow the same contract, with the object store's conditional writes in place of
the SQLite transaction.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import sqlite_utils

HEAD = "HEAD"
HEADS = "refs/heads/"
TAGS = "refs/tags/"
REMOTES = "refs/remotes/"  # REMOTES + "origin/main": where the remote's branch was when last fetched
DEFAULT_BRANCH = "main"


@dataclass(frozen=True)
class Ref:
    """One row of the ``refs`` table: ``target`` for a direct ref, ``symbolic`` for one that names another."""

    name: str
    target: str | None
    symbolic: str | None


class Refs:
    """The refs of one store database. Reads see the database as it is; writes belong inside a transaction
    (``db.atomic()``) that the caller opens while holding the writer lock."""

    def __init__(self, db: sqlite_utils.Database) -> None:
        self.db = db

    def get(self, name: str) -> Ref | None:
        """The ref ``name`` as stored, or None."""
        row = self.db.execute("SELECT name, target, symbolic FROM refs WHERE name = ?", [name]).fetchone()
        return Ref(*row) if row else None

    def follow(self, name: str) -> Ref | None:
        """The direct ref that ``name`` resolves to (through one symbolic step, as HEAD on a branch)."""
        ref = self.get(name)
        return self.get(ref.symbolic) if ref is not None and ref.symbolic else ref

    def head(self) -> str:
        """The commit id HEAD resolves to."""
        ref = self.follow(HEAD)
        assert ref is not None and ref.target is not None, "a store always has HEAD"
        return ref.target

    def current_branch(self) -> str | None:
        """The branch HEAD points at, or None when HEAD is detached."""
        ref = self.get(HEAD)
        return ref.symbolic.removeprefix(HEADS) if ref is not None and ref.symbolic else None

    def under(self, prefix: str) -> list[tuple[str, str]]:
        """(name without ``prefix``, target) of every direct ref whose name starts with ``prefix``, by name."""
        rows = self.db.execute(
            "SELECT name, target FROM refs WHERE substr(name, 1, ?) = ? AND target IS NOT NULL ORDER BY name",
            [len(prefix), prefix],
        )
        return [(name.removeprefix(prefix), target) for name, target in rows.fetchall()]

    # ------------------------------------------------------------------ compare-and-swap writes

    def set_if_equals(self, name: str, old: str | None, new: str) -> bool:
        """Point ``name`` (followed through HEAD's symbolic step) at ``new`` if it now holds ``old``;
        False, and nothing written, if it holds anything else."""
        ref = self.follow(name)
        if ref is None or ref.target != old:
            return False
        cursor = self.db.execute("UPDATE refs SET target = ? WHERE name = ? AND target IS ?", [new, ref.name, old])
        return cursor.rowcount == 1

    def add_if_new(self, name: str, target: str) -> bool:
        """Create the direct ref ``name`` at ``target``; False if a ref of that name exists."""
        cursor = self.db.execute(
            "INSERT INTO refs (name, target, symbolic) VALUES (?, ?, NULL) ON CONFLICT (name) DO NOTHING", [name, target]
        )
        return cursor.rowcount == 1

    def remove_if_equals(self, name: str, old: str | None) -> bool:
        """Delete the direct ref ``name`` if it holds ``old`` (None: whatever it holds)."""
        if old is None:
            cursor = self.db.execute("DELETE FROM refs WHERE name = ? AND symbolic IS NULL", [name])
        else:
            cursor = self.db.execute("DELETE FROM refs WHERE name = ? AND target = ?", [name, old])
        return cursor.rowcount == 1

    def set(self, name: str, target: str) -> None:
        """Point the direct ref ``name`` at ``target`` whatever it held (remote-tracking refs mirror the remote)."""
        self.db.execute(
            "INSERT INTO refs (name, target, symbolic) VALUES (?, ?, NULL) "
            "ON CONFLICT (name) DO UPDATE SET target = excluded.target, symbolic = NULL", [name, target]
        )

    def set_symbolic(self, name: str, other: str) -> None:
        """Make ``name`` (HEAD) point at the ref ``other``."""
        self.db.execute("UPDATE refs SET symbolic = ?, target = NULL WHERE name = ?", [other, name])
