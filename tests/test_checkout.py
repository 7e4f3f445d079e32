"""Point 7 of the store issue: checkout = W₀ + Σ U Vᵀ, revert, untouched tensors, dtypes."""

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from editstore import Store
from editstore.compose.checkout import checkout, checkout_to
from editstore.errors import BaseModelError, DeviceError, OutputDirError
from editstore.model.checkpoint import Checkpoint
from editstore.model.synthetic import random_delta
from editstore.porcelain import import_delta, revert

from .conftest import GPT2_PARAMS, LLAMA_PARAMS, expected_weight, read_weights

CASES = [("gpt2_dir", GPT2_PARAMS), ("llama_dir", LLAMA_PARAMS), ("bf16_dir", LLAMA_PARAMS)]


def commit_deltas(store: Store, params: list[str], n: int = 4) -> list:
    """n random deltas of rank 1..3 over overlapping parameter subsets."""
    deltas = []
    for i in range(n):
        d = random_delta(store.base, params[i % 2 : i % 2 + 2], rank=1 + i % 3, seed=100 + i, with_keys=i % 2 == 0)
        import_delta(store, d, message=f"delta {i}", name=f"d{i}")
        deltas.append(d)
    return deltas


def check_weights(store: Store, out: Path, deltas: list) -> None:
    base = store.base
    written = read_weights(out)
    original = read_weights(base.path)
    assert written.keys() == original.keys()
    touched = {p for d in deltas for p in d.params}
    for name, tensor in written.items():
        assert tensor.dtype == original[name].dtype
        if name not in touched:
            assert torch.equal(tensor, original[name]), f"{name} is not bitwise equal to the base"
            continue
        dense = sum(d.factors[name].dense() for d in deltas if name in d.factors)
        want = expected_weight(base, name, dense)
        if tensor.dtype == torch.float32:
            assert (tensor - want).abs().max() <= 1e-5
        else:  # one rounding to the low-precision dtype: within one ulp of the float32 result
            torch.testing.assert_close(tensor.float(), want, rtol=2**-7, atol=0)


@pytest.mark.parametrize(("fixture", "params"), CASES)
def test_checkout_equals_base_plus_factors_and_revert(
    request: pytest.FixtureRequest, tmp_path: Path, fixture: str, params: list[str]
) -> None:
    store = Store.init(request.getfixturevalue(fixture), tmp_path / "store")
    deltas = commit_deltas(store, params)
    check_weights(store, checkout_to(store, "HEAD", tmp_path / "all"), deltas)

    middle = store.tree()[1]
    revert(store, middle)
    check_weights(store, checkout_to(store, "HEAD", tmp_path / "reverted"), deltas[:1] + deltas[2:])

    model = AutoModelForCausalLM.from_pretrained(tmp_path / "reverted")
    assert model.dtype == read_weights(store.base.path)[params[0]].dtype
    in_memory = checkout(store, "HEAD", device="cpu").state_dict()
    on_disk = read_weights(tmp_path / "reverted")
    assert set(params) <= set(in_memory) & set(on_disk)
    for name in on_disk:
        if name in in_memory:
            assert torch.equal(in_memory[name], on_disk[name]), name
    store.close()


def test_checkout_carries_config_and_tokenizer_files(tmp_path: Path, gpt2_dir: Path) -> None:
    base = tmp_path / "base"
    base.mkdir()
    for f in gpt2_dir.iterdir():
        (base / f.name).write_bytes(f.read_bytes())
    (base / "tokenizer.json").write_text("{}")
    (base / "pytorch_model.bin").write_bytes(b"stale weights must not be copied")
    store = Store.init(base, tmp_path / "store")
    out = checkout_to(store, "HEAD", tmp_path / "out")
    names = {p.name for p in out.iterdir()}
    assert {"config.json", "tokenizer.json", "model.safetensors.index.json", "editstore.json"} <= names
    assert "pytorch_model.bin" not in names
    store.close()


def reflinks_work(where: Path) -> bool:
    import fcntl

    from editstore.compose.materialise import FICLONE

    (where / "a").write_bytes(b"x" * 4096)
    try:
        with open(where / "a", "rb") as s, open(where / "b", "wb") as d:
            fcntl.ioctl(d.fileno(), FICLONE, s.fileno())
        return True
    except OSError:
        return False


