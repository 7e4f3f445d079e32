"""``editstore export --peft``: a version's deltas as a PEFT LoRA adapter.

Every edited weight W gets lora_B = U (d_out, r) and lora_A = Vᵀ (r, d_in), the
factors of all its edits stacked (the sequential composition), with scaling 1
(``alpha_pattern`` = ``rank_pattern`` per module). GPT-2's ``Conv1D`` modules take
``fan_in_fan_out``. ``PeftModel.from_pretrained(base, DIR)`` then computes what a
checkout of the version computes, without a merged copy of the model.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
from safetensors.torch import save_file

from .compose.checkout import factors
from .compose.materialise import staged_output
from .compose.sequential import concat_factors
from .errors import EditStoreError
from .model.checkpoint import CONV1D, Checkpoint, instantiate, resolve_module_name
from .store import Store

log = logging.getLogger(__name__)

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"


class ExportError(EditStoreError):
    """The version cannot be written as a LoRA adapter (no edits, or weights LoRA cannot target)."""


def lora_modules(base: Checkpoint, params: list[str]) -> dict[str, str]:
    """Per edited weight, the name of its module in the model, which must be a Linear or Conv1D."""
    from transformers import AutoConfig
    from transformers.pytorch_utils import Conv1D

    with torch.device("meta"):
        model = instantiate(AutoConfig.from_pretrained(base.path))
    out, unsupported = {}, []
    for param in params:
        name = resolve_module_name(model, param)
        module = model.get_submodule(name.removesuffix(".weight")) if name and name.endswith(".weight") else None
        if isinstance(module, (torch.nn.Linear, Conv1D)):
            out[param] = name.removesuffix(".weight")
        else:
            unsupported.append(param)
    if unsupported:
        raise ExportError(f"LoRA can only target Linear or Conv1D weights, not {', '.join(sorted(unsupported))}")
    return out


def export_peft(store: Store, rev: str, out: str | Path) -> Path:
    """Write version ``rev`` as a LoRA adapter directory at ``out`` (missing or empty); return it."""
    commit_id = store.resolve(rev)
    stacked = factors(store, store.commit_tree(commit_id))
    if not stacked:
        raise ExportError(f"version {commit_id[:12]} has no edits to export")
    modules = lora_modules(store.base, list(stacked))
    conv1d = {store.base.orientations[p] == CONV1D for p in stacked}
    if len(conv1d) > 1:
        raise ExportError("the version edits both Conv1D and Linear weights; one LoRA adapter takes only one layout")
    tensors, ranks = {}, {}
    for param, fs in sorted(stacked.items()):
        module = modules[param]
        U, V = concat_factors(fs)
        tensors[f"base_model.model.{module}.lora_A.weight"] = V.T.contiguous()  # (r, d_in)
        tensors[f"base_model.model.{module}.lora_B.weight"] = U.contiguous()  # (d_out, r)
        ranks[module] = U.shape[1]
    r = max(ranks.values())
    config = {
        "peft_type": "LORA",
        "task_type": "SEQ_2_SEQ_LM" if store.base.config.get("is_encoder_decoder") else "CAUSAL_LM",
        "base_model_name_or_path": str(store.base.path),
        "target_modules": sorted(ranks),
        "r": r,
        "lora_alpha": r,
        "rank_pattern": ranks,
        "alpha_pattern": ranks,  # scaling = alpha / r = 1 for every module
        "fan_in_fan_out": conv1d == {True},
        "lora_dropout": 0.0,
        "bias": "none",
        "inference_mode": True,
    }
    out = Path(out).resolve()
    with staged_output(out) as staging:
        save_file(tensors, staging / ADAPTER_WEIGHTS, metadata={"editstore_commit": commit_id})
        (staging / ADAPTER_CONFIG).write_text(json.dumps(config, indent=2) + "\n")
    log.info("exported %d LoRA module(s) of %s to %s", len(ranks), commit_id[:12], out)
    return out
