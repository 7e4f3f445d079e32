"""A first run of editstore, no downloads: build a tiny GPT-2 from its config, then
record, revert, diff and check out low-rank edits of it, with the Python API.

    python examples/first_run.py [WORKDIR]
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM

from editstore import Store
from editstore.synthetic import random_delta, tiny_model

PARAMS = ["transformer.h.0.mlp.c_proj.weight", "transformer.h.1.mlp.c_proj.weight"]


def main(workdir: Path) -> None:
    base_dir = tiny_model("gpt2", workdir / "base", max_shard_size="20KB")
    print(f"built a tiny GPT-2 (Conv1D layers, sharded) in {base_dir}")

    store = Store.init(base_dir, workdir / "store")
    for i, param in enumerate([PARAMS[0], PARAMS[1], PARAMS[0]]):
        delta = random_delta(store.base, [param], rank=1, seed=i)
        delta.save(workdir / f"delta{i}.safetensors")  # the public delta file format
        commit = store.import_delta(workdir / f"delta{i}.safetensors", message=f"edit {i}", name=f"edit-{i}")
        print(f"committed edit-{i} on {param}: {commit[:12]}")
    store.tag("v1")

    middle = store.tree()[1]
    store.revert(middle)
    print(f"reverted edit {middle[:12]} out of order; the tree now has {len(store.tree())} edits")

    diff = store.diff("v1", "HEAD")
    for p in diff.params:
        print(f"diff v1 → HEAD: {p.param} ‖ΔW‖_F = {p.frobenius:.4f}, rank {p.rank}")

    out = store.checkout_to("HEAD", workdir / "checkout", device="auto")
    model = AutoModelForCausalLM.from_pretrained(out)
    in_memory = store.checkout("HEAD", device="cpu")
    same = all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), in_memory.state_dict().values()))
    print(f"checked out HEAD to {out}; from_pretrained loads it; equal to the in-memory checkout: {same}")
    for cid, c in store.log():
        print(f"  {cid[:12]} [{c.operation}] {c.message}")
    store.close()
    if not same:
        sys.exit(1)


if __name__ == "__main__":
    if len(sys.argv) > 1:
        main(Path(sys.argv[1]))
    else:
        with tempfile.TemporaryDirectory() as tmp:
            main(Path(tmp))
