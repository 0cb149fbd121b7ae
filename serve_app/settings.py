"""``PortraitAppArgs``: the ``args`` of the application in a Serve config, validated once by the builder and handed
to every deployment. The model settings are inherited from the pipeline's ``ModelSettings`` (their one home)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, NonNegativeFloat, field_validator, model_validator

from serve_app.pipeline.settings import ModelSettings


class PortraitAppArgs(ModelSettings):
    """Arguments of ``serve_app.app:build_app``: the model settings plus how the service runs."""

    styles_dir: str = Field(
        "styles", description="the style library: a local folder (relative to the working dir) or an fsspec URL"
    )
    styles_refresh_s: float = Field(
        0.5, gt=0.0, le=60.0, description="how often each ingress replica looks for changes to the style library (one "
        "listing of its change markers): a change made anywhere is seen everywhere within this plus one refresh"
    )
    styles_max_stale_s: float = Field(
        600.0, gt=0.0, description="while the style library's storage is unreachable, portraits in the styles already "
        "known are served for this long from the last good view; then 503 store_unavailable"
    )
    lora_cache_size: int = Field(4, ge=1, le=64, description="style LoRAs each diffusion replica keeps loaded")
    max_batch_size: int = Field(4, ge=1, le=64, description="requests batched together in a diffusion stage")
    batch_wait_timeout_s: float = Field(0.02, ge=0.0, le=5.0, description="how long a batch waits to fill")
    request_timeout_s: float = Field(120.0, gt=0.0, le=3600.0, description="408 after this long")
    max_in_flight: int = Field(32, ge=1, le=10_000, description="admitted requests before 503 (backpressure)")
    max_cost_in_flight: float = Field(
        4000.0, gt=0.0, description="estimated work admitted at once before 503 (backpressure), in cost units: one "
        "denoising step of one 512×512 candidate (serve_app.admission)"
    )
    max_request_cost: float = Field(
        1000.0, gt=0.0, description="estimated work of one request above which it is refused with 422, in cost units"
    )
    jobs_store: str = Field(
        "sqlite:///jobs/jobs.sqlite3",
        description="where asynchronous jobs are kept: sqlite:///<file> (relative to the working dir: one machine) "
        "or redis://host:port/db (several ingress replicas on several nodes); env:NAME reads the URL from the "
        "environment variable NAME (a password from a Secret)",
    )
    job_retention_s: float = Field(3600.0, gt=0.0, description="a finished job and its result are deleted after this")
    job_results: str = Field(
        "jobs/results", description="where finished jobs' portraits are kept until their retention ends: a local "
        "folder (relative to the working dir) or an fsspec URL (s3://bucket/prefix)"
    )
    max_queued_jobs: int = Field(1000, ge=1, description="queued jobs before submits are refused with 503 queue_full")
    job_lease_s: float = Field(
        30.0, ge=1.0, le=600.0, description="how long a job stays with an ingress replica that stops renewing it (it "
        "died) before another takes it over"
    )
    webhook_allowed_hosts: list[str] = Field(
        [], description="webhook hosts (names or addresses) let through the SSRF guard: they may be loopback, "
        "private or link-local, and plain http"
    )
    webhook_retries_s: list[NonNegativeFloat] = Field(
        [5.0, 30.0, 120.0, 600.0, 1800.0], max_length=20, description="seconds before each retry of a webhook "
        "delivery that failed (its length bounds the retries)"
    )
    webhook_timeout_s: float = Field(15.0, gt=0.0, le=60.0, description="a webhook attempt fails after this long")
    max_image_bytes: int = Field(15 * 1024 * 1024, ge=1024, le=100 * 1024 * 1024, description="upload size limit")
    max_lora_bytes: int = Field(256 * 1024 * 1024, ge=1024, description="style LoRA upload limit")
    torch_threads: int | None = Field(
        None, ge=1, le=256, description="CPU threads for torch per replica; default all cores (Ray would cap a "
        "replica at its num_cpus, a single thread for fractional CPUs)"
    )

    @model_validator(mode="after")
    def _heaviest_request_fits(self) -> PortraitAppArgs:
        if self.max_request_cost > self.max_cost_in_flight:
            raise ValueError(
                f"max_request_cost ({self.max_request_cost:g}) is over max_cost_in_flight "
                f"({self.max_cost_in_flight:g}): the heaviest admissible request could never be admitted"
            )
        return self

    @field_validator("jobs_store")
    @classmethod
    def _absolute_sqlite_file(cls, value: str) -> str:
        # As styles_dir: replicas do not share the builder's working directory.
        path = value.removeprefix("sqlite:///")
        return value if path == value or path.startswith("/") else f"sqlite:///{Path(path).expanduser().resolve()}"

    @field_validator("styles_dir", "job_results")
    @classmethod
    def _absolute_styles(cls, value: str) -> str:
        # Replicas do not share the builder's working directory; URLs (s3://, gs://, memory://…) stay as given.
        return value if "://" in value else str(Path(value).expanduser().resolve())
