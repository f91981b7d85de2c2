"""cas inside MLflow: real runs on MLflow's file tracking store whose experiments keep
their artifacts at ``cas://<prefix>?root=<url>``, on a local root and on moto's S3
server. Each MLflow operation is checked against what landed in cas, and listings
against MLflow's own local repository doing the same logging.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import blake3
import mlflow
import mlflow.pyfunc
import pytest
from click.testing import CliRunner
from mlflow.cli import gc as mlflow_gc
from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

import cas
from cas.integrations.mlflow import (
    CasArtifactRepository,
    decode_component,
    encode_path,
    parse_cas_uri,
)
from cas.testing.servers import Server


@dataclass
class Root:
    url: str
    options: dict[str, Any]
    env: dict[str, str] = field(default_factory=dict)

    def store(self) -> cas.ArtifactStore:
        return cas.open_store(self.url, **self.options)

    def location(self, prefix: str) -> str:
        return f"cas://{prefix}?root={quote(self.url, safe='')}"

    def cli(self, *args: str) -> Any:
        """``cas --root URL --json ARGS`` in a child process; its JSON answer."""
        done = subprocess.run(
            [sys.executable, "-m", "cas.cli", "--root", self.url, "--json", *args],
            env={**os.environ, **self.env},
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)


@pytest.fixture(params=["local", "s3"])
def root(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Root:
    if request.param == "local":
        return Root(str(tmp_path / "store"), {})
    server: Server = request.getfixturevalue("s3_server")
    # MLflow builds the repository from the URI alone: the endpoint and keys come from
    # the environment, as for any MLflow user of S3.
    for key, value in server.env.items():
        monkeypatch.setenv(key, value)
    return Root(server.url(server.new_bucket()), dict(server.storage_options), dict(server.env))


@pytest.fixture(autouse=True)
def tracking(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """MLflow's file tracking store in the test's folder."""
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    uri = (tmp_path / "mlruns").as_uri()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    assert mlflow.get_tracking_uri() == uri
    yield uri
    assert mlflow.active_run() is None


def experiment(location: str | None) -> str:
    return mlflow.create_experiment(f"e-{uuid.uuid4().hex[:12]}", artifact_location=location)


def make_tree(folder: Path) -> Path:
    (folder / "nested").mkdir(parents=True)
    (folder / "train.csv").write_text("a,b\n1,2\n")
    (folder / "nested" / "deep file.txt").write_text("spaces are not valid in a cas name")
    (folder / "nested" / ".config").write_bytes(b"\x00\x01 leading dot")
    return folder


def log_everything(tree: Path, single: Path) -> str:
    """The same logging calls, whatever the experiment's artifact location."""
    with mlflow.start_run() as run:
        mlflow.log_artifact(str(single))
        mlflow.log_artifact(str(single), "copies")
        mlflow.log_artifacts(str(tree), "data")
        mlflow.log_dict({"lr": 0.1, "layers": [2, 3]}, "conf/params.json")
        mlflow.log_text("auc 0.91", "notes.txt")
    return str(run.info.run_id)


def listing(run_id: str, path: str | None = None) -> list[tuple[str, bool, int | None]]:
    """Every entry under ``path``, walked recursively through MLflow's client."""
    out = []
    for info in mlflow.MlflowClient().list_artifacts(run_id, path):
        out.append((info.path, info.is_dir, info.file_size))
        if info.is_dir:
            out.extend(listing(run_id, info.path))
    return out


def read_tree(folder: Path) -> dict[str, bytes]:
    return {
        p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()
    }


def b3(data: bytes) -> str:
    return blake3.blake3(data).hexdigest()


