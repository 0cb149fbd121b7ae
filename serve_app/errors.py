"""The serving side's documented errors — overload, a request over the cost ceiling, timeout, a stage restarting,
admin access, bodies that are not a portrait request — and how a Ray or Serve exception maps to one."""

from __future__ import annotations

from ray.exceptions import NodeDiedError, ObjectLostError, RayActorError, RayTaskError, WorkerCrashedError
from ray.serve.exceptions import (
    BackPressureError,
    DeploymentUnavailableError,
    RayServeException,
    ReplicaUnavailableError,
)

from serve_app.pipeline.errors import PortraitError

# A stage replica that died or cannot be reached (Serve restarts it), or an object it owned that died with it.
STAGE_UNAVAILABLE = (
    RayActorError, ObjectLostError, WorkerCrashedError, NodeDiedError, DeploymentUnavailableError,
    ReplicaUnavailableError,
)


class MalformedBodyError(PortraitError):
    """A multipart body that cannot be parsed (no boundary, broken parts, more than one file)."""

    code = "malformed_body"
    http_status = 400


class UnsupportedMediaTypeError(PortraitError):
    """The request body is neither multipart form data nor JSON."""

    code = "unsupported_media_type"
    http_status = 415


class RequestTimeoutError(PortraitError):
    code = "timeout"
    http_status = 408


class RequestTooCostlyError(PortraitError):
    """A request whose estimated work is over the service's per-request ceiling: lower the fields named."""

    code = "request_too_costly"
    http_status = 422


class OverloadedError(PortraitError):
    """Backpressure: the service is at capacity; retry later."""

    code = "overloaded"
    http_status = 503
    retry_after_s = 2


class JobQueueFullError(PortraitError):
    """``max_queued_jobs`` jobs are waiting: submit again later."""

    code = "queue_full"
    http_status = 503
    retry_after_s = 5


class JobNotFoundError(PortraitError):
    code = "job_not_found"
    http_status = 404


class JobExpiredError(PortraitError):
    """The job finished longer ago than the service keeps jobs; it and its result are deleted."""

    code = "job_expired"
    http_status = 410


class JobFinishedError(PortraitError):
    """A cancel of a job that already finished."""

    code = "job_finished"
    http_status = 409


class JobCanceledError(PortraitError):
    """The job's outcome when it was canceled (its ``error``)."""

    code = "job_canceled"
    http_status = 409


class IdempotencyKeyReusedError(PortraitError):
    """An ``Idempotency-Key`` sent before with another body."""

    code = "idempotency_key_reused"
    http_status = 422


class StageUnavailableError(PortraitError):
    """A stage replica died or could not be reached while serving the request (Serve restarts it); the same
    request with the same seed can be retried and gives the same result."""

    code = "stage_unavailable"
    http_status = 503
    retry_after_s = 5


class AdminDisabledError(PortraitError):
    code = "admin_disabled"
    http_status = 404


class UnauthorizedError(PortraitError):
    code = "unauthorized"
    http_status = 401


class ForbiddenError(PortraitError):
    code = "forbidden"
    http_status = 403


class InternalError(PortraitError):
    """A fault of the service: a JSON 500, or an in-band error event on a stream."""

    code = "internal_error"
    http_status = 500


def documented_error(exception: BaseException) -> PortraitError | None:
    """The documented error behind an exception, also when a stage raised it (Ray wraps those); None for a
    fault of the service."""
    exception = unwrapped(exception)
    if isinstance(exception, PortraitError):
        return exception
    if isinstance(exception, BackPressureError):
        return OverloadedError("the service is at capacity; retry shortly")
    if isinstance(exception, STAGE_UNAVAILABLE):
        return StageUnavailableError(
            "a stage of the service restarted while serving this request; retry it (the same seed gives the "
            "same portraits)"
        )
    return None


def unwrapped(exception: BaseException) -> BaseException:
    """What went wrong under Ray's and Serve's wrappers: a stage that failed on another stage's result (a task error
    wrapped twice), or Serve's router refusing a call whose argument's replica died (a RayServeException caused by
    the ActorDiedError)."""
    while True:
        if isinstance(exception, RayTaskError):
            exception = exception.cause
        elif isinstance(exception, RayServeException) and isinstance(exception.__cause__, STAGE_UNAVAILABLE):
            exception = exception.__cause__
        else:
            return exception
