"""The delta: per edited parameter, low-rank factors with ΔW = U Vᵀ (nn.Linear orientation).

On disk a delta is a safetensors file with tensors ``<param>.U`` (d_out, r) and
``<param>.V`` (d_in, r), and optionally ``<param>.keys`` (d_in, n) and
``<param>.targets`` (d_out, n), the edit keys and target values a batched
re-solve needs, and on the last layer of a multi-layer edit ``<param>.hidden``
(d_out, n), the target hidden state z of its block (MEMIT's z), from which a
re-solve spreads the residual again. A delta with ``hidden`` is written as format
version 2; one without it stays version 1, so its bytes and id never change.
``__metadata__`` holds one key, ``editstore``, whose value is the
JSON object described by ``schemas/delta-metadata.schema.json``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from .checkpoint import DTYPES, FLOAT_DTYPES, Checkpoint, safetensors_header
from .errors import InvalidDeltaError, SchemaError
from .hashing import canonical_json
from .schema import validate

FORMAT = "editstore-delta"
FORMAT_VERSION = 2  # 2: the optional <param>.hidden part
METADATA_KEY = "editstore"
PARTS = ("U", "V", "keys", "targets", "hidden")


@dataclass(frozen=True)
class Factors:
    """Low-rank update of one parameter: ΔW = U Vᵀ, out x in."""

    U: torch.Tensor  # (d_out, r)
    V: torch.Tensor  # (d_in, r)
    keys: torch.Tensor | None = None  # (d_in, n)
    targets: torch.Tensor | None = None  # (d_out, n)
    hidden: torch.Tensor | None = None  # (d_out, n): z of the block, last layer of a multi-layer edit

    @property
    def rank(self) -> int:
        return int(self.U.shape[1])

    @property
    def shape(self) -> tuple[int, int]:
        """(d_out, d_in) of the update in nn.Linear orientation."""
        return int(self.U.shape[0]), int(self.V.shape[0])

    def dense(self) -> torch.Tensor:
        """U Vᵀ as a dense (d_out, d_in) float32 matrix (for tests and small models)."""
        return self.U.float() @ self.V.float().T


@dataclass(frozen=True)
class Delta:
    """A set of low-rank parameter updates plus header metadata."""

    factors: Mapping[str, Factors]
    metadata: Mapping[str, Any] = field(default_factory=dict)

    @property
    def params(self) -> list[str]:
        return sorted(self.factors)

    @property
    def rank(self) -> int:
        """Sum of the factor ranks over all parameters."""
        return sum(f.rank for f in self.factors.values())

    def to_bytes(self) -> bytes:
        """Canonical safetensors bytes: the same content always gives the same bytes (and id)."""
        tensors: dict[str, torch.Tensor] = {}
        for param, f in self.factors.items():
            for part in PARTS:
                value = getattr(f, part)
                if value is not None:
                    tensors[f"{param}.{part}"] = value.detach().cpu().contiguous()
        version = FORMAT_VERSION if any(f.hidden is not None for f in self.factors.values()) else 1
        header = {"format": FORMAT, "version": version, **self.metadata}
        return st_save(tensors, metadata={METADATA_KEY: canonical_json(header)})

    def save(self, path: str | Path) -> Path:
        """Write the delta to ``path`` as a safetensors file."""
        path = Path(path)
        path.write_bytes(self.to_bytes())
        return path

    @classmethod
    def from_bytes(cls, data: bytes, *, source: str = "delta", trusted: bool = False) -> Delta:
        """Parse and structurally validate safetensors bytes (no base model needed).

        ``trusted``: the bytes are a hash-verified store object, checked in full when it was
        written; the header schema and the finiteness of every value are not checked again.
        """
        try:
            tensors = st_load(data)
            metadata = _read_metadata(data)
        except (SafetensorError, ValueError, json.JSONDecodeError) as exc:
            raise InvalidDeltaError(f"{source} is not a valid safetensors file: {exc}") from None
        return cls(_group_factors(tensors, source, values=not trusted), _parse_header(metadata, source, schema=not trusted))

    @classmethod
    def load(cls, path: str | Path) -> Delta:
        """Read a delta file."""
        path = Path(path)
        if not path.is_file():
            raise InvalidDeltaError(f"delta file {path} does not exist")
        return cls.from_bytes(path.read_bytes(), source=str(path))

    def check(self, source: str = "delta") -> None:
        """Structural checks that need no base: non-empty, 2-D float factors, equal r ≥ 1, all finite."""
        if not self.factors:
            raise InvalidDeltaError(f"{source} holds no tensors")
        for param, f in self.factors.items():
            parts = {part: getattr(f, part) for part in PARTS if getattr(f, part) is not None}
            _check_factors(param, parts, source)

    def check_fits(self, base: Checkpoint) -> None:
        """Raise :class:`InvalidDeltaError` unless the delta is well formed and every parameter exists in
        ``base`` with fitting shapes."""
        self.check()
        claimed = self.metadata.get("base")
        if claimed and claimed != base.fingerprint:
            raise InvalidDeltaError(
                f"the delta was computed for base {claimed[:12]}, but this store's base is {base.fingerprint[:12]}"
            )
        for param, f in self.factors.items():
            if param not in base.tensors:
                raise InvalidDeltaError(f"the base model has no parameter {param!r}")
            info = base.tensors[param]
            if len(info.shape) != 2:
                raise InvalidDeltaError(f"{param} has shape {list(info.shape)}; only 2-D weights can take a low-rank delta")
            if info.dtype not in FLOAT_DTYPES:
                raise InvalidDeltaError(f"{param} is stored as {info.dtype}; only float weights can take a delta")
            if param not in base.orientations:
                raise InvalidDeltaError(f"cannot tell the orientation of {param}: its module type is unknown")
            d_out, d_in = base.linear_shape(param)
            if f.shape != (d_out, d_in):
                raise InvalidDeltaError(
                    f"{param}: U Vᵀ is {f.shape[0]} x {f.shape[1]} but the weight is {d_out} x {d_in} (out x in, "
                    f"{base.orientations[param]} module)"
                )
            if f.keys is not None and f.keys.shape[0] != d_in:
                raise InvalidDeltaError(f"{param}.keys has {f.keys.shape[0]} rows, expected d_in = {d_in}")
            for part in ("targets", "hidden"):
                t = getattr(f, part)
                if t is not None and t.shape[0] != d_out:
                    raise InvalidDeltaError(f"{param}.{part} has {t.shape[0]} rows, expected d_out = {d_out}")


def low_rank_factors(data: bytes) -> dict[str, Factors]:
    """Only the U and V of each parameter of verified delta bytes, without building the other tensors.

    The fast path of composition, which reads every delta of a version: the header is
    parsed once and U, V are copied straight out of ``data`` (keys and targets are skipped).
    """
    header, start = safetensors_header(data)
    parts: dict[str, dict[str, torch.Tensor]] = {}
    for name, entry in header.items():
        param, _, part = name.rpartition(".")
        if part not in ("U", "V"):
            continue
        begin, end = entry["data_offsets"]
        t = torch.frombuffer(bytearray(memoryview(data)[start + begin : start + end]), dtype=DTYPES[entry["dtype"]])
        parts.setdefault(param, {})[part] = t.reshape(entry["shape"])
    return {param: Factors(p["U"], p["V"]) for param, p in sorted(parts.items())}


def _read_metadata(data: bytes) -> dict[str, str]:
    return safetensors_header(data)[0].get("__metadata__") or {}


def _parse_header(metadata: dict[str, str], source: str, *, schema: bool = True) -> dict[str, Any]:
    if METADATA_KEY not in metadata:
        return {}
    try:
        header = json.loads(metadata[METADATA_KEY])
    except json.JSONDecodeError as exc:
        raise InvalidDeltaError(f"{source}: metadata key {METADATA_KEY!r} is not JSON: {exc}") from None
    try:
        if schema:
            validate(header, "delta-metadata", what=f"{source} header")
    except SchemaError as exc:
        raise InvalidDeltaError(str(exc)) from None
    if header["version"] > FORMAT_VERSION:
        raise InvalidDeltaError(f"{source} uses delta format version {header['version']}; this editstore reads ≤ {FORMAT_VERSION}")
    return {k: v for k, v in header.items() if k not in ("format", "version")}


def _group_factors(tensors: dict[str, torch.Tensor], source: str, *, values: bool = True) -> dict[str, Factors]:
    if not tensors:
        raise InvalidDeltaError(f"{source} holds no tensors")
    parts: dict[str, dict[str, torch.Tensor]] = {}
    for name, tensor in tensors.items():
        param, _, part = name.rpartition(".")
        if part not in PARTS or not param:
            raise InvalidDeltaError(f"{source}: tensor {name!r} is not <param>.U, .V, .keys, .targets or .hidden")
        parts.setdefault(param, {})[part] = tensor
    return {param: _check_factors(param, p, source, values=values) for param, p in sorted(parts.items())}


def _check_factors(param: str, p: dict[str, torch.Tensor], source: str, *, values: bool = True) -> Factors:
    if "U" not in p or "V" not in p:
        raise InvalidDeltaError(f"{source}: {param} needs both .U and .V")
    for part, t in p.items():
        if t.ndim != 2:
            raise InvalidDeltaError(f"{source}: {param}.{part} must be 2-D, got shape {list(t.shape)}")
        if not t.is_floating_point():
            raise InvalidDeltaError(f"{source}: {param}.{part} must be floating point, got {t.dtype}")
        if values and not torch.isfinite(t).all():
            raise InvalidDeltaError(f"{source}: {param}.{part} contains NaN or Inf")
    U, V = p["U"], p["V"]
    if U.shape[1] < 1 or U.shape[1] != V.shape[1]:
        raise InvalidDeltaError(f"{source}: {param} has U with {U.shape[1]} and V with {V.shape[1]} columns; need equal r ≥ 1")
    keys, targets, hidden = p.get("keys"), p.get("targets"), p.get("hidden")
    if (keys is None) != (targets is None) or (keys is not None and keys.shape[1] != targets.shape[1]):
        raise InvalidDeltaError(f"{source}: {param}.keys and .targets must come together with the same column count n")
    if hidden is not None and (keys is None or hidden.shape[1] != keys.shape[1]):
        raise InvalidDeltaError(f"{source}: {param}.hidden needs .keys and .targets with the same column count n")
    return Factors(U, V, keys, targets, hidden)
