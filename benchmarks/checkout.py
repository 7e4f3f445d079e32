"""Checkout speed and memory; prints one table per part.

    python benchmarks/checkout.py [--parts store compose] [--edits 1000] [--layers-per-edit 1]
                                  [--shards 4] [--repeat 5] [--compose-edits 10000]
                                  [--compose-repeat 1] [--device auto] [--workdir DIR]

store:   a GPT-2-small-sized model (GPT2Config(), 124M parameters, random weights, float32)
         saved in --shards shards; a store with --edits edits on the MLP down-projections
         of layers 5 and 6, with keys and targets, as real edits have. With
         --layers-per-edit 1 (the default) each edit is rank one (ROME's shape), on layer 5
         or 6 in turn, so each layer takes half of them; with 2 each edit is rank one on
         both layers (MEMIT's shape: rank two in all), so each layer takes all of them.
         Times, against the same base in the same run: from_pretrained; from_pretrained +
         save_pretrained; `editstore checkout --out` (cold and warm composed-parameter
         cache; the default reflinks or copies unedited shards, --link hard-links them); in-memory
         checkout(store) (cold and warm). Bars (issue 4): checkout --out ≤ 0.5 × (load +
         save), in-memory ≤ 1.2 × load. A warm cache is a second checkout of the version,
         or of one that shares its edited parameters. Also two whole processes, as a user
         times them (Python's start and every import inside the clock): `editstore checkout
         HEAD --out` against `python -c` from_pretrained + save_pretrained; bar ≤ 0.5.
compose: one (6400 x 1600) parameter (GPT-2 XL's mlp.c_proj: d_in 6400, d_out 1600) and
         --compose-edits rank-one edits: sequential composition (editstore.compose.sequential.apply_factors,
         W₀ + U Vᵀ with the factors concatenated) and the batched re-solve
         (editstore.compose.resolve.solve_single_layer) with EMMET's GPT-2 XL solver settings (w 1000,
         λ_e 0.1) and with λ_e 0 (batched ROME: over-determined, pseudo-inverse), on keys
         drawn from a distribution with a decaying spectrum (10⁰ to 10⁻³) plus 64
         correlated directions, and Σ its covariance. Runs --compose-repeat times.

Every case runs in a fresh subprocess (so its peak resident memory is its own) --repeat
times, with Python imports done before its clock starts; the table shows the median
seconds, the fastest and the slowest run, and the largest peak RSS, also above that of a
process that only imported. Opening the store and checking the base are part of a
checkout's time. The cases take turns, one run of each per round, so that all of them see
the same machine, in a new order each round (shuffled with a fixed seed): in a fixed order a
case always follows the same one, and here what runs before matters (a cold checkout measured
0.40 s after `from_pretrained + save_pretrained`, which frees 950 MiB, and 0.24 s after
`from_pretrained`, 8 runs each). A checkout fills the composed-parameter cache, and one
untimed checkout runs before the first round, so a warm case always finds it filled; a cold
case empties it first. Before each run: the previous output is deleted and `os.sync()` run, so
none pays for writing back another's output; then SETTLE seconds pass; then the base and the
store are read through, so that their reads come from memory for every case alike
(proactive reclaim would otherwise make some runs read from disk).
On the virtual machine the table in docs/checkout.md was made on, memory the guest frees goes back
to the host within about a second (free page reporting) and writing into it again costs
several times a normal page-cache write, so a run's time still depends on how long ago
the one before freed its memory: the spread the table shows.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.table import Table

console = Console(width=130)
LAYERS = (5, 6)
SETTLE = 1.0  # seconds between deleting the last output and the next run (see the docstring)
SEED = 0  # of the order the cases take in each round
PARAM = "transformer.h.{}.mlp.c_proj.weight"


# ----------------------------------------------------------------- setup (in the parent)

def build_base(work: Path, shards: int) -> Path:
    """GPT2Config() with random weights, saved in ``shards`` safetensors shards."""
    from transformers import GPT2Config, GPT2LMHeadModel

    base = work / "base"
    if (base / "config.json").is_file():
        return base
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config())
    size = sum(p.numel() * p.element_size() for p in model.state_dict().values())
    model.save_pretrained(base, max_shard_size=f"{size // shards // 2**20 + 1}MB")
    return base


def build_store(work: Path, base: Path, edits: int, layers_per_edit: int) -> Path:
    """A store whose HEAD holds ``edits`` edits on layers 5 and 6 (one commit): each rank one on one of
    them in turn, or (``layers_per_edit`` 2) rank one on both."""
    from editstore import NewEdit, Store
    from editstore.model.synthetic import random_delta

    root = work / f"store-{edits}x{layers_per_edit}"
    if (root / "store.db").is_file():
        return root
    params = [PARAM.format(layer) for layer in LAYERS]
    with Store.init(base, root) as store:
        new = [NewEdit(random_delta(store.base, _edited(params, i, layers_per_edit), rank=1, scale=0.02, seed=i,
                                    with_keys=True), "import")
               for i in range(edits)]
        store.record_edits(new, message=f"{edits} edits, rank one on {layers_per_edit} layer(s) each")
    return root


def _edited(params: list[str], i: int, layers_per_edit: int) -> list[str]:
    return params if layers_per_edit == len(params) else [params[i % len(params)]]


def model_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.glob("*.safetensors"))


# ----------------------------------------------------------------- cases (each in a child process)

def case_load(a: argparse.Namespace) -> dict[str, Any]:
    from transformers import AutoModelForCausalLM

    start = time.perf_counter()
    AutoModelForCausalLM.from_pretrained(a.base, dtype="auto")
    return {"seconds": time.perf_counter() - start}


def case_load_save(a: argparse.Namespace) -> dict[str, Any]:
    from transformers import AutoModelForCausalLM

    out = Path(a.out)
    start = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(a.base, dtype="auto")
    model.save_pretrained(out)
    return {"seconds": time.perf_counter() - start}


def _open_store(a: argparse.Namespace) -> Any:
    """Open the store (inside the clock: a user's checkout opens it too)."""
    from editstore import Store

    return Store.open(a.store)


def _clear_cache(a: argparse.Namespace) -> None:
    if not a.warm:
        shutil.rmtree(Path(a.store) / "cache", ignore_errors=True)


def case_checkout(a: argparse.Namespace) -> dict[str, Any]:
    _clear_cache(a)
    start = time.perf_counter()
    _open_store(a).checkout_to("HEAD", a.out, device=a.device, link=a.link)
    return {"seconds": time.perf_counter() - start}


def case_in_memory(a: argparse.Namespace) -> dict[str, Any]:
    _clear_cache(a)
    start = time.perf_counter()
    _open_store(a).checkout("HEAD", device=a.device)
    return {"seconds": time.perf_counter() - start}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def case_compose_sequential(a: argparse.Namespace) -> dict[str, Any]:
    from editstore.compose.sequential import apply_factors, resolve_device
    from editstore.model.checkpoint import CONV1D
    from editstore.model.delta import Factors

    device = resolve_device(a.device)
    g = torch.Generator().manual_seed(0)
    d_out, d_in, n = 1600, 6400, a.n
    weight = torch.randn(d_in, d_out, generator=g) * 0.02  # stored (in, out), as GPT-2's Conv1D
    factors = [Factors(torch.randn(d_out, n, generator=g) * 1e-3, torch.randn(d_in, n, generator=g) * 1e-3)]
    _sync(device)
    start = time.perf_counter()
    new = apply_factors(weight, factors, orientation=CONV1D, device=device).cpu()
    _sync(device)
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "finite": bool(torch.isfinite(new).all())}


