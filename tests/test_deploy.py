"""What the platform team applies beyond one machine (deploy/): the KubeRay RayService serves configs/serve.yaml's
application, only with the style library on object storage, on a GPU worker group whose weights are verified; the
Grafana dashboard shows every metric the code defines; Prometheus scrapes the port Ray's metrics are fixed to."""

from __future__ import annotations

import copy
import json
import re

import yaml
from conftest import REPO
from ray.serve.schema import ServeDeploySchema

from serve_app.app import STAGE_DEPLOYMENTS
from serve_app.ingress import PortraitIngress
from serve_app.settings import PortraitAppArgs

KUBERAY = REPO / "deploy" / "kuberay"


def documents(path) -> list[dict]:
    return list(yaml.safe_load_all(path.read_text()))


def rayservice() -> dict:
    (service,) = documents(KUBERAY / "rayservice.yaml")
    assert (service["apiVersion"], service["kind"]) == ("ray.io/v1", "RayService")
    return service


def test_the_rayservice_serves_configs_serve_yaml_with_styles_jobs_and_results_on_shared_storage():
    served = yaml.safe_load(rayservice()["spec"]["serveConfigV2"])
    ServeDeploySchema.model_validate(served)
    local = yaml.safe_load((REPO / "configs" / "serve.yaml").read_text())
    (application,) = served["applications"]
    styles_url = application["args"]["styles_dir"]
    assert styles_url.startswith("s3://") and application["args"]["job_results"].startswith("s3://")
    assert application["args"]["jobs_store"] == "env:STUDIO_JOBS_STORE"  # a redis:// URL from a Secret (below)
    expected = copy.deepcopy(local["applications"])
    expected[0]["args"].update({key: application["args"][key] for key in ("styles_dir", "jobs_store", "job_results")})
    assert served["applications"] == expected
    assert {key: served[key] for key in ("proxy_location", "http_options")} == {
        key: local[key] for key in ("proxy_location", "http_options")
    }
    assert PortraitAppArgs.model_validate(application["args"]).styles_dir == styles_url  # a URL stays as given
    names = {deployment["name"] for deployment in application["deployments"]}
    assert names == {cls.__name__ for cls in (*STAGE_DEPLOYMENTS, PortraitIngress)}


def test_the_gpu_workers_verify_their_weights_and_every_pod_gets_its_secrets_from_secrets():
    cluster = rayservice()["spec"]["rayClusterConfig"]
    assert cluster["rayVersion"] == "2.60.0"
    head = cluster["headGroupSpec"]["template"]["spec"]
    (workers,) = cluster["workerGroupSpecs"]
    worker = workers["template"]["spec"]
    assert "nvidia.com/gpu" not in head["containers"][0]["resources"]["limits"]
    assert worker["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert cluster["headGroupSpec"]["rayStartParams"]["metrics-export-port"] == "8080"
    (verify,) = worker["initContainers"]
    assert verify["command"][-4:] == ["weights", "verify", "--dir", "/srv/portrait-weights"]
    for pod in (head, worker):
        (container,) = pod["containers"]
        secrets = {env["name"]: env["valueFrom"]["secretKeyRef"]["name"] for env in container["env"]}
        assert secrets["STUDIO_ADMIN_TOKEN"] == "portrait-studio-admin"
        assert secrets["STUDIO_JOBS_STORE"] == "portrait-studio-jobs"
        assert secrets["STUDIO_WEBHOOK_SECRET"] == "portrait-studio-webhooks"
        assert {"name": "weights", "mountPath": "/srv/portrait-weights", "readOnly": True} in container["volumeMounts"]


def test_the_weights_job_fetches_into_the_volume_the_workers_mount():
    claim, job = documents(KUBERAY / "weights.yaml")
    assert (claim["kind"], job["kind"]) == ("PersistentVolumeClaim", "Job")
    (fetch,) = job["spec"]["template"]["spec"]["containers"]
    assert fetch["command"][-4:] == ["weights", "fetch", "--dir", "/srv/portrait-weights"]
    worker_volumes = rayservice()["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]["template"]["spec"]["volumes"]
    assert worker_volumes[0]["persistentVolumeClaim"]["claimName"] == claim["metadata"]["name"]


def metric_names() -> set[str]:
    """Every metric the code defines (deployments/metrics.py)."""
    source = "\n".join(path.read_text() for path in (REPO / "deployments").glob("*.py"))
    return set(re.findall(r'metrics\.(?:Histogram|Counter|Gauge)\(\s*"(portrait_\w+)"', source))


def test_the_dashboard_has_a_panel_for_every_portrait_metric_beside_serves_own():
    dashboard = json.loads((REPO / "deploy" / "grafana" / "portrait-studio.json").read_text())
    queries = [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]
    names = metric_names()
    assert len(names) == 11
    for name in names:  # as Prometheus sees it: ray_ prefix, a counter's _total, a histogram's series
        assert any(re.search(rf"\bray_{name}(_total|_bucket|_sum|_count)?\b", query) for query in queries), name
    serve_metrics = {"ray_serve_num_http_requests_total", "ray_serve_http_request_latency_ms_bucket",
                     "ray_serve_deployment_replica_healthy"}
    assert all(any(metric in query for query in queries) for metric in serve_metrics)


def test_prometheus_scrapes_the_metrics_port_the_local_run_and_the_cluster_fix():
    scrape = yaml.safe_load((REPO / "deploy" / "prometheus.yml").read_text())
    (target,) = scrape["scrape_configs"][0]["static_configs"][0]["targets"]
    port = target.rsplit(":", 1)[1]
    assert port == rayservice()["spec"]["rayClusterConfig"]["headGroupSpec"]["rayStartParams"]["metrics-export-port"]
    assert f"default={port}" in (REPO / "scripts" / "serve_run.py").read_text()
