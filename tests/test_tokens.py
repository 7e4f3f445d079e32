import pytest

from editstore.errors import SubjectNotInPromptError
from editstore.model.tokens import subject_span
from editstore.world.tokenizer import build_tokenizer

TOK = build_tokenizer(["Ada Lovelace was born in London ."])


def test_subject_span_counts_tokens_after_bos() -> None:
    ids, start, end = subject_span(TOK, "Ada Lovelace was born in", "Ada Lovelace")
    assert TOK.convert_ids_to_tokens(ids[start:end]) == ["Ada", "Lovelace"]


def test_subject_span_can_skip_a_prefix_that_mentions_the_subject() -> None:
    text = "Ada Lovelace was born . Ada Lovelace was born in"
    ids, start, end = subject_span(TOK, text, "Ada Lovelace", search_from=text.index(". ") + 2)
    assert (start, end) == (6, 8)


@pytest.mark.parametrize(("prompt", "subject"), [("The capital is", "Paris"), ("anything", "")])
def test_subject_must_occur(prompt: str, subject: str) -> None:
    with pytest.raises(SubjectNotInPromptError):
        subject_span(TOK, prompt, subject)
