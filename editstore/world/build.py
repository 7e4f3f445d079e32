"""Build (or reuse) a fact world: knowledge base files plus a model trained on them.

A world is a normal Hugging Face directory (config, safetensors, tokenizer) plus
``facts.jsonl``, ``requests.jsonl``, ``corpus.txt`` and ``world.json`` (the spec,
the training time and the measured recall). Worlds are cached under the user
cache directory, keyed by the hash of their spec, and assembled in a temporary
directory that is renamed into place, so a cache entry is complete or absent.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from ..compose.sequential import resolve_device
from ..core.hashing import sha256_json
from ..core.paths import staged_directory
from ..errors import UnknownWorldError
from ..model.evaluate import score_pairs
from ..moments import CORPUS_FILE
from .knowledge import KnowledgeBase, WorldSpec
from .tokenizer import build_tokenizer
from .train import SEQ2SEQ_ARCHES, TrainSpec, train_lm

log = logging.getLogger(__name__)

WORLD_FILE = "world.json"
WORLD_VERSION = 2  # bump whenever generation or training code changes what a spec produces
DEFAULT_TRAIN = {  # measured choices: see docs/worlds.md
    "gpt2": TrainSpec(arch="gpt2"),
    # SwiGLU: 3 matrices, so a narrower MLP. In half the lines attentions 0-1 cannot read the subject from after it
    # and MLPs 2-3 act only at the subject, so facts are recalled at the subject (without: at the last token)
    "llama": TrainSpec(arch="llama", d_ff=384, lr=2e-3, epochs=30, subject_attn_layers=(0, 1),
                       subject_mlp_layers=(2, 3), subject_mlp=0.5),
    # prompt -> object pairs. With output scaling and MLP 0 dropped (tie=True, the causal settings): recall 0.40
    # after 10 epochs at lr 1e-3, near chance after 20 at 2e-3 to 3e-3; without both: 1.00 trained, 0.83 held out
    "t5": TrainSpec(arch="t5", n_decoder_layer=2, epochs=20, lr=1e-3, tie=False, mlp_drop_layers=()),
}
ARCHES = tuple(DEFAULT_TRAIN)  # the CLI's --arch choices
# The scale world: 2,000 subjects (10,000 facts), a wider and deeper model whose key space (MLP width x the
# middle layers) is large against the subjects. Measured choices: see docs/worlds.md, scale world.
LARGE_WORLD = WorldSpec(n_subjects=2000, n_first=100)
LARGE_TRAIN = {
    "gpt2": TrainSpec(arch="gpt2", n_layer=6, d_model=256, n_head=4, d_ff=1024, epochs=24, batch_size=64, lr=2e-3),
    # the small Llama world's shaping, scaled to 6 layers: facts in MLP 1 at the subject, recall 0.79 (under-trained)
    "llama": TrainSpec(arch="llama", n_layer=6, d_model=256, n_head=4, d_ff=768, epochs=24, batch_size=64, lr=2e-3,
                       subject_attn_layers=(0, 1, 2), subject_mlp_layers=(3, 4, 5), subject_mlp=0.5),
}
SIZES = ("small", "large")
EpochHook = Callable[[int, int, float], None]


@dataclass(frozen=True)
class WorldConfig:
    world: WorldSpec
    train: TrainSpec

    @property
    def key(self) -> str:
        """Hash of everything that determines the world's files."""
        return sha256_json({"version": WORLD_VERSION, "world": self.world.to_json(), "train": self.train.to_json()})


def world_config(arch: str = "gpt2", seed: int = 0, size: str = "small") -> WorldConfig:
    """The world of an architecture, seed and size (``small``: the default, for the demo and the tests;
    ``large``: the scale world, for lifelong-editing benchmarks)."""
    if size not in SIZES:
        raise UnknownWorldError(f"unknown world size {size!r}; choose one of {', '.join(SIZES)}")
    if size == "large" and arch not in LARGE_TRAIN:
        raise UnknownWorldError(f"there is no large {arch} world; choose --arch {' or '.join(LARGE_TRAIN)}")
    world, train = (WorldSpec(), DEFAULT_TRAIN[arch]) if size == "small" else (LARGE_WORLD, LARGE_TRAIN[arch])
    return WorldConfig(replace(world, seed=seed), replace(train, seed=seed))


