"""Requests per save and load on the S3 server: pinned, so that they cannot creep back.

Counted at aiobotocore's client, where every request s3fs and refs send passes. The
bounds are today's counts; the code before them (refs listing history folders and the
tree of names through s3fs, s3fs's HEAD before every GET) sent 19 requests for a save
of a new name, 13 for a ref move, 14 for a ref move by a store that had not seen the
name, and 3 for a load; a HEAD before each record's PUT cost one more per save. docs/backends.md explains each request.
"""

from __future__ import annotations

import collections
from collections.abc import Iterator
from typing import Any

import pytest

import cas
from cas.errors import RefConflict
from cas.objects.kinds import ChunkList
from cas.refs import RefStore
from cas.refs.cloud import conditional_for
from cas.refs.testing import A, B
from cas.testing.servers import Server, s3_calls

pytestmark = pytest.mark.slow

Requests = collections.Counter[str]


@pytest.fixture
def store(s3_server: Server) -> Iterator[Any]:
    with cas.open_store(
        s3_server.url(s3_server.new_bucket(), "store"), **s3_server.storage_options
    ) as opened:
        opened.save(b"first", "warm/up")  # the root's marker, the catalog: done once
        yield opened


def _total(counts: Requests) -> int:
    return sum(counts.values())


def test_save_of_a_new_name(store: Any) -> None:
    with s3_calls() as counts:
        store.save(b"fraud v1", "models/fraud")
    # cas: conditional-create PUTs of content and record, side by side (the write is
    # the check: a new object costs one request), PUT of the journal entry (3); refs:
    # GET of the ref (cas reads it first; the update starts from that read), GET of
    # the parent "models", a listing of one key below the name, PUT of history entry
    # 1, GET of the prune marker, PUT of the ref, and after publishing the parent and
    # the listing again (8).
    assert _total(counts) <= 12, counts
    assert counts["ListObjectsV2"] <= 2, counts
    with s3_calls() as counts:
        store.save(b"fraud v1", "models/other")
    # The parent "models" is known to be a folder now: the first check skips it; the
    # content is a dedup hit (its refused create, then a HEAD for its age).
    assert _total(counts) <= 11, counts


def test_ref_move(store: Any) -> None:
    store.save(b"fraud v1", "models/fraud")
    with s3_calls() as counts:
        store.save(b"fraud v2", "models/fraud")
    # cas 4; refs: GET of the ref, PUT of history entry 2, GET of entry 1 (still
    # there: not pruned meanwhile), PUT of the ref if it still holds what was read.
    assert _total(counts) <= 8, counts
    assert counts["ListObjectsV2"] == 0, counts


def test_a_new_version_of_small_content_reads_the_previous_once(
    store: Any, s3_server: Server
) -> None:
    """A 4 KiB version is tried as a delta against the previous one: one GET of it (its
    kind is not asked first: small content had a blob before) by a process that did not
    write it; none by the process that just did, or that just loaded it (it keeps small
    objects it wrote or read)."""
    store.save(bytes(range(256)) * 16, "models/fraud")
    seen: list[str] = []

    def count(op: str, params: dict[str, Any]) -> str:
        seen.append(f"{op} {params.get('Key')}")
        return op

    with s3_calls(count) as counts:
        store.save(bytes((i * 7) % 256 for i in range(256)) * 16, "models/fraud")
    objects = [s for s in seen if s.startswith("GetObject") and "/objects/" in s]
    assert objects == [], seen
    assert _total(counts) <= 8, seen  # test_ref_move's 8, and no GET of the base

    def base_reads(rid: str) -> list[str]:  # GETs of the content a version holds
        content = store.record(rid)["content_id"]
        return [s for s in seen if s.startswith("GetObject") and s.endswith(content[2:])]

    with cas.open_store(store.url, **s3_server.storage_options) as other:
        held = other.resolve("models/fraud")[0]
        seen.clear()
        with s3_calls(count) as counts:
            other.save(bytes((i * 11) % 256 for i in range(256)) * 16, "models/fraud")
    assert len(base_reads(held)) == 1, seen
    with cas.open_store(store.url, **s3_server.storage_options) as third:
        held = third.resolve("models/fraud")[0]
        third.load("models/fraud")  # loaded, changed, saved again: a config, say
        seen.clear()
        with s3_calls(count) as counts:
            third.save(bytes((i * 13) % 256 for i in range(256)) * 16, "models/fraud")
    assert base_reads(held) == [], seen


