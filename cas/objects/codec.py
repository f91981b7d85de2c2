"""The stored form of one object: a 16-byte header, then a zstd frame or the raw bytes.

::

    offset size  field
    0      4     magic     b"CASO"
    4      1     format    1
    5      1     kind      1 blob, 2 chunk list, 3 tree, 4 record, 5 event
    6      1     flags     bit 0: the body is one zstd frame; bit 1: a delta (below);
                           bit 2: the delta is a byte-grouped XOR (below); others 0
    7      1     depth     0; a delta: its chain depth, 1 + its base's (1..MAX_CHAIN)
    8      8     raw size  little-endian u64: the length of the payload once decoded
    16     32    base id   a delta only: the object whose payload is the frame's dictionary

A delta (flags 0b11) is a zstd frame compressed with its base object's payload (what the
base decodes to) as a raw-content dictionary; the kind is the kind of what it decodes to,
and its id is the hash of that, as for any object. Decoding it needs the base's payload
(:mod:`cas.objects.delta` reads the chain). A cas from before deltas refuses the flag as
a malformed header, and a store holding deltas is marked format 3, which it refuses.

An XOR delta (flags 0b111, format 4) is for a base of the same length whose bytes moved
a little everywhere (a model's weights after a training step): its body is one byte,
the stride ``s`` (1 to 16), then a zstd frame of the payload XOR the base's payload,
byte-grouped: every ``s``-th byte from byte 0, then from byte 1, ..., then the last
``len % s`` bytes as they are (:mod:`cas.objects.planes`).

Decoding never trusts the header further than it must: the raw size is capped
(:data:`MAX_RAW_SIZE`) before anything is allocated, and decompression produces at most
that many bytes; a frame that would produce more, or fewer, is an :class:`IntegrityError`.
"""

from __future__ import annotations

import io
import struct
import threading
from dataclasses import dataclass
from typing import Final

import zstandard

from cas.errors import CasError, IntegrityError
from cas.objects import planes
from cas.objects.ids import ObjectId

MAGIC: Final = b"CASO"
FORMAT: Final = 1
HEADER: Final = struct.Struct("<4sBBBBQ")
HEADER_SIZE: Final = HEADER.size  # 16

FLAG_ZSTD: Final = 0x01
FLAG_DELTA: Final = 0x02
#: With FLAG_DELTA: the frame holds the byte-grouped XOR of payload and base (format 4).
FLAG_XOR: Final = 0x04
_KNOWN_FLAGS: Final = FLAG_ZSTD | FLAG_DELTA | FLAG_XOR
#: An XOR delta's stride (its body's first byte) is at most this.
MAX_STRIDE: Final = 16
BASE_SIZE: Final = 32
#: The most bytes a header takes: a delta's, with its base id.
HEAD_SIZE: Final = HEADER_SIZE + BASE_SIZE  # 48

#: A reader refuses a delta chain deeper than this (the writer's cap,
#: :data:`cas.objects.delta.MAX_DEPTH`, is lower): a read is bounded by it.
MAX_CHAIN: Final = 64

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
    base: ObjectId | None = None  # a delta's base
    depth: int = 0  # a delta's chain depth (its base's + 1); 0 for a plain object

    @property
    def body_offset(self) -> int:
        return HEAD_SIZE if self.base is not None else HEADER_SIZE


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


def frame(data: bytes | memoryview, level: int = DEFAULT_LEVEL) -> bytes:
    """One zstd frame of ``data``, its content size declared (this thread's context)."""
    return _compressor(level).compress(data)


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


