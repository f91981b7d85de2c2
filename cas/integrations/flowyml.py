"""FlowyML on cas: an artifact store component for stacks, and a catalog backend.

Put the component in a stack and every step output of a pipeline run is saved in cas
as ``runs/<pipeline>/<run_id>/<step>/output``, with the outputs of the steps it consumed
(FlowyML's DAG says which) as its lineage parents::

    from cas.integrations.flowyml import CasArtifactStore
    stack = Stack(name="cas", executor=LocalExecutor(), orchestrator=LocalOrchestrator(),
                  artifact_store=CasArtifactStore(root="s3://bucket/cas"),
                  metadata_store=SQLiteMetadataStore())

or, in ``flowyml.yaml``, a stack ``stacks: {<name>: {artifact_store: {type: cas, root:
"s3://bucket/cas"}}}`` (FlowyML reads no top-level ``artifact_store:``): the entry point
``cas`` of ``flowyml.stack_components`` files the class :class:`Cas` under that name. :class:`CasCatalogBackend` puts FlowyML's ``ArtifactCatalog`` on the same
store.

FlowyML's executor swallows every exception of ``materialize``, so a value cas cannot
store (a pickle without ``allow_pickle=True``, a name git's rules refuse) is also logged
as a warning on the ``cas.integrations.flowyml`` logger before it is raised.

Importing this module imports FlowyML; ``import cas`` does not.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Mapping
from typing import Any

from flowyml.core.hooks import get_global_hooks
from flowyml.stacks.components import ArtifactStore as _FlowymlArtifactStore

import cas
from cas.integrations._common import open_store, resolve_root
from cas.integrations.flowyml_catalog import CasCatalogBackend, EntryNotFound

__all__ = [
    "ArtifactNotFound",
    "Cas",
    "CasArtifactStore",
    "CasCatalogBackend",
    "EntryNotFound",
    "NoLocalCopy",
    "RUNS_PREFIX",
    "output_name",
]

RUNS_PREFIX = "runs"
CAS_URL_PREFIX = "cas://"
logger = logging.getLogger(__name__)

# pipeline name -> step name -> the steps whose outputs it consumes (FlowyML's DAG).
_dependencies: dict[str, dict[str, tuple[str, ...]]] = {}
_hook_lock = threading.Lock()
_hook_installed = False


class NoLocalCopy(cas.CasError, AttributeError):
    """A FlowyML caller asked the cas component for a local folder it does not have."""


class ArtifactNotFound(cas.ObjectNotFound, FileNotFoundError):
    """No artifact at a path: a ``cas.ObjectNotFound``, and the ``FileNotFoundError``
    FlowyML's own local store raises."""


def output_name(project: str, run_id: str, step: str, name: str) -> str:
    """``runs/<project>/<run_id>/<step>/<name>``: where a step output is saved."""
    return f"{RUNS_PREFIX}/{project}/{run_id}/{step}/{name}"


def _remember_pipeline(pipeline: Any) -> None:
    """A pipeline-start hook: note which steps feed which, from the pipeline's DAG."""
    dag = getattr(pipeline, "dag", None)
    nodes = getattr(dag, "nodes", None)
    if dag is None or not isinstance(nodes, Mapping):
        return
    _dependencies[str(pipeline.name)] = {
        str(step): tuple(sorted(dag.get_dependencies(step))) for step in nodes
    }


def _store_cached_outputs(pipeline: Any, result: Any) -> None:
    """A pipeline-end hook: name the outputs of the steps FlowyML's cache answered.

    FlowyML skips ``materialize`` for a cached step, yet the run did produce that output
    (its orchestrator hands it to the next steps and copies it under the run). So the
    run's name points at it too: the same content, one more record, in step order so
    that a cached step's parents are already named."""
    component = getattr(getattr(pipeline, "stack", None), "artifact_store", None)
    if not isinstance(component, CasArtifactStore):
        return
    from flowyml.assets.base import Asset

    for step_result in list(result.step_results.values()):
        output = step_result.output
        if not step_result.cached or output is None:
            continue
        if isinstance(output, Asset) and not getattr(output, "upload", False):
            continue  # as FlowyML's executor: an Asset is stored only with upload=True
        with contextlib.suppress(cas.CasError, OSError, TypeError, ValueError):
            # materialize has logged why; the other outputs are still named
            component.materialize(
                output, "output", str(result.run_id), step_result.step_name, str(pipeline.name)
            )


