"""The delta: per edited parameter, low-rank factors with ΔW = U Vᵀ (nn.Linear orientation).

On disk a delta is a safetensors file with tensors ``<param>.U`` (d_out, r) and
``<param>.V`` (d_in, r), and optionally ``<param>.keys`` (d_in, n) and
``<param>.targets`` (d_out, n), the edit keys and target values a batched
re-solve needs, and on the last layer of a multi-layer edit ``<param>.hidden``
(d_out, n), the target hidden state z of its block (MEMIT's z), from which a
re-solve spreads the residual again; and on the last layer ``<param>.residuals``
(d_out, n), the change δ the edit asked of that block's output at the subject (z − h at the time
of the edit), which lets a re-solve give the edits of one subject one target.
A delta with ``residuals`` is written as format version 3, one with ``hidden`` (only) as 2, one
with neither stays version 1, so the bytes and id of an older delta never change.
``__metadata__`` holds one key, ``editstore``, whose value is the
JSON object described by ``schemas/delta-metadata.schema.json``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from ..core.hashing import canonical_json
from ..core.inputs import loads, read_bytes
from ..core.schema import validate
from ..errors import InputError, InvalidDeltaError, SchemaError
from .checkpoint import FLOAT_DTYPES, Checkpoint, safetensors_header

FORMAT = "editstore-delta"
FORMAT_VERSION = 3  # 2: the optional <param>.hidden part; 3: <param>.residuals
METADATA_KEY = "editstore"
MAX_METADATA_BYTES = 1 << 20  # the JSON header; requests and hparams are a few KiB
PARTS = ("U", "V", "keys", "targets", "hidden", "residuals")
# What composition reads (FactorStacks converts each to float32); any other dtype is refused on the way in.
SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


@dataclass(frozen=True)
class Factors:
    """Low-rank update of one parameter: ΔW = U Vᵀ, out x in."""

    U: torch.Tensor  # (d_out, r)
    V: torch.Tensor  # (d_in, r)
    keys: torch.Tensor | None = None  # (d_in, n)
    targets: torch.Tensor | None = None  # (d_out, n)
    hidden: torch.Tensor | None = None  # (d_out, n): z of the block, last layer of a multi-layer edit
    residuals: torch.Tensor | None = None  # (d_out, n): δ = z − h at the subject when the edit was made, last layer

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
        has = lambda part: any(getattr(f, part) is not None for f in self.factors.values())  # noqa: E731
        version = 3 if has("residuals") else 2 if has("hidden") else 1
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
        except (SafetensorError, ValueError, KeyError) as exc:  # KeyError: a dtype torch has no name for (F4)
            raise InvalidDeltaError(f"{source} is not a valid safetensors file: {exc}") from None
        return cls(_group_factors(tensors, source, values=not trusted), _parse_header(metadata, source, schema=not trusted))

    @classmethod
    def load(cls, path: str | Path) -> Delta:
        """Read a delta file."""
        try:
            data = read_bytes(path, what="delta file")
        except InputError as exc:
            raise InvalidDeltaError(str(exc)) from None
        return cls.from_bytes(data, source=str(path))

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
            limit = min(torch.finfo(torch.float32).max, torch.finfo(info.torch_dtype).max) / 2
            if _max_abs_product(f.U, f.V, limit) >= limit:
                raise InvalidDeltaError(f"{param}: U Vᵀ has entries beyond ±{limit:.3g}, more than a {info.dtype} weight "
                                        "composed in float32 can hold")
            if f.keys is not None and f.keys.shape[0] != d_in:
                raise InvalidDeltaError(f"{param}.keys has {f.keys.shape[0]} rows, expected d_in = {d_in}")
            for part in ("targets", "hidden", "residuals"):
                t = getattr(f, part)
                if t is not None and t.shape[0] != d_out:
                    raise InvalidDeltaError(f"{param}.{part} has {t.shape[0]} rows, expected d_out = {d_out}")


def _max_abs_product(U: torch.Tensor, V: torch.Tensor, limit: float) -> float:
    """max |U Vᵀ| in float64, or a bound on it below ``limit`` (which spares forming the product)."""
    U, V = U.double(), V.double()  # (d_out, r), (d_in, r)
    bound = float((U.abs().amax(0) * V.abs().amax(0)).sum())
    if bound < limit:
        return bound
    rows = max(1, (1 << 24) // max(V.shape[0], 1))  # ~128 MiB of float64 a block
    return max(float((U[i : i + rows] @ V.T).abs().max()) for i in range(0, U.shape[0], rows))


class _RowStack:
    """Blocks of rows appended to one float32 (capacity, width) array, grown by doubling."""

    def __init__(self, width: int, capacity: int) -> None:
        self.rows = np.empty((capacity, width), dtype=np.float32)  # pages are touched only when written
        self.n = 0

    def append(self, block: np.ndarray) -> None:
        r = block.shape[0]
        if self.n + r > len(self.rows):
            grown = np.empty((max(2 * len(self.rows), self.n + r), self.rows.shape[1]), dtype=np.float32)
            grown[: self.n] = self.rows[: self.n]
            self.rows = grown
        self.rows[self.n : self.n + r] = block
        self.n += r


_NUMPY_FLOATS = {"F32": "<f4", "F16": "<f2", "F64": "<f8"}


def _float32(raw: np.ndarray, dtype: str) -> np.ndarray:
    """Rows of little-endian bytes (B, n) of a float dtype as float32 values (B, n / itemsize)."""
    if dtype == "BF16":  # the upper half of a float32
        return (raw.view("<u2").astype(np.uint32) << 16).view(np.float32)
    if dtype not in _NUMPY_FLOATS:  # only an object written before dtypes were checked (fsck names it)
        raise InvalidDeltaError(f"a delta object holds {dtype} factors, which composition cannot read; run `editstore fsck`")
    return raw.view(_NUMPY_FLOATS[dtype]).astype(np.float32, copy=False)


@dataclass
class _Layout:
    """The deltas of one header (one method usually writes the same header): their bytes are gathered
    into ``batch`` and their factors moved to the stacks many at a time."""

    header: bytes
    size: int
    slots: list[tuple[str, str, int, int, str, int, int]]  # param, part, byte range, dtype, d, r
    batch: np.ndarray
    filled: int = 0


class FactorStacks:
    """The U and V of many deltas, per parameter, concatenated in the order they are added.

    The fast path of composition, which reads every delta of a version: small deltas'
    bytes are gathered into a batch of deltas with the same header (up to ``BATCH_BYTES``),
    and each factor of a full batch is moved into one float32 (R, d) array per parameter
    and part in one step; keys and targets are skipped. So the bytes may live in a reused
    buffer (:meth:`ObjectStore.stream`). ``expected`` (how many deltas) sizes the arrays.
    """

    BATCH_BYTES = 4 << 20

    def __init__(self, expected: int = 1) -> None:
        self.expected = max(expected, 1)
        self.stacks: dict[tuple[str, str], _RowStack] = {}
        self._layout: _Layout | None = None  # the header being gathered: one at a time keeps the order

    def _layout_of(self, data: memoryview) -> _Layout:
        n = int.from_bytes(data[:8], "little")
        header = bytes(data[8 : 8 + n])
        layout = self._layout
        if layout is None or layout.header != header or layout.size != len(data):
            self._flush()
            slots = []
            for name, entry in sorted(json.loads(header).items()):
                param, _, part = name.rpartition(".")
                if part in ("U", "V"):
                    begin, end = entry["data_offsets"]
                    d, r = entry["shape"]
                    slots.append((param, part, 8 + n + begin, 8 + n + end, entry["dtype"], d, r))
            rows = max(1, min(64, self.BATCH_BYTES // max(len(data), 1)))
            layout = self._layout = _Layout(header, len(data), slots, np.empty((rows, len(data)), np.uint8))
        return layout

    def add(self, data: memoryview) -> None:
        """Append the factors of one delta's bytes."""
        layout = self._layout_of(data)
        if len(layout.batch) == 1:  # a large delta: its factors are moved straight from its bytes
            self._move(layout, np.frombuffer(data, np.uint8)[None, :])
            return
        layout.batch[layout.filled] = np.frombuffer(data, np.uint8)
        layout.filled += 1
        if layout.filled == len(layout.batch):
            self._flush()

    def _flush(self) -> None:
        if self._layout is not None and self._layout.filled:
            self._move(self._layout, self._layout.batch[: self._layout.filled])
            self._layout.filled = 0

    def _move(self, layout: _Layout, deltas: np.ndarray) -> None:
        """Append the factors of ``deltas`` (one delta's bytes a row) to the stacks."""
        b = len(deltas)
        for param, part, begin, end, dtype, d, r in layout.slots:
            block = _float32(deltas[:, begin:end], dtype).reshape(b, d, r).transpose(0, 2, 1)
            stack = self.stacks.get((param, part))
            if stack is None:
                stack = self.stacks[(param, part)] = _RowStack(d, self.expected * r)
            stack.append(block.reshape(b * r, d))

    def factors(self) -> dict[str, Factors]:
        """Per parameter, U (d_out, R) and V (d_in, R): transposed views of contiguous (R, d) arrays."""
        self._flush()
        out = {}
        for param in sorted({param for param, _ in self.stacks}):
            U, V = (self.stacks[(param, part)] for part in "UV")
            out[param] = Factors(torch.from_numpy(U.rows[: U.n]).T, torch.from_numpy(V.rows[: V.n]).T)
        return out


