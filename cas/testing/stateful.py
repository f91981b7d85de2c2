"""A hypothesis state machine that drives the whole public API of a store against a
plain-Python model, on any root (as zarr's ``testing/stateful.py`` does for its stores).

Each example gets a fresh, empty root from a :data:`FreshStore` factory; the machine
saves, materializes, registers with parents, tags and deletes, and after every step
checks that names resolve and load, that content ids are the ``b3sum`` of the bytes, and
that the catalog (records, tags, search, lineage) agrees with the model. It also saves
under names that one it holds refuses (below it, or the folder above it): each must be
refused, and then nothing of it is visible to this store or to the catalog of another
machine built from the root::

    def fresh() -> contextlib.AbstractContextManager[ArtifactStore]: ...
    run_store_machine(fresh, machine_settings(remote=True))

Settings follow the hypothesis profile that :func:`cas.testing.strategies.load_profile`
loads (``CAS_HYPOTHESIS_PROFILE``: ``dev`` or ``thorough``); a remote root (a local S3,
GCS or Azure server) runs a twelfth of that profile's examples, since each step there
costs dozens of HTTP requests.
"""

from __future__ import annotations

import contextlib
import random
import shutil
import tempfile
from array import array
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import blake3
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    invariant,
    rule,
    run_state_machine_as_test,
)

from cas.api.artifact_store import ArtifactStore
from cas.errors import RefConflict
from cas.repo.local_catalog import LocalCatalog

#: Opens a store on a fresh, empty root; leaving the block closes it and may clean up.
FreshStore = Callable[[], contextlib.AbstractContextManager[ArtifactStore]]

#: Steps per example, on every root.
STEPS = 20
#: Floats in a value of :meth:`StoreMachine.save_numbers_moved_a_little`: above the
#: 256 KiB from which dense content tries an XOR delta.
NUMBERS = 70_000

#: A remote root runs one example in this many of the profile's (at least two).
REMOTE_SHARE = 12

names = st.sampled_from(["a", "b", "models/m", "models/n", "data/x/y", "runs-like/z"])
values = st.one_of(
    st.binary(max_size=300),
    st.text(max_size=50),
    st.dictionaries(st.text(max_size=5), st.integers(), max_size=3),
)
tag_keys = st.sampled_from(["stage", "team"])
tag_values = st.sampled_from(["dev", "prod", "fraud"])


