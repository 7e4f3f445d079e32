"""Remotes: clone, fetch, pull and push a store through object storage or a shared directory.

The remote holds what the store holds, content-addressed and immutable, plus refs::

    editstore.json            the format and the base's fingerprint (written once)
    objects/ab/cdef...        blobs: deltas, statistics, editors (and, with --with-base, the base's files)
    edits/ID.json             edit records; ID is the sha256 of the canonical record
    trees/ID.json             a version's ordered edit ids; ID is their tree id
    commits/ID.json           commit records
    stats/OBJECT.json         what a statistics object is of (module, corpus, samples, count)
    editors/OBJECT.json       a trained editor's row
    tensors/PARAM.json        the sha256 of a base tensor that some delta touches
    base/FINGERPRINT.json     with --with-base: the base's files, name -> object
    refs/heads/NAME           {"target": COMMIT}; refs/tags/NAME likewise

Everything but the refs is written create-only. A push uploads objects, then records, then moves
the branch by compare-and-swap on the version it read (S3 ``If-Match``), so a remote ref never
points at anything missing, whatever is interrupted, and of concurrent pushes to one branch
exactly one wins; the others are told to fetch first. Everything read from a remote is verified
(objects by their sha256, records by their id) before it enters the local store.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..core.hashing import HEX_ID_LENGTH, canonical_json, is_hex, sha256_bytes
from ..core.records import Commit, Edit, tree_id
from ..core.refs import HEADS, REMOTES, TAGS
from ..core.revisions import check_ref_name
from ..errors import CorruptObjectError, NonFastForwardError, RefError, RemoteError
from ..store import Store
from .backends import Backend, directory_of, open_backend

log = logging.getLogger(__name__)

FORMAT = 1
ProgressFactory = Callable[[str, int], Callable[[int], None]]  # (what, total) -> advance(n)
WORKERS = 16  # transfers in flight at once


# ---------------------------------------------------------------------- remotes of a store


def _key(name: str) -> str:
    return f"remote.{name}"


def remotes(store: Store) -> dict[str, str]:
    """Remote name -> URL."""
    rows = store.db.execute("SELECT key, value FROM meta WHERE key LIKE 'remote.%' ORDER BY key")
    return {key.removeprefix("remote."): json.loads(value)["url"] for key, value in rows.fetchall()}


def add_remote(store: Store, name: str, url: str) -> None:
    """Register remote ``name`` at ``url`` (``s3://BUCKET/PREFIX``, ``file:///PATH`` or a directory)."""
    check_ref_name(name)
    if "/" in name:
        raise RefError(f"remote name {name!r} may not contain '/'")
    directory = directory_of(url)  # an s3:// URL is not contacted until it is used, as git does
    if directory is not None and not directory.is_dir():
        raise RemoteError(f"remote {url}: {directory} is not a directory (create it first)")
    if directory is not None:
        url = directory.resolve().as_uri()  # a relative path means where it was typed, not where the store is
    with store.locked(), store.db.atomic():
        if store.db.execute("SELECT 1 FROM meta WHERE key = ?", [_key(name)]).fetchone():
            raise RefError(f"remote {name!r} already exists")
        store.db.table("meta").insert({"key": _key(name), "value": json.dumps({"url": url})})


def remove_remote(store: Store, name: str) -> None:
    """Forget remote ``name`` and its remote-tracking refs."""
    url_of(store, name)
    with store.locked(), store.db.atomic():
        store.db.execute("DELETE FROM meta WHERE key = ?", [_key(name)])
        store.db.execute("DELETE FROM refs WHERE substr(name, 1, ?) = ?", [len(REMOTES + name) + 1,
                                                                          f"{REMOTES}{name}/"])


def url_of(store: Store, name: str) -> str:
    """The URL of remote ``name``; :class:`RemoteError` naming the known ones otherwise."""
    known = remotes(store)
    if name not in known:
        raise RemoteError(f"no remote named {name!r}" + (f"; known: {', '.join(known)}" if known else
                                                         "; add one with `editstore remote add NAME URL`"))
    return known[name]


def backend_of(store: Store, name: str) -> Backend:
    endpoint = store.config("remote.endpoint_url") or None
    return open_backend(url_of(store, name), endpoint=endpoint)


# ---------------------------------------------------------------------- paths on a remote


def object_path(oid: str) -> str:
    return f"objects/{oid[:2]}/{oid[2:]}"


def record_path(kind: str, rid: str) -> str:
    return f"{kind}/{rid}.json"


def _ids(backend: Backend, kind: str) -> set[str]:
    """The ids of the records of ``kind`` on the remote."""
    return {path.rsplit("/", 1)[-1].removesuffix(".json") for path in backend.list(f"{kind}/")}


def _objects(backend: Backend) -> set[str]:
    return {"".join(path.split("/")[-2:]) for path in backend.list("objects/")}


def _checked_id(value: Any, what: str) -> str:
    """``value`` if it is a full id (64 hex digits): ids from a remote become paths, so nothing else passes."""
    if not (isinstance(value, str) and len(value) == HEX_ID_LENGTH and is_hex(value)):
        raise CorruptObjectError(f"the remote names {what} {str(value)[:80]!r}, which is not an id")
    return value


def _ref_name(path: str, prefix: str) -> str:
    """The name of the remote ref at ``path``, which must be one editstore accepts."""
    from ..errors import EditStoreError

    name = path.removeprefix(prefix)
    try:
        check_ref_name(name)
    except EditStoreError:
        raise CorruptObjectError(f"the remote has a ref named {name[:80]!r}, which is not a valid name") from None
    return name


def _info(found: Any) -> dict[str, Any]:
    """The remote's ``editstore.json`` ({} when absent); :class:`CorruptObjectError` when it is not one."""
    if found is None:
        return {}
    try:
        info = json.loads(found.data)
        if not isinstance(info, dict):
            raise ValueError
    except ValueError:
        raise CorruptObjectError("the remote's editstore.json is not a JSON object") from None
    if "base" in info:
        _checked_id(info["base"], "a base fingerprint")
    return info


def _ref_target(found: Any) -> str | None:
    if found is None:
        return None
    try:
        target = json.loads(found.data)["target"]
    except (ValueError, KeyError, TypeError):
        raise CorruptObjectError("a ref on the remote is not {\"target\": ID}") from None
    return _checked_id(target, "a ref target")


STATS_COLUMNS: dict[str, type] = {"base": str, "module": str, "corpus": str, "samples": int, "object": str, "count": int, "source": str,
                 "created": str}
EDITOR_COLUMNS: dict[str, type] = {"id": str, "base": str, "method": str, "modules": str, "hparams": str, "metrics": str, "created": str}


def _row(found: Any, columns: dict[str, type], what: str) -> dict[str, Any]:
    """A stats or editor row read from the remote, with exactly the table's columns and types."""
    try:
        row = json.loads(found.data)
    except ValueError:
        row = None
    if not (isinstance(row, dict) and set(row) == set(columns)
            and all(isinstance(row[k], kind) for k, kind in columns.items())):
        raise CorruptObjectError(f"a {what} row on the remote is not one ({', '.join(columns)})")
    _checked_id(row["object" if "object" in row else "id"], f"a {what} object")
    return row


# ---------------------------------------------------------------------- transfers


def _send(backend: Backend, path: str, data: bytes) -> int:
    """Create ``path`` unless it exists; the bytes sent (0 when another push already wrote it)."""
    return len(data) if backend.create(path, data) else 0


def _parallel(fn: Callable[[Any], Any], items: Sequence[Any], what: str, progress: ProgressFactory | None, *,
              workers: int = WORKERS) -> list[Any]:
    """``fn`` over ``items`` on ``workers`` threads, in order, advancing a progress bar named ``what``."""
    if not items:
        return []
    advance = progress(what, len(items)) if progress else None
    out = []
    with ThreadPoolExecutor(workers) as pool:
        for result in pool.map(fn, items):
            out.append(result)
            if advance:
                advance(1)
    return out


@dataclass
class Summary:
    """What a push or fetch moved: refs (name -> [old, new]), records and objects, bytes."""

    refs: dict[str, list[str | None]] = field(default_factory=dict)
    commits: int = 0
    edits: int = 0
    objects: int = 0
    bytes: int = 0

    def to_json(self) -> dict[str, Any]:
        return {"refs": self.refs, "commits": self.commits, "edits": self.edits, "objects": self.objects,
                "bytes": self.bytes}


def _reachable(store: Store, commit: str) -> list[str]:
    """Commits reachable from ``commit``, newest first."""
    return [cid for cid, _ in store.log(commit)]


def _check_base(store: Store, backend: Backend) -> None:
    """The remote's base is this store's (written by the first push)."""
    info = {"format": FORMAT, "base": store.base_fingerprint}
    if backend.create("editstore.json", canonical_json(info).encode()):
        return
    remote = _info(backend.get("editstore.json"))
    if remote.get("base") != store.base_fingerprint:
        raise RemoteError(f"{backend.url} holds a store of another base ({str(remote.get('base'))[:12]}), "
                          f"not this one's ({store.base_fingerprint[:12]})")


def push(store: Store, remote: str, branch: str | None = None, *, force: bool = False, with_base: bool = False,
         progress: ProgressFactory | None = None) -> Summary:
    """Send branch ``branch`` (default: the current one) to ``remote`` and move the remote's branch to it.

    Refused (:class:`NonFastForwardError`) unless the remote's branch is an ancestor of ours, or when
    another push moves it first; ``force`` replaces it anyway (still by compare-and-swap)."""
    backend = backend_of(store, remote)
    branch = branch or store.current_branch()
    if branch is None:
        raise RefError("HEAD is detached: name the branch to push")
    ref = store.refs.get(HEADS + branch)
    if ref is None or ref.target is None:
        raise RefError(f"no branch named {branch!r}")
    ours = ref.target
    _check_base(store, backend)
    found = backend.get(f"refs/heads/{branch}")
    theirs = _ref_target(found)
    summary = Summary()
    mine = _reachable(store, ours)
    if theirs is not None and theirs != ours and not force and theirs not in set(mine):
        raise NonFastForwardError(f"the remote's {branch} has commits this store lacks ({theirs[:12]}): "
                                  f"fetch first (`editstore pull {remote} {branch}`), or push --force")
    summary.commits, summary.edits, summary.objects, summary.bytes = _upload(store, backend, mine, progress)
    if with_base:
        summary.bytes += _upload_base(store, backend, progress)
    body = canonical_json({"target": ours}).encode()
    if theirs != ours and not backend.swap(f"refs/heads/{branch}", body, found.version if found else None):
        raise NonFastForwardError(f"the remote's {branch} moved while pushing: fetch first (`editstore pull "
                                  f"{remote} {branch}`), then push again")
    if theirs != ours:
        summary.refs[f"{HEADS}{branch}"] = [theirs, ours]
    with store.locked(), store.db.atomic():
        store.refs.set(f"{REMOTES}{remote}/{branch}", ours)
    log.info("pushed %s to %s: %d commits, %d objects", branch, remote, summary.commits, summary.objects)
    return summary


def _upload(store: Store, backend: Backend, commits: Sequence[str], progress: ProgressFactory | None
            ) -> tuple[int, int, int, int]:
    """Objects, then edits, trees and commits the remote lacks, for ``commits``; also every statistics
    object and trained editor. Returns (commits, edits, objects, bytes) sent."""
    have_commits = _ids(backend, "commits")
    new_commits = [c for c in commits if c not in have_commits]
    records = {cid: store.commit(cid) for cid in new_commits}
    trees = {c.tree: store.tree_edits(c.tree) for c in records.values()}
    have_edits = _ids(backend, "edits")
    edit_ids = sorted({e for tree in trees.values() for e in tree} - have_edits)
    edits = store.edits(edit_ids)
    stats = [dict(r) for r in store.db["stats"].rows_where("base = ?", [store.base_fingerprint])]
    editors = [dict(r) for r in store.db["editors"].rows_where("base = ?", [store.base_fingerprint])]
    wanted = {e.delta for e in edits.values()} | {r["object"] for r in stats} | {r["id"] for r in editors}
    missing = sorted(wanted - _objects(backend))

    sent = sum(_parallel(lambda o: _send(backend, object_path(o), store.objects.read(o)), missing, "objects",
                         progress))
    params = sorted({p for e in edits.values() for p in e.params})
    hashes = store.base_hashes()
    files: list[tuple[str, Any]] = [(f"tensors/{p}.json", {"sha256": hashes[p]}) for p in params if p in hashes]
    files += [(record_path("stats", r["object"]), r) for r in stats]
    files += [(record_path("editors", r["id"]), r) for r in editors]
    files += [(record_path("edits", e.id), e.record()) for e in edits.values()]
    files += [(record_path("trees", tid), tree) for tid, tree in trees.items()]
    sent += sum(_parallel(lambda f: _send(backend, f[0], canonical_json(f[1]).encode()), files, "records", progress))
    # a commit only after everything it names (parents first, so an interrupted push leaves whole histories)
    for cid in reversed(new_commits):
        sent += _send(backend, record_path("commits", cid), canonical_json(records[cid].record()).encode())
    return len(new_commits), len(edits), len(missing), sent


def _upload_base(store: Store, backend: Backend, progress: ProgressFactory | None) -> int:
    """The base checkpoint's files as objects, and ``base/FINGERPRINT.json`` naming them."""
    root = store.base.path
    files = sorted(p for p in root.rglob("*") if p.is_file())
    manifest: dict[str, str] = {}
    sent = 0
    have = _objects(backend)
    for path in files:
        data = path.read_bytes()
        oid = sha256_bytes(data)
        manifest[path.relative_to(root).as_posix()] = oid
        if oid not in have and backend.create(object_path(oid), data):
            sent += len(data)
    backend.create(f"base/{store.base_fingerprint}.json", canonical_json(manifest).encode())
    return sent


# ---------------------------------------------------------------------- fetch


def _get_verified_record(backend: Backend, kind: str, rid: str) -> tuple[Any, int]:
    """The record ``kind``/``rid`` (a :class:`Commit`, an :class:`Edit` or a tree's edit ids) checked against
    its id, and its size in bytes."""
    found = backend.get(record_path(kind, _checked_id(rid, kind[:-1])))
    if found is None:
        raise CorruptObjectError(f"the remote lacks {kind} {rid[:12]}, which one of its refs reaches")
    try:
        value = json.loads(found.data)
        record = _record(kind, value) if _well_formed(kind, value) else None
        ok = record is not None and (tree_id(record) if isinstance(record, list) else record.id) == rid
    except (ValueError, KeyError, TypeError, AttributeError):
        ok = False
    if not ok:
        raise CorruptObjectError(f"{kind} {rid[:12]} on the remote does not match its id; nothing was fetched")
    return record, len(found.data)


RECORD_TYPES: dict[str, dict[str, Any]] = {
    "commits": {"base": str, "parents": list, "tree": str, "operation": str, "message": str, "author": str, "time": str},
    "edits": {"base": str, "name": (str, type(None)), "method": str, "request": (dict, type(None)),
              "hparams": (dict, type(None)), "delta": str, "params": list, "rank": int, "info": dict, "author": str,
              "time": str},
}


def _well_formed(kind: str, value: Any) -> bool:
    """The record has exactly its fields, of their types, and every id it names is a full id."""
    if kind == "trees":
        return isinstance(value, list) and all(isinstance(e, str) for e in value) and all(
            _checked_id(e, "an edit") for e in value)
    types = RECORD_TYPES[kind]
    if not (isinstance(value, dict) and set(value) == set(types)
            and all(isinstance(value[k], kind_) for k, kind_ in types.items())):
        return False
    ids = value["parents"] + [value["tree"]] if kind == "commits" else [value["delta"]]
    return all(_checked_id(i, "an id") for i in ids) and (
        kind == "commits" or all(isinstance(p, str) for p in value["params"]))


def _record(kind: str, value: Any) -> Commit | Edit | list[str]:
    """The record a well-formed JSON value of ``kind`` describes."""
    if kind == "trees":
        return list(value)
    if kind == "commits":
        return Commit(**{**value, "parents": tuple(value["parents"])})
    return Edit(**{**value, "params": tuple(value["params"])})


def _get_verified_object(backend: Backend, oid: str) -> bytes:
    found = backend.get(object_path(_checked_id(oid, "an object")))
    if found is None:
        raise CorruptObjectError(f"the remote lacks object {oid[:12]}, which one of its records names")
    if sha256_bytes(found.data) != oid:
        raise CorruptObjectError(f"object {oid[:12]} on the remote does not match its sha256; nothing was fetched")
    return found.data


def fetch(store: Store, remote: str, *, progress: ProgressFactory | None = None) -> Summary:
    """Bring the remote's branches and tags here: records and objects this store lacks (verified), then
    ``refs/remotes/REMOTE/BRANCH`` and tags it does not have yet."""
    backend = backend_of(store, remote)
    info = backend.get("editstore.json")
    if info is None:
        return Summary()  # an empty remote: nothing pushed yet
    if _info(info).get("base") != store.base_fingerprint:
        raise RemoteError(f"{backend.url} holds a store of another base; this store's is {store.base_fingerprint[:12]}")
    heads = {_ref_name(p, "refs/heads/"): _ref_target(backend.get(p)) for p in backend.list("refs/heads/")}
    tags = {_ref_name(p, "refs/tags/"): _ref_target(backend.get(p)) for p in backend.list("refs/tags/")}
    known = {row[0] for row in store.db.execute("SELECT id FROM commits")}
    received = 0

    def records(kind: str, ids: Sequence[str], bar: ProgressFactory | None) -> dict[str, Any]:
        nonlocal received
        got = _parallel(lambda r: _get_verified_record(backend, kind, r), ids, kind, bar)
        received += sum(size for _, size in got)
        return {rid: value for rid, (value, _) in zip(ids, got)}

    commits: dict[str, Commit] = {}
    frontier = [t for t in [*heads.values(), *tags.values()] if t and t not in known]
    while frontier:  # walk down from each ref until the commits this store has
        batch = [c for c in dict.fromkeys(frontier) if c not in commits and c not in known]
        found = records("commits", batch, None)
        commits.update(found)
        frontier = [p for c in found.values() for p in c.parents]
    have_trees = {row[0] for row in store.db.execute("SELECT id FROM trees")}
    trees = records("trees", sorted({c.tree for c in commits.values()} - have_trees), None)
    have_edits = {row[0] for row in store.db.execute("SELECT id FROM edits")}
    edits = records("edits", sorted({e for tree in trees.values() for e in tree} - have_edits), progress)
    stats = [_row(f, STATS_COLUMNS, "statistics") for f in map(backend.get, backend.list("stats/")) if f is not None]
    editors = [_row(f, EDITOR_COLUMNS, "editor") for f in map(backend.get, backend.list("editors/")) if f is not None]
    wanted = {e.delta for e in edits.values()} | {r["object"] for r in stats} | {r["id"] for r in editors}
    missing = sorted(o for o in wanted if not store.objects.exists(o))
    blobs = _parallel(lambda o: _get_verified_object(backend, o), missing, "objects", progress)
    _check_deltas(store, edits, dict(zip(missing, blobs)))
    hashes = _tensor_hashes(store, backend, sorted({p for e in edits.values() for p in e.params}))
    summary = Summary(commits=len(commits), edits=len(edits), objects=len(missing),
                      bytes=received + sum(map(len, blobs)))
    with store.locked():
        for data in blobs:
            store.objects.write(data)
        with store.db.atomic():
            store.db.table("base_tensors").insert_all(hashes, ignore=True)
            for edit in edits.values():
                store.db.table("edits").insert(edit.row(), ignore=True)
            for tid, tree in trees.items():
                store.db.table("trees").insert({"id": tid, "edits": json.dumps(tree), "size": len(tree)}, ignore=True)
            for commit in commits.values():
                store.db.table("commits").insert(commit.row(), ignore=True)
            store.db.table("stats").insert_all([r for r in stats if r.get("base") == store.base_fingerprint],
                                               ignore=True)
            store.db.table("editors").insert_all([r for r in editors if r.get("base") == store.base_fingerprint],
                                                 ignore=True)
            for name, target in heads.items():
                if target:
                    old = store.refs.get(f"{REMOTES}{remote}/{name}")
                    store.refs.set(f"{REMOTES}{remote}/{name}", target)
                    if old is None or old.target != target:
                        summary.refs[f"{REMOTES}{remote}/{name}"] = [old.target if old else None, target]
            for name, target in tags.items():
                if target and store.refs.add_if_new(f"{TAGS}{name}", target):
                    summary.refs[f"{TAGS}{name}"] = [None, target]
    log.info("fetched %s: %d commits, %d objects", remote, summary.commits, summary.objects)
    return summary


def _check_deltas(store: Store, edits: dict[str, Edit], blobs: dict[str, bytes]) -> None:
    """Every fetched edit is of this base, its delta object parses in full (schema, finite values), fits the
    base and matches the record's parameters and rank, and its request is a valid edit request."""
    from ..core.schema import validate
    from ..errors import EditStoreError
    from ..model.delta import Delta

    for eid, edit in edits.items():
        if edit.base != store.base_fingerprint:
            raise CorruptObjectError(f"edit {eid[:12]} on the remote is of another base")
        data = blobs.get(edit.delta)
        if data is None:  # an object this store already has: it was checked when it entered
            continue
        try:
            delta = Delta.from_bytes(data, source=f"remote object {edit.delta[:12]}")
            delta.check_fits(store.base)
            if edit.request is not None:
                validate(edit.request, "edit-request", what=f"the request of edit {eid[:12]}")
        except EditStoreError as exc:
            raise CorruptObjectError(f"edit {eid[:12]} on the remote is not usable: {exc}") from None
        if sorted(delta.params) != sorted(edit.params) or delta.rank != edit.rank:
            raise CorruptObjectError(f"edit {eid[:12]} on the remote does not match its delta's parameters or rank")


def _tensor_hashes(store: Store, backend: Backend, params: Iterable[str]) -> list[dict[str, str]]:
    """Rows of ``base_tensors`` for ``params`` this store has no hash of, checked against the remote's."""
    known = store.base_hashes()
    rows = []
    for param in params:
        if param in known:
            continue
        ours = store.base.tensor_hash(param)
        found = backend.get(f"tensors/{param}.json")
        try:
            theirs = json.loads(found.data).get("sha256") if found else None
        except (ValueError, AttributeError):
            raise CorruptObjectError(f"tensors/{param}.json on the remote is not a hash") from None
        if theirs is not None and theirs != ours:
            raise RemoteError(f"base tensor {param} differs from the one the remote's edits were made on: "
                              "this store's base has the same layout but other weights")
        rows.append({"base": store.base_fingerprint, "name": param, "sha256": ours})
    return rows


# ---------------------------------------------------------------------- pull and clone


@dataclass(frozen=True)
class PullResult:
    fetched: Summary
    how: str  # "up to date", "fast-forward" or "merge"
    commit: str


def pull(store: Store, remote: str, branch: str | None = None, *, resolution: str | None = None,
         progress: ProgressFactory | None = None) -> PullResult:
    """Fetch, then bring ``remote``'s ``branch`` (default: the current branch's name) into the current
    branch: a fast-forward when ours is an ancestor of theirs, else the three-way merge (its conflicts
    refuse the pull, exit 3, unless ``resolution``)."""
    from ..merge import ancestors, merge

    fetched = fetch(store, remote, progress=progress)
    branch = branch or store.current_branch()
    if branch is None:
        raise RefError("HEAD is detached: name the branch to pull")
    tracking = store.refs.get(f"{REMOTES}{remote}/{branch}")
    if tracking is None or tracking.target is None:
        raise RefError(f"the remote {remote} has no branch {branch!r}")
    ours, theirs = store.head(), tracking.target
    if theirs in ancestors(store, ours):
        return PullResult(fetched, "up to date", ours)
    if ours in ancestors(store, theirs):
        store.update_head(ours, theirs)
        return PullResult(fetched, "fast-forward", theirs)
    result = merge(store, theirs, resolution=resolution, message=f"Merge {remote}/{branch}")
    return PullResult(fetched, "merge", result.commit)


def clone(url: str, directory: str | Path, *, base: str | Path | None = None, endpoint: str | None = None,
          progress: ProgressFactory | None = None) -> Store:
    """A new store in ``directory/.editstore`` with ``url`` as its remote ``origin``, holding the remote's
    history, on the branch the remote's ``main`` is on. ``base``: a local copy of the base checkpoint
    (its fingerprint must be the remote's); without it, the base the remote holds (pushed with
    ``--with-base``) is downloaded into ``directory/base``."""
    from ..core.paths import STORE_DIRNAME
    from ..model.checkpoint import Checkpoint

    backend = open_backend(url, endpoint=endpoint)
    info = backend.get("editstore.json")
    if info is None:
        raise RemoteError(f"{url} holds no editstore history (nothing was pushed there)")
    fingerprint = _info(info).get("base")
    if not isinstance(fingerprint, str):
        raise CorruptObjectError(f"{url}: editstore.json names no base")
    target = Path(directory)
    if (target / STORE_DIRNAME).exists() or (base is None and (target / "base").exists()):
        raise RemoteError(f"{target} already holds a store or a base: clone into a new directory")
    made = [p for p in (target / STORE_DIRNAME, target / "base") if not p.exists()]
    try:  # a clone that fails leaves nothing behind
        if base is None:
            base = _download_base(backend, fingerprint, target / "base", progress)
        elif Checkpoint(base).fingerprint != fingerprint:
            raise RemoteError(f"--base {base} is not the remote's base (fingerprint "
                              f"{Checkpoint(base).fingerprint[:12]}, the remote's {fingerprint[:12]})")
        store = Store.init(base, target / STORE_DIRNAME)
        try:
            if endpoint:
                store.set_config("remote.endpoint_url", endpoint)
            add_remote(store, "origin", url)
            fetch(store, "origin", progress=progress)
            main = store.refs.get(f"{REMOTES}origin/main")
            if main is not None and main.target is not None:
                store.update_head(None, main.target)
        except BaseException:
            store.close()
            raise
    except BaseException:
        for path in made:
            shutil.rmtree(path, ignore_errors=True)
        raise
    return store


def _safe_file_name(name: str) -> bool:
    """A relative path of plain components (no ``..``, ``.``, empty parts or absolute root)."""
    parts = name.split("/")
    return bool(name) and not name.startswith("/") and all(p not in ("", ".", "..") and "\\" not in p for p in parts)


def _download_base(backend: Backend, fingerprint: str, out: Path, progress: ProgressFactory | None) -> Path:
    found = backend.get(f"base/{fingerprint}.json")
    if found is None:
        raise RemoteError(f"{backend.url} does not hold its base checkpoint: give --base DIR (a local copy), or "
                          "push it once with `editstore push --with-base`")
    try:
        manifest = json.loads(found.data)
    except ValueError:
        manifest = None
    if not isinstance(manifest, dict) or not all(
            isinstance(n, str) and isinstance(o, str) and _safe_file_name(n) for n, o in manifest.items()):
        raise CorruptObjectError(f"base/{fingerprint}.json on the remote is not a manifest of file names")
    def download(name: str) -> int:  # written as each arrives: at most two files in memory
        data = _get_verified_object(backend, manifest[name])
        path = out.joinpath(*name.split("/"))
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        return len(data)

    _parallel(download, sorted(manifest), "base files", progress, workers=2)
    return out
