"""Request and result models shared by the CLI and the HTTP API."""

from __future__ import annotations

from fastapi import UploadFile
from typing import Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator
from pydantic_core import PydanticCustomError

from serve_app.pipeline.request import MAX_PEOPLE
from serve_app.styles.manifest import STYLE_REF_PATTERN, StrictAwareDatetime

MAX_CANDIDATES = 8


class PortraitOptions(BaseModel):
    """How to generate; fields left unset take the style's defaults."""

    model_config = ConfigDict(extra="forbid")

    style: str = Field(pattern=STYLE_REF_PATTERN, description="style id, or id@version to pin a version")
    num_candidates: int = Field(4, ge=1, le=MAX_CANDIDATES, description="N: candidates sampled")
    top_k: int = Field(
        2, ge=1, le=MAX_CANDIDATES, description="K: portraits returned, best first; at most num_candidates (422)"
    )
    seed: int | None = Field(None, ge=0, lt=2**31, description="seed of the first candidate; candidate i uses seed+i")
    identity_weight: float | None = Field(None, ge=0.0, le=1.0, description="λ; default from the style")
    t1: float | None = Field(
        None, gt=0.0, lt=1.0, description="share of the steps composed prompt-only before identity is blended in; "
        "default from the style"
    )
    upscale: int = Field(2, description="super-resolution factor: 1, 2 or 4")
    subject: str = Field("a person", min_length=1, max_length=200, description="fills {subject} in the prompt")
    steps: int | None = Field(None, ge=2, le=150, description="denoising steps; default from the style")
    size: int | None = Field(None, ge=64, le=2048, multiple_of=8, description="generated side before upscaling")
    return_masks: bool = Field(False, description="add each portrait's layout mask (layout_mask_base64)")

    # Field validators rather than one model validator, so that a 422 names the field at fault.
    @field_validator("top_k")
    @classmethod
    def _at_most_candidates(cls, top_k: int, info: ValidationInfo) -> int:
        candidates = info.data.get("num_candidates")
        if candidates is not None and top_k > candidates:
            raise ValueError(f"top_k ({top_k}) cannot exceed num_candidates ({candidates})")
        return top_k

    @field_validator("upscale")
    @classmethod
    def _known_factor(cls, upscale: int) -> int:
        if upscale not in (1, 2, 4):
            raise ValueError(f"upscale must be 1, 2 or 4, got {upscale}")
        return upscale


class PersonInPortrait(BaseModel):
    """One person of a portrait, left to right, as given by the request's images."""

    identity_score: float = Field(
        description="their face's identity similarity to their own reference, 0..1 (0.5 at the judge's "
        "same-person threshold)"
    )
    bleed: float | None = Field(
        description="their face's best identity similarity to any other person's reference (null alone); above "
        "identity_score, the portrait is rejected as identity_swap"
    )
    face_placement: str | None = Field(
        description="'detected': fused onto the face the sampler drew; 'layout_mask': placed in their layout mask"
    )
    face_box: tuple[float, float, float, float] | None = Field(
        description="where their face is in the portrait: [x0, y0, x1, y1] in fractions of its side, a square twice "
        "the span of the face's eyes, nose and mouth corners (null where no face was found)"
    )

    @classmethod
    def of(cls, person, image_side: int) -> PersonInPortrait:
        """From a ``serve_app.pipeline.fusion.PlacedPerson`` in a portrait of ``image_side`` pixels."""
        bleed = None if person.bleed is None else round(person.bleed, 4)
        return cls(identity_score=round(person.identity_score, 4), bleed=bleed, face_placement=person.placement,
                   face_box=person.face_box(image_side))


