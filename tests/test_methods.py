"""Invariants of the edit methods on tiny random models of every supported architecture."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from editstore.methods import METHODS, compute_edits, find_hparams
from editstore.methods.hooks import as_updates, linear_weight, patched
from editstore.methods.hparams import Hparams
from editstore.methods.mend import Editor, MendHparams
from editstore.methods.solvers import equality, least_squares, null_space, null_space_projector
from editstore.methods.targets import context_prefixes, mean_keys, optimise_deltas, sample_prefixes, tokenize_request
from editstore.model.stats import second_moment
from editstore.model.synthetic import TINY_CONFIGS, tiny_model
from editstore.world.tokenizer import build_tokenizer

WORDS = "Ada Lovelace was born in London . The capital of France is Paris . Alan Turing works as a scientist in Rome"
REQUESTS = [
    {"prompt": "{} was born in", "subject": "Ada Lovelace", "target_new": "Paris"},
    {"prompt": "The capital of {} is", "subject": "France", "target_new": "Rome"},
    {"prompt": "{} works as a", "subject": "Alan Turing", "target_new": "scientist"},
]
FAST = {"targets.v_steps": 5, "prefixes.n": 3, "prefixes.length": 3}


@pytest.fixture(scope="module")
def tok():  # noqa: ANN201
    return build_tokenizer([WORDS])


@pytest.fixture(scope="module", params=sorted(TINY_CONFIGS))
def tiny(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, tok):  # noqa: ANN001, ANN201
    arch = request.param
    depth = {"n_layer" if "n_layer" in TINY_CONFIGS[arch] else "num_hidden_layers": 3}  # edits need a layer above them
    path = tiny_model(arch, tmp_path_factory.mktemp(arch) / "base", vocab_size=len(tok), pad_token_id=tok.pad_token_id, **depth)
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    config = json.loads((Path(path) / "config.json").read_text())
    return model, config


def _hparams(method: str, config: dict, **changes):  # noqa: ANN003, ANN202
    layers = (1,) if method in ("rome", "ft") else (0, 1)
    return find_hparams(method, config).replace(**{"layers": layers, **FAST, **changes})


def _sigmas(model, tok, hp):  # noqa: ANN001, ANN202
    out = {}
    for layer in hp.layers:
        name = hp.module_name(layer)
        sigma, _ = second_moment(model, tok, [WORDS] * 4, model.get_submodule(name))
        out[name] = sigma + 1e-2 * torch.eye(sigma.shape[0], dtype=sigma.dtype)  # a tiny corpus: keep Σ invertible
    return out


@pytest.mark.parametrize("method", METHODS)
def test_every_method_leaves_the_model_unchanged_and_returns_one_delta_per_request(tiny, tok, method: str) -> None:
    model, config = tiny
    before = {k: v.clone() for k, v in model.state_dict().items()}
    flags = {k: p.requires_grad for k, p in model.named_parameters()}
    if method == "mend":  # an untrained (identity) editor of the down-projections the other methods edit
        hp = _hparams("memit", config).replace(method="mend")
        modules = [hp.module_name(layer) for layer in hp.layers]
        shapes = [tuple(linear_weight(model.get_submodule(m))[0].shape) for m in modules]
        result = compute_edits(model, tok, REQUESTS, hp, editor=Editor(modules, shapes, MendHparams(rank=4)))
    else:
        hp = _hparams(method, config)
        result = compute_edits(model, tok, REQUESTS, hp, sigmas=_sigmas(model, tok, hp))
    for name, value in model.state_dict().items():
        assert torch.equal(value, before[name]), name
    assert flags == {k: p.requires_grad for k, p in model.named_parameters()}
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())  # no edit left attached
    assert len(result.deltas) == len(REQUESTS)
    for delta in result.deltas:
        assert delta.params == sorted(f"{hp.module_name(layer)}.weight" for layer in hp.layers)
        assert all(torch.isfinite(f.U).all() and torch.isfinite(f.V).all() for f in delta.factors.values())


def test_rome_maps_the_key_to_its_target(tiny, tok) -> None:
    """The edited module maps k̄ (recomputed here) to its target v* − b: ΔW k̄ = v* − W k̄ − b to 1e-4 relative."""
    model, config = tiny
    hp = _hparams("rome", config)
    result = compute_edits(model, tok, REQUESTS[:1], hp, sigmas=_sigmas(model, tok, hp))
    [(param, f)] = result.deltas[0].factors.items()
    name = param.removesuffix(".weight")
    assert f.rank == 1 and f.keys is not None and f.targets is not None
    assert result.nll_after[0] < result.nll_before[0]
    prefixes = sample_prefixes(model, tok, hp.prefixes.n, hp.prefixes.length, hp.prefixes.seed)
    k_bar = mean_keys(model, [tokenize_request(tok, REQUESTS[0], prefixes)], name, tok.pad_token_id)[0]
    assert torch.allclose(k_bar, f.keys[:, 0], atol=1e-5)
    module = model.get_submodule(name)
    _, b = linear_weight(module)
    with torch.no_grad():
        with patched(model, as_updates(result.deltas)):
            edited = module(k_bar[None]).double()[0] - b.double()  # (W + ΔW) k̄, through the real module
        unedited = module(k_bar[None]).double()[0] - b.double()
    target = f.targets[:, 0].double()  # v* − b
    assert torch.linalg.norm(target - unedited) > 1e-3 * torch.linalg.norm(target)  # the edit asks for a change
    assert torch.linalg.norm(edited - target) <= 1e-4 * torch.linalg.norm(target - unedited)


def test_emmet_without_regulariser_meets_every_constraint_of_its_batch(tiny, tok) -> None:
    model, config = tiny
    hp = _hparams("emmet", config, layers=(1,), **{"solver.lambda_e": 0.0})
    result = compute_edits(model, tok, REQUESTS, hp, sigmas=_sigmas(model, tok, hp))
    param = f"{hp.module_name(1)}.weight"
    factors = [d.factors[param] for d in result.deltas]
    dense = sum(f.dense().double() for f in factors)
    K = torch.cat([f.keys for f in factors], 1).double()
    T = torch.cat([f.targets for f in factors], 1).double()
    W, _ = linear_weight(model.get_submodule(hp.module_name(1)))
    residual = T - W.double() @ K
    assert torch.linalg.norm(dense @ K - residual) <= 1e-4 * torch.linalg.norm(residual)


def _random_problem(d_in: int = 12, d_out: int = 10, n: int = 5, seed: int = 0):  # noqa: ANN202
    g = torch.Generator().manual_seed(seed)
    A = torch.randn(d_in, 3 * d_in, generator=g, dtype=torch.float64)
    sigma = A @ A.T / A.shape[1]
    return torch.randn(d_in, n, generator=g, dtype=torch.float64), torch.randn(d_out, n, generator=g, dtype=torch.float64), sigma


def test_emmet_with_regulariser_is_memit_with_lambda_e_times_w() -> None:
    K, R, sigma = _random_problem()
    w, lam = 3.0, 0.1
    e = equality(K, R, w * sigma, lam)
    m = least_squares(K, R, lam * w * sigma)
    assert torch.allclose(e.U @ e.V.T, m.U @ m.V.T, atol=1e-10)


def test_emmet_batch_larger_than_the_key_dimension_falls_back_to_the_pseudo_inverse() -> None:
    K, R, sigma = _random_problem(d_in=8, n=40)
    s = equality(K, R, sigma, 0.0)
    assert s.pseudo_inverse and torch.isfinite(s.U).all()
    delta = s.U @ s.V.T
    best = R @ torch.linalg.pinv(K)  # the least-squares Δ in the Euclidean metric reaches the same residual
    assert torch.linalg.norm(delta @ K - R) <= torch.linalg.norm(best @ K - R) * (1 + 1e-6)
    regularised = equality(K, R, sigma, 0.1)  # λ_e > 0 with n > d_in goes through the d_in × d_in form
    assert not regularised.pseudo_inverse and torch.isfinite(regularised.V).all()


@pytest.mark.parametrize("lambda_e", [0.0, 0.1])
def test_emmet_solves_a_batch_of_10000_edits(lambda_e: float) -> None:
    K, R, sigma = _random_problem(d_in=64, d_out=48, n=10_000)
    s = equality(K, R, sigma, lambda_e)
    assert s.U.shape == (48, 10_000) and s.V.shape == (64, 10_000)
    assert torch.isfinite(s.U).all() and torch.isfinite(s.V).all()
    assert s.pseudo_inverse == (lambda_e == 0.0)
    fit = torch.linalg.norm((s.U @ s.V.T) @ K - R) / torch.linalg.norm(R)
    best = torch.linalg.norm(R @ torch.linalg.pinv(K) @ K - R) / torch.linalg.norm(R)
    assert fit <= best + 0.05  # as good as the least-squares fit, up to the regulariser


def test_alphaedit_leaves_the_preserved_keys_alone() -> None:
    K, R, sigma = _random_problem(d_in=12, n=3)
    values, vectors = torch.linalg.eigh(sigma)
    tau = float(values[6])  # the 6 smallest directions form the null space
    P = null_space_projector(sigma, tau)
    s = null_space(K, R, P, K.new_zeros(12, 0), alpha=1e-3)
    delta = s.U @ s.V.T
    preserved = vectors[:, 6:]  # the directions with large eigenvalues
    assert torch.linalg.norm(delta @ preserved) <= 1e-8 * torch.linalg.norm(delta)


def test_null_space_projector_is_kept_by_the_content_of_sigma() -> None:
    """P is cached by Σ's bytes: Σ changed in place gives the new Σ's P, and a caller's P cannot alter the cache."""
    _, _, sigma = _random_problem(d_in=12, n=3)
    tau = float(torch.linalg.eigvalsh(sigma)[5])
    first = null_space_projector(sigma, tau)
    first.zero_()  # the caller's copy
    again = null_space_projector(sigma, tau)
    assert torch.linalg.matrix_rank(again) == 5
    sigma += 10 * torch.eye(12, dtype=sigma.dtype)  # every eigenvalue above τ: an empty null space
    assert null_space_projector(sigma, tau).abs().max() == 0


