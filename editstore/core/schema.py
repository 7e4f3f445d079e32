"""Load the packaged JSON Schemas and validate documents against them."""

from __future__ import annotations

import functools
import json
from importlib import resources
from typing import TYPE_CHECKING, Any

from ..errors import SchemaError

if TYPE_CHECKING:
    import jsonschema


@functools.cache
def load_schema(name: str) -> dict[str, Any]:
    """The schema ``schemas/<name>.schema.json``, read from the installed package."""
    text = resources.files("editstore.schemas").joinpath(f"{name}.schema.json").read_text(encoding="utf-8")
    return json.loads(text)


def _strict_integer(_checker: Any, instance: Any) -> bool:
    """JSON Schema counts 10.0 as an integer; editstore's counts and layers must be whole numbers in type too."""
    return isinstance(instance, int) and not isinstance(instance, bool)


@functools.cache
def _validator(name: str) -> jsonschema.protocols.Validator:
    import jsonschema  # about 0.1 s: only commands that validate a document pay for it

    schema = load_schema(name)
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    strict = jsonschema.validators.extend(cls, type_checker=cls.TYPE_CHECKER.redefine("integer", _strict_integer))
    return strict(schema)


def validate(document: Any, name: str, *, what: str | None = None) -> None:
    """Raise :class:`SchemaError` naming the first violation of schema ``name``."""
    from jsonschema.exceptions import best_match

    error = best_match(_validator(name).iter_errors(document))
    if error is not None:
        where = "/".join(str(p) for p in error.absolute_path) or "(root)"
        raise SchemaError(f"{what or name} is invalid at {where}: {error.message}")
