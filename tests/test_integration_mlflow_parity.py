"""MLflow's local artifact repository and cas's, driven by one script: every listing
(path, ``is_dir``, ``file_size``), download layout and refusal must be the same."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from mlflow.exceptions import MlflowException
from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository
from mlflow.store.artifact.local_artifact_repo import LocalArtifactRepository

from cas.errors import CasError
from cas.integrations.mlflow import CasArtifactRepository

LISTED = (None, "", ".", "folder", "folder/", "folder/nested", "folder/emptydir",
          "folder/nested/inner_empty", "only_empty", "model.txt", "missing", "copies",
          "/folder", "/", "../x", "folder/../..", "folder/../copies")  # fmt: skip
DOWNLOADED = ("model.txt", "folder", "folder/emptydir", "folder/nested/deep.txt", "",
              "only_empty", "copies/", "missing", "/folder", "../x", "folder/../../x")  # fmt: skip


def _source(base: Path) -> Path:
    tree = base / "tree"
    (tree / "nested" / "inner_empty").mkdir(parents=True)
    (tree / "emptydir").mkdir()
    (tree / "train.csv").write_text("a,b\n1,2\n")
    (tree / "nested" / "deep.txt").write_text("deep")
    (base / "empty").mkdir()
    (base / "model.txt").write_text("weights")
    return base


def _layout(got: str, dst: Path) -> Any:
    """Where a download landed (relative to ``dst``) and every file and folder there."""
    path = Path(got)
    if not path.exists():
        return ("absent", path.relative_to(dst).as_posix())
    if path.is_file():
        return ("file", path.relative_to(dst).as_posix(), path.read_bytes())
    return ("dir", path.relative_to(dst).as_posix(), sorted(
        (p.relative_to(path).as_posix(), p.read_bytes() if p.is_file() else None)
        for p in path.rglob("*")
    ))  # fmt: skip


def _outcome(call: Callable[[], Any]) -> Any:
    try:
        return call()
    except MlflowException as exc:
        return ("MlflowException", exc.error_code)
    except (CasError, OSError, ValueError, KeyError) as exc:  # a difference, reported
        return ("raised", type(exc).__name__)


def run_script(repo: Any, src: Path, dst: Path) -> dict[str, Any]:
    repo.log_artifact(str(src / "model.txt"))
    repo.log_artifact(str(src / "model.txt"), "copies")
    repo.log_artifacts(str(src / "tree"), "folder")
    repo.log_artifacts(str(src / "empty"), "only_empty")
    out: dict[str, Any] = {}
    for path in LISTED:
        out[f"list {path!r}"] = _outcome(
            lambda p=path: [(f.path, f.is_dir, f.file_size) for f in repo.list_artifacts(p)]
        )
    for i, path in enumerate(DOWNLOADED):
        into = dst / str(i)
        into.mkdir(parents=True)
        out[f"download {path!r}"] = _outcome(
            lambda p=path, d=into: _layout(repo.download_artifacts(p, str(d)), d)
        )
    return out


@pytest.mark.parametrize("call", ["list", "download"])
def test_the_same_script_gives_the_same_results(tmp_path: Path, call: str) -> None:
    src = _source(tmp_path / "src")
    local = get_artifact_repository((tmp_path / "plain" / "artifacts").as_uri())
    assert isinstance(local, LocalArtifactRepository)
    root = quote(str(tmp_path / "store"), safe="")
    ours = get_artifact_repository(f"cas://mlflow/e1/{'0' * 32}/artifacts?root={root}")
    assert isinstance(ours, CasArtifactRepository)
    expected = run_script(local, src, tmp_path / "dl-local")
    got = run_script(ours, src, tmp_path / "dl-cas")
    diffs = {
        k: (expected[k], got[k]) for k in expected if k.startswith(call) and expected[k] != got[k]
    }
    assert not diffs, "\n".join(
        f"{k}:\n  local {v[0]!r}\n  cas   {v[1]!r}" for k, v in diffs.items()
    )
