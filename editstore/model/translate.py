"""Whole outputs of an encoder-decoder: greedy translations, their probabilities, and chrF.

Edit metrics read one target after a prompt (:mod:`editstore.model.evaluate`); a translation
model is judged on what it writes as a whole. :func:`greedy_outputs` decodes each prompt until
its end-of-sequence token or ``max_new_tokens`` (an output cut there says so); :func:`chrf`
scores outputs against references with sacrebleu's chrF (character n-gram F-score, the usual
NMT metric that needs no tokenisation).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

MAX_NEW_TOKENS = 32


@dataclass(frozen=True)
class Output:
    """A greedy output, its probability (the product of each step's greedy probability, end of sequence
    included) and whether it ended (False: cut at ``max_new_tokens``)."""

    text: str
    p: float
    complete: bool


def _eos_ids(model: torch.nn.Module) -> list[int]:
    eos = getattr(model.generation_config, "eos_token_id", None)  # type: ignore[union-attr]
    if eos is None:
        raise ValueError(f"{type(model).__name__} has no eos_token_id to end its outputs")
    return [eos] if isinstance(eos, int) else list(eos)


@torch.no_grad()
def greedy_outputs(model: torch.nn.Module, tokenizer: Any, prompts: Sequence[str], *,
                   max_new_tokens: int = MAX_NEW_TOKENS, batch_size: int = 128) -> list[Output]:
    """Each prompt's greedy output (special tokens left out) with its probability under the model's own
    logits. Nothing is forced at the length limit (Marian's config would force a token there): an output
    that has not ended by then is incomplete, and its probability is that of its tokens so far."""
    eos = torch.tensor(_eos_ids(model))
    out: list[Output] = []
    for i in range(0, len(prompts), batch_size):
        enc = tokenizer(list(prompts[i : i + batch_size]), padding=True, return_tensors="pt").to(model.device)
        gen = model.generate(**enc, max_new_tokens=max_new_tokens, num_beams=1, do_sample=False,  # type: ignore[operator]
                             forced_eos_token_id=None, output_logits=True, return_dict_in_generate=True)
        logits = torch.stack(gen.logits, 1).float().cpu()  # (B, steps, V)
        written = gen.sequences[:, -logits.shape[1]:].cpu()  # (B, steps): the token each step chose
        logp = logits.log_softmax(-1).gather(2, written[..., None])[..., 0]  # (B, steps)
        ended = torch.isin(written, eos)  # (B, steps)
        after_end = (ended.long().cumsum(1) - ended.long()) > 0  # (B, steps): padding once the output ended
        total = logp.masked_fill(after_end, 0.0).sum(1)  # (B,)
        complete = ended.any(1)  # (B,)
        texts = tokenizer.batch_decode(gen.sequences, skip_special_tokens=True)
        out += [Output(t.strip(), float(torch.exp(lp)), bool(c)) for t, lp, c in zip(texts, total, complete)]
    return out


def translate(model: torch.nn.Module, tokenizer: Any, sources: Sequence[str], **kwargs: Any) -> list[str]:
    """Greedy translations of ``sources``."""
    return [o.text for o in greedy_outputs(model, tokenizer, sources, **kwargs)]


def chrf(predictions: Sequence[str], references: Sequence[str]) -> float:
    """Corpus chrF (0–100) of ``predictions`` against one reference each."""
    if len(predictions) != len(references) or not references:
        raise ValueError(f"chrF needs one reference per prediction, and some: {len(predictions)} vs {len(references)}")
    from sacrebleu.metrics import CHRF

    return float(CHRF().corpus_score(list(predictions), [list(references)]).score)
