"""The stored form of one object: a 16-byte header, then a zstd frame or the raw bytes.

::

    offset size  field
    0      4     magic     b"CASO"
    4      1     format    1
    5      1     kind      1 blob, 2 chunk list, 3 tree, 4 record, 5 event
    6      1     flags     bit 0: the body is one zstd frame; other bits must be 0
    7      1     reserved  0
    8      8     raw size  little-endian u64: the length of the payload once decoded

Decoding never trusts the header further than it must: the raw size is capped
(:data:`MAX_RAW_SIZE`) before anything is allocated, and decompression produces at most
that many bytes; a frame that would produce more, or fewer, is an :class:`IntegrityError`.
"""

from __future__ import annotations

import struct
import threading
from dataclasses import dataclass
from typing import Final

import zstandard

from cas.errors import IntegrityError

MAGIC: Final = b"CASO"
FORMAT: Final = 1
HEADER: Final = struct.Struct("<4sBBBBQ")
HEADER_SIZE: Final = HEADER.size  # 16

FLAG_ZSTD: Final = 0x01
_KNOWN_FLAGS: Final = FLAG_ZSTD

KINDS: Final[dict[str, int]] = {"blob": 1, "chunks": 2, "tree": 3, "record": 4, "event": 5}
KIND_NAMES: Final[dict[int, str]] = {v: k for k, v in KINDS.items()}

#: No single object decodes to more than this. Content above the chunking threshold is
#: cut into chunks of at most a few MiB, so only a chunk list of a file of ~60 TB would
#: come near it; a header claiming more is a lie and is refused before any allocation.
MAX_RAW_SIZE: Final = 2 << 30

#: zstd level 3 (zstd's own default), chosen by measurement on this project's mixed
#: corpus (2 cores, docs/performance.md): level 1 compresses text 1.6x faster but stores
#: it 19% larger (ratio 0.45 vs 0.38); level 6 is 2.4x slower for 1% less. Artifacts are
#: written once and kept and shipped to buckets many times, so the space wins at 3.
DEFAULT_LEVEL: Final = 3

#: Keep the compressed body only if it saves at least this fraction: already-compressed
#: data (Parquet, images, model weights in zip) is stored raw and read back at memcpy speed.
MIN_SAVING: Final = 0.03

#: Above this size a payload is first sampled: three windows of :data:`PROBE_WINDOW`
#: bytes (start, middle, end) are compressed, and if together they do not shrink by
#: MIN_SAVING the payload is stored raw without a full compression. Random or already-
#: compressed chunks (the bulk of large artifacts: weights, Parquet, images) then cost
#: ~3% of a compression; a chunk compressible only outside the windows is stored raw.
PROBE_ABOVE: Final = 256 * 1024
PROBE_WINDOW: Final = 16 * 1024

_local = threading.local()


def _compressor(level: int) -> zstandard.ZstdCompressor:
    # zstd contexts are not thread-safe; one per thread and level.
    cache: dict[int, zstandard.ZstdCompressor] | None = getattr(_local, "cctx", None)
    if cache is None:
        cache = _local.cctx = {}
    cctx = cache.get(level)
    if cctx is None:
        cctx = cache[level] = zstandard.ZstdCompressor(level=level, write_content_size=True)
    return cctx


def _decompressor() -> zstandard.ZstdDecompressor:
    dctx: zstandard.ZstdDecompressor | None = getattr(_local, "dctx", None)
    if dctx is None:
        dctx = _local.dctx = zstandard.ZstdDecompressor()
    return dctx


@dataclass(frozen=True, slots=True)
class Header:
    kind: str
    flags: int
    raw_size: int


def encode(kind: str, payload: bytes | memoryview, level: int = DEFAULT_LEVEL) -> bytes:
    """The stored form of ``payload``: compressed when that saves at least MIN_SAVING."""
    raw_size = len(payload)
    if raw_size > MAX_RAW_SIZE:
        raise ValueError(f"object of {raw_size} bytes exceeds the {MAX_RAW_SIZE}-byte limit")
    flags = 0
    body: bytes | memoryview = payload
    if raw_size >= 64 and _may_compress(payload, level):
        packed = _compressor(level).compress(payload)
        if len(packed) <= raw_size * (1 - MIN_SAVING):
            flags, body = FLAG_ZSTD, packed
    return HEADER.pack(MAGIC, FORMAT, KINDS[kind], flags, 0, raw_size) + body  # one copy


def _may_compress(payload: bytes | memoryview, level: int) -> bool:
    """False if a sample of a large payload does not compress (see PROBE_ABOVE)."""
    size = len(payload)
    if size <= PROBE_ABOVE:
        return True
    view, w = memoryview(payload), PROBE_WINDOW
    cctx = _compressor(level)
    starts = (0, size // 2 - w // 2, size - w)
    packed = sum(len(cctx.compress(view[i : i + w])) for i in starts)
    return packed <= 3 * w * (1 - MIN_SAVING)


def read_header(oid: str, stored: bytes | memoryview) -> Header:
    """Parse and check the header; every way it can be wrong names the object."""
    if len(stored) < HEADER_SIZE:
        raise IntegrityError(oid, _msg(oid, f"is truncated ({len(stored)} bytes, no header)"))
    magic, fmt, kind, flags, reserved, raw_size = HEADER.unpack_from(stored)
    if magic != MAGIC:
        raise IntegrityError(oid, _msg(oid, "has no object header (bad magic)"))
    if fmt != FORMAT:
        raise IntegrityError(oid, _msg(oid, f"has unknown object format {fmt}"))
    if kind not in KIND_NAMES or flags & ~_KNOWN_FLAGS or reserved:
        raise IntegrityError(oid, _msg(oid, "has a malformed header"))
    if raw_size > MAX_RAW_SIZE:
        raise IntegrityError(oid, _msg(oid, f"claims {raw_size} bytes, over the limit"))
    return Header(KIND_NAMES[kind], flags, raw_size)


def decode(oid: str, stored: bytes | memoryview) -> tuple[str, bytes]:
    """(kind, payload) of a stored object; the payload is exactly raw_size bytes."""
    header = read_header(oid, stored)
    body = memoryview(stored)[HEADER_SIZE:]
    if header.flags & FLAG_ZSTD:
        try:
            # Allocation is bounded by the header's size: the frame must declare exactly
            # that content size before we decompress (zstd allocates what a frame
            # declares), and a frame that inflates past its declaration is an error.
            declared = zstandard.frame_content_size(body)
            if declared != header.raw_size:
                raise IntegrityError(
                    oid,
                    _msg(oid, f"holds a frame of {declared} bytes, header says {header.raw_size}"),
                )
            payload = _decompressor().decompress(body, max_output_size=header.raw_size)
        except zstandard.ZstdError as exc:
            raise IntegrityError(oid, _msg(oid, f"does not decompress ({exc})")) from exc
    else:
        payload = bytes(body)
    if len(payload) != header.raw_size:
        raise IntegrityError(
            oid, _msg(oid, f"decodes to {len(payload)} bytes, header says {header.raw_size}")
        )
    return header.kind, payload


def _msg(oid: str, what: str) -> str:
    return f"object {oid} {what}; run 'cas fsck' to list affected artifacts"
