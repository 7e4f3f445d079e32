"""Train a small model on the world (CPU friendly, deterministic for a seed).

A causal LM learns the world's biography text; an encoder-decoder (T5) learns to map
a prompt about a subject to its object, like a question-answering or translation task.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForSeq2SeqLM,
    PreTrainedModel,
    PreTrainedTokenizerFast,
)

from ..model.layers import ATTN_NAMES, MLP_NAMES, child, transformer_blocks
from ..model.tokens import target_ids

log = logging.getLogger(__name__)

SEQ2SEQ_ARCHES = ("t5", "marian")


@dataclass(frozen=True)
class TrainSpec:
    """Architecture and optimisation settings of a world model."""

    arch: str = "gpt2"
    n_layer: int = 4
    d_model: int = 128
    n_head: int = 4
    d_ff: int = 512
    epochs: int = 30
    batch_size: int = 32
    lr: float = 3e-3
    weight_decay: float = 0.01
    warmup: float = 0.05
    mlp_drop_layers: tuple[int, ...] = (0,)
    mlp_drop: float = 0.5
    subject_mlp_layers: tuple[int, ...] = ()  # for a fraction subject_mlp of the lines, these MLPs act only at subjects
    subject_mlp: float = 0.0
    subject_attn_layers: tuple[int, ...] = ()  # in those lines, these attentions cannot read the subject from after it
    activation: str = ""  # the MLPs' activation ("relu", "gelu_new", ...); empty: the architecture's default
    sparse_layers: tuple[int, ...] = ()  # MLPs whose activations (their output projection's input) get an L1 penalty
    sparse_l1: float = 0.0  # its weight: each layer's mean |activation| is added to the loss times this
    n_decoder_layer: int = 0  # encoder-decoders: 0 means n_layer
    tie: bool = True  # T5: transformers 5 always ties its embeddings; False turns off the d_model^-0.5 output scaling
    seed: int = 0

    def to_json(self) -> dict[str, Any]:
        out = {k: list(v) if isinstance(v, tuple) else v for k, v in self.__dict__.items()}
        if not self.subject_mlp_layers:  # absent when off, so the keys of worlds built before them stay the same
            del out["subject_mlp_layers"], out["subject_mlp"]
        if not self.subject_attn_layers:
            del out["subject_attn_layers"]
        if not self.activation:
            del out["activation"]
        if not self.sparse_layers:
            del out["sparse_layers"], out["sparse_l1"]
        return out


def model_config(spec: TrainSpec, tokenizer: PreTrainedTokenizerFast, max_len: int) -> Any:
    """The HF config of a world model of ``spec.arch``."""
    common = dict(vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                  pad_token_id=tokenizer.pad_token_id)
    if spec.arch == "gpt2":
        return AutoConfig.for_model(
            "gpt2", n_layer=spec.n_layer, n_embd=spec.d_model, n_head=spec.n_head, n_inner=spec.d_ff,
            n_positions=max_len, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
            **common, **({"activation_function": spec.activation} if spec.activation else {}),
        )
    if spec.arch == "llama":
        return AutoConfig.for_model(
            "llama", num_hidden_layers=spec.n_layer, hidden_size=spec.d_model, num_attention_heads=spec.n_head,
            num_key_value_heads=spec.n_head, intermediate_size=spec.d_ff, max_position_embeddings=max_len,
            tie_word_embeddings=True, **common, **({"hidden_act": spec.activation} if spec.activation else {}),
        )
    if spec.arch == "t5":
        return AutoConfig.for_model(
            "t5", num_layers=spec.n_layer, num_decoder_layers=spec.n_decoder_layer or spec.n_layer,
            d_model=spec.d_model, num_heads=spec.n_head, d_kv=spec.d_model // spec.n_head, d_ff=spec.d_ff,
            feed_forward_proj="relu", dropout_rate=0.0, tie_word_embeddings=spec.tie, vocab_size=len(tokenizer),
            pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
            decoder_start_token_id=tokenizer.pad_token_id,
        )
    if spec.arch == "marian":  # Marian NMT: sinusoidal positions, one vocabulary shared by encoder, decoder and output
        return AutoConfig.for_model(
            "marian", encoder_layers=spec.n_layer, decoder_layers=spec.n_decoder_layer or spec.n_layer,
            d_model=spec.d_model, encoder_attention_heads=spec.n_head, decoder_attention_heads=spec.n_head,
            encoder_ffn_dim=spec.d_ff, decoder_ffn_dim=spec.d_ff, dropout=0.0, attention_dropout=0.0,
            activation_dropout=0.0, max_position_embeddings=max_len, vocab_size=len(tokenizer),
            decoder_vocab_size=len(tokenizer), share_encoder_decoder_embeddings=True, scale_embedding=True,
            pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
            decoder_start_token_id=tokenizer.pad_token_id, forced_eos_token_id=tokenizer.eos_token_id,
        )
    raise ValueError(f"unknown world architecture {spec.arch!r}")


def train_lm(
    spec: TrainSpec,
    tokenizer: PreTrainedTokenizerFast,
    lines: Sequence[str],
    *,
    targets: Sequence[str] | None = None,
    subjects: Sequence[str] | None = None,
    on_epoch: Callable[[int, float, PreTrainedModel], bool] | None = None,
    device: torch.device | str = "cpu",
) -> PreTrainedModel:
    """Train from scratch on ``lines`` (an encoder-decoder: ``lines`` to ``targets``, each ended by <eos>);
    ``subjects``: each line's subject (needed by ``spec.subject_mlp_layers``);
    ``on_epoch(epoch, loss, model)`` may return True to stop early."""
    torch.manual_seed(spec.seed)
    enc = tokenizer(list(lines), padding=True, return_tensors="pt")
    ids, mask = enc["input_ids"], enc["attention_mask"]  # (N, T)
    seq2seq = spec.arch in SEQ2SEQ_ARCHES
    if seq2seq:
        if targets is None or len(targets) != len(lines):
            raise ValueError("an encoder-decoder world needs one target per line")
        out_ids = [target_ids(tokenizer, t) + [tokenizer.eos_token_id] for t in targets]
        width = max(map(len, out_ids))
        labels = torch.tensor([t + [-100] * (width - len(t)) for t in out_ids])  # (N, T_out)
    else:
        labels = ids.masked_fill(mask == 0, -100)
    config = model_config(spec, tokenizer, max_len=ids.shape[1] + 64)
    model = (AutoModelForSeq2SeqLM if seq2seq else AutoModelForCausalLM).from_config(config).to(device)
    model.train()
    hooks = [_drop_mlp_output(model, layer, spec.mlp_drop, spec.seed) for layer in spec.mlp_drop_layers]
    shaped = spec.subject_mlp_layers or spec.subject_attn_layers
    at_subject = _SubjectMask(subject_mask(tokenizer, ids, subjects) if shaped else None, spec.subject_mlp, spec.seed)
    hooks += [at_subject.restrict_mlp(model, layer) for layer in spec.subject_mlp_layers]
    hooks += [at_subject.restrict_attention(model, layer) for layer in spec.subject_attn_layers]
    sparse = _ActivationL1(model, spec.sparse_layers)
    opt = torch.optim.AdamW(model.parameters(), lr=spec.lr, weight_decay=spec.weight_decay, betas=(0.9, 0.98))
    lengths = mask.sum(1)  # (N,)
    steps_per_epoch = sum(math.ceil(len(c) / spec.batch_size) for c in torch.arange(len(ids)).split(spec.batch_size * 16))
    total = spec.epochs * steps_per_epoch
    warm = max(1, int(spec.warmup * total))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warm) * 0.5 * (1 + math.cos(math.pi * min(1.0, s / total)))
    )
    g = torch.Generator().manual_seed(spec.seed)
    start = time.perf_counter()
    for epoch in range(spec.epochs):
        running = 0.0
        for idx in _batches(lengths, spec.batch_size, g):
            width = int(lengths[idx].max())
            batch_labels = labels[idx] if seq2seq else labels[idx, :width]
            at_subject.select(idx, width, device)
            out = model(input_ids=ids[idx, :width].to(device), attention_mask=mask[idx, :width].to(device),
                        labels=batch_labels.to(device))
            loss = out.loss + spec.sparse_l1 * sparse.take() if spec.sparse_layers else out.loss
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            running += out.loss.item()
        loss = running / steps_per_epoch
        log.info("epoch %d loss %.4f (%.0f s)", epoch + 1, loss, time.perf_counter() - start)
        if on_epoch is not None:
            model.eval()
            stop = on_epoch(epoch + 1, loss, model)
            model.train()
            if stop:
                break
    for h in hooks + sparse.hooks:
        h.remove()
    model.eval()
    return model


def _batches(lengths: torch.Tensor, batch_size: int, g: torch.Generator) -> list[torch.Tensor]:
    """Random batches of sequences of similar length (less padding), in random order."""
    perm = torch.randperm(len(lengths), generator=g)
    chunk = batch_size * 16
    batches = []
    for start in range(0, len(perm), chunk):
        part = perm[start : start + chunk]
        part = part[torch.argsort(lengths[part], stable=True)]
        batches += list(part.split(batch_size))
    order = torch.randperm(len(batches), generator=g)
    return [batches[i] for i in order]


def subject_mask(tokenizer: PreTrainedTokenizerFast, ids: torch.Tensor, subjects: Sequence[str] | None) -> torch.Tensor:
    """(N, T) bool: the tokens of each line's subject, wherever it occurs in the line."""
    if subjects is None or len(subjects) != len(ids):
        raise ValueError("subject_mlp_layers and subject_attn_layers need the subject of every training line")
    mask = torch.zeros(ids.shape, dtype=torch.bool)
    for row, subject in enumerate(subjects):
        name = tokenizer(subject, add_special_tokens=False)["input_ids"]
        line = ids[row].tolist()
        for start in range(len(line) - len(name) + 1):
            if line[start : start + len(name)] == name:
                mask[row, start : start + len(name)] = True
    return mask


