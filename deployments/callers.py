"""Work only for callers who still wait: a batched diffusion stage steps its run for the requests whose callers
are there, and lets the others' candidates leave the batch at the next step.

A caller leaves when its call is cancelled: the client hung up (Serve cancels the ingress's request and the
ingress cancels its stage calls), the request passed its timeout, or the request was cancelled on purpose. Serve
cancels the call's coroutine on the replica (``asyncio.CancelledError``), but a ``@serve.batch`` method runs on for
the batch, so each request brings a ``Caller`` into the batch and the batch looks at it before every step.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import contextmanager

from deployments.metrics import StageMetrics
from deployments.replica import ComputeThread
from serve_app.pipeline.sampling import BatchedRun


class Caller:
    """Whether the caller of one stage call still waits for its result."""

    def __init__(self) -> None:
        self.gone = False


@contextmanager
def waiting_caller() -> Iterator[Caller]:
    """A stage call's ``Caller``, marked gone when the call ends early: cancelled, or closed while streaming."""
    caller = Caller()
    try:
        yield caller
    except BaseException:
        caller.gone = True
        raise


class CallersRun:
    """A pipeline run (``LayoutRun``, ``BlendRun``) for some of a batch's requests, stepped on the replica's compute
    thread while any of their callers waits. ``members[i]`` is the batch index of the run's i-th plan."""

    def __init__(self, run: BatchedRun, members: Sequence[int], callers: Sequence[Caller]) -> None:
        self.run, self.members, self._callers = run, list(members), callers

    async def steps(self, compute: ComputeThread, metrics: StageMetrics) -> AsyncIterator[int]:
        """Run the steps, yielding the number done after each; before each step, the requests whose callers left
        leave the run. Stops early, with ``members`` empty, once every caller has left."""
        while self.run.done < self.run.total and await self.prune(compute):
            done = await compute.run(self.run.step)
            metrics.denoising_step()
            yield done

    async def prune(self, compute: ComputeThread) -> bool:
        """Drop the requests whose callers left; whether any request is left."""
        staying = [position for position, member in enumerate(self.members) if not self._callers[member].gone]
        if len(staying) < len(self.members):
            self.members = [self.members[position] for position in staying]
            if staying:
                await compute.run(self.run.keep, staying)
        return bool(self.members)


def waiting_members(group: Sequence[int], callers: Sequence[Caller]) -> list[int]:
    """The batch indices in ``group`` whose callers still wait: work for the others never starts."""
    return [member for member in group if not callers[member].gone]
