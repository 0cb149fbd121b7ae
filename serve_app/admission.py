"""Admission control at the ingress, by count and by cost: at most ``max_in_flight`` requests in progress and at
most ``max_cost_in_flight`` of estimated work, the rest refused with 503 at once; a single request over
``max_request_cost`` is refused with 422, naming the fields to lower. Serve's own queue limits are skipped by calls
chained from a replica, so this is the service's backpressure.

A request's cost is its estimated work in units of one denoising step of one 512×512 candidate (both branches
and classifier-free guidance, as the blend sampler runs it): N × steps at the generated size (× (1 + P) / 2 for P
people: the free branch and one identity branch each), plus super-resolution and face restoration of the K
portraits at their output size.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from serve_app.errors import OverloadedError, RequestTooCostlyError
from serve_app.pipeline.request import PortraitRequest

UNIT_SIDE = 512
UPSCALE_UNITS = 1.5
"""Upscaling and restoring one portrait, per upscale factor squared, in units at the generated size. Measured on
an H200 with the full-size models (bench/gpu.py, float16, 512² ×2): 135 ms a portrait against 23 ms per candidate
step, 5.9 units at ×2."""


def request_cost(request: PortraitRequest) -> float:
    """The estimated work of ``request`` in cost units (see the module's docstring)."""
    area = (request.size / UNIT_SIDE) ** 2
    branches = (1 + len(request.face_priors)) / 2  # the identity-free branch and one per person; 1 for one person
    return area * (len(request.seeds) * request.steps * branches + UPSCALE_UNITS * request.top_k * request.upscale**2)


def fields_to_lower(request: PortraitRequest) -> list[str]:
    """The request fields whose value adds to its cost and can still be lowered."""
    lowerable = {
        "num_candidates": len(request.seeds) > 1,
        "steps": request.steps > 2,
        "size": request.size > 64,
        "upscale": request.upscale > 1,
    }
    return [name for name, above_minimum in lowerable.items() if above_minimum]


class Admission:
    def __init__(
        self,
        max_in_flight: int,
        max_cost_in_flight: float,
        max_request_cost: float,
        report: Callable[[int, float], None],
    ) -> None:
        """``report`` is told the requests and the cost in flight after each change (the ingress's gauges)."""
        self.max_in_flight = max_in_flight
        self.max_cost_in_flight = max_cost_in_flight
        self.max_request_cost = max_request_cost
        self.in_flight = 0
        self.cost_in_flight = 0.0
        self._report = report

    def cost(self, request: PortraitRequest) -> float:
        """The request's cost; refused (422) over the per-request ceiling, whatever the load."""
        cost = request_cost(request)
        if cost > self.max_request_cost:
            message = (
                f"this request's estimated work is {cost:.0f} units, over this service's limit of "
                f"{self.max_request_cost:g} per request"
            )
            raise RequestTooCostlyError(
                f"{message}: lower {', '.join(fields_to_lower(request))}",
                {name: f"lower it: {message}" for name in fields_to_lower(request)},
            )
        return cost

    def has_room(self, cost: float = 0.0) -> bool:
        return self.in_flight < self.max_in_flight and self.cost_in_flight + cost <= self.max_cost_in_flight

    def check(self, cost: float = 0.0) -> None:
        """Refuse now if no room is left for a request of ``cost`` (before a stream's headers go out)."""
        if self.has_room(cost):
            return
        if self.in_flight >= self.max_in_flight:
            raise OverloadedError(f"{self.in_flight} requests are in progress; retry shortly")
        raise OverloadedError(
            f"the requests in progress use {self.cost_in_flight:.0f} of {self.max_cost_in_flight:g} units of "
            f"work; this one needs {cost:.0f}; retry shortly"
        )

    @contextmanager
    def admitted(self, cost: float = 0.0) -> Iterator[None]:
        self.check(cost)
        self._change(+1, cost)
        try:
            yield
        finally:
            self._change(-1, -cost)

    def _change(self, requests: int, cost: float) -> None:
        self.in_flight += requests
        self.cost_in_flight += cost
        self._report(self.in_flight, self.cost_in_flight)
