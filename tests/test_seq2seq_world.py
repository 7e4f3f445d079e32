"""Encoder-decoder editing on the T5 fact world, through the real store and CLI.

The world maps a prompt about a subject to its object; rank-one edits of its encoder MLP
at the subject's last source token move facts, deletions suppress them, and every verb
of a causal store works on it.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

from editstore import Store
from editstore.compose.checkout import checkout
from editstore.core.inputs import read_jsonl
from editstore.core.requests import as_deletion
from editstore.editing import edit
from editstore.methods.hparams import load_hparams
from editstore.methods.splits import one_per_subject
from editstore.model.evaluate import evaluate_requests, score_pairs
from editstore.model.tokens import fill

from .conftest import hparams_file, invoke


@pytest.fixture(scope="module")
def requests(t5_world: Path) -> list[dict]:
    return one_per_subject(read_jsonl(t5_world / "requests.jsonl"))[::60][:4]


@pytest.fixture(scope="module")
def hparams(t5_world: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return hparams_file(tmp_path_factory.mktemp("hp"), t5_world, "rome", samples=2000)


def test_the_t5_world_meets_the_recall_floors(t5_world: Path) -> None:
    info = json.loads((t5_world / "world.json").read_text())
    assert json.loads((t5_world / "config.json").read_text())["is_encoder_decoder"]
    assert info["recall"]["trained"] >= 0.95 and info["recall"]["held_out"] >= 0.70, info["recall"]
    assert {p.name for p in t5_world.iterdir()} >= {"facts.jsonl", "requests.jsonl", "corpus.txt", "world.json", "config.json"}


def _greedy(model: torch.nn.Module, tok, prompt: str) -> str:  # noqa: ANN001
    ids = tok(prompt, return_tensors="pt")
    out = model.generate(**ids, max_new_tokens=4, do_sample=False)
    return tok.decode(out[0], skip_special_tokens=True).strip()


def test_every_verb_on_a_t5_store(tmp_path: Path, t5_world: Path, requests: list[dict], hparams: Path) -> None:
    store = tmp_path / "store"
    s = ("--store", store)
    invoke("init", "--base", t5_world, *s)
    first, second, third = requests[:3]
    commits = []
    for r in (first, second):
        commits.append(invoke("edit", "--prompt", r["prompt"], "--subject", r["subject"], "--target", r["target_new"],
                              "--target-true", r["target_true"], "--hparams", hparams, *s).strip())
    deletion = invoke("edit", "--prompt", third["prompt"], "--subject", third["subject"], "--suppress",
                      third["target_true"], "--hparams", hparams, *s).strip()
    invoke("edit", "--prompt", third["prompt"], "--subject", third["subject"], "--suppress", third["target_true"],
           "--method", "ft", *s, code=2)  # FT writes targets: refused before anything is computed
    log = invoke("log", *s)
    assert all(c[:8] in log for c in [*commits, deletion]) and f"not {third['target_true']}" in log
    assert first["subject"] in invoke("show", commits[0], *s)
    probes = tmp_path / "probes.jsonl"
    probes.write_text("".join(json.dumps(r) + "\n" for r in (first, second, as_deletion(third))))
    scores = json.loads(invoke("eval", "--json", "--requests", probes, *s))
    assert scores["efficacy_top1"] == 1.0 and scores["specificity"] >= 0.8, scores
    contradiction = {**first, "target_new": first["target_true"]}
    invoke("conflicts", "--prompt", contradiction["prompt"], "--subject", first["subject"],
           "--target", contradiction["target_new"], *s, code=3)
    other = next(r for r in read_jsonl(t5_world / "requests.jsonl")  # the same subject, another relation
                 if r["subject"] == first["subject"] and r["relation"] != first["relation"])
    assert "contradiction" not in invoke("conflicts", "--prompt", other["prompt"], "--subject", other["subject"],
                                         "--target", other["target_new"], *s)
    assert first["subject"] in invoke("diff", "--behavior", commits[0] + "~1", "HEAD", *s)
    invoke("revert", commits[0], *s)
    out = tmp_path / "out"
    invoke("checkout", "--out", out, *s)
    model, tok = AutoModelForSeq2SeqLM.from_pretrained(out).eval(), AutoTokenizer.from_pretrained(out)
    assert _greedy(model, tok, fill(second["prompt"], second["subject"])) == second["target_new"]
    assert _greedy(model, tok, fill(first["prompt"], first["subject"])) == first["target_true"]  # reverted
    assert _greedy(model, tok, fill(third["prompt"], third["subject"])) != third["target_true"]  # deleted
    batched = tmp_path / "batched"
    invoke("checkout", "--compose", "batched", "--out", batched, *s)
    model = AutoModelForSeq2SeqLM.from_pretrained(batched).eval()
    assert _greedy(model, tok, fill(second["prompt"], second["subject"])) == second["target_new"]
    invoke("export", "--peft", tmp_path / "lora", *s)
    assert (tmp_path / "lora" / "adapter_config.json").is_file()
    invoke("fsck", *s)
    invoke("branch", "side", *s)  # merge: an edit made on a branch joins main
    invoke("switch", "side", *s)
    fourth = requests[3]
    invoke("edit", "--prompt", fourth["prompt"], "--subject", fourth["subject"], "--target", fourth["target_new"],
           "--hparams", hparams, *s)
    invoke("switch", "main", *s)
    invoke("merge", "side", *s)
    assert fourth["subject"] in invoke("log", *s) and len(json.loads(invoke("log", "-n", "1", "--json", *s))[0]["parents"]) == 2
    trace = json.loads(invoke("trace", "--model", t5_world, "--prompt", fill(first["prompt"], first["subject"]),
                              "--subject", first["subject"], "--json"))
    assert trace["answer"] == first["target_true"] and len(trace["recovery"]["mlp"]) == 4  # the encoder's blocks
    assert trace["p_corrupted"] < trace["p_clean"] - 0.1  # the noise reaches the encoder's embeddings


def test_a_deletion_lowers_the_suppressed_output_below_the_best_alternative(
    tmp_path: Path, t5_world: Path, requests: list[dict], hparams: Path
) -> None:
    r = requests[3]
    deletion = as_deletion(r)
    with Store.init(t5_world, tmp_path / "store") as store:
        before = checkout(store, device="cpu")
        tok = AutoTokenizer.from_pretrained(t5_world)
        prompt = fill(r["prompt"], r["subject"])
        neighbours = [(n["prompt"], n["target"]) for n in r["neighborhood_prompts"]]
        [was], *kept_before = score_pairs(before, tok, [(prompt, r["target_true"])]), score_pairs(before, tok, neighbours)
        assert was.top1  # the world model produces the fact before the deletion
        edit(store, [deletion], method="rome", hparams=load_hparams(hparams), device="cpu")
        after = checkout(store, device="cpu")
        [now] = score_pairs(after, tok, [(prompt, r["target_true"])])
        assert now.logprob < was.logprob and not now.top1
        metrics = evaluate_requests(after, tok, [deletion])
        assert metrics.efficacy == 1.0 and metrics.specificity_top1 == 1.0, metrics
        assert [s.top1 for s in score_pairs(after, tok, neighbours)] == [s.top1 for s in kept_before[0]]


def test_a_deletion_moves_even_when_the_output_is_certain(t5_world: Path) -> None:
    """P(target_true) can round to 1 (log P = 0 in float32): the unlikelihood still has a gradient."""
    from editstore.methods.targets import TargetHparams, optimise_deltas, tokenize_request

    model, tok = AutoModelForSeq2SeqLM.from_pretrained(t5_world).eval(), AutoTokenizer.from_pretrained(t5_world)
    facts = read_jsonl(t5_world / "facts.jsonl")[:300]
    scores = score_pairs(model, tok, [(f["trained_prompts"][0], f["object"]) for f in facts])
    fact, score = max(zip(facts, scores), key=lambda fs: fs[1].logprob)
    assert score.logprob > -1e-6  # the world model is that sure of it
    request = {"prompt": fact["trained_prompts"][0].replace(fact["subject"], "{}", 1), "subject": fact["subject"],
               "target_true": fact["object"]}
    prompts = [tokenize_request(tok, request, [""])]
    delta, before, after = optimise_deltas(model, tok, prompts, "encoder.block.0.layer.1.DenseReluDense.wo",
                                           TargetHparams(v_steps=40, clamp_norm_factor=8.0, kl_factor=0.0))
    assert delta.norm() > 0 and after[0] > before[0] + 1.0


def test_tracing_corrupts_the_encoder_pass_only_even_with_one_shared_embedding(t5_world: Path) -> None:
    """transformers 4.x gives T5's encoder and decoder one embedding module; the decoder's start token stays clean."""
    from editstore.trace import causal_trace

    model, tok = AutoModelForSeq2SeqLM.from_pretrained(t5_world).eval(), AutoTokenizer.from_pretrained(t5_world)
    fact = read_jsonl(t5_world / "facts.jsonl")[0]
    args = (tok, fact["trained_prompts"][0], fact["subject"])
    separate = causal_trace(model, *args, answer=fact["object"], samples=4)
    model.encoder.embed_tokens = model.decoder.embed_tokens = model.shared
    shared = causal_trace(model, *args, answer=fact["object"], samples=4)
    assert separate.p_corrupted < separate.p_clean - 0.1
    assert shared.p_corrupted == pytest.approx(separate.p_corrupted, abs=1e-6)
