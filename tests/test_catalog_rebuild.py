"""Rebuild exactness: live events one by one == a rebuild from the same events shuffled
== a batch ``apply`` in another order, compared by a full dump; and all of them agree
with a plain-Python model."""

from __future__ import annotations

import random
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from cas.catalog import Catalog
from cas.catalog.record import words
from cas.catalog.testing import NAMES, TAG_KEYS, TAG_VALUES, Model, events, pool_record, rid

# two tag events with one stamp on one key: the larger value must win in any order
TIE = [
    {"op": "put", "record": pool_record(1)},
    {"op": "tag", "id": rid(1), "tags": {"stage": "production"}, "stamp": "s"},
    {"op": "tag", "id": rid(1), "tags": {"stage": "dev"}, "stamp": "s"},
    {"op": "tag", "id": rid(1), "tags": {"team": None}, "stamp": "t"},
    {"op": "tag", "id": rid(1), "tags": {"team": "dev"}, "stamp": "t"},
    {"op": "delete", "id": rid(2), "stamp": "b"},
    {"op": "put", "record": pool_record(2)},
    {"op": "delete", "id": rid(2), "stamp": "a"},
]

SETTINGS = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@contextmanager
def fresh() -> Iterator[Catalog]:
    folder = tempfile.mkdtemp(prefix="cat_")
    try:
        with Catalog(Path(folder) / "index", map_size=1 << 20) as cat:
            yield cat
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def replay_live(cat: Catalog, evs: list[dict[str, Any]]) -> None:
    for e in evs:
        if e["op"] == "put":
            cat.put(e["record"])
        elif e["op"] == "tag":
            cat.tag(e["id"], e["tags"], e["stamp"])
        else:
            cat.delete(e["id"], e["stamp"])


def answers(cat: Catalog) -> dict[str, Any]:
    """Everything a user can ask, as plain values."""
    out: dict[str, Any] = {"list": cat.list(limit=1000), "names": cat.names()}
    for k in TAG_KEYS:
        for v in TAG_VALUES:
            out[f"search {k}:{v}"] = cat.search(f'{k}:"{v}"', limit=1000)
    for w in ("fraud", "resnet", "model", "v2", "dev fraud"):
        out[f"search {w}"] = cat.search(w, limit=1000)
    for n in range(11):
        out[f"lineage {n}"] = cat.lineage(rid(n), depth=None)
        out[f"graph {n}"] = cat.lineage_graph(rid(n), format="dot")
    return out


@SETTINGS
@given(evs=events(), seed=st.integers(0, 2**32 - 1))
@example(evs=TIE, seed=0)
def test_rebuild_reproduces_live_catalog(evs: list[dict[str, Any]], seed: int) -> None:
    shuffled = evs[:]
    random.Random(seed).shuffle(shuffled)
    other = evs[::-1]
    with fresh() as live, fresh() as rebuilt, fresh() as batch:
        replay_live(live, evs)
        rebuilt.put_many([])  # a no-op write first: rebuild must clear whatever is there
        rebuilt.rebuild(shuffled)
        batch.apply(other)
        assert rebuilt.dump() == live.dump()
        assert batch.dump() == live.dump()
        assert answers(rebuilt) == answers(live)


@SETTINGS
@given(evs=events())
@example(evs=TIE)
@example(evs=TIE[::-1])
def test_live_catalog_matches_model(evs: list[dict[str, Any]]) -> None:
    model = Model()
    with fresh() as cat:
        for e in evs:
            model.apply(e)
        replay_live(cat, evs)
        got = cat.list(limit=1000)
        assert [r["id"] for r in got] == model.newest_first()
        for r in got:
            assert r["tags"] == model.tags(r["id"])
            expected = {**model.records[r["id"]], "tags": model.tags(r["id"])}
            assert r == expected
        for k in TAG_KEYS:
            for v in TAG_VALUES:
                want = [i for i in model.newest_first() if model.tags(i).get(k) == v]
                assert [r["id"] for r in cat.search(f'{k}:"{v}"')] == want
        for word in ("fraud", "resnet", "models", "raw", "production"):
            want = []
            for i in model.newest_first():
                rec = model.records[i]
                text = " ".join(
                    [
                        rec["name"],
                        rec["artifact_type"],
                        *model.tags(i).values(),
                        rec["metadata"]["note"],
                        "fraud",
                    ]
                )
                if word in words(text):
                    want.append(i)
            assert [r["id"] for r in cat.search(word)] == want
        assert cat.names() == sorted({model.records[i]["name"] for i in model.records})
        assert set(cat.names()) <= set(NAMES)
        for i in model.records:
            parents = list(dict.fromkeys(model.records[i]["parent_ids"]))
            assert cat.parents(i) == parents
        for n in range(11):
            kids = [i for i in model.newest_first() if rid(n) in model.records[i]["parent_ids"]]
            assert cat.children(rid(n)) == kids
        for i in model.tombstones:
            assert cat.get(i) is None


def test_a_catalog_of_an_older_format_is_rebuilt_from_the_journal(tmp_path: Path) -> None:
    import lmdb

    import cas

    with cas.open_store(tmp_path / "s", fsync=False) as store:
        aid = store.save(b"kept", "m", tags={"stage": "dev"})
    env = lmdb.open(str(tmp_path / "s" / "index" / "catalog"), max_dbs=20)
    with env.begin(write=True) as txn:
        txn.put(b"format", b"1", db=env.open_db(b"meta", txn=txn))
    env.close()
    with cas.open_store(tmp_path / "s", fsync=False) as store:
        assert [a.id for a in store.catalog.search("stage:dev")] == [aid]
        assert store.catalog.find_by_content(store.get_metadata(aid)["content_id"])[0].id == aid
