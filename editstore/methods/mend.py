"""MEND (Mitchell et al. 2022): editor networks that turn one fine-tuning gradient into an edit.

For an edited weight W (d_out x d_in) the gradient of the target NLL is a sum of rank-one
terms, ∇W = Σ_i δ_i u_iᵀ over tokens i (u_i the layer's input, δ_i the gradient at its
output). An editor g maps each normalised pair z_i = [u_i; δ_i] to a pseudo pair
[ũ_i; δ̃_i] = g(z_i), and the edit is ΔW = −lr_l Σ_i δ̃_i ũ_iᵀ: rank ≤ tokens, stored as
U = −lr_l [δ̃_i] (d_out x T), V = [ũ_i] (d_in x T) like every other delta.

g is a residual MLP with a low-rank hidden layer, identity at initialisation (its output
layer starts at zero), shared by the edited weights of one shape, with a per-layer scale
and shift of the hidden layer and a learned per-layer step size lr_l. The inputs are
standardised with per-layer means and deviations of the gradient pairs of 100 training
requests, gathered before meta-training starts.

Meta-training (:func:`train_editor`): for a request of the training split, the gradient
of the edit NLL gives (u, δ); the editor's ΔW is applied with forward hooks; the loss is
the target NLL on the edit and paraphrase prompts after the edit plus c_loc x KL(before ‖
after) on unrelated prompts, and Adam updates the editor. Every ``val_every`` steps the
same loss on a validation split decides early stopping.
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..core.requests import EditRequest
from ..model.delta import Delta, Factors
from ..model.forward import next_token_logits, target_logits
from ..model.tokens import fill, pad_id, target_ids
from .hooks import frozen, linear_weight, model_device, patched

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class MendHparams:
    rank: int = 64  # hidden width of the editor MLP
    lr_init: float = 1e-3  # initial per-layer step size
    meta_lr: float = 1e-3  # Adam's learning rate for the editor
    steps: int = 4000  # meta-training steps (one edit each), at most
    c_loc: float = 1.0  # weight of the locality KL
    val_every: int = 250
    val_size: int = 50
    patience: int = 4  # validations without improvement before stopping
    seed: int = 0


class GradientTransform(nn.Module):
    """g(z) = z + up(relu(down(z)) · scale_l + shift_l): one per weight shape, identity at initialisation."""

    def __init__(self, width: int, rank: int, layers: int) -> None:
        super().__init__()
        self.down = nn.Linear(width, rank)
        self.up = nn.Linear(rank, width)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)
        self.scale = nn.Parameter(torch.ones(layers, rank))
        self.shift = nn.Parameter(torch.zeros(layers, rank))

    def forward(self, z: torch.Tensor, layer: int) -> torch.Tensor:
        return z + self.up(torch.relu(self.down(z)) * self.scale[layer] + self.shift[layer])


class Editor(nn.Module):
    """The editor of a set of weights: a transform per shape, running input statistics, step sizes."""

    def __init__(self, modules: Sequence[str], shapes: Sequence[tuple[int, int]], hp: MendHparams) -> None:
        super().__init__()
        self.hp = hp
        self.names = list(modules)
        self.shapes = [tuple(s) for s in shapes]  # (d_out, d_in) per module
        self.groups = sorted(set(self.shapes))
        self.slot = [sum(1 for s in self.shapes[:i] if s == shape) for i, shape in enumerate(self.shapes)]
        self.transforms = nn.ModuleList(
            GradientTransform(d_in + d_out, hp.rank, self.shapes.count((d_out, d_in))) for d_out, d_in in self.groups
        )
        self.lrs = nn.Parameter(torch.full((len(modules),), hp.lr_init))
        for i, (d_out, d_in) in enumerate(self.shapes):
            self.register_buffer(f"mean_{i}", torch.zeros(d_in + d_out))
            self.register_buffer(f"var_{i}", torch.ones(d_in + d_out))
        self.register_buffer("seen", torch.zeros(len(modules)))

    def observe(self, i: int, z: torch.Tensor) -> None:
        """Fold the pairs ``z`` (T, width) into module ``i``'s running mean and variance."""
        with torch.no_grad():
            n, m = float(self.seen[i]), z.shape[0]
            mean, var = getattr(self, f"mean_{i}"), getattr(self, f"var_{i}")
            total = n + m
            new_mean = mean + (z.mean(0) - mean) * (m / total)
            new_var = (n * var + m * z.var(0, unbiased=False) + n * m / total * (z.mean(0) - mean) ** 2) / total
            mean.copy_(new_mean)
            var.copy_(new_var if n else z.var(0, unbiased=False).clamp(min=1e-12))
            self.seen[i] += m

    def factors(self, i: int, u: torch.Tensor, delta: torch.Tensor) -> Factors:
        """Module ``i``'s edit from its inputs ``u`` (T, d_in) and output gradients ``delta`` (T, d_out)."""
        d_out, d_in = self.shapes[i]
        z = torch.cat([u, delta], dim=-1).float()
        mean, var = getattr(self, f"mean_{i}"), getattr(self, f"var_{i}")
        out = self.transforms[self.groups.index(self.shapes[i])]((z - mean) / (var.sqrt() + 1e-8), self.slot[i])
        u_t, d_t = out[:, :d_in], out[:, d_in:]
        return Factors(-self.lrs[i] * d_t.T, u_t.T)  # U (d_out, T), V (d_in, T)

    def edit(self, pairs: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> dict[str, Factors]:
        """Per edited module name, the factors of the (u, δ) pairs :func:`gradient_pairs` gave, in order."""
        return {m: self.factors(i, u, d) for i, (m, (u, d)) in enumerate(zip(self.names, pairs))}

    @property
    def config(self) -> dict[str, Any]:
        return {"modules": self.names, "shapes": [list(s) for s in self.shapes]}


# ----------------------------------------------------------------- requests as token rows


@dataclass(frozen=True)
class Example:
    """Token rows of one request: the edit prompt, its target, paraphrase prompts, locality prompts."""

    prompt: list[int]
    target: list[int]
    paraphrases: list[list[int]]
    locality: list[list[int]]


def example(tokenizer: Any, request: EditRequest, *, locality: Sequence[str] = ()) -> Example:
    target = target_ids(tokenizer, request["target_new"])
    prompt = tokenizer(fill(request["prompt"], request["subject"]))["input_ids"]
    paraphrases = [tokenizer(p)["input_ids"] for p in request.get("paraphrase_prompts", [])]
    loc = [tokenizer(p)["input_ids"] for p in locality] or [
        tokenizer(n["prompt"])["input_ids"] for n in request.get("neighborhood_prompts", [])
    ]
    return Example(prompt, target, paraphrases, loc)


def _target_nll(model: nn.Module, prompts: Sequence[list[int]], target: list[int], pad: int) -> torch.Tensor:
    """Mean NLL per token of ``target`` after each of ``prompts``, teacher-forced."""
    logits, _ = target_logits(model, prompts, [target] * len(prompts), pad)
    logp = logits.float().log_softmax(-1)  # (B, k, V)
    tgt = torch.tensor(target, device=logp.device)
    return -logp[:, torch.arange(len(target), device=logp.device), tgt].mean()


def _last_logprobs(model: nn.Module, rows: Sequence[list[int]], pad: int) -> torch.Tensor:
    return next_token_logits(model, rows, pad).float().log_softmax(-1)


def gradient_pairs(model: nn.Module, ex: Example, modules: Sequence[str], pad: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per module, (u (T, d_in), δ (T, d_out)) of the edit NLL's gradient: ∇W = Σ_i δ_i u_iᵀ."""
    inputs: dict[str, torch.Tensor] = {}
    outputs: dict[str, torch.Tensor] = {}

    def hook(name: str) -> Callable[..., None]:
        def save(_m: nn.Module, args: tuple, out: torch.Tensor) -> None:
            inputs[name] = args[0].detach()
            outputs[name] = out

        return save

    handles = [model.get_submodule(m).register_forward_hook(hook(m)) for m in modules]
    weights = [model.get_submodule(m).weight for m in modules]
    flags = [w.requires_grad for w in weights]
    try:
        for w in weights:
            w.requires_grad_(True)  # so the outputs carry a graph to differentiate
        loss = _target_nll(model, [ex.prompt], ex.target, pad)
        grads = torch.autograd.grad(loss, [outputs[m] for m in modules])
    finally:
        for h in handles:
            h.remove()
        for w, f in zip(weights, flags):
            w.requires_grad_(f)
    return [(inputs[m][0].detach().float(), g[0].detach().float()) for m, g in zip(modules, grads)]


def mend_deltas(model: nn.Module, tokenizer: Any, requests: Sequence[EditRequest], editor: Editor,
                *, progress: Callable[[int], None] | None = None) -> tuple[list[Delta], list[float], list[float]]:
    """One delta per request (each on top of the earlier ones); ``model`` is left unchanged."""
    pad = pad_id(tokenizer)
    editor = editor.to(model_device(model)).eval()
    updates: dict[str, list] = {}
    deltas, before, after = [], [], []
    with frozen(model):
        for request in requests:
            ex = example(tokenizer, request)
            with patched(model, updates), torch.no_grad():
                before.append(float(_target_nll(model, [ex.prompt], ex.target, pad)))
            with patched(model, updates):
                pairs = gradient_pairs(model, ex, editor.names, pad)
            with torch.no_grad():
                factors = {f"{m}.weight": Factors(f.U.cpu().contiguous(), f.V.cpu().contiguous())
                           for m, f in editor.edit(pairs).items()}
            for p, f in factors.items():
                updates.setdefault(p.removesuffix(".weight"), []).append((f.U, f.V))
            with patched(model, updates), torch.no_grad():
                after.append(float(_target_nll(model, [ex.prompt], ex.target, pad)))
            deltas.append(Delta(factors, {"method": "mend"}))
            if progress:
                progress(1)
    return deltas, before, after


def meta_loss(model: nn.Module, editor: Editor, ex: Example, pad: int, c_loc: float,
              *, train: bool = True) -> tuple[torch.Tensor, float, float]:
    """Edit NLL (edit + paraphrase prompts) after the editor's edit, plus c_loc · KL on the locality prompts.

    With ``train`` False no graph is kept (validation)."""
    with torch.no_grad():
        base = _last_logprobs(model, ex.locality, pad) if ex.locality else None
    pairs = gradient_pairs(model, ex, editor.names, pad)  # needs autograd on, whatever ``train`` is
    with torch.set_grad_enabled(train):
        updates = {m: [(f.U, f.V)] for m, f in editor.edit(pairs).items()}
        return _after_edit(model, updates, ex, base, pad, c_loc)


def _after_edit(model: nn.Module, updates: dict, ex: Example, base: torch.Tensor | None, pad: int,
                c_loc: float) -> tuple[torch.Tensor, float, float]:
    with patched(model, updates):
        edit_loss = _target_nll(model, [ex.prompt, *ex.paraphrases], ex.target, pad)
        loc = torch.zeros((), device=model_device(model))
        if base is not None:
            edited = _last_logprobs(model, ex.locality, pad)
            loc = (base.exp() * (base - edited)).sum(-1).mean()
    return edit_loss + c_loc * loc, float(edit_loss.detach()), float(loc.detach())


def train_editor(
    model: nn.Module,
    tokenizer: Any,
    modules: Sequence[str],
    train: Sequence[dict[str, Any]],
    val: Sequence[dict[str, Any]],
    hp: MendHparams,
    *,
    progress: Callable[[int, float, float], None] | None = None,
) -> tuple[Editor, dict[str, Any]]:
    """Meta-train an editor of ``modules`` on ``train`` requests; ``model`` is left unchanged."""
    rng = random.Random(hp.seed)
    pad = pad_id(tokenizer)
    device = model_device(model)
    shapes = [tuple(linear_weight(model.get_submodule(m))[0].shape) for m in modules]
    with torch.random.fork_rng(devices=[]):  # the editor's initialisation, without touching the caller's RNG
        torch.manual_seed(hp.seed)
        editor = Editor(modules, shapes, hp).to(device)
    train_ex = [example(tokenizer, r) for r in train]
    val_ex = [example(tokenizer, r) for r in val[: hp.val_size]]
    observe_inputs(model, editor, rng.sample(train_ex, min(len(train_ex), 100)), pad)
    optimiser = torch.optim.Adam(editor.parameters(), lr=hp.meta_lr)
    best, best_state, best_step, waited, history = math.inf, None, 0, 0, []
    step = 0
    with frozen(model):
        for step in range(1, hp.steps + 1):
            ex = train_ex[rng.randrange(len(train_ex))]
            loss, edit_loss, loc = meta_loss(model, editor, ex, pad, hp.c_loc)
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            with torch.no_grad():
                editor.lrs.clamp_(min=1e-6)
            if progress:
                progress(step, edit_loss, loc)
            if step % hp.val_every == 0 or step == hp.steps:
                val_loss = _validate(model, editor, val_ex, pad, hp.c_loc)
                history.append({"step": step, "val_loss": round(val_loss, 4)})
                log.info("MEND step %d: validation loss %.4f", step, val_loss)
                if val_loss < best - 1e-4:
                    best, best_step, waited = val_loss, step, 0
                    best_state = {k: v.detach().clone() for k, v in editor.state_dict().items()}
                else:
                    waited += 1
                    if waited >= hp.patience:
                        break
    if best_state is not None:
        editor.load_state_dict(best_state)
    return editor.eval(), {"steps": step, "best_step": best_step, "best_val_loss": round(best, 4), "history": history}


def observe_inputs(model: nn.Module, editor: Editor, examples: Sequence[Example], pad: int) -> None:
    """Fold the gradient pairs of ``examples`` into the editor's input statistics (before meta-training)."""
    with frozen(model):
        for ex in examples:
            for i, (u, d) in enumerate(gradient_pairs(model, ex, editor.names, pad)):
                editor.observe(i, torch.cat([u, d], dim=-1))


def _validate(model: nn.Module, editor: Editor, examples: Sequence[Example], pad: int, c_loc: float) -> float:
    total = 0.0
    for ex in examples:
        loss, _, _ = meta_loss(model, editor, ex, pad, c_loc, train=False)
        total += float(loss)
    return total / max(len(examples), 1)
