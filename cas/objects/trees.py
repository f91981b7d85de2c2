"""Folders as trees: each file a blob (its id is its b3sum), each subfolder a tree,
modes kept as git keeps them (executable or not, symlinks as links)."""

from __future__ import annotations

import contextlib
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Final

from cas.errors import IntegrityError, ObjectNotFound
from cas.objects.ids import ObjectId
from cas.objects.kinds import MODE_DIR, MODE_EXEC, MODE_LINK, Tree, TreeEntry, mode_of
from cas.objects.space import ObjectSpace


def store_dir(space: ObjectSpace, path: str | os.PathLike[str]) -> tuple[ObjectId, int]:
    """Store a folder; return (tree id, total bytes of its files)."""
    entries: list[TreeEntry] = []
    total = 0
    with os.scandir(path) as it:
        for item in sorted(it, key=lambda e: e.name):
            st = item.stat(follow_symlinks=False)
            mode = mode_of(st.st_mode)
            if mode == MODE_DIR:
                oid, size = store_dir(space, item.path)
            elif mode == MODE_LINK:
                target = os.readlink(item.path).encode()
                oid, size = space.put(target), len(target)
            elif item.is_file(follow_symlinks=False):
                oid, size = space.put_file(item.path), st.st_size
            else:
                continue  # sockets, fifos, devices: not content
            entries.append(TreeEntry(item.name, mode, oid))
            total += size
    return space.put_payload("tree", Tree.of(entries).payload()), total


def read_tree(space: ObjectSpace, tree_id: str) -> Tree:
    """A verified tree. The kind is checked: read_object leaves a chunk list's payload
    to be verified by its content, so an object whose header claims "chunks" must never
    be taken for a tree."""
    kind, payload = space.read_object(tree_id)
    if kind != "tree":
        raise IntegrityError(
            tree_id, f"object {tree_id} should be a tree but is a {kind}; run 'cas fsck'"
        )
    return Tree.parse(tree_id, payload)


def find_entry(space: ObjectSpace, tree_id: str, path: str, label: str = "") -> TreeEntry:
    """The entry at ``path`` (``a/b/c.txt``) below a tree, reading one tree per folder on
    the way; ``ObjectNotFound`` naming the path if there is none."""
    parts = [p for p in path.strip("/").split("/") if p]
    if not parts or any(p in (".", "..") for p in parts):
        raise ObjectNotFound(path, f"{path!r} is not a path inside a folder artifact")
    current = tree_id
    for depth, part in enumerate(parts):
        found = next((e for e in read_tree(space, current).entries if e.name == part), None)
        if found is None or (depth < len(parts) - 1 and not found.is_dir):
            where = f" of artifact {label}" if label else ""
            raise ObjectNotFound(path, f"no file {path!r} in the folder{where}")
        if depth == len(parts) - 1:
            return found
        current = found.id
    raise AssertionError("unreachable")


def checkout(space: ObjectSpace, tree_id: str, dest: str | os.PathLike[str]) -> Path:
    """Write a tree's files under ``dest`` (created if missing); return it.

    Folders are made first, then files are written by a few threads (reads, checks
    and writes overlap). Each file's content is verified before a byte of it is
    written. A file that is new is written in place (as git and restic do: a killed
    checkout may leave its last files short; run it again); one that replaces an
    existing file goes to a temporary name and is renamed over it, so what was there
    is never left half-overwritten. Names come from a verified tree and are checked
    again here, so no entry can write outside ``dest``.
    """
    root = Path(dest)
    files: list[tuple[str, TreeEntry]] = []
    _make_folders(space, tree_id, os.fspath(root), files)
    if len(files) <= 8:
        for target, entry in files:
            _write_file(space, target, entry)
        return root
    with ThreadPoolExecutor(CHECKOUT_THREADS, thread_name_prefix="cas-checkout") as pool:
        for _ in pool.map(lambda f: _write_file(space, *f), files):
            pass
    return root


#: Threads writing files in a checkout: creating and writing small files waits on the
#: filesystem's metadata, and overlaps well beyond the core count.
CHECKOUT_THREADS: Final = 8


def _make_folders(
    space: ObjectSpace, tree_id: str, folder: str, files: list[tuple[str, TreeEntry]]
) -> None:
    os.makedirs(folder, exist_ok=True)
    for entry in read_tree(space, tree_id).entries:
        if entry.name in (".", "..") or "/" in entry.name or os.sep in entry.name:
            raise IntegrityError(tree_id, f"tree {tree_id} has an unsafe entry name {entry.name!r}")
        target = os.path.join(folder, entry.name)
        if entry.mode == MODE_DIR:
            _make_folders(space, entry.id, target, files)
        else:
            files.append((target, entry))


def _write_file(space: ObjectSpace, target: str, entry: TreeEntry) -> None:
    if entry.mode == MODE_LINK:
        if os.path.lexists(target):
            os.unlink(target)
        os.symlink(space.get(entry.id).decode(), target)
        return
    mode = 0o755 if entry.mode == MODE_EXEC else 0o644
    try:
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    except FileExistsError:
        tmp = os.path.join(os.path.dirname(target), f".{os.path.basename(target)}.cas-tmp")
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        _write_new(space, tmp, entry, mode)
        os.chmod(tmp, mode)
        os.replace(tmp, target)
        return
    _write_into(space, fd, target, entry)


def _write_new(space: ObjectSpace, path: str, entry: TreeEntry, mode: int) -> None:
    _write_into(space, os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode), path, entry)


def _write_into(space: ObjectSpace, fd: int, path: str, entry: TreeEntry) -> None:
    """Write an entry's verified content into ``fd`` (closed after); on any error the
    file is removed, so no short file is left by a failed (not killed) checkout."""
    try:
        kind, payload = space.read_object(entry.id)  # one read, verified
        if kind == "blob":
            _write_all(fd, payload)
        else:
            with space.open(entry.id) as src:  # chunked: verified chunk by chunk
                while block := src.read(1 << 20):
                    _write_all(fd, block)
    except BaseException:
        os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(path)
        raise
    os.close(fd)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def tree_size(space: ObjectSpace, tree_id: str) -> int:
    """Total bytes of the files under a tree."""
    total = 0
    for entry in read_tree(space, tree_id).entries:
        if entry.mode == MODE_DIR:
            total += tree_size(space, entry.id)
        else:
            total += space.size(entry.id)
    return total


def walk_tree(space: ObjectSpace, tree_id: str) -> list[tuple[str, TreeEntry]]:
    """Every entry under a tree with its path, depth first."""
    out: list[tuple[str, TreeEntry]] = []
    for entry in read_tree(space, tree_id).entries:
        out.append((entry.name, entry))
        if entry.mode == MODE_DIR:
            out.extend((f"{entry.name}/{p}", e) for p, e in walk_tree(space, entry.id))
    return out
