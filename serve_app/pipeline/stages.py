"""The five stages by name: the keys of a request's timings, the ``stage`` of progress events and metrics."""

from enum import StrEnum


class Stage(StrEnum):
    PREPROCESS = "preprocess"
    LAYOUT = "layout"
    BLEND = "blend"
    FUSION = "fusion"
    UPSCALE = "upscale"


STAGES: tuple[Stage, ...] = tuple(Stage)
