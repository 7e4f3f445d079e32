"""How far one joint solve can carry a batch: the same keys and targets, solved with each regulariser.

    python benchmarks/solvers.py [--arch gpt2] [--size large] [--batch 1000] [--method memit]
                                 [--lambdas 1 10 100 1000 10000] [--lambda-e 0 1 10 100 1000] [--recall 1000]

One batch of --batch requests (distinct subjects) gets its keys K and target values T once, by
--method's target step (what every edit stores and what `checkout --compose batched` re-solves
from): on the base for MEMIT, EMMET and AlphaEdit; for ROME, whose batch is a sequence, each
request on top of the ones before, as in a history of ROME commits (much slower: 1,000 requests
take over 25 minutes on 2 cores). The batch is then solved again for each setting, on the base weight W, as the
re-solve does (residuals T − W K):

memit λ     Δ = R Kᵀ (λΣ + K Kᵀ)⁻¹, MEMIT's least squares, for each --lambdas value;
emmet λ_e   Δ = R (Kᵀ Σ⁻¹ K + λ_e I)⁻¹ Kᵀ Σ⁻¹, EMMET's equality constraints relaxed by λ_e
            (λ_e = 0 is batched ROME, the re-solve of a ROME history), for each --lambda-e value.

EMMET with λ_e and weight w is MEMIT with λ = w λ_e (push-through identity), so the two rows
meet where the products agree; both are printed because the ROME and EMMET re-solves use the
second form. Each solution is scored like benchmarks/methods.py: efficacy, paraphrase and
specificity of the batch, top-1 recall of --recall facts of untouched subjects (and of the base
for reference), and ‖Δ‖ (Frobenius).
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Sequence

import torch
from rich.console import Console
from rich.table import Table

from editstore.compose.resolve import linear_base_weight, solve_single_layer
from editstore.methods.solvers import Solution
from editstore.model.checkpoint import Checkpoint
from editstore.model.delta import Delta, Factors
from editstore.world.bench import WorldBench
from editstore.world.build import SIZES

console = Console(width=130)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="gpt2", choices=["gpt2", "llama"])
    parser.add_argument("--size", default="large", choices=SIZES)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--method", default="memit", choices=["rome", "memit", "emmet", "alphaedit"],
                        help="Whose target step computes the batch's keys and targets.")
    parser.add_argument("--lambdas", type=float, nargs="*", default=[1, 10, 100, 1000, 10000])
    parser.add_argument("--lambda-e", type=float, nargs="*", default=[0, 1, 10, 100, 1000])
    parser.add_argument("--recall", type=int, default=1000)
    args = parser.parse_args(argv)

    bench = WorldBench(args.arch, size=args.size, methods=[args.method])
    hp = bench.hparams[args.method]
    if len(hp.layers) != 1:
        raise SystemExit(f"{args.method}'s packaged hparams edit {len(hp.layers)} layers; this sweep solves one")
    requests = bench.take(args.batch)
    name = hp.module_name(hp.layers[0])
    param = f"{name}.weight"
    console.print(f"{args.method} targets for {len(requests)} requests on {bench.path.name} ({name}) ...")
    edited = bench.edit(args.method, requests)
    K = torch.cat([d.factors[param].keys.double() for d in edited.deltas], dim=1)  # (d_in, n)
    T = torch.cat([d.factors[param].targets.double() for d in edited.deltas], dim=1)  # (d_out, n)
    W = linear_base_weight(Checkpoint(bench.path), param)  # (d_out, d_in)
    sigma = bench.sigmas[name]

    table = Table(title=f"one joint solve of {len(requests)} {args.method} targets, {bench.path.name}")
    for column in ("solve", "efficacy", "paraphrase", "specificity", "untouched recall", "‖Δ‖", "pinv"):
        table.add_column(column)
    base = bench.evaluate(requests, [], recall=args.recall)
    table.add_row("base (no edit)", "", "", "", f"{base.recall:.3f}", "", "")
    settings = [("memit", dataclasses.replace(hp.solver, mom2_weight=lam), f"memit λ={lam:g}") for lam in args.lambdas]
    settings += [("emmet", dataclasses.replace(hp.solver, mom2_weight=1.0, lambda_e=lam), f"emmet λ_e={lam:g}")
                 for lam in args.lambda_e]
    for method, solver, label in settings:
        sol = solve_single_layer(dataclasses.replace(hp, method=method, solver=solver), W, K, T, sigma)
        m = bench.evaluate(requests, [as_delta(param, sol)], recall=args.recall)
        table.add_row(label, f"{m.efficacy:.3f}", f"{m.paraphrase:.3f}", f"{m.specificity:.3f}", f"{m.recall:.3f}",
                      f"{(sol.U @ sol.V.T).norm():.1f}", "yes" if sol.pseudo_inverse else "")
        console.print(f"  {label}: {m.efficacy:.3f} / {m.paraphrase:.3f} / {m.specificity:.3f}, recall {m.recall:.3f}")
    console.print(table)


def as_delta(param: str, sol: Solution) -> Delta:
    """The whole solution as one delta (its U and V side by side), for WorldBench.evaluate."""
    return Delta({param: Factors(sol.U.float(), sol.V.float())}, {"method": "sweep"})


if __name__ == "__main__":
    main()
