"""ArtifactCatalog: the user's face of the catalog (register, search, tag, lineage).

Every answer comes from the local LMDB index; every change is first written durably to
the object space (a record object, a journal entry), so the index can always be rebuilt.
Every argument is checked before the first write (``cas.repo.records``): a refused call
raises a :class:`~cas.errors.CasError` (:class:`~cas.errors.InvalidInput`,
``InvalidRefName``, ``ObjectNotFound``, ``QueryError``) and writes nothing.
"""

from __future__ import annotations

import builtins
import contextlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

from cas import catalog as _catalog
from cas.catalog.record import utf8
from cas.errors import InvalidInput, QueryError, shown
from cas.objects.ids import ObjectId, parse_id
from cas.repo.names import check_name
from cas.repo.records import check_new_record, check_tags, make_record
from cas.repo.repository import Repository


@dataclass(frozen=True, slots=True)
class Artifact(Mapping[str, Any]):
    """One catalog entry. Attribute access (``a.name``) and mapping access
    (``a["name"]``) both work, since the seed documents entries as dicts."""

    id: str
    name: str
    artifact_type: str
    content_id: str | None
    size: int
    tags: dict[str, str] = field(default_factory=dict)
    parent_ids: list[str] = field(default_factory=list)
    source_pipeline: str | None = None
    source_run_id: str | None = None
    source_step: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    created_at: str = ""
    source_project: str | None = None

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> Artifact:
        return cls(
            id=record["id"],
            name=record["name"],
            artifact_type=record["artifact_type"],
            content_id=record.get("content_id"),
            size=int(record.get("size") or 0),
            tags=dict(record.get("tags") or {}),
            parent_ids=list(record.get("parent_ids") or []),
            source_pipeline=record.get("source_pipeline"),
            source_run_id=record.get("source_run_id"),
            source_step=record.get("source_step"),
            metadata=dict(record.get("metadata") or {}),
            created_at=record.get("created_at") or "",
            source_project=record.get("source_project"),
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def __getitem__(self, key: str) -> Any:
        if key not in self.__dataclass_fields__:
            raise KeyError(key)
        return getattr(self, key)

    def __iter__(self) -> Iterator[str]:
        return iter(self.__dataclass_fields__)

    def __len__(self) -> int:
        return len(self.__dataclass_fields__)


@contextlib.contextmanager
def _query_errors() -> Iterator[None]:
    """The catalog's refusals of an argument, in cas's tree."""
    try:
        yield
    except _catalog.QueryError as exc:
        raise QueryError(str(exc)) from exc
    except _catalog.InvalidInput as exc:
        raise InvalidInput("argument", str(exc)) from exc


def _check_limit(limit: object) -> int:
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
        raise InvalidInput("limit", f"must be an int >= 0, got {shown(limit)}")
    return limit


def _check_depth(depth: object) -> int | None:
    if depth is not None and (isinstance(depth, bool) or not isinstance(depth, int) or depth < 0):
        raise InvalidInput("depth", f"must be an int >= 0 or None, got {shown(depth)}")
    return depth


def _check_text(argument: str, value: object) -> None:
    if not isinstance(value, str) or utf8(value) is None:
        raise InvalidInput(argument, f"must be a str of UTF-8 text, got {shown(value)}")


def _check_query(query: object) -> str:
    if not isinstance(query, str) or utf8(query) is None:
        raise QueryError(f"a query must be a str of UTF-8 text, got {shown(query, 60)}")
    return query


class Saver(Protocol):
    """What the catalog needs of its store: the repository, the name prefix, and a save
    for registrations that carry data (an ``ArtifactStore``)."""

    repo: Repository
    name_prefix: str

    def save(
        self,
        obj: Any,
        path: str,
        metadata: dict[str, Any] | None = ...,
        parent_ids: Sequence[str] = ...,
        *,
        artifact_type: str | None = ...,
        tags: dict[str, str] | None = ...,
        source_pipeline: str | None = ...,
        source_run_id: str | None = ...,
        source_step: str | None = ...,
    ) -> str: ...


class ArtifactCatalog:
    """Register, find, tag and trace artifacts of one store."""

    def __init__(self, store: Saver) -> None:
        self._store = store
        self._repo = store.repo

    @property
    def _engine(self) -> _catalog.Catalog:
        return self._repo.index.catalog

    def _resolve(self, name_or_id: str) -> ObjectId:
        return self._resolve_named(name_or_id)[0]

    def _resolve_named(self, name_or_id: object) -> tuple[ObjectId, str | None]:
        if not isinstance(name_or_id, str):
            raise InvalidInput(
                "artifact_id", f"an artifact id or name (a str), got {type(name_or_id).__name__}"
            )
        return self._repo.resolve(name_or_id, prefix=self._store.name_prefix)

    def register(
        self,
        name: str,
        artifact_type: str,
        data: Any = None,
        source_step: str | None = None,
        source_run_id: str | None = None,
        source_pipeline: str | None = None,
        tags: dict[str, str] | None = None,
        parent_ids: builtins.list[str] | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> str:
        """Record an artifact (storing ``data`` when given) and move the ref ``name``.

        Every argument is checked before anything is written: a refused call raises
        :class:`~cas.errors.InvalidInput` (or ``InvalidRefName``, or ``ObjectNotFound``
        for a parent that is not there) and leaves the store as it was."""
        store = self._store
        sources = {
            "source_pipeline": source_pipeline,
            "source_run_id": source_run_id,
            "source_step": source_step,
        }
        check_new_record(
            name,
            prefix=store.name_prefix,
            artifact_type=artifact_type,
            parent_ids=parent_ids,
            metadata=metadata,
            tags=tags,
            **sources,
        )
        parents = list(parent_ids or ())
        if data is not None:
            return store.save(
                data, name, metadata, parents, artifact_type=artifact_type, tags=tags, **sources
            )
        # No data: a metadata-only record (an external artifact, a placeholder).
        full = check_name(store.name_prefix + name)
        record = make_record(
            name=full,
            artifact_type=artifact_type,
            size=0,
            parent_ids=[self._resolve(p) for p in parents],
            metadata=metadata,
            tags=tags,
            **sources,
        )
        return str(self._repo.commit(record))

    def get(self, artifact_id: str) -> Artifact | None:
        record = self._engine.get(parse_id(artifact_id))
        return Artifact.from_record(record) if record is not None else None

    def list(self, artifact_type: str | None = None, limit: int = 100) -> builtins.list[Artifact]:
        """Newest first."""
        _check_limit(limit)
        if artifact_type is not None:
            _check_text("artifact_type", artifact_type)
            if not artifact_type:
                return []  # no artifact has an empty type (and LMDB has no empty key)
        with _query_errors():
            found = self._engine.list(artifact_type=artifact_type, limit=limit)
        return [Artifact.from_record(r) for r in found]

    def versions(self, name: str, limit: int = 100) -> builtins.list[Artifact]:
        """Every version saved under ``name``, newest first."""
        _check_limit(limit)
        _check_text("name", name)
        if not name:
            return []
        with _query_errors():
            return [Artifact.from_record(r) for r in self._engine.list(name=name, limit=limit)]

    def search(self, query: str, limit: int = 100) -> builtins.list[Artifact]:
        """``stage:production team:fraud resnet``: tag filters AND words, newest first."""
        _check_query(query)
        _check_limit(limit)
        with _query_errors():
            return [Artifact.from_record(r) for r in self._engine.search(query, limit=limit)]

    def find_by_content(self, content_id: str, limit: int = 100) -> builtins.list[Artifact]:
        """Artifacts whose content is ``content_id`` (a blob's ``b3sum``, or a tree id),
        newest first: where the same bytes were saved."""
        parse_id(content_id)
        _check_limit(limit)
        with _query_errors():
            found = self._engine.by_content(content_id, limit=limit)
        return [Artifact.from_record(r) for r in found]

    def tag(self, artifact_id: str, **tags: str | None) -> None:
        """Set tags (a value of None removes the tag); durable, last writer wins.

        Checked before they are journaled, by the rule ``save`` applies to its tags: a
        key that is empty, holds NUL or is longer than 256 bytes, or a value that is not
        a str (numbers and bools become their text), raises
        :class:`~cas.errors.InvalidInput` and sets nothing."""
        clean = check_tags(tags)
        rid = self._resolve(artifact_id)
        if not clean:
            return
        self._repo.tag(rid, clean)

    def delete(self, artifact_id: str) -> bool:
        """Remove an artifact from the catalog (and its name, if it still points here)."""
        try:
            rid, name = self._resolve_named(artifact_id)
        except KeyError:
            return False
        self._repo.delete(rid, name or self._repo.record(rid, tags=False).get("name"))
        return True

    def get_lineage(
        self, artifact_id: str, depth: int | None = 1
    ) -> dict[str, builtins.list[Artifact]]:
        """Parents and children; ``depth=None`` follows them all the way (cycle safe)."""
        _check_depth(depth)
        rid = self._resolve(artifact_id)
        found = self._engine.lineage(rid, depth=depth)
        return {
            side: [a for a in (self.get(i) for i in found[side]) if a is not None]
            for side in ("parents", "children")
        }

    def lineage_graph(
        self, artifact_id: str, format: str = "mermaid", depth: int | None = None
    ) -> str:
        _check_depth(depth)
        if format not in ("mermaid", "dot"):
            raise InvalidInput("format", f"must be 'mermaid' or 'dot', got {shown(format)}")
        rid = self._resolve(artifact_id)
        return self._engine.lineage_graph(rid, format=format, depth=depth)