class PortraitImage(BaseModel):
    identity_score: float = Field(
        description="identity similarity to the reference, 0..1 (0.5 at the judge's same-person threshold); with "
        "several people, the worst person's"
    )
    identity_judge: str = Field(
        description="the face recognizer that gave identity_score, never the model that conditioned on identity "
        "where that is not a recognizer: dlib-resnet-v1 (tiny), arcface-w600k_r50 (production, full-size), "
        "auraface-v1 (commercial; auraface-v1-tiny-random on tiny-commercial)"
    )
    seed: int
    face_placement: str | None = Field(
        description="'detected': fused onto the face the sampler drew; 'layout_mask': placed in the layout mask "
        "(with several people: if any face was)"
    )
    rejected: str | None = Field(
        description="null for an accepted portrait; otherwise why it only fills the K: no_face, several_faces (more "
        "faces than people), extreme_pose, identity_swap (a face is more like another person's reference than its "
        "own), or unsafe_content (the safety check flagged it; its pixels are black)"
    )
    people: list[PersonInPortrait] = Field(description="each person's scores and placement, left to right")

    @classmethod
    def of(cls, portrait) -> PortraitImage:
        """From a ``serve_app.pipeline.fusion.RankedPortrait``."""
        return cls(
            identity_score=round(portrait.identity_score, 4),
            identity_judge=portrait.judge,
            seed=portrait.seed,
            face_placement=portrait.placement,
            rejected=portrait.rejected,
            people=[PersonInPortrait.of(person, portrait.image.shape[0]) for person in portrait.people],
        )


class PortraitSummary(BaseModel):
    style: str = Field(description="versioned style id used")
    seed: int
    images: list[PortraitImage]
    mask_sources: list[str] = Field(description="per candidate: 'detected' face or style 'prior' mask")
    timings: dict[str, float] = Field(description="milliseconds per stage")


class PortraitForm(PortraitOptions):
    """The multipart body of ``POST /v1/portraits``: the options as form fields plus each person's image as a file."""

    image: UploadFile = Field(
        description=f"the reference image (JPEG, PNG, WebP, BMP or TIFF) of one face; repeat the field for a group "
        f"portrait, 1 to {MAX_PEOPLE} people, in the order they should stand, left to right"
    )


class PortraitJSONRequest(PortraitOptions):
    """The JSON body of ``POST /v1/portraits``: the options plus the image as base64 (or a group's images)."""

    image_base64: str | None = Field(
        None, description="the reference image (JPEG, PNG, WebP, BMP or TIFF) of one face, base64-encoded"
    )
    images_base64: list[str] | None = Field(
        None, min_length=1, max_length=MAX_PEOPLE, description=f"instead of image_base64, for a group portrait: 1 to "
        f"{MAX_PEOPLE} reference images, one face each, in the order the people should stand, left to right"
    )

    @model_validator(mode="after")
    def _one_way_to_send_images(self) -> PortraitJSONRequest:
        if (self.image_base64 is None) == (self.images_base64 is None):
            raise PydanticCustomError("images_required", "send either image_base64 or images_base64")
        return self

    def sent_images(self) -> list[tuple[str, str]]:
        """Each image's base64 text, with the field it came in."""
        if self.images_base64 is None:
            return [("image_base64", self.image_base64)]
        return [(f"images_base64[{index}]", text) for index, text in enumerate(self.images_base64)]


class WebhookField(BaseModel):
    """A job's optional webhook: where its outcome is POSTed when it ends."""

    webhook: str | None = Field(
        None, max_length=2048, description="an https URL the job is POSTed to when it ends, signed the Standard "
        "Webhooks way with the service's STUDIO_WEBHOOK_SECRET (webhook-id, webhook-timestamp, webhook-signature); "
        "no loopback, private, link-local or metadata addresses"
    )


class JobForm(PortraitForm, WebhookField):
    """The multipart body of ``POST /v1/jobs``: a portrait request's, plus its webhook."""


class JobJSONRequest(PortraitJSONRequest, WebhookField):
    """The JSON body of ``POST /v1/jobs``: a portrait request's, plus its webhook."""


class GeneratedPortrait(PortraitImage):
    image_base64: str = Field(description="the portrait as a base64-encoded PNG")
    layout_mask_base64: str | None = Field(
        None, description="with return_masks: the soft face-region mask of the layout stage that placed the "
        "identity, a greyscale PNG at the portrait's resolution (white: identity at full weight λ; with several "
        "people, all their masks in one); else null"
    )
    layout_masks_base64: list[str] | None = Field(
        None, description="with return_masks: each person's mask alone, left to right, in the same form; else null"
    )


