"""Batched re-solve after a revert against a fresh batch edit of the remaining requests; prints a table.

    python benchmarks/resolve.py [--n 5] [--revert 2]

On the GPT-2 fact world, per method (EMMET on layer 1, MEMIT on layers 0 and 1): store A
batch-edits --n requests and reverts the --revert-th; store B batch-edits the others.
The table shows, per edited weight, ‖ΔW_A − ΔW_B‖ / ‖ΔW_B‖ for A checked out batched
and sequential (the sequential checkout keeps the reverted edit's influence on the
others' solution; the batched one re-solves without it).
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from rich.console import Console
from rich.table import Table

from editstore import Store
from editstore.compose.checkout import checkout
from editstore.core.inputs import read_jsonl
from editstore.editing import edit
from editstore.methods import find_hparams
from editstore.porcelain import revert
from editstore.world.build import build_world

SAMPLES = 300


def updates(store: Store, compose: str) -> dict:
    """ΔW of every edited weight of HEAD, composed in memory."""
    params = {p for e in store.tree() for p in store.edit(e).params}
    state = checkout(store, device="cpu", compose=compose).state_dict()
    return {p: state[p] - store.base.read_tensor(p) for p in sorted(params)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=5)
    p.add_argument("--revert", type=int, default=2, help="Index of the request to revert (0-based).")
    a = p.parse_args()
    world = build_world("gpt2")
    requests = read_jsonl(world / "requests.jsonl")[7::97][: a.n]
    rest = requests[: a.revert] + requests[a.revert + 1 :]
    config = json.loads((world / "config.json").read_text())
    table = Table("method", "layers", "weight", "batched vs fresh", "sequential vs fresh",
                  title=f"revert 1 of {a.n} batch-edited requests vs a fresh batch of the other {a.n - 1} (GPT-2 world)")
    for method, layers in (("emmet", [1]), ("memit", [0, 1])):
        hp = find_hparams(method, config).replace(layers=layers, **{"stats.samples": SAMPLES})
        with tempfile.TemporaryDirectory() as tmp:
            with Store.init(world, Path(tmp) / "a") as store_a, Store.init(world, Path(tmp) / "b") as store_b:
                edit(store_a, requests, method=method, hparams=hp, device="cpu")
                revert(store_a, store_a.tree()[a.revert])
                batched, sequential = updates(store_a, "batched"), updates(store_a, "sequential")
                edit(store_b, rest, method=method, hparams=hp, device="cpu")
                fresh = updates(store_b, "sequential")
        for param, want in fresh.items():
            rel = [float((got[param] - want).norm() / want.norm()) for got in (batched, sequential)]
            table.add_row(method, ",".join(map(str, layers)), param, f"{rel[0]:.1e}", f"{rel[1]:.1e}")
    Console(width=130).print(table)


if __name__ == "__main__":
    main()
