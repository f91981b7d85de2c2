"""Deltas: an object stored as a zstd frame compressed against a base object's payload.

A new version of a file, a chunk or a folder's tree mostly repeats the previous one. A
delta keeps only what differs: its body is a zstd frame whose dictionary is the base
object's payload (raw content, no training), and its header names the base
(:mod:`cas.objects.codec`). Its id is still the hash of what it decodes to, so a blob
stays a blob whose id is its ``b3sum``, and every read verifies that.

- **Choice.** A delta is kept only when it is at most ``1 - MIN_SAVING`` of the
  object's plain stored form (or at most :data:`TINY` of its payload, when the plain
  form is not even computed); otherwise the object is stored plain.
- **Chains.** A base may be a delta itself. A delta's depth is its base's + 1, and a
  writer never goes past :data:`MAX_DEPTH`: the version after a delta at the cap takes
  the chain's plain root as its base instead (a new branch of depth 1, while the edits
  since the root still save enough; else it is stored plain). So a read decodes at most
  MAX_DEPTH + 1 objects.
- **Memory.** A chain is decoded from its plain end up: one payload and the one being
  decoded at a time, and the chain's stored forms (deltas are small) up to
  :data:`HOLD` bytes, a level past it read again when its turn comes. Bases are objects
  up to :data:`MAX_BASE` bytes (whole blobs up to the chunking threshold, chunks,
  trees), never a chunked file's content: memory follows the chunk size, not the chain.
"""

from __future__ import annotations

import bisect
import zlib
from collections import Counter, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Final

import zstandard

from cas.errors import IntegrityError, ObjectNotFound
from cas.objects import codec, planes
from cas.objects.ids import ObjectId, blob_id, kind_id

#: A writer's cap on chain depth (git's is 50, but git's newest version is the plain
#: one; here it is the deepest). Each level costs a read and a decompression: measured
#: (bench/bench_delta.py, a 200 kB source file) a load takes 1.25x a plain one at depth
#: 1, 1.7x at 4, 2.1x at 6 and 3.6x at 16; at 4 the worst load of a version stays above
#: 0.5x the speed of a plain load (a folder's load, mostly of files at lower depths or
#: unchanged, does better).
MAX_DEPTH: Final = 4

#: Payloads above LARGE bytes (the chunks of large files) have chains of at most
#: LARGE_DEPTH: a level of a MiB chunk costs about as much as its plain read (a
#: decompression of a MiB). Measured on four releases as tar files: with a cap of 1
#: (every version on the root) 3.7 MB stored, 2: 3.2 MB, 3: 2.7 MB; the newest version
#: loads at ~0.7x, ~0.7x and ~0.6x the speed of a plain load, and a put at the cap
#: costs more (a delta on the old root is larger, and often not kept).
LARGE: Final = 1 << 18
LARGE_DEPTH: Final = 3

#: A delta is kept when it saves at least this fraction of the plain stored form: a
#: delta that saves less costs a base read at every load for little. Measured on the
#: folders of four pip releases: 2.46 MB stored at 0.10, 2.51 at 0.25, 2.56 at 0.50,
#: the newest version loading as fast as a plain one at each.
MIN_SAVING: Final = 0.10

#: zstd levels of delta frames. Measured on the chunks of successive releases as tar
#: files and on a 4 MiB chunk with one edit: level 3's and 4's hash tables miss most
#: matches in a base of a few MiB (a 200-byte edit of a 3.8 MB chunk: 449 kB at level
#: 4, 472 bytes at 5); level 5
#: finds them in less time than a plain level-3 compression of the same bytes, level 6
#: stores 5% less at 1.2x that. Base and payload under 2**LARGE_WINDOW bytes (source
#: files) use level 6: ~120 us a file, deltas 5% smaller than level 3's.
LEVEL: Final = 6
LARGE_LEVEL: Final = 5
LARGE_WINDOW: Final = 20

#: Bases (and deltas) are objects up to this size: a chunk (at most 4 MiB), a whole
#: blob (at most the 4 MiB threshold) or a tree; memory is bounded by it.
MAX_BASE: Final = 8 << 20

#: A delta of at most this fraction of its payload is kept without a plain compression
#: to compare with (most edited files: a few hundred bytes of tens of kB). Plain zstd
#: beats that only on near-constant data, where the loss is below this fraction too.
TINY: Final = 0.02

