"""Logs that keep tracebacks for faults of the service. A documented error (an undecodable upload, no face…) is
logged once, by the ingress, as one line with the request id and code; this drops its traceback wherever Ray or
Serve would also log it."""

from __future__ import annotations

import logging
import re

from ray.exceptions import RayTaskError

from serve_app.pipeline import errors
from serve_app.pipeline.errors import PortraitError

# Ray's "Unhandled error" line for a stage result nobody read (the later stages of a request an earlier stage
# refused, cancelled) carries only the error's text, so documented errors are recognised there by class name.
DOCUMENTED_NAMES = re.compile(
    r"\b(%s)\b" % "|".join(
        name for name, value in vars(errors).items() if isinstance(value, type) and issubclass(value, PortraitError)
    )
)
LOGGERS = ("ray.serve", "ray._private.worker")


class DocumentedErrorFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if isinstance(error, RayTaskError):
            error = error.cause
        if isinstance(error, PortraitError):
            return False
        message = record.getMessage()
        return not (message.startswith("Unhandled error") and DOCUMENTED_NAMES.search(message))


def log_documented_errors_once() -> None:
    for name in LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, DocumentedErrorFilter) for f in logger.filters):
            logger.addFilter(DocumentedErrorFilter())
