"""`GET /v1/snapshot`: an online, consistent snapshot of this node's store, streamed as it was written
(`dsm.node.snapshot`: format, checksum, what it holds). The store's view is read off the event loop into a
temporary file beside the store, which is then sent and removed; one snapshot at a time per node (a second
request waits). Guarded by the API token like every /v1 route. A client that stops reading is cut off after
`http_body_timeout_ms` per chunk."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import tempfile
from pathlib import Path

from aiohttp import web

from dsm.node import EpidemicStorage
from dsm.node.snapshot import save

CHUNK = 1 << 20


class SnapshotRoutes:
    def __init__(self, storage: EpidemicStorage, send_timeout_s: float) -> None:
        self.storage = storage
        self.send_timeout_s = send_timeout_s
        self._one = asyncio.Lock()
        # A save cut short by a crash (kill -9 while it wrote) leaves its temporary file: gone at the next start.
        for stale in self._folder().glob(".snapshot-*.tmp"):
            with contextlib.suppress(OSError):
                stale.unlink()

    def _folder(self) -> Path:
        data_dir = self.storage.config.data_dir
        return Path(data_dir) if data_dir else Path(tempfile.gettempdir()) / f"dsm-snapshots-{self.storage.node_id}"

    async def get(self, request: web.Request) -> web.StreamResponse:
        folder = self._folder()
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f".snapshot-{secrets.token_hex(8)}.tmp"
        async with self._one:
            try:
                header = await save(self.storage, path)
                response = web.StreamResponse(
                    headers={
                        "Content-Type": "application/octet-stream",
                        "Content-Length": str(path.stat().st_size),
                        "Content-Disposition": f'attachment; filename="{header["node_id"]}.dsmsnap"',
                        "X-DSM-Snapshot-Keys": str(header["keys"]),
                        "X-DSM-Snapshot-Created-Ms": str(header["created_ms"]),
                    }
                )
                await response.prepare(request)
                with path.open("rb") as f:
                    while chunk := f.read(CHUNK):
                        async with asyncio.timeout(self.send_timeout_s):
                            await response.write(chunk)
                await response.write_eof()
                return response
            finally:
                with contextlib.suppress(OSError):
                    path.unlink()
