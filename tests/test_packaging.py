"""The package layout the wheel relies on: every package listed, schemas loadable as resources."""

import json
import tomllib
from importlib import resources
from pathlib import Path

import jsonschema
import pytest

from editstore.errors import SchemaError
from editstore.schema import load_schema, validate

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
