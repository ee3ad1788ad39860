"""Where uploads are decoded and preprocessed: one dedicated thread per process, not a pool per request.

Decoding (PIL) and the transform (PIL resize, then torch's ``ToTensor``/``Normalize``) used to run
in Starlette's shared thread pool (up to 40 threads): at concurrency 16 on the 2-core bench machine
the server ran about 16 of them at once, each with its own OpenMP team for the torch steps (47
threads alive against 21 at concurrency 4), all competing for the cores the batch's forward pass
was running on. One thread decodes the requests one after another instead: at most one core's worth
of preprocessing beside the forward pass, and no OpenMP team per request. Decoding an image costs
about a millisecond (a 224 px PNG, DenseNet-121's transform), a forward pass tens of milliseconds
per image, so one thread keeps ahead of the batcher.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

THREAD_NAME = "densenets-decode"


class Decoder:
    """``await decoder.run(fn, *args)``: ``fn(*args)`` on the decoding thread, in arrival order."""

    def __init__(self) -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=THREAD_NAME)

    async def run(self, fn: Callable, *args):
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    def stop(self) -> None:
        """Let what was submitted finish, then end the thread."""
        self._pool.shutdown(wait=True)
