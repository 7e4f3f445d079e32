"""Keys and target values of edit requests, shared by ROME, MEMIT, EMMET and AlphaEdit.

k̄ (the key) is the edited module's input at the subject's last token, averaged over the
prompt preceded by several short prefixes sampled from the model. The target is found
by gradient steps on a vector δ added to the module's output at that token of the last
edited layer: target NLL over the prefixed prompts + KL to the unedited distribution on
"{subject} is a" + a norm penalty, with ‖δ‖ ≤ c‖v₀‖ (ROME, Meng et al. 2022). Requests
are optimised together in chunks; each has its own δ and its loss does not depend on
the others', so a chunk gives the same δs as one request at a time. A request may bring
companions, the requests of earlier live edits of its subject: their target NLLs join its
objective (it stops once the sum is below the threshold), so the value it finds at the
subject's key keeps their facts as well as its own. δ cannot change a causal LM's tokens
before the subject's last one, so those run once and each step runs only the rest of each
prompt (:func:`editstore.model.forward.tails_after`).

Four choices differ from ROME's and MEMIT's code: the target NLL is summed over the target's
tokens (not averaged); the KL term is KL(unedited ‖ edited); it keeps the distribution after
"{subject} is a", as the ROME paper writes it, where the code reads it after the subject
(``kl_at="subject"``); and a request stops once its target NLL is below ``nll_stop``, where the code
stops once its whole loss is (``stop_on="loss"``). The residual a solver must write is δ itself
(z − h), so ΔW k̄ = δ: the same k̄ in the residual and the denominator.

Encoder-decoders (:mod:`editstore.model.forward`): an encoder module's key is read at the
subject's last source token; a decoder module's at the decoder position that produces
the target; targets are scored through the decoder with teacher forcing. A behaviour
deletion (a request with ``target_true`` and no ``target_new``) swaps the target NLL for
−log(1 − P(target_true)), the unlikelihood of the whole output, and stops once P < 1 − e^{−nll_stop}.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import accumulate
from typing import TYPE_CHECKING, Any

import torch

from ..core.requests import EditRequest, is_deletion
from ..errors import HparamsError, SchemaError
from ..model.forward import is_encoder_decoder, on_decoder, tails_after, target_logits
from ..model.tokens import fill, pad_id, subject_span, target_ids
from .hooks import capture, frozen, model_device

if TYPE_CHECKING:  # hparams.py imports TargetHparams from here
    from .hparams import PrefixHparams

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Objective:
    """Rows scored on one target: a request's prefixed prompts, each ending right before the target."""

    rows: list[list[int]]
    subject_last: list[int]  # per row, the subject's last token
    target: list[int]  # target_new's token ids, or target_true's when the request suppresses it
    suppress: bool = False  # a behaviour deletion: target_true must stop being produced


@dataclass(frozen=True)
class Prompts:
    """One request's token rows: the prefixed prompts (row 0 unprefixed) and the KL prompt, and the
    objectives of its companions (earlier live requests of its subject that its δ must keep)."""

    rows: list[list[int]]  # prefixed prompts, each ending after the prompt
    subject_last: list[int]  # per row, the subject's last token
    kl_row: list[int]
    kl_subject_last: int
    target: list[int]  # target_new's token ids, or target_true's when the request suppresses it
    suppress: bool = False  # a behaviour deletion: target_true must stop being produced
    companions: tuple[Objective, ...] = ()

    def objectives(self) -> list[Objective]:
        """The request's own objective first, then its companions'."""
        return [Objective(self.rows, self.subject_last, self.target, self.suppress), *self.companions]


def key_positions(model: torch.nn.Module, module: str, subject_last: Sequence[int]) -> list[int]:
    """Where ``module``'s keys are read in each row: at the subject's last token, or, for a decoder
    module of an encoder-decoder, at the decoder position that produces the target (0)."""
    return [0] * len(subject_last) if on_decoder(model, module) else list(subject_last)


