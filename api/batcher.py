"""Group commit for the ingress: many webhook requests, one broker message.

Each request hands its deliveries to ``submit`` and waits. A single flusher takes everything
waiting (up to ``max_items``), publishes it as one ``ingest_batch`` task in a worker thread, and
only then resolves the requests' futures: a request is answered 2xx only after the broker has
accepted the message that carries it, and answered 503 if the publish failed. Under load the
batch grows by itself (requests accumulate while the previous publish is in flight); when idle a
request waits at most ``window_s`` for company.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

Publish = Callable[[list[dict[str, Any]]], None]


class Batcher:
    def __init__(self, publish: Publish, *, max_items: int, window_s: float) -> None:
        self._publish = publish
        self._max_items = max_items
        self._window_s = window_s
        self._waiting: deque[tuple[list[dict[str, Any]], asyncio.Future[None]]] = deque()
        self._flusher: asyncio.Task[None] | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="enqueue")

    async def submit(self, deliveries: list[dict[str, Any]]) -> None:
        """Return once ``deliveries`` are durably queued; raise what the publish raised."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting.append((deliveries, future))
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush_all())
        await future

    async def _flush_all(self) -> None:
        loop = asyncio.get_running_loop()
        while self._waiting:
            if self._window_s and sum(len(d) for d, _ in self._waiting) < self._max_items:
                await asyncio.sleep(self._window_s)
            batch, count = [], 0
            while self._waiting and (
                count == 0 or count + len(self._waiting[0][0]) <= self._max_items
            ):
                item = self._waiting.popleft()
                batch.append(item)
                count += len(item[0])
            items = [d for deliveries, _ in batch for d in deliveries]
            try:
                await loop.run_in_executor(self._executor, self._publish, items)
            except Exception as exc:  # the broker said no: every request of the batch hears it
                for _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
            else:
                for _, future in batch:
                    if not future.done():
                        future.set_result(None)

    def close(self) -> None:
        self._executor.shutdown(wait=True)
