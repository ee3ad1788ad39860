"""Dynamic batching: images from concurrent requests gathered into one forward pass.

One worker thread per process owns the model. It takes the first waiting image and whatever else
is queued, up to ``max_batch``. Then, by the ``adaptive`` rule (the default), it waits (at most
``max_wait``) only while more images are on their way than it has taken: queued, or announced
by a request the server has received and is still reading or decoding (:meth:`Batcher.announce`).
A lone request therefore runs at once instead of waiting out the window for company that is not
coming. The ``window`` rule always waits out ``max_wait`` (until ``max_batch``). The batch runs as
one forward pass and each request gets its rows. The queue is bounded: :meth:`Batcher.submit`
raises :class:`QueueFull` instead of letting memory grow. A request whose client went away is
skipped when its turn comes, and answers are only set on futures still waiting, so one cancelled
request never fails the others in its batch.
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
_WAKE = object()  # an announced request withdrew: the worker looks again at what is coming
WAIT_RULES = ("adaptive", "window")


class QueueFull(Exception):
    """More images are waiting than the server holds; the client should retry later."""


@dataclass
class _Item:
    tensor: torch.Tensor  # (C, H, W)
    future: asyncio.Future
    loop: asyncio.AbstractEventLoop


class Batcher:
    def __init__(self, run: Callable[[torch.Tensor], list], max_batch: int, max_wait_s: float, max_queue: int,
                 on_batch: Callable[[int, float], None] | None = None,
                 wait_rule: str = "adaptive") -> None:  # fmt: skip
        if wait_rule not in WAIT_RULES:
            raise ValueError(f"unknown wait rule {wait_rule!r}; valid: {', '.join(WAIT_RULES)}")
        self.run, self.max_batch, self.max_wait_s, self.wait_rule = run, max_batch, max_wait_s, wait_rule
        self.on_batch = on_batch or (lambda size, seconds: None)
        self.max_queue = max_queue
        self._queue: queue.Queue = queue.Queue()
        self._pending = 0  # submitted and not yet run: the queue and the batch being gathered
        self._arriving = 0  # requests announced and not yet submitted (their images still on the way)
        self._lock = threading.Lock()
        # The model's lock: batches and heat maps (hooks on the same module) never overlap.
        self.model_lock = threading.Lock()
        self._thread = threading.Thread(target=self._work, name="densenets-batcher", daemon=True)

    @property
    def depth(self) -> int:
        return self._pending

    @property
    def arriving(self) -> int:
        return self._arriving

    def announce(self) -> None:
        """A request for this batcher has arrived; its images will follow (or :meth:`withdraw`)."""
        with self._lock:
            self._arriving += 1

    def withdraw(self) -> None:
        """An announced request will submit nothing (refused, failed to decode, client gone)."""
        with self._lock:
            self._arriving -= 1
        self._queue.put(_WAKE)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Finish what is queued, then end the worker."""
        self._queue.put(_STOP)
        self._thread.join(timeout)

    async def submit(self, tensors: list[torch.Tensor], announced: bool = False) -> list:
        """The answers for ``tensors``, in order, once the worker has run them. ``announced``: the
        request was announced; it stops counting as arriving (it is submitted, or refused)."""
        loop = asyncio.get_running_loop()
        with self._lock:
            full = self._pending + len(tensors) > self.max_queue
            if not full:
                self._pending += len(tensors)
            if announced:
                self._arriving -= 1
        if full:
            if announced:
                self._queue.put(_WAKE)
            raise QueueFull(f"{self._pending} images waiting (at most {self.max_queue})")
        futures = [loop.create_future() for _ in tensors]
        for tensor, future in zip(tensors, futures, strict=True):
            self._queue.put(_Item(tensor, future, loop))
        return list(await asyncio.gather(*futures))

    def _more_coming(self, taken: int) -> bool:
        """Whether waiting can fill the batch: images queued or requests announced beyond ``taken``."""
        if self.wait_rule == "window":
            return True
        with self._lock:
            return self._pending + self._arriving > taken

    def _work(self) -> None:
        while True:
            first = self._queue.get()
            if first is _WAKE:
                continue
            if first is _STOP:
                return
            items, stop = [first], False
            deadline = time.monotonic() + self.max_wait_s
            while len(items) < self.max_batch:
                try:
                    item = self._queue.get_nowait()  # already queued: never a wait
                except queue.Empty:
                    if not self._more_coming(len(items)):
                        break
                    try:
                        item = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
                    except queue.Empty:
                        break
                if item is _WAKE:
                    continue
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
