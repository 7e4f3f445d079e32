"""The SQLite metadata database (through sqlite-utils, WAL mode).

Tables: ``meta`` (format version), ``bases``, ``base_tensors`` (content hashes of
the base tensors any delta touches), ``edits``, ``trees``, ``commits``, ``refs``, ``evaluations``
(metrics of a version, see :mod:`editstore.behavior`), ``stats`` (second-moment
objects, see :mod:`editstore.moments`), ``embeddings`` (prompt embeddings of edits,
derived, see :mod:`editstore.conflicts.index`), ``conflicts`` (conflicts committed with
``--force`` or reported as warnings, see :mod:`editstore.conflicts.detect`) and ``editors``
(trained MEND editors, see :mod:`editstore.editors`).
Every user operation writes inside one ``db.atomic()`` transaction.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import sqlite_utils

from ..errors import StoreFormatError
from .records import Commit, author, now, tree_id
from .refs import DEFAULT_BRANCH, HEAD, HEADS

CORE_TABLES = ("bases", "base_tensors", "edits", "trees", "commits", "refs")  # what version 1 already had
FORMAT_VERSION = 4  # 2: stats (an editstore that does not know them would gc their objects); 3: conflicts; 4: editors

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS bases (
    fingerprint TEXT PRIMARY KEY, path TEXT NOT NULL, config TEXT NOT NULL, created TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS base_tensors (
    base TEXT NOT NULL, name TEXT NOT NULL, sha256 TEXT NOT NULL, PRIMARY KEY (base, name));
CREATE TABLE IF NOT EXISTS edits (
    id TEXT PRIMARY KEY, base TEXT NOT NULL, name TEXT, method TEXT NOT NULL, request TEXT, hparams TEXT,
    delta TEXT NOT NULL, params TEXT NOT NULL, rank INTEGER NOT NULL, info TEXT NOT NULL,
    author TEXT NOT NULL, time TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS trees (id TEXT PRIMARY KEY, edits TEXT NOT NULL, size INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS commits (
    id TEXT PRIMARY KEY, base TEXT NOT NULL, parents TEXT NOT NULL, tree TEXT NOT NULL, operation TEXT NOT NULL,
    message TEXT NOT NULL, author TEXT NOT NULL, time TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS refs (name TEXT PRIMARY KEY, target TEXT, symbolic TEXT);
CREATE TABLE IF NOT EXISTS evaluations (
    id INTEGER PRIMARY KEY, commit_id TEXT NOT NULL, requests TEXT NOT NULL, n_requests INTEGER NOT NULL,
    metrics TEXT NOT NULL, time TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS edits_delta ON edits (delta);
CREATE TABLE IF NOT EXISTS stats (
    base TEXT NOT NULL, module TEXT NOT NULL, corpus TEXT NOT NULL, samples INTEGER NOT NULL,
    object TEXT NOT NULL, count INTEGER NOT NULL, source TEXT NOT NULL, created TEXT NOT NULL,
    PRIMARY KEY (base, module, corpus, samples));
CREATE TABLE IF NOT EXISTS embeddings (
    edit TEXT NOT NULL, backend TEXT NOT NULL, vector BLOB NOT NULL, PRIMARY KEY (edit, backend));
CREATE TABLE IF NOT EXISTS editors (
    id TEXT PRIMARY KEY, base TEXT NOT NULL, method TEXT NOT NULL, modules TEXT NOT NULL, hparams TEXT NOT NULL,
    metrics TEXT NOT NULL, created TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS conflicts (
    id INTEGER PRIMARY KEY, commit_id TEXT NOT NULL, edit TEXT, other TEXT, kind TEXT NOT NULL, score REAL NOT NULL,
    param TEXT, detail TEXT NOT NULL);
"""


def connect(path: Path) -> sqlite_utils.Database:
    """Open the store database with a busy timeout (WAL mode is stored in the file by :func:`create`)."""
    db = sqlite_utils.Database(path)
    db.execute("PRAGMA busy_timeout = 30000")
    return db


def create(path: Path) -> sqlite_utils.Database:
    """Create the tables of a new store and stamp the format version."""
    db = connect(path)
    db.enable_wal()
    db.conn.executescript(SCHEMA)
    db.table("meta").insert({"key": "format_version", "value": str(FORMAT_VERSION)}, replace=True)
    return db


def check_format(db: sqlite_utils.Database, path: Path) -> None:
    """Refuse stores written by a newer (or unknown) format version."""
    try:
        row = db.execute("SELECT value FROM meta WHERE key = 'format_version'").fetchone()
    except Exception as exc:  # a file that is not our database at all
        raise StoreFormatError(f"{path} is not an editstore database ({exc})") from None
    version = int(row[0]) if row else None
    if version is None or version > FORMAT_VERSION:
        raise StoreFormatError(
            f"the store at {path.parent} has format version {version}; this editstore reads version ≤ {FORMAT_VERSION}. "
            "Upgrade editstore."
        )
    missing = [t for t in CORE_TABLES if not db[t].exists()]
    if missing or not db.execute("SELECT 1 FROM bases").fetchone() or not db.execute(
        "SELECT 1 FROM refs WHERE name = 'HEAD'"
    ).fetchone():
        what = f"it lacks the table(s) {', '.join(missing)}" if missing else "it has no base or no HEAD"
        raise StoreFormatError(f"{path} is not an editstore database ({what})")
    if version < FORMAT_VERSION:  # every upgrade so far only adds tables: one transaction adds them
        stamp = f"INSERT OR REPLACE INTO meta (key, value) VALUES ('format_version', '{FORMAT_VERSION}');"
        db.conn.executescript(f"BEGIN IMMEDIATE;\n{SCHEMA}\n{stamp}\nCOMMIT;")


def create_store(path: Path, *, base: str, base_path: str, config: dict[str, Any], meta: dict[str, Any]) -> None:
    """Write a new store database at ``path``: the tables, the base row (fingerprint ``base``, its directory
    ``base_path`` and ``config``), the empty root commit, ``main``, ``HEAD`` and the ``meta`` entries (JSON
    values). It is built beside ``path`` and renamed into place: ``path`` is either absent or complete."""
    staging = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    staging.unlink(missing_ok=True)
    db = create(staging)
    with db.atomic():
        db.table("bases").insert({"fingerprint": base, "path": base_path, "config": json.dumps(config), "created": now()})
        root = Commit(base, (), tree_id([]), "init", "init", author(), now())
        db.table("trees").insert({"id": root.tree, "edits": "[]", "size": 0}, ignore=True)
        db.table("commits").insert(root.row())
        db.table("refs").insert({"name": HEADS + DEFAULT_BRANCH, "target": root.id, "symbolic": None})
        db.table("refs").insert({"name": HEAD, "target": None, "symbolic": HEADS + DEFAULT_BRANCH})
        db.table("meta").insert_all([{"key": k, "value": json.dumps(v)} for k, v in meta.items()])
    db.close()
    os.replace(staging, path)
