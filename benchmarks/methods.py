"""Edit quality and speed of every method on the fact worlds; prints one table per part.

    python benchmarks/methods.py [--arch gpt2 llama t5] [--size small|large] [--parts single batch sequential damage deletion]
                                 [--single 100] [--batch 200] [--sequential 300] [--every 50] [--damage 20]
                                 [--deletion 100] [--methods ...] [--set KEY=JSON ...]
                                 [--world KEY=JSON ...] [--train KEY=JSON ...]

single:     each request edited alone on the base (every method), on requests about the quarter of
            the subjects that MEND's editor is not meta-trained on (editstore/methods/splits.py);
            MEND's editor is trained on the others the first time and cached (its training time
            is printed under the table).
batch:      one batch solved jointly (MEMIT, EMMET, AlphaEdit; ROME and FT edit it in sequence).
sequential: one edit per commit on top of all earlier ones (ROME, MEMIT, AlphaEdit); efficacy of
            all edits so far and recall of untouched facts after every --every edits.
damage:     single edits on the base; how many of the world's other facts change their
            greedy answer (and how many of those to the edit's target).
deletion:   behaviour deletions (target_true suppressed, no target_new), each alone on the base,
            on held-out subjects: efficacy = greedy decoding no longer yields target_true (its
            probability fell below the best alternative's), on the edit and paraphrase prompts;
            specificity = neighbours still yield their own object.

t5 is the encoder-decoder world (prompt -> object); its methods edit the encoder MLP of
block 0 at the subject's last source token (editstore/methods/hparams/*-t5-world.json).

Requests are the world's counterfactuals on distinct subjects, spread over the world.
Specificity counts neighbourhood prompts whose subject is not edited in the same run
(a neighbour that is itself edited is expected to change; evaluate_requests leaves it
out). Edited models are composed with forward hooks (W + Σ U Vᵀ, the same sum a
checkout writes; see editstore.world.bench); Σ comes from each world's corpus.txt.
Seconds per edit include the target optimisation and the solve.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Sequence
from typing import Any

import torch
from rich.console import Console
from rich.table import Table

from editstore.core.inputs import read_jsonl
from editstore.core.requests import as_deletion
from editstore.methods import METHODS
from editstore.methods.hooks import as_updates, patched
from editstore.model.delta import Delta
from editstore.model.evaluate import next_tokens
from editstore.model.tokens import target_ids
from editstore.world.bench import WorldBench, settings
from editstore.world.build import ARCHES, SIZES

console = Console(width=130)
RECALL_FACTS = 300


class Bench(WorldBench):
    """A world bench that times its edits and runs only the chosen methods."""

    def __init__(self, arch: str, overrides: dict[str, Any], methods: Sequence[str] | None, size: str,
                 world: dict[str, Any], train: dict[str, Any], device: str = "cpu") -> None:
        super().__init__(arch, overrides=overrides, size=size, methods=methods or METHODS, world=world, train=train,
                         device=device)
        self.methods = methods

    def chosen(self, methods: Sequence[str]) -> list[str]:
        return [m for m in methods if not self.methods or m in self.methods]

    def timed_edit(self, method: str, requests: Sequence[dict], earlier: Sequence[Delta] = ()) -> tuple[list[Delta], float]:
        start = time.perf_counter()
        deltas = self.edit(method, requests, earlier).deltas
        return deltas, (time.perf_counter() - start) / len(requests)


def fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.3f}"


def each_alone(bench: Bench, method: str, requests: Sequence[dict]) -> list[str]:
    """Mean efficacy, paraphrase and specificity of each request edited alone on the base, and seconds per edit."""
    scores, seconds = [], 0.0
    for r in requests:
        deltas, s = bench.timed_edit(method, [r])
        seconds += s
        scores.append(bench.evaluate([r], deltas))
    mean = lambda k: sum(getattr(m, k) for m in scores if getattr(m, k) is not None) / len(scores)  # noqa: E731
    return [fmt(mean("efficacy")), fmt(mean("paraphrase")), fmt(mean("specificity")), f"{seconds / len(requests):.3f}"]


def single(bench: Bench, n: int) -> None:
    requests = bench.held_out(n)
    if "mend" in bench.chosen(METHODS):
        bench.editor  # noqa: B018 (trained, or read from the cache, before the clock starts)
    table = Table("method", "efficacy", "paraphrase", "specificity", "s / edit",
                  title=f"{bench.arch} world: {len(requests)} single edits, each on the base (held-out subjects)")
    for method in bench.chosen(METHODS):
        table.add_row(method, *each_alone(bench, method, requests))
    console.print(table)
    if bench.mend_training:
        t = bench.mend_training
        console.print(f"MEND's editor: meta-trained in {t.get('seconds')} s, {t.get('steps')} steps "
                      f"(validation loss {t.get('best_val_loss')}), on {t.get('train_requests', 'the')} training requests")


def batch(bench: Bench, n: int) -> None:
    requests = bench.take(n)
    table = Table("method", "efficacy", "paraphrase", "specificity", "untouched recall", "s / edit",
                  title=f"{bench.arch} world: one batch of {len(requests)} edits")
    base = bench.evaluate(requests, [], recall=RECALL_FACTS)
    table.add_row("(base)", fmt(base.efficacy), fmt(base.paraphrase), fmt(base.specificity), fmt(base.recall), "-")
    for method in bench.chosen(("memit", "emmet", "alphaedit")):
        deltas, seconds = bench.timed_edit(method, requests)
        m = bench.evaluate(requests, deltas, recall=RECALL_FACTS)
        table.add_row(method, fmt(m.efficacy), fmt(m.paraphrase), fmt(m.specificity), fmt(m.recall), f"{seconds:.2f}")
    console.print(table)


def sequential(bench: Bench, n: int, every: int) -> None:
    requests = bench.take(n)
    table = Table("method", "edits", "efficacy (all so far)", "paraphrase", "specificity", "untouched recall", "s / edit",
                  title=f"{bench.arch} world: {len(requests)} sequential edits, one commit each")
    base = bench.evaluate(requests, [], recall=RECALL_FACTS)
    table.add_row("(base)", "0", fmt(base.efficacy), fmt(base.paraphrase), fmt(base.specificity), fmt(base.recall), "-")
    for method in bench.chosen(("rome", "memit", "alphaedit")):
        deltas: list[Delta] = []
        seconds = 0.0
        for i, r in enumerate(requests, 1):
            new, s = bench.timed_edit(method, [r], deltas)
            deltas += new
            seconds += s
            if i % every == 0 or i == len(requests):
                m = bench.evaluate(requests[:i], deltas, recall=RECALL_FACTS)
                table.add_row(method, str(i), fmt(m.efficacy), fmt(m.paraphrase), fmt(m.specificity), fmt(m.recall), f"{seconds / i:.2f}")
        table.add_section()
    console.print(table)


def damage(bench: Bench, n: int) -> None:
    """How many of the world's other facts change their greedy answer when one request is edited."""
    facts = read_jsonl(bench.path / "facts.jsonl")
    prompts = [f["trained_prompts"][0] for f in facts]
    base = next_tokens(bench.model, bench.tokenizer, prompts)
    table = Table("method", "flipped / edit", "% of facts", "median %", "max", "share to the edit's target",
                  title=f"{bench.arch} world: untouched facts (of {len(facts)}) whose answer one edit changes, {n} edits")
    for method in bench.chosen(METHODS):
        flipped, to_target = [], 0
        for r in bench.take(n, offset=4):
            deltas, _ = bench.timed_edit(method, [r])
            with patched(bench.model, as_updates(deltas)):
                after = next_tokens(bench.model, bench.tokenizer, prompts)
            changed = [(f, a) for f, b, a in zip(facts, base, after) if b[0] != a[0] and f["subject"] != r["subject"]]
            flipped.append(len(changed))
            first = target_ids(bench.tokenizer, r["target_new"])[0]
            to_target += sum(a[0] == first for _, a in changed)
        total = sum(flipped)
        table.add_row(method, f"{total / n:.1f}", f"{100 * total / n / len(facts):.2f}",
                      f"{100 * statistics.median(flipped) / len(facts):.2f}", str(max(flipped)),
                      f"{to_target / max(total, 1):.2f}")
    console.print(table)


