"""Choosing a delta base for a new object, and encoding it against that base.

The object space tells each thread what was stored before at the same place
(:class:`Hints`, set by :meth:`ObjectSpace.bases_from`); here a new object's stored
form is chosen: a delta against the first candidate base that saves enough, else the
plain form. Candidates are read back through the object space (:class:`Objects`).
"""

from __future__ import annotations

import collections
import contextlib
import io
import threading
from collections.abc import Callable, Iterator
from typing import Final, NamedTuple, Protocol

import zstandard

from cas.errors import CasError
from cas.objects import codec, delta
from cas.objects.ids import ObjectId, parse_id
from cas.objects.kinds import ChunkList


class Objects(Protocol):
    """What choosing a base reads: the object space."""

    def read_entry(self, oid: str) -> tuple[codec.Header, bytes]: ...

    def recent_base(self, oid: ObjectId, kind: str) -> delta.Base | None: ...

    def head(self, oid: str) -> codec.Header: ...

    def read_prefix(self, oid: str, n: int) -> bytes: ...

    def mark_deltas(self) -> None: ...

    def mark_xor(self) -> None: ...

    @property
    def slow_reads(self) -> bool: ...


class Hints:
    """Per thread: the previous version of what is put (:meth:`scope`), the sketches of
    blobs put in the outermost scope, and the base the last encoding used."""

    def __init__(self) -> None:
        self._local = threading.local()

    @contextlib.contextmanager
    def scope(self, previous: str | None) -> Iterator[None]:
        saved = getattr(self._local, "previous", None)
        outermost = getattr(self._local, "sketches", None) is None
        self._local.previous = parse_id(previous) if previous else None
        if outermost:
            self._local.sketches = delta.Sketches()
        try:
            yield
        finally:
            self._local.previous = saved
            if outermost:
                self._local.sketches = None

    def previous(self) -> ObjectId | None:
        previous: ObjectId | None = getattr(self._local, "previous", None)
        return previous

    def sketches(self) -> delta.Sketches | None:
        sketches: delta.Sketches | None = getattr(self._local, "sketches", None)
        return sketches

    @property
    def used(self) -> ObjectId | None:
        """The base this thread's last encoding was written against (None: plain)."""
        used: ObjectId | None = getattr(self._local, "used", None)
        return used

    @used.setter
    def used(self, base: ObjectId | None) -> None:
        self._local.used = base


def encode(
    objects: Objects,
    oid: ObjectId,
    kind: str,
    payload: bytes | memoryview,
    bases: tuple[ObjectId, ...],
    *,
    level: int,
    hints: Hints,
    freshen: Callable[[ObjectId], bool],
) -> tuple[bytes, ObjectId | None]:
    """(stored form, base it is a delta against or None) of a new object: a delta
    against the first of ``bases`` that saves at least :data:`delta.MIN_SAVING` of the
    plain form (with none given, a whole blob or a tree tries this thread's previous
    version, then a blob put just before that is like it); else the plain form."""
    starts: dict[ObjectId, bytes] = {}
    if not bases and kind in ("blob", "tree"):
        hinted, start = hinted_base(objects, hints.previous(), kind, len(payload))
        bases = (hinted,) if hinted is not None else ()
        if hinted is not None and start is not None:
            starts[hinted] = start
    # A blob with no base at its path: the most similar one put before in this save.
    sketches = hints.sketches()
    sketch = None
    if not bases and sketches is not None and kind == "blob":
        sketch = sketches.sketch(payload)
        like = sketches.like(sketch) if sketch is not None else None
        bases = (like,) if like is not None else ()
    stored, used = encode_on(
        objects, oid, kind, payload, bases, level=level, freshen=freshen, starts=starts
    )
    if sketches is not None and sketch is not None:
        sketches.add(oid, sketch)
    return stored, used


