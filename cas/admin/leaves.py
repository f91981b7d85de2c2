"""What gc learned about objects that point at nothing, kept for the next gc.

Marking reads the header of every file a record reaches, to learn whether it is a plain
blob or a chunk list or a delta (which point on): on an object store that is one
request per artifact. What an object points at depends only on its stored bytes, and an
object store's listing gives a version token that changes whenever those bytes do (the
S3 ETag, the GCS generation, the Azure ETag; a packed object's pack is write-once). So
gc keeps the objects it found to point at nothing, each with a hash of its version::

    <root>/logs/.leaves/<YYYYMMDDTHHMMSS.ffffffZ>-<32 hex>

``CASLEAF1``, then one zstd frame of 40-byte entries (the 32-byte digest, the 8-byte
little-endian version hash, :func:`cas.admin.marking.version_hash`), in digest order;
the hex is the first 16 bytes of the BLAKE3 of the whole file. The next gc takes an
object as a leaf only when its listing shows the very version recorded, so a stale
file costs reads, never a missed reference; one that does not verify is skipped. Local
disks list no versions (and their reads cost no round trip): nothing is kept there.
"""

from __future__ import annotations

import contextlib
import logging
import time
from typing import Final

import blake3
import zstandard

from cas.admin.marking import Listing, Marker
from cas.storage import Storage

LEAVES: Final = "logs/.leaves"
MAGIC: Final = b"CASLEAF1"
#: A new file is written when marking had to read at least this many leaves.
WRITE_AFTER: Final = 100
#: Files kept, the newest first.
KEEP: Final = 2
_ENTRY: Final = 40

log = logging.getLogger("cas")


def load(storage: Storage, listing: Listing, marker: Marker) -> int:
    """Mark as leaves the listed objects that the newest readable file records at their
    listed version; returns how many."""
    if not listing.versions:
        return 0
    for name in reversed(sorted(storage.listdir(LEAVES))[-KEEP - 1 :]):
        try:
            data = storage.read(f"{LEAVES}/{name}")
        except FileNotFoundError:
            continue
        if not _verifies(name, data):
            log.warning("cas: gc skips %s/%s: it does not verify", LEAVES, name)
            continue
        found = 0
        reader = zstandard.ZstdDecompressor().stream_reader(data[len(MAGIC) :])
        with reader:
            while block := reader.read(_ENTRY * 4096):
                for at in range(0, len(block) - _ENTRY + 1, _ENTRY):
                    pos = listing.digests.find(block[at : at + 32])
                    if pos >= 0 and listing.versions[pos] == int.from_bytes(
                        block[at + 32 : at + _ENTRY], "little"
                    ):
                        marker.leaf[pos] = 1
                        found += 1
        return found
    return 0


def save(storage: Storage, listing: Listing, marker: Marker) -> bool:
    """Write what is known now, if marking learned enough by reading to be worth it."""
    if not listing.versions or marker.learned < WRITE_AFTER:
        return False
    compressor = zstandard.ZstdCompressor(level=1).compressobj()
    parts = [MAGIC]
    pos = marker.leaf.find(1)
    batch = bytearray()
    while pos >= 0:
        if listing.versions[pos]:
            batch += listing.digests.digest(pos) + listing.versions[pos].to_bytes(8, "little")
            if len(batch) >= 1 << 20:
                parts.append(compressor.compress(bytes(batch)))
                batch.clear()
        pos = marker.leaf.find(1, pos + 1)
    parts.append(compressor.compress(bytes(batch)) + compressor.flush())
    data = b"".join(parts)
    now = time.time()
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(now)) + f".{int(now * 1e6) % 10**6:06d}Z"
    older = sorted(storage.listdir(LEAVES))
    with contextlib.suppress(OSError):  # a cache: the next gc reads again
        storage.write_atomic(f"{LEAVES}/{stamp}-{_digest(data)}", data)
        for name in older[: max(0, len(older) + 1 - KEEP)]:
            storage.delete(f"{LEAVES}/{name}")
    return True


def _digest(data: bytes) -> str:
    return blake3.blake3(data).hexdigest()[:32]


def _verifies(name: str, data: bytes) -> bool:
    return data.startswith(MAGIC) and name.endswith(f"-{_digest(data)}")