def deletion(bench: Bench, n: int) -> None:
    requests = [as_deletion(r) for r in bench.held_out(n)]
    table = Table("method", "efficacy (deleted)", "paraphrase", "specificity (kept)", "s / edit",
                  title=f"{bench.arch} world: {len(requests)} behaviour deletions, each on the base (held-out subjects)")
    for method in bench.chosen(("rome", "memit", "emmet", "alphaedit")):
        table.add_row(method, *each_alone(bench, method, requests))
    console.print(table)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", nargs="+", default=list(ARCHES), choices=ARCHES)
    parser.add_argument("--size", choices=SIZES, default="small", help="The world's size (large: gpt2 and llama).")
    parts = ["single", "batch", "sequential", "damage", "deletion"]
    parser.add_argument("--parts", nargs="+", default=parts, choices=parts)
    parser.add_argument("--single", type=int, default=100)
    parser.add_argument("--batch", type=int, default=200)
    parser.add_argument("--sequential", type=int, default=300)
    parser.add_argument("--every", type=int, default=50)
    parser.add_argument("--damage", type=int, default=20, help="Edits whose side effects on all facts are counted.")
    parser.add_argument("--deletion", type=int, default=100, help="Behaviour deletions, each alone on the base.")
    parser.add_argument("--methods", nargs="+", choices=METHODS, help="Only these methods.")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda", "auto"], help="Where the model runs.")
    parser.add_argument("--set", nargs="+", default=[], metavar="KEY=JSON",
                        help='Override hparams of every method, e.g. targets.nll_stop=0.3 "layers=[1]".')
    parser.add_argument("--world", nargs="+", default=[], metavar="KEY=JSON",
                        help="Try another world design: change its WorldSpec, e.g. n_last=25.")
    parser.add_argument("--train", nargs="+", default=[], metavar="KEY=JSON",
                        help='Try another world design: change its TrainSpec, e.g. "subject_mlp_layers=[1,2]".')
    args = parser.parse_args()
    overrides, world, train = settings(args.set), settings(args.world), settings(args.train)
    torch.manual_seed(0)
    for arch in args.arch:
        bench = Bench(arch, overrides, args.methods, args.size, world, train, args.device)
        if "single" in args.parts:
            single(bench, args.single)
        if "batch" in args.parts:
            batch(bench, args.batch)
        if "sequential" in args.parts:
            sequential(bench, args.sequential, args.every)
        if "damage" in args.parts:
            damage(bench, args.damage)
        if "deletion" in args.parts:
            deletion(bench, args.deletion)


if __name__ == "__main__":
    main()
