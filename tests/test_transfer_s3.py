"""push/pull between a local root and the S3 server (moto): a store round trips exactly.

A local store with blobs, a chunked artifact (over the 4 MiB threshold), a folder,
several versions of a name, a metadata-only registration, tags and parent links is
pushed to an ``s3://`` root and pulled back into a fresh local root: every name, record,
tag, lineage link and byte of content is the same. Uploads are counted at aiobotocore's
client (every request s3fs and refs send passes there): an interrupted push resumes
without sending again any object that arrived. A conflicting name is reported and left
alone; ``--force`` overwrites it. The command line does the same through ``CAS_ROOT``-style
environment (``AWS_ENDPOINT_URL_S3``) in a real process.
"""

from __future__ import annotations

import collections
import contextlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import cas
from cas.admin import transfer
from cas.api.artifact_store import ArtifactStore
from cas.objects import packs
from cas.objects.ids import parse_id
from cas.objects.kinds import ChunkList
from cas.objects.space import object_path
from cas.testing.servers import Server, s3_calls

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("fresh_cache")]

Uploads = collections.Counter[str]  # object key below the root -> PutObject/UploadPart count


@pytest.fixture
def local(tmp_path: Path) -> Iterator[ArtifactStore]:
    with cas.open_store(tmp_path / "local", fsync=False) as store:
        yield store


@pytest.fixture
def remote_url(s3_server: Server) -> str:
    return s3_server.url(s3_server.new_bucket(), "hub")


@pytest.fixture
def remote(s3_server: Server, remote_url: str) -> Iterator[ArtifactStore]:
    with cas.open_store(remote_url, **s3_server.storage_options) as store:
        yield store


def uploads() -> contextlib.AbstractContextManager[Uploads]:
    """Count uploads by key (the part below the bucket) while the block runs."""
    kinds = ("PutObject", "CreateMultipartUpload", "CopyObject")
    return s3_calls(lambda op, params: str(params.get("Key", "")) if op in kinds else None)


def _object_uploads(counts: Uploads) -> Uploads:
    """Only the objects: ``hub/objects/ab/cdef...`` -> ``objects/ab/cdef...``."""
    out: Uploads = collections.Counter()
    for key, n in counts.items():
        rel = key.split("/", 1)[1] if "/" in key else key
        if rel.startswith("objects/"):
            out[rel] += n
    return out


def _fill(store: ArtifactStore, tmp_path: Path) -> dict[str, str]:
    folder = tmp_path / "model"
    (folder / "deep" / "er").mkdir(parents=True)
    (folder / "w.bin").write_bytes(os.urandom(3000))
    (folder / "run.sh").write_text("#!/bin/sh\n")
    (folder / "run.sh").chmod(0o755)
    (folder / "deep" / "er" / "c.json").write_text("{}")
    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(9 << 20) + b"tail")  # over the 4 MiB threshold: chunked
    # An older version of data/raw: a record of the store that nothing links to.
    ids = {"raw_v1": store.save(b"old rows", "data/raw")}
    ids["raw"] = store.save(b"raw rows", "data/raw", metadata={"rows": 2})
    ids["big"] = store.save(big, "data/big", parent_ids=[ids["raw"]], tags={"kind": "weights"})
    ids["model_v1"] = store.save(folder, "models/fraud", parent_ids=[ids["big"]])
    (folder / "w.bin").write_bytes(os.urandom(3000))
    ids["model"] = store.save(
        folder, "models/fraud", parent_ids=[ids["big"], ids["model_v1"]], tags={"t": "1"}
    )
    store.catalog.tag(ids["model"], stage="production")
    store.catalog.tag(ids["model_v1"], stage="archived")
    ids["json"] = store.save({"auc": 0.9}, "metrics/fraud", parent_ids=[ids["model"]])
    ids["note"] = store.catalog.register("notes/plan", "note", tags={"team": "fraud"})
    ids["np"] = store.save(b"x" * 100, "runs/p/r1/train/scratch")
    return ids


def _snapshot(store: ArtifactStore) -> dict[str, Any]:
    """Everything a user can see of a store, by value."""
    catalog = store.index.catalog
    records = {rid: dict(catalog.get(rid) or {}) for rid in catalog.ids()}
    return {
        "refs": sorted(store.refs.items()),
        "records": records,
        "lineage": {
            rid: {
                k: sorted(a.id for a in v)
                for k, v in store.catalog.get_lineage(rid, depth=None).items()
            }
            for rid in records
        },
        "search": sorted(a.id for a in store.catalog.search("stage:production")),
        "objects": sorted(store.space),
    }