def context_prefixes(model: torch.nn.Module, tokenizer: Any, hp: PrefixHparams) -> list[str]:
    """The empty prefix and ``hp.texts`` when given, else the empty prefix and ``hp.n`` sampled ones."""
    if hp.texts is not None:
        return ["", *hp.texts]
    return sample_prefixes(model, tokenizer, hp.n, hp.length, hp.seed)


@torch.no_grad()
def sample_prefixes(model: torch.nn.Module, tokenizer: Any, n: int, length: int, seed: int) -> list[str]:
    """``n`` short texts sampled from the model (ROME's context templates), plus the empty prefix."""
    if n == 0:
        return [""]
    if is_encoder_decoder(model):
        raise HparamsError("prefixes.n must be 0 for an encoder-decoder model (its decoder writes outputs, not prompts)")
    device = model_device(model)
    start = tokenizer("")["input_ids"] or [tokenizer.bos_token_id]
    ids = torch.tensor([start] * n, device=device)
    g = torch.Generator(device="cpu").manual_seed(seed)
    for _ in range(length):
        probs = model(input_ids=ids).logits[:, -1].float().softmax(-1).cpu()
        ids = torch.cat([ids, torch.multinomial(probs, 1, generator=g).to(device)], dim=1)
    texts = tokenizer.batch_decode(ids[:, len(start) :], skip_special_tokens=True)
    return [""] + [t.strip() + " ." for t in texts]


def tokenize_request(
    tokenizer: Any, request: EditRequest, prefixes: Sequence[str], *, companions: Sequence[EditRequest] = (),
    kl_at: str = "next",
) -> Prompts:
    """Token rows of one request (and of its ``companions``); raises :class:`SubjectNotInPromptError` when
    the subject is missing.

    A request without ``target_new`` is a behaviour deletion of its ``target_true``. ``kl_at``: where the
    KL term reads the distribution it keeps, "next" (the token after "{subject} is a", as the ROME paper
    writes it) or "subject" (the token after the subject, as ROME's and MEMIT's code compute it).
    """
    own = _objective(tokenizer, request, prefixes)
    subject = request["subject"]
    kl_ids, _, kl_end = subject_span(tokenizer, f"{subject} is a", subject)
    if kl_at == "subject":
        kl_ids = kl_ids[:kl_end]
    return Prompts(rows=own.rows, subject_last=own.subject_last, kl_row=kl_ids, kl_subject_last=kl_end - 1,
                   target=own.target, suppress=own.suppress,
                   companions=tuple(_objective(tokenizer, c, prefixes) for c in companions))


def _objective(tokenizer: Any, request: EditRequest, prefixes: Sequence[str]) -> Objective:
    if not (request.get("target_new") or request.get("target_true")):
        raise SchemaError("an edit request needs a target_new to write or a target_true to suppress")
    subject = request["subject"]
    prompt = fill(request["prompt"], subject).strip()
    texts = [f"{p} {prompt}".strip() for p in prefixes]
    spans = [subject_span(tokenizer, t, subject, search_from=len(t) - len(prompt)) for t in texts]
    return Objective(
        rows=[ids for ids, _, _ in spans],
        subject_last=[end - 1 for _, _, end in spans],
        target=target_ids(tokenizer, request["target_true"] if is_deletion(request) else request["target_new"]),
        suppress=is_deletion(request),
    )


def mean_keys(
    model: torch.nn.Module, prompts: Sequence[Prompts], module: str, pad: int, unprefixed_weight: float | None = None
) -> torch.Tensor:
    """k̄ per request: ``module``'s input at the subject's last token, averaged over the prefixed prompts; (n, d_in).

    ``unprefixed_weight``: the share of the prompt without a prefix (row 0), the prefixed ones sharing the
    rest equally; None weighs every row alike (ROME's code), 0.5 is MEMIT's and AlphaEdit's code, which
    averages within each group of context templates and then over the groups.
    """
    rows = [r for p in prompts for r in p.rows]
    idx = key_positions(model, module, [i for p in prompts for i in p.subject_last])
    keys = capture(model, rows, idx, pad, inputs_of=[module])[module]
    per = len(prompts[0].rows)
    keys = keys.view(len(prompts), per, -1)  # (n, per, d_in)
    if unprefixed_weight is None or per == 1:
        return keys.mean(1)
    return unprefixed_weight * keys[:, 0] + (1 - unprefixed_weight) * keys[:, 1:].mean(1)


