"""`editstore export --peft`: the real peft package loads the adapter and computes what checkout computes."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from peft import PeftModel
from transformers import AutoModelForCausalLM

from editstore import Store
from editstore.compose.checkout import checkout
from editstore.core.inputs import read_jsonl
from editstore.editing import edit
from editstore.methods import find_hparams
from editstore.model.synthetic import random_delta
from editstore.porcelain import import_delta
from editstore_cli.main import cli

from .conftest import GPT2_PARAMS, LLAMA_PARAMS, snapshot


def same_logits(store: Store, base: Path, adapter: Path, vocab: int) -> float:
    ids = torch.randint(0, vocab, (2, 10), generator=torch.Generator().manual_seed(0))
    checked_out = checkout(store, "HEAD", device="cpu").eval()
    peft_model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base).eval(), adapter).eval()
    with torch.no_grad():
        return float((checked_out(ids).logits - peft_model(ids).logits).abs().max())


@pytest.mark.parametrize(("fixture", "params"), [("gpt2_dir", GPT2_PARAMS), ("llama_dir", LLAMA_PARAMS)])
def test_lora_adapter_gives_the_checkout_logits(tmp_path: Path, request: pytest.FixtureRequest, fixture: str, params: list[str]) -> None:
    base = request.getfixturevalue(fixture)
    with Store.init(base, tmp_path / "store") as store:
        for i in range(3):  # ranks 1, 2, 3; the last touches both parameters
            import_delta(store, random_delta(store.base, params[:2] if i == 2 else params[i : i + 1], rank=1 + i, seed=i), message=str(i))
        result = CliRunner().invoke(cli, ["--store", str(tmp_path / "store"), "export", "--peft", str(tmp_path / "lora")])
        assert result.exit_code == 0, result.output
        assert same_logits(store, base, tmp_path / "lora", store.base.config["vocab_size"]) < 1e-5


def test_world_edits_exported_as_lora(tmp_path: Path, world: Path) -> None:
    requests = read_jsonl(world / "requests.jsonl")[::97][:4]
    with Store.init(world, tmp_path / "store") as store:
        hp = {m: find_hparams(m, store.base.config).replace(**{"stats.samples": 300}) for m in ("rome", "memit")}
        edit(store, requests[:1], method="rome", hparams=hp["rome"])
        edit(store, requests[1:], method="memit", hparams=hp["memit"])
        result = CliRunner().invoke(cli, ["--store", str(tmp_path / "store"), "export", "--peft", str(tmp_path / "lora")])
        assert result.exit_code == 0, result.output
        assert same_logits(store, world, tmp_path / "lora", store.base.config["vocab_size"]) < 1e-4


def test_export_errors_exit_2_and_write_nothing(tmp_path: Path, gpt2_dir: Path) -> None:
    store_dir = tmp_path / "store"
    Store.init(gpt2_dir, store_dir).close()
    runner = CliRunner()
    empty = runner.invoke(cli, ["--store", str(store_dir), "export", "--peft", str(tmp_path / "a")])
    assert empty.exit_code == 2 and "no edits" in empty.output
    with Store(store_dir) as store:
        import_delta(store, random_delta(store.base, ["transformer.wte.weight"], seed=1), message="embedding")
    before = snapshot(store_dir)
    embedding = runner.invoke(cli, ["--store", str(store_dir), "export", "--peft", str(tmp_path / "b")])
    assert embedding.exit_code == 2 and "Linear or Conv1D" in embedding.output
    assert snapshot(store_dir) == before
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
