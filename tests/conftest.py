"""Shared fixtures: tiny real HF models built from configs (no network), and stores on tmp_path."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from hypothesis import settings
from safetensors import safe_open

from editstore import Store
from editstore.model.checkpoint import CONV1D, Checkpoint
from editstore.model.synthetic import tiny_model
from editstore.world.build import build_world

# Hypothesis profiles: "ci" (the default: bounded and derandomized, so a CI run is repeatable) and "long"
# (python -m pytest tests/test_fuzz.py --hypothesis-profile=long: many more random examples).
settings.register_profile("ci", max_examples=100, deadline=None, derandomize=True, print_blob=True)
settings.register_profile("long", max_examples=2000, deadline=None, print_blob=True)
settings.load_profile("ci")

SAMPLES = 300  # corpus lines for Σ in tests that edit a fact world (the packaged default streams the whole corpus)
GPT2_PARAMS = ["transformer.h.0.mlp.c_proj.weight", "transformer.h.1.mlp.c_fc.weight", "transformer.h.1.attn.c_attn.weight"]
LLAMA_PARAMS = ["model.layers.0.mlp.down_proj.weight", "model.layers.1.self_attn.q_proj.weight", "model.layers.1.mlp.up_proj.weight"]


@pytest.fixture(scope="session")
def gpt2_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny GPT-2 (Conv1D layers) saved in several shards."""
    return tiny_model("gpt2", tmp_path_factory.mktemp("gpt2") / "base", max_shard_size="20KB")


@pytest.fixture(scope="session")
def llama_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny Llama (Linear layers) saved as one model.safetensors."""
    return tiny_model("llama", tmp_path_factory.mktemp("llama") / "base")


@pytest.fixture(scope="session")
def bf16_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny Llama stored in bfloat16."""
    return tiny_model("llama", tmp_path_factory.mktemp("bf16") / "base", dtype=torch.bfloat16, seed=1)


@pytest.fixture(scope="session")
def world() -> Path:
    """The small GPT-2 fact world (trained once per machine in about two and a half minutes, then cached)."""
    return build_world("gpt2")


@pytest.fixture(scope="session")
def t5_world() -> Path:
    """The small T5 fact world (cached like the GPT-2 one)."""
    return build_world("t5")


WORLD_FIXTURES = {"world", "t5_world"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests on a fact world are marked ``world`` and ``slow``: ``pytest -m "not slow"`` runs the rest in
    well under a minute."""
    for item in items:
        if WORLD_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.world)
            item.add_marker(pytest.mark.slow)


@pytest.fixture
def gpt2_store(tmp_path: Path, gpt2_dir: Path) -> Store:
    store = Store.init(gpt2_dir, tmp_path / "store")
    yield store
    store.close()


def read_weights(directory: Path) -> dict[str, torch.Tensor]:
    """Every tensor of a checkpoint directory, read with the safetensors library."""
    out: dict[str, torch.Tensor] = {}
    for f in sorted(directory.glob("*.safetensors")):
        with safe_open(f, "pt") as fh:
            for name in fh.keys():
                out[name] = fh.get_tensor(name)
    return out


def expected_weight(base: Checkpoint, param: str, dense: torch.Tensor) -> torch.Tensor:
    """W₀ + ΔW in the weight's storage layout (Conv1D transposed), float32."""
    w0 = base.read_tensor(param).float()
    return w0 + (dense.T if base.orientations[param] == CONV1D else dense)


def snapshot(store_root: Path) -> dict:
    """Everything a user operation could change: rows of every table and the object files."""
    store = Store(store_root)
    try:
        tables = {t: sorted(json.dumps(r, sort_keys=True, default=bytes.hex) for r in store.db[t].rows)
                  for t in store.db.table_names()}
        return {"tables": tables, "objects": sorted(store.objects)}
    finally:
        store.close()


def invoke(*args: object, code: int = 0) -> str:
    """Run the CLI; assert its exit code and that no traceback reached the user; return stdout."""
    from click.testing import CliRunner

    from editstore_cli.main import cli

    result = CliRunner().invoke(cli, [str(a) for a in args])
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output
    return result.stdout


def hparams_file(tmp_path: Path, world: Path, method: str, samples: int = SAMPLES, **changes: object) -> Path:
    """The packaged ``method`` hparams of the world, statistics over ``samples`` corpus lines, written to a file."""
    from editstore.methods import find_hparams

    config = json.loads((world / "config.json").read_text())
    hp = find_hparams(method, config).replace(**{"stats.samples": samples, **changes})
    path = tmp_path / f"{method}.json"
    path.write_text(json.dumps(hp.to_json()))
    return path
