"""The object layer: ids, round trips, dedup, verification, atomic writes, chunk sharing."""

from __future__ import annotations

import os
import random
import shutil
import subprocess

import blake3
import pytest
from hypothesis import given
from hypothesis import strategies as st

from cas.errors import FormatError, IntegrityError, ObjectNotFound
from cas.objects import codec
from cas.objects.kinds import ChunkList
from cas.objects.space import MARKER, ObjectSpace, object_path
from cas.testing.strategies import load_profile

load_profile()

SMALL_THRESHOLD_PARAMS = None  # the default params; chunked content is made > 4 MiB


def _space(tmp_path_factory: pytest.TempPathFactory) -> ObjectSpace:
    return ObjectSpace.from_url(str(tmp_path_factory.mktemp("store") / "s"), fsync=False)


@pytest.fixture(params=["local", "memory"])
def space(request: pytest.FixtureRequest, tmp_path: os.PathLike[str]) -> ObjectSpace:
    if request.param == "local":
        return ObjectSpace.from_url(os.path.join(tmp_path, "store"))
    return ObjectSpace.from_url(f"memory://cas-test-{random.getrandbits(64):x}")


def _noise(n: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(n)


@given(data=st.binary(max_size=20_000))
def test_round_trip_and_id_is_b3sum(tmp_path_factory: pytest.TempPathFactory, data: bytes) -> None:
    space = _space(tmp_path_factory)
    oid = space.put(data)
    assert oid == blake3.blake3(data).hexdigest()
    assert space.get(oid) == data
    assert space.open(oid).read() == data
    assert space.size(oid) == len(data)


def test_large_content_is_chunked_and_round_trips(space: ObjectSpace) -> None:
    data = _noise(9 << 20) + b"text " * (1 << 20)
    oid = space.put(data)
    assert oid == blake3.blake3(data).hexdigest()
    assert space.kind(oid) == "chunks"
    assert space.get(oid) == data
    with space.open(oid) as f:
        assert f.read(1000) == data[:1000]
        assert f.read() == data[1000:]
    assert space.size(oid) == len(data)


def test_id_matches_b3sum_tool(tmp_path: os.PathLike[str]) -> None:
    b3sum = shutil.which("b3sum")
    data = _noise(6 << 20, seed=3)
    path = os.path.join(tmp_path, "f.bin")
    with open(path, "wb") as f:
        f.write(data)
    space = ObjectSpace.from_url(os.path.join(tmp_path, "s"))
    oid = space.put_file(path)
    assert oid == blake3.blake3(data).hexdigest()
    if b3sum:  # Debian's b3sum, when installed, must agree with us byte for byte
        out = subprocess.run([b3sum, "--no-names", path], capture_output=True, text=True, check=True)
        assert out.stdout.strip() == oid


def test_saving_twice_writes_nothing_new(space: ObjectSpace) -> None:
    small, large = b"same bytes", _noise(6 << 20, seed=1)
    first = (space.put(small), space.put(large))
    before = sorted(space)
    assert (space.put(small), space.put(large)) == first
    assert sorted(space) == before


def test_one_changed_region_shares_all_other_chunks(space: ObjectSpace) -> None:
    base = bytearray(_noise(24 << 20, seed=2))
    a = space.put(bytes(base))
    base[12 << 20 : (12 << 20) + 100] = b"X" * 100
    b = space.put(bytes(base))
    chunks_a = {c for c, _ in ChunkList.parse(a, space.read_object(a)[1]).chunks}
    chunks_b = {c for c, _ in ChunkList.parse(b, space.read_object(b)[1]).chunks}
    assert len(chunks_a) >= 10
    # An edit inside one chunk may move at most the boundary after it: 1-2 chunks differ.
    assert len(chunks_b - chunks_a) <= 2
    assert len(chunks_a & chunks_b) >= len(chunks_a) - 2


def test_incompressible_data_is_stored_raw(space: ObjectSpace) -> None:
    data = os.urandom(100_000)
    oid = space.put(data)
    stored = space.storage.read(object_path(oid))
    assert codec.read_header(oid, stored).flags == 0
    text_id = space.put(b"abc " * 25_000)
    assert codec.read_header(text_id, space.storage.read(object_path(text_id))).flags == codec.FLAG_ZSTD


def test_missing_object_is_object_not_found(space: ObjectSpace) -> None:
    oid = blake3.blake3(b"never stored").hexdigest()
    with pytest.raises(ObjectNotFound) as info:
        space.get(oid)
    assert isinstance(info.value, KeyError)
    assert oid in str(info.value)


def _corruptions(stored: bytes, seed: int) -> list[tuple[str, bytes]]:
    rnd = random.Random(seed)
    pos = rnd.randrange(len(stored))
    flipped = bytearray(stored)
    flipped[pos] ^= 1 << rnd.randrange(8)
    return [
        ("flipped", bytes(flipped)),
        ("truncated", stored[: rnd.randrange(len(stored))]),
        ("emptied", b""),
    ]


@given(data=st.binary(min_size=1, max_size=5000), seed=st.integers(0, 2**32))
def test_any_flipped_or_truncated_object_is_detected(
    tmp_path_factory: pytest.TempPathFactory, data: bytes, seed: int
) -> None:
    space = _space(tmp_path_factory)
    oid = space.put(data)
    path = object_path(oid)
    stored = space.storage.read(path)
    for how, bad in _corruptions(stored, seed):
        space.storage.write_atomic(path, bad)
        with pytest.raises(IntegrityError) as info:
            space.get(oid)
        assert oid in str(info.value), how
        assert "cas fsck" in str(info.value)
    space.storage.write_atomic(path, stored)
    assert space.get(oid) == data


def test_swapped_objects_are_detected(space: ObjectSpace) -> None:
    a, b = space.put(b"content a" * 10), space.put(b"content b" * 10)
    pa, pb = object_path(a), object_path(b)
    sa, sb = space.storage.read(pa), space.storage.read(pb)
    space.storage.write_atomic(pa, sb)
    space.storage.write_atomic(pb, sa)
    for oid in (a, b):
        with pytest.raises(IntegrityError):
            space.get(oid)


def test_corrupt_chunk_is_detected_and_named(space: ObjectSpace) -> None:
    data = _noise(10 << 20, seed=5)
    oid = space.put(data)
    chunk = ChunkList.parse(oid, space.read_object(oid)[1]).chunks[1][0]
    stored = bytearray(space.storage.read(object_path(chunk)))
    stored[-1] ^= 0xFF
    space.storage.write_atomic(object_path(chunk), bytes(stored))
    with pytest.raises(IntegrityError) as info:
        space.get(oid)
    assert chunk in str(info.value)
    with pytest.raises(IntegrityError), space.open(oid) as f:
        f.read()


def test_header_that_lies_about_its_size_is_refused(space: ObjectSpace) -> None:
    oid = space.put(b"hello world " * 100)
    path = object_path(oid)
    stored = space.storage.read(path)
    magic, fmt, kind, flags, res, size = codec.HEADER.unpack_from(stored)
    for lie in (size - 1, size + 1, codec.MAX_RAW_SIZE + 1, 2**63):
        space.storage.write_atomic(
            path, codec.HEADER.pack(magic, fmt, kind, flags, res, lie) + stored[codec.HEADER_SIZE :]
        )
        with pytest.raises(IntegrityError):
            space.get(oid)


def test_zstd_bomb_is_bounded_by_header() -> None:
    import zstandard

    bomb = zstandard.ZstdCompressor().compress(b"\0" * (64 << 20))
    stored = codec.HEADER.pack(codec.MAGIC, 1, 1, codec.FLAG_ZSTD, 0, 10) + bomb
    with pytest.raises(IntegrityError, match="frame of 67108864 bytes, header says 10"):
        codec.decode("f" * 64, stored)
    # A frame that does not declare its size is refused too: nothing is inflated blind.
    blind = zstandard.ZstdCompressor(write_content_size=False).compress(b"\0" * (64 << 20))
    stored = codec.HEADER.pack(codec.MAGIC, 1, 1, codec.FLAG_ZSTD, 0, 64 << 20) + blind
    with pytest.raises(IntegrityError, match="frame of -1 bytes"):
        codec.decode("f" * 64, stored)


def test_marker_of_unknown_format_is_refused(tmp_path: os.PathLike[str]) -> None:
    root = os.path.join(tmp_path, "s")
    space = ObjectSpace.from_url(root)
    space.storage.write_atomic(MARKER, b"\x81\xa6format\x09")
    with pytest.raises(FormatError, match="format 9"):
        ObjectSpace.from_url(root)


def test_folder_that_is_not_a_store_is_refused(tmp_path: os.PathLike[str]) -> None:
    root = os.path.join(tmp_path, "photos")
    os.makedirs(root)
    with open(os.path.join(root, "cat.jpg"), "wb") as f:
        f.write(b"meow")
    with pytest.raises(FormatError, match="not a cas store"):
        ObjectSpace.from_url(root)
    with pytest.raises(FormatError, match="cas init"):
        ObjectSpace.from_url(os.path.join(tmp_path, "absent"), create=False)


def test_has_many_by_listing(space: ObjectSpace) -> None:
    present = [space.put(f"object {i}".encode()) for i in range(40)]
    absent = [blake3.blake3(f"absent {i}".encode()).hexdigest() for i in range(40)]
    assert space.has_many(present + absent) == set(present)
    assert space.has(present[0]) and not space.has(absent[0])


def test_dedup_hit_refreshes_an_old_object(tmp_path: os.PathLike[str]) -> None:
    space = ObjectSpace.from_url(os.path.join(tmp_path, "s"))
    oid = space.put(b"old content")
    full = os.path.join(space.storage.root, object_path(oid))
    os.utime(full, (1_000_000, 1_000_000))
    space.put(b"old content")
    assert os.stat(full).st_mtime > 1_000_000


def test_object_deleted_between_check_and_refresh_is_rewritten(tmp_path: os.PathLike[str]) -> None:
    space = ObjectSpace.from_url(os.path.join(tmp_path, "s"))
    oid = space.put(b"raced")
    full = os.path.join(space.storage.root, object_path(oid))
    os.utime(full, (1_000_000, 1_000_000))
    real_touch = space.storage.touch

    def gc_strikes_first(rel: str) -> bool:
        os.unlink(full)  # a gc deletes the old object just before the writer refreshes it
        return real_touch(rel)

    space.storage.touch = gc_strikes_first  # type: ignore[method-assign]
    assert not space._freshen(oid)
    space.storage.touch = real_touch  # type: ignore[method-assign]
    assert space.put(b"raced") == oid and space.get(oid) == b"raced"


def test_a_temp_file_removed_by_gc_grace_0_does_not_fail_the_write(
    tmp_path: os.PathLike[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """`cas gc --grace 0` clears every temp file it lists, including one a save is about
    to rename: the save writes again instead of raising a bare FileNotFoundError."""
    space = ObjectSpace.from_url(os.path.join(tmp_path, "store"), fsync=False)
    real_replace = os.replace
    removed: list[str] = []

    def gc_strikes_first(src: str, dst: str) -> None:
        if not removed and os.path.basename(src).startswith(".tmp-"):
            os.unlink(src)  # what gc's sweep of temp files does
            removed.append(src)
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", gc_strikes_first)
    oid = space.put(b"saved while gc ran")
    monkeypatch.setattr(os, "replace", real_replace)
    assert removed and space.get(oid) == b"saved while gc ran"
    assert not list(space.iter_temp())
