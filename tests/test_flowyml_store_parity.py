"""One script on FlowyML's own ``LocalArtifactStore`` and on ``CasArtifactStore``.

Every call of FlowyML's artifact-store API (save of a dict, bytes, a str, a DataFrame,
a nested path; load; exists; list_artifacts with and without a prefix; get_metadata;
size; delete; materialize; the missing-path errors) runs on both stores; the results
are compared observation by observation, the store's root and the date aside. The
differences that remain are the ones docs/integrations.md lists, each with its reason:
``DIFFERENCES`` is that list.
"""

from __future__ import annotations

import datetime
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from flowyml.storage.artifacts import LocalArtifactStore

from cas.integrations.flowyml import CasArtifactStore

# key -> (FlowyML's own store, cas); the reasons are in docs/integrations.md.
_RECORD = {"type": "json", "artifact_type": "json", "materializer": "json", "tags": {},
           "parent_ids": [], "source_project": None, "source_pipeline": None,
           "source_run_id": None, "source_step": None}  # fmt: skip
DIFFERENCES: dict[str, tuple[Any, Any]] = {
    # cas answers the artifact's record, the caller's metadata under "metadata"
    "get_metadata without metadata": (
        None,
        {"name": "params.json", "size": 25, "metadata": {}, **_RECORD},
    ),
    "get_metadata with metadata": (
        {"owner": "ml"},
        {"name": "with_meta", "size": 5, "metadata": {"owner": "ml"}, **_RECORD},
    ),
    # a prefix is a prefix of names in cas; FlowyML's lists the files below a folder
    "list models/fraud/v1/model": ([], ["models/fraud/v1/model"]),
    # cas names a step output runs/<pipeline>/<run_id>/<step>/<name>, one artifact
    "materialize": ("fraud/<date>/r1/data/train/output", "runs/fraud/r1/train/output"),
    "list after materialize": (
        [
            "frame",
            "fraud/<date>/r1/data/train/output/data.pkl",
            "fraud/<date>/r1/data/train/output/metadata.json",
            "note.txt",
            "params.json",
            "with_meta",
        ],
        ["frame", "note.txt", "params.json", "runs/fraud/r1/train/output", "with_meta"],
    ),  # fmt: skip
}

FRAME = pd.DataFrame({"a": [1, 2], "b": ["x", "y"]})
VALUES: dict[str, Any] = {
    "params.json": {"lr": 0.1, "layers": [3, 2]},
    "blob": b"\x00\x01weights",
    "note.txt": "hello",
    "frame": FRAME,
    "models/fraud/v1/model": {"auc": 0.91},
}


def _outcome(call: Any) -> Any:
    """The value a call returns, or ``raises <the builtin it is>``: the ``OSError`` if
    it is one (what FlowyML's local store raises), else its first builtin class."""
    try:
        return call()
    except Exception as exc:  # noqa: BLE001 - the outcome is what is compared
        builtins = [c for c in type(exc).__mro__ if c.__module__ == "builtins"]
        oserrors = [c for c in builtins if issubclass(c, OSError)]
        return f"raises {(oserrors or builtins)[0].__name__}"


def _record(meta: Any) -> Any:
    """A cas record without what changes from run to run (ids, time)."""
    if isinstance(meta, dict) and "content_id" in meta:
        return {k: v for k, v in meta.items() if k not in ("id", "content_id", "created_at")}
    return meta


def script(store: Any, root: str) -> dict[str, Any]:
    today = datetime.datetime.now().strftime("%Y-%m-%d")

    def rel(path: Any) -> Any:
        text = str(path)
        return text.removeprefix(root + "/").replace(today, "<date>")

    def same(got: Any, want: Any) -> bool:
        if isinstance(want, pd.DataFrame):
            return isinstance(got, pd.DataFrame) and got.equals(want)
        return bool(got == want) and type(got) is type(want)

    out: dict[str, Any] = {}
    for path, value in VALUES.items():
        out[f"save {path}"] = rel(store.save(value, path))
    out["save with metadata"] = rel(store.save([1, 2], "with_meta", metadata={"owner": "ml"}))
    for path, value in VALUES.items():
        out[f"load {path} is what was saved"] = _outcome(
            lambda p=path, v=value: same(store.load(p), v)
        )
        out[f"exists {path}"] = store.exists(path)
        out[f"size {path} > 0"] = store.size(path) > 0
    out["get_metadata without metadata"] = _record(store.get_metadata("params.json"))
    out["get_metadata with metadata"] = _record(store.get_metadata("with_meta"))
    out["save again, then load"] = _outcome(
        lambda: (store.save("second", "note.txt"), store.load("note.txt"))[1]
    )
    out["list"] = store.list_artifacts()
    out["list models/"] = store.list_artifacts("models/")
    out["list models"] = store.list_artifacts("models")
    out["list models/fraud/v1/model"] = store.list_artifacts("models/fraud/v1/model")
    out["list a missing prefix"] = store.list_artifacts("nothing/")
    out["exists a folder"] = store.exists("models")
    out["exists missing"] = store.exists("missing")
    out["load missing"] = _outcome(lambda: store.load("missing"))
    out["load a folder"] = _outcome(lambda: store.load("models"))
    out["size missing"] = _outcome(lambda: store.size("missing"))
    out["get_metadata missing"] = _outcome(lambda: store.get_metadata("missing"))
    out["delete missing"] = _outcome(lambda: store.delete("missing"))
    out["delete blob"] = _outcome(lambda: store.delete("blob"))
    out["exists blob after delete"] = store.exists("blob")
    out["load blob after delete"] = _outcome(lambda: store.load("blob"))
    out["delete a folder"] = _outcome(lambda: store.delete("models"))
    out["list after deletes"] = store.list_artifacts()
    out["materialize"] = _outcome(
        lambda: rel(store.materialize({"x": 1}, "output", "r1", "train", "fraud"))
    )
    out["list after materialize"] = [rel(p) for p in store.list_artifacts()]
    return out


@pytest.fixture
def results(tmp_path: Path) -> tuple[dict[str, Any], ...]:
    own_root, cas_root = tmp_path / "local", tmp_path / "cas"
    own = script(LocalArtifactStore(str(own_root)), str(own_root))
    ours = script(CasArtifactStore(root=str(cas_root), allow_pickle=True), str(cas_root))
    return own, ours


def test_the_same_script_gives_the_same_results_but_the_listed_differences(
    results: tuple[dict[str, Any], dict[str, Any]],
) -> None:
    own, ours = results
    assert own.keys() == ours.keys()
    found = {k: (own[k], ours[k]) for k in own if own[k] != ours[k]}
    assert found == DIFFERENCES
