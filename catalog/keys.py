"""The on-disk layout: sub-database names and how keys and values are encoded.

Every index is an LMDB ``dupsort`` + ``dupfixed`` sub-database mapping a *term* (a
name, a type, a tag, a search token, ...) to fixed-size *postings*::

    posting = inverted created_at (8 bytes, big-endian) + record id (32 raw bytes)

The creation time is stored as ``2**64 - 1 - microseconds since 0001-01-01``, so
LMDB's ascending byte order of a term's postings *is* newest first (ties broken by
id), a forward cursor walk returns the newest records, and "seek to the first
posting >= x" (``MDB_GET_BOTH_RANGE``) lets a query leapfrog between terms. The number
of postings of a term is O(1) (``mdb_cursor_count``), which is how a query orders its
terms smallest first.

::

    records     id                    -> msgpack(record, tags as currently in force)
    time        posting               -> b""           every live record, newest first
    name        name                  -> posting*      all versions of a name
    type        artifact_type         -> posting*
    tag         key 0x00 value        -> posting*
    token       search word           -> posting*
    run         source_run_id         -> posting*
    pipeline    source_pipeline       -> posting*
    step        source_step           -> posting*
    content     content id (32 bytes) -> posting*      every record of the same content
    children    parent id             -> posting(child)*        newest child first
    parents     child id              -> position (2 bytes) + parent id*   given order
    tombstones  id                    -> delete stamp (utf-8), the smallest one seen
    tagstamps   id + tag key (utf-8)  -> msgpack([stamp, value or None])  LWW winner per key
    changes     b"\0mark"             -> the label of the state changes are counted from
                b"p" + id | b"t" + id + tag key | b"d" + id  -> b""   what changed since
    meta        b"format"             -> b"3"

``changes`` exists only while a mark is set (:meth:`Catalog.mark`): each record put,
tag key won and tombstone written since then, so that the difference between the
catalog and the state it held when marked can be exported without comparing the two
(an incremental checkpoint). Format 3 added it; a format 2 catalog is upgraded in
place when opened for writing (no mark yet), and a cas that reads only format 2
builds its catalog again rather than write changes it would not count.

Terms longer than ``MAX_TERM`` bytes are replaced by ``0xff + blake2b(term)`` (0xff
never occurs in UTF-8), because LMDB keys are limited to 511 bytes.
"""

from __future__ import annotations

import hashlib
from datetime import datetime, timedelta

FORMAT = b"3"
#: formats opened as they are (and marked 3 when opened for writing)
OLDER_FORMATS = (b"2",)

RECORDS = b"records"
TIME = b"time"
NAME = b"name"
TYPE = b"type"
TAG = b"tag"
TOKEN = b"token"
RUN = b"run"
PIPELINE = b"pipeline"
STEP = b"step"
CONTENT = b"content"
CHILDREN = b"children"
PARENTS = b"parents"
TOMBSTONES = b"tombstones"
TAGSTAMPS = b"tagstamps"
CHANGES = b"changes"
META = b"meta"
MARK = b"\0mark"

#: term -> posting indexes, searched by the query engine
POSTING_DBS = (NAME, TYPE, TAG, TOKEN, RUN, PIPELINE, STEP, CHILDREN, CONTENT)
#: dupsort sub-databases (fixed-size values)
DUPSORT_DBS = (*POSTING_DBS, PARENTS)
PLAIN_DBS = (RECORDS, TIME, TOMBSTONES, TAGSTAMPS, CHANGES, META)
ALL_DBS = (*PLAIN_DBS, *DUPSORT_DBS)

ID_BYTES = 32
POSTING_BYTES = 8 + ID_BYTES
MAX_TERM = 480  # LMDB's key limit is 511 bytes
HASHED_TERM = b"\xff"

_EPOCH = datetime(1, 1, 1)
_MICRO = timedelta(microseconds=1)
_MAX64 = (1 << 64) - 1


def term(text: str) -> bytes:
    """The key of an index term: its UTF-8 bytes, or a digest when too long for LMDB."""
    raw = text.encode()
    if len(raw) > MAX_TERM:
        return HASHED_TERM + hashlib.blake2b(raw, digest_size=32).digest()
    return raw


def tag_term(key: str, value: str) -> bytes:
    """The key of a ``key=value`` tag in the tag index (keys never hold NUL)."""
    return term(key + "\0" + value)


def decode_term(raw: bytes) -> str:
    """A term key back as text (a digested long term reads ``#<hex>``)."""
    if raw[:1] == HASHED_TERM:
        return "#" + raw[1:].hex()
    return raw.decode()


def time_key(created_at: str) -> bytes:
    """8 bytes that sort newest first: the inverted microseconds since 0001-01-01.

    ``created_at`` must already be validated (``YYYY-MM-DDTHH:MM:SS.ffffffZ``).
    """
    micros = (datetime.fromisoformat(created_at[:-1]) - _EPOCH) // _MICRO
    return (_MAX64 - micros).to_bytes(8, "big")


def created_at_of(posting: bytes) -> str:
    """The ``created_at`` text that a posting's first 8 bytes encode."""
    micros = _MAX64 - int.from_bytes(posting[:8], "big")
    return (_EPOCH + timedelta(microseconds=micros)).isoformat(timespec="microseconds") + "Z"


def posting(created_at: str, id_raw: bytes) -> bytes:
    """The 40-byte posting of a record: newest-first time key, then the raw id."""
    return time_key(created_at) + id_raw


def posting_id(post: bytes) -> str:
    """The hex record id inside a posting."""
    return post[8:].hex()


def parent_value(position: int, parent_raw: bytes) -> bytes:
    """A ``parents`` value: the parent's position in ``parent_ids``, then its raw id."""
    return position.to_bytes(2, "big") + parent_raw
