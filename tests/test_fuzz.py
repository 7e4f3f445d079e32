"""Property-based fuzzing of every input that comes from outside the store.

For each generated revision, ref name, delta file, requests file, ``.npz`` statistics
file and command line: either a clean result or an :class:`EditStoreError` (exit code
2, or 3 for a conflict, from the CLI), never another exception, and after a refusal
the store's tables and objects are exactly what they were. An accepted delta must
leave every version that holds it usable: composed, diffed and exported.

Example counts come from the hypothesis profile (tests/conftest.py): ``ci`` is the
default and bounded; a long run is

    python -m pytest tests/test_fuzz.py --hypothesis-profile=long
"""

from __future__ import annotations

import functools
import io
import json
import shutil
import string
import zipfile
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from editstore import Store
from editstore.behavior import load_requests
from editstore.compose.checkout import checkout
from editstore.compose.diff import diff_versions
from editstore.core.requests import check_requests
from editstore.core.revisions import MAX_REF_NAME, parse_revision
from editstore.errors import EditStoreError, RefError
from editstore.export import export_peft
from editstore.methods.targets import tokenize_request
from editstore.model.synthetic import random_delta
from editstore.moments import import_npz, load_sigma, stats_rows
from editstore.porcelain import create_branch, import_delta, reset, switch, tag
from editstore_cli.main import cli

from .conftest import GPT2_PARAMS, snapshot

FIXTURES = settings(suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
PARAM = GPT2_PARAMS[0]
MODULE = PARAM.removesuffix(".weight")


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory, gpt2_dir: Path) -> Store:
    """A store with a short history (two imports on main, a tag, a side branch) shared by the module."""
    store = Store.init(gpt2_dir, tmp_path_factory.mktemp("fuzz") / "store")
    import_delta(store, random_delta(store.base, [PARAM], seed=1), message="one")
    tag(store, "v1")
    create_branch(store, "side")
    import_delta(store, random_delta(store.base, GPT2_PARAMS[:2], rank=2, seed=2, with_keys=True), message="two")
    yield store
    store.close()


def refused_cleanly(store: Store, action, *args, **kwargs):
    """Run ``action``; on an EditStoreError assert the store did not change and return None."""
    before = snapshot(store.root)
    try:
        result = action(*args, **kwargs)
    except EditStoreError as exc:
        event(f"refused: {type(exc).__name__}")
        assert snapshot(store.root) == before
        return None
    event("accepted")
    return result


# ----------------------------------------------------------------------------- revisions

SUFFIX = st.one_of(st.just("^"), st.builds(lambda n: f"~{n}", st.integers(0, 10**40)), st.just("~"))
NAMES = st.sampled_from(["HEAD", "main", "side", "v1", "nope", "", "abcd", "0000", "ffff", "g", "HEAD@{1}", "..", "@"])
REVISIONS = st.one_of(
    st.text(max_size=40),
    st.builds(lambda n, s: n + "".join(s), NAMES, st.lists(SUFFIX, max_size=6)),
    st.text(alphabet=string.hexdigits + "~^", max_size=70),
    st.just("HEAD~" + "9" * 5000),
    st.just("~1" * 2000),
)


@FIXTURES
@given(REVISIONS)
def test_any_revision_resolves_or_raises_a_named_error(store: Store, rev: str) -> None:
    try:
        kind, oid = store.resolve_object(rev)
    except EditStoreError as exc:
        event(f"refused: {type(exc).__name__}")
        return
    event("resolved")
    assert kind in ("commit", "edit", "editor") and len(oid) == 64
    assert parse_revision(rev).back <= len(store.log())


# ----------------------------------------------------------------------------- ref names

REF_NAMES = st.one_of(
    st.text(max_size=30),
    st.text(alphabet=string.ascii_letters + string.digits + "._-/@{}~^:?*[\\ \n\t\x00\x7f", max_size=30),
    st.builds(lambda a, b: f"{a}{b}", st.sampled_from(["", ".", "-", "/", "a/", "x.lock", "HEAD"]),
              st.sampled_from(["", ".lock", "/", ".", "..", "@{", "\n", "a"])),
    st.integers(MAX_REF_NAME - 2, MAX_REF_NAME + 2).map(lambda n: "r" * n),
)


