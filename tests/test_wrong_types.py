"""Wrong types and unstorable values end in a ``cas.CasError`` that names what was wrong,
and write nothing (issue 33, "Errors outside the tree").

Each case is run through :class:`cas.testing.fuzz.Fuzzer`, which compares every file
under the root and the catalog before and after a refused call.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import fsspec
import pandas as pd
import pytest

import cas
from cas.api.artifact_store import ArtifactStore
from cas.testing.fuzz import Call, Fuzzer, open_root
from cas.testing.servers import Server


@pytest.fixture(params=["local", "memory", "s3"])
def opener(
    request: pytest.FixtureRequest, tmp_path: Path, fresh_cache: None
) -> Iterator[Callable[[], ArtifactStore]]:
    if request.param == "local":
        yield open_root(str(tmp_path / "store"))
    elif request.param == "memory":
        top = f"/wrong-types-{uuid.uuid4().hex}"
        yield open_root(f"memory://{top}/store")
        fs = fsspec.filesystem("memory")
        if fs.exists(top):
            fs.rm(top, recursive=True)
    else:
        server: Server = request.getfixturevalue("s3_server")
        yield open_root(server.url(server.new_bucket(), "store"), **server.storage_options)


def _refused(fuzzer: Fuzzer, call: Call) -> None:
    """``call`` must be refused with a CasError and change nothing (Fuzzer.check)."""
    refused = fuzzer.tally.refused
    fuzzer.check(call)
    assert fuzzer.tally.refused == refused + 1, f"{call!r} was accepted"


def _message(call: Callable[[], Any], error: type[cas.CasError]) -> str:
    with pytest.raises(error) as caught:
        call()
    return str(caught.value)


def test_parent_ids_none_means_no_parents(opener: Callable[[], ArtifactStore]) -> None:
    fuzzer = Fuzzer(opener)
    store = fuzzer.store
    aid = store.save(b"v", "m", parent_ids=None)
    assert store.get_metadata(aid)["parent_ids"] == []
    rid = store.catalog.register("r", "model", data=b"w", parent_ids=None)
    assert store.get_metadata(rid)["parent_ids"] == []
    fuzzer.finish()


def test_history_of_a_name_that_is_not_text(opener: Callable[[], ArtifactStore]) -> None:
    fuzzer = Fuzzer(opener)
    for name in (None, 5, b"fuzz/seed", ("a",)):
        _message(lambda name=name: fuzzer.store.history(name), cas.InvalidRefName)
        _refused(fuzzer, Call("history", (name,)))
    fuzzer.finish()


_DUPLICATE = pd.DataFrame([[1, 2]], columns=["a", "a"])
_MIXED = pd.DataFrame({"n": [1, 2, 3], "mixed": [1, "x", b"y"]})


@pytest.mark.parametrize(
    ("frame", "words"),
    [
        (_MIXED, ["'mixed'", "one type"]),
        (_DUPLICATE, ["'a'", "duplicate", "rename"]),
    ],
)
def test_a_dataframe_parquet_cannot_hold(
    opener: Callable[[], ArtifactStore], frame: pd.DataFrame, words: list[str]
) -> None:
    fuzzer = Fuzzer(opener)
    text = _message(lambda: fuzzer.store.save(frame, "df"), cas.MaterializerError)
    for word in words:
        assert word in text, text
    _refused(fuzzer, Call("save", (frame, "df")))
    _refused(fuzzer, Call("materialize", (frame, "df", "r", "s")))
    fuzzer.finish()


_LOOPED: dict[str, Any] = {"ok": 1}
_LOOPED["self"] = _LOOPED
_DEEP: Any = "leaf"
for _ in range(100_000):
    _DEEP = [_DEEP]


@pytest.mark.parametrize(
    ("value", "where", "what"),
    [
        ({"a": float("nan")}, "obj['a']", "NaN"),
        ({"a": [1, float("inf")]}, "obj['a'][1]", "infinity"),
        (_LOOPED, "obj['self']", "contains itself"),
        (_DEEP, "obj[0][0]", "levels deep"),
        ({"k": {1, 2}}, "obj['k']", "set"),
        ({"k": (1, 2)}, "obj['k']", "tuple"),
        ({b"k": 1}, "obj", "key b'k'"),
        ({"k": b"raw"}, "obj['k']", "bytes"),
        ({"k": object()}, "obj['k']", "builtins.object"),
    ],
)
def test_a_value_json_cannot_hold_is_named(
    opener: Callable[[], ArtifactStore], value: Any, where: str, what: str
) -> None:
    fuzzer = Fuzzer(opener)
    text = _message(lambda: fuzzer.store.save(value, "j"), cas.MaterializerError)
    assert where in text and what in text, text
    assert "cannot be stored as JSON" in text, text
    # pickle is offered, but only after the value is named
    assert text.index("allow_pickle") > text.index(where), text
    _refused(fuzzer, Call("save", (value, "j")))
    _refused(fuzzer, Call("materialize", (value, "j", "r", "s")))
    fuzzer.finish()


def test_pickle_that_cannot_be_written_is_refused(tmp_path: Path) -> None:
    def trusting() -> ArtifactStore:
        return cas.open_store(str(tmp_path / "s"), fsync=False, allow_pickle=True)

    fuzzer = Fuzzer(trusting)
    text = _message(lambda: fuzzer.store.save(_DEEP, "deep"), cas.MaterializerError)
    assert "obj" in text and "pickle" in text, text
    _refused(fuzzer, Call("save", (_DEEP, "deep")))
    _refused(fuzzer, Call("save", ({"f": lambda: 1}, "fn")))
    aid = fuzzer.store.save(_LOOPED, "looped")  # pickle holds a cycle
    assert fuzzer.store.load(aid)["ok"] == 1
    fuzzer.finish()


@pytest.mark.parametrize("wrong", [None, ("t",), {"s"}, b"raw", 7, float("nan"), _LOOPED, _DEEP])
def test_a_wrong_type_in_any_argument_is_refused(
    opener: Callable[[], ArtifactStore], wrong: Any
) -> None:
    fuzzer = Fuzzer(opener)
    aid = fuzzer.ids[0]
    calls = [
        Call("materialize", (b"v", wrong, "r", "s")),
        Call("materialize", (b"v", "o", "r", "s", wrong)),
        Call("save", (b"v", wrong)),
        Call("catalog.get", (wrong,)),
        Call("catalog.search", (wrong,)),
        Call("load", (wrong,)),
        Call("history", (wrong,)),
    ]
    if not isinstance(wrong, (int, float)):  # a number tag is its text
        calls.append(Call("catalog.register", ("m", "model"), {"tags": {"k": wrong}}))
    if wrong is not None and not isinstance(wrong, (int, float)):  # None removes a tag
        calls.append(Call("catalog.tag", (aid,), {"k": wrong}))
    if wrong is not None and not isinstance(wrong, int):  # None: all, 7: seven levels
        calls.append(Call("catalog.get_lineage", (aid,), {"depth": wrong}))
    if wrong is not None:  # None is "no parents", "no type", "no source"
        calls += [
            Call("save", (b"v", "m"), {"source_pipeline": wrong}),
            Call("save", (b"v", "m"), {"parent_ids": wrong}),
            Call("save", (b"v", "m"), {"artifact_type": wrong}),
            Call("catalog.list", (wrong,)),
        ]
    for call in calls:
        _refused(fuzzer, call)
    fuzzer.finish()
