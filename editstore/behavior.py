"""Behaviour of versions: ``eval`` metrics stored against a commit, and the behavioural diff.

Both run probes through in-memory checkouts. The probes come from the edit
requests of the versions (or a requests file) and, on a fact-world base, from
the facts no edit touched (``facts.jsonl`` beside the base weights).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .compose.checkout import checkout
from .core.inputs import iter_jsonl, read_jsonl
from .core.requests import EditRequest
from .core.schema import validate
from .evaluations import record_evaluation
from .model.evaluate import Metrics, evaluate_requests, next_tokens
from .model.tokens import fill, load_tokenizer
from .store import Store

log = logging.getLogger(__name__)

FACTS_FILE = "facts.jsonl"


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


def untouched_facts(base: Path, edited_subjects: set[str], *, limit: int) -> list[tuple[str, str]]:
    """(prompt, object) of up to ``limit`` facts of the world at ``base`` whose subject no edit touched, spread evenly."""
    path = base / FACTS_FILE
    if not path.is_file():
        return []
    facts = [f for f in read_jsonl(path) if f["subject"] not in edited_subjects]
    step = max(1, len(facts) // limit) if limit else 1
    return [(f["trained_prompts"][0], f["object"]) for f in facts[::step][:limit]]


def evaluate_version(
    store: Store,
    rev: str = "HEAD",
    *,
    requests: Sequence[EditRequest] | None = None,
    recall_limit: int = 500,
    device: str | torch.device = "auto",
    device_map: str | dict[str, Any] | None = None,
) -> Metrics:
    """Metrics of version ``rev`` on ``requests`` (default: its own edits' requests); stored against the commit."""
    commit_id = store.resolve(rev)
    tree = store.tree(commit_id)
    own = edit_requests(store, tree)
    reqs = list(requests) if requests is not None else own
    edited = {r["subject"] for r in own}
    facts = untouched_facts(store.base.path, edited, limit=recall_limit)
    model = checkout(store, commit_id, device=device, device_map=device_map)
    metrics = evaluate_requests(model, load_tokenizer(store.base), reqs, recall_facts=facts)
    record_evaluation(store, commit_id, reqs, metrics.to_json())
    return metrics


@dataclass(frozen=True)
class Probe:
    kind: str  # edit | paraphrase | neighborhood | fact
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
    probes += [Probe("fact", p) for p, _ in untouched_facts(store.base.path, edited, limit=facts)]
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
    """Every probe whose greedy next token differs between versions A and B, with both probabilities."""
    a, b = store.resolve(rev_a), store.resolve(rev_b)
    probes = probes_for(store, [store.tree(a), store.tree(b)], requests, facts=facts)
    tokenizer = load_tokenizer(store.base)
    prompts = [p.prompt for p in probes]
    answers = []
    for commit_id in (a, b):  # one model in memory at a time
        model = checkout(store, commit_id, device=device)
        answers.append(next_tokens(model, tokenizer, prompts))
        del model
    changes = [
        BehaviorChange(p, tokenizer.decode([ta]).strip(), pa, tokenizer.decode([tb]).strip(), pb)
        for p, (ta, pa), (tb, pb) in zip(probes, *answers)
        if ta != tb
    ]
    counts: dict[str, int] = {}
    for p in probes:
        counts[p.kind] = counts.get(p.kind, 0) + 1
    return BehaviorDiff(a, b, counts, changes)