#: A delta of at most this fraction of its payload ends the search for a base; a larger
#: one (kept, as it saves enough) lets the next candidates try to do better, the
#: smallest kept. Measured on four pip releases as tar files, each saved over the last:
#: the chunk at a new chunk's place is guessed from how far earlier chunks moved, learnt
#: as they finish on other threads; a guess one chunk off kept a delta several times
#: the size of the one its neighbour gave, so the series stored 2.67 MB in one run and
#: 2.97 MB in the next.
GOOD_ENOUGH: Final = 0.05

#: Payloads below this are stored plain: a delta's 32-byte base id would eat the gain.
MIN_SIZE: Final = 64

#: Stored forms of a chain held at once while it is read; above it, a level is read
#: again when its turn comes, so memory follows the chunk size, not the chain.
HOLD: Final = 8 << 20

Read = Callable[[ObjectId], bytes]


@dataclass(frozen=True, slots=True)
class Base:
    """A base for a delta: its id, verified payload and chain depth."""

    id: ObjectId
    payload: bytes
    depth: int


def max_depth(payload_size: int) -> int:
    """The chain cap for a payload of this size (see :data:`MAX_DEPTH`)."""
    return MAX_DEPTH if payload_size <= LARGE else LARGE_DEPTH


def usable(base: Base, payload_size: int) -> bool:
    """True if a delta of a payload of this size may use ``base``."""
    return (
        base.depth < max_depth(payload_size)
        and MIN_SIZE <= payload_size <= MAX_BASE
        and 0 < len(base.payload) <= MAX_BASE
    )


def encode(kind: str, payload: bytes | memoryview, base: Base, level: int | None = None) -> bytes:
    """The delta stored form of ``payload`` against ``base`` (header, base id, frame);
    ``level``: the zstd level (default :data:`LEVEL`, or :data:`LARGE_LEVEL` for large
    base and payload)."""
    size = len(payload)
    window = max(10, (len(base.payload) + size - 1).bit_length())
    if level is None:
        level = LEVEL if window <= LARGE_WINDOW else LARGE_LEVEL
    params = zstandard.ZstdCompressionParameters.from_level(
        level, source_size=size, window_log=min(window, 27), write_content_size=1,
        write_dict_id=0, write_checksum=0,
    )  # fmt: skip
    cctx = zstandard.ZstdCompressor(
        dict_data=codec.dictionary(base.payload), compression_params=params
    )
    frame = cctx.compress(payload)
    flags = codec.FLAG_ZSTD | codec.FLAG_DELTA
    head = codec.HEADER.pack(
        codec.MAGIC, codec.FORMAT, codec.KINDS[kind], flags, base.depth + 1, size
    )
    return head + bytes.fromhex(base.id) + frame


#: zstd level of an XOR delta's grouped residual. Measured on the chunks of a
#: checkpoint against the previous one's at their place (``bench/bench_checkpoints.py``,
#: 34.6 MB of float32): level 1 stored 22.44 MB in 46 ms, level 3 22.71 MB in 93 ms
#: (the planes that stay are runs of zeros and near-random bytes: more search finds
#: nothing more).
XOR_LEVEL: Final = 1

#: An XOR delta is written on a plain object only (a chain of one): each level of a
#: chain is a decompression of most of a plain object's bytes (the residual keeps
#: 60-70 % of them), so the next version's XOR goes on the same plain root, and once
#: that saves too little the version is stored plain and becomes the next root. Measured
#: on six checkpoints (``bench/bench_checkpoints.py``): chains of 1 stored 152.3 MB,
#: of 2 148.3 MB, of 3 145.6 MB (plain: 192.8 MB), the newest loading in 0.067 s, 0.064 s
#: and 0.089 s.
XOR_DEPTH: Final = 1

#: The stride an XOR delta's writer groups by: the bytes of each place in an 8-byte
#: word. It serves float64 and the places of float32 and 16-bit floats alike (measured
#: on float32 weights: 65.62 % at stride 8 and at 4; 74.7 % at 2, 77.6 % ungrouped).
STRIDE: Final = 8


