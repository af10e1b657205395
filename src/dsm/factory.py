"""`StorageFactory`: the front door of the specification.

factory = StorageFactory(config)
backing = factory.create_sql_storage()
storage = await factory.create_epidemic_storage(node_id, node_info, bootstrap_nodes, backing)
"""

from __future__ import annotations

from collections.abc import Sequence

from dsm.config import StorageConfig
from dsm.errors import ConfigError, InvalidInputError
from dsm.net.runtime import Runtime
from dsm.node import Commits, EpidemicStorage, Resolver, metadata_bytes, wall_clock_ms
from dsm.storage import BackingStore, open_store
from dsm.types import NodeInfo


class StorageFactory:
    """Creates backing stores and nodes from one `StorageConfig`.

    Args:
        config: the node configuration (default: all defaults).
        resolver: a conflict resolver for the nodes it creates (see `EpidemicStorage.resolver`).
    """

    def __init__(self, config: StorageConfig | None = None, *, resolver: Resolver | None = None) -> None:
        self.config = config if config is not None else StorageConfig()
        #: Given to every node this factory creates (`EpidemicStorage.resolver`; siblings mode).
        self.resolver = resolver

    def create_sql_storage(self) -> BackingStore:
        """The configured SQL backing store, not yet opened (the node opens it).

        SQLite at `<data_dir>/dsm.sqlite3` unless `storage_url` names another SQLite file, a PostgreSQL
        database (`postgresql://...`) or `memory:`.

        Raises:
            ConfigError: the storage URL is not understood.
        """
        config = self.config
        return open_store(config.resolved_storage_url(), config.durability, config.storage_timeout_ms)

    async def create_epidemic_storage(
        self,
        node_id: str | None = None,
        node_info: NodeInfo | None = None,
        bootstrap_nodes: Sequence[str] = (),
        backing_storage: BackingStore | None = None,
    ) -> EpidemicStorage:
        """Creates and starts a node.

        Args:
            node_id: the node's id (default: the config's `node_id`).
            node_info: what the node advertises (default: from the config).
            bootstrap_nodes: host:port addresses of existing members to join through, tried in turn
                (empty: the config's `bootstrap`, and when that is empty too the node starts a new
                cluster).
            backing_storage: the store (default: `create_sql_storage()`).

        The node listens for other nodes on the config's `listen_addr` (port 0: one the system picks; the
        bound address is `storage.network.addr`) and advertises the first of `node_info.addresses`, else
        the config's `advertise_addr`, else the listening address. With `listen_addr` empty it runs
        standalone: one replica, no network, and bootstrap nodes are refused.

        Returns:
            the started node; close it with `await storage.close()` (or use `async with`): it commits what
            is queued and closes the store, and stays a member of its cluster (it is seen to fail, and
            counted, until it starts again). `await storage.leave()` leaves the cluster for good first.

        Raises:
            ConfigError: no node id, an invalid one, or bootstrap nodes for a standalone node.
            InvalidInputError: node_info or bootstrap_nodes of the wrong type.
            StorageError: the store cannot be opened.
            OSError: the listening address cannot be bound.
        """
        config = self.config
        if node_id is not None:
            config = config.replace(node_id=node_id)
        if not config.node_id:
            raise ConfigError("node_id", config.node_id, "a node id, in the config or as an argument")
        if isinstance(bootstrap_nodes, str) or not all(isinstance(a, str) for a in bootstrap_nodes):
            raise InvalidInputError("bootstrap_nodes must be a sequence of 'host:port' strings")
        if node_info is not None and not isinstance(node_info, NodeInfo):
            raise InvalidInputError(f"node_info must be a dsm.NodeInfo, not {type(node_info).__name__}")
        info = node_info if node_info is not None else NodeInfo()
        if not info.metadata and config.tags:
            info = NodeInfo(info.addresses, info.region, dict(config.tags))
        metadata_bytes(info.metadata)  # checked before anything starts
        if info.region is not None and info.region != config.region:
            config = config.replace(region=info.region)
        if info.addresses:
            config = config.replace(advertise_addr=info.addresses[0])
        bootstrap = tuple(bootstrap_nodes) or config.bootstrap_addrs
        if config.new_cluster and bootstrap:
            raise ConfigError("new_cluster", True, "false when bootstrap nodes are given (a new cluster joins nobody)")
        if not config.listen_addr and bootstrap:
            raise ConfigError("bootstrap_nodes", list(bootstrap), "empty for a standalone node (listen_addr empty)")
        store = backing_storage if backing_storage is not None else self.create_sql_storage()
        # The node's parts, wired here: its local replica goes to the network runtime (which merges into it
        # and publishes its commits) and to the node, which asks the runtime for consistency levels.
        commits = Commits(config, store, wall_clock_ms)
        # Built before the store opens: a TLS file that cannot be loaded fails here, with nothing to undo.
        runtime = Runtime.from_config(commits, config) if config.listen_addr else None
        node = EpidemicStorage(config, info, store, commits=commits, network=runtime, resolver=self.resolver)
        await node.start(networked=bool(config.listen_addr))
        if runtime is None:
            return node
        try:
            await runtime.start(bootstrap)
        except BaseException:
            await runtime.close(flush_timeout=0)
            await node.close()
            raise
        await node.publish_metadata()
        await node.features.publish()
        return node
