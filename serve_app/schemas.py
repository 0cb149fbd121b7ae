"""Request and result models shared by the CLI and the HTTP API."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, field_validator, model_validator

from serve_app.styles import STYLE_REF_PATTERN

if TYPE_CHECKING:
    from serve_app.pipeline.models import ModelSettings

MAX_CANDIDATES = 8


class PortraitOptions(BaseModel):
    """How to generate; fields left unset take the style's defaults."""

    model_config = ConfigDict(extra="forbid")

    style: str = Field(pattern=STYLE_REF_PATTERN, description="style id, or id@version to pin a version")
    num_candidates: int = Field(4, ge=1, le=MAX_CANDIDATES, description="N: candidates sampled")
    top_k: int = Field(2, ge=1, le=MAX_CANDIDATES, description="K: portraits returned, best first")
    seed: int | None = Field(None, ge=0, lt=2**31, description="seed of the first candidate; candidate i uses seed+i")
    identity_weight: float | None = Field(None, ge=0.0, le=1.0, description="λ; default from the style")
    upscale: int = Field(2, description="super-resolution factor: 1, 2 or 4")
    subject: str = Field("a person", min_length=1, max_length=200, description="fills {subject} in the prompt")
    steps: int | None = Field(None, ge=2, le=150, description="denoising steps; default from the style")
    size: int | None = Field(None, ge=64, le=2048, multiple_of=8, description="generated side before upscaling")

    @model_validator(mode="after")
    def _consistent(self) -> PortraitOptions:
        if self.top_k > self.num_candidates:
            raise ValueError(f"top_k ({self.top_k}) cannot exceed num_candidates ({self.num_candidates})")
        if self.upscale not in (1, 2, 4):
            raise ValueError(f"upscale must be 1, 2 or 4, got {self.upscale}")
        return self


class PortraitImage(BaseModel):
    identity_score: float = Field(description="identity similarity to the reference, 0..1 (dlib ResNet)")
    seed: int
    face_placement: str | None = Field(
        description="'detected': fused onto the face the sampler drew; 'layout_mask': placed in the layout mask"
    )
    rejected: str | None = Field(
        description="null for an accepted portrait; otherwise why it only fills the K: no_face, several_faces, "
        "extreme_pose, or unsafe_content (the safety check flagged it; its pixels are black)"
    )

    @classmethod
    def of(cls, portrait) -> PortraitImage:
        """From a ``serve_app.pipeline.fusion.RankedPortrait``."""
        return cls(
            identity_score=round(portrait.identity_score, 4),
            seed=portrait.seed,
            face_placement=portrait.placement,
            rejected=portrait.rejected,
        )


class PortraitSummary(BaseModel):
    style: str = Field(description="versioned style id used")
    seed: int
    images: list[PortraitImage]
    mask_sources: list[str] = Field(description="per candidate: 'detected' face or style 'prior' mask")
    timings: dict[str, float] = Field(description="milliseconds per stage")


class PortraitAppArgs(BaseModel):
    """Arguments of ``serve_app.app:build_app`` (the ``args`` of an application in a Serve config)."""

    model_config = ConfigDict(extra="forbid", validate_default=True)

    profile: str = Field("tiny", description="model profile")
    styles_dir: str = Field(
        "styles", description="the style library: a local folder (relative to the working dir) or an fsspec URL"
    )
    weights_dir: Path | None = Field(None, description="production weights folder (production profile only)")
    weights_manifest: Path | None = Field(None, description="the weights manifest; default configs/weights.yaml")
    device: str = Field("auto", pattern=r"^(auto|cpu|cuda(:\d+)?)$", description="auto: the GPU when there is one")
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = Field(
        "auto", description="diffusion and image-model precision; auto: float16 on a GPU, float32 on a CPU"
    )
    compile_unet: bool = Field(False, description="torch.compile the UNet; styles then hot-swap into one LoRA slot")
    lora_cache_size: int = Field(4, ge=1, le=64, description="style LoRAs each diffusion replica keeps loaded")
    max_batch_size: int = Field(4, ge=1, le=64, description="requests batched together in a diffusion stage")
    batch_wait_timeout_s: float = Field(0.02, ge=0.0, le=5.0, description="how long a batch waits to fill")
    request_timeout_s: float = Field(120.0, gt=0.0, le=3600.0, description="408 after this long")
    max_in_flight: int = Field(32, ge=1, le=10_000, description="admitted requests before 503 (backpressure)")
    max_image_bytes: int = Field(15 * 1024 * 1024, ge=1024, le=100 * 1024 * 1024, description="upload size limit")
    max_lora_bytes: int = Field(256 * 1024 * 1024, ge=1024, description="style LoRA upload limit")
    max_lora_rank: int = Field(128, ge=1, le=1024, description="highest LoRA rank a style may have")
    torch_threads: int | None = Field(
        None, ge=1, le=256, description="CPU threads for torch per replica; default all cores (Ray would cap a "
        "replica at its num_cpus, a single thread for fractional CPUs)"
    )

    @field_validator("styles_dir")
    @classmethod
    def _absolute_styles(cls, value: str) -> str:
        # Replicas do not share the builder's working directory; URLs (s3://, gs://, memory://…) stay as given.
        return value if "://" in value else str(Path(value).expanduser().resolve())

    @field_validator("weights_dir", "weights_manifest")
    @classmethod
    def _absolute_weights(cls, value: Path | None) -> Path | None:
        return None if value is None else value.expanduser().resolve()

    @field_validator("profile")
    @classmethod
    def _known_profile(cls, value: str) -> str:
        from serve_app.pipeline.models import check_profile

        return check_profile(value)

    @model_validator(mode="after")
    def _production_needs_weights(self) -> PortraitAppArgs:
        if self.profile == "production" and self.weights_dir is None:
            raise ValueError("the production profile needs weights_dir (see `python -m serve_app weights fetch`)")
        return self

    def model_settings(self) -> ModelSettings:
        from serve_app.pipeline.models import ModelSettings

        return ModelSettings(
            profile=self.profile,
            weights_dir=self.weights_dir,
            weights_manifest=self.weights_manifest,
            device=self.device,
            dtype=self.dtype,
            compile_unet=self.compile_unet,
            max_lora_rank=self.max_lora_rank,
        )


class PortraitJSONRequest(PortraitOptions):
    """The JSON body of ``POST /v1/portraits``: the options plus the image as base64."""

    image_base64: str = Field(description="the reference image (JPEG, PNG, WebP, BMP or TIFF), base64-encoded")


class GeneratedPortrait(PortraitImage):
    image_base64: str = Field(description="the portrait as a base64-encoded PNG")


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


class ErrorBody(BaseModel):
    code: str
    message: str


class ErrorResponse(BaseModel):
    error: ErrorBody


class StylePatch(BaseModel):
    """``PATCH /admin/styles/{id}``: the fields given replace the style's overrides; null clears one."""

    model_config = ConfigDict(extra="forbid")

    available_from: AwareDatetime | None = None
    available_until: AwareDatetime | None = None
    default_version: int | None = Field(None, ge=1)


class PublishedStyle(BaseModel):
    id: str
    version: int
    versioned_id: str
    sha256: str
    lora_rank: int
    lora_tensors: int
