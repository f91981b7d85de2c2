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

Every record is checked twice by the same rules: by :func:`make_record`, before anything
is written (a refused save raises :class:`~cas.errors.InvalidInput` naming the argument
and leaves the store as it was), and by :func:`check_record` on every read (a record
that hashes right but breaks them was written by something else: an ``IntegrityError``).
:func:`check_new_record` runs the checks on a save's arguments before its content is
stored, so a save refused for its tags does not even leave an unreferenced blob.
"""

from __future__ import annotations

import datetime as _dt
import math
from collections.abc import Mapping, Sequence
from typing import Any, Final

from cas.catalog.errors import InvalidInput as CatalogInvalid
from cas.catalog.record import MAX_NAME_BYTES, MAX_PARENTS, check_tag_key, normalize, utf8
from cas.errors import FormatError, IntegrityError, InvalidInput, shown
from cas.objects.kinds import pack
from cas.repo.names import check_name

RECORD_FORMAT: Final = 1

#: How deep metadata may nest (a dict or list inside another counts one level).
MAX_METADATA_DEPTH: Final = 100
#: Bytes of a record's metadata, packed: a record is read whole by every listing.
MAX_METADATA_BYTES: Final = 1 << 20

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


SOURCES: Final = ("source_project", "source_pipeline", "source_run_id", "source_step")

# Stands in for ids not known yet when a save's arguments are checked.
_PLACEHOLDER: Final = "0" * 64


def make_record(**fields: Any) -> dict[str, Any]:
    """A complete, checked record: every field present, unknown ones refused (a
    ``TypeError``: the caller's bug). Every value is checked by the rules the catalog
    and a later load apply (:func:`check_record`), so the record is one the store can
    index and read back; one that breaks a rule raises :class:`InvalidInput` naming the
    argument, before anything is written. Tag values that are numbers or bools become
    their text, as they always did; metadata is copied into a dict."""
    unknown = set(fields) - set(FIELDS)
    if unknown:
        raise TypeError(f"unknown record fields: {sorted(unknown)}")
    record: dict[str, Any] = {name: None for name in FIELDS}
    record.update(fields)
    record["format"] = RECORD_FORMAT
    record["parent_ids"] = _parent_list(record["parent_ids"])
    record["metadata"] = _metadata(record["metadata"])
    record["tags"] = _tags(record["tags"])
    record["created_at"] = record["created_at"] or utc_now()
    _check_new(record)
    return record


def check_new_record(
    name: object,
    *,
    prefix: str = "",
    artifact_type: object = None,
    parent_ids: object = (),
    metadata: object = None,
    tags: object = None,
    source_project: object = None,
    source_pipeline: object = None,
    source_run_id: object = None,
    source_step: object = None,
) -> list[str]:
    """Refuse the arguments of a save before anything is written, content included:
    what :func:`make_record` would refuse once the content is stored. ``name`` is saved
    as ``prefix + name``; ``parent_ids`` are names or ids (resolved later: here only
    their shape is checked); ``artifact_type`` None or ``""`` means the materializer's.
    Returns the parents as a list (None: no parents). Raises :class:`InvalidInput` (or
    :class:`~cas.errors.InvalidRefName`)."""
    check_name(name)  # type: ignore[arg-type]  # refuses a non-str too
    parents = _parent_list(parent_ids)
    for parent in parents:
        if not isinstance(parent, str):
            raise InvalidInput(
                "parent_ids", f"each parent is an artifact name or id, got {shown(parent)}"
            )
    make_record(
        name=prefix + str(name),
        artifact_type="artifact" if artifact_type in (None, "") else artifact_type,
        materializer="bytes",
        content_id=_PLACEHOLDER,
        content_kind="blob",
        size=0,
        metadata=metadata,
        tags=tags,
        source_project=source_project,
        source_pipeline=source_pipeline,
        source_run_id=source_run_id,
        source_step=source_step,
    )
    return parents


def check_tags(tags: Mapping[Any, object]) -> dict[str, str | None]:
    """Tags a ``tag`` call would set (``None`` removes one), by the rule a save applies
    to its tags (numbers and bools become their text): returned ready to journal, or
    :class:`InvalidInput` before anything is."""
    out: dict[str, str | None] = {}
    for key, value in tags.items():
        _check_tag_key(key)
        out[key] = None if value is None else _tag_value(key, value)
    return out


def _parent_list(value: object) -> list[Any]:
    if value is None:
        return []
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise InvalidInput(
            "parent_ids", f"must be a list of artifact ids, not {type(value).__name__}"
        )
    if len(value) > MAX_PARENTS:
        raise InvalidInput("parent_ids", f"at most {MAX_PARENTS} parents, got {len(value)}")
    return list(value)


def _metadata(value: object) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise InvalidInput("metadata", f"must be a dict, not {type(value).__name__}")
    check_metadata(value)
    out = dict(value)
    try:
        size = len(pack(out))
    except (TypeError, ValueError, OverflowError) as exc:  # what the walk let through
        raise InvalidInput("metadata", f"cannot be stored ({exc})") from None
    if size > MAX_METADATA_BYTES:
        raise InvalidInput(
            "metadata",
            f"is {size} bytes packed, more than {MAX_METADATA_BYTES}: save large values as "
            "an artifact of their own and put its id in the metadata",
        )
    return out


def check_metadata(value: Mapping[Any, Any]) -> None:
    """The one rule for metadata, applied before anything is written: keys are ``str``
    at every depth; values are None, bool, int (64-bit), finite float, str (UTF-8),
    bytes, or lists, tuples and dicts of them, at most :data:`MAX_METADATA_DEPTH` deep
    and without cycles: what msgpack stores and JSON shows (bytes as ``$base64``).
    A value that breaks it raises :class:`InvalidInput` naming its key path:
    ``metadata['a'][3]: NaN cannot be stored as JSON``."""
    _check_value(value, "metadata", 0, [])


def _check_value(value: object, where: str, depth: int, open_: list[int]) -> None:
    if value is None or isinstance(value, bool):
        return
    if isinstance(value, int):
        if not -(2**63) <= value < 2**64:
            raise _refused(where, f"{value} does not fit in 64 bits (store it as a str)")
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            text = "NaN" if math.isnan(value) else repr(value)
            raise _refused(where, f"{text} cannot be stored as JSON (store None or a str)")
        return
    if isinstance(value, str):
        if utf8(value) is None:
            raise _refused(where, "a str with a lone surrogate is not UTF-8 text")
        return
    if isinstance(value, (bytes, bytearray, memoryview)):
        return
    if not isinstance(value, (Mapping, list, tuple)):
        raise _refused(
            where,
            f"a {type(value).__name__} cannot be stored: use None, bool, int, float, str, bytes, "
            "lists and dicts with str keys",
        )
    if depth >= MAX_METADATA_DEPTH:
        raise _refused(where, f"nested more than {MAX_METADATA_DEPTH} levels deep")
    if id(value) in open_:
        raise _refused(where, "holds itself (a cycle) and cannot be stored")
    open_.append(id(value))
    if isinstance(value, Mapping):
        for key, item in value.items():
            if not isinstance(key, str):
                raise _refused(
                    f"{where}[{shown(key)}]",
                    f"keys must be str, not {type(key).__name__} (JSON and the catalog "
                    "read str keys only)",
                )
            _check_value(item, f"{where}[{shown(key)}]", depth + 1, open_)
    else:
        for i, item in enumerate(value):
            _check_value(item, f"{where}[{i}]", depth + 1, open_)
    open_.pop()


def _refused(where: str, rule: str) -> InvalidInput:
    return InvalidInput("metadata", f"{where}: {rule}")


def _tags(value: object) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise InvalidInput("tags", f"must be a mapping of str to str, not {type(value).__name__}")
    out: dict[str, str] = {}
    for key, tag in value.items():
        _check_tag_key(key)
        out[key] = _tag_value(key, tag)
    return out


def _tag_value(key: str, tag: object) -> str:
    if isinstance(tag, (bool, int, float)):
        tag = str(tag)  # as make_record always did
    if not isinstance(tag, str) or utf8(tag) is None:
        raise InvalidInput("tags", f"tag {key!r} must have a str value, got {shown(tag)}")
    return tag


def _check_tag_key(key: object) -> None:
    try:
        check_tag_key(key)
    except CatalogInvalid as exc:
        raise InvalidInput("tags", str(exc)) from None


def _check_text(argument: str, value: object, *, optional: bool = False) -> None:
    """A str of UTF-8 text without NUL, non-empty, within the catalog's key limit."""
    if value is None and optional:
        return
    if not isinstance(value, str) or not value or "\0" in value:
        kind = "None or " if optional else ""
        raise InvalidInput(
            argument, f"must be {kind}a non-empty str without NUL, got {shown(value)}"
        )
    raw = utf8(value)
    if raw is None:
        raise InvalidInput(argument, "must be UTF-8 text (it holds a lone surrogate)")
    if len(raw) > MAX_NAME_BYTES:
        raise InvalidInput(argument, f"at most {MAX_NAME_BYTES} bytes in UTF-8, got {len(raw)}")


def _check_new(record: dict[str, Any]) -> None:
    """Every rule :func:`check_record` applies on read, on a record about to be written."""
    check_name(record["name"])
    _check_text("name", record["name"])
    _check_text("artifact_type", record["artifact_type"])
    for field in SOURCES:
        _check_text(field, record[field], optional=True)
    for parent in record["parent_ids"]:
        if not isinstance(parent, str) or len(parent) != 64 or parent.strip("0123456789abcdef"):
            raise InvalidInput(
                "parent_ids", f"each parent is a 64-hex artifact id, got {shown(parent, 70)}"
            )
    problem = _field_problem(record)
    if problem is not None:
        raise InvalidInput("content" if "content" in problem else "record", problem)
    try:
        pack(record)  # as the record object is written
    except (TypeError, ValueError, OverflowError, RecursionError) as exc:
        raise InvalidInput(
            "metadata",
            f"must hold only str, int (64-bit), float, bool, None, bytes, lists and dicts "
            f"with keys of one type ({type(exc).__name__}: {exc})",
        ) from None
    try:
        normalize({**record, "id": _PLACEHOLDER})
    except CatalogInvalid as exc:
        message = str(exc).replace(f"record {_PLACEHOLDER}: ", "")
        raise InvalidInput("record", message) from None


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
            f"artifact record {oid} has no valid format ({shown(value['format'])}); run 'cas fsck'",
        )
    problem = _field_problem(value)
    if problem is None:
        try:
            normalize({**value, "id": oid})
        except CatalogInvalid as exc:
            problem = str(exc)
    if problem is not None:
        raise IntegrityError(oid, f"artifact record {oid} is malformed: {problem}; run 'cas fsck'")
    return value


