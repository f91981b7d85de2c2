"""The query language: parsing, errors with positions, and what search answers."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cas.catalog import Catalog, QueryError, parse_query
from cas.catalog.record import word_keys, words
from cas.catalog.testing import make_record, rid


@pytest.mark.parametrize(
    ("text", "tags", "words"),
    [
        ("", (), ()),
        ("   ", (), ()),
        ("resnet", (), ("resnet",)),
        (
            "stage:production team:fraud resnet",
            (("stage", "production"), ("team", "fraud")),
            ("resnet",),
        ),
        ('team:"fraud squad"', (("team", "fraud squad"),), ()),
        ('"fraud detector" v2', (), ("fraud", "detector", "v2")),
        ("fraud_detector", (), ("fraud", "detector")),
        ("Models/Fraud-Detector.v2", (), ("models", "fraud", "detector", "v2")),
        ("url:http://x/y", (("url", "http://x/y"),), ()),
        (r'note:"say \"hi\""', (("note", 'say "hi"'),), ()),
        ('key:""', (("key", ""),), ()),
        ("a a stage:x stage:x", (("stage", "x"),), ("a",)),
        ("tag.type:model", (("tag.type", "model"),), ()),
        ("--- !!", (), ()),
    ],
)
def test_parse(text: str, tags: tuple[tuple[str, str], ...], words: tuple[str, ...]) -> None:
    q = parse_query(text)
    assert q.tags == tags
    assert q.words == words


@pytest.mark.parametrize(
    ("text", "position", "reason"),
    [
        (":value", 0, "empty key"),
        ("stage:production :x", 17, "empty key"),
        ("stage:", 6, "no value"),
        ("stage: production", 6, "no value"),
        ('"unbalanced', 0, "unbalanced quote"),
        ('team:"fraud', 5, "unbalanced quote"),
        ('ab"c"', 2, "quote inside a word"),
        ('"a"b', 3, "expected a space"),
        ('k:"a"b', 5, "expected a space"),
    ],
)
def test_malformed_queries_say_what_and_where(text: str, position: int, reason: str) -> None:
    with pytest.raises(QueryError) as err:
        parse_query(text)
    assert err.value.position == position
    assert reason in str(err.value)
    assert isinstance(err.value, ValueError)
    assert text in str(err.value)


def test_search_rejects_malformed_query(tmp_path: Path) -> None:
    with Catalog(tmp_path / "c") as cat, pytest.raises(QueryError):
        cat.search('stage:"x')


def test_tag_filter_applies_before_limit(tmp_path: Path) -> None:
    """FlowyML filtered tags after LIMIT and returned too few: the matches here are all
    older than the first `limit` records of the unfiltered result."""
    with Catalog(tmp_path / "c") as cat:
        cat.put_many(
            make_record(i, "models/m", tags={"stage": "production" if i < 30 else "dev"})
            for i in range(300)
        )
        newest = [r["id"] for r in cat.search("", limit=100)]
        got = cat.search("stage:production", limit=10)
        assert len(got) == 10
        assert not {r["id"] for r in got} & set(newest)
        assert [r["id"] for r in got] == [rid(i) for i in range(29, 19, -1)]
        assert len(cat.search("stage:production models", limit=100)) == 30


def test_whole_words_not_substrings(tmp_path: Path) -> None:
    with Catalog(tmp_path / "c") as cat:
        cat.put(
            make_record(1, "models/fraud_detector", metadata={"desc": "ResNet-50 (fine-tuned)"})
        )
        cat.put(make_record(2, "models/frauds", metadata={}))
        cat.put(make_record(3, "data/defraud.csv", artifact_type="dataset", metadata={}))

        def ids(q: str) -> list[str]:
            return [r["id"] for r in cat.search(q)]

        assert ids("fraud") == [rid(1)]
        assert ids("FRAUD") == [rid(1)]
        assert ids("frauds") == [rid(2)]
        assert ids("detector") == [rid(1)]
        assert ids("fraud_detector") == [rid(1)]
        assert ids("detect") == []
        assert ids("resnet 50") == [rid(1)]
        assert ids("tuned") == [rid(1)]
        assert ids("csv defraud") == [rid(3)]
        assert ids("dataset") == [rid(3)]
        assert ids('"fine tuned" resnet') == [rid(1)]
        assert ids("fraud nothing") == []


def test_tag_values_match_exactly(tmp_path: Path) -> None:
    with Catalog(tmp_path / "c") as cat:
        cat.put(make_record(1, tags={"team": "fraud squad", "stage": "Production"}))
        assert [r["id"] for r in cat.search('team:"fraud squad"')] == [rid(1)]
        assert cat.search("team:fraud") == []
        assert cat.search("stage:production") == []
        assert len(cat.search("stage:Production")) == 1
        # tag values are search words too, lowercased
        assert len(cat.search("squad production")) == 1
        # no reserved keys: type:model is the tag "type"
        assert cat.search("type:model") == []
        cat.tag(rid(1), {"type": "model"}, "s1")
        assert len(cat.search("type:model")) == 1


def test_many_terms_intersect_smallest_first(tmp_path: Path) -> None:
    with Catalog(tmp_path / "c") as cat:
        recs = [
            make_record(
                i, f"models/m{i % 7}", tags={"a": str(i % 2), "b": str(i % 3), "c": str(i % 5)}
            )
            for i in range(420)
        ]
        cat.put_many(recs)
        got = cat.search("a:1 b:2 c:3", limit=1000)
        want = [
            r["id"]
            for r in sorted(recs, key=lambda r: r["created_at"], reverse=True)
            if r["tags"] == {"a": "1", "b": "2", "c": "3"}
        ]
        assert [r["id"] for r in got] == want
        assert len(want) == 14
        assert [r["id"] for r in cat.search("a:1 b:2 c:3 m5", limit=3)] == [
            i for i in want if int(i, 16) % 7 == 5
        ][:3]
        assert cat.search("a:1 zzz") == []
        assert cat.search("a:1", limit=0) == []


@settings(max_examples=300, deadline=None)
@given(text=st.text(alphabet=st.characters(max_codepoint=0x7F)) | st.text())
def test_indexing_splits_words_exactly_as_queries_do(text: str) -> None:
    """Indexing takes a byte-table shortcut for ASCII text; it must split as ``words``."""
    record = {"name": text, "artifact_type": "T", "tags": {"k": text[::-1]}, "metadata": {}}
    want = list(dict.fromkeys(words(f"{text} T {text[::-1]}")))[:256]
    assert word_keys(record) == [w.encode() for w in want]
