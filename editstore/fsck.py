"""Integrity check (``fsck``) and garbage collection (``gc``).

``fsck`` re-hashes every object, re-derives every commit, tree and edit id,
resolves every ref and tree entry, and reports faults (errors) and leftovers
(warnings: unreferenced objects, temporary files of interrupted writes).
``gc`` deletes what no ref reaches: commits, trees and edits rows in one
transaction, then their objects.
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import dataclass, field

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load

from .compose.cache import TrimReport
from .compose.checkout import composed_cache
from .core.hashing import sha256_bytes
from .core.records import Commit, Edit, tree_id
from .core.refs import HEADS, REMOTES, TAGS
from .core.revisions import ref_name_problem
from .errors import BaseModelError, CorruptObjectError, InvalidDeltaError
from .model.delta import SUPPORTED_DTYPES, Delta
from .moments import stats_rows
from .store import Store

log = logging.getLogger(__name__)


@dataclass
class FsckReport:
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    objects: int = 0
    commits: int = 0
    edits: int = 0

    @property
    def ok(self) -> bool:
        return not self.errors


@dataclass
class GcReport:
    commits: list[str] = field(default_factory=list)
    edits: list[str] = field(default_factory=list)
    objects: list[str] = field(default_factory=list)
    temporaries: list[str] = field(default_factory=list)
    dry_run: bool = False
    cache: TrimReport | None = None  # None on a dry run


def referenced_objects(store: Store) -> set[str]:
    """Object ids that some metadata row points at."""
    edits = {row[0] for row in store.db.execute("SELECT delta FROM edits")}
    return edits | kept_objects(store)


def kept_objects(store: Store) -> set[str]:
    """Objects that live outside the history and gc keeps: statistics and trained editors."""
    return stats_objects(store) | {row[0] for row in store.db.execute("SELECT id FROM editors")}


def stats_objects(store: Store) -> set[str]:
    """Objects holding second-moment statistics (gc keeps them; they belong to no commit)."""
    return {row[0] for row in store.db.execute("SELECT object FROM stats")}


def fsck(store: Store) -> FsckReport:
    """Check every object, record and ref; never modifies the store.

    Holds the writer lock, so objects and rows are seen in one consistent state.
    """
    with store.locked():
        return _fsck(store)


def _fsck(store: Store) -> FsckReport:
    report = FsckReport()
    on_disk = set()
    for oid in store.objects:
        on_disk.add(oid)
        report.objects += 1
        if sha256_bytes(store.objects.path(oid).read_bytes()) != oid:
            report.errors.append(f"object {oid} is corrupt (content hash mismatch)")
    _check_edits(store, report, on_disk)
    _check_stats(store, report, on_disk)
    _check_commits(store, report)
    _check_refs(store, report)
    for oid in sorted(on_disk - referenced_objects(store)):
        report.warnings.append(f"object {oid} is not referenced (run `editstore gc`)")
    for tmp in store.objects.temporaries():
        report.warnings.append(f"temporary file {tmp.name} left by an interrupted write (run `editstore gc`)")
    return report


def _check_edits(store: Store, report: FsckReport, on_disk: set[str]) -> None:
    for row in store.db["edits"].rows:
        report.edits += 1
        edit = Edit.from_row(row)
        if edit.id != row["id"]:
            report.errors.append(f"edit {row['id']} does not hash to its id")
        if edit.delta not in on_disk:
            report.errors.append(f"edit {row['id'][:12]}: delta object {edit.delta} is missing")
            continue
        try:  # parsed as an untrusted file: an object an older editstore accepted must still be usable
            delta = Delta.from_bytes(store.objects.read(edit.delta, verify=False), source=f"object {edit.delta}")
            delta.check_fits(store.base)
        except (CorruptObjectError, InvalidDeltaError) as exc:
            report.errors.append(f"edit {row['id'][:12]}: {exc}")
            continue
        if delta.params != list(edit.params):
            report.errors.append(f"edit {row['id'][:12]}: its delta touches {delta.params}, the record says {list(edit.params)}")


def _check_stats(store: Store, report: FsckReport, on_disk: set[str]) -> None:
    """Each statistics object holds one finite, square float Σ of its module's input width."""
    for row in stats_rows(store):
        if row.object not in on_disk:
            report.errors.append(f"stats of {row.module}: object {row.object} is missing")
            continue
        try:
            sigma = st_load(store.objects.read(row.object, verify=False)).get("sigma")
            d_in = store.base.linear_shape(f"{row.module}.weight")[1]
        except (CorruptObjectError, SafetensorError, BaseModelError, KeyError, ValueError) as exc:  # KeyError: a dtype torch cannot name
            report.errors.append(f"stats of {row.module}: object {row.object[:12]} cannot be used: {exc}")
            continue
        usable = sigma is not None and sigma.dtype in SUPPORTED_DTYPES and tuple(sigma.shape) == (d_in, d_in)
        if not usable or not torch.isfinite(sigma).all():
            report.errors.append(f"stats of {row.module}: object {row.object[:12]} is not a finite ({d_in}, {d_in}) float Σ")


