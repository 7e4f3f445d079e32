"""MEND (issue 6): the editor's deltas, meta-training, and the store commands, on the GPT-2 fact world."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from editstore import Store
from editstore.core.inputs import read_jsonl
from editstore.editors import editor_bytes, editor_from_bytes
from editstore.fsck import gc
from editstore.methods import find_hparams
from editstore.methods.mend import Editor, MendHparams, example, mend_deltas, meta_loss, observe_inputs, train_editor
from editstore.methods.splits import held_out, held_out_requests, training_requests
from editstore.model.tokens import fill, target_ids

from .conftest import invoke

MODULES = [f"transformer.h.{layer}.mlp.c_proj" for layer in (1, 2, 3)]


@pytest.fixture(scope="module")
def model_and_tokenizer(world: Path) -> tuple:
    return AutoModelForCausalLM.from_pretrained(world).eval(), AutoTokenizer.from_pretrained(world)


def test_a_delta_has_one_rank_per_token_and_leaves_the_model_unchanged(world: Path, model_and_tokenizer: tuple) -> None:
    model, tok = model_and_tokenizer
    editor = Editor(MODULES, [(128, 512)] * 3, MendHparams(rank=8))
    request = read_jsonl(world / "requests.jsonl")[0]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    [delta], nll_before, nll_after = mend_deltas(model, tok, [request], editor)
    # the model reads the prompt and every target token but the last
    tokens = len(tok(fill(request["prompt"], request["subject"]))["input_ids"]) + len(target_ids(tok, request["target_new"])) - 1
    assert sorted(delta.factors) == [f"{m}.weight" for m in MODULES]
    for f in delta.factors.values():  # nn.Linear orientation (Conv1D stores c_proj as 512 x 128); one column per token
        assert f.U.shape == (128, tokens) and f.V.shape == (512, tokens)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert nll_after[0] < nll_before[0]  # an identity editor without input statistics is one fine-tuning step
    restored, header = editor_from_bytes(editor_bytes(editor, find_hparams("mend", model.config.to_dict()), "base"))
    assert header["modules"] == MODULES and header["hparams"]["mend"] == header["mend"] and header["mend"]["rank"] == 8
    assert all(torch.equal(a, b) for a, b in zip(restored.state_dict().values(), editor.state_dict().values()))


def test_a_few_meta_training_steps_lower_the_edit_loss(world: Path, model_and_tokenizer: tuple) -> None:
    model, tok = model_and_tokenizer
    requests = read_jsonl(world / "requests.jsonl")
    train, val = training_requests(requests, 10)
    assert not any(held_out(r["subject"]) for r in train + val)
    assert {r["subject"] for r in train}.isdisjoint({r["subject"] for r in val})
    probe = [example(tok, r) for r in held_out_requests(requests, 10)]
    hp = MendHparams(rank=16, steps=60, val_every=30, val_size=10)
    untrained = Editor(MODULES, [(128, 512)] * 3, hp)
    observe_inputs(model, untrained, [example(tok, r) for r in train[:100]], 0)  # standardised as training starts

    def edit_loss(editor: Editor) -> float:
        return sum(meta_loss(model, editor, ex, 0, 0.0, train=False)[1] for ex in probe) / len(probe)

    before = edit_loss(untrained)
    trained, metrics = train_editor(model, tok, MODULES, train, val, hp)
    assert [h["step"] for h in metrics["history"]] == [30, 60]
    assert edit_loss(trained) < 0.8 * before


def test_train_list_show_and_edit_with_mend_from_the_cli(tmp_path: Path, world: Path) -> None:
    store_dir = tmp_path / "store"
    invoke("init", "--base", world, "--store", store_dir)
    request = held_out_requests(read_jsonl(world / "requests.jsonl"), 1)[0]
    edit = ("--store", store_dir, "edit", "--method", "mend", "--prompt", request["prompt"], "--subject",
            request["subject"], "--target", request["target_new"])
    assert "no MEND editor is trained" in CliError.of(edit)
    editor_id = invoke("--store", store_dir, "mend", "train", "--steps", "40").strip().splitlines()[-1]
    [row] = json.loads(invoke("--store", store_dir, "mend", "list", "--json"))
    assert row["id"] == editor_id and row["modules"] == MODULES and row["metrics"]["steps"] <= 40
    assert f"editor {editor_id}" in invoke("--store", store_dir, "show", editor_id[:10])
    invoke(*edit)
    with Store(store_dir) as store:
        [e] = store.tree()
        record = store.edit(e)
        assert record.method == "mend" and record.info["editor"] == editor_id and record.info["nll_after"] < record.info["nll_before"]
        assert sorted(record.params) == [f"{m}.weight" for m in MODULES]
        gc(store)
        assert store.objects.exists(editor_id)  # gc keeps trained editors


class CliError:
    @staticmethod
    def of(args: tuple) -> str:
        from click.testing import CliRunner

        from editstore_cli.main import cli

        result = CliRunner().invoke(cli, [str(a) for a in args])
        assert result.exit_code == 2, result.output
        return result.output
