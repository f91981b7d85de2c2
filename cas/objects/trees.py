"""Folders as trees: each file a blob (its id is its b3sum), each subfolder a tree,
modes kept as git keeps them (executable or not, symlinks as links)."""

from __future__ import annotations

import contextlib
import os
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Final

from cas.errors import CasError, IntegrityError, ObjectNotFound
from cas.objects.ids import ObjectId
from cas.objects.kinds import MODE_DIR, MODE_EXEC, MODE_LINK, Tree, TreeEntry, mode_of
from cas.objects.reading import read_objects
from cas.objects.space import ObjectSpace


def store_dir(space: ObjectSpace, path: str | os.PathLike[str]) -> tuple[ObjectId, int]:
    """Store a folder; return (tree id, total bytes of its files).

    Inside ``space.bases_from(previous)`` (``previous``: the tree of the previous
    version), each file and folder may be stored as a delta against the same path in
    that tree, and a folder renamed alone at its level (``pkg-1.0/`` -> ``pkg-1.1/``)
    against the one it replaced. Reading the previous version costs one tree per folder.
    """
    return _store_dir(space, path, _previous_tree(space, space.previous_version()))


def _previous_tree(space: ObjectSpace, tree_id: ObjectId | None) -> tuple[ObjectId, Tree] | None:
    if tree_id is None:
        return None
    try:
        if space.kind(tree_id) != "tree":
            return None
        return tree_id, read_tree(space, tree_id)
    except CasError:  # a damaged or missing previous version: no bases, not a failure
        return None


def _store_dir(
    space: ObjectSpace, path: str | os.PathLike[str], previous: tuple[ObjectId, Tree] | None
) -> tuple[ObjectId, int]:
    entries: list[TreeEntry] = []
    total = 0
    with os.scandir(path) as it:
        items = sorted(it, key=lambda e: e.name)
    before = _same_paths(items, previous[1] if previous else None)
    for item in items:
        st = item.stat(follow_symlinks=False)
        mode = mode_of(st.st_mode)
        old = before.get(item.name)
        if mode == MODE_DIR:
            sub = _previous_tree(space, old.id) if old is not None and old.is_dir else None
            oid, size = _store_dir(space, item.path, sub)
        elif mode == MODE_LINK or item.is_file(follow_symlinks=False):
            with space.bases_from(old.id if old is not None and not old.is_dir else None):
                if mode == MODE_LINK:
                    target = os.readlink(item.path).encode()
                    oid, size = space.put(target), len(target)
                else:
                    oid, size = space.put_file(item.path), st.st_size
        else:
            continue  # sockets, fifos, devices: not content
        entries.append(TreeEntry(item.name, mode, oid))
        total += size
    with space.bases_from(previous[0] if previous else None):
        return space.put_payload("tree", Tree.of(entries).payload()), total


def _same_paths(items: list[os.DirEntry[str]], previous: Tree | None) -> dict[str, TreeEntry]:
    """Each name's entry in the previous version of this folder; a folder that is the
    only new one at its level takes the only old folder that is gone (a rename)."""
    if previous is None:
        return {}
    old = {e.name: e for e in previous.entries}
    names = {item.name for item in items}
    new_dirs = [i.name for i in items if i.name not in old and i.is_dir(follow_symlinks=False)]
    gone_dirs = [e for e in previous.entries if e.is_dir and e.name not in names]
    if len(new_dirs) == 1 and len(gone_dirs) == 1:
        old[new_dirs[0]] = gone_dirs[0]
    return old


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
    # Contents are read many at a time (packed ones in a few ranges of their packs,
    # one request each on an object store), and written by a few threads as they come.
    by_id: dict[ObjectId, list[tuple[str, TreeEntry]]] = {}
    for target, entry in files:
        by_id.setdefault(entry.id, []).append((target, entry))
    with ThreadPoolExecutor(CHECKOUT_THREADS, thread_name_prefix="cas-checkout") as pool:
        writes: deque[Future[None]] = deque()
        for oid, kind, payload in read_objects(space, list(by_id)):
            for target, entry in by_id[oid]:
                if kind == "blob" and entry.mode != MODE_LINK:
                    writes.append(pool.submit(_write_bytes, target, entry, payload))
                else:  # a link, or chunked content (streamed, chunk by chunk)
                    writes.append(pool.submit(_write_file, space, target, entry))
            while len(writes) > 4 * CHECKOUT_THREADS:  # bounded: wait for the oldest
                writes.popleft().result()
        for fut in writes:
            fut.result()
    return root


def _write_bytes(target: str, entry: TreeEntry, payload: bytes) -> None:
    """A file of verified content in hand (see :func:`_place`)."""
    _place(target, entry, lambda fd: _write_all(fd, payload))


def _place(target: str, entry: TreeEntry, fill: Callable[[int], None]) -> None:
    """Write a file by ``fill(fd)``: in place if it is new, else to a temporary name
    renamed over it, so what was there is never left half-overwritten; on any error the
    file being written is removed, so no short file is left by a failed (not killed)
    checkout."""
    mode = 0o755 if entry.mode == MODE_EXEC else 0o644
    try:
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
        path = target
    except FileExistsError:
        path = os.path.join(os.path.dirname(target), f".{os.path.basename(target)}.cas-tmp")
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        fill(fd)
    except BaseException:
        os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(path)
        raise
    os.close(fd)
    if path != target:
        os.chmod(path, mode)
        os.replace(path, target)


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
    _place(target, entry, lambda fd: _fill_from(space, fd, entry))


def _fill_from(space: ObjectSpace, fd: int, entry: TreeEntry) -> None:
    """An entry's verified content into ``fd``: one read of a whole blob, or a chunked
    one streamed (verified chunk by chunk)."""
    kind, payload = space.read_object(entry.id)
    if kind == "blob":
        _write_all(fd, payload)
        return
    with space.open(entry.id) as src:
        while block := src.read(1 << 20):
            _write_all(fd, block)


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
