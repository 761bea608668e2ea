"""deploy/k8s read as data (no cluster, no kubeconform here): every document is a known kind
at its API version, selectors and Services find their pods, probes and resources are set,
every pool has a worker Deployment and a KEDA ScaledObject on its own queue, every command is
one the CLI has, and every MODELFARM_ setting named is one that Settings reads."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from app.broker.dispatch import QUEUES, REDIS_PRIORITY, WEBHOOK_QUEUE
from app.broker.scan import PRIORITY_SEP
from app.cli import cli
from app.config import Settings

DEPLOY = Path(__file__).resolve().parents[2] / "deploy" / "k8s"
API_VERSIONS = {
    "Namespace": "v1",
    "ConfigMap": "v1",
    "Secret": "v1",
    "Service": "v1",
    "Deployment": "apps/v1",
    "Job": "batch/v1",
    "ScaledObject": "keda.sh/v1alpha1",
    "Kustomization": "kustomize.config.k8s.io/v1beta1",
}
NAMESPACE = "modelfarm"


def _documents(name: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all((DEPLOY / name).read_text()) if d]


def _all() -> list[dict[str, Any]]:
    """Everything kustomization.yaml applies."""
    (kustomization,) = _documents("kustomization.yaml")
    return [d for name in kustomization["resources"] for d in _documents(name)]


def _of(kind: str, docs: list[dict[str, Any]] | None = None) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in (docs or _all()) if d["kind"] == kind}


def _containers(workload: dict[str, Any]) -> list[dict[str, Any]]:
    return workload["spec"]["template"]["spec"]["containers"]  # type: ignore[no-any-return]


def test_every_file_parses_as_known_kinds_at_their_api_versions() -> None:
    files = sorted(DEPLOY.glob("*.yaml"))
    assert files, "deploy/k8s is empty"
    for path in files:
        for doc in _documents(path.name):
            assert API_VERSIONS.get(doc["kind"]) == doc["apiVersion"], (path.name, doc["kind"])
            if doc["kind"] not in ("Kustomization",):
                assert doc["metadata"]["name"], path.name
            if doc["kind"] not in ("Kustomization", "Namespace"):
                assert doc["metadata"]["namespace"] == NAMESPACE, (path.name, doc["kind"])


def test_the_kustomization_lists_every_file_but_the_alternative_scalers() -> None:
    (kustomization,) = _documents("kustomization.yaml")
    listed = set(kustomization["resources"])
    on_disk = {p.name for p in DEPLOY.glob("*.yaml")} - {"kustomization.yaml"}
    assert listed == on_disk - {"keda-rabbitmq.yaml"}
    assert kustomization["namespace"] == NAMESPACE


def test_deployments_select_their_own_pods_and_set_resources() -> None:
    for name, deployment in _of("Deployment").items():
        template_labels = deployment["spec"]["template"]["metadata"]["labels"]
        selector = deployment["spec"]["selector"]["matchLabels"]
        assert selector and selector.items() <= template_labels.items(), name
        spec = deployment["spec"]["template"]["spec"]
        assert spec["securityContext"]["runAsNonRoot"] is True, name
        for container in _containers(deployment):
            assert container["image"], name
            resources = container["resources"]
            assert resources["requests"]["cpu"] and resources["requests"]["memory"], name
            assert resources["limits"]["memory"], name  # a leak is stopped, not spread


def _run_help(argv: list[str]) -> None:
    assert argv[0] == "modelfarm", argv
    result = CliRunner().invoke(cli, [*argv[1:], "--help"])
    assert result.exit_code == 0, f"{argv}: {result.output}"


def test_every_container_runs_a_command_the_cli_has() -> None:
    workloads = [*_of("Deployment").values(), *_of("Job").values()]
    commands = [c["command"] for w in workloads for c in _containers(w)]
    assert {c[1] for c in commands} == {"api", "worker", "sweeper", "flower", "migrate"}
    for argv in commands:
        _run_help(argv)


def test_services_reach_a_deployment_on_a_named_port() -> None:
    deployments = _of("Deployment")
    for name, service in _of("Service").items():
        selector = service["spec"]["selector"]
        matched = [
            d
            for d in deployments.values()
            if selector.items() <= d["spec"]["template"]["metadata"]["labels"].items()
        ]
        assert len(matched) == 1, f"service {name} selects {len(matched)} deployments"
        ports = {p["name"] for c in _containers(matched[0]) for p in c.get("ports", [])}
        for port in service["spec"]["ports"]:
            assert port["targetPort"] in ports, (name, port)
    assert {"modelfarm-api", "modelfarm-flower"} <= set(_of("Service"))


def _probe_path(container: dict[str, Any], probe: str) -> str:
    ports = {p["name"] for p in container["ports"]}
    http = container[probe]["httpGet"]
    assert http["port"] in ports, (probe, http)
    return str(http["path"])


def test_the_api_is_alive_on_healthz_and_ready_on_readyz() -> None:
    (api,) = _containers(_of("Deployment")["modelfarm-api"])
    assert _probe_path(api, "livenessProbe") == "/healthz"
    assert _probe_path(api, "readinessProbe") == "/readyz"
    (flower,) = _containers(_of("Deployment")["modelfarm-flower"])
    assert _probe_path(flower, "readinessProbe") == "/healthcheck"


def _pool_workers() -> dict[str, dict[str, Any]]:
    found = {}
    for deployment in _of("Deployment").values():
        (container,) = _containers(deployment)
        argv = container["command"]
        if argv[1] == "worker":
            found[argv[argv.index("--pool") + 1]] = deployment
    return found


def test_every_pool_has_a_worker_deployment_and_the_gpu_one_asks_for_a_gpu() -> None:
    workers = _pool_workers()
    assert set(workers) == set(QUEUES)
    gpu = workers["gpu"]
    (container,) = _containers(gpu)
    assert int(container["resources"]["limits"]["nvidia.com/gpu"]) >= 1
    spec = gpu["spec"]["template"]["spec"]
    assert spec.get("nodeSelector") or spec.get("tolerations")
    assert any(t["key"] == "nvidia.com/gpu" for t in spec["tolerations"])
    for pool in ("cpu", "webhooks"):
        (other,) = _containers(workers[pool])
        assert "nvidia.com/gpu" not in str(other["resources"]), pool


@pytest.mark.parametrize("file", ["keda.yaml", "keda-rabbitmq.yaml"])
def test_each_pool_scales_on_its_own_queue(file: str) -> None:
    workers = _pool_workers()
    scaled = _of("ScaledObject", _documents(file))
    targets = {}
    for name, obj in scaled.items():
        target = obj["spec"]["scaleTargetRef"]["name"]
        assert target in {d["metadata"]["name"] for d in workers.values()}, name
        for trigger in obj["spec"]["triggers"]:
            meta = trigger["metadata"]
            queue = meta.get("listName") if trigger["type"] == "redis" else meta.get("queueName")
            targets[queue] = target
        assert obj["spec"]["minReplicaCount"] <= obj["spec"]["maxReplicaCount"], name
    if file == "keda-rabbitmq.yaml":  # one queue a pool (priorities are not used there)
        expected = {pool: d["metadata"]["name"] for pool, d in workers.items()}
    else:  # every Redis list a pool's messages wait in: one per priority step (webhook
        # deliveries carry none)
        steps = {step for step in REDIS_PRIORITY.values() if step}
        expected = {
            name: d["metadata"]["name"]
            for pool, d in workers.items()
            for name in [
                pool,
                *(f"{pool}{PRIORITY_SEP}{s}" for s in steps if pool != WEBHOOK_QUEUE),
            ]
        }
    assert targets == expected


def test_every_setting_named_is_one_the_farm_reads() -> None:
    known = {f"MODELFARM_{name.upper()}" for name in Settings.model_fields}
    named: set[str] = set()
    for doc in [*_of("ConfigMap").values(), *_of("Secret").values()]:
        named |= set(doc.get("data") or doc.get("stringData") or {})
    for workload in [*_of("Deployment").values(), *_of("Job").values()]:
        for container in _containers(workload):
            named |= {e["name"] for e in container.get("env", [])}
            for source in container["envFrom"]:
                ref = source.get("configMapRef") or source.get("secretRef")
                kind = "ConfigMap" if "configMapRef" in source else "Secret"
                assert ref["name"] in _of(kind), ref
    farm = {n for n in named if n.startswith("MODELFARM_")}
    assert farm - known == set(), "not settings of app/config.py"
    assert {"MODELFARM_DATABASE_URL", "MODELFARM_ARTIFACT_ROOT"} <= farm
    # Pods share no disk: the artifact store must be one that every node reaches.
    (config,) = _of("ConfigMap").values()
    assert "://" in config["data"]["MODELFARM_ARTIFACT_ROOT"]
