"""Workloads that stress the store's write path, for the crash and concurrency tests and ``benchmarks/crash.py``.

:func:`writer` runs random write operations forever (or ``count`` of them) on a store of
a base that :func:`editstore.model.synthetic.tiny_model` made: imports, reverts, merges, branch
and tag creation, work on a scratch branch that is reset and garbage-collected, settings
and imported statistics. Before each operation it reports ``("op", name)`` and after each
commit on ``main`` ``("commit", id)`` on a :mod:`multiprocessing` connection, so a parent
that SIGKILLs it knows what was interrupted and which commits were acknowledged (they must
survive: ``main`` only moves forward, and gc removes only what the scratch branch dropped).
:func:`reader` checks, while writers run, that every version it sees is whole.

:func:`kill_loop` is the crash harness: start a writer, let it run for a random moment,
SIGKILL it, and check the store (``fsck`` clean, every acknowledged commit present, HEAD's
tree whole) before the next round.
"""

from __future__ import annotations

import multiprocessing
import os
import random
import signal
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path

import numpy as np

from . import porcelain
from .compose.checkout import factors
from .errors import EditStoreError, NotInTreeError
from .fsck import fsck
from .merge import merge
from .model.synthetic import random_delta
from .moments import import_npz
from .store import Store

SCRATCH = "scratch"
PRELOAD = ["editstore.torture"]  # what the forkserver imports once, so each worker starts in milliseconds


def context() -> multiprocessing.context.BaseContext:
    """A forkserver context with editstore imported in the server: real processes, started fast."""
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(PRELOAD)
    return ctx


def _linear_params(store: Store) -> list[str]:
    return sorted(p for p in store.base.orientations if p.endswith(".weight"))[:3]


def _npz(directory: Path, d_in: int, seed: int) -> Path:
    """A ROME-style statistics file of random keys."""
    k = np.random.default_rng(seed).standard_normal((d_in, 2 * d_in))
    path = directory / f"stats-{os.getpid()}-{seed}.npz"
    np.savez(path, **{"mom2.mom2": k @ k.T, "mom2.count": np.array(2 * d_in)})
    return path


def _operations(store: Store, rng: random.Random, report: Callable[[str, object], None]) -> dict[str, Callable[[], None]]:
    params = _linear_params(store)

    def commit(cid: str) -> None:
        report("commit", cid)

    def delta():
        return random_delta(store.base, rng.sample(params, rng.randint(1, 2)), rank=rng.randint(1, 3),
                            seed=rng.randrange(2**31), with_keys=rng.random() < 0.5)

    def import_delta() -> None:
        commit(porcelain.import_delta(store, delta(), message="import"))

    def revert() -> None:
        tree = store.tree("HEAD")
        if tree:
            try:
                commit(porcelain.revert(store, rng.choice(tree)))
            except NotInTreeError:  # another writer reverted it first
                pass

    def branch_and_tag() -> None:
        name = f"b{os.getpid()}-{rng.randrange(10**9)}"
        porcelain.create_branch(store, name)
        porcelain.tag(store, f"t-{name}")

    def scratch() -> None:  # on a side branch: two commits, one taken back (gc may collect it), merged later
        if SCRATCH not in {b.name for b in porcelain.branches(store)}:
            porcelain.create_branch(store, SCRATCH)
        porcelain.switch(store, SCRATCH)
        porcelain.import_delta(store, delta(), message="scratch kept")
        porcelain.import_delta(store, delta(), message="scratch dropped")
        porcelain.reset(store, "HEAD~1")
        porcelain.switch(store, "main")

    def merge_scratch() -> None:
        if SCRATCH in {b.name for b in porcelain.branches(store)}:
            try:
                commit(merge(store, SCRATCH).commit)
            except EditStoreError:  # nothing to merge
                pass

    def collect() -> None:
        from .fsck import gc

        gc(store)

    def settings() -> None:
        store.set_config("cache.max_bytes", str(rng.randrange(1 << 20, 1 << 30)))

    def statistics() -> None:
        module = params[0].removesuffix(".weight")
        with tempfile.TemporaryDirectory() as tmp:
            import_npz(store, module, _npz(Path(tmp), store.base.linear_shape(params[0])[1], rng.randrange(2**31)))

    return {f.__name__: f for f in (import_delta, revert, branch_and_tag, scratch, merge_scratch, collect, settings,
                                    statistics)}


