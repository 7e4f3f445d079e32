"""Trained editors (MEND) in the store: content-addressed safetensors objects tied to the base.

An editor object holds the editor's state (the shared transforms, per-layer scales,
shifts and step sizes, the running input statistics) as tensors, and in its header the
JSON object ``{"format": "editstore-editor", "version": 1, "base": ..., "method": "mend",
"modules": [...], "shapes": [...], "mend": {...}, "hparams": {...}}`` described by
``schemas/editor-metadata.schema.json``. A row of the
``editors`` table names it with its training metrics; ``gc`` keeps editor objects. The
newest editor of the store's base is the one ``editstore edit --method mend`` uses.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from .core.hashing import canonical_json
from .core.records import now
from .core.schema import validate
from .errors import EditStoreError, InvalidDeltaError, SchemaError
from .methods.hparams import Hparams
from .methods.mend import Editor, MendHparams
from .model.checkpoint import safetensors_header

if TYPE_CHECKING:
    from .core.requests import EditRequest
    from .store import Store

log = logging.getLogger(__name__)

FORMAT = "editstore-editor"
EDITOR_FORMAT = 2  # the editor's architecture and training; bump when either changes what an editor computes


class NoEditorError(EditStoreError):
    """No MEND editor is trained for this store's base."""


class TrainingDataError(EditStoreError):
    """MEND's meta-training has no usable training requests."""


def editor_bytes(editor: Editor, hp: Hparams, base: str, metrics: dict[str, Any] | None = None) -> bytes:
    """Canonical safetensors bytes of ``editor`` (the same editor always gives the same object id)."""
    hp = hp.replace(mend=editor.hp)  # the editor's own architecture, whatever hparams it was handed
    header = {"format": FORMAT, "version": 1, "base": base, "method": "mend", **editor.config,
              "mend": asdict(editor.hp), "hparams": hp.to_json(), **({"metrics": metrics} if metrics else {})}
    tensors = {k: v.detach().cpu().contiguous() for k, v in editor.state_dict().items()}
    return st_save(tensors, metadata={"editstore": canonical_json(header)})


def editor_from_bytes(data: bytes, *, source: str = "editor") -> tuple[Editor, dict[str, Any]]:
    """The editor and its header from object bytes."""
    try:
        tensors = st_load(data)
        header = json.loads(safetensors_header(data)[0]["__metadata__"]["editstore"])
        validate(header, "editor-metadata", what=f"{source} header")
        editor = Editor(header["modules"], [tuple(s) for s in header["shapes"]], MendHparams(**header["mend"]))
        editor.load_state_dict(tensors)
    except (SafetensorError, SchemaError, ValueError, KeyError, TypeError, RuntimeError) as exc:
        raise InvalidDeltaError(f"{source} is not an editstore editor: {exc}") from None
    return editor.eval(), header


def save_editor(store: Store, editor: Editor, hp: Hparams, metrics: dict[str, Any]) -> str:
    """Write the editor as an object with its row; returns its id."""
    data = editor_bytes(editor, hp, store.base_fingerprint)
    with store.locked():
        oid = store.objects.write(data)
        with store.db.atomic():
            store.db["editors"].insert(
                {"id": oid, "base": store.base_fingerprint, "method": "mend", "modules": json.dumps(editor.names),
                 "hparams": json.dumps(hp.to_json()), "metrics": json.dumps(metrics), "created": now()},
                replace=True,
            )
    log.info("editor %s stored (%s)", oid[:12], ", ".join(editor.names))
    return oid


def editor_rows(store: Store) -> list[dict[str, Any]]:
    """The editors of the store's base, newest last."""
    rows = store.db["editors"].rows_where("base = ?", [store.base_fingerprint], order_by="created, id")
    return [{**r, **{k: json.loads(r[k]) for k in ("modules", "hparams", "metrics")}} for r in rows]


def load_editor(store: Store) -> tuple[Editor, dict[str, Any]]:
    """The newest editor of this base; :class:`NoEditorError` if none."""
    rows = editor_rows(store)
    if not rows:
        raise NoEditorError("no MEND editor is trained for this base; run `editstore mend train` first")
    row = rows[-1]
    editor, header = editor_from_bytes(store.objects.read(row["id"]), source=f"object {row['id']}")
    return editor, {**row, "header": header}


def train_mend(
    store: Store,
    hp: Hparams,
    *,
    requests: list[EditRequest] | None = None,
    device: str = "auto",
    progress: Any = None,
    device_map: str | dict[str, Any] | None = None,
) -> tuple[str, dict[str, Any]]:
    """Meta-train a MEND editor of ``hp``'s modules for the store's base and store it; (object id, metrics).

    ``requests``: training requests (with ``paraphrase_prompts`` and ``neighborhood_prompts``), split
    into training and validation by subject; default: the fact world's requests about subjects that
    are not held out.
    ``progress(step, edit_loss, locality_loss)`` is called after every step. ``device_map``: the base is
    spread over devices by accelerate; the modules the editor edits must sit on a real device.
    """
    import time

    from .compose.materialise import load_model
    from .compose.sequential import resolve_device
    from .core.inputs import read_jsonl
    from .core.requests import check_requests
    from .methods.mend import train_editor
    from .methods.splits import split_by_subject, training_requests
    from .model.tokens import load_tokenizer

    if requests is None:
        path = store.base.path / "requests.jsonl"
        if not path.is_file():
            raise TrainingDataError("this base is not a fact world: give training requests (`editstore mend train --requests FILE`)")
        train, val = training_requests(read_jsonl(path), hp.mend.val_size)
    else:
        check_requests(requests)
        train, val = split_by_subject(requests, hp.mend.val_size)
    if len(train) < 10 or not val:
        raise TrainingDataError(f"MEND needs more training requests than {len(requests or train)} "
                                "(at least 10, and others about other subjects for validation)")
    dev = resolve_device(device)
    model = load_model(store.base, {}, device=dev, base_hashes={}, device_map=device_map)
    modules = [hp.module_name(layer) for layer in hp.layers]
    start = time.perf_counter()
    editor, metrics = train_editor(model, load_tokenizer(store.base), modules, train, val, hp.mend, progress=progress)
    metrics = {**metrics, "seconds": round(time.perf_counter() - start, 1), "device": dev.type,
               "train_requests": len(train), "val_requests": len(val)}
    return save_editor(store, editor, hp, metrics), metrics
