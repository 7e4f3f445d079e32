"""Materialise a version: write an HF directory, or build the model in memory.

Writing streams: a shard that no delta touches is never read. It is cloned (a
copy-on-write reflink, where the filesystem has them: instant and independent),
else copied; with ``link`` it is hard-linked to the base instead where reflinks are
missing (instant, but the checkout then shares that file with the base: a
``save_pretrained`` into it would overwrite the base; ``editstore.json`` lists such
shards). A touched shard is cloned or copied, never linked, and only the byte
ranges of its edited tensors are rewritten, one tensor at a time, while other
threads place the shards and write. Like ``save_pretrained``, the output is not
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
import json
import logging
import os
import shutil
import tempfile
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..core.hashing import sha256_bytes
from ..core.paths import staged_directory
from ..errors import BaseModelError
from ..model.checkpoint import INDEX_FILE, Checkpoint, from_pretrained, raw_view, resolve_module_name
from ..model.delta import Factors
from .cache import ComposedCache
from .sequential import apply_factors

log = logging.getLogger(__name__)

PROVENANCE_FILE = "editstore.json"
EDITED_SHARD = "zz-editstore-edited.safetensors"  # sorts after model-*, pytorch_model-* and itself
COPY_THREADS = 4  # shards copied at once: 7.5 GB took 10.7 s one at a time, 5.8 s four at a time (2 cores, SSD)
Progress = Callable[[str], None]


def staged_output(out: Path) -> contextlib.AbstractContextManager[Path]:
    """A staging directory beside ``out`` (missing or empty) that becomes ``out`` when the block succeeds.

    On any failure the staging directory is removed and ``out`` is left as it was.
    """
    return staged_directory(out, f"--out {out}")


def _verify(raw: bytes | memoryview, name: str, expected: Mapping[str, str]) -> None:
    want = expected.get(name)
    if want is not None and sha256_bytes(raw) != want:
        raise BaseModelError(
            f"base tensor {name} no longer matches the checkpoint the store registered; "
            "the base directory was modified after `editstore init`"
        )


FICLONE = 0x40049409  # Linux ioctl: make dst a copy-on-write clone of src


def _place(src: Path, dst: Path, *, link: bool) -> str:
    """Put ``src`` at ``dst``: a reflink, else (with ``link``) a hard link, else a copy; say which."""
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
    shutil.copyfile(src, dst)  # sendfile: inside the kernel
    return "copy"


@dataclass
class Composition:
    """The edited parameters of a version and how to compose each.

    ``factors`` is called at most once, when the cache misses a parameter; it returns
    every parameter's factors in nn.Linear orientation. :meth:`start` reads the cache
    hits, and then (when ``factors_in_background`` and some parameter misses) the
    factors, in a background thread, so that loading or copying the base overlaps with
    them: file reads and hashing release the GIL.
    """

    params: Sequence[str]
    factors: Callable[[], Mapping[str, Sequence[Factors]]]
    keys: Mapping[str, str] = field(default_factory=dict)
    cache: ComposedCache | None = None
    factors_in_background: bool = False  # only for a ``factors`` that touches no SQLite connection
    _hits: Future[dict[str, torch.Tensor | None]] | None = field(default=None, init=False, repr=False)
    _loaded: Future[Mapping[str, Sequence[Factors]] | None] | None = field(default=None, init=False, repr=False)
    _factors: Mapping[str, Sequence[Factors]] | None = field(default=None, init=False, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)

    @classmethod
    def of(cls, factors: Mapping[str, Sequence[Factors]]) -> Composition:
        """A composition of factors already in hand, without a cache."""
        return cls(sorted(factors), lambda: factors)

    def start(self, *, factors: bool = True) -> None:
        """Begin reading what the cache holds (and, with ``factors``, maybe the factors) in the background."""
        if self._hits is None:
            pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="editstore-prefetch")
            self._hits = pool.submit(self._read_hits)
            if factors and self.factors_in_background:
                self._loaded = pool.submit(self._factors_if_missed)  # after the hits, in the same thread
            pool.shutdown(wait=False)

    def _read_hits(self) -> dict[str, torch.Tensor | None]:
        return {p: self.cache.get(self.keys[p]) if self.cache is not None and p in self.keys else None for p in self.params}

    def _missed(self) -> bool:
        """Whether some parameter is not in the cache (waits for the cache to be read)."""
        self.start()
        assert self._hits is not None
        return any(hit is None for hit in self._hits.result().values())

    def _factors_if_missed(self) -> Mapping[str, Sequence[Factors]] | None:
        return self.factors() if self._missed() else None

    def prepare(self) -> None:
        """Compute the factors now if a parameter misses the cache (and they are not being read in the
        background), so that whatever computing them loads (a re-solve's own model) is let go before the
        caller loads more."""
        self.start()
        if self._loaded is None and self._missed():  # (the factors read in the background need no wait)
            self.all_factors()

    def cached(self, param: str) -> torch.Tensor | None:
        """The composed parameter from the cache, or None."""
        self.start()
        assert self._hits is not None
        return self._hits.result().get(param)

    def all_factors(self) -> Mapping[str, Sequence[Factors]]:
        """Every parameter's factors: from the background read when it ran, else read now."""
        with self._lock:
            if self._factors is None:
                loaded = self._loaded.result() if self._loaded is not None else None
                self._factors = loaded if loaded is not None else self.factors()
            return self._factors

    def compose(self, param: str, weight: torch.Tensor, *, orientation: str, device: torch.device,
                consume: bool = False) -> torch.Tensor:
        """``weight`` plus the parameter's factors.

        ``consume``: ``weight`` may be updated in place (see :func:`apply_factors`).
        """
        return apply_factors(weight, self.all_factors().get(param, ()), orientation=orientation, device=device,
                             consume=consume)

    def remember(self, param: str, new: torch.Tensor) -> None:
        """Keep a freshly composed parameter in the cache (when there is one)."""
        key = self.keys.get(param)
        if self.cache is not None and key:
            self.cache.put(key, new.cpu())


def _base_weight(base: Checkpoint, param: str, base_hashes: Mapping[str, str]) -> torch.Tensor:
    """The base's tensor ``param``, read on its own and checked against the hash the store registered."""
    weight = base.read_tensor(param)
    _verify(raw_view(weight), param, base_hashes)
    return weight


def composed_params(base: Checkpoint, composition: Composition, *, base_hashes: Mapping[str, str],
                    device: torch.device) -> Iterator[tuple[str, torch.Tensor, bool]]:
    """Each edited parameter's new value, in order, and whether it was composed now (else it came from the cache).

    The base weight of the next parameter to compose is read before this one is composed, so that
    the products run back to back while the results are written.
    """

    def hit(param: str) -> torch.Tensor | None:
        info = base.info(param)
        cached = composition.cached(param)
        ok = cached is not None and tuple(cached.shape) == info.shape and cached.dtype == info.torch_dtype
        return cached if ok else None

    params = sorted(composition.params)
    hits = {p: hit(p) for p in params}
    misses = iter([p for p in params if hits[p] is None])
    weights: dict[str, torch.Tensor] = {}

    def read_next() -> None:
        param = next(misses, None)
        if param is not None:
            weights[param] = _base_weight(base, param, base_hashes)

    read_next()
    for param in params:
        if param not in weights:
            yield param, hits.pop(param), False
            continue
        read_next()
        weight = weights.pop(param)
        yield param, composition.compose(param, weight, orientation=base.orientations[param], device=device,
                                         consume=True), True


def _reflinks(src: Path, directory: Path) -> bool:
    """True when files of ``src``'s filesystem can be cloned into ``directory`` (tried on a probe)."""
    probe = directory / ".reflink-probe"
    try:
        return _place(src, probe, link=False) == "reflink"
    finally:
        probe.unlink(missing_ok=True)


def _edited_shard(base: Checkpoint, params: Sequence[str], path: Path) -> dict[str, int]:
    """Lay out ``path`` as a safetensors file holding ``params`` (the base's dtypes and shapes), data to be
    written later; return each tensor's absolute offset in it."""
    header: dict[str, Any] = {"__metadata__": {"format": "pt", "editstore": "the edited tensors of this version"}}
    offset = 0
    for param in params:
        info = base.info(param)
        header[param] = {"dtype": info.dtype, "shape": list(info.shape), "data_offsets": [offset, offset + info.end - info.begin]}
        offset += info.end - info.begin
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # the data starts 8-byte aligned, as safetensors writes it
    with open(path, "wb") as fh:
        fh.write(len(text).to_bytes(8, "little") + text)
        fh.truncate(8 + len(text) + offset)
    start = 8 + len(text)
    return {p: start + header[p]["data_offsets"][0] for p in params}


def _write_at(path: Path, offset: int, tensor: torch.Tensor) -> None:
    """Overwrite the bytes of ``path`` at ``offset`` with those of ``tensor``."""
    with open(path, "r+b") as fh:
        fh.seek(offset)
        fh.write(raw_view(tensor.cpu().contiguous()))


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
    """Write the composed version as a Hugging Face directory at ``out``; return ``out``.

    ``COPY_THREADS`` threads place the shards, those holding edited tensors first, while this one
    composes; two more write each composed tensor into its shard (once that is in place)
    and into the cache. With ``link`` on a sharded base whose filesystem has no reflinks, every shard
    is hard-linked, touched ones too, and the edited tensors go to one more shard,
    ``EDITED_SHARD``, which the index names for them (the linked shards keep the base's bytes, unread;
    the shard sorts after the base's, as loaders that read every shard in name order need; a base that
    already has such a shard, a linked checkout itself, is copied as usual).
    """
    out = Path(out).resolve()
    with staged_output(out) as staging:
        composition.start(factors=False)  # this thread reads them: it has nothing else to do meanwhile
        for f in base.non_weight_files():
            shutil.copyfile(f, staging / f.name)
        by_file: dict[str, list[str]] = {}
        for param in sorted(composition.params):
            by_file.setdefault(base.info(param).file, []).append(param)
        order = sorted(base.weight_files, key=lambda f: f not in by_file)  # touched shards first
        # transformers reads every shard in name order, so the edited shard must sort after the base's
        separate = (link and base.sharded and bool(by_file) and EDITED_SHARD > max(base.weight_files)
                    and not _reflinks(base.path / INDEX_FILE, staging))
        offsets: dict[str, int] = {}
        if separate:
            offsets = _edited_shard(base, sorted(composition.params), staging / EDITED_SHARD)
            index = json.loads((base.path / INDEX_FILE).read_text())
            index["weight_map"].update({p: EDITED_SHARD for p in composition.params})
            (staging / INDEX_FILE).write_text(json.dumps(index, indent=2) + "\n")
        elif base.sharded:
            shutil.copyfile(base.path / INDEX_FILE, staging / INDEX_FILE)
        with ThreadPoolExecutor(max_workers=COPY_THREADS, thread_name_prefix="editstore-copy") as copier, \
                ThreadPoolExecutor(max_workers=2, thread_name_prefix="editstore-write") as writer:
            # a touched shard is hard-linked only when its edited tensors go to the edited shard
            placed = {f: copier.submit(_place, base.path / f, staging / f, link=link and (separate or f not in by_file))
                      for f in order}

            def write(param: str, new: torch.Tensor) -> None:
                if separate:
                    _write_at(staging / EDITED_SHARD, offsets[param], new)
                    return
                info = base.info(param)
                placed[info.file].result()
                _write_at(staging / info.file, info.begin, new)

            in_flight: list[Future[None]] = []
            done: str | None = None

            def wait() -> None:  # for the weight in flight: then it is written, and counts as done
                for future in in_flight:
                    future.result()
                if done is not None and progress:
                    progress(done)

            try:
                for param, new, fresh in composed_params(base, composition, base_hashes=base_hashes, device=device):
                    wait()  # one composed weight in flight at a time
                    in_flight = [writer.submit(write, param, new)]
                    if fresh:
                        in_flight.append(writer.submit(composition.remember, param, new))
                    done = param
                wait()
            except BaseException:
                for future in placed.values():
                    future.cancel()
                raise
        linked = [f for f, future in placed.items() if future.result() == "link"]
        provenance = {**provenance, "hard_linked_to_base": sorted(linked)}
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
    device_map: str | dict[str, Any] | None = None,
) -> torch.nn.Module:
    """Load the base once with ``from_pretrained`` and swap the composed weights into its parameters.

    ``into``: a base model already loaded (and not edited) to compose into instead. ``device_map``
    (``"auto"`` or module -> device, ``"cpu"`` or ``"disk"``): the base is dispatched by accelerate
    (through ``from_pretrained``), each composed weight goes to its parameter's device, and the weight
    of an offloaded module replaces the one its offload keeps (:func:`_replace_offloaded`), so no
    offloaded module is ever materialised.
    """
    if not isinstance(composition, Composition):
        composition = Composition.of(composition)
    composition.start()
    if into is None:
        composition.prepare()  # so that a re-solve's own model and the base are not in memory together
    if into is not None:
        model = into
    elif device_map is not None:
        model = dispatched(base, device_map)
    else:
        model = from_pretrained(base.path, dtype="auto").to(device)
    model.eval()
    with torch.no_grad():
        for param, new, fresh in composed_params(base, composition, base_hashes=base_hashes, device=device):
            name = resolve_module_name(model, param)
            if name is None:
                raise BaseModelError(f"the loaded model has no parameter matching {param!r}")
            p = model.get_parameter(name)
            if p.device.type == "meta":
                _replace_offloaded(model, name, new.to(dtype=p.dtype))
            else:
                p.data = new.to(device=p.device, dtype=p.dtype)
            if fresh:
                composition.remember(param, new)
            if progress:
                progress(param)
    return model


