"""fsck: read and verify every object, check every ref and record points at something
present, and name the artifacts each problem affects. ``repair`` moves corrupt objects,
damaged catalog journal entries and damaged ref files to ``<root>/quarantine/`` (never
deleting data), puts each such ref back from its history, writes again the journal
entry of a record that still reads, and says which artifacts to re-save."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from cas.admin import pack_check
from cas.errors import CasError, FormatError, IntegrityError, ObjectNotFound
from cas.objects.ids import ObjectId
from cas.objects.kinds import BASE, references, unpack
from cas.objects.space import object_path
from cas.repo import checkpoints, segments
from cas.repo.journal import parse_stamp
from cas.repo.local_catalog import RESYNC_WINDOW
from cas.repo.records import check_record
from cas.repo.repository import HasRepository, Repository, repository
from cas.storage import Stat

Progress = Callable[[str, int], None]


@dataclass(frozen=True, slots=True)
class Problem:
    # "corrupt" | "missing" | "damaged-pack" | "dangling-ref" | "damaged-ref" | "damaged-journal" |
    # "damaged-checkpoint" | "damaged-segment" | "damaged-midx" |
    # "unjournaled" | "lost-journal-entry" | "unpublished-update"
    kind: str
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
    repaired: list[str] = field(default_factory=list)  # what --repair did, one line each

    @property
    def ok(self) -> bool:
        return not self.problems


Verified = tuple[str | None, list[ObjectId], ObjectId | None]


def _verify(repo: Repository, oid: ObjectId) -> Verified:
    """(problem text or None, the object's references, its delta base or None). A
    delta is verified through its chain of bases; when a base below it is missing or
    corrupt, that base is the problem (reported on its own, with the artifacts that
    reach it through this delta) and this object's references are unknown."""
    try:
        header, payload = repo.space.read_entry(oid)
        kind = header.kind
        refs = [ref for ref, role in references(kind, oid, payload) if role != BASE]
        if kind == "record":
            check_record(oid, unpack(oid, payload))
    except (IntegrityError, FormatError, ObjectNotFound) as exc:
        base = _base_of(repo, oid)
        below = isinstance(exc, ObjectNotFound) or getattr(exc, "object_id", oid) != oid
        if base is not None and below:
            return None, [], base
        return str(exc), [], None
    base = header.base
    if kind != "chunks":
        return None, refs, base
    # A chunk list is verified by its content's hash; a bad or missing chunk is the
    # chunk's problem (reported on its own), not the list's.
    if not repo.space.has_many(refs) >= set(refs):
        return None, refs, base
    try:
        repo.space.get(oid)
    except IntegrityError as exc:
        if exc.object_id == oid:
            return str(exc), refs, base
    except ObjectNotFound:
        pass
    return None, refs, base


def check(
    target: Repository | HasRepository,
    *,
    repair: bool = False,
    progress: Progress | None = None,
    settle: float | None = None,
) -> FsckReport:
    """Verify the store. An update of a name claimed in its history more than ``settle``
    seconds ago (default: the refs lock timeout) and not published is reported: a
    writer died mid-update, or the ref file was deleted or rewritten."""
    repo = repository(target)
    report = FsckReport()
    objects = _verify_objects(repo, progress or (lambda what, n: None))
    report.objects = len(objects.present)
    report.bytes = sum(st.size for st in objects.present.values())
    refs_items, ref_problems = _read_refs(repo)
    report.refs = len(refs_items) + len(ref_problems)
    journal_problems, stamps = _read_journal(repo)
    repo.sync()
    record_ids = _record_ids(repo, refs_items, stamps, objects.present)
    report.records = len(record_ids)
    names = {rid: name for name, rid in refs_items}
    labels = _trace_records(repo, objects, record_ids, names)

    report.problems.extend(ref_problems)
    live = (record_ids & set(objects.present)) - _puts(stamps)
    report.problems.extend(_unjournaled(repo, live, labels))
    report.problems.extend(_lost_tag_entries(repo, set(stamps), labels))
    wait = repo.names.lock_timeout if settle is None else settle
    report.problems.extend(_unpublished(repo, {p.object_id for p in ref_problems}, wait))
    report.problems.extend(_dangling_refs(refs_items, objects.present))
    report.problems.extend(_damaged_journal(repo, journal_problems, labels))
    report.problems.extend(_object_problems(repo, objects))
    report.problems.extend(_pack_problems(repo, objects))
    report.problems.extend(
        Problem("damaged-midx", name, why) for name, why in pack_check.midx_problems(repo)
    )
    puts = [s for s in stamps if (parse_stamp(s) or ("",))[0] == "put"]
    report.problems.extend(
        Problem("damaged-checkpoint", name, why)
        for name, why in checkpoints.verify(repo.storage, repo.index.catalog, puts, RESYNC_WINDOW)
    )
    report.problems.extend(
        Problem("damaged-segment", name, why) for name, why in segments.verify(repo.journal)
    )
    if repair:
        _repair(repo, report, objects.bad)
    return report


@dataclass(slots=True)
class _Objects:
    """What verifying every object found, and which artifacts each problem affects."""

    present: dict[ObjectId, Stat]
    bad: dict[ObjectId, str] = field(default_factory=dict)  # corrupt object -> why
    children: dict[ObjectId, list[ObjectId]] = field(default_factory=dict)
    missing: dict[ObjectId, set[ObjectId]] = field(default_factory=dict)  # -> who points at it
    affected: dict[ObjectId, set[str]] = field(default_factory=dict)  # -> artifact labels


def _verify_objects(repo: Repository, step: Progress) -> _Objects:
    """Read and verify every object (four at a time), then name what is referenced but
    not present."""
    found = _Objects(present=dict(repo.space.iter_stats()))
    present = found.present
    bases: dict[ObjectId, ObjectId] = {}
    with ThreadPoolExecutor(max_workers=4, thread_name_prefix="cas-fsck") as pool:
        verified = pool.map(lambda o: _verify(repo, o), present)
        for n, (oid, (problem, refs, base)) in enumerate(zip(present, verified, strict=True), 1):
            if problem:
                found.bad[oid] = problem
            elif refs:
                found.children[oid] = refs
            if base is not None:
                bases[oid] = base
            if n % 500 == 0:
                step("verified", n)
    step("verified", len(present))
    # An object kept only as a delta base (an old version's folder) needs only its own
    # base: what it points at may rightly have been collected.
    for oid in _base_only(found.children, bases):
        found.children.pop(oid, None)
    for oid, base in bases.items():
        found.children.setdefault(oid, []).append(base)
    for parent, refs in found.children.items():
        for r in refs:
            if r not in present:
                found.missing.setdefault(r, set()).add(parent)
    return found


def _base_only(
    children: Mapping[ObjectId, list[ObjectId]], bases: Mapping[ObjectId, ObjectId]
) -> set[ObjectId]:
    """The delta bases that nothing needed points at as content: start from every base,
    then keep out each one that an object outside the set points at, until none moves."""
    only = set(bases.values())
    while True:
        needed = {r for p, refs in children.items() if p not in only for r in refs}
        smaller = only - needed
        if smaller == only:
            return only
        only = smaller


def _record_ids(
    repo: Repository,
    refs_items: list[tuple[str, str]],
    stamps: list[str],
    present: Mapping[ObjectId, Stat],
) -> set[str]:
    """Every record a name, this machine's catalog or a present journaled record holds."""
    journaled = {p[1] for p in map(parse_stamp, stamps) if p is not None}
    record_ids = set(repo.index.catalog.ids()) | {rid for _, rid in refs_items}
    return record_ids | {rid for rid in journaled if rid in present}


def _trace_records(
    repo: Repository, objects: _Objects, record_ids: set[str], names: dict[str, str]
) -> dict[str, str]:
    """Walk every record's closure to learn which artifacts each bad or missing object
    hurts (a record that is not present is missing itself); the label of each record."""
    trouble = set(objects.bad) | set(objects.missing)
    labels: dict[str, str] = {}
    for rid in sorted(record_ids):
        rid = ObjectId(rid)
        labels[rid] = label = f"{names.get(rid) or _record_name(repo, rid)} ({rid[:12]})"
        if rid not in objects.present:
            objects.missing.setdefault(rid, set())
            trouble.add(rid)
        stack, seen = [rid], set()
        while stack:
            oid = stack.pop()
            if oid in seen:
                continue
            seen.add(oid)
            if oid in trouble:
                objects.affected.setdefault(oid, set()).add(label)
            stack.extend(objects.children.get(oid, ()))
    return labels


def _dangling_refs(
    refs_items: list[tuple[str, str]], present: Mapping[ObjectId, Stat]
) -> list[Problem]:
    return [
        Problem("dangling-ref", rid, f"ref {name!r} points at a missing record")
        for name, rid in refs_items
        if rid not in present
    ]


def _damaged_journal(
    repo: Repository, damaged: list[tuple[str, str, str]], labels: dict[str, str]
) -> list[Problem]:
    problems = []
    for stamp, rid, why in damaged:
        who = (
            (labels.get(rid) or f"{_record_name(repo, ObjectId(rid))} ({rid[:12]})",) if rid else ()
        )
        problems.append(Problem("damaged-journal", stamp, why, who))
    return problems


def _object_problems(repo: Repository, objects: _Objects) -> list[Problem]:
    """A problem for each corrupt object, then for each missing one, with the artifacts
    each affects."""
    problems = [
        Problem("corrupt", oid, text, tuple(sorted(objects.affected.get(oid, ()))))
        for oid, text in sorted(objects.bad.items())
    ]
    for oid, parents in sorted(objects.missing.items()):
        lists = sorted(p for p in parents if _kind(repo, p) == "chunks")
        deltas = sorted(p for p in parents if _base_of(repo, p) == oid)
        detail = "referenced but not present"
        if deltas:
            detail = (
                f"delta base of {', '.join(deltas)} not present: "
                f"{'they' if len(deltas) > 1 else 'it'} cannot be decoded (the base was "
                "deleted, or the delta is damaged); save the affected artifacts again"
            )
        elif lists:
            detail = (
                f"chunk of chunk list {', '.join(lists)} not present: the chunk was deleted, "
                "or the list is damaged (a flipped digest names a chunk that never existed)"
            )
        problems.append(
            Problem("missing", oid, detail, tuple(sorted(objects.affected.get(oid, ()))))
        )
    return problems


def _pack_problems(repo: Repository, objects: _Objects) -> list[Problem]:
    """Packs whose bytes or index are damaged, with the artifacts their objects serve."""
    problems = []
    for pack_id, detail in pack_check.pack_problems(repo):
        labels: set[str] = set()
        for oid in pack_check.objects_of(repo, pack_id):
            labels |= objects.affected.get(oid, set())
        problems.append(
            Problem("damaged-pack", pack_id, f"pack {pack_id}: {detail}", tuple(sorted(labels)))
        )
    return problems


def _repair(repo: Repository, report: FsckReport, bad: Mapping[ObjectId, str]) -> None:
    """Quarantine each corrupt object (a packed one: its pack is rewritten with every
    object that still verifies), then settle each problem that can be settled."""
    in_packs: dict[str, list[ObjectId]] = {}
    for oid in sorted(bad):
        try:
            data = repo.storage.read(object_path(oid))
        except FileNotFoundError:
            where = repo.space.packs.find(oid)
            if where is not None:
                in_packs.setdefault(where.pack, []).append(oid)
                report.quarantined.append(oid)
            continue
        repo.storage.write_atomic(f"quarantine/{oid}", data)
        repo.storage.delete(object_path(oid))
        report.quarantined.append(oid)
    damaged = {p.object_id for p in report.problems if p.kind == "damaged-pack"}
    for pack_id in sorted(in_packs.keys() | damaged):
        report.repaired.append(pack_check.salvage(repo, pack_id, in_packs.get(pack_id, ())))
    for found in report.problems:
        if found.kind == "damaged-ref":
            _restore_ref(repo, found.object_id, report)
        elif found.kind == "damaged-journal":
            _set_entry_aside(repo, found, report)
        elif found.kind == "lost-journal-entry":
            _write_tags_again(repo, found, report)
        elif found.kind == "damaged-checkpoint":
            # Derived from the journal: set aside, a new machine reads the one before
            # it or the journal; gc or the next sync past EVERY entries writes another.
            path = f"{checkpoints.CHECKPOINTS}/{found.object_id}"
            with contextlib.suppress(FileNotFoundError):
                repo.storage.write_atomic(
                    f"quarantine/checkpoints/{found.object_id}", repo.storage.read(path)
                )
            repo.storage.delete(path)
            report.repaired.append(f"checkpoint {found.object_id} set aside in quarantine/")
        elif found.kind == "damaged-segment":  # a copy of entries that stay: it goes
            repo.storage.delete(repo.journal.path(found.object_id))
            report.repaired.append(f"journal segment {found.object_id} removed")
        elif found.kind == "damaged-midx":
            report.repaired.append(pack_check.remove_midx(repo, found.object_id))
        elif found.kind == "unjournaled":
            repo.journal.append({"op": "put", "id": found.object_id})
            report.repaired.append(f"journal entry of {found.artifacts[0]} written again")
    repo.sync()  # what was set aside is no longer damaged


def _restore_ref(repo: Repository, name: str, report: FsckReport) -> None:
    """Keep a damaged ref file's bytes in quarantine and put the ref back from history."""
    try:
        restored = repo.names.restore(name)
    except IntegrityError as exc:
        report.repaired.append(f"ref {name!r} left as it is: {exc}")
        return
    if restored is None:
        return  # it reads again
    damaged, rid = restored
    repo.storage.write_atomic(f"quarantine/refs/{name}", damaged)
    report.quarantined.append(f"refs/{name}")
    now = f"points at {rid} again" if rid else "is deleted, as its history says"
    report.repaired.append(f"ref {name!r} restored from its history: it {now}")


def _write_tags_again(repo: Repository, problem: Problem, report: FsckReport) -> bool:
    """Journal again the tags a lost entry set, as this machine's catalog holds them;
    False if it holds none from that entry."""
    rid = parse_stamp(problem.object_id)[1]  # type: ignore[index]
    tags = _lost_tags(repo, set(repo.journal.stamps())).get(problem.object_id)
    if not tags:
        return False
    stamp = repo.journal.append({"op": "tag", "id": rid, "tags": tags})
    repo.index.catalog.tag(rid, tags, stamp)
    who = problem.artifacts[0] if problem.artifacts else rid
    report.repaired.append(f"tags of {who} journaled again from this machine's catalog: {stamp}")
    return True


def _set_entry_aside(repo: Repository, problem: Problem, report: FsckReport) -> None:
    """Move a damaged catalog journal entry to quarantine; write again what can be known."""
    stamp = problem.object_id
    parsed = parse_stamp(stamp)
    path = repo.journal.path(stamp)
    try:
        data = repo.storage.read(path)
    except FileNotFoundError:
        return
    repo.storage.write_atomic(f"quarantine/journal/{stamp}", data)
    repo.storage.delete(path)
    report.quarantined.append(f"journal/{stamp}")
    op, rid = parsed if parsed else ("", "")
    who = problem.artifacts[0] if problem.artifacts else rid
    if op == "put":
        try:
            reads = repo.index.read_record(rid) is not None
        except CasError:
            reads = False
        if reads:
            repo.journal.append({"op": "put", "id": rid})
            report.repaired.append(
                f"journal entry {stamp} written again: the record of {who} reads"
            )
        else:
            report.repaired.append(
                f"journal entry {stamp} set aside: the record of {who} does not read; save it again"
            )
    elif op == "tag" and not _write_tags_again(repo, problem, report):
        report.repaired.append(
            f"journal entry {stamp} set aside: the tags it set on {who} are lost; tag it again"
        )
    elif op == "delete":
        report.repaired.append(
            f"journal entry {stamp} set aside: {who} is listed again; "
            f"'cas rm' it again if it should be gone"
        )


def _read_refs(repo: Repository) -> tuple[list[tuple[str, str]], list[Problem]]:
    """Every readable ``(name, id)``, and a problem for each ref file that is not."""
    try:
        return repo.names.items(), []
    except IntegrityError:
        pass  # one damaged file: read them one by one to name each
    items: list[tuple[str, str]] = []
    problems: list[Problem] = []
    names = repo.names.list()
    for name in names:
        try:
            rid = repo.names.read(name)
        except IntegrityError as exc:
            problems.append(Problem("damaged-ref", name, str(exc), (name,)))
            continue
        if rid is not None:
            items.append((name, rid))
    return items, problems


def _puts(stamps: list[str]) -> set[str]:
    return {p[1] for p in map(parse_stamp, stamps) if p is not None and p[0] == "put"}


def _unjournaled(repo: Repository, live: set[str], labels: dict[str, str]) -> list[Problem]:
    """A problem for each record a name or this machine's catalog holds that no journal
    entry registers (the entry was deleted): a catalog built from the journal elsewhere
    lacks it, and a gc there keeps it only while a name or kept history reaches it."""
    doubt = live - set(repo.index.catalog.tombstones())
    if doubt:
        doubt -= _puts(repo.journal.stamps())  # listed again: after any save fsck saw
    return [
        Problem(
            "unjournaled",
            rid,
            "no catalog journal entry registers this record (deleted?): a catalog rebuilt "
            "from the journal lacks it; 'cas fsck --repair' writes the entry again",
            (labels.get(rid, rid[:12]),),
        )
        for rid in sorted(doubt)
    ]


def _lost_tags(repo: Repository, listed: set[str]) -> dict[str, dict[str, str | None]]:
    """Tags this machine's catalog holds from journal entries that are gone, by stamp."""
    lost: dict[str, dict[str, str | None]] = {}
    for tags in repo.index.catalog.tag_stamps().values():
        for key, (stamp, value) in tags.items():
            parsed = parse_stamp(stamp)
            if parsed is not None and parsed[0] == "tag" and stamp not in listed:
                lost.setdefault(stamp, {})[key] = value
    return lost


def _lost_tag_entries(repo: Repository, listed: set[str], labels: dict[str, str]) -> list[Problem]:
    """A problem for each tag entry this machine's catalog applied that the journal no
    longer holds (deleted): other machines lack the tags it set."""
    lost = _lost_tags(repo, listed)
    if lost:
        lost = _lost_tags(repo, set(repo.journal.stamps()))  # listed again: a tag since
    problems = []
    for stamp, tags in sorted(lost.items()):
        rid = parse_stamp(stamp)[1]  # type: ignore[index]
        shown = ", ".join(f"{k}={v}" if v is not None else f"-{k}" for k, v in sorted(tags.items()))
        problems.append(
            Problem(
                "lost-journal-entry",
                stamp,
                f"catalog journal entry {stamp}, which this machine applied, is gone "
                f"(deleted?): machines that build their catalog from the journal lack its "
                f"tags ({shown}); 'cas fsck --repair' writes them again",
                (labels.get(rid, rid[:12]),),
            )
        )
    return problems


def _unpublished(repo: Repository, skip: set[str], settle: float) -> list[Problem]:
    """A problem for each name whose ref disagrees with its newest history entry."""
    problems = []
    names = repo.names.log_names()
    for name in names:
        if name in skip:
            continue
        try:
            found = repo.names.unpublished(name)
        except IntegrityError as exc:
            problems.append(Problem("damaged-ref", name, str(exc), (name,)))
            continue
        if found is None:
            continue
        entry, owner, alive, command = found
        age = time.time() - entry.time
        if age <= settle:
            continue  # a save in flight, most likely
        state = "" if alive is None else ", still running" if alive else ", no longer running"
        problems.append(
            Problem(
                "unpublished-update",
                name,
                f"ref {name!r} does not hold {entry.new or 'nothing'}, which its newest "
                f"history entry ({age:.0f} s old, by {owner}{state}) says it holds: a writer "
                "died between claiming and publishing the update, or the ref file was "
                f"deleted or rewritten. If no save of {name!r} is running, roll the update "
                f"back with: {command} (then save it again)",
                (name,),
            )
        )
    return problems


def _read_journal(repo: Repository) -> tuple[list[tuple[str, str, str]], list[str]]:
    """Read every catalog journal entry: (stamp, record id, why) of each that does not
    read, and every entry's stamp."""
    stamps = repo.journal.stamps()
    damaged: list[tuple[str, str, str]] = []

    def note(stamp: str, exc: IntegrityError) -> None:
        parsed = parse_stamp(stamp)
        damaged.append((stamp, parsed[1] if parsed else "", str(exc)))

    for _ in repo.journal.read(stamps, on_error=note):
        pass
    return damaged, stamps


def _base_of(repo: Repository, oid: ObjectId) -> ObjectId | None:
    """An object's delta base, from its header; None if it is not a delta (or does not
    read)."""
    try:
        return repo.space.head(oid).base
    except CasError:
        return None


def _kind(repo: Repository, oid: ObjectId) -> str | None:
    try:
        return repo.space.kind(oid)
    except CasError:
        return None


def _record_name(repo: Repository, rid: ObjectId) -> str:
    try:
        record = repo.index.catalog.get(rid)
        if record:
            return str(record["name"])
        return str(check_record(rid, repo.space.get_value(rid, "record"))["name"])
    except (CasError, KeyError):
        return "?"
