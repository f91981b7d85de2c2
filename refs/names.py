"""Ref names: git's check-ref-format rules, and the only map from a name to a path.

A name is a ``/``-separated path such as ``models/fraud`` or ``runs/p/r1/train/model``.
The rules below are git's (``git help check-ref-format``), written out one per line
as dulwich's ``check_ref_format`` does, plus three of our own at the end. Together
they guarantee that ``<root>/refs/<name>`` and ``<root>/logs/<name>/`` stay inside
their folder on every filesystem, and that no name can be mistaken for a lock file
(``*.lock``), a temporary file (``.*``) or a history entry (``~<seq>``).
"""

from __future__ import annotations

import functools
import re

from .errors import InvalidRefName

#: Characters git forbids anywhere in a name (besides controls and DEL).
FORBIDDEN_CHARACTERS = frozenset(" ~^:?*[\\")

#: A component longer than this (in UTF-8 bytes) would overflow common filesystems'
#: 255-byte file names once ``.lock`` or a temporary suffix is added.
MAX_COMPONENT_BYTES = 200


# Controls, DEL and FORBIDDEN_CHARACTERS: one scan in C finds the first of them.
_BAD_CHARACTER = re.compile(
    "[\x00-\x1f\x7f" + re.escape("".join(sorted(FORBIDDEN_CHARACTERS))) + "]"
)


# Names of ASCII letters, digits, '_' and '-' in components joined by '/', dots only
# between such characters: every rule below holds for them (checked by the tests).
_PLAIN = re.compile(r"[A-Za-z0-9_-]+(?:\.[A-Za-z0-9_-]+)*(?:/[A-Za-z0-9_-]+(?:\.[A-Za-z0-9_-]+)*)*")


def check_ref_name(name: object) -> None:
    """Raise :class:`InvalidRefName` saying which rule ``name`` breaks; return if valid."""
    if (
        type(name) is str
        and len(name) <= MAX_COMPONENT_BYTES
        and _PLAIN.fullmatch(name)
        and ".lock" not in name
    ):
        return  # the common case, in one regular expression
    # Every path made from a name checks it (``ref_path``, ``log_dir``): about ten
    # times per ``set``, so valid names are remembered. Only an exact str: a subclass
    # could compare equal to a cached name and behave otherwise.
    if type(name) is str:
        _check_str_cached(name)
    else:
        _check_name(name)


@functools.lru_cache(maxsize=4096)
def _check_str_cached(name: str) -> None:
    _check_name(name)  # a refusal raises, and lru_cache keeps no exceptions


def _check_name(name: object) -> None:
    if not isinstance(name, str):
        raise InvalidRefName(name, "a name must be a str")
    if name == "":
        raise InvalidRefName(name, "a name cannot be empty")
    if name == "@":
        raise InvalidRefName(name, "a name cannot be the single character '@'")
    if name.startswith("/"):
        raise InvalidRefName(name, "a name cannot begin with '/'")
    if name.endswith("/"):
        raise InvalidRefName(name, "a name cannot end with '/'")
    if "//" in name:
        raise InvalidRefName(name, "a name cannot contain '//'")
    if ".." in name:
        raise InvalidRefName(name, "a name cannot contain '..'")
    bad = _BAD_CHARACTER.search(name)
    if bad is not None:
        char = bad.group()
        if char not in FORBIDDEN_CHARACTERS:
            raise InvalidRefName(name, f"a name cannot contain control character {char!r}")
        raise InvalidRefName(name, f"a name cannot contain {char!r}")
    if "@{" in name:
        raise InvalidRefName(name, "a name cannot contain '@{'")
    if name.endswith("."):
        raise InvalidRefName(name, "a name cannot end with '.'")
    for component in name.split("/"):
        if component in (".", ".."):
            raise InvalidRefName(name, f"a name cannot have a component {component!r}")
        if component.startswith("."):
            raise InvalidRefName(name, f"component {component!r} cannot begin with '.'")
        if component.endswith(".lock"):
            raise InvalidRefName(name, f"component {component!r} cannot end with '.lock'")
    # Our own rules: what git does not need because it never leaves one filesystem.
    try:
        encoded = name.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidRefName(name, "a name must be valid UTF-8 text (no lone surrogates)") from None
    for raw in encoded.split(b"/"):
        if len(raw) > MAX_COMPONENT_BYTES:
            raise InvalidRefName(
                name, f"a component cannot be longer than {MAX_COMPONENT_BYTES} bytes in UTF-8"
            )


def is_valid_ref_name(name: object) -> bool:
    """True if :func:`check_ref_name` accepts ``name``."""
    try:
        check_ref_name(name)
    except InvalidRefName:
        return False
    return True


def check_ref_prefix(prefix: object) -> str:
    """Check a name prefix (``"models/"``, ``"mod"``); return its folder part (``"models"``).

    The folder part must be one that names can live under: ``folder + "/x"`` is valid.
    """
    if not isinstance(prefix, str):
        raise InvalidRefName(prefix, "a prefix must be a str")
    folder = prefix.rpartition("/")[0]
    if folder:
        try:
            check_ref_name(folder + "/x")
        except InvalidRefName as exc:
            raise InvalidRefName(prefix, exc.reason) from None
    return folder


def ref_path(root: str, name: str) -> str:
    """The file holding ref ``name`` under ``root``: ``<root>/refs/<name>``."""
    check_ref_name(name)
    return f"{root}/refs/{name}"


def log_dir(root: str, name: str) -> str:
    """The folder holding the history of ref ``name``: ``<root>/logs/<name>``."""
    check_ref_name(name)
    return f"{root}/logs/{name}"


def parents(name: str) -> list[str]:
    """The proper prefixes of ``name`` that would be folders: ``a/b/c`` -> ``[a, a/b]``."""
    parts = name.split("/")
    return ["/".join(parts[:i]) for i in range(1, len(parts))]