def xor_encode(kind: str, payload: bytes | memoryview, base: Base) -> bytes:
    """The XOR delta stored form of ``payload`` against ``base``, a payload of the same
    length (codec: flags 0b111, the stride, the frame of the grouped residual)."""
    size = len(payload)
    if len(base.payload) != size:
        raise ValueError(f"an XOR delta needs a base of {size} bytes, not {len(base.payload)}")
    frame = codec.frame(planes.xor_grouped(payload, base.payload, STRIDE), XOR_LEVEL)
    flags = codec.FLAG_ZSTD | codec.FLAG_DELTA | codec.FLAG_XOR
    head = codec.HEADER.pack(
        codec.MAGIC, codec.FORMAT, codec.KINDS[kind], flags, base.depth + 1, size
    )
    return head + bytes.fromhex(base.id) + bytes((STRIDE,)) + frame


#: Bytes of a base's start that :func:`xor_promising` tries.
XOR_PROBE: Final = 32 << 10


def xor_promising(start: bytes | memoryview, payload: bytes | memoryview) -> bool:
    """True if the start of a base (what its first stored bytes decode to) XOR the
    payload's start compresses, grouped, to :data:`MIN_SAVING` less than the payload's
    start alone: the same numbers a little moved, not new data."""
    n = min(len(start), len(payload), XOR_PROBE) // STRIDE * STRIDE
    if n < 4096:
        return False
    mine = memoryview(payload)[:n]
    xored = len(codec.frame(planes.xor_grouped(mine, memoryview(start)[:n], STRIDE), XOR_LEVEL))
    return xored <= len(codec.frame(mine, XOR_LEVEL)) * (1 - MIN_SAVING)


def better(plain: bytes, delta: bytes) -> bool:
    """True if the delta saves enough over the plain stored form to be kept."""
    return len(delta) <= len(plain) * (1 - MIN_SAVING)


def clearly_better(payload: bytes | memoryview, delta: bytes, level: int) -> bool:
    """True if a delta is kept without compressing the payload plain to compare: it is
    at most :data:`TINY` of the payload, or (a large payload) under half what
    :func:`better` asks of the plain form as a sample estimates it."""
    if len(delta) <= TINY * len(payload):
        return True
    if len(payload) <= codec.PROBE_ABOVE:
        return False
    return len(delta) <= codec.estimate(payload, level) * (1 - MIN_SAVING) / 2


#: :func:`resembles` looks for this many samples of SAMPLE bytes of a large payload.
SAMPLES: Final = 4
SAMPLE: Final = 32


def resembles(payload: bytes | memoryview, base: bytes) -> bool:
    """True if some bytes of the payload occur verbatim in the base (always for a small
    payload): a base with nothing in common (new content, a chunk of another stretch)
    is passed over for the cost of a few searches, not of a compression."""
    size = len(payload)
    if size <= 1 << 16:
        return True
    view = memoryview(payload)
    step = size // (SAMPLES + 1)
    return any(base.find(view[i : i + SAMPLE]) >= 0 for i in range(step, size - SAMPLE, step))


def resolve(oid: ObjectId, header: codec.Header, stored: bytes, read: Read) -> bytes:
    """The payload of a delta: its chain read down to its plain end, then decoded up.
    Not verified here (the caller checks the top against its id; :func:`culprit` names
    the bad level when that fails). A missing base raises ``ObjectNotFound`` from
    ``read``; a chain longer than :data:`codec.MAX_CHAIN` levels (a cycle, say) or a
    base above :data:`MAX_BASE` is an IntegrityError.

    The levels are counted, not taken from the headers' depths: a delta written against
    a base that ``cas gc --aggressive`` re-encoded meanwhile names the base's old depth
    (the repack writes depths that agree; a writer beside it may not)."""
    chain: list[tuple[ObjectId, codec.Header, bytes | None]] = [(oid, header, stored)]
    held = len(stored)
    below = header.base
    while below is not None:
        raw = _read_base(read, below, oid)
        head = codec.read_header(below, raw)
        if len(chain) > codec.MAX_CHAIN or head.raw_size > MAX_BASE:
            raise IntegrityError(
                oid,
                f"object {oid} is a delta whose chain is malformed at {below} (more than "
                f"{codec.MAX_CHAIN} levels, or a base too large); run 'cas fsck' to list "
                "affected artifacts",
            )
        held += len(raw)
        chain.append((below, head, raw if held <= HOLD else None))
        below = head.base
    payload: bytes | None = None
    root, on_root = chain[-1], chain[-2] if len(chain) > 1 else None
    if on_root is not None and on_root[1].flags & codec.FLAG_XOR and on_root[1].raw_size:
        # The writer's one shape of an XOR delta (XOR_DEPTH): both decoded into one
        # buffer, as a plain read of the same bytes takes.
        payload = codec.decode_xor(
            on_root[0], on_root[1], _kept(read, on_root, oid),
            root[0], root[1], _kept(read, root, oid),
        )  # fmt: skip
        chain = chain[:-2]
    for level in reversed(chain):
        payload = codec.decode_body(level[0], level[1], _kept(read, level, oid), payload)
    assert payload is not None
    return payload


