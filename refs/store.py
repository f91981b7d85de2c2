"""RefStore: names -> ids on any fsspec filesystem, changed only by compare-and-swap.

Layout under ``root``: ``refs/<name>`` holds one line, the 64-hex id (one GET reads
it); ``logs/<name>/~<seq>`` holds update number ``seq`` (see ``refs/log.py``).

The update protocol
-------------------
It needs nothing but the four primitives of :class:`~refs.Conditional` on single
files, so it runs unchanged on object stores, which have neither locks nor appends.
To update ref ``N`` to ``new``:

1. Read the ref: value ``v``, version ``t`` (this thread's own read of ``N`` a
   moment before may stand in: callers ``read`` then ``set``). Find the newest entry
   ``E_j`` (none: ``j = 0``). If the newest entry this store saw settled says
   ``new == v`` (or it saw none and ``v`` is absent), take it as ``E_j`` without a
   read: the claim in step 4 and the check after it prove it or fail. Otherwise a
   few reads past the newest one this store saw, else a listing of ``logs/N/``.
2. If ``E_j.new != v``, update ``j`` is in flight: its claimant wrote the entry but
   not yet the ref (``v == E_j.old``). If its claimant is provably dead, or outlived
   its lease, settle it (below) and start again; else wait with backoff. If nothing
   moves for ``lock_timeout`` seconds, raise ``RefLocked`` naming the entry, its owner
   (pid@host), its age, and when it will be settled or the command that deletes it.
3. Compare ``expected`` with ``v``: a mismatch raises ``RefConflict(actual=v)``.
4. **Claim**: ``create(logs/N/~<j+1>, {old: v, new, time, who, message})``, an
   exclusive create: of all writers that read state ``j``, exactly one wins; the
   others start again at 1, not by step 1's guess: each reads the entry ``j+1`` that
   beat it (one GET), waits (below), and reads only the ref until it holds
   ``E_{j+1}.new``; then ``E_{j+1}`` is settled and taken as the newest, as in step 1
   (a later claim makes the next one fail). If the ref holds neither value, or keeps
   holding ``E_{j+1}.old``, the history is read as in step 1. The winner checks that
   entry ``j`` is still there, or for ``j = 0`` that no entry was ever pruned (see
   below).

   The waits (``_Patience``) are counted in the time one read of the ref takes:
   about 16 reads' time at first, with jitter, so that many writers of one name
   poll it in turns rather than all at once; shorter (down to 2) the more updates
   of other writers this one has seen go first, so the writer that waited longest
   is the likeliest to claim next instead of losing to newcomers.
5. **Publish**: ``replace(refs/N, new, t)`` (``create`` if ``v`` is absent,
   ``remove`` for a delete; nothing if ``new == v``). Before it, the store's
   ``before_publish(N, E_{j+1})`` (if given) writes what must exist once the update is
   visible (cas journals the artifact the name moves to, for its catalog); on an object
   store it runs beside step 4's check of the claim. The one who settles a dead
   claimant's update calls it too, before publishing. If it raises, the update is not
   published: its writer takes the claim back.

Why taking a remembered entry as the newest is safe: a claim of ``j+1`` that wins
and finds ``E_j`` still there proves that ``E_j`` was the newest entry until that
moment (entries past a settled one are numbered without gaps, and pruning deletes
oldest first, so ``j+1`` was never there before). ``E_j`` was settled when this
store saw it, and stays so until ``j+1`` is claimed: so the ref holds
``E_j.new == v``. For ``j = 0``: entry 1 is deleted only by ``prune_log``, which
first writes ``logs/N/~pruned``; with no marker, a won claim of entry 1 is the
whole history, and the ref, which only history holders write, is absent.

Why the history is a chain in update order, on every backend:

- Entry ``j+1`` is created only by a writer that knows entry ``j`` (read now, or
  seen settled before and proved newest by the claim) and found the ref settled at
  ``E_j.new``; it records ``old = E_j.new``. Entries are created
  exclusively and never rewritten, so ``E_{j+1}.old == E_j.new`` and sequence order
  is update order, whatever clocks, machines or crashes do.
- The entry is the serialization point, so there is no window in which the ref has
  moved and its entry is missing: a writer killed after its claim leaves the entry
  and the old ref (readers keep seeing ``v``, the update has not happened yet).

Settling: an update whose writer died between claim and publish is **rolled
forward** by the next writer (or by ``unpublished``, which checkers such as
``cas fsck`` call): it publishes ``E_j.new`` exactly as the claimant would have, by
the same conditional write on the version it read. The claim holds everything the
claimant had decided (it had compared ``expected`` and claimed; whatever the entry
names was written before the claim), and rolling forward undoes nothing, keeps the
chain (``E_j`` becomes settled, ``j+1`` builds on it) and loses no update. A writer
may settle an entry only when its owner record (``refs/owner.py``) proves the owner
dead: same host, boot and pid namespace, and no process of that pid with that start
time runs (it is gone, a zombie, or the pid was reused); a process of ours that gave
the claim up (its publish failed, and so did taking the claim back); or, from another
host, once the lease recorded in the entry (default 600 s after its time) has ended.
Entries written before owners recorded a lease are never settled: they are reported,
and deleting one (the command in the message) rolls it back.

Why a claimant that was only frozen past its lease cannot undo a settled update: its
publish is the conditional write on the version it read before claiming. Rolling
forward changed that version (the content changed), so the write fails; the claimant
re-reads and finds either its own value, or entry ``j+1``, which only a writer that
saw its update published can create: either way its update happened, and it returns.
Before its first write, a claimant that finds it was frozen for more than half its
lease also looks for ``j+1`` first. The one gap is a version token derived from the
content (S3 ETags; ``memory://``'s digests): if the ref returns to exactly the bytes
of ``v`` (the same id again) between the settling and the frozen claimant's write,
the stale write matches. docs/reliability.md states it per backend.

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
- The version ``t`` read in step 1 can be stale while the value is not: the ref
  went ``v -> w -> v`` between that read and the finding of ``E_j`` (S3 ETags
  repeat then, GCS generations and Azure ETags do not). The conditional write then
  fails; the claimant re-reads, and if the ref still holds ``v`` writes again on
  the new version: holding the newest claim, it is the ref's only writer.
- A publish that fails (an I/O error, a stale lock, a name conflict) is resolved
  by the claimant: if the ref still holds ``v`` and nobody claimed ``j+2``, it
  deletes its own entry, so the failed call leaves no trace; if the update did land
  (the ref holds ``new``, or ``j+2`` exists), the call succeeds. If deleting the
  entry fails too, the entry stays, and the next writer of this process settles it.

Names form a tree (``a`` and ``a/b`` cannot both exist). Creating a ref first
checks its parents (one GET each, sent at once; a stat on a local disk) and the
names below it (a listing of one key; on a local disk one failed attempt to list
``refs/<name>``), so that a refused write leaves no trace; parents that this store
saw holding refs are not read in this first check. After publishing it checks
again, reading every parent, and if a concurrent writer created a conflicting name
meanwhile, it deletes its own ref (a history entry "reverted: ...") and raises
``NameConflict``. Two such writers each see the other at least once in the check
after publishing (Dekker), so at most one survives; both may lose. On a local
filesystem the folders themselves also refuse it under the write's lock.

Costs on an object store, in requests. ``read`` 1 GET. ``set`` of a name that
moves: 1 GET of the ref (none after a ``read`` of it by the same thread), 1 PUT of
the claim, 1 GET of the entry before it, 1 PUT of the ref; a store that has not
seen the name lists its history folder first (1 listing per 1000 entries, 1 GET).
``set`` of a new name ``a/b``: the same, with a GET of the prune marker instead of
the entry before, plus the name-tree checks: GET of ``a`` (not in the first check
once this store saw ``a`` as a folder) and a listing of one key below ``a/b``,
before claiming and again after publishing. ``list`` 1 listing per 1000 refs. On a
local disk reads, listings and checks are ``os`` calls (``refs/files.py``), about
30 system calls per ``set``, most of them the lock file, temporary files and
renames that make it atomic.
"""

