"""The search query language.

::

    query   := term (whitespace term)*
    term    := key ":" value        a tag filter: the record's tag `key` equals `value`
             | word                 a search word (split further into words, see below)
             | '"' text '"'         a phrase: every word in it
    key     := one or more characters other than whitespace, ':' and '"'
    value   := bare text (no whitespace, no '"') | '"' text '"'

Inside quotes, ``\\"`` is a quote and ``\\\\`` a backslash. Every term must hold: the
terms are AND-ed. Words are matched whole and case-insensitively after the split
that indexing applies (``fraud_detector`` is the words ``fraud`` and ``detector``);
tag values are matched exactly (case-sensitive). There are no reserved keys:
``type:model`` filters on a *tag* named ``type``; filter on the artifact type with
``Catalog.list(artifact_type=...)``, or search the word (``model``), since the type is
indexed as a word too.

Malformed queries raise ``QueryError`` with the position: an unbalanced quote, an
empty key (``:value``), a key with no value (``stage:``), a quote glued to a word.
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import QueryError
from .record import words

_SPACE = " \t\r\n\f\v"


@dataclass(frozen=True, slots=True)
class Query:
    """A parsed query: tag filters and search words, all AND-ed."""

    tags: tuple[tuple[str, str], ...] = ()
    words: tuple[str, ...] = ()

    @property
    def empty(self) -> bool:
        return not self.tags and not self.words


def parse_query(text: str) -> Query:
    """Parse a search query (``stage:production team:fraud resnet``) into a ``Query``.

    Raises ``QueryError`` (a ``ValueError``) naming the problem and its position.
    """
    if not isinstance(text, str):
        raise QueryError(repr(text), 0, "a query must be a string")
    tags: dict[tuple[str, str], None] = {}
    found: dict[str, None] = {}
    i, n = 0, len(text)
    while i < n:
        if text[i] in _SPACE:
            i += 1
            continue
        start = i
        if text[i] == '"':
            phrase, i = _quoted(text, i)
            _end_of_term(text, i, start)
            for w in words(phrase):
                found[w] = None
            continue
        if text[i] == ":":
            raise QueryError(text, i, "empty key before ':' (write key:value)")
        while i < n and text[i] not in _SPACE and text[i] not in ':"':
            i += 1
        if i < n and text[i] == '"':
            raise QueryError(text, i, "a quote inside a word (quote the whole value)")
        if i < n and text[i] == ":":
            key = text[start:i]
            i += 1
            if i >= n or text[i] in _SPACE:
                raise QueryError(text, i, f"no value after '{key}:'")
            if text[i] == '"':
                value, i = _quoted(text, i)
            else:
                vstart = i
                while i < n and text[i] not in _SPACE and text[i] != '"':
                    i += 1
                value = text[vstart:i]
            _end_of_term(text, i, start)
            tags[(key, value)] = None
            continue
        for w in words(text[start:i]):
            found[w] = None
    return Query(tags=tuple(tags), words=tuple(found))


def _quoted(text: str, i: int) -> tuple[str, int]:
    """The text of a quoted string starting at ``text[i] == '"'``, and the index after it."""
    out: list[str] = []
    j, n = i + 1, len(text)
    while j < n:
        c = text[j]
        if c == "\\" and j + 1 < n and text[j + 1] in '"\\':
            out.append(text[j + 1])
            j += 2
            continue
        if c == '"':
            return "".join(out), j + 1
        out.append(c)
        j += 1
    raise QueryError(text, i, "unbalanced quote: no closing '\"'")


def _end_of_term(text: str, i: int, start: int) -> None:
    if i < len(text) and text[i] not in _SPACE:
        raise QueryError(text, i, f"expected a space after the term starting at {start}")
