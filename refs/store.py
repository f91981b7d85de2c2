"""RefStore: names -> ids on any fsspec filesystem, changed only by compare-and-swap.

Layout under ``root``: ``refs/<name>`` holds one line, the 64-hex id (one GET reads
it); ``logs/<name>/~<seq>`` holds update number ``seq`` (see ``refs/log.py``).

The update protocol
-------------------
It needs nothing but the four primitives of :class:`~refs.Conditional` on single
files, so it runs unchanged on object stores, which have neither locks nor appends.
To update ref ``N`` to ``new``:

1. Read the ref: value ``v``, version ``t``. Find the newest entry ``E_j`` (none:
   ``j = 0``): a few reads past the newest one this store saw before, else a
   listing of ``logs/N/``.
2. If ``E_j.new != v``, update ``j`` is in flight: its claimant wrote the entry but
   not yet the ref (``v == E_j.old``). Wait with backoff. If nothing moves for
   ``lock_timeout`` seconds, raise ``RefLocked`` naming the entry, its owner
   (pid@host), its age, and the command that deletes it.
3. Compare ``expected`` with ``v``: a mismatch raises ``RefConflict(actual=v)``.
4. **Claim**: ``create(logs/N/~<j+1>, {old: v, new, time, who, message})``, an
   exclusive create: of all writers that read state ``j``, exactly one wins; the
   others start again at 1.
5. **Publish**: ``replace(refs/N, new, t)`` (``create`` if ``v`` is absent,
   ``remove`` for a delete; nothing if ``new == v``).

Why the history is a chain in update order, on every backend:

- Entry ``j+1`` is created only by a writer that read entry ``j`` and found the ref
  settled at ``E_j.new``; it records ``old = E_j.new``. Entries are created
  exclusively and never rewritten, so ``E_{j+1}.old == E_j.new`` and sequence order
  is update order, whatever clocks, machines or crashes do.
- The entry is the serialization point, so there is no window in which the ref has
  moved and its entry is missing: a writer killed after its claim leaves the entry
  and the old ref (readers keep seeing ``v``, the update did not happen). Nothing
  is ever rolled forward or back automatically, because the claimant might only be
  stalled: like a lock file, the stuck entry is reported, and deleting it (the
  command in the message) rolls the unpublished update back.

Why no update is lost:

- From a claim of ``j+1`` to its publish, the ref holds ``E_{j+1}.old`` while the
  newest entry says ``E_{j+1}.new``: every other writer waits at step 2 and entry
  ``j+1`` is taken, so only the claimant writes the ref, and nobody has written it
  since it read ``t``. That also makes the protocol safe with version tokens that
  repeat when content repeats (S3 ETags are MD5s of the bytes): the ABA case cannot
  arise.
- A claim can land in a slot that ``prune_log`` freed: a writer read ``E_j`` as the
  newest, stalled while later entries were written and ``j`` and ``j+1`` pruned,
  then created ``j+1`` again. Pruning goes oldest first and keeps the newest, so the
  claimant checks that ``E_j`` still exists after its claim; if not, it deletes the
  claim and starts again instead of writing into the past.
- A claim whose answer is lost (a timeout: did it land?) is read back: if the entry
  holds our bytes, the update carries on.
- A publish that fails (an I/O error, a stale lock, a name conflict) is resolved
  by the claimant: if the ref still holds ``v`` and nobody claimed ``j+2``, it
  deletes its own entry, so the failed call leaves no trace; if the update did land
  (the ref holds ``new``, or ``j+2`` exists), the call succeeds.

Names form a tree (``a`` and ``a/b`` cannot both exist). Creating a ref first
checks its parents (one GET each; a stat on a local disk) and the names below it
(one listing; on a local disk one failed attempt to list ``refs/<name>``); after
publishing it checks again, and if a concurrent writer created a conflicting name
meanwhile, it deletes its own ref (a history entry "reverted: ...") and raises
``NameConflict``. Two such writers each see the other at least once (Dekker), so
at most one survives; both may lose. On a local filesystem the folders themselves
also refuse it under the write's lock.

Costs: ``read`` 1 GET; ``set`` 1 GET of the ref + 2 or 3 GETs of history (a listing,
one request per 1000 entries, when the store has not seen the name before) + 2
conditional writes; ``list`` 1 listing. On a local disk reads, listings and checks
are ``os`` calls (``refs/files.py``), about 25 system calls per ``set``, most of
them the lock file, temporary files and renames that make it atomic.
"""

