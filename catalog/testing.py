"""Test helpers shipped with the package: a record factory, hypothesis strategies for
event sequences, and a plain-Python model of what the catalog must answer.

Tests of ``catalog`` (and of ``cas`` code that wires it) import these; nothing in the
package itself does. Requires ``hypothesis`` (a test dependency).
"""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st

NAMES = ("models/fraud_detector", "models/churn-model", "data/raw.v2", "data/fraud")
TYPES = ("model", "dataset")
TAG_KEYS = ("stage", "team")
TAG_VALUES = ("dev", "production", "fraud team")
TIMES = (
    "2026-11-23T15:04:05.123456Z",
    "2026-11-23T15:04:05.123457Z",
    "2025-01-01T00:00:00.000000Z",
    "2026-11-23T15:04:05.123456Z",  # a tie on purpose: ids break it
)


def rid(n: int) -> str:
    """A deterministic 64-hex id for a small number."""
    return f"{n:064x}"


def make_record(
    n: int,
    name: str = "models/fraud_detector",
    *,
    artifact_type: str = "model",
    tags: dict[str, str] | None = None,
    parents: tuple[int, ...] | list[int] = (),
    created_at: str | None = None,
    metadata: dict[str, Any] | None = None,
    run: str | None = "run-1",
    **extra: Any,
) -> dict[str, Any]:
    """A valid record with id ``rid(n)``; ``created_at`` defaults to an increasing time."""
    record: dict[str, Any] = {
        "id": rid(n),
        "name": name,
        "artifact_type": artifact_type,
        "content_id": f"{n:064x}"[::-1],
        "size": n,
        "tags": dict(tags or {}),
        "parent_ids": [rid(p) for p in parents],
        "source_project": "default",
        "source_pipeline": "train",
        "source_run_id": run,
        "source_step": "fit",
        "metadata": {"note": "baseline"} if metadata is None else metadata,
        "created_at": created_at
        or f"2026-11-23T15:{n // 60 % 60:02d}:{n % 60:02d}.{n % 1_000_000:06d}Z",
    }
    record.update(extra)
    return record


def pool_record(n: int) -> dict[str, Any]:
    """The one record of id ``rid(n)`` in the event pool (ids are content hashes: one id,
    one record). Its parents may be ids that are never put."""
    return make_record(
        n,
        NAMES[n % len(NAMES)],
        artifact_type=TYPES[n % len(TYPES)],
        tags={TAG_KEYS[n % 2]: TAG_VALUES[n % 3]},
        parents=[(n * 7 + k) % 11 for k in range(n % 3)],
        created_at=TIMES[n % len(TIMES)],
        metadata={"note": f"resnet v{n % 3}", "nested": {"words": ["fraud", n]}},
        format="msgpack",
    )


POOL = 9  # ids 0..8 are put; parents reach up to 10, which never are


@st.composite
def events(draw: st.DrawFn, max_size: int = 30) -> list[dict[str, Any]]:
    """A random sequence of put/tag/delete events over a small pool of ids, with
    re-tags, tag removals, deletes of absent ids, tags on deleted ids and stamp ties."""
    ids = st.integers(0, POOL - 1)
    stamps = st.integers(0, 9).map(lambda i: f"2026-11-24T00:00:{i:02d}.000000Z-e")
    tag_values = st.one_of(st.none(), st.sampled_from(TAG_VALUES))
    put = ids.map(lambda n: {"op": "put", "record": pool_record(n)})
    tag = st.builds(
        lambda n, t, s: {"op": "tag", "id": rid(n), "tags": t, "stamp": s},
        ids,
        st.dictionaries(st.sampled_from(TAG_KEYS), tag_values, min_size=1),
        stamps,
    )
    delete = st.builds(lambda n, s: {"op": "delete", "id": rid(n), "stamp": s}, ids, stamps)
    return draw(st.lists(st.one_of(put, put, tag, delete), max_size=max_size))


class Model:
    """What the catalog must hold after a set of events, computed the obvious way."""

    def __init__(self) -> None:
        self.records: dict[str, dict[str, Any]] = {}
        self.tombstones: dict[str, str] = {}
        self.stamps: dict[tuple[str, str], tuple[str, str | None]] = {}

    def apply(self, event: dict[str, Any]) -> None:
        op = event["op"]
        if op == "put":
            rec = event["record"]
            if rec["id"] not in self.tombstones:
                self.records.setdefault(rec["id"], rec)
        elif op == "tag":
            if event["id"] in self.tombstones:
                return
            for k, v in event["tags"].items():
                old = self.stamps.get((event["id"], k))
                new = (event["stamp"], v)
                if old is None or _rank(new) > _rank(old):
                    self.stamps[(event["id"], k)] = new
        else:
            i = event["id"]
            self.tombstones[i] = min(self.tombstones.get(i, event["stamp"]), event["stamp"])
            self.records.pop(i, None)
            for key in [k for k in self.stamps if k[0] == i]:
                del self.stamps[key]

    def tags(self, id: str) -> dict[str, str]:
        tags = dict(self.records[id].get("tags") or {})
        for (i, k), (_, v) in self.stamps.items():
            if i == id:
                if v is None:
                    tags.pop(k, None)
                else:
                    tags[k] = v
        return dict(sorted(tags.items()))

    def newest_first(self) -> list[str]:
        """Ids of the records held, newest first (ties: smaller id first)."""
        recs = sorted(self.records.values(), key=lambda r: r["id"])
        return [r["id"] for r in sorted(recs, key=lambda r: r["created_at"], reverse=True)]


def _rank(stamped: tuple[str, str | None]) -> tuple[str, bool, str]:
    stamp, value = stamped
    return (stamp, value is not None, value or "")
