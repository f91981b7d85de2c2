"""Catalog checkpoints: the whole catalog state in one write-once file, so that a new
machine reads one file and the journal entries after it, not every entry ever written.

As Delta Lake's checkpoints: the journal (:mod:`cas.repo.journal`) stays the truth, and
a checkpoint is the state its entries add up to, up to a point::

    <root>/logs/.checkpoints/<YYYYMMDDTHHMMSS.ffffffZ>-<32 hex>

The time is the newest journal stamp the checkpoint covers (``upto``), so names sort by
it and one listing finds the newest; the hex is the first 16 bytes of the BLAKE3 of the
file, so a reader verifies what it read before it trusts any of it. ``.checkpoints``
can never be a ref's name (no ref component starts with a dot).

The file: ``CASCKPT1``, then one zstd frame of msgpack values: a header map
(``format``, ``upto``, counts) and the items of :meth:`cas.catalog.Catalog.export`
(tombstones, tag stamps, records). An *incremental* checkpoint
(``<time>-<32 hex>~<32 hex of its base>``) holds only what changed since a whole one,
its base, which its header names (:meth:`cas.catalog.Catalog.export_changes`): a reader
applies both. The catalog's state is a join of its events (records
are added once, deletes are tombstones, tags are last-writer-wins per key by stamp), so
a checkpoint applied to any catalog, then every journal entry it may not cover, gives
exactly what a replay of the whole journal gives: a reader applies it, then the entries
from ``upto`` less the journal's resync window (for writers whose entries arrive late),
as an incremental sync does. A checkpoint that does not read is skipped (the one before
it, or the whole journal, is read instead) and ``cas fsck`` names it.
"""

from __future__ import annotations

import datetime as _dt
import io
import logging
import math
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Final

import blake3
import msgpack
import zstandard

from cas.catalog import Catalog, InvalidInput
from cas.catalog.catalog import item_event
from cas.errors import IntegrityError
from cas.repo.journal import parse_stamp, shifted
from cas.storage import Storage

CHECKPOINTS: Final = "logs/.checkpoints"
MAGIC: Final = b"CASCKPT1"
FORMAT: Final = 1

#: Journal entries a sync applies past the newest checkpoint before it writes a new one
#: (reading them cost a fresh machine about two requests each; writing one costs one).
EVERY: Final = 1000

#: Checkpoints kept besides the newest when a new one is written: a reader that listed
#: just before finds the one it chose (older ones go once they are this many behind).
KEEP: Final = 2

#: Events handed to the catalog per transaction when a checkpoint is applied.
BATCH: Final = 5000

_NAME = re.compile(r"(\d{8}T\d{6}\.\d{6}Z)-([0-9a-f]{32})(?:~([0-9a-f]{32}))?\Z")

log = logging.getLogger("cas")


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """One checkpoint file: its name, the time of the newest stamp it covers, its digest,
    and for an incremental one the digest of the whole checkpoint it adds to."""

    name: str
    time: str
    digest: str
    base: str | None = None

    @property
    def path(self) -> str:
        return f"{CHECKPOINTS}/{self.name}"

    @classmethod
    def parse(cls, name: str) -> Checkpoint | None:
        m = _NAME.match(name)
        return None if m is None else cls(name, m.group(1), m.group(2), m.group(3))


def listed(storage: Storage) -> list[Checkpoint]:
    """Every checkpoint of the root, oldest first (one listing)."""
    found = (Checkpoint.parse(n) for n in storage.listdir(CHECKPOINTS))
    return sorted((c for c in found if c is not None), key=lambda c: c.name)


def base_of(made: Checkpoint, among: list[Checkpoint]) -> Checkpoint | None:
    """The whole checkpoint an incremental one adds to, if ``among`` lists it."""
    return next((c for c in among if c.base is None and c.digest == made.base), None)


