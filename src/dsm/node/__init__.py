"""One DSM node as a library object: `EpidemicStorage` (`storage.py`), a façade over the node's parts
(`checks`, `commits`, `levels`, `sweeps`, `startup`, `watches`; see `storage.py`)."""

from dsm.core.replica import HLC_RESERVE_MS, META_HLC, USER_KEYS_START, Change, MergeStats
from dsm.node.checks import METADATA_MAX_BYTES, METADATA_MAX_PAIRS, metadata_bytes
from dsm.node.commits import Commits
from dsm.node.levels import LevelRequests, Levels
from dsm.node.startup import META_LAST_SEEN, META_MEMBER_SINCE, META_NODE_ID
from dsm.node.storage import MEMBER_KEY_PREFIX, EpidemicStorage, Network, Resolver, wall_clock_ms
from dsm.node.sweeps import SWEEP_MAX_MS, SWEEP_PAGE
from dsm.node.watches import Watch, Watches

__all__ = [
    "HLC_RESERVE_MS",
    "MEMBER_KEY_PREFIX",
    "METADATA_MAX_BYTES",
    "METADATA_MAX_PAIRS",
    "META_HLC",
    "META_LAST_SEEN",
    "META_MEMBER_SINCE",
    "META_NODE_ID",
    "SWEEP_MAX_MS",
    "SWEEP_PAGE",
    "USER_KEYS_START",
    "Change",
    "Commits",
    "EpidemicStorage",
    "LevelRequests",
    "Levels",
    "MergeStats",
    "Network",
    "Resolver",
    "Watch",
    "Watches",
    "metadata_bytes",
    "wall_clock_ms",
]
