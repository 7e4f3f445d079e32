"""A checkout dispatched over devices by accelerate, with some blocks offloaded to disk: the same logits
as the single-device checkout, and the offloaded blocks never materialised."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from editstore import Store
from editstore.compose.checkout import checkout
from editstore.model.synthetic import random_delta, tiny_model
from editstore.porcelain import import_delta

DEVICE_MAPS = {
    "gpt2": {"transformer.wte": "cpu", "transformer.wpe": "cpu", "transformer.h.0": "cpu", "transformer.h.1": "disk",
             "transformer.ln_f": "cpu", "lm_head": "cpu"},
    "llama": {"model.embed_tokens": "cpu", "model.layers.0": "disk", "model.layers.1": "cpu", "model.norm": "cpu",
              "model.rotary_emb": "cpu", "lm_head": "cpu"},
}
EDITED = {  # one parameter in an offloaded block and one in a block kept in memory
    "gpt2": ["transformer.h.1.mlp.c_proj.weight", "transformer.h.0.mlp.c_fc.weight"],
    "llama": ["model.layers.0.mlp.down_proj.weight", "model.layers.1.self_attn.q_proj.weight"],
}


@pytest.mark.parametrize(("arch", "dtype"), [("gpt2", torch.float32), ("llama", torch.float32),
                                             ("llama", torch.bfloat16), ("gpt2", torch.float16)])
def test_a_disk_offloaded_checkout_gives_the_single_device_logits(tmp_path: Path, arch: str,
                                                                  dtype: torch.dtype) -> None:
    base = tiny_model(arch, tmp_path / "base", seed=3, dtype=dtype)
    with Store.init(base, tmp_path / "store") as store:
        for i, param in enumerate(EDITED[arch]):
            import_delta(store, random_delta(store.base, [param], rank=2, scale=0.5, seed=i), message=param)
        ids = torch.randint(0, 128, (2, 12), generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            want = checkout(store, device="cpu")(ids).logits
            unedited = checkout(store, "HEAD~2", device="cpu")(ids).logits
            model = checkout(store, device="cpu", device_map=DEVICE_MAPS[arch])
            got = model(ids).logits
        offloaded = model.get_parameter(EDITED[arch][0])
        assert offloaded.device.type == "meta" and offloaded.dtype == dtype  # still offloaded: never materialised
        assert (got.float() - want.float()).abs().max() <= 1e-5  # composed in float32, cast once, the same bytes
        assert (want.float() - unedited.float()).abs().max() > 1e-3  # the edits matter


def test_eval_over_a_device_map_scores_as_on_one_device(tmp_path: Path, world: Path) -> None:
    import json

    from editstore.core.inputs import read_jsonl
    from editstore.editing import edit

    from .conftest import invoke
    from .test_checkout_batched import hparams

    requests = read_jsonl(world / "requests.jsonl")[::400][:3]
    with Store.init(world, tmp_path / "s") as store:
        edit(store, requests, method="memit", hparams=hparams(world, "memit"), device="cpu")
    layers = json.loads((world / "config.json").read_text())["n_layer"]
    device_map = {"transformer.wte": "cpu", "transformer.wpe": "cpu", "transformer.ln_f": "cpu", "lm_head": "cpu",
                  **{f"transformer.h.{i}": "disk" if i == 1 else "cpu" for i in range(layers)}}
    (tmp_path / "map.json").write_text(json.dumps(device_map))
    one = json.loads(invoke("eval", "--json", "--store", tmp_path / "s"))
    spread = json.loads(invoke("eval", "--json", "--device-map", tmp_path / "map.json", "--store", tmp_path / "s"))
    assert spread == one and one["efficacy"] > 0.5
    (tmp_path / "bad.json").write_text("[1, 2]")
    invoke("eval", "--device-map", tmp_path / "bad.json", "--store", tmp_path / "s", code=2)


def test_trace_over_a_device_map_recovers_as_on_one_device(tmp_path: Path, world: Path) -> None:
    import json

    from editstore.core.inputs import read_jsonl

    from .conftest import invoke

    fact = read_jsonl(world / "facts.jsonl")[0]
    layers = json.loads((world / "config.json").read_text())["n_layer"]
    device_map = {"transformer.wte": "cpu", "transformer.wpe": "cpu", "transformer.ln_f": "cpu", "lm_head": "cpu",
                  **{f"transformer.h.{i}": "disk" if i == 2 else "cpu" for i in range(layers)}}
    (tmp_path / "map.json").write_text(json.dumps(device_map))
    args = ["trace", "--model", world, "--prompt", fact["trained_prompts"][0], "--subject", fact["subject"],
            "--samples", "3", "--json"]
    one = json.loads(invoke(*args))
    spread = json.loads(invoke(*args, "--device-map", tmp_path / "map.json"))
    assert spread["answer"] == one["answer"]
    for kind in one["recovery"]:
        a, b = torch.tensor(one["recovery"][kind]), torch.tensor(spread["recovery"][kind])
        assert (a - b).abs().max() <= 1e-4, kind


def test_edit_over_a_device_map_computes_the_single_device_delta(tmp_path: Path, world: Path) -> None:
    """ROME edits layer 1 while block 2 sits on disk: its target step back-propagates through the offloaded
    block, and the delta is the one computed on one device."""
    import json

    from editstore.core.inputs import read_jsonl

    from .conftest import invoke
    from .test_checkout_batched import hparams

    request = read_jsonl(world / "requests.jsonl")[11]
    layers = json.loads((world / "config.json").read_text())["n_layer"]
    device_map = {"transformer.wte": "cpu", "transformer.wpe": "cpu", "transformer.ln_f": "cpu", "lm_head": "cpu",
                  **{f"transformer.h.{i}": "disk" if i == 2 else "cpu" for i in range(layers)}}
    (tmp_path / "map.json").write_text(json.dumps(device_map))
    (tmp_path / "hp.json").write_text(json.dumps(hparams(world, "rome").to_json()))
    deltas = []
    for name, extra in (("one", []), ("map", ["--device-map", tmp_path / "map.json"])):
        invoke("init", "--base", world, "--store", tmp_path / name)
        invoke("edit", "--prompt", request["prompt"], "--subject", request["subject"], "--target",
               request["target_new"], "--hparams", tmp_path / "hp.json", *extra, "--store", tmp_path / name)
        with Store.open(tmp_path / name) as store:
            deltas.append(store.load_delta(store.tree()[-1]))
    for param, f in deltas[0].factors.items():
        g = deltas[1].factors[param]
        assert torch.allclose(f.U @ f.V.T, g.U @ g.V.T, atol=1e-6)


def test_mend_training_over_a_device_map_trains_the_same_editor(tmp_path: Path, world: Path) -> None:
    """The editor's modules on the CPU, block 0 on disk: ten meta-training steps give the same editor object."""
    import json

    from .conftest import invoke

    layers = json.loads((world / "config.json").read_text())["n_layer"]
    device_map = {"transformer.wte": "cpu", "transformer.wpe": "cpu", "transformer.ln_f": "cpu", "lm_head": "cpu",
                  **{f"transformer.h.{i}": "disk" if i == 0 else "cpu" for i in range(layers)}}
    (tmp_path / "map.json").write_text(json.dumps(device_map))
    ids = []
    for name, extra in (("one", []), ("map", ["--device-map", tmp_path / "map.json"])):
        invoke("init", "--base", world, "--store", tmp_path / name)
        ids.append(invoke("mend", "train", "--steps", "10", *extra, "--store", tmp_path / name).strip().splitlines()[-1])
    assert ids[0] == ids[1]