def test_a_first_save_beside_an_unrelated_sibling_reads_only_its_start(store: Any) -> None:
    """A new name builds on the newest other name in its folder (its kin); on a bucket
    the kin's content (1 MiB here) is first read only as far as PROBE_BYTES, with its
    kind: new data shares nothing with it, so the rest is never read. Content that does
    share bytes with its kin reads it whole and is stored as a delta."""
    import os

    from cas.objects.delta_bases import PROBE_BYTES

    store.save(os.urandom(1 << 20), "shards/a")
    ranges: list[tuple[str, str]] = []

    def count(op: str, params: dict[str, Any]) -> str:
        if op == "GetObject" and ("/objects/" in params["Key"] or "/packs/" in params["Key"]):
            ranges.append((params["Key"], params.get("Range", "")))
        return op

    second = os.urandom(1 << 20)
    with s3_calls(count):
        unrelated = store.save(second, "shards/b")
    assert len(ranges) == 1, ranges  # the start of shards/a's content, and no more
    key, span = ranges[0]
    low, high = (int(x) for x in span.removeprefix("bytes=").split("-"))
    assert high - low < PROBE_BYTES, ranges
    assert store.space.head(store.record(unrelated)["content_id"]).base is None

    edited = bytearray(second)  # shards/b, the newest in the folder, edited
    edited[500_000:500_100] = os.urandom(100)
    ranges.clear()
    with s3_calls(count):
        related = store.save(bytes(edited), "shards/c")
    content = store.record(related)["content_id"]
    assert len(ranges) == 2, ranges  # its start, then all of it
    header = store.space.head(content)
    assert header.base is not None, "stored as a delta against its kin"
    assert store.load("shards/c") == bytes(edited)


def test_a_checkpoint_saved_beside_the_last_is_an_xor_delta_on_a_bucket(
    store: Any, s3_server: Server
) -> None:
    """Floats that all moved a little (format 4): on a bucket the new checkpoint's chunks
    are cut where the old one's were, XORed with them and stored as such; the marker
    says 4, and another process (an empty cache) reads every version back."""
    import numpy as np

    rng = np.random.default_rng(35)
    first = rng.standard_normal(2 << 20).astype(np.float32)  # 8 MiB: chunked
    second = (first * (1 + 1e-3 * rng.standard_normal(first.size))).astype(np.float32)
    third = (second * (1 + 1e-3 * rng.standard_normal(first.size))).astype(np.float32)
    store.save(first.tobytes(), "ckpt/step-1")
    saved = [store.save(second.tobytes(), "ckpt/step-2")]
    ranges: list[str] = []

    def count(op: str, params: dict[str, Any]) -> str:
        if op == "GetObject" and params.get("Range"):
            ranges.append(params["Key"])
        return op

    with s3_calls(count):  # its kin is an XOR delta: its base is the root, read at once
        saved.append(store.save(third.tobytes(), "ckpt/step-3"))
    roots = set()
    for artifact in saved:
        content = store.record(artifact)["content_id"]
        _, listing = store.space.read_entry(content)
        heads = [store.space.head(c) for c, _ in ChunkList.parse(content, listing).chunks]
        assert all(h.flags == 0b111 and h.depth == 1 for h in heads), heads
        roots.add(tuple(h.base for h in heads))
    assert len(roots) == 1  # both on step-1's chunks: chains of one
    chunks = len(next(iter(roots)))
    assert len(ranges) <= 2 * chunks + 2, ranges  # per chunk: the kin's start, the root
    other = cas.open_store(store.storage.url, **s3_server.storage_options)
    assert other.space.format == 4
    assert other.load("ckpt/step-3") == third.tobytes()
    assert other.load(saved[0]) == second.tobytes()


