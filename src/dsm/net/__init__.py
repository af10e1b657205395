"""The network runtime: drives the sans-IO core over TCP (wire protocol, security, connections)."""
