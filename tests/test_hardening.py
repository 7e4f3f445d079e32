"""Bad input, one named case per class: exit code 2 with one ``error:`` line and the store unchanged.

tests/test_fuzz.py generates many inputs of each class; these are the readable regressions.
"""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import save as st_save

from editstore import Store
from editstore.compose.checkout import checkout_to
from editstore.errors import InvalidDeltaError
from editstore.fsck import fsck
from editstore.model.delta import Delta, Factors
from editstore.model.synthetic import random_delta
from editstore.moments import save_stats
from editstore.porcelain import delete_branch, import_delta
from editstore.store import NewEdit
from editstore_cli.main import cli

from .conftest import GPT2_PARAMS, snapshot

PARAM = GPT2_PARAMS[0]


def refused(store: Store, *args: object) -> str:
    """Run the CLI on ``store``; assert exit 2, a single ``error:`` line, no traceback, the store unchanged."""
    before = snapshot(store.root)
    result = CliRunner().invoke(cli, ["--store", str(store.root), *[str(a) for a in args]])
    assert result.exit_code == 2, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    lines = result.output.strip().splitlines()
    assert "Traceback" not in result.output and lines[-1].lower().startswith("error"), result.output
    assert snapshot(store.root) == before
    return result.output


def delta_bytes(store: Store, dtype: torch.dtype = torch.float32, scale: float = 0.1, metadata: str | None = None) -> bytes:
    d_out, d_in = store.base.linear_shape(PARAM)
    tensors = {f"{PARAM}.U": (torch.ones(d_out, 1) * scale).to(dtype), f"{PARAM}.V": (torch.ones(d_in, 1) * scale).to(dtype)}
    header = metadata if metadata is not None else json.dumps({"format": "editstore-delta", "version": 1})
    return st_save(tensors, metadata={"editstore": header})


@pytest.mark.parametrize("dtype", [torch.float8_e4m3fn, torch.float8_e5m2, torch.float8_e4m3fnuz, torch.float8_e5m2fnuz])
def test_float8_deltas_are_refused(gpt2_store: Store, tmp_path: Path, dtype: torch.dtype) -> None:
    path = tmp_path / "f8.safetensors"
    path.write_bytes(delta_bytes(gpt2_store, dtype))
    assert "delta factors must be float16, bfloat16, float32 or float64" in refused(gpt2_store, "import-delta", path, "-m", "x")


@pytest.mark.parametrize(("dtype", "nbytes"), [("F4", 1), ("F8_E8M0", 2), ("C64", 16), ("U16", 4), ("BOOL", 2)])
def test_dtypes_torch_cannot_compose_are_refused(gpt2_store: Store, tmp_path: Path, dtype: str, nbytes: int) -> None:
    header = {f"{PARAM}.U": {"dtype": dtype, "shape": [2, 1], "data_offsets": [0, nbytes]},
              f"{PARAM}.V": {"dtype": "F32", "shape": [2, 1], "data_offsets": [nbytes, nbytes + 8]}}
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    path = tmp_path / "odd.safetensors"
    path.write_bytes(len(raw).to_bytes(8, "little") + raw + b"\x01" * (nbytes + 8))
    refused(gpt2_store, "import-delta", path, "-m", "x")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_every_supported_dtype_is_imported_and_checked_out(gpt2_store: Store, tmp_path: Path, dtype: torch.dtype) -> None:
    path = tmp_path / "d.safetensors"
    path.write_bytes(delta_bytes(gpt2_store, dtype))
    import_delta(gpt2_store, path, message=str(dtype))
    checkout_to(gpt2_store, "HEAD", tmp_path / "out", device="cpu")
    assert fsck(gpt2_store).ok


def test_a_delta_that_would_overflow_the_weight_is_refused(gpt2_store: Store, tmp_path: Path) -> None:
    path = tmp_path / "huge.safetensors"
    path.write_bytes(delta_bytes(gpt2_store, scale=1e20))  # finite factors, U Vᵀ = 1e40: inf in float32
    assert "beyond" in refused(gpt2_store, "import-delta", path, "-m", "x")


@pytest.mark.parametrize(
    ("metadata", "message"),
    [
        ('{"format": "editstore-delta", "version": 1, "x": ' + "[" * 1000 + "]" * 1000 + "}", "nests deeper"),
        ('{"format": "editstore-delta", "version": 1e999}', "overflows"),
        ('{"format": "editstore-delta", "version": 1, "n": 1' + "0" * 5000 + "}", "64 bits"),
        ('{"format": "editstore-delta", "version": NaN}', "not a number JSON allows"),
        ('{"format": "editstore-delta", "version": 1, "s": "\\ud800"}', "surrogate"),
        ('{"format": "editstore-delta", "version": 1, "s": "' + "x" * (2 << 20) + '"}', "characters; at most"),
    ],
)
def test_pathological_metadata_is_refused(gpt2_store: Store, tmp_path: Path, metadata: str, message: str) -> None:
    path = tmp_path / "meta.safetensors"
    path.write_bytes(delta_bytes(gpt2_store, metadata=metadata))
    assert message in refused(gpt2_store, "import-delta", path, "-m", "x")


