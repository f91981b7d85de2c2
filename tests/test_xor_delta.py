"""XOR deltas (format 4, issue 35): a new version whose numbers all moved a little (a
model's weights after a training step) is stored as the byte-grouped XOR with the
previous version's bytes at the same place; ids, reads, gc, fsck and copies keep
every version whole, and a store holding one is marked format 4."""

from __future__ import annotations

import random
from pathlib import Path

import blake3
import msgpack
import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import cas
from cas.admin import fsck, gc, transfer
from cas.errors import FormatError, IntegrityError
from cas.objects import codec, delta, planes
from cas.objects.ids import ObjectId
from cas.objects.kinds import ChunkList
from cas.objects.space import MARKER, object_path


def _weights(seed: int, n: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(n).astype(np.float32)


def _trained(weights: np.ndarray, seed: int) -> np.ndarray:
    """The weights after a small step: every float moved, by about 1e-3 of itself."""
    step = np.random.default_rng(seed).standard_normal(weights.size).astype(np.float32)
    return (weights * (1 + 1e-3 * step)).astype(np.float32)


def _marker_format(root: Path) -> int:
    return int(msgpack.unpackb((root / MARKER).read_bytes())["format"])


def _pieces(store: cas.ArtifactStore, artifact: str) -> list[tuple[ObjectId, int]]:
    """The content's chunks (a whole blob: itself)."""
    content = ObjectId(store.get_metadata(artifact)["content_id"])
    head = store.space.head(content)
    if head.kind == "blob":
        return [(content, head.raw_size)]
    _, payload = store.space.read_entry(content)
    return list(ChunkList.parse(content, payload).chunks)


def _stored(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file() and "index" not in p.parts)


@given(st.binary(max_size=3000), st.binary(max_size=3000), st.integers(1, codec.MAX_STRIDE))
@settings(max_examples=150, deadline=None)
def test_grouping_and_xor_round_trip_with_and_without_numpy(
    a: bytes, b: bytes, stride: int
) -> None:
    """Both paths (numpy, pure Python) give the same bytes, and each undoes the other."""
    b = (b * (len(a) // max(len(b), 1) + 1))[: len(a)] if b else bytes(len(a))
    with_numpy = (planes.xor_grouped(a, b, stride), planes.group(planes.xor(a, b), stride))
    assert bytes(with_numpy[0]) == with_numpy[1]
    assert planes.unxor(with_numpy[1], stride, b) == a
    assert planes.ungroup(planes.group(a, stride), stride) == a
    try:
        planes.USE_NUMPY = False
        assert bytes(planes.xor_grouped(a, b, stride)) == with_numpy[1]
        assert planes.unxor(with_numpy[1], stride, b) == a
    finally:
        planes.USE_NUMPY = True


def test_a_checkpoint_under_a_new_name_is_an_xor_delta_and_stores_less(tmp_path: Path) -> None:
    """A new checkpoint of the same layout (a file above the chunking threshold) is cut
    where the previous one was and each chunk stored as the XOR with the chunk at its
    place: the version costs well under what zstd of it alone would; it loads exact."""
    root = tmp_path / "s"
    store = cas.open_store(root, fsync=False)
    first = _weights(1, 3 << 20)  # 12 MiB: chunked
    second = _trained(first, 2)
    store.save(first.tobytes(), "ckpt/step-1")
    assert _marker_format(root) == 2
    before = _stored(root / "objects") + _stored(root / "packs")
    saved = store.save(second.tobytes(), "ckpt/step-2")  # its kin: the sibling
    grew = _stored(root / "objects") + _stored(root / "packs") - before
    plain = sum(len(codec.encode("blob", p)) for p in np.array_split(second.view(np.uint8), 12))
    assert grew < 0.85 * plain, (grew, plain)
    old, new = _pieces(store, "ckpt/step-1"), _pieces(store, saved)
    assert [n for _, n in new] == [n for _, n in old]  # cut where the old one was
    heads = [store.space.head(c) for c, _ in new]
    assert all(h.flags == 0b111 and h.depth == 1 for h in heads)
    assert [h.base for h in heads] == [c for c, _ in old]
    assert _marker_format(root) == 4
    assert store.load("ckpt/step-2") == second.tobytes()
    assert blake3.blake3(second.tobytes()).hexdigest() == store.get_metadata(saved)["content_id"]
    again = cas.open_store(root, fsync=False)  # another process, numpy or not, reads it
    planes.USE_NUMPY = False
    try:
        assert again.load(saved) == second.tobytes()
    finally:
        planes.USE_NUMPY = True
    assert fsck.check(again).ok


def test_compressible_content_of_the_same_length_keeps_its_content_defined_cuts(
    tmp_path: Path,
) -> None:
    """Only dense content is cut where its previous version was: text of the same
    length whose middle moved (100 bytes out near the start, 100 in near the end) finds
    its moved chunks again, as content-defined cuts find them."""
    store = cas.open_store(tmp_path / "s", fsync=False)
    rng = random.Random(19)
    words = [bytes(rng.choice(b"abcdefghij") for _ in range(rng.randint(2, 9))) for _ in range(500)]
    text = b" ".join(rng.choice(words) for _ in range(1_600_000))[: 10 << 20]
    moved = text[: 1 << 20] + text[(1 << 20) + 100 : 9 << 20] + b"x" * 100 + text[9 << 20 :]
    assert len(moved) == len(text)
    first = store.save(text, "doc")
    saved = store.save(moved, "doc")
    old = {c for c, _ in _pieces(store, first)}
    new = [c for c, _ in _pieces(store, saved)]
    assert sum(c in old for c in new) >= len(new) - 3, "the chunks between the edits are shared"
    assert store.load(saved) == moved


def test_xor_chains_stay_one_deep_on_a_plain_root(tmp_path: Path) -> None:
    """Each XOR delta is on a plain object (:data:`delta.XOR_DEPTH`): the third version
    of a whole blob of floats takes the first as its base, not the second."""
    store = cas.open_store(tmp_path / "s", fsync=False)
    versions = [_weights(3, 1 << 18)]  # 1 MiB: one blob
    for seed in (4, 5, 6):
        versions.append(_trained(versions[-1], seed))
    ids = [store.save(v.tobytes(), "w") for v in versions]
    contents = [ObjectId(store.get_metadata(a)["content_id"]) for a in ids]
    heads = [store.space.head(c) for c in contents]
    assert heads[0].base is None
    assert [(h.base, h.depth) for h in heads[1:]] == [(contents[0], 1)] * 3
    assert [store.load(a) for a in ids] == [v.tobytes() for v in versions]


def test_new_data_of_the_same_size_is_stored_plain_without_reading_the_old_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A shard of new random data beside one of the same size: its start shows nothing
    to XOR or share, so the old one is not read whole and the new one is plain."""
    from cas.objects.space import ObjectSpace

    store = cas.open_store(tmp_path / "s", fsync=False)
    rng = random.Random(7)
    first, second = rng.randbytes(1 << 20), rng.randbytes(1 << 20)
    store.save(first, "shard")
    whole: list[str] = []
    read_entry = ObjectSpace.read_entry

    def entry(self: ObjectSpace, oid: str) -> tuple[codec.Header, bytes]:
        whole.append(oid)
        return read_entry(self, oid)

    monkeypatch.setattr(ObjectSpace, "read_entry", entry)
    saved = store.save(second, "shard")
    assert blake3.blake3(first).hexdigest() not in whole
    assert store.space.head(store.get_metadata(saved)["content_id"]).base is None


def test_a_damaged_xor_delta_or_base_is_named(tmp_path: Path) -> None:
    store = cas.open_store(tmp_path / "s", fsync=False)
    first = _weights(8, 1 << 18)
    store.save(first.tobytes(), "w")
    saved = store.save(_trained(first, 9).tobytes(), "w")
    top = ObjectId(store.get_metadata(saved)["content_id"])
    base = store.space.head(top).base
    assert base is not None
    for victim in (top, base):
        path = Path(store.storage.root) / object_path(victim)
        good = path.read_bytes()
        raw = bytearray(good)
        raw[len(raw) // 2] ^= 0x10
        path.chmod(0o644)
        path.write_bytes(bytes(raw))
        fresh = cas.open_store(tmp_path / "s", fsync=False)
        with pytest.raises(IntegrityError) as caught:
            fresh.load(saved)
        assert victim in str(caught.value)
        path.write_bytes(good)


def test_an_xor_header_is_checked_before_any_byte_is_trusted() -> None:
    """Flags 0b111, the stride after the base id; the XOR flag without the delta flag,
    a stride of 0 or above MAX_STRIDE, or a base of another length is refused."""
    base = delta.Base(ObjectId("cd" * 32), _weights(10, 4096).tobytes(), 0)
    payload = _trained(np.frombuffer(base.payload, np.float32), 11).tobytes()
    oid = blake3.blake3(payload).hexdigest()
    stored = delta.xor_encode("blob", payload, base)
    header = codec.read_header(oid, stored)
    assert (header.flags, header.depth, header.base) == (0b111, 1, base.id)
    assert stored[48] == delta.STRIDE
    assert codec.decode_body(oid, header, stored, base.payload) == payload
    with pytest.raises(IntegrityError):
        codec.read_header(oid, stored[:6] + bytes((0b101, 0)) + stored[8:])  # not a delta
    for stride in (0, codec.MAX_STRIDE + 1):
        bad = stored[:48] + bytes((stride,)) + stored[49:]
        with pytest.raises(IntegrityError, match="stride"):
            codec.decode_body(oid, codec.read_header(oid, bad), bad, base.payload)
    with pytest.raises(IntegrityError, match="XOR delta"):
        codec.decode_body(oid, header, stored, base.payload[:-4])


def _xor_pair(payload: bytes, base: bytes, stride: int) -> tuple[bytes, bytes]:
    """(the base's plain stored form, an XOR delta of ``payload`` on it by ``stride``)."""
    root = codec.encode("blob", base)
    head = codec.HEADER.pack(codec.MAGIC, codec.FORMAT, codec.KINDS["blob"], 0b111, 1, len(payload))
    frame = codec.frame(planes.xor_grouped(payload, base, stride), delta.XOR_LEVEL)
    return root, head + bytes.fromhex(blake3.blake3(base).hexdigest()) + bytes((stride,)) + frame


def _both_ways(payload: bytes, base: bytes, stride: int) -> tuple[bytes, bytes]:
    """(:func:`codec.decode_xor` of the pair, :func:`codec.decode_body` of it: the
    reference, on the base's payload decoded on its own)."""
    root, stored = _xor_pair(payload, base, stride)
    base_id = blake3.blake3(base).hexdigest()
    oid = blake3.blake3(payload).hexdigest()
    root_head, head = codec.read_header(base_id, root), codec.read_header(oid, stored)
    fast = codec.decode_xor(oid, head, stored, base_id, root_head, root)
    return fast, codec.decode_body(oid, head, stored, codec.decode_body(base_id, root_head, root))


@given(st.binary(min_size=1, max_size=3000), st.binary(max_size=3000), st.integers(1, 16))
@settings(max_examples=150, deadline=None)
def test_an_xor_delta_decoded_in_place_gives_the_reference_bytes(
    a: bytes, b: bytes, stride: int
) -> None:
    """The read path's decode (residual into scratch, base into the payload's buffer,
    XOR in place) returns what decoding the base, then the delta on it, returns: with
    numpy and without, for any length and stride (bases stored raw and compressed)."""
    b = (b * (len(a) // max(len(b), 1) + 1))[: len(a)] if b else bytes(len(a))
    assume(a != b)  # the same bytes have the same id: no delta names itself
    fast, reference = _both_ways(a, b, stride)
    assert fast == reference == a
    try:
        planes.USE_NUMPY = False
        assert _both_ways(a, b, stride) == (a, a)
    finally:
        planes.USE_NUMPY = True


@pytest.mark.parametrize(
    ("dtype", "count", "stride"),
    [(np.float32, 3 << 18, 4), (np.float32, (3 << 18) + 1, 8), (np.float64, 5 << 17, 8),
     (np.float64, 99_999, 3), (np.float32, 1 << 20, 16), (np.float32, 7, 8)],
)  # fmt: skip
def test_numbers_decoded_in_place_match_the_reference_across_blocks(
    dtype: type, count: int, stride: int
) -> None:
    """Payloads of many ungrouping blocks (:data:`planes.BLOCK`), of a length no stride
    divides, or shorter than one row; the base stored compressed (floats) and raw
    (random bytes); then a smaller one and a larger one again on the same scratch."""
    weights = np.random.default_rng(count).standard_normal(count).astype(dtype)
    step = np.random.default_rng(stride).standard_normal(count).astype(dtype)
    pairs = [(weights.tobytes()[1:], (weights * (1 + 1e-3 * step)).astype(dtype).tobytes()[1:])]
    noise = np.random.default_rng(count + 1).bytes(len(pairs[0][0]))
    pairs.append((noise, bytes(x ^ 1 for x in noise[:4096]) + noise[4096:]))
    pairs.append((pairs[0][0][:5000], pairs[0][1][:5000]))
    pairs.append(pairs[0])
    flags = [codec.read_header("ab" * 32, codec.encode("blob", b)).flags for b, _ in pairs]
    assert count < 100 or flags[:2] == [codec.FLAG_ZSTD, 0]  # a compressed root, a raw one
    for base, payload in pairs:
        fast, reference = _both_ways(payload, base, stride)
        assert fast == reference == payload


def test_a_damaged_residual_or_base_is_refused_by_the_in_place_decode() -> None:
    """A frame that declares another size, one cut short, one that inflates past what
    it declares, or a base of another size: an IntegrityError, as the reference says."""
    base = _weights(13, 1 << 16).tobytes()
    payload = _trained(np.frombuffer(base, np.float32), 14).tobytes()
    root, stored = _xor_pair(payload, base, 8)
    base_id, oid = blake3.blake3(base).hexdigest(), blake3.blake3(payload).hexdigest()
    head = codec.read_header(oid, stored)
    for bad_root, bad in (
        (root, stored[:-7]),  # cut short
        (root, stored[:49] + codec.frame(b"\0" * 64, 1)),  # declares another size
        (root[:-9], stored),  # the base's frame cut short
        (codec.encode("blob", base[:-4]), stored),  # a base of another size
    ):
        bad_root_head = codec.read_header(base_id, bad_root)
        with pytest.raises(IntegrityError):
            codec.decode_xor(oid, head, bad, base_id, bad_root_head, bad_root)
    longer = codec.frame(bytes(len(payload) + 100), 1)  # its header made to say less
    with pytest.raises(IntegrityError):
        view = memoryview(bytearray(len(payload)))
        codec._decompress_into(oid, memoryview(longer), view)


def test_gc_keeps_an_xor_base_whose_own_name_is_gone(tmp_path: Path) -> None:
    store = cas.open_store(tmp_path / "s", fsync=False)
    first = _weights(12, 3 << 20)
    gone = store.save(first.tobytes(), "ckpt/step-1")
    kept = store.save(_trained(first, 13).tobytes(), "ckpt/step-2")
    store.catalog.delete(gone)
    gc.execute(store, gc.plan(store, grace=0, retention=0))
    assert store.load(kept) == _trained(first, 13).tobytes()
    assert fsck.check(store).ok


def test_an_aggressive_repack_keeps_xor_deltas_as_they_are(tmp_path: Path) -> None:
    """`cas gc --pack --aggressive` re-chooses zstd deltas over a window; an XOR delta
    (which no zstd delta beats on moved floats) keeps its stored form and base."""
    store = cas.open_store(tmp_path / "s", fsync=False)
    first = _weights(14, 1 << 18)
    store.save(first.tobytes(), "w/1")
    saved = store.save(_trained(first, 15).tobytes(), "w/2")
    top = ObjectId(store.get_metadata(saved)["content_id"])
    head_before = store.space.head(top)
    assert head_before.flags == 0b111
    gc.execute(store, gc.plan(store, grace=0, pack_loose_from=1), aggressive=True)
    again = cas.open_store(tmp_path / "s", fsync=False)
    assert again.space.packs.find(top) is not None  # packed, rewritten by the window
    assert again.space.head(top) == head_before
    assert again.load(saved) == _trained(first, 15).tobytes()
    assert fsck.check(again).ok


def test_a_copy_carries_xor_deltas_and_marks_the_destination(tmp_path: Path) -> None:
    src = cas.open_store(tmp_path / "a", fsync=False)
    first = _weights(16, 1 << 18)
    src.save(first.tobytes(), "w")
    saved = src.save(_trained(first, 17).tobytes(), "w")
    dst_root = tmp_path / "b"
    dst = cas.open_store(dst_root, fsync=False)
    transfer.transfer(src, dst)
    top = ObjectId(src.get_metadata(saved)["content_id"])
    assert dst.space.head(top).flags == 0b111
    assert _marker_format(dst_root) == 4
    assert dst.load(saved) == _trained(first, 17).tobytes()


def test_a_store_of_a_later_format_is_refused_and_format_3_is_read(tmp_path: Path) -> None:
    root = tmp_path / "s"
    rng = random.Random(18)
    with cas.open_store(root, fsync=False) as s:
        text = bytes(rng.choice(b"abcdef \n") for _ in range(20_000))
        s.save(text, "doc")
        s.save(text[:9000] + b"edit" + text[9004:], "doc")
    assert _marker_format(root) == 3  # a zstd delta: format 3 stays 3
    marker = msgpack.unpackb((root / MARKER).read_bytes())
    (root / MARKER).write_bytes(msgpack.packb({**marker, "format": 5}))
    with pytest.raises(FormatError, match="upgrade cas"):
        cas.open_store(root, fsync=False)


def test_a_store_opened_without_deltas_stores_each_version_whole(tmp_path: Path) -> None:
    """`open_store(url, deltas=False)`: a new checkpoint is stored whole (a save on a
    bucket then reads no old content); versions stored as deltas before still load."""
    root = tmp_path / "s"
    first = _weights(20, 1 << 18)
    second = _trained(first, 21)
    third = _trained(second, 22)
    with cas.open_store(root, fsync=False) as s:
        s.save(first.tobytes(), "w")
        as_delta = s.save(second.tobytes(), "w")
        assert s.space.head(s.get_metadata(as_delta)["content_id"]).flags == 0b111
    with cas.open_store(root, fsync=False, deltas=False) as s:
        saved = s.save(third.tobytes(), "w")
        assert s.space.head(s.get_metadata(saved)["content_id"]).base is None
        assert s.load(saved) == third.tobytes()
        assert s.load(as_delta) == second.tobytes()


def test_two_processes_raising_the_marker_at_once_never_lower_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One process marks the store 3 (its first zstd delta) while another marks it 4
    (its first XOR delta) between the first's read of the marker and its write: the
    marker stays 4, so a cas that cannot read XOR deltas still refuses the store."""
    from cas.objects import marker as marker_module

    root = tmp_path / "s"
    store = cas.open_store(root, fsync=False)
    assert _marker_format(root) == 2
    unpack = msgpack.unpackb
    raced: list[bool] = []

    def read_then_race(data: bytes, **kw: object) -> object:
        value = unpack(data, **kw)
        if not raced and isinstance(value, dict) and value.get("format") == 2:
            raced.append(True)  # the other process: its XOR delta's mark lands now
            (root / MARKER).write_bytes(msgpack.packb({**value, "format": 4}))
        return value

    monkeypatch.setattr(marker_module.msgpack, "unpackb", read_then_race)
    store.space.mark_deltas()
    monkeypatch.setattr(marker_module.msgpack, "unpackb", unpack)
    assert raced and _marker_format(root) == 4
