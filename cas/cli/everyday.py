"""The everyday commands of ``cas``: init, put, get, ls, show, log, tag, search,
lineage, set, rm."""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import sys
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, BinaryIO, Final

from cas.api.artifact_catalog import Artifact
from cas.api.artifact_store import ArtifactStore, naming_artifact, open_store
from cas.cli.common import EXIT_OK, Add, UsageError, key_values, open_root, positive, resolve
from cas.cli.output import Output, human_size, local_time, progress, short
from cas.errors import CasError, ObjectNotFound, RefConflict
from cas.objects.ids import is_id
from cas.objects.kinds import MODE_EXEC, MODE_LINK
from cas.objects.trees import checkout, find_entry
from cas.refs import ANY
from cas.repo.names import check_name

#: Files at least this big (and every folder) show progress while ``put`` stores them.
PUT_PROGRESS_MIN: Final = 32 << 20


def cmd_init(args: argparse.Namespace, out: Output) -> int:
    try:
        open_store(args.root, create=False).close()
        created = False
    except CasError:
        created = True
    store = open_root(args, create=True)
    with store:
        out.document({"root": store.url, "created": created})
        verb = "Initialized empty" if created else "Reinitialized existing"
        out.line(f"{verb} cas store in {store.url}")
    return EXIT_OK


def cmd_put(args: argparse.Namespace, out: Output) -> int:
    path = Path(args.path)
    if not path.exists():
        raise UsageError(f"no such file or folder: {args.path}")
    name = args.name or path.resolve().name
    tags = key_values(args.tag, "tag")
    with open_root(args) as store:
        check_name(name)
        big = path.is_dir() or path.stat().st_size >= PUT_PROGRESS_MIN
        with progress("put", None if big else False) as bar:
            bar(f"storing {path.name}", 0)
            aid = store.save(
                path, name, parent_ids=args.parent, tags=tags or None, artifact_type=args.type
            )
        meta = store.get_metadata(aid)
    out.document({k: meta[k] for k in ("id", "name", "content_id", "size", "type")})
    out.line(aid)
    return EXIT_OK


def _to_stdout(store: ArtifactStore, content_id: str) -> None:
    sys.stdout.flush()
    _write_content(store, content_id, sys.stdout.buffer)
    sys.stdout.buffer.flush()


def _write_content(store: ArtifactStore, content_id: str, target: BinaryIO) -> None:
    with store.repo.space.open(content_id) as src:  # verified chunk by chunk, then whole
        shutil.copyfileobj(src, target, 1 << 20)


