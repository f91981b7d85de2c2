"""A fuzzer of cas's public calls with bad input (issue 18): every refused call raises a
:class:`~cas.errors.CasError` and leaves the store byte for byte as it was; after every
accepted call, everything it made loads.

:func:`calls` is a hypothesis strategy of :class:`Call` values: ``save``,
``materialize``, ``catalog.register``, ``catalog.tag``, ``delete`` and the reads, with
arguments drawn mostly from the edges of what they accept (names that break a ref
rule or the catalog's length limit, tag keys of 257 bytes, NUL, lone surrogates,
metadata that msgpack cannot hold, parents that are a string or name nothing, types of
every kind) and sometimes from the middle (so the store fills up and later calls meet
real artifacts). :class:`Fuzzer` runs one call against a store and checks it:

- a refusal is a ``CasError``: anything else is a failure (a ``TypeError`` from deep
  inside, a catalog error, a refs error);
- a refused call, and any read, changes no file under the root (every file's bytes, or
  for object stores its listing with sizes and version tokens) and nothing in the
  catalog (:meth:`cas.catalog.Catalog.dump`);
- an accepted write returns an id that loads, and ``get_metadata`` reads it.

:meth:`Fuzzer.finish` reopens the store (a new catalog for remote roots), reads every
accepted artifact again and runs ``fsck``, which must find nothing. :class:`FuzzTests`
is the suite a backend's test file wires with a ``fuzz_store`` fixture (see
``tests/test_validation.py``); ``CAS_FUZZ_EXAMPLES`` sets how many hypothesis examples
(each up to 24 calls) it runs, ``CAS_TORTURE=full`` the full profile (10,000+ calls).
"""

from __future__ import annotations

import hashlib
import os
import reprlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import cas
from cas.admin import fsck
from cas.api.artifact_store import ArtifactStore
from cas.errors import CasError

#: Files whose bytes change on reads: LMDB's table of readers.
_VOLATILE = ("lock.mdb",)


@dataclass(frozen=True)
class Existing:
    """Stands for an artifact the store holds when the call runs: its id or its name."""

    what: str  # "id" | "name"


@dataclass(frozen=True)
class Call:
    """One public call: ``method`` (``"save"``, ``"catalog.tag"``, ...) and its arguments."""

    method: str
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)

    @property
    def writes(self) -> bool:
        return self.method in _WRITERS

    def __repr__(self) -> str:
        shown = [_short(a) for a in self.args] + [
            f"{k}={_short(v)}" for k, v in self.kwargs.items()
        ]
        return f"{self.method}({', '.join(shown)})"

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        printer.text(repr(self))  # hypothesis's printer would recurse into a deep value


def _short(value: Any) -> str:
    text = reprlib.repr(value)  # bounded: a cyclic or 10,000-deep value is shown too
    return text if len(text) <= 80 else text[:77] + "..."


_WRITERS = frozenset({"save", "materialize", "catalog.register", "catalog.tag", "delete",
                      "catalog.delete"})  # fmt: skip

# -- what arguments are drawn from ----------------------------------------------------------

_SURROGATE = "bad\ud800text"
_valid_names = st.sampled_from(["m", "models/fraud", "data/raw", "a/b/c", "x", "runs/p/r/s/o"])
_bad_names = st.sampled_from(
    ["", "@", "/a", "a/", "a//b", "a..b", "a b", "a~b", "a:b", "a\x00b", "a\nb", "a/.h",
     "a.lock", "a@{1}", "x" * 201, "a/" * 250 + "b", "é" * 150 + "/" + "é" * 99 + "/x",
     _SURROGATE]
)  # fmt: skip
_not_text = st.sampled_from([None, 5, 2.5, b"bytes", ["list"], {"d": 1}, True])
_looped: dict[str, Any] = {}
_looped["self"] = _looped
_deep: Any = "leaf"
for _ in range(1200):
    _deep = [_deep]
_deeper: Any = "leaf"
for _ in range(10_000):
    _deeper = [_deeper]
