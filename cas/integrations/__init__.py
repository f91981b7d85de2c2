"""Plug-ins that let other tools keep their artifacts in cas.

Each module imports its tool only when it is imported itself; ``import cas`` never
imports any of them. ``docs/integrations.md`` shows each one in use.

- :mod:`cas.integrations.flowyml`: a FlowyML artifact store component (entry point
  ``cas`` in ``flowyml.stack_components``) and a FlowyML ``CatalogBackend``.
- :mod:`cas.integrations.mlflow`: an MLflow artifact repository for ``cas://`` URIs
  (entry point ``cas`` in ``mlflow.artifact_repository``).
"""