def _kept(read: Read, level: tuple[ObjectId, codec.Header, bytes | None], oid: ObjectId) -> bytes:
    """A level's stored form: held since the chain was read, or read again."""
    return level[2] if level[2] is not None else _read_base(read, level[0], oid)


def _read_base(read: Read, base: ObjectId, oid: ObjectId) -> bytes:
    try:
        return read(base)
    except ObjectNotFound as exc:
        raise ObjectNotFound(
            base,
            f"object {oid} is a delta against {base}, which is not in the store: it was "
            "deleted, or the delta is damaged; run 'cas fsck' to list affected artifacts",
        ) from exc


def culprit(oid: ObjectId, header: codec.Header, stored: bytes, read: Read) -> IntegrityError:
    """After a delta decoded to bytes that do not hash to its id: the error naming the
    first level of its chain (from the plain end up) that does not verify."""
    chain: list[tuple[ObjectId, codec.Header]] = [(oid, header)]
    below = header.base
    while below is not None and len(chain) <= codec.MAX_CHAIN:
        head = codec.read_header(below, read(below))
        chain.append((below, head))
        below = head.base
    payload: bytes | None = None
    for level_id, head in reversed(chain):
        raw = stored if level_id == oid else read(level_id)
        payload = codec.decode_body(level_id, head, raw, payload)
        if head.kind != "chunks" and _hash(head.kind, payload) != level_id:
            return corrupt(level_id, _hash(head.kind, payload), base_of=oid)
    return corrupt(oid, "?" * 12)


def corrupt(oid: ObjectId, got: str, base_of: ObjectId | None = None) -> IntegrityError:
    via = f" (a delta base of {base_of})" if base_of is not None and base_of != oid else ""
    return IntegrityError(
        oid,
        f"object {oid}{via} is corrupt (expected blake3 {oid[:12]}…, got {got[:12]}…); "
        "run 'cas fsck' to list affected artifacts",
    )


def _hash(kind: str, payload: bytes) -> str:
    return blob_id(payload) if kind == "blob" else kind_id(kind, payload)


# -- base selection: a similarity sketch ------------------------------------------------


class Sketches:
    """The blobs put so far in one save, each by a small sketch of its lines, to find a
    base for a blob that has none at its path (a new file, or any file of a first
    version): source files of one package share licence headers, imports and idioms.

    A sketch is the :data:`K` smallest hashes of a text's distinct lines (a bottom-k
    min-hash): two texts sharing many lines share many of them. The most recent
    :data:`KEEP` blobs sketched (those that had no base of their own) are candidates;
    the one sharing the most (at least :data:`MIN_SHARED`) is tried, and kept only if
    the delta saves as any delta must. Measured on the folders of four pip releases
    (bench/bench_delta.py): 2.74 MB stored without it, 2.47 MB with it (K of 8: 2.51,
    16: 2.50, 64: 2.54), one candidate tried per file (trying each of the last 16
    files of the same extension would get 2.33, at 16 compressions a file). Line hashes
    are CRC-32s, so that the same files are stored the same way in every run. Its cost
    is the first version's put: 3.5x that of a plain put of a source tree (a delta
    tried for most files); requiring 5 shared hashes of 32 makes it 2.4x, for 2.52 MB.
    Used on the saving thread only."""

    K: Final = 32
    KEEP: Final = 256
    MIN_SHARED: Final = 2
    #: Blobs above this are not sketched (large files are chunks, with bases of their own).
    MAX_SIZE: Final = 1 << 20

    def __init__(self, keep: int | None = None) -> None:
        self._keep = self.KEEP if keep is None else keep  # more: a repack's whole store
        self._recent: deque[tuple[ObjectId, frozenset[int]]] = deque()
        self._having: dict[int, list[ObjectId]] = {}  # line hash -> recent blobs with it

    def sketch(self, payload: bytes | memoryview) -> frozenset[int] | None:
        if not MIN_SIZE <= len(payload) <= self.MAX_SIZE:
            return None
        lines = set(bytes(payload).split(b"\n"))
        lines.discard(b"")
        if len(lines) < self.K:
            return None  # binary, or too short to tell
        return frozenset(sorted(map(zlib.crc32, lines))[: self.K])  # stable across runs

    def like(self, sketch: frozenset[int]) -> ObjectId | None:
        """The recent blob sharing the most of ``sketch`` (the latest on a tie)."""
        shared: Counter[ObjectId] = Counter()
        for h in sketch:
            shared.update(self._having.get(h, ()))
        best, most = None, self.MIN_SHARED - 1
        for oid, n in shared.items():  # in insertion order: a later one wins a tie
            if n >= most:
                best, most = oid, n
        return best

    def add(self, oid: ObjectId, sketch: frozenset[int]) -> None:
        self._recent.append((oid, sketch))
        for h in sketch:
            self._having.setdefault(h, []).append(oid)
        if len(self._recent) > self._keep:
            old, gone = self._recent.popleft()
            for h in gone:
                having = self._having[h]
                having.remove(old)
                if not having:
                    del self._having[h]


