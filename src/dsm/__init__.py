"""DSM: a distributed key-value storage node.

Every node keeps a full replica in a SQL database (SQLite by default, PostgreSQL as an option); nodes keep
each other up to date with an epidemic protocol over a small-world overlay. The public API:

    from dsm import StorageConfig, StorageFactory

    factory = StorageFactory(StorageConfig(data_dir="data"))
    storage = await factory.create_epidemic_storage("node-1", backing_storage=factory.create_sql_storage())
    await storage.put("k", b"v")
    result = await storage.get("k")      # ReadResult: .value, .siblings, .context
    await storage.delete("k")
    await storage.close()
"""

import importlib
from typing import TYPE_CHECKING, Any

from dsm.errors import (
    ClockSkewError,
    ClosedError,
    ConfigError,
    ConsistencyError,
    DSMError,
    FeatureUnavailableError,
    ForeignStoreError,
    InvalidContextError,
    InvalidInputError,
    InvalidKeyError,
    InvalidValueError,
    OutcomeUnknownError,
    PreconditionFailedError,
    StaleReplicaError,
    StorageCorruptError,
    StorageError,
    StorageLockedError,
    StorageReadOnlyError,
    StorageUnavailableError,
    WatchOverflowError,
)

if TYPE_CHECKING:
    from dsm.config import StorageConfig
    from dsm.factory import StorageFactory
    from dsm.node import Change, EpidemicStorage, Resolver, Watch
    from dsm.storage import BackingStore
    from dsm.types import NodeInfo, ReadResult, Sibling, WriteResult

# The configuration, the types and the node's parts (the factory, the store, the network runtime, numpy) are
# imported on first use, so that `import dsm` and the client commands (`dsm get`) stay light: PEP 562's
# module __getattr__.
_LAZY = {
    "StorageConfig": "dsm.config",
    "NodeInfo": "dsm.types",
    "ReadResult": "dsm.types",
    "Sibling": "dsm.types",
    "WriteResult": "dsm.types",
    "StorageFactory": "dsm.factory",
    "Change": "dsm.node",
    "EpidemicStorage": "dsm.node",
    "Resolver": "dsm.node",
    "Watch": "dsm.node",
    "BackingStore": "dsm.storage",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'dsm' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


__version__ = "0.1.0"

__all__ = [
    "BackingStore",
    "Change",
    "ClockSkewError",
    "ClosedError",
    "ConfigError",
    "ConsistencyError",
    "DSMError",
    "EpidemicStorage",
    "FeatureUnavailableError",
    "ForeignStoreError",
    "InvalidContextError",
    "InvalidInputError",
    "InvalidKeyError",
    "InvalidValueError",
    "NodeInfo",
    "OutcomeUnknownError",
    "PreconditionFailedError",
    "ReadResult",
    "Resolver",
    "Sibling",
    "StaleReplicaError",
    "StorageConfig",
    "StorageCorruptError",
    "StorageError",
    "StorageFactory",
    "StorageLockedError",
    "StorageReadOnlyError",
    "StorageUnavailableError",
    "Watch",
    "WatchOverflowError",
    "WriteResult",
    "__version__",
]
