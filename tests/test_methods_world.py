"""Floors of every method on the GPT-2 fact world: small versions of benchmarks/methods.py.

A regression in a method (targets, solver, keys) fails here. Edited models are composed
with forward hooks (W + Σ U Vᵀ), the sum a checkout writes.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from editstore.behavior import untouched_facts
from editstore.delta import Delta
from editstore.evaluate import Metrics, evaluate_requests
from editstore.methods import METHODS, compute_edits, edited_modules, find_hparams
from editstore.methods.hooks import as_keys, as_updates, patched
from editstore.stats import second_moment
from editstore.world.build import build_world, read_jsonl


class World:
    def __init__(self) -> None:
        self.path = build_world("gpt2")
        self.model = AutoModelForCausalLM.from_pretrained(self.path).eval()
        self.tok = AutoTokenizer.from_pretrained(self.path)
        config = json.loads((self.path / "config.json").read_text())
        self.hparams = {m: find_hparams(m, config) for m in METHODS}
        modules = sorted({name for m, hp in self.hparams.items() if m != "ft" for name in edited_modules(hp)})
        corpus = (self.path / "corpus.txt").read_text().splitlines()
        sigmas, _ = second_moment(self.model, self.tok, corpus, [self.model.get_submodule(n) for n in modules])
        self.sigmas = dict(zip(modules, sigmas))
        seen: set[str] = set()
        self.requests = [r for r in read_jsonl(self.path / "requests.jsonl")[1::7] if not (r["subject"] in seen or seen.add(r["subject"]))]

    def take(self, n: int, offset: int = 0) -> list[dict[str, Any]]:
        return self.requests[offset :: len(self.requests) // n][:n]

    def edit(self, method: str, requests: Sequence[dict], earlier: Sequence[Delta] = ()) -> list[Delta]:
        prior = as_keys(earlier) if method == "alphaedit" else None
        with patched(self.model, as_updates(earlier)):
            return compute_edits(self.model, self.tok, requests, self.hparams[method], sigmas=self.sigmas, prior_keys=prior).deltas

    def evaluate(self, requests: Sequence[dict], deltas: Sequence[Delta], *, recall: int = 0) -> Metrics:
        facts = untouched_facts(self.path, {r["subject"] for r in requests}, limit=recall) if recall else []
        with patched(self.model, as_updates(deltas)):
            return evaluate_requests(self.model, self.tok, requests, recall_facts=facts)


@pytest.fixture(scope="module")
def world() -> World:
    return World()


def mean(metrics: Sequence[Metrics], key: str) -> float:
    return sum(getattr(m, key) for m in metrics) / len(metrics)


def test_rome_single_edits(world: World) -> None:
    requests = world.take(12)
    scores = [world.evaluate([r], world.edit("rome", [r])) for r in requests]
    assert mean(scores, "efficacy") >= 0.95
    assert mean(scores, "paraphrase") >= 0.6
    assert mean(scores, "specificity") >= 0.85


@pytest.mark.parametrize("method", ["memit", "emmet"])
def test_batched_edits(world: World, method: str) -> None:
    requests = world.take(24, offset=1)
    m = world.evaluate(requests, world.edit(method, requests))
    assert m.efficacy >= 0.9
    assert m.specificity >= 0.8


@pytest.fixture(scope="module")
def alphaedit_sequence(world: World) -> tuple[Metrics, Metrics]:
    """(base, after) metrics of 20 AlphaEdit edits, one on top of the other, with 200 untouched facts."""
    requests = world.take(20, offset=2)
    deltas: list[Delta] = []
    for r in requests:
        deltas += world.edit("alphaedit", [r], deltas)
    return world.evaluate(requests, [], recall=200), world.evaluate(requests, deltas, recall=200)


def test_alphaedit_sequence_keeps_earlier_edits(alphaedit_sequence: tuple[Metrics, Metrics]) -> None:
    _, after = alphaedit_sequence
    assert after.efficacy >= 0.85


@pytest.mark.xfail(strict=True, reason="the world's facts are brittle: each edit flips about 1.5% of untouched "
                   "facts, and Σ's null space does not hold the subject keys apart (issue 3 closing note)")
def test_alphaedit_sequence_keeps_untouched_facts(alphaedit_sequence: tuple[Metrics, Metrics]) -> None:
    base, after = alphaedit_sequence
    assert after.recall >= base.recall - 0.10


def test_ft_moves_the_edited_fact(world: World) -> None:
    requests = world.take(8, offset=3)
    scores = [world.evaluate([r], world.edit("ft", [r])) for r in requests]
    assert mean(scores, "efficacy") >= 0.75
