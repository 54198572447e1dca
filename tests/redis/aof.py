"""Read the commands a Redis server wrote to its append-only file (Redis 7's multi-part AOF:
``appendonlydir/*.incr.aof``, RESP arrays). Scripts are written as their effects (the
``ZADD``/``ZREM``/``HINCRBY`` they ran, with the values they computed), so the file is the
server's own record of every admission, including those of processes killed right after."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path


def commands(root: Path) -> Iterator[list[bytes]]:
    """Every command in the incremental AOF files under ``root``, in order."""
    files = sorted((root / "appendonlydir").glob("*.incr.aof"),
                   key=lambda p: int(p.name.split(".")[-3]))
    for path in files:
        data = path.read_bytes()
        i = 0
        while i < len(data):
            if data[i:i + 1] != b"*":
                raise ValueError(f"unexpected byte at {i} in {path.name}")
            end = data.index(b"\r\n", i)
            n = int(data[i + 1:end])
            i = end + 2
            args = []
            for _ in range(n):
                end = data.index(b"\r\n", i)
                size = int(data[i + 1:end])
                i = end + 2
                args.append(data[i:i + size])
                i += size + 2
            yield args
