"""cas:// through fsspec: what pandas, pyarrow and fsspec's own conformance suite read
and write through it (dask is not installed here, so it is not tested)."""

from __future__ import annotations

import io
import os
import posixpath
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import blake3
import fsspec
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
from fsspec.tests.abstract import AbstractFixtures
from fsspec.tests.abstract.copy import AbstractCopyTests
from fsspec.tests.abstract.get import AbstractGetTests
from fsspec.tests.abstract.open import AbstractOpenTests
from fsspec.tests.abstract.pipe import AbstractPipeTests
from fsspec.tests.abstract.put import AbstractPutTests

import cas
from cas.api.filesystem import CasFileSystem
from cas.objects import codec
from cas.objects.ids import ObjectId
from cas.objects.kinds import ChunkList
from cas.objects.packs import pack_path
from cas.objects.space import ObjectSpace, object_path
from cas.repo.records import make_record

BIG = 9_000_000  # above the 4 MiB threshold: a chunked blob of several chunks


def _frame(n: int) -> pd.DataFrame:
    rng = np.random.default_rng(5)
    return pd.DataFrame({"amount": rng.random(n).round(2), "user": rng.integers(0, 999, n),
                         "country": rng.choice(["DE", "FR", "US"], n)})  # fmt: skip


@pytest.fixture
def root(tmp_path: Path, fresh_cache: None) -> Iterator[str]:
    url = str(tmp_path / "store")
    store = cas.open_store(url, fsync=False)
    store.save(_frame(400_000), "features/fraud")  # ~5 MB of Parquet: chunked
    store.save(b"user,amount\n7,1.5\n9,2.5\n", "tables/tx.csv")
    store.save(np.random.default_rng(1).bytes(BIG), "blobs/big")
    parts = tmp_path / "parts"
    (parts / "sub").mkdir(parents=True)
    for i in range(3):
        _frame(1000 + i).assign(part=i).to_parquet(parts / f"part-{i}.parquet")
    (parts / "README").write_text("three parts\n")
    (parts / "sub" / "big.bin").write_bytes(np.random.default_rng(2).bytes(BIG))
    store.save(parts, "data/parts")
    store.close()
    yield url


@pytest.fixture
def fs(root: str) -> CasFileSystem:
    f = fsspec.filesystem("cas", root=root, fsync=False)
    assert isinstance(f, CasFileSystem)
    return f


def test_pandas_reads_parquet_and_csv_by_url(root: str) -> None:
    options = {"root": root}
    back = pd.read_parquet("cas://features/fraud", storage_options=options)
    pd.testing.assert_frame_equal(back, _frame(400_000))
    csv = pd.read_csv("cas://tables/tx.csv", storage_options=options)
    assert csv.to_dict("list") == {"user": [7, 9], "amount": [1.5, 2.5]}


def test_pandas_writes_a_dataframe_by_url(root: str) -> None:
    options = {"root": root, "fsync": False}
    df = _frame(2000)
    df.to_parquet("cas://features/new", storage_options=options)
    pd.testing.assert_frame_equal(
        pd.read_parquet("cas://features/new", storage_options=options), df
    )
    df.to_csv("cas://tables/new.csv", index=False, storage_options=options)
    store = cas.open_store(root)
    assert store.load("tables/new.csv") == df.to_csv(index=False).encode()


def test_pyarrow_dataset_over_a_folder_artifact(fs: CasFileSystem) -> None:
    dataset = ds.dataset("data/parts", filesystem=fs, format="parquet", exclude_invalid_files=True)
    table = dataset.to_table().to_pandas().sort_values(["part", "amount", "user"])
    expected = pd.concat([_frame(1000 + i).assign(part=i) for i in range(3)])
    assert len(table) == len(expected) == 3003
    assert sorted(dataset.files) == [f"data/parts/part-{i}.parquet" for i in range(3)]
    assert table["amount"].sum() == pytest.approx(expected["amount"].sum())
    one = pq.read_table("data/parts/part-1.parquet", filesystem=fs)
    assert one.num_rows == 1001