def test_untouched_shards_are_copied_or_linked(tmp_path: Path, gpt2_dir: Path) -> None:
    from transformers import AutoModelForCausalLM

    from editstore.compose.materialise import EDITED_SHARD

    store = Store.init(gpt2_dir, tmp_path / "store")
    import_delta(store, random_delta(store.base, GPT2_PARAMS[:1]), message="one")
    edited_file = store.base.info(GPT2_PARAMS[0]).file
    base_bytes = (gpt2_dir / edited_file).read_bytes()
    copied = checkout_to(store, "HEAD", tmp_path / "copied")  # the default: reflinks or copies
    linked = checkout_to(store, "HEAD", tmp_path / "linked", link=True)
    listed = json.loads((linked / "editstore.json").read_text())["hard_linked_to_base"]
    reflinks = reflinks_work(tmp_path)
    assert listed or reflinks, "--link neither hard-linked nor reflinked the untouched shards"
    for f in store.base.weight_files:
        base_inode = (gpt2_dir / f).stat().st_ino
        assert (copied / f).stat().st_ino != base_inode  # by default nothing is shared with the base
        assert (f in listed) == ((linked / f).stat().st_ino == base_inode)
        if f != edited_file:
            assert (copied / f).read_bytes() == (linked / f).read_bytes()
    # without reflinks the touched shard is linked too, and its edited tensor lives in one more shard
    assert (edited_file in listed) == (not reflinks) == (linked / EDITED_SHARD).is_file()
    assert (gpt2_dir / edited_file).read_bytes() == base_bytes  # the base is never written
    a = AutoModelForCausalLM.from_pretrained(copied).state_dict()
    b = AutoModelForCausalLM.from_pretrained(linked).state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # read as a checkpoint (a base for another store), the index decides which copy of the tensor counts
    assert Checkpoint(linked).fingerprint == Checkpoint(copied).fingerprint
    assert Checkpoint(linked).tensor_hash(GPT2_PARAMS[0]) == Checkpoint(copied).tensor_hash(GPT2_PARAMS[0])
    assert json.loads((copied / "editstore.json").read_text())["hard_linked_to_base"] == []
    store.close()


def test_checkout_refuses_non_empty_out_and_leaves_no_partial_dir(tmp_path: Path, gpt2_store: Store) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(OutputDirError):
        checkout_to(gpt2_store, "HEAD", out)
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputDirError):
        checkout_to(gpt2_store, "HEAD", tmp_path / "file")
    empty = tmp_path / "empty"
    empty.mkdir()
    assert checkout_to(gpt2_store, "HEAD", empty) == empty.resolve()
    assert not list(tmp_path.glob(".*editstore-tmp*"))


def test_changed_base_tensor_is_detected(tmp_path: Path, gpt2_dir: Path) -> None:
    base = tmp_path / "base"
    base.mkdir()
    for f in gpt2_dir.iterdir():
        (base / f.name).write_bytes(f.read_bytes())
    store = Store.init(base, tmp_path / "store")
    import_delta(store, random_delta(store.base, GPT2_PARAMS[:1]), message="one")
    info = store.base.info(GPT2_PARAMS[0])
    with open(base / info.file, "r+b") as fh:  # flip one byte of the edited tensor, layout unchanged
        fh.seek(info.begin)
        byte = fh.read(1)
        fh.seek(info.begin)
        fh.write(bytes([byte[0] ^ 0xFF]))
    with pytest.raises(BaseModelError, match="no longer matches"):
        checkout_to(store, "HEAD", tmp_path / "out")
    store.close()


def test_device_choice(gpt2_store: Store, tmp_path: Path) -> None:
    if not torch.cuda.is_available():
        with pytest.raises(DeviceError, match="CUDA is not available"):
            checkout_to(gpt2_store, "HEAD", tmp_path / "out", device="cuda")
    with pytest.raises(DeviceError):
        checkout(gpt2_store, "HEAD", device="tpu")