def _check_commits(store: Store, report: FsckReport) -> None:
    edit_ids = {row[0] for row in store.db.execute("SELECT id FROM edits")}
    commit_ids = {row[0] for row in store.db.execute("SELECT id FROM commits")}
    trees = {row[0]: json.loads(row[1]) for row in store.db.execute("SELECT id, edits FROM trees")}
    for tid, edits in trees.items():
        if tree_id(edits) != tid:
            report.errors.append(f"tree {tid[:12]} does not hash to its id")
        for e in edits:
            if e not in edit_ids:
                report.errors.append(f"tree {tid[:12]} names edit {e[:12]}, which does not exist")
    for row in store.db["commits"].rows:
        report.commits += 1
        commit = Commit.from_row(row)
        if commit.id != row["id"]:
            report.errors.append(f"commit {row['id']} does not hash to its id")
        if commit.tree not in trees:
            report.errors.append(f"commit {row['id'][:12]}: tree {commit.tree[:12]} is missing")
        for parent in commit.parents:
            if parent not in commit_ids:
                report.errors.append(f"commit {row['id'][:12]}: parent {parent[:12]} is missing")


def _check_refs(store: Store, report: FsckReport) -> None:
    commit_ids = {row[0] for row in store.db.execute("SELECT id FROM commits")}
    refs = {row["name"]: row for row in store.db["refs"].rows}
    head = refs.get("HEAD")
    if head is None:
        report.errors.append("HEAD is missing")
    elif head["symbolic"] and head["symbolic"] not in refs:
        report.errors.append(f"HEAD points at {head['symbolic']}, which does not exist")
    for name, row in refs.items():
        if row["target"] is not None and row["target"] not in commit_ids:
            report.errors.append(f"ref {name} points at missing commit {row['target'][:12]}")
        short = name.removeprefix(HEADS).removeprefix(TAGS).removeprefix(REMOTES)
        problem = "not a branch, tag or remote-tracking branch" if short == name else ref_name_problem(short)
        if name != "HEAD" and problem:
            report.warnings.append(f"ref {name!r} has a name editstore no longer accepts ({problem}); "
                                   "give its commit a valid name and delete this ref")


def reachable_commits(store: Store) -> set[str]:
    """Every commit some ref reaches through parents."""
    frontier = [row[0] for row in store.db.execute("SELECT target FROM refs WHERE target IS NOT NULL")]
    seen: set[str] = set()
    while frontier:
        cid = frontier.pop()
        if cid in seen:
            continue
        seen.add(cid)
        frontier.extend(store.commit(cid).parents)
    return seen


def gc(store: Store, *, dry_run: bool = False) -> GcReport:
    """Delete unreachable commits, trees, edits and objects (and temporary files); trim the composed cache."""
    report = GcReport(dry_run=dry_run)
    with store.locked():
        live = reachable_commits(store)
        all_commits = [row[0] for row in store.db.execute("SELECT id FROM commits")]
        report.commits = sorted(set(all_commits) - live)
        live_trees = {store.commit(c).tree for c in live}
        live_edits = {e for t in live_trees for e in store.tree_edits(t)}
        report.edits = sorted({row[0] for row in store.db.execute("SELECT id FROM edits")} - live_edits)
        live_objects = {store.edit(e).delta for e in live_edits} | kept_objects(store)
        report.objects = sorted(set(store.objects) - live_objects)
        report.temporaries = [p.name for p in store.objects.temporaries()]
        if dry_run:
            return report
        with store.db.atomic():
            for cid in report.commits:
                store.db["commits"].delete(cid)
            for eid in report.edits:
                store.db["edits"].delete(eid)
            for (tid,) in store.db.execute("SELECT id FROM trees").fetchall():
                if tid not in live_trees:
                    store.db["trees"].delete(tid)
            for cid in report.commits:
                store.db.execute("DELETE FROM evaluations WHERE commit_id = ?", [cid])
                store.db.execute("DELETE FROM conflicts WHERE commit_id = ?", [cid])
            for eid in report.edits:
                store.db.execute("DELETE FROM embeddings WHERE edit = ?", [eid])
        for oid in report.objects:
            store.objects.delete(oid)
        for tmp in store.objects.temporaries():
            tmp.unlink(missing_ok=True)
        report.cache = composed_cache(store).trim()
    log.info("gc removed %d commits, %d edits, %d objects", len(report.commits), len(report.edits), len(report.objects))
    return report


def rebuild_derived(store: Store, *, device: str = "auto") -> int:
    """Delete the derived state (the composed-parameter cache, the conflict index) and build the conflict
    index again from SQLite and the objects; returns the number of edits it indexes. Run it on a store
    that :func:`fsck` passes."""
    from .compose.sequential import resolve_device
    from .conflicts.checks import rebuild_index

    with store.locked():
        shutil.rmtree(composed_cache(store).root, ignore_errors=True)
        return len(rebuild_index(store, device=resolve_device(device)).ids)
