"""The storage contract for `memory://`, plus what is particular to it."""

from __future__ import annotations

import uuid

import pytest

from tests.storage_adapters.contract import StorageContract
from trainyard.storage_adapters import open_storage
from trainyard.storage_adapters.memory import MemoryStorage


class TestMemoryStorage(StorageContract):
    adapter_class = MemoryStorage

    @pytest.fixture
    def root_url(self) -> str:
        return f"memory://{uuid.uuid4().hex}"


def test_adapters_of_the_same_name_share_objects() -> None:
    name = f"memory://{uuid.uuid4().hex}"
    open_storage(name).put("k", b"v")
    assert open_storage(name).get("k") == b"v"
    assert list(open_storage(f"memory://{uuid.uuid4().hex}").list()) == []
