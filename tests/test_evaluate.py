"""The scorer on hand-made logits (the metrics on a real model: tests/test_world_model.py)."""

import math

import pytest
import torch

from editstore.evaluate import Score, score_logits


def test_score_logits_sums_target_logprobs() -> None:
    V = 4
    logits = torch.full((1, 4, V), -1e9)
    # position 0 predicts token 1 with p=1; position 1 predicts tokens 2/3 at 0.75/0.25; position 2 predicts 3
    logits[0, 0, 1] = 0.0
    logits[0, 1, 2], logits[0, 1, 3] = math.log(0.75), math.log(0.25)
    logits[0, 2, 3] = 0.0
    ids = torch.tensor([[0, 1, 2, 3]])
    [s] = score_logits(logits, ids, [(2, 4)])  # target = tokens at positions 2..3: (2, 3)
    assert s.logprob == pytest.approx(math.log(0.75) + 0.0, abs=1e-6)
    assert s.top1
    ids_b = torch.tensor([[0, 1, 3, 3]])
    [s] = score_logits(logits, ids_b, [(2, 4)])  # first target token is the 0.25 one: not greedy
    assert s.logprob == pytest.approx(math.log(0.25), abs=1e-6)
    assert not s.top1


def test_score_logits_batches_rows_independently() -> None:
    logits = torch.randn(3, 5, 7)
    ids = torch.randint(0, 7, (3, 5))
    spans = [(1, 2), (2, 5), (4, 5)]
    batched = score_logits(logits, ids, spans)
    single = [score_logits(logits[b : b + 1], ids[b : b + 1], [spans[b]])[0] for b in range(3)]
    assert [s.logprob for s in batched] == pytest.approx([s.logprob for s in single])
    assert [s.top1 for s in batched] == [s.top1 for s in single]
    assert isinstance(batched[0], Score)
