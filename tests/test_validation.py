"""A refused call writes nothing (issue 18): every argument of every public call is
checked before the first durable write, and a refusal is a ``cas.CasError`` naming the
argument and the rule.

The cases of the issue on every backend, the record checks one by one, and the
hypothesis fuzzer of ``cas.testing.fuzz`` (``FuzzTests``) on local, memory, S3, GCS
and Azure.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import fsspec
import pytest

import cas
from cas.admin import fsck, gc
from cas.api.artifact_store import ArtifactStore
from cas.repo.records import check_new_record, check_record, make_record
from cas.testing.fuzz import Call, Fuzzer, FuzzFailure, FuzzTests, open_root
from cas.testing.servers import Server

LONG_KEY = "k" * 300


def _memory_url() -> str:
    return f"memory:///validation-{uuid.uuid4().hex}/store"


@pytest.fixture(params=["local", "memory", "s3", "gcs", "azure"])
def opener(
    request: pytest.FixtureRequest, tmp_path: Path, fresh_cache: None
) -> Iterator[Callable[[], ArtifactStore]]:
    """Opens the store of one fresh root, on each backend in turn."""
    if request.param == "local":
        yield open_root(str(tmp_path / "store"))
    elif request.param == "memory":
        url = _memory_url()
        yield open_root(url)
        fs = fsspec.filesystem("memory")
        top = url.removeprefix("memory://").rsplit("/", 1)[0]
        if fs.exists(top):
            fs.rm(top, recursive=True)
    else:
        server: Server = request.getfixturevalue(f"{request.param}_server")
        yield open_root(server.url(server.new_bucket(), "store"), **server.storage_options)


def _refused(fuzzer: Fuzzer, call: Call) -> None:
    """``call`` must be refused with a CasError and change nothing (Fuzzer.check)."""
    refused = fuzzer.tally.refused
    fuzzer.check(call)
    assert fuzzer.tally.refused == refused + 1, f"{call!r} was accepted"


def test_a_save_with_a_long_tag_key_writes_nothing(opener: Callable[[], ArtifactStore]) -> None:
    fuzzer = Fuzzer(opener)
    store = fuzzer.store
    _refused(fuzzer, Call("save", (b"y", "b"), {"tags": {LONG_KEY: "v"}}))
    with pytest.raises(cas.InvalidInput) as caught:
        store.save(b"y", "b", tags={LONG_KEY: "v"})
    error = caught.value
    assert isinstance(error, cas.CasError) and isinstance(error, ValueError)
    assert error.argument == "tags" and "256 bytes" in error.rule
    with pytest.raises(cas.ObjectNotFound):
        store.load("b")
    gc.execute(store, gc.plan(store, grace=0, retention=0))  # gc runs, and is not refused
    assert fsck.check(store).problems == []
    fuzzer.finish()


def test_a_tag_with_a_long_key_writes_nothing(opener: Callable[[], ArtifactStore]) -> None:
    fuzzer = Fuzzer(opener)
    aid = fuzzer.store.save(b"x", "a", tags={"team": "fraud"})
    with pytest.raises(cas.InvalidInput, match="256 bytes"):
        fuzzer.store.catalog.tag(aid, **{LONG_KEY: "v"})
    for bad in ({LONG_KEY: "v"}, {"": "v"}, {"a\x00b": "v"}, {"k": "bad\ud800"}):
        _refused(fuzzer, Call("catalog.tag", (aid,), bad))
    fuzzer.store.close()
    again = opener()  # after reopening, the artifact reads as before
    assert again.get_metadata(aid)["tags"] == {"team": "fraud"}
    again.catalog.tag(aid, stage="production")
    assert again.get_metadata(aid)["tags"] == {"team": "fraud", "stage": "production"}
    again.close()
    fuzzer.finish()


@pytest.mark.parametrize(
    ("kwargs", "argument"),
    [
        ({"tags": {LONG_KEY: "v"}}, "tags"),
        ({"tags": {"k": None}}, "tags"),
        ({"tags": "stage=dev"}, "tags"),
        ({"metadata": {"x": {1, 2}}}, "metadata"),
        ({"metadata": {"big": 2**70}}, "metadata"),
        ({"metadata": 5}, "metadata"),
        ({"parent_ids": 5}, "parent_ids"),
        ({"parent_ids": "0" * 64}, "parent_ids"),
        ({"parent_ids": [None]}, "parent_ids"),
        ({"source_run_id": 7}, "source_run_id"),
        ({"source_step": ""}, "source_step"),
    ],
)
def test_register_refuses_bad_input_before_writing(
    opener: Callable[[], ArtifactStore], kwargs: dict[str, Any], argument: str
) -> None:
    fuzzer = Fuzzer(opener)
    for data in (None, b"payload"):
        with pytest.raises(cas.InvalidInput) as caught:
            fuzzer.store.catalog.register("models/m", "model", data=data, **kwargs)
        assert caught.value.argument == argument
        _refused(fuzzer, Call("catalog.register", ("models/m", "model"), {"data": data, **kwargs}))
    fuzzer.finish()


@pytest.mark.parametrize(
    ("name", "artifact_type", "error"),
    [
        ("a b", "model", cas.InvalidRefName),
        ("a/" * 250 + "b", "model", cas.InvalidInput),  # a valid ref name, too long to index
        (5, "model", cas.InvalidRefName),
        ("m", None, cas.InvalidInput),
        ("m", "t" * 481, cas.InvalidInput),
        ("m", "a\x00b", cas.InvalidInput),
        ("m", 5, cas.InvalidInput),
    ],
)
def test_register_refuses_bad_names_and_types(
    opener: Callable[[], ArtifactStore], name: Any, artifact_type: Any, error: type[Exception]
) -> None:
    fuzzer = Fuzzer(opener)
    with pytest.raises(error):
        fuzzer.store.catalog.register(name, artifact_type)
    _refused(fuzzer, Call("catalog.register", (name, artifact_type)))
    fuzzer.finish()


def test_a_parent_that_is_not_there_writes_nothing(opener: Callable[[], ArtifactStore]) -> None:
    fuzzer = Fuzzer(opener)
    for parents in (["0" * 64], ["no/such/name"]):
        _refused(fuzzer, Call("catalog.register", ("m", "model"), {"parent_ids": parents}))
        _refused(fuzzer, Call("save", (b"v", "m"), {"parent_ids": parents}))
    fuzzer.finish()


@pytest.mark.parametrize(
    "kwargs",
    [
        {"tags": {"": "v"}},
        {"metadata": {1: "a", "b": 2}},
        {"artifact_type": "t" * 481},
        {"source_pipeline": 3},
        {"parent_ids": [5]},
    ],
)
def test_a_save_refused_for_any_argument_writes_nothing(
    opener: Callable[[], ArtifactStore], kwargs: dict[str, Any]
) -> None:
    fuzzer = Fuzzer(opener)
    _refused(fuzzer, Call("save", (b"content never stored", "m"), kwargs))
    _refused(fuzzer, Call("save", ({"a": 1}, "m/json"), kwargs))
    fuzzer.finish()


def test_materialize_refuses_names_that_become_runs(opener: Callable[[], ArtifactStore]) -> None:
    fuzzer = Fuzzer(opener)
    for parts in (("o", "r", "s", "bad name"), ("o", 5, "s", "p"), ("o", "r", "s", "p" * 500)):
        _refused(fuzzer, Call("materialize", (b"v", *parts)))
    assert fuzzer.store.materialize(b"v", "o", "r", "s", "p") == "runs/p/r/s/o"
    fuzzer.finish()


def test_reads_refuse_bad_arguments_inside_the_tree(opener: Callable[[], ArtifactStore]) -> None:
    fuzzer = Fuzzer(opener)
    aid = fuzzer.ids[0]
    for call in (
        Call("catalog.search", ("bad\ud800",)),
        Call("catalog.search", (5,)),
        Call("catalog.search", ("x",), {"limit": -1}),
        Call("catalog.list", (None,), {"limit": "5"}),
        Call("catalog.get_lineage", (aid,), {"depth": -1}),
        Call("catalog.lineage_graph", (aid,), {"format": "svg"}),
        Call("load", ("no/such",)),
        Call("get_metadata", ("0" * 64,)),
    ):
        _refused(fuzzer, call)
    fuzzer.finish()


# -- the record checks, one by one --------------------------------------------------------

_CONTENT = {"materializer": "bytes", "content_id": "ab" * 32, "content_kind": "blob", "size": 1}


def test_make_record_checks_what_check_record_checks() -> None:
    good = make_record(name="m", artifact_type="model", tags={"n": 1, "b": True}, **_CONTENT)
    assert good["tags"] == {"n": "1", "b": "True"}  # numbers become text, as always
    assert check_record("cd" * 32, good) is good
    bad: list[dict[str, Any]] = [
        {"name": "a b"},
        {"artifact_type": ""},
        {"size": -1},
        {"content_kind": "folder"},
        {"content_id": "XY"},
        {"created_at": "yesterday"},
        {"content_info": "not a mapping"},
        {"parent_ids": ["0" * 63]},
        {"metadata": {"f": lambda: 1}},
        {"tags": {"k": b"bytes"}},
    ]
    for change in bad:
        fields = {"name": "m", "artifact_type": "model", **_CONTENT, **change}
        with pytest.raises((cas.InvalidInput, cas.InvalidRefName)):
            make_record(**fields)
    with pytest.raises(TypeError, match="unknown record fields"):
        make_record(name="m", colour="red")


def test_check_new_record_takes_names_and_ids_as_parents() -> None:
    check_new_record("m", parent_ids=["models/raw", "ab" * 32], tags={"k": "v"})
    check_new_record("m", prefix="2026-12-04/", artifact_type=None)
    with pytest.raises(cas.InvalidInput, match="480 bytes"):
        check_new_record("m" * 200 + "/" + "m" * 200, prefix="p" * 100 + "/")
    with pytest.raises(cas.InvalidInput) as caught:
        check_new_record("m", source_project=["p"])
    assert caught.value.argument == "source_project"


def test_invalid_input_is_public_and_in_the_tree() -> None:
    assert "InvalidInput" in cas.__all__
    assert issubclass(cas.InvalidInput, cas.CasError)
    assert issubclass(cas.InvalidInput, ValueError) and issubclass(cas.InvalidInput, TypeError)
    error = cas.InvalidInput("tags", "keys are str")
    assert (error.argument, error.rule, str(error)) == (
        "tags",
        "keys are str",
        "invalid tags: keys are str",
    )


def test_the_fuzzer_catches_a_refusal_that_writes() -> None:
    """The fuzzer itself: a call that writes before refusing is a failure it names."""
    fuzzer = Fuzzer(open_root(_memory_url()))
    store = fuzzer.store

    def leaky(*args: Any, **kwargs: Any) -> None:
        store.space.put(b"an object written before the refusal")
        raise cas.InvalidInput("tags", "refused too late")

    store.leaky = leaky  # type: ignore[attr-defined]
    with pytest.raises(FuzzFailure, match="refused"):
        fuzzer.check(Call("leaky"))

    def foreign(*args: Any, **kwargs: Any) -> None:
        raise KeyError("not a CasError")

    store.foreign = foreign  # type: ignore[attr-defined]
    with pytest.raises(FuzzFailure, match="not a cas.CasError"):
        fuzzer.check(Call("foreign"))


# -- the fuzzer on every backend ------------------------------------------------------------


class TestFuzzLocal(FuzzTests):
    @pytest.fixture
    def fuzz_store(self, tmp_path: Path, fresh_cache: None) -> Callable[[], ArtifactStore]:
        return open_root(str(tmp_path / "store"))


class TestFuzzMemory(FuzzTests):
    @pytest.fixture
    def fuzz_store(self, fresh_cache: None) -> Callable[[], ArtifactStore]:
        return open_root(_memory_url())


def _bucket_roots(server: Server) -> Callable[[], Callable[[], ArtifactStore]]:
    """A root in a new bucket of ``server`` for each call."""
    return lambda: open_root(server.url(server.new_bucket(), "store"), **server.storage_options)


class TestFuzzS3(FuzzTests):
    @pytest.fixture
    def fuzz_new_root(
        self, s3_server: Server, fresh_cache: None
    ) -> Callable[[], Callable[[], ArtifactStore]]:
        return _bucket_roots(s3_server)


class TestFuzzGCS(FuzzTests):
    @pytest.fixture
    def fuzz_new_root(
        self, gcs_server: Server, fresh_cache: None
    ) -> Callable[[], Callable[[], ArtifactStore]]:
        return _bucket_roots(gcs_server)


class TestFuzzAzure(FuzzTests):
    @pytest.fixture
    def fuzz_new_root(
        self, azure_server: Server, fresh_cache: None
    ) -> Callable[[], Callable[[], ArtifactStore]]:
        return _bucket_roots(azure_server)
