"""Remote transfers against a local S3-compatible server; prints one table.

    python benchmarks/remote.py [--edits 1000] [--increment 10] [--workdir DIR] [--skip-base]

A GPT-2-small-sized base (GPT2Config(), 124M parameters, random float32 weights, 4 shards) and a
store of --edits edits committed one at a time (each rank one on layer 5's or 6's MLP down
projection, with keys and targets, as real edits are), on SeaweedFS's ``weed mini`` started on
127.0.0.1 (the server the tests use; its data on the same disk). Timed, each once, in this order:
the first push of the whole history; a clone (with ``--base`` a local copy); --increment more edits
committed and pushed, then fetched by the clone; and, unless --skip-base, ``push --with-base`` to a
fresh prefix and a clone without ``--base``, which downloads the base. MB/s counts the bytes of
objects and records moved (payload, not HTTP overhead).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path

from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).parent))
from checkout import LAYERS, PARAM, build_base  # noqa: E402 (the checkout benchmark's base)


def commit_edits(store, start: int, count: int) -> None:  # noqa: ANN001
    from editstore import NewEdit
    from editstore.model.synthetic import random_delta

    params = [PARAM.format(layer) for layer in LAYERS]
    for i in range(start, start + count):
        delta = random_delta(store.base, [params[i % 2]], rank=1, scale=0.02, seed=i, with_keys=True)
        store.record_edits([NewEdit(delta, "import", name=f"edit-{i}")], message=f"edit {i}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--edits", type=int, default=1000)
    parser.add_argument("--increment", type=int, default=10)
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--skip-base", action="store_true")
    args = parser.parse_args()

    from tqdm import tqdm

    from editstore import Store
    from editstore.remote import server
    from editstore.remote.sync import add_remote, clone, fetch, push

    rows: list[tuple[str, float, int]] = []

    def timed(label: str, fn, moved) -> object:  # noqa: ANN001
        start = time.perf_counter()
        result = fn()
        rows.append((label, time.perf_counter() - start, moved(result)))
        return result

    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        work = Path(tmp)
        s3 = server.start(work / "weed")
        os.environ.update(s3.env())
        try:
            base = build_base(work, 4)
            store = Store.init(base, work / "store")
            for start in tqdm(range(0, args.edits, 50), desc="commits", unit="50 edits"):
                commit_edits(store, start, min(50, args.edits - start))
            url = f"s3://{s3.bucket}/{uuid.uuid4().hex}"
            add_remote(store, "origin", url)
            timed(f"push, {args.edits} edits (first)", lambda: push(store, "origin"), lambda s: s.bytes)
            copy = timed("clone --base", lambda: clone(url, work / "clone", base=base), lambda c: _store_bytes(c))
            commit_edits(store, args.edits, args.increment)
            timed(f"push, {args.increment} new edits", lambda: push(store, "origin"), lambda s: s.bytes)
            timed(f"fetch, {args.increment} new edits", lambda: fetch(copy, "origin"), lambda s: s.bytes)
            if not args.skip_base:
                with_base = f"s3://{s3.bucket}/{uuid.uuid4().hex}"
                add_remote(store, "with-base", with_base)
                timed("push --with-base (history and base)", lambda: push(store, "with-base", with_base=True),
                      lambda s: s.bytes)
                timed("clone without --base (downloads the base)", lambda: clone(with_base, work / "clone2"),
                      lambda c: _store_bytes(c) + sum(p.stat().st_size for p in (work / "clone2" / "base").iterdir()))
        finally:
            s3.stop()

    table = Table(title=f"remote transfers, local SeaweedFS, {args.edits} edits (one commit each)")
    for column in ("operation", "seconds", "MB moved", "MB/s"):
        table.add_column(column, justify="left" if column == "operation" else "right")
    for label, seconds, moved in rows:
        table.add_row(label, f"{seconds:.2f}", f"{moved / 1e6:.1f}", f"{moved / 1e6 / seconds:.1f}")
    Console().print(table)


def _store_bytes(store) -> int:  # noqa: ANN001
    """The bytes a clone received: its objects and the records in its database."""
    objects = sum(p.stat().st_size for p in (store.root / "objects").rglob("*") if p.is_file())
    return objects + (store.root / "store.db").stat().st_size


if __name__ == "__main__":
    main()
