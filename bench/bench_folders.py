"""Folder benchmark (issue 16): many small files through ``cas put`` / ``get`` / ``push``,
beside git and restic on the same folder, in the same run.

Run: ``python -m bench.bench_folders [--files 20000] [--size 4096] [--no-s3]`` (or
``python -m bench folders``).

A folder of ``--files`` files of ``--size`` random bytes each (incompressible, as images
and shards are; ``--per-folder`` to a sub-folder) is written once. Everything runs
through the command line users call, as child processes, start-up included:

- local, default fsync: ``cas put DIR --name x`` into an initialized store, beside
  ``git add -A`` + ``git commit`` into a fresh repository (``gc.auto=0``: git's
  background repack would otherwise run into the next measurement; git leaves loose
  objects unsynced by default) and ``restic backup`` into a fresh local repository;
  then ``cas get x -o OUT`` beside ``restic restore latest`` (and ``git checkout`` into
  an empty work tree, for reference).
- S3 (moto on 127.0.0.1, ``cas.testing.servers.s3``): ``cas push s3://bucket/cas`` of
  that store beside ``restic backup`` of the folder to ``s3:http://.../bucket/restic``;
  then the read back as on another machine (empty caches): ``cas --root s3://... get x
  -o OUT`` beside ``restic restore``. Each runs through the request-counting proxy
  (bench/_proxy.py), once with no delay and once with ``--delay-ms`` each way (20: a
  40 ms round trip). The proxy counts every request (PUTs per 100 files); a listing of
  the bucket counts the objects each tool left. Both read backs (no delay and delayed)
  read what the no-delay push wrote.

Targets (issue 16): put >= 1.0x restic backup and >= 1.0x git add+commit; get >= 1.0x
restic restore; <= 1 PUT per 100 files; push >= 1.0x restic backup and the read back
>= 1.0x restic restore, with no delay and with the delay.

A cas command far behind its peer is killed at ``--cap`` times the peer's time (at least
``--min-cap`` s) and shows as "< 0.20x": a slow path costs the suite a known time. The
no-delay push, which the read backs need, may take 4 times as long (up to ``--timeout``).
The S3 tables also say what this server charges for a small range GET of a large object
(moto reads the whole object for each range: reads of packs pay it, on real S3 they
would not).
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bench._common import MB, MIB, fresh, mark, table, workdir
from bench._procs import Done, cas_command, run, tool, version

TARGET = 1.0  # x the peer, in throughput
PUTS_PER_100 = 1.0
WRITES = ("PUT", "PUT part", "COPY")  # proxy kinds that write an object


# -- the folder -------------------------------------------------------------------------


def make_folder(root: Path, files: int, size: int, per_folder: int) -> None:
    """``files`` files of ``size`` distinct random bytes, ``per_folder`` to a sub-folder."""
    rng = np.random.default_rng(16)
    for start in range(0, files, per_folder):
        n = min(per_folder, files - start)
        folder = root / f"part-{start // per_folder:03d}"
        folder.mkdir(parents=True)
        blob = rng.bytes(n * size)
        for i in range(n):
            (folder / f"{start + i:06d}.bin").write_bytes(blob[i * size : (i + 1) * size])


def same_tree(a: Path, b: Path) -> str:
    """'' when the two folders hold the same files with the same bytes, else what differs."""
    fa = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    fb = sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    if fa != fb:
        return f"{len(fb)} files where {len(fa)} were expected"
    for rel in fa:
        if (a / rel).read_bytes() != (b / rel).read_bytes():
            return f"{rel} differs"
    return ""


# -- bookkeeping --------------------------------------------------------------------------


@dataclass
class Runs:
    """The best successful run of each measurement (or its failure, when none succeeded),
    and the requests the proxy saw during it."""

    done: dict[str, Done] = field(default_factory=dict)
    requests: dict[str, Any] = field(default_factory=dict)  # key -> proxy Tally

    def add(self, key: str, d: Done, seen: Any = None) -> Done:
        old = self.done.get(key)
        if old is None or (d.ok and (not old.ok or d.seconds < old.seconds)):
            self.done[key] = d
            if seen is not None:
                self.requests[key] = seen
        return d

    def ok(self, key: str) -> bool:
        return key in self.done and self.done[key].ok

    def cap(self, peer: str, factor: float, least: float, most: float) -> float:
        """Time allowed a cas command: ``factor`` x its peer's (at least ``least``)."""
        if not self.ok(peer):
            return most
        return min(most, max(least, factor * self.done[peer].seconds))


