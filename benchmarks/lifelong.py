"""Lifelong editing: a long history committed one edit at a time, checked out and measured as it grows.

    python benchmarks/lifelong.py [--size large] [--arch gpt2] [--methods rome memit alphaedit]
                                  [--edits 1000] [--at 100 250 500 1000] [--replace 100] [--revert 50]
                                  [--same-subject 200] [--recall 1000] [--plot lifelong.png]
                                  [--parts history same-subject] [--without-shared-subjects]
                                  [--lambda-e 0 100] [--targets rebased stored]

For each method, a store on the world gets --edits edits, one commit each through the library
(`editstore.editing.edit`, as `editstore edit` does): the world's counterfactuals on distinct
subjects, cycling over all relations. At each --at count the version is checked out twice by
the whole command `editstore checkout HEAD --out DIR` (--compose sequential, the history as
committed, and --compose batched, every edit re-solved jointly, once for each --lambda-e, the
store's checkout.lambda_e: how softly a group of ROME edits is re-solved, and for each --targets,
its checkout.targets: each edit's residual δ rebased onto the weight solved on, or the target
each edit computed on its own version), each timed with its
peak memory (the process's max RSS), and each checkout is loaded and measured:

efficacy      every live edit's target beats the true object on its prompt (P(new) > P(true));
paraphrase    the same on the held-out formulation;
specificity   neighbouring subjects (not edited) keep their object;
untouched     top-1 recall of facts of subjects no edit touched (--recall of them);
other rel.    top-1 recall of the edited subjects' relations that no edit touched.

After the history: --replace updates of facts edited before (`edit --replace`, a new target
for the same subject and relation) and --revert out-of-order reverts of live edits; then
both checkouts again, with the share of replaced targets that still win. The same-subject
part commits two edits (two relations) for each of --same-subject subjects, all first edits
before any second one, and measures each relation after both checkouts;
--without-shared-subjects is its ablation (each edit keeps only its own target).

Prints one table per method and part, and saves the curves as a PNG (--plot).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table
from transformers import AutoTokenizer

from editstore import Store
from editstore.core.inputs import read_jsonl
from editstore.editing import edit
from editstore.methods import find_hparams
from editstore.methods.hparams import Hparams
from editstore.model.checkpoint import from_pretrained
from editstore.model.evaluate import evaluate_requests, score_pairs
from editstore.porcelain import revert
from editstore.world.build import SIZES, build_world, world_config
from editstore.world.knowledge import RELATIONS

console = Console(width=150)
OBJECTS = {r.name: r.objects for r in RELATIONS}


@dataclass(frozen=True)
class Row:
    """The measurements of one checkout."""

    label: str
    edits: int
    compose: str
    efficacy: float
    paraphrase: float
    specificity: float
    untouched: float
    other_relations: float
    seconds: float
    peak_mib: float
    stale: float | None = None  # replaced targets that still win


def shuffled_subjects(requests: Sequence[dict[str, Any]], seed: int) -> list[list[dict[str, Any]]]:
    """The requests grouped by subject (each group in the world's relation order), subjects shuffled by ``seed``."""
    by_subject: dict[str, list[dict[str, Any]]] = {}
    for r in requests:
        by_subject.setdefault(r["subject"], []).append(r)
    subjects = sorted(by_subject)
    random.Random(seed).shuffle(subjects)
    return [by_subject[s] for s in subjects]


def history(requests: Sequence[dict[str, Any]], n: int, seed: int) -> list[dict[str, Any]]:
    """``n`` requests on distinct subjects, relation i mod (number of relations) for the i-th."""
    groups = shuffled_subjects(requests, seed)
    if n > len(groups):
        raise SystemExit(f"--edits {n}: the world has {len(groups)} subjects")
    relations = [r.name for r in RELATIONS]
    return [{r["relation"]: r for r in g}[relations[i % len(relations)]] for i, g in enumerate(groups[:n])]


@contextlib.contextmanager
def new_store(world_path: Path) -> Iterator[Store]:
    """A store on the world in a temporary directory, the semantic check off (other subjects' prompts are
    not this benchmark's question)."""
    with tempfile.TemporaryDirectory() as tmp, Store.init(world_path, Path(tmp) / "store") as store:
        store.set_config("conflicts.semantic_threshold", "1.0")
        yield store


def packaged_hparams(world_path: Path, method: str) -> Hparams:
    return find_hparams(method, json.loads((world_path / "config.json").read_text()))


def update_of(request: dict[str, Any], rng: random.Random) -> dict[str, Any]:
    """The same subject and relation, another object than the request's target and the true one."""
    target = rng.choice([o for o in OBJECTS[request["relation"]] if o not in (request["target_new"], request["target_true"])])
    return {**request, "target_new": target}


@contextlib.contextmanager
def checked_out(store: Path, compose: str) -> Iterator[tuple[Any, Any, float, float]]:
    """Run `editstore checkout HEAD --out DIR --compose COMPOSE` into a temporary DIR; yield its model and
    tokenizer, the command's seconds and its peak RSS in MiB."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "version"
        start = time.perf_counter()
        proc = subprocess.Popen([shutil.which("editstore") or "editstore", "--store", str(store), "checkout", "HEAD",
                                 "--out", str(out), "--compose", compose, "--device", "cpu"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - start
        if status != 0:
            raise SystemExit(f"checkout failed: {proc.stderr.read().decode() if proc.stderr else status}")
        yield from_pretrained(out), AutoTokenizer.from_pretrained(out), seconds, usage.ru_maxrss / 1024


class World:
    """The world's facts, for the recall measurements."""

    def __init__(self, path: Path, n_recall: int) -> None:
        self.path = path
        self.facts = read_jsonl(path / "facts.jsonl")
        self.n_recall = n_recall

    def recall(self, model: Any, tok: Any, live: Sequence[dict[str, Any]]) -> tuple[float, float]:
        """(untouched recall, recall of the edited subjects' other relations) on ``model``."""
        edited = {(r["subject"], r["relation"]) for r in live}
        subjects = {s for s, _ in edited}
        untouched = [f for f in self.facts if f["subject"] not in subjects]
        others = [f for f in self.facts if f["subject"] in subjects and (f["subject"], f["relation"]) not in edited]
        out = []
        for facts in (untouched, others):
            facts = facts[:: max(1, len(facts) // self.n_recall)][: self.n_recall]
            scores = score_pairs(model, tok, [(f["trained_prompts"][0], f["object"]) for f in facts], batch_size=256)
            out.append(sum(s.top1 for s in scores) / max(len(scores), 1))
        return out[0], out[1]


def checkouts(lambdas: Sequence[float], targets: Sequence[str]) -> list[tuple[str, str, float, str]]:
    """(label, --compose, checkout.lambda_e, checkout.targets) of each checkout measured: sequential, then
    batched at each λ_e with each kind of targets."""
    out = [("sequential", "sequential", 0.0, "rebased")]
    for x in lambdas:
        for t in targets:
            label = " ".join(["batched"] + ([f"λ_e={x:g}"] if x else []) + ([f"{t} targets"] if len(targets) > 1 else []))
            out.append((label, "batched", x, t))
    return out


def configure(store: Store, lambda_e: float, targets: str) -> None:
    store.set_config("checkout.lambda_e", str(lambda_e))
    store.set_config("checkout.targets", targets)


def measure(store: Store, world: World, label: str, live: Sequence[dict[str, Any]], args: argparse.Namespace,
            stale: Sequence[dict[str, Any]] = ()) -> list[Row]:
    rows = []
    for name, compose, lambda_e, targets in checkouts(args.lambda_e, args.targets):
        configure(store, lambda_e, targets)
        with checked_out(store.root, compose) as (model, tok, seconds, peak):
            m = evaluate_requests(model, tok, live, batch_size=256)
            untouched, others = world.recall(model, tok, live)
            old = evaluate_requests(model, tok, stale, batch_size=256).efficacy if stale else None
        rows.append(Row(label, len(store.tree()), name, m.efficacy, m.paraphrase, m.specificity, untouched, others,
                        seconds, peak, old))
        console.log(rows[-1])
    return rows


def run_history(world_path: Path, world: World, method: str, args: argparse.Namespace) -> list[Row]:
    requests = read_jsonl(world_path / "requests.jsonl")
    todo = history(requests, args.edits, args.seed)
    hp = packaged_hparams(world_path, method)
    rows: list[Row] = []
    rng = random.Random(args.seed + 1)
    with new_store(world_path) as store:
        start = time.perf_counter()
        live: dict[str, dict[str, Any]] = {}  # edit id -> request
        for i, r in enumerate(todo, 1):
            edit(store, [r], method=method, hparams=hp, device="cpu")
            live[store.tree()[-1]] = r
            if i in args.at:
                console.log(f"{method}: {i} edits committed in {time.perf_counter() - start:.0f} s")
                rows += measure(store, world, method, list(live.values()), args)
        stale = []
        for eid in rng.sample(list(live), args.replace):
            new = update_of(live[eid], rng)
            edit(store, [new], method=method, hparams=hp, device="cpu", replace=True)
            stale.append(live.pop(eid))
            live[store.tree()[-1]] = new
        for eid in rng.sample(list(live), args.revert):
            revert(store, eid)
            del live[eid]
        label = f"{method} +{args.replace} replace -{args.revert} revert"
        rows += measure(store, world, label, list(live.values()), args, stale)
    return rows


def run_same_subject(world_path: Path, world: World, method: str, n: int, seed: int,
                     args: argparse.Namespace) -> list[tuple[str, Row, Row]]:
    groups = shuffled_subjects(read_jsonl(world_path / "requests.jsonl"), seed + 2)[:n]
    first = [g[0] for g in groups]
    second = [g[1 + i % (len(g) - 1)] for i, g in enumerate(groups)]
    hp = packaged_hparams(world_path, method)
    out = []
    with new_store(world_path) as store:
        for r in first + second:
            edit(store, [r], method=method, hparams=hp, device="cpu")
        for name, compose, lambda_e, targets in checkouts(args.lambda_e, args.targets):
            configure(store, lambda_e, targets)
            with checked_out(store.root, compose) as (model, tok, seconds, peak):
                untouched, others = world.recall(model, tok, first + second)
                rows = []
                for part in (first, second):
                    m = evaluate_requests(model, tok, part, batch_size=256)
                    rows.append(Row(method, 2 * n, name, m.efficacy, m.paraphrase, m.specificity, untouched, others,
                                    seconds, peak))
            out.append((name, rows[0], rows[1]))
    return out


def fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.3f}"


def plot(rows: Sequence[Row], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 4, figsize=(18, 4))
    for ax, metric in zip(axes, ("efficacy", "paraphrase", "specificity", "untouched")):
        curves: dict[str, list[Row]] = {}
        for r in rows:
            if "replace" not in r.label:
                curves.setdefault(f"{r.label} {r.compose}", []).append(r)
        for name, rs in curves.items():
            ax.plot([r.edits for r in rs], [getattr(r, metric) for r in rs], marker="o", label=name,
                    linestyle="-" if "batched" in name else "--")
        ax.set_xscale("log")
        ax.set_title(metric)
        ax.set_xlabel("edits")
        ax.set_ylim(0, 1.02)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="gpt2", choices=["gpt2", "llama"])
    parser.add_argument("--size", default="large", choices=SIZES)
    parser.add_argument("--methods", nargs="+", default=["rome", "memit", "alphaedit"])
    parser.add_argument("--edits", type=int, default=1000)
    parser.add_argument("--at", type=int, nargs="+", default=[100, 250, 500, 1000])
    parser.add_argument("--replace", type=int, default=100)
    parser.add_argument("--revert", type=int, default=50)
    parser.add_argument("--same-subject", type=int, default=200, help="Subjects with two edits each (0: skip).")
    parser.add_argument("--recall", type=int, default=1000, help="Facts per recall measurement.")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--lambda-e", type=float, nargs="+", default=[0.0],
                        help="checkout.lambda_e of each batched checkout (0: batched ROME, every edit exact).")
    parser.add_argument("--targets", nargs="+", default=["rebased"], choices=["rebased", "stored"],
                        help="checkout.targets of each batched checkout (rebased: each edit's δ on the weight "
                             "solved on; stored: the targets computed on each edit's own version).")
    parser.add_argument("--plot", type=Path, default=Path("lifelong.png"))
    parser.add_argument("--parts", nargs="+", default=["history", "same-subject"], choices=["history", "same-subject"])
    parser.add_argument("--without-shared-subjects", action="store_true",
                        help="Ablation: no companion objectives at edit time and no shared subject values in the "
                             "re-solve (each edit keeps only its own target).")
    args = parser.parse_args()
    if args.without_shared_subjects:
        import editstore.compose.resolve
        import editstore.editing

        editstore.editing.companions = lambda store, tree, requests, contradicted=(): [[] for _ in requests]
        # each edit on its own target: its own δ rebased (rebased targets) or its stored target (stored targets)
        grouped = editstore.compose.resolve.Group.rebased_subjects
        editstore.compose.resolve.Group.rebased_subjects = (
            lambda self, every: [[c] for cols in grouped(self, every) for c in cols] if every else [])
    args.at = sorted(a for a in args.at if a <= args.edits)
    path = build_world(config=world_config(args.arch, 0, args.size))
    world = World(path, args.recall)
    info = json.loads((path / "world.json").read_text())
    console.print(f"{args.arch} {args.size} world: {info['n_subjects']} subjects, {info['n_facts']} facts, "
                  f"recall {info['recall']}")
    rows: list[Row] = []
    if "history" in args.parts:
        for method in args.methods:
            rows += run_history(path, world, method, args)
        table = Table("history", "edits", "checkout", "efficacy", "paraphrase", "specificity", "untouched recall",
                      "other relations", "replaced still win", "checkout s", "peak MiB",
                      title=f"lifelong editing, {args.arch} {args.size} world: one commit per edit")
        for r in rows:
            table.add_row(r.label, str(r.edits), r.compose, fmt(r.efficacy), fmt(r.paraphrase), fmt(r.specificity),
                          fmt(r.untouched), fmt(r.other_relations), fmt(r.stale), f"{r.seconds:.1f}", f"{r.peak_mib:.0f}")
        console.print(table)
        plot(rows, args.plot)
        console.print(f"plot saved to {args.plot}")
    if "same-subject" in args.parts and args.same_subject:
        table = Table("method", "checkout", "efficacy 1st relation", "efficacy 2nd relation", "paraphrase 1st / 2nd",
                      "untouched recall", title=f"{args.same_subject} subjects with two edited relations each "
                                                f"({args.arch} {args.size} world, one commit per edit)")
        for method in args.methods:
            for compose, a, b in run_same_subject(path, world, method, args.same_subject, args.seed, args):
                table.add_row(method, compose, fmt(a.efficacy), fmt(b.efficacy),
                              f"{fmt(a.paraphrase)} / {fmt(b.paraphrase)}", fmt(a.untouched))
        console.print(table)


if __name__ == "__main__":
    main()
