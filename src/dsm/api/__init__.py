"""The client-facing edge: the HTTP API of a node."""
