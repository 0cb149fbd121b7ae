"""Per-stage autoscaling, shown working on this machine with real Ray Serve autoscaling.

``configs/serve.local.yaml``'s application, deployed as ``serve run`` deploys a config, with one change: the blend
sampler at ``min_replicas: 1, max_replicas: 2`` and a target of one ongoing request per replica. Eight clients
that keep asking for portraits scale it to 2 replicas, as Serve's status API reports, with every request answered
200 meanwhile; once they stop, it goes back to 1. The other stages keep their single replica.

It runs as its own application (``autoscaling`` at ``/autoscaling``) beside the session's ``portraits`` app, which
other tests rely on, and is deleted afterwards. The figures (seconds to scale up and down, requests) are printed as
a JSON line.
"""

from __future__ import annotations

import json
import shutil
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import yaml
from ray import serve
from ray.serve.context import _get_global_client
from ray.serve.schema import ServeDeploySchema

from reliability_kit import STAGES, Answer, post_portrait, wait_until

REPO = Path(__file__).resolve().parents[2]
APP, PREFIX, STAGE = "autoscaling", "/autoscaling", "BlendSampler"
CLIENTS = 8
AUTOSCALING = {
    "min_replicas": 1,
    "max_replicas": 2,
    "target_ongoing_requests": 1,
    "upscale_delay_s": 0,
    "downscale_delay_s": 5,
    "look_back_period_s": 2,
    # Deprecated in Ray 2.60 but still how often handles push their load to the controller (else every 10 s).
    "metrics_interval_s": 0.5,
}


def local_config_with_autoscaled_stage(folder: Path) -> ServeDeploySchema:
    """The local config's application with its styles and jobs in ``folder``."""
    config = yaml.safe_load((REPO / "configs" / "serve.local.yaml").read_text())
    (application,) = config["applications"]
    application.update(name=APP, route_prefix=PREFIX)
    application["args"].update(styles_dir=str(folder / "styles"), jobs_store=f"sqlite:///{folder / 'jobs.sqlite3'}")
    for entry in application["deployments"]:
        if entry["name"] == STAGE:
            entry["autoscaling_config"] = AUTOSCALING
    return ServeDeploySchema(applications=[application])


def replica_states(deployment: str) -> dict[str, int]:
    """The replicas of ``deployment`` in the autoscaled app by state, as ``serve.status()`` reports them."""
    application = serve.status().applications.get(APP)
    if application is None or deployment not in application.deployments:
        return {}
    return {state: count for state, count in application.deployments[deployment].replica_states.items() if count}


def app_running() -> bool:
    application = serve.status().applications.get(APP)
    return application is not None and application.status == "RUNNING"


@pytest.fixture
def autoscaled_url(serve_url: str, styles_dir: Path, tmp_path: Path) -> Iterator[str]:
    shutil.copytree(styles_dir, tmp_path / "styles")
    _get_global_client().deploy_apps(local_config_with_autoscaled_stage(tmp_path))
    try:
        wait_until(app_running, 240)
        yield f"{serve_url}{PREFIX}"
    finally:
        serve.delete(APP)


def test_a_burst_scales_the_blend_sampler_to_two_replicas_and_back_to_one(autoscaled_url, sample_face, capsys):
    assert {stage: replica_states(stage) for stage in STAGES} == {stage: {"RUNNING": 1} for stage in STAGES}
    answers: list[Answer] = []
    burst_over = threading.Event()

    def keep_asking(client: int) -> None:
        while not burst_over.is_set():
            answers.append(post_portrait(autoscaled_url, sample_face, {"style": "film-noir", "seed": str(client),
                                                                       "steps": "12"}))

    with ThreadPoolExecutor(CLIENTS) as pool:
        clients = [pool.submit(keep_asking, client) for client in range(CLIENTS)]
        try:
            decided_in = wait_until(lambda: sum(replica_states(STAGE).values()) == 2, 120, every_s=0.2)
            scaled_up_in = decided_in + wait_until(lambda: replica_states(STAGE) == {"RUNNING": 2}, 120)
        finally:
            burst_over.set()
        for client in clients:
            client.result()
    scaled_down_in = wait_until(lambda: replica_states(STAGE) == {"RUNNING": 1}, 180)

    assert answers and [answer.status for answer in answers] == [200] * len(answers)
    assert {stage: replica_states(stage) for stage in STAGES if stage != STAGE} == {
        stage: {"RUNNING": 1} for stage in STAGES if stage != STAGE}
    with capsys.disabled():
        print("\n" + json.dumps({"autoscaling": {"stage": STAGE, "clients": CLIENTS, "requests": len(answers),
                                                 "second_replica_decided_in_s": round(decided_in, 1),
                                                 "scaled_up_in_s": round(scaled_up_in, 1),
                                                 "scaled_down_in_s": round(scaled_down_in, 1)}}))
