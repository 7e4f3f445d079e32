"""ROME on a fact world, layer by layer: does the edit work where causal tracing puts the facts?

    python benchmarks/rome_layers.py [--arch gpt2|llama|t5] [--edits 20]

Each request is edited on its own, on the base (the first of every 50 world requests),
with the packaged hparams at every layer; on the T5 world, at every encoder MLP (key at
the subject's last source token) and every decoder MLP (key at the first decoder position).
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

import torch
from rich.console import Console
from rich.table import Table
from transformers import AutoTokenizer

from editstore.compose.materialise import load_model
from editstore.core.inputs import read_jsonl
from editstore.methods import compute_edits, find_hparams
from editstore.methods.hparams import Hparams
from editstore.model.checkpoint import Checkpoint, from_pretrained
from editstore.model.evaluate import evaluate_requests
from editstore.model.stats import second_moment
from editstore.world.build import ARCHES, build_world

KEYS = ("efficacy", "paraphrase", "specificity", "efficacy_top1", "paraphrase_top1", "specificity_top1")


def layer_row(model: torch.nn.Module, tok: Any, base: Checkpoint, corpus: list[str], requests: list[dict], hp: Hparams) -> list[str]:
    """Mean metrics and seconds per edit of single ROME edits with ``hp`` (one layer)."""
    module = hp.module_name(hp.layers[0])
    sigma, _ = second_moment(model, tok, corpus, model.get_submodule(module))
    start = time.perf_counter()
    deltas = [compute_edits(model, tok, [r], hp, sigmas={module: sigma}).deltas[0] for r in requests]
    seconds = (time.perf_counter() - start) / len(requests)
    scores = []
    for r, d in zip(requests, deltas):
        edited = load_model(base, {p: [f] for p, f in d.factors.items()}, device=torch.device("cpu"), base_hashes={})
        scores.append(evaluate_requests(edited, tok, [r]))
    means = [sum(getattr(s, k) for s in scores) / len(scores) for k in KEYS]
    return [*(f"{m:.2f}" for m in means), f"{seconds:.2f}"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", choices=ARCHES, default="gpt2")
    parser.add_argument("--edits", type=int, default=20)
    args = parser.parse_args()
    world = build_world(args.arch)
    base = Checkpoint(world)
    model = from_pretrained(world)
    tok = AutoTokenizer.from_pretrained(world)
    requests = read_jsonl(world / "requests.jsonl")[::50][: args.edits]
    corpus = (world / "corpus.txt").read_text().splitlines()
    labels = ["efficacy", "paraphrase", "specificity", "efficacy@1", "paraphrase@1", "specificity@1"]
    table = Table("layer", *labels, "s / edit", title=f"ROME on the {args.arch} world, {len(requests)} single edits")
    packaged = find_hparams("rome", json.loads((world / "config.json").read_text()))
    sites = [("", packaged.module, packaged.block, model.config.num_hidden_layers)]
    if args.arch == "t5":
        sites = [("encoder ", "encoder.block.{}.layer.1.DenseReluDense.wo", "encoder.block.{}", model.config.num_layers),
                 ("decoder ", "decoder.block.{}.layer.2.DenseReluDense.wo", "decoder.block.{}", model.config.num_decoder_layers)]
    for side, module_template, block, depth in sites:
        for layer in range(depth):
            hp = packaged.replace(layers=(layer,), module=module_template, block=block)
            table.add_row(f"{side}{layer}", *layer_row(model, tok, base, corpus, requests, hp))
    Console(width=120).print(table)


if __name__ == "__main__":
    main()
