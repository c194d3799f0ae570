"""Render the KubeRay manifests (``RayService`` for the Serve applications, ``RayJob`` for ingest) from one source.

The Serve applications are defined once, in ``serve/config.yaml`` (what ``make up`` deploys); the ``RayService``
embeds that file's ``applications`` as its ``serveConfigV2`` so production and the local stack cannot drift apart.
``tests/cluster/test_kuberay.py`` checks that the committed manifests equal what this module renders.

Usage (from the repository root)::

    python -m cluster.kuberay.render --write          # rewrite cluster/kuberay/*.yaml
    python -m cluster.kuberay.render rayservice       # print one manifest

Configuration reaches the pods as environment variables from the Kubernetes Secret ``sluice-config`` (every
``SLUICE_*`` of README "Configuration"; create it with ``kubectl create secret generic sluice-config
--from-env-file=...``); secrets come from Secrets only. ``job-migrate`` applies the catalog's migrations as the
schema's owner (``sluice-migration``), ``networkpolicy`` keeps the heads' control ports inside the cluster (README,
"Security"). Field names follow the KubeRay ``ray.io/v1`` CRDs (RayService: ``serveConfigV2``,
``rayClusterConfig``; RayJob: ``entrypoint``, ``shutdownAfterJobFinishes``; https://docs.ray.io/en/latest/cluster/
kubernetes/getting-started/rayservice-quick-start.html and .../rayjob-quick-start.html).

This module imports only the standard library and PyYAML (a Ray dependency).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
SERVE_CONFIG = REPO_ROOT / "serve" / "config.yaml"
OUT_DIR = Path(__file__).resolve().parent

#: Ray version of the images; keep it equal to the Ray the project is tested with.
RAY_VERSION = "2.60.0"
#: The project's image: rayproject/ray with ``pip install .`` of this repository (build it from the repo root).
IMAGE = "ghcr.io/sluice/sluice:latest"
CONFIG_SECRET = "sluice-config"
#: The Secret with the schema owner's DSN (key ``dsn``), read only by the migration Job.
MIGRATION_SECRET = "sluice-migration"
#: The database role the services log in as (``SLUICE_POSTGRES_DSN`` in ``sluice-config``): it may read and write
#: the tables, not change them (``python -m jobs.migrate --grant``).
SERVICES_DB_ROLE = "sluice_app"
#: The namespace of the KubeRay operator, which reaches the head's dashboard (jobs, Serve status).
OPERATOR_NAMESPACE = "kuberay-operator"

HEADER = "# Rendered by `python -m cluster.kuberay.render --write` from serve/config.yaml; do not edit by hand.\n"


class _Dumper(yaml.SafeDumper):
    """Writes multi-line strings (the embedded Serve config) as ``|`` blocks, readable in review."""


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)


def _container(name: str, cpu: str, memory: str, gpus: int = 0, ports: list[dict] | None = None) -> dict[str, Any]:
    limits: dict[str, Any] = {"cpu": cpu, "memory": memory}
    if gpus:
        limits["nvidia.com/gpu"] = gpus
    container: dict[str, Any] = {
        "name": name,
        "image": IMAGE,
        "envFrom": [{"secretRef": {"name": CONFIG_SECRET}}],
        # The services never change the schema: the migration Job does, as its owner, before they start.
        "env": [{"name": "SLUICE_MIGRATE_ON_START", "value": "false"}],
        "resources": {"limits": limits, "requests": dict(limits)},
    }
    if ports:
        container["ports"] = ports
    return container


def ray_cluster_spec() -> dict[str, Any]:
    """The ``RayCluster`` spec shared by the RayService and the RayJob.

    A head without work (``num-cpus: 0``: it runs the GCS, the dashboard and the Serve controller), a CPU worker
    group (prepare stage, Serve replicas) and a GPU worker group (the embed actor pools), both autoscaled. Ray's
    token authentication is on (``authOptions``, KubeRay 1.5.1 and later: the operator makes the token's Secret
    and gives every container ``RAY_AUTH_MODE=token`` and ``RAY_AUTH_TOKEN``), so the dashboard and the job API,
    which :func:`network_policy` keeps inside the cluster anyway, refuse a caller without the token.

    Returns:
        A dict in the ``rayClusterConfig`` / ``rayClusterSpec`` shape of KubeRay ``ray.io/v1``.
    """
    head_ports = [
        {"containerPort": 6379, "name": "gcs"},
        {"containerPort": 8265, "name": "dashboard"},
        {"containerPort": 10001, "name": "client"},
        {"containerPort": 8000, "name": "serve"},
    ]
    return {
        "rayVersion": RAY_VERSION,
        "enableInTreeAutoscaling": True,
        "authOptions": {"mode": "token"},
        "headGroupSpec": {
            "rayStartParams": {"dashboard-host": "0.0.0.0", "num-cpus": "0"},
            "template": {"spec": {"containers": [_container("ray-head", "4", "16Gi", ports=head_ports)]}},
        },
        "workerGroupSpecs": [
            {
                "groupName": "cpu",
                "replicas": 2,
                "minReplicas": 1,
                "maxReplicas": 16,
                "rayStartParams": {},
                "template": {"spec": {"containers": [_container("ray-worker", "8", "32Gi")]}},
            },
            {
                "groupName": "gpu",
                "replicas": 1,
                "minReplicas": 0,
                "maxReplicas": 8,
                "rayStartParams": {},
                "template": {"spec": {"containers": [_container("ray-worker", "8", "48Gi", gpus=1)]}},
            },
        ],
    }


def serve_applications(config_path: Path = SERVE_CONFIG) -> dict[str, Any]:
    """The Serve config of ``serve/config.yaml`` with its HTTP proxies on every pod, listening on the pod network.

    Raises:
        FileNotFoundError: the config file is missing. ValueError: it has no ``applications``.
    """
    config = yaml.safe_load(config_path.read_text())
    if not isinstance(config, dict) or not config.get("applications"):
        raise ValueError(f"{config_path} has no 'applications' list")
    config = dict(config)
    # Every pod's proxy answers (the Kubernetes Service spreads requests); the local stack has a head only.
    config["proxy_location"] = "EveryNode"
    config["http_options"] = {**(config.get("http_options") or {}), "host": "0.0.0.0"}
    return config


def serve_probes() -> dict[str, Any]:
    """The head's probes on Sluice's own health routes (README, "Health checks"), replacing KubeRay's defaults.

    Readiness is ``/v1/readyz`` (PostgreSQL, Redis, S3 and the vector store answer), so the Kubernetes Service sends
    no request to a pod that could not serve it. Liveness is ``/v1/healthz``, which touches no dependency, with a
    long grace: restarting the head loses the cluster, so only a Serve that stopped answering at all restarts it.
    """
    def probe(path: str, **timing: int) -> dict[str, Any]:
        return {"httpGet": {"path": path, "port": 8000}, "timeoutSeconds": 5, **timing}

    return {
        "readinessProbe": probe("/v1/readyz", initialDelaySeconds=10, periodSeconds=10, failureThreshold=3),
        "livenessProbe": probe("/v1/healthz", initialDelaySeconds=120, periodSeconds=30, failureThreshold=10),
    }


def rayservice(config_path: Path = SERVE_CONFIG) -> dict[str, Any]:
    """The ``RayService`` manifest: the Serve applications on an autoscaled cluster, probed on their health routes."""
    cluster = ray_cluster_spec()
    cluster["headGroupSpec"]["template"]["spec"]["containers"][0].update(serve_probes())
    return {
        "apiVersion": "ray.io/v1",
        "kind": "RayService",
        "metadata": {"name": "sluice"},
        "spec": {
            "serveConfigV2": yaml.dump(serve_applications(config_path), Dumper=_Dumper, sort_keys=False),
            "rayClusterConfig": cluster,
        },
    }


def rayjob_ingest() -> dict[str, Any]:
    """The ``RayJob`` manifest that runs ``python -m jobs.ingest --scan`` on its own cluster, then deletes it."""
    return {
        "apiVersion": "ray.io/v1",
        "kind": "RayJob",
        "metadata": {"name": "sluice-ingest"},
        "spec": {
            "entrypoint": "python -m jobs.ingest --scan",
            "shutdownAfterJobFinishes": True,
            "ttlSecondsAfterFinished": 600,
            "activeDeadlineSeconds": 24 * 3600,
            "backoffLimit": 2,
            "rayClusterSpec": ray_cluster_spec(),
        },
    }


def migrate_job() -> dict[str, Any]:
    """The ``Job`` that applies the catalog's migrations as the schema's owner and grants the services' role its
    rights (``python -m jobs.migrate --grant``); run it before each rollout. Only it reads the owner's DSN."""
    container = {
        "name": "migrate",
        "image": IMAGE,
        "command": ["python", "-m", "jobs.migrate", "--grant", SERVICES_DB_ROLE],
        "envFrom": [{"secretRef": {"name": CONFIG_SECRET}}],
        "env": [{"name": "SLUICE_MIGRATION_DSN",
                 "valueFrom": {"secretKeyRef": {"name": MIGRATION_SECRET, "key": "dsn"}}}],
    }
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": "sluice-migrate"},
        "spec": {"backoffLimit": 3, "template": {"spec": {"restartPolicy": "OnFailure", "containers": [container]}}},
    }