@pytest.mark.parametrize(
    ("rev", "message"),
    [("HEAD~" + "9" * 5000, "at most"), ("HEAD~99999999999", "at most"), ("", "empty revision"), (" HEAD", "whitespace"),
     ("HEAD\n", "whitespace"), ("~3", "need a revision"), ("x" * 2000, "at most 1024"),
     ("HEAD~1000000001", "more than 1000000000"), ("HEAD~" + "0" * 20 + "1", "goes back 1 commit")],
)
def test_bad_revisions_are_refused(gpt2_store: Store, rev: str, message: str) -> None:
    assert message in refused(gpt2_store, "log", rev)
    assert message in refused(gpt2_store, "conflicts", rev)  # an optional REV given empty is not HEAD either


@pytest.mark.parametrize("name", ["foo\n", "a\x01b", "a" * 256, "a..b", "a@{1}", "x.lock", "x/", "x/.y", "x//y", "-x",
                                  "HEAD", "a b", "é", "a/b.lock/c", "~x", "a:b"])
@pytest.mark.parametrize("how", [("branch",), ("tag",), ("switch", "-c")])
def test_bad_ref_names_are_refused_everywhere(gpt2_store: Store, name: str, how: tuple[str, ...]) -> None:
    assert "is not a valid branch or tag name" in refused(gpt2_store, *how, "--", name)


def test_a_good_ref_name_works() -> None:
    from editstore.core.revisions import ref_name_problem

    for name in ["main", "feature/x-1", "v1.0", "release/2026_12", "a" * 255]:
        assert ref_name_problem(name) is None, name


def test_unreadable_paths_are_refused(gpt2_store: Store, tmp_path: Path) -> None:
    assert "is a directory" in refused(gpt2_store, "import-delta", tmp_path, "-m", "x")
    assert "not a regular file" in refused(gpt2_store, "import-delta", "/dev/zero", "-m", "x")  # never read
    assert "does not exist" in refused(gpt2_store, "import-delta", tmp_path / "missing", "-m", "x")
    assert "is a directory" in refused(gpt2_store, "edit", "--requests", tmp_path / "..", "--method", "rome")


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b'{"prompt": "{} is", "subject": "a", "target_new": "b"}\n\xff\xfe\n', ":2:1 is not UTF-8"),
        (b"\n\n" + b"[" * 5000 + b"]" * 5000, ":3 nests deeper"),
        (b'{"prompt": "{} is", "subject": "a", "target_new": "b"}\n{"prompt": ', ":2 is not JSON"),
        (b'{"prompt": "{} is", "subject": "a", "target_new": "b", "case_id": 1e999}', ":1: number 1e999 overflows"),
        (b'{"prompt": "{} is", "subject": "a"}', ":1 is invalid"),
        (b'{"prompt": "{} is", "subject": "a", "target_new": "b", "case_id": []}', ":1 is invalid at case_id"),
        (b'{"prompt": "{} is", "subject": "a", "target_new": "b", "case_id": 1.0}', ":1 is invalid at case_id"),
    ],
)
def test_bad_request_files_name_their_line(gpt2_store: Store, tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "r.jsonl"
    path.write_bytes(content)
    assert f"{path}{message}" in refused(gpt2_store, "edit", "--requests", path)


def npz(**members: bytes) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as z:
        for name, data in members.items():
            z.writestr(name, data)
    return buffer.getvalue()


def npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def forged_npy(shape: tuple[int, ...]) -> bytes:
    """A .npy header that claims ``shape`` (float64) followed by 64 bytes: numpy would allocate the shape."""
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, {"descr": "<f8", "fortran_order": False, "shape": shape})
    return buffer.getvalue() + b"\0" * 64