@FIXTURES
@given(REF_NAMES, st.sampled_from(["branch", "tag", "switch"]))
def test_any_ref_name_is_created_or_refused_cleanly(store: Store, name: str, how: str) -> None:
    head = store.head()
    before = snapshot(store.root)
    try:
        if how == "branch":
            create_branch(store, name)
        elif how == "tag":
            tag(store, name)
        else:
            switch(store, name, create=True)
    except EditStoreError as exc:
        event("refused")
        assert snapshot(store.root) == before
        assert isinstance(exc, RefError)
        return
    event("created")
    try:  # a created ref is a name every later command can use
        assert name.isascii() and name.isprintable() and " " not in name and len(name) <= MAX_REF_NAME
        assert store.resolve(name) == head
    finally:
        if how == "switch":
            switch(store, "main")
        with store.db.atomic():
            store.db["refs"].delete(("refs/tags/" if how == "tag" else "refs/heads/") + name)


# ----------------------------------------------------------------------------- delta files

DTYPE_NAMES = ["F64", "F32", "F16", "BF16", "F8_E4M3", "F8_E5M2", "F8_E8M0", "F4", "F6_E2M3", "I64", "I32", "I16",
               "I8", "U8", "U16", "U32", "U64", "BOOL", "C64", "", "f32"]
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20,
)


def valid_delta(store: Store, seed: int) -> bytes:
    return random_delta(store.base, GPT2_PARAMS[:2], rank=2, seed=seed, with_keys=seed % 2 == 1).to_bytes()


def split(data: bytes) -> tuple[dict, bytes]:
    n = int.from_bytes(data[:8], "little")
    return json.loads(data[8 : 8 + n]), data[8 + n :]


def join(header: dict, body: bytes) -> bytes:
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    return len(raw).to_bytes(8, "little") + raw + body


@st.composite
def header_mutation(draw: st.DrawFn, data: bytes) -> bytes:
    header, body = split(data)
    names = sorted(k for k in header if k != "__metadata__")
    name = draw(st.sampled_from(names))
    kind = draw(st.sampled_from(["dtype", "shape", "offsets", "rename", "drop", "metadata", "metadata_raw", "entry"]))
    if kind == "dtype":
        header[name]["dtype"] = draw(st.sampled_from(DTYPE_NAMES))
    elif kind == "shape":
        header[name]["shape"] = draw(st.lists(st.integers(0, 2**40), max_size=4))
    elif kind == "offsets":
        header[name]["data_offsets"] = draw(st.lists(st.integers(-5, len(body) + 5), min_size=2, max_size=2))
    elif kind == "rename":
        header[draw(st.text(max_size=40))] = header.pop(name)
    elif kind == "drop":
        header.pop(name)
    elif kind == "metadata":
        meta = json.loads(header["__metadata__"]["editstore"])
        meta[draw(st.sampled_from(["format", "version", "base", "method", "x"]))] = draw(JSON_VALUES)
        header["__metadata__"]["editstore"] = json.dumps(meta)
    elif kind == "metadata_raw":
        header["__metadata__"]["editstore"] = draw(st.sampled_from([
            "[" * 10000 + "]" * 10000, '{"format": "editstore-delta", "version": 1e999}', "NaN", "",
            '{"format": "editstore-delta", "version": 1, "n": ' + "9" * 5000 + "}", "\ud800",
            '{"format": "editstore-delta", "version": 1, "s": "\\udc00"}', "x" * (2 << 20)]))
    else:
        header[name] = draw(JSON_VALUES)
    return join(header, body)


