"""Materializers: how a Python value becomes content, and back, chosen by type.

The record keeps the materializer's name, so ``load`` returns the type that was saved.
Built in, in the order they are tried: bytes, str, pathlib.Path (a file is a blob whose id
is its ``b3sum``; a folder a tree), numpy arrays (``.npy``, never pickle), pandas
DataFrames and Arrow tables (Parquet), JSON-able values (canonical JSON, only when it
round-trips exactly), and pickle, which is refused unless the store has
``allow_pickle=True``: loading a pickle from a shared bucket runs whatever code it holds.

Add your own with :func:`register_materializer`; it is tried before the built-ins.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import shutil
import sys
import tempfile
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from cas.errors import MaterializerError, shown
from cas.objects.chunking import ChunkParams
from cas.objects.ids import ObjectId
from cas.objects.space import ObjectSpace
from cas.objects.trees import checkout, store_dir


@dataclass(frozen=True, slots=True)
class Stored:
    """What a materializer wrote: the content's id, its kind, its serialized size, and
    small facts the loader needs back (kept in the record's metadata under ``_cas``)."""

    content_id: ObjectId
    content_kind: str
    size: int
    info: dict[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class LoadContext:
    space: ObjectSpace
    content_id: ObjectId
    info: dict[str, Any]
    dest: Path | None
    cache_dir: Path
    allow_pickle: bool


class Materializer(ABC):
    """One way to store values of some types."""

    #: Recorded in every record this materializer writes; never change it once used.
    name: str = ""
    #: The artifact type a save gets when the caller gives none.
    artifact_type: str = "artifact"

    @abstractmethod
    def accepts(self, obj: Any) -> bool:
        """True if this materializer stores ``obj`` (checked in registry order)."""

    @abstractmethod
    def save(self, obj: Any, space: ObjectSpace) -> Stored:
        """Write ``obj``'s content to the object space."""

    @abstractmethod
    def load(self, ctx: LoadContext) -> Any:
        """Rebuild the value from verified content."""


def _blob(space: ObjectSpace, data: bytes, info: dict[str, Any] | None = None) -> Stored:
    return Stored(space.put(data), "blob", len(data), info)


class BytesMaterializer(Materializer):
    name, artifact_type = "bytes", "bytes"

    def accepts(self, obj: Any) -> bool:
        return isinstance(obj, (bytes, bytearray, memoryview))

    def save(self, obj: Any, space: ObjectSpace) -> Stored:
        return _blob(space, bytes(obj))

    def load(self, ctx: LoadContext) -> Any:
        return ctx.space.get(ctx.content_id)


class TextMaterializer(Materializer):
    name, artifact_type = "text", "text"

    def accepts(self, obj: Any) -> bool:
        return isinstance(obj, str)

    def save(self, obj: Any, space: ObjectSpace) -> Stored:
        return _blob(space, obj.encode("utf-8"))

    def load(self, ctx: LoadContext) -> Any:
        return ctx.space.get(ctx.content_id).decode("utf-8")


def canonical_json(obj: Any) -> bytes:
    return json.dumps(
        obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode("utf-8")


class JsonMaterializer(Materializer):
    """dicts, lists, numbers, strings, booleans and None that survive JSON exactly
    (a tuple, a non-string key or a NaN would not: those need pickle)."""

    name, artifact_type = "json", "json"

    def accepts(self, obj: Any) -> bool:
        if not isinstance(obj, (dict, list, int, float, bool, type(None))):
            return False
        try:
            return _same(json.loads(canonical_json(obj)), obj)
        except (TypeError, ValueError, RecursionError):
            return False

    def save(self, obj: Any, space: ObjectSpace) -> Stored:
        return _blob(space, canonical_json(obj))

    def load(self, ctx: LoadContext) -> Any:
        return json.loads(ctx.space.get(ctx.content_id))


def _same(a: Any, b: Any) -> bool:
    if type(a) is not type(b) and not (isinstance(a, float) and type(b) is int):
        return False
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)


def _need(module: str, extra: str) -> Any:
    try:
        return __import__(module, fromlist=["_"])
    except ImportError as exc:
        raise MaterializerError(
            f"loading this artifact needs {module}: pip install 'cas-store[{extra}]'"
        ) from exc


class NumpyMaterializer(Materializer):
    name, artifact_type = "numpy", "array"

    def accepts(self, obj: Any) -> bool:
        np = sys.modules.get("numpy")
        return np is not None and isinstance(obj, np.ndarray) and not obj.dtype.hasobject

    def save(self, obj: Any, space: ObjectSpace) -> Stored:
        np = _need("numpy", "numpy")
        buf = io.BytesIO()
        np.save(buf, obj, allow_pickle=False)
        return _blob(space, buf.getvalue())

    def load(self, ctx: LoadContext) -> Any:
        np = _need("numpy", "numpy")
        return np.load(io.BytesIO(ctx.space.get(ctx.content_id)), allow_pickle=False)


#: Parquet written for a content-addressed store. Data pages are cut where the values
#: say, not every N rows (pyarrow >= 21), so rows inserted or values edited change only
#: the pages around them and the rest of a new version is the old one byte for byte:
#: chunks the store holds already. Sizes are of the values before encoding; 64-256 KiB
#: beat pyarrow's 256 KiB-1 MiB on every case measured (bench/bench_parquet.py, figures
#: in docs/fsspec.md). These are ordinary Parquet files: reading is unchanged, and
#: Parquet written before loads as ever.
PARQUET_CDC: Final[dict[str, int]] = {"min_chunk_size": 64 << 10, "max_chunk_size": 256 << 10}
#: The first pyarrow whose writer takes ``use_content_defined_chunking``.
PYARROW_CDC_SINCE: Final = 21
#: Row groups hold about this many bytes of in-memory data, and never fewer rows than
#: pyarrow's default: every row-group boundary after an inserted row moves and rewrites
#: a page or two of every column (2,000,000 rows, 1% inserted: +29% in groups of 1Mi
#: rows, +10% in one group).
ROW_GROUP_BYTES: Final = 128 << 20
MIN_ROW_GROUP: Final = 1 << 20
#: How cas cuts the Parquet the materializers write: chunks of ~256 KiB (64 KiB-1 MiB),
#: a quarter of the store's, and files up to 1 MiB whole. An edit changes a page or so;
#: the chunk around it is stored as a delta on the chunk at its place in the previous
#: version, and a delta on a smaller base finds every repeated byte (at 1 MiB and more,
#: zstd's match finder misses much of a base of incompressible floats): 100 random
#: floats edited in a 2,000,000-row frame add 0.1% instead of 34% (figures in
#: docs/performance.md). Cutting decides which chunks are shared, never an id, and
#: reading needs nothing of it.
PARQUET_CHUNKS: Final = ChunkParams(
    avg_size=256 << 10, min_size=64 << 10, max_size=1 << 20, threshold=1 << 20
)


def parquet_options(rows: int, nbytes: int) -> dict[str, Any]:
    """What the pandas and Arrow materializers pass to pyarrow's Parquet writer for a
    table of ``rows`` rows holding about ``nbytes`` bytes in memory."""
    pa = _need("pyarrow", "arrow")
    try:
        major = int(str(pa.__version__).split(".", 1)[0])
    except ValueError:
        major = 0
    if major < PYARROW_CDC_SINCE:
        return {}
    per_row = max(1, nbytes // max(1, rows))
    return {
        "use_content_defined_chunking": dict(PARQUET_CDC),
        "row_group_size": max(MIN_ROW_GROUP, ROW_GROUP_BYTES // per_row),
    }


def _parquet_blob(space: ObjectSpace, buf: io.BytesIO) -> Stored:
    with buf.getbuffer() as view:  # stored from the buffer itself: no copy of the file
        return Stored(space.put_buffer(view, chunking=PARQUET_CHUNKS), "blob", len(view))


class PandasMaterializer(Materializer):
    name, artifact_type = "pandas.parquet", "dataframe"

    def accepts(self, obj: Any) -> bool:
        pd = sys.modules.get("pandas")
        return pd is not None and isinstance(obj, pd.DataFrame)

    def save(self, obj: Any, space: ObjectSpace) -> Stored:
        _need("pyarrow", "pandas")
        buf = io.BytesIO()
        # Shallow memory use: a string column counts 8 bytes a row (an estimate is enough).
        nbytes = int(obj.memory_usage(index=True, deep=False).sum())
        options = parquet_options(len(obj), nbytes)
        try:
            obj.to_parquet(buf, engine="pyarrow", index=True, **options)
        except (ValueError, TypeError, NotImplementedError) as exc:  # ArrowInvalid too
            raise MaterializerError(f"{_why_not_parquet(obj, exc)}") from exc
        return _parquet_blob(space, buf)

    def load(self, ctx: LoadContext) -> Any:
        pd = _need("pandas", "pandas")
        _need("pyarrow", "pandas")
        return pd.read_parquet(io.BytesIO(ctx.space.get(ctx.content_id)), engine="pyarrow")


def _why_not_parquet(frame: Any, exc: Exception) -> str:
    """Which part of a DataFrame Parquet cannot hold, and what to do about it."""
    pa = _need("pyarrow", "pandas")
    duplicated = list(dict.fromkeys(frame.columns[frame.columns.duplicated()]))
    if duplicated:
        return (
            f"obj has duplicate column names {shown(duplicated, 80)}, which Parquet cannot hold: "
            "rename them so each is unique (df.columns = [...])"
        )
    for i, column in enumerate(frame.columns):
        try:
            pa.array(frame.iloc[:, i], from_pandas=True)
        except (pa.ArrowException, ValueError, TypeError) as err:
            kinds = sorted({type(v).__name__ for v in frame.iloc[:, i].head(1000)})
            return (
                f"obj's column {shown(column, 80)} holds values of types {kinds} that Parquet "
                f"cannot store as one type ({err}): convert it to one type first (e.g. "
                f"df[{shown(column)}].astype(str))"
            )
    return f"obj cannot be written as Parquet ({type(exc).__name__}: {exc})"


class ArrowMaterializer(Materializer):
    name, artifact_type = "arrow.parquet", "table"

    def accepts(self, obj: Any) -> bool:
        pa = sys.modules.get("pyarrow")
        return pa is not None and isinstance(obj, pa.Table)

    def save(self, obj: Any, space: ObjectSpace) -> Stored:
        pq = _need("pyarrow.parquet", "arrow")
        buf = io.BytesIO()
        pq.write_table(obj, buf, **parquet_options(obj.num_rows, obj.nbytes))
        return _parquet_blob(space, buf)

    def load(self, ctx: LoadContext) -> Any:
        pq = _need("pyarrow.parquet", "arrow")
        return pq.read_table(io.BytesIO(ctx.space.get(ctx.content_id)))


class PathMaterializer(Materializer):
    """A file is one blob (its content id is the file's ``b3sum``); a folder is a tree.
    Loading writes them under ``dest`` (or a cache folder keyed by content) and returns
    the path."""

    name, artifact_type = "path", "files"

    def accepts(self, obj: Any) -> bool:
        return isinstance(obj, Path)

    def save(self, obj: Any, space: ObjectSpace) -> Stored:
        path = Path(obj)
        if path.is_dir():
            tree_id, size = store_dir(space, path)
            return Stored(tree_id, "tree", size, {"path": "dir", "filename": path.name})
        if path.is_file():
            size = path.stat().st_size
            mode = "exec" if os.access(path, os.X_OK) else "file"
            return Stored(space.put_file(path), "blob", size, {"path": mode, "filename": path.name})
        raise MaterializerError(f"{path} is neither a file nor a folder")

    def load(self, ctx: LoadContext) -> Any:
        if ctx.info.get("path") == "dir":
            if ctx.dest is not None:
                return checkout(ctx.space, ctx.content_id, ctx.dest)
            return _cached(ctx, lambda tmp: checkout(ctx.space, ctx.content_id, tmp))
        filename = _safe_filename(ctx.info.get("filename"), ctx.content_id)

        def write(folder: Path) -> None:
            folder.mkdir(parents=True, exist_ok=True)
            tmp = folder / f".{filename}.cas-tmp"
            with ctx.space.open(ctx.content_id) as src, open(tmp, "wb") as out:
                shutil.copyfileobj(src, out, 1 << 20)
            if ctx.info.get("path") == "exec":
                os.chmod(tmp, 0o755)
            os.replace(tmp, folder / filename)

        if ctx.dest is not None:
            write(ctx.dest)
            return ctx.dest / filename
        return _cached(ctx, write) / filename


def _safe_filename(name: Any, fallback: str) -> str:
    """A record's file name as a plain name: a record in a shared bucket is data, and a
    name like ``../../.bashrc`` must never place a file outside the destination."""
    if not isinstance(name, str):
        return fallback
    base = name.replace("\\", "/").rsplit("/", 1)[-1]
    if base in ("", ".", "..") or "\0" in base:
        return fallback
    return base


def _cached(ctx: LoadContext, fill: Any) -> Path:
    """A read-only checkout shared by every load of the same content: filled in a
    temporary folder and renamed into place, so a half-written checkout is never used."""
    final = ctx.cache_dir / ctx.content_id
    if final.is_dir():
        return final
    ctx.cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{ctx.content_id[:12]}-", dir=ctx.cache_dir))
    try:
        fill(tmp)
        os.replace(tmp, final)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if not final.is_dir():
            raise
    return final


class PickleMaterializer(Materializer):
    name, artifact_type = "pickle", "object"

    def accepts(self, obj: Any) -> bool:
        return True

    def save(self, obj: Any, space: ObjectSpace) -> Stored:
        try:
            data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
        except (pickle.PicklingError, TypeError, AttributeError, RecursionError) as exc:
            raise MaterializerError(
                f"obj, a {_type_name(obj)}, cannot be pickled ({type(exc).__name__}: "
                f"{exc!s:.200}); register a materializer for it with "
                "cas.register_materializer"
            ) from exc
        return _blob(space, data)

    def load(self, ctx: LoadContext) -> Any:
        if not ctx.allow_pickle:
            raise MaterializerError(
                f"content {ctx.content_id} is a pickle; loading it runs the code it holds. "
                "Open the store with allow_pickle=True if you trust everyone who writes to it"
            )
        return pickle.loads(ctx.space.get(ctx.content_id))


_PICKLE = PickleMaterializer()
_BUILTIN: list[Materializer] = [
    BytesMaterializer(), TextMaterializer(), PathMaterializer(), NumpyMaterializer(),
    PandasMaterializer(), ArrowMaterializer(), JsonMaterializer(),
]  # fmt: skip
_USER: list[Materializer] = []


def register_materializer(materializer: Materializer) -> None:
    """Add a materializer; user materializers are tried before the built-ins."""
    if not materializer.name:
        raise ValueError("a materializer needs a name (it is recorded in every record)")
    if any(m.name == materializer.name for m in (*_USER, *_BUILTIN, _PICKLE)):
        raise ValueError(f"a materializer named {materializer.name!r} is already registered")
    _USER.insert(0, materializer)


_PICKLE_ADVICE = (
    "to store arbitrary Python objects, register a materializer with "
    "cas.register_materializer, or open the store with allow_pickle=True (only if you "
    "trust everyone who writes to it)"
)


def materializer_for(obj: Any, *, allow_pickle: bool) -> Materializer:
    for m in (*_USER, *_BUILTIN):
        if m.accepts(obj):
            return m
    if allow_pickle:
        return _PICKLE
    if isinstance(obj, (dict, list, tuple, set, frozenset, float)):
        problem = why_not_json(obj)
        raise MaterializerError(f"{problem}, so obj cannot be stored as JSON; {_PICKLE_ADVICE}")
    raise MaterializerError(
        f"cas has no materializer for obj, a {_type_name(obj)}; {_PICKLE_ADVICE}"
    )


def _type_name(value: Any) -> str:
    return f"{type(value).__module__}.{type(value).__qualname__}"


#: Containers nested deeper than this are not stored as JSON (Python's parser and
#: encoder recurse, and stop near the interpreter's recursion limit).
JSON_DEPTH = 250
_SHOWN_DEPTH = 6  # steps of a path shown in a message


def why_not_json(obj: Any) -> str:
    """The first part of ``obj`` JSON cannot hold, named by its path (``obj['a'][0] is
    NaN ...``). Walks without recursion, so a cyclic or 100,000-deep value is named too."""
    on_path: set[int] = set()
    stack: list[tuple[Any, tuple[Any, ...], bool]] = [(obj, (), False)]
    seen = 0
    while stack and seen < 1_000_000:
        value, path, leaving = stack.pop()
        if leaving:
            on_path.discard(id(value))
            continue
        seen += 1
        where = _path(path)
        if len(path) > JSON_DEPTH:
            return f"{where} is nested {len(path)} levels deep (JSON keeps {JSON_DEPTH} at most)"
        problem = _json_leaf_problem(value)
        if problem:
            return f"{where} is {problem}"
        if not isinstance(value, (dict, list)):
            continue
        if id(value) in on_path:
            return f"{where} contains itself (a cycle)"
        on_path.add(id(value))
        stack.append((value, path, True))
        items = list(value.items()) if isinstance(value, dict) else list(enumerate(value))
        for key, item in reversed(items):
            if isinstance(value, dict) and not isinstance(key, str):
                return f"{where} has key {shown(key)} ({type(key).__name__}); JSON keys are str"
            stack.append((item, (*path, key), False))
    return "obj is nested too deeply or too large"


def _json_leaf_problem(value: Any) -> str | None:
    if isinstance(value, float) and value != value:
        return "NaN, which JSON numbers cannot be (store None or a string instead)"
    if isinstance(value, float) and value in (float("inf"), float("-inf")):
        return f"{value}, infinity, which JSON numbers cannot be (store None or a string)"
    if isinstance(value, (tuple, set, frozenset)):
        return f"a {type(value).__name__} (pass a list: JSON has no {type(value).__name__})"
    if isinstance(value, (bytes, bytearray, memoryview)):
        return "bytes inside a value (save bytes on their own, or as text)"
    if value is None or isinstance(value, (str, int, float, dict, list)):
        return None
    return f"a {_type_name(value)}, which has no materializer"


def _path(path: tuple[Any, ...]) -> str:
    steps = "".join(f"[{step!r}]" for step in path[:_SHOWN_DEPTH])
    more = f"...({len(path) - _SHOWN_DEPTH} more)" if len(path) > _SHOWN_DEPTH else ""
    return f"obj{steps}{more}"


def materializer_named(name: str) -> Materializer:
    for m in (*_USER, *_BUILTIN, _PICKLE):
        if m.name == name:
            return m
    raise MaterializerError(
        f"this artifact was written with materializer {name!r}, which is not registered here"
    )
