"""The CLI end to end (click's runner, real store), bad input, and help on every command."""

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import save_file

from editstore import Store
from editstore.model.checkpoint import Checkpoint
from editstore.model.synthetic import random_delta
from editstore.porcelain import import_delta, revert
from editstore_cli.main import cli

from .conftest import GPT2_PARAMS, LLAMA_PARAMS, expected_weight, read_weights, snapshot


def run(*args: str, code: int = 0) -> str:
    result = CliRunner().invoke(cli, [str(a) for a in args])
    assert result.exit_code == code, result.output
    if code == 2:
        assert "Traceback" not in result.output
    return result.output


@pytest.fixture
def store_dir(tmp_path: Path, gpt2_dir: Path) -> Path:
    store = tmp_path / "store"
    run("init", "--base", gpt2_dir, "--store", store)
    return store


def write_deltas(tmp_path: Path, base_dir: Path, params: list[str], n: int) -> list[Path]:
    base = Checkpoint(base_dir)
    paths = []
    for i in range(n):
        path = tmp_path / f"d{i}.safetensors"
        random_delta(base, params[i % 2 : i % 2 + 2], rank=1 + i, seed=i).save(path)
        paths.append(path)
    return paths


def test_scenario_from_the_cli(tmp_path: Path, gpt2_dir: Path, store_dir: Path) -> None:
    s = ["--store", store_dir]
    paths = write_deltas(tmp_path, gpt2_dir, GPT2_PARAMS, 3)
    commits = [run("import-delta", p, "-m", f"delta {i}", "--name", f"d{i}", *s).strip() for i, p in enumerate(paths)]
    assert all(len(c) == 64 for c in commits)
    log = json.loads(run("log", "--json", *s))
    assert [c["id"] for c in log[:3]] == commits[::-1]
    assert "delta 1" in run("log", "--oneline", *s)
    shown = json.loads(run("show", commits[1][:8], "--json", *s))
    middle_edit = shown["added"][0]["id"]
    assert json.loads(run("show", middle_edit[:10], "--json", *s))["name"] == "d1"
    run("tag", "v1", *s)
    run("revert", middle_edit, *s)
    diff = json.loads(run("diff", "v1", "HEAD", "--json", *s))
    assert diff["only_a"] == [middle_edit] and diff["only_b"] == []
    assert {p["param"] for p in diff["params"]} == set(GPT2_PARAMS[1:3])
    assert all(p["rank"] == 2 for p in diff["params"])
    assert "‖ΔW‖_F" in run("diff", "v1", "HEAD", *s)

    out = tmp_path / "checkout"
    run("checkout", "HEAD", "--out", out, "--device", "cpu", *s)
    base = Checkpoint(gpt2_dir)
    deltas = [random_delta(base, GPT2_PARAMS[i % 2 : i % 2 + 2], rank=1 + i, seed=i) for i in (0, 2)]
    written, original = read_weights(out), read_weights(gpt2_dir)
    for name, tensor in written.items():
        parts = [d.factors[name].dense() for d in deltas if name in d.factors]
        if parts:
            assert (tensor - expected_weight(base, name, sum(parts))).abs().max() <= 1e-5
        else:
            assert torch.equal(tensor, original[name])
    assert "ok" in run("fsck", *s)


def test_branch_switch_tag_reset_gc(tmp_path: Path, gpt2_dir: Path, store_dir: Path) -> None:
    s = ["--store", store_dir]
    [path] = write_deltas(tmp_path, gpt2_dir, GPT2_PARAMS, 1)
    run("branch", "feature", *s)
    run("switch", "feature", *s)
    run("import-delta", path, "-m", "on feature", *s)
    listing = run("branch", *s)
    assert "* feature" in listing and "  main" in listing
    assert json.loads(run("branch", "--json", *s))[0]["current"] is True
    run("tag", "t", *s)
    assert "t " in run("tag", *s)
    run("switch", "main", *s)
    run("branch", "-d", "feature", *s)
    assert "would remove 0 commits" in run("gc", "--dry-run", *s)  # tag t still reaches it
    run("reset", "HEAD", *s)
    assert "(HEAD -> main)" in run("log", *s)


