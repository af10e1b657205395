"""The client-facing edge: the HTTP API of a node.

`http` (the factory, `create_app`, and the routing), `routes` (the handlers: `keys`, `cluster`, `health`),
`parsing` (what a request asks, strictly decoded), `errors` (every failure's HTTP answer and JSON body),
`metrics` (Prometheus), `openapi` (the document served at /openapi.json), `connections` (the bounded HTTP
server). The edge reads the node's status snapshot (`dsm.net.status`), never the core's tables.
"""
