"""One file of a folder artifact on S3, read by a process that did not write it: the
pack indexes this machine keeps between processes, and what keeps them honest (a pack
gc removed, a cached copy of an index the bucket holds damaged, a name the catalog
of this machine remembers wrongly).

Each "process" is a store opened anew (its pack set, records and catalog are its own);
``CAS_CACHE_DIR`` says which machine it runs on.
"""

from __future__ import annotations

import os
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import fsspec
import pytest

import cas
from cas.admin import fsck, gc
from cas.objects import packs
from cas.testing.servers import Server, s3_calls

pytestmark = pytest.mark.slow

FILES = 300  # 4 KiB each: packed (a folder of more than 16 new objects)


def _folder(path: Path, seed: int) -> Path:
    path.mkdir(parents=True)
    rng = random.Random(seed)
    for i in range(FILES):
        (path / f"f{i:04d}.bin").write_bytes(rng.randbytes(4096))
    return path


@pytest.fixture
def url(s3_server: Server) -> str:
    return s3_server.url(s3_server.new_bucket(), "store")


def _machine(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, name: str) -> Path:
    cache = tmp_path / f"machine-{name}"
    monkeypatch.setenv("CAS_CACHE_DIR", str(cache))
    return cache


class _Seen:
    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []

    def __call__(self, op: str, params: dict[str, Any]) -> str:
        self.calls.append((op, str(params.get("Key") or params.get("Prefix"))))
        return op

    def keys(self, op: str) -> list[str]:
        return [key for o, key in self.calls if o == op]


@pytest.fixture
def saved(
    url: str, s3_server: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Path]:
    """A folder artifact ``data/images`` saved from machine "a"."""
    _machine(monkeypatch, tmp_path, "a")
    src = _folder(tmp_path / "src", seed=1)
    with cas.open_store(url, **s3_server.storage_options) as writer:
        writer.save(src, "data/images")
    yield src


def test_a_new_process_reads_one_file_in_four_requests(
    saved: Path, url: str, s3_server: Server
) -> None:
    """On the machine that wrote it (or read it before): the marker, the ref, the record
    with the folder's tree (one range: the tree lies just before it), the file. No
    listing and no pack index: this machine keeps them."""
    fs = fsspec.filesystem("cas", root=url, **s3_server.storage_options)
    seen = _Seen()
    with s3_calls(seen) as counts, fs.open("cas://data/images/f0150.bin", "rb") as f:
        assert f.read() == (saved / "f0150.bin").read_bytes()
    assert sum(counts.values()) <= 4, seen.calls
    assert not seen.keys("ListObjectsV2"), seen.calls
    assert not [k for k in seen.keys("GetObject") if k.endswith(".idx")], seen.calls
    assert seen.keys("GetObject")[1].endswith("refs/data/images"), seen.calls  # no miss first
    with s3_calls(seen) as again, fs.open("cas://data/images/f0151.bin", "rb") as f:
        assert f.read() == (saved / "f0151.bin").read_bytes()
    assert sum(again.values()) <= 2, again  # the ref, the file: record and tree are kept
    with cas.open_store(url, create=False, **s3_server.storage_options) as reader:
        with s3_calls() as api, reader.open("data/images", path="f0007.bin") as f:
            assert f.read() == (saved / "f0007.bin").read_bytes()
        assert sum(api.values()) <= 3, api