@pytest.mark.parametrize(
    ("members", "message"),
    [
        ({"mom2.mom2.npy": b"garbage", "mom2.count.npy": npy(np.array(5))}, "is not a .npy array"),
        ({"mom2.mom2": npy(np.eye(128)), "mom2.count.npy": npy(np.array(5))}, "no array 'mom2.mom2'"),
        ({"mom2.mom2.npy": npz(x=b"1"), "mom2.count.npy": npy(np.array(5))}, "is not a .npy array"),
        ({"mom2.mom2.npy": npy(np.eye(128, dtype=complex)), "mom2.count.npy": npy(np.array(5))}, "needs real"),
        ({"mom2.mom2.npy": npy(np.full((128, 128), np.nan)), "mom2.count.npy": npy(np.array(5))}, "NaN or Inf"),
        ({"mom2.mom2.npy": npy(np.full((128, 128), 1e300)), "mom2.count.npy": npy(np.array(5))}, "float32's range"),
        ({"mom2.mom2.npy": npy(np.eye(128)), "mom2.count.npy": npy(np.array([5, 6]))}, "one positive whole number"),
        ({"mom2.mom2.npy": npy(np.eye(128)), "mom2.count.npy": npy(np.array(0))}, "one positive whole number"),
        ({"mom2.mom2.npy": npy(np.zeros(10**6)), "mom2.count.npy": npy(np.array(5))}, "bytes; at most"),
        ({"mom2.mom2.npy": forged_npy((100_000, 100_000)), "mom2.count.npy": npy(np.array(5))}, "is not a .npy array"),
        ({"mom2.mom2.npy": npy(-np.eye(128)), "mom2.count.npy": npy(np.array(5))}, "not a second moment"),
        ({"mom2.mom2.npy": npy(np.triu(np.ones((128, 128)))), "mom2.count.npy": npy(np.array(5))}, "not a second moment"),
    ],
)
def test_bad_npz_statistics_are_refused(gpt2_store: Store, tmp_path: Path, members: dict, message: str) -> None:
    path = tmp_path / "s.npz"
    path.write_bytes(npz(**members))
    assert message in refused(gpt2_store, "stats", "import", "--module", PARAM.removesuffix(".weight"), path)


def test_arguments_that_are_not_utf8_are_refused(gpt2_store: Store) -> None:
    assert "is not UTF-8 text" in refused(gpt2_store, "branch", "x\udcff")


def test_negative_counts_are_refused(gpt2_store: Store) -> None:
    refused(gpt2_store, "log", "-n", "-1")


def write_unchecked(store: Store, delta: Delta) -> str:
    """Commit ``delta`` without validating it, as an older editstore could (its tests only)."""
    with store.locked():
        edit = store._store_edit(NewEdit(delta, "import"))
        return store._commit(store.tree("HEAD") + [edit.id], expected=store.head(), operation="import", message="old",
                             new_edits=[edit])


def test_an_unusable_object_of_an_older_store_is_reported_not_a_traceback(gpt2_store: Store, tmp_path: Path) -> None:
    good = random_delta(gpt2_store.base, [PARAM])
    f = good.factors[PARAM]
    write_unchecked(gpt2_store, Delta({PARAM: Factors(f.U.to(torch.float8_e5m2), f.V.to(torch.float8_e5m2))}))
    report = fsck(gpt2_store)
    assert not report.ok and any("float8_e5m2" in e for e in report.errors), report.errors
    with pytest.raises(InvalidDeltaError, match="run `editstore fsck`"):
        checkout_to(gpt2_store, "HEAD", tmp_path / "out", device="cpu")
    refused(gpt2_store, "checkout", "HEAD", "--out", tmp_path / "out2")
    refused(gpt2_store, "diff", "HEAD~1", "HEAD")


def test_fsck_reports_unusable_statistics_and_ref_names(gpt2_store: Store) -> None:
    module = PARAM.removesuffix(".weight")
    d_in = gpt2_store.base.linear_shape(PARAM)[1]
    save_stats(gpt2_store, module, torch.full((d_in, d_in), float("nan")), 5, corpus="c", samples=5, source="old")
    header = json.dumps({"sigma": {"dtype": "F8_E8M0", "shape": [2, 1], "data_offsets": [0, 2]}}).encode()
    header += b" " * (-len(header) % 8)
    odd = gpt2_store.objects.write(len(header).to_bytes(8, "little") + header + b"\x01\x01")  # a dtype torch cannot name
    with gpt2_store.db.atomic():
        gpt2_store.db["stats"].insert({"base": gpt2_store.base_fingerprint, "module": module, "corpus": "odd",
                                       "samples": 1, "object": odd, "count": 1, "source": "odd", "created": "now"})
    with gpt2_store.db.atomic():
        gpt2_store.db["refs"].insert({"name": "refs/heads/bad\n", "target": gpt2_store.head(), "symbolic": None})
    report = fsck(gpt2_store)
    assert any("not a finite" in e for e in report.errors), report.errors
    assert any(odd[:12] in e and "cannot be used" in e for e in report.errors), report.errors
    assert any("no longer accepts" in w for w in report.warnings), report.warnings
    delete_branch(gpt2_store, "bad\n")  # an old bad name can still be deleted


def test_outputs_that_cannot_be_created_are_refused(gpt2_store: Store, gpt2_dir: Path) -> None:
    import_delta(gpt2_store, random_delta(gpt2_store.base, [PARAM]), message="one")
    assert "cannot create --out" in refused(gpt2_store, "checkout", "HEAD", "--out", "/proc/editstore-out")
    assert "cannot create --out" in refused(gpt2_store, "export", "HEAD", "--peft", "/proc/editstore-out")
    assert "Not a directory" in refused(gpt2_store, "checkout", "HEAD", "--out", gpt2_dir / "config.json" / "x")
    assert "cannot create the store directory" in refused(gpt2_store, "init", "--base", gpt2_dir, "--store", "/proc/s")
