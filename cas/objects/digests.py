"""Compact sets of object ids for work over millions of objects (gc): 32 bytes an id in
one sorted buffer, not a Python object each."""

from __future__ import annotations

import sys
from array import array
from bisect import bisect_left
from collections.abc import Iterator
from typing import Final

from cas.objects.ids import ObjectId

_DIGEST: Final = 32


class Digests:
    """A sorted set of 32-byte object digests in one buffer: 32 bytes an object. A lookup
    goes to the digests sharing its first two bytes (a table of 65,537 offsets), then
    searches those few at C speed."""

    __slots__ = ("_buf", "_n", "_off")

    def __init__(self, sorted_digests: bytes | bytearray = b"") -> None:
        if len(sorted_digests) % _DIGEST:
            raise ValueError("a digest buffer holds whole 32-byte digests")
        self._buf = sorted_digests
        self._n = n = len(sorted_digests) // _DIGEST
        pairs = bytearray(2 * n)  # each digest's first two bytes, as big-endian u16
        pairs[0::2] = sorted_digests[0::_DIGEST]
        pairs[1::2] = sorted_digests[1::_DIGEST]
        prefixes = array("H", bytes(pairs))
        if sys.byteorder == "little":
            prefixes.byteswap()
        self._off = off = array("q", bytes(8 * 65537))
        lo = 0
        for p in range(65536):
            lo = off[p] = bisect_left(prefixes, p, lo)
        off[65536] = n

    def __len__(self) -> int:
        return self._n

    def find(self, digest: bytes) -> int:
        """The position of ``digest``, or -1."""
        p = digest[0] << 8 | digest[1]
        hi = self._off[p + 1] * _DIGEST
        pos = self._buf.find(digest, self._off[p] * _DIGEST, hi)
        while pos >= 0 and pos % _DIGEST:  # a match straddling two digests: look on
            pos = self._buf.find(digest, pos + 1, hi)
        return pos // _DIGEST if pos >= 0 else -1

    def __contains__(self, digest: object) -> bool:
        return isinstance(digest, bytes) and len(digest) == _DIGEST and self.find(digest) >= 0

    def digest(self, i: int) -> bytes:
        return bytes(self._buf[i * _DIGEST : (i + 1) * _DIGEST])

    def oid(self, i: int) -> ObjectId:
        return ObjectId(self._buf[i * _DIGEST : (i + 1) * _DIGEST].hex())

    def fan(self, first: int) -> range:
        """Positions of the digests whose first byte is ``first`` (one fan-out folder)."""
        return range(self._off[first << 8], self._off[(first + 1) << 8])

    def __repr__(self) -> str:
        return f"Digests({self._n} ids)"


class Condemned:
    """What a plan deletes, sorted by id: it iterates as (id, stored bytes) pairs, kept
    as 40 bytes an object (digest and size), not as a Python tuple each."""

    def __init__(self, digests: Digests, sizes: array[int]) -> None:
        if len(digests) != len(sizes):
            raise ValueError("one size per digest")
        self.digests = digests
        self.sizes = sizes

    @property
    def total(self) -> int:
        return sum(self.sizes)

    def __len__(self) -> int:
        return len(self.digests)

    def __iter__(self) -> Iterator[tuple[ObjectId, int]]:
        for i in range(len(self)):
            yield self.digests.oid(i), self.sizes[i]

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, (Condemned, tuple, list)):
            return NotImplemented
        return len(self) == len(other) and all(a == b for a, b in zip(self, other, strict=True))

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"Condemned({len(self)} objects, {self.total} bytes)"