def machine_settings(*, remote: bool = False) -> settings:
    """The current profile's settings for the machine (:data:`STEPS` steps an example);
    on a remote root, one example in :data:`REMOTE_SHARE`."""
    base = settings()  # the profile loaded last (load_profile), with its examples
    if not remote:
        return settings(base, stateful_step_count=STEPS)
    examples = max(2, base.max_examples // REMOTE_SHARE)
    return settings(base, max_examples=examples, stateful_step_count=STEPS)


def run_store_machine(fresh: FreshStore, config: settings | None = None) -> None:
    """Run :class:`StoreMachine` on roots that ``fresh`` makes, one per example, with
    ``config`` (default: :func:`machine_settings` of a local root)."""
    config = config or machine_settings()
    # Any factory will do (its docstring says so); the annotation asks for a class.
    factory = cast("type[RuleBasedStateMachine]", lambda: StoreMachine(fresh))
    run_state_machine_as_test(factory, settings=config)


class StoreMachine(RuleBasedStateMachine):
    """The store against a model: name -> id, id -> value, tags, parents, deletions."""

    ids = Bundle("ids")

    def __init__(self, fresh: FreshStore) -> None:
        super().__init__()
        self._exit = contextlib.ExitStack()
        self.store = self._exit.enter_context(fresh())
        self.by_name: dict[str, str] = {}  # name -> artifact id
        self.values: dict[str, Any] = {}  # artifact id -> value
        self.tags: dict[str, dict[str, str]] = {}  # artifact id -> tags
        self.parents: dict[str, list[str]] = {}
        self.deleted: set[str] = set()

    def teardown(self) -> None:
        self._exit.close()

    def _live(self) -> set[str]:
        return set(self.values) - self.deleted

    def _saved(self, name: str, aid: str, value: Any) -> str:
        self.by_name[name] = aid
        self.values.setdefault(aid, value)
        self.tags.setdefault(aid, {})
        self.parents.setdefault(aid, [])
        self.deleted.discard(aid)
        return aid

    @rule(target=ids, name=names, value=values)
    def save(self, name: str, value: Any) -> str:
        return self._saved(name, self.store.save(value, name), value)

    @rule(target=ids, name=names, run=st.sampled_from(["r1", "r2"]), value=values)
    def materialize(self, name: str, run: str, value: Any) -> str:
        flat = name.replace("/", "_")
        full = self.store.materialize(value, flat, run_id=run, step_name="s")
        assert full == f"runs/default/{run}/s/{flat}"
        return self._saved(full, self.store.get_metadata(full)["id"], value)

    @rule(
        target=ids,
        name=names,
        value=st.binary(max_size=100),
        parents=st.lists(ids, max_size=2, unique=True),
    )
    def register_with_parents(self, name: str, value: bytes, parents: list[str]) -> str:
        live = [p for p in parents if p in self._live()]
        aid = self.store.catalog.register(
            name, "dataset", data=value, parent_ids=live, tags={"team": "fraud"}
        )
        self.by_name[name] = aid
        self.values[aid] = value
        # Registering what the name holds already returns its id and writes nothing:
        # the tags set on it since stay.
        self.tags[aid] = {**self.tags.get(aid, {}), "team": "fraud"}
        self.parents[aid] = live
        self.deleted.discard(aid)
        return aid

    @rule(target=ids, name=names, seed=st.integers(0, 3))
    def save_numbers_moved_a_little(self, name: str, seed: int) -> str:
        """A new version of numbers that all moved a little (a model's weights after a
        training step: stored as an XOR delta on the last version of the same length
        under this name or beside it), or the first such version."""
        held = self.values.get(self.by_name.get(name, ""))
        last = held if isinstance(held, bytes) and len(held) == NUMBERS * 4 else None
        rng = random.Random(seed)
        if last is None:
            floats = array("f", (rng.gauss(0, 1) for _ in range(NUMBERS)))
        else:
            floats = array("f", last)
            for i in range(0, NUMBERS, 7):  # every float moves, some more than others
                floats[i] *= 1 + 1e-3 * rng.gauss(0, 1)
            floats = array("f", (x * (1 + 1e-4) for x in floats))
        value = floats.tobytes()
        return self._saved(name, self.store.save(value, name), value)

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

    @rule(name=names, value=values, below=st.booleans())
    def refused_save(self, name: str, value: Any, below: bool) -> None:
        """A save under a name that a name the store holds refuses (``name/below``, or
        the folder above it) raises ``RefConflict``, and nothing of it is visible: not
        to this store, not to another machine's catalog of the root (issue 32)."""
        if name not in self.by_name:
            return
        other = f"{name}/below" if below or "/" not in name else name.rpartition("/")[0]
        try:
            self.store.save(value, other, tags={"stage": "refused"})
        except RefConflict:
            pass
        else:
            raise AssertionError(f"a save of {other!r} beside {name!r} was not refused")
        assert other not in self.store.list_artifacts()
        assert self.store.catalog.search("stage:refused") == []
        elsewhere = self._another_machine()
        assert other not in elsewhere["names"], elsewhere
        assert elsewhere["refused"] == [], elsewhere
        assert set(elsewhere["ids"]) == self._live(), elsewhere

    def _another_machine(self) -> dict[str, list[str]]:
        """What the catalog of another machine, built from the root now, holds."""
        folder = Path(tempfile.mkdtemp(prefix="cas-elsewhere-"))
        repo = self.store.repo
        other = LocalCatalog(repo.space, repo.journal, folder)
        try:
            other.sync()
            return {
                "names": other.catalog.names(),
                "refused": [r["id"] for r in other.catalog.search("stage:refused")],
                "ids": [r["id"] for r in other.catalog.list(limit=10_000)],
            }
        finally:
            other.close()
            shutil.rmtree(folder, ignore_errors=True)

    @invariant()
    def names_resolve_and_load(self) -> None:
        assert self.store.list_artifacts() == sorted(self.by_name)
        for name, aid in self.by_name.items():
            meta = self.store.get_metadata(name)
            assert meta["id"] == aid
            value = self.values[aid]
            assert self.store.load(name) == value
            if isinstance(value, bytes):
                assert meta["content_id"] == blake3.blake3(value).hexdigest()

    @invariant()
    def catalog_agrees(self) -> None:
        cat = self.store.catalog
        live = self._live()
        for aid in live:
            got = cat.get(aid)
            assert got is not None
            assert got.tags == self.tags[aid] and got.parent_ids == self.parents[aid]
        for aid in self.deleted:
            assert cat.get(aid) is None
        for key in ("stage", "team"):
            for value in ("dev", "prod", "fraud"):
                expect = {a for a in live if self.tags[a].get(key) == value}
                assert {a.id for a in cat.search(f"{key}:{value}", limit=1000)} == expect
        for aid in live:
            lineage = cat.get_lineage(aid)
            assert {p.id for p in lineage["parents"]} == set(self.parents[aid]) & live
