"""Deltas between versions (issue 21): a new version of a name is stored as deltas
against the previous one, every id stays the hash of its bytes, and gc, fsck and
push/pull keep every version whole."""

from __future__ import annotations

import random
import shutil
from collections.abc import Callable
from pathlib import Path

import blake3
import msgpack
import pytest

import cas
from cas.admin import fsck, gc, transfer
from cas.errors import IntegrityError, ObjectNotFound
from cas.objects import codec, delta
from cas.objects.ids import ObjectId
from cas.objects.space import MARKER, object_path
from cas.objects.trees import walk_tree

WORDS = [
    *[
        "def",
        "return",
        "import",
        "class",
        "self",
        "value",
        "object",
        "store",
        "chunk",
        "delta",
        "version",
        "record",
        "tree",
    ],
    *[
        "blob",
        "name",
        "path",
        "file",
        "folder",
        "index",
        "pack",
        "write",
        "read",
        "verify",
        "hash",
        "bytes",
        "size",
        "offset",
    ],
    *[
        "error",
        "raise",
        "except",
        "with",
        "open",
        "close",
        "for",
        "while",
        "if",
        "else",
        "elif",
        "try",
        "finally",
        "yield",
    ],
]


def _text(rng: random.Random, size: int) -> bytes:
    lines = []
    total = 0
    while total < size:
        line = " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 12)))
        line = "    " * rng.randint(0, 3) + line + f"  # {rng.randint(0, 99999)}\n"
        lines.append(line)
        total += len(line)
    return "".join(lines).encode()[:size]


def _edit(rng: random.Random, data: bytes) -> bytes:
    """A release's edit of a source file: a few lines changed, one inserted."""
    lines = data.split(b"\n")
    for _ in range(3):
        i = rng.randrange(len(lines))
        lines[i] = _text(rng, 60).replace(b"\n", b" ")
    lines.insert(rng.randrange(len(lines)), _text(rng, 80).replace(b"\n", b" "))
    return b"\n".join(lines)