def test_logged_files_are_cas_artifacts_listed_as_mlflow_lists_local_ones(
    root: Root, tmp_path: Path
) -> None:
    tree, single = make_tree(tmp_path / "tree"), tmp_path / "model.txt"
    single.write_text("weights")
    prefix = f"mlflow/{uuid.uuid4().hex[:8]}"
    mlflow.set_experiment(experiment_id=experiment(root.location(prefix)))
    run_id = log_everything(tree, single)
    mlflow.set_experiment(experiment_id=experiment((tmp_path / "plain").as_uri()))
    plain_id = log_everything(tree, single)

    assert listing(run_id) == listing(plain_id)
    assert listing(run_id, "data") == listing(plain_id, "data")
    assert mlflow.MlflowClient().list_artifacts(run_id, "notes.txt") == []
    assert ("data/nested/deep file.txt", False, 34) in listing(run_id)

    store = root.store()
    base = f"{prefix}/{run_id}/artifacts"
    files = {
        "model.txt": single.read_bytes(),
        "copies/model.txt": single.read_bytes(),
        **{f"data/{k}": v for k, v in read_tree(tree).items()},
        "conf/params.json": json.dumps({"lr": 0.1, "layers": [2, 3]}, indent=2).encode(),
        "notes.txt": b"auc 0.91",
    }
    names = {f"{base}/{encode_path(p)}": data for p, data in files.items()}
    assert store.list_artifacts(base + "/") == sorted(names)
    assert f"{base}/data/nested/deep%20file.txt" in names
    for name, data in names.items():
        meta = store.get_metadata(name)
        assert meta["content_id"] == b3(data) and meta["size"] == len(data)
        assert meta["source_run_id"] == run_id
        with store.open(name) as f:
            assert f.read() == data

    got = Path(mlflow.artifacts.download_artifacts(run_id=run_id, dst_path=str(tmp_path / "dl")))
    assert read_tree(got) == read_tree(Path(mlflow.artifacts.download_artifacts(run_id=plain_id)))
    assert mlflow.artifacts.load_dict(f"runs:/{run_id}/conf/params.json") == {
        "lr": 0.1,
        "layers": [2, 3],
    }
    assert mlflow.artifacts.load_text(f"runs:/{run_id}/notes.txt") == "auc 0.91"


def test_the_same_file_logged_twice_is_stored_once(root: Root, tmp_path: Path) -> None:
    big = tmp_path / "features.bin"
    big.write_bytes(os.urandom(1 << 20))
    mlflow.set_experiment(experiment_id=experiment(root.location("dedup")))
    with mlflow.start_run() as run:
        mlflow.log_artifact(str(big))
        once = root.cli("du")
        mlflow.log_artifact(str(big), "again")
    twice = root.cli("du")
    assert once["stored_bytes"] >= 1 << 20  # random bytes: zstd cannot shrink them
    assert twice["stored_bytes"] - once["stored_bytes"] < 16 << 10  # a record, not a copy
    assert twice["logical_bytes"] - once["logical_bytes"] == 1 << 20
    store = root.store()
    base = f"dedup/{run.info.run_id}/artifacts"
    ids = {
        store.get_metadata(f"{base}/{p}")["content_id"]
        for p in ("features.bin", "again/features.bin")
    }
    assert ids == {b3(big.read_bytes())}


class AddOne(mlflow.pyfunc.PythonModel):  # type: ignore[misc]
    def predict(self, context: Any, model_input: list[int], params: Any = None) -> list[int]:
        return [x + 1 for x in model_input]


def test_a_pyfunc_model_is_logged_into_cas_and_loads_back(root: Root) -> None:
    mlflow.set_experiment(experiment_id=experiment(root.location("models")))
    with mlflow.start_run():
        info = mlflow.pyfunc.log_model(
            name="adder", python_model=AddOne(), pip_requirements=["cloudpickle"]
        )
    model = mlflow.pyfunc.load_model(info.model_uri)
    assert list(model.predict([1, 41])) == [2, 42]

    names = root.store().list_artifacts(f"models/models/{info.model_id}/artifacts/")
    assert {n.rsplit("/", 1)[-1] for n in names} >= {
        "MLmodel",
        "python_model.pkl",
        "requirements.txt",
    }


