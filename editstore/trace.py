"""Causal tracing (Meng et al., ROME §2): where does a model recall a fact?

Run the prompt clean, then with Gaussian noise added to the subject's token
embeddings (several noise samples in one batch). For each layer and token,
restore one clean hidden state into the corrupted runs and measure how much of
the true answer's probability comes back:
recovery = (p_restored − p_corrupted) / (p_clean − p_corrupted).
Three kinds of state are restored: the block output (residual stream), the MLP
output and the attention output. An encoder-decoder is traced over its encoder,
the answer being its first output token.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .errors import OutputDirError
from .model.forward import is_encoder_decoder, run
from .model.layers import ATTN_NAMES, MLP_NAMES, child, transformer_blocks
from .model.tokens import subject_span, target_ids

KINDS = ("block", "mlp", "attn")
MIN_EFFECT = 0.01  # p_clean − p_corrupted below this: the trace is uninformative, recovery is all 0


@dataclass(frozen=True)
class Trace:
    """Per kind, a (layers, tokens) matrix of recovery; plus the probabilities it is relative to."""

    tokens: list[str]
    subject: tuple[int, int]
    answer: str
    p_clean: float
    p_corrupted: float
    recovery: dict[str, torch.Tensor]  # kind -> (L, T)

    @property
    def informative(self) -> bool:
        """False when corrupting the subject barely changed the answer's probability."""
        return self.p_clean - self.p_corrupted >= MIN_EFFECT

    def peak(self, kind: str) -> tuple[int, int]:
        """(layer, token) of the highest recovery for ``kind``.

        For ``block``, the last layer at the last token is left out: restoring the model's
        own output there restores everything, trivially.
        """
        r = self.recovery[kind].clone()
        if kind == "block":
            r[-1, -1] = float("-inf")
        flat = int(r.argmax())
        return flat // r.shape[1], flat % r.shape[1]

    def to_json(self) -> dict[str, Any]:
        return {
            "tokens": self.tokens, "subject": list(self.subject), "answer": self.answer,
            "p_clean": self.p_clean, "p_corrupted": self.p_corrupted,
            "recovery": {k: v.tolist() for k, v in self.recovery.items()},
        }


def _output_tensor(output: Any) -> torch.Tensor:
    return output[0] if isinstance(output, tuple) else output


@contextlib.contextmanager
def _hook(module: torch.nn.Module, fn: Any) -> Iterator[None]:
    handle = module.register_forward_hook(fn)
    try:
        yield
    finally:
        handle.remove()


@contextlib.contextmanager
def _flag_while_running(module: torch.nn.Module | None, flag: list[bool]) -> Iterator[None]:
    """``flag[0]`` is True while ``module`` runs (nothing to do without a module)."""
    if module is None:
        yield
        return
    handles = [module.register_forward_pre_hook(lambda *_: flag.__setitem__(0, True)),
               module.register_forward_hook(lambda *_: flag.__setitem__(0, False))]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


@torch.no_grad()
def causal_trace(
    model: torch.nn.Module,
    tokenizer: Any,
    prompt: str,
    subject: str,
    *,
    answer: str | None = None,
    samples: int = 10,
    noise: float = 3.0,
    seed: int = 0,
) -> Trace:
    """Trace ``prompt`` (with ``subject`` in it); ``answer`` defaults to the model's greedy first token."""
    device = next(model.parameters()).device
    ids, s0, s1 = subject_span(tokenizer, prompt, subject)
    x = torch.tensor([ids] * (samples + 1), device=device)  # row 0 clean, rows 1.. corrupted
    # an encoder-decoder's prompt goes through its encoder's embedding module, which some versions of
    # transformers share with the decoder: the noise is added only while the encoder runs
    seq2seq = is_encoder_decoder(model)
    embed = model.get_encoder().embed_tokens if seq2seq else model.get_input_embeddings()
    encoding = [not seq2seq]
    sigma = noise * float(embed.weight.float().std())
    g = torch.Generator().manual_seed(seed)
    eps = (torch.randn(samples, s1 - s0, embed.embedding_dim, generator=g) * sigma).to(device)

    def corrupt(_m: Any, _i: Any, out: torch.Tensor) -> torch.Tensor | None:
        if not encoding[0]:
            return None
        out = out.clone()
        out[1:, s0:s1] += eps.to(out.dtype)
        return out

    def logits(rows: torch.Tensor) -> torch.Tensor:  # the next token's, (B, V)
        return run(model, rows.tolist(), pad=0).logits[:, -1]

    clean_logits = logits(x[:1])[0]
    answer_id = target_ids(tokenizer, answer)[0] if answer else int(clean_logits.argmax())
    p_clean = float(clean_logits.float().softmax(-1)[answer_id])

    def prob() -> float:
        return float(logits(x)[1:].float().softmax(-1)[:, answer_id].mean())

    with _hook(embed, corrupt), _flag_while_running(model.get_encoder() if seq2seq else None, encoding):
        p_corrupted = prob()
        blocks = transformer_blocks(model)
        modules = {"block": list(blocks), "mlp": [child(b, MLP_NAMES) for b in blocks],
                   "attn": [child(b, ATTN_NAMES) for b in blocks]}
        recovery = {k: torch.zeros(len(blocks), len(ids)) for k in KINDS}
        for kind, mods in modules.items():
            for layer, module in enumerate(mods):
                for t in range(len(ids)):
                    recovery[kind][layer, t] = _restored(module, t, prob)
    span = p_clean - p_corrupted
    if span < MIN_EFFECT:  # corrupting the subject did not hurt: there is nothing to recover
        recovery = {k: torch.zeros_like(v) for k, v in recovery.items()}
    else:
        recovery = {k: (v - p_corrupted) / span for k, v in recovery.items()}
    tokens = tokenizer.convert_ids_to_tokens(ids)
    return Trace(tokens, (s0, s1), tokenizer.decode([answer_id]).strip(), p_clean, p_corrupted, recovery)


def _restored(module: torch.nn.Module, t: int, prob: Any) -> float:
    def restore(_m: Any, _i: Any, output: Any) -> Any:
        h = _output_tensor(output).clone()
        h[1:, t] = h[0, t]
        return (h, *output[1:]) if isinstance(output, tuple) else h

    with _hook(module, restore):
        return prob()


def save_heatmap(trace: Trace, path: str | Path) -> Path:
    """Write the three recovery maps side by side as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(KINDS), figsize=(4.2 * len(KINDS), 0.35 * len(trace.tokens) + 1.5), sharey=True)
    labels = [f"{tok}*" if trace.subject[0] <= i < trace.subject[1] else tok for i, tok in enumerate(trace.tokens)]
    for ax, kind in zip(axes, KINDS):
        im = ax.imshow(trace.recovery[kind].T.numpy(), cmap={"block": "Purples", "mlp": "Greens", "attn": "Reds"}[kind],
                       vmin=0, vmax=1, aspect="auto")
        ax.set_title(f"restore {kind} output")
        ax.set_xlabel("layer")
        ax.set_xticks(range(trace.recovery[kind].shape[0]))
        fig.colorbar(im, ax=ax, fraction=0.05)
    axes[0].set_yticks(range(len(labels)), labels)
    fig.suptitle(f"p({trace.answer}): clean {trace.p_clean:.3f}, subject corrupted {trace.p_corrupted:.3f}")
    fig.tight_layout()
    try:
        fig.savefig(path, dpi=110)
    except OSError as exc:
        raise OutputDirError(f"cannot write the heatmap {path}: {exc.strerror or exc}") from None
    finally:
        plt.close(fig)
    return Path(path)
