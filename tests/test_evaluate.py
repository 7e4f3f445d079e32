"""The scorer on hand-made logits, and teacher forcing on tiny causal and encoder-decoder models
(the metrics on a trained model: tests/test_world_model.py)."""

import math
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM

from editstore.model.evaluate import Score, score_targets
from editstore.model.forward import next_token_logits, on_decoder, tails_after, target_logits
from editstore.model.synthetic import TINY_CONFIGS, tiny_model


def test_score_targets_sums_target_logprobs() -> None:
    V = 4
    logits = torch.full((1, 2, V), -1e9)
    # position 0 predicts tokens 2/3 at 0.75/0.25; position 1 predicts 3
    logits[0, 0, 2], logits[0, 0, 3] = math.log(0.75), math.log(0.25)
    logits[0, 1, 3] = 0.0
    [s] = score_targets(logits, [[2, 3]])
    assert s.logprob == pytest.approx(math.log(0.75) + 0.0, abs=1e-6)
    assert s.top1
    [s] = score_targets(logits, [[3, 3]])  # first target token is the 0.25 one: not greedy
    assert s.logprob == pytest.approx(math.log(0.25), abs=1e-6)
    assert not s.top1


def test_score_targets_batches_rows_independently() -> None:
    logits = torch.randn(3, 3, 7)
    targets = [[1], [2, 5, 4], [4, 4]]
    batched = score_targets(logits, targets)
    single = [score_targets(logits[b : b + 1], [targets[b]])[0] for b in range(3)]
    assert [s.logprob for s in batched] == pytest.approx([s.logprob for s in single])
    assert [s.top1 for s in batched] == [s.top1 for s in single]
    assert isinstance(batched[0], Score)


PROMPTS = [[5, 6, 7], [8, 9], [10, 11, 12, 13]]
TARGETS = [[20, 21], [22], [23, 24, 25]]


@torch.no_grad()
def test_causal_target_logits_are_the_full_sequence_logits(tmp_path: Path) -> None:
    model = AutoModelForCausalLM.from_pretrained(tiny_model("gpt2", tmp_path / "m")).eval()
    logits, mask = target_logits(model, PROMPTS, TARGETS, pad=0)
    assert logits.shape[:2] == mask.shape == (3, 3)
    for b, (p, t) in enumerate(zip(PROMPTS, TARGETS)):
        full = model(input_ids=torch.tensor([p + t])).logits[0]  # (T, V)
        torch.testing.assert_close(logits[b, : len(t)], full[len(p) - 1 : len(p) - 1 + len(t)], atol=1e-5, rtol=1e-4)
        assert mask[b].tolist() == [j < len(t) for j in range(3)]
    torch.testing.assert_close(next_token_logits(model, PROMPTS, pad=0), logits[:, 0], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("arch", sorted(TINY_CONFIGS))
def test_tails_give_the_whole_rows_logits_and_gradients(tmp_path: Path, arch: str) -> None:
    """A change from each row's split on (a δ at the split) scores as on the whole rows, in value and gradient."""
    model = AutoModelForCausalLM.from_pretrained(tiny_model(arch, tmp_path / "m")).eval()
    prompts, targets = [*PROMPTS, [5, 6, 7, 8], [16]], [*TARGETS, [26, 27], [28]]
    split = [1, 0, 3, 3, 0]  # rows without a prefix, and a split at the prompt's last token
    embed = model.get_input_embeddings()
    delta = torch.randn(len(prompts), embed.embedding_dim, generator=torch.Generator().manual_seed(0), requires_grad=True)
    rows = torch.arange(len(prompts))

    def run(at: torch.Tensor, logits: object) -> tuple[torch.Tensor, torch.Tensor]:
        def add(_m: object, _i: object, out: torch.Tensor) -> torch.Tensor:
            out = out.clone()
            out[rows, at] += delta
            return out

        handle = embed.register_forward_hook(add)
        try:
            got = logits()
        finally:
            handle.remove()
        (grad,) = torch.autograd.grad((got * mask[:, :, None]).square().sum(), delta)
        return got, grad

    tails = tails_after(model, prompts, targets, split, pad=0)
    mask = tails.target_mask
    whole, grad_whole = run(torch.tensor(split), lambda: target_logits(model, prompts, targets, pad=0)[0])
    tail, grad_tail = run(tails.start, lambda: tails.logits(model))
    assert torch.equal(mask, target_logits(model, prompts, targets, pad=0)[1])
    torch.testing.assert_close(tail * mask[:, :, None], whole * mask[:, :, None], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(grad_tail, grad_whole, atol=1e-4, rtol=1e-4)


def test_tails_want_a_split_inside_each_prompt(tmp_path: Path) -> None:
    model = AutoModelForCausalLM.from_pretrained(tiny_model("gpt2", tmp_path / "m")).eval()
    with pytest.raises(ValueError, match="split"):
        tails_after(model, PROMPTS, TARGETS, [1, 2, 0], pad=0)


@pytest.mark.parametrize("arch", ["t5", "bart"])
@torch.no_grad()
def test_seq2seq_target_logits_are_the_decoder_logits(tmp_path: Path, arch: str) -> None:
    model = AutoModelForSeq2SeqLM.from_pretrained(tiny_model(arch, tmp_path / "m")).eval()
    start = model.config.decoder_start_token_id
    logits, _ = target_logits(model, PROMPTS, TARGETS, pad=3)
    for b, (p, t) in enumerate(zip(PROMPTS, TARGETS)):
        alone = model(input_ids=torch.tensor([p]), decoder_input_ids=torch.tensor([[start, *t[:-1]]])).logits[0]
        torch.testing.assert_close(logits[b, : len(t)], alone, atol=1e-5, rtol=1e-4)
    assert on_decoder(model, next(n for n, _ in model.named_modules() if "decoder" in n and n.endswith("0")))
    assert not on_decoder(model, next(n for n, _ in model.named_modules() if "encoder" in n and n.endswith("0")))