def case_compose_batched(a: argparse.Namespace) -> dict[str, Any]:
    from editstore.compose.resolve import solve_single_layer
    from editstore.compose.sequential import resolve_device
    from editstore.methods.hparams import find_hparams

    device = resolve_device(a.device)
    hp = find_hparams("emmet", {"model_type": "gpt2", "n_layer": 48, "n_embd": 1600})
    hp = hp.replace(**{"solver.lambda_e": a.lambda_e})
    g = torch.Generator().manual_seed(0)
    d_out, d_in, n = 1600, 6400, a.n
    scale = torch.logspace(0, -3, d_in, dtype=torch.float64)  # a decaying spectrum ...
    mix = torch.randn(d_in, 64, generator=g, dtype=torch.float64) * 0.1  # ... and 64 correlated directions

    def draw(m: int) -> torch.Tensor:  # (d_in, m) keys with covariance diag(scale²) + mix mixᵀ
        z = torch.randn(d_in, m, generator=g, dtype=torch.float64)
        return scale[:, None] * z + mix @ torch.randn(64, m, generator=g, dtype=torch.float64)

    sigma = (torch.diag(scale**2) + mix @ mix.T).to(device)
    W = (torch.randn(d_out, d_in, generator=g, dtype=torch.float64) * 0.02).to(device)
    K = draw(n).to(device)
    R = torch.randn(d_out, n, generator=g, dtype=torch.float64).to(device) * 0.1
    T = W @ K + R
    _sync(device)
    start = time.perf_counter()
    sol = solve_single_layer(hp, W, K, T, sigma)
    _sync(device)
    seconds = time.perf_counter() - start
    moved = sol.U @ (sol.V.T @ K)
    return {
        "seconds": seconds,
        "finite": bool(torch.isfinite(sol.U).all() and torch.isfinite(sol.V).all()),
        "residual": float((moved - R).norm() / R.norm()),
        "pseudo_inverse": sol.pseudo_inverse,
    }


