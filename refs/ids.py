"""What a ref holds: a 64-character lowercase hex id, and the ``ANY`` expectation.

refs knows nothing of objects: an id is checked for its shape only, once, here.
"""

from __future__ import annotations

import enum
import re
from typing import Literal, TypeAlias

from .errors import InvalidId, RefError

_ID = re.compile(r"[0-9a-f]{64}")


class _Any(enum.Enum):
    ANY = "ANY"

    def __repr__(self) -> str:
        return "ANY"


#: ``expected=ANY``: update whatever the ref holds now (still one serialized update).
ANY: Literal[_Any.ANY] = _Any.ANY

#: What a compare-and-swap may expect: an id, ``None`` (must be absent) or ``ANY``.
Expected: TypeAlias = "str | None | Literal[_Any.ANY]"


def check_id(value: object) -> str:
    """Return ``value`` if it is a 64-character lowercase hex id, else raise :class:`InvalidId`."""
    if not isinstance(value, str) or _ID.fullmatch(value) is None:
        raise InvalidId(value)
    return value


def encode_ref(value: str) -> bytes:
    """The bytes of a ref file: the id and a newline, as git writes it."""
    return check_id(value).encode("ascii") + b"\n"


def decode_ref(data: bytes, where: str) -> str:
    """The id held by ref file bytes ``data`` read from ``where``; a clear error if corrupt."""
    text = data.decode("ascii", errors="replace").strip()
    if _ID.fullmatch(text) is None:
        raise RefError(
            f"ref file {where} is corrupt: it must hold one 64-hex id, found {text[:80]!r}"
        )
    return text
