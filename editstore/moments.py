"""Second-moment statistics in the store: Σ per module as a content-addressed object.

A stats object is a safetensors file with ``sigma`` (d_in, d_in, float32) = E[k kᵀ]
and the number of token positions it averages. Rows of the ``stats`` table key it by
base fingerprint, module, corpus (sha256 of the corpus file, or ``import:<sha256>``
for an imported ROME ``.npz``) and sample count; they belong to no commit, and gc
keeps them.
"""

from __future__ import annotations

import io
import logging
import math
import zipfile
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from .compose.materialise import load_model
from .core.hashing import canonical_json, sha256_bytes
from .core.inputs import loads, read_bytes
from .core.records import now
from .errors import BaseModelError, EditStoreError, MissingStatsError
from .methods import edited_modules, method
from .methods.hparams import Hparams
from .model.stats import BATCH, second_moment

if TYPE_CHECKING:
    from .store import Store

log = logging.getLogger(__name__)

ProgressFactory = Callable[[str, int], Callable[[int], None]]  # (what, total) -> advance(n)

CORPUS_FILE = "corpus.txt"  # the world's text, one training line per line (for Σ): biographies, or an encoder-decoder's inputs
IMPORTED = "import:"


class StatsError(EditStoreError):
    """Statistics cannot be computed or imported (no corpus, a bad file, an unknown module)."""


@dataclass(frozen=True)
class StatsRow:
    module: str
    corpus: str
    samples: int
    count: int
    object: str
    source: str
    created: str


@dataclass(frozen=True)
class Corpus:
    """A corpus file read once: its bytes' sha256 (the stats key) and its texts on demand."""

    path: Path
    data: bytes
    digest: str

    def texts(self, samples: int) -> list[str]:
        """Up to ``samples`` texts: one per non-empty line, or a JSONL line's "text" field."""
        texts = []
        for n, line in enumerate(self.data.decode("utf-8", errors="replace").splitlines(), 1):
            if not line.strip():
                continue
            if self.path.suffix == ".jsonl":
                row = loads(line, source=f"{self.path}:{n}")
                if not isinstance(row, dict) or not isinstance(row.get("text"), str):
                    raise StatsError(f'{self.path}:{n}: a JSONL corpus needs one object with a "text" string per line')
                line = row["text"]
            texts.append(line)
            if len(texts) >= samples:
                break
        if not texts:
            raise StatsError(f"corpus {self.path} has no text")
        return texts


def read_corpus(path: str | Path) -> Corpus:
    """Read a text file (one text per line) or JSONL (a "text" field per line) as a :class:`Corpus`."""
    path = Path(path)
    data = read_bytes(path, what="corpus")
    return Corpus(path, data, sha256_bytes(data))


def stats_rows(store: Store, module: str | None = None) -> list[StatsRow]:
    """Stored statistics of the store's base, optionally of one module."""
    where, args = "base = ?", [store.base_fingerprint]
    if module:
        where, args = where + " AND module = ?", args + [module]
    rows = store.db["stats"].rows_where(where, args, order_by="module, created")
    return [StatsRow(r["module"], r["corpus"], r["samples"], r["count"], r["object"], r["source"], r["created"]) for r in rows]


def load_sigma(store: Store, row: StatsRow) -> torch.Tensor:
    """Σ of a stats row, verified against its object id."""
    return st_load(store.objects.read(row.object))["sigma"]


def find_stats(store: Store, module: str, corpus: str | None, samples: int) -> StatsRow | None:
    """The stats of exactly this corpus and sample count, else the newest imported ones.

    With ``corpus`` None (no corpus is configured) any stored stats of the module will do, newest first.
    """
    rows = stats_rows(store, module)
    exact = [r for r in rows if r.corpus == corpus and r.samples == samples]
    imported = [r for r in rows if r.corpus.startswith(IMPORTED)]
    anything = rows if corpus is None else []
    return (exact or imported[-1:] or anything[-1:] or [None])[0]


def save_stats(store: Store, module: str, sigma: torch.Tensor, count: int, *, corpus: str, samples: int, source: str) -> StatsRow:
    """Write Σ as an object and its row (replacing a row with the same key)."""
    # one metadata key holding canonical JSON: safetensors writes several keys in an order that varies
    # between processes, which would give the same Σ another object id in each
    blob = st_save({"sigma": sigma.float().cpu().contiguous()},
                   metadata={"editstore": canonical_json({"module": module, "count": count})})
    with store.locked():
        oid = store.objects.write(blob)
        row = StatsRow(module, corpus, samples, count, oid, source, now())
        with store.db.atomic():
            store.db["stats"].insert({"base": store.base_fingerprint, **row.__dict__}, replace=True)
    log.info("stats for %s: %d positions, object %s", module, count, oid[:12])
    return row


