"""The default deployment options a stage class states for itself (``get_deployment_options``); a Serve config's
``deployments:`` entries, by name, override them."""

from __future__ import annotations

from typing import Any


def stage_options(max_ongoing_requests: int, max_replicas: int) -> dict[str, Any]:
    """CPU-safe defaults (no GPU requested); configs/serve.yaml sets the production GPU fractions."""
    return {
        "ray_actor_options": {"num_cpus": 0.25, "num_gpus": 0},
        "max_ongoing_requests": max_ongoing_requests,
        "max_queued_requests": 64,
        "autoscaling_config": {
            "min_replicas": 1,
            "max_replicas": max_replicas,
            "target_ongoing_requests": max(1, max_ongoing_requests // 2),
        },
        "health_check_period_s": 10,
    }