from __future__ import annotations

import builtins
import collections
import contextlib
import random
import threading
import time
from collections.abc import Callable
from collections.abc import Set as AbstractSet
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

from fsspec import AbstractFileSystem
from fsspec.implementations.local import LocalFileSystem
from fsspec.implementations.memory import MemoryFileSystem

from . import packed
from .conditional import Conditional
from .errors import NameConflict, RefConflict, RefError, RefLocked, RefNotFound
from .files import LocalFiles, ServiceFiles, files_for
from .history import History, Stored
from .ids import ANY, Expected, check_id, decode_ref, encode_ref
from .local import LocalConditional
from .log import LogEntry, encode_entry, entry_path, pruned_path
from .memory import ProcessLocalConditional
from .names import check_ref_name, check_ref_prefix, is_valid_ref_name, parents, ref_path
from .owner import (
    DEFAULT_LEASE,
    Verdict,
    default_identity,
    describe,
    judge,
    owner_fields,
    remove_command,
)
from .packed import RefState
from .upkeep import HistoryMixin

# Backoff while another writer's update is in flight: first and longest sleep.
_FIRST_WAIT = 0.0005
_MAX_WAIT = 0.004
# ... and, in requests' time, the longest wait after claims lost to other writers.
_SPREAD = 16
# Reads of the ref alone while an update seen in flight stays so, before the history
# is read again (it may have moved on and back).
_POLLS = 4

