"""``cas://`` for every PyData tool: an fsspec filesystem over one store.

::

    fs = fsspec.filesystem("cas", root=".cas", **storage_options)  # no import needed
    pd.read_parquet("cas://features/fraud", storage_options={"root": url})

The root is ``root=``, else ``$CAS_ROOT``, else ``./.cas``; the other options go to the
store and the root's filesystem (``fsync=``, ``key=``, ``endpoint_url=`` ...). Reads never
create a store; the first write does, or ``create=True``. Paths:

- ``<name>`` and ``<64-hex artifact id>``: the artifact's content (for a DataFrame, its
  Parquet bytes);
- ``<name or id>/<path>``: one file of a folder artifact, reading only the trees on the
  way and that file's objects;
- names are folders of their prefixes (``features`` holds ``features/fraud``) and a
  folder artifact is a folder of its files. Names form a tree, as git's refs do (``a``
  and ``a/b`` cannot both exist), so at most one prefix of a path is a name.

A path is resolved once, when it is opened: the open file reads the content id it found
then, so a save to the same name meanwhile never mixes two versions in one read.

Reads are verified as :meth:`ArtifactStore.open` verifies them: each chunk hashes to its
id before its bytes are returned, and the whole content is checked against its id when
the reads reach its end. Files are seekable: a read ahead of what was checked so far
reads (and checks) the chunks before it first, so Parquet's footer-first reads check the
whole file once; a file's chunk list, once checked, is kept for this root and process.

``open(path, "wb")`` saves the bytes written as an artifact (materializer ``bytes``) when
the file is closed, streaming through a spool file (constant memory). Nothing is saved
when the file is discarded, garbage-collected unclosed, or closed while an exception
raised after it was opened propagates (``with``, ``finally``, pandas' error paths).
``put`` stores local files as ``cas put`` does; ``rm`` removes names (content stays
until gc); ``cp`` gives content a new name without copying bytes.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import os
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Final, Literal

import fsspec
from fsspec.utils import tokenize

from cas.api.artifact_store import ArtifactStore
from cas.api.fs_files import CasFile, CasWriteFile, ContentReader, VerifiedLists
from cas.errors import FormatError, InvalidRefName, IsAFolder, ObjectNotFound, RefConflict
from cas.objects.ids import ObjectId
from cas.objects.kinds import MODE_LINK, TreeEntry
from cas.objects.trees import find_entry
from cas.repo.names import check_name
from cas.repo.records import make_record, parse_time

DEFAULT_ROOT: Final = ".cas"
#: Options fsspec itself takes; everything else goes to the root's filesystem.
_FSSPEC_OPTIONS: Final = ("skip_instance_cache", "use_listings_cache", "listings_expiry_time",
                          "max_paths", "asynchronous", "loop")  # fmt: skip


class _Environment:
    """The default root depends on ``$CAS_ROOT`` and the working directory: fsspec's
    instance cache tokenizes these (a class attribute read on every call), so a changed
    environment never returns a filesystem of the old root."""

    def __get__(self, obj: object, owner: type | None = None) -> tuple[str | None, str]:
        return os.environ.get("CAS_ROOT"), os.getcwd()


def resolve_root(root: str | os.PathLike[str] | None) -> str:
    """``root``, else ``$CAS_ROOT``, else ``./.cas``; a local path made absolute."""
    text = os.fspath(root) if root is not None else os.environ.get("CAS_ROOT") or DEFAULT_ROOT
    if not text:
        raise FormatError("the cas root is empty: give a folder or a URL such as s3://b/p")
    if "://" in text:
        return text
    return os.path.abspath(os.path.expanduser(text))


# -- one store per root and process ------------------------------------------------------


@dataclass
class _Root:
    """A root's store, shared by every filesystem on it in this process, and the chunk
    lists already checked against their content id. Opening a store reads its marker
    and catches its catalog up with the journal; pandas makes a filesystem per call, and
    fsspec one per thread."""

    url: str
    options: dict[str, Any]
    store: ArtifactStore | None = None
    verified: VerifiedLists = field(default_factory=VerifiedLists)
    lock: threading.Lock = field(default_factory=threading.Lock)
    names: set[str] = field(default_factory=set)  # names paths resolved to: hints

    def open(self, *, create: bool) -> ArtifactStore:
        """The store. Reads never create one (a mistyped root is an error, not a new
        empty store); the first write does, as ``cas.open_store`` would."""
        with self.lock:
            if self.store is None:
                try:
                    self.store = ArtifactStore(self.url, create=False, **self.options)
                except FormatError:
                    if not create:
                        raise
                    self.store = ArtifactStore(self.url, create=True, **self.options)
            return self.store


_roots: dict[tuple[int, str, str], _Root] = {}
_roots_lock = threading.Lock()


def _root_for(url: str, options: dict[str, Any]) -> _Root:
    key = (os.getpid(), url, tokenize(options))  # a forked child opens its own
    with _roots_lock:
        root = _roots.get(key)
        if root is None:
            root = _roots[key] = _Root(url, dict(options))
        return root


# -- what a path names -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Target:
    """A resolved path: the root, a folder of names, an artifact, or an entry inside a
    folder artifact (``inner``)."""

    kind: Literal["names", "artifact"]
    path: str
    artifact: str = ""  # the name or id it was reached by
    rid: ObjectId | None = None
    record: dict[str, Any] = field(default_factory=dict)
    inner: str = ""

    @property
    def is_tree(self) -> bool:
        return self.record.get("content_kind") == "tree"


class CasFileSystem(fsspec.AbstractFileSystem):  # type: ignore[misc]
    """The artifacts of one cas root as files and folders (see the module docstring).

    Errors follow fsspec's contract: a path that is not there is ``FileNotFoundError``;
    bad input is a :class:`cas.CasError` (an invalid name is ``InvalidRefName``, also a
    ``ValueError``; writing inside an artifact is ``RefConflict``; a folder opened as a
    file is ``IsAFolder``, also an ``IsADirectoryError``).
    """

    protocol = "cas"
    root_marker = ""
    _cas_environment = _Environment()
    _extra_tokenize_attributes = ("_cas_environment",)

    def __init__(self, root: str | os.PathLike[str] | None = None, **options: Any) -> None:
        fs_options = {k: options.pop(k) for k in _FSSPEC_OPTIONS if k in options}
        super().__init__(**fs_options)
        self.root = resolve_root(root)
        self._create = bool(options.pop("create", False))
        self._root = _root_for(self.root, options)

    @property
    def store(self) -> ArtifactStore:
        """The store at this root (opened on first use; only a write, or ``create=True``,
        creates one where there is none)."""
        return self._root.open(create=self._create)

    @classmethod
    def _strip_protocol(cls, path: Any) -> Any:
        if isinstance(path, list):
            return [cls._strip_protocol(p) for p in path]
        text = str(path)
        text = text[len("cas://") :] if text.startswith("cas://") else text
        return text.strip("/")

    # -- resolving ---------------------------------------------------------------------

    def _resolve(self, path: str, *, create: bool = False) -> _Target:
        path = self._strip_protocol(path)
        store = self._root.open(create=create or self._create)
        if not path:
            return _Target("names", "")
        parts = path.split("/")
        candidates: list[str] = []  # every prefix that can be a name, shortest first
        for i in range(1, len(parts) + 1):
            try:
                candidates.append(check_name("/".join(parts[:i])))
            except InvalidRefName:
                break  # no name has this component, nor any deeper prefix
        # At most one prefix is a name (a name is never a folder of names too); the one
        # this machine's catalog knows is read first, then the rest, shortest first.
        hint = None
        if len(candidates) > 1:
            seen = self._root.names
            hint = next((c for c in candidates if c in seen), None) or store.repo.known_name(
                candidates
            )
        for candidate in sorted(candidates, key=lambda c: (c != hint, len(c))):
            try:
                rid, _ = store.resolve(candidate)
            except ObjectNotFound:
                continue
            record = store.record(rid, tags=False)
            if len(self._root.names) >= 4096:
                self._root.names.clear()  # bounded; only a hint
            self._root.names.add(candidate)
            inner = path[len(candidate) + 1 :]
            return _Target("artifact", path, candidate, rid, record, inner)
        check_name(path)  # an invalid name is bad input, not an absent one
        if store.list_artifacts(path + "/"):
            return _Target("names", path)
        raise FileNotFoundError(f"no artifact or folder {path!r} in {self.root} ('cas ls')")

    def _entry(self, t: _Target) -> TreeEntry:
        """The entry inside a folder artifact that ``t`` names: one tree read per folder
        on the way, nothing else."""
        if not t.is_tree:
            raise FileNotFoundError(
                f"{t.path!r}: artifact {t.artifact!r} is a single file, not a folder"
            )
        label = str(t.record["name"])
        try:
            return find_entry(self.store.space, t.record["content_id"], t.inner, label)
        except ObjectNotFound as exc:
            raise FileNotFoundError(str(exc)) from exc

    def _entry_info(self, t: _Target) -> dict[str, Any]:
        """Info of an entry inside a folder artifact."""
        entry = self._entry(t)
        info = self._stamp({"name": t.path, "content_id": entry.id, "artifact_id": t.rid}, t)
        if entry.is_dir:
            return {**info, "size": 0, "type": "directory"}
        size = self.store.space.size(entry.id)
        return {**info, "size": size, "type": "file", "islink": entry.mode == MODE_LINK,
                "mode": entry.mode}  # fmt: skip

    @staticmethod
    def _stamp(info: dict[str, Any], t: _Target) -> dict[str, Any]:
        created = t.record.get("created_at")
        if created:
            when = _dt.datetime.fromtimestamp(parse_time(str(created)), _dt.timezone.utc)
            info.update(created=when, mtime=when)
        return info

    def _artifact_info(self, path: str, rid: str, record: dict[str, Any]) -> dict[str, Any]:
        t = _Target("artifact", path, path, ObjectId(rid), record)
        kind = "directory" if t.is_tree else "file"
        return self._stamp({
            "name": path, "size": 0 if t.is_tree else int(record.get("size") or 0),
            "type": kind, "artifact_id": rid, "content_id": record.get("content_id"),
            "artifact_type": record.get("artifact_type"),
        }, t)  # fmt: skip

    def _info_of(self, t: _Target) -> dict[str, Any]:
        if t.kind == "names":
            return {"name": t.path, "size": 0, "type": "directory"}
        if t.inner:
            return self._entry_info(t)
        assert t.rid is not None
        return self._artifact_info(t.path, t.rid, t.record)

    # -- the read side of fsspec's contract ------------------------------------------

    def info(self, path: str, **kwargs: Any) -> dict[str, Any]:
        return self._info_of(self._resolve(path))

    def exists(self, path: str, **kwargs: Any) -> bool:
        # Only "absent" is False: a backend that cannot be reached must not look empty.
        try:
            self.info(path)
        except FileNotFoundError:
            return False
        return True

    def ls(self, path: str, detail: bool = True, **kwargs: Any) -> list[Any]:
        t = self._resolve(path)
        if t.kind == "names":
            out = self._ls_names(t.path)
        elif t.is_tree and not (t.inner and self._entry_info(t)["type"] == "file"):
            assert t.rid is not None
            out = [
                self._stamp(
                    {
                        "name": f"{t.path}/{e['name']}",
                        "size": e["size"] or 0,
                        "type": "directory" if e["type"] == "directory" else "file",
                        "islink": e["type"] == "link",
                        "content_id": e["id"],
                        "artifact_id": t.rid,
                    },
                    t,
                )  # fmt: skip
                for e in self.store.list_files(t.rid, t.inner)
            ]
        else:
            out = [self._info_of(t)]
        return out if detail else [o["name"] for o in out]

    def _ls_names(self, prefix: str) -> list[dict[str, Any]]:
        """The children of a folder of names: one listing, then a record for each child
        that is a name itself (deeper names only make their first part a folder)."""
        start = f"{prefix}/" if prefix else ""
        store = self.store
        seen: dict[str, dict[str, Any]] = {}
        for name in store.list_artifacts(start):
            child, sep, _ = name[len(start) :].partition("/")
            full = start + child
            if full in seen:
                continue
            if sep:
                seen[full] = {"name": full, "size": 0, "type": "directory"}
                continue
            try:
                rid, _ = store.resolve(full)
                seen[full] = self._artifact_info(full, rid, store.record(rid))
            except ObjectNotFound as exc:  # deleted meanwhile, or a damaged ref: shown
                seen[full] = {"name": full, "size": 0, "type": "other", "error": str(exc)}
        return list(seen.values())

    def ukey(self, path: str) -> str:
        info = self.info(path)
        return str(info.get("content_id") or tokenize(info))

    def checksum(self, path: str) -> int:
        return int(self.ukey(path)[:32], 16)

    def created(self, path: str) -> _dt.datetime:
        return self._when(path, "created")

    def modified(self, path: str) -> _dt.datetime:
        return self._when(path, "mtime")

    def _when(self, path: str, key: str) -> _dt.datetime:
        info = self.info(path)
        if key not in info:
            raise IsAFolder(path, f"{path!r} is a folder of names: it has no time of its own")
        when: _dt.datetime = info[key]
        return when

    def _open(
        self,
        path: str,
        mode: str = "rb",
        block_size: int | None = None,
        autocommit: bool = True,
        cache_options: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> Any:
        path = self._strip_protocol(path)
        if mode in ("wb", "xb"):
            name = self._writable_name(path)
            exclusive = mode == "xb"
            if exclusive and self.exists(name):
                raise FileExistsError(f"artifact {name!r} exists (opened with mode 'xb')")

            def save(spool: IO[bytes], size: int) -> str:
                return self._commit(name, spool, size, exclusive=exclusive)

            return CasWriteFile(name, save, autocommit=autocommit)
        if mode != "rb":
            raise ValueError(f"cas:// files open as 'rb', 'wb' or 'xb', not {mode!r}")
        content = self._content_of(self._resolve(path))
        return CasFile(
            self, path, ContentReader(self.store.space, content, self._root.verified),
            block_size=block_size, cache_options=cache_options,
            cache_type=kwargs.get("cache_type", "readahead"),
        )  # fmt: skip

    def _content_of(self, t: _Target) -> ObjectId:
        """The content id of a path that names a file."""
        if t.kind == "names":
            raise IsAFolder(t.path, f"{t.path!r} is a folder of names, not an artifact")
        if t.inner:
            entry = self._entry(t)
            if entry.is_dir:
                raise IsAFolder(t.path, f"{t.path!r} is a folder inside artifact {t.artifact!r}")
            return entry.id
        content = t.record.get("content_id")
        if content is None:
            raise FileNotFoundError(f"artifact {t.artifact!r} was registered without data")
        if t.is_tree:
            raise IsAFolder(t.path, f"artifact {t.artifact!r} is a folder: open a file in it")
        return ObjectId(content)

    def get_file(self, rpath: str, lpath: str, callback: Any = None, **kwargs: Any) -> None:
        """Write one file through a temporary name beside ``lpath``: a read that fails
        verification leaves nothing behind, never a truncated file."""
        if self.isdir(rpath):
            os.makedirs(lpath, exist_ok=True)
            return
        dest = Path(lpath)
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".cas-tmp", dir=dest.parent)
        try:
            with self.open(rpath, "rb") as src, os.fdopen(fd, "wb") as out:
                while block := src.read(1 << 20):
                    out.write(block)
            os.replace(tmp, dest)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise

    # -- the write side ----------------------------------------------------------------

    def _writable_name(self, path: str) -> str:
        """``path`` if a new artifact can be saved under it, else a clear refusal."""
        path = self._strip_protocol(path)
        check_name(path)
        try:
            t = self._resolve(path, create=True)
        except FileNotFoundError:
            return path
        if t.kind == "names":
            raise IsAFolder(path, f"{path!r} is a folder of names: save under a name in it")
        if t.inner:
            raise RefConflict(
                path, None, t.rid,
                f"cannot save {path!r}: it is inside artifact {t.artifact!r}, whose content "
                "cannot change; save a new version of that artifact instead",
            )  # fmt: skip
        return path

    def _commit(self, path: str, spool: IO[bytes], size: int, *, exclusive: bool) -> str:
        """Save a spooled write as a ``bytes`` artifact; return its id. ``xb`` checks
        the name is free when the file opens and again here: not atomic with the save
        (a save does not take an expected old value yet)."""
        name = self._writable_name(path)
        store = self._root.open(create=True)
        if exclusive and store.exists(name):
            raise FileExistsError(f"artifact {name!r} exists (opened with mode 'xb')")
        content = store.space.put(spool)
        record = make_record(name=name, artifact_type="bytes", materializer="bytes",
                             content_id=content, content_kind="blob", size=size)  # fmt: skip
        return str(store.commit(record))

    def put_file(self, lpath: str, rpath: str, callback: Any = None, **kwargs: Any) -> None:
        """Store a local file as ``cas put`` does (hashed first, then only new chunks)."""
        if os.path.isdir(lpath):
            return  # folders of names exist while they hold names
        name = self._writable_name(rpath)
        self._root.open(create=True).save(Path(lpath), name)

    def cp_file(self, path1: str, path2: str, **kwargs: Any) -> None:
        """A new name for the same content (no bytes are copied); its parent is the
        artifact it was copied from. Folders are made by their files, as in fsspec."""
        t = self._resolve(path1)
        if t.kind == "names" or self.isdir(path1):
            return
        assert t.rid is not None
        if t.inner:
            content = self._content_of(t)
            fields = {"artifact_type": "bytes", "materializer": "bytes", "content_id": content,
                      "content_kind": "blob", "size": self.store.space.size(content)}  # fmt: skip
        else:
            self._content_of(t)  # registered without data: FileNotFoundError
            keys = ("artifact_type", "materializer", "content_id", "content_kind", "size",
                    "content_info")  # fmt: skip
            fields = {k: t.record.get(k) for k in keys}
        name = self._writable_name(path2)
        record = make_record(name=name, parent_ids=[t.rid], **fields)
        self._root.open(create=True).commit(record)

    def mkdir(self, path: str, create_parents: bool = True, **kwargs: Any) -> None:
        """Folders of names exist while they hold names: nothing is made, but a folder
        that could not hold names (inside an artifact, an invalid name) is refused."""
        if self.exists(path):
            raise FileExistsError(f"{path!r} exists")
        if self._strip_protocol(path):
            self._writable_name(path)

    def makedirs(self, path: str, exist_ok: bool = False) -> None:
        if self.exists(path):
            if not exist_ok:
                raise FileExistsError(f"{path!r} exists")
            return
        self.mkdir(path)

    def rm(self, path: Any, recursive: bool = False, maxdepth: int | None = None) -> None:
        """Remove names (their content stays until gc finds it unreachable). A folder of
        names goes only with ``recursive=True``; a file inside a folder artifact cannot
        go on its own."""
        doomed: dict[str, ObjectId] = {}
        inside: list[_Target] = []
        for p in self.expand_path(path, recursive=recursive, maxdepth=maxdepth):
            t = self._resolve(p)
            if t.kind == "names":
                if not recursive:
                    raise IsAFolder(p, f"{p!r} is a folder of names: rm(..., recursive=True)")
            elif t.inner:
                inside.append(t)
            elif t.rid is not None:
                doomed[t.artifact] = t.rid
        for t in inside:
            if t.artifact not in doomed:
                raise RefConflict(
                    t.path, None, t.rid,
                    f"cannot remove {t.path!r} alone: it is inside artifact {t.artifact!r}",
                )  # fmt: skip
        store = self.store
        for name in doomed:
            store.delete(name)

    def _rm(self, path: str) -> None:
        self.rm(path)

    def rm_file(self, path: str) -> None:
        self.rm(path)