def estimate(payload: bytes | memoryview, level: int = DEFAULT_LEVEL) -> int:
    """The stored size :func:`encode` would likely give a large payload, from the
    compressed size of three sample windows (the probe's)."""
    size = len(payload)
    if size <= PROBE_ABOVE:
        return len(encode("blob", payload, level))
    view, w = memoryview(payload), PROBE_WINDOW
    cctx = _compressor(level)
    starts = (0, size // 2 - w // 2, size - w)
    packed = sum(len(cctx.compress(view[i : i + w])) for i in starts)
    return HEADER_SIZE + min(size, size * packed // (3 * w))


def read_header(oid: str, stored: bytes | memoryview) -> Header:
    """Parse and check the header; every way it can be wrong names the object."""
    if len(stored) < HEADER_SIZE:
        raise IntegrityError(oid, _msg(oid, f"is truncated ({len(stored)} bytes, no header)"))
    magic, fmt, kind, flags, depth, raw_size = HEADER.unpack_from(stored)
    if magic != MAGIC:
        raise IntegrityError(oid, _msg(oid, "has no object header (bad magic)"))
    if fmt != FORMAT:
        raise IntegrityError(oid, _msg(oid, f"has unknown object format {fmt}"))
    if kind not in KIND_NAMES or flags & ~_KNOWN_FLAGS:
        raise IntegrityError(oid, _msg(oid, "has a malformed header"))
    if raw_size > MAX_RAW_SIZE:
        raise IntegrityError(oid, _msg(oid, f"claims {raw_size} bytes, over the limit"))
    if not flags & FLAG_DELTA:
        if depth or flags & FLAG_XOR:
            raise IntegrityError(oid, _msg(oid, "has a malformed header"))
        return Header(KIND_NAMES[kind], flags, raw_size)
    if not flags & FLAG_ZSTD or not 1 <= depth <= MAX_CHAIN:
        raise IntegrityError(oid, _msg(oid, "has a malformed delta header"))
    if len(stored) < HEAD_SIZE:
        raise IntegrityError(oid, _msg(oid, "is truncated (a delta without its base id)"))
    base = ObjectId(bytes(stored[HEADER_SIZE:HEAD_SIZE]).hex())
    if base == oid:
        raise IntegrityError(oid, _msg(oid, "names itself as its delta base"))
    return Header(KIND_NAMES[kind], flags, raw_size, base, depth)


def decode(oid: str, stored: bytes | memoryview) -> tuple[str, bytes]:
    """(kind, payload) of a stored object that is not a delta; the payload is exactly
    raw_size bytes. A delta is decoded through its object space, which reads its base."""
    header = read_header(oid, stored)
    return header.kind, decode_body(oid, header, stored)


def decode_body(
    oid: str, header: Header, stored: bytes | memoryview, base: bytes | None = None
) -> bytes:
    """The payload of a stored object whose header is ``header``; a delta needs
    ``base``, the payload of its base object."""
    body = memoryview(stored)[header.body_offset :]
    if header.base is not None and base is None:
        raise CasError(f"object {oid} is a delta against {header.base}: read it from its store")
    if header.flags & FLAG_XOR:
        assert base is not None
        stride = _xor_stride(oid, header, body, len(base))
        grouped = _decompress(oid, body[1:], header.raw_size, None)
        return planes.unxor(grouped, stride, base)
    if header.flags & FLAG_ZSTD:
        return _decompress(oid, body, header.raw_size, base)
    if len(body) != header.raw_size:
        raise IntegrityError(
            oid, _msg(oid, f"decodes to {len(body)} bytes, header says {header.raw_size}")
        )
    return bytes(body)


def decode_xor(
    oid: str, header: Header, stored: bytes | memoryview,
    base_id: str, base_header: Header, base_stored: bytes | memoryview,
) -> bytes:  # fmt: skip
    """The payload of an XOR delta (``header``, ``stored``) whose base is a plain
    object, from the base's stored form: :func:`decode_body` of the delta on the base's
    payload, with no more new memory than a plain read takes. The residual is
    decompressed into this thread's scratch buffer, the base into the buffer that
    becomes the payload, and the residual is ungrouped and XORed into it there (new
    memory faulted in on two threads at once cost more than the ungrouping and XOR)."""
    size = header.raw_size
    if base_header.base is not None or not header.flags & FLAG_XOR or size == 0:
        raise ValueError(f"object {oid} is not an XOR delta of bytes on a plain base")
    body = memoryview(stored)[header.body_offset :]
    stride = _xor_stride(oid, header, body, base_header.raw_size)
    grouped = planes.scratch(size)
    _decompress_into(oid, body[1:], grouped)
    result = io.BytesIO()
    result.seek(size - 1)
    result.write(b"\0")
    with result.getbuffer() as view:
        base_body = memoryview(base_stored)[base_header.body_offset :]
        if base_header.flags & FLAG_ZSTD:
            _decompress_into(base_id, base_body, view)
        elif len(base_body) == size:
            view[:] = base_body
        else:
            raise IntegrityError(
                base_id, _msg(base_id, f"decodes to {len(base_body)} bytes, header says {size}")
            )
        planes.unxor_into(grouped, stride, view)
    # The buffer becomes the bytes returned without a copy (a copy faults every page
    # of new memory in again).
    return result.getvalue()


def _xor_stride(oid: str, header: Header, body: memoryview, base_size: int) -> int:
    if base_size != header.raw_size:
        raise IntegrityError(
            oid, _msg(oid, f"is an XOR delta of {header.raw_size} bytes on a base of {base_size}")
        )
    if not body or not 1 <= body[0] <= MAX_STRIDE:
        raise IntegrityError(oid, _msg(oid, "is an XOR delta without a valid stride"))
    return body[0]


def _decompress_into(oid: str, frame: memoryview, out: memoryview) -> None:
    """:func:`_decompress` of a frame into ``out``, which it must fill exactly."""
    size, got, more = len(out), 0, b""
    try:
        _declares(oid, frame, size)
        with _decompressor().stream_reader(frame, read_across_frames=False) as reader:
            while got < size:
                step = reader.readinto(out[got:])
                if not step:
                    break
                got += step
            more = reader.read(1)  # a frame that inflates past its declaration
    except zstandard.ZstdError as exc:
        raise IntegrityError(oid, _msg(oid, f"does not decompress ({exc})")) from exc
    if got != size or more:
        what = f"more than {size}" if more else str(got)
        raise IntegrityError(oid, _msg(oid, f"decodes to {what} bytes, header says {size}"))


def _decompress(oid: str, frame: memoryview, size: int, base: bytes | None) -> bytes:
    """A zstd frame that must decode to exactly ``size`` bytes (``base``: the raw-content
    dictionary of a delta)."""
    try:
        _declares(oid, frame, size)
        dctx = _decompressor() if base is None else _with_dictionary(base)
        payload = dctx.decompress(frame, max_output_size=size)
    except zstandard.ZstdError as exc:
        raise IntegrityError(oid, _msg(oid, f"does not decompress ({exc})")) from exc
    if len(payload) != size:
        raise IntegrityError(oid, _msg(oid, f"decodes to {len(payload)} bytes, header says {size}"))
    return payload


def _declares(oid: str, frame: memoryview, size: int) -> None:
    """Allocation is bounded by the header's size: a frame must declare exactly that
    content size before it is decompressed (zstd allocates what a frame declares); one
    that inflates past its declaration is an error where it is decompressed."""
    declared = zstandard.frame_content_size(frame)
    if declared != size:
        raise IntegrityError(
            oid, _msg(oid, f"holds a frame of {declared} bytes, header says {size}")
        )


def dictionary(base: bytes) -> zstandard.ZstdCompressionDict:
    """A base object's payload as a zstd raw-content dictionary (no training, no id)."""
    return zstandard.ZstdCompressionDict(base, dict_type=zstandard.DICT_TYPE_RAWCONTENT)


def _with_dictionary(base: bytes) -> zstandard.ZstdDecompressor:
    return zstandard.ZstdDecompressor(dict_data=dictionary(base))


def _msg(oid: str, what: str) -> str:
    return f"object {oid} {what}; run 'cas fsck' to list affected artifacts"