#: The wrong types every argument sometimes gets (issue 33): None, a tuple, a set, bytes,
#: an int, NaN, a cyclic dict, a list 10,000 deep, a dict with bytes keys.
wrong_types = st.sampled_from(
    [None, ("t", 1), {"s", 1}, frozenset({"f"}), b"raw", 7, float("nan"), _looped, _deeper,
     {b"k": "v"}, float("inf"), -1, True]
)  # fmt: skip
names = st.one_of(
    _valid_names, _valid_names, _bad_names, _not_text, st.text(max_size=12), wrong_types
)

_tag_keys = st.one_of(
    st.sampled_from(["stage", "team", "k"]),
    st.sampled_from(["", "k" * 257, "é" * 129, "a\x00b", _SURROGATE, "k" * 256]),
    st.text(max_size=8),
)
_tag_values = st.one_of(
    st.sampled_from(["dev", "production", "", "x" * 1000]),
    st.sampled_from([_SURROGATE, None, 5, 2.5, True, b"v", ["v"], {"v": 1}]),
    st.text(max_size=8),
    wrong_types,
)
tags = st.one_of(
    st.none(),
    wrong_types,
    st.dictionaries(st.sampled_from(["stage", "k"]), wrong_types, max_size=2),
    st.dictionaries(_tag_keys, _tag_values, max_size=3),
    st.sampled_from(["stage=dev", [("k", "v")], 5, {5: "v"}, {("t",): "v"}]),
)
metadata = st.one_of(
    st.none(),
    st.dictionaries(st.text(max_size=6), st.integers() | st.floats() | st.text(max_size=6),
                    max_size=3),
    st.sampled_from([{"auc": 0.91}, {"x": {1, 2}}, {"x": object()}, {"big": 2**70},
                     {1: "a", "b": 2}, {"s": _SURROGATE}, {"deep": _deep}, 5, "meta",
                     [1, 2], {"nested": {"ok": [1, 2.5, None, b"raw"]}}, {(1, 2): "a"},
                     {"n": {1: "x"}}, {b"k": 1}, {"a": [0, float("nan")]}, {"f": float("inf")},
                     _looped]),
    wrong_types,
    st.dictionaries(st.sampled_from(["auc", "k"]), wrong_types, max_size=2),
)  # fmt: skip
_ids = st.one_of(
    st.just(Existing("id")),
    st.just(Existing("name")),
    st.sampled_from(["0" * 64, "AB" * 32, "g" * 64, "ab" * 31, "nothing/here"]),
    _not_text,
    wrong_types,
)
parent_ids = st.one_of(
    st.just(()),
    st.lists(_ids, max_size=3),
    st.sampled_from(["0" * 64, 5, b"raw", {"a": 1}]),
    wrong_types,
    st.lists(st.one_of(st.just(Existing("id")), wrong_types), min_size=1, max_size=2),
)
artifact_types = st.one_of(
    st.none(),
    st.sampled_from(["model", "dataset", "", "t" * 481, "a\x00b", _SURROGATE]),
    _not_text,
    wrong_types,
)
sources = st.one_of(
    st.none(), st.sampled_from(["run-1", "", "s\x00", _SURROGATE]), _not_text, wrong_types
)
values = st.one_of(
    st.binary(max_size=64),
    st.text(max_size=16),
    st.sampled_from([{"auc": 0.9}, [1, 2, 3], {1, 2}, object(), 2**80, {"a": [1, _deep]},
                     {"a": {"b": float("nan")}}, [("t",)], {"k": b"raw"}]),
    wrong_types,
)  # fmt: skip
limits = st.one_of(st.sampled_from([10, 0]), st.sampled_from([-1, "5", 2.5, True]), wrong_types)
depths = st.one_of(st.sampled_from([None, 1, 2]), st.sampled_from([-1, "x", 2.5]), wrong_types)
queries = st.one_of(st.text(max_size=12), st.just(_SURROGATE), _not_text, wrong_types)
formats = st.one_of(st.sampled_from(["mermaid", "dot", "svg", 5]), wrong_types)


def _source_kwargs() -> st.SearchStrategy[dict[str, Any]]:
    keys = ("source_pipeline", "source_run_id", "source_step")
    return st.fixed_dictionaries({}, optional={k: sources for k in keys})