def compute_stats(
    store: Store,
    model: torch.nn.Module,
    tokenizer: Any,
    modules: Sequence[str],
    corpus: Corpus,
    texts: Sequence[str],
    samples: int,
    *,
    progress: Callable[[int], None] | None = None,
    reduce: Callable[[list[torch.Tensor], list[int]], tuple[list[torch.Tensor], list[int]]] | None = None,
    save: bool = True,
) -> list[StatsRow]:
    """Stream ``texts`` (``corpus.texts(samples)``, or this process's share of them, whose sums ``reduce``
    adds up across processes) through ``model`` (the base) once; store Σ of every module's input (unless
    ``save`` is False: the processes that only contribute)."""
    _check_modules(model, modules)
    sigmas, counts = second_moment(model, tokenizer, texts, [model.get_submodule(m) for m in modules],
                                   progress=progress, reduce=reduce)
    if not save:
        return []
    return [
        save_stats(store, m, s, n, corpus=corpus.digest, samples=samples, source=corpus.path.name)
        for m, s, n in zip(modules, sigmas, counts)
    ]


def import_npz(store: Store, module: str, path: str | Path) -> StatsRow:
    """Import an original ROME/MEMIT stats file (``mom2.mom2``: Σ k kᵀ, ``mom2.count``) for ``module``."""
    path = Path(path)
    d_in = _module_input_dim(store, module)
    data = read_bytes(path, what="statistics file", max_bytes=d_in * d_in * 16 + (1 << 20))
    mom2 = _npz_member(path, data, "mom2.mom2", max_bytes=d_in * d_in * 16 + 65536)
    count = _npz_member(path, data, "mom2.count", max_bytes=65536)
    if mom2.shape != (d_in, d_in) or mom2.dtype.kind not in "fiu":
        raise StatsError(f"{path}: mom2.mom2 is {mom2.dtype} of shape {mom2.shape}; {module} needs real ({d_in}, {d_in})")
    if count.size != 1 or count.dtype.kind not in "iu" or not 0 < int(count.reshape(())) < 1 << 63:
        raise StatsError(f"{path}: mom2.count must be one positive whole number, got {count.dtype} {count.tolist()!r:.60}")
    count = int(count.reshape(()))
    sigma = torch.from_numpy(mom2.astype(np.float64)) / count  # stored as float32: it must be finite there
    if not torch.isfinite(sigma.float()).all():
        raise StatsError(f"{path}: mom2.mom2 / mom2.count has NaN or Inf entries, or entries beyond float32's range")
    diagonal = sigma.diagonal()
    if (diagonal < 0).any() or not diagonal.sum() > 0 or not torch.allclose(sigma, sigma.T, rtol=1e-4, atol=1e-8):
        raise StatsError(f"{path}: mom2.mom2 is not a second moment Σ k kᵀ (symmetric, with a positive diagonal)")
    return save_stats(store, module, sigma, count, corpus=IMPORTED + sha256_bytes(data), samples=count, source=path.name)


def _npz_member(path: Path, data: bytes, name: str, *, max_bytes: int) -> np.ndarray:
    """The array ``name`` of the ``.npz`` bytes ``data``, read without pickle and only when its
    uncompressed size is at most ``max_bytes`` (a zip bomb is refused before it is inflated)."""
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            try:
                info = archive.getinfo(f"{name}.npy")
            except KeyError:
                found = ", ".join(sorted(archive.namelist())[:8]) or "nothing"
                raise StatsError(f"{path} is not a ROME stats .npz: no array {name!r} (it holds {found})") from None
            if info.file_size > max_bytes:
                raise StatsError(f"{path}: {name} is {info.file_size} bytes uncompressed, more than the module needs")
            member = archive.read(info)
    except (OSError, ValueError, EOFError, RuntimeError, NotImplementedError, zipfile.BadZipFile, zlib.error) as exc:
        raise StatsError(f"{path} is not a ROME stats .npz with mom2.mom2 and mom2.count: {exc}") from None
    try:
        array = _read_npy(member)
    except (OSError, ValueError, EOFError) as exc:
        array = exc
    if not isinstance(array, np.ndarray):  # an error, or another archive: never unpickled
        raise StatsError(f"{path}: {name}.npy is not a .npy array of numbers")
    return array


