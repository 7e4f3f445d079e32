"""``editstore edit``: from edit requests to a commit, on the version HEAD points at.

The deltas are computed on the current version (base + the branch's edits, loaded
in memory), with the method's packaged hparams unless the caller gives some, and
second-moment statistics from the store (computed on first use from the configured
corpus, the fact world's ``corpus.txt`` by default). Each request becomes one edit of
a single commit. The history is written only once the deltas exist (statistics
computed on the way are kept), and the commit is refused when another writer
moved HEAD meanwhile.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import torch

from .compose.checkout import checkout_tree
from .compose.sequential import resolve_device
from .conflicts.checks import precheck
from .conflicts.detect import Conflict, ConflictError, blocking
from .conflicts.index import Whitener, whitened_keys
from .core.requests import EditRequest, check_requests, describe_target, normalise_subject
from .editors import load_editor
from .errors import HparamsError, SubjectNotInPromptError
from .methods import compute_edits, edited_modules, registry, resolve_hparams
from .methods.hooks import as_keys
from .methods.hparams import Hparams
from .methods.registry import require_writes
from .model.tokens import fill, load_tokenizer
from .moments import sigmas_for
from .store import NewEdit, Store

log = logging.getLogger(__name__)

ProgressFactory = Callable[[str, int], Callable[[int], None]]  # (what, total) -> advance(n)


def make_request(prompt: str, subject: str, target_new: str | None, target_true: str | None = None) -> EditRequest:
    """A request from CLI-style pieces; a prompt without ``{}`` gets one where the subject first occurs.

    Without ``target_new`` the request is a behaviour deletion of ``target_true``.
    """
    if "{}" not in prompt:
        if not subject or subject not in prompt:
            raise SubjectNotInPromptError(f"subject {subject!r} does not occur in the prompt {prompt!r} (and it has no {{}})")
        prompt = prompt.replace(subject, "{}", 1)
    request: EditRequest = {"prompt": prompt, "subject": subject}
    if target_new:
        request["target_new"] = target_new
    if target_true:
        request["target_true"] = target_true
    return request


def prior_keys(store: Store, tree: Sequence[str], hp: Hparams) -> dict[str, torch.Tensor]:
    """Per module ``hp`` edits, the keys (d_in, m) that the tree's earlier edits recorded."""
    keys = as_keys(store.load_delta(e) for e in tree)
    return {name: keys[name] for name in edited_modules(hp) if name in keys}


