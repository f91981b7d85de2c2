"""Lineage: walking parent and child edges, and drawing them as Mermaid or Graphviz.

Edges are indexed from the child's record (its ``parent_ids``), so a parent that the
catalog does not hold (yet) still has its children, and a record's parents are known
even when none of them is present. Walks are breadth first, nearest first, each id
listed once: cycles (which content addressing makes impossible, but a hand-made
record can state) end the walk instead of looping.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .engine import Txn

Step = Callable[[bytes], list[bytes]]
Edge = tuple[bytes, bytes]  # (parent, child), raw ids


def parents_of(txn: Txn, db: Any, id_raw: bytes) -> list[bytes]:
    """The raw parent ids of a record, in the order its ``parent_ids`` gave them."""
    cur = txn.cursor(db=db)
    if not cur.set_key(id_raw):
        return []
    return [v[2:] for v in cur.iternext_dup()]


def children_of(txn: Txn, db: Any, id_raw: bytes) -> list[bytes]:
    """The raw ids of the records naming ``id_raw`` as a parent, newest first."""
    cur = txn.cursor(db=db)
    if not cur.set_key(id_raw):
        return []
    return [v[8:] for v in cur.iternext_dup()]


def walk(start: bytes, step: Step, depth: int | None) -> tuple[list[bytes], list[Edge]]:
    """Breadth-first from ``start``: the ids reached (``start`` excluded) and the edges.

    Edges are ``(node, neighbour)`` for every step taken, including to ids already seen
    (so a diamond draws both of its edges). ``depth=None`` walks to the end.
    """
    if depth is not None and depth < 0:
        raise ValueError(f"depth must be >= 0 or None, got {depth}")
    seen = {start}
    found: list[bytes] = []
    edges: list[Edge] = []
    frontier = [start]
    level = 0
    while frontier and (depth is None or level < depth):
        nxt: list[bytes] = []
        for node in frontier:
            for other in step(node):
                edges.append((node, other))
                if other not in seen:
                    seen.add(other)
                    found.append(other)
                    nxt.append(other)
        frontier = nxt
        level += 1
    return found, edges


def label(record: dict[str, Any] | None, id_raw: bytes) -> tuple[str, str]:
    """(first line, second line) of a node: the name, then short id and type."""
    short = id_raw.hex()[:12]
    if record is None:
        return "(not in catalog)", short
    return str(record["name"]), f"{short} · {record['artifact_type']}"


def render(
    fmt: str,
    focus: bytes,
    nodes: list[bytes],
    edges: list[Edge],
    labels: dict[bytes, tuple[str, str]],
) -> str:
    """Mermaid ``graph LR`` or Graphviz ``digraph`` text, parents left of children."""
    if fmt == "mermaid":
        return _mermaid(focus, nodes, edges, labels)
    if fmt == "dot":
        return _dot(focus, nodes, edges, labels)
    raise ValueError(f"lineage format must be 'mermaid' or 'dot', got {fmt!r}")


def _mermaid(
    focus: bytes, nodes: list[bytes], edges: list[Edge], labels: dict[bytes, tuple[str, str]]
) -> str:
    ids = {n: f"n{i}" for i, n in enumerate(nodes)}
    lines = ["graph LR"]
    for n in nodes:
        first, second = labels[n]
        lines.append(f'    {ids[n]}["{_mermaid_text(first)}<br/>{_mermaid_text(second)}"]')
    for parent, child in edges:
        lines.append(f"    {ids[parent]} --> {ids[child]}")
    lines.append(f"    style {ids[focus]} stroke-width:3px")
    return "\n".join(lines) + "\n"


def _mermaid_text(text: str) -> str:
    return (
        text.replace("&", "#amp;")
        .replace('"', "#quot;")
        .replace("<", "#lt;")
        .replace(">", "#gt;")
        .replace("\n", " ")
    )


def _dot(
    focus: bytes, nodes: list[bytes], edges: list[Edge], labels: dict[bytes, tuple[str, str]]
) -> str:
    lines = ["digraph lineage {", "    rankdir=LR;", "    node [shape=box];"]
    for n in nodes:
        first, second = labels[n]
        extra = ", penwidth=3" if n == focus else ""
        lines.append(f'    "{n.hex()}" [label="{_dot_text(first)}\\n{_dot_text(second)}"{extra}];')
    for parent, child in edges:
        lines.append(f'    "{parent.hex()}" -> "{child.hex()}";')
    lines.append("}")
    return "\n".join(lines) + "\n"


def _dot_text(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", " ")