def test_mean_keys_weighs_the_unprefixed_prompt_as_asked(gpt2_dir: Path) -> None:
    """None: every prompt alike (ROME's code); 0.5: half for the unprefixed prompt (MEMIT's and AlphaEdit's)."""
    from editstore.methods.targets import Prompts

    model = AutoModelForCausalLM.from_pretrained(gpt2_dir)
    rows, last = [[1, 2, 3], [4, 5, 1, 2, 3], [6, 1, 2, 3]], [2, 4, 3]
    request = lambda r, s: [Prompts(rows=r, subject_last=s, kl_row=[1, 2], kl_subject_last=1, target=[5])]  # noqa: E731
    module = "transformer.h.0.mlp.c_proj"
    k0 = mean_keys(model, request(rows[:1], last[:1]), module, pad=0)
    rest = mean_keys(model, request(rows[1:], last[1:]), module, pad=0)
    torch.testing.assert_close(mean_keys(model, request(rows, last), module, pad=0), (k0 + 2 * rest) / 3)
    torch.testing.assert_close(mean_keys(model, request(rows, last), module, pad=0, unprefixed_weight=0.5),
                               0.5 * k0 + 0.5 * rest)


@pytest.fixture(scope="module")
def tiny_gpt2(tmp_path_factory: pytest.TempPathFactory, tok):  # noqa: ANN001, ANN201
    path = tiny_model("gpt2", tmp_path_factory.mktemp("gpt2-rules") / "base", vocab_size=len(tok),
                      pad_token_id=tok.pad_token_id, n_layer=3)
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    return model, json.loads((Path(path) / "config.json").read_text())


