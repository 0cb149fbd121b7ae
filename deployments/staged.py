"""What travels between stages: a stage's value with the per-stage timings gathered so far, and the job."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Generic, TypeVar

from serve_app.schemas import PortraitOptions

T = TypeVar("T")


@dataclass(frozen=True)
class PortraitJob:
    """One request as every stage sees it: the versioned style, the validated options, the resolved seed."""

    request_id: str
    style: str
    options: PortraitOptions
    seed: int


@dataclass
class Staged(Generic[T]):
    value: T
    timings: dict[str, float] = field(default_factory=dict)


def merged_timings(*inputs: Staged) -> dict[str, float]:
    timings: dict[str, float] = {}
    for staged in inputs:
        timings.update(staged.timings)
    return timings