class _SubjectMask:
    """While training, for a random fraction of the lines, make some MLPs act only at the subject's tokens
    and keep some attentions from reading the subject's tokens at the positions after them.

    A model whose attention copies the subject to the prompt's last token can look facts up
    there (the small Llama world did, in MLP 1 at the last token), out of reach of an edit keyed
    on the subject. When, in some lines, the subject reaches the later positions only through the
    upper attentions and the upper MLPs cannot act after the subject, the facts must be recalled
    at the subject and carried on by attention, as in real models.
    """

    def __init__(self, mask: torch.Tensor | None, p: float, seed: int) -> None:
        self.mask = mask  # (N, T)
        self.p = p
        self.g = torch.Generator().manual_seed(seed + 104729)
        self.subject: torch.Tensor | None = None  # (B, width): the current batch's subject tokens
        self.picked: torch.Tensor | None = None  # (B,): the lines restricted in this batch
        self.hidden: torch.Tensor | None = None  # (B, 1, width, width): the keys a query of a picked line must not see

    def select(self, idx: torch.Tensor, width: int, device: torch.device | str) -> None:
        if self.mask is None:
            return
        self.subject = self.mask[idx, :width].to(device)
        self.picked = (torch.rand(len(idx), generator=self.g) < self.p).to(device)
        # a picked line's positions after the subject do not see its tokens (causality hides those before it)
        self.hidden = (self.picked[:, None, None] & ~self.subject[:, :, None] & self.subject[:, None, :])[:, None]

    def restrict_mlp(self, model: PreTrainedModel, layer: int) -> torch.utils.hooks.RemovableHandle:
        def hook(module: torch.nn.Module, _inputs: Any, output: torch.Tensor) -> torch.Tensor | None:
            if not module.training or self.subject is None:
                return None
            keep = self.subject | ~self.picked[:, None]  # (B, T)
            return output * keep[..., None].to(output)

        return child(transformer_blocks(model)[layer], MLP_NAMES).register_forward_hook(hook)

    def restrict_attention(self, model: PreTrainedModel, layer: int) -> torch.utils.hooks.RemovableHandle:
        def hook(module: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Any, dict[str, Any]] | None:
            if not module.training or self.subject is None:
                return None
            mask = kwargs.get("attention_mask")
            T = self.subject.shape[1]
            causal = torch.ones(T, T, dtype=torch.bool, device=self.subject.device).tril()  # (T, T)
            allowed = causal[None, None] if mask is None else mask if mask.dtype == torch.bool else mask == 0
            allowed = allowed & ~self.hidden  # (B, 1, T_query, T_key)
            if mask is not None and mask.dtype != torch.bool:
                allowed = torch.zeros_like(mask).masked_fill(~allowed, torch.finfo(mask.dtype).min)
            return args, {**kwargs, "attention_mask": allowed}

        attention = child(transformer_blocks(model)[layer], ATTN_NAMES)
        return attention.register_forward_pre_hook(hook, with_kwargs=True)


