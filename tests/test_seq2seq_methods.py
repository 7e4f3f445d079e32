"""Rank-one editing of encoder-decoders (issue 7): invariants on tiny random T5, BART and Marian models.

An encoder MLP's key is read at the subject's last source token, a decoder MLP's at the
decoder position that produces the target; the value optimisation scores the target
through the decoder with teacher forcing.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoModelForSeq2SeqLM

from editstore.errors import HparamsError
from editstore.methods import compute_edits
from editstore.methods.hooks import as_updates, linear_weight, patched
from editstore.methods.hparams import Hparams
from editstore.methods.targets import mean_keys, sample_prefixes, tokenize_request
from editstore.model.forward import on_decoder
from editstore.model.stats import second_moment
from editstore.model.synthetic import tiny_model
from editstore.world.tokenizer import build_tokenizer

WORDS = "Ada Lovelace was born in London . The capital of France is Paris . Alan Turing works as a scientist in Rome"
REQUESTS = [
    {"prompt": "{} was born in", "subject": "Ada Lovelace", "target_new": "Paris"},
    {"prompt": "The capital of {} is", "subject": "France", "target_new": "Rome"},
    {"prompt": "{} works as a", "subject": "Alan Turing", "target_new": "scientist"},
]
SITES = {  # (module, block) templates per side
    "t5": {"encoder": ("encoder.block.{}.layer.1.DenseReluDense.wo", "encoder.block.{}"),
           "decoder": ("decoder.block.{}.layer.2.DenseReluDense.wo", "decoder.block.{}")},
    "bart": {"encoder": ("model.encoder.layers.{}.fc2", "model.encoder.layers.{}"),
             "decoder": ("model.decoder.layers.{}.fc2", "model.decoder.layers.{}")},
}
SITES["marian"] = SITES["bart"]
PARALLEL_KEYS = ("a random BART or Marian decoder barely reads its encoder: the first-position keys of different "
                 "prompts are nearly parallel, so a batch has no exact solution (batches on the trained T5 world: benchmarks/methods.py --arch t5)")


@pytest.fixture(scope="module")
def tok():  # noqa: ANN201
    return build_tokenizer([WORDS])


@pytest.fixture(scope="module", params=sorted(SITES))
def tiny(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, tok):  # noqa: ANN001, ANN201
    arch = request.param
    ids = {"pad_token_id": tok.pad_token_id, "decoder_start_token_id": tok.pad_token_id, "eos_token_id": tok.eos_token_id}
    path = tiny_model(arch, tmp_path_factory.mktemp(arch) / "base", vocab_size=len(tok), **ids)
    return arch, AutoModelForSeq2SeqLM.from_pretrained(path).eval()


def _hparams(arch: str, side: str, method: str = "rome", layers: tuple[int, ...] = (0,), **changes) -> Hparams:  # noqa: ANN003
    module, block = SITES[arch][side]
    hp = Hparams(method=method, architecture=f"tiny-{arch}", module=module, block=block, layers=layers)
    return hp.replace(**{"prefixes.n": 0, "targets.v_steps": 10, **changes})


def _sigmas(model, tok, hp: Hparams) -> dict[str, torch.Tensor]:  # noqa: ANN001
    out = {}
    for layer in hp.layers:
        name = hp.module_name(layer)
        sigma, _ = second_moment(model, tok, WORDS.split(" . ") * 4, model.get_submodule(name))
        out[name] = sigma + 1e-2 * torch.eye(sigma.shape[0], dtype=sigma.dtype)  # a tiny corpus: keep Σ invertible
    return out


@pytest.mark.parametrize("side", ["encoder", "decoder"])
def test_rome_maps_the_key_to_its_target_on_either_side(tiny, tok, side: str) -> None:
    """ΔW k̄ = v* − W k̄ (to 1e-4 relative) at the encoder's subject token or the decoder's target position."""
    arch, model = tiny
    hp = _hparams(arch, side)
    name = hp.module_name(0)
    assert on_decoder(model, name) == (side == "decoder")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    result = compute_edits(model, tok, REQUESTS[:1], hp, sigmas=_sigmas(model, tok, hp))
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())
    [(param, f)] = result.deltas[0].factors.items()
    assert param == f"{name}.weight" and f.rank == 1
    k_bar = mean_keys(model, [tokenize_request(tok, REQUESTS[0], sample_prefixes(model, tok, 0, 0, 0))], name, 0)[0]
    torch.testing.assert_close(k_bar, f.keys[:, 0], atol=1e-5, rtol=1e-5)
    module = model.get_submodule(name)
    W, b = linear_weight(module)
    with torch.no_grad(), patched(model, as_updates(result.deltas)):
        edited = module(k_bar[None]).double()[0] - b.double()
    target = f.targets[:, 0].double()
    unedited = W.double() @ k_bar.double()
    assert torch.linalg.norm(target - unedited) > 1e-3 * torch.linalg.norm(target)
    assert torch.linalg.norm(edited - target) <= 1e-4 * torch.linalg.norm(target - unedited)


@pytest.mark.parametrize("side", ["encoder", "decoder"])
def test_emmet_meets_every_constraint_of_its_batch(tiny, tok, side: str) -> None:
    arch, model = tiny
    if side == "decoder" and arch != "t5":
        pytest.skip(PARALLEL_KEYS)
    hp = _hparams(arch, side, "emmet", layers=(1,), **{"solver.lambda_e": 0.0})
    result = compute_edits(model, tok, REQUESTS, hp, sigmas=_sigmas(model, tok, hp))
    param = f"{hp.module_name(1)}.weight"
    factors = [d.factors[param] for d in result.deltas]
    K = torch.cat([f.keys for f in factors], 1).double()
    T = torch.cat([f.targets for f in factors], 1).double()
    residual = T - linear_weight(model.get_submodule(hp.module_name(1)))[0].double() @ K
    dense = sum(f.dense().double() for f in factors)
    assert torch.linalg.norm(dense @ K - residual) <= 1e-4 * torch.linalg.norm(residual)


def test_memit_spreads_over_decoder_layers(tiny, tok) -> None:
    arch, model = tiny
    if arch != "t5":
        pytest.skip(PARALLEL_KEYS)
    hp = _hparams(arch, "decoder", "memit", layers=(0, 1))
    result = compute_edits(model, tok, REQUESTS, hp, sigmas=_sigmas(model, tok, hp))
    assert all(d.params == sorted(f"{hp.module_name(i)}.weight" for i in (0, 1)) for d in result.deltas)
    assert sum(result.nll_after) < sum(result.nll_before)


def test_a_deletion_pushes_the_suppressed_output_down(tiny, tok) -> None:
    arch, model = tiny
    # a random model does not produce London anyway (P < 1 - e^-nll_stop already): nll_stop 0 makes it move
    hp = _hparams(arch, "decoder", **{"targets.clamp_norm_factor": 50.0, "targets.nll_stop": 0.0})
    deletion = {"prompt": "{} was born in", "subject": "Ada Lovelace", "target_true": "London"}
    result = compute_edits(model, tok, [deletion], hp, sigmas=_sigmas(model, tok, hp))
    assert result.nll_after[0] > result.nll_before[0]  # the NLL of what must no longer be produced rises


def test_prefixes_are_refused_on_an_encoder_decoder(tiny, tok) -> None:
    arch, model = tiny
    hp = _hparams(arch, "encoder", **{"prefixes.n": 2})
    with pytest.raises(HparamsError, match="prefixes.n must be 0"):
        compute_edits(model, tok, REQUESTS[:1], hp, sigmas=_sigmas(model, tok, hp))


def test_finetune_and_mend_refuse_a_deletion(tiny, tok) -> None:
    arch, model = tiny
    deletion = {"prompt": "{} was born in", "subject": "Ada Lovelace", "target_true": "London"}
    with pytest.raises(HparamsError, match="deletion"):
        compute_edits(model, tok, [deletion], _hparams(arch, "encoder", "ft"), sigmas={})
    with pytest.raises(HparamsError, match="deletion"):
        compute_edits(model, tok, [deletion], _hparams(arch, "encoder", "mend"), sigmas={})


def test_decoder_statistics_read_the_position_that_produces_the_target(tmp_path: Path, tok) -> None:
    """Σ of a decoder module is one key per text, the first decoder position's; an encoder module's, one per token."""
    model = AutoModelForSeq2SeqLM.from_pretrained(tiny_model("t5", tmp_path / "m", vocab_size=len(tok))).eval()
    texts = WORDS.split(" . ")
    enc, dec = model.get_submodule(SITES["t5"]["encoder"][0].format(0)), model.get_submodule(SITES["t5"]["decoder"][0].format(0))
    (_, n_dec), (_, n_enc) = second_moment(model, tok, texts, dec), second_moment(model, tok, texts, enc)
    assert n_dec == len(texts)
    assert n_enc == sum(len(tok(t)["input_ids"]) for t in texts)
