"""What every stage replica shares: one compute thread with the right number of torch threads, and logs that
keep tracebacks for faults of the service."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import torch
from ray.exceptions import RayTaskError

from serve_app.pipeline.errors import PortraitError
from serve_app.schemas import PortraitAppArgs

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


class DocumentedErrorFilter(logging.Filter):
    """Drops Serve's "Request failed." traceback for a documented error a stage raised (an undecodable upload,
    no face…): the ingress logs it once, as one line with the request id and code."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if isinstance(error, RayTaskError):
            error = error.cause
        return not isinstance(error, PortraitError)


def log_documented_errors_once() -> None:
    serve_logger = logging.getLogger("ray.serve")
    if not any(isinstance(f, DocumentedErrorFilter) for f in serve_logger.filters):
        serve_logger.addFilter(DocumentedErrorFilter())
