"""The load process: posts prepared HTTP requests over keep-alive connections, like a provider.

``python bench/load.py PORT REQUESTS.json CONNECTIONS [RATE]`` reads raw HTTP/1.1 requests, opens
its connections, and only then starts its clock, so that its own start-up (imports, reading the
file) is not timed. Without RATE it sends as fast as the answers come; with RATE (requests/s) it
paces every connection to its share of that rate. Prints one JSON object: the status counts and
the seconds from the first request sent to the last answer read.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections import Counter
from pathlib import Path


async def _read_answer(reader: asyncio.StreamReader) -> str:
    status = (await reader.readline()).split(b" ")[1].decode()
    length = 0
    while (line := await reader.readline()) not in (b"\r\n", b""):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":")[1])
    await reader.readexactly(length)
    return status


async def blast(port: int, requests: list[bytes], connections: int, rate: float | None) -> dict:
    streams = [await asyncio.open_connection("127.0.0.1", port) for _ in range(connections)]
    codes: Counter[str] = Counter()
    share = [requests[i::connections] for i in range(connections)]
    started = time.perf_counter()

    async def run(n: int) -> None:
        reader, writer = streams[n]
        interval = connections / rate if rate else 0.0
        # Spread the connections' first sends over one interval: a steady stream, not bursts.
        due = started + interval * n / connections
        for request in share[n]:
            if interval:
                await asyncio.sleep(max(0.0, due - time.perf_counter()))
                due += interval
            writer.write(request)
            codes[await _read_answer(reader)] += 1
        writer.close()

    await asyncio.gather(*(run(n) for n in range(connections)))
    return {"codes": dict(codes), "elapsed": time.perf_counter() - started}


def main() -> None:
    port, path, connections = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
    rate = float(sys.argv[4]) if len(sys.argv) > 4 else None
    requests = [r.encode("latin-1") for r in json.loads(Path(path).read_text())]
    print(json.dumps(asyncio.run(blast(port, requests, connections, rate))))


if __name__ == "__main__":
    main()
