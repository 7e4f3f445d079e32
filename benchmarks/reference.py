"""Side by side with the papers' code: editstore's ROME, MEMIT and AlphaEdit against the reference
implementations, on the same world model, requests, hyperparameters and Σ, in one process.

    python benchmarks/reference.py --memit PATH [--alphaedit PATH] [--arch gpt2] [--size small|large]
                                   [--single 20] [--batch 100] [--set-both KEY=JSON ...]
                                   [--seeds 0] [--parts rome memit alphaedit alphaedit-batch] [--set KEY=JSON ...]

PATH is a checkout of a reference implementation that you provide (this project never vendors or
downloads it): ``git clone https://github.com/kmeng01/memit`` for ROME and MEMIT, ``git clone
https://github.com/jianghoucheng/AlphaEdit`` for AlphaEdit. A side whose checkout is not given is
skipped with a message. The checkout is copied to a temporary directory in which its hard-coded
``"cuda"`` device becomes this run's device (``.cuda()`` likewise) and, as transformers 5's GPT-2 block
returns a tensor where the code expects a tuple, its trace hook (util/nethook.py) wraps a block's
output in a tuple and unwraps it again; nothing else in it changes.

Both sides get editstore's packaged hparams for the world (``--set-both`` overrides both sides,
``--set`` editstore's side only, for ablations), translated field by field into the reference's
hparams, and the same Σ: the reference's ``get_cov`` / ``get_inv_cov`` are replaced by lookups of
the world corpus' Σ that editstore uses (``editstore.world.bench``). Context templates are each side's own (the reference
samples them after "The", "Therefore", ...; editstore after the empty prompt). The reference's edited
weights are read back as a dense ΔW and scored by the same evaluator (``WorldBench.evaluate``).
Both sides, and the evaluator, tokenize without the world tokenizer's <bos> (see ``without_bos``): the
reference's subject and target positions assume a tokenizer that adds none. The world model answers
less well without it (recall of its facts 0.84 instead of 0.98), the same for both sides.

rome:      --single requests, each edited alone on the base.
memit:     one batch of --batch requests.
alphaedit: --single requests, each alone on the base (an empty K_p K_pᵀ), the null-space projection
           P of Σ's eigenvectors below τ computed as the reference's get_project does.
alphaedit-batch: one batch of --batch requests on the base, otherwise as alphaedit.
--seeds:   each seed takes the requests at another offset and seeds torch before each side.
--as-reference [templates] [stop] [kl]: editstore's MEMIT and AlphaEdit run again, in a row of their own,
           with what the reference does differently (all three when none is named; give the flag several
           times for several rows, against one run of the reference): its context templates of
           that seed (``prefixes.texts``) instead of sampling their own, and its target step's two rules,
           stopping once the whole loss rather than the target NLL is below the threshold
           (``targets.stop_on="loss"``) and keeping the distribution after the subject rather than after
           "{subject} is a" (``targets.kl_at="subject"``).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import shutil
import statistics
import sys
import tempfile
import time
import types
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.table import Table

from editstore.methods.hparams import Hparams
from editstore.model.checkpoint import CONV1D, Checkpoint
from editstore.model.delta import Delta, Factors
from editstore.world.bench import WorldBench, settings
from editstore.world.build import ARCHES, SIZES

console = Console(width=130)
REFERENCE_PACKAGES = ("rome", "memit", "util", "AlphaEdit", "experiments", "dsets", "baselines")


# ----------------------------------------------------------------------------- the reference checkout


# transformers 5: a GPT-2 block returns its hidden states, not a tuple; the reference's hooks index output[0]
HOOK = "        def retain_hook(m, inputs, output):\n"
BLOCK_SHIM = """        def retain_hook(m, inputs, output):
            if type(m).__name__.endswith("Block") and isinstance(output, torch.Tensor):
                return retain_tuple_hook(m, inputs, (output,))[0]
            return retain_tuple_hook(m, inputs, output)

        def retain_tuple_hook(m, inputs, output):
"""


@contextlib.contextmanager
def reference_checkout(path: Path, device: str) -> Iterator[Path]:
    """A copy of the user's checkout with its device strings set to ``device``, importable while the block runs."""
    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / path.name
        shutil.copytree(path, copy, ignore=shutil.ignore_patterns(".git", "__pycache__", "*.ipynb", "data", "results"))
        for source in copy.rglob("*.py"):
            text = source.read_text(encoding="utf-8", errors="replace")
            source.write_text(text.replace('"cuda"', f'"{device}"').replace(".cuda()", f'.to("{device}")'))
        nethook = copy / "util" / "nethook.py"
        nethook.write_text(nethook.read_text().replace(HOOK, BLOCK_SHIM, 1))
        if "datasets" not in sys.modules:  # imported by rome.layer_stats, never called here (Σ is given)
            sys.modules["datasets"] = types.SimpleNamespace(load_dataset=None)  # type: ignore[assignment]
        sys.path.insert(0, str(copy))
        cwd = Path.cwd()
        try:
            os.chdir(copy)  # util/globals.py reads globals.yml from the working directory
            yield copy
        finally:
            os.chdir(cwd)
            sys.path.remove(str(copy))
            for name in [m for m in sys.modules if m.split(".")[0] in REFERENCE_PACKAGES]:
                del sys.modules[name]


