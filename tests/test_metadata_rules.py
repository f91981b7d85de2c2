"""One rule for metadata and tag values, at every entry point, before the first write.

Metadata keys are ``str`` at every depth; values are what msgpack stores and JSON shows
(no NaN or infinities, no sets, no cycles, at most 100 levels, at most 1 MiB packed).
A refusal is an ``InvalidInput`` naming the key path, and nothing is written: not an
object, not a ref, not a journal entry, and a fresh store of the same root lists and
finds nothing new.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

import cas
from cas.errors import InvalidInput
from cas.serve.testing import running


def _cycle() -> dict[str, Any]:
    looped: dict[str, Any] = {"ok": 1}
    looped["self"] = looped
    return looped


def _deep(levels: int) -> Any:
    value: Any = "leaf"
    for _ in range(levels):
        value = [value]
    return value


BAD_METADATA = [
    pytest.param({(1, 2): "a"}, "metadata[(1, 2)]: keys must be str", id="tuple-key"),
    pytest.param({"n": {1: "x"}}, "metadata['n'][1]: keys must be str", id="nested-int-key"),
    pytest.param({b"k": 1}, "metadata[b'k']: keys must be str", id="bytes-key"),
    pytest.param({"a": [0, 1, 2, float("nan")]}, "metadata['a'][3]: NaN cannot", id="nan"),
    pytest.param({"f": float("-inf")}, "metadata['f']: -inf cannot", id="inf"),
    pytest.param({"s": {1, 2}}, "metadata['s']: a set cannot", id="set"),
    pytest.param(_cycle(), "metadata['self']: holds itself", id="cycle"),
    pytest.param({"d": _deep(150)}, "nested more than 100 levels", id="too-deep"),
    pytest.param({"big": 2**70}, "metadata['big']: 1180591620717411303424 does not fit", id="int"),
    pytest.param({"x": "é" * (1 << 19)}, "more than 1048576", id="too-big"),
]

BAD_TAG_VALUES = [
    pytest.param(["a"], id="list"),
    pytest.param({"v": 1}, id="dict"),
    pytest.param(b"v", id="bytes"),
    pytest.param("bad\ud800text", id="surrogate"),
]


def _files(root: Path) -> list[str]:
    """Every file under objects/, refs/ and logs/ of a local root."""
    found = []
    for top in ("objects", "refs", "logs", "packs"):
        for folder, _, names in os.walk(root / top):
            found += [os.path.relpath(os.path.join(folder, n), root) for n in names]
    return sorted(found)


def _seen(root: Path) -> tuple[list[str], list[str], list[str]]:
    """What a fresh store of the root lists, finds and names."""
    with cas.open_store(str(root)) as fresh:
        listed = sorted(a.name for a in fresh.catalog.list())
        found = sorted(a.name for a in fresh.catalog.search("bad"))
        return listed, found, fresh.list_artifacts()


@pytest.fixture
def root(tmp_path: Path) -> Path:
    path = tmp_path / "store"
    with cas.open_store(str(path)) as store:
        store.save(b"kept", "good/one", metadata={"note": "bad things happen"})
    return path


def _refused_writes_nothing(root: Path, call: Callable[[cas.ArtifactStore], Any]) -> str:
    before, seen = _files(root), _seen(root)
    with cas.open_store(str(root)) as store, pytest.raises(InvalidInput) as refused:
        call(store)
    assert _files(root) == before
    assert _seen(root) == seen == (["good/one"], ["good/one"], ["good/one"])
    return str(refused.value)


SAVES: dict[str, Callable[[cas.ArtifactStore, Any], Any]] = {
    "save": lambda s, md: s.save(b"x", "bad/save", metadata=md),
    "save_many": lambda s, md: s.save_many([(b"x", "bad/a"), (b"y", "bad/b")], metadata=md),
    "batch": lambda s, md: _in_batch(s, md),
    "register": lambda s, md: s.catalog.register("bad/reg", "Model", metadata=md),
    "register-data": lambda s, md: s.catalog.register("bad/reg", "Model", b"d", metadata=md),
}


def _in_batch(store: cas.ArtifactStore, metadata: Any) -> None:
    with store.batch():
        store.save(b"first", "bad/first")
        store.save(b"x", "bad/second", metadata=metadata)


@pytest.mark.parametrize("entry", sorted(SAVES))
@pytest.mark.parametrize(("metadata", "named"), BAD_METADATA)
def test_bad_metadata_is_refused_by_every_save_and_writes_nothing(
    root: Path, entry: str, metadata: Any, named: str
) -> None:
    message = _refused_writes_nothing(root, lambda store: SAVES[entry](store, metadata))
    assert named in message


@pytest.mark.parametrize("value", BAD_TAG_VALUES)
def test_tag_refuses_the_values_save_refuses_and_writes_nothing(root: Path, value: Any) -> None:
    with cas.open_store(str(root)) as store, pytest.raises(InvalidInput):
        store.save(b"x", "bad/tagged", tags={"k": value})
    message = _refused_writes_nothing(root, lambda store: store.catalog.tag("good/one", k=value))
    assert "tag 'k' must have a str value" in message
    with cas.open_store(str(root)) as store:
        assert store.get_metadata("good/one")["tags"] == {}


def test_tag_values_that_are_numbers_become_text_as_in_save(root: Path) -> None:
    with cas.open_store(str(root)) as store:
        store.catalog.tag("good/one", epoch=3, best=True)
        assert store.get_metadata("good/one")["tags"] == {"epoch": "3", "best": "True"}


def test_good_metadata_still_round_trips(root: Path) -> None:
    metadata = {"auc": 0.91, "cols": ("a", "b"), "raw": b"\x00", "n": None, "deep": _deep(99)}
    with cas.open_store(str(root)) as store:
        store.save(b"x", "good/two", metadata=metadata)
    with cas.open_store(str(root)) as store:
        assert store.get_metadata("good/two")["metadata"] == {**metadata, "cols": ["a", "b"]}


def test_the_server_refuses_nan_metadata_with_400_and_writes_nothing(root: Path) -> None:
    before, seen = _files(root), _seen(root)
    with cas.open_store(str(root)) as store, running(store, "tok") as srv:
        answer = httpx.post(
            f"{srv.url}/flowyml/v1/artifacts",
            content=b'{"name": "bad/served", "metadata": {"a": [1, NaN]}}',
            headers={"Authorization": "Bearer tok", "Content-Type": "application/json"},
        )
        listed = httpx.get(f"{srv.url}/api/v1/artifacts")
    assert answer.status_code == 400
    assert "metadata['a'][1]: NaN cannot be stored as JSON" in answer.json()["error"]
    assert listed.status_code == 200
    assert _files(root) == before and _seen(root) == seen


# -- readers never fall over ------------------------------------------------------------


def _cli(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    return subprocess.run(
        [sys.executable, "-m", "cas.cli", "--root", str(root), *args],
        capture_output=True, text=True, env=env, timeout=120,
    )  # fmt: skip


OLD_METADATA = [
    pytest.param({"m": {(1, 2): "a"}}, id="tuple-key"),  # unpacks as a list: unhashable
    pytest.param({"m": {7: "a"}}, id="int-key"),
]


@pytest.mark.parametrize("metadata", OLD_METADATA)
def test_a_record_an_older_cas_wrote_with_a_bad_key_is_skipped_and_named(
    root: Path, metadata: dict[str, Any]
) -> None:
    with cas.open_store(str(root)) as store:
        # As an older cas wrote it: the record object, its journal entry and its name.
        good = store.get_metadata("good/one")
        record = {**{k: good[k] for k in ("name", "content_id", "size", "parent_ids")},
                  "format": 1, "name": "old/bad", "artifact_type": "bytes",
                  "materializer": "bytes", "content_kind": "blob", "content_info": None,
                  "source_project": None, "source_pipeline": None, "source_run_id": None,
                  "source_step": None, "metadata": metadata, "tags": {},
                  "created_at": "2026-01-01T00:00:00.000000Z"}  # fmt: skip
        with store.space.batch():
            bad = store.space.put_value("record", record)
        store.repo.journal.append({"op": "put", "id": bad})
        store.repo.names.set("old/bad", bad, message="older cas")
    with cas.open_store(str(root)) as store:
        assert [a.name for a in store.catalog.list()] == ["good/one"]
        assert [a.name for a in store.catalog.search("bad")] == ["good/one"]
        assert store.get_metadata("good/one")["metadata"] == {"note": "bad things happen"}
        assert store.load("good/one") == b"kept"
        with pytest.raises(cas.IntegrityError, match=bad):
            store.get_metadata("old/bad")
        store.save(b"new", "good/two")
    reindex = _cli(root, "reindex")
    assert reindex.returncode == 1 and bad in reindex.stdout, reindex.stderr
    fsck = _cli(root, "fsck")
    assert fsck.returncode == 1 and bad in fsck.stdout, fsck.stderr
    gc = _cli(root, "gc", "--grace", "0", "--retention", "0")
    assert gc.returncode == 1 and "Traceback" not in gc.stderr, gc.stderr
    with cas.open_store(str(root)) as store:
        assert sorted(a.name for a in store.catalog.list()) == ["good/one", "good/two"]
        assert store.load("good/one") == b"kept"  # gc deleted nothing
        with running(store, "tok") as srv:
            listed = httpx.get(f"{srv.url}/api/v1/artifacts")
            flowyml = httpx.get(f"{srv.url}/flowyml/v1/artifacts")
    assert listed.status_code == 200 and "good/two" in listed.text
    assert flowyml.status_code == 200 and "good/two" in flowyml.text
