"""Where an edit's time goes: the phases of editstore's locate-then-edit methods, by cProfile.

    python benchmarks/profile_edit.py [--arch gpt2] [--size small|large] [--methods rome memit alphaedit]
                                      [--single 20] [--batch 100] [--set KEY=JSON ...]

rome, alphaedit: --single requests, each edited alone on the base (one call each, as a user's edits).
memit:           one batch of --batch requests.

Each phase is the cumulative time of the function that does it, as a share of the whole call:

- prefixes:     sampling the context prefixes from the model (``sample_prefixes``);
- target step:  the value optimisation, its forward and backward passes (``optimise_deltas``);
- keys:         the keys k̄ over the prefixed prompts (``mean_keys``);
- hidden:       the last edited block's output at the subject, for z and the residuals (``outputs_at_subject``
                outside the target step, which reads its module's output itself);
- solve:        the closed form (``solve``);
- other:        the rest (tokenizing, hooks, building the deltas).

The profiler adds its own overhead to every Python call, so the shares, not the seconds, are the result;
the seconds per edit without the profiler are printed beside them.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import time
from collections.abc import Sequence

from rich.console import Console
from rich.table import Table

from editstore.world.bench import WorldBench, settings
from editstore.world.build import SIZES

PHASES = {  # phase -> (module file, function)
    "prefixes": ("targets.py", "sample_prefixes"),
    "target step": ("targets.py", "optimise_deltas"),
    "keys": ("targets.py", "mean_keys"),
    "hidden": ("targets.py", "outputs_at_subject"),
    "solve": ("locate.py", "solve"),
}


def cumulative(stats: pstats.Stats, file: str, function: str, *, not_from: str = "") -> float:
    """Seconds spent in ``function`` of ``file`` and everything it called, except in calls from ``not_from``."""
    total = 0.0
    for (path, _, name), (*_, callers) in stats.stats.items():  # type: ignore[attr-defined]
        if path.endswith(file) and name == function:
            total += sum(row[3] for (_, _, caller), row in callers.items() if caller != not_from)
    return total


def run(bench: WorldBench, method: str, batches: Sequence[Sequence[dict]]) -> float:
    start = time.perf_counter()
    for batch in batches:
        bench.edit(method, batch)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="gpt2")
    parser.add_argument("--size", default="small", choices=SIZES)
    parser.add_argument("--methods", nargs="+", default=["rome", "memit", "alphaedit"])
    parser.add_argument("--single", type=int, default=20)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=JSON")
    args = parser.parse_args()
    bench = WorldBench(args.arch, size=args.size, methods=args.methods, overrides=settings(args.set))
    table = Table("method", "s / edit", *PHASES, "other", title=f"{args.arch} {args.size} world: share of an edit's time")
    for method in args.methods:
        if method == "memit":
            batches, label = [bench.take(args.batch)], f"memit, one batch of {args.batch}"
        else:
            batches, label = [[r] for r in bench.held_out(args.single)], f"{method}, {args.single} single edits"
        n = sum(map(len, batches))
        run(bench, method, batches[:1])  # warm up
        seconds = run(bench, method, batches) / n
        profile = cProfile.Profile()
        profile.enable()
        run(bench, method, batches)
        profile.disable()
        stats = pstats.Stats(profile)
        total = cumulative(stats, "locate.py", "locate_and_edit")
        # the target step reads the module's output itself: count that once, inside the target step
        shares = {phase: cumulative(stats, *where, not_from="_optimise_chunk") for phase, where in PHASES.items()}
        table.add_row(label, f"{seconds:.3f}", *[f"{shares[p] / total:.0%}" for p in PHASES],
                      f"{1 - sum(shares.values()) / total:.0%}")
    Console(width=140).print(table)


if __name__ == "__main__":
    main()