ALL = ("import_delta", "revert", "branch_and_tag", "scratch", "merge_scratch", "collect", "settings", "statistics")
CONCURRENT = ("import_delta", "revert", "branch_and_tag", "collect", "settings", "statistics")  # HEAD stays on main


def writer(root: str, conn: Connection, seed: int, count: int | None = None, ops: tuple[str, ...] = ALL,
           focus: str | None = None) -> None:
    """Random write operations ``ops`` on the store at ``root``, reported on ``conn`` (see the module docstring);
    with ``focus``, every other operation is that one."""
    rng = random.Random(seed)
    store = Store.open(root)
    if store.current_branch() != "main":  # a writer killed on the scratch branch
        porcelain.switch(store, "main")
    operations = _operations(store, rng, lambda kind, value: conn.send((kind, value)))
    conn.send(("ready", os.getpid()))
    done = 0
    while count is None or done < count:
        name = focus if focus and rng.random() < 0.5 else rng.choice(ops)
        conn.send(("op", name))
        operations[name]()
        done += 1
    conn.send(("done", done))
    store.close()


def reader(root: str, conn: Connection, count: int) -> None:
    """Read main's version ``count`` times while writers run: each tree resolves and its deltas compose.
    Reports how many distinct versions it saw (more than one: it read while others wrote)."""
    store = Store.open(root)
    seen = set()
    for _ in range(count):
        head = store.resolve("main")
        tree = store.commit_tree(head)
        stacked = factors(store, tree)
        assert sum(f.rank for fs in stacked.values() for f in fs) == sum(store.edits(tree)[e].rank for e in tree)
        seen.add(head)
    conn.send(("done", len(seen)))
    store.close()


@dataclass
class KillReport:
    """What a :func:`kill_loop` did: kills per interrupted operation, commits acknowledged, faults found."""

    kills: Counter = field(default_factory=Counter)
    acknowledged: list[str] = field(default_factory=list)
    faults: list[str] = field(default_factory=list)


def _drain(conn: Connection, report: KillReport) -> str | None:
    """Read what a killed writer sent; returns the operation it was in."""
    last = None
    while conn.poll():
        try:
            kind, value = conn.recv()
        except (EOFError, OSError, ValueError):  # a message cut by the kill
            break
        if kind == "op":
            last = value
        elif kind == "commit":
            report.acknowledged.append(value)
    return last


def check_store(root: str, acknowledged: list[str]) -> list[str]:
    """Faults of the store at ``root``: fsck's, acknowledged commits that are gone, a HEAD whose tree is not whole."""
    with Store.open(root) as store:
        faults = list(fsck(store).errors)
        known = {row[0] for row in store.db.execute("SELECT id FROM commits")}
        faults += [f"acknowledged commit {c[:12]} is missing" for c in acknowledged if c not in known]
        for eid in store.tree("main"):
            store.load_delta(eid)
    return faults


def kill_loop(root: str, kills: int, *, seed: int = 0, max_delay: float = 0.3) -> KillReport:
    """SIGKILL a writer ``kills`` times at random moments; check the store after each kill.

    Round ``i``'s writer favours operation ``ALL[i % len(ALL)]``, so every kind of write is cut.
    """
    ctx = context()
    rng = random.Random(seed)
    report = KillReport()
    for i in range(kills):
        parent, child = ctx.Pipe(duplex=False)
        proc = ctx.Process(target=writer, args=(root, child, seed * 100_003 + i),
                           kwargs={"focus": ALL[i % len(ALL)]})
        proc.start()
        child.close()
        if not parent.poll(120) or parent.recv()[0] != "ready":
            raise RuntimeError("the writer did not start")
        time.sleep(rng.uniform(0, max_delay))
        os.kill(proc.pid, signal.SIGKILL)
        proc.join()
        report.kills[_drain(parent, report) or "(start)"] += 1
        parent.close()
        report.faults += [f"kill {i + 1}: {f}" for f in check_store(root, report.acknowledged)]
    return report
