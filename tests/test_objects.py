from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from editstore.core.hashing import canonical_json, sha256_bytes, sha256_json
from editstore.core.objects import ObjectStore
from editstore.errors import CorruptObjectError


@settings(max_examples=30, deadline=None)
@given(st.binary(max_size=4096))
def test_write_read_round_trip(tmp_path_factory: pytest.TempPathFactory, data: bytes) -> None:
    objects = ObjectStore(tmp_path_factory.mktemp("obj"))
    oid = objects.write(data)
    assert oid == sha256_bytes(data)
    assert objects.read(oid) == data
    assert objects.write(data) == oid  # idempotent
    assert list(objects) == [oid]
    assert objects.temporaries() == []


def test_corrupt_object_is_detected(tmp_path: Path) -> None:
    objects = ObjectStore(tmp_path)
    oid = objects.write(b"hello")
    objects.path(oid).write_bytes(b"jello")
    with pytest.raises(CorruptObjectError, match="corrupt"):
        objects.read(oid)
    with pytest.raises(CorruptObjectError, match="missing"):
        objects.read("0" * 64)


@given(st.dictionaries(st.text(max_size=5), st.integers() | st.text(max_size=5), max_size=6))
def test_canonical_json_ignores_key_order(d: dict) -> None:
    reordered = dict(reversed(list(d.items())))
    assert canonical_json(d) == canonical_json(reordered)
    assert sha256_json(d) == sha256_json(reordered)


def test_stream_yields_each_object_verified(tmp_path: Path) -> None:
    objects = ObjectStore(tmp_path)
    blobs = [b"a" * 10, b"", b"b" * (3 << 20), b"c" * 100]  # one larger than the first buffer
    oids = [objects.write(blob) for blob in blobs]
    assert [bytes(view) for view in objects.stream(oids + oids[:1])] == blobs + blobs[:1]

    objects.path(oids[3]).write_bytes(b"d" * 100)
    seen = []
    with pytest.raises(CorruptObjectError, match="corrupt"):
        for view in objects.stream(oids):
            seen.append(bytes(view))
    assert seen == blobs[:3]
    with pytest.raises(CorruptObjectError, match="missing"):
        list(objects.stream(["0" * 64]))
