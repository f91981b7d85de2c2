"""Byte planes and XOR, for deltas of numbers that all moved a little (format 4).

A model's weights after a training step differ from the step before in almost every
float, but mostly in the low bytes of each: the sign, the exponent and the high
mantissa bits stay. XOR with the previous version turns what stayed into zero bits,
and grouping the bytes by their place in an ``s``-byte number (every ``s``-th byte from
byte 0, then from byte 1, ...; Parquet's ``BYTE_STREAM_SPLIT``) lays the zeros side by
side, where zstd finds them. Measured on six checkpoints of an MLP trained with Adam
(``bench/bench_checkpoints.py``): zstd of each file alone keeps 93 % of it, the grouped
XOR of each with the one before 68 %.

numpy does the work when it is installed (about 1 ms a MiB); without it, the same bytes
come from Python's big integers and extended slices (about 3 ms a MiB), so a store
reads the same everywhere and numpy is not a dependency.
"""

from __future__ import annotations

import importlib
import io
import threading
from typing import Any, Final

#: False: the pure-Python path even where numpy is installed (the tests compare both).
USE_NUMPY = True
_numpy: list[Any] = []  # numpy once imported (None when absent): not at cas's import

#: A thread keeps its scratch buffer (:func:`scratch`) up to this size between calls: a
#: chunk (at most 4 MiB). A larger one is allocated for the call and let go.
KEEP_SCRATCH: Final = 4 << 20
#: :func:`unxor_into` ungroups this many bytes at a time into a buffer that stays in a
#: core's cache, XORed into the output from there.
BLOCK: Final = 256 << 10
_scratch = threading.local()


def _np() -> Any:
    if not USE_NUMPY:
        return None
    if not _numpy:
        try:
            _numpy.append(importlib.import_module("numpy"))
        except ImportError:  # pragma: no cover - numpy is installed where the tests run
            _numpy.append(None)
    return _numpy[0]


def xor(a: bytes | memoryview, b: bytes | memoryview) -> bytes:
    """The bytes of ``a`` XOR ``b`` (equal lengths)."""
    if len(a) != len(b):
        raise ValueError(f"xor of {len(a)} and {len(b)} bytes")
    np = _np()
    if np is not None:
        return bytes(np.bitwise_xor(np.frombuffer(a, np.uint8), np.frombuffer(b, np.uint8)).data)
    n = len(a)
    return (int.from_bytes(a, "little") ^ int.from_bytes(b, "little")).to_bytes(n, "little")


def group(data: bytes | memoryview, stride: int) -> bytes:
    """Every ``stride``-th byte from byte 0, then from byte 1, ..., then the last
    ``len % stride`` bytes as they are."""
    raw = bytes(data)
    n = len(raw)
    full = n - n % stride
    return b"".join(raw[j:full:stride] for j in range(stride)) + raw[full:]


def ungroup(data: bytes | memoryview, stride: int) -> bytes:
    """The inverse of :func:`group`."""
    raw = bytes(data)
    n = len(raw)
    full = n - n % stride
    rows = full // stride
    out = bytearray(n)
    for j in range(stride):
        out[j:full:stride] = raw[j * rows : (j + 1) * rows]
    out[full:] = raw[full:]
    return bytes(out)


def xor_grouped(payload: bytes | memoryview, base: bytes | memoryview, stride: int) -> Any:
    """``group(xor(payload, base), stride)`` as a buffer (one pass of each, into one
    new buffer, where numpy is installed)."""
    np = _np()
    n = len(payload)
    if np is None or len(base) != n:
        return group(xor(payload, base), stride)
    full, rows = n - n % stride, n // stride
    x = np.bitwise_xor(np.frombuffer(payload, np.uint8), np.frombuffer(base, np.uint8))
    out = np.empty(n, np.uint8)
    by_place = x[:full].reshape(rows, stride)
    for j in range(stride):  # a column at a time: 3x faster than numpy's transpose copy
        out[j * rows : (j + 1) * rows] = by_place[:, j]
    out[full:] = x[full:]
    return out


def unxor(grouped: bytes | memoryview, stride: int, base: bytes | memoryview) -> bytes:
    """``xor(ungroup(grouped, stride), base)`` (one pass of each where numpy is)."""
    n = len(grouped)
    if len(base) != n:
        raise ValueError(f"xor of {n} and {len(base)} bytes")
    np = _np()
    if np is None or n == 0:
        return xor(ungroup(grouped, stride), base)
    full, rows = n - n % stride, n // stride
    parts = np.frombuffer(grouped, np.uint8)
    # Written into a BytesIO's own buffer, which then becomes the bytes returned without
    # a copy: a copy into a new bytes object faults in every page of it a second time
    # (1.2 ms a MiB here, against 0.4 for the whole of this).
    result = io.BytesIO()
    result.seek(n - 1)
    result.write(b"\0")
    with result.getbuffer() as view:
        out = np.frombuffer(view, np.uint8)
        by_place = out[:full].reshape(rows, stride)
        for j in range(stride):
            by_place[:, j] = parts[j * rows : (j + 1) * rows]
        out[full:] = parts[full:]
        out ^= np.frombuffer(base, np.uint8)
        del out, by_place  # the view's exports, released before it is
    return result.getvalue()


def scratch(n: int, which: str = "grouped") -> memoryview:
    """A writable buffer of ``n`` bytes, this thread's own, which the next call on the
    same thread reuses: a residual decompressed into it each time faults in none of its
    pages again (fresh memory costs more to fault in on two threads at once than the
    ungrouping and XOR together; measured on the checkpoint benchmark, 2 cores)."""
    buf: bytearray | None = getattr(_scratch, which, None)
    if buf is None or len(buf) < n:
        buf = bytearray(n)
        if n <= KEEP_SCRATCH:  # a new object, not a resize: a view still held is safe
            setattr(_scratch, which, buf)
    return memoryview(buf)[:n]


def unxor_into(grouped: bytes | memoryview, stride: int, out: memoryview) -> None:
    """``out`` XOR= ``ungroup(grouped, stride)``, in place: ``out`` holds the base and
    ends as the payload (:func:`unxor` without a buffer of its own)."""
    n = len(grouped)
    if len(out) != n:
        raise ValueError(f"xor of {n} and {len(out)} bytes")
    np = _np()
    if np is None or n == 0:
        out[:] = unxor(grouped, stride, bytes(out))
        return
    full, rows = n - n % stride, n // stride
    parts = np.frombuffer(grouped, np.uint8)
    target = np.frombuffer(out, np.uint8)
    step = max(1, BLOCK // stride)
    block = np.frombuffer(scratch(min(rows, step) * stride, "block"), np.uint8)
    for r0 in range(0, rows, step):  # a block of rows at a time: it stays in the cache
        r1 = min(rows, r0 + step)
        by_place = block[: (r1 - r0) * stride].reshape(r1 - r0, stride)
        for j in range(stride):  # a column at a time: 3x faster than a transpose copy
            by_place[:, j] = parts[j * rows + r0 : j * rows + r1]
        target[r0 * stride : r1 * stride] ^= block[: (r1 - r0) * stride]
    target[full:] ^= parts[full:]
