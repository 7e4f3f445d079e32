"""The fact world: deterministic generation, valid requests, a build pipeline that caches."""

import json
from pathlib import Path

import pytest
from transformers import AutoModelForCausalLM, AutoTokenizer

from editstore.core.inputs import read_jsonl
from editstore.core.schema import validate
from editstore.world.build import WorldConfig, build_world
from editstore.world.knowledge import RELATIONS, KnowledgeBase, WorldSpec
from editstore.world.train import TrainSpec

SMALL = WorldConfig(WorldSpec(n_subjects=40, lines_per_subject=2), TrainSpec(n_layer=2, d_model=32, d_ff=64, epochs=2))


def test_default_world_shape() -> None:
    kb = KnowledgeBase(WorldSpec())
    assert len(kb.subjects) >= 500 and len(set(kb.subjects)) == len(kb.subjects)
    assert len(RELATIONS) >= 5 and all(len(r.formulations) >= 3 for r in RELATIONS)
    assert all(len(s.split()) >= 2 for s in kb.subjects)  # subjects span several tokens
    for r in RELATIONS:  # the subject is not always first
        assert any(not f.startswith("{s}") for f in r.formulations)
    for f in kb.facts:
        assert f.held_out not in f.trained and len(f.trained) == len(kb.relations[f.relation].formulations) - 1


def test_generation_is_deterministic_and_seeded() -> None:
    a, b, c = KnowledgeBase(WorldSpec(seed=3)), KnowledgeBase(WorldSpec(seed=3)), KnowledgeBase(WorldSpec(seed=4))
    assert a.requests() == b.requests() and list(a.training_lines()) == list(b.training_lines())
    assert a.requests() != c.requests()


def test_held_out_formulations_never_appear_in_training_text() -> None:
    kb = KnowledgeBase(WorldSpec(n_subjects=60))
    text = "\n".join(kb.training_lines())
    for f in kb.facts:
        held = kb.relations[f.relation].formulations[f.held_out].replace("{s}", f.subject)
        assert f"{held} {f.object}" not in text


def test_every_request_is_schema_valid() -> None:
    kb = KnowledgeBase(WorldSpec())
    for r in kb.requests():
        validate(r, "edit-request")
        assert r["target_new"] != r["target_true"]
        assert len(r["neighborhood_prompts"]) >= 5
        assert all(n["target"] != r["target_new"] and r["subject"] not in n["prompt"] for n in r["neighborhood_prompts"])


def test_build_writes_a_loadable_world_and_caches_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDITSTORE_CACHE", str(tmp_path / "cache"))
    epochs: list[int] = []
    path = build_world(config=SMALL, on_epoch=lambda e, total, loss: epochs.append(e))
    assert epochs == [1, 2]
    assert build_world(config=SMALL, on_epoch=lambda *a: epochs.append(-1)) == path  # cached: no training
    assert epochs == [1, 2]
    for name in ("config.json", "model.safetensors", "tokenizer.json", "facts.jsonl", "requests.jsonl", "corpus.txt"):
        assert (path / name).is_file(), name
    AutoModelForCausalLM.from_pretrained(path)
    tok = AutoTokenizer.from_pretrained(path)
    facts = read_jsonl(path / "facts.jsonl")
    assert len(facts) == 40 * len(RELATIONS)
    assert tok.unk_token_id not in tok(facts[0]["trained_prompts"][0] + " " + facts[0]["object"])["input_ids"]
    info = json.loads((path / "world.json").read_text())
    assert set(info["recall"]) == {"trained", "held_out"}

    again = build_world(config=SMALL, out=tmp_path / "again")
    for name in ("facts.jsonl", "requests.jsonl", "corpus.txt", "tokenizer.json"):
        assert (again / name).read_bytes() == (path / name).read_bytes(), name
    assert (again / "model.safetensors").read_bytes() == (path / "model.safetensors").read_bytes()


def test_build_never_replaces_a_directory_that_is_not_a_world(tmp_path: Path) -> None:
    from editstore.errors import OutputDirError

    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "precious.txt").write_text("keep")
    with pytest.raises(OutputDirError):
        build_world(config=SMALL, out=tmp_path / "mine")
    assert (tmp_path / "mine" / "precious.txt").read_text() == "keep"