def _install_hook() -> None:
    global _hook_installed
    with _hook_lock:
        if not _hook_installed:
            hooks = get_global_hooks()
            hooks.register_pipeline_start_hook(_remember_pipeline)
            hooks.register_pipeline_end_hook(_store_cached_outputs)
            _hook_installed = True


class CasArtifactStore(_FlowymlArtifactStore):  # type: ignore[misc]
    """A FlowyML artifact store component over a cas store.

    ``CasArtifactStore(name="cas", root=URL, **storage_options)``: ``root`` is any cas
    root (a folder, ``s3://bucket/prefix``, ...; default ``$CAS_ROOT``, then ``./.cas``);
    ``storage_options`` go to :func:`cas.open_store` (fsspec options, ``allow_pickle``).
    Paths are cas names or ids; ``cas://<name>`` is accepted too.
    """

    def __init__(self, name: str = "cas", root: str | None = None, **storage_options: Any) -> None:
        super().__init__(name)
        self.root = resolve_root(root)
        self._options = dict(storage_options)
        self._store: cas.ArtifactStore | None = None
        self._lock = threading.Lock()
        _install_hook()

    @property
    def store(self) -> cas.ArtifactStore:
        """The cas store, opened on first use."""
        if self._store is None:
            with self._lock:
                if self._store is None:
                    self._store = open_store(self.root, self._options)
        return self._store

    @property
    def base_path(self) -> str:
        """Refused: FlowyML's orchestrator writes a second, local copy of each output under
        an artifact store's ``base_path``; with cas the output is already in the store."""
        raise NoLocalCopy(
            "the cas artifact store has no local base_path: each step output is in cas as "
            f"{output_name('<pipeline>', '<run_id>', '<step>', 'output')}, so FlowyML's "
            "second, local copy is skipped"
        )

    # -- FlowyML's StackComponent ---------------------------------------------------------

    def validate(self) -> bool:
        """True if the root is reachable and a cas store (or empty); writes nothing."""
        return self.store.validate()

    def to_dict(self) -> dict[str, Any]:
        """The component's configuration; storage options are left out (they may hold
        credentials)."""
        return {"name": self.name, "type": "cas", "root": self.root}

    # -- FlowyML's ArtifactStore ----------------------------------------------------------

    def save(self, artifact: Any, path: str, metadata: dict[str, Any] | None = None) -> str:
        """Save ``artifact`` under the name ``path``; return the name."""
        self.store.save(artifact, _name(path), metadata)
        return _name(path)

    def load(self, path: str) -> Any:
        """The value saved at ``path``; ``IsAFolder`` if ``path`` only holds other
        names, ``ArtifactNotFound`` if nothing is there (as FlowyML's local store)."""
        name = _name(path)
        try:
            return self.store.load(name)
        except cas.ObjectNotFound as exc:
            if self._under(name):
                raise cas.IsAFolder(name, f"{name} is a folder of artifacts") from exc
            raise ArtifactNotFound(name, str(exc)) from exc

    def exists(self, path: str) -> bool:
        """True if ``path`` names an artifact or a folder of them."""
        name = _name(path)
        return self.store.exists(name) or bool(self._under(name))

    def delete(self, path: str) -> None:
        """Delete a name, or every name under a folder; nothing if there is none (as
        FlowyML's local store). The content stays until ``cas gc`` finds it unreachable."""
        name = _name(path)
        for each in [name] if self.store.exists(name) else self._under(name):
            self.store.delete(each)

    def _under(self, name: str) -> list[str]:
        return self.store.list_artifacts(name.rstrip("/") + "/") if name.strip("/") else []

    def list_artifacts(self, prefix: str = "") -> list[str]:
        return self.store.list_artifacts(prefix)

    def get_metadata(self, path: str) -> dict[str, Any] | None:
        """The artifact's metadata as :meth:`cas.ArtifactStore.get_metadata` gives it,
        or None if there is no such artifact (as FlowyML's local store answers)."""
        try:
            return self.store.get_metadata(_name(path))
        except cas.ObjectNotFound:
            return None

    def size(self, path: str) -> int:
        """Bytes of the serialized content; 0 if there is no such artifact."""
        try:
            return self.store.size(_name(path))
        except cas.ObjectNotFound:
            return 0

    def materialize(
        self,
        obj: Any,
        name: str,
        run_id: str,
        step_name: str,
        project_name: str = "default",
    ) -> str:
        """Save a step output as ``runs/<project>/<run_id>/<step>/<name>`` with the
        outputs of the steps it consumed, in this run, as parents; return the name."""
        full = output_name(project_name, run_id, step_name, name)
        try:
            data, extra = _unwrap(obj)
            parents = self._parents(project_name, run_id, step_name)
            self.store.save(
                data,
                full,
                extra.get("metadata"),
                parents,
                artifact_type=extra.get("artifact_type"),
                tags=extra.get("tags"),
                source_project=project_name,
                source_pipeline=project_name,
                source_run_id=run_id,
                source_step=step_name,
            )
        except (cas.CasError, OSError, TypeError, ValueError) as exc:
            # FlowyML discards this exception: say it where someone can read it.
            logger.warning("cas: output %s of step %r was not stored: %s", full, step_name, exc)
            raise
        return full

    def _parents(self, project: str, run_id: str, step: str) -> list[str]:
        producers = _dependencies.get(project, {}).get(step, ())
        ids: list[str] = []
        for producer in producers:
            for parent in self.store.list_artifacts(output_name(project, run_id, producer, "")):
                ids.append(self.store.get_metadata(parent)["id"])
        return ids


