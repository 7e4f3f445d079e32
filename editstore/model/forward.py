"""Running a model on prompts, causal LMs and encoder-decoders alike.

A causal LM reads the prompt and the target as one sequence; an encoder-decoder
(T5, BART, Marian) reads the prompt with its encoder and produces the target with
its decoder, starting from ``decoder_start_token_id``. Everything that scores a
target, reads a module's input at a position or streams text through a model goes
through these functions, so the methods and metrics are written once for both.

Positions: a module of a causal LM or of an encoder sees the prompt's tokens; a
decoder module sees the target side, where position j produces target token j.

A causal LM that scores many targets after the same prompts, changed only from some
position of each prompt on (an edit's δ at the subject's last token), need not run the
tokens before that position again: :func:`tails_after` keeps their keys and values once,
and its :class:`Tails` run only each row's tail.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch


def is_encoder_decoder(model: torch.nn.Module) -> bool:
    """True for T5-, BART- and Marian-style models."""
    return bool(getattr(getattr(model, "config", None), "is_encoder_decoder", False))


def decoder_start_id(model: torch.nn.Module) -> int:
    config = model.config
    start = getattr(config, "decoder_start_token_id", None)
    if start is None:
        start = config.pad_token_id
    if start is None:
        raise ValueError(f"{type(model).__name__} has neither a decoder_start_token_id nor a pad_token_id")
    return int(start)


def on_decoder(model: torch.nn.Module, module_name: str) -> bool:
    """Whether ``module_name`` runs on the target side (a decoder module of an encoder-decoder)."""
    if not is_encoder_decoder(model):
        return False
    decoder = model.get_decoder()
    prefix = next(name for name, m in model.named_modules() if m is decoder)
    return module_name.startswith(prefix + ".")


def right_pad(rows: Sequence[Sequence[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Token id rows as a right-padded batch: ids (B, T) and attention mask (B, T)."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for b, r in enumerate(rows):
        ids[b, : len(r)] = torch.tensor(r, dtype=torch.long)
        mask[b, : len(r)] = 1
    return ids, mask


def run(model: torch.nn.Module, rows: Sequence[Sequence[int]], pad: int, **kwargs: Any) -> Any:
    """One forward pass over the prompt ``rows``; an encoder-decoder decodes one step (its start token).

    The output's logits are (B, T, V) for a causal LM and (B, 1, V) for an encoder-decoder.
    """
    device = next(model.parameters()).device
    ids, mask = right_pad(rows, pad)
    if is_encoder_decoder(model):
        start = torch.full((len(rows), 1), decoder_start_id(model), dtype=torch.long, device=device)
        kwargs["decoder_input_ids"] = start
    return model(input_ids=ids.to(device), attention_mask=mask.to(device), **kwargs)


@dataclass(frozen=True)
class Tails:
    """Teacher-forced targets after their prompts, set up to run only each row's tail (a causal LM only).

    Built by :func:`tails_after`: the tokens before ``split[b]`` of each row ran once and left their
    keys and values; each call of :meth:`logits` runs the rest, the tail, attending to them. Tails
    are left-padded so that every target's logits lie in the last W columns, and only those
    columns reach the output head.
    """

    ids: torch.Tensor  # (B, T): each tail, left-padded
    mask: torch.Tensor  # (B, P + T): the prefix's and the tail's real tokens
    positions: torch.Tensor  # (B, T): each tail token's position in its whole row
    start: torch.Tensor  # (B,): the column of each row's first tail token, where position split[b] runs
    gather: torch.Tensor  # (B, W): the kept column of each target token's logits
    target_mask: torch.Tensor  # (B, W): which target tokens are real
    cache: tuple[tuple[torch.Tensor, ...], ...]  # per layer, (keys, values) of the prefix, each (B, heads, P, head_dim)

    def logits(self, model: torch.nn.Module) -> torch.Tensor:
        """The targets' logits (B, W, V), as :func:`target_logits` gives them for the whole rows."""
        from transformers import DynamicCache

        cache = DynamicCache(ddp_cache_data=self.cache, config=model.config) if self.cache else None
        width = self.gather.shape[1]
        logits = model(input_ids=self.ids, attention_mask=self.mask, position_ids=self.positions, cache=cache,
                       use_cache=cache is not None, logits_to_keep=width).logits  # (B, W, V)
        return logits.gather(1, self.gather[:, :, None].expand(-1, -1, logits.shape[-1]))