def both(a: Done, b: Done) -> Done:
    """Two commands run one after the other (git add, git commit) as one measurement."""
    return Done(a.argv + b.argv, a.seconds + b.seconds, a.ok and b.ok, a.timed_out or b.timed_out,
                a.cpu + b.cpu, a.stdout + b.stdout, a.why or b.why)  # fmt: skip


def versus(runs: Runs, cas: str, peer: str) -> tuple[float | None, str]:
    """(cas's throughput over the peer's, as shown); an upper bound when cas was cut off."""
    c, p = runs.done.get(cas), runs.done.get(peer)
    if c is None or p is None:
        return None, "n/a"
    if not p.ok:
        return None, "peer failed"
    if not c.ok and not c.timed_out:
        return None, "cas failed"
    x = p.seconds / c.seconds
    return x, (f"< {x:.2f}x" if c.timed_out else f"{x:.2f}x")


def passes(runs: Runs, cas: str, peer: str, target: float = TARGET) -> bool:
    x, _ = versus(runs, cas, peer)
    return x is not None and runs.ok(cas) and x >= target


# -- the run ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Setup:
    work: Path
    data: Path  # the folder
    files: int
    nbytes: int
    cas: list[str]
    git: str | None
    restic: str | None
    args: argparse.Namespace

    def env(self, **extra: str) -> dict[str, str]:
        base = {k: v for k, v in os.environ.items() if not k.startswith(("CAS_", "RESTIC_"))}
        return {**base, "CAS_CACHE_DIR": str(self.work / "cas-cache"), **extra}

    def restic_env(self, cache: str, **extra: str) -> dict[str, str]:
        return self.env(RESTIC_PASSWORD="bench", RESTIC_CACHE_DIR=str(self.work / cache), **extra)

    def git_argv(self, *args: str) -> list[str]:
        assert self.git is not None
        config = ["-c", "user.name=bench", "-c", "user.email=bench@localhost", "-c", "gc.auto=0",
                  "-c", "commit.gpgsign=false", "-c", "core.autocrlf=false"]  # fmt: skip
        return [self.git, *config, *args]


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(prog="python -m bench.bench_folders", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    ap.add_argument("--files", type=int, default=20_000, help="files in the folder (20,000)")
    ap.add_argument("--size", type=int, default=4096, help="bytes each (4096)")
    ap.add_argument("--per-folder", type=int, default=1000, help="files per sub-folder (1,000)")
    ap.add_argument("--rounds", type=int, default=2, help="local: best of this many (2)")
    ap.add_argument("--no-s3", action="store_true", help="skip the S3 part")
    ap.add_argument("--delay-ms", type=float, default=20.0,
                    help="proxy delay each way for the second S3 run (20; 0: skip it)")  # fmt: skip
    ap.add_argument("--cap", type=float, default=5.0,
                    help="kill a cas command at this many times its peer's time (5; the"
                    " no-delay push, which the read backs need, at 4 times that)")  # fmt: skip
    ap.add_argument("--min-cap", type=float, default=30.0, help="... but not before (30 s)")
    ap.add_argument("--timeout", type=float, default=300.0,
                    help="the most any one command may take (300 s)")  # fmt: skip
    args = ap.parse_args(argv)
    try:
        cas_argv = cas_command()
    except SystemExit as exc:
        print(f"folders benchmark: skipped, {exc}")
        return {"skipped": str(exc)}
    with workdir("cas-bench-folders-") as work:
        data = work / "data"
        make_folder(data, args.files, args.size, args.per_folder)
        setup = Setup(work, data, args.files, args.files * args.size, cas_argv, tool("git"),
                      tool("restic"), args)  # fmt: skip
        print(f"folders benchmark: {args.files:,} files of {args.size:,} bytes "
              f"({setup.nbytes / MIB:,.0f} MiB) in folders of {args.per_folder:,}; "
              f"git: {version(setup.git)}; restic: {version(setup.restic, 'version')}; "
              f"work folder {work}")  # fmt: skip
        marks, figures = _local(setup)
        if not args.no_s3:
            more_marks, more_figures = _s3(setup)
            marks.update(more_marks)
            figures.update(more_figures)
    return {**figures, "pass": marks}


# -- local --------------------------------------------------------------------------------


def _local(s: Setup) -> tuple[dict[str, bool], dict[str, Any]]:
    w, runs = s.work, Runs()
    limit = s.args.timeout
    for rnd in range(max(1, s.args.rounds)):
        store = fresh(w / "store")
        run([*s.cas, "--root", str(store), "init"], env=s.env()).check()
        os.sync()  # earlier writes are not flushed inside the next measurement
        runs.add("cas put", run([*s.cas, "--root", str(store), "put", str(s.data), "--name", "x"],
                                env=s.env(), timeout=limit))  # fmt: skip
        if s.git is not None:
            repo = fresh(w / "git")
            run([s.git, "init", "-q", str(repo)]).check()
            tree = ["--git-dir", str(repo / ".git"), "--work-tree", str(s.data)]
            git_env = s.env(GIT_CONFIG_GLOBAL=os.devnull, GIT_CONFIG_NOSYSTEM="1")
            os.sync()
            add = run(s.git_argv(*tree, "add", "-A"), env=git_env, timeout=limit)
            commit = run(s.git_argv(*tree, "commit", "-q", "-m", "x"), env=git_env, timeout=limit)
            runs.add("git add+commit", both(add, commit)).check()
        if s.restic is not None:
            repo = fresh(w / "restic")
            env = s.restic_env("restic-cache")
            run([s.restic, "-r", str(repo), "init"], env=env).check()
            os.sync()
            runs.add("restic backup", run([s.restic, "-r", str(repo), "backup", "-q", s.data.name],
                                          env=env, cwd=s.data.parent, timeout=limit)).check()  # fmt: skip
        if runs.ok("cas put"):
            out = fresh(w / "out-cas")
            os.sync()
            got = runs.add("cas get", run([*s.cas, "--root", str(store), "get", "x", "-o", str(out)],
                                          env=s.env(), timeout=limit))  # fmt: skip
            _verify(got, s.data, out, "cas get", rnd)
        if s.restic is not None:
            out = fresh(w / "out-restic")
            os.sync()
            got = runs.add("restic restore", run(
                [s.restic, "-r", str(w / "restic"), "restore", "latest", "--target", str(out)],
                env=s.restic_env("restic-cache"), timeout=limit))  # fmt: skip
            _verify(got.check(), s.data, out / s.data.name, "restic restore", rnd)
        if s.git is not None:
            out = fresh(w / "out-git")
            out.mkdir()
            os.sync()
            tree = ["--git-dir", str(w / "git" / ".git"), "--work-tree", str(out)]
            got = runs.add("git checkout", run(s.git_argv(*tree, "checkout", "-f", "HEAD", "--", "."),
                                               env=s.env(GIT_CONFIG_GLOBAL=os.devnull), timeout=limit))  # fmt: skip
            _verify(got.check(), s.data, out, "git checkout", rnd)
        for name in ("out-cas", "out-restic", "out-git"):
            fresh(w / name)
    startup = min(run([*s.cas, "--version"]).seconds for _ in range(3))

    def row(label: str, key: str, vs: str | None = None, target: str = "") -> list[str]:
        d = runs.done.get(key)
        if d is None:
            return [label, "not run", "", "", "", ""]
        if not d.ok:
            return [label, _short(d), "", "", "", ""]
        shown = versus(runs, vs, key)[1] if vs else ""
        verdict = f">= {TARGET:.1f}x {mark(passes(runs, vs, key))}" if vs and target else ""
        return [label, f"{d.seconds:,.2f}", f"{s.files / d.seconds:,.0f}",
                f"{s.nbytes / d.seconds / MB:,.1f}", shown, verdict]  # fmt: skip

    notes = [f"{key}: {d.why}" for key, d in runs.done.items() if not d.ok]
    missing = {name for name, exe in (("git", s.git), ("restic", s.restic)) if exe is None}
    rows = [
        row("cas put DIR --name x", "cas put"),
        row("git add -A; git commit", "git add+commit", "cas put", "target"),
        row("restic backup", "restic backup", "cas put", "target"),
        row("cas get x -o OUT", "cas get"),
        row("restic restore latest", "restic restore", "cas get", "target"),
        row("git checkout (reference)", "git checkout", "cas get"),
    ]
    print(table(
        f"local folder, default fsync (best of {max(1, s.args.rounds)}; child processes, start-up included)",
        ["", "seconds", "files/s", "MB/s", "cas / this", "target"], rows,
        [f"cas start-up ('cas --version'): {startup:.2f} s, inside every cas figure",
         "cas / this: cas's throughput over this tool's (put rows: cas put; get rows: cas get)"]
        + notes
        + [f"{name} is not installed: its targets are not measured (FAIL)" for name in sorted(missing)],
    ))  # fmt: skip
    marks = {
        "put vs restic": passes(runs, "cas put", "restic backup"),
        "put vs git": passes(runs, "cas put", "git add+commit"),
        "get vs restic": passes(runs, "cas get", "restic restore"),
    }
    figures = {f"local {k} s": d.seconds for k, d in runs.done.items() if d.ok}
    return marks, figures


def _short(d: Done) -> str:
    return f"over {d.seconds:,.0f} s" if d.timed_out else "failed (below)"


def _verify(d: Done, want: Path, got: Path, what: str, rnd: int) -> None:
    if d.ok and rnd == 0:
        wrong = same_tree(want, got)
        if wrong:
            raise SystemExit(f"{what} wrote another folder: {wrong}")


# -- S3 -------------------------------------------------------------------------------------


def _s3(s: Setup) -> tuple[dict[str, bool], dict[str, Any]]:
    from bench._proxy import latency_proxy
    from bench.bench_s3 import range_get_cost
    from cas.testing import servers

    os.environ.setdefault("AWS_DEFAULT_REGION", servers.AWS_REGION)
    marks: dict[str, bool] = {}
    figures: dict[str, Any] = {}
    delays = [0.0] + ([s.args.delay_ms / 1000] if s.args.delay_ms > 0 else [])
    with servers.s3() as srv:
        server_note = range_get_cost(srv)
        home: dict[str, str] = {}  # where the no-delay run left the store and the restic repo
        for delay in delays:
            with latency_proxy(srv.endpoint, delay=delay) as proxy:
                tag = "" if delay == 0 else f" +{delay * 1000:g}ms"
                m, f = _s3_once(s, srv, proxy, delay, tag, home, server_note)
                marks.update(m)
                figures.update(f)
    return marks, figures


def _s3_once(s: Setup, srv: Any, proxy: Any, delay: float, tag: str, home: dict[str, str],
             server_note: str) -> tuple[dict[str, bool], dict[str, Any]]:  # fmt: skip
    w, runs, a = s.work, Runs(), s.args
    bucket = srv.new_bucket("folders")
    creds = {k: v for k, v in srv.env.items() if k.startswith("AWS_") and "ENDPOINT" not in k}
    env = s.env(**creds, AWS_ENDPOINT_URL_S3=proxy.endpoint)
    host = proxy.endpoint.removeprefix("http://")
    restic_repo = f"s3:http://{host}/{bucket}/restic"
    cas_url = f"s3://{bucket}/cas"
    fs = srv.filesystem()
    if s.restic is not None:
        renv = s.restic_env(f"restic-cache-s3{tag}", **creds)
        run([s.restic, "-r", restic_repo, "init"], env=renv, timeout=a.timeout).check()
        with proxy.window() as seen:
            d = run([s.restic, "-r", restic_repo, "backup", "-q", s.data.name], env=renv,
                    cwd=s.data.parent, timeout=a.timeout)  # fmt: skip
        runs.add("restic backup", d.check(), seen)
    # the local store to push: the last one the local part wrote
    # the no-delay push gets longer (the read backs need what it stores), not forever
    factor = a.cap * (4 if delay == 0 else 1)
    limit = runs.cap("restic backup", factor, a.min_cap, a.timeout)
    with proxy.window() as seen:
        d = run([*s.cas, "--root", str(w / "store"), "push", cas_url], env=env, timeout=limit)
    runs.add("cas push", d, seen)
    if delay == 0:
        home.update(cas=f"s3://{bucket}/cas", restic=f"{bucket}/restic", pushed=str(d.ok))
    objects = {
        "cas push": len(fs.find(f"{bucket}/cas")),
        "restic backup": len(fs.find(f"{bucket}/restic")) if s.restic is not None else 0,
    }

    # read back, as on another machine: empty caches; what the no-delay run stored
    if s.restic is not None and "restic" in home:
        out = fresh(w / "out-restic")
        renv = s.restic_env(tempfile.mkdtemp(prefix="restic-cache-", dir=w), **creds)
        with proxy.window() as seen:
            d = run([s.restic, "-r", f"s3:http://{host}/{home['restic']}", "restore", "latest",
                     "--target", str(out)], env=renv, timeout=a.timeout)  # fmt: skip
        runs.add("restic restore", d.check(), seen)
        _verify(d, s.data, out / s.data.name, "restic restore from S3", 0)
    if home.get("pushed") == "True":
        out = fresh(w / "out-cas")
        cache = tempfile.mkdtemp(prefix="cas-cache-", dir=w)
        limit = runs.cap("restic restore", a.cap, a.min_cap, a.timeout)
        with proxy.window() as seen:
            d = run([*s.cas, "--root", home["cas"], "get", "x", "-o", str(out)],
                    env={**env, "CAS_CACHE_DIR": cache}, timeout=limit)  # fmt: skip
        runs.add("cas get", d, seen)
        _verify(d, s.data, out, "cas get from S3", 0)
        shutil.rmtree(cache, ignore_errors=True)
    for name in ("out-cas", "out-restic"):
        fresh(w / name)
    return _s3_report(s, runs, objects, delay, tag, server_note)


def _s3_report(s: Setup, runs: Runs, objects: dict[str, int], delay: float, tag: str,
               server_note: str) -> tuple[dict[str, bool], dict[str, Any]]:  # fmt: skip
    per100 = s.files / 100

    def writes(key: str) -> int:
        seen = runs.requests.get(key)
        return sum(n for k, n in seen.by_kind.items() if k in WRITES) if seen is not None else 0

    def row(label: str, key: str, vs: str | None = None) -> list[str]:
        d = runs.done.get(key)
        seen = runs.requests.get(key)
        if d is None:
            return [label, "not run", "", "", "", "", "", ""]
        cut = "" if d.ok else ">= "  # a run cut off sent at least this many
        count = f"{cut}{seen.summary()}" if seen is not None else ""
        writer = key in ("cas push", "restic backup")
        puts = f"{cut}{writes(key) / per100:,.2f}" if seen is not None and writer else ""
        obj = f"{objects[key]:,}" if key in objects else ""
        seconds = f"{d.seconds:,.2f}" if d.ok else _short(d)
        rate = f"{s.files / d.seconds:,.0f}" if d.ok else ""
        shown = versus(runs, vs, key)[1] if vs else ""
        verdict = f">= {TARGET:.1f}x {mark(passes(runs, vs, key))}" if vs else ""
        return [label, seconds, rate, shown, verdict, count, puts, obj]

    rows = [
        row("cas push s3://...", "cas push"),
        row("restic backup", "restic backup", "cas push"),
        row("cas --root s3://... get x", "cas get"),
        row("restic restore latest", "restic restore", "cas get"),
    ]
    delay_text = (
        f"{delay * 1000:g} ms each way ({delay * 2000:g} ms a round trip)" if delay else "no delay"
    )
    notes = ["read backs start from empty caches (another machine) and read what the no-delay"
             " push stored; requests: every HTTP request the proxy carried, by kind", server_note]  # fmt: skip
    notes += [f"{key}: {d.why}" for key, d in runs.done.items() if not d.ok]
    if "cas get" not in runs.done:
        notes.append("cas get: not run (the no-delay push did not finish)")
    if s.restic is None:
        notes.append("restic is not installed: its targets are not measured (FAIL)")
    print(table(
        f"S3 (moto on 127.0.0.1) through the counting proxy, {delay_text}",
        ["", "seconds", "files/s", "cas / this", "target", "requests", "PUTs / 100 files", "objects"],
        rows, notes,
    ))  # fmt: skip
    marks = {
        f"push vs restic{tag}": passes(runs, "cas push", "restic backup"),
        f"read vs restic{tag}": passes(runs, "cas get", "restic restore"),
    }
    figures: dict[str, Any] = {f"s3{tag} {k} s": d.seconds for k, d in runs.done.items() if d.ok}
    if delay == 0:
        seen = runs.requests.get("cas push")
        ok = (
            runs.ok("cas push") and seen is not None and writes("cas push") / per100 <= PUTS_PER_100
        )
        marks["PUTs / 100 files"] = ok
        figures["cas push PUTs per 100 files"] = writes("cas push") / per100
        figures["cas push objects"] = objects["cas push"]
    return marks, figures


if __name__ == "__main__":
    main()