def _read_npy(member: bytes) -> np.ndarray:
    """A ``.npy`` array whose header's shape and dtype fit in the bytes it came with (no pickle): a header
    that claims more is refused before numpy allocates it."""
    fh = io.BytesIO(member)
    version = np.lib.format.read_magic(fh)
    read_header = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}.get(version)
    if read_header is None:
        raise ValueError(f".npy format version {version} is not read here")
    shape, _, dtype = read_header(fh)
    if dtype.hasobject or math.prod(shape) * dtype.itemsize > len(member) - fh.tell():
        raise ValueError("its header claims more data than it holds")
    fh.seek(0)
    return np.load(fh, allow_pickle=False)


def _module_input_dim(store: Store, module: str) -> int:
    try:
        return store.base.linear_shape(f"{module}.weight")[1]
    except BaseModelError:
        raise StatsError(f"the base has no linear module {module!r}") from None


def _check_modules(model: torch.nn.Module, modules: Sequence[str]) -> None:
    names = dict(model.named_modules())
    missing = [m for m in modules if m not in names]
    if missing:
        raise StatsError(f"the base has no module {', '.join(missing)}")


def stats_corpus(store: Store, hp: Hparams) -> Path:
    """The corpus statistics come from: the hparams' ``stats.corpus``, else the world's corpus.txt."""
    return Path(hp.stats.corpus) if hp.stats.corpus else store.base.path / CORPUS_FILE


def sigmas_for(
    store: Store, hp: Hparams, tokenizer: Any, *, device: torch.device, progress: ProgressFactory | None = None
) -> dict[str, torch.Tensor]:
    """Σ of every module ``hp`` edits: from the store, or streamed through the base now and stored."""
    if not method(hp.method).needs_statistics:
        return {}
    path = stats_corpus(store, hp)
    corpus = read_corpus(path) if path.is_file() else None
    digest = corpus.digest if corpus else None  # None: whatever the store has
    rows = {m: find_stats(store, m, digest, hp.stats.samples) for m in edited_modules(hp)}
    missing = [m for m, row in rows.items() if row is None]
    if missing:
        if corpus is None:
            raise MissingStatsError(
                f"no second-moment statistics for {', '.join(missing)} and no corpus at {path}: "
                "run `editstore stats compute --corpus FILE` or set stats.corpus in the hparams"
            )
        for row in stream_stats(store, missing, corpus, hp.stats.samples, device=device, tokenizer=tokenizer,
                                progress=progress):
            rows[row.module] = row
    return {m: load_sigma(store, row).to(device) for m, row in rows.items() if row is not None}


def stats_modules(store: Store, *, modules: Sequence[str] = (), method_name: str = "memit",
                  layers: Sequence[int] | None = None) -> list[str]:
    """The modules ``stats compute`` measures: ``modules`` as given, else those of ``method_name``'s packaged
    hparams for the base, at ``layers`` (default: the hparams' layers)."""
    from .methods import resolve_hparams

    if modules:
        return list(modules)
    hp = resolve_hparams(store.base, method_name)
    return [hp.module_name(layer) for layer in layers or hp.layers]


def stream_stats(store: Store, modules: Sequence[str], corpus: Corpus, samples: int, *, device: torch.device,
                 tokenizer: Any | None = None, progress: ProgressFactory | None = None) -> list[StatsRow]:
    """Load the base on ``device``, stream ``corpus.texts(samples)`` through it once and store Σ of every
    module's input (``tokenizer``: the base's, loaded when not given).

    Under ``torchrun`` each process takes every N-th batch of texts and the sums are added across
    processes (:mod:`editstore.model.distributed`); the first process stores the result, the others
    return it.
    """
    from .model import distributed
    from .model.tokens import load_tokenizer

    rank, size = distributed.world()
    device = distributed.local_device(device)
    texts = corpus.texts(samples)
    if len(texts) <= (size - 1) * BATCH:
        raise StatsError(f"{len(texts)} texts are too few for {size} processes ({BATCH} per batch, a batch each)")
    with distributed.process_group(device):
        base = load_model(store.base, {}, device=device, base_hashes={})
        # whole batches in turn, so each process's forward passes are the single-process run's, bit for bit
        share = [t for i in range(rank * BATCH, len(texts), size * BATCH) for t in texts[i : i + BATCH]]
        advance = progress("statistics", len(share)) if progress and rank == 0 else None
        reduce = distributed.all_reduce_sums if size > 1 else None
        rows = compute_stats(store, base, tokenizer or load_tokenizer(store.base), modules, corpus, share, samples,
                             progress=advance, reduce=reduce, save=rank == 0)
        distributed.barrier()
    if rank == 0:
        return rows
    found = [find_stats(store, m, corpus.digest, samples) for m in modules]
    return [row for row in found if row is not None]
