"""The package layout the wheel relies on: every package listed, schemas loadable as resources."""

import json
import tomllib
from importlib import resources
from pathlib import Path

import jsonschema
import pytest

from editstore.core.schema import load_schema, validate
from editstore.errors import SchemaError

ROOT = Path(__file__).resolve().parents[1]
SCHEMAS = sorted(p.name.removesuffix(".schema.json") for p in (ROOT / "schemas").glob("*.schema.json"))


def test_every_package_directory_is_listed_in_pyproject() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    dirs = config["package-dir"]
    listed = set(config["packages"])
    found = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "editstore").rglob("__init__.py")}
    found |= {"editstore.schemas", "editstore_cli"}
    assert found == listed
    assert dirs == {"editstore.schemas": "schemas", "editstore_cli": "cli/editstore_cli"}


@pytest.mark.parametrize("name", SCHEMAS)
def test_schemas_are_valid_and_installed(name: str) -> None:
    schema = load_schema(name)
    jsonschema.Draft202012Validator.check_schema(schema)
    assert schema["$schema"].endswith("2020-12/schema")
    installed = resources.files("editstore.schemas").joinpath(f"{name}.schema.json").read_text()
    assert json.loads(installed) == json.loads((ROOT / "schemas" / f"{name}.schema.json").read_text())


def test_edit_request_schema() -> None:
    ok = {"prompt": "The capital of {} is", "subject": "France", "target_new": "Lyon"}
    validate(ok, "edit-request")
    for bad in ({**ok, "prompt": "no placeholder"}, {**ok, "target_new": ""}, {"prompt": "{} x", "subject": "s"},
                {**ok, "unknown": 1}):
        with pytest.raises(SchemaError):
            validate(bad, "edit-request")


ARCHITECTURES = {"gpt2-world", "gpt2-world-large", "llama-world", "llama-world-large", "t5-world", "gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl", "gpt-j", "gpt-neox", "llama", "qwen2"}


def test_packaged_hparams_cover_every_method_and_architecture_and_validate() -> None:
    from editstore.methods.hparams import METHODS, packaged_hparams

    found = {(h.method, h.architecture) for h in packaged_hparams()}  # loading validates each file
    mend = {("mend", a) for a in ("gpt2-world", "llama-world", "t5-world", "marian-world", "gpt2")}  # an editor is trained per base anyway
    translation = {(m, "marian-world") for m in METHODS if m != "mend"}  # the translation world (not in ARCHITECTURES)
    assert found == {(m, a) for m in METHODS if m != "mend" for a in ARCHITECTURES} | mend | translation
    files = sorted(resources.files("editstore.methods").joinpath("hparams").iterdir(), key=lambda f: f.name)
    assert len(files) == len(found)


@pytest.mark.parametrize(
    ("config", "architecture"),
    [
        ({"model_type": "gpt2", "n_layer": 48, "n_embd": 1600}, "gpt2-xl"),
        ({"model_type": "gpt2", "n_layer": 4, "n_embd": 128}, "gpt2-world"),
        ({"model_type": "gpt2", "n_layer": 6, "n_embd": 256}, "gpt2-world-large"),
        ({"model_type": "gpt2", "n_layer": 6, "n_embd": 512}, "gpt2"),  # any other GPT-2 falls back to small
        ({"model_type": "gptj", "n_layer": 28}, "gpt-j"),
        ({"model_type": "llama", "num_hidden_layers": 4, "hidden_size": 128}, "llama-world"),
        ({"model_type": "t5", "num_layers": 4, "d_model": 128}, "t5-world"),
        ({"model_type": "llama", "num_hidden_layers": 32, "hidden_size": 4096}, "llama"),
    ],
)
def test_hparams_are_chosen_by_config_not_by_name(config: dict, architecture: str) -> None:
    from editstore.methods import find_hparams

    assert find_hparams("memit", config).architecture == architecture


def test_hparams_errors() -> None:
    from editstore.methods import find_hparams
    from editstore.methods.hparams import Hparams, NoHparamsError, UnknownMethodError

    with pytest.raises(UnknownMethodError):
        find_hparams("magic", {"model_type": "gpt2"})
    with pytest.raises(NoHparamsError):
        find_hparams("rome", {"model_type": "t5"})
    good = find_hparams("rome", {"model_type": "gpt2"}).to_json()
    assert Hparams.from_json(good) == find_hparams("rome", {"model_type": "gpt2"})
    for bad in ({**good, "layers": [1, 2]}, {**good, "module": "no.template"}, {**good, "solver": {"lam": 1}}):
        with pytest.raises(SchemaError):
            Hparams.from_json(bad)