# Writes that meet a file where a folder should be, or a folder where a file should.
_TREE_ERRORS = (NotADirectoryError, IsADirectoryError, FileExistsError)

# How long a ref this thread read may stand in for the read that starts an update of
# the same name (seconds), and how many folder names a store remembers at most.
_SEEN_FOR = 10.0
_MAX_FOLDERS = 4096
# Claims in a row taken back as landing in pruned history before an update gives up:
# one is a rare race with prune_log; many mean the history cannot be listed.
_MAX_STALE = 16
# Writes of the ref by the writer holding the newest claim, when the version it read
# went stale while the value did not (see _publish).
_PUBLISH_TRIES = 4

# (pid, claim path) of every update this process is claiming, or has claimed and not
# yet published or taken back, with how many threads are at it (several may try to
# claim one path: all but one fail). A claim that names this very process but is not
# here was given up (its publish failed and so did taking it back): it is settled like
# a dead writer's. Counted before the claim exists, so no thread of ours sees it missing.
_IN_FLIGHT: collections.Counter[tuple[int, str]] = collections.Counter()
_IN_FLIGHT_LOCK = threading.Lock()


@dataclass(frozen=True, slots=True)
class _Seen:
    """What one read of ref ``name`` returned: content and version (None: absent)."""

    name: str
    current: tuple[bytes, str] | None
    value: str | None
    at: float


