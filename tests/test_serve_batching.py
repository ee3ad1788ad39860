"""The batcher's waiting rule (issue 28): a lone request runs at once; a batch waits only while
more images are on their way. Waits are counted, not timed."""

from __future__ import annotations

import asyncio
import queue

import torch

from densenets.serve.batching import Batcher

HOUR = 3600.0


class CountingQueue(queue.Queue):
    """A queue that records every wait with a timeout; ``window_elapses`` makes such a wait end at
    once as if the window had run out (so the old rule answers too, having waited)."""

    def __init__(self, window_elapses: bool) -> None:
        super().__init__()
        self.window_elapses, self.timed_waits = window_elapses, []

    def get(self, block=True, timeout=None):
        if block and timeout is not None and timeout > 0:
            self.timed_waits.append(timeout)
            if self.window_elapses and self.empty():
                raise queue.Empty
        return super().get(block, timeout)


def batcher(window_elapses: bool, wait_rule: str = "adaptive") -> tuple[Batcher, list[int]]:
    sizes = []
    rule = {} if wait_rule == "adaptive" else {"wait_rule": wait_rule}  # the default
    b = Batcher(lambda x: [float(v) for v in x.flatten(1).sum(1)], max_batch=16, max_wait_s=HOUR, max_queue=64,
                on_batch=lambda size, seconds: sizes.append(size), **rule)  # fmt: skip
    b._queue = CountingQueue(window_elapses)
    b.start()
    return b, sizes


def test_a_lone_request_is_answered_without_waiting_the_window():
    b, sizes = batcher(window_elapses=True)
    answer = asyncio.run(b.submit([torch.ones(1, 2, 2)]))
    b.stop()
    assert answer == [4.0] and sizes == [1]
    assert b._queue.timed_waits == [], "a lone request waited out the batching window"


def test_images_already_queued_join_the_batch_without_a_wait():
    b, sizes = batcher(window_elapses=True)
    answer = asyncio.run(b.submit([torch.ones(1, 2, 2), 2 * torch.ones(1, 2, 2), torch.zeros(1, 2, 2)]))
    b.stop()
    assert answer == [4.0, 8.0, 0.0] and sum(sizes) == 3
    assert b._queue.timed_waits == []


def test_the_batch_waits_for_an_announced_request_and_runs_it_with_the_first():
    b, sizes = batcher(window_elapses=False)  # a real hour-long window: only the rule ends the wait

    async def two_requests():
        b.announce()  # the second request is being read
        first = asyncio.ensure_future(b.submit([torch.ones(1, 2, 2)]))
        while not b._queue.timed_waits:  # the worker took the first image and waits for the second
            await asyncio.sleep(0.01)
        second = await b.submit([torch.zeros(1, 2, 2)], announced=True)
        return await first, second

    assert asyncio.run(two_requests()) == ([4.0], [0.0])
    b.stop()
    assert sizes == [2] and b.arriving == 0


def test_a_withdrawn_request_ends_the_wait():
    b, sizes = batcher(window_elapses=False)

    async def announced_then_refused():
        b.announce()
        first = asyncio.ensure_future(b.submit([torch.ones(1, 2, 2)]))
        while not b._queue.timed_waits:
            await asyncio.sleep(0.01)
        b.withdraw()  # the second request failed to decode: nothing more is coming
        return await first

    assert asyncio.run(announced_then_refused()) == [4.0]
    b.stop()
    assert sizes == [1] and b.arriving == 0


def test_the_window_rule_still_waits_out_the_window():
    b, sizes = batcher(window_elapses=True, wait_rule="window")
    assert asyncio.run(b.submit([torch.ones(1, 2, 2)])) == [4.0]
    b.stop()
    assert sizes == [1] and len(b._queue.timed_waits) == 1