def dispatched(base: Checkpoint, device_map: str | dict[str, Any]) -> torch.nn.Module:
    """The base loaded by ``from_pretrained`` over the devices of ``device_map``, with a folder for the weights
    it offloads to disk that lives as long as the model."""
    import weakref

    folder = tempfile.mkdtemp(prefix="editstore-offload-")
    try:
        model = from_pretrained(base.path, dtype="auto", device_map=device_map, offload_folder=folder)
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    weakref.finalize(model, shutil.rmtree, folder, True)
    return model


def _replace_offloaded(model: torch.nn.Module, name: str, value: torch.Tensor) -> None:
    """Put ``value`` where accelerate keeps the offloaded parameter ``name``: its hook's weights map, on disk
    (a ``.dat`` file in the offload folder, as accelerate writes them) when the offload is on disk."""
    from accelerate.utils import offload_weight

    module_name, _, leaf = name.rpartition(".")
    module = model.get_submodule(module_name)
    hook = getattr(module, "_hf_hook", None)
    hooks = getattr(hook, "hooks", [hook]) if hook is not None else []  # a SequentialHook holds several
    weights_map = next((h.weights_map for h in hooks if getattr(h, "weights_map", None) is not None), None)
    if weights_map is None:
        raise BaseModelError(f"{name} is offloaded, but its module keeps no weights map to update")
    loader, key = weights_map.dataset, weights_map.prefix + leaf
    if getattr(loader, "save_folder", None):
        offload_weight(value.cpu(), key, loader.save_folder, index=loader.index)  # a .dat file; the index entry names it
        loader.state_dict.pop(key, None)
    else:
        loader.state_dict[key] = value.cpu()