def test_no_import_is_needed_the_entry_point_registers_cas(root: str) -> None:
    code = (
        "import pandas as pd; "
        f"df = pd.read_csv('cas://tables/tx.csv', storage_options={{'root': {root!r}}}); "
        "print(int(df.user.sum()))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "16"


def test_root_defaults_to_cas_root_then_dot_cas(
    root: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CAS_ROOT", root)
    assert fsspec.filesystem("cas").root == root
    assert fsspec.filesystem("cas").cat("tables/tx.csv").startswith(b"user,amount")
    monkeypatch.delenv("CAS_ROOT")
    monkeypatch.chdir(tmp_path)
    # the environment changed: fsspec's instance cache must not return the old root
    assert fsspec.filesystem("cas").root == str(tmp_path / ".cas")
    with pytest.raises(cas.FormatError):  # a read never creates a store where there is none
        fsspec.filesystem("cas").ls("")
    assert not (tmp_path / ".cas").exists()


def test_names_are_folders_and_folder_artifacts_are_folders(fs: CasFileSystem) -> None:
    assert fs.ls("", detail=False) == ["blobs", "data", "features", "tables"]
    assert fs.ls("cas://data", detail=False) == ["data/parts"]
    assert fs.isdir("data") and fs.isdir("data/parts") and fs.isdir("data/parts/sub")
    assert fs.isfile("features/fraud") and fs.isfile("data/parts/sub/big.bin")
    assert sorted(fs.ls("data/parts", detail=False)) == [
        "data/parts/README",
        *[f"data/parts/part-{i}.parquet" for i in range(3)],
        "data/parts/sub",
    ]
    assert fs.find("data/parts/sub") == ["data/parts/sub/big.bin"]
    assert fs.find("") == [
        "blobs/big", "data/parts/README", *[f"data/parts/part-{i}.parquet" for i in range(3)],
        "data/parts/sub/big.bin", "features/fraud", "tables/tx.csv",
    ]  # fmt: skip
    assert fs.glob("data/parts/*.parquet") == [f"data/parts/part-{i}.parquet" for i in range(3)]


def test_info_has_size_and_content_id(fs: CasFileSystem, root: str) -> None:
    store = cas.open_store(root)
    info = fs.info("blobs/big")
    content = store.load("blobs/big")
    assert info["type"] == "file" and info["size"] == BIG == fs.size("blobs/big")
    assert info["content_id"] == blake3.blake3(content).hexdigest() == fs.ukey("blobs/big")
    assert info["artifact_id"] == store.get_metadata("blobs/big")["id"]
    inner = fs.info("data/parts/README")
    assert (
        inner["size"] == 12 and inner["content_id"] == blake3.blake3(b"three parts\n").hexdigest()
    )
    assert fs.info("data/parts")["type"] == "directory"
    assert fs.modified("blobs/big").year >= 2026


def test_a_64_hex_id_opens_like_its_name(fs: CasFileSystem, root: str) -> None:
    store = cas.open_store(root)
    aid = store.get_metadata("blobs/big")["id"]
    assert fs.cat(f"cas://{aid}") == store.load("blobs/big")
    parts = store.get_metadata("data/parts")["id"]
    assert fs.cat(f"{parts}/README") == b"three parts\n"
    assert fs.info(aid)["name"] == aid


def _reads(monkeypatch: pytest.MonkeyPatch) -> set[str]:
    """The ids of every object read from storage from now on (loose or packed)."""
    seen: set[str] = set()
    for method in ("_read_stored", "read_head"):
        original = getattr(ObjectSpace, method)

        def recording(self: ObjectSpace, oid: str, *a: Any, _orig: Any = original) -> Any:
            seen.add(str(oid))
            return _orig(self, oid, *a)

        monkeypatch.setattr(ObjectSpace, method, recording)
    return seen


def _chunks_of(store: cas.ArtifactStore, oid: str) -> set[str]:
    kind, payload = store.space.read_object(oid)
    return {c for c, _ in ChunkList.parse(oid, payload).chunks} if kind == "chunks" else set()


def test_reading_one_file_of_a_folder_reads_only_its_objects(
    fs: CasFileSystem, root: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = cas.open_store(root)
    others = set()
    for name in ["sub/big.bin", *[f"part-{i}.parquet" for i in range(3)]]:
        oid = fs.info(f"data/parts/{name}")["content_id"]
        others |= {oid} | _chunks_of(store, oid)
    fs.info("data/parts/README")
    seen = _reads(monkeypatch)
    with fs.open("data/parts/README") as f:
        assert f.read() == b"three parts\n"
    assert seen and not seen & others
    seen.clear()
    assert fs.cat("data/parts/sub/big.bin")[:4] == np.random.default_rng(2).bytes(BIG)[:4]
    assert seen & others


def test_seeks_and_ranges_are_verified_bytes(fs: CasFileSystem, root: str) -> None:
    data = cas.open_store(root).load("blobs/big")
    with fs.open("blobs/big") as f:
        assert f.seekable()
        f.seek(BIG - 100)
        assert f.read() == data[-100:]
        f.seek(3_000_000)
        assert f.read(5_000_000) == data[3_000_000:8_000_000]
        f.seek(10)
        assert f.read(10) == data[10:20]
    assert fs.cat_file("blobs/big", start=4_194_000, end=4_195_000) == data[4_194_000:4_195_000]
    assert fs.cat("data/parts/sub/big.bin") == np.random.default_rng(2).bytes(BIG)


def _corrupt(root: str, oid: str) -> None:
    """Flip the last stored byte of an object, loose or packed."""
    where = cas.open_store(root).space.packs.find(ObjectId(oid))
    if where is not None:
        path, at = Path(root) / pack_path(where.pack), where.offset + where.length - 1
    else:
        path = Path(root) / object_path(ObjectId(oid))
        at = path.stat().st_size - 1
    path.chmod(0o644)
    with open(path, "r+b") as f:
        f.seek(at)
        byte = f.read(1)[0]
        f.seek(at)
        f.write(bytes([byte ^ 0xFF]))


def test_a_corrupt_chunk_is_an_integrity_error_wherever_it_is_read(root: str) -> None:
    store = cas.open_store(root)
    content = store.get_metadata("blobs/big")["content_id"]
    chunks = ChunkList.parse(content, store.space.read_object(content)[1]).chunks
    _corrupt(root, chunks[0][0])
    fs = fsspec.filesystem("cas", root=root, skip_instance_cache=True)
    with pytest.raises(cas.IntegrityError):
        fs.cat("blobs/big")
    with fs.open("blobs/big") as f, pytest.raises(cas.IntegrityError):
        f.seek(BIG - 10)  # the footer-first read of Parquet: the chunks before are checked
        f.read()


def test_a_forged_chunk_list_is_caught_before_its_end_is_returned(root: str) -> None:
    """Every chunk is genuine but the list is not the content's: only the whole-content
    hash can tell, so a read of the end must not return bytes before it checked that."""
    store = cas.open_store(root)
    big = store.get_metadata("blobs/big")["content_id"]
    genuine = ChunkList.parse(big, store.space.read_object(big)[1])
    claimed = ObjectId(blake3.blake3(b"content this list does not assemble").hexdigest())
    store.storage.write_atomic(object_path(claimed), codec.encode("chunks", genuine.payload()))
    store.commit(make_record(name="blobs/forged", artifact_type="bytes", materializer="bytes",
                             content_id=claimed, content_kind="blob", size=genuine.size))  # fmt: skip
    fs = fsspec.filesystem("cas", root=root, skip_instance_cache=True)
    with fs.open("blobs/forged") as f, pytest.raises(cas.IntegrityError):
        f.seek(genuine.size - 10)
        f.read()
    with pytest.raises(cas.IntegrityError):
        fs.cat("blobs/forged")
    assert fs.cat("blobs/big") == store.load("blobs/big")  # the genuine content still reads


def test_missing_names_are_file_not_found_and_bad_input_a_cas_error(fs: CasFileSystem) -> None:
    for path in ("nope", "features/nope", "data/parts/nope.txt", "features/fraud/x"):
        with pytest.raises(FileNotFoundError):
            fs.info(path)
        assert not fs.exists(path)
    with pytest.raises(FileNotFoundError):
        fs.open("features/nope")
    with pytest.raises(cas.InvalidRefName):
        fs.info("bad..name")
    with pytest.raises(cas.IsAFolder):
        fs.open("data/parts")
    with pytest.raises(IsADirectoryError):
        fs.open("data")
    with pytest.raises(cas.RefConflict):
        fs.pipe_file("data/parts/new.txt", b"x")
    with pytest.raises(cas.IsAFolder):
        fs.pipe_file("data", b"x")


def test_a_write_saves_an_artifact_on_close(fs: CasFileSystem, root: str) -> None:
    with fs.open("out/report.txt", "wb") as f:
        f.write(b"auc 0.91\n")
        assert not fs.exists("out/report.txt")  # nothing is visible before close
    store = cas.open_store(root)
    assert store.load("out/report.txt") == b"auc 0.91\n"
    big = np.random.default_rng(3).bytes(BIG)
    fs.pipe_file("out/big", big)
    assert fs.info("out/big")["content_id"] == blake3.blake3(big).hexdigest()
    assert fs.cat("out/big") == big


def test_a_write_that_raises_saves_nothing(fs: CasFileSystem, root: str) -> None:
    fs.pipe_file("out/model", b"v1")
    with pytest.raises(RuntimeError), fs.open("out/model", "wb") as f:
        f.write(b"half of v2")
        raise RuntimeError("the writer failed")
    # fsspec.open's wrapper closes the file on an error too: that close must not save
    with pytest.raises(RuntimeError), fsspec.open("cas://out/model", "wb", root=root) as f:
        f.write(b"half of v2")
        raise RuntimeError("the writer failed")
    with pytest.raises(pa.ArrowInvalid):  # pandas closes the handle in a finally
        pd.DataFrame({"x": [object()]}).to_parquet(
            "cas://out/model", storage_options={"root": root}
        )
    assert fs.cat("out/model") == b"v1"
    assert len(cas.open_store(root).history("out/model")) == 1
    # written in an except block, a file still saves: that exception came before it
    try:
        raise KeyError("handled")
    except KeyError:
        fs.pipe_file("out/fallback", b"written while handling")
    assert fs.cat("out/fallback") == b"written while handling"


def test_a_transaction_saves_all_or_nothing(fs: CasFileSystem) -> None:
    with pytest.raises(RuntimeError), fs.transaction:
        fs.pipe_file("tx/a", b"a")
        raise RuntimeError("abort")
    assert not fs.exists("tx/a")
    with fs.transaction:
        fs.pipe_file("tx/a", b"a")
        fs.pipe_file("tx/b", b"b")
        assert not fs.exists("tx/a")
    assert fs.cat(["tx/a", "tx/b"]) == {"tx/a": b"a", "tx/b": b"b"}


def test_get_copies_a_folder_artifact_out_and_cp_renames_without_copying(
    fs: CasFileSystem, tmp_path: Path, root: str
) -> None:
    out = tmp_path / "out"
    fs.get("data/parts/", str(out), recursive=True)
    assert (out / "README").read_text() == "three parts\n"
    assert (out / "sub" / "big.bin").stat().st_size == BIG
    store = cas.open_store(root)
    before = sum(1 for _ in store.space)
    fs.cp("blobs/big", "blobs/copy")
    fs.cp("data/parts/sub/big.bin", "blobs/copy2")
    assert fs.cat("blobs/copy") == store.load("blobs/big")
    meta = store.get_metadata("blobs/copy")
    assert meta["parent_ids"] == [store.get_metadata("blobs/big")["id"]]
    assert store.load("blobs/copy2") == np.random.default_rng(2).bytes(BIG)
    assert sum(1 for _ in store.space) == before + 2  # two records, no content


def test_rm_removes_names_not_files_of_a_folder(fs: CasFileSystem) -> None:
    with pytest.raises(cas.RefConflict):
        fs.rm("data/parts/README")
    with pytest.raises(IsADirectoryError):
        fs.rm("tables")
    fs.rm("data", recursive=True)
    assert not fs.exists("data/parts")
    fs.rm("tables/tx.csv")
    assert fs.ls("", detail=False) == ["blobs", "features"]


# -- fsspec's own conformance suite ---------------------------------------------------------


class _CasFixtures(AbstractFixtures):  # type: ignore[misc]
    @pytest.fixture
    def fs(self, tmp_path: Path, fresh_cache: None) -> CasFileSystem:
        root = str(tmp_path / "suite")
        return fsspec.filesystem("cas", root=root, create=True, fsync=False)

    @pytest.fixture
    def fs_path(self) -> str:
        return "suite"

    @pytest.fixture
    def fs_join(self) -> Any:
        return posixpath.join

    @pytest.fixture
    def fs_sanitize_path(self) -> Any:
        return lambda p: p.strip("/")

    @pytest.fixture
    def supports_empty_directories(self) -> bool:
        return False


class TestNamesAsFolders(
    _CasFixtures,
    AbstractGetTests,  # type: ignore[misc]
    AbstractPutTests,  # type: ignore[misc]
    AbstractCopyTests,  # type: ignore[misc]
    AbstractOpenTests,  # type: ignore[misc]
    AbstractPipeTests,  # type: ignore[misc]
):
    """fsspec's get, put, copy, open and pipe suites, with names as the files and their
    prefixes as the folders (the scenarios are written through cas:// itself).

    All five apply. What differs is declared, as the suite asks: there are no empty
    folders (a folder of names exists while it holds a name: ``mkdir`` makes nothing),
    and paths are always ``/``-joined names. AbstractMvTests is two module-level tests
    of the local filesystem, not a suite for other filesystems.
    """


class TestFolderArtifact(_CasFixtures, AbstractGetTests):  # type: ignore[misc]
    """fsspec's get suite over a folder artifact: each scenario is built on the local
    disk by the suite's own builders, then saved as one folder artifact.

    Only get applies: a folder artifact is immutable, so put, copy-into, open-for-write
    and pipe into it are refused (``RefConflict``), which those suites would count as
    failures rather than as the contract.
    """

    def _as_artifact(self, fs: CasFileSystem, build: Any, tmp_path: Path, name: str) -> str:
        local = fsspec.filesystem("file", auto_mkdir=True)
        source = build(local, os.path.join, str(tmp_path / "build"))
        cas.open_store(fs.root, fsync=False).save(Path(source), name)
        return name

    @pytest.fixture
    def fs_bulk_operations_scenario_0(self, fs: CasFileSystem, tmp_path: Path) -> str:
        return self._as_artifact(fs, self._bulk_operations_scenario_0, tmp_path, "suite/source")

    @pytest.fixture
    def fs_glob_edge_cases_files(self, fs: CasFileSystem, tmp_path: Path) -> str:
        return self._as_artifact(fs, self._glob_edge_cases_files, tmp_path, "suite/source")

    @pytest.fixture
    def fs_dir_and_file_with_same_name_prefix(self, fs: CasFileSystem, tmp_path: Path) -> str:
        build = self._dir_and_file_with_same_name_prefix
        return self._as_artifact(fs, build, tmp_path, "suite/source")

    @pytest.fixture
    def fs_10_files_with_hashed_names(self, fs: CasFileSystem, tmp_path: Path) -> str:
        return self._as_artifact(fs, self._10_files_with_hashed_names, tmp_path, "suite/source")


def test_parquet_bytes_read_through_cas_equal_the_stored_bytes(
    fs: CasFileSystem, root: str
) -> None:
    """What pandas reads is the artifact's own content, byte for byte."""
    store = cas.open_store(root)
    content = store.get_metadata("features/fraud")["content_id"]
    raw = fs.cat("features/fraud")
    assert blake3.blake3(raw).hexdigest() == content
    assert pq.read_table(io.BytesIO(raw)).num_rows == 400_000
