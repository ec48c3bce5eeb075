"""Micro-batching: coalesce concurrent requests into one forward pass, run off the event loop.

Requests put their images (n_i, C, H, W) on a queue and await a future. One runner task takes everything queued,
waits at most ``max_wait_ms`` after the oldest request arrived for more to join (never past ``max_batch_size``
images), concatenates them into one (sum n_i, C, H, W) batch, runs ``fn`` on a single worker thread and hands each
request its rows back. While a forward runs, the next batch forms by itself, so under load batches grow without
any waiting; at low load ``max_wait_ms`` bounds the latency added.

The wait is adaptive: it applies only while traffic is concurrent (the previous batch held several requests, or
several are queued already). A lone client (concurrency 1) is never held back waiting for company.

With ``enabled=False`` every request runs its own forward on the same worker thread (the baseline that the
benchmark compares against).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import time
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

import torch


class Sliceable(Protocol):
    def slice(self, start: int, stop: int) -> Sliceable: ...


R = TypeVar("R", bound=Sliceable)


@dataclass
class _Item:
    x: torch.Tensor  # (n, C, H, W)
    future: asyncio.Future
    arrived: float


class MicroBatcher(Generic[R]):
    """``await submit(x)`` -> ``fn(x)``'s result for exactly x's rows, computed in a shared batch.

    Args:
        fn: (N, C, H, W) float tensor -> a result with ``slice(start, stop)`` over the N rows; runs on ``executor``.
        executor: where ``fn`` runs (a single thread: torch never runs on the event loop).
        max_batch_size: most images in one forward (a single larger request still runs, alone).
        max_wait_ms: longest wait, counted from the oldest queued request, for others to join.
        enabled: False runs each request on its own.
        on_batch: called on the event loop after every forward with (images, seconds).
    """

    def __init__(
        self,
        fn: Callable[[torch.Tensor], R],
        executor: Executor,
        max_batch_size: int = 64,
        max_wait_ms: float = 1.0,
        enabled: bool = True,
        on_batch: Callable[[int, float], None] | None = None,
    ) -> None:
        self.fn = fn
        self.executor = executor
        self.max_batch_size = max_batch_size
        self.max_wait = max_wait_ms / 1000.0
        self.enabled = enabled
        self.on_batch = on_batch
        self._queue: collections.deque[_Item] = collections.deque()
        self._queued_images = 0
        self._last_requests = 1  # requests in the previous batch: a sign of concurrent traffic
        self._wakeup: asyncio.Event | None = None
        self._task: asyncio.Task | None = None

    # -- lifecycle -----------------------------------------------------------------------------------------
    def start(self) -> None:
        if self.enabled and self._task is None:
            self._wakeup = asyncio.Event()
            self._task = asyncio.get_running_loop().create_task(self._run(), name="lgm-batcher")

    async def stop(self) -> None:
        """Finish what is queued, then stop the runner."""
        if self._task is None:
            return
        while self._queue:
            await asyncio.sleep(0.001)
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self._task = None

    # -- requests ------------------------------------------------------------------------------------------
    async def submit(self, x: torch.Tensor) -> R:
        loop = asyncio.get_running_loop()
        if not self.enabled:
            t0 = time.perf_counter()
            res = await loop.run_in_executor(self.executor, self.fn, x)
            if self.on_batch:
                self.on_batch(int(x.shape[0]), time.perf_counter() - t0)
            return res
        if self._task is None:
            raise RuntimeError("batcher not started")
        fut = loop.create_future()
        self._queue.append(_Item(x, fut, time.perf_counter()))
        self._queued_images += int(x.shape[0])
        assert self._wakeup is not None
        self._wakeup.set()
        return await fut

    # -- the runner ----------------------------------------------------------------------------------------
    def _take(self) -> list[_Item]:
        """Pop requests, oldest first, up to max_batch_size images (at least one request)."""
        items: list[_Item] = []
        total = 0
        while self._queue:
            n = int(self._queue[0].x.shape[0])
            if items and total + n > self.max_batch_size:
                break
            item = self._queue.popleft()
            self._queued_images -= n
            if item.future.cancelled():  # client went away while queued
                continue
            items.append(item)
            total += n
        return items

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        assert self._wakeup is not None
        while True:
            if not self._queue:
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            if self.max_wait > 0 and (self._last_requests > 1 or len(self._queue) > 1):
                deadline = self._queue[0].arrived + self.max_wait
                while self._queued_images < self.max_batch_size:
                    remaining = deadline - time.perf_counter()
                    if remaining <= 0:
                        break
                    self._wakeup.clear()
                    try:
                        await asyncio.wait_for(self._wakeup.wait(), remaining)
                    except asyncio.TimeoutError:
                        break
            items = self._take()
            if not items:
                continue
            self._last_requests = len(items)
            x = items[0].x if len(items) == 1 else torch.cat([it.x for it in items])  # (sum n_i, C, H, W)
            t0 = time.perf_counter()
            try:
                res = await loop.run_in_executor(self.executor, self.fn, x)
            except Exception as exc:  # noqa: BLE001 - handed to every waiting request
                for it in items:
                    if not it.future.done():
                        it.future.set_exception(exc)
                continue
            if self.on_batch:
                self.on_batch(int(x.shape[0]), time.perf_counter() - t0)
            start = 0
            for it in items:
                stop = start + int(it.x.shape[0])
                if not it.future.done():
                    it.future.set_result(res.slice(start, stop))
                start = stop
