"""Request and result models shared by the CLI and the HTTP API."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator

MAX_CANDIDATES = 8


class PortraitOptions(BaseModel):
    """How to generate; fields left unset take the style's defaults."""

    model_config = ConfigDict(extra="forbid")

    style: str = Field(description="style id, or id@version to pin a version")
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
        description="null for an accepted portrait; otherwise why it only fills the K (no_face, several_faces, …)"
    )


class PortraitSummary(BaseModel):
    style: str = Field(description="versioned style id used")
    seed: int
    images: list[PortraitImage]
    mask_sources: list[str] = Field(description="per candidate: 'detected' face or style 'prior' mask")
    timings: dict[str, float] = Field(description="milliseconds per stage")
