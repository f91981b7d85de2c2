"""fsck: read and verify every object, check every ref and record points at something
present, and name the artifacts each problem affects. ``repair`` moves corrupt objects
to ``<root>/quarantine/`` (never deleting data) and says which artifacts to re-save."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from cas.artifacts import ArtifactStore, ref_errors
from cas.errors import CasError, IntegrityError, ObjectNotFound
from cas.ids import ObjectId
from cas.objects import references
from cas.objectspace import object_path

Progress = Callable[[str, int], None]


@dataclass(frozen=True, slots=True)
class Problem:
    kind: str  # "corrupt" | "missing" | "dangling-ref" | "unreadable-record"
    object_id: str
    detail: str
    artifacts: tuple[str, ...] = ()  # "name (id)" of each artifact it affects

    def describe(self) -> str:
        text = f"{self.kind}: {self.object_id}: {self.detail}"
        if self.artifacts:
            text += "; affects " + ", ".join(self.artifacts)
        return text


@dataclass(slots=True)
class FsckReport:
    objects: int = 0
    bytes: int = 0
    refs: int = 0
    records: int = 0
    problems: list[Problem] = field(default_factory=list)
    quarantined: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def _verify(store: ArtifactStore, oid: ObjectId) -> tuple[str | None, list[ObjectId]]:
    """(problem text or None, the object's references)."""
    try:
        kind, payload = store.space.read_object(oid)
        refs = references(kind, oid, payload)
    except IntegrityError as exc:
        return str(exc), []
    if kind != "chunks":
        return None, refs
    # A chunk list is verified by its content's hash; a bad or missing chunk is the
    # chunk's problem (reported on its own), not the list's.
    if not store.space.has_many(refs) >= set(refs):
        return None, refs
    try:
        store.space.get(oid)
    except IntegrityError as exc:
        if exc.object_id == oid:
            return str(exc), refs
    except ObjectNotFound:
        pass
    return None, refs


def check(store: ArtifactStore, *, repair: bool = False, progress: Progress | None = None) -> FsckReport:
    step = progress or (lambda what, n: None)
    report = FsckReport()
    present = dict(store.space.iter_stats())
    report.objects = len(present)
    report.bytes = sum(st.size for st in present.values())
    bad: dict[ObjectId, str] = {}
    children: dict[ObjectId, list[ObjectId]] = {}
    with ThreadPoolExecutor(max_workers=4, thread_name_prefix="cas-fsck") as pool:
        for n, (oid, (problem, refs)) in enumerate(
            zip(present, pool.map(lambda o: _verify(store, o), present), strict=True), 1
        ):
            if problem:
                bad[oid] = problem
            elif refs:
                children[oid] = refs
            if n % 500 == 0:
                step("verified", n)
    step("verified", len(present))

    missing: set[ObjectId] = set()
    for refs in children.values():
        missing.update(r for r in refs if r not in present)

    # Which artifacts does each bad or missing object hurt? Walk every record's closure.
    with ref_errors():
        refs_items = store.refs.items()
    report.refs = len(refs_items)
    store.sync()
    record_ids = set(store.index.catalog.ids()) | {rid for _, rid in refs_items}
    report.records = len(record_ids)
    names = {rid: name for name, rid in refs_items}
    trouble = set(bad) | missing
    affected: dict[ObjectId, set[str]] = {}
    for rid in sorted(record_ids):
        rid = ObjectId(rid)
        label = f"{names.get(rid) or _record_name(store, rid)} ({rid[:12]})"
        if rid not in present:
            missing.add(rid)
            trouble.add(rid)
        stack, seen = [rid], set()
        while stack:
            oid = stack.pop()
            if oid in seen:
                continue
            seen.add(oid)
            if oid in trouble:
                affected.setdefault(oid, set()).add(label)
            stack.extend(children.get(oid, ()))
    for name, rid in refs_items:
        if rid not in present:
            report.problems.append(Problem("dangling-ref", rid, f"ref {name!r} points at a missing record"))
    for oid, text in sorted(bad.items()):
        report.problems.append(Problem("corrupt", oid, text, tuple(sorted(affected.get(oid, ())))))
    for oid in sorted(missing):
        report.problems.append(
            Problem("missing", oid, "referenced but not present", tuple(sorted(affected.get(oid, ()))))
        )
    if repair:
        for oid in sorted(bad):
            data = store.storage.read(object_path(oid))
            store.storage.write_atomic(f"quarantine/{oid}", data)
            store.storage.delete(object_path(oid))
            report.quarantined.append(oid)
    return report


def _record_name(store: ArtifactStore, rid: ObjectId) -> str:
    try:
        record = store.index.catalog.get(rid)
        return str(record["name"]) if record else "?"
    except (CasError, KeyError):
        return "?"

