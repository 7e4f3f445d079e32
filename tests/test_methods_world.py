"""Floors of every method on the GPT-2 fact world, and of ROME and EMMET on the T5 world: small versions of benchmarks/methods.py.

A regression in a method (targets, solver, keys) fails here. Edited versions are
composed with forward hooks (W + Σ U Vᵀ), the sum a checkout writes.
"""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from editstore.model.evaluate import Metrics
from editstore.world.bench import WorldBench, sequence

RECALL = 200


@pytest.fixture(scope="module")
def world() -> WorldBench:
    return WorldBench("gpt2")


def mean(metrics: Sequence[Metrics], key: str) -> float:
    return sum(getattr(m, key) for m in metrics) / len(metrics)


def single_edits(world: WorldBench, method: str, requests: Sequence[dict]) -> list[Metrics]:
    return [world.evaluate([r], world.edit(method, [r]).deltas) for r in requests]


def test_rome_single_edits(world: WorldBench) -> None:
    scores = single_edits(world, "rome", world.take(16))  # the benchmark holds 0.95 over 100; here one miss in 16 is allowed
    assert mean(scores, "efficacy") >= 0.9
    assert mean(scores, "paraphrase") >= 0.6
    assert mean(scores, "specificity") >= 0.85


@pytest.mark.parametrize("method", ["memit", "emmet"])
def test_batched_edits(world: WorldBench, method: str) -> None:
    requests = world.take(24, offset=1)
    m = world.evaluate(requests, world.edit(method, requests).deltas)
    assert m.efficacy >= 0.9
    assert m.specificity >= 0.8


@pytest.fixture(scope="module")
def sequences(world: WorldBench) -> dict[str, Metrics]:
    """Metrics after 20 edits one on top of the other, per method, and of the base."""
    requests = world.take(20, offset=2)
    after = {m: world.evaluate(requests, sequence(world, m, requests), recall=RECALL) for m in ("memit", "alphaedit")}
    return {"base": world.evaluate(requests, [], recall=RECALL), **after}


def test_alphaedit_protects_untouched_facts_better_than_memit_in_sequence(sequences: dict[str, Metrics]) -> None:
    assert sequences["alphaedit"].recall > sequences["memit"].recall + 0.05


@pytest.mark.xfail(strict=True, reason="floor missed on the fact world: each edit flips about 1.5% of untouched facts "
                   "and Σ of the corpus does not hold the subject keys apart (issue 3 closing note)")
def test_alphaedit_sequence_meets_the_issue_floors(sequences: dict[str, Metrics]) -> None:
    assert sequences["alphaedit"].efficacy >= 0.9
    assert sequences["alphaedit"].recall >= sequences["base"].recall - 0.10


def test_ft_moves_the_edited_fact(world: WorldBench) -> None:
    assert mean(single_edits(world, "ft", world.take(8, offset=3)), "efficacy") >= 0.75


@pytest.fixture(scope="module")
def t5_world() -> WorldBench:
    return WorldBench("t5")


def test_t5_rome_single_edits_and_deletions(t5_world: WorldBench) -> None:
    """The issue's T5 bars (ROME: efficacy 0.90, specificity 0.85 over 100) on 16 edits, one miss allowed."""
    from editstore.core.requests import as_deletion

    requests = t5_world.take(16)
    scores = single_edits(t5_world, "rome", requests)
    assert mean(scores, "efficacy") >= 0.9 and mean(scores, "specificity") >= 0.85
    deleted = single_edits(t5_world, "rome", [as_deletion(r) for r in requests])
    assert mean(deleted, "efficacy") >= 0.9 and mean(deleted, "specificity") >= 0.9


def test_t5_emmet_batch(t5_world: WorldBench) -> None:
    requests = t5_world.take(32, offset=1)
    m = t5_world.evaluate(requests, t5_world.edit("emmet", requests).deltas)
    assert m.efficacy >= 0.85 and m.specificity >= 0.85
