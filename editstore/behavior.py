"""Behaviour of versions: ``eval`` metrics stored against a commit, and the behavioural diff.

Both run probes through in-memory checkouts. The probes come from the edit
requests of the versions (or a requests file) and, on a fact-world base, from
the facts no edit touched (``facts.jsonl`` beside the base weights).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .compose.checkout import checkout, checkout_tree
from .core.inputs import iter_jsonl, read_jsonl
from .core.requests import EditRequest
from .core.schema import validate
from .evaluations import record_evaluation
from .model.evaluate import Metrics, evaluate_requests, next_tokens
from .model.forward import is_encoder_decoder
from .model.tokens import fill, load_tokenizer
from .model.translate import chrf, greedy_outputs, translate
from .store import Store

log = logging.getLogger(__name__)

FACTS_FILE = "facts.jsonl"  # a fact world's facts
HELD_OUT_FILE = "held_out.jsonl"  # a translation world's held-out sentence pairs


def load_requests(path: str | Path) -> list[EditRequest]:
    """Edit requests from a UTF-8 JSON Lines file, each validated against ``edit-request.schema.json``;
    errors name the line (:class:`InputError` for what is not JSON, :class:`SchemaError` for what is not a request)."""
    rows = []
    for where, row in iter_jsonl(path, what="requests file"):
        validate(row, "edit-request", what=where)
        rows.append(row)
    return rows


def edit_requests(store: Store, tree: Sequence[str]) -> list[EditRequest]:
    """The requests of the edits in a tree (imported deltas have none)."""
    return [r for r in (store.edit(e).request for e in tree) if r]


def world_probes(base: Path) -> str | None:
    """Which probes of its own the world at ``base`` has: ``"fact"`` (a fact world's facts), ``"held-out"``
    (a translation world's held-out sentence pairs) or None (not a world)."""
    if (base / FACTS_FILE).is_file():
        return "fact"
    if (base / HELD_OUT_FILE).is_file():
        return "held-out"
    return None


def untouched_facts(base: Path, edited_subjects: set[str], *, limit: int) -> list[tuple[str, str]]:
    """(prompt, expected output) of up to ``limit`` of the world's own probes at ``base`` (:func:`world_probes`)
    whose subject no edit touched, spread evenly: facts and their objects, or source sentences and their
    reference translations."""
    kind = world_probes(base)
    if kind == "fact":
        rows = [(f["subject"], f["trained_prompts"][0], f["object"]) for f in read_jsonl(base / FACTS_FILE)]
    elif kind == "held-out":
        rows = [(p["subject"], p["source"], p["target"]) for p in read_jsonl(base / HELD_OUT_FILE)]
    else:
        return []
    kept = [(prompt, expected) for subject, prompt, expected in rows if subject not in edited_subjects]
    step = max(1, len(kept) // limit) if limit else 1
    return kept[::step][:limit]


def evaluate_version(
    store: Store,
    rev: str = "HEAD",
    *,
    requests: Sequence[EditRequest] | None = None,
    recall_limit: int = 500,
    device: str | torch.device = "auto",
    device_map: str | dict[str, Any] | None = None,
) -> Metrics:
    """Metrics of version ``rev`` on ``requests`` (default: its own edits' requests); stored against the commit.

    Recall is measured on the world's own probes no edit touched (:func:`untouched_facts`); on a translation
    world also the chrF of those held-out translations, by ``rev`` and by the base."""
    commit_id = store.resolve(rev)
    tree = store.tree(commit_id)
    own = edit_requests(store, tree)
    reqs = list(requests) if requests is not None else own
    edited = {r["subject"] for r in own}
    facts = untouched_facts(store.base.path, edited, limit=recall_limit)
    model = checkout(store, commit_id, device=device, device_map=device_map)
    tokenizer = load_tokenizer(store.base)
    metrics = evaluate_requests(model, tokenizer, reqs, recall_facts=facts)
    if world_probes(store.base.path) == "held-out" and facts:  # a translation world: chrF before and after
        sources, references = [p for p, _ in facts], [r for _, r in facts]
        after = chrf(translate(model, tokenizer, sources), references)
        del model
        base = checkout_tree(store, [], device=device, device_map=device_map)
        metrics = dataclasses.replace(metrics, chrf=after, chrf_base=chrf(translate(base, tokenizer, sources), references))
    record_evaluation(store, commit_id, reqs, metrics.to_json())
    return metrics


@dataclass(frozen=True)
class Probe:
    kind: str  # edit | paraphrase | neighborhood | fact (held-out: a translation world's sentences)
    prompt: str


@dataclass(frozen=True)
class BehaviorChange:
    probe: Probe
    answer_a: str
    p_a: float
    answer_b: str
    p_b: float


@dataclass(frozen=True)
class BehaviorDiff:
    a: str
    b: str
    n_probes: dict[str, int]
    changes: list[BehaviorChange]

    def to_json(self) -> dict[str, Any]:
        return {
            "a": self.a, "b": self.b, "n_probes": self.n_probes,
            "n_changed": {k: sum(c.probe.kind == k for c in self.changes) for k in self.n_probes},
            "changes": [{"kind": c.probe.kind, "prompt": c.probe.prompt, "answer_a": c.answer_a, "p_a": c.p_a,
                         "answer_b": c.answer_b, "p_b": c.p_b} for c in self.changes],
        }


def probes_for(store: Store, trees: Sequence[Sequence[str]], requests: Sequence[EditRequest], *, facts: int) -> list[Probe]:
    """Edit prompts, paraphrases and neighbourhoods of every request, then untouched facts; no duplicates."""
    reqs = [r for tree in trees for r in edit_requests(store, tree)] + list(requests)
    probes: list[Probe] = []
    for r in reqs:
        probes.append(Probe("edit", fill(r["prompt"], r["subject"])))
        probes += [Probe("paraphrase", p) for p in r.get("paraphrase_prompts", [])]
        probes += [Probe("neighborhood", n["prompt"]) for n in r.get("neighborhood_prompts", [])]
    edited = {r["subject"] for r in reqs}
    kind = world_probes(store.base.path) or "fact"
    probes += [Probe(kind, p) for p, _ in untouched_facts(store.base.path, edited, limit=facts)]
    first: dict[str, Probe] = {}
    for p in probes:  # each prompt once, where it first came
        first.setdefault(p.prompt, p)
    return list(first.values())


def behavior_diff(
    store: Store,
    rev_a: str,
    rev_b: str,
    *,
    requests: Sequence[EditRequest] = (),
    facts: int = 200,
    device: str | torch.device = "auto",
) -> BehaviorDiff:
    """Every probe whose greedy answer differs between versions A and B, with both probabilities: the next token,
    or an encoder-decoder's whole output (a translation)."""
    a, b = store.resolve(rev_a), store.resolve(rev_b)
    probes = probes_for(store, [store.tree(a), store.tree(b)], requests, facts=facts)
    tokenizer = load_tokenizer(store.base)
    prompts = [p.prompt for p in probes]
    answers: list[list[tuple[int | str, str, float]]] = []  # per version and probe: (what is compared, shown, p)
    for commit_id in (a, b):  # one model in memory at a time
        model = checkout(store, commit_id, device=device)
        if is_encoder_decoder(model):  # whole outputs; one cut at the length limit is shown with "…"
            answers.append([(o.text, o.text if o.complete else o.text + " …", o.p)
                            for o in greedy_outputs(model, tokenizer, prompts)])
        else:  # next tokens, told apart by id (two tokens can decode alike)
            answers.append([(t, tokenizer.decode([t]).strip(), p) for t, p in next_tokens(model, tokenizer, prompts)])
        del model
    changes = [BehaviorChange(probe, shown_a, pa, shown_b, pb)
               for probe, (ka, shown_a, pa), (kb, shown_b, pb) in zip(probes, *answers) if ka != kb]
    counts: dict[str, int] = {}
    for p in probes:
        counts[p.kind] = counts.get(p.kind, 0) + 1
    return BehaviorDiff(a, b, counts, changes)
