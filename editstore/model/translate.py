"""Whole outputs of an encoder-decoder: greedy translations, their probabilities, and chrF.

Edit metrics read one target after a prompt (:mod:`editstore.model.evaluate`); a translation
model is judged on what it writes as a whole. :func:`greedy_outputs` decodes every prompt to its
end; :func:`chrf` scores outputs against references with sacrebleu's chrF (character n-gram
F-score, the usual NMT metric that needs no tokenisation).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

MAX_NEW_TOKENS = 32


@dataclass(frozen=True)
class Output:
    """A greedy output and its probability (the product of each step's greedy probability)."""

    text: str
    p: float


@torch.no_grad()
def greedy_outputs(model: Any, tokenizer: Any, prompts: Sequence[str], *, max_new_tokens: int = MAX_NEW_TOKENS,
                   batch_size: int = 128) -> list[Output]:
    """Each prompt's greedy output (special tokens left out) with its probability."""
    out: list[Output] = []
    for i in range(0, len(prompts), batch_size):
        enc = tokenizer(list(prompts[i : i + batch_size]), padding=True, return_tensors="pt").to(model.device)
        gen = model.generate(**enc, max_new_tokens=max_new_tokens, num_beams=1, do_sample=False,
                             output_scores=True, return_dict_in_generate=True)
        steps = model.compute_transition_scores(gen.sequences, gen.scores, normalize_logits=True)  # (B, steps)
        written = gen.sequences[:, -steps.shape[1]:]  # (B, steps): the tokens the steps chose
        logp = steps.masked_fill(written == tokenizer.pad_token_id, 0.0).float().sum(1)  # (B,): padding after EOS
        texts = tokenizer.batch_decode(gen.sequences, skip_special_tokens=True)
        out += [Output(t.strip(), float(torch.exp(lp))) for t, lp in zip(texts, logp)]
    return out


def translate(model: Any, tokenizer: Any, sources: Sequence[str], **kwargs: Any) -> list[str]:
    """Greedy translations of ``sources``."""
    return [o.text for o in greedy_outputs(model, tokenizer, sources, **kwargs)]


def chrf(predictions: Sequence[str], references: Sequence[str]) -> float:
    """Corpus chrF (0–100) of ``predictions`` against one reference each."""
    from sacrebleu.metrics import CHRF

    return float(CHRF().corpus_score(list(predictions), [list(references)]).score)
