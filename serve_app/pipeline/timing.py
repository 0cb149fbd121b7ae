"""Per-stage wall-clock timings, in milliseconds."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def stopwatch(timings: dict[str, float], stage: str) -> Iterator[None]:
    """Record the block's wall time in milliseconds under ``stage``."""
    start = time.perf_counter()
    yield
    timings[stage] = round((time.perf_counter() - start) * 1000, 1)
