"""ROME: the rank-one invariant on tiny random models, and edits that work on the fact world."""

from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from editstore.checkout import load_model
from editstore.checkpoint import Checkpoint
from editstore.evaluate import evaluate_requests
from editstore.methods.rome import RomeHparams, compute_rome, linear_weight
from editstore.stats import second_moment
from editstore.world.build import build_world, read_jsonl
from editstore.world.tokenizer import build_tokenizer
from editstore.synthetic import tiny_model

WORDS = "Ada Lovelace was born in London . The capital of France is Paris . Alan Turing works as a scientist"
CASES = [("gpt2", "transformer.h.{}.mlp.c_proj"), ("llama", "model.layers.{}.mlp.down_proj")]


@pytest.mark.parametrize(("arch", "module"), CASES)
def test_delta_maps_the_key_to_its_target_and_leaves_the_model_unchanged(tmp_path: Path, arch: str, module: str) -> None:
    tok = build_tokenizer([WORDS])
    path = tiny_model(arch, tmp_path / arch, vocab_size=len(tok), pad_token_id=tok.pad_token_id)
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    hp = RomeHparams(layer=1, module=module, v_steps=5, n_prefixes=3, prefix_len=3)
    sigma, _ = second_moment(model, tok, [WORDS], model.get_submodule(hp.module_name))
    sigma += 1e-3 * torch.eye(sigma.shape[0], dtype=sigma.dtype)  # a tiny corpus: make Σ invertible
    request = {"prompt": "{} was born in", "subject": "Ada Lovelace", "target_new": "Paris"}
    out = compute_rome(model, tok, request, hp, sigma=sigma)
    for name, value in model.state_dict().items():
        assert torch.equal(value, before[name]), name
    [(param, f)] = out.delta.factors.items()
    assert param == f"{hp.module_name}.weight" and f.rank == 1
    W, b = linear_weight(model.get_submodule(hp.module_name))
    lhs = f.dense().double() @ out.k.double()  # ΔW k̄
    rhs = out.v_star.double() - W.double() @ out.k.double() - b.double()  # v* − W k̄ − b
    assert torch.linalg.norm(lhs - rhs) <= 1e-4 * torch.linalg.norm(rhs)
    assert torch.allclose(f.keys[:, 0], out.k) and f.targets is not None


def test_rome_at_the_traced_layer_edits_world_facts() -> None:
    """On the GPT-2 world, ROME at MLP 1 (where tracing puts the facts) moves most targets, locally."""
    world = build_world("gpt2")
    model = AutoModelForCausalLM.from_pretrained(world).eval()
    tok = AutoTokenizer.from_pretrained(world)
    hp = RomeHparams(layer=1, module="transformer.h.{}.mlp.c_proj")
    sigma, _ = second_moment(model, tok, (world / "corpus.txt").read_text().splitlines(), model.get_submodule(hp.module_name))
    requests = read_jsonl(world / "requests.jsonl")[::50][:12]
    metrics = []
    base = Checkpoint(world)
    for r in requests:
        delta = compute_rome(model, tok, r, hp, sigma=sigma).delta
        edited = load_model(base, {p: [f] for p, f in delta.factors.items()}, device=torch.device("cpu"), base_hashes={})
        metrics.append(evaluate_requests(edited, tok, [r]))
    mean = lambda key: sum(getattr(m, key) for m in metrics) / len(metrics)  # noqa: E731
    assert mean("efficacy") >= 0.8
    assert mean("paraphrase") >= 0.6
    assert mean("specificity") >= 0.9
