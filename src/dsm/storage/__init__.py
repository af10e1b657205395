"""Backing stores behind one small interface (`BackingStore`), chosen by URL scheme.

`open_store(url)` picks the backend: `memory:`, `sqlite:///abs/path` or `sqlite:rel/path`, and
`postgresql://...` (imported lazily, so psycopg is needed only by those who use it).
"""

from __future__ import annotations

from dsm.errors import ConfigError
from dsm.storage.base import BackingStore, RangeDigest, StoredKey
from dsm.storage.memory import MemoryStore

__all__ = ["BackingStore", "MemoryStore", "RangeDigest", "StoredKey", "open_store"]


def open_store(url: str, durability: str = "process", timeout_ms: int = 10000) -> BackingStore:
    """Creates (without opening) the backing store a URL names.

    Raises:
        ConfigError: the URL's scheme is not one DSM knows.
    """
    if url.startswith("memory:"):
        return MemoryStore()
    if url.startswith("sqlite:"):
        from dsm.storage.sqlite import SQLiteStore

        path = url[len("sqlite://") :] if url.startswith("sqlite://") else url[len("sqlite:") :]
        if not path:
            raise ConfigError("storage_url", url, "sqlite:///absolute/path.db or sqlite:relative/path.db")
        return SQLiteStore(path, durability)
    if url.startswith(("postgresql://", "postgres://")):
        from dsm.storage.postgres import PostgresStore

        return PostgresStore(url, durability, timeout_s=timeout_ms / 1000)
    raise ConfigError("storage_url", url, "memory:, sqlite:///path, sqlite:path or postgresql://...")