def without_bos(tokenizer: Any) -> None:
    """Stop ``tokenizer`` adding <bos>: the reference locates the subject by adding up the lengths of the
    separately tokenized template prefix, subject and suffix, and takes the target's ids as tokenized alone,
    which is right only for a tokenizer that adds no special tokens (GPT-2's)."""
    from tokenizers import processors

    tokenizer.backend_tokenizer.post_processor = processors.TemplateProcessing(single="$A", pair="$A $B")


def quiet(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Call ``fn`` with its prints swallowed (the reference prints every optimisation step)."""
    with contextlib.redirect_stdout(io.StringIO()):
        return fn(*args, **kwargs)


def reference_requests(requests: Sequence[dict]) -> list[dict]:
    return [{"case_id": i, "prompt": r["prompt"], "subject": r["subject"], "target_new": {"str": r["target_new"]}}
            for i, r in enumerate(requests)]


def common_fields(bench: WorldBench, hp: Hparams) -> dict[str, Any]:
    """The reference's hparams fields shared by ROME, MEMIT and AlphaEdit, from editstore's ``hp``."""
    t = hp.targets
    return {
        "layers": list(hp.layers), "fact_token": "subject_last", "v_num_grad_steps": t.v_steps, "v_lr": t.v_lr,
        "v_loss_layer": bench.model.config.n_layer - 1, "v_weight_decay": t.v_weight_decay,
        "clamp_norm_factor": t.clamp_norm_factor, "kl_factor": t.kl_factor, "mom2_adjustment": True,
        "rewrite_module_tmp": hp.module, "layer_module_tmp": hp.block, "mlp_module_tmp": hp.block + ".mlp",
        "attn_module_tmp": hp.block + ".attn", "ln_f_module": "transformer.ln_f", "lm_head_module": "transformer.wte",
        "mom2_dataset": "world", "mom2_n_samples": hp.stats.samples, "mom2_dtype": "float32",
    }


def dense_delta(bench: WorldBench, before: dict[str, torch.Tensor]) -> Delta:
    """What the reference wrote into the model's weights, as a delta (dense: U = ΔW, V = I), weights restored."""
    factors = {}
    for name, w0 in before.items():
        w = bench.model.get_parameter(name)
        dw = (w.detach() - w0).float()
        if bench.orientations[name] == CONV1D:
            dw = dw.T  # (d_out, d_in)
        factors[name] = Factors(dw.cpu(), torch.eye(dw.shape[1]))
        with torch.no_grad():
            w.copy_(w0)
    return Delta(factors)


def edited_weights(bench: WorldBench, hp: Hparams) -> dict[str, torch.Tensor]:
    return {f"{hp.module_name(l)}.weight": bench.model.get_parameter(f"{hp.module_name(l)}.weight").detach().clone()
            for l in hp.layers}


# ----------------------------------------------------------------------------- both sides of each method


def ours(bench: WorldBench, method: str, batches: Sequence[Sequence[dict]]) -> tuple[list[list[Delta]], float]:
    deltas, seconds = [], 0.0
    for requests in batches:
        start = time.perf_counter()
        deltas.append(bench.edit(method, requests).deltas)
        seconds += time.perf_counter() - start
    return deltas, seconds


def edit_each(bench: WorldBench, batches: Sequence[Sequence[dict]], hp: Hparams,
              apply: Callable[[list[dict]], Any]) -> tuple[list[list[Delta]], float]:
    """Run the reference's ``apply`` on each batch (in the reference's request format), read back what it
    wrote into the weights and restore them; the deltas and the seconds ``apply`` took in all."""
    out, seconds = [], 0.0
    for requests in batches:
        before = edited_weights(bench, hp)
        start = time.perf_counter()
        quiet(apply, reference_requests(requests))
        seconds += time.perf_counter() - start
        out.append([dense_delta(bench, before)])
    return out, seconds


def reference_rome(bench: WorldBench, batches: Sequence[Sequence[dict]], hp: Hparams) -> tuple[list[list[Delta]], float]:
    import rome.compute_u
    from rome import ROMEHyperParams, apply_rome_to_model

    name = hp.module_name(hp.layers[0])
    rome.compute_u.get_inv_cov = lambda *a, **k: torch.inverse(bench.sigmas[name].float())
    fields = common_fields(bench, hp) | {"layers": [hp.layers[0]],
                                         "context_template_length_params": [[hp.prefixes.length, hp.prefixes.n]]}
    fields.pop("mom2_adjustment")
    rhp = ROMEHyperParams(mom2_adjustment=True, **fields)
    return edit_each(bench, batches, hp, lambda requests: apply_rome_to_model(bench.model, bench.tokenizer, requests, rhp))


def reference_memit(bench: WorldBench, batches: Sequence[Sequence[dict]], hp: Hparams) -> tuple[list[list[Delta]], float]:
    import memit.memit_main
    from memit import MEMITHyperParams, apply_memit_to_model

    memit.memit_main.get_cov = lambda model, tok, layer_name, *a, **k: bench.sigmas[layer_name].float()
    mhp = MEMITHyperParams(layer_selection="all", mom2_update_weight=hp.solver.mom2_weight, **common_fields(bench, hp))
    return edit_each(bench, batches, hp,
                     lambda requests: apply_memit_to_model(bench.model, bench.tokenizer, requests, mhp))


def reference_alphaedit(bench: WorldBench, batches: Sequence[Sequence[dict]], hp: Hparams) -> tuple[list[list[Delta]], float]:
    from AlphaEdit.AlphaEdit_hparams import AlphaEditHyperParams
    from AlphaEdit.AlphaEdit_main import apply_AlphaEdit_to_model

    ahp = AlphaEditHyperParams(model_name="gpt2-xl", layer_selection="all", mom2_update_weight=1.0,
                               nullspace_threshold=hp.solver.null_space_threshold, L2=hp.solver.alpha,
                               **common_fields(bench, hp))
    projections = []
    for layer in hp.layers:  # as the reference's experiments/evaluate.py get_project does
        U, S, _ = torch.linalg.svd(bench.sigmas[hp.module_name(layer)].float().cpu(), full_matrices=False)
        small = (S < ahp.nullspace_threshold).nonzero(as_tuple=True)[0]
        projections.append(U[:, small] @ U[:, small].T)
    P = torch.stack(projections)
    # each batch alone on the base: an empty K_p K_pᵀ (the reference adds to it in place)
    return edit_each(bench, batches, hp, lambda requests: apply_AlphaEdit_to_model(
        bench.model, bench.tokenizer, requests, ahp, cache_c=torch.zeros_like(P), P=P))


AS_REFERENCE = {"stop": {"targets.stop_on": "loss"}, "kl": {"targets.kl_at": "subject"}}  # and "templates"


def as_reference(bench: WorldBench, method: str, hp: Hparams, parts: Sequence[str]) -> Hparams:
    """``hp`` with ``parts`` of what the reference's target step does (``--as-reference``): call inside its
    checkout, seeded as before its run, which then samples the same templates."""
    changes = {k: v for part in parts for k, v in AS_REFERENCE.get(part, {}).items()}
    if "templates" in parts:
        changes["prefixes.texts"] = reference_templates(bench, method)
    return hp.replace(**changes)


def reference_templates(bench: WorldBench, method: str) -> tuple[str, ...]:
    """The context templates the reference's MEMIT or AlphaEdit samples next, as editstore's prefixes: "T. {}"
    becomes "T.", which editstore puts before the prompt with a space, giving the same text."""
    if method == "memit":
        from memit.memit_main import get_context_templates
    else:
        from AlphaEdit.AlphaEdit_main import get_context_templates
    templates = quiet(get_context_templates, bench.model, bench.tokenizer)
    return tuple(t.removesuffix("{}").rstrip() for group in templates[1:] for t in group)


REFERENCE = {"rome": reference_rome, "memit": reference_memit, "alphaedit": reference_alphaedit}
REPOSITORY = {"rome": "memit", "memit": "memit", "alphaedit": "alphaedit"}
PARTS = ("rome", "memit", "alphaedit", "alphaedit-batch")  # a part is a method, "-batch": on one batch
BATCHED = ("memit", "alphaedit-batch")  # parts that edit one batch of --batch requests


# ----------------------------------------------------------------------------- the table


def score(bench: WorldBench, batches: Sequence[Sequence[dict]], deltas: Sequence[Sequence[Delta]]) -> tuple[float, ...]:
    """Mean efficacy, paraphrase and specificity of each batch edited alone on the base."""
    metrics = [bench.evaluate(list(r), list(d)) for r, d in zip(batches, deltas)]
    weights = [len(r) for r in batches]
    mean = lambda k: sum(getattr(m, k) * w for m, w in zip(metrics, weights)) / sum(weights)  # noqa: E731
    return mean("efficacy"), mean("paraphrase"), mean("specificity")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--memit", type=Path, help="A checkout of github.com/kmeng01/memit (ROME and MEMIT).")
    parser.add_argument("--alphaedit", type=Path, help="A checkout of github.com/jianghoucheng/AlphaEdit.")
    parser.add_argument("--arch", default="gpt2", choices=[a for a in ARCHES if a == "gpt2"])
    parser.add_argument("--size", default="small", choices=SIZES, help="The world (large: 2,000 subjects).")
    parser.add_argument("--parts", nargs="+", default=["rome", "memit", "alphaedit"], choices=PARTS)
    parser.add_argument("--single", type=int, default=20)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=JSON",
                        help="Override editstore's hparams (not the reference's), e.g. targets.nll_stop=0.")
    parser.add_argument("--as-reference", nargs="*", action="append", choices=["templates", *AS_REFERENCE],
                        metavar="PART",
                        help="Run editstore's MEMIT and AlphaEdit again with the reference's context templates of "
                             "each seed (templates), its stop rule (stop) and its KL position (kl); all three when "
                             "none is named; repeat the flag for several rows.")
    parser.add_argument("--set-both", nargs="*", default=[], metavar="KEY=JSON",
                        help="Override the hparams of both sides (the reference's translated from them), e.g. "
                             "solver.mom2_weight=250.")
    args = parser.parse_args()
    paths = {"memit": args.memit, "alphaedit": args.alphaedit}
    both = settings(args.set_both)
    overrides = both | settings(args.set)
    methods = ("rome", "memit", "alphaedit")
    bench = WorldBench(args.arch, overrides=both, size=args.size, methods=methods)
    ours_bench = WorldBench(args.arch, overrides=overrides, size=args.size, methods=methods) if args.set else bench
    for b in {id(bench): bench, id(ours_bench): ours_bench}.values():
        b.model.to(args.device)
        without_bos(b.tokenizer)
    bench.orientations = Checkpoint(bench.path).orientations

    table = Table("method", "side", "efficacy", "paraphrase", "specificity", "s / edit",
                  title=f"{args.arch} {args.size} world, seeds {args.seeds}" + (f", both with {args.set_both}" if both else "")
                  + (f", editstore with {args.set}" if args.set else ""))
    for part in args.parts:
        method = part.removesuffix("-batch")
        path = paths[REPOSITORY[method]]
        hp = bench.hparams[method]
        variants = [parts or ["templates", *AS_REFERENCE] for parts in args.as_reference or []] if method != "rome" else []
        labels = [f"editstore as the reference ({', '.join(parts)})" for parts in variants]
        rows: dict[str, list[tuple[float, ...]]] = {side: [] for side in ["editstore", *labels, "reference"]}
        for seed in args.seeds:
            if part in BATCHED:
                batches = [bench.take(args.batch, offset=seed)]
            else:
                batches = [[r] for r in bench.held_out(args.single + seed)[seed:]]
            torch.manual_seed(seed)
            deltas, seconds = ours(ours_bench, method, batches)
            rows["editstore"].append((*score(ours_bench, batches, deltas), seconds / sum(map(len, batches))))
            if path is None:
                continue
            ours_hp = ours_bench.hparams[method]
            for parts, side in zip(variants, labels):
                with reference_checkout(path.resolve(), args.device):
                    torch.manual_seed(seed)  # as before the reference's run below
                    ours_bench.hparams[method] = as_reference(bench, method, ours_hp, parts)
                torch.manual_seed(seed)
                deltas, seconds = ours(ours_bench, method, batches)
                ours_bench.hparams[method] = ours_hp
                rows[side].append((*score(ours_bench, batches, deltas), seconds / sum(map(len, batches))))
            with reference_checkout(path.resolve(), args.device):
                torch.manual_seed(seed)
                deltas, seconds = REFERENCE[method](bench, batches, hp)
            rows["reference"].append((*score(bench, batches, deltas), seconds / sum(map(len, batches))))
        label = f"{method}, one batch of {args.batch}" if part in BATCHED else f"{method}, {args.single} single edits"
        for side, values in rows.items():
            if not values:
                table.add_row(label, side, *["(no --" + REPOSITORY[method] + " checkout)"] + ["-"] * 3)
                continue
            cells = [statistics.mean(v[i] for v in values) for i in range(4)]
            spread = [max(v[i] for v in values) - min(v[i] for v in values) for i in range(3)]
            table.add_row(label, side, *[f"{c:.3f}" + (f" ±{s / 2:.3f}" if len(values) > 1 else "")
                                         for c, s in zip(cells, spread)], f"{cells[3]:.2f}")
        table.add_section()
    console.print(table)


if __name__ == "__main__":
    main()