@torch.no_grad()
def tails_after(
    model: torch.nn.Module, prompts: Sequence[Sequence[int]], targets: Sequence[Sequence[int]], split: Sequence[int],
    pad: int,
) -> Tails:
    """:class:`Tails` of ``targets`` after ``prompts``, whose tokens before ``split[b]`` run now, once.

    What changes between later calls (a hook's δ at position ``split[b]``) must not touch the tokens
    before the split: the prefix keeps whatever the model and its hooks computed now.
    """
    if is_encoder_decoder(model):
        raise ValueError("tails are for causal LMs; an encoder-decoder rereads its whole prompt")
    if any(not t for t in targets):
        raise ValueError("every target needs at least one token")
    if any(not 0 <= s < len(p) for p, s in zip(prompts, split)):
        raise ValueError("a row's split must lie inside its prompt")
    from transformers import DynamicCache

    device = next(model.parameters()).device
    heads = [p[:s] for p, s in zip(prompts, split)]
    tails = [[*p[s:], *t[:-1]] for p, t, s in zip(prompts, targets, split)]
    head_ids, head_mask = _left_pad(heads, pad)  # (B, P)
    ids, tail_mask = _left_pad(tails, pad)  # (B, T)
    head_ids, head_mask, ids, tail_mask = head_ids.to(device), head_mask.to(device), ids.to(device), tail_mask.to(device)
    width = max(len(t) for t in targets)
    split_t = torch.tensor(list(split), device=device)
    start = ids.shape[1] - torch.tensor([len(t) for t in tails], device=device)  # (B,)
    positions = (split_t[:, None] + torch.arange(ids.shape[1], device=device) - start[:, None]).clamp(min=0)  # (B, T)
    gather = torch.tensor([[width - len(t) + min(j, len(t) - 1) for j in range(width)] for t in targets], device=device)
    target_mask = torch.tensor([[j < len(t) for j in range(width)] for t in targets], device=device)
    cache: tuple[tuple[torch.Tensor, ...], ...] = ()
    if head_ids.shape[1]:
        kv = DynamicCache(config=model.config)
        model(input_ids=head_ids, attention_mask=head_mask, position_ids=(head_mask.cumsum(1) - 1).clamp(min=0),
              cache=kv, use_cache=True, logits_to_keep=1)
        cache = tuple((layer.keys, layer.values) for layer in kv.layers)
    return Tails(ids=ids, mask=torch.cat([head_mask, tail_mask], 1), positions=positions, start=start, gather=gather,
                 target_mask=target_mask, cache=cache)


def _left_pad(rows: Sequence[Sequence[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Token id rows as a left-padded batch: ids (B, T) and attention mask (B, T)."""
    ids, mask = right_pad([list(r)[::-1] for r in rows], pad)
    return ids.flip(1), mask.flip(1)


def target_logits(
    model: torch.nn.Module, prompts: Sequence[Sequence[int]], targets: Sequence[Sequence[int]], pad: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Teacher-forced logits of each target after its prompt, and which of them are real.

    Returns logits (B, W, V), where ``[b, j]`` is the distribution of ``targets[b][j]`` given
    ``prompts[b]`` and ``targets[b][:j]`` (W is the longest target; shorter ones repeat their
    last position), and a mask (B, W). A target of length 1 gives the next-token distribution.
    """
    device = next(model.parameters()).device
    if any(not t for t in targets):
        raise ValueError("every target needs at least one token")
    width = max(len(t) for t in targets)
    mask = torch.tensor([[j < len(t) for j in range(width)] for t in targets], device=device)
    if is_encoder_decoder(model):
        ids, enc_mask = right_pad(prompts, pad)
        dec, dec_mask = right_pad([[decoder_start_id(model), *t[:-1]] for t in targets], pad)
        logits = model(input_ids=ids.to(device), attention_mask=enc_mask.to(device),
                       decoder_input_ids=dec.to(device), decoder_attention_mask=dec_mask.to(device)).logits
        return logits, mask  # (B, W, V)
    ids, seq_mask = right_pad([[*p, *t[:-1]] for p, t in zip(prompts, targets)], pad)
    logits = model(input_ids=ids.to(device), attention_mask=seq_mask.to(device)).logits  # (B, T, V)
    pos = torch.tensor([[len(p) - 1 + min(j, len(t) - 1) for j in range(width)] for p, t in zip(prompts, targets)],
                       device=device)  # (B, W)
    return logits.gather(1, pos[:, :, None].expand(-1, -1, logits.shape[-1])), mask


def next_token_logits(model: torch.nn.Module, prompts: Sequence[Sequence[int]], pad: int) -> torch.Tensor:
    """The logits (B, V) of the token that follows each prompt."""
    return target_logits(model, prompts, [[pad]] * len(prompts), pad)[0][:, 0]