from __future__ import annotations

import builtins
import contextlib
import os
import random
import time

from fsspec import AbstractFileSystem
from fsspec.implementations.local import LocalFileSystem
from fsspec.implementations.memory import MemoryFileSystem

from refs.conditional import Conditional
from refs.errors import NameConflict, RefConflict, RefError, RefLocked, RefNotFound
from refs.files import LocalFiles, files_for
from refs.history import History, Stored
from refs.ids import ANY, Expected, check_id, decode_ref, encode_ref
from refs.local import LocalConditional
from refs.log import LogEntry, encode_entry, entry_path
from refs.memory import ProcessLocalConditional
from refs.names import check_ref_prefix, is_valid_ref_name, parents, ref_path
from refs.owner import default_identity, describe_owner, hostname, remove_command

# Backoff while another writer's update is in flight: first and longest sleep.
_FIRST_WAIT = 0.0005
_MAX_WAIT = 0.004

# Writes that meet a file where a folder should be, or a folder where a file should.
_TREE_ERRORS = (NotADirectoryError, IsADirectoryError, FileExistsError)


class _Patience:
    """Backoff while an update is in flight; says when the same state lasted too long."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self.state: object = None
        self.since = 0.0
        self.delay = _FIRST_WAIT

    def exhausted(self, state: object) -> bool:
        """Sleep a little and return False, or True if ``state`` has not moved for too long."""
        now = time.monotonic()
        if state != self.state:
            self.state, self.since, self.delay = state, now, _FIRST_WAIT
        elif now - self.since >= self.timeout:
            return True
        time.sleep(self.delay * (0.5 + random.random()))
        self.delay = min(self.delay * 2, _MAX_WAIT)
        return False


class RefStore:
    """Names -> 64-hex ids under ``root`` on the fsspec filesystem ``fs``.

    ``root`` is a path inside ``fs`` without protocol (``"/tmp/x/.cas"``,
    ``"bucket/prefix"``). ``conditional`` is the compare-and-swap backend; ``None``
    picks :class:`LocalConditional` for a local filesystem and
    :class:`ProcessLocalConditional` for ``memory://`` (per process, like the
    filesystem itself); any other filesystem needs one passed in. ``fsync`` applies
    to the default local backend; ``identity`` (``user@host`` by default) is recorded
    in history; ``lock_timeout`` is how long a writer waits for a lock or an update
    in flight before raising :class:`RefLocked`.
    """

    def __init__(
        self,
        fs: AbstractFileSystem,
        root: str,
        *,
        fsync: bool = True,
        conditional: Conditional | None = None,
        identity: str | None = None,
        lock_timeout: float = 5.0,
    ) -> None:
        self.fs = fs
        self.root = str(fs._strip_protocol(root)).rstrip("/")
        if conditional is None:
            conditional = _default_conditional(fs, fsync=fsync, timeout=lock_timeout)
        self.conditional = conditional
        self.identity = default_identity() if identity is None else identity
        self.lock_timeout = lock_timeout
        # The newest settled history entry seen per name: a hint, never trusted alone.
        self._heads: dict[str, Stored] = {}
        self._files = files_for(fs)  # os calls on a local disk, fsspec elsewhere
        self._log = History(self._files, self.root)
        protocol = fs.protocol
        self._protocol = protocol if isinstance(protocol, str) else protocol[0]

    def __repr__(self) -> str:
        return f"RefStore({self._protocol}://{self.root})"

    # -- reading ---------------------------------------------------------------

    def read(self, name: str) -> str | None:
        """The id ref ``name`` holds, or None if it does not exist (one GET)."""
        path = ref_path(self.root, name)
        data = self.conditional.read_data(path)
        return None if data is None else decode_ref(data, path)

    def list(self, prefix: str = "") -> list[str]:
        """Sorted names of the refs starting with ``prefix`` (one listing).

        ``prefix`` is a name prefix: ``"models/"`` or ``"mod"``.
        """
        refs = f"{self.root}/refs"
        folder = check_ref_prefix(prefix)
        top = f"{refs}/{folder}" if folder else refs
        names = self._names_in(top, refs)
        return sorted(name for name in names if name.startswith(prefix))

    def items(self, prefix: str = "") -> builtins.list[tuple[str, str]]:
        """Sorted ``(name, id)`` of the refs starting with ``prefix``."""
        names = self.list(prefix)
        paths = {ref_path(self.root, name): name for name in names}
        if not paths:
            return []
        contents = self._files.cat_many(list(paths))
        out = [
            (paths[path], decode_ref(data, path))
            for path, data in contents.items()
            if path in paths
        ]
        return sorted(out)

    # -- compare-and-swap --------------------------------------------------------

    def set(
        self, name: str, new_id: str, *, expected: Expected = ANY, message: str = ""
    ) -> str | None:
        """Point ``name`` at ``new_id`` if it holds ``expected``; return what it held.

        ``expected``: an id (it must hold that), ``None`` (it must not exist) or
        ``ANY`` (whatever it holds: still one serialized update with history).
        Raises :class:`RefConflict` carrying the actual value, :class:`NameConflict`
        if a parent or child name is a ref, :class:`RefLocked` if stuck.
        """
        check_id(new_id)
        return self._update(name, new_id, expected, message)

    def delete(self, name: str, *, expected: Expected = ANY, message: str = "") -> str:
        """Delete ref ``name`` if it holds ``expected``; return the id it held.

        Raises :class:`RefNotFound` if it does not exist. Its history stays.
        """
        old = self._update(name, None, expected, message)
        assert old is not None  # _update raises RefNotFound instead
        return old

    def _update(self, name: str, new: str | None, expected: Expected, message: str) -> str | None:
        path = ref_path(self.root, name)
        if expected is not ANY and expected is not None:
            check_id(expected)
        if not isinstance(message, str):
            raise TypeError(f"message must be a str, not {type(message).__name__}")
        patience = _Patience(self.lock_timeout)
        while True:
            current = self.conditional.read(path)
            value = None if current is None else decode_ref(current[0], path)
            head = self._log.newest(name, self._heads.get(name), value)
            if head is not None and head.entry.new != value:
                if patience.exhausted((head.data, current)):
                    raise self._stuck(name, head, value)
                continue
            if head is not None:
                self._heads[name] = head  # settled: it can no longer be taken back
            if new is None and value is None:
                raise RefNotFound(name)
            if expected is not ANY and expected != value:
                raise RefConflict(name, expected, value)
            if value is None:
                self._check_tree(name)
            seq = 1 if head is None else head.seq + 1
            claim = entry_path(self.root, name, seq)
            entry = LogEntry(value, new, time.time(), self.identity, message)
            data = encode_entry(entry, pid=os.getpid(), host=hostname())
            if not self._claim(claim, data):
                continue  # another writer claimed update `seq`: start again
            if not self._fresh(name, seq):
                self._withdraw(claim, data)
                self._heads.pop(name, None)
                continue
            self._publish(name, seq, claim, data, entry, current)
            self._heads[name] = Stored(seq, claim, data, entry, {})
            if value is None and new is not None:
                self._recheck_tree(name, new)
            return value

    def _publish(
        self,
        name: str,
        seq: int,
        claim: str,
        data: bytes,
        entry: LogEntry,
        current: tuple[bytes, str] | None,
    ) -> None:
        """Write the ref for our claimed entry; on failure undo the claim (see module doc)."""
        if entry.old == entry.new:
            return  # the ref already holds it
        path = ref_path(self.root, name)
        try:
            if entry.new is None:
                assert current is not None
                done = self.conditional.remove(path, current[1])
            elif current is None:
                done = self.conditional.create(path, encode_ref(entry.new))
            else:
                done = self.conditional.replace(path, encode_ref(entry.new), current[1])
        except _TREE_ERRORS as exc:
            self._undo_claim(name, seq, claim, data, entry)
            raise NameConflict(name, self._conflicting(name)) from exc
        except BaseException as exc:
            landed = self._undo_claim(name, seq, claim, data, entry)
            if landed and isinstance(exc, OSError):
                return
            raise
        if not done and self.read(name) != entry.new:
            raise RefError(
                f"ref {name!r} was changed by something other than refs while update "
                f"{claim} was being published; the history and the ref now disagree"
            )
        if entry.new is None:
            self.conditional.discard_empty_dirs(path, f"{self.root}/refs")

    def _claim(self, claim: str, data: bytes) -> bool:
        """Create our history entry; an error whose outcome is unknown is resolved by reading."""
        try:
            return self.conditional.create(claim, data)
        except OSError:
            try:
                got = self.conditional.read(claim)
            except OSError:
                got = None
            if got is not None and got[0] == data:
                return True  # it landed: carry on as if the answer had come back
            raise

    def _fresh(self, name: str, seq: int) -> bool:
        """True unless slot ``seq`` we just created was freed earlier by ``prune_log``.

        Pruning deletes the oldest entries first and always keeps the newest, so if
        entry ``seq - 1`` still exists, ``seq`` was never used before. A writer that
        read entry ``seq - 1`` as the newest and then stalled while later entries
        were written and pruned fails this check, instead of writing its update into
        the past.
        """
        if seq > 1:
            return self._log.exists(name, seq - 1)
        return max(self._log.numbers(name), default=0) == 1

    def _withdraw(self, claim: str, data: bytes) -> None:
        """Delete our own claim ``claim`` (holding ``data``) if it is still there."""
        got = self.conditional.read(claim)
        if got is not None and got[0] == data:
            self.conditional.remove(claim, got[1])

    def _undo_claim(self, name: str, seq: int, claim: str, data: bytes, entry: LogEntry) -> bool:
        """After a failed publish: True if it landed anyway, else delete our claim if we can."""
        try:
            value = self.read(name)
            if value == entry.new:
                return True
            if self.conditional.read(entry_path(self.root, name, seq + 1)) is not None:
                return True  # someone saw our update published and built on it
            if value == entry.old:
                self._withdraw(claim, data)
        except (OSError, RefError):
            pass  # the claim stays; writers will report it with its owner
        return False

    def _stuck(self, name: str, head: Stored, value: str | None) -> RefError:
        """The error for an update in flight that has not moved for ``lock_timeout``."""
        if value == head.entry.old:
            owner, alive = describe_owner(head.record.get("pid"), head.record.get("host"))
            return RefLocked(
                f"ref {name!r} has an update that was claimed but never published "
                f"(waited {self.lock_timeout:g}s; deleting its history entry rolls it back)",
                head.path,
                owner,
                max(0.0, time.time() - head.entry.time),
                alive,
                remove_command(self._protocol, head.path),
            )
        return RefError(
            f"ref {name!r} holds {value or 'nothing'} but its newest history entry "
            f"{head.path} says {head.entry.new or 'deleted'}: the ref file was changed "
            "outside refs; restore the value the history records, then retry"
        )

    # -- names form a tree --------------------------------------------------------

    def _conflicting(self, name: str) -> str | None:
        """A ref that is a parent or a child of ``name``, if any."""
        for parent in parents(name):
            if not is_valid_ref_name(parent):
                continue  # "a./b" is a name, "a." is not: no ref can be there
            if self._is_ref(parent):
                return parent
        refs = f"{self.root}/refs"
        below = self._names_in(f"{refs}/{name}", refs)
        below = [other for other in below if other.startswith(name + "/")]
        return min(below) if below else None

    def _is_ref(self, name: str) -> bool:
        path = ref_path(self.root, name)
        if isinstance(self._files, LocalFiles):
            return self._files.exists(path)  # one stat: opening the usual folder takes three
        return self.conditional.read_data(path) is not None

    def _check_tree(self, name: str) -> None:
        other = self._conflicting(name)
        if other is not None:
            raise NameConflict(name, other)

    def _recheck_tree(self, name: str, new: str) -> None:
        other = self._conflicting(name)
        if other is None:
            return
        # A concurrent writer created `other`: take ours back, unless it moved on already.
        with contextlib.suppress(RefConflict, RefNotFound):
            self._update(name, None, new, f"reverted: ref {other!r} exists")
        raise NameConflict(name, other)

    # -- history ----------------------------------------------------------------

    def log(self, name: str) -> builtins.list[LogEntry]:
        """The history of ref ``name``, newest first (an update still in flight excluded)."""
        return [stored.entry for stored in reversed(self._history(name))]

    def at(self, name: str, n: int) -> str | None:
        """The id ``name`` held ``n`` updates ago (0: now), like git's ``name@{n}``.

        Raises :class:`RefNotFound` if the history kept does not reach that far.
        """
        if n < 0:
            raise ValueError(f"n must be 0 or more, not {n}")
        if n == 0:
            return self.read(name)
        history = self._history(name)
        if n > len(history):
            raise RefNotFound(
                name, f"the history of ref {name!r} keeps {len(history)} updates, not {n}"
            )
        return history[-n].entry.old

    def at_time(self, name: str, when: float) -> str | None:
        """The id ``name`` held at ``when`` (seconds since the epoch; writers' clocks).

        Raises :class:`RefNotFound` if the history from that time was pruned.
        """
        history = self._history(name)
        for stored in reversed(history):
            if stored.entry.time <= when:
                return stored.entry.new
        if not history:
            current = self.read(name)
            if current is None:
                return None
        elif history[0].seq == 1:
            return history[0].entry.old
        raise RefNotFound(name, f"the history of ref {name!r} does not reach back to {when}")

    def log_names(self) -> builtins.list[str]:
        """Sorted names of every ref that has history, deleted ones included (one listing)."""
        return self._log.names()

    def prune_log(self, name: str, older_than: float) -> int:
        """Delete the oldest history entries written before ``older_than``; return how many.

        The newest entry (and the one before an update still in flight) always stays,
        and only a run of oldest entries goes, so what stays is still a chain.
        """
        history = self._log.all(name)
        keep = 2 if history and history[-1].entry.new != self.read(name) else 1
        doomed: builtins.list[str] = []
        for stored in history[:-keep]:
            if stored.entry.time >= older_than:
                break
            doomed.append(stored.path)
        for path in doomed:
            self.fs.rm_file(path)
        return len(doomed)

    # -- helpers ------------------------------------------------------------------

    def _history(self, name: str) -> builtins.list[Stored]:
        """Every entry of ``name`` that happened, oldest first."""
        history = self._log.all(name)
        if history and history[-1].entry.new != self.read(name):
            history.pop()  # claimed, not (yet) published: it has not happened
        return history

    def _names_in(self, top: str, refs: str) -> builtins.list[str]:
        """Valid ref names of the files under ``top`` (inside folder ``refs``)."""
        start = refs + "/"
        return [
            path[len(start) :]
            for path in self._files.find(top)
            if path.startswith(start) and is_valid_ref_name(path[len(start) :])
        ]


def _default_conditional(fs: AbstractFileSystem, *, fsync: bool, timeout: float) -> Conditional:
    if isinstance(fs, LocalFileSystem):
        return LocalConditional(fsync=fsync, timeout=timeout)
    if isinstance(fs, MemoryFileSystem):
        return ProcessLocalConditional(fs)
    raise RefError(
        f"refs has no compare-and-swap for {type(fs).__name__} "
        f"(protocol {fs.protocol!r}) by default: pass conditional=<a refs.Conditional "
        "for this backend>; see docs/refs.md"
    )
