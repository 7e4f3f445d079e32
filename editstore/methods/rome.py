"""ROME (Meng et al. 2022): a rank-one edit of one MLP down-projection.

k̄ is the module's input at the subject's last token, averaged over the prompt
preceded by several short prefixes sampled from the model. v* is found by
gradient steps on a vector δ added to the module's output at that token
(target NLL + KL on "{subject} is a" + a norm penalty; ‖δ‖ ≤ c‖v₀‖). Then, with
u = Σ⁻¹k̄,  ΔW = (v* − W k̄ − b) uᵀ / (uᵀ k̄),  so that (W + ΔW) k̄ + b = v*.
The same k̄ is used in the residual and the denominator (the original code's
k₀/k̄ mismatch is what makes sequential edits "disable" each other).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from transformers.pytorch_utils import Conv1D

from ..delta import Delta, Factors
from ..evaluate import pad_id, right_pad, target_ids
from ..tokens import subject_span

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RomeHparams:
    """ROME's hyperparameters; ``module`` is a template with ``{}`` for the layer."""

    layer: int
    module: str
    v_lr: float = 0.5
    v_steps: int = 20
    v_weight_decay: float = 0.5
    clamp_norm_factor: float = 4.0
    kl_factor: float = 0.0625
    n_prefixes: int = 10
    prefix_len: int = 5
    seed: int = 0

    @property
    def module_name(self) -> str:
        return self.module.format(self.layer)


@dataclass(frozen=True)
class RomeResult:
    delta: Delta
    k: torch.Tensor  # (d_in,) k̄
    v_star: torch.Tensor  # (d_out,) target output of the module at k̄
    nll_before: float
    nll_after: float


