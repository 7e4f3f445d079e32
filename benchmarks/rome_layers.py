"""ROME on the GPT-2 fact world, layer by layer: does the edit work where causal tracing puts the facts?

    python benchmarks/rome_layers.py [--edits 20]

Each request is edited on its own, on the base (the first of every 50 world requests).
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from rich.console import Console
from rich.table import Table
from transformers import AutoModelForCausalLM, AutoTokenizer

from editstore.checkout import load_model
from editstore.checkpoint import Checkpoint
from editstore.evaluate import evaluate_requests
from editstore.methods import compute_edits, find_hparams
from editstore.stats import second_moment
from editstore.world.build import build_world, read_jsonl

KEYS = ("efficacy", "paraphrase", "specificity", "efficacy_top1", "paraphrase_top1", "specificity_top1")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--edits", type=int, default=20)
    args = parser.parse_args()
    world = build_world("gpt2")
    base = Checkpoint(world)
    model = AutoModelForCausalLM.from_pretrained(world).eval()
    tok = AutoTokenizer.from_pretrained(world)
    requests = read_jsonl(world / "requests.jsonl")[::50][: args.edits]
    corpus = (world / "corpus.txt").read_text().splitlines()
    labels = ["efficacy", "paraphrase", "specificity", "efficacy@1", "paraphrase@1", "specificity@1"]
    table = Table("layer", *labels, "s / edit", title=f"ROME on the GPT-2 world, {len(requests)} single edits")
    packaged = find_hparams("rome", json.loads((world / "config.json").read_text()))
    for layer in range(model.config.n_layer):
        hp = packaged.replace(layers=(layer,))
        module = hp.module_name(layer)
        sigma, _ = second_moment(model, tok, corpus, model.get_submodule(module))
        start = time.perf_counter()
        deltas = [compute_edits(model, tok, [r], hp, sigmas={module: sigma}).deltas[0] for r in requests]
        seconds = (time.perf_counter() - start) / len(requests)
        scores = []
        for r, d in zip(requests, deltas):
            edited = load_model(base, {p: [f] for p, f in d.factors.items()}, device=torch.device("cpu"), base_hashes={})
            scores.append(evaluate_requests(edited, tok, [r]))
        means = [sum(getattr(s, k) for s in scores) / len(scores) for k in KEYS]
        table.add_row(str(layer), *[f"{m:.2f}" for m in means], f"{seconds:.2f}")
    Console(width=120).print(table)


if __name__ == "__main__":
    main()
