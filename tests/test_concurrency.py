"""Writers in separate processes serialize; SIGKILL mid-write leaves a consistent store."""

import multiprocessing
import os
import signal
import subprocess
import sys
import time

import pytest

from editstore import Store
from editstore.fsck import fsck
from editstore.model.synthetic import random_delta
from editstore.porcelain import import_delta
from editstore.torture import CONCURRENT, check_store, context, kill_loop, reader, writer

from .conftest import GPT2_PARAMS

pytestmark = pytest.mark.slow  # real processes killed and racing: seconds each


def _importer(root: str, worker: int, count: int) -> None:
    store = Store.open(root)
    for i in range(count):
        delta = random_delta(store.base, GPT2_PARAMS[:1], seed=worker * 1000 + i)
        import_delta(store, delta, message=f"worker {worker} delta {i}")
    store.close()


def test_four_processes_import_concurrently(gpt2_store: Store) -> None:
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_importer, args=(str(gpt2_store.root), w, 25)) for w in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=300)
        assert p.exitcode == 0
    history = gpt2_store.log()
    assert len(history) == 101  # 100 imports + the root commit
    assert len(gpt2_store.tree()) == 100
    assert [c.parents for _, c in history].count(()) == 1
    assert all(len(c.parents) == 1 for _, c in history[:-1])
    assert fsck(gpt2_store).ok


WRITER = """
import sys
from editstore import Store
from editstore.model.synthetic import random_delta
from editstore.porcelain import import_delta
store = Store.open(sys.argv[1])
for i in range(10_000):
    import_delta(store, random_delta(store.base, [sys.argv[2]], rank=8, seed=i), message=f"d{i}")
    if i == 0:
        print("ready", flush=True)  # warm: from here on the process does nothing but imports
"""


def test_sigkill_mid_import_leaves_old_or_new_head(gpt2_store: Store) -> None:
    root = str(gpt2_store.root)
    for delay in (0.05, 0.13, 0.31):
        before = {c for c, _ in gpt2_store.log()}
        proc = subprocess.Popen([sys.executable, "-c", WRITER, root, GPT2_PARAMS[1]], stdout=subprocess.PIPE, text=True)
        assert proc.stdout.readline().strip() == "ready"
        time.sleep(delay)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        store = Store.open(root)
        report = fsck(store)
        assert report.ok, report.errors
        head = store.head()
        history = store.log()
        assert {c for c, _ in history} >= before
        assert len(history) > len(before)  # it committed before it was killed, so it was killed mid-stream
        # HEAD is a complete commit: its tree is exactly the edits of every import before it
        assert len(store.tree(head)) == len(history) - 1
        for eid in store.tree(head):
            store.load_delta(eid)  # every committed delta is readable and hash-verified
        store.close()


def test_thirty_sigkills_across_the_write_path_leave_a_consistent_store(gpt2_store: Store) -> None:
    """SIGKILL at random moments of every kind of write (imports, reverts, merges, branches and tags, a scratch
    branch reset and garbage-collected, settings, imported statistics): after each kill fsck is clean, every
    acknowledged commit is present and HEAD's tree is whole (benchmarks/crash.py runs many more)."""
    report = kill_loop(str(gpt2_store.root), 30, seed=7)
    assert report.faults == []
    assert sum(report.kills.values()) == 30
    assert len(report.kills) >= 5, report.kills  # the kills landed in many different operations
    assert len(report.acknowledged) >= 30


def test_concurrent_writers_and_readers_see_whole_versions(gpt2_store: Store) -> None:
    """Three writers of mixed operations and two readers at once: every reader sees whole versions, every
    writer finishes, and afterwards fsck is clean and every acknowledged commit is present."""
    ctx = context()
    root = str(gpt2_store.root)
    import_delta(gpt2_store, random_delta(gpt2_store.base, GPT2_PARAMS[:1]), message="first")
    pipes, procs = [], []
    for i in range(5):
        parent, child = ctx.Pipe(duplex=False)
        target, args = (writer, (root, child, i, 100, CONCURRENT)) if i < 3 else (reader, (root, child, 300))
        procs.append(ctx.Process(target=target, args=args))
        procs[-1].start()
        child.close()
        pipes.append(parent)
    messages: list[list[tuple]] = [[] for _ in pipes]
    for i, (proc, conn) in enumerate(zip(procs, pipes)):
        while conn.poll(300):  # a hung process fails the test instead of hanging it
            try:
                messages[i].append(conn.recv())
            except EOFError:
                break
        proc.join(timeout=300)
        assert proc.exitcode == 0, messages[i][-3:]
    assert all(m[-1][0] == "done" for m in messages)
    assert all(m[-1][1] == 100 for m in messages[:3])
    assert max(m[-1][1] for m in messages[3:]) > 1  # the readers read while versions came and went
    acknowledged = [value for m in messages[:3] for kind, value in m if kind == "commit"]
    assert len(acknowledged) >= 30  # imports and reverts, about a third of 300 operations
    assert check_store(root, acknowledged) == []
