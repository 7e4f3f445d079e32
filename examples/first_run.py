"""A first run of editstore on the embedded default, the fact world (nothing is downloaded).

Builds (or reuses) the GPT-2 fact world, puts a store on it, measures the base,
commits two low-rank deltas, diffs behaviour, reverts one edit out of order and
checks the version out as a directory that from_pretrained loads.

    python examples/first_run.py [WORKDIR]
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from editstore import Store
from editstore.behavior import behavior_diff, evaluate_version
from editstore.synthetic import random_delta
from editstore.world.build import build_world, read_jsonl

PARAM = "transformer.h.1.mlp.c_proj.weight"  # the MLP where the world's facts live (see `editstore trace`)


def main(workdir: Path) -> None:
    world = build_world("gpt2")
    print(f"fact world: {world}")
    store = Store.init(world, workdir / "store")
    requests = read_jsonl(world / "requests.jsonl")[:50]
    m = evaluate_version(store, "HEAD", requests=requests)
    print(f"base: recall of facts {m.recall:.3f}; efficacy of 50 counterfactual requests {m.efficacy:.2f} (near 0: "
          "the base does not believe them)")
    store.tag("base")

    for seed in (1, 2):
        delta = random_delta(store.base, [PARAM], rank=2, scale=0.3, seed=seed)
        delta.save(workdir / f"delta{seed}.safetensors")  # the public delta file format
        commit = store.import_delta(workdir / f"delta{seed}.safetensors", message=f"perturbation {seed}", name=f"p{seed}")
        print(f"committed p{seed} ({PARAM}, rank 2): {commit[:12]}")

    d = behavior_diff(store, "base", "HEAD", requests=requests[:10], facts=200)
    print(f"behavioural diff base → HEAD: {len(d.changes)} of {sum(d.n_probes.values())} probes changed their answer")
    for c in d.changes[:3]:
        print(f"  {c.probe.prompt!r}: {c.answer_a} ({c.p_a:.2f}) → {c.answer_b} ({c.p_b:.2f})")

    first = store.tree()[0]
    store.revert(first)
    print(f"reverted p1 out of order; weight diff base → HEAD: "
          + ", ".join(f"{p.param} rank {p.rank}" for p in store.diff("base", "HEAD").params))

    out = store.checkout_to("HEAD", workdir / "checkout")
    model = AutoModelForCausalLM.from_pretrained(out).eval()
    tok = AutoTokenizer.from_pretrained(out)
    prompt = requests[0]["prompt"].replace("{}", requests[0]["subject"])
    with torch.no_grad():
        answer = tok.decode(model(**tok(prompt, return_tensors="pt")).logits[0, -1].argmax())
    print(f"checked out HEAD to {out}; from_pretrained answers {prompt!r} → {answer!r}")
    for cid, c in store.log():
        print(f"  {cid[:12]} [{c.operation}] {c.message}")
    store.close()


if __name__ == "__main__":
    if len(sys.argv) > 1:
        main(Path(sys.argv[1]))
    else:
        with tempfile.TemporaryDirectory() as tmp:
            main(Path(tmp))