def test_a_new_machine_lists_once_then_keeps_the_indexes(
    saved: Path, url: str, s3_server: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = _machine(monkeypatch, tmp_path, "b")
    with cas.open_store(url, create=False, **s3_server.storage_options) as first:
        seen = _Seen()
        with s3_calls(seen), first.open("data/images", path="f0001.bin") as f:
            assert f.read() == (saved / "f0001.bin").read_bytes()
        assert seen.keys("ListObjectsV2") == ["store/packs/"], seen.calls
        (pack_idx,) = [k for k in seen.keys("GetObject") if k.endswith(".idx")]
    assert (cache / "remote").exists()
    assert [p.name for p in cache.rglob("*.idx")] == [pack_idx.rsplit("/", 1)[1]]
    with cas.open_store(url, create=False, **s3_server.storage_options) as second:
        seen = _Seen()
        with s3_calls(seen), second.open("data/images", path="f0002.bin") as f:
            assert f.read() == (saved / "f0002.bin").read_bytes()
        assert not seen.keys("ListObjectsV2") and not [
            k for k in seen.keys("GetObject") if k.endswith(".idx")
        ], seen.calls


def test_a_pack_gc_rewrote_is_found_again(
    url: str, s3_server: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A cached index names a pack gc has since replaced: the read that misses lists the
    packs and reads the new index; the removed pack's index leaves the cache."""
    _machine(monkeypatch, tmp_path, "a")
    keep, drop = _folder(tmp_path / "keep", 1), _folder(tmp_path / "drop", 2)
    with cas.open_store(url, **s3_server.storage_options) as writer:
        with writer.batch():  # both folders in one pack
            writer.save(keep, "keep")
            writer.save(drop, "drop")
        (old,) = writer.space.packs.ids()
    _machine(monkeypatch, tmp_path, "b")  # gc runs elsewhere
    with cas.open_store(url, create=False, **s3_server.storage_options) as admin:
        admin.delete("drop")
        gc.execute(admin, gc.plan(admin, grace=0, retention=0))
        (new,) = admin.space.packs.ids()
    assert new != old
    cache = _machine(monkeypatch, tmp_path, "a")
    with cas.open_store(url, create=False, **s3_server.storage_options) as reader:
        with reader.open("keep", path="f0100.bin") as f:
            assert f.read() == (keep / "f0100.bin").read_bytes()
        out = tmp_path / "out"
        reader.load("keep", dest=out)
        assert (out / "f0299.bin").read_bytes() == (keep / "f0299.bin").read_bytes()
    cached = {p.name for p in cache.rglob("*.idx")}
    assert f"{new}.idx" in cached and f"{old}.idx" not in cached


def test_fsck_checks_the_buckets_index_not_the_cached_copy(
    saved: Path, url: str, s3_server: Server
) -> None:
    with cas.open_store(url, create=False, **s3_server.storage_options) as store:
        (pack_id,) = store.space.packs.ids()
        raw = bytearray(store.storage.read(packs.index_path(pack_id)))
        raw[2000] ^= 0xFF
        store.storage.write_atomic(packs.index_path(pack_id), bytes(raw))
    with cas.open_store(url, create=False, **s3_server.storage_options) as store:
        with store.open("data/images", path="f0003.bin") as f:  # the cached copy still serves
            assert f.read() == (saved / "f0003.bin").read_bytes()
        report = fsck.check(store)
        assert not report.ok
        assert [p.kind for p in report.problems if pack_id in p.object_id] == ["damaged-pack"], report


def test_a_damaged_cached_index_is_read_again_from_the_bucket(
    saved: Path, url: str, s3_server: Server, tmp_path: Path
) -> None:
    (cached,) = (tmp_path / "machine-a").rglob("*.idx")
    cached.write_bytes(cached.read_bytes()[:-1] + b"\0")
    with (
        cas.open_store(url, create=False, **s3_server.storage_options) as store,
        store.open("data/images", path="f0004.bin") as f,
    ):
        assert f.read() == (saved / "f0004.bin").read_bytes()
    assert packs.PackIndex(cached.name[:-4], cached.read_bytes()).count > FILES


def test_a_name_this_machine_remembers_wrongly_still_resolves(
    saved: Path, url: str, s3_server: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Machine "a" knows ``data/images`` as a name; machine "b" deletes it and saves a
    folder named ``data`` holding ``images/``: "a" reads the new file, not the old."""
    _machine(monkeypatch, tmp_path, "b")
    other = tmp_path / "other"
    (other / "images").mkdir(parents=True)
    (other / "images" / "f0150.bin").write_bytes(b"saved by b as data")
    with cas.open_store(url, create=False, **s3_server.storage_options) as b:
        b.delete("data/images")
        b.save(other, "data")
    _machine(monkeypatch, tmp_path, "a")
    fs = fsspec.filesystem("cas", root=url, **s3_server.storage_options)
    with fs.open("cas://data/images/f0150.bin", "rb") as f:
        assert f.read() == b"saved by b as data"
    assert os.environ["CAS_CACHE_DIR"].endswith("machine-a")