def network_policy() -> dict[str, Any]:
    """The ``NetworkPolicy`` of the Ray heads: Serve's port 8000 for everyone; every other port (the GCS, the
    dashboard and job API on 8265, the client on 10001, the dashboard agent) only for the cluster's own Ray pods
    and the KubeRay operator's namespace."""
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": "sluice-ray-head"},
        "spec": {
            "podSelector": {"matchLabels": {"ray.io/node-type": "head"}},
            "policyTypes": ["Ingress"],
            "ingress": [
                {"ports": [{"port": 8000, "protocol": "TCP"}]},
                {"from": [{"podSelector": {"matchLabels": {"ray.io/is-ray-node": "yes"}}},
                          {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": OPERATOR_NAMESPACE}}}]},
            ],
        },
    }


MANIFESTS = {"rayservice": rayservice, "rayjob-ingest": rayjob_ingest, "job-migrate": migrate_job,
             "networkpolicy": network_policy}
#: The manifests that run a Ray cluster.
RAY_MANIFESTS = ("rayservice", "rayjob-ingest")


def render(name: str) -> str:
    """One manifest as YAML text (with the do-not-edit header).

    Raises:
        KeyError: ``name`` is not one of :data:`MANIFESTS`.
    """
    return HEADER + yaml.dump(MANIFESTS[name](), Dumper=_Dumper, sort_keys=False)


def main(argv: list[str] | None = None) -> int:
    """Command line: print one manifest, or ``--write`` them all next to this module."""
    parser = argparse.ArgumentParser(prog="python -m cluster.kuberay.render", description=__doc__.split("\n")[0])
    parser.add_argument("name", nargs="?", choices=sorted(MANIFESTS))
    parser.add_argument("--write", action="store_true", help="write every manifest to cluster/kuberay/<name>.yaml")
    args = parser.parse_args(argv)
    if args.write:
        for name in MANIFESTS:
            (OUT_DIR / f"{name}.yaml").write_text(render(name))
            print(OUT_DIR / f"{name}.yaml")
        return 0
    if not args.name:
        parser.error("name a manifest or pass --write")
    sys.stdout.write(render(args.name))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