def _write_file(store: ArtifactStore, content_id: str, dest: Path, *, executable: bool) -> None:
    """Write content to ``dest`` through a temporary file beside it: a read that fails
    verification leaves nothing behind, and never a truncated file under ``dest``."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".cas-tmp", dir=dest.parent)
    try:
        with os.fdopen(fd, "wb") as target:
            _write_content(store, content_id, target)
        os.chmod(tmp, 0o755 if executable else 0o644)
        os.replace(tmp, dest)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _own_name(info: dict[str, Any], rid: str) -> Path:
    """The file or folder name an artifact was saved from, reduced to a plain name: a
    record from a shared store must not steer a write outside the current folder."""
    name = Path(str(info.get("filename") or "")).name
    return Path(name if name not in ("", ".", "..") else rid)


def cmd_get(args: argparse.Namespace, out: Output) -> int:
    ref = args.ref.partition(":")[0]  # ':' is never in a name (git's rules)
    if out.json and args.output == "-":
        raise UsageError("--json prints one JSON document on stdout: give -o FILE, not -o -")
    with open_root(args) as store:
        rid, _ = resolve(store, ref)
        record = store.repo.record(rid)
        if record.get("content_id") is None:
            raise UsageError(f"artifact {record['name']} ({rid[:12]}) was registered without data")
        with naming_artifact(f"{record['name']} ({rid})"):
            result = _get(store, args, record, out)
    if result is not None:
        out.document(result)
    return EXIT_OK


def _get(
    store: ArtifactStore, args: argparse.Namespace, record: dict[str, Any], out: Output
) -> dict[str, Any] | None:
    """``cas get`` of one artifact's ``record`` (one with content): its result
    document, or None once the content went to stdout."""
    rid, content = record["id"], record["content_id"]
    ref, colon, inner = args.ref.partition(":")
    info = record.get("content_info") or {}
    result: dict[str, Any] = {"id": rid, "name": record["name"], "path": None}
    if colon:  # NAME:PATH: one file (or subfolder) of a folder, reading only its objects
        if record.get("content_kind") != "tree":
            raise UsageError(f"artifact {record['name']} is a single file, not a folder: "
                             f"get it as 'cas get {ref}'")  # fmt: skip
        entry = find_entry(store.space, content, inner, record["name"])
        result["file"] = inner.strip("/")
        if args.output == "-" and not entry.is_dir:
            _to_stdout(store, entry.id)
            return None
        dest = Path(args.output) if args.output else Path(entry.name)
        if not args.output and (dest.exists() or dest.is_symlink()):
            raise UsageError(f"{dest} exists; choose where to write it with -o PATH")
        dest = dest / entry.name if dest.is_dir() and not entry.is_dir else dest
        if entry.is_dir:
            checkout(store.space, entry.id, dest)
        elif entry.mode == MODE_LINK:  # as a checkout of the whole folder writes it
            os.symlink(store.space.get(entry.id).decode(), dest)
        else:
            _write_file(store, entry.id, dest, executable=entry.mode == MODE_EXEC)
        result["path"] = str(dest)
    elif args.output == "-" and info.get("path") != "dir":  # as curl and tar do
        _to_stdout(store, content)
        return None
    elif record.get("materializer") == "path":
        own = _own_name(info, rid)
        dest = Path(args.output) if args.output else own
        if not args.output and (dest.exists() or dest.is_symlink()):
            raise UsageError(f"{dest} exists; choose where to write it with -o PATH")
        if info.get("path") == "dir":
            store.load(rid, dest=dest)
        else:
            dest = dest / own if dest.is_dir() else dest
            _write_file(store, content, dest, executable=info.get("path") == "exec")
        result["path"] = str(dest)
    elif args.output:
        _write_file(store, content, Path(args.output), executable=False)
        result["path"] = args.output
    elif out.json:
        if record.get("materializer") not in ("json", "text"):
            raise UsageError(
                f"with --json, write a {record['artifact_type']} artifact to a file: -o PATH"
            )
        result["value"] = store.load(rid)
    else:
        _to_stdout(store, content)
    return result


def _summary(store: ArtifactStore, name: str, rid: str) -> dict[str, Any]:
    try:
        record = store.repo.record(rid)
    except ObjectNotFound:
        return {"name": name, "id": rid, "type": None, "size": None, "missing": True}
    return {"name": name, "id": rid, "type": record["artifact_type"], "size": record["size"]}


def cmd_ls(args: argparse.Namespace, out: Output) -> int:
    with open_root(args) as store:
        if not (out.json or args.long):
            for name in store.list_artifacts(args.prefix):
                out.line(name)
            return EXIT_OK
        rows = [_summary(store, name, rid) for name, rid in store.repo.names.items(args.prefix)]
    out.document(rows)
    for row in rows:
        size = "?" if row["size"] is None else human_size(row["size"])
        out.line(f"{row['id'][:12]}  {row['type'] or '(missing)':<10} {size:>10}  {row['name']}")
    return EXIT_OK


def cmd_show(args: argparse.Namespace, out: Output) -> int:
    with open_root(args) as store:
        meta = store.get_metadata(resolve(store, args.ref)[0])
    out.document(meta)
    source = "/".join(
        str(meta[k] or "-")
        for k in ("source_project", "source_pipeline", "source_run_id", "source_step")
    )
    rows = [
        ("id", meta["id"]),
        ("name", meta["name"]),
        ("type", meta["type"]),
        ("content", f"{meta['content_id'] or '(none)'} ({human_size(meta['size'] or 0)})"),
        ("created", meta["created_at"]),
        ("parents", ", ".join(meta["parent_ids"]) or "-"),
        ("tags", ", ".join(f"{k}={v}" for k, v in sorted(meta["tags"].items())) or "-"),
        ("source", source if source != "-/-/-/-" else "-"),
    ]
    rows += [(f"metadata.{k}", repr(v)) for k, v in sorted(meta["metadata"].items())]
    for key, value in rows:
        out.line(f"{key + ':':<10} {value}")
    return EXIT_OK


def cmd_log(args: argparse.Namespace, out: Output) -> int:
    with open_root(args) as store:
        check_name(args.name)
        entries = store.repo.names.log(args.name)
        if not entries and store.repo.names.read(args.name) is None:
            raise ObjectNotFound(
                args.name, f"no artifact named {args.name!r} and no history of one in {store.url} "
                "('cas ls' lists names)",
            )  # fmt: skip
    out.document(
        [
            {"time": e.time, "who": e.who, "old": e.old, "new": e.new, "message": e.message}
            for e in entries
        ]
    )
    for e in entries:
        out.line(f"{local_time(e.time)}  {e.who}  {short(e.old)} -> {short(e.new)}  {e.message}")
    return EXIT_OK


def cmd_tag(args: argparse.Namespace, out: Output) -> int:
    tags: dict[str, str | None] = dict(key_values(args.tags, "tag"))
    tags.update({key: None for key in args.remove})
    if not tags:
        raise UsageError("nothing to tag: give key=value pairs or --remove KEY")
    with open_root(args) as store:
        rid, _ = resolve(store, args.ref)
        store.catalog.tag(rid, **tags)
        now = store.get_metadata(rid)["tags"]
    out.document({"id": rid, "tags": now})
    return EXIT_OK


def _artifact_row(a: Artifact) -> str:
    tags = " ".join(f"{k}={v}" for k, v in sorted(a.tags.items()))
    return f"{a.id[:12]}  {a.artifact_type:<10} {a.name}" + (f"  [{tags}]" if tags else "")


def cmd_search(args: argparse.Namespace, out: Output) -> int:
    with open_root(args) as store:
        found: Sequence[Artifact] = store.catalog.search(" ".join(args.query), limit=args.limit)
    out.document([a.to_dict() for a in found])
    for a in found:
        out.line(_artifact_row(a))
    return EXIT_OK


def cmd_lineage(args: argparse.Namespace, out: Output) -> int:
    with open_root(args) as store:
        rid, _ = resolve(store, args.ref)
        if args.format:
            graph = store.catalog.lineage_graph(rid, format=args.format, depth=args.depth)
            out.document({"id": rid, "format": args.format, "graph": graph})
            out.line(graph.rstrip("\n"))
            return EXIT_OK
        found: Mapping[str, Sequence[Artifact]] = store.catalog.get_lineage(rid, depth=args.depth)
    out.document({"id": rid, **{side: [a.to_dict() for a in found[side]] for side in found}})
    for side in ("parents", "children"):
        out.line(f"{side}:")
        for a in found[side]:
            out.line("  " + _artifact_row(a))
        if not found[side]:
            out.line("  (none)")
    return EXIT_OK


def cmd_rm(args: argparse.Namespace, out: Output) -> int:
    with open_root(args) as store:
        rid, name = resolve(store, args.ref)
        if name is None:  # an id: that version goes (its name too, if it holds it)
            name = store.record(rid, tags=False).get("name")
            store.delete(rid)
        else:
            store.delete(name)
    out.document({"deleted": name or args.ref, "id": rid})
    return EXIT_OK


def _set_target(store: ArtifactStore, name: str, text: str) -> str:
    """The artifact ``cas set NAME`` points at: a name, an id, or a unique prefix of
    an id the catalog holds or of one in NAME's history (a version ``rm`` removed, as
    ``cas log NAME`` prints it)."""
    try:
        return resolve(store, text)[0]
    except ObjectNotFound:
        if is_id(text):
            return text  # set_name says what it is
        if not 4 <= len(text) < 64 or text.strip("0123456789abcdef"):
            raise
        seen = {i for e in store.repo.names.log(name) for i in (e.old, e.new) if i}
        found = sorted(i for i in seen if i.startswith(text))
        if len(found) > 1:
            listed = ", ".join(f[:16] for f in found)
            raise ObjectNotFound(text, f"short id {text!r} is ambiguous ({listed}): "
                                 "give more digits") from None  # fmt: skip
        if not found:
            raise
        return found[0]


def cmd_set(args: argparse.Namespace, out: Output) -> int:
    with open_root(args) as store:
        check_name(args.name)
        rid = _set_target(store, args.name, args.ref)
        old = store.repo.names.read(args.name)
        expected: Any = ANY
        if args.old is not None:  # git's update-ref NAME NEW OLD
            held = old is not None and len(args.old) >= 4 and old.startswith(args.old.lower())
            if not (held or (old is None and args.old == "none")):
                raise RefConflict(
                    args.name, args.old, old, f"{args.name} holds {short(old)}, not "
                    f"{args.old}: look at 'cas log {args.name}' and try again",
                )  # fmt: skip
            expected = old
        new = store.set_name(args.name, rid, expected=expected)
    out.document({"name": args.name, "id": new, "old": old, "from": rid})
    out.line(new)
    return EXIT_OK


def add_commands(add: Add) -> None:
    add("init", cmd_init, "create a store at the root (or check the one there)")
    p = add("put", cmd_put, "store a file or folder; print its artifact id")
    p.add_argument("path", metavar="FILE|DIR")
    p.add_argument("--name", help="artifact name (default: the file's base name)")
    p.add_argument("--tag", action="append", default=[], metavar="K=V", help="tag (repeatable)")
    p.add_argument(
        "--parent", action="append", default=[], metavar="ID", help="parent artifact (repeatable)"
    )
    p.add_argument("--type", help="artifact type (default: files)")
    p = add("get", cmd_get, "write an artifact's content (NAME:PATH: one file of a folder "
            "artifact) to a file, a folder or stdout")  # fmt: skip
    p.add_argument("ref", metavar="NAME|ID[:PATH]",
                   help="an artifact; ':PATH' picks one file or subfolder of a folder artifact, "
                   "reading only its objects")  # fmt: skip
    p.add_argument(
        "-o", "--output", metavar="PATH", help="where to write it ('-': standard output)"
    )
    p = add("ls", cmd_ls, "list artifact names")
    p.add_argument("prefix", nargs="?", default="", metavar="PREFIX")
    p.add_argument("-l", "--long", action="store_true", help="show id, type and size too")
    p = add("show", cmd_show, "show an artifact's metadata")
    p.add_argument("ref", metavar="NAME|ID")
    p = add("log", cmd_log, "show a name's history, newest first")
    p.add_argument("name", metavar="NAME")
    p = add("tag", cmd_tag, "set (or remove) tags on an artifact")
    p.add_argument("ref", metavar="NAME|ID")
    p.add_argument("tags", nargs="*", metavar="K=V")
    p.add_argument(
        "--remove", action="append", default=[], metavar="KEY", help="remove a tag (repeatable)"
    )
    p = add("search", cmd_search, "find artifacts: 'stage:production fraud' (tags AND words)")
    p.add_argument("query", nargs="+", metavar="QUERY")
    p.add_argument("--limit", type=positive, default=100, metavar="N")
    p = add("lineage", cmd_lineage, "show what an artifact was made from and what was made from it")
    p.add_argument("ref", metavar="NAME|ID")
    p.add_argument("--format", choices=("mermaid", "dot"), help="print a graph instead of lists")
    p.add_argument(
        "--depth", type=positive, default=None, metavar="N", help="generations (default: all)"
    )
    p = add("set", cmd_set, "point a name at an existing artifact (git's update-ref); "
            "print the id it holds")  # fmt: skip
    p.add_argument("name", metavar="NAME")
    p.add_argument("ref", metavar="ID|NAME",
                   help="an artifact id or unique prefix (also one from 'cas log NAME'), "
                   "or a name")  # fmt: skip
    p.add_argument("old", nargs="?", metavar="OLD",
                   help="move the name only if it holds this id (or prefix); "
                   "'none': only if there is no such name")  # fmt: skip
    p = add("rm", cmd_rm, "remove a name (its content stays until gc)")
    p.add_argument("ref", metavar="NAME")
