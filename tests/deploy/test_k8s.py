"""deploy/k8s/: every document parses and is a Kubernetes object, and the fields the issue
lists are there and agree with each other and with the code (probes, resources, PDBs, HPA,
the KEDA ScaledObject, the grace period, the migration Job, secrets only through
secretKeyRef). The published JSON schemas are not reachable offline, hence these checks."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from service import redis_keys
from service.queue import HEALTH_CHECK_INTERVAL, SHUTDOWN_WAIT
from tests.deploy.conftest import DEPLOY, KNOWN_VARIABLES, SECRET_VARIABLES

K8S = DEPLOY / "k8s"


def load(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


DOCS: dict[str, list[dict[str, Any]]] = {p.name: load(p) for p in sorted(K8S.glob("*.yaml"))}
ALL = [doc for docs in DOCS.values() for doc in docs]


def one(kind: str, name: str) -> dict[str, Any]:
    found = [d for d in ALL if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name}: {len(found)} found"
    return found[0]


def pod_specs() -> list[dict[str, Any]]:
    return [d["spec"]["template"]["spec"] for d in ALL if d["kind"] in ("Deployment", "Job")]


def container(deployment: str) -> dict[str, Any]:
    (only,) = one("Deployment", deployment)["spec"]["template"]["spec"]["containers"]
    return only


@pytest.mark.parametrize("path", sorted(DOCS))
def test_every_document_is_an_object(path: str) -> None:
    assert DOCS[path]
    for doc in DOCS[path]:
        api = doc.get("apiVersion")
        assert api == "v1" or (isinstance(api, str) and "/" in api), api
        assert isinstance(doc.get("kind"), str)
        assert doc["metadata"]["name"]


def test_kustomization_lists_every_long_lived_manifest() -> None:
    """`kubectl apply -k` brings up everything but the Secret (made out of band) and the
    migration Job (run before each rollout)."""
    kustomization = one("Kustomization", "pdbridge")
    assert set(kustomization["resources"]) == set(DOCS) - {
        "kustomization.yaml",
        "secret.example.yaml",
        "migration-job.yaml",
    }


def test_one_pinned_image_for_every_role() -> None:
    images = {c["image"] for spec in pod_specs() for c in spec["containers"]}
    assert len(images) == 1
    (image,) = images
    name, _, tag = image.rpartition(":")
    assert name
    assert tag
    assert tag != "latest"
    roles = {c["args"][0] for spec in pod_specs() for c in spec["containers"]}
    assert roles == {"web", "worker", "migrate"}


def test_web_probes() -> None:
    """Ready on /readyz (database migrated, Redis answering), alive on /healthz."""
    web = container("pdbridge-web")
    ports = {p["name"]: p["containerPort"] for p in web["ports"]}
    assert web["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert web["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert ports == {"http": 8000}


def test_worker_liveness_is_arqs_health_check() -> None:
    worker = container("pdbridge-worker")
    for probe in ("livenessProbe", "startupProbe"):
        assert worker[probe]["exec"]["command"] == ["pdbridge", "worker", "--check"]
    # The worker refreshes its key every HEALTH_CHECK_INTERVAL: a shorter window would flap.
    live = worker["livenessProbe"]
    assert live["periodSeconds"] * live["failureThreshold"] > 2 * HEALTH_CHECK_INTERVAL
    assert "readinessProbe" not in worker


def test_termination_grace_covers_the_workers_shutdown_wait() -> None:
    """A worker stopping lets running jobs finish for SHUTDOWN_WAIT, then closes: the pod's
    grace period must cover both, and not by minutes (a rollout would crawl)."""
    spec = one("Deployment", "pdbridge-worker")["spec"]["template"]["spec"]
    grace = spec["terminationGracePeriodSeconds"]
    assert SHUTDOWN_WAIT + 5 <= grace <= SHUTDOWN_WAIT + 30
    web = one("Deployment", "pdbridge-web")["spec"]["template"]["spec"]
    pre_stop = web["containers"][0]["lifecycle"]["preStop"]["exec"]["command"]
    assert web["terminationGracePeriodSeconds"] >= int(pre_stop[-1]) + 10  # uvicorn drains 10 s


def test_resources_and_a_locked_down_security_context() -> None:
    for spec in pod_specs():
        assert spec["securityContext"]["runAsNonRoot"] is True
        assert spec["automountServiceAccountToken"] is False
        for c in spec["containers"]:
            for bound in ("requests", "limits"):
                assert set(c["resources"][bound]) == {"cpu", "memory"}, c["name"]
            assert c["securityContext"]["allowPrivilegeEscalation"] is False
            assert c["securityContext"]["readOnlyRootFilesystem"] is True


def test_disruption_budgets_select_the_deployments() -> None:
    for role in ("web", "worker"):
        pdb = one("PodDisruptionBudget", f"pdbridge-{role}")
        labels = one("Deployment", f"pdbridge-{role}")["spec"]["template"]["metadata"]["labels"]
        assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
        assert pdb["spec"]["maxUnavailable"] == 1


def test_hpa_scales_web() -> None:
    hpa = one("HorizontalPodAutoscaler", "pdbridge-web")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": "pdbridge-web",
    }
    assert hpa["spec"]["minReplicas"] >= 2
    assert hpa["spec"]["maxReplicas"] > hpa["spec"]["minReplicas"]


def test_keda_scales_workers_on_the_arq_queue() -> None:
    """The redis trigger reads the very sorted set the workers poll; workers never scale to
    zero (they run the cron jobs); the Deployment leaves its replica count to KEDA."""
    scaled = one("ScaledObject", "pdbridge-worker")
    assert scaled["apiVersion"] == "keda.sh/v1alpha1"
    assert scaled["spec"]["scaleTargetRef"]["name"] == "pdbridge-worker"
    assert scaled["spec"]["minReplicaCount"] >= 1
    (trigger,) = scaled["spec"]["triggers"]
    assert trigger["type"] == "redis"
    assert trigger["metadata"]["listName"] == redis_keys.QUEUE_DEFAULT
    assert int(trigger["metadata"]["listLength"]) > 0
    auth = one("TriggerAuthentication", trigger["authenticationRef"]["name"])
    for ref in auth["spec"]["secretTargetRef"]:
        assert ref["key"] in secret_keys()
    assert "replicas" not in one("Deployment", "pdbridge-worker")["spec"]


def test_service_and_ingress_reach_the_web_pods() -> None:
    service = one("Service", "pdbridge-web")
    labels = one("Deployment", "pdbridge-web")["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()
    (port,) = service["spec"]["ports"]
    assert port["targetPort"] == "http"
    ingress = one("Ingress", "pdbridge")
    paths = [p for rule in ingress["spec"]["rules"] for p in rule["http"]["paths"]]
    assert {p["path"] for p in paths} == {"/oauth", "/webhooks", "/pipedrive", "/media", "/admin"}
    for path in paths:
        assert path["backend"]["service"] == {"name": "pdbridge-web", "port": {"name": "http"}}


def test_the_migration_job() -> None:
    """`migrate` once, never restarted in place, with the database URL and no other secret."""
    job = one("Job", "pdbridge-migrate")
    spec = job["spec"]["template"]["spec"]
    assert spec["restartPolicy"] == "Never"
    (c,) = spec["containers"]
    assert c["args"] == ["migrate"]
    names = {e["name"] for e in c["env"]}
    assert "DATABASE_URL" in names
    assert not names & (SECRET_VARIABLES - {"DATABASE_URL"})


def secret_keys() -> set[str]:
    secret = one("Secret", "pdbridge")
    return set(secret["stringData"])


def test_secrets_only_through_secret_key_refs() -> None:
    """Every credential a pod gets is a secretKeyRef to a key the example Secret has; none is
    inline or in the ConfigMap; every variable is one pdbridge reads."""
    config = one("ConfigMap", "pdbridge")["data"]
    assert not set(config) & SECRET_VARIABLES
    assert set(config) <= KNOWN_VARIABLES
    keys = secret_keys()
    for spec in pod_specs():
        for c in spec["containers"]:
            for env in c["env"]:
                assert env["name"] in KNOWN_VARIABLES, env["name"]
                if env["name"] in SECRET_VARIABLES:
                    ref = env["valueFrom"]["secretKeyRef"]
                    assert ref["name"] == "pdbridge"
                    assert ref["key"] in keys
                    assert "value" not in env
            for source in c.get("envFrom", []):
                assert "secretRef" not in source  # named keys only, so each is reviewed
    for spec in pod_specs():
        if spec["containers"][0]["args"] != ["migrate"]:
            names = {e["name"] for e in spec["containers"][0]["env"]}
            assert {"SECRET_KEY", "DATABASE_URL", "REDIS_URL"} <= names


def test_the_secret_example_holds_only_placeholders() -> None:
    secret = one("Secret", "pdbridge")
    assert set(secret["stringData"]) >= SECRET_VARIABLES - {"PIPEDRIVE_API_TOKEN"}
    for key, value in secret["stringData"].items():
        assert "REPLACE_ME" in value, key
