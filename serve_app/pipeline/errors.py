"""Errors the pipeline and the catalogue raise for what a request or an upload got wrong — never a fault in the
service's code. Each carries a stable machine-readable code and the status the API answers it with; the serving
side's own conditions (overload, timeout, a stage restarting, admin access) are in ``serve_app.api.errors``."""

from __future__ import annotations


class PortraitError(Exception):
    """Base class of the documented errors (4xx, 503): nothing to log beyond one line."""

    code: str = "bad_request"
    http_status: int = 400
    retry_after_s: int | None = None  # sent as Retry-After: the client may retry the same request then

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def to_dict(self) -> dict[str, dict[str, str]]:
        return {"error": {"code": self.code, "message": self.message}}


class InvalidImageError(PortraitError):
    """The bytes are not a decodable image."""

    code = "invalid_image"
    http_status = 400


class UnsupportedImageFormatError(PortraitError):
    """A real image, but in a format the service does not accept."""

    code = "unsupported_image_format"
    http_status = 415


class ImageTooLargeError(PortraitError):
    """Too many bytes or too many pixels."""

    code = "image_too_large"
    http_status = 413


class ImageTooSmallError(PortraitError):
    """Too few pixels for a face to be analysed."""

    code = "image_too_small"
    http_status = 422


class NoFaceError(PortraitError):
    """No face could be found in the reference image."""

    code = "no_face"
    http_status = 422


class UnknownStyleError(PortraitError):
    """The requested style does not exist."""

    code = "unknown_style"
    http_status = 404


class InvalidParameterError(PortraitError):
    """A generation parameter is out of range or inconsistent."""

    code = "invalid_parameter"
    http_status = 422


class StyleNotAvailableError(PortraitError):
    """The style exists but cannot be used now: scheduled for later (404), expired or retired (410)."""

    def __init__(self, message: str, status: str) -> None:
        super().__init__(message)
        self.code = f"style_{status}"
        self.http_status = 404 if status == "scheduled" else 410


class StyleIncompatibleError(PortraitError):
    """The style is in the library but its LoRA does not fit this service's base model (e.g. a library written for
    another profile): nothing the client can fix by retrying; another style works."""

    code = "style_incompatible"
    http_status = 409


class InvalidStyleError(PortraitError):
    """A style upload (manifest or LoRA) that cannot become part of the library."""

    code = "invalid_style"
    http_status = 422