def encode_on(
    objects: Objects,
    oid: ObjectId,
    kind: str,
    payload: bytes | memoryview,
    bases: tuple[ObjectId, ...],
    *,
    level: int,
    freshen: Callable[[ObjectId], bool],
    starts: dict[ObjectId, bytes] | None = None,
) -> tuple[bytes, ObjectId | None]:
    """:func:`encode` with the candidate bases chosen; ``freshen`` refreshes the base
    a delta is written against (False: it is gone, try the next). A payload above
    :data:`SMALL_BLOB` that hardly compresses (:data:`DENSE`) reads a candidate's start
    first (``starts``: those read already, :func:`hinted_base`), and one whose start
    shares nothing with the payload is not read whole (:func:`start_resembles`)."""
    size = len(payload)
    bases = tuple(b for b in bases if b != oid)
    if not bases or not delta.MIN_SIZE <= size <= delta.MAX_BASE:
        return codec.encode(kind, payload, level), None
    plain: bytes | None = None
    kept: tuple[bytes, ObjectId] | None = None  # the smallest delta so far, its base
    estimate = codec.estimate(payload, level) if size > SMALL_BLOB else size
    dense = size > SMALL_BLOB and estimate >= size * DENSE
    for bid in bases:
        if dense and objects.recent_base(bid, kind) is None:
            start = (starts or {}).get(bid) or _start_of(objects, bid)
            root = _xor_root(objects, bid, start, size)
            if root is not None:  # a delta at the cap: its plain root instead
                bid, start = root.id, (None if root.xor else _start_of(objects, root.id))
            if start is not None and not start_resembles(bid, start, payload):
                continue  # unrelated content: not worth a read of the whole base
        found = find_base(objects, bid, kind)
        if found is not None and found.depth >= delta.max_depth(size):
            found = find_base(objects, chain_root(objects, found.id), kind)  # a new branch
        if found is None or found.id == oid or not delta.usable(found, size):
            # (A chain's root may be this very content, stored already: on an object
            # store a batch asks whether it is at its flush, after encoding it.)
            continue
        if dense and len(found.payload) == size and found.depth < delta.XOR_DEPTH:
            # The same numbers a little moved (weights after a training step): XOR.
            stored = delta.xor_encode(kind, payload, found)
            if len(stored) <= estimate * (1 - delta.MIN_SAVING) and freshen(found.id):
                objects.mark_xor()
                return stored, found.id
        if not delta.resembles(payload, found.payload):
            continue  # no bytes in common: a delta would cost a compression for nothing
        stored = delta.encode(kind, payload, found)
        if not delta.clearly_better(payload, stored, level):
            plain = plain if plain is not None else codec.encode(kind, payload, level)
            if not delta.better(plain, stored):
                continue
        if kept is not None and len(kept[0]) <= len(stored):
            continue
        # Written against the base: it must outlive a gc that condemned it meanwhile
        # (its sweep re-reads ages), as a dedup hit refreshes what it relies on.
        if not freshen(found.id):
            continue
        kept = (stored, found.id)
        if len(stored) <= size * delta.GOOD_ENOUGH:
            break  # the edits alone: no other base does much better
    if kept is not None:
        objects.mark_deltas()
        return kept
    return (plain if plain is not None else codec.encode(kind, payload, level)), None


#: Bytes of small objects an object-store space keeps after writing them (:class:`Recent`).
RECENT_BYTES = 8 << 20