@st.composite
def _save(draw: st.DrawFn) -> Call:
    kwargs = draw(st.fixed_dictionaries(
        {}, optional={"metadata": metadata, "parent_ids": parent_ids, "tags": tags,
                      "artifact_type": artifact_types, "source_project": sources},
    ))  # fmt: skip
    kwargs.update(draw(_source_kwargs()))
    return Call("save", (draw(values), draw(names)), kwargs)


@st.composite
def _materialize(draw: st.DrawFn) -> Call:
    parts = [
        draw(st.one_of(st.sampled_from(["p", "run-1", "step"]), names, wrong_types))
        for _ in range(4)
    ]
    return Call("materialize", (draw(values), *parts))


@st.composite
def _register(draw: st.DrawFn) -> Call:
    kwargs = draw(st.fixed_dictionaries(
        {}, optional={"data": st.one_of(st.none(), values), "tags": tags,
                      "parent_ids": parent_ids, "metadata": metadata},
    ))  # fmt: skip
    kwargs.update(draw(_source_kwargs()))
    return Call("catalog.register", (draw(names), draw(artifact_types)), kwargs)


@st.composite
def _tag(draw: st.DrawFn) -> Call:
    keys = st.one_of(st.sampled_from(["stage", "team"]), _tag_keys.filter(_is_str))
    given_tags = draw(st.dictionaries(keys, _tag_values, max_size=3))
    return Call("catalog.tag", (draw(_ids),), given_tags)


def _is_str(value: object) -> bool:
    return isinstance(value, str)


_reads = st.one_of(
    st.builds(lambda n: Call("load", (n,)), st.one_of(_ids, names)),
    st.builds(lambda n: Call("get_metadata", (n,)), st.one_of(_ids, names)),
    st.builds(lambda n: Call("exists", (n,)), st.one_of(_ids, names)),
    st.builds(lambda n: Call("size", (n,)), st.one_of(_ids, names)),
    st.builds(lambda n: Call("history", (n,)), st.one_of(_ids, names)),
    st.builds(lambda p: Call("list_artifacts", (p,)), st.one_of(st.just(""), names)),
    st.builds(lambda q, n: Call("catalog.search", (q,), {"limit": n}), queries, limits),
    st.builds(lambda t, n: Call("catalog.list", (t,), {"limit": n}), artifact_types, limits),
    st.builds(lambda i: Call("catalog.get", (i,)), _ids),
    st.builds(lambda i, d: Call("catalog.get_lineage", (i,), {"depth": d}), _ids, depths),
    st.builds(lambda i, f: Call("catalog.lineage_graph", (i,), {"format": f}), _ids, formats),
)  # fmt: skip


def calls() -> st.SearchStrategy[Call]:
    """Public calls, mostly with bad input; about one in three a read."""
    return st.one_of(
        _save(), _save(), _register(), _tag(), _materialize(),
        st.builds(lambda n: Call("delete", (n,)), st.one_of(_ids, names)),
        st.builds(lambda n: Call("catalog.delete", (n,)), _ids),
        _reads, _reads,
    )  # fmt: skip


# -- running and checking -------------------------------------------------------------------


class FuzzFailure(AssertionError):
    """A call that broke a promise; the message names the call and what happened."""


@dataclass
class Tally:
    """What the fuzzing did: calls refused, accepted, and failures (kept empty)."""

    refused: int = 0
    accepted: int = 0
    refusals: dict[str, int] = field(default_factory=dict)  # CasError class -> count


