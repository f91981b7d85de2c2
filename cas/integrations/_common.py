"""What the integrations share: the default root, one store per root and process, and
the error a misconfigured integration raises. Built on cas's public API only."""

from __future__ import annotations

import os
import re
import threading
from typing import Any

import cas

#: The root used when neither the caller nor ``CAS_ROOT`` names one (as the CLI does).
DEFAULT_ROOT = ".cas"


class IntegrationError(cas.CasError, ValueError):
    """An integration was given something it cannot use (a malformed ``cas://`` URI, an
    unknown option); the message says what to write instead."""


def resolve_root(root: str | os.PathLike[str] | None) -> str:
    """``root``, else ``$CAS_ROOT``, else ``./.cas``; a local path is made absolute, so a
    later change of the working directory cannot move the store."""
    text = os.fspath(root) if root is not None else os.environ.get("CAS_ROOT") or DEFAULT_ROOT
    if not text:
        raise IntegrationError("the cas root is empty: give a folder or a URL such as s3://b/p")
    if "://" in text:
        return text
    return os.path.abspath(text)


_stores: dict[str, cas.ArtifactStore] = {}
_stores_lock = threading.Lock()


def shared_store(root: str) -> cas.ArtifactStore:
    """One open store per root in this process, opened without storage options (the
    filesystem finds credentials and endpoints in the environment, as the CLI does).

    Tools such as MLflow build a new repository object for almost every call; sharing the
    store keeps its catalog open and caught up once, instead of once per call.
    """
    with _stores_lock:
        store = _stores.get(root)
        if store is None:
            store = cas.open_store(root)
            _stores[root] = store
        return store


def open_store(root: str, storage_options: dict[str, Any]) -> cas.ArtifactStore:
    """The shared store when there are no options; a store of its own otherwise."""
    if not storage_options:
        return shared_store(root)
    return cas.open_store(root, **storage_options)


# Characters git's ref-name rules refuse anywhere, plus '%' (so decoding is exact).
_ESCAPED = frozenset(" ~^:?*[\\%")


def encode_component(part: str, more: frozenset[str] = frozenset()) -> str:
    """One component of a name percent-encoded so that git's ref-name rules accept it
    (``urllib.parse.unquote`` gives it back): what they refuse anywhere, ``%``, control
    characters and the characters of ``more``; a ``.`` that starts the component,
    follows another or ends it, a final ``.lock``'s dot, and ``@{``."""
    out = "".join(
        _percent(ch) if ch in _ESCAPED or ch in more or ord(ch) < 0x20 or ord(ch) == 0x7F else ch
        for ch in part
    )
    out = re.sub(r"(?<=\.)\.", "%2E", out).replace("@{", "%40{")
    if out.startswith("."):
        out = "%2E" + out[1:]
    if out.endswith(".lock"):
        out = out[: -len(".lock")] + "%2Elock"
    if out.endswith("."):
        out = out[:-1] + "%2E"
    return out


def _percent(ch: str) -> str:
    return "".join(f"%{b:02X}" for b in ch.encode())
