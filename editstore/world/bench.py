"""Editing the fact world in memory: what benchmarks/methods.py and the method floor tests share.

A :class:`WorldBench` holds one world's model and tokenizer, Σ of every module a packaged
method edits (from the world's corpus), and the world's requests on distinct subjects.
Edited versions are composed with forward hooks (W + Σ U Vᵀ, the sum a checkout writes).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..behavior import untouched_facts
from ..compose.sequential import resolve_device
from ..core.hashing import sha256_json
from ..core.inputs import read_jsonl
from ..core.requests import EditRequest
from ..editors import EDITOR_FORMAT, editor_bytes, editor_from_bytes
from ..methods import METHODS, EditResult, compute_edits, edited_modules, find_hparams
from ..methods import method as method_of
from ..methods.hooks import as_keys, as_updates, patched
from ..methods.hparams import Hparams
from ..methods.mend import Editor, train_editor
from ..methods.splits import held_out_requests, one_per_subject, training_requests
from ..model.checkpoint import from_pretrained
from ..model.delta import Delta
from ..model.evaluate import Metrics, evaluate_requests
from ..model.stats import second_moment
from ..moments import CORPUS_FILE
from .build import WorldConfig, build_world, cache_root, world_config


def design(arch: str, size: str = "small", *, world: Mapping[str, Any] | None = None,
           train: Mapping[str, Any] | None = None) -> WorldConfig:
    """The world of ``arch`` and ``size`` with changes to its :class:`~editstore.world.knowledge.WorldSpec`
    (``world``) and its model's :class:`~editstore.world.train.TrainSpec` (``train``): a design being tried,
    built and cached under its own key."""
    config = world_config(arch, 0, size)
    return WorldConfig(dataclasses.replace(config.world, **(world or {})), dataclasses.replace(config.train, **(train or {})))


class WorldBench:
    """One fact world, ready to edit and score; ``overrides`` change every method's packaged hparams."""

    def __init__(self, arch: str = "gpt2", *, overrides: Mapping[str, Any] | None = None, stride: int = 3,
                 size: str = "small", methods: Sequence[str] = METHODS, world: Mapping[str, Any] | None = None,
                 train: Mapping[str, Any] | None = None, device: str = "cpu") -> None:
        """``world``, ``train``: a world design being tried (:func:`design`); ``device``: where the model
        runs (edits, statistics and scores follow it)."""
        from transformers import AutoTokenizer

        self.mend_training: dict[str, Any] = {}
        self.arch = arch
        self.path: Path = build_world(config=design(arch, size, world=world, train=train))
        self.model = from_pretrained(self.path).to(resolve_device(device))
        self.tokenizer = AutoTokenizer.from_pretrained(self.path)
        config = json.loads((self.path / "config.json").read_text())
        self.hparams: dict[str, Hparams] = {}
        for method in methods:
            hp = find_hparams(method, config)
            self.hparams[method] = hp.replace(**overrides) if overrides else hp
        modules = sorted({m for method, hp in self.hparams.items() if method_of(method).needs_statistics
                          for m in edited_modules(hp)})
        corpus = (self.path / CORPUS_FILE).read_text().splitlines()
        sigmas, _ = second_moment(self.model, self.tokenizer, corpus, [self.model.get_submodule(m) for m in modules])
        self.sigmas = dict(zip(modules, sigmas))
        self.requests = one_per_subject(read_jsonl(self.path / "requests.jsonl")[::stride])

    def take(self, n: int, offset: int = 0) -> list[dict[str, Any]]:
        """``n`` requests spread evenly over the world (distinct subjects)."""
        return self.requests[offset :: max(1, len(self.requests) // n)][:n]

    def edit(self, method: str, requests: Sequence[EditRequest], earlier: Sequence[Delta] = ()) -> EditResult:
        """``method``'s deltas for ``requests`` on the base plus ``earlier`` (whose keys AlphaEdit avoids)."""
        prior = as_keys(earlier) if method_of(method).prior_keys else None
        editor = self.editor if method == "mend" else None
        with patched(self.model, as_updates(earlier)):
            return compute_edits(self.model, self.tokenizer, requests, self.hparams[method], sigmas=self.sigmas,
                                 prior_keys=prior, editor=editor)

    @functools.cached_property
    def editor(self) -> Editor:
        """MEND's editor for this world, meta-trained on the subjects that are not held out (cached on disk)."""
        hp = self.hparams["mend"]
        key = sha256_json({"world": self.path.name, "hparams": hp.to_json(), "editor": EDITOR_FORMAT})[:16]
        path = cache_root() / "editors" / f"{key}.safetensors"
        if path.is_file():
            editor, header = editor_from_bytes(path.read_bytes(), source=str(path))
            self.mend_training = header.get("metrics", {})
            return editor
        train, val = training_requests(read_jsonl(self.path / "requests.jsonl"), hp.mend.val_size)
        start = time.perf_counter()
        editor, metrics = train_editor(self.model, self.tokenizer, edited_modules(hp), train, val, hp.mend)
        self.mend_training = {**metrics, "seconds": round(time.perf_counter() - start, 1), "train_requests": len(train)}
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(editor_bytes(editor, hp, f"world:{self.path.name}", self.mend_training))
        return editor

    def held_out(self, n: int) -> list[dict[str, Any]]:
        """``n`` of the requests (distinct subjects) about subjects MEND is not trained on."""
        return held_out_requests(self.requests, n)

    def evaluate(self, requests: Sequence[EditRequest], deltas: Sequence[Delta], *, recall: int = 0) -> Metrics:
        """Metrics of ``requests`` on the base plus ``deltas``; recall over ``recall`` facts of unedited subjects."""
        facts = untouched_facts(self.path, {r["subject"] for r in requests}, limit=recall) if recall else []
        with patched(self.model, as_updates(deltas)):
            return evaluate_requests(self.model, self.tokenizer, requests, recall_facts=facts)


def settings(items: Sequence[str]) -> dict[str, Any]:
    """``KEY=JSON`` command-line overrides as a dict; JSON lists become tuples (as the specs hold them)."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        try:
            parsed = json.loads(value) if sep else None
        except json.JSONDecodeError:
            sep = ""
        if not sep:
            raise SystemExit(f"an override is KEY=JSON, not {item!r}")
        out[key] = tuple(parsed) if isinstance(parsed, list) else parsed
    return out


def sequence(bench: WorldBench, method: str, requests: Sequence[EditRequest]) -> list[Delta]:
    """The deltas of editing ``requests`` one on top of the other."""
    deltas: list[Delta] = []
    for r in requests:
        deltas += bench.edit(method, [r], deltas).deltas
    return deltas


__all__ = ["WorldBench", "design", "sequence", "settings"]