class PortraitResponse(BaseModel):
    request_id: str
    style: str = Field(description="versioned style id used (id@version)")
    seed: int = Field(description="seed of the first candidate")
    images: list[GeneratedPortrait] = Field(description="K portraits, best identity score first")
    timings: dict[str, float] = Field(description="milliseconds per stage")
    lora_cache: dict[str, str] = Field(description="per diffusion stage: 'hit' if the style was already loaded")


class StyleInfo(BaseModel):
    id: str
    version: int
    versioned_id: str
    title: str
    description: str
    tags: list[str]
    defaults: dict
    preview_url: str | None = Field(description="where the style's preview image is served; null: it has none")


class FieldError(BaseModel):
    field: str = Field(description="the request field at fault: a form field, or a dotted path inside it")
    message: str


class ErrorBody(BaseModel):
    code: str
    message: str
    fields: list[FieldError] | None = Field(None, description="the fields at fault, each with what is wrong")


class ErrorResponse(BaseModel):
    error: ErrorBody


class StylePatch(BaseModel):
    """``PATCH /admin/styles/{id}``: the fields given replace the style's overrides; null clears one."""

    model_config = ConfigDict(extra="forbid")

    available_from: StrictAwareDatetime | None = None
    available_until: StrictAwareDatetime | None = None
    default_version: int | None = Field(None, ge=1)


class StylePreviewRequest(BaseModel):
    """``POST /admin/styles/{id}/preview``: a portrait of the bundled sample face in one version of a style,
    whatever its status."""

    model_config = ConfigDict(extra="forbid")

    version: int | None = Field(None, ge=1, description="the version to preview; default: the style's default")
    seed: int = Field(0, ge=0, lt=2**31)


class PublishedStyle(BaseModel):
    id: str
    version: int
    versioned_id: str
    sha256: str
    lora_rank: int
    lora_tensors: int


class JobProgress(BaseModel):
    stage: str = Field(description="the stage running")
    step: int | None = Field(None, description="the blend sampler's step done, while it runs")
    total: int | None = Field(None, description="the blend sampler's steps")


class WebhookAttempt(BaseModel):
    at: AwareDatetime
    status_code: int | None = Field(description="the receiver's answer; null when none came (see error)")
    error: str | None = Field(description="why the attempt failed without an answer (timeout, refused address…)")


class WebhookDelivery(BaseModel):
    url: str
    state: Literal["pending", "delivered", "failed"] = Field(
        description="pending until the job ends and while retries remain; delivered on a 2xx; failed when the "
        "retries ran out, the receiver answered 410, or its address is not allowed"
    )
    attempts: list[WebhookAttempt]


class JobResponse(BaseModel):
    """An asynchronous portrait job (``POST /v1/jobs``)."""

    id: str
    status: Literal["queued", "running", "succeeded", "failed", "canceled"]
    created_at: AwareDatetime
    started_at: AwareDatetime | None = Field(description="when a replica first took the job")
    finished_at: AwareDatetime | None
    expires_at: AwareDatetime | None = Field(description="when the finished job and its result are deleted (410 after)")
    queue_position: int | None = Field(description="while queued: 1 for the next job to run")
    progress: JobProgress | None = Field(description="while running: the stage, and the sampler's step")
    result: PortraitResponse | None = Field(description="when succeeded: what the synchronous call returns")
    error: ErrorResponse | None = Field(description="when failed or canceled: what the synchronous call would answer")
    webhook: WebhookDelivery | None = Field(description="the job's webhook and its delivery, when it has one")


class JobEnded(BaseModel):
    """What a job's webhook receives when the job ends (the Standard Webhooks payload shape)."""

    type: Literal["job.succeeded", "job.failed", "job.canceled"]
    timestamp: AwareDatetime
    data: JobResponse