def test_mlflow_gc_deletes_the_names_and_cas_gc_frees_them(
    root: Root, tmp_path: Path, tracking: str
) -> None:
    doomed, shared = tmp_path / "doomed.bin", tmp_path / "shared.txt"
    doomed.write_bytes(os.urandom(256 << 10))
    shared.write_text("kept by the other run")
    mlflow.set_experiment(experiment_id=experiment(root.location("gc")))
    with mlflow.start_run() as gone:
        mlflow.log_artifact(str(doomed))
        mlflow.log_artifact(str(shared))
    with mlflow.start_run() as kept:
        mlflow.log_artifact(str(shared))
    mlflow.delete_run(gone.info.run_id)

    done = CliRunner().invoke(
        mlflow_gc, ["--backend-store-uri", tracking, "--run-ids", gone.info.run_id]
    )
    assert done.exit_code == 0, done.output
    store = root.store()
    assert store.list_artifacts(f"gc/{gone.info.run_id}/") == []
    assert store.catalog.find_by_content(b3(doomed.read_bytes())) == []

    freed = root.cli("gc", "--grace", "0", "--retention", "0")["result"]
    assert freed["bytes_freed"] >= 256 << 10
    path = mlflow.artifacts.download_artifacts(run_id=kept.info.run_id, artifact_path="shared.txt")
    assert Path(path).read_text() == "kept by the other run"


def test_delete_artifacts_removes_one_file_or_a_folder(root: Root, tmp_path: Path) -> None:
    tree = make_tree(tmp_path / "tree")
    mlflow.set_experiment(experiment_id=experiment(root.location("del")))
    with mlflow.start_run() as run:
        mlflow.log_artifacts(str(tree), "data")
    repo = get_artifact_repository(run.info.artifact_uri)
    assert isinstance(repo, CasArtifactRepository)
    repo.delete_artifacts("data/train.csv")
    assert [f.path for f in repo.list_artifacts("data")] == ["data/nested"]
    repo.delete_artifacts("data/nested")
    assert repo.list_artifacts() == []
    assert root.store().list_artifacts(f"del/{run.info.run_id}/") == []


# -- the URI grammar ---------------------------------------------------------------------------


def test_a_cas_uri_names_a_prefix_and_a_root(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    uri = parse_cas_uri("cas://mlflow/fraud/123/artifacts?root=s3%3A%2F%2Fbucket%2Fp%3Fx")
    assert (uri.prefix, uri.root) == ("mlflow/fraud/123/artifacts", "s3://bucket/p?x")
    assert parse_cas_uri("cas://e?root=s3://b/p").root == "s3://b/p"
    monkeypatch.setenv("CAS_ROOT", "gs://models/cas")
    assert parse_cas_uri("cas://e").root == "gs://models/cas"
    monkeypatch.delenv("CAS_ROOT")
    monkeypatch.chdir(tmp_path)
    assert parse_cas_uri("cas:///e/x").root == str(tmp_path / ".cas")
    assert parse_cas_uri("cas:///e/x").prefix == "e/x"
    for bad, says in [
        ("cas://", "no name"),
        ("cas://e?rot=/x", "unknown parameter 'rot'"),
        ("cas://e?root=/a&root=/b", "root twice"),
        ("cas://e#x", "'#'"),
        ("s3://e", "not a cas URI"),
    ]:
        with pytest.raises(cas.CasError, match=says):
            parse_cas_uri(bad)
    repo = get_artifact_repository(f"cas://e?root={tmp_path / 'r'}")
    assert isinstance(repo, CasArtifactRepository)
    with pytest.raises(cas.CasError, match="leaves"):
        repo.name_of("../other-run/x")


@pytest.mark.parametrize(
    "path",
    [
        "a b.txt",
        ".env",
        "x.lock",
        "a..b",
        "c:d~e^f?g*h[i]\\j",
        "50%",
        "@{x}",
        "end.",
        "tab\tname",
        "é",
    ],
)
def test_a_file_name_git_refuses_is_encoded_into_a_valid_name_and_back(
    path: str, tmp_path: Path
) -> None:
    store = cas.open_store(tmp_path / "names")
    name = f"p/{encode_path('dir/' + path)}"
    assert store.exists(name) is False  # a refused name raises InvalidRefName instead
    assert [decode_component(c) for c in name.split("/")[1:]] == ["dir", path]


def test_import_cas_imports_neither_tool(tmp_path: Path) -> None:
    code = (
        "import sys, cas\n"
        "tools = lambda: sorted(m for m in sys.modules if m.split('.')[0] in ('flowyml', 'mlflow'))\n"
        "cas.open_store(sys.argv[1]).save({'a': 1}, 'x')\n"
        "print(tools())\n"
        "import cas.integrations.mlflow, cas.integrations.flowyml\n"
        "print(sorted({m.split('.')[0] for m in tools()}))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "store")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("\n")[:2] == ["[]", "['flowyml', 'mlflow']"]
