"""Read-only view of a Hugging Face checkpoint directory with safetensors weights.

Tensors are located by parsing the safetensors headers directly (8-byte length,
JSON header, raw little-endian data), so a tensor can be read, hashed or patched
on its own without loading the rest of the model.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..core.hashing import sha256_bytes, sha256_json
from ..core.inputs import loads, read_json
from ..errors import BaseModelError, InputError

log = logging.getLogger(__name__)

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
OTHER_WEIGHT_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack", ".gguf", ".safetensors")

DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}

FLOAT_DTYPES = ("F64", "F32", "F16", "BF16")

LINEAR = "linear"  # stored (out, in), as nn.Linear
CONV1D = "conv1d"  # stored (in, out), as GPT-2's transformers Conv1D


@dataclass(frozen=True)
class TensorInfo:
    """Where one tensor lives: its file, dtype, shape and absolute byte range."""

    name: str
    file: str
    dtype: str
    shape: tuple[int, ...]
    begin: int
    end: int

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]


def raw_view(t: torch.Tensor) -> memoryview:
    """The bytes of a contiguous CPU tensor, as safetensors stores them, without a copy."""
    if not t.is_contiguous() or t.device.type != "cpu":
        raise ValueError("raw_view needs a contiguous CPU tensor")
    return memoryview(t.reshape(-1).view(torch.uint8).numpy()) if t.numel() else memoryview(b"")


def safetensors_header(data: bytes | bytearray | memoryview) -> tuple[dict[str, Any], int]:
    """The parsed JSON header of safetensors bytes in memory and the offset where their data starts.

    Raises ``ValueError`` (a ``json.JSONDecodeError``) when the header is not JSON.
    """
    n = int.from_bytes(data[:8], "little")
    return json.loads(bytes(data[8 : 8 + n])), 8 + n


def read_safetensors_header(path: Path) -> tuple[dict[str, Any], int]:
    """The parsed JSON header of a safetensors file and the offset where its data starts."""
    try:
        with open(path, "rb") as fh:
            raw_len = fh.read(8)
            if len(raw_len) != 8:
                raise BaseModelError(f"{path} is not a safetensors file (too short)")
            (n,) = struct.unpack("<Q", raw_len)
            if n > 100_000_000:
                raise BaseModelError(f"{path} is not a safetensors file (header length {n})")
            header = loads(fh.read(n), source=f"{path} header")
            size = os.fstat(fh.fileno()).st_size
    except (OSError, InputError) as exc:
        raise BaseModelError(f"{path} is not a readable safetensors file ({exc})") from None
    if not isinstance(header, dict):
        raise BaseModelError(f"{path} is not a safetensors file (its header is not a JSON object)")
    for name, entry in header.items():
        if name != "__metadata__" and not (_valid_entry(entry) and 8 + n + entry["data_offsets"][1] <= size):
            raise BaseModelError(f"{path}: the header entry of {name!r} is not a tensor within the file")
    return header, 8 + n


def _read_json_object(path: Path, what: str) -> dict[str, Any]:
    try:
        value = read_json(path, what=what)
    except InputError as exc:
        raise BaseModelError(str(exc)) from None
    if not isinstance(value, dict):
        raise BaseModelError(f"{path} is not a JSON object")
    return value


def _valid_entry(entry: Any) -> bool:
    """A safetensors header entry: a dtype name, a shape of sizes and a (begin, end) byte range."""
    if not isinstance(entry, dict) or not isinstance(entry.get("dtype"), str):
        return False
    shape, offsets = entry.get("shape"), entry.get("data_offsets")
    return (
        isinstance(shape, list) and all(isinstance(n, int) and n >= 0 for n in shape)
        and isinstance(offsets, list) and len(offsets) == 2 and all(isinstance(n, int) for n in offsets)
        and 0 <= offsets[0] <= offsets[1]
    )


class Checkpoint:
    """A local Hugging Face model directory (``config.json`` + safetensors weights)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path).resolve()
        if not self.path.is_dir():
            raise BaseModelError(f"base model directory {path} does not exist")
        config_path = self.path / "config.json"
        if not config_path.is_file():
            raise BaseModelError(f"{path} is not a Hugging Face model directory: no config.json")
        self.config: dict[str, Any] = _read_json_object(config_path, "model config")
        # the safetensors files, and a sharded checkpoint's index (tensor name -> shard; {} for one file)
        self.weight_files, self.weight_map = self._weights()
        self.tensors = self._locate_tensors()

    def _weights(self) -> tuple[list[str], dict[str, str]]:
        """The safetensors files and, when the checkpoint is sharded, its index's weight map."""
        index = self.path / INDEX_FILE
        if index.is_file():
            weight_map = _read_json_object(index, "safetensors index").get("weight_map")
            if not isinstance(weight_map, dict) or not all(
                isinstance(f, str) and f.endswith(".safetensors") and Path(f).name == f for f in weight_map.values()
            ):
                raise BaseModelError(f"{index} is not a valid safetensors index: its weight_map must map tensor "
                                     "names to shard file names in the same directory")
            files = sorted(set(weight_map.values()))
            missing = [f for f in files if not (self.path / f).is_file()]
            if missing:
                raise BaseModelError(f"{self.path}: shard(s) named in {INDEX_FILE} are missing: {', '.join(missing)}")
            return files, weight_map
        if (self.path / SINGLE_FILE).is_file():
            return [SINGLE_FILE], {}
        others = sorted(p.name for p in self.path.iterdir() if p.suffix in (".bin", ".pt", ".pth", ".h5"))
        hint = f" (found {', '.join(others)}; re-save it with save_pretrained(safe_serialization=True))" if others else ""
        raise BaseModelError(f"{self.path} has no safetensors weights ({SINGLE_FILE} or {INDEX_FILE}){hint}")

    def _locate_tensors(self) -> dict[str, TensorInfo]:
        """Every tensor's place; in a sharded checkpoint, in the shard its index names (a shard may hold a
        stale copy of a tensor that another shard replaces, as a ``checkout --link`` writes them)."""
        tensors: dict[str, TensorInfo] = {}
        for file in self.weight_files:
            header, data_start = read_safetensors_header(self.path / file)
            for name, entry in header.items():
                if name == "__metadata__" or self.weight_map.get(name, file) != file:
                    continue
                begin, end = entry["data_offsets"]
                tensors[name] = TensorInfo(
                    name, file, entry["dtype"], tuple(entry["shape"]), data_start + begin, data_start + end
                )
        return tensors

    @property
    def sharded(self) -> bool:
        """True when the weights are split over shards listed in an index file."""
        return (self.path / INDEX_FILE).is_file()

    @functools.cached_property
    def fingerprint(self) -> str:
        """sha256 of the config and the tensor manifest (names, dtypes, shapes).

        Tensor *contents* are hashed lazily, per tensor a delta touches
        (:meth:`tensor_hash`), and verified at checkout.
        """
        manifest = {name: [t.dtype, list(t.shape)] for name, t in sorted(self.tensors.items())}
        return sha256_json({"config": self.config, "tensors": manifest})

    def info(self, name: str) -> TensorInfo:
        """Location of tensor ``name``; :class:`BaseModelError` when the base lacks it."""
        try:
            return self.tensors[name]
        except KeyError:
            raise BaseModelError(f"the base model has no tensor named {name!r}") from None

    def read_bytes(self, name: str) -> bytes:
        """The raw bytes of one tensor."""
        t = self.info(name)
        with open(self.path / t.file, "rb") as fh:
            fh.seek(t.begin)
            return fh.read(t.end - t.begin)

    def read_tensor(self, name: str) -> torch.Tensor:
        """One tensor, loaded on its own (read straight into memory it owns)."""
        t = self.info(name)
        nbytes = math.prod(t.shape) * t.torch_dtype.itemsize
        if t.end - t.begin != nbytes:
            raise BaseModelError(f"{self.path / t.file}: the header gives tensor {name} a byte range that does "
                                 f"not fit its shape {list(t.shape)} and dtype {t.dtype}")
        # numpy's allocation: it asks the kernel for transparent huge pages on large buffers, which makes
        # first touching them (reading into them) about twice as fast as torch.empty's pages
        if not nbytes:
            return torch.empty(t.shape, dtype=t.torch_dtype)
        tensor = torch.from_numpy(np.empty(nbytes, dtype=np.uint8)).view(t.torch_dtype).reshape(t.shape)
        view = raw_view(tensor)
        with open(self.path / t.file, "rb", buffering=0) as fh:
            fh.seek(t.begin)
            got = 0
            while got < len(view) and (n := fh.readinto(view[got:])):
                got += n
        if got != len(view):
            raise BaseModelError(f"{self.path / t.file} is truncated: tensor {name} is incomplete")
        return tensor

    def tensor_hash(self, name: str) -> str:
        """sha256 of one tensor's raw bytes."""
        return sha256_bytes(self.read_bytes(name))

    @functools.cached_property
    def orientations(self) -> dict[str, str]:
        """For each 2-D weight, ``linear`` or ``conv1d``, decided by the owning module's type."""
        return module_orientations(self.config, self.path, [n for n, t in self.tensors.items() if len(t.shape) == 2])

    def linear_shape(self, name: str) -> tuple[int, int]:
        """(d_out, d_in) of a 2-D weight in nn.Linear orientation, whatever its storage layout."""
        rows, cols = self.info(name).shape
        return (cols, rows) if self.orientations[name] == CONV1D else (rows, cols)

    def non_weight_files(self) -> list[Path]:
        """Top-level files to carry into a checkout (config, tokenizer, generation config, ...)."""
        return sorted(
            p for p in self.path.iterdir() if p.is_file() and p.suffix not in OTHER_WEIGHT_SUFFIXES and p.name != INDEX_FILE
        )


