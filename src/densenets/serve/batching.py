"""Dynamic batching: images from concurrent requests gathered into one forward pass.

One worker thread per process owns the model. It takes the first waiting image, then waits up
to ``max_wait`` for more, up to ``max_batch``, runs them as one batch and hands each request its
rows. The queue is bounded: :meth:`Batcher.submit` raises :class:`QueueFull` instead of letting
memory grow. A request whose client went away is skipped when its turn comes, and answers are
only set on futures still waiting, so one cancelled request never fails the others in its batch.
"""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

_STOP = object()


class QueueFull(Exception):
    """More images are waiting than the server holds; the client should retry later."""


@dataclass
class _Item:
    tensor: torch.Tensor  # (C, H, W)
    future: asyncio.Future
    loop: asyncio.AbstractEventLoop


class Batcher:
    def __init__(self, run: Callable[[torch.Tensor], list], max_batch: int, max_wait_s: float, max_queue: int,
                 on_batch: Callable[[int, float], None] | None = None) -> None:  # fmt: skip
        self.run, self.max_batch, self.max_wait_s = run, max_batch, max_wait_s
        self.on_batch = on_batch or (lambda size, seconds: None)
        self.max_queue = max_queue
        self._queue: queue.Queue = queue.Queue()
        self._pending = 0  # submitted and not yet run: the queue and the batch being gathered
        self._lock = threading.Lock()
        # The model's lock: batches and heat maps (hooks on the same module) never overlap.
        self.model_lock = threading.Lock()
        self._thread = threading.Thread(target=self._work, name="densenets-batcher", daemon=True)

    @property
    def depth(self) -> int:
        return self._pending

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Finish what is queued, then end the worker."""
        self._queue.put(_STOP)
        self._thread.join(timeout)

    async def submit(self, tensors: list[torch.Tensor]) -> list:
        """The answers for ``tensors``, in order, once the worker has run them."""
        loop = asyncio.get_running_loop()
        with self._lock:
            if self._pending + len(tensors) > self.max_queue:
                raise QueueFull(f"{self._pending} images waiting (at most {self.max_queue})")
            self._pending += len(tensors)
        futures = [loop.create_future() for _ in tensors]
        for tensor, future in zip(tensors, futures, strict=True):
            self._queue.put(_Item(tensor, future, loop))
        return list(await asyncio.gather(*futures))

    def _work(self) -> None:
        while True:
            first = self._queue.get()
            if first is _STOP:
                return
            items, stop = [first], False
            deadline = time.monotonic() + self.max_wait_s
            while len(items) < self.max_batch:
                try:
                    item = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    break
                if item is _STOP:
                    stop = True
                    break
                items.append(item)
            self._run(items)
            if stop:
                return

    def _run(self, items: list[_Item]) -> None:
        live = [item for item in items if not item.future.cancelled()]  # clients gone: nothing to compute
        try:
            if live:
                start = time.perf_counter()
                with self.model_lock:
                    answers = self.run(torch.stack([item.tensor for item in live]))
                self.on_batch(len(live), time.perf_counter() - start)
                for item, answer in zip(live, answers, strict=True):
                    item.loop.call_soon_threadsafe(_settle, item.future, answer, None)
        except Exception as exc:  # the model failed: every request of this batch hears why
            for item in live:
                item.loop.call_soon_threadsafe(_settle, item.future, None, exc)
        finally:
            with self._lock:
                self._pending -= len(items)


def _settle(future: asyncio.Future, answer, error: BaseException | None) -> None:
    if future.done():  # cancelled while the batch ran
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(answer)
