"""Small models built from configs and random low-rank deltas: fixtures for tests and benchmarks.

Nothing here downloads anything: models are initialised randomly from a config
and saved as ordinary Hugging Face directories.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from .checkpoint import Checkpoint
from .delta import Delta, Factors

TINY_CONFIGS = {
    "gpt2": dict(model_type="gpt2", n_layer=2, n_embd=32, n_head=2, n_positions=64, vocab_size=128,
                 bos_token_id=0, eos_token_id=0),
    "llama": dict(model_type="llama", num_hidden_layers=2, hidden_size=32, intermediate_size=48,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64, vocab_size=128,
                  bos_token_id=0, eos_token_id=0, tie_word_embeddings=False),
    "gptj": dict(model_type="gptj", n_layer=2, n_embd=32, n_head=4, rotary_dim=4, n_positions=64, vocab_size=128,
                 bos_token_id=0, eos_token_id=0),
    "gpt_neox": dict(model_type="gpt_neox", num_hidden_layers=2, hidden_size=32, intermediate_size=64,
                     num_attention_heads=4, max_position_embeddings=64, vocab_size=128, bos_token_id=0, eos_token_id=0),
    "qwen2": dict(model_type="qwen2", num_hidden_layers=2, hidden_size=32, intermediate_size=48,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64, vocab_size=128,
                  bos_token_id=0, eos_token_id=0, tie_word_embeddings=False),
}


SEQ2SEQ_CONFIGS = {
    "t5": dict(model_type="t5", num_layers=2, num_decoder_layers=2, d_model=32, d_ff=48, d_kv=8, num_heads=4,
               vocab_size=128, decoder_start_token_id=0, pad_token_id=0, eos_token_id=1),
    "bart": dict(model_type="bart", encoder_layers=2, decoder_layers=2, d_model=32, encoder_ffn_dim=48,
                 decoder_ffn_dim=48, encoder_attention_heads=4, decoder_attention_heads=4, max_position_embeddings=64,
                 vocab_size=128, pad_token_id=1, bos_token_id=0, eos_token_id=2, decoder_start_token_id=2),
    "marian": dict(model_type="marian", encoder_layers=2, decoder_layers=2, d_model=32, encoder_ffn_dim=48,
                   decoder_ffn_dim=48, encoder_attention_heads=4, decoder_attention_heads=4,
                   max_position_embeddings=64, vocab_size=128, pad_token_id=127, eos_token_id=0,
                   decoder_start_token_id=127),
}


def tiny_model(
    arch: str,
    out: str | Path,
    *,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    max_shard_size: str | None = None,
    **overrides: object,
) -> Path:
    """Save a randomly initialised ``arch`` model (a key of :data:`TINY_CONFIGS` or :data:`SEQ2SEQ_CONFIGS`)
    to ``out``; shard it when asked."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSeq2SeqLM

    seq2seq = arch in SEQ2SEQ_CONFIGS
    params = {**(SEQ2SEQ_CONFIGS if seq2seq else TINY_CONFIGS)[arch], **overrides}
    config = AutoConfig.for_model(params.pop("model_type"), **params)
    torch.manual_seed(seed)
    model = (AutoModelForSeq2SeqLM if seq2seq else AutoModelForCausalLM).from_config(config).to(dtype)
    kwargs = {"max_shard_size": max_shard_size} if max_shard_size else {}
    model.save_pretrained(out, **kwargs)
    return Path(out)


def random_delta(
    base: Checkpoint,
    params: Sequence[str],
    *,
    rank: int = 1,
    scale: float = 0.1,
    seed: int = 0,
    with_keys: bool = False,
) -> Delta:
    """A random rank-``rank`` delta on each parameter in ``params``."""
    g = torch.Generator().manual_seed(seed)
    factors = {}
    for param in params:
        d_out, d_in = base.linear_shape(param)
        U = torch.randn(d_out, rank, generator=g) * scale  # (d_out, r)
        V = torch.randn(d_in, rank, generator=g) * scale  # (d_in, r)
        keys = torch.randn(d_in, rank, generator=g) if with_keys else None  # (d_in, n)
        targets = torch.randn(d_out, rank, generator=g) if with_keys else None  # (d_out, n)
        factors[param] = Factors(U, V, keys, targets)
    return Delta(factors, {"base": base.fingerprint, "method": "random"})
