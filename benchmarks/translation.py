"""Editing the translation world: its four NMT tasks, by each method, single edits and a batch; prints one table.

    python benchmarks/translation.py [--methods rome,memit,emmet,alphaedit,ft,mend] [--edits 20] [--batch 100]

The world (``editstore world build --arch marian``) translates NAME VERB ADJ NOUN into NAME NOUN ADJ
VERB and writes each task's requests to ``tasks/<task>.jsonl``; every request edits what the model
writes for the sentence's subject (the translation's first word), from one example sentence, with
the packaged ``<method>-marian-world.json`` hparams (the encoder MLP of layer 0 at the subject):

  rename   a name's rendering replaced by another (a mistranslated name fixed)
  keep     a name kept as it is (copied) instead of transliterated
  delete   a name's rendering never produced again (a behaviour deletion: only the unwanted output given)
  formal   the plain "you", which leaves formality open, always rendered formal

Metrics are ``editstore eval``'s (editstore.model.evaluate), under greedy decoding: efficacy (the
edited sentence's translation starts with the new rendering; for ``delete``: no longer with the
old), generalisation (the same on 10 other sentences with the subject), locality (the share of 20
sentences without it whose whole translation is unchanged), and chrF of the held-out translations
(400 sentences, less those with an edited subject) before and after the edit. ``single``: each of
the first ``--edits`` requests alone on the base, averaged; ``batch``: the first ``--batch``
requests at once (the formal task has one subject, so no batch). A method that cannot delete (ft, mend) skips ``delete``.
MEND's editor is trained here on the rename and keep requests past the first ``--edits`` (other
names), measured on single edits only (a batch of 100 would hold its training names).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", default="rome,memit,emmet,alphaedit,ft,mend")
    parser.add_argument("--tasks", default="rename,keep,delete,formal")
    parser.add_argument("--edits", type=int, default=20, help="single edits per task")
    parser.add_argument("--batch", type=int, default=100, help="requests in a task's batch (0: none)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=JSON",
                        help='override an hparam of every method, e.g. layers=[1] or targets.v_steps=60 (ablations)')
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args()

    from transformers import AutoTokenizer, MarianMTModel

    from editstore.behavior import untouched_facts
    from editstore.core.inputs import read_jsonl
    from editstore.methods import compute_edits, find_hparams, registry
    from editstore.methods.hooks import as_updates, patched
    from editstore.model.evaluate import evaluate_requests
    from editstore.model.stats import second_moment
    from editstore.model.translate import chrf, translate
    from editstore.world.translation import HELD_OUT_PAIRS, TASKS_DIR, build_translation_world

    world = build_translation_world()
    model = MarianMTModel.from_pretrained(world).eval()
    tok = AutoTokenizer.from_pretrained(world)
    config = json.loads((world / "config.json").read_text())
    held = untouched_facts(world, set(), limit=HELD_OUT_PAIRS)  # (source, reference) of every held-out sentence
    base = dict(zip([s for s, _ in held], translate(model, tok, [s for s, _ in held])))
    corpus = (world / "corpus.txt").read_text().splitlines()
    requests = {t: read_jsonl(world / TASKS_DIR / f"{t}.jsonl") for t in args.tasks.split(",")}

    def measure(hp: Any, sigmas: dict[str, Any], batch: list[dict[str, Any]], editor: Any = None) -> dict[str, float]:
        start = time.perf_counter()
        deltas = compute_edits(model, tok, batch, hp, sigmas=sigmas, editor=editor).deltas
        seconds = time.perf_counter() - start
        untouched = untouched_facts(world, {r["subject"] for r in batch}, limit=HELD_OUT_PAIRS)  # as `eval` does
        sources, references = [s for s, _ in untouched], [r for _, r in untouched]
        with patched(model, as_updates(deltas)):
            m = evaluate_requests(model, tok, batch)
            after = translate(model, tok, sources)
        return {"efficacy": m.efficacy_top1, "generalisation": m.paraphrase_top1, "locality": m.specificity_top1,
                "chrf_before": chrf([base[s] for s in sources], references),
                "chrf": chrf(after, references), "seconds": seconds / len(batch)}

    def train_mend(hp: Any, requests: dict[str, list[dict[str, Any]]], skip: int) -> Any:
        """A MEND editor trained on the rename and keep requests past the first ``skip`` (which are measured)."""
        from editstore.methods.mend import train_editor
        from editstore.methods.splits import split_by_subject

        train = [r for t in ("rename", "keep") for r in requests.get(t, [])[skip:]]
        if not train:
            raise SystemExit("MEND trains on the rename and keep tasks: include one of them in --tasks")
        train, val = split_by_subject(train, hp.mend.val_size)
        editor, metrics = train_editor(model, tok, [hp.module_name(layer) for layer in hp.layers], train, val, hp.mend)
        print(json.dumps({"mend training": metrics}), flush=True)
        return editor

    overrides = {k: json.loads(v) for k, v in (a.split("=", 1) for a in args.set)}
    if "layers" in overrides:
        overrides["layers"] = tuple(overrides["layers"])
    rows: list[dict[str, Any]] = []
    for method in args.methods.split(","):
        hp = find_hparams(method, config).replace(**overrides)
        modules = [hp.module_name(layer) for layer in hp.layers]
        needs_sigma = registry.method(method).needs_statistics
        sigmas = {m: second_moment(model, tok, corpus[: hp.stats.samples], model.get_submodule(m))[0]
                  for m in modules} if needs_sigma else {}
        editor = train_mend(hp, requests, args.edits) if method == "mend" else None
        for task, reqs in requests.items():
            if task == "delete" and not registry.method(method).can_delete:
                continue
            singles = [measure(hp, sigmas, [r], editor) for r in reqs[: args.edits]]
            if singles:
                rows.append({"method": method, "task": task, "edits": f"{len(singles)} single",
                             **{k: statistics.mean(s[k] for s in singles) for k in singles[0]}})
                print(json.dumps(rows[-1]), flush=True)
            if args.batch and task != "formal" and method != "mend":
                rows.append({"method": method, "task": task, "edits": f"batch of {min(args.batch, len(reqs))}",
                             **measure(hp, sigmas, reqs[: args.batch])})
                print(json.dumps(rows[-1]), flush=True)

    table = Table(title="translation world: edits of the first output word")
    for column in ("method", "task", "edits", "efficacy", "generalisation", "locality", "chrF before", "chrF after",
                   "s / edit"):
        table.add_column(column, justify="left" if column in ("method", "task", "edits") else "right")
    for r in rows:
        table.add_row(r["method"], r["task"], r["edits"], f"{r['efficacy']:.2f}", f"{r['generalisation']:.2f}",
                      f"{r['locality']:.2f}", f"{r['chrf_before']:.1f}", f"{r['chrf']:.1f}", f"{r['seconds']:.2f}")
    Console(width=140).print(table)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
