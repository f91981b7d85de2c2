"""Maintenance and transfer commands of ``cas``: gc, fsck, reindex, sync, du, push, pull.

Exit 1 means "problems found": fsck problems, gc refusing (a root source unreadable, so
nothing is deleted), push/pull conflicts (a ref left alone).
"""

from __future__ import annotations

import argparse
from typing import Any

from cas import catalog as _catalog
from cas.admin import fsck, gc, transfer
from cas.cli.common import EXIT_OK, EXIT_PROBLEMS, Add
from cas.cli.output import Output, duration, human_size, progress, short, show_duration
from cas.errors import CasError
from cas.repo.repository import Repository


def cmd_gc(args: argparse.Namespace, out: Output) -> int:
    with Repository(args.root, create=False) as repo, progress("gc") as bar:
        try:
            plan = gc.plan(
                repo, grace=args.grace, retention=args.retention, progress=lambda w, n: bar(w, n),
                pack_loose_from=1 if args.aggressive else gc.PACK_LOOSE_FROM if args.pack else None,
            )  # fmt: skip
        except gc.GcRefused as exc:
            return _refused(out, str(exc))
        except (CasError, _catalog.CatalogError, OSError) as exc:
            # Planning only reads: whatever failed, a root may have gone unseen.
            return _refused(
                out,
                f"gc deletes nothing: a root could not be read ({exc}); run gc again once it can",
            )
        result = (
            None
            if args.dry_run
            else gc.execute(repo, plan, progress=lambda w, n: bar(w, n), aggressive=args.aggressive)
        )
    summary = plan.summary()
    doc: dict[str, Any] = {
        "dry_run": args.dry_run,
        "grace": plan.grace,
        "retention": plan.retention,
    }
    doc["plan"] = summary
    doc["result"] = None if result is None else {
        "deleted": result.deleted, "bytes_freed": result.bytes_freed, "spared": result.spared,
        "temp_removed": result.temp_removed, "log_entries_pruned": result.log_entries_pruned,
        "packed": result.packed, "repacked": result.repacked,
        "repacked_from": result.repacked_from, "repacked_to": result.repacked_to,
    }  # fmt: skip
    out.document(doc)
    if plan.missing:
        out.note(
            f"{len(plan.missing)} objects that names, history or records point at are absent: "
            "lost (run 'cas fsck'), or collected by an earlier gc with a shorter --retention"
        )
    if result is None:
        rows = [
            ("objects", plan.objects, ""),
            ("reachable", plan.reachable, ""),
            (
                "young kept",
                plan.young,
                f"unreachable, younger than --grace {show_duration(plan.grace)}",
            ),
            ("to delete", len(plan.delete), human_size(plan.bytes_freed)),
        ]
        for label, n, note in rows:
            out.line(f"{label + ':':<12} {n:>8}" + (f"  ({note})" if note else ""))
        if plan.temp_files:
            out.line(
                f"{'temp files:':<12} {len(plan.temp_files):>8}  (left by interrupted writers)"
            )
        if plan.delete:
            out.line("dry run: nothing deleted; run without --dry-run to delete them")
        return EXIT_OK
    if result.deleted or result.temp_removed:
        out.line(f"deleted {result.deleted} objects, freed {human_size(result.bytes_freed)}")
    else:
        out.line("nothing to delete")
    if result.spared:
        out.line(f"spared {result.spared} objects that became live during gc")
    if result.packed:
        out.line(f"packed {result.packed} old loose objects")
    if result.repacked:
        out.line(
            f"repacked {result.repacked} objects: {human_size(result.repacked_from)} -> "
            f"{human_size(result.repacked_to)}"
        )
    return EXIT_OK


def _refused(out: Output, why: str) -> int:
    out.document({"refused": why})
    out.note(why)
    return EXIT_PROBLEMS


def cmd_fsck(args: argparse.Namespace, out: Output) -> int:
    with Repository(args.root, create=False) as repo, progress("fsck") as bar:
        report = fsck.check(repo, repair=args.repair, progress=lambda w, n: bar(w, n))
    out.document({
        "ok": report.ok, "objects": report.objects, "bytes": report.bytes, "refs": report.refs,
        "records": report.records, "quarantined": report.quarantined, "repaired": report.repaired,
        "problems": [
            {"kind": p.kind, "object_id": p.object_id, "detail": p.detail, "artifacts": list(p.artifacts)}
            for p in report.problems
        ],
    })  # fmt: skip
    for problem in report.problems:
        out.line(problem.describe())
    for oid in report.quarantined:
        out.line(f"quarantined {oid}")
    for line in report.repaired:
        out.line(line)
    if report.quarantined:
        hurt = sorted(
            {a for p in report.problems if p.object_id in report.quarantined for a in p.artifacts}
        )
        if hurt:
            out.line("save these artifacts again: " + ", ".join(hurt))
    return EXIT_OK if report.ok else EXIT_PROBLEMS


def cmd_reindex(args: argparse.Namespace, out: Output) -> int:
    with Repository(args.root, create=False) as repo:
        report = repo.reindex()
    out.document(report)
    for db, n in sorted(report["changed"].items()):
        out.line(f"catalog {db}: {n} entries changed")
    for ref in report["dangling_refs"]:
        out.line(f"dangling ref {ref}: its record is missing; run 'cas fsck'")
    for entry in report["damaged"]:
        out.line(f"skipped {entry}")
    return EXIT_PROBLEMS if report["dangling_refs"] or report["damaged"] else EXIT_OK


