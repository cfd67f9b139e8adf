"""The storage contract for `az://` against a real Azurite server, plus what is particular to Azure."""

from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from azure.storage.blob import BlobServiceClient

from tests.storage_adapters.conftest import AZURITE_ACCOUNT, AZURITE_KEY, HOST
from tests.storage_adapters.contract import MIB, StorageContract
from trainyard.storage_adapters import ObjectInfo, ObjectNotFound, StorageError, open_storage
from trainyard.storage_adapters.azure_blob import AzureBlobStorage


def _service() -> BlobServiceClient:
    return BlobServiceClient.from_connection_string(os.environ["AZURE_STORAGE_CONNECTION_STRING"])


class TestAzureBlobStorage(StorageContract):
    adapter_class = AzureBlobStorage

    @pytest.fixture
    def root_url(self, azure_container: str) -> str:
        return f"az://{azure_container}/runs"


def test_a_container_without_prefix_is_a_root(azure_container: str) -> None:
    storage = open_storage(f"az://{azure_container}")
    storage.put("top.txt", b"1")
    assert list(storage.list()) == [ObjectInfo("top.txt", 1)]
    blob = _service().get_blob_client(azure_container, "top.txt")
    assert blob.download_blob().readall() == b"1"


def test_a_large_writer_commits_several_blocks(azure_container: str) -> None:
    storage = open_storage(f"az://{azure_container}/p")
    with storage.writer("big") as writer:
        for _ in range(12):
            writer.write(b"\x01" * MIB)
    committed, uncommitted = _service().get_blob_client(azure_container, "p/big").get_block_list("all")
    assert [block.size for block in committed] == [8 * MIB, 4 * MIB]
    assert uncommitted == []


def test_listing_follows_every_page(azure_container: str) -> None:
    storage = open_storage(f"az://{azure_container}/many")
    assert isinstance(storage, AzureBlobStorage)
    storage.list_page_size = 7
    keys = [f"k{number:03d}" for number in range(50)]
    # Several threads share one adapter, as the log pump's do.
    with ThreadPoolExecutor(max_workers=4) as pool:
        list(pool.map(lambda key: storage.put(key, b"x"), keys))
    assert list(storage.list()) == [ObjectInfo(key, 1) for key in keys]
    assert [info.key for info in storage.list("k04")] == keys[40:50]


def test_account_name_and_key_variables_work(
    azure_container: str, azurite_blob_endpoint: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("AZURE_STORAGE_CONNECTION_STRING")
    monkeypatch.setenv("AZURE_STORAGE_ACCOUNT_NAME", AZURITE_ACCOUNT)
    monkeypatch.setenv("AZURE_STORAGE_ACCOUNT_KEY", AZURITE_KEY)
    monkeypatch.setenv("AZURE_STORAGE_BLOB_ENDPOINT", azurite_blob_endpoint)
    storage = open_storage(f"az://{azure_container}/keyed")
    storage.put("k", b"v")
    assert storage.get("k") == b"v"


def test_missing_credentials_are_refused_with_the_variables_to_set(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (
        "AZURE_STORAGE_CONNECTION_STRING",
        "AZURE_STORAGE_ACCOUNT_NAME",
        "AZURE_STORAGE_ACCOUNT_KEY",
    ):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(ValueError, match="AZURE_STORAGE_CONNECTION_STRING"):
        open_storage("az://container/prefix")


def test_a_missing_container_is_a_storage_error_not_a_missing_key(azure_container: str) -> None:
    storage = open_storage(f"az://{azure_container}-absent/x")
    calls = (lambda: storage.get("k"), lambda: storage.put("k", b"1"), lambda: storage.delete("k"))
    for call in (*calls, lambda: list(storage.list())):
        with pytest.raises(StorageError) as raised:
            call()
        assert not isinstance(raised.value, ObjectNotFound)


def test_an_unreachable_endpoint_is_a_storage_error_within_seconds(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AZURE_STORAGE_CONNECTION_STRING", raising=False)
    monkeypatch.setenv("AZURE_STORAGE_ACCOUNT_NAME", AZURITE_ACCOUNT)
    monkeypatch.setenv("AZURE_STORAGE_ACCOUNT_KEY", AZURITE_KEY)
    monkeypatch.setenv("AZURE_STORAGE_BLOB_ENDPOINT", f"http://{HOST}:9/{AZURITE_ACCOUNT}")
    storage = open_storage("az://container/x")
    started = time.monotonic()
    with pytest.raises(StorageError) as raised:
        storage.get("k")
    assert not isinstance(raised.value, ObjectNotFound)
    assert AZURITE_KEY not in str(raised.value)
    assert time.monotonic() - started < 20


def test_urls_that_are_not_azure_are_refused() -> None:
    with pytest.raises(ValueError):
        AzureBlobStorage("az:///no-container")
