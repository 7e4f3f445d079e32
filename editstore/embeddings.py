"""Embeddings of filled edit prompts, for conflict detection (DESIGN §6).

The default backend is the base model itself, so no extra model is needed: the
hidden state at the prompt's last token after the middle block (where the relation
being asked about is clearest: formulations of one relation agree there, other
relations of the same subject do not) and after the last block (where the subject
matters as much: the state predicts this subject's answer), each normalised, side by
side and scaled so the whole vector has unit length. The cosine of two vectors is
then the mean of the two layers' cosines; :func:`relation_similarity` is the middle
layer's alone. Measured on the GPT-2 fact world (60 subjects, every pair of the four
formulations of each relation): same relation ≥ 0.48 (1st percentile 0.67), another
relation of the same subject ≤ 0.47 (99th percentile 0.38) after the middle block.

A sentence-transformers model directory is the optional other backend (its vector
serves as both halves); it needs the ``sentence-transformers`` package and a local
model, nothing is downloaded.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from .errors import ConfigError
from .evaluate import pad_id
from .forward import is_encoder_decoder, run

log = logging.getLogger(__name__)


class Embedder(Protocol):
    """Turns filled prompts into unit vectors whose first half carries the relation."""

    name: str
    dim: int

    def embed(self, prompts: Sequence[str]) -> torch.Tensor:
        """(n, dim) float32 unit vectors."""
        ...


def relation_similarity(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Cosine of the relation halves of embeddings ``a`` (n, d) and ``b`` (m, d): (n, m)."""
    half = a.shape[-1] // 2
    return torch.nn.functional.normalize(a[..., :half], dim=-1) @ torch.nn.functional.normalize(b[..., :half], dim=-1).T


def embedding_layers(config: dict[str, Any]) -> tuple[int, int]:
    """Indices into a model's hidden states (0: the embeddings) of the middle and the last block that
    :class:`ModelEmbedder` reads: the decoder's, for an encoder-decoder."""
    for key in ("num_decoder_layers", "decoder_layers", "num_hidden_layers", "n_layer", "num_layers"):
        if config.get(key):  # T5, BART/Marian, causal LMs
            return config[key] // 2, config[key]
    raise ConfigError(f"cannot tell how many blocks a {config.get('model_type')} model has")


def model_backend_name(layers: tuple[int, int]) -> str:
    return f"model:{layers[0]},{layers[1]}"


@dataclass
class ModelEmbedder:
    """The base model's hidden states at the last prompt token, after the middle and the last block."""

    model: torch.nn.Module
    tokenizer: Any
    batch_size: int = 64

    def __post_init__(self) -> None:
        config = self.model.config
        self.layers = embedding_layers(config.to_dict())
        self.dim = 2 * config.hidden_size
        self.name = model_backend_name(self.layers)

    @torch.no_grad()
    def embed(self, prompts: Sequence[str]) -> torch.Tensor:
        pad = pad_id(self.tokenizer)
        seq2seq = is_encoder_decoder(self.model)
        out = []
        for i in range(0, len(prompts), self.batch_size):
            rows = [self.tokenizer(p)["input_ids"] for p in prompts[i : i + self.batch_size]]
            result = run(self.model, rows, pad, output_hidden_states=True)
            # a causal LM's last prompt token; an encoder-decoder's first decoder position, which reads the prompt
            states = result.decoder_hidden_states if seq2seq else result.hidden_states
            device = states[0].device
            last = torch.tensor([0 if seq2seq else len(r) - 1 for r in rows], device=device)
            halves = [
                torch.nn.functional.normalize(states[layer][torch.arange(len(rows), device=device), last].float(), dim=-1)
                for layer in self.layers
            ]
            out.append(torch.cat(halves, dim=-1).cpu() / 2**0.5)
        return torch.cat(out) if out else torch.zeros(0, self.dim)


@dataclass
class SentenceTransformerEmbedder:
    """A local sentence-transformers model (optional dependency)."""

    path: str

    def __post_init__(self) -> None:
        try:
            from sentence_transformers import SentenceTransformer
        except ImportError:
            raise ConfigError("the sentence-transformers backend needs `pip install sentence-transformers`") from None
        try:
            self.encoder = SentenceTransformer(self.path, local_files_only=True)
        except (OSError, ValueError) as exc:
            raise ConfigError(f"cannot load the sentence-transformers model at {self.path!r}: {exc}") from None
        self.dim = 2 * int(self.encoder.get_sentence_embedding_dimension())
        self.name = f"sentence-transformers:{self.path}"

    def embed(self, prompts: Sequence[str]) -> torch.Tensor:
        v = torch.as_tensor(self.encoder.encode(list(prompts), normalize_embeddings=True), dtype=torch.float32)
        return torch.cat([v, v], dim=-1) / 2**0.5
