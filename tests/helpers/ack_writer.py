"""A writer process for the kill -9 tests: writes forever, printing each write only once acknowledged.

Usage: python ack_writer.py STORAGE_URL DURABILITY WRITERS
Each of WRITERS tasks j writes unique keys u{j}-{seq} and overwrites the key w{j} with seq, and prints
"ack j seq" after both puts returned. The parent kills this process with SIGKILL at a random moment.
"""

from __future__ import annotations

import asyncio
import sys

from dsm import StorageConfig, StorageFactory


async def main(url: str, durability: str, writers: int) -> None:
    factory = StorageFactory(StorageConfig(listen_addr="", node_id="victim", storage_url=url, durability=durability))
    storage = await factory.create_epidemic_storage(backing_storage=factory.create_sql_storage())
    print("ready", flush=True)

    async def writer(j: int) -> None:
        seq = 0
        while True:
            seq += 1
            await storage.put(f"u{j}-{seq}", f"{j}:{seq}".encode())
            await storage.put(f"w{j}", str(seq).encode())
            sys.stdout.write(f"ack {j} {seq}\n")
            sys.stdout.flush()

    await asyncio.gather(*(writer(j) for j in range(writers)))


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3])))