def test_fixed_prefixes_replace_the_sampled_ones_in_the_keys(tiny_gpt2, tok) -> None:
    model, config = tiny_gpt2
    texts = ("Alan Turing works as a scientist .", "The capital of France is Paris .")
    hp = _hparams("rome", config, **{"prefixes.texts": texts})
    assert context_prefixes(model, tok, hp.prefixes) == ["", *texts]
    name = hp.module_name(1)
    result = compute_edits(model, tok, REQUESTS[:1], hp, sigmas=_sigmas(model, tok, hp))
    key = result.deltas[0].factors[f"{name}.weight"].keys[:, 0]
    fixed = mean_keys(model, [tokenize_request(tok, REQUESTS[0], ["", *texts])], name, tok.pad_token_id)[0]
    sampled = mean_keys(model, [tokenize_request(tok, REQUESTS[0], context_prefixes(model, tok, hp.replace(
        **{"prefixes.texts": None}).prefixes))], name, tok.pad_token_id)[0]
    assert torch.allclose(key, fixed, atol=1e-5)
    assert not torch.allclose(key, sampled, atol=1e-3)
    assert Hparams.from_json(hp.to_json()).prefixes.texts == texts  # a JSON array comes back as the tuple


def test_the_kl_prompt_reads_after_is_a_or_at_the_subject(tok) -> None:
    request = REQUESTS[0]
    after = tokenize_request(tok, request, [""])
    at = tokenize_request(tok, request, [""], kl_at="subject")
    subject = tok(request["subject"])["input_ids"]
    assert after.kl_row == tok(f"{request['subject']} is a")["input_ids"]
    assert at.kl_row == subject and at.kl_subject_last == len(subject) - 1 == after.kl_subject_last


def test_stopping_on_the_whole_loss_differs_only_through_the_kl_and_norm_terms(tiny_gpt2, tok) -> None:
    model, config = tiny_gpt2
    hp = _hparams("rome", config, **{"targets.v_steps": 20})
    name = hp.module_name(1)
    prompts = [tokenize_request(tok, r, [""]) for r in REQUESTS]

    def deltas(**changes: object) -> torch.Tensor:
        targets = hp.replace(**{f"targets.{k}": v for k, v in changes.items()}).targets
        return optimise_deltas(model, tok, prompts, name, targets)[0]

    plain = {"kl_factor": 0.0, "v_weight_decay": 0.0}  # the whole loss is the target NLL
    _, before, after = optimise_deltas(model, tok, prompts, name, hp.replace(
        **{f"targets.{k}": v for k, v in {**plain, "nll_stop": 0.0}.items()}).targets)
    assert bool((after < before).all())
    halfway = float((before + after).min() / 2)  # below every NLL before, above most after
    free = {**plain, "nll_stop": halfway}
    assert torch.equal(deltas(stop_on="nll", **free), deltas(stop_on="loss", **free))  # the loss is the NLL then
    strict = {"kl_factor": 100.0, "nll_stop": halfway}  # NLL + 100 KL stays above it for longer
    assert not torch.allclose(deltas(stop_on="nll", **strict), deltas(stop_on="loss", **strict))