def _releases(root: Path, count: int, seed: int = 21) -> list[Path]:
    """``count`` successive releases of a small source tree: each edits a third of the
    files, adds one and removes one."""
    rng = random.Random(seed)
    files = {f"pkg/mod{i:02d}.py": _text(rng, rng.randint(2000, 20000)) for i in range(30)}
    files |= {f"pkg/sub/util{i}.py": _text(rng, rng.randint(1000, 8000)) for i in range(8)}
    files["README.md"] = _text(rng, 3000)
    out = []
    for n in range(count):
        if n:
            for name in rng.sample(sorted(files), len(files) // 3):
                files[name] = _edit(rng, files[name])
            files.pop(rng.choice(sorted(files)))
            files[f"pkg/new{n}.py"] = _text(rng, 4000)
        folder = root / f"release-{n}"
        for name, data in files.items():
            (folder / name).parent.mkdir(parents=True, exist_ok=True)
            (folder / name).write_bytes(data)
        out.append(folder)
    return out


def _stored_bytes(store: cas.ArtifactStore) -> int:
    return sum(st.size for _, st in store.space.iter_stats())


def _headers(store: cas.ArtifactStore) -> dict[ObjectId, codec.Header]:
    return {oid: store.space.head(oid) for oid in store.space}


def _same_folder(a: Path, b: Path) -> bool:
    fa = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    fb = sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    return fa == fb and all((a / r).read_bytes() == (b / r).read_bytes() for r in fa)


@pytest.fixture
def store(tmp_path: Path) -> cas.ArtifactStore:
    return cas.open_store(tmp_path / "store", fsync=False)


def test_versions_of_a_folder_round_trip_smaller_with_ids_unchanged(
    store: cas.ArtifactStore, tmp_path: Path
) -> None:
    releases = _releases(tmp_path / "src", 4)
    plain = cas.open_store(tmp_path / "plain", fsync=False)
    ids = [store.save(folder, "pkg") for folder in releases]
    plain_ids = [plain.save(folder, f"pkg{n}") for n, folder in enumerate(releases)]
    for n, (aid, folder) in enumerate(zip(ids, releases, strict=True)):
        out = store.load(aid, dest=tmp_path / f"out{n}")
        assert _same_folder(folder, out)
        # The same content has the same ids with or without deltas: a file's id is its b3sum.
        content = store.get_metadata(aid)["content_id"]
        assert content == plain.get_metadata(plain_ids[n])["content_id"]
        for rel, entry in walk_tree(store.space, content):
            if not entry.is_dir:
                assert entry.id == blake3.blake3((folder / rel).read_bytes()).hexdigest()
    assert store.load("pkg", dest=tmp_path / "newest").samefile(tmp_path / "newest")
    assert _same_folder(releases[-1], tmp_path / "newest")
    deltas = [h for h in _headers(store).values() if h.base is not None]
    assert {h.kind for h in deltas} == {"blob", "tree"}  # files and folders both
    # Saved under one name the versions share their bytes; under four names nothing.
    assert _stored_bytes(store) < 0.6 * _stored_bytes(plain)
    assert fsck.check(store).ok


def test_a_large_file_stores_its_edited_chunks_as_deltas(
    store: cas.ArtifactStore, tmp_path: Path
) -> None:
    rng = random.Random(7)
    v1 = _text(rng, 9 << 20)  # above the 4 MiB threshold: chunked
    v2 = bytearray(v1)
    for at in (1 << 20, 4 << 20, 7 << 20):  # an edit in three chunks, sizes unchanged
        v2[at : at + 200] = _text(rng, 200)
    paths = [tmp_path / "v1.bin", tmp_path / "v2.bin"]
    paths[0].write_bytes(v1)
    paths[1].write_bytes(bytes(v2))
    first = store.save(paths[0], "data")
    after_one = _stored_bytes(store)
    second = store.save(paths[1], "data")
    assert _stored_bytes(store) - after_one < 0.05 * after_one
    assert store.space.kind(store.get_metadata(second)["content_id"]) == "chunks"
    assert store.get_metadata(second)["content_id"] == blake3.blake3(bytes(v2)).hexdigest()
    assert store.load(first, dest=tmp_path / "o1").read_bytes() == v1
    assert store.load(second, dest=tmp_path / "o2").read_bytes() == bytes(v2)
    assert any(h.base is not None for h in _headers(store).values())


def test_unrelated_content_is_stored_plain(store: cas.ArtifactStore) -> None:
    """A delta is kept only when it saves at least the set fraction."""
    store.save(random.Random(1).randbytes(50_000), "noise")
    second = store.save(random.Random(2).randbytes(50_000), "noise")
    content = ObjectId(store.get_metadata(second)["content_id"])
    assert store.space.head(content).base is None


def test_dense_content_reads_a_base_whole_only_if_its_start_shares_bytes(
    store: cas.ArtifactStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Content that hardly compresses (random data, media, float weights) first reads
    the start of its candidate base: a new version sharing nothing with the previous one
    does not read, decode and verify all of it; an edited one does, and is a delta."""
    from cas.objects import delta_bases
    from cas.objects.space import ObjectSpace

    rng = random.Random(11)
    first = rng.randbytes(1 << 20)  # above SMALL_BLOB, under the chunking threshold
    second = rng.randbytes(1 << 20)
    old = blake3.blake3(first).hexdigest()
    store.save(first, "shard")
    whole: list[str] = []
    starts: list[tuple[str, int]] = []
    read_entry, read_prefix = ObjectSpace.read_entry, ObjectSpace.read_prefix

    def entry(self: ObjectSpace, oid: str) -> tuple[codec.Header, bytes]:
        whole.append(oid)
        return read_entry(self, oid)

    def prefix(self: ObjectSpace, oid: str, n: int) -> bytes:
        starts.append((oid, n))
        return read_prefix(self, oid, n)

    monkeypatch.setattr(ObjectSpace, "read_entry", entry)
    monkeypatch.setattr(ObjectSpace, "read_prefix", prefix)
    unrelated = store.save(second, "shard")
    assert (old, delta_bases.PROBE_BYTES) in starts
    assert old not in whole
    assert store.space.head(store.get_metadata(unrelated)["content_id"]).base is None

    edited = bytearray(second)
    edited[600_000:600_064] = rng.randbytes(64)
    whole.clear()
    related = store.save(bytes(edited), "shard")
    assert blake3.blake3(second).hexdigest() in whole
    assert store.space.head(store.get_metadata(related)["content_id"]).base is not None
    assert store.load("shard") == bytes(edited)


def test_chains_stop_at_the_depth_cap_and_every_version_loads(store: cas.ArtifactStore) -> None:
    rng = random.Random(3)
    data = _text(rng, 30_000)
    versions, ids = [], []
    for _ in range(delta.MAX_DEPTH + 3):
        data = _edit(rng, data)
        versions.append(data)
        ids.append(store.save(data, "doc"))
    contents = [ObjectId(store.get_metadata(a)["content_id"]) for a in ids]
    depths = [store.space.head(c).depth for c in contents]
    assert depths[: delta.MAX_DEPTH + 1] == list(range(delta.MAX_DEPTH + 1))
    # The cap reached: the next version starts a new branch on the chain's plain root.
    assert depths[delta.MAX_DEPTH + 1] == 1
    assert store.space.head(contents[delta.MAX_DEPTH + 1]).base == contents[0]
    assert max(depths) == delta.MAX_DEPTH
    assert [store.load(a) for a in ids] == versions


def test_a_corrupt_base_is_named_when_its_delta_is_read(store: cas.ArtifactStore) -> None:
    rng = random.Random(4)
    v1 = _text(rng, 20_000)
    store.save(v1, "doc")  # one blob: a loose object
    second = store.save(_edit(rng, v1), "doc")
    top = ObjectId(store.get_metadata(second)["content_id"])
    base = store.space.head(top).base
    assert base is not None
    path = Path(store.storage.root) / object_path(base)
    raw = bytearray(path.read_bytes())
    raw[-1] ^= 0x01  # the base's last body byte
    path.chmod(0o644)
    path.write_bytes(bytes(raw))
    with pytest.raises(IntegrityError) as caught:
        store.load(second)
    assert base in str(caught.value)


def test_gc_keeps_the_bases_a_live_delta_needs_and_frees_the_rest(
    store: cas.ArtifactStore, tmp_path: Path
) -> None:
    releases = _releases(tmp_path / "src", 2)
    old = store.save(releases[0], "pkg")
    new = store.save(releases[1], "pkg")
    store.catalog.delete(old)  # the old version goes; the new one's deltas need its files
    bases = {h.base for h in _headers(store).values() if h.base is not None}
    assert bases
    plan = gc.plan(store, grace=0, retention=0)
    gc.execute(store, plan)
    assert len(plan.delete) + len(plan.pack_garbage) > 0  # the old record, a removed file
    present = set(store.space)
    assert bases <= present
    assert _same_folder(releases[1], store.load(new, dest=tmp_path / "out"))
    assert fsck.check(store).ok


def test_gc_keeps_a_folder_that_is_both_a_base_and_content(
    store: cas.ArtifactStore, tmp_path: Path
) -> None:
    """v2 edits a/ (a delta on v1's a/) and holds a copy of v1's a/ deeper down, as
    x/y/b/: the old folder is a base and content at once (reached as a base first),
    and all it holds must stay."""
    rng = random.Random(10)
    old = {f"f{i}.py": _text(rng, 5000) for i in range(20)}
    v1, v2 = tmp_path / "v1", tmp_path / "v2"
    for name, data in old.items():
        (v1 / "a").mkdir(parents=True, exist_ok=True)
        (v1 / "a" / name).write_bytes(data)
        (v2 / "x" / "y" / "b").mkdir(parents=True, exist_ok=True)
        (v2 / "x" / "y" / "b" / name).write_bytes(data)
        if name != "f0.py":  # removed from a/ in v2: only b/ holds it now
            (v2 / "a").mkdir(parents=True, exist_ok=True)
            (v2 / "a" / name).write_bytes(_edit(rng, data) if name < "f5" else data)
    first = store.save(v1, "two")
    second = store.save(v2, "two")
    store.catalog.delete(first)
    gc.execute(store, gc.plan(store, grace=0, retention=0))
    assert _same_folder(v2, store.load(second, dest=tmp_path / "out"))
    assert fsck.check(store).ok


def test_fsck_names_the_artifacts_a_missing_base_affects(store: cas.ArtifactStore) -> None:
    rng = random.Random(5)
    v1 = _text(rng, 20_000)
    first = store.save(v1, "doc")
    second = store.save(_edit(rng, v1), "doc")
    top = ObjectId(store.get_metadata(second)["content_id"])
    base = store.space.head(top).base
    assert base == store.get_metadata(first)["content_id"]
    Path(store.storage.root, object_path(base)).unlink()
    report = fsck.check(store)
    [problem] = [p for p in report.problems if p.object_id == base]
    assert problem.kind == "missing"
    assert top in problem.detail and "delta base" in problem.detail
    assert any(second[:12] in a for a in problem.artifacts)  # the new version, through its delta
    assert any(first[:12] in a for a in problem.artifacts)  # and the old one, whose content it is
    with pytest.raises(ObjectNotFound) as caught:
        store.load(second)
    assert base in str(caught.value)


def test_push_carries_deltas_and_a_lone_version_goes_plain(
    store: cas.ArtifactStore, tmp_path: Path
) -> None:
    releases = _releases(tmp_path / "src", 3)
    rng = random.Random(6)
    big = _text(rng, 6 << 20)
    for folder in releases:
        store.save(folder, "pkg")
        big = big[: 2 << 20] + _text(rng, 300) + big[(2 << 20) + 300 :]
        store.save(big, "big")
    everything = cas.open_store(tmp_path / "all", fsync=False)
    transfer.transfer(store, everything)
    assert _stored_bytes(everything) < 1.2 * _stored_bytes(store)
    headers = _headers(everything)
    assert {h.kind for h in headers.values() if h.base is not None} == {"blob", "tree"}
    assert any(  # a chunk of the large file, carried as a delta
        h.base is not None and everything.space.head(h.base).raw_size > 1 << 18
        for h in headers.values()
    )
    for artifact in store.catalog.list(limit=100):  # every version is there, and loads
        assert everything.get_metadata(artifact["id"])["content_id"] == artifact["content_id"]
        assert everything.load(artifact["id"], dest=tmp_path / "each" / artifact["id"])
    assert _same_folder(releases[-1], everything.load("pkg", dest=tmp_path / "o"))
    assert everything.load("big") == big
    assert fsck.check(everything).ok
    newest = cas.open_store(tmp_path / "newest", fsync=False)
    transfer.transfer(store, newest, ["pkg"])
    assert all(h.base is None for h in _headers(newest).values())  # no base there: plain
    assert _same_folder(releases[-1], newest.load("pkg", dest=tmp_path / "o2"))


def test_the_first_delta_marks_the_store_format_3(tmp_path: Path) -> None:
    """A cas that cannot read deltas refuses a store of format 3 ("upgrade cas"): the
    marker says 3 from the first delta on, and 2 before it."""
    root = tmp_path / "s"
    rng = random.Random(8)
    with cas.open_store(root, fsync=False) as s:
        v1 = _text(rng, 10_000)
        s.save(v1, "doc")
        assert msgpack.unpackb((root / MARKER).read_bytes())["format"] == 2
        s.save(_edit(rng, v1), "doc")
        assert msgpack.unpackb((root / MARKER).read_bytes())["format"] == 3


def test_a_delta_header_is_refused_by_the_rules_of_a_plain_one() -> None:
    """The header layout: flags 0b11, depth in byte 7, the base id after 16 bytes;
    a delta flag without depth, or a depth without the flag, is malformed."""
    base = delta.Base(ObjectId("ab" * 32), _text(random.Random(9), 5000), 0)
    payload = base.payload.replace(b"self", b"this")
    stored = delta.encode("blob", payload, base)
    oid = blake3.blake3(payload).hexdigest()
    header = codec.read_header(oid, stored)
    assert (header.flags, header.depth, header.base) == (0b11, 1, base.id)
    assert stored[16:48] == bytes.fromhex(base.id)
    assert codec.decode_body(oid, header, stored, base.payload) == payload
    no_depth = stored[:7] + b"\0" + stored[8:]
    plain_with_depth = stored[:6] + b"\x01\x01" + stored[8:]
    for bad in (no_depth, plain_with_depth, stored[:40]):
        with pytest.raises(IntegrityError):
            codec.read_header(oid, bad)


def test_loaded_folder_is_independent_of_older_versions_being_moved(
    store: cas.ArtifactStore, tmp_path: Path
) -> None:
    """Deltas live in packs as in loose objects: a folder version goes to a pack, and
    it reads after its source folders are gone."""
    releases = _releases(tmp_path / "src", 2)
    expected = {p.relative_to(releases[1]): p.read_bytes() for p in releases[1].rglob("*.py")}
    store.save(releases[0], "pkg")
    store.save(releases[1], "pkg")
    shutil.rmtree(tmp_path / "src")
    assert store.space.packs.ids()
    packed_deltas = [
        oid for oid, _ in store.space.packs.entries() if store.space.head(oid).base is not None
    ]
    assert packed_deltas
    out = store.load("pkg", dest=tmp_path / "out")
    assert {p.relative_to(out): p.read_bytes() for p in out.rglob("*.py")} == expected


# -- versions named apart (issue 35): a first save builds on its kin -------------------------


def _growth(store: cas.ArtifactStore, save: Callable[[], str]) -> tuple[str, int]:
    """(id, stored bytes added) of one save."""
    before = _stored_bytes(store)
    aid = save()
    return aid, _stored_bytes(store) - before


def _plain_growth(tmp_path: Path, first: Path, second: Path) -> int:
    plain = cas.open_store(tmp_path / "plain", fsync=False)
    plain.space.deltas = False
    plain.save(first, "a")
    return _growth(plain, lambda: plain.save(second, "b"))[1]


def test_a_version_under_a_sibling_name_is_stored_as_deltas_and_outlives_the_first(
    store: cas.ArtifactStore, tmp_path: Path
) -> None:
    """``pkg/1.1`` saved after ``pkg/1.0`` (another kind of artifact saved between them)
    takes ``pkg/1.0`` as its previous version; deleting ``pkg/1.0`` and collecting
    keeps what ``pkg/1.1``'s deltas need."""
    releases = _releases(tmp_path / "src", 2)
    store.save(releases[0], "pkg/1.0")
    store.save(b"release notes", "pkg/notes")  # newer, but not a folder: not a base
    store.save(releases[0], "other/1.0")  # a folder of another folder of names: not a sibling
    new, grown = _growth(store, lambda: store.save(releases[1], "pkg/1.1"))
    assert grown < 0.4 * _plain_growth(tmp_path, releases[0], releases[1])
    assert _same_folder(releases[1], store.load(new, dest=tmp_path / "out"))
    store.delete("pkg/1.0")
    store.delete("other/1.0")
    gc.execute(store, gc.plan(store, grace=0, retention=0))
    assert _same_folder(releases[1], store.load("pkg/1.1", dest=tmp_path / "after-gc"))
    assert fsck.check(store).ok


def test_an_artifact_derived_from_another_is_stored_as_deltas_against_its_parent(
    store: cas.ArtifactStore, tmp_path: Path
) -> None:
    rng = random.Random(11)
    base = _text(rng, 60_000)
    tuned = _edit(rng, base)
    parent = store.save(base, "base-model")
    store.save(_text(rng, 60_000), "unrelated")  # newer, top-level: no sibling of either
    child, grown = _growth(store, lambda: store.save(tuned, "tuned", parent_ids=[parent]))
    assert grown < 0.2 * len(tuned)
    content = ObjectId(store.get_metadata(child)["content_id"])
    assert store.space.head(content).base == store.get_metadata(parent)["content_id"]
    store.delete("base-model")
    gc.execute(store, gc.plan(store, grace=0, retention=0))
    assert store.load("tuned") == tuned
    assert fsck.check(store).ok


def test_versions_named_apart_in_one_batch_build_on_each_other(
    store: cas.ArtifactStore, tmp_path: Path
) -> None:
    """Releases saved inside ``batch()``: the names are published at its end, and each
    save still finds the one before it (and a parent saved in the batch)."""
    releases = _releases(tmp_path / "src", 3)
    alone = cas.open_store(tmp_path / "alone", fsync=False)
    alone.save(releases[0], "pkg/1.0")
    with store.batch():
        first = store.save(releases[0], "pkg/1.0")
        store.save(releases[1], "pkg/1.1")
        tuned = store.save(releases[2], "fork", parent_ids=[first])
    grown = _stored_bytes(store) - _stored_bytes(alone)
    plain = _plain_growth(tmp_path, *releases[:2])
    assert grown < 0.5 * plain  # two versions added, together far less than one plain
    assert _same_folder(releases[1], store.load("pkg/1.1", dest=tmp_path / "o1"))
    assert _same_folder(releases[2], store.load(tuned, dest=tmp_path / "o2"))
    assert fsck.check(store).ok


def test_a_file_whose_chunks_keep_no_delta_stops_trying_and_a_kept_one_resumes() -> None:
    """Content that changes everywhere (a model's weights after a training step) tries
    its chunks' bases only until GIVE_UP_AFTER in a row kept nothing, then one chunk in
    PROBE_EVERY; a delta kept again makes every chunk try."""
    old = [(ObjectId(f"{i:064x}"), 1000) for i in range(64)]
    aligner = delta.Aligner(old)
    for _ in range(delta.GIVE_UP_AFTER):
        assert aligner.worth_trying()
        aligner.missed()
    tried = [aligner.worth_trying() for _ in range(4 * delta.PROBE_EVERY)]
    assert sum(tried) == 4 and tried[delta.PROBE_EVERY - 1]
    aligner.matched(0, 1000, old[0][0])
    assert all(aligner.worth_trying() for _ in range(delta.GIVE_UP_AFTER))


def test_a_series_of_float_weights_is_stored_as_xor_deltas(tmp_path: Path) -> None:
    """A new version whose every float moved a little shares no byte run with the old
    one (a zstd delta finds nothing), but its XOR with it does: it stores well under
    what zstd of the version alone stores (format 4)."""
    import numpy as np

    rng = np.random.default_rng(3)
    weights = rng.standard_normal(1 << 20).astype(np.float32)  # 4 MiB: one whole blob
    store = cas.open_store(str(tmp_path / "s"), fsync=False)
    store.save(weights.tobytes(), "ckpt/1")
    moved = (weights + rng.standard_normal(weights.size).astype(np.float32) * 1e-3).tobytes()
    before = sum(p.stat().st_size for p in (tmp_path / "s" / "objects").rglob("*") if p.is_file())
    store.save(moved, "ckpt/2")
    after = sum(p.stat().st_size for p in (tmp_path / "s" / "objects").rglob("*") if p.is_file())
    assert store.load("ckpt/2") == moved
    plain = len(codec.encode("blob", moved, codec.DEFAULT_LEVEL))
    assert after - before <= plain * 0.85, (after - before, plain)


def test_a_base_that_saves_only_some_gives_way_to_a_better_candidate(
    store: cas.ArtifactStore,
) -> None:
    """The first candidate's delta is kept only if it is small (GOOD_ENOUGH of the
    payload); a larger one lets the next candidates try, and the smallest is kept: which
    guess comes first (learnt on other threads, in whatever order they finish) no longer
    decides what is stored."""
    from cas.objects import delta_bases

    rng = random.Random(22)
    payload = _text(rng, 200_000)
    half = payload[:100_000] + _text(random.Random(23), 100_000)  # shares half
    edited = _edit(rng, payload)  # shares all but an edit
    first = ObjectId(store.space.put(half))
    second = ObjectId(store.space.put(edited))
    oid = ObjectId(blake3.blake3(payload).hexdigest())
    stored, used = delta_bases.encode_on(
        store.space, oid, "blob", payload, (first, second), level=3, freshen=lambda _: True
    )
    assert used == second
    alone, _ = delta_bases.encode_on(
        store.space, oid, "blob", payload, (first,), level=3, freshen=lambda _: True
    )
    assert len(stored) * 10 < len(alone)
