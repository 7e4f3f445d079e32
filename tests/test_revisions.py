import pytest
from hypothesis import given
from hypothesis import strategies as st

from editstore.core.revisions import Revision, check_ref_name, parse_revision
from editstore.errors import RefError, UnknownRevisionError


@pytest.mark.parametrize(
    ("text", "expected"),
    [("HEAD", Revision("HEAD")), ("main~2", Revision("main", 2)), ("HEAD^", Revision("HEAD", 1)),
     ("abcd~", Revision("abcd", 1)), ("v1~1^^", Revision("v1", 3)), ("feature/x~10", Revision("feature/x", 10))],
)
def test_parse_revision(text: str, expected: Revision) -> None:
    assert parse_revision(text) == expected


@given(st.from_regex(r"[a-z][a-z0-9_]{0,8}", fullmatch=True), st.integers(0, 50))
def test_parse_tilde_round_trip(name: str, n: int) -> None:
    assert parse_revision(f"{name}~{n}") == Revision(name, n)


def test_empty_revision() -> None:
    with pytest.raises(UnknownRevisionError):
        parse_revision("~1")


@pytest.mark.parametrize("bad", ["", "HEAD", "a..b", "-x", "x/", "x.lock", "a b", "x//y"])
def test_bad_ref_names(bad: str) -> None:
    with pytest.raises(RefError):
        check_ref_name(bad)
