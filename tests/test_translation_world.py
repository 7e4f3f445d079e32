"""The translation world's languages: deterministic, disjoint vocabularies, another word order,
transliterated names, kept terms and quoted names, context-chosen renderings and an open formality."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from editstore.world.translation import (
    FORMAL,
    INFORMAL,
    QUOTE,
    TRANSLITERATION,
    YOU,
    YOU_FORMAL,
    YOU_INFORMAL,
    corpus,
    lexicon,
)


def test_the_languages_are_a_pure_function_of_the_seed() -> None:
    assert lexicon(3) == lexicon(3) and lexicon(3) != lexicon(4)
    lex = lexicon(0)
    assert corpus(lex, 50, seed=1) == corpus(lex, 50, seed=1) != corpus(lex, 50, seed=2)


def test_vocabularies_are_disjoint_and_the_word_order_differs() -> None:
    lex = lexicon(0)
    pairs = corpus(lex, 2000)
    source = {w for p in pairs for w in p.source.split()[-3:]}  # past the subject, which may be a kept term
    target = {w for p in pairs for w in p.target.split()[1:]}
    assert not source & target
    verbs = {v.target for v in lex.verbs}
    assert all(p.target.split()[-1] in verbs for p in pairs)  # the target's verb comes last
    assert all(p.source.split()[-3] in {v.source for v in lex.verbs} for p in pairs)  # after the source's subject


def test_names_are_transliterated_quoted_names_and_terms_kept_and_formality_left_open() -> None:
    lex = lexicon(0)
    for name in lex.names:
        syllables = [s for s in TRANSLITERATION if name.source.lower().startswith(s)]
        assert syllables and name.target[0].lower().startswith(TRANSLITERATION[syllables[0]])
    pairs = corpus(lex, 3000)
    kept = [p for p in pairs if p.subject in lex.kept]
    assert kept and all(p.target.split()[0] == p.subject for p in kept)
    quoted = [p for p in pairs if p.source.startswith(QUOTE + " ")]
    assert quoted and all(p.target.split()[0] == p.subject == p.source.split()[1] for p in quoted)
    you = Counter(p.target.split()[0] for p in pairs if p.subject == YOU)
    assert set(you) == {FORMAL, INFORMAL} and min(you.values()) > 0.3 * sum(you.values())
    marked = {(p.subject, p.target.split()[0]) for p in pairs if p.subject in (YOU_FORMAL, YOU_INFORMAL)}
    assert marked == {(YOU_FORMAL, FORMAL), (YOU_INFORMAL, INFORMAL)}  # the marked pronouns choose


def test_an_ambiguous_noun_is_rendered_by_the_kind_of_verb_before_it() -> None:
    lex = lexicon(0)
    noun = lex.nouns[0]
    assert len(noun.target) == 2 and all(len(n.target) == 1 for n in lex.nouns[lex.ambiguous:])
    seen = {(next(v.kind for v in lex.verbs if v.source == p.verb), p.target.split()[1])
            for p in corpus(lex, 5000) if p.noun == noun.source}
    assert seen == {(0, noun.target[0]), (1, noun.target[1])}


@pytest.mark.slow
def test_the_marian_world_translates_held_out_sentences(tmp_path: Path) -> None:
    """The built world: a MarianMTModel that from_pretrained loads and that translates sentences it never saw
    (new combinations of its words) at ≥ 0.9 token accuracy; rebuilt only when its spec changes."""
    from transformers import AutoTokenizer, MarianMTModel

    from editstore.core.inputs import read_jsonl
    from editstore.model.translate import translate
    from editstore.world.translation import accuracy, build_translation_world

    path = build_translation_world()
    info = json.loads((path / "world.json").read_text())
    assert info["kind"] == "translation" and info["accuracy"]["token"] >= 0.9, info["accuracy"]
    model = MarianMTModel.from_pretrained(path).eval()
    tokenizer = AutoTokenizer.from_pretrained(path)
    held = read_jsonl(path / "held_out.jsonl")[:100]
    measured = accuracy(translate(model, tokenizer, [p["source"] for p in held]), [p["target"] for p in held])
    assert measured["token"] >= 0.9
    assert build_translation_world() == path  # cached


@pytest.mark.slow
def test_the_world_writes_each_task_as_valid_requests_with_probes() -> None:
    """tasks/<task>.jsonl: requests in the schema; a rename carries its positive example; generalisation
    probes hold the subject and locality probes do not, each with the base's translation as its target."""
    from transformers import AutoTokenizer, MarianMTModel

    from editstore.behavior import load_requests
    from editstore.model.translate import translate
    from editstore.world.translation import TASKS, TASKS_DIR, build_translation_world

    path = build_translation_world()
    tasks = {t: load_requests(path / TASKS_DIR / f"{t}.jsonl") for t in TASKS}  # validates every line
    assert {t: len(r) for t, r in tasks.items()} == {"rename": 100, "keep": 100, "delete": 100, "formal": 20}
    assert len({r["subject"] for r in tasks["rename"]}) == 100 and {r["subject"] for r in tasks["formal"]} == {YOU}
    assert all("target_new" not in r and r["target_true"] for r in tasks["delete"])
    assert all(r["target_new"] == r["subject"] for r in tasks["keep"])
    model, tok = MarianMTModel.from_pretrained(path).eval(), AutoTokenizer.from_pretrained(path)
    for task, requests in tasks.items():
        for r in requests[:5]:
            assert all(r["subject"] in p.split() for p in r["paraphrase_prompts"])
            near = r["neighborhood_prompts"]
            assert near and not any(r["subject"] in n["prompt"].split() for n in near)
            assert translate(model, tok, [n["prompt"] for n in near]) == [n["target"] for n in near]
    for r in tasks["rename"][:5]:
        example = translate(model, tok, [r["prompt"].replace("{}", r["subject"])])[0].split()
        assert example[0] == r["target_true"] and r["reference"].split() == [r["target_new"], *example[1:]]


