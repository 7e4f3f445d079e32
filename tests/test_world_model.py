"""On the default fact world (built once and cached; ~3 min the first time): recall, tracing, eval, diff."""

from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from editstore import Store
from editstore.behavior import behavior_diff, evaluate_version
from editstore.compose.checkout import checkout_to
from editstore.core.inputs import read_jsonl
from editstore.evaluations import evaluations
from editstore.model.synthetic import random_delta
from editstore.porcelain import import_delta, tag
from editstore.trace import causal_trace


@pytest.fixture(scope="session")
def world_model(world: Path) -> tuple:
    return AutoModelForCausalLM.from_pretrained(world).eval(), AutoTokenizer.from_pretrained(world)


def test_world_recall_floors(world: Path) -> None:
    import json

    info = json.loads((world / "world.json").read_text())
    assert info["recall"]["trained"] >= 0.95
    assert info["recall"]["held_out"] >= 0.70


def test_causal_trace_peaks_at_last_subject_token(world: Path, world_model: tuple) -> None:
    """Averaged over facts, restoring the MLP output recovers most at the last subject token, middle layer."""
    model, tok = world_model
    facts = read_jsonl(world / "facts.jsonl")[::97][:16]
    at_last = torch.zeros(model.config.n_layer)
    peaks_at_last = 0
    for f in facts:
        t = causal_trace(model, tok, f["trained_prompts"][0], f["subject"], answer=f["object"])
        last = t.subject[1] - 1
        peaks_at_last += t.peak("mlp")[1] == last
        at_last += t.recovery["mlp"][:, last] / len(facts)
    assert peaks_at_last >= 0.75 * len(facts)
    peak_layer = int(at_last.argmax())
    assert 0 < peak_layer < model.config.n_layer - 1, at_last  # a middle layer
    assert at_last[peak_layer] >= 0.4


def test_eval_on_base_reports_recall_and_low_efficacy(tmp_path: Path, world: Path) -> None:
    store = Store.init(world, tmp_path / "store")
    requests = read_jsonl(world / "requests.jsonl")[:60]
    m = evaluate_version(store, "HEAD", requests=requests, device="cpu")
    assert m.n_requests == 60
    assert m.efficacy <= 0.1 and m.paraphrase <= 0.2
    assert m.specificity >= 0.9
    assert m.recall >= 0.95 and m.n_recall == 500
    [stored] = evaluations(store, store.head())
    assert stored["metrics"]["efficacy"] == m.efficacy
    store.close()


def _greedy(model: torch.nn.Module, tok, prompt: str) -> int:
    with torch.no_grad():
        return int(model(**tok(prompt, return_tensors="pt")).logits[0, -1].argmax())


def test_behavior_diff_finds_exactly_the_changed_probes(tmp_path: Path, world: Path, world_model: tuple) -> None:
    _, tok = world_model
    store = Store.init(world, tmp_path / "store")
    requests = read_jsonl(world / "requests.jsonl")[:15]
    tag(store, "before")
    param = "transformer.h.1.mlp.c_proj.weight"
    import_delta(store, random_delta(store.base, [param], rank=4, scale=0.4, seed=3), message="perturb")
    d = behavior_diff(store, "before", "HEAD", requests=requests, facts=100, device="cpu")

    a = AutoModelForCausalLM.from_pretrained(checkout_to(store, "before", tmp_path / "a")).eval()
    b = AutoModelForCausalLM.from_pretrained(checkout_to(store, "HEAD", tmp_path / "b")).eval()
    prompts = {p for r in requests for p in [r["prompt"].replace("{}", r["subject"]), *r["paraphrase_prompts"],
                                              *(n["prompt"] for n in r["neighborhood_prompts"])]}
    changed_by_hand = {p for p in prompts if _greedy(a, tok, p) != _greedy(b, tok, p)}
    reported = {c.probe.prompt for c in d.changes if c.probe.kind != "fact"}
    assert reported == changed_by_hand
    assert 0 < len(changed_by_hand) < len(prompts)  # the delta changed some probes, not all
    for c in d.changes:
        assert c.answer_a != c.answer_b and 0 < c.p_a <= 1 and 0 < c.p_b <= 1
    assert sum(n for kind, n in d.n_probes.items() if kind != "fact") == len(prompts)
    assert 90 <= d.n_probes["fact"] <= 100  # 100 untouched facts, less those already probed as neighbours
    store.close()


def test_world_commands_from_the_cli(tmp_path: Path, world: Path) -> None:
    import json

    from click.testing import CliRunner

    from editstore_cli.main import cli

    def run(*args: object, code: int = 0) -> str:
        result = CliRunner().invoke(cli, [str(a) for a in args])
        assert result.exit_code == code, result.output
        return result.stdout if code == 0 else result.output

    fact = read_jsonl(world / "facts.jsonl")[0]
    out = run("trace", "--model", world, "--prompt", fact["trained_prompts"][0], "--subject", fact["subject"],
              "--out", tmp_path / "trace.png", "--samples", "4")
    assert "peak (mlp)" in out and (tmp_path / "trace.png").stat().st_size > 1000
    assert "does not occur" in run("trace", "--model", world, "--prompt", "nothing here", "--subject", "Nobody", code=2)

    s = ["--store", tmp_path / "store"]
    run("init", "--base", world, *s)
    requests = tmp_path / "requests.jsonl"
    requests.write_text("".join(line + "\n" for line in (world / "requests.jsonl").read_text().splitlines()[:10]))
    metrics = json.loads(run("eval", "HEAD", "--requests", requests, "--json", "--device", "cpu", *s))
    assert metrics["n_requests"] == 10 and metrics["recall"] >= 0.9
    assert "eval " in run("show", "HEAD", *s)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "no placeholder", "subject": "x", "target_new": "y"}\n')
    assert "invalid" in run("eval", "--requests", bad, *s, code=2)
    run("tag", "v0", *s)
    diff = json.loads(run("diff", "v0", "HEAD", "--behavior", "--requests", requests, "--json", *s))
    assert diff["changes"] == [] and diff["n_probes"]["edit"] == 10