@st.composite
def byte_mutation(draw: st.DrawFn, data: bytes) -> bytes:
    out = bytearray(data)
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["flip", "truncate", "insert", "value"]))
        at = draw(st.integers(0, max(len(out) - 1, 0)))
        if kind == "value":  # a float32 factor entry set to a finite extreme: NaN, ±Inf or ±3e38
            _, body = split(data)
            at = len(data) - len(body) + 4 * draw(st.integers(0, len(body) // 4 - 1))
            value = draw(st.sampled_from([float("nan"), float("inf"), -float("inf"), 3e38, -3e38, 1e30]))
            out[at : at + 4] = np.float32(value).tobytes()
        elif kind == "flip" and out:
            out[at] ^= draw(st.integers(1, 255))
        elif kind == "truncate":
            del out[at:]
        else:
            out[at:at] = draw(st.binary(min_size=1, max_size=16))
    return bytes(out)


@FIXTURES
@given(st.data())
def test_any_delta_file_is_imported_usable_or_refused_cleanly(store: Store, tmp_path: Path, data: st.DataObject) -> None:
    seed = data.draw(st.integers(0, 3))
    mutate = data.draw(st.sampled_from([header_mutation, byte_mutation]))
    path = tmp_path / "delta.safetensors"
    path.write_bytes(data.draw(mutate(valid_delta(store, seed))))
    head = store.head()
    commit = refused_cleanly(store, functools.partial(import_delta, store), path, message="fuzz")
    if commit is None:
        return
    try:  # accepted: every version holding it composes, diffs and exports
        model = checkout(store, commit, device="cpu")
        assert all(p.isfinite().all() for p in model.parameters())
        assert diff_versions(store, head, commit).params
        export_peft(store, commit, tmp_path / "peft")
    finally:
        reset(store, head)
        shutil.rmtree(tmp_path / "peft", ignore_errors=True)


# ----------------------------------------------------------------------------- requests files

VALID_REQUEST = {"prompt": "The capital of {} is", "subject": "France", "target_new": "Lyon", "target_true": "Paris",
                 "paraphrase_prompts": ["France's capital is"],
                 "neighborhood_prompts": [{"prompt": "The capital of Spain is", "target": "Madrid"}]}
REQUEST_FIELDS = sorted(VALID_REQUEST) + ["relation", "case_id", "extra"]


@st.composite
def request_lines(draw: st.DrawFn) -> bytes:
    lines = []
    for _ in range(draw(st.integers(0, 4))):
        kind = draw(st.sampled_from(["valid", "field", "drop", "json", "text", "bytes", "deep"]))
        row = dict(VALID_REQUEST)
        if kind == "field":
            row[draw(st.sampled_from(REQUEST_FIELDS))] = draw(JSON_VALUES)
        elif kind == "drop":
            row.pop(draw(st.sampled_from(sorted(row))))
        if kind in ("valid", "field", "drop"):
            lines.append(json.dumps(row).encode())
        elif kind == "json":
            lines.append(json.dumps(draw(JSON_VALUES)).encode())
        elif kind == "text":
            lines.append(draw(st.text(max_size=60)).encode("utf-8", "surrogatepass"))
        elif kind == "bytes":
            lines.append(draw(st.binary(max_size=60)))
        else:
            lines.append(b"[" * 5000 + b"]" * 5000)
    return b"\n".join(lines)


@pytest.fixture(scope="module")
def world_tokenizer(world: Path):
    from transformers import AutoTokenizer


    return AutoTokenizer.from_pretrained(world)


@FIXTURES
@given(request_lines())
def test_any_requests_file_is_read_or_refused_with_its_line(tmp_path: Path, world_tokenizer, content: bytes) -> None:
    path = tmp_path / "requests.jsonl"
    path.write_bytes(content)
    try:
        requests = load_requests(path)
        check_requests(requests)
        for r in requests:  # an accepted request can be tokenized for an edit, or is refused by name
            try:
                tokenize_request(world_tokenizer, r, ["", "A text ."])
                event("tokenized")
            except EditStoreError as exc:
                event(f"not tokenized: {type(exc).__name__}")
    except EditStoreError as exc:
        event(f"refused: {type(exc).__name__}")
        assert str(path) in str(exc) or "edit request" in str(exc) or "no edit requests" in str(exc)


# ----------------------------------------------------------------------------- .npz statistics


def npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


@st.composite
def npz_files(draw: st.DrawFn, d_in: int) -> bytes:
    """A valid ROME statistics archive with its members replaced, dropped, renamed or added, and maybe a flipped byte."""
    members = {"mom2.mom2.npy": npy(np.eye(d_in)), "mom2.count.npy": npy(np.array(100))}
    for name in sorted(members):
        kind = draw(st.just("good") | st.sampled_from(["bytes", "dtype", "shape", "value", "nested", "truncated", "drop",
                                                        "rename"]))  # half the members stay good
        matrix = "mom2.mom2" in name
        if kind == "bytes":
            members[name] = draw(st.binary(max_size=200))
        elif kind == "dtype":
            dtype = draw(st.sampled_from(["complex64", "bool", "U3", "float16", "int8", "uint64", "V4", "datetime64[s]"]))
            members[name] = npy(np.zeros((d_in, d_in) if matrix else (), dtype=dtype))
        elif kind == "shape":
            members[name] = npy(np.zeros(draw(st.lists(st.integers(0, 5), max_size=3)), dtype="float64"))
        elif kind == "value":
            value = draw(st.sampled_from([np.nan, np.inf, -1, 0, 2**63 - 1, 1e300, 1e38, -1e300]))
            members[name] = npy(np.full((d_in, d_in) if matrix else (), value))
        elif kind == "nested":
            inner = io.BytesIO()
            np.savez(inner, x=np.zeros(2))
            members[name] = inner.getvalue()
        elif kind == "truncated":
            members[name] = members[name][: draw(st.integers(0, len(members[name]) - 1))]
        elif kind == "drop":
            del members[name]
        elif kind == "rename":
            members[name.removesuffix(".npy")] = members.pop(name)
    if draw(st.booleans()):
        members["other.npy"] = npy(np.zeros(3))
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=draw(st.sampled_from([zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED]))) as z:
        for name, content in members.items():
            z.writestr(name, content)
    raw = buffer.getvalue()
    if draw(st.integers(0, 3)) == 0:
        raw = data_flip(raw, draw(st.integers(0, max(len(raw) - 1, 0))))
    return raw


def data_flip(raw: bytes, at: int) -> bytes:
    return raw[:at] + bytes([raw[at] ^ 0xFF]) + raw[at + 1 :] if raw else raw


@FIXTURES
@given(st.data())
def test_any_npz_is_imported_or_refused_cleanly(store: Store, tmp_path: Path, data: st.DataObject) -> None:
    d_in = store.base.linear_shape(PARAM)[1]
    path = tmp_path / "stats.npz"
    path.write_bytes(data.draw(npz_files(d_in)))
    row = refused_cleanly(store, import_npz, store, MODULE, path)
    if row is not None:  # accepted: a usable Σ is stored
        assert row in stats_rows(store, MODULE)
        sigma = load_sigma(store, row)
        assert sigma.shape == (d_in, d_in) and sigma.isfinite().all()
        with store.locked(), store.db.atomic():  # keep the shared store's statistics as they were
            store.db.execute("DELETE FROM stats WHERE object = ?", [row.object])


# ----------------------------------------------------------------------------- command lines

HOSTILE = ["", " ", "\n", "HEAD\n", "~", "^", "HEAD~" + "9" * 30, "HEAD~" + "9" * 5000, "a" * 5000, "-", "--", "..",
           "@{0}", "refs/heads/main", "main", "side", "v1", "HEAD~1", "abcd", "\udcff", "\x7f", "x.lock",
           "checkout.compose", "cache.max_bytes", "conflicts.backend", "1e999", "-1", "99999999999999999999999", "nan"]


def paths(tmp: Path) -> list[str]:
    (tmp / "file").write_bytes(b"\x00garbage")
    (tmp / "dir").mkdir(exist_ok=True)
    (tmp / "full").mkdir(exist_ok=True)
    (tmp / "full" / "x").write_text("x")
    return [str(tmp / "missing"), str(tmp / "file"), str(tmp / "dir"), str(tmp / "full"), "/dev/zero", "/dev/null",
            "/proc/self/mem", str(tmp / "missing" / "deeper")]


COMMANDS = [
    ("log", "R"), ("log", "-n", "R"), ("log", "--oneline", "R"), ("show", "R"), ("show", "--json", "R"),
    ("branch", "R"), ("branch", "R", "R"), ("branch", "-d", "R"), ("tag", "R"), ("tag", "R", "R"), ("switch", "R"),
    ("switch", "-c", "R"), ("reset", "R"), ("revert", "R"), ("diff", "R", "R"), ("config", "R"), ("config", "R", "R"),
    ("import-delta", "P", "-m", "R"), ("stats", "import", "--module", "R", "P"), ("export", "R", "--peft", "P"),
    ("checkout", "R", "--out", "P"), ("checkout", "R", "--out", "P", "--compose", "R"), ("gc", "--dry-run"),
    ("stats", "list"), ("edit", "--requests", "P"), ("eval", "R", "--requests", "P"), ("branch", "R", "-d"),
    ("init", "--base", "P", "--store", "P"), ("merge", "R"), ("conflicts", "R"), ("mend", "list"),
    ("trace", "--model", "P", "--prompt", "R", "--subject", "R"), ("log", "-n", "R", "R"),
]


@pytest.mark.slow
@settings(FIXTURES, max_examples=3 * settings.default.max_examples)  # many command shapes: 3x the profile's count
@given(st.data())
def test_any_command_line_exits_cleanly(store: Store, tmp_path_factory: pytest.TempPathFactory, data: st.DataObject) -> None:
    tmp = tmp_path_factory.mktemp("cli")
    root = tmp / "store"
    shutil.copytree(store.root, root)  # each example runs on its own copy: what one command changes, none sees
    template = data.draw(st.sampled_from(COMMANDS))
    words = [data.draw(st.sampled_from(HOSTILE) | st.text(max_size=12)) if w == "R"
             else data.draw(st.sampled_from(paths(tmp))) if w == "P" else w for w in template]
    before = snapshot(root)
    result = CliRunner().invoke(cli, ["--store", str(root), *words])
    assert result.exception is None or isinstance(result.exception, SystemExit), (words, result.exception)
    assert "Traceback" not in result.output
    assert result.exit_code in (0, 2, 3), (words, result.output)
    event(f"{template[0]}: exit {result.exit_code}")
    if result.exit_code:
        assert snapshot(root) == before, words
