"""Conflict detection: precision and recall per kind on the fact world, and the index's speed at scale.

    python benchmarks/conflicts.py [--parts quality scale] [--arch gpt2|llama|t5] [--stored 100] [--seed 0]
                                   [--scale 100000] [--queries 500] [--dims 256:512]

quality: a store on the GPT-2 world (--arch: another) with --stored MEMIT edits on distinct subjects, and
         one labelled case of each kind per stored edit (editstore.world.conflict_cases):
         contradictions and duplicates in another formulation than the stored edit, near
         misses with the same relation and another subject, or the same subject and
         another relation. Each case is checked alone against the version (as
         `editstore conflicts --prompt ...` does, interference at MEMIT's layer), and the
         table counts what it was flagged as. A contradiction or duplicate counts as found
         only when it names the right stored edit. Bars (issue 5): contradiction precision
         and recall ≥ 0.95, near misses flagged as contradiction or duplicate ≤ 5%.
scale:   an index of --scale edits (4 per subject, vectors of --dims semantic:key
         dimensions, drawn around 5 relation directions and one direction per subject,
         as the world's embeddings are) and the time of one Checker.check of a
         prospective edit, the index part only (FAISS searches, the subject lookup, the
         relation cosines), over --queries queries: p50 and p99. Bars: p50 ≤ 5 ms, p99 ≤ 20 ms.
         The model-forward part (the prompt embedding and the keys) is timed separately
         on the world model. Also the recall@10 of the IVF index against exact search.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from editstore import Store
from editstore.compose.checkout import checkout
from editstore.compose.materialise import load_model
from editstore.conflicts.checks import make_embedder, prospective_keys, version_checker
from editstore.conflicts.detect import Checker, Thresholds
from editstore.conflicts.index import ROWS, ConflictIndex
from editstore.core.inputs import read_jsonl
from editstore.editing import edit
from editstore.methods import find_hparams, resolve_hparams
from editstore.model.tokens import load_tokenizer
from editstore.world.build import ARCHES, build_world
from editstore.world.conflict_cases import EXPECTED, KINDS, conflict_cases, distinct_subject_requests

console = Console(width=130)


def quality(a: argparse.Namespace) -> None:
    world = build_world(a.arch)
    stored, free = distinct_subject_requests(read_jsonl(world / "requests.jsonl"), a.stored, seed=a.seed)
    cases = conflict_cases(stored, free, seed=a.seed)
    config = json.loads((world / "config.json").read_text())
    hp = find_hparams("memit", config).replace(**{"stats.samples": 1000})
    with tempfile.TemporaryDirectory() as tmp, Store.init(world, Path(tmp) / "store") as store:
        edit(store, stored, method="memit", hparams=hp, device="cpu")
        tree = store.tree()
        model = checkout(store, "HEAD", device="cpu")
        base_model = load_model(store.base, {}, device=torch.device("cpu"), base_hashes={})
        embedder = make_embedder(store, base_model)
        requests = [c.request for c in cases]
        start = time.perf_counter()
        vectors = embedder.embed(requests)
        embed_s = (time.perf_counter() - start) / len(cases)
        start = time.perf_counter()
        keys = prospective_keys(store, model, load_tokenizer(store.base), requests, resolve_hparams(store.base, "memit", hp))
        keys_s = (time.perf_counter() - start) / len(cases)
        checker = version_checker(store, tree, embed=lambda: embedder, head=True)
        flagged = []
        for i, case in enumerate(cases):
            found = checker.check([case.request], vectors[i : i + 1], [keys[i]])
            right = tree[case.stored] if case.stored is not None else None
            flagged.append({c.kind for c in found if c.kind not in ("contradiction", "duplicate") or c.other == right}
                           | {f"wrong-{c.kind}" for c in found if c.kind in ("contradiction", "duplicate")
                              and c.other != right})
    table = Table("case", "n", "contradiction", "duplicate", "semantic", "interference",
                  title=f"what each labelled case was flagged as ({a.stored} stored MEMIT edits, {a.arch} world)")
    for label in KINDS:
        rows = [f for f, c in zip(flagged, cases) if c.label == label]
        table.add_row(label, str(len(rows)), *(f"{sum(k in f or f'wrong-{k}' in f for f in rows)}"
                                               for k in ("contradiction", "duplicate", "semantic", "interference")))
    console.print(table)
    summary = Table("measure", "value", "bar", title="precision and recall")
    for kind in ("contradiction", "duplicate"):
        hits = sum(kind in f for f, c in zip(flagged, cases) if EXPECTED[c.label] == kind)
        flagged_any = sum(kind in f or f"wrong-{kind}" in f for f in flagged)
        total = sum(EXPECTED[c.label] == kind for c in cases)
        bar = "≥ 0.95" if kind == "contradiction" else ""
        summary.add_row(f"{kind} precision", f"{hits / max(flagged_any, 1):.3f}", bar)
        summary.add_row(f"{kind} recall", f"{hits / total:.3f}", bar)
    near = [f for f, c in zip(flagged, cases) if EXPECTED[c.label] is None]
    fp = sum(bool(f & {"contradiction", "duplicate", "wrong-contradiction", "wrong-duplicate"}) for f in near)
    summary.add_row("near misses flagged contradiction or duplicate", f"{fp / len(near):.3f}", "≤ 0.05")
    summary.add_row("model part per check: embedding (ms)", f"{embed_s * 1e3:.2f}", "")
    summary.add_row("model part per check: keys at MEMIT's layer (ms)", f"{keys_s * 1e3:.2f}", "")
    console.print(summary)


def scale(a: argparse.Namespace) -> None:
    d_sem, d_key = (int(x) for x in a.dims.split(":"))
    n, rng = a.scale, np.random.default_rng(a.seed)
    subjects = n // 4

    def unit(x: np.ndarray) -> np.ndarray:
        return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)

    relation_dirs = unit(rng.standard_normal((5, d_sem)))
    subject_dirs = unit(rng.standard_normal((subjects, d_sem)))
    rel_of = rng.integers(0, 5, n)
    subj_of = np.arange(n) // 4
    sem = unit(relation_dirs[rel_of] + subject_dirs[subj_of] + 0.3 * unit(rng.standard_normal((n, d_sem))))
    key_subject = unit(rng.standard_normal((subjects, d_key)))
    keys = unit(key_subject[subj_of] + 0.5 * unit(rng.standard_normal((n, d_key))))
    ids = [f"e{i:07d}" for i in range(n)]
    with tempfile.TemporaryDirectory() as tmp:
        index = ConflictIndex(Path(tmp), "bench", "bench", flat_max=20_000)
        start = time.perf_counter()
        index.sync(ids, semantic=lambda new: {e: sem[int(e[1:])] for e in new},
                   keys=lambda new: {e: {"p.weight": keys[int(e[1:])][None]} for e in new})
        build_s = time.perf_counter() - start
        requests = {e: {"subject": f"subject {subj_of[i]}", "target_new": f"t{rel_of[i]}", "prompt": "{}"}
                    for i, e in enumerate(ids)}
        checker = Checker(index, requests, Thresholds(relation=0.55, semantic=0.85, interference=0.8))
        times = []
        for q in range(a.queries):
            i = int(rng.integers(0, n))
            request = {"subject": f"subject {subj_of[i]}", "target_new": "other", "prompt": "{}"}
            v = torch.from_numpy(sem[i : i + 1] + 0.05 * rng.standard_normal((1, d_sem)).astype(np.float32))
            k = {"p.weight": keys[i : i + 1]}
            start = time.perf_counter()
            checker.check([request], v, [k])
            times.append(time.perf_counter() - start)
        queries = sem[rng.integers(0, n, 100)]
        exact = np.argsort(-(queries @ sem.T), axis=1)[:, :10]
        approx = index.semantic.search(queries, 10)[1] // ROWS  # FAISS ids are edit number · ROWS + row
        recall = np.mean([len(set(e) & set(a_)) / 10 for e, a_ in zip(exact, approx)])
    ms = sorted(t * 1e3 for t in times)
    table = Table("measure", "value", "bar", title=f"one prospective check against {n:,} indexed edits "
                                                  f"(semantic {d_sem}-d, keys {d_key}-d, CPU)")
    table.add_row("index kind", "IVF" if index.semantic.approximate else "flat", "")
    table.add_row("build (s)", f"{build_s:.1f}", "")
    table.add_row("check p50 (ms)", f"{statistics.median(ms):.2f}", "≤ 5")
    table.add_row("check p99 (ms)", f"{ms[int(0.99 * (len(ms) - 1))]:.2f}", "≤ 20")
    table.add_row("semantic recall@10 vs exact", f"{recall:.3f}", "")
    console.print(table)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--parts", nargs="+", choices=["quality", "scale"], default=["quality", "scale"])
    p.add_argument("--arch", choices=ARCHES, default="gpt2", help="The world of the quality part.")
    p.add_argument("--stored", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--scale", type=int, default=100_000)
    p.add_argument("--queries", type=int, default=500)
    p.add_argument("--dims", default="256:512", help="semantic:key dimensions (the GPT-2 world's by default)")
    a = p.parse_args()
    console.print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    if "quality" in a.parts:
        quality(a)
    if "scale" in a.parts:
        scale(a)


if __name__ == "__main__":
    main()
