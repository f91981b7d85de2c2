"""A hypothesis state machine drives the whole API against a plain-Python model."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

import blake3
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, invariant, rule

import cas
from cas.testing.strategies import load_profile

load_profile()

names = st.sampled_from(["a", "b", "models/m", "models/n", "data/x/y", "runs-like/z"])
values = st.one_of(st.binary(max_size=300), st.text(max_size=50), st.dictionaries(st.text(max_size=5), st.integers(), max_size=3))
tag_keys = st.sampled_from(["stage", "team"])
tag_values = st.sampled_from(["dev", "prod", "fraud"])


def _content(value: Any) -> bytes | None:
    return value if isinstance(value, bytes) else None


class StoreMachine(RuleBasedStateMachine):
    ids = Bundle("ids")

    def __init__(self) -> None:
        super().__init__()
        self.dir = tempfile.mkdtemp(prefix="cas-state-")
        self.store = cas.open_store(str(Path(self.dir, "s")), fsync=False)
        self.by_name: dict[str, str] = {}  # name -> artifact id
        self.values: dict[str, Any] = {}  # artifact id -> value
        self.tags: dict[str, dict[str, str]] = {}  # artifact id -> tags
        self.parents: dict[str, list[str]] = {}
        self.deleted: set[str] = set()

    def teardown(self) -> None:
        self.store.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    def _live(self) -> set[str]:
        return set(self.values) - self.deleted

    @rule(target=ids, name=names, value=values)
    def save(self, name: str, value: Any) -> str:
        aid = self.store.save(value, name)
        self.by_name[name] = aid
        self.values.setdefault(aid, value)
        self.tags.setdefault(aid, {})
        self.parents.setdefault(aid, [])
        self.deleted.discard(aid)
        return aid

    @rule(target=ids, name=names, run=st.sampled_from(["r1", "r2"]), value=values)
    def materialize(self, name: str, run: str, value: Any) -> str:
        full = self.store.materialize(value, name.replace("/", "_"), run_id=run, step_name="s")
        assert full == f"runs/default/{run}/s/{name.replace('/', '_')}"
        return self._after(full, value)

    def _after(self, full: str, value: Any) -> str:
        aid = self.store.get_metadata(full)["id"]
        self.by_name[full] = aid
        self.values.setdefault(aid, value)
        self.tags.setdefault(aid, {})
        self.parents.setdefault(aid, [])
        self.deleted.discard(aid)
        return aid

    @rule(target=ids, name=names, value=st.binary(max_size=100), parents=st.lists(ids, max_size=2, unique=True))
    def register_with_parents(self, name: str, value: bytes, parents: list[str]) -> str:
        live = [p for p in parents if p in self._live()]
        aid = self.store.catalog.register(name, "dataset", data=value, parent_ids=live, tags={"team": "fraud"})
        self.by_name[name] = aid
        self.values[aid] = value
        self.tags[aid] = {"team": "fraud"}
        self.parents[aid] = live
        self.deleted.discard(aid)
        return aid

    @rule(aid=ids, key=tag_keys, value=tag_values)
    def tag(self, aid: str, key: str, value: str) -> None:
        if aid in self.deleted:
            return
        self.store.catalog.tag(aid, **{key: value})
        self.tags[aid][key] = value

    @rule(name=names)
    def delete(self, name: str) -> None:
        if name not in self.by_name:
            assert not self.store.exists(name)
            return
        aid = self.by_name.pop(name)
        self.store.delete(name)
        self.deleted.add(aid)

    @invariant()
    def names_resolve_and_load(self) -> None:
        assert self.store.list_artifacts() == sorted(self.by_name)
        for name, aid in self.by_name.items():
            assert self.store.get_metadata(name)["id"] == aid
            assert self.store.load(name) == self.values[aid]
            data = _content(self.values[aid])
            if data is not None:
                assert self.store.get_metadata(name)["content_id"] == blake3.blake3(data).hexdigest()

    @invariant()
    def catalog_agrees(self) -> None:
        cat = self.store.catalog
        for aid in self._live():
            got = cat.get(aid)
            assert got is not None and got.tags == self.tags[aid] and got.parent_ids == self.parents[aid]
        for aid in self.deleted:
            assert cat.get(aid) is None
        for key in ("stage", "team"):
            for value in ("dev", "prod", "fraud"):
                expect = {a for a in self._live() if self.tags[a].get(key) == value}
                assert {a.id for a in cat.search(f"{key}:{value}", limit=1000)} == expect
        for aid in self._live():
            lineage = cat.get_lineage(aid)
            assert {p.id for p in lineage["parents"]} == set(self.parents[aid]) & self._live()


StoreMachine.TestCase.settings = settings(max_examples=25, stateful_step_count=20, deadline=None)
TestStoreMachine = StoreMachine.TestCase
