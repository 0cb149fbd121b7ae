"""The replicas' log filter: documented errors lose their tracebacks (the ingress logs them as one line); faults of
the service keep theirs."""

from __future__ import annotations

import logging

from ray.exceptions import RayTaskError

from deployments.logs import DocumentedErrorFilter
from serve_app.pipeline.errors import NoFaceError


def record(message: str, error: BaseException | None = None) -> logging.LogRecord:
    exc_info = (type(error), error, None) if error else None
    return logging.LogRecord("ray.serve", logging.ERROR, __file__, 1, message, None, exc_info)


def test_documented_errors_are_dropped_and_faults_kept():
    keep = DocumentedErrorFilter().filter
    assert not keep(record("Request failed.", NoFaceError("no face")))
    assert not keep(record("Request failed.", RayTaskError("__call__", "Traceback…", NoFaceError("no face"))))
    unread = "Unhandled error (suppress with 'RAY_IGNORE_UNHANDLED_ERRORS=1'): ray::ServeReplica… NoFaceError: no face"
    assert not keep(record(unread))
    assert keep(record("Request failed.", ValueError("a bug")))
    assert keep(record(unread.replace("NoFaceError", "ValueError")))
    assert keep(record("Finished initializing replica."))
