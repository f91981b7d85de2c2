"""The ``serve`` extra: starlette and uvicorn, checked before anything imports them."""

from __future__ import annotations

import importlib.util

import cas

INSTALL_HINT = "pip install 'cas-store[serve]'"


def require() -> None:
    """Raise :class:`cas.CasError` naming the install command if the extra is missing."""
    missing = [m for m in ("starlette", "uvicorn") if importlib.util.find_spec(m) is None]
    if missing:
        raise cas.CasError(
            f"cas serve needs {' and '.join(missing)}, which are not installed: {INSTALL_HINT}"
        )
