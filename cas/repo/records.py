"""The artifact record: like a git commit, it names content and says where it came from.

A record is a ``record`` object (canonical msgpack, BLAKE3 derive-key id): its id is the
artifact id users pass around. Fields (all present, ``None`` where unknown)::

    format          1 (a record of a newer format is refused with a clear error)
    name            the name it was saved under ("models/fraud")
    artifact_type   "model", "dataset", ... (the materializer's default if not given)
    materializer    how to turn the content back into a value ("bytes", "numpy", ...)
    content_id      the content's id (a blob: its b3sum; a folder: a tree id); None for
                    a metadata-only registration
    content_kind    "blob" | "tree" | None
    size            bytes of the serialized content
    parent_ids      artifact ids this one was made from (lineage)
    source_project, source_pipeline, source_run_id, source_step
    metadata        user metadata (msgpack-able values)
    tags            tags given at save time (later tags are catalog events)
    created_at      "YYYY-MM-DDTHH:MM:SS.ffffffZ", UTC: string order is time order
    content_info    what the materializer needs back (a file's name and mode), or None
"""

from __future__ import annotations

import datetime as _dt
from typing import Any, Final

from cas.errors import FormatError, IntegrityError
from catalog.errors import InvalidInput
from catalog.record import normalize

RECORD_FORMAT: Final = 1

FIELDS: Final = (
    "format", "name", "artifact_type", "materializer", "content_id", "content_kind", "size",
    "parent_ids", "source_project", "source_pipeline", "source_run_id", "source_step",
    "metadata", "tags", "created_at", "content_info",
)  # fmt: skip


def utc_now() -> str:
    """The current time in the record format (fixed width, sortable)."""
    return format_time(_dt.datetime.now(_dt.timezone.utc))


def format_time(moment: _dt.datetime) -> str:
    return moment.astimezone(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_time(text: str) -> float:
    """Seconds since the epoch of a record timestamp."""
    moment = _dt.datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ")
    return moment.replace(tzinfo=_dt.timezone.utc).timestamp()


def make_record(**fields: Any) -> dict[str, Any]:
    """A complete record: every field present, unknown ones refused."""
    unknown = set(fields) - set(FIELDS)
    if unknown:
        raise TypeError(f"unknown record fields: {sorted(unknown)}")
    record: dict[str, Any] = {name: None for name in FIELDS}
    record.update(fields)
    record["format"] = RECORD_FORMAT
    record["parent_ids"] = list(record["parent_ids"] or [])
    record["metadata"] = dict(record["metadata"] or {})
    record["tags"] = {str(k): str(v) for k, v in (record["tags"] or {}).items()}
    record["created_at"] = record["created_at"] or utc_now()
    return record


def check_record(oid: str, value: Any) -> dict[str, Any]:
    """A decoded record object, checked for a format this version reads and for fields
    of the right types: a record that hashes right but holds anything else (a buggy or
    hostile writer of a shared bucket) is an ``IntegrityError`` naming it, never a
    ``TypeError`` somewhere later."""
    if not isinstance(value, dict) or "format" not in value:
        raise IntegrityError(oid, f"object {oid} is not an artifact record; run 'cas fsck'")
    if value["format"] != RECORD_FORMAT:
        if isinstance(value["format"], int) and value["format"] > RECORD_FORMAT:
            raise FormatError(
                f"artifact {oid} was written by a newer cas (record format {value['format']}; "
                f"this cas reads {RECORD_FORMAT}): upgrade cas to load it"
            )
        raise IntegrityError(
            oid,
            f"artifact record {oid} has no valid format ({value['format']!r:.40}); run 'cas fsck'",
        )
    problem = _field_problem(value)
    if problem is None:
        try:
            normalize({**value, "id": oid})
        except InvalidInput as exc:
            problem = str(exc)
    if problem is not None:
        raise IntegrityError(oid, f"artifact record {oid} is malformed: {problem}; run 'cas fsck'")
    return value


def _field_problem(value: dict[str, Any]) -> str | None:
    """What the catalog does not check but loading needs."""
    if not isinstance(value.get("materializer"), (str, type(None))):
        return f"materializer must be a string, got {value.get('materializer')!r:.40}"
    if value.get("content_id") is not None and value.get("materializer") is None:
        return "content without a materializer"
    if value.get("content_kind") not in ("blob", "tree", None):
        return f"content_kind must be 'blob', 'tree' or None, got {value.get('content_kind')!r:.40}"
    if value.get("content_kind") is None and value.get("content_id") is not None:
        return "content_id without a content_kind"
    if not isinstance(value.get("content_info"), (dict, type(None))):
        return "content_info must be a mapping or None"
    if not isinstance(value.get("metadata"), (dict, type(None))):
        return "metadata must be a mapping or None"
    return None