def test_content_equal_to_its_kins_root_is_saved_again_without_a_delta_on_itself(
    store: Any,
) -> None:
    """On a bucket a save encodes its content before it asks whether the content is
    stored (at the batch's flush). Content equal to the plain root of its kin's XOR
    delta (the first checkpoint saved again under a sibling name) found itself as its
    base, and the save failed ("names itself as its delta base"; the stateful machine
    found it)."""
    import numpy as np

    rng = np.random.default_rng(36)
    first = rng.standard_normal(70_000).astype(np.float32)  # 280 kB: one whole blob
    moved = (first * (1 + 1e-3 * rng.standard_normal(first.size))).astype(np.float32)
    store.save(first.tobytes(), "ckpt/a")
    kin = store.save(moved.tobytes(), "ckpt/a")
    assert store.space.head(store.record(kin)["content_id"]).flags == 0b111
    again = store.save(first.tobytes(), "ckpt/b")  # its kin: ckpt/a, an XOR on this
    assert store.space.head(store.record(again)["content_id"]).base is None
    assert store.load("ckpt/b") == first.tobytes()


def test_a_folder_save_lists_the_fan_out_folders_side_by_side(
    store: Any, tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A batch of new files (a folder of 40) asks which are loose already by listing
    their fan-out folders: each a request on a bucket, sent together, not one after
    another (40 round trips: 2 s at 20 ms each way)."""
    import os
    import threading
    import time

    folder = tmp_path / "folder"
    folder.mkdir()
    for i in range(40):
        (folder / f"f{i:02d}.bin").write_bytes(os.urandom(2048))
    listdir = store.storage.listdir
    lock = threading.Lock()
    now = {"in": 0, "most": 0, "calls": 0}

    def counting(rel: str) -> Any:
        if not rel.startswith("objects/"):
            return listdir(rel)
        with lock:
            now["in"] += 1
            now["calls"] += 1
            now["most"] = max(now["most"], now["in"])
        try:
            time.sleep(0.02)  # a round trip's worth: lets the next request start meanwhile
            return listdir(rel)
        finally:
            with lock:
                now["in"] -= 1

    monkeypatch.setattr(store.storage, "listdir", counting)
    store.save(folder, "sets/forty")
    assert now["calls"] >= 16, now  # many fan-out folders were asked
    assert now["most"] >= 4, now  # ... at once
    assert sorted(
        p.name for p in store.load("sets/forty", dest=tmp_path / "out").iterdir()
    ) == sorted(p.name for p in folder.iterdir())


def test_a_save_journals_beside_the_check_of_its_claim(
    store: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a bucket a save's journal entry is written while its name's claim is checked
    (that it landed in a slot never used): one round trip for both, not two; of a new
    name and of one that exists."""
    import threading
    import time

    from cas.refs.store import RefStore

    lock = threading.Lock()
    seen = {"checking": 0, "beside": 0, "puts": 0}
    fresh = RefStore._fresh

    def slow_fresh(self: RefStore, name: str, seq: int) -> bool:
        with lock:
            seen["checking"] += 1
        try:
            time.sleep(0.2)
            return fresh(self, name, seq)
        finally:
            with lock:
                seen["checking"] -= 1

    append = store.repo.journal.append

    def watched(event: dict[str, Any], *args: Any, **kwargs: Any) -> str:
        if event["op"] == "put":
            time.sleep(0.05)
            with lock:
                seen["puts"] += 1
                seen["beside"] += seen["checking"] > 0
        return append(event, *args, **kwargs)

    monkeypatch.setattr(RefStore, "_fresh", slow_fresh)
    monkeypatch.setattr(store.repo.journal, "append", watched)
    store.save(b"one", "models/beside")
    store.save(b"two", "models/beside")
    assert seen == {"checking": 0, "beside": 2, "puts": 2}
    assert [h["message"] for h in store.history("models/beside")] == ["save bytes"] * 2


def test_a_small_save_reads_its_name_while_writing_its_objects(
    store: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a bucket the read of the name a small value is saved under (and the check of
    a new name) goes beside the writes of its content and record: one round trip for
    both. A name refused then leaves only objects that nothing names."""
    import threading
    import time

    from cas.repo.names import Names

    lock = threading.Lock()
    seen = {"reading": 0, "beside": 0, "objects": 0}
    read = Names.read

    def slow_read(self: Names, name: str) -> str | None:
        with lock:
            seen["reading"] += 1
        try:
            time.sleep(0.2)
            return read(self, name)
        finally:
            with lock:
                seen["reading"] -= 1

    create = store.storage.create

    def watched(path: str, data: bytes) -> bool:
        if path.startswith("objects/"):
            time.sleep(0.05)
            with lock:
                seen["objects"] += 1
                seen["beside"] += seen["reading"] > 0
        return create(path, data)

    monkeypatch.setattr(Names, "read", slow_read)
    monkeypatch.setattr(store.storage, "create", watched)
    first = store.save(b"one", "models/read-beside")
    second = store.save(b"two", "models/read-beside")
    assert seen == {"reading": 0, "beside": 4, "objects": 4}  # content, record, twice
    assert store.history("models/read-beside")[0]["new"] == second
    assert store.history("models/read-beside")[1]["new"] == first
    with pytest.raises(RefConflict):
        store.save(b"three", "models/read-beside/below")
    assert "models/read-beside/below" not in store.list_artifacts()
    assert store.load("models/read-beside") == b"two"


def test_ref_move_by_a_store_that_never_saw_the_name(store: Any, s3_server: Server) -> None:
    store.save(b"fraud v1", "models/fraud")
    with cas.open_store(store.url, **s3_server.storage_options) as other:
        other.index  # noqa: B018 - opens the catalog, outside the count
        with s3_calls() as counts:
            other.save(b"fraud v2", "models/fraud")
    # refs lists the name's history once to find its newest entry: 1 listing, 1 GET;
    # the new store lists packs/ once (its pack indexes are read once, then kept) and
    # reads the version the name holds, the new one's delta base.
    assert _total(counts) <= 12, counts
    assert counts["ListObjectsV2"] <= 3, counts


def test_load(store: Any) -> None:
    store.save(b"fraud v1", "models/fraud")
    with s3_calls() as counts:
        assert store.load("models/fraud") == b"fraud v1"
    assert _total(counts) <= 2, counts  # GET of the ref, GET of the object


def test_refstore_set_without_a_read_first(s3_server: Server) -> None:
    fs = s3_server.filesystem()
    rs = RefStore(fs, f"{s3_server.new_bucket()}/.cas", conditional=conditional_for(fs))
    with s3_calls() as counts:
        rs.set("a/b", A, expected=None)
    # GET of the ref, GET of "a", a listing below "a/b", PUT of entry 1, GET of the
    # prune marker, PUT of the ref, GET of "a" and the listing again.
    assert _total(counts) <= 8, counts
    with s3_calls() as counts:
        rs.set("a/b", B, expected=A)
    assert _total(counts) <= 4, counts  # GET of the ref, PUT entry 2, GET entry 1, PUT ref


# -- objects: a write is the dedup check when the object is most likely new ----------------


def _by_kind(op: str, params: dict[str, Any]) -> str | None:
    """Count object requests only, by operation: ``PutObject``, ``HeadObject``, ..."""
    return op if "/objects/" in str(params.get("Key", "")) else None


def test_new_large_content_is_one_put_a_chunk(store: Any, tmp_path: Any) -> None:
    import random

    from cas.objects.kinds import ChunkList
    from cas.objects.space import CREATE_AFTER

    path = tmp_path / "big.bin"
    path.write_bytes(random.Random(1).randbytes(40 << 20))
    with s3_calls(_by_kind) as counts:
        oid = store.space.put_file(path)
    chunks = len(ChunkList.parse(oid, store.space.read_object(oid)[1]).chunks)
    assert chunks > 1 + CREATE_AFTER + store.storage.io_threads, chunks  # more than checked
    # Each chunk and the chunk list: one PUT. HEADs: the whole content's (the dedup check
    # before cutting) and those of the chunks that started before CREATE_AFTER chunks
    # in a row had been found new (one window of io_threads at the start).
    assert counts["PutObject"] == chunks + 1, counts
    assert counts["HeadObject"] <= 1 + CREATE_AFTER + store.storage.io_threads, counts
    assert set(counts) == {"PutObject", "HeadObject"}, counts


def test_a_new_version_of_large_content_uploads_only_its_new_chunks(
    store: Any, tmp_path: Any
) -> None:
    import random

    from cas.objects.kinds import ChunkList

    data = bytearray(random.Random(2).randbytes(40 << 20))
    path = tmp_path / "v1.bin"
    path.write_bytes(data)
    store.space.put_file(path)
    for at in (5 << 20, 20 << 20, 33 << 20):  # three scattered edits
        data[at : at + 100] = bytes(100)
    path.write_bytes(data)
    with s3_calls(_by_kind) as counts:
        oid = store.space.put_file(path)
    chunks = len(ChunkList.parse(oid, store.space.read_object(oid)[1]).chunks)
    # Present chunks are checked first (a HEAD each) and not uploaded again: the PUTs are
    # the few chunks the edits touched (content-defined cuts: one or two each) and the list.
    assert counts["HeadObject"] == chunks + 1, counts
    assert counts["PutObject"] <= 3 * 2 + 1, counts


def test_a_record_is_created_without_a_check_and_an_old_one_is_freshened(
    store: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from cas.objects import writer as objectwriter

    value = {"name": "r", "created_at": "2026-11-23T00:00:00.000000Z"}
    with s3_calls(_by_kind) as counts:
        oid = store.space.put_value("record", value)
    assert counts == {"PutObject": 1}, counts  # If-None-Match: *, no HEAD first
    monkeypatch.setattr(objectwriter, "FRESHEN_AFTER", 0.0)  # every object counts as old
    with s3_calls(_by_kind) as counts:
        assert store.space.put_value("record", value) == oid
    # The conditional PUT finds it (412), a HEAD reads its age, a server-side copy
    # refreshes it, as any dedup hit does (docs/gc.md: gc's grace counts from there).
    assert counts == {"PutObject": 1, "HeadObject": 1, "CopyObject": 1}, counts


def test_a_fresh_process_reads_content_without_the_journal(
    s3_server: Server, tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Reading content needs the record as saved, not the catalog: a process with an
    empty cache does not catch the catalog up with the journal (a listing per day)."""
    url = s3_server.url(s3_server.new_bucket(), "store")
    with cas.open_store(url, **s3_server.storage_options) as writer:
        writer.save(b"fraud v1", "models/fraud")
        rid = writer.save({"rows": 3}, "reports/r")
    monkeypatch.setenv("CAS_CACHE_DIR", str(tmp_path / "another-machine"))
    seen: list[tuple[str, str]] = []

    def count(op: str, params: dict[str, Any]) -> str:
        seen.append((op, str(params.get("Prefix") or params.get("Key"))))
        return op

    with cas.open_store(url, create=False, **s3_server.storage_options) as reader:
        with s3_calls(count) as counts:
            assert reader.load("models/fraud") == b"fraud v1"
            assert reader.load("reports/r") == {"rows": 3}
            assert reader.load(rid) == {"rows": 3}  # by id: the record's header, not the catalog
        assert not [key for _, key in seen if "logs/" in key], seen
        # once: the packs/ listing (and one of the root: no packs/ here, absent or
        # unreachable?); per artifact its ref, its record, its content. Before, the
        # journal's day folders were listed first (five listings here). By id: the
        # record's header, the record, the content (3 more).
        assert _total(counts) <= 11, seen
        with s3_calls() as again:
            assert reader.load("models/fraud") == b"fraud v1"
        assert _total(again) <= 2, again  # the ref and the content: the record is kept
        assert reader.get_metadata("models/fraud")["name"] == "models/fraud"  # catalog still works
