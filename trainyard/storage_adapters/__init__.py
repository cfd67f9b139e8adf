"""Storage adapters by URL scheme, imported lazily with a hint when a backend's SDK is missing."""

from __future__ import annotations

import importlib

from trainyard.storage_adapters.base import ObjectInfo, ObjectNotFound, Storage, StorageError, StreamWriter

__all__ = ["ObjectInfo", "ObjectNotFound", "Storage", "StorageError", "StreamWriter", "open_storage"]

# scheme -> (module, class, what to install when the import fails)
REGISTRY: dict[str, tuple[str, str, str]] = {
    "file": ("trainyard.storage_adapters.local", "LocalStorage", "nothing (built in)"),
    "memory": ("trainyard.storage_adapters.memory", "MemoryStorage", "nothing (built in)"),
    "s3": ("trainyard.storage_adapters.s3", "S3Storage", "pip install boto3"),
    "az": ("trainyard.storage_adapters.azure_blob", "AzureBlobStorage", "pip install azure-storage-blob"),
}


def open_storage(url: str) -> Storage:
    """The adapter for `url` (file://, memory://, s3://bucket/prefix, az://container/prefix)."""
    scheme = url.split("://", 1)[0] if "://" in url else ""
    if scheme not in REGISTRY:
        known = ", ".join(f"{s}://" for s in REGISTRY)
        raise ValueError(f"unknown storage URL {url!r}: use one of {known}")
    module_name, class_name, hint = REGISTRY[scheme]
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ImportError(f"{scheme}:// storage needs an extra package: {hint} ({exc})") from exc
    adapter: Storage = getattr(module, class_name)(url)
    return adapter
