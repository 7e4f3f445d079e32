"""The fact worlds: build time, recall, and where facts live (causal tracing averaged over facts).

    python benchmarks/world.py [--arch gpt2 llama t5] [--size small|large] [--facts 40]
                               [--world KEY=JSON ...] [--train KEY=JSON ...]

--world and --train try another world design: they change its WorldSpec (editstore/world/knowledge.py)
and its model's TrainSpec (editstore/world/train.py), e.g. --world n_last=25 --train
"subject_mlp_layers=[1,2,3]" subject_mlp=0.5; that world is built and cached under its own key.

An encoder-decoder (t5) is traced over its encoder, the answer being its first output token.

Builds each world (or reuses the cache; its world.json holds the time measured
when it was built) and prints two tables.
"""

from __future__ import annotations

import argparse
import json

import torch
from rich.console import Console
from rich.table import Table
from transformers import AutoTokenizer

from editstore.core.inputs import read_jsonl
from editstore.model.checkpoint import from_pretrained
from editstore.trace import causal_trace
from editstore.world.bench import design, settings
from editstore.world.build import SIZES, build_world


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", nargs="+", default=["gpt2", "llama", "t5"])
    parser.add_argument("--size", choices=SIZES, default="small")
    parser.add_argument("--facts", type=int, default=40, help="facts to trace per world")
    parser.add_argument("--world", nargs="+", default=[], metavar="KEY=JSON", help="Change the world's WorldSpec.")
    parser.add_argument("--train", nargs="+", default=[], metavar="KEY=JSON", help="Change the world model's TrainSpec.")
    args = parser.parse_args()
    world, train = settings(args.world), settings(args.train)
    console = Console()
    build = Table("world", "subjects", "facts", "train s (threads)", "recall trained", "recall held out",
                  title="fact worlds (editstore world build)")
    rows: list[tuple[str, str, str, list[float]]] = []
    for arch in args.arch:
        path = build_world(config=design(arch, args.size, world=world, train=train))
        info = json.loads((path / "world.json").read_text())
        build.add_row(arch, str(info["n_subjects"]), str(info["n_facts"]), f"{info['train_seconds']} ({info['threads']})",
                      f"{info['recall']['trained']:.3f}", f"{info['recall']['held_out']:.3f}")
        model = from_pretrained(path)
        tok = AutoTokenizer.from_pretrained(path)
        facts = read_jsonl(path / "facts.jsonl")
        facts = facts[:: max(1, len(facts) // args.facts)][: args.facts]
        traced = [causal_trace(model, tok, f["trained_prompts"][0], f["subject"], answer=f["object"]) for f in facts]
        traced = [t for t in traced if t.informative]
        sums: dict[tuple[str, str], torch.Tensor] = {}
        for t in traced:
            last = t.subject[1] - 1
            for kind, r in t.recovery.items():
                for where, col in (("last subject token", r[:, last]), ("last token", r[:, -1]),
                                   ("other subject tokens", r[:, t.subject[0] : last].max(1).values if last > t.subject[0] else torch.zeros(r.shape[0]))):
                    sums[(kind, where)] = sums.get((kind, where), 0) + col / len(traced)
        for (kind, where), v in sums.items():
            rows.append((f"{arch} ({len(traced)})", kind, where, v.tolist()))
    layers = max(len(r[3]) for r in rows)
    traces = Table("world", "kind", "state restored", *[f"L{i}" for i in range(layers)],
                   title=f"causal trace: mean recovery over the traced facts (of {args.facts}) where corrupting "
                         "the subject changes p(answer)")
    for name, kind, where, values in rows:
        traces.add_row(name, kind, where, *[f"{x:.2f}" for x in values], *[""] * (layers - len(values)))
    console.print(build)
    console.print(traces)


if __name__ == "__main__":
    main()
