"""Admission control at the ingress: at most ``max_in_flight`` requests in progress, the rest refused with 503 at
once. Serve's own queue limits are skipped by calls chained from a replica, so this is the service's backpressure."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from serve_app.errors import OverloadedError


class Admission:
    def __init__(self, max_in_flight: int, report: Callable[[int], None]) -> None:
        """``report`` is told the number in flight after each change (the ingress's gauge)."""
        self.max_in_flight = max_in_flight
        self.in_flight = 0
        self._report = report

    def check(self) -> None:
        """Refuse now if no room is left (before a stream's headers go out)."""
        if self.in_flight >= self.max_in_flight:
            raise OverloadedError(f"{self.in_flight} requests are in progress; retry shortly")

    @contextmanager
    def admitted(self) -> Iterator[None]:
        self.check()
        self._change(+1)
        try:
            yield
        finally:
            self._change(-1)

    def _change(self, delta: int) -> None:
        self.in_flight += delta
        self._report(self.in_flight)
