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
    for name in render.MANIFESTS:
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
