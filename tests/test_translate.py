"""Whole greedy outputs of an encoder-decoder, their probabilities and chrF (editstore.model.translate), and the
world probes the behavioural diff and eval read (editstore.behavior.world_probes)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForSeq2SeqLM

from editstore.behavior import FACTS_FILE, HELD_OUT_FILE, untouched_facts, world_probes
from editstore.model.synthetic import tiny_model
from editstore.model.translate import chrf, greedy_outputs
from editstore.world.tokenizer import build_tokenizer

WORDS = "ka lo mi ren dor vi sa tu bel nor ko la mu ran dex wi so ti bal nix"
PROMPTS = ["ka lo", "mi ren dor vi sa", "tu", "bel nor ko la mu ran"]


@pytest.fixture(scope="module")
def marian(tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201
    """A tiny Marian model trained for a second to copy PROMPTS, so its outputs end, at different lengths."""
    tok = build_tokenizer([WORDS])
    ids = {"pad_token_id": tok.pad_token_id, "decoder_start_token_id": tok.pad_token_id, "eos_token_id": tok.eos_token_id}
    torch.manual_seed(0)
    model = AutoModelForSeq2SeqLM.from_pretrained(
        tiny_model("marian", tmp_path_factory.mktemp("marian") / "base", vocab_size=len(tok), **ids))
    rows = [tok(p, add_special_tokens=False)["input_ids"] + [tok.eos_token_id] for p in PROMPTS]
    labels = torch.tensor([r + [-100] * (max(map(len, rows)) - len(r)) for r in rows])  # (4, 7)
    enc = tok(PROMPTS, padding=True, return_tensors="pt")
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(150):
        loss = model(**enc, labels=labels).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval(), tok


def _teacher_forced_p(model, tok, prompt: str, text: str) -> float:  # noqa: ANN001
    """P(text, then end of sequence | prompt), token by token with teacher forcing."""
    target = tok(text, add_special_tokens=False)["input_ids"] + [model.config.eos_token_id]
    enc = tok([prompt], return_tensors="pt")
    decoder = torch.tensor([[model.config.decoder_start_token_id, *target[:-1]]])
    with torch.no_grad():
        logp = model(**enc, decoder_input_ids=decoder).logits[0].log_softmax(-1)  # (T, V)
    return float(logp.gather(1, torch.tensor(target)[:, None]).sum().exp())


def test_an_output_and_its_probability_do_not_depend_on_the_batch(marian) -> None:  # noqa: ANN001
    """Outputs ending at different steps in one padded batch: each the same text and probability as alone, and
    that probability is the teacher-forced one of the text and its end of sequence."""
    model, tok = marian
    batched = greedy_outputs(model, tok, PROMPTS, max_new_tokens=12)
    assert [o.text for o in batched] == PROMPTS and all(o.complete for o in batched)  # it learnt to copy
    alone = [greedy_outputs(model, tok, [p], max_new_tokens=12)[0] for p in PROMPTS]
    for b, a, prompt in zip(batched, alone, PROMPTS):
        assert (b.text, b.complete) == (a.text, a.complete) and b.p == pytest.approx(a.p, rel=1e-4)
        assert 0.5 < b.p == pytest.approx(_teacher_forced_p(model, tok, prompt, b.text), rel=1e-3)


def test_an_output_cut_at_the_length_limit_says_so(marian) -> None:  # noqa: ANN001
    """Cut at two tokens, the longer outputs are incomplete, with the probability of their first two words; the
    one-word output still ends by itself, as it does without the limit."""
    model, tok = marian
    out = greedy_outputs(model, tok, PROMPTS, max_new_tokens=2)
    full = greedy_outputs(model, tok, PROMPTS, max_new_tokens=12)
    assert [o.complete for o in out] == [False, False, True, False]
    assert [o.text for o in out] == ["ka lo", "mi ren", "tu", "bel nor"]
    assert out[2] == full[2] and all(o.p > f.p for o, f in zip(out, full) if not o.complete)


def test_chrf_scores_and_refuses_mismatched_lists() -> None:
    assert chrf(["Kola wi"], ["Kola wi"]) == pytest.approx(100.0)
    assert 0 < chrf(["Kola wa"], ["Kola wi"]) < 100
    with pytest.raises(ValueError, match="one reference per prediction"):
        chrf(["a"], [])
    with pytest.raises(ValueError):
        chrf([], [])


def test_the_world_probes_are_facts_or_held_out_sentences_and_skip_edited_subjects(tmp_path: Path) -> None:
    assert world_probes(tmp_path) is None and untouched_facts(tmp_path, set(), limit=10) == []
    pairs = [{"subject": s, "source": f"{s} sa", "target": f"{s.upper()} so", "noun": "n", "verb": "v"} for s in "abcd"]
    (tmp_path / HELD_OUT_FILE).write_text("".join(json.dumps(p) + "\n" for p in pairs))
    assert world_probes(tmp_path) == "held-out"
    assert untouched_facts(tmp_path, {"b"}, limit=10) == [("a sa", "A so"), ("c sa", "C so"), ("d sa", "D so")]
    fact = {"subject": "x", "trained_prompts": ["x lives in"], "object": "Rome"}
    (tmp_path / FACTS_FILE).write_text(json.dumps(fact) + "\n")
    assert world_probes(tmp_path) == "fact"  # a fact world's facts come first, in every reader
    assert untouched_facts(tmp_path, set(), limit=10) == [("x lives in", "Rome")]