def case_imports(a: argparse.Namespace) -> dict[str, Any]:
    return {"seconds": 0.0}


LOAD_SAVE = ("import sys; from transformers import AutoModelForCausalLM; "
             "AutoModelForCausalLM.from_pretrained(sys.argv[1], dtype='auto').save_pretrained(sys.argv[2])")


def _whole_process(argv: list[str]) -> dict[str, Any]:
    """Seconds of a whole new process, as a user waits for it (Python's start and imports included),
    and its peak RSS."""
    start = time.perf_counter()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL)
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "peak_rss": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024}


def case_process_load_save(a: argparse.Namespace) -> dict[str, Any]:
    return _whole_process([sys.executable, "-c", LOAD_SAVE, a.base, a.out])


def case_process_checkout(a: argparse.Namespace) -> dict[str, Any]:
    _clear_cache(a)
    command = shutil.which("editstore") or "editstore"
    return _whole_process([command, "--store", a.store, "checkout", "HEAD", "--out", a.out, "--device", a.device])


CASES: dict[str, Callable[[argparse.Namespace], dict[str, Any]]] = {
    "imports": case_imports,
    "load": case_load,
    "load_save": case_load_save,
    "checkout": case_checkout,
    "in_memory": case_in_memory,
    "compose_sequential": case_compose_sequential,
    "compose_batched": case_compose_batched,
    "process_load_save": case_process_load_save,
    "process_checkout": case_process_checkout,
}


def child(argv: list[str]) -> None:
    p = argparse.ArgumentParser()
    p.add_argument("case", choices=CASES)
    for flag in ("--base", "--store", "--out", "--device"):
        p.add_argument(flag)
    p.add_argument("--n", type=int)
    p.add_argument("--lambda-e", type=float, default=0.1)
    p.add_argument("--warm", action="store_true")
    p.add_argument("--link", action="store_true")
    a = p.parse_args(argv)
    warm_imports()
    result = CASES[a.case](a)
    result.setdefault("peak_rss", peak_rss())
    print(json.dumps(result))


def warm_imports() -> None:
    """Import what every case uses before its clock starts, so no case pays Python's import time."""
    import importlib

    for module in ("transformers", "transformers.models.gpt2.modeling_gpt2", "editstore.store", "editstore.compose.resolve"):
        importlib.import_module(module)


