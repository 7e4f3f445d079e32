"""`editstore edit` and `editstore stats` on the GPT-2 fact world, through the real store and CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from editstore import NewEdit, Store
from editstore.compose.checkout import checkout
from editstore.core.inputs import read_jsonl
from editstore.editing import edit, prior_keys
from editstore.errors import HeadMovedError
from editstore.methods import compute_edits, find_hparams, resolve_hparams
from editstore.methods.hparams import load_hparams
from editstore.model.tokens import load_tokenizer
from editstore.moments import find_stats, load_sigma, sigmas_for, stats_rows
from editstore.porcelain import revert
from editstore_cli.main import cli

from .conftest import SAMPLES, hparams_file, invoke, snapshot


@pytest.fixture(scope="module")
def requests(world: Path) -> list[dict]:
    return read_jsonl(world / "requests.jsonl")[::40]


@pytest.fixture
def store_dir(tmp_path: Path, world: Path) -> Path:
    invoke("init", "--base", world, "--store", tmp_path / "store")
    return tmp_path / "store"


def test_edit_from_the_cli_commits_the_request_and_computes_stats_once(tmp_path: Path, world: Path, store_dir: Path, requests: list[dict]) -> None:
    hp = hparams_file(tmp_path, world, "rome")
    r0, r1 = requests[:2]
    out = invoke("--store", store_dir, "edit", "--prompt", r0["prompt"], "--subject", r0["subject"],
                 "--target", r0["target_new"], "--target-true", r0["target_true"], "--hparams", hp)
    commit = out.strip().splitlines()[-1]
    with Store(store_dir) as store:
        assert store.head() == commit
        [edit_id] = store.tree()
        record = store.edit(edit_id)
        assert record.method == "rome" and record.request["subject"] == r0["subject"] and record.hparams["layers"] == [1]
        assert record.info["nll_after"] < record.info["nll_before"]
        assert [r.module for r in stats_rows(store)] == ["transformer.h.1.mlp.c_proj"]
    # a template-less prompt: the subject's first occurrence becomes {}
    prompt = r1["prompt"].replace("{}", r1["subject"])
    invoke("--store", store_dir, "edit", "--prompt", prompt, "--subject", r1["subject"], "--target", r1["target_new"], "--hparams", hp)
    with Store(store_dir) as store:
        assert len(store.tree()) == 2 and len(stats_rows(store)) == 1  # Σ reused, not recomputed
        assert store.edit(store.tree()[1]).request["prompt"] == r1["prompt"]
    metrics = json.loads(invoke("--store", store_dir, "eval", "--json"))
    assert metrics["efficacy"] == 1.0


def test_a_batch_is_one_commit_of_one_edit_per_request_and_each_reverts_alone(tmp_path: Path, world: Path, store_dir: Path, requests: list[dict]) -> None:
    batch = requests[2:8]
    path = tmp_path / "batch.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in batch))
    invoke("--store", store_dir, "edit", "--method", "memit", "--requests", path, "--hparams", hparams_file(tmp_path, world, "memit"))
    with Store(store_dir) as store:
        tree = store.tree()
        assert len(tree) == len(batch) and len(store.log()) == 2
        assert [store.edit(e).request["subject"] for e in tree] == [r["subject"] for r in batch]
        assert all(store.edit(e).info["batch"] == len(batch) for e in tree)
        revert(store, tree[2])
        assert store.tree() == tree[:2] + tree[3:]


def test_alphaedit_sees_the_keys_of_earlier_edits(tmp_path: Path, world: Path, requests: list[dict]) -> None:
    with Store.init(world, tmp_path / "s") as store:
        hp = find_hparams("alphaedit", json.loads((world / "config.json").read_text())).replace(**{"stats.samples": SAMPLES})
        edit(store, requests[:2], method="alphaedit", hparams=hp)
        keys = prior_keys(store, store.tree(), resolve_hparams(store.base, "alphaedit", hp))
        assert set(keys) == {hp.module_name(layer) for layer in hp.layers}
        assert all(k.shape[1] == 2 for k in keys.values())


def test_bad_edits_exit_2_and_leave_the_store_unchanged(tmp_path: Path, world: Path, store_dir: Path, requests: list[dict]) -> None:
    r = requests[0]
    good = hparams_file(tmp_path, world, "rome")
    bad_schema = tmp_path / "bad.jsonl"
    bad_schema.write_text(json.dumps({"prompt": "{} was born in", "subject": "X", "target_new": "Paris", "extra": 1}) + "\n")
    no_template = tmp_path / "no_template.jsonl"
    no_template.write_text(json.dumps({"prompt": "was born in", "subject": "X", "target_new": "Paris"}) + "\n")
    bad_hparams = tmp_path / "bad_hp.json"
    bad_hparams.write_text(json.dumps({**json.loads(good.read_text()), "layers": "one"}))
    deep = hparams_file(tmp_path, world, "memit", layers=(1, 9))
    single = ("--prompt", r["prompt"], "--subject", r["subject"], "--target", r["target_new"])
    cases = {
        "subject not in prompt": ("edit", "--prompt", "Someone was born in", "--subject", r["subject"], "--target", "Paris"),
        "empty target": ("edit", "--prompt", r["prompt"], "--subject", r["subject"], "--target", " "),
        "unknown method": ("edit", *single, "--method", "magic"),
        "schema violation": ("edit", "--requests", bad_schema),
        "prompt without {}": ("edit", "--requests", no_template),
        "invalid hparams": ("edit", *single, "--hparams", bad_hparams),
        "hparams of another method": ("edit", *single, "--method", "memit", "--hparams", good),
        "layer the base lacks": ("edit", *single, "--method", "memit", "--hparams", deep),
        "both inputs": ("edit", *single, "--requests", bad_schema),
        "bad npz": ("stats", "import", bad_schema, "--module", "transformer.h.1.mlp.c_proj"),
        "bad layers": ("stats", "compute", "--corpus", bad_schema, "--layers", "1,x"),
        "cuda without gpu": ("edit", *single, "--device", "cuda"),
    }
    if torch.cuda.is_available():
        cases.pop("cuda without gpu")
    before = snapshot(store_dir)
    for label, args in cases.items():
        result = CliRunner().invoke(cli, ["--store", str(store_dir), *map(str, args)])
        assert result.exit_code == 2, (label, result.output)
        assert "Traceback" not in result.output, label
        assert snapshot(store_dir) == before, label


def test_stats_compute_and_import_of_a_rome_npz(tmp_path: Path, world: Path, store_dir: Path) -> None:
    corpus = tmp_path / "corpus.jsonl"
    lines = (world / "corpus.txt").read_text().splitlines()[:50]
    corpus.write_text("".join(json.dumps({"text": t}) + "\n" for t in lines))
    invoke("--store", store_dir, "stats", "compute", "--corpus", corpus, "--layers", "0,1")
    module = "transformer.h.1.mlp.c_proj"
    with Store(store_dir) as store:
        rows = stats_rows(store)
        assert sorted(r.module for r in rows) == ["transformer.h.0.mlp.c_proj", module]
        computed = next(r for r in rows if r.module == module)
        sigma = load_sigma(store, computed).double()
    npz = tmp_path / "mom2.npz"
    np.savez(npz, **{"mom2.mom2": (sigma * computed.count).numpy(), "mom2.count": np.array(computed.count)})
    invoke("--store", store_dir, "stats", "import", npz, "--module", module)
    with Store(store_dir) as store:
        imported = find_stats(store, module, "another corpus", 7)  # no exact match: the import is used
        assert imported is not None and imported.corpus.startswith("import:")
        assert np.allclose(load_sigma(store, imported).double().numpy(), sigma.numpy(), rtol=1e-5, atol=1e-8)
    assert module in invoke("--store", store_dir, "stats", "list")
    with Store(store_dir) as store:
        from editstore.fsck import fsck, gc

        assert fsck(store).ok and not gc(store).objects  # stats objects are live


def test_a_commit_is_refused_when_head_moved_while_the_edit_was_computed(tmp_path: Path, world: Path, store_dir: Path, requests: list[dict]) -> None:
    hp = load_hparams(hparams_file(tmp_path, world, "rome"))
    with Store(store_dir) as store:
        stale = store.head()
        edit(store, requests[:1], method="rome", hparams=hp)  # another writer commits first
        before = snapshot(store_dir)
        tok = load_tokenizer(store.base)
        sigmas = sigmas_for(store, hp, tok, device=torch.device("cpu"))
        [delta] = compute_edits(checkout(store, stale), tok, requests[1:2], hp, sigmas=sigmas).deltas
        with pytest.raises(HeadMovedError):
            store.record_edits([NewEdit(delta, "rome", request=requests[1])], message="late", expected_head=stale)
    assert snapshot(store_dir) == before
