"""Materialise a version: write an HF directory, or build the model in memory.

Writing streams: a shard that no delta touches is copied (or, with ``link``,
hard-linked: fast, but the checkout then shares those files with the base, so
writing into them in place would change the base too); a touched shard is
copied and only the byte ranges of its edited tensors are rewritten, one tensor
at a time. The safetensors header is kept
byte-for-byte (shapes and dtypes do not change), so untouched tensors stay
bitwise equal to the base. The directory is assembled beside ``out`` and renamed
into place, so an interrupted checkout never leaves a half-written model.

What an edited parameter becomes is a :class:`Composition`: its factors (computed
only when needed, sequential or re-solved) and, per parameter, a key into the
composed-parameter cache, so a parameter already composed is read back, not redone.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import shutil
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .cache import ComposedCache, tensor_bytes
from .checkpoint import INDEX_FILE, Checkpoint, model_class, resolve_module_name
from .compose import apply_factors
from .delta import Factors
from .errors import BaseModelError, OutputDirError
from .hashing import sha256_bytes

log = logging.getLogger(__name__)

PROVENANCE_FILE = "editstore.json"
Progress = Callable[[str], None]


def check_output_dir(out: Path) -> None:
    """``out`` must be missing or an empty directory."""
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise OutputDirError(f"--out {out} exists and is not an empty directory")


@contextlib.contextmanager
def staged_output(out: Path) -> Iterator[Path]:
    """A staging directory beside ``out`` (missing or empty) that becomes ``out`` when the block succeeds.

    On any failure the staging directory is removed and ``out`` is left as it was.
    """
    check_output_dir(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = out.parent / f".{out.name}.editstore-tmp-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        yield staging
        if out.exists():
            out.rmdir()
        os.replace(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _verify(raw: bytes, name: str, expected: Mapping[str, str]) -> None:
    want = expected.get(name)
    if want is not None and sha256_bytes(raw) != want:
        raise BaseModelError(
            f"base tensor {name} no longer matches the checkpoint the store registered; "
            "the base directory was modified after `editstore init`"
        )


def _link_or_copy(src: Path, dst: Path, link: bool) -> None:
    if link:
        try:
            os.link(src, dst)
            return
        except OSError:  # another filesystem
            pass
    shutil.copyfile(src, dst)


@dataclass
class Composition:
    """The edited parameters of a version and how to compose each.

    ``factors`` is called at most once, on the first parameter the cache misses; it
    returns every parameter's factors in nn.Linear orientation.
    """

    params: Sequence[str]
    factors: Callable[[], Mapping[str, Sequence[Factors]]]
    keys: Mapping[str, str] = field(default_factory=dict)
    cache: ComposedCache | None = None

    @classmethod
    def of(cls, factors: Mapping[str, Sequence[Factors]]) -> Composition:
        """A composition of factors already in hand, without a cache."""
        return cls(sorted(factors), lambda: factors)

    @functools.cached_property
    def _factors(self) -> Mapping[str, Sequence[Factors]]:
        return self.factors()

    def cached(self, param: str) -> torch.Tensor | None:
        """The composed parameter from the cache, or None."""
        key = self.keys.get(param)
        return self.cache.get(key) if self.cache is not None and key else None

    def compose(self, param: str, weight: torch.Tensor, *, orientation: str, device: torch.device) -> torch.Tensor:
        """``weight`` plus the parameter's factors (and remember the result in the cache)."""
        new = apply_factors(weight, self._factors.get(param, ()), orientation=orientation, device=device)
        key = self.keys.get(param)
        if self.cache is not None and key:
            self.cache.put(key, new.cpu())
        return new


def _composed(base: Checkpoint, composition: Composition, param: str, weight: torch.Tensor | None,
              *, base_hashes: Mapping[str, str], device: torch.device) -> torch.Tensor:
    """The new value of ``param``: from the cache, or the verified base weight plus its factors."""
    info = base.info(param)
    hit = composition.cached(param)
    if hit is not None and tuple(hit.shape) == info.shape and hit.dtype == info.torch_dtype:
        return hit
    raw = base.read_bytes(param)
    _verify(raw, param, base_hashes)
    if weight is None:
        weight = torch.frombuffer(bytearray(raw), dtype=info.torch_dtype).reshape(info.shape)
    return composition.compose(param, weight, orientation=base.orientations[param], device=device)


def write_checkout(
    base: Checkpoint,
    composition: Composition,
    out: Path,
    *,
    device: torch.device,
    base_hashes: Mapping[str, str],
    provenance: dict[str, Any],
    link: bool = False,
    progress: Progress | None = None,
) -> Path:
    """Write the composed version as a Hugging Face directory at ``out``; return ``out``."""
    out = Path(out).resolve()
    with staged_output(out) as staging:
        for f in base.non_weight_files():
            shutil.copyfile(f, staging / f.name)
        if base.sharded:
            shutil.copyfile(base.path / INDEX_FILE, staging / INDEX_FILE)
        by_file: dict[str, list[str]] = {}
        for param in composition.params:
            by_file.setdefault(base.info(param).file, []).append(param)
        for file in base.weight_files:
            touched = sorted(by_file.get(file, []))
            if not touched:
                _link_or_copy(base.path / file, staging / file, link)
                continue
            shutil.copyfile(base.path / file, staging / file)
            with open(staging / file, "r+b") as fh:
                for param in touched:
                    new = _composed(base, composition, param, None, base_hashes=base_hashes, device=device)
                    fh.seek(base.info(param).begin)
                    fh.write(tensor_bytes(new.cpu()))
                    if progress:
                        progress(param)
                fh.flush()
                os.fsync(fh.fileno())
        (staging / PROVENANCE_FILE).write_text(json.dumps(provenance, indent=2) + "\n")
    log.info("checked out %d edited parameter(s) into %s", len(composition.params), out)
    return out


def load_model(
    base: Checkpoint,
    composition: Composition | Mapping[str, Sequence[Factors]],
    *,
    device: torch.device,
    base_hashes: Mapping[str, str],
    progress: Progress | None = None,
) -> torch.nn.Module:
    """Load the base once with ``from_pretrained`` and compose the edited parameters in place."""
    from transformers import AutoConfig

    if not isinstance(composition, Composition):
        composition = Composition.of(composition)
    config = AutoConfig.from_pretrained(base.path)
    model = model_class(config).from_pretrained(base.path, dtype="auto").to(device)
    model.eval()
    with torch.no_grad():
        for param in sorted(composition.params):
            name = resolve_module_name(model, param)
            if name is None:
                raise BaseModelError(f"the loaded model has no parameter matching {param!r}")
            p = model.get_parameter(name)
            p.copy_(_composed(base, composition, param, p, base_hashes=base_hashes, device=device))
            if progress:
                progress(param)
    return model