def _field_problem(value: dict[str, Any]) -> str | None:
    """What the catalog does not check but loading needs."""
    if not isinstance(value.get("materializer"), (str, type(None))):
        return f"materializer must be a string, got {shown(value.get('materializer'))}"
    if value.get("content_id") is not None and value.get("materializer") is None:
        return "content without a materializer"
    if value.get("content_kind") not in ("blob", "tree", None):
        return (
            f"content_kind must be 'blob', 'tree' or None, got {shown(value.get('content_kind'))}"
        )
    if value.get("content_kind") is None and value.get("content_id") is not None:
        return "content_id without a content_kind"
    if not isinstance(value.get("content_info"), (dict, type(None))):
        return "content_info must be a mapping or None"
    if not isinstance(value.get("metadata"), (dict, type(None))):
        return "metadata must be a mapping or None"
    return _key_problem(value.get("metadata"))


def _key_problem(metadata: object) -> str | None:
    """A metadata key that is not a str, at any depth (an older cas stored them): the
    catalog, JSON and ``get_metadata`` read str keys only."""
    stack: list[tuple[object, str]] = [(metadata, "metadata")]
    while stack:
        value, where = stack.pop()
        if isinstance(value, dict):
            for key, item in value.items():
                if not isinstance(key, str):
                    return f"{where} has a key that is not a str ({shown(key)})"
                stack.append((item, f"{where}[{shown(key)}]"))
        elif isinstance(value, list):
            stack.extend((item, f"{where}[{i}]") for i, item in enumerate(value))
    return None