class Fuzzer:
    """Runs calls against ``store`` (opened by ``reopen()``) and checks each one."""

    def __init__(self, reopen: Callable[[], ArtifactStore]) -> None:
        self.reopen = reopen
        self.store = reopen()
        self.tally = Tally()
        self.ids: list[str] = []  # accepted artifacts with data, and their names
        self.names: dict[str, str] = {}
        # so that Existing(...) always names something
        self._remember(self.store.save(b"seed", "fuzz/seed"), "fuzz/seed")

    def _remember(self, rid: str, name: str) -> None:
        self.ids.append(rid)
        self.names[name] = rid

    def _arg(self, value: Any) -> Any:
        if isinstance(value, Existing):
            if value.what == "id":
                return self.ids[len(self.ids) // 2]
            return sorted(self.names)[len(self.names) // 2]
        if isinstance(value, list) and any(isinstance(v, Existing) for v in value):
            return [self._arg(v) for v in value]  # parent_ids: one level, never a deep value
        return value

    def _target(self, method: str) -> Callable[..., Any]:
        owner: Any = self.store
        for part in method.split("."):
            owner = getattr(owner, part)
        return owner  # type: ignore[no-any-return]

    def snapshot(self) -> tuple[dict[str, str], Any]:
        """Every file under the root (bytes, or size and version token) and the catalog."""
        storage = self.store.storage
        fs, root = storage.fs, storage.root.rstrip("/")
        files: dict[str, str] = {}
        if storage.local_dir is not None:
            for folder, _, found in os.walk(storage.local_dir):
                for base in found:
                    if base in _VOLATILE:
                        continue
                    path = os.path.join(folder, base)
                    with open(path, "rb") as file:
                        files[path] = hashlib.blake2b(file.read(), digest_size=16).hexdigest()
        else:
            fs.invalidate_cache()
            for path, info in fs.find(root, detail=True, withdirs=False).items():
                files[path] = _fingerprint(fs, path, info)
        return files, self.store.index.catalog.dump()

    def check(self, call: Call) -> None:
        """Run ``call``; raise :class:`FuzzFailure` if it broke a promise."""
        args = tuple(self._arg(a) for a in call.args)
        kwargs = {k: self._arg(v) for k, v in call.kwargs.items()}
        before = self.snapshot()
        try:
            result = self._target(call.method)(*args, **kwargs)
        except CasError as exc:
            self.tally.refused += 1
            kind = type(exc).__name__
            self.tally.refusals[kind] = self.tally.refusals.get(kind, 0) + 1
            _same(call, before, self.snapshot(), f"refused ({kind}: {exc})")
            return
        except Exception as exc:
            raise FuzzFailure(
                f"{call!r} raised {type(exc).__name__} (not a cas.CasError): {exc}"
            ) from exc
        self.tally.accepted += 1
        if not call.writes or (call.method == "catalog.delete" and result is False):
            _same(call, before, self.snapshot(), "a read")
            return
        self._accepted(call, args, result)

    def _accepted(self, call: Call, args: tuple[Any, ...], result: Any) -> None:
        store = self.store
        if call.method in ("save", "catalog.register"):
            rid = str(result)
            meta = store.get_metadata(rid)
            if meta["content_id"] is not None:
                store.load(rid)
                self._remember(rid, meta["name"])
        elif call.method == "materialize":
            meta = store.get_metadata(result)
            store.load(result)
            self._remember(meta["id"], result)
        elif call.method == "catalog.tag":
            store.get_metadata(args[0])
        elif call.method in ("delete", "catalog.delete"):
            self.ids = [i for i in self.ids if store.catalog.get(i) is not None]
            self.names = {n: i for n, i in self.names.items() if store.exists(n)}
            if not self.ids or not self.names:
                self._remember(store.save(b"seed", "fuzz/seed"), "fuzz/seed")

    def finish(self) -> Tally:
        """Reopen the store, read every artifact accepted again, and run fsck."""
        self.store.close()
        store = self.reopen()
        for rid in self.ids:
            if store.catalog.get(rid) is None:
                continue  # deleted by a later call
            store.get_metadata(rid)
            store.load(rid)
        report = fsck.check(store)
        if report.problems:
            raise FuzzFailure(f"fsck after fuzzing: {[p.describe() for p in report.problems]}")
        store.close()
        return self.tally


def _fingerprint(fs: Any, path: str, info: dict[str, Any]) -> str:
    tokens = [str(info.get("size"))]
    for key in ("ETag", "etag", "generation", "md5Hash", "last_modified", "LastModified",
                "mtime", "created"):  # fmt: skip
        if info.get(key) is not None:
            tokens.append(f"{key}={info[key]}")
    if len(tokens) == 1 or fs.protocol in ("memory", ("memory",)):
        tokens.append(hashlib.blake2b(fs.cat_file(path), digest_size=16).hexdigest())
    return " ".join(tokens)


def _same(call: Call, before: Any, after: Any, what: str) -> None:
    if before == after:
        return
    (files_before, catalog_before), (files_after, catalog_after) = before, after
    changed = sorted(set(files_before.items()) ^ set(files_after.items()))
    where = [path for path, _ in changed][:6]
    if not where and catalog_before != catalog_after:
        where = ["the catalog"]
    raise FuzzFailure(f"{call!r} was {what}, yet it changed {where}")


# -- the suite ----------------------------------------------------------------------------


def examples() -> int:
    """Hypothesis examples per backend: ``CAS_FUZZ_EXAMPLES``, else 1750 in the full
    torture profile (about 11,000 calls: the test prints how many), else 25."""
    if "CAS_FUZZ_EXAMPLES" in os.environ:
        return int(os.environ["CAS_FUZZ_EXAMPLES"])
    return 1750 if os.environ.get("CAS_TORTURE") == "full" else 25


#: Calls on one root before the fuzzer moves to a new one, where ``fuzz_new_root`` is given.
ROOT_CALLS = 500


def _add(total: Tally, part: Tally) -> None:
    total.refused += part.refused
    total.accepted += part.accepted
    for kind, n in part.refusals.items():
        total.refusals[kind] = total.refusals.get(kind, 0) + n


class FuzzTests:
    """Bad input on every public call of a backend. Provide ``fuzz_store``: a function
    that opens the store of one fresh root (the same root on every call), or
    ``fuzz_new_root``: a function returning such an opener for another fresh root, to
    which the fuzzer moves every :data:`ROOT_CALLS` calls (checking the root it leaves
    as at the end). Each call lists the whole root before and after it; on an object
    store a root that only grows makes that listing, not the call, the cost."""

    @pytest.fixture
    def fuzz_store(
        self, fuzz_new_root: Callable[[], Callable[[], ArtifactStore]] | None
    ) -> Callable[[], ArtifactStore]:
        if fuzz_new_root is None:
            raise NotImplementedError("subclasses provide fuzz_store or fuzz_new_root")
        return fuzz_new_root()

    @pytest.fixture
    def fuzz_new_root(self) -> Callable[[], Callable[[], ArtifactStore]] | None:
        return None

    @pytest.fixture
    def fuzzer(self, fuzz_store: Callable[[], ArtifactStore]) -> Iterator[Fuzzer]:
        fuzzer = Fuzzer(fuzz_store)
        yield fuzzer
        fuzzer.store.close()

    @pytest.mark.timeout(max(600, 3 * examples()))  # the full profile runs for long
    def test_refused_calls_write_nothing(
        self,
        fuzzer: Fuzzer,
        fuzz_new_root: Callable[[], Callable[[], ArtifactStore]] | None,
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        current, roots, total = fuzzer, 1, Tally()

        @settings(
            max_examples=examples(),
            deadline=None,
            database=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
        )
        @given(batch=st.lists(calls(), min_size=1, max_size=24))
        def run(batch: list[Call]) -> None:
            nonlocal current, roots
            done = current.tally
            if fuzz_new_root is not None and done.refused + done.accepted >= ROOT_CALLS:
                _add(total, current.finish())
                current, roots = Fuzzer(fuzz_new_root()), roots + 1
            for call in batch:
                current.check(call)

        run()
        _add(total, current.finish())
        ran = total.refused + total.accepted
        with capsys.disabled():  # the figure the issue asks for, shown without -s
            print(
                f"\n[fuzz {type(self).__name__}] {ran} calls on {roots} root(s), 0 raised"
                f" outside CasError, 0 refusals wrote: {total.refused} refused"
                f" {total.refusals}, {total.accepted} accepted"
            )
        assert total.refused > total.accepted / 4  # mostly bad input, as meant


def open_root(url: str, **options: Any) -> Callable[[], ArtifactStore]:
    """A ``fuzz_store`` for the root at ``url``."""
    return lambda: cas.open_store(url, fsync=False, **options)
