"""Scoring edits, CounterFact style: efficacy, paraphrase, specificity and fact recall.

A (prompt, target) pair is scored by teacher forcing: the target's tokens follow
the prompt's (in a causal LM's sequence, or on an encoder-decoder's decoder side; see
:mod:`editstore.model.forward`), and we read the summed log-probability of the target tokens and
whether every target token is the argmax at its position (which is what greedy
decoding would produce). Multi-token targets are therefore handled exactly.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ..core.requests import EditRequest
from .forward import next_token_logits, target_logits
from .tokens import fill, pad_id, target_ids

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Score:
    """Summed log-probability of a target after a prompt, and whether greedy decoding yields it."""

    logprob: float
    top1: bool


def score_targets(logits: torch.Tensor, targets: Sequence[Sequence[int]]) -> list[Score]:
    """Score targets from teacher-forced logits (B, W, V): ``[b, j]`` predicts ``targets[b][j]``."""
    logp = torch.log_softmax(logits.float(), dim=-1)  # (B, W, V)
    scores = []
    for b, target in enumerate(targets):
        k = len(target)
        pred = logp[b, :k]  # (k, V)
        t = torch.tensor(target, device=pred.device)
        lp = pred.gather(1, t[:, None]).sum()
        scores.append(Score(float(lp), bool((pred.argmax(-1) == t).all())))
    return scores


@torch.no_grad()
def score_pairs(
    model: torch.nn.Module, tokenizer: Any, pairs: Sequence[tuple[str, str]], *, batch_size: int = 64
) -> list[Score]:
    """Score every (prompt, target) pair with teacher forcing, in right-padded batches."""
    pad = pad_id(tokenizer)
    scores: list[Score] = []
    for i in range(0, len(pairs), batch_size):
        chunk = pairs[i : i + batch_size]
        prompts = [tokenizer(prompt)["input_ids"] for prompt, _ in chunk]
        targets = [target_ids(tokenizer, target) for _, target in chunk]
        logits, _ = target_logits(model, prompts, targets, pad)
        scores.extend(score_targets(logits.cpu(), targets))
    return scores


@dataclass(frozen=True)
class Metrics:
    """Aggregate edit metrics over a set of requests (None where there was nothing to measure)."""

    n_requests: int
    efficacy: float | None
    efficacy_top1: float | None
    paraphrase: float | None
    paraphrase_top1: float | None
    specificity: float | None
    specificity_top1: float | None
    recall: float | None = None
    n_recall: int = 0
    chrf: float | None = None  # a translation world's held-out translations, by this version
    chrf_base: float | None = None  # and by the base

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _mean(values: Iterable[bool]) -> float | None:
    values = list(values)
    return sum(values) / len(values) if values else None


def evaluate_requests(
    model: torch.nn.Module,
    tokenizer: Any,
    requests: Sequence[EditRequest],
    *,
    recall_facts: Sequence[tuple[str, str]] = (),
    batch_size: int = 64,
) -> Metrics:
    """Efficacy, paraphrase and specificity of ``requests`` on ``model``, and recall of ``recall_facts``.

    efficacy: P(target_new) > P(target_true) on the edit prompt; paraphrase: the same on each
    paraphrase prompt; specificity: each neighbourhood prompt still prefers its own target over the
    request's target_new (a neighbour whose subject is itself one of ``requests`` is expected to
    change and is left out). ``*_top1``: greedy decoding yields target_new (resp. the neighbour's target).
    A behaviour deletion (no target_new) succeeds where greedy decoding no longer yields its
    target_true, i.e. its probability fell below the best alternative's, and its neighbours count
    where greedy decoding still yields their own target (both variants).
    recall: greedy decoding yields the object for (prompt, object) facts no edit touched.
    """
    pairs: list[tuple[str, str]] = []
    plan: list[Check] = []

    def add(prompt: str, target: str) -> int:
        pairs.append((prompt, target))
        return len(pairs) - 1

    subjects = {r["subject"] for r in requests}
    for r in requests:
        new, true = r.get("target_new"), r.get("target_true")
        others = subjects - {r["subject"]}
        prompts = [("efficacy", fill(r["prompt"], r["subject"]))] + [("paraphrase", p) for p in r.get("paraphrase_prompts", [])]
        for kind, prompt in prompts:
            if new:
                plan.append(Check(kind, add(prompt, new), add(prompt, true) if true else None))
            elif true:
                plan.append(Check(kind, add(prompt, true), None, suppressed=True))
        for n in r.get("neighborhood_prompts", []):
            if n["target"] != new and not any(s in n["prompt"] for s in others):
                own = add(n["prompt"], n["target"])
                if new:
                    plan.append(Check("specificity", own, add(n["prompt"], new)))
                elif true:
                    plan.append(Check("specificity", own, None, kept=True))
    recall_idx = [add(p, o) for p, o in recall_facts]
    scores = score_pairs(model, tokenizer, pairs, batch_size=batch_size)

    def rate(kind: str) -> tuple[float | None, float | None]:
        checks = [c for c in plan if c.kind == kind]
        return (_mean(c.passed(scores) for c in checks if c.rival is not None or c.suppressed or c.kept),
                _mean(c.passed(scores, top1=True) for c in checks))

    eff, eff1 = rate("efficacy")
    par, par1 = rate("paraphrase")
    spec, spec1 = rate("specificity")
    return Metrics(len(requests), eff, eff1, par, par1, spec, spec1,
                   _mean(scores[i].top1 for i in recall_idx), len(recall_idx))


@dataclass(frozen=True)
class Check:
    """One measurement: the pair that should win (or, ``suppressed``, lose) and its rival."""

    kind: str
    pair: int
    rival: int | None
    suppressed: bool = False  # a deletion: the pair must no longer be greedy decoding's output
    kept: bool = False  # a deletion's neighbour: the pair must still be greedy decoding's output

    def passed(self, scores: Sequence[Score], *, top1: bool = False) -> bool:
        if self.suppressed:
            return not scores[self.pair].top1
        if top1 or self.kept:
            return scores[self.pair].top1
        assert self.rival is not None
        return scores[self.pair].logprob > scores[self.rival].logprob


@torch.no_grad()
def next_tokens(model: torch.nn.Module, tokenizer: Any, prompts: Sequence[str], *, batch_size: int = 64) -> list[tuple[int, float]]:
    """The greedy next token after each prompt and its probability."""
    out: list[tuple[int, float]] = []
    for i in range(0, len(prompts), batch_size):
        rows = [tokenizer(p)["input_ids"] for p in prompts[i : i + batch_size]]
        p, tok = next_token_logits(model, rows, pad_id(tokenizer)).float().softmax(-1).max(-1)
        out.extend(zip(tok.tolist(), p.tolist()))
    return out