class _Patience:
    """Backoff while an update is in flight or after a lost claim; says when the same
    state lasted too long.

    Waits are measured in what one request takes here (``rtt``, from the reads of the
    ref): microseconds on a local disk, milliseconds on an object store. After each
    claim this update lost, the wait doubles, up to ``_SPREAD`` requests' time: many
    writers of one name then poll it in turns rather than all at once, and a writer
    that has lost many times waits no longer than the others (capped, so it is not
    starved by newcomers).
    """

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self.state: object = None
        self.since = 0.0
        self.delay = _FIRST_WAIT
        self.rtt = 0.0  # how long a read of the ref takes, smoothed
        self.losses = 0  # claims this update lost

    def timed(self, seconds: float) -> None:
        """Take one request's duration into the estimate of ``rtt``."""
        self.rtt = seconds if self.rtt == 0.0 else 0.7 * self.rtt + 0.3 * seconds

    def exhausted(self, state: object) -> bool:
        """Sleep a little and return False, or True if ``state`` has not moved for too long."""
        now = time.monotonic()
        if state != self.state:
            self.state, self.since, self.delay = state, now, _FIRST_WAIT
        elif now - self.since >= self.timeout:
            return True
        self.pause()
        self.delay = min(self.delay * 2, _MAX_WAIT)
        return False

    def lost(self) -> None:
        """Another writer's update went first: count it (and wait before looking again)."""
        self.losses += 1

    def pause(self) -> None:
        spread = self.rtt * max(2, _SPREAD >> (self.losses // 3))
        time.sleep(max(self.delay, spread) * (0.5 + random.random()))


class RefStore(HistoryMixin):
    """Names -> 64-hex ids under ``root`` on the fsspec filesystem ``fs``.

    ``root`` is a path inside ``fs`` without protocol (``"/tmp/x/.cas"``,
    ``"bucket/prefix"``). ``conditional`` is the compare-and-swap backend; ``None``
    picks :class:`LocalConditional` for a local filesystem and
    :class:`ProcessLocalConditional` for ``memory://`` (per process, like the
    filesystem itself); any other filesystem needs one passed in. ``fsync`` applies
    to the default local backend; ``identity`` (``user@host`` by default) is recorded
    in history; ``lock_timeout`` is how long a writer waits for a lock or an update
    in flight of a live (or unknown) owner before raising :class:`RefLocked`.

    ``lease`` (seconds, default 600) is recorded in every claim (and local lock): how
    long this writer promises to take to publish. An update left unpublished by a
    writer that is provably dead (same host: its process is gone or its pid reused) is
    settled by the next writer at once, one left by a writer on another host once its
    lease has ended (see "Settling" in the module docstring).

    ``before_publish(name, entry)``, if given, is called once an update is claimed,
    before its ref is written: by its writer (on an object store beside the check that
    the claim is fresh, in the same round trip; if the claim was not, it claims again
    and calls it again), or by the writer that settles it after its writer died (step 5
    of the protocol). It writes what must exist before anyone sees the update, so it
    must be idempotent; if it raises, the update is not published. It is not called for
    a delete or an update to the value the ref already holds.
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
        lease: float = DEFAULT_LEASE,
        before_publish: Callable[[str, LogEntry], None] | None = None,
    ) -> None:
        self.fs = fs
        self.before_publish = before_publish
        self.root = str(fs._strip_protocol(root)).rstrip("/")
        if conditional is None:
            conditional = _default_conditional(fs, fsync=fsync, timeout=lock_timeout, lease=lease)
        self.conditional = conditional
        self.identity = default_identity() if identity is None else identity
        self.lock_timeout = lock_timeout
        self.lease = lease
        # The newest settled history entry seen per name: a hint, never trusted alone.
        self._heads: dict[str, Stored] = {}
        # Per thread, the last ref read: the next update of that name starts from it.
        self._seen = threading.local()
        # Names this store saw holding refs below them: the first, courtesy check of a
        # new name skips reading them (the check after publishing never does).
        self._folders: set[str] = set()
        self._checked: set[str] = set()  # new names check_new passed, not set since
        # os calls on a local disk, the service's requests on S3, GCS and Azure, else fsspec
        self._files = files_for(fs, conditional)
        self._log = History(self._files, self.root)
        protocol = fs.protocol
        self._protocol = protocol if isinstance(protocol, str) else protocol[0]

    def __repr__(self) -> str:
        return f"RefStore({self._protocol}://{self.root})"

    # -- reading ---------------------------------------------------------------

    def read(self, name: str) -> str | None:
        """The id ref ``name`` holds, or None if it does not exist (one GET)."""
        path = ref_path(self.root, name)
        current = self.conditional.read(path)
        value = None if current is None else decode_ref(current[0], path)
        self._seen.last = _Seen(name, current, value, time.monotonic())
        return value

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

    def state(self) -> RefState | None:
        """Every ref and every history entry (updates in flight included), from two
        listings and a snapshot, reading only files changed since it was taken
        (``refs/packed.py``); None where listings give no version tokens (local disks,
        ``memory://``): read with :meth:`items` and :meth:`log` there."""
        return packed.gather(self._files, self.root)

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
        seen = self._take_seen(name, new, expected)
        guess = True  # until a claim fails: then find the newest entry by reading
        stale = 0  # claims taken back because they landed in a pruned slot
        # An entry seen in flight, or the one that beat our claim: until it is published
        # only the ref is read (one GET), and once it is, it is taken as the newest.
        pending: Stored | None = None
        head: Stored | None
        polls = 0
        while True:
            known = self._heads.get(name)  # before the ref is read: settled before it
            if seen is not None:
                current, value, seen = seen.current, seen.value, None
            else:
                started = time.monotonic()
                current = self.conditional.read(path)
                patience.timed(time.monotonic() - started)
                value = None if current is None else decode_ref(current[0], path)
            if pending is not None and value == pending.entry.new:
                # Published since we read it: settled (or superseded, and the claim of
                # the next number fails). Probably the newest, proved as a guess is.
                head, pending = pending, None
            elif pending is not None and value == pending.entry.old and polls < _POLLS:
                polls += 1  # still in flight
                if self._settle(name, pending, value):
                    pending, guess = None, False
                    continue
                if patience.exhausted((pending.data, current)):
                    if self._log.exists(name, pending.seq + 1):
                        # Not in flight: published, and the ref moved on and back to
                        # its old value since (a name created, then deleted): the
                        # newest entry is further on. Look for it.
                        pending, guess = None, False
                        continue
                    raise self._stuck(name, pending, value)
                continue
            elif guess and (value is None if known is None else known.entry.new == value):
                # Probably still the newest entry (none at all for a name never seen):
                # the exclusive claim of the next number and the check after it prove it.
                head = known
            else:
                if pending is not None and (known is None or known.seq < pending.seq):
                    known = pending  # an entry that exists: search on from there
                pending = None
                head = self._log.newest(name, known, value)
                if head is not None and head.entry.new != value:
                    if self._settle(name, head, value):
                        guess = False  # its writer was dead: look again, now settled
                        continue
                    pending, polls = head, 0
                    patience.lost()
                    if patience.exhausted((head.data, current)):
                        raise self._stuck(name, head, value)
                    continue
            if head is not None:
                self._heads[name] = head  # settled: it can no longer be taken back
            if new is None and value is None:
                raise RefNotFound(name)
            if expected is not ANY and expected != value:
                raise RefConflict(name, expected, value)
            if value is None and not self._pass_checked(name):
                self._check_tree(name)
            seq = 1 if head is None else head.seq + 1
            claim = entry_path(self.root, name, seq)
            entry = LogEntry(value, new, time.time(), self.identity, message)
            owner = owner_fields(self.lease)
            data = encode_entry(entry, pid=owner["pid"], host=owner["host"], owner=owner)
            token = (owner["pid"], claim)
            with _IN_FLIGHT_LOCK:
                _IN_FLIGHT[token] += 1
            try:
                claimed_at = _Clock()
                if not self._claim(claim, data):
                    # Another writer claimed update `seq`: start again. Unless its entry
                    # stays invisible to the reads that find the newest one (a listing
                    # that misses files): then this would go on for ever.
                    guess = False
                    # Entry `seq` is there (unless taken back): wait for it rather than
                    # read the history again.
                    pending, polls = self._log.entry(name, seq), 0
                    if pending is not None:
                        patience.lost()
                        patience.pause()
                    elif patience.exhausted(("claimed", claim)):
                        raise self._unlisted(name, claim)
                    continue
                # On an object store what must exist before the publish is written
                # beside the proof that the claim is fresh: one round trip, not two.
                prepared = self._prepare(name, entry)
                try:
                    fresh = self._fresh(name, seq)
                finally:
                    if prepared is not None:
                        self._hook(name, seq, claim, data, entry, claimed_at, prepared)
                if not fresh:
                    self._withdraw(claim, data)
                    self._heads.pop(name, None)
                    guess = False
                    stale += 1
                    if stale >= _MAX_STALE:
                        raise self._unlisted(name, claim)
                    continue
                self._publish(
                    name, seq, claim, data, entry, current, claimed_at, prepared is not None
                )
            finally:
                with _IN_FLIGHT_LOCK:
                    _IN_FLIGHT[token] -= 1
                    if _IN_FLIGHT[token] <= 0:
                        del _IN_FLIGHT[token]
            self._heads[name] = Stored(seq, claim, data, entry, {})
            if value is None and new is not None:
                self._recheck_tree(name, new)
            return value

    def _take_seen(self, name: str, new: str | None, expected: Expected) -> _Seen | None:
        """This thread's last read of ``name``, if it may start an update to ``new``.

        Only a recent read that cannot decide the outcome on its own: one that would
        raise (a conflict with ``expected``, a delete of nothing) is read again, so
        those answers always come from a fresh read. Whether the value read is still
        current is proved the same way as for a fresh read: the claim of the next
        history entry after the one that published it (see the module docstring).
        """
        seen: _Seen | None = getattr(self._seen, "last", None)
        if seen is None or seen.name != name:
            return None
        self._seen.last = None
        if time.monotonic() - seen.at > _SEEN_FOR:
            return None
        if new is None and seen.value is None:
            return None
        if expected is not ANY and expected != seen.value:
            return None
        return seen

    def _publish(
        self,
        name: str,
        seq: int,
        claim: str,
        data: bytes,
        entry: LogEntry,
        current: tuple[bytes, str] | None,
        claimed_at: _Clock,
        prepared: bool = False,
    ) -> None:
        """Write the ref for our claimed entry; on failure undo the claim (see module doc).
        ``prepared``: ``before_publish`` ran already (beside the claim's proof)."""
        if entry.old == entry.new:
            return  # the ref already holds it
        path = ref_path(self.root, name)
        outlived = claimed_at.elapsed() > self.lease / 2
        if outlived and self._log.exists(name, seq + 1):
            return  # frozen for most of our lease: another writer settled it meanwhile
        if not prepared and self._calls_hook(entry):
            self._hook(name, seq, claim, data, entry, claimed_at)
        for _ in range(_PUBLISH_TRIES):
            try:
                if self._write_ref(path, entry.new, current):
                    break
                current = self.conditional.read(path)
            except _TREE_ERRORS as exc:
                self._undo_claim(name, seq, claim, data, entry, claimed_at)
                raise NameConflict(name, self._conflicting(name)) from exc
            except BaseException as exc:
                landed = self._undo_claim(name, seq, claim, data, entry, claimed_at)
                if landed and isinstance(exc, OSError):
                    return
                raise
            value = None if current is None else decode_ref(current[0], path)
            if value == entry.new:
                break  # it landed after all (an answer lost, then the write repeated)
            if self._log.exists(name, seq + 1):
                # A writer settled our update while we were frozen (it published what we
                # claimed) and others have moved the ref on since: it happened.
                return
            if value != entry.old:
                raise RefError(
                    f"ref {name!r} was changed by something other than refs while update "
                    f"{claim} was being published; the history and the ref now disagree"
                )
            # The value this update expects, under a version other than the one read:
            # updates that went A -> B -> A between that read and our claim (the claim
            # now makes this writer the ref's only one). Write again on the new version.
        else:
            raise RefError(
                f"ref {name!r} keeps changing under update {claim} although it holds the value"
                f" the update expects: something other than refs writes it"
            )
        if entry.new is None:
            self.conditional.discard_empty_dirs(path, f"{self.root}/refs")

    def _calls_hook(self, entry: LogEntry) -> bool:
        return self.before_publish is not None and entry.new not in (None, entry.old)

    def _prepare(self, name: str, entry: LogEntry) -> Future[None] | None:
        """On an object store, ``before_publish`` of a claimed update started on a
        thread of its own, so that it runs while the claim is proved fresh (if it is
        not, the update claims again and calls it again: it is idempotent); None where
        it is called just before the publish instead (a local disk, or nothing to call)."""
        if not self._calls_hook(entry) or not isinstance(self._files, ServiceFiles):
            return None
        assert self.before_publish is not None
        pool = ThreadPoolExecutor(1, thread_name_prefix="refs-prepare")
        try:
            return pool.submit(self.before_publish, name, entry)
        finally:
            pool.shutdown(wait=False)

    def _hook(
        self,
        name: str,
        seq: int,
        claim: str,
        data: bytes,
        entry: LogEntry,
        claimed_at: _Clock,
        started: Future[None] | None = None,
    ) -> None:
        """``before_publish`` of our claimed update: waited for if :meth:`_prepare`
        ``started`` it, else called now; if it failed, take the claim back and raise."""
        assert self.before_publish is not None
        try:
            if started is None:
                self.before_publish(name, entry)
            else:
                started.result()
        except BaseException:
            self._undo_claim(name, seq, claim, data, entry, claimed_at)
            raise

    def _write_ref(self, path: str, new: str | None, current: tuple[bytes, str] | None) -> bool:
        """One conditional write of ref ``path`` from ``current`` (content, version) to ``new``."""
        if new is None:
            return current is None or self.conditional.remove(path, current[1])
        if current is None:
            return self.conditional.create(path, encode_ref(new))
        return self.conditional.replace(path, encode_ref(new), current[1])

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
        # Entry 1 is deleted only after the marker is written: no marker, no pruning,
        # and entries are numbered without gaps, so ours is the only one.
        if not self._files.exists(pruned_path(self.root, name)):
            return True
        return max(self._log.numbers(name), default=0) == 1

    def _unlisted(self, name: str, claim: str) -> RefError:
        """The error when the history of ``name`` does not read as the entries it holds."""
        folder = claim.rpartition("/")[0]
        return RefError(
            f"ref {name!r} was not updated: its history entry {claim} (the one this update"
            f" claimed, or the one that beat it) does not show when {folder}/ is listed, so"
            f" the newest entry cannot be found; the filesystem's listing misses files it"
            f" holds (a client or server bug): compare the listing with the files, and"
            f" report it with the filesystem's name and version"
        )

    def _withdraw(self, claim: str, data: bytes) -> None:
        """Delete our own claim ``claim`` (holding ``data``) if it is still there."""
        got = self.conditional.read(claim)
        if got is not None and got[0] == data:
            self.conditional.remove(claim, got[1])

    def _undo_claim(
        self, name: str, seq: int, claim: str, data: bytes, entry: LogEntry, claimed_at: _Clock
    ) -> bool:
        """After a failed publish: True if it landed anyway, else delete our claim if we can."""
        try:
            value = self.read(name)
            if value == entry.new:
                return True
            if self.conditional.read(entry_path(self.root, name, seq + 1)) is not None:
                return True  # someone saw our update published and built on it
            if value == entry.old and claimed_at.elapsed() <= self.lease / 2:
                # (Past half its lease a claim is left alone: a writer that took this
                # one for dead may be rolling it forward; the next one settles it.)
                self._withdraw(claim, data)
        except (OSError, RefError):
            pass  # the claim stays; writers will report it with its owner
        return False

    def _stuck(self, name: str, head: Stored, value: str | None) -> RefError:
        """The error for an update in flight that has not moved for ``lock_timeout``."""
        if value == head.entry.old:
            verdict = self._verdict(head)
            return RefLocked(
                f"ref {name!r} has an update that was claimed but never published "
                f"(waited {self.lock_timeout:g}s; {_settled_when(verdict)})",
                head.path,
                describe(head.record),
                max(0.0, time.time() - head.entry.time),
                verdict.alive,
                remove_command(self._protocol, head.path),
            )
        return RefError(
            f"ref {name!r} holds {value or 'nothing'} but its newest history entry "
            f"{head.path} says {head.entry.new or 'deleted'}: the ref file was changed "
            "outside refs; restore the value the history records, then retry"
        )

    # -- settling what dead writers left ---------------------------------------------

    def _verdict(self, head: Stored) -> Verdict:
        """Whether the writer of unpublished update ``head`` is dead (``refs/owner.py``)."""
        with _IN_FLIGHT_LOCK:
            mine = _IN_FLIGHT[(head.record.get("pid"), head.path)] > 0  # type: ignore[index]
        return judge(head.record, time.time() - head.entry.time, in_flight=mine)

    def _settle(self, name: str, head: Stored, value: str | None) -> bool:
        """Settle update ``head`` (the newest entry, not published: the ref holds
        ``value``) if its writer is provably dead or outlived its lease, by rolling it
        forward. True if something changed, so the caller looks again at once."""
        if value != head.entry.old:
            return False  # the ref was changed outside refs: reported, never guessed at
        if not self._verdict(head).settle:
            return False
        return self._roll_forward(name, head)

    def _roll_forward(self, name: str, head: Stored) -> bool:
        """Publish the update a dead writer claimed, as it would have (see "Settling")."""
        path = ref_path(self.root, name)
        # Read again first: what the caller read may predate the publish of a writer
        # that finished since (and whose claim is then no longer in flight).
        current = self.conditional.read(path)
        value = None if current is None else decode_ref(current[0], path)
        if value != head.entry.old:
            return True  # settled meanwhile (by its writer, or another settler)
        numbers = self._log.numbers(name)  # one listing: it must really be the newest
        if max(numbers, default=0) != head.seq or not self._fresh(name, head.seq):
            # Something newer (a listing the caller did not see), or the entry before
            # it went: look again (after the usual wait) rather than guess.
            self._heads.pop(name, None)
            return False
        if self._calls_hook(head.entry):
            assert self.before_publish is not None
            self.before_publish(name, head.entry)  # as its writer would have
        try:
            done = self._write_ref(path, head.entry.new, current)
        except _TREE_ERRORS:
            # A ref (or a folder of other files) is in its way: it can never be
            # published, and its writer would have taken it back. So do we.
            self._withdraw(head.path, head.data)
            return True
        if done and head.entry.new is None:
            self.conditional.discard_empty_dirs(path, f"{self.root}/refs")
        elif done and value is None and head.entry.new is not None:
            other = self._conflicting(name)
            if other is not None:  # what its writer's check after publishing would do
                with contextlib.suppress(RefConflict, RefNotFound):
                    self._update(name, None, head.entry.new, f"reverted: ref {other!r} exists")
        return True

    # -- names form a tree --------------------------------------------------------

    def _conflicting(self, name: str, *, folders: AbstractSet[str] = frozenset()) -> str | None:
        """A ref that is a parent or a child of ``name``, if any; parents in
        ``folders`` are not read. On an object store the listing for children goes
        beside the reads of parents: one round trip, not two."""
        if not isinstance(self._files, ServiceFiles):
            return self._parent_ref(name, folders) or self._child_ref(name)
        with ThreadPoolExecutor(1, thread_name_prefix="refs-tree") as pool:
            child = pool.submit(self._child_ref, name)
            return self._parent_ref(name, folders) or child.result()

    def _parent_ref(self, name: str, folders: AbstractSet[str]) -> str | None:
        """The shortest parent of ``name`` that is a ref (one GET each, at once)."""
        # "a./b" is a name, "a." is not: no ref can be there
        candidates = [p for p in parents(name) if p not in folders and is_valid_ref_name(p)]
        paths = [ref_path(self.root, parent) for parent in candidates]
        if isinstance(self._files, LocalFiles):  # one stat each: opening takes three
            present = {path for path in paths if self._files.exists(path)}
        elif isinstance(self._files, ServiceFiles) and len(paths) > 1:
            present = set(self._files.cat_many(paths))
        else:
            present = {path for path in paths if self.conditional.read_data(path) is not None}
        return next((p for p, path in zip(candidates, paths, strict=True) if path in present), None)

    def _child_ref(self, name: str) -> str | None:
        """The first ref below ``name`` in name order (one listing of one key, usually)."""
        refs = f"{self.root}/refs"
        top = f"{refs}/{name}"
        first = self._files.find(top, limit=1)
        if not first:
            return None
        below = [n for n in self._names_in(top, refs, first) if n.startswith(name + "/")]
        if not below:  # something else sorts first: look at everything
            below = [n for n in self._names_in(top, refs) if n.startswith(name + "/")]
        return min(below) if below else None

    def check_new(self, name: str) -> None:
        """Refuse a new name now (``NameConflict``) if a parent or child of it is a ref,
        so that a caller can check before it writes anything of its own; the next
        ``set`` of this name by this store does not check again before claiming (it
        still checks after publishing, where racing writers meet)."""
        check_ref_name(name)
        self._check_tree(name)
        with _IN_FLIGHT_LOCK:
            if len(self._checked) > _MAX_FOLDERS:
                self._checked.clear()
            self._checked.add(name)

    def _pass_checked(self, name: str) -> bool:
        with _IN_FLIGHT_LOCK:
            if name in self._checked:
                self._checked.discard(name)
                return True
        return False

    def _check_tree(self, name: str) -> None:
        """Before claiming a new name: refuse it if a parent or child is a ref.

        A courtesy, so that a refused write leaves no history: parents this store saw
        as folders are not read again. :meth:`_recheck_tree` after publishing is what
        makes two racing writers see each other.
        """
        other = self._conflicting(name, folders=self._folders)
        if other is not None:
            self._folders.discard(other)
            raise NameConflict(name, other)

    def _recheck_tree(self, name: str, new: str) -> None:
        other = self._conflicting(name)
        if other is None:
            self._folders.discard(name)
            if len(self._folders) > _MAX_FOLDERS:
                self._folders.clear()
            self._folders.update(parents(name))
            return
        self._folders.discard(other)
        # A concurrent writer created `other`: take ours back, unless it moved on already.
        with contextlib.suppress(RefConflict, RefNotFound):
            self._update(name, None, new, f"reverted: ref {other!r} exists")
        raise NameConflict(name, other)

    # -- helpers ------------------------------------------------------------------

    def _names_in(
        self, top: str, refs: str, found: builtins.list[str] | None = None
    ) -> builtins.list[str]:
        """Valid ref names of the files under ``top`` (inside folder ``refs``), or of
        the files ``found`` there."""
        start = refs + "/"
        return [
            path[len(start) :]
            for path in (self._files.find(top) if found is None else found)
            if path.startswith(start) and is_valid_ref_name(path[len(start) :])
        ]


class _Clock:
    """When something started, by the wall clock and the monotonic one: a process that
    was frozen (suspended, a VM paused) may find either one moved the most."""

    __slots__ = ("monotonic", "wall")

    def __init__(self) -> None:
        self.monotonic = time.monotonic()
        self.wall = time.time()

    def elapsed(self) -> float:
        return max(time.monotonic() - self.monotonic, time.time() - self.wall)


def _settled_when(verdict: Verdict) -> str:
    """How an unpublished update will end, for the message of a writer that waited."""
    if verdict.alive is None and "lease" in verdict.reason:
        return f"{verdict.reason}: then the next writer settles it"
    return "deleting its history entry rolls it back"


def _default_conditional(
    fs: AbstractFileSystem, *, fsync: bool, timeout: float, lease: float = DEFAULT_LEASE
) -> Conditional:
    if isinstance(fs, LocalFileSystem):
        return LocalConditional(fsync=fsync, timeout=timeout, lease=lease)
    if isinstance(fs, MemoryFileSystem):
        return ProcessLocalConditional(fs)
    raise RefError(
        f"refs has no compare-and-swap for {type(fs).__name__} "
        f"(protocol {fs.protocol!r}) by default: pass conditional=<a refs.Conditional "
        "for this backend>; see docs/refs.md"
    )
