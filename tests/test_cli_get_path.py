"""``cas get NAME:PATH``: one file (or subfolder) of a folder artifact, without the rest."""

from __future__ import annotations

import os
import tracemalloc
from pathlib import Path
from typing import Any

import blake3
import numpy as np
import pytest

import cas
from cas.cli.main import main
from cas.objects.kinds import ChunkList
from cas.objects.packs import pack_path
from cas.objects.space import ObjectSpace, object_path

BIG = 64 << 20


@pytest.fixture
def root(tmp_path: Path, fresh_cache: None) -> str:
    folder = tmp_path / "images"
    (folder / "sub").mkdir(parents=True)
    (folder / "a.txt").write_bytes(b"alpha\n")
    (folder / "sub" / "run.sh").write_bytes(b"#!/bin/sh\necho hi\n")
    (folder / "sub" / "run.sh").chmod(0o755)
    (folder / "sub" / "big.bin").write_bytes(np.random.default_rng(4).bytes(BIG))
    os.symlink("a.txt", folder / "link")
    url = str(tmp_path / "store")
    with cas.open_store(url, fsync=False) as store:
        store.save(folder, "data/images")
        store.save(b"just bytes", "blobs/one")
    return url


def cli(root: str, *args: str) -> int:
    return main(["--root", root, *args])


def test_get_one_file_keeps_its_bytes_and_mode(root: str, tmp_path: Path) -> None:
    out = tmp_path / "out.sh"
    assert cli(root, "get", "data/images:sub/run.sh", "-o", str(out)) == 0
    assert out.read_bytes() == b"#!/bin/sh\necho hi\n"
    assert os.access(out, os.X_OK)
    folder = tmp_path / "dest"
    folder.mkdir()
    assert cli(root, "get", "data/images:/a.txt", "-o", str(folder)) == 0  # into a folder
    assert (folder / "a.txt").read_bytes() == b"alpha\n"
    assert cli(root, "get", "data/images:link", "-o", str(folder / "link")) == 0
    assert os.readlink(folder / "link") == "a.txt"


def test_get_defaults_to_the_files_own_name_and_never_overwrites_it(
    root: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    assert cli(root, "--json", "get", "data/images:sub/run.sh") == 0
    assert (tmp_path / "run.sh").read_bytes() == b"#!/bin/sh\necho hi\n"
    doc = capsys.readouterr().out
    assert '"file": "sub/run.sh"' in doc and '"name": "data/images"' in doc
    assert cli(root, "get", "data/images:sub/run.sh") == 2
    assert "exists" in capsys.readouterr().err


def test_an_id_and_a_subfolder_work_too(root: str, tmp_path: Path) -> None:
    aid = cas.open_store(root).get_metadata("data/images")["id"]
    assert cli(root, "get", f"{aid}:sub", "-o", str(tmp_path / "sub")) == 0
    assert sorted(p.name for p in (tmp_path / "sub").iterdir()) == ["big.bin", "run.sh"]


def test_to_standard_output(root: str, capfdbinary: pytest.CaptureFixture[bytes]) -> None:
    assert cli(root, "get", "data/images:a.txt", "-o", "-") == 0
    assert capfdbinary.readouterr().out == b"alpha\n"


def test_errors_say_what_is_wrong(
    root: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli(root, "get", "data/images:nope.txt", "-o", str(tmp_path / "x")) == 2
    assert "no file 'nope.txt'" in capsys.readouterr().err
    assert cli(root, "get", "blobs/one:x", "-o", str(tmp_path / "x")) == 2
    assert "single file, not a folder" in capsys.readouterr().err
    assert cli(root, "get", "nothing:x", "-o", str(tmp_path / "x")) == 2
    assert "no artifact named 'nothing'" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_reads_only_that_files_objects_in_constant_memory(
    root: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = cas.open_store(root)
    big = next(e for e in store.list_files("data/images", "sub") if e["name"] == "big.bin")["id"]
    others = {e["id"] for e in store.list_files("data/images") if e["type"] != "directory"}
    seen: set[str] = set()
    original = ObjectSpace._read_stored

    def recording(self: ObjectSpace, oid: str) -> Any:
        seen.add(str(oid))
        return original(self, oid)

    monkeypatch.setattr(ObjectSpace, "_read_stored", recording)
    out = tmp_path / "big.bin"
    tracemalloc.start()
    try:
        assert cli(root, "get", "data/images:sub/big.bin", "-o", str(out)) == 0
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert blake3.blake3(out.read_bytes()).hexdigest() == big
    assert big in seen and not seen & others  # a.txt, run.sh, link: never read
    assert peak < BIG // 3, f"peak {peak} bytes for a {BIG}-byte file"
    assert len(ChunkList.parse(big, store.space.read_object(big)[1]).chunks) > 10


def test_a_corrupt_chunk_leaves_no_file(root: str, tmp_path: Path) -> None:
    store = cas.open_store(root)
    big = next(e for e in store.list_files("data/images", "sub") if e["name"] == "big.bin")["id"]
    last, _ = ChunkList.parse(big, store.space.read_object(big)[1]).chunks[-1]
    where = store.space.packs.find(last)
    if where is not None:
        path, at = Path(root) / pack_path(where.pack), where.offset + where.length - 1
    else:
        path = Path(root) / object_path(last)
        at = path.stat().st_size - 1
    path.chmod(0o644)
    with open(path, "r+b") as f:
        f.seek(at)
        byte = f.read(1)[0]
        f.seek(at)
        f.write(bytes([byte ^ 1]))
    assert cli(root, "get", "data/images:sub/big.bin", "-o", str(tmp_path / "big.bin")) == 2
    assert list(tmp_path.glob("big.bin*")) == [] and list(tmp_path.glob(".big.bin*")) == []
