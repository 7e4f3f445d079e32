"""Materialise a version: write an HF directory, or build the model in memory.

Writing streams: a shard that no delta touches is never read. It is cloned (a
copy-on-write reflink, where the filesystem has them: instant and independent),
else copied; with ``link`` it is hard-linked to the base instead where reflinks are
missing (instant, but the checkout then shares that file with the base: a
``save_pretrained`` into it would overwrite the base; ``editstore.json`` lists such
shards). A touched shard is copied and only the byte ranges of its edited tensors
are rewritten, one tensor at a time. Like ``save_pretrained``, the output is not
fsynced: a killed process leaves no partial directory, a power loss may, and the
checkout can always be written again. The safetensors header is kept
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
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .cache import ComposedCache, tensor_bytes
from .checkpoint import INDEX_FILE, Checkpoint, from_pretrained, resolve_module_name
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


FICLONE = 0x40049409  # Linux ioctl: make dst a copy-on-write clone of src


def _link_or_copy(src: Path, dst: Path, link: bool) -> str:
    """Place ``src`` at ``dst``: reflink, else (with ``link``) a hard link, else a copy; say which."""
    with contextlib.suppress(OSError, ImportError):
        import fcntl

        with open(src, "rb") as s, open(dst, "wb") as d:
            fcntl.ioctl(d.fileno(), FICLONE, s.fileno())
        return "reflink"
    dst.unlink(missing_ok=True)
    if link:
        with contextlib.suppress(OSError):
            os.link(src, dst)
            return "link"
    shutil.copyfile(src, dst)
    return "copy"


@dataclass
class Composition:
    """The edited parameters of a version and how to compose each.

    ``factors`` is called at most once, when the cache misses a parameter; it returns
    every parameter's factors in nn.Linear orientation. :meth:`start` reads the cache
    hits (and, when ``factors_in_background`` and some parameter misses, the factors) in
    a background thread, so that loading or copying the base overlaps with it: file
    reads and hashing release the GIL.
    """

    params: Sequence[str]
    factors: Callable[[], Mapping[str, Sequence[Factors]]]
    keys: Mapping[str, str] = field(default_factory=dict)
    cache: ComposedCache | None = None
    factors_in_background: bool = False  # only for a ``factors`` that touches no SQLite connection
    _future: Future[dict[str, torch.Tensor | None]] | None = field(default=None, init=False, repr=False)

    @classmethod
    def of(cls, factors: Mapping[str, Sequence[Factors]]) -> Composition:
        """A composition of factors already in hand, without a cache."""
        return cls(sorted(factors), lambda: factors)

    @functools.cached_property
    def _factors(self) -> Mapping[str, Sequence[Factors]]:
        return self.factors()

    def start(self) -> None:
        """Begin reading what the cache holds (and maybe the factors) in the background."""
        if self._future is None:
            pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="editstore-prefetch")
            self._future = pool.submit(self._fetch)
            pool.shutdown(wait=False)

    def _fetch(self) -> dict[str, torch.Tensor | None]:
        hits = {p: self.cache.get(self.keys[p]) if self.cache is not None and p in self.keys else None for p in self.params}
        if self.factors_in_background and any(hit is None for hit in hits.values()):
            self._factors  # noqa: B018 (loads the cached property)
        return hits

    def cached(self, param: str) -> torch.Tensor | None:
        """The composed parameter from the cache, or None."""
        self.start()
        assert self._future is not None
        return self._future.result().get(param)

    def compose(self, param: str, weight: torch.Tensor, *, orientation: str, device: torch.device) -> torch.Tensor:
        """``weight`` plus the parameter's factors (and remember the result in the cache)."""
        new = apply_factors(weight, self._factors.get(param, ()), orientation=orientation, device=device)
        key = self.keys.get(param)
        if self.cache is not None and key:
            self.cache.put(key, new.cpu())
        return new


def _composed(base: Checkpoint, composition: Composition, param: str, *, base_hashes: Mapping[str, str],
              device: torch.device) -> torch.Tensor:
    """The new value of ``param``: from the cache, or the verified base weight plus its factors."""
    info = base.info(param)
    hit = composition.cached(param)
    if hit is not None and tuple(hit.shape) == info.shape and hit.dtype == info.torch_dtype:
        return hit
    raw = base.read_bytes(param)
    _verify(raw, param, base_hashes)
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
        composition.start()
        for f in base.non_weight_files():
            shutil.copyfile(f, staging / f.name)
        if base.sharded:
            shutil.copyfile(base.path / INDEX_FILE, staging / INDEX_FILE)
        linked: list[str] = []
        by_file: dict[str, list[str]] = {}
        for param in composition.params:
            by_file.setdefault(base.info(param).file, []).append(param)
        for file in base.weight_files:
            touched = sorted(by_file.get(file, []))
            if not touched:
                if _link_or_copy(base.path / file, staging / file, link) == "link":
                    linked.append(file)
                continue
            shutil.copyfile(base.path / file, staging / file)
            with open(staging / file, "r+b") as fh:
                for param in touched:
                    new = _composed(base, composition, param, base_hashes=base_hashes, device=device)
                    fh.seek(base.info(param).begin)
                    fh.write(tensor_bytes(new.cpu()))
                    if progress:
                        progress(param)
        provenance = {**provenance, "hard_linked_to_base": linked}
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
    into: torch.nn.Module | None = None,
) -> torch.nn.Module:
    """Load the base once with ``from_pretrained`` and swap the composed weights into its parameters.

    ``into``: a base model already loaded (and not edited) to compose into instead.
    """
    if not isinstance(composition, Composition):
        composition = Composition.of(composition)
    composition.start()
    model = into if into is not None else from_pretrained(base.path, dtype="auto").to(device)
    model.eval()
    with torch.no_grad():
        for param in sorted(composition.params):
            name = resolve_module_name(model, param)
            if name is None:
                raise BaseModelError(f"the loaded model has no parameter matching {param!r}")
            p = model.get_parameter(name)
            new = _composed(base, composition, param, base_hashes=base_hashes, device=device)
            p.data = new.to(device=p.device, dtype=p.dtype)
            if progress:
                progress(param)
    return model