def test_round_trip_through_s3(
    local: ArtifactStore, remote: ArtifactStore, tmp_path: Path, s3_server: Server
) -> None:
    ids = _fill(local, tmp_path)
    pushed = transfer.transfer(local, remote, message="push")
    assert not pushed.conflicts and {u.status for u in pushed.refs} == {"new"}
    # Every artifact: older versions too (data/raw's first is linked to nothing).
    assert pushed.records == len(ids)
    assert _snapshot(remote) == _snapshot(local)
    # The remote's catalog is durable: a second machine (another cache) sees the same.
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CAS_CACHE_DIR", str(tmp_path / "cache2"))
        with cas.open_store(remote.url, **s3_server.storage_options) as again:
            assert _snapshot(again) == _snapshot(local)
    assert remote.reindex()["changed"] == {}

    with cas.open_store(tmp_path / "back", fsync=False) as back:
        pulled = transfer.transfer(remote, back, message="pull")
        assert not pulled.conflicts and pulled.records == len(ids)
        assert _snapshot(back) == _snapshot(local)
        for name in local.list_artifacts():
            assert back.get_metadata(name) == local.get_metadata(name)
        assert (
            back.load("data/big", dest=tmp_path / "out").read_bytes()
            == (tmp_path / "big.bin").read_bytes()
        )
        tree = back.load("models/fraud", dest=tmp_path / "m")
        assert (tree / "deep" / "er" / "c.json").read_text() == "{}"
        assert os.access(tree / "run.sh", os.X_OK)
        assert back.load(ids["model_v1"], dest=tmp_path / "v1").is_dir()
        assert back.load(ids["raw_v1"]) == b"old rows"
        assert back.load("metrics/fraud") == {"auc": 0.9}
        assert back.get_metadata("data/raw")["metadata"] == {"rows": 2}
        assert back.catalog.get(ids["note"])["tags"] == {"team": "fraud"}
        assert back.reindex()["changed"] == {}
    # Nothing is left to send either way.
    assert transfer.transfer(local, remote).objects == 0


def test_a_later_tag_and_version_travel_alone(
    local: ArtifactStore, remote: ArtifactStore, tmp_path: Path
) -> None:
    ids = _fill(local, tmp_path)
    transfer.transfer(local, remote)
    local.catalog.tag(ids["raw"], stage="gold")
    v3 = local.save(b"v3", "models/fraud", parent_ids=[ids["model"]])
    with uploads() as counts:
        result = transfer.transfer(local, remote)
    assert {u.name: u.status for u in result.refs}["models/fraud"] == "updated"
    # The new record and its content; no object already there is sent again.
    assert set(_object_uploads(counts)) == {
        object_path(parse_id(v3)),
        object_path(parse_id(local.get_metadata(v3)["content_id"])),
    }
    assert remote.get_metadata("data/raw")["tags"] == {"stage": "gold"}
    assert _snapshot(remote) == _snapshot(local)