@pytest.mark.slow
def test_the_verbs_work_on_a_marian_store(tmp_path: Path) -> None:
    """A translation store from the world's task files: init, a rename (``edit --requests``), a deletion
    (``edit --suppress``), ``eval`` with chrF, ``diff --behavior`` listing the changed translations,
    ``revert`` of the rename out of order, ``checkout`` that ``MarianMTModel.from_pretrained`` loads and
    ``generate`` translates with, and ``export`` as a LoRA adapter."""
    from transformers import AutoTokenizer, MarianMTModel

    from editstore.core.inputs import read_jsonl
    from editstore.model.translate import translate
    from editstore.world.translation import TASKS_DIR, build_translation_world

    from .conftest import invoke

    path = build_translation_world()
    rename, delete = read_jsonl(path / TASKS_DIR / "rename.jsonl")[0], read_jsonl(path / TASKS_DIR / "delete.jsonl")[1]
    store = tmp_path / "s"
    invoke("init", "--base", path, "--store", store)
    (tmp_path / "rename.jsonl").write_text(json.dumps(rename) + "\n")
    invoke("edit", "--requests", tmp_path / "rename.jsonl", "--store", store)
    invoke("edit", "--prompt", delete["prompt"], "--subject", delete["subject"], "--suppress", delete["target_true"],
           "--store", store)

    metrics = json.loads(invoke("eval", "--json", "--store", store))
    assert metrics["efficacy_top1"] == 1.0 and metrics["paraphrase_top1"] >= 0.9, metrics
    assert metrics["specificity_top1"] >= 0.95 and metrics["recall"] >= 0.9, metrics
    assert metrics["chrf"] >= metrics["chrf_base"] - 1.0 and metrics["chrf_base"] > 95, metrics

    diff = json.loads(invoke("diff", "--behavior", "HEAD~2", "HEAD", "--json", "--store", store))
    changed = {c["prompt"]: c for c in diff["changes"]}
    example = rename["prompt"].replace("{}", rename["subject"])
    assert changed[example]["answer_b"] == rename["reference"] and changed[example]["answer_a"].startswith(rename["target_true"])
    assert all(c["kind"] in ("edit", "paraphrase") for c in diff["changes"]), diff["n_changed"]
    assert diff["n_probes"]["held-out"] > 0 and diff["n_changed"]["held-out"] == 0

    invoke("revert", "HEAD~1", "--store", store)  # the rename, under the deletion
    invoke("checkout", "HEAD", "--out", tmp_path / "out", "--store", store)
    model = MarianMTModel.from_pretrained(tmp_path / "out").eval()
    tok = AutoTokenizer.from_pretrained(tmp_path / "out")
    base = MarianMTModel.from_pretrained(path).eval()
    assert translate(model, tok, [example]) == translate(base, tok, [example])  # the rename is gone
    deleted = [delete["prompt"].replace("{}", delete["subject"]), *delete["paraphrase_prompts"]]
    assert not any(t.split()[:1] == [delete["target_true"]] for t in translate(model, tok, deleted))  # still deleted
    assert all(t.split()[:1] == [delete["target_true"]] for t in translate(base, tok, deleted))

    invoke("export", "--peft", tmp_path / "lora", "--store", store)
    from peft import PeftModel

    adapted = PeftModel.from_pretrained(MarianMTModel.from_pretrained(path), tmp_path / "lora").eval()
    assert translate(adapted, tok, deleted) == translate(model, tok, deleted)
