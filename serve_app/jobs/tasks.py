"""``TaskSet``: the background tasks of a job runner or a webhook sender, held until they end (the event loop keeps
only weak references to tasks) and cancelled together when the replica stops."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine


class TaskSet:
    def __init__(self) -> None:
        self._tasks: set[asyncio.Task] = set()

    def __len__(self) -> int:
        return len(self._tasks)

    def start(self, work: Coroutine) -> None:
        task = asyncio.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
