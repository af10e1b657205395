"""The sans-IO protocol core.

Plain synchronous, deterministic code: it never imports asyncio, sockets, sqlite3, psycopg, `time` or
`random`. It is given clock readings and an injected RNG and answers with data. The network runtime and
the simulator drive the same code.
"""