class _ActivationL1:
    """The mean |activation| of some MLPs (the input of their output projection, over a batch's positions),
    collected during a forward pass for an L1 penalty.

    A world design tried for key room: real transformers' MLP activations are sparse, and sparse keys
    of different subjects would use different neurons and overlap less than the dense keys a small
    model trained from scratch gets. On the small world it did the opposite (docs/worlds.md, the scale world:
    the keys used fewer whitened directions), so no packaged world sets it.
    """

    def __init__(self, model: PreTrainedModel, layers: Sequence[int]) -> None:
        self.terms: list[torch.Tensor] = []
        blocks = transformer_blocks(model)
        self.hooks = [_output_projection(child(blocks[layer], MLP_NAMES)).register_forward_pre_hook(self._hook)
                      for layer in layers]

    def _hook(self, module: torch.nn.Module, args: tuple[torch.Tensor, ...]) -> None:
        if module.training:
            self.terms.append(args[0].abs().mean())  # (B, T, d_ff) -> ()

    def take(self) -> torch.Tensor:
        """The sum of this forward pass's terms (and forget them)."""
        total, self.terms = torch.stack(self.terms).sum(), []
        return total


def _output_projection(mlp: torch.nn.Module) -> torch.nn.Module:
    """An MLP's last linear map (GPT-2's ``c_proj``, Llama's ``down_proj``, ...)."""
    for name in ("c_proj", "down_proj", "fc_out", "dense_4h_to_h", "wo", "fc2"):
        if hasattr(mlp, name):
            return getattr(mlp, name)
    raise ValueError(f"{type(mlp).__name__} has no known output projection")


def _drop_mlp_output(model: PreTrainedModel, layer: int, p: float, seed: int) -> torch.utils.hooks.RemovableHandle:
    """While training, zero the output of one block's MLP for a random fraction ``p`` of the sequences.

    Real LMs use their first MLP much like an extension of the token embedding and recall
    facts in the MLPs above it; a small model trained from scratch would otherwise store
    every fact in MLP 0. Dropping that MLP's output for some sequences makes the facts
    retrievable without it, so they are written into the middle layers.
    """
    g = torch.Generator().manual_seed(seed + 7919 * (layer + 1))
    mlp = child(transformer_blocks(model)[layer], MLP_NAMES)

    def hook(module: torch.nn.Module, _inputs: Any, output: torch.Tensor) -> torch.Tensor | None:
        if not module.training:
            return None
        keep = (torch.rand(output.shape[0], generator=g) >= p).to(output)  # (B,) on the output's device
        return output * keep[:, None, None]

    return mlp.register_forward_hook(hook)
