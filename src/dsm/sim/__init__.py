"""The deterministic simulator: many protocol cores on virtual time over a simulated network.

`Simulation` is the event loop with its faults, `NetworkModel`/`Partition` the network, `Checkers` the
safety and liveness properties, and `StandardRun` the measured scenario behind `dsm sim` (docs/sim.md).
"""

from dsm.sim.checkers import Checkers
from dsm.sim.cluster import CheckFailed, SimNode, Simulation
from dsm.sim.network import Latency, NetworkModel, Partition
from dsm.sim.run import FORMAT, SimParams, StandardRun

__all__ = [
    "FORMAT",
    "CheckFailed",
    "Checkers",
    "Latency",
    "NetworkModel",
    "Partition",
    "SimNode",
    "SimParams",
    "Simulation",
    "StandardRun",
]
