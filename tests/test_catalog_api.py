"""The Catalog API: put/get, validation, tags, delete, list, names, stats, lifecycle."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pytest

from cas import catalog
from cas.catalog import Catalog, CatalogError, InvalidInput, QueryError
from cas.catalog.testing import make_record, rid


@pytest.fixture
def cat(tmp_path: Path) -> Any:
    with Catalog(tmp_path / "index") as c:
        yield c


def test_public_names() -> None:
    assert set(catalog.__all__) >= {"Catalog", "CatalogError", "QueryError", "parse_query"}
    assert issubclass(QueryError, CatalogError) and issubclass(QueryError, ValueError)
    assert issubclass(InvalidInput, CatalogError) and issubclass(InvalidInput, ValueError)


def test_put_get_round_trip_keeps_extra_keys(cat: Catalog) -> None:
    rec = make_record(
        1, tags={"b": "2", "a": "1"}, materializer="json", format={"v": [1, 2.5, None]}
    )
    assert cat.put(rec) is True
    got = cat.get(rid(1))
    assert got == {**rec, "tags": {"a": "1", "b": "2"}}
    assert got is not None and list(got["tags"]) == ["a", "b"]
    assert cat.get(rid(2)) is None


def test_put_twice_is_false_and_keeps_first(cat: Catalog) -> None:
    assert cat.put(make_record(1, "a/first"))
    assert cat.put(make_record(1, "a/second")) is False
    got = cat.get(rid(1))
    assert got is not None and got["name"] == "a/first"
    assert cat.put_many([make_record(1), make_record(2), make_record(2), make_record(3)]) == 2


def test_missing_optional_keys_get_defaults(cat: Catalog) -> None:
    rec = {
        k: make_record(5)[k]
        for k in ("id", "name", "artifact_type", "content_id", "size", "created_at")
    }
    cat.put(rec)
    got = cat.get(rid(5))
    assert got is not None
    assert got["tags"] == {} and got["parent_ids"] == [] and got["metadata"] == {}
    assert got["source_run_id"] is None


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"id": "ABC"}, "record id must be 64 lowercase hex"),
        ({"id": "A" * 64}, "record id must be 64 lowercase hex"),
        ({"content_id": "x"}, "content_id"),
        ({"parent_ids": ["nope"]}, "parent id"),
        ({"parent_ids": "f" * 64}, "parent_ids must be a list"),
        ({"created_at": "2026-11-23 15:04:05"}, "created_at must read"),
        ({"created_at": "2026-13-45T15:04:05.123456Z"}, "is not a date"),
        ({"size": -1}, "size"),
        ({"size": True}, "size"),
        ({"name": ""}, "name"),
        ({"name": "x" * 600}, "longer than"),
        ({"artifact_type": 3}, "artifact_type"),
        ({"tags": {"k": 1}}, "string value"),
        ({"tags": {"": "v"}}, "tag key"),
        ({"tags": {"a\0b": "v"}}, "tag key"),
        ({"metadata": [1]}, "metadata must be a mapping"),
        ({"metadata": {"x": object()}}, "msgpack"),
        ({"source_run_id": 5}, "source_run_id"),
    ],
)
def test_bad_records_are_refused_clearly(
    cat: Catalog, change: dict[str, Any], message: str
) -> None:
    rec = {**make_record(1), **change}
    with pytest.raises(InvalidInput, match=message):
        cat.put(rec)
    assert cat.stats()["records"] == 0


def test_missing_required_key(cat: Catalog) -> None:
    rec = make_record(1)
    del rec["created_at"]
    with pytest.raises(InvalidInput, match="lacks created_at"):
        cat.put(rec)
    with pytest.raises(InvalidInput, match="mapping"):
        cat.put([1, 2])  # type: ignore[arg-type]


def test_put_many_is_all_or_nothing(cat: Catalog) -> None:
    with pytest.raises(InvalidInput):
        cat.put_many([make_record(1), {**make_record(2), "size": "big"}])
    assert cat.get(rid(1)) is None


def test_bad_ids_in_queries(cat: Catalog) -> None:
    for call in (cat.get, cat.parents, cat.children, cat.ancestors, cat.descendants, cat.lineage):
        with pytest.raises(InvalidInput):
            call("xyz")
    with pytest.raises(InvalidInput, match="stamp"):
        cat.tag(rid(1), {"a": "b"}, "")
    with pytest.raises(InvalidInput, match="string value or None"):
        cat.tag(rid(1), {"a": 3}, "s")  # type: ignore[dict-item]
    with pytest.raises(InvalidInput, match="op"):
        cat.apply([{"op": "rename"}])


def test_tags_last_writer_wins_per_key(cat: Catalog) -> None:
    cat.put(make_record(1, tags={"stage": "dev", "team": "fraud"}))
    cat.tag(rid(1), {"stage": "production", "owner": "ana"}, "2026-11-24T00:00:02.000000Z-b")
    # an older event that syncs in late does not override the newer one...
    cat.tag(rid(1), {"stage": "staging"}, "2026-11-24T00:00:01.000000Z-a")
    # ...but still wins a key the newer one did not touch
    cat.tag(rid(1), {"team": None}, "2026-11-24T00:00:01.000000Z-a")
    got = cat.get(rid(1))
    assert got is not None and got["tags"] == {"owner": "ana", "stage": "production"}
    assert [r["id"] for r in cat.search("stage:production owner:ana")] == [rid(1)]
    assert cat.search("stage:dev") == [] and cat.search("team:fraud") == []
    assert cat.search("staging") == [] and len(cat.search("production ana")) == 1


def test_tags_before_put_apply_when_record_arrives(cat: Catalog) -> None:
    cat.tag(rid(7), {"stage": "production"}, "s2")
    assert cat.get(rid(7)) is None and cat.search("stage:production") == []
    cat.put(make_record(7, tags={"stage": "dev"}))
    got = cat.get(rid(7))
    assert got is not None and got["tags"] == {"stage": "production"}
    assert len(cat.search("stage:production")) == 1 and cat.search("stage:dev") == []


def test_delete_tombstones_forever(cat: Catalog) -> None:
    cat.put(make_record(1, "models/a", tags={"stage": "dev"}, parents=[9]))
    cat.put(make_record(2, "models/a", parents=[1]))
    assert cat.delete(rid(1), "s5") is True
    assert cat.get(rid(1)) is None
    assert cat.put(make_record(1, "models/a")) is False
    assert cat.delete(rid(1), "s6") is False
    cat.tag(rid(1), {"stage": "x"}, "s9")
    assert cat.search("stage:dev") == [] and cat.search("stage:x") == []
    assert [r["id"] for r in cat.list(name="models/a")] == [rid(2)]
    assert cat.children(rid(9)) == []
    # the child's edge to the deleted parent stays: it is part of the child's record
    assert cat.parents(rid(2)) == [rid(1)] and cat.children(rid(1)) == [rid(2)]
    # a delete may arrive before the put (sync, rebuild): the put is then ignored
    assert cat.delete(rid(3), "s1") is False
    assert cat.put(make_record(3)) is False
    assert cat.stats()["tombstones"] == 2
    assert cat.dump()["tombstones"][rid(1)] == "s5"


def test_list_newest_first_with_filters(cat: Catalog) -> None:
    recs = [
        make_record(
            i,
            ["models/a", "models/b", "data/a", "modelsx"][i % 4],
            artifact_type="dataset" if i % 4 == 2 else "model",
        )
        for i in range(40)
    ]
    cat.put_many(recs[::-1])

    def ids(rs: list[dict[str, Any]]) -> list[str]:
        return [r["id"] for r in rs]

    assert ids(cat.list(limit=5)) == [rid(i) for i in range(39, 34, -1)]
    assert ids(cat.list(artifact_type="dataset", limit=3)) == [rid(38), rid(34), rid(30)]
    assert ids(cat.list(name="models/b")) == [rid(i) for i in range(37, 0, -4)]
    assert ids(cat.list(prefix="models/", limit=4)) == [rid(37), rid(36), rid(33), rid(32)]
    assert len(cat.list(prefix="models", limit=100)) == 30
    assert ids(cat.list(prefix="models/", artifact_type="dataset")) == []
    assert ids(cat.list(prefix="data/", artifact_type="dataset", limit=2)) == [rid(38), rid(34)]
    assert cat.list(name="nope") == [] and cat.list(prefix="zzz") == []
    assert cat.list(limit=0) == []
    with pytest.raises(ValueError):
        cat.list(limit=-1)
    assert cat.names() == ["data/a", "models/a", "models/b", "modelsx"]
    assert cat.names("models/") == ["models/a", "models/b"]


def test_ties_in_created_at_break_by_id(cat: Catalog) -> None:
    t = "2026-11-23T15:04:05.123456Z"
    cat.put_many([make_record(i, created_at=t) for i in (5, 3, 9)])
    assert [r["id"] for r in cat.list()] == [rid(3), rid(5), rid(9)]


def test_empty_query_is_list(cat: Catalog) -> None:
    cat.put_many(make_record(i) for i in range(5))
    assert cat.search("") == cat.list() and cat.search("  ", limit=2) == cat.list(limit=2)


def test_long_terms_are_digested(cat: Catalog) -> None:
    long_value = "v" * 1000
    cat.put(make_record(1, tags={"k": long_value}, run="r" * 900))
    assert len(cat.search(f"k:{long_value}")) == 1
    assert cat.search(f"k:{long_value}x") == []
    assert any(t.startswith("#") for t in cat.dump()["tag"])


def test_stats_and_repr(cat: Catalog) -> None:
    cat.put(make_record(1))
    s = cat.stats()
    assert s["records"] == 1 and s["map_size"] >= 64 << 20 and s["used_bytes"] > 0
    assert s["entries"]["time"] == 1
    assert "Catalog(" in repr(cat)


def test_closed_catalog_refuses(tmp_path: Path) -> None:
    cat = Catalog(tmp_path / "c")
    cat.close()
    cat.close()
    with pytest.raises(CatalogError, match="closed"):
        cat.get(rid(1))


def test_readonly(tmp_path: Path) -> None:
    with pytest.raises(CatalogError, match="no catalog"):
        Catalog(tmp_path / "missing", readonly=True)
    with Catalog(tmp_path / "c") as cat:
        cat.put(make_record(1))
    with Catalog(tmp_path / "c", readonly=True) as ro:
        assert ro.get(rid(1)) is not None
        with pytest.raises(CatalogError, match="read-only"):
            ro.put(make_record(2))


def test_two_catalogs_on_one_path_share_the_environment(tmp_path: Path) -> None:
    a = Catalog(tmp_path / "c")
    b = Catalog(tmp_path / "c")
    a.put(make_record(1))
    assert b.get(rid(1)) is not None
    a.close()
    b.put(make_record(2))
    assert b.stats()["records"] == 2
    b.close()
    with Catalog(tmp_path / "c") as c:
        assert c.stats()["records"] == 2


def test_ids_with_prefix(tmp_path: Path) -> None:
    with Catalog(tmp_path / "c") as cat:
        # ids spread as hashes are (make_record's count up from zero)
        records = [
            {**make_record(i), "id": hashlib.sha256(b"%d" % i).hexdigest()} for i in range(300)
        ]
        cat.put_many(records)
        some = records[7]["id"]
        assert cat.ids_with_prefix(some) == [some]
        assert cat.ids_with_prefix(some[:12]) == [some]
        by_first = sorted(r["id"] for r in records if r["id"][0] == some[0])
        assert cat.ids_with_prefix(some[0], limit=1000) == by_first  # odd length too
        assert cat.ids_with_prefix("zz") == [] and cat.ids_with_prefix("") == []


def test_list_by_prefix_is_the_same_whether_the_folder_is_recent_or_old(cat: Catalog) -> None:
    """A prefix-only listing first looks at the newest records of all (a save asks for
    its folder's newest siblings, and these are usually the newest of all), else it
    merges every name's postings: both give the same records in the same order."""
    names = [f"old/{i}" for i in range(400)] + [f"new/{i}" for i in range(200)]
    recs = [make_record(i, name) for i, name in enumerate(names)]
    # Names that hold the prefix's bytes elsewhere, or in their metadata, are not under it.
    recs += [make_record(600, "renew/x"), make_record(601, "zzz", metadata={"p": "new/"})]
    recs += [make_record(602, "new"), make_record(603, "new/deep/er")]
    cat.put_many(recs)
    by_time = sorted(recs, key=lambda r: (r["created_at"], r["id"]), reverse=True)

    def want(prefix: str, limit: int) -> list[str]:
        return [r["id"] for r in by_time if r["name"].startswith(prefix)][:limit]

    for prefix in ("new/", "old/", "new", "old/1", "nothing/"):
        for limit in (0, 1, 16, 150, 1000):
            got = [r["id"] for r in cat.list(prefix=prefix, limit=limit)]
            assert got == want(prefix, limit), (prefix, limit)
    assert rid(601) not in [r["id"] for r in cat.list(prefix="new/", limit=1000)]
