"""The production manifests: KubeRay RayService/RayJob rendered from serve/config.yaml, and the cluster launcher."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest
import yaml

from cluster.kuberay import render

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("name", sorted(render.MANIFESTS))
def test_committed_manifest_is_what_render_gives(name):
    committed = (REPO / "cluster" / "kuberay" / f"{name}.yaml").read_text()
    assert committed == render.render(name), f"run: python -m cluster.kuberay.render --write ({name}.yaml is stale)"


def test_rayservice_serves_exactly_the_local_applications():
    local = yaml.safe_load((REPO / "serve" / "config.yaml").read_text())
    service = yaml.safe_load(render.render("rayservice"))
    assert service["kind"] == "RayService"
    embedded = yaml.safe_load(service["spec"]["serveConfigV2"])
    assert embedded["applications"] == local["applications"]
    assert embedded["http_options"]["host"] == "0.0.0.0"  # reachable from the Kubernetes Service, not loopback


def test_every_application_import_path_resolves():
    local = yaml.safe_load((REPO / "serve" / "config.yaml").read_text())
    for app in local["applications"]:
        module, _, attr = app["import_path"].partition(":")
        assert callable(getattr(importlib.import_module(module), attr)), app["import_path"]


def test_every_pod_reads_the_configuration_secret():
    for name in render.RAY_MANIFESTS:
        manifest = yaml.safe_load(render.render(name))
        spec = manifest["spec"].get("rayClusterConfig") or manifest["spec"]["rayClusterSpec"]
        groups = [spec["headGroupSpec"], *spec["workerGroupSpecs"]]
        for group in groups:
            for container in group["template"]["spec"]["containers"]:
                assert {"secretRef": {"name": render.CONFIG_SECRET}} in container["envFrom"]
    job = yaml.safe_load(render.render("rayjob-ingest"))
    assert job["spec"]["entrypoint"].startswith("python -m jobs.ingest")


def test_launcher_config_passes_rays_schema():
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = yaml.safe_load((REPO / "cluster" / "launcher" / "aws.yaml").read_text())
    validate_config(prepare_config(config))  # raises jsonschema.ValidationError on a bad field
    assert config["available_node_types"]["gpu_worker"]["min_workers"] == 0


def test_the_service_head_is_probed_on_the_health_routes():
    from serve.openapi import merged

    service = yaml.safe_load(render.render("rayservice"))
    head = service["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    assert head["readinessProbe"]["httpGet"] == {"path": "/v1/readyz", "port": 8000}
    assert head["livenessProbe"]["httpGet"] == {"path": "/v1/healthz", "port": 8000}
    assert {"/v1/readyz", "/v1/healthz"} <= set(merged()["paths"])  # the routes the probes call exist


def test_ray_clusters_require_the_token_and_the_services_never_change_the_schema():
    for name in render.RAY_MANIFESTS:
        manifest = yaml.safe_load(render.render(name))
        spec = manifest["spec"].get("rayClusterConfig") or manifest["spec"]["rayClusterSpec"]
        assert spec["authOptions"] == {"mode": "token"}
        for group in [spec["headGroupSpec"], *spec["workerGroupSpecs"]]:
            for container in group["template"]["spec"]["containers"]:
                assert {"name": "SLUICE_MIGRATE_ON_START", "value": "false"} in container["env"]
                assert not any("value" in e and "SECRET" in e["name"] for e in container["env"])  # secrets: Secrets
    job = yaml.safe_load(render.render("job-migrate"))
    (container,) = job["spec"]["template"]["spec"]["containers"]
    assert container["command"] == ["python", "-m", "jobs.migrate", "--grant", render.SERVICES_DB_ROLE]
    assert container["env"] == [{"name": "SLUICE_MIGRATION_DSN", "valueFrom": {"secretKeyRef": {
        "name": render.MIGRATION_SECRET, "key": "dsn"}}}]


def test_only_serve_is_open_to_everyone_on_the_heads():
    policy = yaml.safe_load(render.render("networkpolicy"))
    assert policy["kind"] == "NetworkPolicy" and policy["spec"]["podSelector"]["matchLabels"] == {"ray.io/node-type": "head"}
    open_rules = [rule for rule in policy["spec"]["ingress"] if "from" not in rule]
    assert open_rules == [{"ports": [{"port": 8000, "protocol": "TCP"}]}]
    (inside,) = [rule for rule in policy["spec"]["ingress"] if "from" in rule]
    assert "ports" not in inside and {"podSelector": {"matchLabels": {"ray.io/is-ray-node": "yes"}}} in inside["from"]


def test_the_launcher_keeps_the_dashboard_on_loopback_with_token_authentication():
    config = yaml.safe_load((REPO / "cluster" / "launcher" / "aws.yaml").read_text())
    head = " ".join(config["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head and "0.0.0.0" not in head
    for commands in (config["head_start_ray_commands"], config["worker_start_ray_commands"]):
        assert any("RAY_AUTH_MODE=token" in c and "ray start" in c for c in commands)
    assert "python3 -m jobs.migrate" in head