class Recent:
    """Small objects (whole blobs and trees up to :data:`SMALL_BLOB`) this process
    wrote or read, as delta bases: the next version of a small artifact saved by the
    same process (a metric file each epoch, a sibling ``ckpt/epoch-2``, a config loaded,
    changed and saved again) takes its base from memory, not from a read of the bucket
    (a round trip). Their ids were computed from these very payloads, or verified when
    read; a delta still refreshes its base in the store before it is written against
    it, which fails for a base gc took. Bounded by :data:`RECENT_BYTES`, the oldest
    dropped first."""

    def __init__(self, limit: int = RECENT_BYTES) -> None:
        self.limit = limit
        self._items: collections.OrderedDict[ObjectId, tuple[str, delta.Base]] = (
            collections.OrderedDict()
        )
        self._bytes = 0
        self._lock = threading.Lock()

    def add(self, oid: ObjectId, kind: str, payload: bytes | memoryview, depth: int) -> None:
        if kind not in ("blob", "tree") or len(payload) > SMALL_BLOB:
            return
        base = delta.Base(oid, bytes(payload), depth)
        with self._lock:
            if oid in self._items:
                return
            self._items[oid] = (kind, base)
            self._bytes += len(base.payload)
            while self._bytes > self.limit and self._items:
                _, (_, old) = self._items.popitem(last=False)
                self._bytes -= len(old.payload)

    def get(self, oid: ObjectId, kind: str) -> delta.Base | None:
        with self._lock:
            found = self._items.get(oid)
        return found[1] if found is not None and found[0] == kind else None


def find_base(objects: Objects, bid: ObjectId, kind: str) -> delta.Base | None:
    """A verified base of ``kind``, or None if it is absent or does not read (a
    damaged base is not built on: the object is stored plain)."""
    recent = objects.recent_base(bid, kind)
    if recent is not None:
        return recent
    try:
        header, payload = objects.read_entry(bid)
    except CasError:
        return None
    if header.kind != kind:
        return None
    return delta.Base(bid, payload, header.depth)


def chain_root(objects: Objects, oid: ObjectId) -> ObjectId:
    """The plain object at the bottom of a delta's chain (headers read on the way)."""
    header = objects.head(oid)
    for _ in range(codec.MAX_CHAIN):
        if header.base is None:
            break
        oid, header = header.base, objects.head(header.base)
    return oid


#: Content up to this size takes the previous version itself as its delta base.
SMALL_BLOB = 256 << 10


def hinted_base(
    objects: Objects, previous: ObjectId | None, kind: str, size: int
) -> tuple[ObjectId | None, bytes | None]:
    """The base a whole blob or tree tries first, given the previous version's content
    id, and the start of that base's stored form when it was read to choose it (on an
    object store: see :data:`PROBE_BYTES`), else None."""
    if previous is None or kind == "tree":
        return previous, None
    if size <= SMALL_BLOB:
        # Small content had a small previous version, most likely one blob: it is tried
        # as the base at once (one read, where asking its kind first is a second request
        # on a bucket); if it was a chunk list, find_base refuses it by kind.
        return previous, None
    start = None
    header = None
    if objects.slow_reads and objects.recent_base(previous, "blob") is None:
        # The read that asks the previous version's kind brings the start of its body
        # in the same request (its header alone before).
        try:
            start = objects.read_prefix(previous, PROBE_BYTES)
            header = codec.read_header(previous, start)
        except CasError:
            return None, None
        if header.kind == "blob":
            return previous, start
    chunks = previous_chunks(objects, previous, header)
    return (delta.Aligner(chunks).candidates(0, size)[0] if chunks else None), None


#: Dense: zstd's estimate keeps this much of the payload or more (random data, media,
#: float weights). Such content rarely shares bytes with a base its start does not
#: show; compressible content (text, sources, tars) is often edited at its start and
#: alike further on, so its candidates are always read whole (the start alone missed
#: deltas of package tars).
DENSE: Final = 0.9

