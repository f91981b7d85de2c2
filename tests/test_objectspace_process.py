"""The object layer under real processes: a killed writer, and constant memory."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

from cas.objects.space import ObjectSpace

WRITER = textwrap.dedent(
    """
    import os, sys
    from cas.objects.space import ObjectSpace
    space = ObjectSpace.from_url(sys.argv[1])
    i = 0
    print("ready", flush=True)
    while True:
        i += 1
        size = (5 << 20) if i % 3 == 0 else 200_000
        space.put(os.urandom(size))
    """
)


def test_killed_writer_leaves_no_partial_object(tmp_path: os.PathLike[str]) -> None:
    root = os.path.join(tmp_path, "store")
    ObjectSpace.from_url(root)
    for delay in (0.05, 0.2, 0.5, 0.9):
        proc = subprocess.Popen(
            [sys.executable, "-c", WRITER, root], stdout=subprocess.PIPE, text=True
        )
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    space = ObjectSpace.from_url(root)
    ids = list(space)
    assert ids, "the writer stored nothing before it was killed"
    for oid in ids:  # every object visible under its final name is whole and verified
        kind, _ = space.read_object(oid)
        if kind == "blob":
            continue
        try:
            space.get(oid)
        except Exception as exc:  # a chunk list is written last: its chunks must be there
            raise AssertionError(f"{oid}: {exc}") from exc


RSS_PROBE = textwrap.dedent(
    """
    import hashlib, os, sys, resource
    from cas.objects.space import ObjectSpace

    TOTAL = int(sys.argv[2])
    BLOCK = os.urandom(48 << 20)  # repeated, so the disk holds ~48 MiB, not 2 GB

    class Stream:
        def __init__(self):
            self.left = TOTAL
            self.pos = 0
        def read(self, n=-1):
            n = self.left if n < 0 else min(n, self.left)
            out = bytearray()
            while len(out) < n:
                take = min(n - len(out), len(BLOCK) - self.pos)
                out += BLOCK[self.pos:self.pos + take]
                self.pos = (self.pos + take) % len(BLOCK)
            self.left -= n
            return bytes(out)

    space = ObjectSpace.from_url(sys.argv[1], fsync=False)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    oid = space.put(Stream())
    after_put = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    got = 0
    with space.open(oid) as f:
        while True:
            part = f.read(8 << 20)
            if not part:
                break
            got += len(part)
    after_get = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(base, after_put, after_get, got)
    """
)


def test_two_gigabyte_stream_in_constant_memory(tmp_path: os.PathLike[str]) -> None:
    total = 2 << 30
    out = subprocess.run(
        [sys.executable, "-c", RSS_PROBE, os.path.join(tmp_path, "s"), str(total)],
        capture_output=True, text=True, check=True,
    )
    base, after_put, after_get, got = map(int, out.stdout.split())
    assert got == total
    # ru_maxrss is in KiB. The 48 MiB source block is counted in `base`.
    assert (after_put - base) * 1024 < 256 << 20, (base, after_put)
    assert (after_get - base) * 1024 < 256 << 20, (base, after_get)
