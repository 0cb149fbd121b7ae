"""What every stage replica shares: one compute thread with the right number of torch threads."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import torch

from serve_app.settings import PortraitAppArgs

T = TypeVar("T")


class ComputeThread:
    """Runs a replica's model work off the event loop, on ONE thread whose torch thread count is set there.

    Ray sets OMP_NUM_THREADS to an actor's num_cpus (1 for a fraction), and ``torch.set_num_threads`` holds
    only for the thread that calls it, so work sent to a fresh thread pool would run single-threaded; one
    long-lived thread also keeps a single OpenMP team instead of one per pool thread.
    """

    def __init__(self, args: PortraitAppArgs) -> None:
        threads = args.torch_threads or os.cpu_count() or 1
        self._executor = ThreadPoolExecutor(max_workers=1, initializer=torch.set_num_threads, initargs=(threads,))

    async def run(self, function: Callable[..., T], *args) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, function, *args)