def test_interrupted_push_resumes_without_sending_again(
    local: ArtifactStore,
    remote: ArtifactStore,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A push goes up as packs; one that dies part-way leaves the packs it committed,
    and the next push sends only what is not in them."""
    monkeypatch.setattr(packs, "PACK_SIZE", 1 << 20)  # several packs for a few MiB
    ids = _fill(local, tmp_path)
    big = local.get_metadata(ids["big"])["content_id"]
    chunks = {c for c, _ in ChunkList.parse(big, local.space.read_object(big)[1]).chunks}
    real = type(remote.storage).write_atomic
    committed = 0

    def flaky(self: Any, rel: str, data: bytes, **kwargs: Any) -> None:
        nonlocal committed
        if rel.startswith("packs/") and rel.endswith(".idx"):
            committed += 1
            if committed > 2:  # the connection drops after two packs are committed
                raise OSError("connection reset by peer")
        real(self, rel, data, **kwargs)

    monkeypatch.setattr(type(remote.storage), "write_atomic", flaky)
    with pytest.raises(OSError, match="connection reset"):
        transfer.transfer(local, remote)
    monkeypatch.setattr(type(remote.storage), "write_atomic", real)
    assert remote.list_artifacts() == []  # no name moved, nothing indexed
    remote.space.packs.refresh()
    arrived = set(remote.space)
    assert arrived < set(local.space) and big not in arrived
    assert 0 < len(arrived & chunks) < len(chunks)  # some of the chunks, not all

    with uploads() as second:
        resumed = transfer.transfer(local, remote)
    assert not resumed.conflicts
    # What arrived is not sent again: the second push's packs hold only the rest.
    remote.space.packs.refresh()
    new_packs = {k.split("/")[-1][:-4] for k in second if k.endswith(".idx")}
    sent_again = {
        oid for p in new_packs for oid, _ in remote.space.packs.index(p).entries()
    } & arrived
    assert not sent_again, f"sent twice: {sorted(sent_again)}"
    assert max(_object_uploads(second).values(), default=1) == 1
    assert _snapshot(remote) == _snapshot(local)


def test_conflicting_name_is_reported_not_overwritten(
    local: ArtifactStore, remote: ArtifactStore, s3_server: Server
) -> None:
    v1 = local.save(b"v1", "m")
    transfer.transfer(local, remote)
    with cas.open_store(remote.url, **s3_server.storage_options) as other:
        theirs = other.save(b"someone else's", "m")  # another machine saves to the hub
    v2 = local.save(b"v2", "m")
    result = transfer.transfer(local, remote)
    assert [u.status for u in result.refs] == ["rejected"] and result.conflicts
    assert theirs[:12] in result.refs[0].reason and "--force" in result.refs[0].reason
    assert remote.refs.read("m") == theirs
    assert result.objects == 0 and not remote.space.has(v2)  # nothing of "m" travelled
    # Pulling the other way is a conflict too, until forced.
    back = transfer.transfer(remote, local)
    assert back.conflicts and local.refs.read("m") == v2
    forced = transfer.transfer(local, remote, force=True)
    assert [u.status for u in forced.refs] == ["forced"] and remote.refs.read("m") == v2
    assert remote.load("m") == b"v2"
    history = [e.new for e in remote.refs.log("m")]
    assert history[:2] == [v2, theirs] and v1 in history  # the overwritten id is kept


def _cli(*args: str, env: dict[str, str], code: int = 0) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [sys.executable, "-m", "cas.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert "Traceback" not in proc.stderr, proc.stderr
    assert proc.returncode == code, (args, proc.returncode, proc.stdout, proc.stderr)
    return proc


def test_command_line_push_pull_force(tmp_path: Path, s3_server: Server, remote_url: str) -> None:
    env = {k: v for k, v in os.environ.items() if k != "CAS_ROOT"}
    env.update(s3_server.env, CAS_CACHE_DIR=str(tmp_path / "cli-cache"))
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(6 << 20))
    _cli("--root", a, "init", env=env)
    base = _cli("--root", a, "put", str(big), "--name", "data/big", env=env).stdout.strip()
    (tmp_path / "m.txt").write_text("m1")
    _cli("--root", a, "put", str(tmp_path / "m.txt"), "--name", "models/m", "--parent", base,
         "--tag", "stage=dev", env=env)  # fmt: skip
    pushed = json.loads(_cli("--root", a, "--json", "push", remote_url, env=env).stdout)
    assert pushed["records"] == 2 and pushed["conflicts"] == 0
    _cli("--root", b, "pull", remote_url, env=env)
    _cli("--root", b, "get", "data/big", "-o", str(tmp_path / "big2.bin"), env=env)
    assert (tmp_path / "big2.bin").read_bytes() == big.read_bytes()
    shown = json.loads(_cli("--root", b, "--json", "show", "models/m", env=env).stdout)
    assert shown["parent_ids"] == [base] and shown["tags"] == {"stage": "dev"}
    assert _cli("--root", b, "fsck", env=env).stdout == ""

    (tmp_path / "m.txt").write_text("m2 from b")
    _cli("--root", b, "put", str(tmp_path / "m.txt"), "--name", "models/m", env=env)
    (tmp_path / "m.txt").write_text("m2 from a")
    v2a = _cli(
        "--root", a, "put", str(tmp_path / "m.txt"), "--name", "models/m", env=env
    ).stdout.strip()
    _cli("--root", a, "push", remote_url, env=env)
    rejected = _cli("--root", b, "push", remote_url, env=env, code=1)
    assert "[rejected] models/m" in rejected.stderr and "--force" in rejected.stderr
    hub = json.loads(_cli("--root", remote_url, "--json", "show", "models/m", env=env).stdout)
    assert hub["id"] == v2a
    _cli("--root", b, "push", remote_url, "--force", env=env)
    hub = json.loads(_cli("--root", remote_url, "--json", "show", "models/m", env=env).stdout)
    assert hub["id"] != v2a and _cli("--root", remote_url, "fsck", env=env).stdout == ""
