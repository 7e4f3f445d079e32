"""Embeddings of edit requests' prompts, for conflict detection (DESIGN §6).

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

An encoder-decoder's states are dominated by the subject everywhere (on the T5
world, another relation of the same subject scores up to 0.96 at the first decoder
position), so its relation half is read with the subject replaced by a fixed
placeholder: the mean of the encoder's states after its last-but-one block. Its other
half is the last decoder block's state at the first position, on the filled prompt.
Measured on the T5 fact world (same pairs): same relation ≥ 0.68, another relation
≤ 0.47 (the last decoder block with the placeholder: 0.86 and 0.58; the filled
prompt at any position: no separation).

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

from ..core.requests import EditRequest
from ..errors import ConfigError
from ..model.forward import is_encoder_decoder, right_pad, run
from ..model.tokens import fill, pad_id

log = logging.getLogger(__name__)


PLACEHOLDER = "someone"  # stands for the subject where the relation is read without it


class Embedder(Protocol):
    """Turns edit requests (their prompt and subject) into unit vectors whose first half carries the relation."""

    name: str
    dim: int

    def embed(self, requests: Sequence[EditRequest]) -> torch.Tensor:
        """(n, dim) float32 unit vectors."""
        ...


def relation_similarity(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Cosine of the relation halves of embeddings ``a`` (n, d) and ``b`` (m, d): (n, m)."""
    half = a.shape[-1] // 2
    return torch.nn.functional.normalize(a[..., :half], dim=-1) @ torch.nn.functional.normalize(b[..., :half], dim=-1).T


def model_backend_name(config: dict[str, Any]) -> str:
    """The name of the model backend for a base with this ``config.json`` (without loading it)."""
    return "model:{}".format(",".join(map(str, _layers(config)))) + (":template" if config.get("is_encoder_decoder") else "")


def _layers(config: dict[str, Any]) -> tuple[int, int]:
    """Indices into the hidden states (0: the embeddings) of the relation half and the other half:
    a causal LM's middle and last block; an encoder-decoder's last-but-one encoder and last decoder block."""
    def depth(*keys: str) -> int:
        for key in keys:
            if config.get(key):
                return int(config[key])
        raise ConfigError(f"cannot tell how many blocks a {config.get('model_type')} model has")

    if config.get("is_encoder_decoder"):  # T5, BART/Marian
        return depth("num_layers", "encoder_layers") - 1, depth("num_decoder_layers", "decoder_layers")
    layers = depth("num_hidden_layers", "n_layer")
    return layers // 2, layers


@dataclass
class ModelEmbedder:
    """The base model's own hidden states (see the module's docstring for which)."""

    model: torch.nn.Module
    tokenizer: Any
    batch_size: int = 64

    def __post_init__(self) -> None:
        config = self.model.config.to_dict()
        self.layers = _layers(config)
        self.dim = 2 * self.model.config.hidden_size
        self.name = model_backend_name(config)

    @torch.no_grad()
    def embed(self, requests: Sequence[EditRequest]) -> torch.Tensor:
        out = []
        for i in range(0, len(requests), self.batch_size):
            chunk = requests[i : i + self.batch_size]
            halves = self._seq2seq(chunk) if is_encoder_decoder(self.model) else self._causal(chunk)
            out.append(torch.cat([torch.nn.functional.normalize(h.float(), dim=-1) for h in halves], dim=-1).cpu() / 2**0.5)
        return torch.cat(out) if out else torch.zeros(0, self.dim)

    def _rows(self, prompts: Sequence[str]) -> list[list[int]]:
        return [self.tokenizer(p)["input_ids"] for p in prompts]

    def _causal(self, requests: Sequence[EditRequest]) -> list[torch.Tensor]:
        rows = self._rows([fill(r["prompt"], r["subject"]) for r in requests])
        states = run(self.model, rows, pad_id(self.tokenizer), output_hidden_states=True).hidden_states
        device = states[0].device
        last = torch.tensor([len(r) - 1 for r in rows], device=device)
        return [states[layer][torch.arange(len(rows), device=device), last] for layer in self.layers]

    def _seq2seq(self, requests: Sequence[EditRequest]) -> list[torch.Tensor]:
        pad = pad_id(self.tokenizer)
        template = self._rows([fill(r["prompt"], PLACEHOLDER) for r in requests])
        encoder = run(self.model, template, pad, output_hidden_states=True).encoder_hidden_states[self.layers[0]]
        mask = right_pad(template, pad)[1].to(encoder.device)[..., None]  # (B, T, 1)
        relation = (encoder * mask).sum(1) / mask.sum(1)  # (B, d)
        filled = self._rows([fill(r["prompt"], r["subject"]) for r in requests])
        decoder = run(self.model, filled, pad, output_hidden_states=True).decoder_hidden_states[self.layers[1]]
        return [relation, decoder[:, 0]]


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

    def embed(self, requests: Sequence[EditRequest]) -> torch.Tensor:
        prompts = [fill(r["prompt"], r["subject"]) for r in requests]
        v = torch.as_tensor(self.encoder.encode(prompts, normalize_embeddings=True), dtype=torch.float32)
        return torch.cat([v, v], dim=-1) / 2**0.5
