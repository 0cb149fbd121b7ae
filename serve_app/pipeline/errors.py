"""Errors the pipeline and the catalogue raise for what a request or an upload got wrong — never a fault in the
service's code. Each carries a stable machine-readable code and the status the API answers it with; the serving
side's own conditions (overload, timeout, a stage restarting, admin access) are in ``serve_app.api.errors``."""

from __future__ import annotations


class PortraitError(Exception):
    """Base class of the documented errors (4xx, 503): nothing to log beyond one line."""

    code: str = "bad_request"
    http_status: int = 400
    retry_after_s: int | None = None  # sent as Retry-After: the client may retry the same request then
    field: str | None = None  # the request field every error of this kind concerns, if one does

    def __init__(self, message: str, fields: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.fields = fields if fields is not None else ({self.field: message} if self.field else {})

    def to_dict(self) -> dict[str, dict]:
        """The JSON error body; ``fields`` names each field at fault with what is wrong with it (a page shows
        each message next to its control)."""
        body: dict = {"code": self.code, "message": self.message}
        if self.fields:
            body["fields"] = [{"field": name, "message": text} for name, text in self.fields.items()]
        return {"error": body}


class InvalidImageError(PortraitError):
    """The bytes are not a decodable image."""

    field = "image"
    code = "invalid_image"
    http_status = 400


class UnsupportedImageFormatError(PortraitError):
    """A real image, but in a format the service does not accept."""

    field = "image"
    code = "unsupported_image_format"
    http_status = 415


class ImageTooLargeError(PortraitError):
    """Too many bytes or too many pixels."""

    field = "image"
    code = "image_too_large"
    http_status = 413


class ImageTooSmallError(PortraitError):
    """Too few pixels for a face to be analysed."""

    field = "image"
    code = "image_too_small"
    http_status = 422


class NoFaceError(PortraitError):
    """No face could be found in the reference image."""

    field = "image"
    code = "no_face"
    http_status = 422


class SamePersonError(PortraitError):
    """Two references of a group portrait are the same person: each person stands once."""

    code = "same_person"
    http_status = 422


class UnknownStyleError(PortraitError):
    """The requested style does not exist."""

    field = "style"
    code = "unknown_style"
    http_status = 404


class NoPreviewError(PortraitError):
    """The style has no preview image."""

    code = "no_preview"
    http_status = 404


class InvalidParameterError(PortraitError):
    """A generation parameter is out of range or inconsistent."""

    code = "invalid_parameter"
    http_status = 422


class StyleNotAvailableError(PortraitError):
    """The style exists but cannot be used now: scheduled for later (404), expired or retired (410)."""

    field = "style"

    def __init__(self, message: str, status: str) -> None:
        super().__init__(message)
        self.code = f"style_{status}"
        self.http_status = 404 if status == "scheduled" else 410


class StyleIncompatibleError(PortraitError):
    """The style is in the library but its LoRA does not fit this service's base model (e.g. a library written for
    another profile): nothing the client can fix by retrying; another style works."""

    field = "style"
    code = "style_incompatible"
    http_status = 409


class InvalidStyleError(PortraitError):
    """A style upload (manifest or LoRA) that cannot become part of the library."""

    code = "invalid_style"
    http_status = 422


class InvalidLoraError(InvalidStyleError):
    """A style upload whose LoRA file cannot be used."""

    field = "lora"


class StyleStoreUnavailableError(PortraitError):
    """The style library's storage could not be reached: nothing was changed; styles already known keep serving."""

    code = "store_unavailable"
    http_status = 503
    retry_after_s = 10
