"""Edit quality and speed of every method on the fact worlds; prints one table per part.

    python benchmarks/methods.py [--arch gpt2 llama] [--parts single batch sequential]
                                 [--single 100] [--batch 200] [--sequential 300] [--every 50]

single:     each request edited alone on the base (every method).
batch:      one batch solved jointly (MEMIT, EMMET, AlphaEdit; ROME and FT edit it in sequence).
sequential: one edit per commit on top of all earlier ones (ROME, MEMIT, AlphaEdit); efficacy of
            all edits so far and recall of untouched facts after every --every edits.

Requests are the world's counterfactuals on distinct subjects, spread over the world.
Specificity counts neighbourhood prompts whose subject is not edited in the same run
(a neighbour that is itself edited is expected to change; evaluate_requests leaves it out). Edited models are composed
with forward hooks (W + Σ U Vᵀ, the same sum a checkout writes); Σ comes from each
world's corpus.txt. Seconds per edit include the target optimisation and the solve.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.table import Table
from transformers import AutoModelForCausalLM, AutoTokenizer

from editstore.behavior import untouched_facts
from editstore.delta import Delta
from editstore.evaluate import Metrics, evaluate_requests
from editstore.methods import METHODS, compute_edits, edited_modules, find_hparams
from editstore.methods.hooks import as_keys, as_updates, patched
from editstore.stats import second_moment
from editstore.world.build import build_world, read_jsonl

console = Console(width=130)
RECALL_FACTS = 300


class Bench:
    """One world: its model, tokenizer, Σ of every module any method edits, and the requests."""

    def __init__(self, arch: str, overrides: dict[str, Any] | None = None) -> None:
        self.arch = arch
        self.overrides = overrides or {}
        self.world = build_world(arch)
        self.model = AutoModelForCausalLM.from_pretrained(self.world).eval()
        self.tok = AutoTokenizer.from_pretrained(self.world)
        self.config = json.loads((self.world / "config.json").read_text())
        modules = sorted({m for method in METHODS if method != "ft" for m in edited_modules(self.hparams(method))})
        corpus = (self.world / "corpus.txt").read_text().splitlines()
        sigmas, _ = second_moment(self.model, self.tok, corpus, [self.model.get_submodule(m) for m in modules])
        self.sigmas = dict(zip(modules, sigmas))
        seen: set[str] = set()
        self.requests = []
        for r in read_jsonl(self.world / "requests.jsonl")[::3]:
            if r["subject"] not in seen:
                seen.add(r["subject"])
                self.requests.append(r)

    def hparams(self, method: str) -> Any:
        hp = find_hparams(method, self.config)
        return hp.replace(**self.overrides) if self.overrides else hp

    methods: Sequence[str] | None = None

    def chosen(self, methods: Sequence[str]) -> list[str]:
        return [m for m in methods if not self.methods or m in self.methods]

    def take(self, n: int) -> list[dict[str, Any]]:
        step = max(1, len(self.requests) // n)
        return self.requests[::step][:n]

    def edit(self, method: str, requests: Sequence[dict], deltas: Sequence[Delta] = (), prior: dict | None = None) -> tuple[list[Delta], float]:
        start = time.perf_counter()
        with patched(self.model, as_updates(deltas)):
            result = compute_edits(self.model, self.tok, requests, self.hparams(method), sigmas=self.sigmas, prior_keys=prior)
        return result.deltas, (time.perf_counter() - start) / len(requests)

    def evaluate(self, requests: Sequence[dict], deltas: Sequence[Delta], *, recall: bool = False) -> Metrics:
        edited = {r["subject"] for r in requests}
        facts = untouched_facts(self.world, edited, limit=RECALL_FACTS) if recall else []
        with patched(self.model, as_updates(deltas)):
            return evaluate_requests(self.model, self.tok, requests, recall_facts=facts)


def fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.3f}"


def single(bench: Bench, n: int) -> None:
    requests = bench.take(n)
    table = Table("method", "efficacy", "paraphrase", "specificity", "s / edit",
                  title=f"{bench.arch} world: {len(requests)} single edits, each on the base")
    for method in bench.chosen(METHODS):
        scores, seconds = [], 0.0
        for r in requests:
            deltas, s = bench.edit(method, [r])
            seconds += s
            scores.append(bench.evaluate([r], deltas))
        mean = lambda k: sum(getattr(m, k) for m in scores if getattr(m, k) is not None) / len(scores)  # noqa: E731
        table.add_row(method, fmt(mean("efficacy")), fmt(mean("paraphrase")), fmt(mean("specificity")), f"{seconds / len(requests):.2f}")
    console.print(table)


def batch(bench: Bench, n: int) -> None:
    requests = bench.take(n)
    table = Table("method", "efficacy", "paraphrase", "specificity", "untouched recall", "s / edit",
                  title=f"{bench.arch} world: one batch of {len(requests)} edits")
    base = bench.evaluate(requests, [], recall=True)
    table.add_row("(base)", fmt(base.efficacy), fmt(base.paraphrase), fmt(base.specificity), fmt(base.recall), "-")
    for method in bench.chosen(("memit", "emmet", "alphaedit")):
        deltas, seconds = bench.edit(method, requests)
        m = bench.evaluate(requests, deltas, recall=True)
        table.add_row(method, fmt(m.efficacy), fmt(m.paraphrase), fmt(m.specificity), fmt(m.recall), f"{seconds:.2f}")
    console.print(table)


def sequential(bench: Bench, n: int, every: int) -> None:
    requests = bench.take(n)
    table = Table("method", "edits", "efficacy (all so far)", "paraphrase", "specificity", "untouched recall", "s / edit",
                  title=f"{bench.arch} world: {len(requests)} sequential edits, one commit each")
    base = bench.evaluate(requests, [], recall=True)
    table.add_row("(base)", "0", fmt(base.efficacy), fmt(base.paraphrase), fmt(base.specificity), fmt(base.recall), "-")
    for method in bench.chosen(("rome", "memit", "alphaedit")):
        deltas: list[Delta] = []
        seconds = 0.0
        for i, r in enumerate(requests, 1):
            new, s = bench.edit(method, [r], deltas, prior=as_keys(deltas) if method == "alphaedit" else None)
            deltas += new
            seconds += s
            if i % every == 0 or i == len(requests):
                m = bench.evaluate(requests[:i], deltas, recall=True)
                table.add_row(method, str(i), fmt(m.efficacy), fmt(m.paraphrase), fmt(m.specificity), fmt(m.recall), f"{seconds / i:.2f}")
        table.add_section()
    console.print(table)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", nargs="+", default=["gpt2", "llama"], choices=["gpt2", "llama"])
    parser.add_argument("--parts", nargs="+", default=["single", "batch", "sequential"], choices=["single", "batch", "sequential"])
    parser.add_argument("--single", type=int, default=100)
    parser.add_argument("--batch", type=int, default=200)
    parser.add_argument("--sequential", type=int, default=300)
    parser.add_argument("--every", type=int, default=50)
    parser.add_argument("--methods", nargs="+", choices=METHODS, help="Only these methods.")
    parser.add_argument("--set", nargs="+", default=[], metavar="KEY=JSON",
                        help='Override hparams of every method, e.g. targets.nll_stop=0.3 "layers=[1]".')
    args = parser.parse_args()
    overrides = {k: json.loads(v) for k, v in (item.split("=", 1) for item in args.set)}
    overrides = {k: tuple(v) if isinstance(v, list) else v for k, v in overrides.items()}
    torch.manual_seed(0)
    for arch in args.arch:
        bench = Bench(arch, overrides)
        bench.methods = args.methods
        if "single" in args.parts:
            single(bench, args.single)
        if "batch" in args.parts:
            batch(bench, args.batch)
        if "sequential" in args.parts:
            sequential(bench, args.sequential, args.every)


if __name__ == "__main__":
    main()