def linear_weight(module: torch.nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """(W (d_out, d_in), b (d_out,)) of a Linear or Conv1D module, in float32."""
    w = module.weight.detach().float()
    W = w.T if isinstance(module, Conv1D) else w  # Conv1D stores (in, out)
    b = module.bias.detach().float() if getattr(module, "bias", None) is not None else torch.zeros(W.shape[0], device=W.device)
    return W, b


@contextlib.contextmanager
def frozen(model: torch.nn.Module) -> Iterator[None]:
    """No parameter collects gradients inside the block; the flags are restored after."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


@torch.no_grad()
def sample_prefixes(model: torch.nn.Module, tokenizer: Any, n: int, length: int, seed: int) -> list[str]:
    """``n`` short texts sampled from the model (ROME's context templates), plus the empty prefix."""
    device = next(model.parameters()).device
    start = tokenizer("")["input_ids"] or [tokenizer.bos_token_id]
    ids = torch.tensor([start] * n, device=device)
    g = torch.Generator(device="cpu").manual_seed(seed)
    for _ in range(length):
        probs = model(input_ids=ids).logits[:, -1].float().softmax(-1).cpu()
        ids = torch.cat([ids, torch.multinomial(probs, 1, generator=g).to(device)], dim=1)
    texts = tokenizer.batch_decode(ids[:, len(start) :], skip_special_tokens=True)
    return [""] + [t.strip() + " ." for t in texts]


def _capture(module: torch.nn.Module, model: torch.nn.Module, rows: list[list[int]], idx: list[int], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Module input and output at position idx[b] of each row: (n, d_in), (n, d_out)."""
    device = next(model.parameters()).device
    got: dict[str, torch.Tensor] = {}
    rows_i = torch.arange(len(rows), device=device)
    where = torch.tensor(idx, device=device)

    def hook(_m: Any, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        got["k"] = inputs[0][rows_i, where].float()
        got["v"] = output[rows_i, where].float()

    ids, mask = right_pad(rows, pad)
    handle = module.register_forward_hook(hook)
    try:
        with torch.no_grad():
            model(input_ids=ids.to(device), attention_mask=mask.to(device))
    finally:
        handle.remove()
    return got["k"], got["v"]


def compute_rome(
    model: torch.nn.Module,
    tokenizer: Any,
    request: dict[str, Any],
    hparams: RomeHparams,
    *,
    sigma: torch.Tensor | None = None,
) -> RomeResult:
    """The rank-one delta for one request; ``model`` is left unchanged.

    ``sigma`` is Σ = E[k kᵀ] of the module's inputs (d_in, d_in); None means the identity.
    """
    module = model.get_submodule(hparams.module_name)
    device = next(model.parameters()).device
    pad = pad_id(tokenizer)
    subject, target = request["subject"], request["target_new"]
    prompt = request["prompt"].replace("{}", subject)
    prefixes = sample_prefixes(model, tokenizer, hparams.n_prefixes, hparams.prefix_len, hparams.seed)
    texts = [f"{p} {prompt}".strip() for p in prefixes]
    spans = [subject_span(tokenizer, t, subject, search_from=len(t) - len(prompt)) for t in texts]
    rows = [ids for ids, _, _ in spans]
    idx = [end - 1 for _, _, end in spans]

    t_ids = target_ids(tokenizer, target)
    kl_ids, _, kl_end = subject_span(tokenizer, f"{subject} is a", subject)
    edit_rows = [r + t_ids[:-1] for r in rows] + [kl_ids]
    edit_idx = idx + [kl_end - 1]
    # one pass: the model is causal, so the target tokens appended after the subject leave its key unchanged
    k_all, v_all = _capture(module, model, edit_rows, edit_idx, pad)
    k_bar = k_all[: len(rows)].mean(0)  # (d_in,) over the prefixed prompts, not the KL prompt
    v0 = v_all[0]  # (d_out,) output at the subject in the un-prefixed prompt
    delta, nll_before, nll_after = _optimise_v(model, module, edit_rows, edit_idx, rows, t_ids, v0, hparams, pad)
    v_star = v0 + delta  # (d_out,)

    W, b = linear_weight(module)
    k64, W64 = k_bar.double(), W.double()
    u = torch.linalg.solve(sigma.to(device).double(), k64) if sigma is not None else k64  # (d_in,) Σ⁻¹k̄
    residual = v_star.double() - W64 @ k64 - b.double()  # (d_out,)
    U = residual[:, None]  # (d_out, 1)
    V = (u / (u @ k64))[:, None]  # (d_in, 1)
    param = f"{hparams.module_name}.weight"
    factors = Factors(U.float().cpu(), V.float().cpu(), k_bar[:, None].cpu(), (v_star - b)[:, None].cpu())
    metadata = {"method": "rome", "layer": hparams.layer}
    return RomeResult(Delta({param: factors}, metadata), k_bar.cpu(), v_star.cpu(), nll_before, nll_after)


def _optimise_v(
    model: torch.nn.Module,
    module: torch.nn.Module,
    edit_rows: list[list[int]],
    edit_idx: list[int],
    prompt_rows: list[list[int]],
    t_ids: list[int],
    v0: torch.Tensor,
    hp: RomeHparams,
    pad: int,
) -> tuple[torch.Tensor, float, float]:
    """δ such that adding it to the module output at the subject makes the target likely."""
    device = next(model.parameters()).device
    ids, mask = right_pad(edit_rows, pad)
    ids, mask = ids.to(device), mask.to(device)
    n = len(prompt_rows)
    rows_i = torch.arange(len(edit_rows), device=device)
    where = torch.tensor(edit_idx, device=device)
    # target token j of row b is predicted at position len(prompt_b) - 1 + j
    pos = torch.tensor([[len(r) - 1 + j for j in range(len(t_ids))] for r in prompt_rows], device=device)  # (n, k)
    tgt = torch.tensor(t_ids, device=device).expand(n, -1)  # (n, k)
    delta = torch.zeros_like(v0, requires_grad=True)
    max_norm = hp.clamp_norm_factor * v0.norm()

    def add_delta(_m: Any, _i: Any, output: torch.Tensor) -> torch.Tensor:
        out = output.clone()
        out[rows_i, where] += delta.to(out.dtype)
        return out

    def losses() -> tuple[torch.Tensor, torch.Tensor]:
        logp = model(input_ids=ids, attention_mask=mask).logits.float().log_softmax(-1)
        nll = -logp[torch.arange(n, device=device)[:, None], pos, tgt].sum(1).mean()
        kl_logp = logp[n, int(mask[n].sum()) - 1]  # next-token distribution after "{subject} is a"
        return nll, kl_logp

    handle = module.register_forward_hook(add_delta)
    try:
        with frozen(model), torch.enable_grad():
            with torch.no_grad():
                nll0, kl_ref = losses()
            opt = torch.optim.Adam([delta], lr=hp.v_lr)
            for _ in range(hp.v_steps):
                nll, kl_logp = losses()
                kl = torch.nn.functional.kl_div(kl_logp, kl_ref, log_target=True, reduction="sum")
                loss = nll + hp.kl_factor * kl + hp.v_weight_decay * delta.norm() / v0.norm() ** 2
                if nll.item() < 5e-2:
                    break
                opt.zero_grad()
                loss.backward()
                opt.step()
                with torch.no_grad():
                    if delta.norm() > max_norm:
                        delta.mul_(max_norm / delta.norm())
            with torch.no_grad():
                nll_final, _ = losses()
    finally:
        handle.remove()
    log.info("ROME v*: target NLL %.3f -> %.3f, |δ|/|v0| = %.2f", nll0, nll_final, delta.norm() / v0.norm())
    return delta.detach(), float(nll0), float(nll_final)