def peak_rss() -> int:
    """This process's peak resident memory in bytes (VmHWM: unlike ru_maxrss it does not carry over exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


# ----------------------------------------------------------------- the parent

@dataclass
class Case:
    """One row of a table: a child case and its options."""

    case: str
    out: Path | None = None
    options: dict[str, Any] = field(default_factory=dict)
    read_first: list[Path] = field(default_factory=list)  # directories read through before each run
    runs: list[dict[str, Any]] = field(default_factory=list)

    def once(self) -> None:
        """Run in a fresh process, with no dirty pages of earlier cases left to write back."""
        if self.out is not None:
            shutil.rmtree(self.out, ignore_errors=True)
        os.sync()
        time.sleep(SETTLE)
        buffer = bytearray(1 << 20)  # reused: freeing a large read right before the run would disturb it too
        for root in self.read_first:
            for f in sorted(root.rglob("*")):
                if f.is_file():
                    with open(f, "rb", buffering=0) as fh:
                        while fh.readinto(buffer):
                            pass
        args = [sys.executable, __file__, "--child", self.case] + (["--out", str(self.out)] if self.out else [])
        for key, value in self.options.items():
            if value is True:
                args.append(f"--{key.replace('_', '-')}")
            elif value is not None and value is not False:
                args += [f"--{key.replace('_', '-')}", str(value)]
        proc = subprocess.run(args, capture_output=True, text=True)
        if proc.returncode != 0:
            raise SystemExit(f"{self.case} failed:\n{proc.stderr[-3000:]}")
        self.runs.append(json.loads(proc.stdout.strip().splitlines()[-1]))
        if self.out is not None:
            shutil.rmtree(self.out, ignore_errors=True)

    @property
    def result(self) -> dict[str, Any]:
        """Median seconds, largest peak RSS, the last run's extras."""
        result = dict(self.runs[-1])
        result["seconds"] = statistics.median(r["seconds"] for r in self.runs)
        result["peak_rss"] = max(r["peak_rss"] for r in self.runs)
        result["spread"] = f"{min(r['seconds'] for r in self.runs):.3f}–{max(r['seconds'] for r in self.runs):.3f}"
        return result


def run(cases: list[Case], repeat: int) -> None:
    """Run every case ``repeat`` times, taking turns in a new order each round (see the docstring)."""
    order = random.Random(SEED)
    for _ in range(repeat):
        for case in order.sample(cases, len(cases)):
            case.once()


def mib(n: float) -> str:
    return f"{n / 2**20:,.0f}"