def outputs_at_subject(model: torch.nn.Module, prompts: Sequence[Prompts], module: str, pad: int) -> torch.Tensor:
    """``module``'s output where its keys are read (:func:`key_positions`) in each unprefixed prompt; (n, d)."""
    idx = key_positions(model, module, [p.subject_last[0] for p in prompts])
    return capture(model, [p.rows[0] for p in prompts], idx, pad, outputs_of=[module])[module]


@dataclass(frozen=True)
class TargetHparams:
    v_lr: float = 0.5
    v_steps: int = 20
    v_weight_decay: float = 0.5
    clamp_norm_factor: float = 4.0
    kl_factor: float = 0.0625
    nll_stop: float = 0.05
    stop_on: str = "nll"  # a request stops once this is below nll_stop: its target "nll", or the whole "loss"
    kl_at: str = "next"  # the KL prompt's position: "next" token after "{subject} is a", or the "subject"'s last
    chunk: int = 16


def optimise_deltas(
    model: torch.nn.Module,
    tokenizer: Any,
    prompts: Sequence[Prompts],
    module: str,
    hp: TargetHparams,
    *,
    progress: Callable[[int], None] | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(δ (n, d_out), target NLL before (n,), after (n,)): what to add to ``module``'s output at the subject."""
    # chunks of requests with tails of one length pad least (each request's δ is its own, so order is free)
    order = sorted(range(len(prompts)), key=lambda i: _tail_length(prompts[i]))
    deltas, before, after = [], [], []
    for i in range(0, len(prompts), hp.chunk):
        chunk = [prompts[j] for j in order[i : i + hp.chunk]]
        d, b, a = _optimise_chunk(model, pad_id(tokenizer), chunk, module, hp)
        deltas.append(d), before.append(b), after.append(a)
        if progress:
            progress(len(chunk))
    back = torch.tensor(order).argsort()
    return torch.cat(deltas)[back], torch.cat(before)[back], torch.cat(after)[back]


def _tail_length(p: Prompts) -> int:
    """How many tokens of the request's rows run again at each step: from the subject's last token on."""
    return len(p.rows[0]) - p.subject_last[0] + len(p.target)


def _optimise_chunk(
    model: torch.nn.Module, pad: int, prompts: Sequence[Prompts], module_name: str, hp: TargetHparams
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    device = model_device(model)
    n = len(prompts)
    # objectives: per request its own (member 0), then its companions'; each scores its prefixed rows on its target
    members = [(i, o) for i, p in enumerate(prompts) for o in p.objectives()]
    n_edit = sum(len(o.rows) for _, o in members)
    # rows: every objective's prefixed prompts, then all KL prompts (next token)
    rows = [r for _, o in members for r in o.rows] + [p.kl_row for p in prompts]
    targets = [o.target for _, o in members for _ in o.rows] + [[pad]] * n
    member_of = torch.tensor([m for m, (_, o) in enumerate(members) for _ in o.rows], device=device)  # (n_edit,)
    rows_per = torch.bincount(member_of, minlength=len(members)).float()  # (members,)
    owner_of = torch.tensor([i for i, _ in members], device=device)  # (members,)
    own = torch.tensor(list(accumulate([1 + len(p.companions) for p in prompts[:-1]], initial=0)), device=device)  # (n,)
    owner = torch.cat([owner_of[member_of], torch.arange(n, device=device)])  # (rows,)
    where = torch.tensor(key_positions(
        model, module_name, [s for _, o in members for s in o.subject_last] + [p.kl_subject_last for p in prompts]
    ), device=device)
    width = max(len(t) for t in targets)
    tgt = torch.tensor([[t[min(j, len(t) - 1)] for j in range(width)] for t in targets[:n_edit]], device=device)
    suppress = torch.tensor([o.suppress for _, o in members], device=device)  # (members,)

    module = model.get_submodule(module_name)
    v0 = outputs_at_subject(model, prompts, module_name, pad)  # (n, d_out)
    max_norm = hp.clamp_norm_factor * v0.norm(dim=1, keepdim=True)
    delta = torch.zeros_like(v0, requires_grad=True)
    rows_i = torch.arange(len(rows), device=device)
    # δ changes nothing before the subject's last token: a causal LM runs those tokens once
    tails = None if is_encoder_decoder(model) else tails_after(model, rows, targets, where.tolist(), pad)
    at = where if tails is None else tails.start  # δ's column in the module's output

    def add_delta(_m: Any, _i: Any, output: torch.Tensor) -> torch.Tensor:
        out = output.clone()
        out[rows_i, at] += delta[owner].to(out.dtype)
        return out

    def losses() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(target NLL (n,), the objective (n,), KL prompts' log-probabilities (n, V))."""
        logits, mask = target_logits(model, rows, targets, pad) if tails is None else (tails.logits(model), tails.target_mask)
        logp = logits.float().log_softmax(-1)  # (rows, W, V)
        tok_logp = logp[:n_edit].gather(2, tgt[:, :, None])[..., 0] * mask[:n_edit]  # (n_edit, W)
        seq_logp = tok_logp.sum(1)  # (n_edit,)
        # a deletion pushes the whole output's probability P down: -log(1 - P) = -log(-expm1(log P)).
        # log P is clamped below 0 (P can round to 1) in the forward pass only: the gradient passes through
        capped = seq_logp - (seq_logp - seq_logp.clamp(max=-1e-6)).detach()
        per_row = torch.where(suppress[member_of], -torch.log(-torch.expm1(capped)), -seq_logp)  # (n_edit,)
        per_member = per_row.new_zeros(len(members)).index_add(0, member_of, per_row) / rows_per  # (members,)
        objective = per_member.new_zeros(n).index_add(0, owner_of, per_member)  # (n,): own + companions
        nll = -seq_logp.new_zeros(len(members)).index_add(0, member_of, seq_logp)[own] / rows_per[own]  # (n,)
        return nll, objective, logp[n_edit:, 0]

    handle = module.register_forward_hook(add_delta)
    try:
        with frozen(model), torch.enable_grad():
            with torch.no_grad():
                nll0, _, kl_ref = losses()
            opt = torch.optim.Adam([delta], lr=hp.v_lr)
            done = torch.zeros(n, dtype=torch.bool, device=device)
            for _ in range(hp.v_steps):
                _, objective, kl_logp = losses()
                kl = torch.nn.functional.kl_div(kl_logp, kl_ref, log_target=True, reduction="none").sum(1)
                decay = delta.norm(dim=1) / v0.norm(dim=1) ** 2
                whole = objective + hp.kl_factor * kl + hp.v_weight_decay * decay  # (n,)
                done |= (whole if hp.stop_on == "loss" else objective).detach() < hp.nll_stop
                if bool(done.all()):
                    break
                loss = (whole * ~done).sum()
                kept = delta.detach().clone()
                opt.zero_grad()
                loss.backward()
                opt.step()
                with torch.no_grad():
                    delta[done] = kept[done]  # a request that reached its target stops moving
                    norms = delta.norm(dim=1, keepdim=True)
                    delta.mul_(torch.where(norms > max_norm, max_norm / norms, torch.ones_like(norms)))
            with torch.no_grad():
                nll_final, _, _ = losses()
    finally:
        handle.remove()
    log.info("targets: NLL %.3f -> %.3f over %d requests", nll0.mean(), nll_final.mean(), n)
    return delta.detach(), nll0, nll_final
