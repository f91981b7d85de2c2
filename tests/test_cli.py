"""The ``cas`` command line, run as a real process (``python -m cas.cli``).

Each process costs a fraction of a second of imports, so each test walks through a
whole scenario and checks many things along the way.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import blake3
import pytest

import cas


@dataclass
class Run:
    code: int
    out: str
    err: str
    raw: bytes

    def json(self) -> Any:
        return json.loads(self.out)


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    e = {k: v for k, v in os.environ.items() if k != "CAS_ROOT"}
    e["CAS_CACHE_DIR"] = str(tmp_path / "cache")
    return e


def cas_cli(*args: str, cwd: Path, env: dict[str, str], code: int | None = 0) -> Run:
    proc = subprocess.run(
        [sys.executable, "-m", "cas.cli", *args], cwd=cwd, env=env, capture_output=True, timeout=120
    )
    err = proc.stderr.decode()
    run = Run(proc.returncode, proc.stdout.decode(errors="replace"), err, proc.stdout)
    assert "Traceback" not in err, err
    assert "\x1b" not in run.out + err, "piped output must carry no escape codes"
    if code is not None:
        assert proc.returncode == code, (args, proc.returncode, run.out, err)
    return run


def test_everyday_commands(tmp_path: Path, env: dict[str, str]) -> None:
    def cli(*args: str, code: int | None = 0) -> Run:
        return cas_cli(*args, cwd=tmp_path, env=env, code=code)

    assert cli("--json", "init").json()["created"] is True
    assert "Reinitialized" in cli("init").out
    assert (tmp_path / ".cas" / "CAS").exists()

    data = tmp_path / "train.csv"
    data.write_bytes(b"a,b\n1,2\n" * 1000)
    raw = cli("put", str(data)).out.strip()
    folder = tmp_path / "model"
    (folder / "sub").mkdir(parents=True)
    (folder / "weights.bin").write_bytes(os.urandom(5000))
    (folder / "sub" / "config.json").write_text('{"layers": 3}')
    put = cli(
        "put", "model", "--name", "models/fraud", "--tag", "stage=dev", "--tag", "team=fraud",
        "--parent", "train.csv", "--type", "model", "--json",
    ).json()  # fmt: skip
    assert put["name"] == "models/fraud" and put["type"] == "model"
    model = put["id"]

    # ls: names; --json: names, ids, types, sizes; -l: one row each.
    assert cli("ls").out.split() == ["models/fraud", "train.csv"]
    assert cli("ls", "models/").out.split() == ["models/fraud"]
    rows = {r["name"]: r for r in cli("ls", "--json").json()}
    assert rows["train.csv"] == {"name": "train.csv", "id": raw, "type": "files", "size": 8000}
    assert rows["models/fraud"]["id"] == model
    assert "7.8 KiB  train.csv" in cli("ls", "-l").out

    # show: a file's content id is its b3sum.
    meta = cli("show", "train.csv", "--json").json()
    assert meta["content_id"] == blake3.blake3(data.read_bytes()).hexdigest()
    assert meta["id"] == raw and meta["size"] == 8000
    assert cli("--json", "show", model).json()["parent_ids"] == [raw]
    shown = cli("show", "models/fraud").out
    assert f"parents:   {raw}" in shown and "tags:      stage=dev, team=fraud" in shown

    # get: a file to -o, to a folder, to its own name; a folder checked out.
    cli("get", "train.csv", "-o", "copy.csv")
    assert (tmp_path / "copy.csv").read_bytes() == data.read_bytes()
    (tmp_path / "into").mkdir()
    assert cli("--json", "get", raw, "-o", "into").json()["path"] == str(Path("into/train.csv"))
    assert (tmp_path / "into" / "train.csv").read_bytes() == data.read_bytes()
    got = cli("get", "train.csv", code=2)
    assert "train.csv exists" in got.err and "-o PATH" in got.err
    data.unlink()
    cli("get", "train.csv")
    assert data.read_bytes() == (tmp_path / "copy.csv").read_bytes()
    cli("get", "models/fraud", "-o", "checkout")
    assert (tmp_path / "checkout" / "sub" / "config.json").read_text() == '{"layers": 3}'
    assert (tmp_path / "checkout" / "weights.bin").read_bytes() == (
        folder / "weights.bin"
    ).read_bytes()

    # tag, search, lineage.
    assert cli("tag", "models/fraud", "stage=production", "--remove", "team", "--json").json()[
        "tags"
    ] == {"stage": "production"}
    found = cli("search", "stage:production", "--json").json()
    assert [a["id"] for a in found] == [model]
    assert "models/fraud" in cli("search", "fraud").out
    assert cli("search", "stage:dev").out == ""
    assert [a["id"] for a in cli("search", "--limit", "1", "--json", "train").json()] == [raw]
    lineage = cli("lineage", "train.csv", "--json").json()
    assert [a["id"] for a in lineage["children"]] == [model] and lineage["parents"] == []
    graph = cli("lineage", model, "--format", "mermaid").out
    assert graph.startswith("graph LR") and "train.csv" in graph and "-->" in graph
    assert "digraph" in cli("lineage", model, "--format", "dot", "--depth", "1").out
    assert "parents:\n  " in cli("lineage", "models/fraud").out

    # log: newest first, with old -> new.
    data.write_bytes(b"a,b\n3,4\n")
    raw2 = cli("put", "train.csv").out.strip()
    log = cli("log", "train.csv", "--json").json()
    assert [(e["old"], e["new"]) for e in log] == [(raw, raw2), (None, raw)]
    assert f"{raw[:12]} -> {raw2[:12]}" in cli("log", "train.csv").out.splitlines()[0]

    # du, rm.
    du = cli("du", "--json").json()
    assert du["artifacts"] == 3 and du["names"] == 2 and du["objects"] >= 7
    assert du["logical_bytes"] == 8000 + 8 + 5000 + 13 and du["stored_bytes"] > 0
    assert "dedup ratio:" in cli("du").out
    assert cli("rm", "models/fraud").out == ""
    assert cli("ls").out.split() == ["train.csv"]
    gone = cli("show", "models/fraud", code=2)
    assert "no artifact named 'models/fraud'" in gone.err and "'cas ls'" in gone.err


def test_get_writes_values_to_stdout(
    tmp_path: Path, env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CAS_CACHE_DIR", env["CAS_CACHE_DIR"])
    with cas.open_store(tmp_path / ".cas") as store:
        store.save(b"\x00raw\xffbytes", "blobs/raw")
        store.save("héllo\n", "notes/hello")
        store.save({"auc": 0.91, "layers": [1, 2]}, "metrics/fraud")
        store.catalog.register("models/meta", "model")
    assert cas_cli("get", "blobs/raw", cwd=tmp_path, env=env).raw == b"\x00raw\xffbytes"
    assert cas_cli("get", "notes/hello", cwd=tmp_path, env=env).out == "héllo\n"
    assert json.loads(cas_cli("get", "metrics/fraud", cwd=tmp_path, env=env).out)["auc"] == 0.91
    doc = cas_cli("get", "metrics/fraud", "--json", cwd=tmp_path, env=env).json()
    assert doc["value"] == {"auc": 0.91, "layers": [1, 2]}
    cas_cli("get", "blobs/raw", "-o", "out/raw.bin", cwd=tmp_path, env=env)
    assert (tmp_path / "out" / "raw.bin").read_bytes() == b"\x00raw\xffbytes"
    (tmp_path / "f.txt").write_text("a put file\n")
    cas_cli("put", "f.txt", "--name", "files/f", cwd=tmp_path, env=env)
    for name, raw in (("blobs/raw", b"\x00raw\xffbytes"), ("files/f", b"a put file\n")):
        assert cas_cli("get", name, "-o", "-", cwd=tmp_path, env=env).raw == raw
    assert not (tmp_path / "-").exists()
    assert "-o PATH" in cas_cli("get", "blobs/raw", "--json", cwd=tmp_path, env=env, code=2).err
    assert "without data" in cas_cli("get", "models/meta", cwd=tmp_path, env=env, code=2).err


def test_errors_and_exit_codes(tmp_path: Path, env: dict[str, str]) -> None:
    def cli(*args: str, code: int) -> Run:
        return cas_cli(*args, cwd=tmp_path, env=env, code=code)

    assert "is not a cas store" in cli("ls", code=2).err  # no init yet: nothing is created
    assert not (tmp_path / ".cas").exists()
    assert cli("--root", "other", "init", code=0).out.startswith("Initialized empty cas store")
    missing = cli("--root", "other", "get", "models/nope", code=2)
    assert missing.err.startswith("cas: ") and "'models/nope'" in missing.err
    assert "invalid ref name 'a..b'" in cli("--root", "other", "show", "a..b", code=2).err
    (tmp_path / "f").write_text("x")
    assert "cannot contain ' '" in cli("--root", "other", "put", "f", "--name", "a b", code=2).err
    assert "no such file or folder" in cli("--root", "other", "put", "nope.txt", code=2).err
    assert "not key=value" in cli("--root", "other", "put", "f", "--tag", "novalue", code=2).err
    assert "bad query" in cli("--root", "other", "search", "stage:", code=2).err
    assert "invalid duration" in cli("--root", "other", "gc", "--grace", "5x", code=2).err
    assert "usage:" in cli("--root", "other", "frobnicate", code=2).err
    assert "usage:" in cli(code=2).err
    assert "no history" in cli("--root", "other", "log", "nope", code=2).err


def test_root_flag_and_env(tmp_path: Path, env: dict[str, str]) -> None:
    (tmp_path / "f.txt").write_text("x")
    cas_cli("--root", str(tmp_path / "a"), "init", cwd=tmp_path, env=env)
    cas_cli("init", "--root", "file://" + str(tmp_path / "b"), cwd=tmp_path, env=env)
    cas_cli("put", "f.txt", "--name", "in/a", "--root", str(tmp_path / "a"), cwd=tmp_path, env=env)
    with_env = {**env, "CAS_ROOT": str(tmp_path / "b")}
    cas_cli("put", "f.txt", "--name", "in/b", cwd=tmp_path, env=with_env)
    assert cas_cli("ls", cwd=tmp_path, env=with_env).out.split() == ["in/b"]
    assert cas_cli("--root", "a", "ls", cwd=tmp_path, env=with_env).out.split() == ["in/a"]
    assert not (tmp_path / ".cas").exists()


def _object_file(root: Path, oid: str) -> Path:
    return root / "objects" / oid[:2] / oid[2:]


def test_fsck_gc_reindex(tmp_path: Path, env: dict[str, str]) -> None:
    def cli(*args: str, code: int | None = 0) -> Run:
        return cas_cli(*args, cwd=tmp_path, env=env, code=code)

    cli("init")
    root = tmp_path / ".cas"
    for name, body in (("keep.txt", b"keep me\n" * 100), ("drop.txt", b"drop me\n" * 100)):
        (tmp_path / name).write_bytes(body)
        cli("put", name)
    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(6 << 20))  # chunked: a chunk list and its chunks
    cli("put", "big.bin")
    assert cli("fsck").out == ""
    assert cli("fsck", "--json").json()["ok"] is True
    assert cli("reindex").out == ""  # a healthy store: nothing changed
    assert cli("reindex", "--json").json()["changed"] == {}
    assert cli("sync", "--json").json()["full"] is False
    assert cli("sync", "--full", "--json").json()["entries"] == 3  # one put per save
    # A machine whose catalog is gone (a new clone of the folder): the first sync says
    # what it applied, once; the next finds nothing new.
    shutil.rmtree(root / "index")
    assert cli("sync", "--json").json()["entries"] == 3
    assert cli("sync", "--json").json()["entries"] == 0
    shutil.rmtree(root / "index")
    assert cli("sync").out == "catalog: 3 journal entries applied\n"
    assert cli("sync").out == ""  # nothing new: quiet

    # gc: nothing unreachable yet; then drop.txt's name goes and retention 0 frees it.
    assert cli("gc", "--dry-run", "--grace", "0", "--json").json()["plan"]["to_delete"] == 0
    drop_content = cli("show", "drop.txt", "--json").json()["content_id"]
    cli("rm", "drop.txt")
    default = cli("gc", "--dry-run", "--json").json()  # 1d grace, 30d retention: keeps all
    assert default["plan"]["to_delete"] == 0 and default["grace"] == 86400
    plan = cli("gc", "--dry-run", "--grace", "0", "--retention", "0", "--json").json()
    assert plan["dry_run"] is True and plan["result"] is None
    assert plan["plan"]["to_delete"] >= 2 and plan["plan"]["bytes_freed"] > 0
    text = cli("gc", "--dry-run", "--grace", "0s", "--retention", "0m").out
    assert "to delete:" in text and "run without --dry-run" in text
    assert _object_file(root, drop_content).exists()
    done = cli("gc", "--grace", "0", "--retention", "0", "--json").json()
    assert done["result"]["deleted"] == plan["plan"]["to_delete"]
    assert done["result"]["bytes_freed"] == plan["plan"]["bytes_freed"]
    assert not _object_file(root, drop_content).exists()
    assert "nothing to delete" in cli("gc", "--grace", "0", "--retention", "0").out
    cli("get", "keep.txt", "-o", "k.txt")
    cli("get", "big.bin", "-o", "b.bin")
    assert (tmp_path / "b.bin").read_bytes() == big.read_bytes()
    assert cli("fsck").out == ""

    # A flipped byte: fsck names the object and the artifact, exit 1; --repair quarantines.
    keep = cli("show", "keep.txt", "--json").json()
    target = _object_file(root, keep["content_id"])
    body = bytearray(target.read_bytes())
    body[-1] ^= 0x01
    os.chmod(target, 0o644)
    target.write_bytes(bytes(body))
    bad = cli("fsck", code=1)
    assert keep["content_id"] in bad.out and f"keep.txt ({keep['id'][:12]})" in bad.out
    report = cli("fsck", "--json", code=1).json()
    assert report["ok"] is False
    assert [p["kind"] for p in report["problems"]] == ["corrupt"]
    assert cli("get", "keep.txt", "-o", "k2.txt", code=2).err.startswith("cas: ")
    repaired = cli("fsck", "--repair", code=1)
    assert f"quarantined {keep['content_id']}" in repaired.out and "keep.txt" in repaired.out
    assert (root / "quarantine" / keep["content_id"]).exists()
    missing = cli("fsck", "--json", code=1).json()
    assert [p["kind"] for p in missing["problems"]] == ["missing"]

    # A corrupt record: gc cannot know what it reaches, so it deletes nothing (exit 1).
    # (keep.txt's record is a loose object: a small save's two objects stay loose; the
    # big file's chunks and record went into a pack, see test_packs.py for those.)
    record = _object_file(root, keep["id"])
    body = bytearray(record.read_bytes())
    body[-1] ^= 0x01
    os.chmod(record, 0o644)
    record.write_bytes(bytes(body))
    before = sorted(p.name for p in (root / "objects").rglob("*"))
    refused = cli("gc", "--grace", "0", "--retention", "0", code=1)
    assert "deletes nothing" in refused.err and "fsck" in refused.err
    assert sorted(p.name for p in (root / "objects").rglob("*")) == before


def test_push_pull(tmp_path: Path, env: dict[str, str]) -> None:
    def cli(*args: str, code: int | None = 0) -> Run:
        return cas_cli(*args, cwd=tmp_path, env=env, code=code)

    a, b, hub = str(tmp_path / "a"), str(tmp_path / "b"), str(tmp_path / "hub")
    cli("--root", a, "init")
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "x.txt").write_text("x")
    (tmp_path / "big.bin").write_bytes(os.urandom(5 << 20))
    (tmp_path / "v.txt").write_text("v1")
    base = cli("--root", a, "put", "d", "--name", "data/d").out.strip()
    cli("--root", a, "put", "big.bin", "--name", "data/big")
    v1 = cli("--root", a, "put", "v.txt", "--name", "models/m", "--parent", base).out.strip()
    cli("--root", a, "tag", "models/m", "stage=production")

    pushed = cli("--root", a, "push", hub, "--json").json()
    assert {u["name"]: u["status"] for u in pushed["refs"]} == {
        "data/big": "new", "data/d": "new", "models/m": "new"
    }  # fmt: skip
    assert pushed["records"] == 3 and pushed["conflicts"] == 0
    again = cli("--root", a, "push", hub, "--json").json()  # nothing left to send
    assert again["objects"] == 0 and {u["status"] for u in again["refs"]} == {"up-to-date"}
    assert " * [new]" in cli("--root", b, "pull", hub, "models/m").out
    assert cli("--root", b, "ls").out.split() == ["models/m"]
    assert cli("--root", b, "search", "stage:production", "--json").json()[0]["id"] == v1
    assert cli("--root", b, "show", "models/m", "--json").json()["parent_ids"] == [base]
    cli("--root", b, "pull", hub)
    cli("--root", b, "get", "data/big", "-o", "big2.bin")
    assert (tmp_path / "big2.bin").read_bytes() == (tmp_path / "big.bin").read_bytes()
    assert cli("--root", b, "fsck").out == ""

    # a moves on (fast-forward push); b saves its own version: its push is a conflict.
    (tmp_path / "v.txt").write_text("v2 from a")
    v2 = cli("--root", a, "put", "v.txt", "--name", "models/m").out.strip()
    assert f"{v1[:12]}..{v2[:12]}" in cli("--root", a, "push", hub).out
    (tmp_path / "v.txt").write_text("v2 from b")
    v2b = cli("--root", b, "put", "v.txt", "--name", "models/m").out.strip()
    rejected = cli("--root", b, "push", hub, code=1)
    assert "[rejected] models/m" in rejected.err and "--force" in rejected.err
    assert cli("--root", hub, "show", "models/m", "--json").json()["id"] == v2
    assert cli("--root", b, "pull", hub, code=1).err.count("[rejected]") == 1
    cli("--root", b, "pull", hub, "--force")
    assert cli("--root", b, "show", "models/m", "--json").json()["id"] == v2
    assert cli("--root", b, "push", hub, "--json").json()["conflicts"] == 0  # now in b's history
    assert v2b in {e["new"] for e in cli("--root", b, "log", "models/m", "--json").json()}
    assert "no artifact named 'nope'" in cli("--root", a, "push", hub, "nope", code=2).err


def test_progress_only_on_a_terminal(tmp_path: Path, env: dict[str, str]) -> None:
    pty = pytest.importorskip("pty")
    (tmp_path / "d").mkdir()
    for i in range(20):
        (tmp_path / "d" / f"f{i}").write_bytes(os.urandom(1000))
    cas_cli("init", cwd=tmp_path, env=env)
    # Piped (cas_cli checks every run for escape codes): quiet.
    assert cas_cli("put", "d", cwd=tmp_path, env=env).err == ""
    assert cas_cli("fsck", cwd=tmp_path, env=env).err == ""
    # On a terminal, the same commands draw on stderr (and the bar is gone at the end).
    leader, follower = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "cas.cli", "put", "d", "--name", "d2"],
        cwd=tmp_path, env={**env, "TERM": "xterm"}, stdout=subprocess.PIPE, stderr=follower,
    )  # fmt: skip
    os.close(follower)
    drawn = b""
    while True:
        try:
            chunk = os.read(leader, 4096)
        except OSError:
            break
        if not chunk:
            break
        drawn += chunk
    out, _ = proc.communicate(timeout=60)
    os.close(leader)
    assert proc.returncode == 0 and len(out.strip()) == 64
    assert b"\x1b" in drawn


def test_short_ids_as_git_takes_them(tmp_path: Path, env: dict[str, str]) -> None:
    """The 12 hex digits ``ls -l``, ``log`` and ``search`` print (or any unique prefix
    of 4 or more) name the artifact wherever a name or id is taken."""

    def cli(*args: str, code: int | None = 0) -> Run:
        return cas_cli(*args, cwd=tmp_path, env=env, code=code)

    cli("init")
    (tmp_path / "a.txt").write_bytes(b"first\n")
    rid = cli("put", "a.txt", "--name", "docs/a").out.strip()
    short = rid[:12]
    assert cli("show", short, "--json").json()["id"] == rid
    assert cli("get", rid[:6], "-o", "out.txt").code == 0
    assert (tmp_path / "out.txt").read_bytes() == b"first\n"
    assert cli("tag", short, "stage=prod", "--json").json()["tags"] == {"stage": "prod"}
    missing = cli("show", "0000ffff", code=2)
    assert "no artifact named '0000ffff' and no artifact id starts with it" in missing.err
    assert cli("rm", short, "--json").json() == {"deleted": "docs/a", "id": rid}
    assert cli("ls").out == ""


def test_json_failures_print_one_document(tmp_path: Path, env: dict[str, str]) -> None:
    def cli(*args: str, code: int | None = 0) -> Run:
        return cas_cli(*args, cwd=tmp_path, env=env, code=code)

    cli("init")
    failed = cli("--json", "show", "models/nope", code=2)
    assert failed.json()["kind"] == "ObjectNotFound"
    assert "no artifact named 'models/nope'" in failed.json()["error"]
    assert failed.err.startswith("cas: ")  # and the message for people, as without --json
    (tmp_path / "a.txt").write_bytes(b"a")
    cli("put", "a.txt")
    mixed = cli("--json", "get", "a.txt", "-o", "-", code=2)
    assert mixed.json()["kind"] == "UsageError" and mixed.raw.count(b"{") == 1


def test_set_points_a_name_at_an_artifact(tmp_path: Path, env: dict[str, str]) -> None:
    """``cas set NAME ID`` as git's ``update-ref``: back to an earlier version, an
    undone ``rm`` with the id ``cas log`` printed, history, and refusals that write
    nothing."""

    def cli(*args: str, code: int | None = 0) -> Run:
        return cas_cli(*args, cwd=tmp_path, env=env, code=code)

    cli("init")
    (tmp_path / "m.bin").write_bytes(b"v1")
    v1 = cli("put", "m.bin", "--name", "models/fraud", "--tag", "stage=prod", "--type", "model").out.strip()  # fmt: skip
    (tmp_path / "m.bin").write_bytes(b"v2")
    v2 = cli("put", "m.bin", "--name", "models/fraud").out.strip()
    # Back to the first version: the name holds that very id again.
    assert cli("set", "models/fraud", v1[:12]).out.strip() == v1
    assert cli("show", "models/fraud", "--json").json()["id"] == v1
    log = cli("--json", "log", "models/fraud").json()
    assert (log[0]["old"], log[0]["new"], log[0]["message"]) == (v2, v1, "set")
    # A mistaken rm, undone with the short id from 'cas log'.
    cli("rm", "models/fraud")
    assert cli("ls").out == ""
    short = cli("log", "models/fraud").out.splitlines()[0].split()[4]  # OLD of the delete
    assert short == v1[:12]
    done = cli("--json", "set", "models/fraud", short).json()
    assert done["from"] == v1 and done["old"] is None
    meta = cli("--json", "show", "models/fraud").json()
    assert meta["id"] == done["id"] and meta["content_id"] is not None
    assert (meta["name"], meta["type"]) == ("models/fraud", "model")
    assert meta["tags"] == {"stage": "prod"}
    assert cli("ls", "-l").out.split()[0] == done["id"][:12]
    assert [a["id"] for a in cli("--json", "search", "stage:prod").json()] == [done["id"]]
    assert cli("get", "models/fraud", "-o", "-").raw == b"v1"
    assert f"set from {v1[:12]}" in cli("log", "models/fraud").out.splitlines()[0]
    # Another name for the same artifact: the catalog shows it under that name.
    alias = cli("--json", "set", "models/best", "models/fraud").json()["id"]
    assert cli("--json", "show", "models/best").json()["name"] == "models/best"
    assert {a["name"] for a in cli("--json", "search", "stage:prod").json()} == {
        "models/fraud", "models/best"
    }  # fmt: skip
    # Compare-and-swap: OLD must be what the name holds.
    cli("set", "models/best", v2, alias[:12])
    assert cli("get", "models/best", "-o", "-").raw == b"v2"
    before = cli("--json", "log", "models/best").json()
    moved = cli("--json", "set", "models/best", v1, alias[:12], code=2).json()
    assert moved["kind"] == "RefConflict" and "cas log models/best" in moved["error"]
    # Refused: content that is not an artifact, an unknown id, a folder name.
    content = meta["content_id"]
    blob = cli("set", "models/x", content, code=2)
    assert f"{content} is a blob object, not an artifact" in blob.err
    assert "no artifact id starts with it" in cli("set", "models/x", "abcdef12", code=2).err
    folder = cli("set", "models", done["id"], code=2)
    assert "ref 'models/best' exists (a ref cannot also be a folder of refs)" in folder.err
    assert cli("--json", "log", "models/best").json() == before
    assert cli("ls").out.split() == ["models/best", "models/fraud"]


def test_set_refuses_an_ambiguous_short_id(tmp_path: Path, env: dict[str, str]) -> None:
    with cas.ArtifactStore(tmp_path / ".cas") as store, store.batch():
        seen: dict[str, str] = {}
        for i in range(5000):
            rid = store.save(f"value {i}", f"v/{i}")
            if rid[:4] in seen:
                break
            seen[rid[:4]] = rid
    prefix = rid[:4]
    run = cas_cli("set", "picked", prefix, cwd=tmp_path, env=env, code=2)
    assert f"short id {prefix!r} is ambiguous" in run.err and rid[:16] in run.err
    assert cas_cli("ls", "picked", cwd=tmp_path, env=env).out == ""


def test_a_corrupt_object_names_the_artifact(tmp_path: Path, env: dict[str, str]) -> None:
    """quickstart.md: an ``IntegrityError`` names the object and the artifact, and says
    to run ``cas fsck``; nothing is written where the content was to go."""

    def cli(*args: str, code: int | None = 0) -> Run:
        return cas_cli(*args, cwd=tmp_path, env=env, code=code)

    cli("init")
    (tmp_path / "model.bin").write_bytes(b"weights " * 500)
    rid = cli("put", "model.bin", "--name", "models/fraud").out.strip()
    content = cli("--json", "show", "models/fraud").json()["content_id"]
    path = _object_file(tmp_path / ".cas", content)
    data = bytearray(path.read_bytes())
    data[-3] ^= 0x01
    path.chmod(0o644)
    path.write_bytes(bytes(data))
    for args in (("-o", "x"), ("-o", "-")):
        run = cli("get", "models/fraud", *args, code=2)
        assert f"object {content}" in run.err, run.err
        assert f"artifact models/fraud ({rid})" in run.err and "cas fsck" in run.err
    assert not (tmp_path / "x").exists()