def incremental_limit(records: int) -> int:
    """The most changes an incremental checkpoint holds before a whole one is written
    instead: sqrt(2 x EVERY x records), so that the bytes written per journal entry
    grow with the square root of the catalog, not with the catalog (a whole one every
    EVERY entries: 97 bytes a record each time)."""
    return max(EVERY, math.isqrt(2 * EVERY * records))


def write(
    storage: Storage,
    export: Callable[[Callable[[list[Any]], None]], dict[str, int]],
    upto: str,
    times: dict[str, Any] | None = None,
    base: Checkpoint | None = None,
) -> Checkpoint:
    """Write the items ``export`` hands out (the state of a catalog that holds every
    journal entry up to the stamp ``upto``, or with ``base`` what it holds beyond that
    whole checkpoint) as a new checkpoint, durable before it is visible; then remove
    the ones more than :data:`KEEP` behind it that no kept one adds to. ``times``:
    when the writer's last listings of the journal began (``listed_at``, a stamp's
    time; ``deep_at``, seconds since the epoch), so that a reader that starts from the
    checkpoint lists from there as the writer would have."""
    buf = io.BytesIO()
    buf.write(MAGIC)
    packer = msgpack.Packer(use_bin_type=True)
    with zstandard.ZstdCompressor(level=3).stream_writer(buf, closefd=False) as out:
        items: list[bytes] = []

        def sink(item: list[Any]) -> None:
            items.append(packer.pack(item))
            if len(items) >= 1024:
                out.write(b"".join(items))
                items.clear()

        # The header first; last a map of the counts, so a file cut short is noticed.
        header = {**(times or {}), "format": FORMAT, "upto": upto}
        if base is not None:
            header["base"] = base.name
        out.write(packer.pack(header))
        counts = export(sink)
        out.write(b"".join(items))
        out.write(packer.pack({"end": counts}))
    data = buf.getvalue()
    digest = blake3.blake3(data).digest(16).hex()
    name = f"{upto[:23]}-{digest}" + ("" if base is None else f"~{base.digest}")
    made = Checkpoint(name, upto[:23], digest, None if base is None else base.digest)
    storage.write_atomic(made.path, data, durable=True)
    log.info("catalog checkpoint %s written: %s", made.name, counts)
    every = listed(storage)
    older = [c for c in every if c.name < made.name]
    cut = max(0, len(older) - KEEP)
    bases = {c.base for c in [*older[cut:], made] if c.base is not None}
    for stale in older[:cut]:
        if stale.digest not in bases:  # a kept incremental one adds to it
            storage.delete(stale.path)
    return made


def read(
    storage: Storage, checkpoint: Checkpoint
) -> tuple[str, dict[str, Any], Iterator[list[dict[str, Any]]]]:
    """(``upto``, the header, the checkpoint's events in batches), verified: ``IntegrityError``
    naming the file if it does not read, raised before any event is handed out except
    for a fault inside the frame, raised by the iterator (the caller then applied a part
    of a verified-but-malformed file: harmless, each event is one the catalog checks and
    the state is a join)."""
    raw = storage.read(checkpoint.path)
    if blake3.blake3(raw).digest(16).hex() != checkpoint.digest:
        raise IntegrityError(
            checkpoint.name,
            f"catalog checkpoint {checkpoint.name} does not match its digest; run 'cas fsck'",
        )
    if not raw.startswith(MAGIC):
        raise IntegrityError(checkpoint.name, f"catalog checkpoint {checkpoint.name} is not one")
    stream = zstandard.ZstdDecompressor().stream_reader(memoryview(raw)[len(MAGIC) :])
    unpacker = msgpack.Unpacker(stream, raw=False, strict_map_key=False, max_buffer_size=1 << 30)
    try:
        header = next(unpacker)
    except (StopIteration, ValueError, zstandard.ZstdError, msgpack.UnpackException) as exc:
        raise _damaged(checkpoint, exc) from exc
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise _damaged(checkpoint, ValueError(f"unknown header {header!r:.80}"))
    upto = header.get("upto")
    if not isinstance(upto, str) or upto[:23] != checkpoint.time:
        raise _damaged(checkpoint, ValueError("its header names another time than its name"))
    base = header.get("base")
    if (base is None) != (checkpoint.base is None) or (
        base is not None and (not isinstance(base, str) or not base.endswith(f"-{checkpoint.base}"))
    ):
        raise _damaged(checkpoint, ValueError("its header names another base than its name"))

    def batches() -> Iterator[list[dict[str, Any]]]:
        batch: list[dict[str, Any]] = []
        ended = False
        try:
            for item in unpacker:
                if isinstance(item, dict) and "end" in item:
                    ended = True
                    break
                batch.append(item_event(item))
                if len(batch) >= BATCH:
                    yield batch
                    batch = []
        except (ValueError, InvalidInput, zstandard.ZstdError, msgpack.UnpackException) as exc:
            raise _damaged(checkpoint, exc) from exc
        if not ended:
            raise _damaged(checkpoint, ValueError("it ends early"))
        if batch:
            yield batch

    return upto, header, batches()


