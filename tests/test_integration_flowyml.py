"""cas inside FlowyML: real pipelines on a stack holding the cas component, and FlowyML's
own ArtifactCatalog on CasCatalogBackend, against a local root and moto's S3 server.

FlowyML's executor swallows every exception of ``materialize``, so nothing here trusts
that a run passed: each test reads what landed in the cas store.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import blake3
import pandas as pd
import pytest
from flowyml import Context, Pipeline, step
from flowyml.core.executor import LocalExecutor
from flowyml.core.orchestrator import LocalOrchestrator
from flowyml.plugins import config as flowyml_plugin_config
from flowyml.plugins.stack_config import StackConfig, StackManager
from flowyml.stacks.base import Stack
from flowyml.stacks.components import ArtifactStore as FlowymlArtifactStore
from flowyml.stacks.plugins import ComponentRegistry
from flowyml.storage.catalog import ArtifactCatalog
from flowyml.storage.metadata import SQLiteMetadataStore

import cas
from cas.integrations.flowyml import Cas, CasArtifactStore, CasCatalogBackend
from cas.testing.servers import Server

# -- the pipeline: a dict, a DataFrame made from it, a report made from both ---------------


@step(outputs=["stats"])
def summarize(seed: str) -> dict[str, Any]:
    return {"rows": 3, "mean": 2.0, "seed": seed}


@step(inputs=["stats"], outputs=["table"])
def tabulate(stats: dict[str, Any]) -> pd.DataFrame:
    return pd.DataFrame({"x": [1, 2, 3], "seed": [stats["seed"]] * stats["rows"]})


@step(inputs=["stats", "table"], outputs=["report"])
def report(stats: dict[str, Any], table: pd.DataFrame) -> str:
    return f"{len(table)} rows, mean {stats['mean']}"


class Opaque:
    """A value cas stores only as a pickle, which a store refuses by default."""


@step(outputs=["opaque"])
def make_opaque() -> Opaque:
    return Opaque()


def expected_table(seed: str) -> pd.DataFrame:
    return pd.DataFrame({"x": [1, 2, 3], "seed": [seed] * 3})


@dataclass
class Root:
    url: str
    options: dict[str, Any]
    env: dict[str, str] = field(default_factory=dict)

    def store(self) -> cas.ArtifactStore:
        return cas.open_store(self.url, **self.options)

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
def root(request: pytest.FixtureRequest, tmp_path: Path) -> Root:
    if request.param == "local":
        return Root(str(tmp_path / "store"), {})
    server: Server = request.getfixturevalue("s3_server")
    return Root(server.url(server.new_bucket()), dict(server.storage_options), dict(server.env))


@pytest.fixture(autouse=True)
def _flowyml_in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """FlowyML writes .flowyml/ (its own catalog, runs, metadata) in the working folder."""
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)


def cas_stack(component: CasArtifactStore, tmp_path: Path) -> Stack:
    return Stack(
        name="cas",
        executor=LocalExecutor(),
        artifact_store=component,
        metadata_store=SQLiteMetadataStore(str(tmp_path / "metadata.db")),
        orchestrator=LocalOrchestrator(),
    )


def run_pipeline(stack: Stack, name: str, seed: str, *steps: Any) -> str:
    pipeline = Pipeline(
        name,
        context=Context(seed=seed),
        stack=stack,
        enable_cache=False,
        enable_checkpointing=False,
        enable_experiment_tracking=False,
    )
    for each in steps or (summarize, tabulate, report):
        pipeline.add_step(each)
    result = pipeline.run(auto_start_ui=False)
    return str(result.run_id)


def outputs(pipeline: str, run_id: str) -> dict[str, str]:
    base = f"runs/{pipeline}/{run_id}"
    return {s: f"{base}/{s}/output" for s in ("summarize", "tabulate", "report")}


# -- the component -------------------------------------------------------------------------


def test_the_entry_point_files_the_component_as_an_artifact_store_named_cas() -> None:
    registry = ComponentRegistry()
    assert registry.get_artifact_store("cas") is Cas
    assert issubclass(Cas, FlowymlArtifactStore)
    assert "cas" in registry.list_artifact_stores()


def test_a_pipeline_run_stores_every_output_in_cas_with_lineage(root: Root, tmp_path: Path) -> None:
    component = CasArtifactStore(name="cas", root=root.url, **root.options)
    seed = uuid.uuid4().hex
    run_id = run_pipeline(cas_stack(component, tmp_path), "fraud", seed)
    names = outputs("fraud", run_id)

    store = root.store()
    assert store.list_artifacts(f"runs/fraud/{run_id}/") == sorted(names.values())
    stats = {"rows": 3, "mean": 2.0, "seed": seed}
    for load in (store.load, component.load):
        assert load(names["summarize"]) == stats
        pd.testing.assert_frame_equal(load(names["tabulate"]), expected_table(seed))
        assert load(names["report"]) == "3 rows, mean 2.0"
    assert component.load("cas://" + names["summarize"]) == stats
    assert component.exists(names["tabulate"]) and not component.exists(names["tabulate"] + "x")
    assert component.list_artifacts(f"runs/fraud/{run_id}/t") == [names["tabulate"]]

    meta = {step: store.get_metadata(name) for step, name in names.items()}
    for step_name, m in meta.items():
        assert (m["source_run_id"], m["source_step"], m["source_pipeline"]) == (
            run_id,
            step_name,
            "fraud",
        )
        with store.open(m["id"]) as f:
            assert blake3.blake3(f.read()).hexdigest() == m["content_id"]
    assert meta["summarize"]["parent_ids"] == []
    assert meta["tabulate"]["parent_ids"] == [meta["summarize"]["id"]]
    assert sorted(meta["report"]["parent_ids"]) == sorted(
        [meta["summarize"]["id"], meta["tabulate"]["id"]]
    )
    assert meta["tabulate"]["type"] == "dataframe"
    assert component.get_metadata(names["report"]) == meta["report"]
    assert component.size(names["tabulate"]) == meta["tabulate"]["size"] > 0
    assert component.get_metadata("runs/none") is None and component.size("runs/none") == 0

    down = store.catalog.get_lineage(meta["summarize"]["id"], depth=None)["children"]
    assert {a.id for a in down} == {meta["tabulate"]["id"], meta["report"]["id"]}


def test_two_runs_share_the_content_and_each_keeps_its_names(root: Root, tmp_path: Path) -> None:
    stack = cas_stack(CasArtifactStore(root=root.url, **root.options), tmp_path)
    seed = uuid.uuid4().hex
    first, second = (run_pipeline(stack, "dedup", seed) for _ in range(2))
    store = root.store()
    a, b = outputs("dedup", first), outputs("dedup", second)
    for step_name in a:
        one, two = store.get_metadata(a[step_name]), store.get_metadata(b[step_name])
        assert one["id"] != two["id"]
        assert one["content_id"] == two["content_id"]
    found = store.catalog.find_by_content(store.get_metadata(a["tabulate"])["content_id"])
    assert {x.name for x in found} == {a["tabulate"], b["tabulate"]}


def test_a_stack_from_flowyml_config_with_type_cas_runs_on_cas(tmp_path: Path) -> None:
    url = str(tmp_path / "yaml-store")
    stack = StackConfig.from_dict(
        "cas-yaml", {"artifact_store": {"type": "cas", "root": url}}
    ).to_stack()
    assert isinstance(stack.artifact_store, Cas)
    assert stack.artifact_store.to_dict() == {"name": "cas", "type": "cas", "root": url}
    run_id = run_pipeline(stack, "yaml", "s")
    assert cas.open_store(url).load(outputs("yaml", run_id)["summarize"])["seed"] == "s"


def test_a_flowyml_yaml_stack_with_type_cas_runs_a_pipeline_on_cas(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The lines docs/integrations.md gives, in a real flowyml.yaml that FlowyML finds in
    the working folder: a pipeline given no stack runs on cas."""
    url = str(tmp_path / "yaml-file-store")
    (tmp_path / "flowyml.yaml").write_text(
        f"stacks:\n  cas:\n    artifact_store: {{ type: cas, root: {json.dumps(url)} }}\n"
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(flowyml_plugin_config, "_config", None)  # read the file anew
    monkeypatch.setattr(StackManager, "_instance", None)
    pipeline = Pipeline("yamlfile", context=Context(seed="y"), enable_cache=False,
                        enable_checkpointing=False, enable_experiment_tracking=False)  # fmt: skip
    for each in (summarize, tabulate, report):
        pipeline.add_step(each)
    run_id = str(pipeline.run(auto_start_ui=False).run_id)
    assert cas.open_store(url).load(outputs("yamlfile", run_id)["summarize"])["seed"] == "y"


def test_a_top_level_artifact_store_line_is_named_when_flowyml_is_imported(
    tmp_path: Path,
) -> None:
    """FlowyML reads no top-level ``artifact_store:``; a user who writes one with
    ``type: cas`` is told so the moment FlowyML is imported (FlowyML loads cas's
    component then), from a folder below the file as well, and the stack form is quiet."""
    store = tmp_path / "store"
    (tmp_path / "flowyml.yaml").write_text(
        f"artifact_store: {{ type: cas, root: {json.dumps(str(store))} }}\n"
    )
    (tmp_path / "project").mkdir()
    for folder in (tmp_path, tmp_path / "project"):
        out = subprocess.run([sys.executable, "-c", "import flowyml"], cwd=folder,
                             capture_output=True, text=True, check=True)  # fmt: skip
        assert "does not read" in out.stderr and "stacks:" in out.stderr, out.stderr
        assert str(tmp_path / "flowyml.yaml") in out.stderr
    (tmp_path / "flowyml.yaml").write_text(
        f"stacks:\n  cas:\n    artifact_store: {{ type: cas, root: {json.dumps(str(store))} }}\n"
    )
    out = subprocess.run([sys.executable, "-c", "import flowyml"], cwd=tmp_path,
                         capture_output=True, text=True, check=True)  # fmt: skip
    assert "does not read" not in out.stderr, out.stderr


def test_an_output_cas_cannot_store_is_logged_and_not_stored(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    url = str(tmp_path / "store")
    stack = cas_stack(CasArtifactStore(root=url), tmp_path)
    with caplog.at_level(logging.WARNING, logger="cas.integrations.flowyml"):
        run_id = run_pipeline(stack, "opaque", "s", make_opaque)
    name = f"runs/opaque/{run_id}/make_opaque/output"
    assert not cas.open_store(url).exists(name)
    assert any(name in r.getMessage() and "pickle" in r.getMessage() for r in caplog.records)


def test_pickle_is_stored_when_the_component_allows_it(tmp_path: Path) -> None:
    url = str(tmp_path / "store")
    stack = cas_stack(CasArtifactStore(root=url, allow_pickle=True), tmp_path)
    run_id = run_pipeline(stack, "pickled", "s", make_opaque)
    value = cas.open_store(url, allow_pickle=True).load(f"runs/pickled/{run_id}/make_opaque/output")
    assert isinstance(value, Opaque)


def test_save_load_delete_and_gc_frees_a_run(root: Root, tmp_path: Path) -> None:
    component = CasArtifactStore(root=root.url, **root.options)
    assert component.validate()
    assert component.save({"k": [1, 2]}, "models/cfg", metadata={"auc": 0.9}) == "models/cfg"
    assert component.load("models/cfg") == {"k": [1, 2]}
    assert component.get_metadata("models/cfg")["metadata"] == {"auc": 0.9}

    run_id = run_pipeline(cas_stack(component, tmp_path), "doomed", uuid.uuid4().hex)
    names = outputs("doomed", run_id)
    store = root.store()
    table_content = store.get_metadata(names["tabulate"])["content_id"]
    for name in names.values():
        component.delete(name)
    assert store.list_artifacts(f"runs/doomed/{run_id}/") == []
    assert store.catalog.find_by_content(table_content) == []

    freed = root.cli("gc", "--grace", "0", "--retention", "0")["result"]
    assert freed["deleted"] >= 3 and freed["bytes_freed"] > 0
    assert component.load("models/cfg") == {"k": [1, 2]}


# -- FlowyML's ArtifactCatalog on cas ---------------------------------------------------------


def test_flowyml_catalog_registers_tags_searches_and_traces_lineage_in_cas(root: Root) -> None:
    backend = CasCatalogBackend(root=root.url, **root.options)
    catalog = ArtifactCatalog(backend=backend)
    data_id = catalog.register(
        "datasets/fraud",
        "Dataset",
        data={"rows": 10},
        source_pipeline="etl",
        tags={"team": "fraud"},
    )
    model_id = catalog.register(
        "models/fraud_detector",
        "Model",
        source_step="train",
        source_run_id="r1",
        source_pipeline="train",
        parent_ids=[data_id],
        tags={"team": "fraud"},
        metadata={"auc": 0.91},
        version="v2",
    )
    catalog.tag(model_id, stage="production")

    store = root.store()
    record = store.catalog.get(model_id)
    assert record is not None and record.name == "models/fraud_detector"
    assert record.tags == {"team": "fraud", "stage": "production"}
    assert record.parent_ids == [data_id] and record.source_run_id == "r1"
    assert store.list_artifacts("models/") == ["models/fraud_detector"]

    entry = catalog.get(model_id)
    assert entry is not None
    assert (entry.name, entry.artifact_type, entry.version) == (
        "models/fraud_detector",
        "Model",
        "v2",
    )
    assert entry.metadata == {"auc": 0.91} and entry.parent_ids == [data_id]
    assert entry.created_at == record.created_at and entry.source_step == "train"
    assert catalog.get("0" * 64) is None and catalog.get("no-such-id") is None

    assert [e.artifact_id for e in catalog.search("stage:production fraud")] == [model_id]
    assert [e.artifact_id for e in catalog.search("detector")] == [model_id]
    assert [e.artifact_id for e in catalog.list(tags={"stage": "production"})] == [model_id]
    assert [e.artifact_id for e in catalog.list(artifact_type="Dataset")] == [data_id]
    assert [e.artifact_id for e in catalog.list(source_pipeline="etl", limit=1)] == [data_id]
    assert {e.artifact_id for e in catalog.list(tags={"team": "fraud"})} == {data_id, model_id}

    lineage = catalog.get_lineage(data_id)
    assert lineage["artifact"]["artifact_id"] == data_id
    assert [c["artifact_id"] for c in lineage["children"]] == [model_id]
    assert [p["artifact_id"] for p in catalog.get_lineage(model_id)["parents"]] == [data_id]
    assert catalog.get_lineage("f" * 64) == {"artifact_id": "f" * 64, "error": "not found"}

    # FlowyML hashed the data itself (SHA-256 of its JSON): that hash finds the entry too.
    data_entry = catalog.get(data_id)
    assert data_entry is not None and len(data_entry.content_hash) == 64
    found = catalog.find_by_hash(data_entry.content_hash)
    assert found is not None and found.artifact_id == data_id
    with pytest.raises(cas.ObjectNotFound):
        catalog.tag("e" * 64, stage="x")


def test_flowyml_catalog_sees_pipeline_outputs_and_finds_them_by_content(
    root: Root, tmp_path: Path
) -> None:
    component = CasArtifactStore(root=root.url, **root.options)
    run_id = run_pipeline(cas_stack(component, tmp_path), "seen", uuid.uuid4().hex)
    names = outputs("seen", run_id)
    store = root.store()
    table = store.get_metadata(names["tabulate"])

    catalog = ArtifactCatalog(backend=CasCatalogBackend(root=root.url, **root.options))
    listed = catalog.list(source_pipeline="seen", source_step="tabulate")
    assert [(e.artifact_id, e.name, e.source_run_id) for e in listed] == [
        (table["id"], names["tabulate"], run_id)
    ]
    entry = listed[0]
    assert entry.content_hash == table["content_id"] and entry.uri == f"cas://{table['id']}"
    assert entry.parent_ids == [store.get_metadata(names["summarize"])["id"]]
    found = catalog.find_by_hash(table["content_id"])
    assert found is not None and found.name == names["tabulate"]
    lineage = catalog.get_lineage(entry.artifact_id)
    assert {c["name"] for c in lineage["children"]} == {names["report"]}

    # an entry that points at a cas artifact takes its content id as its hash
    evaluated = catalog.register(
        "evals/seen", "Metrics", uri=names["tabulate"], parent_ids=[table["id"]]
    )
    got = catalog.get(evaluated)
    assert got is not None and got.content_hash == table["content_id"]
    assert got.uri == names["tabulate"]


# Names FlowyML's own SQLite catalog accepts and git's ref rules refuse, or that hold '%'.
ODD_NAMES = [
    "my model",
    "fraud: v2?",
    "50% off",
    "a..b",
    ".hidden/x.lock",
    "/lead//trail/",
    "@",
    "",
]


def test_flowyml_catalog_takes_any_name_flowyml_takes_and_gives_it_back(tmp_path: Path) -> None:
    from flowyml.storage.catalog.local_backend import LocalCatalogBackend

    own = ArtifactCatalog(backend=LocalCatalogBackend(str(tmp_path / "flowyml.db")))
    catalog = ArtifactCatalog(backend=CasCatalogBackend(root=str(tmp_path / "store")))
    ids = {}
    for name in ODD_NAMES:
        own.register(name, "Model")
        ids[name] = catalog.register(name, "Model")
    for name, aid in ids.items():
        entry = catalog.get(aid)
        assert entry is not None and entry.name == name
    assert [e.name for e in catalog.list()] == [e.name for e in own.list()] == ODD_NAMES[::-1]
    assert [e.name for e in catalog.search("my")] == [e.name for e in own.search("my")]

    # in cas the name is percent-encoded where git's rules refuse it
    store = cas.open_store(str(tmp_path / "store"))
    assert store.get_metadata(ids["my model"])["name"] == "my%20model"
    assert "50%25%20off" in store.list_artifacts()


def test_flowyml_catalog_search_finds_an_entry_by_its_pipeline(tmp_path: Path) -> None:
    from flowyml.storage.catalog.local_backend import LocalCatalogBackend

    own = ArtifactCatalog(backend=LocalCatalogBackend(str(tmp_path / "flowyml.db")))
    catalog = ArtifactCatalog(backend=CasCatalogBackend(root=str(tmp_path / "store")))
    for each in (own, catalog):
        each.register("model", "Model", source_pipeline="fraud_detection")
        each.register("other", "Model", source_pipeline="etl")
    assert [e.name for e in catalog.search("fraud")] == ["model"]
    assert [e.name for e in own.search("fraud")] == ["model"]
    assert catalog.search("fraud")[0].metadata == {}


def test_a_run_whose_steps_come_from_flowyml_cache_names_their_outputs(tmp_path: Path) -> None:
    component = CasArtifactStore(root=str(tmp_path / "store"))
    stack = cas_stack(component, tmp_path)
    runs = []
    for _ in range(2):
        pipeline = Pipeline(
            "cached",
            context=Context(seed="s"),
            stack=stack,
            enable_checkpointing=False,
            enable_experiment_tracking=False,
        )  # FlowyML's default cache
        for each in (summarize, tabulate, report):
            pipeline.add_step(each)
        result = pipeline.run(auto_start_ui=False)
        assert all(r.cached for r in result.step_results.values()) == bool(runs)
        runs.append(str(result.run_id))
    store = component.store
    first, second = (outputs("cached", r) for r in runs)
    for step_name, name in second.items():
        meta = store.get_metadata(name)
        assert meta["content_id"] == store.get_metadata(first[step_name])["content_id"]
        assert meta["source_run_id"] == runs[1]
    assert store.load(second["report"]) == "3 rows, mean 2.0"
    parents = store.get_metadata(second["tabulate"])["parent_ids"]
    assert parents == [store.get_metadata(second["summarize"])["id"]]
