"""Which models a process builds (profile, weights) and how they run (device, precision, compilation): the one
definition of these settings and their validation, shared by the CLI and the service's app args."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

PROFILES = ("tiny", "full-size", "production", "tiny-commercial", "commercial")
COMMERCIAL_PROFILES = ("tiny-commercial", "commercial")  # every model cleared for commercial use
WEIGHTS_PROFILES = ("production", "commercial")  # load a weights folder


class ModelSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)

    profile: str = Field("tiny", description="model profile: " + ", ".join(PROFILES))
    weights_dir: Path | None = Field(None, description="weights folder (production and commercial profiles)")
    weights_manifest: Path | None = Field(
        None, description="the weights manifest; default configs/weights.yaml, weights-commercial.yaml for the "
        "commercial profiles"
    )
    device: str = Field("auto", pattern=r"^(auto|cpu|cuda(:\d+)?)$", description="auto: the GPU when there is one")
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = Field(
        "auto", description="diffusion and image-model precision; auto: float16 on a GPU, float32 on a CPU"
    )
    compile_unet: bool = Field(False, description="torch.compile the UNet; styles then hot-swap into one LoRA slot")
    max_lora_rank: int = Field(128, ge=1, le=1024, description="highest LoRA rank a style may have")

    @field_validator("profile")
    @classmethod
    def _known_profile(cls, value: str) -> str:
        if value not in PROFILES:
            raise ValueError(f"unknown model profile {value!r}; known profiles: {', '.join(PROFILES)}")
        return value

    @field_validator("weights_dir", "weights_manifest")
    @classmethod
    def _absolute(cls, value: Path | None) -> Path | None:
        # Replicas do not share the caller's working directory.
        return None if value is None else value.expanduser().resolve()

    @model_validator(mode="after")
    def _weights_profiles_need_weights(self) -> ModelSettings:
        if self.profile in WEIGHTS_PROFILES and self.weights_dir is None:
            raise ValueError(f"the {self.profile} profile needs weights_dir (see `python -m serve_app weights fetch`)")
        return self

    def model_settings(self) -> ModelSettings:
        """Just these settings (a subclass's other fields dropped): the key of a process's models."""
        return ModelSettings.model_validate(self.model_dump(include=set(ModelSettings.model_fields)))
