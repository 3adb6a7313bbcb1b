"""Micro-batching: concurrent requests are answered by one forward pass.

Each request puts its parsed inputs on a queue and awaits its answers. One worker takes
the first waiting request, gathers more for up to `max_wait_ms` or until `max_rows`
inputs, and runs them as one batch in a thread (the event loop keeps accepting
requests meanwhile). The batch reads the served version once, so every answer in it
comes from, and is tagged with, the same version.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Callable


@dataclass
class _Waiting:
    inputs: list
    done: asyncio.Future = field(default_factory=lambda: asyncio.get_running_loop().create_future())


class MicroBatcher:
    def __init__(self, run: Callable[[list], tuple[str, list]], *, max_rows: int = 64, max_wait_ms: float = 5.0):
        """`run(inputs) -> (version, answers)` answers a whole batch (in a worker thread)."""
        self.run, self.max_rows, self.max_wait = run, max_rows, max_wait_ms / 1000
        self.queue: asyncio.Queue[_Waiting] = asyncio.Queue()
        self.batches = self.rows = 0

    async def answer(self, inputs: list) -> tuple[str, list]:
        waiting = _Waiting(inputs)
        await self.queue.put(waiting)
        return await waiting.done

    async def work(self) -> None:
        """Run forever (cancel to stop): gather a batch, answer it, hand out the answers."""
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self.queue.get()]
            rows, deadline = len(batch[0].inputs), loop.time() + self.max_wait
            while rows < self.max_rows and (left := deadline - loop.time()) > 0:
                try:
                    batch.append(await asyncio.wait_for(self.queue.get(), left))
                except TimeoutError:
                    break
                rows += len(batch[-1].inputs)
            await self._answer(batch)

    async def _answer(self, batch: list[_Waiting]) -> None:
        inputs = [item for waiting in batch for item in waiting.inputs]
        try:
            version, answers = await asyncio.to_thread(self.run, inputs)
        except Exception as exc:
            for waiting in batch:
                if not waiting.done.done():
                    waiting.done.set_exception(exc)
            return
        self.batches, self.rows = self.batches + 1, self.rows + len(inputs)
        start = 0
        for waiting in batch:
            if not waiting.done.done():  # its client may have gone away
                waiting.done.set_result((version, answers[start:start + len(waiting.inputs)]))
            start += len(waiting.inputs)