def edit(
    store: Store,
    requests: Sequence[EditRequest],
    *,
    method: str = "rome",
    hparams: Hparams | None = None,
    message: str | None = None,
    device: str | torch.device = "auto",
    force: bool = False,
    replace: bool = False,
    progress: ProgressFactory | None = None,
    device_map: str | dict[str, Any] | None = None,
) -> str:
    """Compute ``method``'s deltas for ``requests`` on the version at HEAD and commit them; returns the commit id.

    Before anything is computed, the requests are checked against HEAD's version
    (:mod:`editstore.conflicts.detect`): a contradiction raises :class:`ConflictError` and
    leaves the store unchanged, unless ``force``. Every conflict found (with the
    interference the new keys show) is recorded with the commit.

    ``replace`` makes the commit an update: the live edits a request contradicts (same
    subject and relation, another target) leave the tree in the same commit, the deltas
    are computed on the version without them, and each new edit's ``info["replaces"]``
    names them. Contradictions between the requests themselves still refuse the commit.

    ``device_map``: the version is loaded over those devices by accelerate (see
    :func:`editstore.compose.checkout.checkout_tree`) and the method runs on it; the modules it edits
    must sit on a real device (a GPU or the CPU), not offloaded to disk.
    """
    requests = [EditRequest(**r) for r in requests]  # the caller's dicts stay as they are
    check_requests(requests)
    editor, about = None, dict[str, Any]()
    if method == "mend":  # the weights it changes, and how, are the trained editor's
        if hparams is not None:
            raise HparamsError("MEND's hyperparameters come from its trained editor; give them to `editstore mend train`")
        editor, about = load_editor(store)
        hp = Hparams.from_json(about["hparams"])
    else:
        hp = resolve_hparams(store.base, method, hparams)
    require_writes(method, requests)  # before a model is loaded
    dev = resolve_device(device)
    tokenizer = load_tokenizer(store.base)
    head = store.head()
    tree = store.tree(head)
    pre = precheck(store, requests, tree, device=dev, device_map=device_map)
    found = pre.conflicts
    replaces = {id(r): replaced_by(r, found) for r in requests} if replace else {}
    replaced = sorted({e for ids in replaces.values() for e in ids})
    if replaced:  # the update resolves those contradictions: the new version is computed without the old edits
        found = [c for c in found if c.other not in replaced]
        tree = [e for e in tree if e not in replaced]
    if blocking(found) and not force:
        raise ConflictError(blocking(found))
    sigmas = sigmas_for(store, hp, tokenizer, device=dev, progress=progress)
    model = checkout_tree(store, tree, device=dev, into=pre.base)
    advance = progress(f"{method} edits", len(requests)) if progress else None
    result = compute_edits(
        model, tokenizer, requests, hp, sigmas=sigmas, editor=editor,
        prior_keys=prior_keys(store, tree, hp) if registry.method(method).prior_keys else None,
        companions=companions(store, tree, requests, [c.other for c in blocking(found) if c.other]),
        progress=advance,
    )
    whitener = Whitener(store)
    interference = pre.checker.interference(requests, [whitened_keys(d, whitener) for d in result.deltas], found)
    found += [c for c in interference if c.other not in replaced]
    for c in found:
        log.warning("%s", c.describe())
    batch = {"batch": len(requests)} if len(requests) > 1 else {}
    new = [
        NewEdit(delta, method, request=r, hparams=hp.to_json(),
                info={"nll_before": round(b, 4), "nll_after": round(a, 4), **batch, **result.info,
                      **({"editor": about["id"]} if editor is not None else {}),
                      **({"replaces": replaces[id(r)]} if replaces.get(id(r)) else {})},
                embedding=(pre.checker.index.backend, v), conflicts=[c.to_json() for c in found if c.request is r])
        for delta, r, b, a, v in zip(result.deltas, requests, result.nll_before, result.nll_after, pre.vectors)
    ]
    default = f"{method}: {_describe(requests[0])}" + (f" and {len(requests) - 1} more" if len(requests) > 1 else "")
    if replaced:
        default += f" (replaces {', '.join(e[:12] for e in replaced)})"
    return store.record_edits(new, message=message or default, expected_head=head,
                              operation="replace" if replaced else "edit", remove=replaced)


def companions(
    store: Store, tree: Sequence[str], requests: Sequence[EditRequest], contradicted: Sequence[str] = ()
) -> list[list[EditRequest]]:
    """Per request, the requests of the live edits in ``tree`` about its subject (the facts its target must
    keep), in tree order; ``contradicted`` edits (committed over with ``force``) are not kept."""
    wanted = {normalise_subject(r["subject"]) for r in requests}
    records = store.edits(tree)
    by_subject: dict[str, list[EditRequest]] = {}
    for eid in tree:
        request = records[eid].request
        if eid not in contradicted and request and normalise_subject(request.get("subject", "")) in wanted:
            by_subject.setdefault(normalise_subject(request["subject"]), []).append(request)
    return [by_subject.get(normalise_subject(r["subject"]), []) for r in requests]


def replaced_by(request: EditRequest, found: Sequence[Conflict]) -> list[str]:
    """The live edits ``request`` contradicts (what ``--replace`` takes out), in the order found."""
    return list(dict.fromkeys(c.other for c in blocking(found) if c.request is request and c.other))


def _describe(request: EditRequest) -> str:
    return f"{fill(request['prompt'], request['subject'])} -> {describe_target(request)}"