def from_pretrained(path: str | Path, **kwargs: Any) -> Any:
    """Load the model directory at ``path`` with the class its config names (:func:`model_class`), in eval mode."""
    import transformers

    config = transformers.AutoConfig.from_pretrained(path)
    return model_class(config).from_pretrained(path, config=config, **kwargs).eval()


def model_class(config: Any) -> type:
    """The transformers model class named by the config's ``architectures``, else a causal-LM auto class."""
    import transformers

    for name in getattr(config, "architectures", None) or []:
        cls = getattr(transformers, name, None)
        if cls is not None:
            return cls
    if getattr(config, "is_encoder_decoder", False):
        return transformers.AutoModelForSeq2SeqLM
    return transformers.AutoModelForCausalLM


def instantiate(config: Any) -> torch.nn.Module:
    """A randomly initialised model of the config's architecture (use under ``torch.device("meta")``)."""
    cls = model_class(config)
    return cls.from_config(config) if cls.__name__.startswith("AutoModel") else cls(config)


def resolve_module_name(model: torch.nn.Module, tensor_name: str) -> str | None:
    """Map a checkpoint key to the parameter name in ``model`` (handles a missing/extra base prefix)."""
    params = dict(model.named_parameters(remove_duplicate=False))
    prefix = getattr(model, "base_model_prefix", "")
    for candidate in (tensor_name, f"{prefix}.{tensor_name}", tensor_name.removeprefix(f"{prefix}.")):
        if candidate in params:
            return candidate
    return None


def module_orientations(config_dict: dict[str, Any], path: Path, names: list[str]) -> dict[str, str]:
    """Instantiate the architecture on the meta device and read each weight's module type."""
    from transformers import AutoConfig
    from transformers.pytorch_utils import Conv1D

    try:
        config = AutoConfig.from_pretrained(path)
        with torch.device("meta"):
            model = instantiate(config)
    except Exception as exc:  # an architecture transformers cannot build: orientation stays unknown
        log.warning("cannot build %s on the meta device (%s); weight orientation unknown", config_dict.get("model_type"), exc)
        return {}
    orientations: dict[str, str] = {}
    for name in names:
        param_name = resolve_module_name(model, name)
        if param_name is None or not param_name.endswith(".weight"):
            continue
        module = model.get_submodule(param_name.removesuffix(".weight"))
        orientations[name] = CONV1D if isinstance(module, Conv1D) else LINEAR
    return orientations
