"""catalog: the LMDB index of artifact records, tags and lineage (a leaf: it never
imports ``cas`` or ``refs``).

Records arrive as plain mappings whose 64-hex ``id`` the caller computed; the catalog
indexes them by name, type, tag, search word, run/pipeline/step and lineage, answers
queries newest first, and can be rebuilt exactly from the put/tag/delete events the
caller keeps. See ``docs/catalog.md``.

::

    from . import Catalog
    with Catalog(".cas/index") as cat:
        cat.put(record)
        cat.tag(record["id"], {"stage": "production"}, stamp)
        cat.search("stage:production fraud", limit=10)
"""

from .catalog import Catalog
from .errors import (
    CatalogDamaged,
    CatalogError,
    FormatMismatch,
    InvalidInput,
    QueryError,
)
from .query import Query, parse_query

__all__ = [
    "Catalog",
    "CatalogDamaged",
    "CatalogError",
    "FormatMismatch",
    "InvalidInput",
    "Query",
    "QueryError",
    "parse_query",
]