class Cas(CasArtifactStore):
    """:class:`CasArtifactStore` under the name FlowyML gives entry-point components.

    FlowyML's ``ComponentRegistry`` files a discovered class under its class name in
    snake case, so this class is what makes ``type: cas`` resolve in ``flowyml.yaml``.
    """


def _name(path: str | os.PathLike[str]) -> str:
    text = os.fspath(path)
    return text[len(CAS_URL_PREFIX) :] if text.startswith(CAS_URL_PREFIX) else text


def _unwrap(obj: Any) -> tuple[Any, dict[str, Any]]:
    """A FlowyML ``Asset`` (``upload=True``) is stored as its data, with its type, tags
    and identity kept in the record; anything else is stored as it is."""
    from flowyml.assets.base import Asset

    if not isinstance(obj, Asset):
        return obj, {}
    tags = {str(k): str(v) for k, v in (obj.tags or {}).items()}
    identity = {"name": str(obj.name), "version": str(obj.version), "asset_id": str(obj.asset_id)}
    return obj.data, {
        "artifact_type": type(obj).__name__,
        "tags": tags or None,
        "metadata": {"flowyml_asset": identity},
    }


def misplaced_store(start: str | os.PathLike[str] | None = None) -> str | None:
    """What to tell a user whose ``flowyml.yaml`` (in ``start``, default the working
    folder, or a folder above it, as FlowyML looks for it) sets a top-level
    ``artifact_store:`` of ``type: cas``, which FlowyML does not read; else None."""
    import yaml

    folder = os.path.abspath(os.fspath(start) if start is not None else os.getcwd())
    while True:
        path = os.path.join(folder, "flowyml.yaml")
        if os.path.isfile(path):
            break
        parent = os.path.dirname(folder)
        if parent == folder:
            return None
        folder = parent
    try:
        with open(path, encoding="utf-8") as f:
            config = yaml.safe_load(f)
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return None  # FlowyML reports its own file's errors
    store = config.get("artifact_store") if isinstance(config, dict) else None
    if not isinstance(store, dict) or store.get("type") != "cas":
        return None
    return (
        f"{path} sets a top-level 'artifact_store:' of type cas, which FlowyML does not "
        "read: pipeline runs use FlowyML's local store and nothing reaches cas. Put it in "
        "a stack instead (docs/integrations.md):\n"
        "stacks:\n  cas:\n    artifact_store: {type: cas, root: ...}"
    )


# FlowyML imports this module when it is imported itself (its registry loads every
# installed stack component), so this is the moment a run's configuration is read.
_misplaced = misplaced_store()
if _misplaced is not None:
    logger.warning("cas: %s", _misplaced)