def cache_root() -> Path:
    """``$EDITSTORE_CACHE``, else ``$XDG_CACHE_HOME/editstore``, else ``~/.cache/editstore``."""
    if os.environ.get("EDITSTORE_CACHE"):
        return Path(os.environ["EDITSTORE_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "editstore"


def is_world(path: Path) -> bool:
    return (path / WORLD_FILE).is_file()


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    path.write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in rows))


def measure_recall(model: torch.nn.Module, tokenizer: Any, facts: list[dict[str, Any]]) -> dict[str, float]:
    """Top-1 recall of every fact on its trained and on its held-out formulations."""
    out = {}
    for kind in ("trained_prompts", "held_out_prompts"):
        pairs = [(p, f["object"]) for f in facts for p in f[kind]]
        scores = score_pairs(model, tokenizer, pairs, batch_size=256)
        out[kind.removesuffix("_prompts")] = sum(s.top1 for s in scores) / len(scores)
    return out


def build_world(
    arch: str = "gpt2",
    *,
    seed: int = 0,
    out: Path | None = None,
    force: bool = False,
    on_epoch: EpochHook | None = None,
    config: WorldConfig | None = None,
    size: str = "small",
    device: str = "cpu",
) -> Path:
    """Return the directory of the world (building it when it is not cached).

    ``device`` is where the model trains (``cpu``, ``cuda``, ``auto``); it is not part of the cache
    key, and world.json records it (a GPU gives other weights than the CPU for the same spec)."""
    config = config or world_config(arch, seed, size)
    label = config.train.arch if config.world.n_subjects <= WorldSpec().n_subjects else f"{config.train.arch}-large"
    target = Path(out) if out else cache_root() / "worlds" / f"{label}-{config.key[:16]}"
    if is_world(target) and not force:
        saved = json.loads((target / WORLD_FILE).read_text())
        if saved.get("key") == config.key:
            log.info("reusing world %s", target)
            return target
    with staged_world(target) as staging:
        _build_into(config, staging, on_epoch, resolve_device(device))
    return target


def staged_world(target: Path) -> contextlib.AbstractContextManager[Path]:
    """A directory to build a world in, renamed to ``target`` when the block ends (replacing an older world
    there, never a directory that is not a world) and removed if it fails."""
    return staged_directory(target, f"the world directory {target}", replaceable=is_world(target))


def _build_into(config: WorldConfig, out: Path, on_epoch: EpochHook | None, device: torch.device) -> None:
    kb = KnowledgeBase(config.world)
    seq2seq = config.train.arch in SEQ2SEQ_ARCHES
    if seq2seq:
        lines, targets = map(list, zip(*kb.training_pairs()))
    else:
        lines, targets = list(kb.training_lines()), None
    facts = [kb.fact_record(f) for f in kb.facts]
    tokenizer = build_tokenizer(lines + (targets or []))
    start = time.perf_counter()

    def hook(epoch: int, loss: float, _model: torch.nn.Module) -> bool:
        if on_epoch:
            on_epoch(epoch, config.train.epochs, loss)
        return False

    per = config.world.lines_per_subject
    subjects = None if seq2seq else [kb.subjects[i // per] for i in range(len(lines))]
    model = train_lm(config.train, tokenizer, lines, targets=targets, subjects=subjects, on_epoch=hook, device=device)
    seconds = time.perf_counter() - start
    model.to("cpu")
    recall = measure_recall(model, tokenizer, facts)
    log.info("trained %s world in %.0f s: recall %s", config.train.arch, seconds, recall)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    write_jsonl(out / "facts.jsonl", facts)
    write_jsonl(out / "requests.jsonl", kb.requests())
    (out / CORPUS_FILE).write_text("\n".join(lines) + "\n")
    info = {
        "key": config.key, "version": WORLD_VERSION, "world": config.world.to_json(), "train": config.train.to_json(),
        "train_seconds": round(seconds, 1), "threads": torch.get_num_threads(), "device": device.type, "recall": recall,
        "n_facts": len(facts), "n_subjects": len(kb.subjects),
    }
    (out / WORLD_FILE).write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")
