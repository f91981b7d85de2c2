"""The RefStore suite on memory:// (ProcessLocalConditional: one process)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import fsspec
import pytest

from cas.refs import ProcessLocalConditional, RefStore
from cas.refs.testing import MakeRefStore, RefStoreTests


class TestMemoryRefStore(RefStoreTests):
    @pytest.fixture
    def make_refstore(self) -> Iterator[MakeRefStore]:
        fs = fsspec.filesystem("memory")
        parent = f"/refs-test-{uuid.uuid4().hex}"

        def make(**options: object) -> RefStore:
            return RefStore(fs, f"memory://{parent}/.cas", **options)  # type: ignore[arg-type]

        yield make
        if fs.exists(parent):
            fs.rm(parent, recursive=True)

    def test_default_conditional_is_per_process(self, rs: RefStore) -> None:
        assert isinstance(rs.conditional, ProcessLocalConditional)
        assert ProcessLocalConditional.across_processes is False
        assert rs.root.endswith("/.cas") and not rs.root.startswith("memory:")