def _damaged(checkpoint: Checkpoint, exc: Exception) -> IntegrityError:
    return IntegrityError(
        checkpoint.name,
        f"catalog checkpoint {checkpoint.name} is damaged ({exc}); run 'cas fsck'",
    )


def verify(
    storage: Storage, catalog: Catalog, put_stamps: list[str], window: _dt.timedelta
) -> list[tuple[str, str]]:
    """(checkpoint name, what is wrong) for each checkpoint of the root that does not
    read, or disagrees with what it covers: a record it holds that the journal never
    put (``catalog``, caught up with the whole journal, neither holds nor tombstones
    it), or a put entry it covers (named a whole resync window before its ``upto``, so
    surely seen by its writer) whose record it lacks. An incremental checkpoint covers
    what it and its base hold together; one whose base is gone is named too (readers
    pass over it)."""
    live = set(catalog.ids())
    gone = set(catalog.tombstones())
    every = listed(storage)
    found: list[tuple[str, str]] = []
    contents: dict[str, tuple[str, set[str], set[str]] | None] = {}

    def content(made: Checkpoint) -> tuple[str, set[str], set[str]] | None:
        """(upto, ids held, ids tombstoned) of one file; None if gone since the listing."""
        if made.name not in contents:
            held: set[str] = set()
            dead: set[str] = set()
            try:
                upto, _, batches = read(storage, made)
                for batch in batches:
                    for event in batch:
                        if event["op"] == "put":
                            held.add(str(event["record"].get("id")))
                        elif event["op"] == "delete":
                            dead.add(str(event["id"]))
                contents[made.name] = (upto, held, dead)
            except FileNotFoundError:
                contents[made.name] = None  # replaced by a newer one since the listing
        return contents[made.name]

    for made in every:
        try:
            got = content(made)
            if got is None:
                continue
            upto, held, dead = got
            if made.base is not None:
                base = base_of(made, every)
                below = None if base is None else content(base)
                if below is None:
                    found.append((made.name, "the whole checkpoint it adds to is gone; "
                                  "run 'cas fsck --repair'"))  # fmt: skip
                    continue
                held, dead = held | below[1], dead | below[2]
        except IntegrityError as exc:
            if exc.object_id == made.name:
                found.append((made.name, str(exc)))
            continue  # its base does not read: named on its own line
        unknown = sorted(held - live - gone)
        if unknown:
            found.append((made.name, f"it holds {len(unknown)} records the journal never "
                          f"put (first {unknown[0]}); run 'cas fsck --repair'"))  # fmt: skip
        settled = shifted(upto, window)
        missed = sorted(
            rid
            for stamp in put_stamps
            if stamp[:23] < settled and (rid := (parse_stamp(stamp) or ("", ""))[1])
            if rid not in held and rid not in dead and rid in live
        )
        if missed:
            found.append((made.name, f"it lacks {len(missed)} records the journal put "
                          f"before it (first {missed[0]}); run 'cas fsck --repair'"))  # fmt: skip
    return found
