"""The validation boundary: files and JSON that come from outside the store are read here.

Every reader turns what can go wrong with a user's input (a path that is a directory
or a device, a file that cannot be read, bytes that are not UTF-8, JSON that is not
valid, nests absurdly or holds numbers no store column can keep) into an
:class:`InputError` that names the file and, for line-based files, the line. Nothing
outside this module parses a user's JSON or reads a user's file directly.

Limits (module constants, so a caller can name them in a message): JSON nests at most
``MAX_JSON_DEPTH`` levels; integers fit in 64 bits (SQLite's INTEGER); floats are
finite (``NaN``, ``Infinity`` and overflowing literals like ``1e999`` are refused).
"""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..errors import InputError

MAX_JSON_DEPTH = 64
MAX_TEXT_BYTES = 1 << 30  # a text input (requests, hparams, a corpus) larger than this is refused unread
_INT_LIMIT = 1 << 63


def read_bytes(path: str | Path, *, what: str, max_bytes: int | None = None) -> bytes:
    """The bytes of the regular file ``path`` (``what`` names it in errors: "delta file", "corpus").

    Directories, devices, FIFOs and sockets are refused before anything is read, so a
    path like ``/dev/zero`` or a named pipe can neither hang nor exhaust memory.
    """
    path = Path(path)
    try:
        info = os.stat(path)
        if not stat.S_ISREG(info.st_mode):
            kind = "a directory" if stat.S_ISDIR(info.st_mode) else "not a regular file"
            raise InputError(f"{what} {path} is {kind}")
        if max_bytes is not None and info.st_size > max_bytes:
            raise InputError(f"{what} {path} is {info.st_size} bytes; at most {max_bytes} are read")
        with open(path, "rb") as fh:
            return fh.read()
    except FileNotFoundError:
        raise InputError(f"{what} {path} does not exist") from None
    except OSError as exc:
        raise InputError(f"cannot read {what} {path}: {exc.strerror or exc}") from None


def decode_utf8(data: bytes, *, source: str) -> str:
    """``data`` as UTF-8 text (a leading byte-order mark is dropped); the error names the line and column."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        column = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
        raise InputError(f"{source}:{line}:{column} is not UTF-8 (byte 0x{data[exc.start]:02x})") from None


def read_text(path: str | Path, *, what: str, max_bytes: int = MAX_TEXT_BYTES) -> str:
    """The UTF-8 text of the regular file ``path``."""
    return decode_utf8(read_bytes(path, what=what, max_bytes=max_bytes), source=str(path))


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number JSON allows")


def _parse_int(text: str) -> int:
    if len(text) > 20 or not -_INT_LIMIT <= (value := int(text)) < _INT_LIMIT:
        raise ValueError(f"integer {text[:24]}{'…' if len(text) > 24 else ''} does not fit in 64 bits")
    return value


def _parse_float(text: str) -> float:
    value = float(text)
    if value in (float("inf"), float("-inf")):
        raise ValueError(f"number {text[:24]} overflows a float")
    return value


_DECODER = json.JSONDecoder(parse_int=_parse_int, parse_float=_parse_float, parse_constant=_refuse_constant)


def _check_tree(value: Any, *, source: str, max_depth: int) -> None:
    """Refuse nesting deeper than ``max_depth`` and strings that are not Unicode text (lone surrogates,
    which ``\\ud800`` escapes produce), walking ``value`` without recursion."""
    stack = [(value, 0)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                raise InputError(f"{source} holds a string with a lone surrogate escape (not Unicode text)") from None
            continue
        children = [*item.keys(), *item.values()] if isinstance(item, dict) else item if isinstance(item, list) else None
        if children is None:
            continue
        if level + 1 > max_depth:
            raise InputError(f"{source} nests deeper than {max_depth} levels")
        stack.extend((child, level + 1) for child in children)


def loads(text: str | bytes, *, source: str, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """Parse one JSON document within the module's limits; :class:`InputError` names ``source``."""
    if isinstance(text, bytes):
        text = decode_utf8(text, source=source)
    try:
        value, end = _DECODER.raw_decode(text, _skip_space(text, 0))
        if _skip_space(text, end) != len(text):
            raise json.JSONDecodeError("Extra data", text, end)
    except json.JSONDecodeError as exc:
        raise InputError(f"{source} is not JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})") from None
    except ValueError as exc:
        raise InputError(f"{source}: {exc}") from None
    except RecursionError:
        raise InputError(f"{source} nests deeper than {max_depth} levels") from None
    _check_tree(value, source=source, max_depth=max_depth)
    return value


def _skip_space(text: str, i: int) -> int:
    while i < len(text) and text[i] in " \t\n\r":
        i += 1
    return i


def read_json(path: str | Path, *, what: str) -> Any:
    """The JSON document in the file ``path``."""
    return loads(read_text(path, what=what), source=str(path))


def iter_jsonl(path: str | Path, *, what: str) -> Iterator[tuple[str, Any]]:
    """``(where, value)`` for each non-blank line of a JSON Lines file; ``where`` is ``path:line``."""
    text = read_text(path, what=what)
    for n, line in enumerate(text.split("\n"), 1):
        if line.strip():
            where = f"{path}:{n}"
            yield where, loads(line, source=where)


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The rows of one of the world's JSON Lines files (read as any user file is, by editstore.core.inputs)."""
    return [row for _, row in iter_jsonl(path, what="world file")]