# -- base selection for chunked content ---------------------------------------------------


#: New chunks in a row whose bases kept no delta, after which a file's chunks mostly
#: stop trying theirs (:meth:`Aligner.worth_trying`); one in this many still does.
GIVE_UP_AFTER: Final = 8
PROBE_EVERY: Final = 8


class Aligner:
    """Picks, for each new chunk of a large file, the chunk of the previous version at
    the same place: the old chunk holding the new chunk's middle byte, shifted by how
    far the content moved (learnt from chunks both versions share, when there are any).

    Content-defined chunking re-synchronises after an edit, so the chunk at the same
    place is the same stretch of content with the edit in it (measured on successive
    releases as tar files: within 2% of the best old chunk found by trying them all)."""

    def __init__(self, previous: Sequence[tuple[ObjectId, int]]) -> None:
        self._ids = [c for c, _ in previous]
        self._starts: list[int] = []
        at = 0
        for _, size in previous:
            self._starts.append(at)
            at += size
        self._end = at
        self._at = {c: s for c, s in zip(self._ids, self._starts, strict=True)}
        self._shift: list[tuple[int, int]] = []  # (new offset, old - new) where shared
        self._misses = 0  # chunks in a row whose bases gave no delta worth keeping
        self._skipped = 0  # chunks not tried since the last one that was

    def shared(self, offset: int, oid: ObjectId) -> bool:
        """Note a new chunk at ``offset``; True if the previous version has it too."""
        old = self._at.get(oid)
        if old is None:
            return False
        self._shift.append((offset, old - offset))
        return True

    def worth_trying(self) -> bool:
        """Whether the next new chunk should try its bases. After :data:`GIVE_UP_AFTER`
        chunks in a row whose tries kept no delta (content that changed everywhere and
        not by a little, as new random data: each try is a compression for nothing,
        1.7x the save's time), one chunk in :data:`PROBE_EVERY` still tries, and a
        delta kept brings every chunk back."""
        if self._misses < GIVE_UP_AFTER:
            return True
        self._skipped += 1
        if self._skipped >= PROBE_EVERY:
            self._skipped = 0
            return True
        return False

    def missed(self) -> None:
        """Note that a new chunk tried its bases and kept no delta."""
        self._misses += 1

    def matched(self, offset: int, size: int, old: ObjectId) -> None:
        """Note that the new chunk at ``offset`` was stored as a delta on ``old``: their
        middles are the same place of the content."""
        self._misses = 0
        start = self._at.get(old)
        if start is not None:
            i = self._ids.index(old)
            end = self._starts[i + 1] if i + 1 < len(self._starts) else self._end
            self._shift.append((offset, (start + end) // 2 - (offset + size // 2)))

    def candidates(self, offset: int, size: int) -> tuple[ObjectId, ...]:
        """Old chunks to try as the base of a new one, best first: the one at its place,
        then its neighbours (content removed or added before it shifts the place by a
        chunk or so, until a kept delta teaches the shift)."""
        if not self._ids:
            return ()
        nearest, shift = -1, 0
        for at, moved in list(self._shift):  # the nearest match before this chunk
            if nearest < at <= offset:
                nearest, shift = at, moved
        middle = min(max(offset + size // 2 + shift, 0), self._end - 1)
        i = bisect.bisect_right(self._starts, middle) - 1
        near = (i, i + 1, i - 1)
        return tuple(self._ids[j] for j in near if 0 <= j < len(self._ids))