#: A candidate base of a dense payload above :data:`SMALL_BLOB` (a whole blob's previous
#: version, the chunk at a new chunk's place) is first read this far: when no sample of
#: what its start decodes to occurs in the new payload (new data saved beside an
#: unrelated sibling, a 4 MiB shard after another, a model checkpoint whose every float
#: moved), the rest of it is not read, decoded and verified; when some does, it is read
#: whole and tried as before. On an object store the read that asks a whole blob's
#: previous version its kind brings this start in the same request. Before: 4 MiB
#: files of new data saved under new names in one folder each read their sibling
#: whole (4 MiB and a request); each chunk of a new checkpoint read and verified the
#: old chunk at its place (a save 1.6x one without deltas). At least one whole zstd
#: block: 128 KiB decoded, stored in at most that and a few bytes.
PROBE_BYTES: Final = 160 << 10
#: What a start decodes to at most.
_PROBE_OUT: Final = 128 << 10


def _start_of(objects: Objects, bid: ObjectId) -> bytes | None:
    """The first :data:`PROBE_BYTES` of a candidate base's stored form, or None if it
    does not read (:func:`find_base` then says why, or finds it gone)."""
    try:
        return objects.read_prefix(bid, PROBE_BYTES)
    except (CasError, OSError):
        return None


class _Root(NamedTuple):
    id: ObjectId
    xor: bool  # the candidate was an XOR delta on it: no need to judge it by its start


def _xor_root(objects: Objects, bid: ObjectId, start: bytes | None, size: int) -> _Root | None:
    """The plain root of ``bid``'s chain when ``bid`` (whose stored form begins with
    ``start``) is a delta of ``size`` bytes at :data:`cas.objects.delta.XOR_DEPTH` or
    deeper: an XOR delta goes on that root, not one level further (a zstd delta of
    such content then tries the root too: dense content of one length is rarely
    stored as one). An XOR delta's base is that root (chains of one): on a bucket no
    request asks it, and what XORed well with the last version is tried at once."""
    if start is None:
        return None
    try:
        header = codec.read_header(bid, start)
    except CasError:
        return None
    if header.base is None or header.depth < delta.XOR_DEPTH or header.raw_size != size:
        return None
    if header.flags & codec.FLAG_XOR and header.depth == 1:
        return _Root(header.base, xor=True)
    try:
        return _Root(chain_root(objects, header.base), xor=False)
    except CasError:
        return None


def start_resembles(bid: ObjectId, start: bytes, payload: bytes | memoryview) -> bool:
    """False only when the decoded start of base ``bid``'s stored form (``start``)
    clearly shares no bytes with ``payload`` and, for a base of the payload's length,
    its XOR with the payload's start does not compress either
    (:func:`cas.objects.delta.xor_promising`): a delta, or a start that does not decode
    or is too short to sample (:func:`cas.objects.delta.resembles`), says True (read the
    base and try, as without a start)."""
    try:
        header = codec.read_header(bid, start)
        if header.base is not None:
            return True  # a delta: its bytes need its own base
        body = memoryview(start)[header.body_offset :]
        if header.flags & codec.FLAG_ZSTD:
            reader = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(body))
            head = b""
            while len(head) < _PROBE_OUT and (more := reader.read(_PROBE_OUT - len(head))):
                head += more  # whole blocks only: what the start holds of them
        else:
            head = bytes(body)
    except (CasError, zstandard.ZstdError):
        return True
    # Samples of the start looked for in the payload, wherever they moved to (content
    # inserted before them, say); a start too short to sample says True.
    if header.raw_size == len(payload) and delta.xor_promising(head, payload):
        return True  # the cheaper test first: 32 KiB compressed, not 4 searches
    return delta.resembles(head, bytes(payload))


def previous_chunks(
    objects: Objects, previous: ObjectId, header: codec.Header | None = None
) -> list[tuple[ObjectId, int]] | None:
    """The previous version of a blob as chunks: its chunk list, or itself alone
    (``header``: its header, when read already)."""
    try:
        header = header if header is not None else objects.head(previous)
        if header.kind == "blob":
            return [(previous, header.raw_size)]
        if header.kind == "chunks":
            _, payload = objects.read_entry(previous)
            return list(ChunkList.parse(previous, payload).chunks)
    except CasError:
        pass
    return None