def _read_metadata(data: bytes) -> dict[str, str]:
    return safetensors_header(data)[0].get("__metadata__") or {}


def _parse_header(metadata: dict[str, str], source: str, *, schema: bool = True) -> dict[str, Any]:
    if METADATA_KEY not in metadata:
        return {}
    text = metadata[METADATA_KEY]
    if schema and len(text) > MAX_METADATA_BYTES:
        raise InvalidDeltaError(f"{source}: metadata key {METADATA_KEY!r} has {len(text)} characters; at most "
                                f"{MAX_METADATA_BYTES} are read")
    try:
        header = loads(text, source=f"{source}: metadata key {METADATA_KEY!r}")
        if schema:
            validate(header, "delta-metadata", what=f"{source} header")
    except (InputError, SchemaError) as exc:
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
            raise InvalidDeltaError(f"{source}: tensor {name!r} is not <param>.U, .V, .keys, .targets, .hidden or .residuals")
        parts.setdefault(param, {})[part] = tensor
    return {param: _check_factors(param, p, source, values=values) for param, p in sorted(parts.items())}


def _check_factors(param: str, p: dict[str, torch.Tensor], source: str, *, values: bool = True) -> Factors:
    if "U" not in p or "V" not in p:
        raise InvalidDeltaError(f"{source}: {param} needs both .U and .V")
    for part, t in p.items():
        if t.ndim != 2:
            raise InvalidDeltaError(f"{source}: {param}.{part} must be 2-D, got shape {list(t.shape)}")
        if t.dtype not in SUPPORTED_DTYPES:
            raise InvalidDeltaError(f"{source}: {param}.{part} is {t.dtype}; delta factors must be float16, bfloat16, "
                                    "float32 or float64")
        if values and not torch.isfinite(t).all():
            raise InvalidDeltaError(f"{source}: {param}.{part} contains NaN or Inf")
    U, V = p["U"], p["V"]
    if U.shape[1] < 1 or U.shape[1] != V.shape[1]:
        raise InvalidDeltaError(f"{source}: {param} has U with {U.shape[1]} and V with {V.shape[1]} columns; need equal r ≥ 1")
    keys, targets, hidden = p.get("keys"), p.get("targets"), p.get("hidden")
    if (keys is None) != (targets is None) or (keys is not None and keys.shape[1] != targets.shape[1]):
        raise InvalidDeltaError(f"{source}: {param}.keys and .targets must come together with the same column count n")
    for part, t in (("hidden", hidden), ("residuals", p.get("residuals"))):
        if t is not None and (keys is None or t.shape[1] != keys.shape[1]):
            raise InvalidDeltaError(f"{source}: {param}.{part} needs .keys and .targets with the same column count n")
    return Factors(U, V, keys, targets, hidden, p.get("residuals"))
