"""Lineage: parents and children, transitive walks with depth, cycles, absent parents,
and the Mermaid / dot exports."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from cas.catalog import Catalog
from cas.catalog.testing import make_record, rid


@pytest.fixture
def cat(tmp_path: Path) -> Any:
    with Catalog(tmp_path / "index") as c:
        yield c


def chain(cat: Catalog, n: int) -> None:
    """0 <- 1 <- 2 ... (each the child of the previous)."""
    cat.put_many(make_record(i, f"models/v{i}", parents=[i - 1] if i else []) for i in range(n))


def test_parents_keep_given_order_children_newest_first(cat: Catalog) -> None:
    cat.put(make_record(10, parents=[3, 1, 2, 1]))
    assert cat.parents(rid(10)) == [rid(3), rid(1), rid(2)]
    cat.put_many([make_record(20, parents=[1]), make_record(15, parents=[1])])
    assert cat.children(rid(1)) == [rid(20), rid(15), rid(10)]
    assert cat.lineage(rid(10)) == {"parents": [rid(3), rid(1), rid(2)], "children": []}


def test_depth_and_transitive(cat: Catalog) -> None:
    chain(cat, 15)
    assert cat.ancestors(rid(14), depth=1) == [rid(13)]
    assert cat.ancestors(rid(14), depth=10) == [rid(i) for i in range(13, 3, -1)]
    assert cat.ancestors(rid(14)) == [rid(i) for i in range(13, -1, -1)]
    assert cat.descendants(rid(0), depth=3) == [rid(1), rid(2), rid(3)]
    assert cat.ancestors(rid(14), depth=0) == []
    assert cat.lineage(rid(7), depth=None) == {
        "parents": [rid(i) for i in range(6, -1, -1)],
        "children": [rid(i) for i in range(8, 15)],
    }
    with pytest.raises(ValueError):
        cat.ancestors(rid(14), depth=-1)


def test_cycles_end(cat: Catalog) -> None:
    # content addressing makes cycles impossible, but a hand-made record can claim one
    cat.put_many(
        [make_record(1, parents=[3]), make_record(2, parents=[1]), make_record(3, parents=[2, 3])]
    )
    assert cat.ancestors(rid(1)) == [rid(3), rid(2)]  # the start is never listed
    assert cat.descendants(rid(1)) == [rid(2), rid(3)]
    assert "digraph" in cat.lineage_graph(rid(1), format="dot")


def test_parent_not_held_yet(cat: Catalog) -> None:
    cat.put(make_record(5, parents=[4]))
    assert cat.parents(rid(5)) == [rid(4)]
    assert cat.children(rid(4)) == [rid(5)]
    assert cat.ancestors(rid(5)) == [rid(4)]
    assert "(not in catalog)" in cat.lineage_graph(rid(5))
    cat.put(make_record(4, parents=[3]))  # syncs in later
    assert cat.ancestors(rid(5)) == [rid(4), rid(3)]


def test_diamond_and_graph_exports(cat: Catalog) -> None:
    cat.put_many(
        [
            make_record(1, "data/raw", artifact_type="dataset"),
            make_record(2, "data/train", artifact_type="dataset", parents=[1]),
            make_record(3, "data/test", artifact_type="dataset", parents=[1]),
            make_record(4, 'models/"fraud"', parents=[2, 3]),
        ]
    )
    assert cat.ancestors(rid(4)) == [rid(2), rid(3), rid(1)]
    mermaid = cat.lineage_graph(rid(4))
    lines = [line.strip() for line in mermaid.splitlines()]
    assert lines[0] == "graph LR"
    assert 'n0["models/#quot;fraud#quot;<br/>000000000000 · model"]' in lines
    edges = [line.strip() for line in lines if "-->" in line]
    assert edges == ["n1 --> n0", "n2 --> n0", "n3 --> n1", "n3 --> n2"]
    assert "style n0 stroke-width:3px" in mermaid
    dot = cat.lineage_graph(rid(1), format="dot", depth=1)
    assert dot.startswith("digraph lineage {")
    assert f'"{rid(1)}" -> "{rid(2)}";' in dot and f'"{rid(1)}" -> "{rid(3)}";' in dot
    assert rid(4) not in dot  # depth 1 stops at the children
    assert 'label="data/raw\\n000000000000 · dataset", penwidth=3' in dot
    with pytest.raises(ValueError, match="mermaid"):
        cat.lineage_graph(rid(1), format="svg")


def test_lineage_of_unknown_id_is_empty(cat: Catalog) -> None:
    assert cat.lineage(rid(99)) == {"parents": [], "children": []}
    assert cat.lineage_graph(rid(99)).count("-->") == 0