def test_an_encoder_decoder_world_learns_prompt_to_object_pairs(tmp_path: Path) -> None:
    from transformers import AutoModelForSeq2SeqLM

    config = WorldConfig(WorldSpec(n_subjects=40), TrainSpec(arch="t5", n_layer=2, n_decoder_layer=1, d_model=32,
                                                             d_ff=64, epochs=2, tie=False, mlp_drop_layers=()))
    path = build_world(config=config, out=tmp_path / "t5")
    model = AutoModelForSeq2SeqLM.from_pretrained(path)
    assert model.config.is_encoder_decoder and model.config.num_decoder_layers == 1
    kb = KnowledgeBase(config.world)
    pairs = list(kb.training_pairs())
    assert len(pairs) == 40 * len(RELATIONS) * 3  # every trained formulation of every fact
    assert (path / "corpus.txt").read_text().splitlines() == [p for p, _ in pairs]  # Σ streams the encoder's inputs
    held_out = {p for f in read_jsonl(path / "facts.jsonl") for p in f["held_out_prompts"]}
    assert not held_out & {p for p, _ in pairs}
    assert set(json.loads((path / "world.json").read_text())["recall"]) == {"trained", "held_out"}


@pytest.mark.slow
def test_the_large_world_spec_and_cache_key_are_deterministic() -> None:
    from editstore.world.build import world_config

    large = world_config("gpt2", 0, "large")
    assert large == world_config("gpt2", 0, "large") and large.key == world_config("gpt2", 0, "large").key
    keys = {large.key, world_config("gpt2", 1, "large").key, world_config("gpt2", 0, "small").key,
            world_config("llama", 0, "large").key}
    assert len(keys) == 4
    # the small worlds' keys move only with their designs (their caches, the demo and CI depend on them); the
    # Llama world's moved once, when its training was shaped to recall facts at the subject
    assert world_config("gpt2").key.startswith("db4cc5d75bc76b0e") and world_config("llama").key.startswith("accde2ede83479a7")
    kb = KnowledgeBase(large.world)
    assert len(kb.subjects) >= 2000 and len(kb.facts) >= 10_000 and len(set(kb.subjects)) == len(kb.subjects)
    assert kb.requests()[:20] == KnowledgeBase(world_config("gpt2", 0, "large").world).requests()[:20]
    with pytest.raises(ValueError, match="no large t5 world"):
        world_config("t5", 0, "large")


def test_the_large_world_command_refuses_an_architecture_it_does_not_have() -> None:
    from .test_edit import invoke

    assert invoke("world", "build", "--size", "large", "--arch", "t5", code=2) == ""
    assert invoke("world", "build", "--size", "huge", code=2) == ""


