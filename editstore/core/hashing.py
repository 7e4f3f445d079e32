"""Content addressing: sha256 of bytes and of canonical JSON."""

from __future__ import annotations

import hashlib
import json
from typing import Any

HEX_ID_LENGTH = 64


def sha256_bytes(data: bytes | bytearray | memoryview) -> str:
    """Hex sha256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


def canonical_json(value: Any) -> str:
    """JSON with sorted keys and no whitespace: the same value always gives the same text."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def sha256_json(value: Any) -> str:
    """Hex sha256 of the canonical JSON of ``value``."""
    return sha256_bytes(canonical_json(value).encode("utf-8"))


def is_hex(text: str) -> bool:
    """True when ``text`` is non-empty lowercase hexadecimal."""
    return bool(text) and all(c in "0123456789abcdef" for c in text)