def test_store_found_from_env_and_parents(tmp_path: Path, gpt2_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("EDITSTORE_DIR", raising=False)
    monkeypatch.chdir(tmp_path)
    run("init", "--base", gpt2_dir)
    (tmp_path / "sub").mkdir()
    monkeypatch.chdir(tmp_path / "sub")
    assert "[init]" in run("log", "--oneline")
    monkeypatch.setenv("EDITSTORE_DIR", str(tmp_path / ".editstore"))
    monkeypatch.chdir("/")
    assert "[init]" in run("log", "--oneline")
    monkeypatch.setenv("EDITSTORE_DIR", str(tmp_path / "new"))
    run("init", "--base", gpt2_dir)
    assert (tmp_path / "new" / "store.db").is_file()


def _save(path: Path, tensors: dict) -> Path:
    save_file(tensors, path)
    return path


def bad_inputs(tmp_path: Path, gpt2_dir: Path, llama_dir: Path) -> dict[str, tuple]:
    base = Checkpoint(gpt2_dir)
    good = random_delta(base, GPT2_PARAMS[:1]).save(tmp_path / "good.safetensors")
    p = GPT2_PARAMS[0]  # c_proj: Conv1D (in=128, out=32) → U (32, r), V (128, r)
    return {
        "missing param": ("import-delta", _save(tmp_path / "a.safetensors", {"nope.weight.U": torch.ones(2, 1), "nope.weight.V": torch.ones(2, 1)}), "-m", "x"),
        "wrong shape": ("import-delta", _save(tmp_path / "b.safetensors", {f"{p}.U": torch.ones(128, 1), f"{p}.V": torch.ones(32, 1)}), "-m", "x"),
        "nan": ("import-delta", _save(tmp_path / "c.safetensors", {f"{p}.U": torch.full((32, 1), float("nan")), f"{p}.V": torch.ones(128, 1)}), "-m", "x"),
        "inf": ("import-delta", _save(tmp_path / "d.safetensors", {f"{p}.U": torch.full((32, 1), float("inf")), f"{p}.V": torch.ones(128, 1)}), "-m", "x"),
        "other base": ("import-delta", random_delta(Checkpoint(llama_dir), LLAMA_PARAMS[:1]).save(tmp_path / "e.safetensors"), "-m", "x"),
        "no such file": ("import-delta", tmp_path / "missing.safetensors", "-m", "x"),
        "unknown rev": ("show", "nosuchref"),
        "unknown hex": ("revert", "abcdef12"),
        "short prefix": ("checkout", "abc", "--out", tmp_path / "o1"),
        "past root": ("log", "HEAD~5"),
        "edit not in tree": ("revert", "EDIT"),
        "out not empty": ("checkout", "HEAD", "--out", tmp_path),
        "branch exists": ("branch", "main"),
        "delete current": ("branch", "-d", "main"),
        "bad branch name": ("branch", "a..b"),
        "switch missing": ("switch", "nope"),
        "cuda without gpu": ("checkout", "HEAD", "--out", tmp_path / "o2", "--device", "cuda"),
        "good": ("import-delta", good, "-m", "ok"),
    }


def test_bad_input_exits_2_and_leaves_store_unchanged(tmp_path: Path, gpt2_dir: Path, llama_dir: Path, store_dir: Path) -> None:
    cases = bad_inputs(tmp_path, gpt2_dir, llama_dir)
    good = cases.pop("good")
    run(*good, "--store", store_dir)
    with Store(store_dir) as store:
        edit_id = store.tree()[0]
        revert(store, edit_id)
    if torch.cuda.is_available():
        cases.pop("cuda without gpu")
    before = snapshot(store_dir)
    for label, args in cases.items():
        args = tuple(edit_id if a == "EDIT" else a for a in args)
        result = CliRunner().invoke(cli, [str(a) for a in args] + ["--store", str(store_dir)])
        assert result.exit_code == 2, (label, result.output)
        assert result.output.startswith("error: ") and len(result.output.strip().splitlines()) == 1, (label, result.output)
        assert snapshot(store_dir) == before, label
    assert not (tmp_path / "o1").exists() and not (tmp_path / "o2").exists()


def test_bad_base_directories(tmp_path: Path) -> None:
    out = run("init", "--base", tmp_path / "missing", "--store", tmp_path / "s1", code=2)
    assert "does not exist" in out
    (tmp_path / "notmodel").mkdir()
    assert "no config.json" in run("init", "--base", tmp_path / "notmodel", "--store", tmp_path / "s2", code=2)
    (tmp_path / "notmodel" / "config.json").write_text("{}")
    (tmp_path / "notmodel" / "pytorch_model.bin").write_bytes(b"")
    assert "safe_serialization" in run("init", "--base", tmp_path / "notmodel", "--store", tmp_path / "s3", code=2)
    assert not any((tmp_path / s / "store.db").exists() for s in ("s1", "s2", "s3"))
    assert "no editstore store" in run("log", "--store", tmp_path / "s1", code=2)


def test_store_from_newer_format_is_refused(store_dir: Path) -> None:
    with Store(store_dir) as store:
        store.db.execute("UPDATE meta SET value = '99' WHERE key = 'format_version'")
        store.db.conn.commit()
    before = snapshot_raw(store_dir)
    assert "format version 99" in run("log", "--store", store_dir, code=2)
    assert snapshot_raw(store_dir) == before


def snapshot_raw(store_dir: Path) -> bytes:
    return (store_dir / "store.db").read_bytes()


def test_corrupt_object_is_a_clean_error(tmp_path: Path, gpt2_dir: Path, store_dir: Path) -> None:
    [path] = write_deltas(tmp_path, gpt2_dir, GPT2_PARAMS, 1)
    run("import-delta", path, "-m", "x", "--store", store_dir)
    with Store(store_dir) as store:
        obj = store.objects.path(store.edit(store.tree()[0]).delta)
    obj.write_bytes(obj.read_bytes()[:-1] + b"\x00")
    assert "corrupt" in run("checkout", "--out", tmp_path / "o", "--store", store_dir, code=2)
    assert "fault" in run("fsck", "--store", store_dir, code=1)


def test_every_command_has_help() -> None:
    import click

    def walk(group: click.Group, path: tuple[str, ...]) -> None:
        for name, command in group.commands.items():
            assert command.help and command.help.strip(), path + (name,)
            assert "Usage:" in run(*path, name, "--help")
            if isinstance(command, click.Group):
                walk(command, path + (name,))

    walk(cli, ())
    assert "Commands:" in run("--help")


def test_lazy_commands_help_in_the_table_is_their_own() -> None:
    """`editstore --help` shows the lazily loaded commands' help from a table: it must match each command."""
    import importlib

    import click

    from editstore_cli.main import LAZY_COMMANDS

    for name, (target, first_sentence) in LAZY_COMMANDS.items():
        module, attribute = target.split(":")
        command = getattr(importlib.import_module(module), attribute)
        assert command.name == name
        assert command.get_short_help_str(10_000) == click.Command(name, help=first_sentence).get_short_help_str(10_000)


@pytest.mark.slow
def test_log_and_checkout_import_neither_transformers_nor_faiss(tmp_path: Path, gpt2_dir: Path) -> None:
    """A version-control command is typed many times an hour: the CLI loads the model and index libraries
    only for the commands that use them (a fresh process, so nothing is imported already)."""
    import subprocess
    import sys

    from editstore import Store
    from editstore.model.synthetic import random_delta

    from .conftest import GPT2_PARAMS

    with Store.init(gpt2_dir, tmp_path / "store") as store:
        import_delta(store, random_delta(store.base, GPT2_PARAMS[:1]), message="one")
    code = (
        "import sys\n"
        "from editstore_cli.main import cli\n"
        "for argv in (['log'], ['checkout', 'HEAD', '--out', sys.argv[2]], ['--help']):\n"
        "    try:\n"
        "        cli(['--store', sys.argv[1], *argv])\n"
        "    except SystemExit as exc:\n"
        "        assert not exc.code, (argv, exc.code)\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'transformers', 'faiss', 'matplotlib', 'peft'}))\n"
    )
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "store"), str(tmp_path / "out")],
                         capture_output=True, text=True, check=True).stdout
    assert out.strip().splitlines()[-1] == "[]", out


def test_store_is_one_group_option_that_may_follow_the_command(store_dir: Path, tmp_path: Path) -> None:
    from editstore_cli.main import hoist_store_option

    assert hoist_store_option(["log", "--store", "s", "-n", "1"]) == ["--store", "s", "log", "-n", "1"]
    assert hoist_store_option(["--store", "a", "-v", "log", "--store=b"]) == ["--store", "a", "-v", "--store=b", "log"]
    assert hoist_store_option(["stats", "list", "--store", "s", "--", "--store"]) == ["--store", "s", "stats", "list",
                                                                                       "--", "--store"]
    assert run("log", "--oneline", "--store", store_dir) == run("--store", store_dir, "log", "--oneline")
    assert "[init]" in run("--store", tmp_path / "nowhere", "log", "--oneline", "--store", store_dir)  # the later wins
    assert "--store" not in run("log", "--help")  # declared once, on the group
