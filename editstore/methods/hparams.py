"""Hyperparameters: one JSON file per (method, architecture), packaged and validated by a schema.

A file says which configs it fits (``match``: config keys and values), where the edited
module and its block are (templates with ``{}`` for the layer index) and the method's
settings. :func:`find_hparams` picks the most specific packaged file that fits a base.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from ..core.inputs import read_json
from ..core.schema import validate
from ..errors import EditStoreError
from . import registry
from .mend import MendHparams
from .registry import METHODS, UnknownMethodError  # noqa: F401 (re-exported)
from .targets import TargetHparams


class NoHparamsError(EditStoreError):
    """No packaged hyperparameters fit the base model; pass a file with ``--hparams``."""


@dataclass(frozen=True)
class PrefixHparams:
    n: int = 10
    length: int = 5
    seed: int = 0
    unprefixed_weight: float | None = None  # share of the unprefixed prompt in k̄ (None: 1 / (n + 1), see mean_keys)
    texts: tuple[str, ...] | None = None  # fixed prefixes instead of n sampled ones (e.g. another tool's templates)


@dataclass(frozen=True)
class SolverHparams:
    mom2_weight: float = 1.0  # MEMIT's λ, EMMET's w: C = weight · Σ
    lambda_e: float = 0.0  # EMMET's λ_e (0: equality constraints, ROME)
    null_space_threshold: float = 2e-2  # AlphaEdit's τ
    alpha: float = 10.0  # AlphaEdit's α


@dataclass(frozen=True)
class FinetuneHparams:
    lr: float = 5e-4
    steps: int = 25
    norm_constraint: float = 5e-4  # |ΔW_ij| ≤ this (FT-L); 0 turns it off
    energy: float = 0.999  # the truncated SVD keeps this share of ‖ΔW‖²


@dataclass(frozen=True)
class StatsHparams:
    samples: int = 100_000  # corpus lines streamed for Σ (fewer when the corpus is shorter)
    corpus: str | None = None  # path; None: the fact world's corpus.txt when the base is a world


@dataclass(frozen=True)
class Hparams:
    method: str
    architecture: str
    module: str  # the edited down-projection, "{}" for the layer
    block: str  # the transformer block holding it
    layers: tuple[int, ...]
    match: dict[str, Any] = field(default_factory=dict)
    source: str = ""
    targets: TargetHparams = TargetHparams()
    prefixes: PrefixHparams = PrefixHparams()
    solver: SolverHparams = SolverHparams()
    finetune: FinetuneHparams = FinetuneHparams()
    stats: StatsHparams = StatsHparams()
    mend: MendHparams = MendHparams()

    def module_name(self, layer: int) -> str:
        return self.module.format(layer)

    def block_name(self, layer: int) -> str:
        return self.block.format(layer)

    def to_json(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["layers"] = list(self.layers)
        if self.prefixes.texts is not None:
            data["prefixes"]["texts"] = list(self.prefixes.texts)
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any], *, what: str = "hparams") -> Hparams:
        validate(data, "hparams", what=what)
        parts = {"targets": TargetHparams, "prefixes": PrefixHparams, "solver": SolverHparams,
                 "finetune": FinetuneHparams, "stats": StatsHparams, "mend": MendHparams}
        kwargs = {k: v for k, v in data.items() if k not in parts and k != "$schema"}
        kwargs["layers"] = tuple(data["layers"])
        kwargs.update({k: t(**data.get(k, {})) for k, t in parts.items()})
        if kwargs["prefixes"].texts is not None:  # JSON arrays become tuples, as the frozen dataclass holds them
            kwargs["prefixes"] = dataclasses.replace(kwargs["prefixes"], texts=tuple(kwargs["prefixes"].texts))
        return cls(**kwargs)

    def replace(self, **changes: Any) -> Hparams:
        """A copy with top-level fields, or ``"group.field"`` keys, changed."""
        top = {k: v for k, v in changes.items() if "." not in k}
        for key, value in changes.items():
            if "." in key:
                group, name = key.split(".", 1)
                top[group] = dataclasses.replace(top.get(group, getattr(self, group)), **{name: value})
        return dataclasses.replace(self, **top)


def load_hparams(path: str | Path) -> Hparams:
    """Hyperparameters from a JSON file of the user's."""
    return Hparams.from_json(read_json(path, what="hparams file"), what=str(path))


@functools.cache
def packaged_hparams() -> tuple[Hparams, ...]:
    """Every hparams file shipped with editstore."""
    root = resources.files("editstore.methods").joinpath("hparams")
    files = sorted((f for f in root.iterdir() if f.name.endswith(".json")), key=lambda f: f.name)
    return tuple(Hparams.from_json(json.loads(f.read_text(encoding="utf-8")), what=f.name) for f in files)


def find_hparams(method: str, config: dict[str, Any]) -> Hparams:
    """The packaged hparams of ``method`` whose ``match`` fits ``config`` with the most keys."""
    registry.method(method)  # an unknown method is named as such
    fits = [h for h in packaged_hparams() if h.method == method and all(config.get(k) == v for k, v in h.match.items())]
    if not fits:
        raise NoHparamsError(
            f"no packaged {method} hparams fit this {config.get('model_type', 'unknown')} model; pass --hparams FILE"
        )
    return max(fits, key=lambda h: len(h.match))
