"""``cas serve``: one HTTP process over a cas root.

Three faces, one store:

- ``/flowyml/v1``: the API FlowyML's ``RemoteCatalogBackend`` speaks, so that
  ``FLOWYML_CATALOG_ENDPOINT=http://127.0.0.1:8750/flowyml/v1`` makes FlowyML register,
  tag, search and trace lineage in cas's catalog. Writes need the bearer token.
- ``/api/v1``: a read API for scripts (names, artifacts by name or id, history, search,
  lineage, verified content with ``ETag`` = content id and ``Range``).
- ``/``: a web page that browses names, shows artifacts and draws their lineage.

The HTTP parts need the ``serve`` extra (starlette, uvicorn); they are imported only
when a server is built, so ``import cas.serve`` always works and a missing extra is a
:class:`cas.CasError` that says what to install.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from cas.serve.cli import DEFAULT_HOST, DEFAULT_PORT, add_arguments, main, run, serve

if TYPE_CHECKING:
    from starlette.applications import Starlette

    import cas

__all__ = ["DEFAULT_HOST", "DEFAULT_PORT", "add_arguments", "create_app", "main", "run", "serve"]


def create_app(
    store: cas.ArtifactStore,
    token: str,
    *,
    reads: str = "loopback",
    allowed_hosts: Sequence[str] | None = None,
    max_streams: int = 16,
    idle_timeout: float = 30.0,
) -> Starlette:
    """The ASGI application over ``store`` (see :func:`cas.serve.app.create_app`)."""
    from cas.serve.deps import require

    require()
    from cas.serve.app import create_app as _create_app

    return _create_app(store, token, reads=reads, allowed_hosts=allowed_hosts,
                       max_streams=max_streams, idle_timeout=idle_timeout)  # fmt: skip
