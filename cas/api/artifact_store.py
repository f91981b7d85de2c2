"""ArtifactStore: save, load and manage artifacts by name or id.

One implementation for every root; the cloud classes only build the URL. A thin face
over :class:`cas.repo.repository.Repository`: a save turns a value into content
(materializers), builds a record, and commits it there.
"""

from __future__ import annotations

import contextlib
import functools
import io
import logging
import os
import threading
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, BinaryIO

from cas import refs as _refs
from cas.api.artifact_catalog import ArtifactCatalog
from cas.api.materializers import LoadContext, materializer_for, materializer_named
from cas.errors import (
    CasError,
    IntegrityError,
    InvalidInput,
    IsAFolder,
    ObjectNotFound,
    RefConflict,
)
from cas.objects.ids import ObjectId, is_id
from cas.objects.kinds import MODE_FILE, MODE_LINK
from cas.objects.space import ObjectSpace
from cas.objects.trees import find_entry, read_tree
from cas.repo.journal import Journal
from cas.repo.kin import nearest_version
from cas.repo.local_catalog import LocalCatalog
from cas.repo.names import check_name
from cas.repo.records import check_new_record, make_record
from cas.repo.repository import UNREAD, Repository
from cas.repo.repository import validate_root as _validate_root
from cas.storage import Storage
from cas.storage.cache import cache_root

RUNS_PREFIX = "runs"
#: Bytes or text up to this size saved on an object store under a name this machine
#: does not know are written while the name is read (``ArtifactStore._read_beside``).
READ_BESIDE_MAX = 1 << 20


@contextlib.contextmanager
def naming_artifact(label: str) -> Iterator[None]:
    """An :class:`IntegrityError` raised in the block names the artifact (``label``:
    ``"NAME (ID)"``) as well as the object, once."""
    try:
        yield
    except IntegrityError as exc:
        if label in str(exc):
            raise
        raise IntegrityError(exc.object_id, f"{exc}; it belongs to artifact {label}") from exc


