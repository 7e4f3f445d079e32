"""Scoring edits, CounterFact style: efficacy, paraphrase, specificity and fact recall.

A (prompt, target) pair is scored by teacher forcing: the target's tokens follow
the prompt's, and we read the summed log-probability of the target tokens and
whether every target token is the argmax at its position (which is what greedy
decoding would produce). Multi-token targets are therefore handled exactly.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Score:
    """Summed log-probability of a target after a prompt, and whether greedy decoding yields it."""

    logprob: float
    top1: bool


def score_logits(logits: torch.Tensor, input_ids: torch.Tensor, spans: Sequence[tuple[int, int]]) -> list[Score]:
    """Score target spans from next-token logits.

    logits: (B, T, V); input_ids: (B, T); spans[b] = (start, end) are the positions of
    the target tokens in row b. Token t is predicted by the logits at t − 1.
    """
    logp = torch.log_softmax(logits.float(), dim=-1)  # (B, T, V)
    scores = []
    for b, (start, end) in enumerate(spans):
        targets = input_ids[b, start:end]  # (k,)
        pred = logp[b, start - 1 : end - 1]  # (k, V)
        lp = pred.gather(1, targets[:, None]).sum()
        scores.append(Score(float(lp), bool((pred.argmax(-1) == targets).all())))
    return scores


def pad_id(tokenizer: Any) -> int:
    """The tokenizer's pad id (0 when it has none; padded positions are masked anyway)."""
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0


def right_pad(rows: Sequence[Sequence[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Token id rows as a right-padded batch: ids (B, T) and attention mask (B, T)."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for b, r in enumerate(rows):
        ids[b, : len(r)] = torch.tensor(r)
        mask[b, : len(r)] = 1
    return ids, mask


def target_ids(tokenizer: Any, target: str) -> list[int]:
    """Token ids of a target as it continues a prompt (with its leading space)."""
    ids = tokenizer(" " + target.strip(), add_special_tokens=False)["input_ids"]
    if not ids:
        raise ValueError(f"target {target!r} tokenizes to nothing")
    return ids


@torch.no_grad()
def score_pairs(
    model: torch.nn.Module, tokenizer: Any, pairs: Sequence[tuple[str, str]], *, batch_size: int = 64
) -> list[Score]:
    """Score every (prompt, target) pair with teacher forcing, in right-padded batches."""
    device = next(model.parameters()).device
    pad = pad_id(tokenizer)
    scores: list[Score] = []
    for i in range(0, len(pairs), batch_size):
        rows, spans = [], []
        for prompt, target in pairs[i : i + batch_size]:
            p = tokenizer(prompt)["input_ids"]
            t = target_ids(tokenizer, target)
            rows.append(p + t)
            spans.append((len(p), len(p) + len(t)))
        ids, mask = right_pad(rows, pad)
        logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits.cpu()
        scores.extend(score_logits(logits, ids, spans))
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

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _mean(values: Iterable[bool]) -> float | None:
    values = list(values)
    return sum(values) / len(values) if values else None


def fill(prompt: str, subject: str) -> str:
    return prompt.replace("{}", subject)


def evaluate_requests(
    model: torch.nn.Module,
    tokenizer: Any,
    requests: Sequence[dict[str, Any]],
    *,
    recall_facts: Sequence[tuple[str, str]] = (),
    batch_size: int = 64,
) -> Metrics:
    """Efficacy, paraphrase and specificity of ``requests`` on ``model``, and recall of ``recall_facts``.

    efficacy: P(target_new) > P(target_true) on the edit prompt; paraphrase: the same on each
    paraphrase prompt; specificity: each neighbourhood prompt still prefers its own target over the
    request's target_new (a neighbour whose subject is itself one of ``requests`` is expected to
    change and is left out). ``*_top1``: greedy decoding yields target_new (resp. the neighbour's target).
    recall: greedy decoding yields the object for (prompt, object) facts no edit touched.
    """
    pairs: list[tuple[str, str]] = []
    plan: list[tuple[str, int, int | None]] = []  # (kind, index of the new-target pair, index of the rival)

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
                plan.append((kind, add(prompt, new), add(prompt, true) if true else None))
        for n in r.get("neighborhood_prompts", []):
            if new and n["target"] != new and not any(s in n["prompt"] for s in others):
                plan.append(("specificity", add(n["prompt"], n["target"]), add(n["prompt"], new)))
    recall_idx = [add(p, o) for p, o in recall_facts]
    scores = score_pairs(model, tokenizer, pairs, batch_size=batch_size)

    def rate(kind: str) -> tuple[float | None, float | None]:
        rows = [(i, j) for k, i, j in plan if k == kind]
        prob = _mean(scores[i].logprob > scores[j].logprob for i, j in rows if j is not None)
        return prob, _mean(scores[i].top1 for i, _ in rows)

    eff, eff1 = rate("efficacy")
    par, par1 = rate("paraphrase")
    spec, spec1 = rate("specificity")
    return Metrics(len(requests), eff, eff1, par, par1, spec, spec1,
                   _mean(scores[i].top1 for i in recall_idx), len(recall_idx))


@torch.no_grad()
def next_tokens(model: torch.nn.Module, tokenizer: Any, prompts: Sequence[str], *, batch_size: int = 64) -> list[tuple[int, float]]:
    """The greedy next token after each prompt and its probability."""
    device = next(model.parameters()).device
    out: list[tuple[int, float]] = []
    for i in range(0, len(prompts), batch_size):
        rows = [tokenizer(p)["input_ids"] for p in prompts[i : i + batch_size]]
        ids, mask = right_pad(rows, pad_id(tokenizer))
        logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits.float()
        last = logits[torch.arange(len(rows)), mask.sum(1).to(device) - 1].softmax(-1)  # (B, V)
        p, tok = last.max(-1)
        out.extend(zip(tok.tolist(), p.tolist()))
    return out
