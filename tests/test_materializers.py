"""Every materializer round trips, type, dtype and index included."""

from __future__ import annotations

import os
from pathlib import Path

import blake3
import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

import cas


@pytest.fixture
def store(tmp_path: Path) -> cas.ArtifactStore:
    s = cas.open_store(str(tmp_path / "store"), fsync=False)
    yield s
    s.close()


@pytest.mark.parametrize(
    "value",
    [b"", b"bytes", "text ü", {"a": [1, 2.5, None, True], "b": {"c": "d"}}, [1, "two"], 3, 2.5, None, True],
)
def test_plain_values_round_trip_with_their_type(store: cas.ArtifactStore, value: object) -> None:
    store.save(value, "v")
    back = store.load("v")
    assert back == value and type(back) is type(value)


def test_numpy_round_trip_keeps_dtype_and_shape(store: cas.ArtifactStore) -> None:
    for dtype in ("float32", "int64", "uint8", "complex128", "bool"):
        arr = (np.arange(24).reshape(2, 3, 4) % 7).astype(dtype)
        store.save(arr, f"arr/{dtype}")
        back = store.load(f"arr/{dtype}")
        assert back.dtype == arr.dtype and back.shape == arr.shape and np.array_equal(back, arr)
    with pytest.raises(cas.MaterializerError):
        store.save(np.array([object()], dtype=object), "objects")


def test_dataframe_round_trip_keeps_dtypes_and_index(store: cas.ArtifactStore) -> None:
    df = pd.DataFrame(
        {"amount": [1.5, 2.5, 3.0], "n": pd.array([1, None, 3], dtype="Int64"), "s": ["a", "b", "c"],
         "when": pd.to_datetime(["2026-01-01", "2026-01-02", "2026-01-03"])},  # fmt: skip
        index=pd.Index(["x", "y", "z"], name="key"),
    )
    store.save(df, "frames/tx")
    back = store.load("frames/tx")
    pd.testing.assert_frame_equal(back, df)
    assert store.get_metadata("frames/tx")["type"] == "dataframe"


def test_arrow_table_round_trip(store: cas.ArtifactStore) -> None:
    table = pa.table({"a": pa.array([1, 2, 3], pa.int16()), "b": ["x", "y", None]})
    store.save(table, "tables/t")
    assert store.load("tables/t").equals(table)


def test_file_is_a_blob_whose_id_is_its_b3sum(store: cas.ArtifactStore, tmp_path: Path) -> None:
    f = tmp_path / "model.bin"
    data = os.urandom(6 << 20)
    f.write_bytes(data)
    store.save(f, "models/bin")
    assert store.get_metadata("models/bin")["content_id"] == blake3.blake3(data).hexdigest()
    out = store.load("models/bin", dest=tmp_path / "out")
    assert out == tmp_path / "out" / "model.bin" and out.read_bytes() == data
    cached = store.load("models/bin")
    assert isinstance(cached, Path) and cached.read_bytes() == data


def test_folder_is_a_tree_with_modes(store: cas.ArtifactStore, tmp_path: Path) -> None:
    src = tmp_path / "report"
    (src / "plots").mkdir(parents=True)
    (src / "summary.txt").write_text("auc 0.91\n")
    (src / "plots" / "roc.csv").write_text("fpr,tpr\n")
    (src / "run.sh").write_text("#!/bin/sh\necho hi\n")
    (src / "run.sh").chmod(0o755)
    (src / "empty").mkdir()
    store.save(src, "reports/r")
    assert store.get_metadata("reports/r")["size"] == sum(
        p.stat().st_size for p in src.rglob("*") if p.is_file()
    )
    out = store.load("reports/r", dest=tmp_path / "co")
    assert (out / "summary.txt").read_text() == "auc 0.91\n"
    assert (out / "plots" / "roc.csv").read_text() == "fpr,tpr\n"
    assert os.access(out / "run.sh", os.X_OK) and not os.access(out / "summary.txt", os.X_OK)
    assert (out / "empty").is_dir()
    # The same folder saved again under another name is the same tree: nothing new but a record.
    before = set(store.space)
    store.save(src, "reports/again")
    assert len(set(store.space) - before) == 1


def test_custom_materializer(store: cas.ArtifactStore) -> None:
    class Point:
        def __init__(self, x: int, y: int) -> None:
            self.x, self.y = x, y

    class PointMaterializer(cas.Materializer):
        name, artifact_type = "test.point", "point"

        def accepts(self, obj: object) -> bool:
            return isinstance(obj, Point)

        def save(self, obj, space):  # type: ignore[no-untyped-def]
            data = f"{obj.x},{obj.y}".encode()
            return cas.Stored(space.put(data), "blob", len(data))

        def load(self, ctx):  # type: ignore[no-untyped-def]
            x, y = ctx.space.get(ctx.content_id).decode().split(",")
            return Point(int(x), int(y))

    cas.register_materializer(PointMaterializer())
    store.save(Point(3, 4), "p")
    p = store.load("p")
    assert (p.x, p.y) == (3, 4) and store.get_metadata("p")["type"] == "point"
