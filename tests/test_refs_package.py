"""The refs package: its public names, its place as a leaf, and its name rules."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import fsspec
import pytest
from fsspec.implementations.dirfs import DirFileSystem
from hypothesis import given
from hypothesis import strategies as st

from cas import refs
from cas.refs import ANY, InvalidRefName, RefError, RefStore, check_ref_name
from cas.refs.names import FORBIDDEN_CHARACTERS, is_valid_ref_name
from cas.refs.testing import BAD_NAMES, valid_names

PACKAGE = Path(refs.__file__).parent


def test_public_names() -> None:
    assert sorted(refs.__all__) == [
        "ANY",
        "Conditional",
        "InvalidId",
        "InvalidRefName",
        "LocalConditional",
        "LogEntry",
        "NameConflict",
        "ProcessLocalConditional",
        "RefConflict",
        "RefError",
        "RefLocked",
        "RefNotFound",
        "RefStore",
        "check_id",
        "check_ref_name",
    ]
    for name in refs.__all__:
        assert getattr(refs, name) is not None
    assert repr(ANY) == "ANY"


def test_error_tree() -> None:
    assert issubclass(refs.InvalidRefName, RefError) and issubclass(refs.InvalidRefName, ValueError)
    assert issubclass(refs.InvalidId, ValueError)
    assert issubclass(refs.RefNotFound, KeyError)
    assert issubclass(refs.NameConflict, refs.RefConflict)
    assert issubclass(refs.RefLocked, RefError) and issubclass(refs.RefConflict, RefError)


def test_refs_imports_only_itself_and_cas_errors() -> None:
    """cas.refs stands alone (its stress children import nothing else): no module of it
    imports another part of cas, and importing it loads no store, catalog or fsspec."""
    for module in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(module.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            for name in names:
                if name.split(".")[0] == "cas":
                    assert name.startswith("cas.refs"), (module.name, name)
    code = (
        "import cas.refs, cas.refs.stress, sys; "
        "loaded = {m.split('.')[1] for m in sys.modules if m.startswith('cas.')}; "
        "assert loaded <= {'refs', 'errors'}, loaded"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_refs_and_catalog_are_not_top_level_import_names(tmp_path: Path) -> None:
    """A user's own folders named refs/ and catalog/ shadow nothing of cas."""
    for own in ("refs", "catalog"):
        (tmp_path / own).mkdir()
        (tmp_path / own / "__init__.py").write_text("MINE = True\n")
    code = (
        "import cas, refs, catalog; assert refs.MINE and catalog.MINE; "
        "s = cas.open_store('store'); aid = s.save(b'x', 'a/b'); "
        "assert s.load('a/b') == b'x' and s.catalog.search('a') "
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=tmp_path)


def test_other_filesystems_need_a_conditional() -> None:
    fs = DirFileSystem(path="/somewhere", fs=fsspec.filesystem("memory"))
    with pytest.raises(RefError, match="pass conditional="):
        RefStore(fs, "x")


@pytest.mark.parametrize(("name", "words"), BAD_NAMES)
def test_each_rule(name: str, words: str) -> None:
    with pytest.raises(InvalidRefName, match=None) as caught:
        check_ref_name(name)
    assert words in caught.value.reason and caught.value.name == name


def test_messages_are_distinct() -> None:
    reasons = set()
    for name, _ in BAD_NAMES:
        with pytest.raises(InvalidRefName) as caught:
            check_ref_name(name)
        reasons.add(caught.value.reason)
    assert len(reasons) >= 20
    with pytest.raises(InvalidRefName, match="must be a str"):
        check_ref_name(b"main")


@given(valid_names)
def test_valid_names_are_accepted_whole(name: str) -> None:
    if is_valid_ref_name(name):
        check_ref_name(name)
        assert all(part and not part.startswith(".") for part in name.split("/"))


@given(st.text(max_size=40))
def test_accepted_names_stay_below_the_root(name: str) -> None:
    if not is_valid_ref_name(name):
        return
    parts = name.split("/")
    assert "" not in parts and "." not in parts and ".." not in parts
    assert not (set(name) & FORBIDDEN_CHARACTERS)
    assert not any(part.endswith(".lock") or part.startswith("~") for part in parts)


def test_name_checks_are_remembered_only_for_valid_names() -> None:
    """check_ref_name caches valid names (a set checks one ~10 times), never a refusal."""

    class Name(str):
        pass

    for _ in range(2):
        check_ref_name("models/fraud")
        check_ref_name(Name("models/fraud"))
        for bad in ("a b", Name("a b"), "a\x00"):
            with pytest.raises(InvalidRefName):
                check_ref_name(bad)


@given(st.from_regex(r"[A-Za-z0-9_.\-/]{1,220}", fullmatch=True) | valid_names)
def test_the_fast_path_accepts_only_what_every_rule_accepts(name: str) -> None:
    """check_ref_name's one-regex shortcut for plain names agrees with the full rules."""
    from cas.refs.names import _PLAIN, MAX_COMPONENT_BYTES, _check_name

    if len(name) <= MAX_COMPONENT_BYTES and _PLAIN.fullmatch(name) and ".lock" not in name:
        _check_name(name)  # raises if the shortcut let through a name a rule refuses
    full = True
    try:
        _check_name(name)
    except InvalidRefName:
        full = False
    assert is_valid_ref_name(name) == full
