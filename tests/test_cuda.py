"""The CUDA paths, against the same computation on the CPU: composition and checkout, the batched
re-solve, statistics, editing and a device map over GPU, CPU and disk. Skipped without CUDA;
``benchmarks/gpu_check.sh`` runs them where a GPU is lent."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from editstore import Store
from editstore.compose.checkout import checkout
from editstore.core.inputs import read_jsonl
from editstore.editing import edit
from editstore.methods.splits import one_per_subject
from editstore.model.synthetic import random_delta, tiny_model
from editstore.moments import load_sigma, read_corpus, stream_stats
from editstore.porcelain import import_delta

from .conftest import GPT2_PARAMS
from .test_checkout_batched import hparams

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device"),
]


@pytest.fixture(autouse=True)
def exact_float32() -> None:
    torch.backends.cuda.matmul.allow_tf32 = False  # compare float32 with float32, not TF32


def close(a: torch.Tensor, b: torch.Tensor, rtol: float = 1e-5) -> bool:
    return bool((a.float().cpu() - b.float().cpu()).abs().max() <= rtol * max(1.0, float(b.abs().max())))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_composition_on_the_gpu_is_the_cpu_composition(tmp_path: Path, dtype: torch.dtype) -> None:
    base = tiny_model("gpt2", tmp_path / "base", dtype=dtype)
    with Store.init(base, tmp_path / "s") as store:
        for i in range(3):
            import_delta(store, random_delta(store.base, GPT2_PARAMS[:2], rank=2, seed=i), message=str(i))
        cpu = checkout(store, device="cpu").state_dict()
        gpu = checkout(store, device="cuda").state_dict()
        tol = 1e-5 if dtype == torch.float32 else 1e-2  # one rounding to the stored dtype either way
        assert all(close(gpu[k], cpu[k], tol) for k in cpu) and gpu[GPT2_PARAMS[0]].dtype == dtype


def test_editing_the_batched_re_solve_and_statistics_on_the_gpu(tmp_path: Path, world: Path) -> None:
    requests = one_per_subject(read_jsonl(world / "requests.jsonl"))[::50][:4]
    hp = hparams(world, "memit")
    corpus = read_corpus(world / "corpus.txt")
    stores = {}
    for device in ("cpu", "cuda"):
        store = Store.init(world, tmp_path / device)
        rows = stream_stats(store, ["transformer.h.1.mlp.c_proj"], corpus, 300, device=torch.device(device))
        stores[device] = (store, load_sigma(store, rows[0]))
        edit(store, requests, method="memit", hparams=hp, device=device)
    (cpu, sigma_cpu), (gpu, sigma_gpu) = stores["cpu"], stores["cuda"]
    assert close(sigma_gpu, sigma_cpu, 1e-4)
    for compose in ("sequential", "batched"):
        a = checkout(cpu, device="cpu", compose=compose).state_dict()
        b = checkout(gpu, device="cuda", compose=compose).state_dict()
        assert close(b["transformer.h.1.mlp.c_proj.weight"], a["transformer.h.1.mlp.c_proj.weight"], 1e-3)


def test_a_device_map_over_gpu_cpu_and_disk_gives_the_single_device_logits(tmp_path: Path) -> None:
    base = tiny_model("llama", tmp_path / "base", seed=3)
    device_map = {"model.embed_tokens": 0, "model.layers.0": "disk", "model.layers.1": 0, "model.norm": "cpu",
                  "model.rotary_emb": 0, "lm_head": "cpu"}
    with Store.init(base, tmp_path / "s") as store:
        for i, param in enumerate(["model.layers.0.mlp.down_proj.weight", "model.layers.1.self_attn.q_proj.weight"]):
            import_delta(store, random_delta(store.base, [param], rank=2, scale=0.5, seed=i), message=param)
        ids = torch.randint(0, 128, (2, 12), generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            want = checkout(store, device="cpu")(ids).logits
            got = checkout(store, device="cuda", device_map=device_map)(ids.cuda()).logits
        assert close(got, want, 1e-4)

