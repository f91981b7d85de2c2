"""One script on FlowyML's own catalog backend (SQLite) and on ``CasCatalogBackend``.

Every call of FlowyML's ``ArtifactCatalog`` (it has no delete) runs on both; the results
are compared field by field, ids and timestamps aside (parents are compared by the
label of the entry they name). The differences that remain are the ones
docs/integrations.md lists, each with its reason: ``DIFFERENCES`` is that list.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from flowyml.storage.catalog import ArtifactCatalog
from flowyml.storage.catalog.backend import CatalogEntry
from flowyml.storage.catalog.local_backend import LocalCatalogBackend

from cas.integrations.flowyml import CasCatalogBackend

# key -> (FlowyML's own catalog, cas); the reasons are in docs/integrations.md.
DIFFERENCES: dict[str, tuple[Any, Any]] = {
    # FlowyML filters tags after the limit; cas filters in its tag index before it
    "list tags, limit 1": ([], ["models/fraud_detector"]),
    # FlowyML matches substrings (SQL LIKE); cas matches whole words
    "search part of a word": (["models/fraud_detector", "fraud data"], []),
    # FlowyML matches the JSON text of the tags, keys included; cas matches tag values
    "search a tag key": (["models/fraud_detector", "fraud data"], []),
    # cas also matches the words of string metadata
    "search a metadata word": ([], ["models/fraud_detector"]),
    # cas's query language: key:value is a tag filter
    "search key:value": ([], ["models/fraud_detector"]),
    # cas answers every ancestor and descendant; FlowyML's one hop
    "lineage of the report": (
        {"parents": ["model"], "children": []},
        {"parents": ["model", "data"], "children": []},
    ),
    # cas keeps lineage to entries it holds; FlowyML stores any string
    "register with a parent it does not hold": ("registered", "raises ObjectNotFound"),
}


def script(catalog: ArtifactCatalog) -> dict[str, Any]:
    ids: dict[str, str] = {}
    ids["data"] = catalog.register(
        "fraud data",
        "Dataset",
        data={"rows": 10},
        source_pipeline="etl",
        tags={"team": "fraud"},
    )
    ids["model"] = catalog.register(
        "models/fraud_detector",
        "Model",
        source_step="train",
        source_run_id="r1",
        source_pipeline="fraud_training",
        parent_ids=[ids["data"]],
        tags={"team": "fraud"},
        metadata={"auc": 0.91, "note": "baseline", "layers": [3, 2]},
        version="v2",
    )
    ids["report"] = catalog.register("my report", "Report", parent_ids=[ids["model"]])
    ids["scratch"] = catalog.register("scratch: 50% done", "")
    catalog.tag(ids["model"], stage="production")
    label = {v: k for k, v in ids.items()}

    def entry(e: CatalogEntry | dict[str, Any] | None) -> dict[str, Any] | None:
        if e is None:
            return None
        d = dict(e.to_dict() if isinstance(e, CatalogEntry) else e)
        del d["artifact_id"], d["created_at"]
        d["parent_ids"] = [label.get(p, p) for p in d["parent_ids"]]
        return d

    def names(entries: list[CatalogEntry]) -> list[str]:
        return [e.name for e in entries]

    def lineage(aid: str) -> dict[str, Any]:
        got = catalog.get_lineage(aid)
        return {k: [label[d["artifact_id"]] for d in got[k]] for k in ("parents", "children")}

    out: dict[str, Any] = {f"get {k}": entry(catalog.get(v)) for k, v in ids.items()}
    out["get an unknown id"] = catalog.get("no-such-id")
    out["list"] = names(catalog.list())
    out["list, limit 2"] = names(catalog.list(limit=2))
    out["list by type"] = names(catalog.list(artifact_type="Model"))
    out["list by an empty type"] = names(catalog.list(artifact_type=""))
    out["list by pipeline"] = names(catalog.list(source_pipeline="etl"))
    out["list by step"] = names(catalog.list(source_step="train"))
    out["list by tags"] = names(catalog.list(tags={"team": "fraud"}))
    out["list by two tags"] = names(catalog.list(tags={"team": "fraud", "stage": "production"}))
    out["list tags, limit 1"] = names(catalog.list(tags={"stage": "production"}, limit=1))
    out["search a word"] = names(catalog.search("fraud"))
    out["search a word in capitals"] = names(catalog.search("FRAUD"))
    out["search a pipeline"] = names(catalog.search("training"))
    out["search a type"] = names(catalog.search("report"))
    out["search a tag value"] = names(catalog.search("production"))
    out["search a name with a space"] = names(catalog.search("my report"))
    out["search, limit 1"] = names(catalog.search("fraud", limit=1))
    out["search nothing found"] = names(catalog.search("resnet"))
    out["search part of a word"] = names(catalog.search("frau"))
    out["search a tag key"] = names(catalog.search("team"))
    out["search a metadata word"] = names(catalog.search("baseline"))
    out["search key:value"] = names(catalog.search("stage:production"))
    out["lineage of the model"] = lineage(ids["model"])
    out["lineage of the report"] = lineage(ids["report"])
    unknown = catalog.get_lineage("no-such-id")
    out["lineage of an unknown id"] = unknown
    data = catalog.get(ids["data"])
    assert data is not None
    out["find by hash"] = entry(catalog.find_by_hash(data.content_hash))
    out["find by an unknown hash"] = catalog.find_by_hash("0" * 64)
    try:
        catalog.tag("no-such-id", stage="x")
        out["tag an unknown id"] = "tagged"
    except ValueError:
        out["tag an unknown id"] = "raises ValueError"
    try:
        catalog.register("orphan", "Model", parent_ids=["no-such-id"])
        out["register with a parent it does not hold"] = "registered"
    except KeyError as exc:
        out["register with a parent it does not hold"] = f"raises {type(exc).__mro__[1].__name__}"
    return out


@pytest.fixture
def results(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[dict[str, Any], ...]:
    monkeypatch.chdir(tmp_path)
    own = script(ArtifactCatalog(backend=LocalCatalogBackend(str(tmp_path / "catalog.db"))))
    ours = script(ArtifactCatalog(backend=CasCatalogBackend(root=str(tmp_path / "store"))))
    return own, ours


def test_the_same_script_gives_the_same_results_but_the_listed_differences(
    results: tuple[dict[str, Any], dict[str, Any]],
) -> None:
    own, ours = results
    assert own.keys() == ours.keys()
    found = {k: (own[k], ours[k]) for k in own if own[k] != ours[k]}
    assert found == DIFFERENCES
