"""Group commit for the ingress: many webhook requests, one journal write and one broker message.

Each request hands its deliveries to ``submit`` and waits. The flusher takes everything waiting
(up to ``max_items``) and writes it (``write``: journal + publish, api/app.py) in a worker
thread; only then are the requests' futures resolved, with their deliveries' ids, so a request
is answered 2xx only after its deliveries are durable, and 503 if the write failed. Up to
``concurrency`` writes run at once; while they are in flight new requests pile up, so batches
grow with load by themselves. When nothing is in flight, a request waits at most
``window_s`` for company.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

Ids = list[int | None]
Write = Callable[[list[dict[str, Any]]], Ids]
Waiting = tuple[list[dict[str, Any]], asyncio.Future[Ids]]


class Batcher:
    def __init__(
        self, write: Write, *, max_items: int, window_s: float, concurrency: int = 4
    ) -> None:
        self._write = write
        self._max_items = max_items
        self._window_s = window_s
        self._waiting: deque[Waiting] = deque()
        self._slots = asyncio.Semaphore(concurrency)
        self._in_flight = 0
        self._flusher: asyncio.Task[None] | None = None
        self._flushes: set[asyncio.Task[None]] = set()  # the loop keeps only weak references
        self._executor = ThreadPoolExecutor(concurrency, thread_name_prefix="enqueue")

    async def submit(self, deliveries: list[dict[str, Any]]) -> Ids:
        """Their ids once ``deliveries`` are durably queued; raise what the write raised."""
        future: asyncio.Future[Ids] = asyncio.get_running_loop().create_future()
        self._waiting.append((deliveries, future))
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush_all())
        return await future

    async def _flush_all(self) -> None:
        while self._waiting:
            if self._window_s and self._in_flight == 0 and len(self._waiting) < self._max_items:
                await asyncio.sleep(self._window_s)
            await self._slots.acquire()
            batch = self._take()
            self._in_flight += 1
            flush = asyncio.create_task(self._flush(batch))
            self._flushes.add(flush)
            flush.add_done_callback(self._flushes.discard)

    def _take(self) -> list[Waiting]:
        batch: list[Waiting] = []
        count = 0
        while self._waiting and (count == 0 or count + len(self._waiting[0][0]) <= self._max_items):
            item = self._waiting.popleft()
            batch.append(item)
            count += len(item[0])
        return batch

    async def _flush(self, batch: list[Waiting]) -> None:
        items = [d for deliveries, _ in batch for d in deliveries]
        try:
            ids = await asyncio.get_running_loop().run_in_executor(
                self._executor, self._write, items
            )
        except Exception as exc:  # every request of the batch hears it
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
        else:
            start = 0
            for deliveries, future in batch:
                if not future.done():
                    future.set_result(ids[start : start + len(deliveries)])
                start += len(deliveries)
        finally:
            self._in_flight -= 1
            self._slots.release()

    def close(self) -> None:
        self._executor.shutdown(wait=True)
