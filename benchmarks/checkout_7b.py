"""Checkout of a 7B-shaped model: editstore against from_pretrained + save_pretrained, with peak memory.

    python benchmarks/checkout_7b.py --workdir DIR [--edits 1000] [--layers 8 9 10 11 12] [--keep]

The base is Llama-2-7B's configuration (32 layers, width 4,096, MLP 11,008, vocabulary 32,000:
6.7 B parameters) with random bfloat16 weights, written once into --workdir as Hugging Face shards
(about 13.5 GB, ~2 GB a shard; reused by later runs). The store holds --edits rank-one edits on
the MLP down projections (``model.layers.N.mlp.down_proj``) of --layers, in turn, with their keys
and targets, in one commit. Each case runs once as its own process under ``/usr/bin/time`` (wall
seconds and peak resident memory, everything from Python's start included; "above imports" subtracts
a process that only imports torch, transformers and editstore):

  from_pretrained + save_pretrained   the naive way to write a version
  checkout --out, cold                 composed-parameter cache emptied first
  checkout --out, warm                 the same version again
  checkout --out --link                unedited shards hard-linked to the base
  in-memory checkout                   editstore.checkout(store): the whole model in memory

Goals: ``--link`` ≤ 0.05× and cold ≤ 0.5× the naive save; ``checkout --out`` peak memory ≤ 1.5 GiB
above imports (only the edited tensors are read). Disk used is reported per output (hard links
count once, under the base).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

from rich.console import Console
from rich.table import Table

CONFIG = {
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 4096, "intermediate_size": 11008,
    "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 32, "vocab_size": 32000,
    "max_position_embeddings": 4096, "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "tie_word_embeddings": False,
    "bos_token_id": 1, "eos_token_id": 2, "torch_dtype": "bfloat16", "dtype": "bfloat16",
}
SHARD_BYTES = 2 * 10**9


def tensor_shapes() -> dict[str, tuple[int, ...]]:
    """Name -> shape of every tensor of the configuration, from the model built on the meta device."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.for_model(**{k: v for k, v in CONFIG.items() if k != "architectures"})
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    return {name: tuple(t.shape) for name, t in model.state_dict().items()}


