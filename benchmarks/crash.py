"""Crash and concurrency torture of the store's write path, at more rounds than the test suite runs.

    python benchmarks/crash.py [--kills 300] [--writers 4] [--readers 2] [--ops 300] [--seed 0]

kills:       a writer of random operations (editstore.torture: imports, reverts, merges, branches and
             tags, a scratch branch reset and garbage-collected, settings, imported statistics) is
             SIGKILLed --kills times at a random moment within 0.3 s of its start; after each kill
             the store is checked: fsck clean, every commit the writer acknowledged present, the
             tree of main whole. The table counts the kills per operation they interrupted.
concurrency: --writers writers of --ops operations each (the ones that keep HEAD on main) and
             --readers readers that compose main's version 3 x --ops times, all at once; then the same
             checks. A reader reports how many distinct versions it saw.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from editstore import Store
from editstore.model.synthetic import tiny_model
from editstore.torture import CONCURRENT, check_store, context, kill_loop, reader, writer

console = Console(width=110)


def new_store(tmp: Path) -> str:
    store = Store.init(tiny_model("gpt2", tmp / "base", max_shard_size="20KB"), tmp / "store")
    store.close()
    return str(tmp / "store")


def kills(tmp: Path, count: int, seed: int) -> None:
    root = new_store(tmp / "kills")
    start = time.perf_counter()
    report = kill_loop(root, count, seed=seed)
    table = Table("interrupted operation", "kills", title=f"{count} SIGKILLs ({time.perf_counter() - start:.0f} s)")
    for op, n in report.kills.most_common():
        table.add_row(op, str(n))
    console.print(table)
    console.print(f"acknowledged commits: {len(report.acknowledged)}, all present: "
                  f"{not any('acknowledged' in f for f in report.faults)}; faults: {len(report.faults)}")
    for fault in report.faults[:20]:
        console.print(f"  {fault}")


def concurrency(tmp: Path, writers: int, readers: int, ops: int, seed: int) -> None:
    root = new_store(tmp / "concurrency")
    ctx = context()
    start = time.perf_counter()
    jobs = []
    for i in range(writers + readers):
        parent, child = ctx.Pipe(duplex=False)
        target, args = (writer, (root, child, seed * 1000 + i, ops, CONCURRENT)) if i < writers else (reader, (root, child, 3 * ops))
        proc = ctx.Process(target=target, args=args)
        proc.start()
        child.close()
        jobs.append((proc, parent, []))
    for proc, conn, messages in jobs:
        while True:
            try:
                messages.append(conn.recv())
            except EOFError:
                break
        proc.join()
    seconds = time.perf_counter() - start
    acknowledged = [v for _, _, m in jobs[:writers] for kind, v in m if kind == "commit"]
    faults = check_store(root, acknowledged)
    table = Table("process", "exit", "finished", "operations (writer) or versions seen (reader)", title=f"concurrency ({seconds:.1f} s)")
    for i, (proc, _, messages) in enumerate(jobs):
        last = messages[-1] if messages else ("", "")
        table.add_row(f"{'writer' if i < writers else 'reader'} {i}", str(proc.exitcode), str(last[0] == "done"),
                      str(last[1]))
    console.print(table)
    console.print(f"acknowledged commits: {len(acknowledged)}; faults after: {len(faults)}")
    for fault in faults[:20]:
        console.print(f"  {fault}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=300)
    parser.add_argument("--writers", type=int, default=4)
    parser.add_argument("--readers", type=int, default=2)
    parser.add_argument("--ops", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        kills(Path(tmp), args.kills, args.seed)
        concurrency(Path(tmp), args.writers, args.readers, args.ops, args.seed)


if __name__ == "__main__":
    main()