def test_subject_masks_mark_every_occurrence_of_the_lines_subject() -> None:
    from editstore.world.tokenizer import build_tokenizer
    from editstore.world.train import subject_mask

    lines = ["Ka Lo was born in Paris . The sport of Ka Lo is golf .", "Mi Ren plays the harp ."]
    tok = build_tokenizer(lines)
    ids = tok(lines, padding=True, return_tensors="pt")["input_ids"]
    mask = subject_mask(tok, ids, ["Ka Lo", "Mi Ren"])
    words = [["<bos>", *line.split()] for line in lines]
    marked = [[w for w, m in zip(ws, row) if m] for ws, row in zip(words, mask.tolist())]
    assert marked == [["Ka", "Lo", "Ka", "Lo"], ["Mi", "Ren"]]


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_subject_restrictions_hide_the_subject_from_later_positions(arch: str) -> None:
    """With every line picked, a one-layer model whose attention and MLP are restricted computes the
    positions after the subject without the subject: changing the subject's tokens leaves them alone."""
    import torch
    from transformers import AutoModelForCausalLM as LM

    from editstore.world.train import _SubjectMask, model_config

    class Tok:  # model_config reads only these
        bos_token_id, eos_token_id, pad_token_id = 1, 2, 0

        def __len__(self) -> int:
            return 50

    spec = TrainSpec(arch=arch, n_layer=1, d_model=32, n_head=4, d_ff=64)
    torch.manual_seed(0)
    model = LM.from_config(model_config(spec, Tok(), max_len=16)).train()
    ids = torch.tensor([[1, 5, 6, 7, 8, 9], [1, 5, 6, 7, 8, 9]])  # (2, 6): the subject is tokens 2..3
    subject = torch.zeros(ids.shape, dtype=torch.bool)
    subject[:, 2:4] = True
    shaped = _SubjectMask(subject, p=1.0, seed=0)
    hooks = [shaped.restrict_mlp(model, 0), shaped.restrict_attention(model, 0)]
    shaped.select(torch.arange(2), ids.shape[1], "cpu")
    other = ids.clone()
    other[1, 2:4] = torch.tensor([30, 31])  # another subject in line 1
    with torch.no_grad():
        out, changed = model(input_ids=ids).logits, model(input_ids=other).logits  # (2, 6, V)
        for h in hooks:
            h.remove()
        free = model(input_ids=other).logits  # the same model without the restrictions
    torch.testing.assert_close(changed[1, 4:], out[1, 4:])  # after the subject: untouched by it
    assert not torch.allclose(changed[1, 2:4], out[1, 2:4])  # at the subject: its own tokens
    assert not torch.allclose(free[1, 4:], out[1, 4:])  # and without the restrictions the subject shows


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_a_designs_activation_reaches_the_model_and_its_key_only_when_set(arch: str) -> None:
    from dataclasses import replace

    from transformers import AutoModelForCausalLM

    from editstore.world.tokenizer import build_tokenizer
    from editstore.world.train import model_config

    spec = replace(SMALL.train, arch=arch)
    relu = replace(spec, activation="relu")
    assert "activation" not in spec.to_json() and relu.to_json()["activation"] == "relu"
    assert WorldConfig(SMALL.world, relu).key != WorldConfig(SMALL.world, spec).key
    tokenizer = build_tokenizer(["Ada was born in Rome ."])
    acts = {name: getattr(model_config(s, tokenizer, 16), "activation_function" if arch == "gpt2" else "hidden_act")
            for name, s in (("default", spec), ("relu", relu))}
    assert acts["relu"] == "relu" and acts["default"] != "relu"
    model = AutoModelForCausalLM.from_config(model_config(relu, tokenizer, 16))
    assert model(input_ids=tokenizer("Ada was born in", return_tensors="pt")["input_ids"]).logits.isfinite().all()


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_the_activation_penalty_is_the_mean_magnitude_of_the_chosen_mlps(arch: str) -> None:
    """sparse_layers/sparse_l1: one term per chosen MLP per training forward, its mean |activation| (the
    input of the output projection); nothing in eval mode; absent from the spec's key when off."""
    from dataclasses import replace

    import torch
    from transformers import AutoModelForCausalLM

    from editstore.world.tokenizer import build_tokenizer
    from editstore.world.train import _ActivationL1, _output_projection, model_config

    spec = replace(SMALL.train, arch=arch)
    sparse = replace(spec, n_layer=3, sparse_layers=(1, 2), sparse_l1=0.1)
    assert "sparse_l1" not in spec.to_json() and sparse.to_json()["sparse_layers"] == [1, 2]
    assert WorldConfig(SMALL.world, sparse).key != WorldConfig(SMALL.world, spec).key
    tokenizer = build_tokenizer(["Ada was born in Rome ."])
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(model_config(sparse, tokenizer, 16)).train()
    ids = tokenizer("Ada was born in Rome", return_tensors="pt")["input_ids"]
    seen = {}
    blocks = model.model.layers if arch == "llama" else model.transformer.h
    taps = [_output_projection(blocks[i].mlp).register_forward_pre_hook(lambda m, a, i=i: seen.__setitem__(i, a[0]))
            for i in (1, 2)]
    penalty = _ActivationL1(model, sparse.sparse_layers)
    model(input_ids=ids)
    torch.testing.assert_close(penalty.take(), seen[1].abs().mean() + seen[2].abs().mean())
    model.eval()
    model(input_ids=ids)
    assert penalty.terms == []
    for h in taps + penalty.hooks:
        h.remove()
