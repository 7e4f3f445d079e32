"""Encoder-decoder bases in the store (groundwork of issue 7): T5, BART and Marian built from configs.

Deltas on encoder and decoder MLP weights are stored, checked out and loaded back with
AutoModelForSeq2SeqLM, composed in memory, reverted and exported as LoRA, like causal bases.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForSeq2SeqLM

from editstore import Store
from editstore.compose.checkout import checkout, checkout_to
from editstore.model.synthetic import SEQ2SEQ_CONFIGS, random_delta, tiny_model
from editstore.porcelain import import_delta, revert

from .conftest import expected_weight, read_weights

MLP = {  # (encoder, decoder) MLP output projections
    "t5": ["encoder.block.0.layer.1.DenseReluDense.wo.weight", "decoder.block.1.layer.2.DenseReluDense.wo.weight"],
    "bart": ["model.encoder.layers.0.fc2.weight", "model.decoder.layers.1.fc2.weight"],
    "marian": ["model.encoder.layers.0.fc2.weight", "model.decoder.layers.1.fc2.weight"],
}


@pytest.mark.parametrize("arch", sorted(SEQ2SEQ_CONFIGS))
def test_seq2seq_checkout_round_trip_and_revert(tmp_path: Path, arch: str) -> None:
    base = tiny_model(arch, tmp_path / "base")
    with Store.init(base, tmp_path / "store") as store:
        deltas = [random_delta(store.base, [p], rank=2, seed=i) for i, p in enumerate(MLP[arch])]
        for i, d in enumerate(deltas):
            import_delta(store, d, message=f"delta {i}")
        out = checkout_to(store, "HEAD", tmp_path / "out")
        model = AutoModelForSeq2SeqLM.from_pretrained(out)
        state = model.state_dict()
        written = read_weights(out)
        for d in deltas:
            [(param, f)] = d.factors.items()
            torch.testing.assert_close(written[param].float(), expected_weight(store.base, param, f.dense()))
            torch.testing.assert_close(state[param], written[param])
        in_memory = checkout(store, device="cpu").state_dict()
        assert all(torch.equal(in_memory[p], written[p]) for p in MLP[arch])
        revert(store, store.tree()[0])
        reverted = read_weights(checkout_to(store, "HEAD", tmp_path / "reverted"))
        original = read_weights(base)
        assert torch.equal(reverted[MLP[arch][0]], original[MLP[arch][0]])
        assert not torch.equal(reverted[MLP[arch][1]], original[MLP[arch][1]])


@pytest.mark.parametrize("arch", ["t5", "bart"])
def test_seq2seq_lora_export_gives_the_checkout_logits(tmp_path: Path, arch: str) -> None:
    from peft import PeftModel

    from editstore.export import export_peft

    base = tiny_model(arch, tmp_path / "base")
    with Store.init(base, tmp_path / "store") as store:
        for i, p in enumerate(MLP[arch]):
            import_delta(store, random_delta(store.base, [p], rank=2, seed=i), message=f"delta {i}")
        checked = AutoModelForSeq2SeqLM.from_pretrained(checkout_to(store, "HEAD", tmp_path / "out")).eval()
        adapter = export_peft(store, "HEAD", tmp_path / "lora")
    assert json.loads((adapter / "adapter_config.json").read_text())["task_type"] == "SEQ_2_SEQ_LM"
    served = PeftModel.from_pretrained(AutoModelForSeq2SeqLM.from_pretrained(base), adapter).eval()
    ids = torch.tensor([[3, 4, 5, 6, 7]])
    decoder = torch.tensor([[checked.config.decoder_start_token_id, 5, 6]])
    with torch.no_grad():
        want = checked(input_ids=ids, decoder_input_ids=decoder).logits
        got = served(input_ids=ids, decoder_input_ids=decoder).logits
    assert (want - got).abs().max() < 1e-5
