"""The shape both of the API's micro-batches share: one flusher task per process, no linger.

Callers enqueue and wait on their own future; the single flusher takes whatever is waiting (up to a cap),
hands it to ``_flush`` as one batch, and repeats until nothing is left, then ends. A lone request goes at
once; under load a batch is whatever arrived during the previous round trip — no timer ever holds a
request back (a 2 ms linger measured 15–20 % slower).
"""

from __future__ import annotations

import asyncio
from typing import Generic, TypeVar

T = TypeVar("T")


class SingleFlusher(Generic[T]):
    def __init__(self, max_batch: int, task_name: str) -> None:
        self._max = max_batch
        self._task_name = task_name
        self._waiting: list[T] = []
        self._task: asyncio.Task[None] | None = None

    def _enqueue(self, item: T) -> None:
        self._waiting.append(item)
        if self._task is None:
            self._task = asyncio.create_task(self._flush_loop(), name=self._task_name)

    async def _flush_loop(self) -> None:
        try:
            while self._waiting:
                batch = self._waiting[: self._max]
                del self._waiting[: self._max]
                await self._flush(batch)
        finally:
            self._task = None

    async def _flush(self, batch: list[T]) -> None:
        raise NotImplementedError