def build_base(path: Path) -> Path:
    """The base, shard by shard (random bf16, std 0.02), with its index; never all in memory at once."""
    import torch
    from safetensors.torch import save_file

    if (path / "model.safetensors.index.json").is_file():
        return path
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps(CONFIG, indent=2))
    generator = torch.Generator().manual_seed(0)
    weight_map: dict[str, str] = {}
    shard: dict[str, torch.Tensor] = {}
    size = total = 0
    names = list(tensor_shapes().items())

    def flush() -> None:
        nonlocal shard, size
        name = f"model-{len(set(weight_map.values())) + 1:05d}.safetensors"
        save_file(shard, path / name, metadata={"format": "pt"})
        weight_map.update({k: name for k in shard})
        shard, size = {}, 0

    for name, shape in names:
        tensor = (torch.randn(shape, generator=generator) * 0.02).to(torch.bfloat16)
        if name.endswith("norm.weight"):
            tensor = torch.ones(shape, dtype=torch.bfloat16)
        nbytes = tensor.numel() * 2
        if size and size + nbytes > SHARD_BYTES:
            flush()
        shard[name] = tensor
        size += nbytes
        total += nbytes
    flush()
    count = len(set(weight_map.values()))
    renamed = {}
    for old in sorted(set(weight_map.values())):
        new = old.replace(".safetensors", f"-of-{count:05d}.safetensors")
        (path / old).rename(path / new)
        renamed[old] = new
    index = {"metadata": {"total_size": total}, "weight_map": {k: renamed[v] for k, v in weight_map.items()}}
    (path / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    return path


def build_store(root: Path, base: Path, edits: int, layers: list[int]) -> Path:
    from editstore import NewEdit, Store
    from editstore.model.synthetic import random_delta

    if (root / "store.db").is_file():
        return root
    with Store.init(base, root) as store:
        params = [f"model.layers.{layer}.mlp.down_proj.weight" for layer in layers]
        new = [NewEdit(random_delta(store.base, [params[i % len(params)]], rank=1, scale=0.02, seed=i, with_keys=True),
                       "import") for i in range(edits)]
        store.record_edits(new, message=f"{edits} rank-one edits on {len(params)} down projections")
    return root


def timed(argv: list[str]) -> tuple[float, int]:
    """(wall seconds, peak RSS bytes) of one process, measured by /usr/bin/time."""
    result = subprocess.run(["/usr/bin/time", "-f", "%e %M", *argv], capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"{argv} failed:\n{result.stderr[-3000:]}")
    seconds, kib = result.stderr.strip().splitlines()[-1].split()
    return float(seconds), int(kib) * 1024


def disk_bytes(path: Path) -> int:
    """Bytes of the files under ``path`` that are not hard links to elsewhere (st_nlink 1)."""
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and p.stat().st_nlink == 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--edits", type=int, default=1000)
    parser.add_argument("--layers", type=int, nargs="+", default=[8, 9, 10, 11, 12])
    parser.add_argument("--keep", action="store_true", help="Keep the outputs (else each is deleted after its case).")
    args = parser.parse_args()

    work = args.workdir
    base = build_base(work / "base-7b")
    store = build_store(work / "store-7b", base, args.edits, args.layers)
    editstore = str(Path(sysconfig.get_path("scripts")) / "editstore")
    py = sys.executable
    imports = "import torch, transformers, editstore, editstore.compose.checkout"
    naive = (f"{imports}\nfrom transformers import AutoModelForCausalLM\n"
             f"m = AutoModelForCausalLM.from_pretrained({str(base)!r}, dtype='auto')\n"
             f"m.save_pretrained({str(work / 'out-naive')!r})")
    in_memory = (f"{imports}\nfrom editstore import Store, checkout\n"
                 f"checkout(Store.open({str(store)!r}), device='cpu')")
    cases: list[tuple[str, list[str], Path | None]] = [
        ("imports only", [py, "-c", imports], None),
        ("from_pretrained + save_pretrained", [py, "-c", naive], work / "out-naive"),
        ("checkout --out, cold", [editstore, "--store", str(store), "checkout", "HEAD", "--out", str(work / "out-cold")],
         work / "out-cold"),
        ("checkout --out, warm", [editstore, "--store", str(store), "checkout", "HEAD", "--out", str(work / "out-warm")],
         work / "out-warm"),
        ("checkout --out --link", [editstore, "--store", str(store), "checkout", "HEAD", "--out",
                                   str(work / "out-link"), "--link"], work / "out-link"),
        ("in-memory checkout", [py, "-c", in_memory], None),
    ]
    rows = []
    for label, argv, out in cases:
        if out is not None and out.exists():
            shutil.rmtree(out)
        if label.endswith("cold"):
            shutil.rmtree(store / "cache", ignore_errors=True)
        os.sync()
        seconds, rss = timed(argv)
        used = disk_bytes(out) if out is not None else 0
        rows.append((label, seconds, rss, used))
        if out is not None and not args.keep:
            shutil.rmtree(out)
        print(f"{label}: {seconds:.1f} s, {rss / 2**30:.2f} GiB", file=sys.stderr)

    naive_s = rows[1][1]
    base_rss = rows[0][2]
    table = Table(title=f"7B-shaped checkout ({args.edits} rank-one edits on {len(args.layers)} down projections; "
                        f"base {disk_bytes(base) / 1e9:.1f} GB, store {disk_bytes(store) / 1e6:.0f} MB)")
    for column in ("case", "seconds", "× naive save", "peak RSS GiB", "above imports GiB", "disk GB"):
        table.add_column(column, justify="left" if column == "case" else "right")
    for label, seconds, rss, used in rows:
        table.add_row(label, f"{seconds:.1f}", f"{seconds / naive_s:.3f}" if label != "imports only" else "",
                      f"{rss / 2**30:.2f}", f"{(rss - base_rss) / 2**30:.2f}" if label != "imports only" else "",
                      f"{used / 1e9:.2f}" if used else "")
    Console(width=140).print(table)


if __name__ == "__main__":
    main()