class ArtifactStore:
    """A store of artifacts at one root URL (a folder, ``memory://``, ``s3://``, ...).

    ``allow_pickle=False`` (the default) refuses to save or load pickles: loading one runs
    whatever code it holds. ``fsync=True`` makes every write durable before it is visible.
    ``name_prefix`` (the cloud classes' prefix templates: ``"2026-11-23/"``) is put before
    every name this store saves, loads, lists or deletes; ids, the catalog and the objects
    are the whole root's. ``deltas=False`` stores every new object whole (no delta on a
    previous version): a save on a bucket then reads no old content, at the cost of
    storing each version in full; what is stored as deltas already reads as before.
    """

    def __init__(
        self,
        url: str | os.PathLike[str] = ".cas",
        *,
        allow_pickle: bool = False,
        fsync: bool = True,
        create: bool = True,
        name_prefix: str = "",
        deltas: bool = True,
        **storage_options: Any,
    ) -> None:
        self.allow_pickle = allow_pickle
        self.name_prefix = name_prefix
        self.repo = Repository(url, fsync=fsync, create=create, **storage_options)
        self.repo.space.deltas = deltas
        self.catalog = ArtifactCatalog(self)
        self._batches = threading.local()  # this thread's open batch: records to publish

    # -- the repository's parts (for tools and tests; users need none of them) --------

    @property
    def storage(self) -> Storage:
        return self.repo.storage

    @property
    def space(self) -> ObjectSpace:
        return self.repo.space

    @property
    def refs(self) -> _refs.RefStore:
        """The refs package's store of this root (its errors are the refs package's)."""
        return self.repo.names.store

    @property
    def journal(self) -> Journal:
        return self.repo.journal

    @property
    def index(self) -> LocalCatalog:
        return self.repo.index

    @property
    def url(self) -> str:
        return self.repo.url

    @property
    def base_path(self) -> str:
        return self.repo.url

    def close(self) -> None:
        self.repo.close()

    def __enter__(self) -> ArtifactStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.url!r})"

    def check_name(self, name: str) -> str:
        return check_name(name)

    def resolve(self, name_or_id: str) -> tuple[ObjectId, str | None]:
        """(record id, the full name it was reached by, or None for an id)."""
        return self.repo.resolve(name_or_id, prefix=self.name_prefix)

    def lookup(
        self, name_or_id: str, *, tags: bool = True
    ) -> tuple[ObjectId, str | None, dict[str, Any]]:
        """(record id, the name it was reached by or None, the record; ``tags=False``:
        as saved, enough to read content, see :meth:`Repository.record`)."""
        return self.repo.lookup(name_or_id, prefix=self.name_prefix, tags=tags)

    def record(self, rid: str, *, tags: bool = True) -> dict[str, Any]:
        return self.repo.record(rid, tags=tags)

    def commit(
        self,
        record: dict[str, Any],
        *,
        current: Any = UNREAD,
        checked: bool = False,
        written: ObjectId | None = None,
    ) -> ObjectId:
        """Commit a record under ``name_prefix + record["name"]`` (inside :meth:`batch`,
        its name is published when the batch ends). ``current``: what the name held,
        when the caller has just read it (``checked``: with a check as a new name);
        ``written``: the id of the record object, written already (not in a batch)."""
        full = self._named(record)
        deferred: list[tuple[ObjectId, dict[str, Any]]] | None = getattr(
            self._batches, "items", None
        )
        if deferred is None:
            return self.repo.commit(full, current=current, checked=checked, written=written)
        rid, new = self.repo.prepare(full, current=current, checked=checked)
        if new:
            deferred.append((rid, full))
        return rid

    def _named(self, record: dict[str, Any]) -> dict[str, Any]:
        """``record`` under its name in the root: ``name_prefix`` + its name."""
        return {**record, "name": self.name_prefix + record["name"]}

    @contextlib.contextmanager
    def batch(self) -> Iterator[ArtifactStore]:
        """Saves in the block (on this thread) are written together and made durable
        at one sync point when it ends; their names are published after it, in order.
        Each save returns its id at once, and what it wrote is readable by id inside
        the block; its name moves only at the end. If the block raises, no name moves
        (what was written is collected by gc). Nested blocks join the outermost.

            with store.batch():
                for i, row in enumerate(rows):
                    store.save(row, f"rows/{i}")
        """
        if getattr(self._batches, "items", None) is not None:
            yield self
            return
        items: list[tuple[ObjectId, dict[str, Any]]] = []
        self._batches.items = items
        try:
            with self.space.batch():
                yield self
                self._batches.items = None
                self.repo.publish(items)
        finally:
            self._batches.items = None

    def save_many(
        self,
        items: Iterable[tuple[Any, str]],
        metadata: dict[str, Any] | None = None,
    ) -> list[str]:
        """Save each (value, name) in one :meth:`batch`; return their ids, in order."""
        with self.batch():
            return [self.save(value, name, metadata) for value, name in items]

    # -- the public API ---------------------------------------------------------------

    def save(
        self,
        obj: Any,
        path: str,
        metadata: dict[str, Any] | None = None,
        parent_ids: Sequence[str] | None = (),
        *,
        artifact_type: str | None = None,
        tags: dict[str, str] | None = None,
        source_project: str | None = None,
        source_pipeline: str | None = None,
        source_run_id: str | None = None,
        source_step: str | None = None,
    ) -> str:
        """Save ``obj`` under the name ``path``; return the artifact (record) id.
        ``parent_ids``: names or ids of the artifacts it was made from (None: none)."""
        # Every argument is checked before anything (the content included) is written.
        given_parents = check_new_record(
            path, prefix=self.name_prefix, artifact_type=artifact_type, parent_ids=parent_ids,
            metadata=metadata, tags=tags, source_project=source_project,
            source_pipeline=source_pipeline, source_run_id=source_run_id, source_step=source_step,
        )  # fmt: skip
        self.check_name(path)
        parents = [self.resolve(p)[0] for p in given_parents]
        materializer = materializer_for(obj, allow_pickle=self.allow_pickle)
        name = self.name_prefix + path
        folder = isinstance(obj, os.PathLike) and Path(obj).is_dir()
        # The version the name holds now lends its content as delta bases (a hint
        # only: if it does not read, the new version is stored without them).
        previous: str | None = None
        current: Any = UNREAD
        checked = False  # the read checked it as a new name too
        beside = self._read_beside(obj, name)
        if beside:  # the version as this machine knows it: read beside the writes
            previous = self._known_content(name)
        else:
            try:
                current, checked = self.repo.read_for_save(name)
                if current is not None:
                    previous = self.repo.record(current, tags=False).get("content_id")
            except RefConflict:
                raise  # a new name refused by a name above or below it: nothing written
            except CasError:
                previous = None
        if previous is None and (beside or current is not UNREAD):  # its kin's
            pending = getattr(self._batches, "items", None) or ()
            previous = nearest_version(self.repo, name, parents, materializer.name, folder, pending)
        # Content and record go in one write and one sync (a folder: a few packs).
        with self.space.batch() as held, self.space.bases_from(previous):
            stored = materializer.save(obj, self.space)
            record = self._record(
                path, artifact_type or materializer.artifact_type,
                materializer.name, stored, parents, metadata, tags,
                (source_project, source_pipeline, source_run_id, source_step),
            )  # fmt: skip
            written = None
            if beside:
                written = self.space.put_value("record", self._named(record))
                current, checked = self._read_writing(held, name)
            return str(self.commit(record, current=current, checked=checked, written=written))

    def _read_beside(self, obj: Any, name: str) -> bool:
        """On an object store, whether ``name`` is read while the content and record
        are written (one round trip for both, not one after the other): when what it
        builds on needs no read of the name first, for a name this machine's catalog
        knows (its version there is the delta base), or a value too small for a base
        to matter (bytes or text up to :data:`READ_BESIDE_MAX`). Not inside a batch,
        which writes once, at its end."""
        if (
            self.repo.storage.local_dir is not None
            or getattr(self._batches, "items", None) is not None
        ):
            return False
        if isinstance(obj, (bytes, bytearray, memoryview, str)) and len(obj) <= READ_BESIDE_MAX:
            return True
        return self.repo.known_name([name]) is not None

    def _known_content(self, name: str) -> str | None:
        """The content id of ``name``'s newest version in this machine's catalog as it
        is (no request), or None."""
        catalog = self.repo.catalog_at_hand()
        if catalog is None:
            return None
        try:
            newest = catalog.list(name=name, limit=1)
        except CasError:
            return None
        return newest[0].get("content_id") if newest else None

    def _read_writing(self, held: Any, name: str) -> tuple[str | None, bool]:
        """``repo.read_for_save(name)`` while the batch ``held`` (the content and the
        record) is written, on a thread of its own. A name refused now leaves the
        objects for gc: nothing names them."""
        with ThreadPoolExecutor(1, thread_name_prefix="cas-write") as pool:
            writing = pool.submit(held.flush, durable=False)
            try:
                return self.repo.read_for_save(name)
            finally:
                writing.result()

    def _record(
        self,
        path: str,
        artifact_type: str,
        materializer: str,
        stored: Any,
        parents: list[ObjectId],
        metadata: dict[str, Any] | None,
        tags: dict[str, str] | None,
        source: tuple[str | None, str | None, str | None, str | None],
    ) -> dict[str, Any]:
        source_project, source_pipeline, source_run_id, source_step = source
        return make_record(
            name=path,
            artifact_type=artifact_type,
            materializer=materializer,
            content_id=stored.content_id,
            content_kind=stored.content_kind,
            content_info=stored.info,
            size=stored.size,
            parent_ids=parents,
            metadata=metadata,
            tags=tags,
            source_project=source_project,
            source_pipeline=source_pipeline,
            source_run_id=source_run_id,
            source_step=source_step,
        )

    def load(self, name_or_id: str, *, dest: str | os.PathLike[str] | None = None) -> Any:
        """The value saved under a name or id, verified; ``dest`` places files and folders."""
        rid, name, record = self.lookup(name_or_id, tags=False)
        if record.get("content_id") is None:
            raise ObjectNotFound(rid, f"artifact {name or rid} was registered without data")
        materializer = materializer_named(record["materializer"])
        ctx = LoadContext(
            space=self.space,
            content_id=ObjectId(record["content_id"]),
            info=dict(record.get("content_info") or {}),
            dest=Path(dest) if dest is not None else None,
            cache_dir=self._checkouts,
            allow_pickle=self.allow_pickle,
        )
        label = f"{record['name']} ({rid})"
        try:
            with naming_artifact(label):
                return materializer.load(ctx)
        except ObjectNotFound as exc:
            raise ObjectNotFound(
                exc.what, f"{exc}; artifact {label} is missing content: run 'cas fsck'"
            ) from exc

    @functools.cached_property
    def _checkouts(self) -> Path:
        """The checkout cache, found once: platformdirs is a tenth of a small load."""
        return cache_root() / "checkouts"

    def open(self, name_or_id: str, path: str | None = None) -> BinaryIO:
        """A binary stream of an artifact's content, verified as it is read (each chunk,
        then the whole); ``path`` picks one file of a folder artifact, reading only that
        file's objects. Constant memory however large the content is."""
        rid, name, record = self.lookup(name_or_id, tags=False)
        content = record.get("content_id")
        label = record["name"]
        if content is None:
            raise ObjectNotFound(rid, f"artifact {label} ({rid}) was registered without data")
        if path is None or path.strip("/") == "":
            if record.get("content_kind") == "tree":
                raise IsAFolder(
                    label, f"artifact {label} is a folder: pass path= to open a file in it"
                )
            return self.space.open(content)
        if record.get("content_kind") != "tree":
            raise ObjectNotFound(
                path, f"artifact {label} is a single file, not a folder: it has no {path!r}"
            )
        entry = find_entry(self.space, content, path, label)
        if entry.is_dir:
            raise IsAFolder(path, f"{path!r} in artifact {label} is a folder, not a file")
        if entry.mode == MODE_LINK:
            return io.BytesIO(self.space.get(entry.id))
        return self.space.open(entry.id)

    def list_files(self, name_or_id: str, path: str = "") -> list[dict[str, Any]]:
        """The entries of a folder artifact (``path``: a subfolder), one level:
        ``{"name", "path", "type": "file" | "directory" | "link", "mode", "id", "size"}``;
        a size is the file's bytes (None for a folder). A file artifact lists itself."""
        rid, name, record = self.lookup(name_or_id, tags=False)
        content = record.get("content_id")
        label = record["name"]
        if content is None:
            return []
        if record.get("content_kind") != "tree":
            if path.strip("/"):
                raise ObjectNotFound(path, f"artifact {label} is a single file, not a folder")
            filename = str(
                (record.get("content_info") or {}).get("filename") or label.rsplit("/", 1)[-1]
            )
            return [{"name": filename, "path": filename, "type": "file", "mode": MODE_FILE,
                     "id": content, "size": int(record.get("size") or 0)}]  # fmt: skip
        tree_id = content
        prefix = path.strip("/")
        if prefix:
            entry = find_entry(self.space, content, prefix, label)
            if not entry.is_dir:
                raise ObjectNotFound(path, f"{path!r} in artifact {label} is a file, not a folder")
            tree_id = entry.id
        out = []
        for entry in read_tree(self.space, tree_id).entries:
            kind = "directory" if entry.is_dir else "link" if entry.mode == MODE_LINK else "file"
            out.append({
                "name": entry.name, "path": f"{prefix}/{entry.name}" if prefix else entry.name,
                "type": kind, "mode": entry.mode, "id": entry.id,
                "size": None if entry.is_dir else self.space.size(entry.id),
            })  # fmt: skip
        return out

    def history(self, name: str) -> list[dict[str, Any]]:
        """Every update of a name, newest first: ``{"time", "who", "old", "new", "message"}``
        (``old``/``new``: artifact ids, None for absent; ``new`` None is a delete)."""
        entries = self.repo.names.log(check_name(self.name_prefix + check_name(name)))
        return [
            {"time": e.time, "who": e.who, "old": e.old, "new": e.new, "message": e.message}
            for e in entries
        ]

    def set_name(self, name: str, name_or_id: str, *, expected: Any = _refs.ANY) -> str:
        """Point ``name`` at an existing artifact (a name or id), as git's ``update-ref``
        does: by compare-and-swap (``expected``: the id the name must hold now, None: no
        such name) with a history entry; undoes a ``delete`` given the id from
        :meth:`history`. Returns the id the name then holds: the artifact's own if it
        is a version of ``name``, else a new record with its content, type, metadata,
        parents, source and tags (the catalog knows an artifact by its name)."""
        self.check_name(name)
        try:
            rid = self.resolve(name_or_id)[0]
        except ObjectNotFound:
            if not is_id(name_or_id):
                raise
            rid = ObjectId(name_or_id)  # not a record: point() says what it is
        return str(self.repo.point(self.name_prefix + name, rid, expected=expected))

    def exists(self, name_or_id: str) -> bool:
        try:
            self.resolve(name_or_id)
        except ObjectNotFound:
            return False
        return True

    def size(self, name_or_id: str) -> int:
        """Bytes of the artifact's serialized content."""
        return int(self.lookup(name_or_id, tags=False)[2]["size"] or 0)

    def get_metadata(self, name_or_id: str) -> dict[str, Any]:
        rid, _, record = self.lookup(name_or_id)
        damage = self.index.damage_of(rid)
        if damage:
            stamp, why = damage[0]
            raise IntegrityError(
                stamp,
                f"artifact {record['name']} ({rid}): its catalog journal entry {stamp} cannot "
                f"be read, so its tags may be incomplete ({why})",
            )
        return {
            "id": rid,
            "name": record["name"],
            "content_id": record["content_id"],
            "size": record["size"],
            "type": record["artifact_type"],
            "artifact_type": record["artifact_type"],
            "materializer": record["materializer"],
            "created_at": record["created_at"],
            "metadata": dict(record.get("metadata") or {}),
            "tags": dict(record.get("tags") or {}),
            "parent_ids": list(record.get("parent_ids") or []),
            "source_project": record.get("source_project"),
            "source_pipeline": record.get("source_pipeline"),
            "source_run_id": record.get("source_run_id"),
            "source_step": record.get("source_step"),
        }

    def list_artifacts(self, prefix: str = "") -> list[str]:
        """Names (sorted) starting with ``prefix``."""
        if not isinstance(prefix, str):
            raise InvalidInput("prefix", f"must be a str, got {type(prefix).__name__}")
        names = self.repo.names.list(self.name_prefix + prefix)
        return [name[len(self.name_prefix) :] for name in names]

    def delete(self, name_or_id: str) -> None:
        """Remove a name and its record from the catalog. The content stays until gc
        finds it unreachable (after the retention period, as with ref history)."""
        rid, name = self.resolve(name_or_id)
        if name is None:
            name = self.record(rid).get("name")
        self.repo.delete(rid, name)

    def materialize(
        self, obj: Any, name: str, run_id: str, step_name: str, project_name: str = "default"
    ) -> str:
        """Save ``obj`` as the output of one pipeline step; return the name
        ``runs/<project>/<run_id>/<step>/<name>``, which ``load`` accepts."""
        given = (("project_name", project_name), ("run_id", run_id),
                 ("step_name", step_name), ("name", name))  # fmt: skip
        for argument, value in given:
            if not isinstance(value, str):
                raise InvalidInput(argument, f"must be a str, got {type(value).__name__}")
        full = f"{RUNS_PREFIX}/{project_name}/{run_id}/{step_name}/{name}"
        self.check_name(full)
        self.save(
            obj, full, source_project=project_name, source_run_id=run_id, source_step=step_name
        )
        return full

    # -- maintenance ------------------------------------------------------------------

    def sync(self, *, full: bool = False) -> int:
        """Bring the local catalog up to date with the journal; return entries read."""
        return self.repo.sync(full=full)

    def reindex(self) -> dict[str, Any]:
        """Rebuild the catalog from the object space; report what changed."""
        return self.repo.reindex()

    def to_dict(self) -> dict[str, Any]:
        return {"type": type(self).__name__, "url": self.url, "allow_pickle": self.allow_pickle}

    def validate(self, raise_errors: bool = False) -> bool:
        """Check, writing nothing, that the root is reachable, the credentials work and it
        is a cas store or empty: True, else False with the reason logged (``cas`` logger)."""
        return validate_root(self.storage, raise_errors=raise_errors)


class LocalArtifactStore(ArtifactStore):
    """A store in a local folder (``base_path``, default ``./.cas``)."""

    def __init__(self, base_path: str | os.PathLike[str] = ".cas", **options: Any) -> None:
        super().__init__(base_path, **options)


def validate_root(storage: Storage, *, raise_errors: bool = False) -> bool:
    """What :meth:`ArtifactStore.validate` checks, on a storage no store was opened on:
    one listing, and a read of the CAS marker if the root holds files. Nothing is written."""
    try:
        _validate_root(storage)
    except (CasError, OSError) as exc:  # BackendError: missing bucket, credentials, network
        if raise_errors:
            raise
        logging.getLogger("cas").warning("%s cannot be used: %s", storage.url, exc)
        return False
    return True


def open_store(url: str | os.PathLike[str] = ".cas", **options: Any) -> ArtifactStore:
    """Open (or create) the store at a root URL; ``options`` go to the store and fsspec."""
    return ArtifactStore(url, **options)