def cmd_sync(args: argparse.Namespace, out: Output) -> int:
    with Repository(args.root, create=False) as repo:
        n = repo.sync(full=args.full)
    out.document({"entries": n, "full": args.full})
    if n:  # as git fetch: quiet when there was nothing to bring
        out.line(f"catalog: {n:,} journal {'entry' if n == 1 else 'entries'} applied")
    return EXIT_OK


def cmd_du(args: argparse.Namespace, out: Output) -> int:
    with Repository(args.root, create=False) as repo:
        objects = stored = 0
        for _, st in repo.space.iter_stats():
            objects += 1
            stored += st.size
        records = repo.index.catalog.list(limit=1 << 62)
        logical = sum(int(r.get("size") or 0) for r in records)
        names = len(repo.names.list())
    ratio = logical / stored if stored else 0.0
    out.document({
        "objects": objects, "stored_bytes": stored, "artifacts": len(records), "names": names,
        "logical_bytes": logical, "dedup_ratio": round(ratio, 3),
    })  # fmt: skip
    out.line(f"{'objects:':<15} {objects}")
    out.line(f"{'stored:':<15} {human_size(stored)} ({stored} bytes)")
    out.line(f"{'artifacts:':<15} {len(records)} ({names} names)")
    out.line(f"{'logical:':<15} {human_size(logical)} ({logical} bytes)")
    out.line(f"{'dedup ratio:':<15} {ratio:.2f}x")
    return EXIT_OK


def _transfer(args: argparse.Namespace, out: Output, *, push: bool) -> int:
    local = Repository(args.root, create=not push)
    try:
        remote = Repository(args.url, create=push)
    except BaseException:
        local.close()
        raise
    src, dst = (local, remote) if push else (remote, local)
    verb = "push" if push else "pull"
    try:
        with progress(verb) as bar:
            result = transfer.transfer(
                src, dst, args.names, force=args.force, progress=bar,
                message=f"{verb} {'to' if push else 'from'} {remote.url}",
            )  # fmt: skip
    finally:
        local.close()
        remote.close()
    out.document({"direction": verb, "url": remote.url, **result.to_dict()})
    _report(out, result)
    return EXIT_PROBLEMS if result.conflicts else EXIT_OK


def _report(out: Output, result: transfer.TransferResult) -> None:
    for u in result.refs:
        if u.status == "new":
            out.line(f" * [new]       {short(u.new)}  {u.name}")
        elif u.status in ("updated", "forced"):
            mark = "+" if u.status == "forced" else " "
            out.line(
                f" {mark} {short(u.old)}..{short(u.new)}  {u.name}"
                + (" (forced)" if mark == "+" else "")
            )
        elif u.status == "rejected":
            out.note(f"! [rejected] {u.name}: {u.reason}")
    if result.objects:
        out.line(
            f"copied {result.objects} objects ({human_size(result.bytes)}), {result.records} new artifacts"
        )


def cmd_push(args: argparse.Namespace, out: Output) -> int:
    return _transfer(args, out, push=True)


def cmd_pull(args: argparse.Namespace, out: Output) -> int:
    return _transfer(args, out, push=False)


def add_commands(add: Add) -> None:
    p = add("gc", cmd_gc, "delete objects nothing reaches (plan first with --dry-run)")
    p.add_argument("--dry-run", action="store_true", help="print the plan, delete nothing")
    p.add_argument("--pack", action="store_true",
                   help=f"also move the loose objects that live into packs (from "
                   f"{gc.PACK_LOOSE_FROM:,} of them), as git gc packs loose objects")  # fmt: skip
    p.add_argument("--aggressive", action="store_true",
                   help="with --pack (implied): pack every loose object that lives, then "
                   "rewrite every pack with delta bases chosen again over a window of "
                   "similar objects across the store, as git gc --aggressive")  # fmt: skip
    p.add_argument(
        "--grace", type=duration, default=gc.DEFAULT_GRACE, metavar="DURATION",
        help="spare unreachable objects younger than this (default 1d; 0, 90s, 30m, 12h, 2w)",
    )  # fmt: skip
    p.add_argument(
        "--retention", type=duration, default=gc.DEFAULT_RETENTION, metavar="DURATION",
        help="keep what ref history and deleted records point at for this long (default 30d)",
    )  # fmt: skip
    p = add("fsck", cmd_fsck, "verify every object; list problems and the artifacts they affect")
    p.add_argument(
        "--repair", action="store_true",
        help="move corrupt objects, damaged journal entries and ref files to "
        "<root>/quarantine/; put damaged refs back from their history",
    )  # fmt: skip
    add("reindex", cmd_reindex, "rebuild the catalog from the object space; print what changed")
    p = add("sync", cmd_sync, "bring the local catalog (cache) up to date with the store")
    p.add_argument("--full", action="store_true", help="read the whole journal again")
    for name, run, text in (
        ("push", cmd_push, "copy artifacts the store at URL lacks there, then move its refs"),
        ("pull", cmd_pull, "copy artifacts this store lacks from URL, then move its refs"),
    ):
        p = add(name, run, text)
        p.add_argument("url", metavar="URL")
        p.add_argument(
            "names", nargs="*", metavar="NAME", help="names (or folders of names); default all"
        )
        p.add_argument("--force", action="store_true", help="overwrite conflicting refs")
    add("du", cmd_du, "objects, stored bytes, logical bytes of artifacts, dedup ratio")