def store_part(a: argparse.Namespace, work: Path) -> None:
    base = build_base(work, a.shards)
    store = build_store(work, base, a.edits, a.layers_per_edit)
    out = work / "out"
    size = model_bytes(base)
    common = {"device": a.device}
    load = Case("load", options={"base": base})
    load_save = Case("load_save", out, {"base": base})
    # (name, case, reference, bar)
    rows = [
        ("from_pretrained", load, None, ""),
        ("from_pretrained + save_pretrained", load_save, None, ""),
        ("checkout --out, cold cache", Case("checkout", out, {"store": store, **common}), load_save, "≤ 0.50"),
        ("checkout --out, warm cache", Case("checkout", out, {"store": store, "warm": True, **common}), load_save, "≤ 0.50"),
        ("checkout --out --link, cold cache", Case("checkout", out, {"store": store, "link": True, **common}), load_save,
         "≤ 0.50"),
        ("in-memory checkout(store), cold cache", Case("in_memory", options={"store": store, **common}), load, ""),
        ("in-memory checkout(store), warm cache", Case("in_memory", options={"store": store, "warm": True, **common}),
         load, "≤ 1.20"),
    ]
    process_load_save = Case("process_load_save", out, {"base": base})
    rows += [  # whole processes, as a user times them: Python's start and the imports count
        ("process: python -c from_pretrained + save_pretrained", process_load_save, None, ""),
        ("process: editstore checkout --out, cold cache", Case("process_checkout", out, {"store": store, **common}),
         process_load_save, "≤ 0.50"),
    ]
    for _, case, _, _ in rows:
        case.read_first = [base, store]
    idle = Case("imports")
    run([idle, Case("in_memory", options={"store": store, **common})], 1)  # the latter fills the cache
    run([case for _, case, _, _ in rows], a.repeat)
    idle_rss = idle.result["peak_rss"]
    n_shards = len(list(base.glob("*.safetensors")))
    table = Table("case", "seconds", "min–max", "ratio", "bar", "peak RSS MiB", "above imports",
                  title=f"checkout of a 124M-parameter GPT-2 ({mib(size)} MiB, {n_shards} shards), "
                        f"{a.edits} edits on layers {LAYERS[0]} and {LAYERS[1]}, {_shape(a.layers_per_edit)}, "
                        f"device {a.device}")
    for name, case, ref, bar in rows:
        r = case.result
        ratio = f"{r['seconds'] / ref.result['seconds']:.2f}" if ref else ""
        table.add_row(name, f"{r['seconds']:.3f}", r["spread"], ratio, bar, mib(r["peak_rss"]), mib(r["peak_rss"] - idle_rss))
    console.print(table)
    console.print(f"peak RSS of a process that has only imported torch, transformers and editstore: {mib(idle_rss)} MiB")


def _shape(layers_per_edit: int) -> str:
    if layers_per_edit == 1:
        return "each rank one on one layer (half on each)"
    return f"each rank one on {layers_per_edit} layers (all on each)"


def compose_part(a: argparse.Namespace) -> None:
    n = a.compose_edits
    table = Table("composition", "seconds", "finite", "‖ΔK − R‖/‖R‖", "pseudo-inverse", "peak RSS MiB",
                  title=f"{n:,} rank-one edits onto one (6400 x 1600) parameter "
                        f"({mib(6400 * 1600 * 4)} MiB in float32), device {a.device}")
    sequential = Case("compose_sequential", options={"device": a.device, "n": n})
    batched = [Case("compose_batched", options={"device": a.device, "n": n, "lambda_e": lambda_e}) for lambda_e in (0.1, 0.0)]
    run([sequential, *batched], a.compose_repeat)
    r = sequential.result
    table.add_row("sequential: W₀ + U Vᵀ (one GEMM, R = n)", f"{r['seconds']:.3f}", str(r["finite"]), "", "", mib(r["peak_rss"]))
    for case, label in zip(batched, ("batched: EMMET re-solve, w 1000, λ_e 0.1", "batched: ROME re-solve, λ_e 0")):
        r = case.result
        table.add_row(label, f"{r['seconds']:.3f}", str(r["finite"]), f"{r['residual']:.3f}", str(r["pseudo_inverse"]),
                      mib(r["peak_rss"]))
    console.print(table)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(sys.argv[2:])
        return
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--parts", nargs="+", choices=["store", "compose"], default=["store", "compose"])
    p.add_argument("--edits", type=int, default=1000)
    p.add_argument("--layers-per-edit", type=int, default=1, choices=[1, len(LAYERS)],
                   help="1: each edit rank one on layer 5 or 6 in turn; 2: rank one on both")
    p.add_argument("--shards", type=int, default=4)
    p.add_argument("--compose-edits", type=int, default=10_000)
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--compose-repeat", type=int, default=1)
    p.add_argument("--workdir", type=Path, help="Keep the model and store here between runs (default: a temp dir).")
    a = p.parse_args()
    console.print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
                  f"CUDA: {torch.cuda.get_device_name() if torch.cuda.is_available() else 'none'}")
    work = a.workdir or Path(tempfile.mkdtemp(prefix="editstore-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        if "store" in a.parts:
            store_part(a, work)
        if "compose" in a.parts:
            compose_part(a)
    finally:
        if a.workdir is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
